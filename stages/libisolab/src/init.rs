//! PID 1: the process a pid namespace cannot do without, and the signals it does not get.
//!
//! The first process in a new pid namespace is its *init* (`man 7 pid_namespaces`). Two
//! things are special about it. Orphans of the namespace are re-parented to it, so it must
//! reap them (`wait`), or they stay zombies. And the kernel protects it: a signal reaches it
//! only if it installed a handler for that signal, *even when the signal comes from the parent
//! namespace* (SIGKILL and SIGSTOP from an ancestor excepted). A program such as `sleep`
//! installs no handler for SIGTERM: as PID 1, `kill -TERM` does nothing to it.
//!
//! `--init` runs this small init as PID 1 instead: it forks the command (PID 2), passes on the
//! signals the runtime forwards, reaps every child, and when the command ends exits with the
//! command's code (128+N when a signal killed it: re-raising the signal would not kill PID 1).

use std::convert::Infallible;
use std::fs;

use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::exit;
use crate::process::{self, ErrorPipe, Failure};

// ANCHOR: init
/// Runs as init: forks the command with `start` (which ends in `execve`), then forwards
/// signals and reaps children until the command is gone, and exits with its code.
pub fn run<F>(start: F, pipe: &ErrorPipe) -> Result<Infallible, Failure>
where
    F: FnOnce() -> Result<Infallible, Failure>,
{
    // Orphans are re-parented to us even outside a new pid namespace (man 2 prctl).
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and nothing else.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    // Chapter 1's spawn: blocks the forwarded signals (blocked signals are queued even for
    // PID 1), forks, and waits until the command has exec'd or failed.
    let command = process::spawn(start)?;
    pipe.command_started();

    let mut waited = process::forwarded_signals();
    waited.add(Signal::SIGCHLD);
    let status = loop {
        if let Some(status) = reap(command.pid) {
            break status;
        }
        match process::wait_signal(&waited) {
            // Ctrl-C from a terminal reaches the whole process group already.
            Ok((signal, from_kernel)) if signal != Signal::SIGCHLD && !from_kernel => {
                let _ = signal::kill(command.pid, signal);
            }
            Ok(_) => {}
            Err(error) => return Err(error.into()),
        }
    };
    // SAFETY: _exit ends init at once; the kernel then kills what is left in the namespace.
    unsafe { libc::_exit(i32::from(exit::code_for(status))) }
}

/// Reaps every child that has ended; returns the command's final status once it is among them.
fn reap(command: Pid) -> Option<WaitStatus> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(status @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                if pid == command =>
            {
                return Some(status)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(_) => continue, // an orphan reaped, or a stop/continue: look again
        }
    }
}
// ANCHOR_END: init

// ANCHOR: pid1_drops
/// Will `pid`, the PID 1 of a namespace, drop `signal`? Yes unless it catches it (a handler)
/// or blocks it (then it stays pending): `SigCgt` and `SigBlk` in `/proc/<pid>/status`
/// (`man 5 proc_pid_status`).
pub fn pid1_drops(pid: Pid, signal: Signal) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = 1u64 << (signal as i32 - 1);
    (mask("SigCgt:") | mask("SigBlk:")) & bit == 0
}
// ANCHOR_END: pid1_drops
