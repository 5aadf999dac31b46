//! Haystacks for the needle test: a needle (pass key, a sentence, or several key-value records)
//! hidden at a chosen depth in filler, then a question; built directly in token ids so that the
//! length is exact in the model's tokenizer, the answer has room, and no BOS appears inside.
//!
//! Formats: `passkey` (YaRN/landmark: instructions, filler, "The pass key is N. Remember it. N is
//! the pass key.", filler, question), `niah` (a needle sentence inserted at a depth fraction and
//! moved back to the previous sentence boundary, as Kamradt and Fu et al. do) and `multikey`
//! (several key-value needles, one asked for, as in RULER). For the synthetic corpus the
//! templates default to the corpus's own forms (`the pass key is 7 3 1 9 2 .`,
//! `define kaxo = 7 3 1 ;` ... `kaxo is`), which the model was trained on.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::error::DataError;
use super::synthetic::{SyntheticCorpus, SyntheticParams};
use super::tokenizer::{SpecialTokens, encode_piece, encode_text};

/// Where the filler of a haystack comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum FillerKind {
    /// `synthetic` for the synthetic source, `validation` otherwise.
    #[default]
    Auto,
    /// Filler sentences of the synthetic generator (no records, no pass keys).
    Synthetic,
    /// The validation documents' tokens (training ones when there are none).
    Validation,
    /// `repeat_text` over and over (the landmark/YaRN passkey filler).
    Repeat,
}

/// Where multikey needles take their keys from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// English adjective-noun pairs, as RULER's word keys.
    Words,
    /// The synthetic corpus's made-up identifiers.
    Identifiers,
}

/// The texts of one task. `{key}` and `{value}` are replaced; pieces after the instruction are
/// read as continuations, so start them with the space or newline that should precede them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NeedleTemplate {
    /// Text at the start of the context (may be empty).
    pub instruction: String,
    /// The needle inserted into the filler.
    pub needle: String,
    /// The question after the filler, ending where the answer starts.
    pub question: String,
    /// The expected continuation (the model must generate it).
    pub answer: String,
    /// Digits of `{value}`.
    pub value_digits: usize,
    /// Write the value's digits separated by spaces (the synthetic corpus's form).
    pub spaced_digits: bool,
    /// Where `{key}` comes from.
    pub keys: KeyKind,
}

impl NeedleTemplate {
    /// The YaRN / landmark-attention passkey prompt.
    pub fn passkey_yarn() -> Self {
        NeedleTemplate {
            instruction: "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there.".into(),
            needle: " The pass key is {value}. Remember it. {value} is the pass key.".into(),
            question: " What is the pass key? The pass key is".into(),
            answer: " {value}".into(),
            value_digits: 5,
            spaced_digits: false,
            keys: KeyKind::Words,
        }
    }

    /// The synthetic corpus's own passkey form.
    pub fn passkey_synthetic() -> Self {
        NeedleTemplate {
            instruction: String::new(),
            needle: " the pass key is {value} . remember it . {value} is the pass key .".into(),
            question: " what is the pass key ? the pass key is".into(),
            answer: " {value}".into(),
            value_digits: 5,
            spaced_digits: true,
            keys: KeyKind::Identifiers,
        }
    }

    /// Kamradt's needle with Fu et al.'s question and answer prefix.
    pub fn niah_kamradt() -> Self {
        NeedleTemplate {
            instruction: String::new(),
            needle: "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n".into(),
            question: "\nWhat is the best thing to do in San Francisco? Answer: The best thing to do in San Francisco is".into(),
            answer: " eat a sandwich and sit in Dolores Park on a sunny day.".into(),
            value_digits: 0,
            spaced_digits: false,
            keys: KeyKind::Words,
        }
    }

    /// The synthetic corpus's key-value record, asked for as it is recalled in the corpus.
    pub fn kv_synthetic() -> Self {
        NeedleTemplate {
            instruction: String::new(),
            needle: " define {key} = {value} ;".into(),
            question: " {key} is".into(),
            answer: " {value}".into(),
            value_digits: 3,
            spaced_digits: true,
            keys: KeyKind::Identifiers,
        }
    }

