//! The built-in corpus: seeded word-level documents with real long-range structure, so that the
//! whole study runs with nothing at hand (see shared/SCALE.md).
//!
//! The language is about 400 words: filler sentences from a Markov chain over Zipfian made-up
//! words, plus structure whose tokens can only be predicted from far back:
//! - key-value documents: `define kaxo = 7 3 1 ;` records recalled later as `kaxo is 7 3 1 .`,
//!   at distances drawn log-uniformly, inside nested `section NAME : ... end section NAME .`;
//! - passkey documents: episodes `the pass key is 4 0 9 1 7 . remember it . 4 0 9 1 7 is the pass
//!   key .` (the YaRN/landmark needle, whose repeated key also gives the model short copies to
//!   learn copying from), filler, then `what is the pass key ? the pass key is 4 0 9 1 7 .`, with
//!   episode lengths spread over every scale up to the document length (short ones teach
//!   retrieval at the training length).
//!
//! Every token that is a long-range recall carries a mark (see [`marks`]) so that evaluation can
//! report the NLL of recalled tokens ("copy PPL") next to the overall perplexity.
//! The vocabulary is fixed (independent of the pipeline seed); the seed only drives sampling.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::DataError;

/// Mark codes stored per token in the `*.marks` files (one byte per token).
pub mod marks {
    /// An ordinary token.
    pub const NONE: u8 = 0;
    /// A value digit of a key-value recall (`kaxo is 7 3 1 .`): the "copy PPL" tokens.
    pub const VALUE_RECALL: u8 = 1;
    /// A digit of the answer after `what is the pass key ? the pass key is`.
    pub const PASSKEY_ANSWER: u8 = 2;
    /// The section name in `end section NAME .`, recalled from the matching `section NAME :`.
    pub const SECTION_CLOSE: u8 = 3;
}

/// Parameters of the synthetic corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticParams {
    /// Number of documents generated.
    pub documents: usize,
    /// Shortest document, in words (one word = one token with a tokenizer trained on the corpus).
    pub min_tokens: usize,
    /// Longest document, in words; lengths are log-uniform between the two.
    pub max_tokens: usize,
    /// Fraction of passkey documents (the rest are key-value documents).
    pub passkey_fraction: f64,
    /// Digits of a key-value record's value.
    pub value_digits: usize,
    /// Digits of a pass key.
    pub passkey_digits: usize,
    /// Distinct filler words.
    pub filler_words: usize,
    /// Distinct made-up identifiers (keys and section names).
    pub identifiers: usize,
    /// Exponent of the Zipf law of filler words.
    pub zipf_exponent: f64,
    /// Deepest nesting of sections in key-value documents.
    pub max_section_depth: usize,
    /// Shortest distance, in words, between a definition and its recall.
    pub min_recall_distance: usize,
    /// How a passkey document is cut into episodes. Left out of the parameters' JSON (and so of
    /// every cache key) at its default, so that corpora built before it existed keep their keys.
    #[serde(skip_serializing_if = "PasskeyEpisodes::is_default")]
    pub passkey_episodes: PasskeyEpisodes,
}

/// How a passkey document is cut into episodes (key, filler, question).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum PasskeyEpisodes {
    /// Episode lengths with density 1/E^2 up to the words left: equal token mass at every
    /// scale, so short episodes are common and an episode as long as the document is rare.
    #[default]
    EveryScale,
    /// One episode spanning the whole document, the key at a uniform depth: the distance from
    /// key to question is uniform up to the document's length, as in the needle task, so a
    /// window of F tokens holds retrieval at every distance up to F.
    Whole,
}

