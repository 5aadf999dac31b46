//! The generic `command` stage: run an external program, like a DVC stage.
//!
//! The program runs in the instance's output directory with its needs' output directories in
//! `PIPE_NEED_<NAME>` and its parameters as JSON in `PIPE_PARAMS`; every `metrics/*.parquet` it
//! leaves becomes a results table. It makes the runner useful beyond this study and gives the
//! runner's tests a cheap stage to drive.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use anyhow::{Context, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, ParamError, Resources, StageKind};

/// Runs `args` as a process in the instance's output directory.
pub struct Command;

/// Parameters of a `command` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The program and its arguments, e.g. `["sh", "-c", "echo hi > out.txt"]`. A program
    /// written as a relative path with a `/` (`./train.sh`) is resolved against the pipeline
    /// file's directory and its content is part of the key.
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files or directories the command reads (relative to the pipeline file); their content is
    /// part of the key.
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// GPUs held while running (the default of `resources.gpus`).
    #[serde(default)]
    pub gpu: u32,
    /// Keep what a failed or killed attempt left in the build directory for the next attempt.
    #[serde(default)]
    pub resumable: bool,
    /// Free-form values for the program, passed along in `PIPE_PARAMS` (and so part of the
    /// key); a `matrix` may sweep them (`matrix.vars = [{ lr = 1e-3 }, ...]`).
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
}

/// The program's path when it is a relative path to a file beside the pipeline.
fn local_program(args: &[String]) -> Option<&Path> {
    let program = Path::new(args.first()?);
    (program.is_relative() && program.components().count() > 1).then_some(program)
}

/// The longest `:`-joined directory list passed in `PIPE_NEED_<NAME>` (bytes); longer lists are
/// only in `PIPE_NEED_<NAME>_FILE`. Linux refuses any one environment string over 128 KiB.
pub const NEED_ENV_MAX: usize = 64 * 1024;

/// A need's directories, one per line, in `logs/pipe_need_<name>.txt` of the build directory,
/// removed when this value is dropped (the program has ended). Not in /tmp: a kill -9 of `pipe`
/// would leave it there for good, while in the build directory the next attempt rewrites it or
/// the directory is cleared.
struct NeedList {
    path: PathBuf,
    /// The length of the `:`-joined form, in bytes.
    joined_len: usize,
}

impl NeedList {
    fn write<'a>(
        logs: &Path,
        name: &str,
        dirs: impl Iterator<Item = &'a Path>,
    ) -> std::io::Result<NeedList> {
        let dirs: Vec<String> = dirs.map(|d| d.to_string_lossy().to_string()).collect();
        let path = logs.join(format!("{}.txt", need_env_name(name).to_ascii_lowercase()));
        let text: String = dirs.iter().map(|d| format!("{d}\n")).collect();
        std::fs::write(&path, text)?;
        Ok(NeedList {
            path,
            joined_len: dirs
                .iter()
                .map(|d| d.len() + 1)
                .sum::<usize>()
                .saturating_sub(1),
        })
    }
}

impl Drop for NeedList {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `PIPE_NEED_<NAME>`: upper case, anything but letters and digits becomes `_`.
pub fn need_env_name(name: &str) -> String {
    let mut out = String::from("PIPE_NEED_");
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    out
}

impl StageKind for Command {
    const KIND: &'static str = "command";
    const VERSION: u32 = 1;
    type Params = CommandParams;

    fn needs() -> Needs {
        Needs::Any
    }

    fn inputs(params: &CommandParams, _pipeline_dir: &Path) -> Vec<PathBuf> {
        let mut inputs = params.inputs.clone();
        inputs.extend(local_program(&params.args).map(Path::to_path_buf));
        inputs
    }

    fn resources(params: &CommandParams, _device: &str) -> Resources {
        Resources {
            gpus: params.gpu,
            ..Resources::default()
        }
    }

