//! Integration tests of the data library: each source format on fixtures written here, the
//! tokenizer, shards and samplers, the synthetic corpus's long-range structure, haystacks, stats,
//! and the errors a researcher meets.

mod bench;
mod errors;
mod eval_only;
mod haystacks;
mod prepare;
mod sources;
mod synthetic;

use std::path::{Path, PathBuf};

use ropelens::data::{DataError, DataPrepParams, DataStats, PrepareContext, prepare};
use ropelens::progress::Silent;

/// Parses `toml` as `[stages.data]` parameters and prepares into `out`.
pub fn prep(toml_text: &str, base: &Path, out: &Path, seed: u64) -> Result<DataStats, DataError> {
    prep_from(toml_text, base, out, seed, None)
}

pub fn prep_from(
    toml_text: &str,
    base: &Path,
    out: &Path,
    seed: u64,
    tokenizer_dir: Option<PathBuf>,
) -> Result<DataStats, DataError> {
    let params: DataPrepParams = toml::from_str(toml_text).expect("test parameters parse");
    prepare(
        &params,
        &PrepareContext {
            out_dir: out.to_path_buf(),
            base_dir: base.to_path_buf(),
            seed,
            tokenizer_dir,
            progress: &Silent,
        },
    )
}

/// A small synthetic corpus, the built-in study's data in miniature.
pub const SMALL_SYNTHETIC: &str = r#"
source = { synthetic = { documents = 300, min_tokens = 64, max_tokens = 2048 } }
split = { valid_fraction = 0.1, valid_min_tokens = 1024 }
"#;

/// [`SMALL_SYNTHETIC`] prepared once (seed 7) for the tests that only read it.
pub fn small_synthetic() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data-small-synthetic");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        prep(SMALL_SYNTHETIC, &d, &d.join("out"), 7).unwrap();
        d.join("out")
    })
}
