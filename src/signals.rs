//! Requests that arrive as signals, as flags the long-running code polls.
//!
//! - Interrupt (SIGINT, SIGTERM) for `pipe run` with an executor whose jobs outlive it: the
//!   scheduler cancels its cluster jobs, then exits.
//! - Checkpoint (SIGUSR1) for `pipe exec` on a Slurm node: `sbatch --signal=B:USR1@60` warns a
//!   resumable job a minute before its time limit; the training loop then writes a checkpoint at
//!   its next step and goes on, so the resubmitted job loses at most that minute.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPT: AtomicBool = AtomicBool::new(false);
static CHECKPOINT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPT.store(true, Ordering::SeqCst);
}

extern "C" fn on_checkpoint(_: libc::c_int) {
    CHECKPOINT.store(true, Ordering::SeqCst);
}

fn catch(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: the handlers only store into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(signal, handler as libc::sighandler_t);
    }
}

/// Catch SIGINT and SIGTERM from now on (see [`interrupted`]).
pub fn catch_interrupt() {
    catch(libc::SIGINT, on_interrupt);
    catch(libc::SIGTERM, on_interrupt);
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupt`].
pub fn interrupted() -> bool {
    INTERRUPT.load(Ordering::SeqCst)
}

/// Catch SIGUSR1 from now on as a checkpoint request (see [`take_checkpoint_request`]).
pub fn catch_checkpoint_request() {
    catch(libc::SIGUSR1, on_checkpoint);
}

/// Whether a checkpoint was requested since the last call (clears the request).
pub fn take_checkpoint_request() -> bool {
    CHECKPOINT.swap(false, Ordering::SeqCst)
}
