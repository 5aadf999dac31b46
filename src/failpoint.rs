//! Failpoints: named moments in the code where a test makes `pipe` die or slow down, chosen at
//! run time by the `PIPE_FAILPOINT` environment variable (no cargo feature, so the tested binary
//! is the shipped one).
//!
//! `PIPE_FAILPOINT` is a comma-separated list of `POINT:N` (the process kills itself with SIGKILL,
//! as `kill -9` or a lost node would, at the N-th time it reaches `POINT`) and `POINT:sleep=MS`
//! (it sleeps MS milliseconds each time, e.g. to make training outlast a Slurm time limit).
//! Hits are counted per process. The points, in the order a cache entry is written:
//!
//! | point | where |
//! |---|---|
//! | `train-step` | after each optimiser step, before its checkpoint |
//! | `checkpoint-rename` | a checkpoint's files are written under `.tmp-step-N/`, not yet renamed |
//! | `checkpoint-prune` | a checkpoint is in place, the older ones not yet removed |
//! | `needle-trial` | a needle trial is appended to `needle_trials.jsonl` |
//! | `atomic-write` | a file written atomically (outputs, tables, records, results) is in its temporary, not yet renamed |
//! | `instance-record` | a build is finished and its key file written, `instances/<pipeline>/<instance>.json` not yet |
//! | `entry-rename` | the record is written, the `.partial` not yet renamed into the entry |
//! | `entry-scratch` | the entry is in place, its scratch folders (checkpoints) not yet removed |
//! | `results-publish` | between two tables gathered into `results/<pipeline>/` |
//!
//! An unknown point name is an error at the first hit of any point, so a test cannot pass
//! because of a typo.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The environment variable read.
pub const ENV: &str = "PIPE_FAILPOINT";

/// Every point [`hit`] is called with.
pub const POINTS: &[&str] = &[
    "train-step",
    "checkpoint-rename",
    "checkpoint-prune",
    "needle-trial",
    "atomic-write",
    "instance-record",
    "entry-rename",
    "entry-scratch",
    "results-publish",
];

/// What to do at a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// SIGKILL this process at the n-th hit (1-based).
    KillAt(u64),
    /// Sleep this long at every hit.
    Sleep(Duration),
}

/// Parse `PIPE_FAILPOINT`'s value.
fn parse(spec: &str) -> Result<BTreeMap<String, Action>, String> {
    let mut out = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, what) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}`: expected POINT:N or POINT:sleep=MS"))?;
        if !POINTS.contains(&name) {
            return Err(format!(
                "`{name}` is not a failpoint (points: {})",
                POINTS.join(", ")
            ));
        }
        let action = match what.strip_prefix("sleep=") {
            Some(ms) => {
                Action::Sleep(Duration::from_millis(ms.parse().map_err(|_| {
                    format!("`{part}`: sleep=MS needs whole milliseconds")
                })?))
            }
            None => match what.parse::<u64>() {
                Ok(n) if n >= 1 => Action::KillAt(n),
                _ => return Err(format!("`{part}`: N must be a whole number from 1")),
            },
        };
        out.insert(name.to_string(), action);
    }
    Ok(out)
}

struct Armed {
    actions: BTreeMap<String, Action>,
    hits: Mutex<BTreeMap<&'static str, u64>>,
}

fn armed() -> &'static Option<Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let spec = std::env::var(ENV).ok().filter(|s| !s.trim().is_empty())?;
        match parse(&spec) {
            Ok(actions) => Some(Armed {
                actions,
                hits: Mutex::new(BTreeMap::new()),
            }),
            Err(e) => {
                eprintln!("error: {ENV}: {e}");
                std::process::exit(2);
            }
        }
    })
}

/// The code reached `point`: do what `PIPE_FAILPOINT` says for it, if anything. Costs one
/// atomic load when the variable is unset.
pub fn hit(point: &'static str) {
    debug_assert!(POINTS.contains(&point), "unlisted failpoint {point}");
    let Some(armed) = armed() else {
        return;
    };
    let Some(&action) = armed.actions.get(point) else {
        return;
    };
    match action {
        Action::Sleep(d) => std::thread::sleep(d),
        Action::KillAt(n) => {
            let mut hits = armed.hits.lock().unwrap_or_else(|e| e.into_inner());
            let count = hits.entry(point).or_insert(0);
            *count += 1;
            if *count == n {
                eprintln!("failpoint {point}: hit {n}, killing this process");
                // SAFETY: kill(2) on ourselves; SIGKILL cannot be caught, nothing runs after.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_typos_are_refused() {
        let m = parse("entry-rename:2, train-step:sleep=250").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.get("entry-rename"), Some(&Action::KillAt(2)));
        assert_eq!(
            m.get("train-step"),
            Some(&Action::Sleep(Duration::from_millis(250)))
        );
        let e = parse("entry-renam:1").err().unwrap_or_default();
        assert!(e.contains("`entry-renam` is not a failpoint"), "{e}");
        assert!(parse("entry-rename:0").is_err());
        assert!(parse("entry-rename").is_err());
        assert!(parse("train-step:sleep=x").is_err());
    }
}