    /// RULER's multi-key needle-in-a-haystack.
    pub fn multikey_ruler() -> Self {
        NeedleTemplate {
            instruction: "Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you about the numbers afterwards.".into(),
            needle: " One of the special magic numbers for {key} is: {value}.".into(),
            question: " What is the special magic number for {key} mentioned in the provided text? The special magic number for {key} mentioned in the provided text is".into(),
            answer: " {value}".into(),
            value_digits: 7,
            spaced_digits: false,
            keys: KeyKind::Words,
        }
    }
}

/// Haystack options of the data stage (`haystack = {..}`); unset templates take the defaults
/// for the source (the corpus's own forms for `synthetic`, YaRN/Kamradt/RULER otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HaystackParams {
    pub filler: FillerKind,
    /// Filler text for `filler = "repeat"`.
    pub repeat_text: String,
    /// Move needles back to the previous sentence end (never at depth 0 or 1).
    pub align_to_sentence: bool,
    /// Needles in a multikey haystack (one is asked for).
    pub multikey_keys: usize,
    pub passkey: Option<NeedleTemplate>,
    pub niah: Option<NeedleTemplate>,
    pub multikey: Option<NeedleTemplate>,
}

const YARN_GARBAGE: &str =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

impl Default for HaystackParams {
    fn default() -> Self {
        HaystackParams {
            filler: FillerKind::Auto,
            repeat_text: YARN_GARBAGE.into(),
            align_to_sentence: true,
            multikey_keys: 4,
            passkey: None,
            niah: None,
            multikey: None,
        }
    }
}

