//! Scoring a needle-in-a-haystack reply against the expected answer without an LLM judge.
//!
//! Three scores, all stored by `eval_needle`, because each fails differently:
//!
//! - [`exact`]: the first integer in the reply is the key. Strict; the natural score for pass
//!   keys. Undefined (`None`) when the expected answer is not an integer.
//! - [`substring`]: the expected answer occurs in the reply, case-insensitive, after collapsing
//!   whitespace (RULER's `string_match_all` for one reference). Tolerant of extra text.
//! - [`overlap`]: the fraction of the expected answer's words that the reply contains (unigram
//!   recall, clipped counts), a partial-credit score in the spirit of Fu et al.'s needle heatmap.
//!   Fu et al. scored ROUGE-1 F1 against the whole needle sentence; recall is used here so that a
//!   correct reply followed by more generated text is not penalised.
//!
//! # Integers written with spaces between digits
//!
//! The synthetic corpus writes keys one digit per token: `the pass key is 7 3 1 9 2 .`. An
//! *integer* in a text is therefore read as: start at the first ASCII digit; keep taking digits,
//! and also whitespace as long as the next non-whitespace character is again a digit. Its value
//! is the string of digits taken, so `7 3 1 9 2 .` and `73192` both read as `73192`, while
//! `7 3 1 . 9 2` reads as `731` (a period ends it) and `3.5` reads as `3`. The expected key is
//! read the same way and must consist only of digits and whitespace.
//!
//! Integers compare as digit strings, not as numbers: leading zeros count (`0 7 3` is not `73`),
//! because a pass key is a sequence of digits that the model must reproduce in full. Extra digits
//! make a reply wrong (`7 3 1 9 2 4` is not `73192`); a sign is not part of the integer.

/// The three scores of one reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeedleScores {
    /// [`exact`]: `None` when the expected answer is not an integer.
    pub exact: Option<bool>,
    /// [`substring`].
    pub substring: bool,
    /// [`overlap`], in `[0, 1]`.
    pub overlap: f64,
}

/// All three scores of `reply` against `expected`.
pub fn score_reply(reply: &str, expected: &str) -> NeedleScores {
    NeedleScores {
        exact: exact(reply, expected),
        substring: substring(reply, expected),
        overlap: overlap(reply, expected),
    }
}

/// Whether the first integer of `reply` equals the integer `expected` (see the module doc for
/// how integers are read).
///
/// Returns `None` when `expected` is not an integer (empty, or holds anything but digits and
/// whitespace), so that a caller stores "not applicable" rather than a misleading `false`.
/// A reply without any digit scores `Some(false)`.
pub fn exact(reply: &str, expected: &str) -> Option<bool> {
    let key = key_digits(expected)?;
    Some(first_integer(reply).is_some_and(|found| found == key))
}

/// Whether `expected` occurs in `reply`, ignoring case and treating every run of whitespace as
/// one space (and ignoring whitespace at either end of `expected`).
///
/// An expected answer that is empty after trimming scores `false`: there is nothing to find, and
/// counting it as a pass would hide a data error.
pub fn substring(reply: &str, expected: &str) -> bool {
    let needle = normalise_whitespace_lower(expected);
    if needle.is_empty() {
        return false;
    }
    normalise_whitespace_lower(reply).contains(&needle)
}

/// The fraction of the expected answer's words present in the reply: unigram recall with clipped
/// counts (a word that occurs twice in the answer needs two occurrences in the reply for full
/// credit), in `[0, 1]`.
///
/// Words are maximal runs of alphanumeric characters, lowercased, so punctuation separates words
/// and never counts. An expected answer without words scores 0.
pub fn overlap(reply: &str, expected: &str) -> f64 {
    let wanted = words(expected);
    if wanted.is_empty() {
        return 0.0;
    }
    let mut available: std::collections::HashMap<String, usize> = Default::default();
    for word in words(reply) {
        *available.entry(word).or_default() += 1;
    }
    let mut matched = 0usize;
    for word in &wanted {
        if let Some(count) = available.get_mut(word)
            && *count > 0
        {
            *count -= 1;
            matched += 1;
        }
    }
    matched as f64 / wanted.len() as f64
}

/// The first integer of `text` as its digit string, or `None` when `text` has no ASCII digit.
pub fn first_integer(text: &str) -> Option<String> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let rest = &text[start..];
    let mut digits = String::new();
    let mut chars = rest.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else if c.is_whitespace() {
            // Whitespace continues the integer only if a digit follows it.
            let mut lookahead = chars.clone();
            let next = lookahead.find(|(_, c)| !c.is_whitespace()).map(|(_, c)| c);
            if !next.is_some_and(|c| c.is_ascii_digit()) {
                break;
            }
        } else {
            break;
        }
    }
    Some(digits)
}

/// The digits of an expected key written as digits and whitespace only; `None` otherwise.
fn key_digits(expected: &str) -> Option<String> {
    let trimmed = expected.trim();
    if trimmed.is_empty()
        || !trimmed
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_whitespace())
    {
        return None;
    }
    Some(trimmed.chars().filter(|c| c.is_ascii_digit()).collect())
}