impl PasskeyEpisodes {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for SyntheticParams {
    fn default() -> Self {
        SyntheticParams {
            documents: 2000,
            min_tokens: 64,
            max_tokens: 4096,
            passkey_fraction: 0.5,
            value_digits: 3,
            passkey_digits: 5,
            filler_words: 256,
            identifiers: 128,
            zipf_exponent: 1.0,
            max_section_depth: 3,
            min_recall_distance: 8,
            passkey_episodes: PasskeyEpisodes::EveryScale,
        }
    }
}

impl SyntheticParams {
    /// Checks ranges that the generator relies on.
    pub fn validate(&self) -> Result<(), DataError> {
        let key = |k: &str| format!("source.synthetic.{k}");
        if self.documents == 0 {
            return Err(DataError::param(&key("documents"), "must be at least 1"));
        }
        if self.min_tokens < 48 {
            return Err(DataError::param(
                &key("min_tokens"),
                format!(
                    "{} is below 48 (a passkey episode needs about 47 words)",
                    self.min_tokens
                ),
            ));
        }
        if self.max_tokens < self.min_tokens {
            return Err(DataError::param(
                &key("max_tokens"),
                format!(
                    "{} is below min_tokens = {}",
                    self.max_tokens, self.min_tokens
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.passkey_fraction) {
            return Err(DataError::param(
                &key("passkey_fraction"),
                format!("{} is not in [0, 1]", self.passkey_fraction),
            ));
        }
        for (k, v) in [
            ("value_digits", self.value_digits),
            ("passkey_digits", self.passkey_digits),
        ] {
            if !(1..=8).contains(&v) {
                return Err(DataError::param(&key(k), format!("{v} is not in 1..=8")));
            }
        }
        if !(16..=4000).contains(&self.filler_words) {
            return Err(DataError::param(
                &key("filler_words"),
                "must be in 16..=4000",
            ));
        }
        if !(8..=2000).contains(&self.identifiers) {
            return Err(DataError::param(&key("identifiers"), "must be in 8..=2000"));
        }
        if self.zipf_exponent <= 0.0 || !self.zipf_exponent.is_finite() {
            return Err(DataError::param(&key("zipf_exponent"), "must be positive"));
        }
        Ok(())
    }
}

/// A marked byte range of a document's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkSpan {
    pub start: usize,
    pub end: usize,
    pub kind: u8,
}

/// One generated document.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticDoc {
    /// Space-separated words.
    pub text: String,
    /// Number of words.
    pub words: usize,
    /// Byte ranges of long-range recalls.
    pub marks: Vec<MarkSpan>,
}

const LANGUAGE_SEED: u64 = 0x5eed_1a96_0a9e_2024;
const STRUCTURE: [&str; 15] = [
    "the", "pass", "key", "is", "what", "?", ".", "define", "=", ";", "section", ":", "end",
    "remember", "it",
];
const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
const SUCCESSORS: usize = 16;

/// The fixed vocabulary and filler Markov chain.
#[derive(Debug, Clone)]
struct Language {
    filler: Vec<String>,
    unigram_cdf: Vec<f64>,
    successors: Vec<Vec<u32>>,
    successor_cdf: Vec<f64>,
    identifiers: Vec<String>,
}

fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|r| {
            acc += 1.0 / (r as f64).powf(s);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

fn sample_cdf(cdf: &[f64], rng: &mut impl Rng) -> usize {
    let u: f64 = rng.random();
    cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
}

impl Language {
    fn new(filler_words: usize, identifiers: usize, zipf: f64) -> Language {
        let mut rng = ChaCha8Rng::seed_from_u64(LANGUAGE_SEED);
        let consonants: Vec<char> = "bdfghklmnprstvz".chars().collect();
        let vowels: Vec<char> = "aeiou".chars().collect();
        let reserved = |w: &str| STRUCTURE.contains(&w) || DIGITS.contains(&w);
        let mut seen = std::collections::HashSet::new();
        let mut filler = Vec::with_capacity(filler_words);
        while filler.len() < filler_words {
            let syllables = match rng.random_range(0..10) {
                0..=2 => 1,
                3..=7 => 2,
                _ => 3,
            };
            let mut w = String::new();
            for _ in 0..syllables {
                w.push(consonants[rng.random_range(0..consonants.len())]);
                w.push(vowels[rng.random_range(0..vowels.len())]);
            }
            if !reserved(&w) && seen.insert(w.clone()) {
                filler.push(w);
            }
        }
        // Frequent words are short, as in natural language.
        filler.sort_by_key(|w| w.len());
        let id_consonants: Vec<char> = "bdfgklmnprstvxz".chars().collect();
        let mut ids = Vec::with_capacity(identifiers);
        while ids.len() < identifiers {
            let mut w = String::new();
            for _ in 0..2 {
                w.push(id_consonants[rng.random_range(0..id_consonants.len())]);
                w.push(vowels[rng.random_range(0..vowels.len())]);
            }
            if !reserved(&w) && seen.insert(w.clone()) {
                ids.push(w);
            }
        }
        let unigram_cdf = zipf_cdf(filler_words, zipf);
        let successors = (0..filler_words)
            .map(|_| {
                (0..SUCCESSORS)
                    .map(|_| sample_cdf(&unigram_cdf, &mut rng) as u32)
                    .collect()
            })
            .collect();
        Language {
            filler,
            unigram_cdf,
            successors,
            successor_cdf: zipf_cdf(SUCCESSORS, 1.0),
            identifiers: ids,
        }
    }
}

/// The generator: fixed language plus the parameters.
#[derive(Debug, Clone)]
pub struct SyntheticCorpus {
    params: SyntheticParams,
    lang: Language,
}

struct DocBuilder {
    text: String,
    words: usize,
    marks: Vec<MarkSpan>,
}

impl DocBuilder {
    fn push(&mut self, w: &str) {
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text.push_str(w);
        self.words += 1;
    }

    fn push_marked(&mut self, w: &str, kind: u8) {
        self.push(w);
        let end = self.text.len();
        self.marks.push(MarkSpan {
            start: end - w.len(),
            end,
            kind,
        });
    }
}

fn mix(seed: u64, index: u64) -> u64 {
    // splitmix64 of the pair, so that document i does not depend on how many came before.
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SyntheticCorpus {
    /// A generator for these parameters (validated).
    pub fn new(params: &SyntheticParams) -> Result<SyntheticCorpus, DataError> {
        params.validate()?;
        Ok(SyntheticCorpus {
            params: params.clone(),
            lang: Language::new(
                params.filler_words,
                params.identifiers,
                params.zipf_exponent,
            ),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &SyntheticParams {
        &self.params
    }

    /// The made-up identifiers (keys of key-value records and section names).
    pub fn identifiers(&self) -> &[String] {
        &self.lang.identifiers
    }

    /// Every word the generator can produce.
    pub fn vocabulary(&self) -> Vec<String> {
        let mut v: Vec<String> = STRUCTURE
            .iter()
            .chain(DIGITS.iter())
            .map(|s| s.to_string())
            .collect();
        v.extend(self.lang.filler.iter().cloned());
        v.extend(self.lang.identifiers.iter().cloned());
        v
    }

    /// Document `index` of the corpus of this seed (independent of the other documents).
    pub fn document(&self, seed: u64, index: u64) -> SyntheticDoc {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, index));
        let p = &self.params;
        let (lo, hi) = (p.min_tokens as f64, p.max_tokens as f64);
        let len = (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln()))
            .exp()
            .round() as usize;
        let len = len.clamp(p.min_tokens, p.max_tokens);
        if rng.random::<f64>() < p.passkey_fraction {
            self.passkey_document(&mut rng, len)
        } else {
            self.kv_document(&mut rng, len)
        }
    }

    /// Exactly `words` words of filler sentences, ending with "." (a single "." for one word).
    pub fn filler_text(&self, rng: &mut impl Rng, words: usize) -> String {
        let mut b = DocBuilder {
            text: String::new(),
            words: 0,
            marks: vec![],
        };
        self.filler_exact(&mut b, rng, words);
        b.text
    }

    fn sentence(&self, b: &mut DocBuilder, rng: &mut impl Rng, words: usize) {
        // `words` includes the final ".".
        let l = &self.lang;
        let mut w = sample_cdf(&l.unigram_cdf, rng);
        for i in 0..words.saturating_sub(1) {
            if i > 0 {
                w = if rng.random::<f64>() < 0.8 {
                    l.successors[w][sample_cdf(&l.successor_cdf, rng)] as usize
                } else {
                    sample_cdf(&l.unigram_cdf, rng)
                };
            }
            b.push(&l.filler[w]);
        }
        if words > 0 {
            b.push(".");
        }
    }

    fn filler_exact(&self, b: &mut DocBuilder, rng: &mut impl Rng, mut words: usize) {
        while words > 0 {
            let k = rng.random_range(5..=13).min(words);
            self.sentence(b, rng, k);
            words -= k;
        }
    }

    fn digits(rng: &mut impl Rng, n: usize) -> Vec<&'static str> {
        (0..n).map(|_| DIGITS[rng.random_range(0..10)]).collect()
    }

    fn kv_document(&self, rng: &mut impl Rng, len: usize) -> SyntheticDoc {
        let p = &self.params;
        let mut b = DocBuilder {
            text: String::new(),
            words: 0,
            marks: vec![],
        };
        let mut pool: Vec<usize> = (0..self.lang.identifiers.len()).collect();
        // Fisher-Yates with our rng, so that the order is reproducible.
        for i in (1..pool.len()).rev() {
            pool.swap(i, rng.random_range(0..=i));
        }
        let ids = &self.lang.identifiers;
        let mut defined: Vec<(usize, Vec<&'static str>, usize)> = vec![];
        let mut stack: Vec<usize> = vec![];
        loop {
            let closing = stack.len() * 4;
            let remaining = len.saturating_sub(b.words + closing);
            if remaining < 16 {
                break;
            }
            let r: f64 = rng.random();
            if r < 0.15 && !pool.is_empty() {
                let id = pool.pop().unwrap_or_default();
                let value = Self::digits(rng, p.value_digits);
                let pos = b.words;
                b.push("define");
                b.push(&ids[id]);
                b.push("=");
                for d in &value {
                    b.push(d);
                }
                b.push(";");
                defined.push((id, value, pos));
            } else if r < 0.40 && !defined.is_empty() {
                let latest = b.words.saturating_sub(p.min_recall_distance);
                let eligible = defined.partition_point(|d| d.2 <= latest);
                if eligible == 0 {
                    let k = rng.random_range(5..=13).min(remaining);
                    self.sentence(&mut b, rng, k);
                    continue;
                }
                let (lo, hi) = (p.min_recall_distance.max(1) as f64, b.words.max(2) as f64);
                let dist = (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln()).max(0.0)).exp();
                let target = b.words as f64 - dist;
                let i = defined[..eligible].partition_point(|d| (d.2 as f64) < target);
                let pick = if i == 0 {
                    0
                } else if i >= eligible {
                    eligible - 1
                } else if (defined[i].2 as f64 - target).abs() < (target - defined[i - 1].2 as f64)
                {
                    i
                } else {
                    i - 1
                };
                let (id, value, _) = &defined[pick];
                let value = value.clone();
                b.push(&ids[*id]);
                b.push("is");
                for d in value {
                    b.push_marked(d, marks::VALUE_RECALL);
                }
                b.push(".");
            } else if r < 0.45
                && stack.len() < p.max_section_depth
                && remaining >= 40
                && !pool.is_empty()
            {
                let id = pool.remove(0);
                b.push("section");
                b.push(&ids[id]);
                b.push(":");
                stack.push(id);
            } else if r < 0.50 && !stack.is_empty() {
                let id = stack.pop().unwrap_or_default();
                self.close_section(&mut b, &ids[id]);
            } else {
                let k = rng.random_range(5..=13).min(remaining);
                self.sentence(&mut b, rng, k);
            }
        }
        while let Some(id) = stack.pop() {
            self.close_section(&mut b, &ids[id]);
        }
        let rest = len.saturating_sub(b.words);
        self.filler_exact(&mut b, rng, rest);
        SyntheticDoc {
            text: b.text,
            words: b.words,
            marks: b.marks,
        }
    }

    fn close_section(&self, b: &mut DocBuilder, name: &str) {
        b.push("end");
        b.push("section");
        b.push_marked(name, marks::SECTION_CLOSE);
        b.push(".");
    }

    /// Words of one passkey episode besides its filler.
    fn episode_overhead(&self) -> usize {
        24 + 3 * self.params.passkey_digits
    }

    fn passkey_document(&self, rng: &mut impl Rng, len: usize) -> SyntheticDoc {
        let mut b = DocBuilder {
            text: String::new(),
            words: 0,
            marks: vec![],
        };
        let min_episode = self.episode_overhead() + 8;
        loop {
            let rem = len.saturating_sub(b.words);
            if rem < min_episode {
                break;
            }
            let e = match self.params.passkey_episodes {
                PasskeyEpisodes::Whole => rem,
                PasskeyEpisodes::EveryScale => {
                    // Density 1/E^2 on [min_episode, rem]: equal token mass at every scale, so
                    // short episodes (fully inside a training window) are common and long
                    // ones exist.
                    let (a, z) = (min_episode as f64, rem as f64);
                    let u: f64 = rng.random();
                    let e = (1.0 / (1.0 / a - u * (1.0 / a - 1.0 / z))).round() as usize;
                    let e = e.clamp(min_episode, rem);
                    if rem - e < min_episode { rem } else { e }
                }
            };
            let filler = e - self.episode_overhead();
            let before = rng.random_range(0..=filler);
            let key = Self::digits(rng, self.params.passkey_digits);
            self.filler_exact(&mut b, rng, before);
            for w in ["the", "pass", "key", "is"] {
                b.push(w);
            }
            for d in &key {
                b.push(d);
            }
            for w in [".", "remember", "it", "."] {
                b.push(w);
            }
            for d in &key {
                b.push(d);
            }
            for w in ["is", "the", "pass", "key", "."] {
                b.push(w);
            }
            self.filler_exact(&mut b, rng, filler - before);
            for w in [
                "what", "is", "the", "pass", "key", "?", "the", "pass", "key", "is",
            ] {
                b.push(w);
            }
            for d in &key {
                b.push_marked(d, marks::PASSKEY_ANSWER);
            }
            b.push(".");
        }
        let rest = len.saturating_sub(b.words);
        self.filler_exact(&mut b, rng, rest);
        SyntheticDoc {
            text: b.text,
            words: b.words,
            marks: b.marks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_have_the_drawn_length_and_are_reproducible() {
        let c = SyntheticCorpus::new(&SyntheticParams::default()).unwrap();
        for i in 0..50 {
            let d = c.document(7, i);
            assert_eq!(d.text.split(' ').count(), d.words);
            assert!((64..=4096).contains(&d.words), "{}", d.words);
            assert_eq!(d, c.document(7, i));
        }
        assert_ne!(c.document(7, 0).text, c.document(8, 0).text);
    }

    #[test]
    fn vocabulary_is_about_four_hundred_distinct_words() {
        let c = SyntheticCorpus::new(&SyntheticParams::default()).unwrap();
        let v = c.vocabulary();
        let set: std::collections::HashSet<_> = v.iter().collect();
        assert_eq!(set.len(), v.len());
        assert_eq!(v.len(), 15 + 10 + 256 + 128);
        for i in 0..20 {
            for w in c.document(1, i).text.split(' ') {
                assert!(set.contains(&w.to_string()), "{w}");
            }
        }
    }

    /// Word distance from each pass key's definition ("the pass key is K") to the question
    /// that recalls it ("what is the pass key ?"), for every episode of a document.
    fn key_question_distances(text: &str) -> Vec<usize> {
        let w: Vec<&str> = text.split(' ').collect();
        let at = |i: usize, p: &[&str]| w.len() >= i + p.len() && w[i..i + p.len()] == *p;
        let mut out = Vec::new();
        let (mut key, mut after_question) = (None, 0);
        for i in 0..w.len() {
            if at(i, &["what", "is", "the", "pass", "key", "?"]) {
                out.push(i - key.take().expect("a question after its key"));
                // Its answer, "the pass key is K .", is no new definition.
                after_question = i + 7;
            } else if i >= after_question && at(i, &["the", "pass", "key", "is"]) && key.is_none() {
                key = Some(i);
            }
        }
        out
    }

    #[test]
    fn whole_passkey_episodes_span_the_document_and_keep_the_default_key() {
        let mut p = SyntheticParams {
            min_tokens: 100,
            max_tokens: 512,
            passkey_fraction: 1.0,
            ..SyntheticParams::default()
        };
        let every = SyntheticCorpus::new(&p).unwrap();
        p.passkey_episodes = PasskeyEpisodes::Whole;
        let whole = SyntheticCorpus::new(&p).unwrap();
        let (mut far_whole, mut far_every) = (0, 0);
        for i in 0..400 {
            let d = whole.document(5, i);
            let dist = key_question_distances(&d.text);
            assert_eq!(dist.len(), 1, "one episode per document: {}", d.text);
            // The question and its answer end the document.
            assert!(d.text.ends_with(" ."), "{}", d.text);
            let answer = d
                .marks
                .iter()
                .filter(|m| m.kind == marks::PASSKEY_ANSWER)
                .count();
            assert_eq!(answer, p.passkey_digits);
            far_whole += dist.iter().filter(|&&x| x >= 340).count();
            let e = every.document(5, i);
            far_every += key_question_distances(&e.text)
                .iter()
                .filter(|&&x| x >= 340)
                .count();
        }
        // Distances up to the document length: a 340-512 word recall is common when the
        // episode is the document, rare when episode lengths follow 1/E^2.
        assert!(
            far_whole >= 10 && far_whole > 4 * far_every,
            "{far_whole} vs {far_every}"
        );
        // The default stays out of the parameters' JSON (cache keys of existing corpora).
        let default_json = serde_json::to_value(SyntheticParams::default()).unwrap();
        assert!(
            default_json.get("passkey_episodes").is_none(),
            "{default_json}"
        );
        let whole_json = serde_json::to_value(&p).unwrap();
        assert_eq!(whole_json["passkey_episodes"], "whole");
    }

    #[test]
    fn filler_has_exact_word_count() {
        let c = SyntheticCorpus::new(&SyntheticParams::default()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in [1, 2, 5, 13, 14, 100] {
            let t = c.filler_text(&mut rng, n);
            assert_eq!(t.split(' ').count(), n);
            assert!(t.ends_with('.'));
        }
    }
}