impl HaystackParams {
    pub(crate) fn validate(&self) -> Result<(), DataError> {
        if self.multikey_keys == 0 {
            return Err(DataError::param(
                "haystack.multikey_keys",
                "must be at least 1",
            ));
        }
        if self.filler == FillerKind::Repeat && self.repeat_text.trim().is_empty() {
            return Err(DataError::param("haystack.repeat_text", "is empty"));
        }
        for (k, t) in [
            ("passkey", &self.passkey),
            ("niah", &self.niah),
            ("multikey", &self.multikey),
        ] {
            if let Some(t) = t {
                if t.value_digits > 18 {
                    return Err(DataError::param(
                        &format!("haystack.{k}.value_digits"),
                        "at most 18",
                    ));
                }
                if t.answer.trim().is_empty() {
                    return Err(DataError::param(
                        &format!("haystack.{k}.answer"),
                        "is empty",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Fills in the defaults for a source (synthetic or not).
    pub fn resolve(&self, synthetic_source: bool) -> HaystackStyle {
        let filler = match self.filler {
            FillerKind::Auto if synthetic_source => FillerKind::Synthetic,
            FillerKind::Auto => FillerKind::Validation,
            f => f,
        };
        let pick = |t: &Option<NeedleTemplate>,
                    synth: fn() -> NeedleTemplate,
                    real: fn() -> NeedleTemplate| {
            t.clone()
                .unwrap_or_else(|| if synthetic_source { synth() } else { real() })
        };
        HaystackStyle {
            filler,
            repeat_text: self.repeat_text.clone(),
            align_to_sentence: self.align_to_sentence,
            multikey_keys: self.multikey_keys,
            passkey: pick(
                &self.passkey,
                NeedleTemplate::passkey_synthetic,
                NeedleTemplate::passkey_yarn,
            ),
            niah: pick(
                &self.niah,
                NeedleTemplate::kv_synthetic,
                NeedleTemplate::niah_kamradt,
            ),
            multikey: pick(
                &self.multikey,
                NeedleTemplate::kv_synthetic,
                NeedleTemplate::multikey_ruler,
            ),
        }
    }
}

/// Resolved haystack options, recorded in data.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaystackStyle {
    pub filler: FillerKind,
    pub repeat_text: String,
    pub align_to_sentence: bool,
    pub multikey_keys: usize,
    pub passkey: NeedleTemplate,
    pub niah: NeedleTemplate,
    pub multikey: NeedleTemplate,
}

/// Needle task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NeedleTask {
    Passkey,
    Niah,
    Multikey,
}

impl NeedleTask {
    /// "passkey", "niah" or "multikey".
    pub fn name(self) -> &'static str {
        match self {
            NeedleTask::Passkey => "passkey",
            NeedleTask::Niah => "niah",
            NeedleTask::Multikey => "multikey",
        }
    }
}

/// Filler material (already in token ids where it comes from a corpus).
#[derive(Debug, Clone)]
pub enum Filler {
    /// Sentences of the synthetic generator, tokenized on demand.
    Synthetic(SyntheticCorpus),
    /// A token stream (BOS/EOS are removed); windows start after a sentence end.
    Tokens(Vec<u32>),
    /// A text repeated (tokenized once as a continuation).
    Repeat(String),
}

/// One haystack. `input_ids.len() + answer_ids.len() == length`.
#[derive(Debug, Clone, PartialEq)]
pub struct Haystack {
    pub task: NeedleTask,
    /// The prompt: [BOS] instruction filler needle filler question.
    pub input_ids: Vec<u32>,
    /// The expected continuation, as text (score on it).
    pub answer: String,
    /// The answer's ids as a continuation (its length is the room left for it).
    pub answer_ids: Vec<u32>,
    /// Index in `input_ids` of the first token of the (asked-for) needle.
    pub needle_pos: usize,
    pub needle_len: usize,
    /// Requested depth (fraction of the filler before the needle).
    pub depth: f64,
    /// Depth after moving back to a sentence boundary.
    pub actual_depth: f64,
    /// Total length in tokens, answer included.
    pub length: usize,
    /// The asked-for key (multikey and key-value templates; empty otherwise).
    pub key: String,
    /// The needle's value (empty when the template has none).
    pub value: String,
}

/// Builds haystacks for one tokenizer, style and filler.
#[derive(Debug, Clone)]
pub struct HaystackBuilder {
    tokenizer: Tokenizer,
    style: HaystackStyle,
    filler: Filler,
    repeat_ids: Vec<u32>,
    bos: Option<u32>,
    identifiers: Vec<String>,
}

const ADJECTIVES: [&str; 24] = [
    "amber", "brave", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly",
    "keen", "lucky", "mellow", "noble", "olive", "proud", "quiet", "rapid", "silent", "tidy",
    "urban", "vivid", "witty", "young",
];
const NOUNS: [&str; 24] = [
    "anchor", "badger", "candle", "dragon", "engine", "falcon", "garden", "harbor", "island",
    "jacket", "kettle", "lantern", "meadow", "needle", "orchard", "pepper", "quarry", "river",
    "saddle", "tunnel", "violin", "walnut", "yarrow", "zipper",
];

fn fill(t: &str, key: &str, value: &str) -> String {
    t.replace("{key}", key).replace("{value}", value)
}

impl HaystackBuilder {
    /// A builder; `specials` says whether prompts start with BOS and which ids to keep out.
    pub fn new(
        tokenizer: Tokenizer,
        style: HaystackStyle,
        filler: Filler,
        specials: &SpecialTokens,
    ) -> Result<HaystackBuilder, DataError> {
        let strip: Vec<u32> = [specials.bos_id, specials.eos_id]
            .into_iter()
            .flatten()
            .collect();
        let filler = match filler {
            Filler::Tokens(t) => {
                let t: Vec<u32> = t.into_iter().filter(|id| !strip.contains(id)).collect();
                if t.is_empty() {
                    return Err(DataError::Haystack(
                        "the filler token stream is empty".into(),
                    ));
                }
                Filler::Tokens(t)
            }
            f => f,
        };
        let repeat_ids = match &filler {
            Filler::Repeat(text) => {
                let ids = encode_piece(&tokenizer, text)?;
                if ids.is_empty() {
                    return Err(DataError::Haystack(
                        "the repeat filler text has no tokens".into(),
                    ));
                }
                ids
            }
            _ => vec![],
        };
        let identifiers = match &filler {
            Filler::Synthetic(c) => c.identifiers().to_vec(),
            _ => SyntheticCorpus::new(&SyntheticParams::default())?
                .identifiers()
                .to_vec(),
        };
        Ok(HaystackBuilder {
            tokenizer,
            style,
            filler,
            repeat_ids,
            bos: if specials.add_bos {
                specials.bos_id
            } else {
                None
            },
            identifiers,
        })
    }

    /// The resolved style.
    pub fn style(&self) -> &HaystackStyle {
        &self.style
    }

    /// The template of a task.
    pub fn template(&self, task: NeedleTask) -> &NeedleTemplate {
        match task {
            NeedleTask::Passkey => &self.style.passkey,
            NeedleTask::Niah => &self.style.niah,
            NeedleTask::Multikey => &self.style.multikey,
        }
    }

    fn is_boundary(&self, id: u32) -> bool {
        self.tokenizer
            .decode(&[id], false)
            .map(|s| {
                let t = s.trim_end_matches([' ', '\t']);
                t.ends_with(['.', '!', '?']) || t.ends_with('\n')
            })
            .unwrap_or(false)
    }

    fn value(t: &NeedleTemplate, rng: &mut impl Rng) -> String {
        let mut digits: Vec<u32> = (0..t.value_digits)
            .map(|_| rng.random_range(0..10))
            .collect();
        if !t.spaced_digits && !digits.is_empty() && digits[0] == 0 {
            digits[0] = rng.random_range(1..10);
        }
        let sep = if t.spaced_digits { " " } else { "" };
        digits
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(sep)
    }

    fn keys(&self, t: &NeedleTemplate, n: usize, rng: &mut impl Rng) -> Vec<String> {
        let mut pool: Vec<String> = match t.keys {
            KeyKind::Identifiers => self.identifiers.clone(),
            KeyKind::Words => ADJECTIVES
                .iter()
                .flat_map(|a| NOUNS.iter().map(move |n| format!("{a}-{n}")))
                .collect(),
        };
        for i in 0..n.min(pool.len()) {
            let j = rng.random_range(i..pool.len());
            pool.swap(i, j);
        }
        pool.truncate(n);
        pool
    }

    fn filler_tokens(&self, budget: usize, rng: &mut ChaCha8Rng) -> Result<Vec<u32>, DataError> {
        let mut out = Vec::with_capacity(budget);
        match &self.filler {
            Filler::Synthetic(corpus) => {
                while out.len() < budget {
                    let text = corpus.filler_text(rng, budget - out.len());
                    let ids = encode_piece(&self.tokenizer, &format!(" {text}"))?;
                    if ids.is_empty() {
                        return Err(DataError::Haystack(
                            "synthetic filler encodes to no tokens".into(),
                        ));
                    }
                    out.extend(ids);
                }
            }
            Filler::Tokens(stream) => {
                let n = stream.len();
                let mut start = rng.random_range(0..n);
                // Start right after a sentence end when one is near.
                for k in 0..n.min(512) {
                    let i = (start + k) % n;
                    if self.is_boundary(stream[i]) {
                        start = (i + 1) % n;
                        break;
                    }
                }
                out.extend((0..budget).map(|k| stream[(start + k) % n]));
            }
            Filler::Repeat(_) => {
                let n = self.repeat_ids.len();
                out.extend((0..budget).map(|k| self.repeat_ids[k % n]));
            }
        }
        out.truncate(budget);
        Ok(out)
    }

    fn align(&self, filler: &[u32], p: usize) -> usize {
        if !self.style.align_to_sentence || p == 0 || p >= filler.len() {
            return p.min(filler.len());
        }
        let mut q = p;
        while q > 0 && !self.is_boundary(filler[q - 1]) {
            q -= 1;
        }
        q
    }

    /// One haystack of exactly `length` tokens (prompt + answer), needle at `depth` in [0, 1].
    /// Deterministic in (task, length, depth, seed).
    pub fn build(
        &self,
        task: NeedleTask,
        length: usize,
        depth: f64,
        seed: u64,
    ) -> Result<Haystack, DataError> {
        if !(0.0..=1.0).contains(&depth) {
            return Err(DataError::Haystack(format!(
                "depth {depth} is not in [0, 1]"
            )));
        }
        let mix = seed
            ^ (length as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ depth.to_bits().rotate_left(17)
            ^ (task as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let mut rng = ChaCha8Rng::seed_from_u64(mix);
        let t = self.template(task);
        let n = if task == NeedleTask::Multikey {
            self.style.multikey_keys
        } else {
            1
        };
        let keys = self.keys(t, n, &mut rng);
        if keys.len() < n {
            return Err(DataError::Haystack(format!(
                "{n} keys asked for, only {} available",
                keys.len()
            )));
        }
        let mut values: Vec<String> = vec![];
        while values.len() < n {
            let v = Self::value(t, &mut rng);
            if !values.contains(&v) || t.value_digits == 0 {
                values.push(v);
            } else if t.value_digits < 3 && values.len() >= 10usize.pow(t.value_digits as u32) {
                return Err(DataError::Haystack(
                    "too few distinct values for the keys".into(),
                ));
            }
        }
        let target = rng.random_range(0..n);
        let (key, value) = (keys[target].clone(), values[target].clone());

        let mut prefix: Vec<u32> = self.bos.into_iter().collect();
        if !t.instruction.is_empty() {
            prefix.extend(encode_text(
                &self.tokenizer,
                &fill(&t.instruction, &key, &value),
            )?);
        }
        let needles: Vec<Vec<u32>> = (0..n)
            .map(|i| encode_piece(&self.tokenizer, &fill(&t.needle, &keys[i], &values[i])))
            .collect::<Result<_, _>>()?;
        let question = encode_piece(&self.tokenizer, &fill(&t.question, &key, &value))?;
        let answer = fill(&t.answer, &key, &value);
        let answer_ids = encode_piece(&self.tokenizer, &answer)?;
        let fixed = prefix.len()
            + needles.iter().map(Vec::len).sum::<usize>()
            + question.len()
            + answer_ids.len();
        if fixed > length {
            return Err(DataError::HaystackTooShort {
                task: task.name(),
                length,
                fixed,
            });
        }
        let budget = length - fixed;
        let filler = self.filler_tokens(budget, &mut rng)?;
        // Floor, as Kamradt's int(): the needle is never deeper than asked.
        let raw = if depth >= 1.0 {
            budget
        } else {
            (depth * budget as f64) as usize
        };
        let mut places: Vec<(usize, u8, usize)> = (0..n)
            .map(|i| {
                if i == target {
                    // Ties: the asked-for needle first at shallow depths, last at deep ones.
                    (
                        self.align(&filler, raw),
                        if depth <= 0.5 { 0 } else { 2 },
                        i,
                    )
                } else {
                    (self.align(&filler, rng.random_range(0..=budget)), 1, i)
                }
            })
            .collect();
        places.sort();
        let mut ids = prefix;
        let mut at = 0;
        let mut needle_pos = 0;
        for &(p, _, i) in &places {
            ids.extend_from_slice(&filler[at..p]);
            at = p;
            if i == target {
                needle_pos = ids.len();
            }
            ids.extend_from_slice(&needles[i]);
        }
        ids.extend_from_slice(&filler[at..]);
        ids.extend_from_slice(&question);
        debug_assert_eq!(ids.len() + answer_ids.len(), length);
        let p_target = places
            .iter()
            .find(|x| x.2 == target)
            .map(|x| x.0)
            .unwrap_or(0);
        Ok(Haystack {
            task,
            input_ids: ids,
            answer,
            answer_ids,
            needle_pos,
            needle_len: needles[target].len(),
            depth,
            actual_depth: if budget == 0 {
                depth
            } else {
                p_target as f64 / budget as f64
            },
            length,
            key: if t.needle.contains("{key}") || t.question.contains("{key}") {
                key
            } else {
                String::new()
            },
            value: if t.value_digits > 0 {
                value
            } else {
                String::new()
            },
        })
    }
}
