//! The synthetic corpus has real long-range structure: a recalled value is determined by the
//! full document but not by a short window before it.

use std::collections::HashMap;

use ropelens::data::{SyntheticCorpus, SyntheticParams, marks};

/// Word indices of the words of `text` that lie in marked spans of `kind`.
fn marked_words(doc: &ropelens::data::synthetic::SyntheticDoc, kind: u8) -> Vec<usize> {
    let mut starts = vec![];
    let mut pos = 0;
    for w in doc.text.split(' ') {
        starts.push(pos);
        pos += w.len() + 1;
    }
    doc.marks
        .iter()
        .filter(|m| m.kind == kind)
        .map(|m| {
            starts
                .binary_search(&m.start)
                .expect("marks start at words")
        })
        .collect()
}

#[test]
fn recalled_values_need_the_long_context() {
    let params = SyntheticParams {
        passkey_fraction: 0.0,
        min_tokens: 2048,
        max_tokens: 4096,
        ..SyntheticParams::default()
    };
    let corpus = SyntheticCorpus::new(&params).unwrap();
    let windows = [16usize, 64, 256, 1024];
    // Per window: recalls whose definition is visible, and the digits of those that are not.
    let mut visible = [0usize; 4];
    let mut hidden_digits: [HashMap<String, usize>; 4] = Default::default();
    let (mut recalls, mut resolved_by_full_doc) = (0usize, 0usize);
    for i in 0..60 {
        let doc = corpus.document(5, i);
        let words: Vec<&str> = doc.text.split(' ').collect();
        let value_words = marked_words(&doc, marks::VALUE_RECALL);
        for chunk in value_words.chunks(params.value_digits) {
            let p = chunk[0];
            assert_eq!(words[p - 1], "is");
            let id = words[p - 2];
            let value: Vec<&str> = chunk.iter().map(|&k| words[k]).collect();
            recalls += 1;
            // The full document: the (unique) definition of `id` before p gives the value.
            let def = (0..p)
                .rev()
                .find(|&q| words[q] == "define" && words[q + 1] == id);
            let q = def.expect("every recalled identifier is defined earlier");
            let defined: Vec<&str> = words[q + 3..q + 3 + params.value_digits].to_vec();
            if defined == value {
                resolved_by_full_doc += 1;
            }
            for (w, &win) in windows.iter().enumerate() {
                if q >= p.saturating_sub(win) {
                    visible[w] += 1;
                } else {
                    for d in &value {
                        *hidden_digits[w].entry(d.to_string()).or_default() += 1;
                    }
                }
            }
        }
    }
    assert!(recalls > 2000, "{recalls}");
    // H(value | full document) = 0: the definition always determines it.
    assert_eq!(resolved_by_full_doc, recalls);
    // H(value | last W tokens), per value token: a visible definition determines the value;
    // otherwise the best guess is the empirical digit distribution of the unresolved recalls.
    let entropy = |counts: &HashMap<String, usize>| {
        let n: usize = counts.values().sum();
        counts
            .values()
            .map(|&c| c as f64 / n as f64)
            .map(|p| -p * p.ln())
            .sum::<f64>()
    };
    let h: Vec<f64> = (0..4)
        .map(|w| {
            let hidden = recalls - visible[w];
            hidden as f64 / recalls as f64 * entropy(&hidden_digits[w])
        })
        .collect();
    for w in 0..4 {
        if recalls - visible[w] > 100 {
            let he = entropy(&hidden_digits[w]);
            assert!(
                (he - 10f64.ln()).abs() < 0.05,
                "hidden digits are uniform: {he}"
            );
        }
    }
    eprintln!("H(value token | window) nats for windows {windows:?}: {h:?}; full document: 0");
    assert!(h[0] > 1.5 && h[1] > 1.0, "{h:?}");
    assert!(h[0] > h[1] && h[1] > h[2] && h[2] > h[3], "{h:?}");
    // Recalls at every scale: some within 64 words, many beyond.
    let frac_visible_64 = visible[1] as f64 / recalls as f64;
    assert!((0.15..0.7).contains(&frac_visible_64), "{frac_visible_64}");
}

#[test]
fn passkey_answers_and_section_names_repeat_far_back_tokens() {
    let corpus = SyntheticCorpus::new(&SyntheticParams {
        passkey_fraction: 0.5,
        ..SyntheticParams::default()
    })
    .unwrap();
    let (mut answers, mut closes, mut long_answers) = (0, 0, 0);
    for i in 0..100 {
        let doc = corpus.document(9, i);
        let words: Vec<&str> = doc.text.split(' ').collect();
        let ans = marked_words(&doc, marks::PASSKEY_ANSWER);
        for chunk in ans.chunks(5) {
            let p = chunk[0];
            assert_eq!(
                &words[p - 10..p],
                [
                    "what", "is", "the", "pass", "key", "?", "the", "pass", "key", "is"
                ]
            );
            // The most recent `the pass key is` record before the question holds the answer.
            let q = (0..p - 10)
                .rev()
                .find(|&q| words[q..q + 4] == ["the", "pass", "key", "is"] && words[q + 9] == ".")
                .expect("a key before every question");
            let key: Vec<&str> = words[q + 4..q + 9].to_vec();
            let answer: Vec<&str> = chunk.iter().map(|&k| words[k]).collect();
            assert_eq!(key, answer);
            answers += 1;
            if p - q > 256 {
                long_answers += 1;
            }
        }
        for p in marked_words(&doc, marks::SECTION_CLOSE) {
            assert_eq!(&words[p - 2..p], ["end", "section"]);
            let opened = (0..p).rev().find(|&q| {
                words[q] == "section" && words[q + 2] == ":" && words[q + 1] == words[p]
            });
            assert!(opened.is_some());
            closes += 1;
        }
    }
    assert!(
        answers > 200 && closes > 20 && long_answers > 10,
        "{answers} {closes} {long_answers}"
    );
}