fn normalise_whitespace_lower(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_integer_joins_spaced_digits_and_stops_at_non_digits() {
        assert_eq!(first_integer("7 3 1 9 2 ."), Some("73192".into()));
        assert_eq!(
            first_integer("the pass key is 73192."),
            Some("73192".into())
        );
        assert_eq!(first_integer("  7  3\t1\n9 2 and 4"), Some("73192".into()));
        assert_eq!(first_integer("7 3 1 . 9 2"), Some("731".into()));
        assert_eq!(first_integer("3.5 apples"), Some("3".into()));
        assert_eq!(first_integer("-42"), Some("42".into()));
        assert_eq!(first_integer("7 3 1 9 2 "), Some("73192".into()));
        assert_eq!(first_integer("no digits here"), None);
        assert_eq!(first_integer(""), None);
    }

    #[test]
    fn exact_accepts_spaced_and_packed_keys_either_way() {
        assert_eq!(exact("7 3 1 9 2 .", "7 3 1 9 2"), Some(true));
        assert_eq!(exact("73192", "7 3 1 9 2"), Some(true));
        assert_eq!(exact("the pass key is 7 3 1 9 2 .", "73192"), Some(true));
        assert_eq!(
            exact(" 7 3 1 9 2 . what is the pass key ? 1 1 1", "73192"),
            Some(true),
            "text after the first integer is ignored"
        );
    }

    #[test]
    fn exact_rejects_partial_extra_and_wrong_keys() {
        assert_eq!(exact("7 3 1", "7 3 1 9 2"), Some(false), "partial key");
        assert_eq!(
            exact("7 3 1 9 2 4", "7 3 1 9 2"),
            Some(false),
            "extra digit"
        );
        assert_eq!(exact("7 3 1 9 3", "7 3 1 9 2"), Some(false), "wrong digit");
        assert_eq!(
            exact("3 7 3 1 9 2", "7 3 1 9 2"),
            Some(false),
            "key appears but not first"
        );
        assert_eq!(
            exact("1 then 7 3 1 9 2", "7 3 1 9 2"),
            Some(false),
            "another integer first"
        );
        assert_eq!(exact("", "7 3 1 9 2"), Some(false), "empty reply");
        assert_eq!(
            exact("i do not know", "7 3 1 9 2"),
            Some(false),
            "no digits"
        );
    }

    #[test]
    fn exact_counts_leading_zeros() {
        assert_eq!(exact("0 7 3", "0 7 3"), Some(true));
        assert_eq!(exact("73", "0 7 3"), Some(false));
        assert_eq!(exact("0 7 3", "73"), Some(false));
        assert_eq!(exact("007", "0 0 7"), Some(true));
    }

    #[test]
    fn exact_is_undefined_for_non_integer_answers() {
        assert_eq!(exact("sandwich", "eat a sandwich"), None);
        assert_eq!(exact("7", ""), None);
        assert_eq!(exact("7", "   "), None);
        assert_eq!(exact("7 3 1", "7 3 1 ."), None, "punctuation in the key");
    }

    #[test]
    fn substring_ignores_case_and_whitespace_runs() {
        assert!(substring("The answer: 7 3 1 9 2 .", "7 3 1 9 2"));
        assert!(substring("The answer: 7  3\n1 9\t2", "7 3 1 9 2"));
        assert!(substring(
            "I think the BEST thing is to Eat A Sandwich!",
            "eat a sandwich"
        ));
        assert!(substring("xx 7 3 1 9 2", "  7 3 1 9 2  "));
        assert!(
            !substring("73192", "7 3 1 9 2"),
            "spacing of digits matters"
        );
        assert!(!substring("7 3 1 9", "7 3 1 9 2"), "partial key");
        assert!(!substring("", "7 3 1 9 2"), "empty reply");
        assert!(!substring("anything", ""), "empty answer never passes");
        assert!(!substring("anything", " \n "), "blank answer never passes");
    }

    #[test]
    fn overlap_is_clipped_unigram_recall() {
        assert_eq!(overlap("eat a sandwich", "Eat a sandwich."), 1.0);
        assert_eq!(
            overlap("a sandwich, obviously", "eat a sandwich"),
            2.0 / 3.0
        );
        assert_eq!(overlap("7 3 1", "7 3 1 9 2"), 3.0 / 5.0);
        assert_eq!(overlap("2 9 1 3 7", "7 3 1 9 2"), 1.0, "order ignored");
        // "7" appears twice in the key but once in the reply: one of two sevens matched.
        assert_eq!(overlap("7 1", "7 7 1"), 2.0 / 3.0);
        assert_eq!(overlap("7 7 7 7", "7 7 1"), 2.0 / 3.0);
        assert_eq!(overlap("", "7 3 1"), 0.0, "empty reply");
        assert_eq!(overlap("7 3 1", ""), 0.0, "no words expected");
        assert_eq!(overlap("7 3 1", ". , !"), 0.0, "punctuation only");
        assert_eq!(
            overlap("7 3 1 9 2 . the pass key is 5", "7 3 1 9 2"),
            1.0,
            "extra text is not penalised"
        );
    }

    #[test]
    fn score_reply_collects_all_three() {
        let s = score_reply("the pass key is 7 3 1 9 4 .", "7 3 1 9 2");
        assert_eq!(s.exact, Some(false));
        assert!(!s.substring);
        assert!((s.overlap - 0.8).abs() < 1e-12);
        let s = score_reply(" 7 3 1 9 2 .", "7 3 1 9 2");
        assert_eq!(
            s,
            NeedleScores {
                exact: Some(true),
                substring: true,
                overlap: 1.0
            }
        );
    }
}