    fn check(params: &CommandParams) -> Result<(), ParamError> {
        if params.args.is_empty() {
            return Err(ParamError::new("args", "is empty: give the program to run"));
        }
        if params.args[0].is_empty() {
            return Err(ParamError::new("args", "names an empty program"));
        }
        if let Some(a) = params.args.iter().find(|a| a.contains('\0')) {
            return Err(ParamError::new(
                "args",
                format!("`{}` holds a NUL character", a.escape_debug()),
            ));
        }
        for (name, value) in &params.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                return Err(ParamError::new(
                    format!("env.{name}"),
                    format!(
                        "`{}` is not an environment variable name (empty, or holding `=` or NUL) or its value holds NUL",
                        name.escape_debug()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn resumable(params: &CommandParams) -> bool {
        params.resumable
    }

    fn run(params: &CommandParams, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        let Some(first) = params.args.first() else {
            bail!("`args` is empty: give the program to run");
        };
        let program = match local_program(&params.args) {
            Some(p) => ctx.resolve(p),
            None => PathBuf::from(first),
        };
        let mut cmd = Process::new(&program);
        cmd.args(&params.args[1..]).current_dir(ctx.out_dir);
        // Before anything is written into the build directory: a process of an earlier attempt
        // may still be at work in it.
        let work_lock = super::WorkLock::hold(ctx.out_dir)?;
        let logs = ctx.out_dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        // Each need's directories, one per line, in a file (kept until the program ends), and
        // `:`-separated in the environment where that fits: one environment string holds at
        // most 128 KiB, and a gather of thousands of instances would not start at all.
        let mut need_files = Vec::new();
        for (name, ups) in ctx.needs {
            let list = NeedList::write(&logs, name, ups.iter().map(|u| u.dir.as_path()))
                .with_context(|| format!("need `{name}`: writing its list of directories"))?;
            cmd.env(format!("{}_FILE", need_env_name(name)), &list.path);
            if list.joined_len <= NEED_ENV_MAX {
                let dirs = std::env::join_paths(ups.iter().map(|u| &u.dir))
                    .with_context(|| format!("need `{name}`: a directory name contains `:`"))?;
                cmd.env(need_env_name(name), dirs);
            } else {
                ctx.progress.message(&format!(
                    "need `{name}`: {} directories ({} bytes) are too many for {}; the program finds them in {}_FILE",
                    ups.len(),
                    list.joined_len,
                    need_env_name(name),
                    need_env_name(name)
                ));
            }
            need_files.push(list);
        }
        cmd.env("PIPE_PARAMS", serde_json::to_string(params)?)
            .env("PIPE_SEED", ctx.seed.to_string())
            .env("PIPE_DEVICE", ctx.device)
            .env("PIPE_STAGE", ctx.stage)
            .env("PIPE_INSTANCE", ctx.instance)
            .env("PIPE_OUT", ctx.out_dir)
            .env("PIPE_PIPELINE_DIR", ctx.pipeline_dir)
            .envs(&params.env);
        let stdout = std::fs::File::create(logs.join("stdout.txt"))?;
        // Its own process group (the whole group is killed if `run` leaves early), and killed
        // when the thread that started it dies, even by kill -9 of `pipe`: an orphan would go
        // on writing into the build directory beside the re-run that replaces it.
        // The program and whatever it starts inherit the build directory's work lock: a
        // process that outlives `pipe` (a background job of the script, which the parent-death
        // signal does not reach) keeps it held, and no later run builds into the directory
        // beside it (`WorkLock`).
        cmd.process_group(0);
        let lock_fd = work_lock.fd();
        // SAFETY: prctl(2) and fcntl(2) are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::fcntl(lock_fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.stdout(stdout)
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        ctx.progress.start("command", 1);
        ctx.progress.message(&params.args.join(" "));
        let mut child = super::WorkLock::spawn(&mut cmd)
            .with_context(|| format!("cannot start `{}`", program.display()))?;
        // A checkpoint request (SIGUSR1 from Slurm before a time limit) is passed on to the
        // program, which may checkpoint on it (`trap ... USR1`).
        let done = std::sync::atomic::AtomicBool::new(false);
        let pid = child.id() as libc::pid_t;
        let (err, status) = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    if crate::signals::take_checkpoint_request() {
                        // SAFETY: kill(2) on our own child, which `wait` has not reaped yet.
                        unsafe { libc::kill(pid, libc::SIGUSR1) };
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
            // Keep stderr both in the log and for the error message.
            let mut err = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                pipe.read_to_string(&mut err).ok();
            }
            let status = child.wait();
            // Whatever the program left running in its group ends with it.
            // SAFETY: kill(2) on the process group the child led; no memory is involved.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (err, status)
        });
        let status = status?;
        drop(need_files);
        drop(work_lock);
        std::fs::write(logs.join("stderr.txt"), &err)?;
        ctx.progress.advance(1);
        if !status.success() {
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let how = match status.code() {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            };
            if tail.is_empty() {
                bail!("`{}` {how}", params.args.join(" "));
            }
            bail!(
                "`{}` {how}; stderr:\n{}",
                params.args.join(" "),
                tail.join("\n")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_names_become_env_names() {
        assert_eq!(need_env_name("data"), "PIPE_NEED_DATA");
        assert_eq!(need_env_name("my-model.v2"), "PIPE_NEED_MY_MODEL_V2");
    }

    #[test]
    fn only_relative_paths_with_a_slash_are_local_programs() {
        let args = |s: &str| vec![s.to_string()];
        assert_eq!(
            local_program(&args("./run.sh")),
            Some(Path::new("./run.sh"))
        );
        assert_eq!(
            local_program(&args("scripts/run.sh")),
            Some(Path::new("scripts/run.sh"))
        );
        assert_eq!(local_program(&args("sh")), None);
        assert_eq!(local_program(&args("/bin/sh")), None);
    }
}
