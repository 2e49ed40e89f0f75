//! PID 1: the process a pid namespace cannot do without, the signals it does not get, and how a
//! runtime stops a container all the same.
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
//! Without a pid namespace the same init runs even without `--init`: no kernel ends what the
//! command leaves behind when it or the runtime dies, so the init does ([`run`]).
//!
//! Without `--init`, the runtime stops a container as `docker stop` does ([`Stopping`]): the
//! signal first, and SIGKILL, which PID 1 cannot drop, once a grace period has passed.

use std::convert::Infallible;
use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{self, Pid};

use crate::error::Result;
use crate::exit;
use crate::process::{self, Child, ErrorPipe, Failure, Waiting};

/// Seconds a container asked to stop may take before SIGKILL, unless `--stop-timeout` says
/// otherwise: `docker stop`'s default.
pub const DEFAULT_STOP_TIMEOUT: u64 = 10;

// ANCHOR: init
/// Runs as init: forks the command with `start` (which ends in `execve`), then forwards
/// signals and reaps children until the command is gone, ends what it left behind, and exits
/// with its code.
pub fn run<F>(start: F, pipe: &ErrorPipe) -> Result<Infallible, Failure>
where
    F: FnOnce() -> Result<Infallible, Failure>,
{
    // A signal our caller ignored would stay ignored here too (see process::reset_signals).
    process::reset_signals()?;
    // Orphans are re-parented to us even outside a new pid namespace (man 2 prctl).
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and nothing else.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let runtime = watch_the_runtime();
    let init = unistd::getpid();
    // Chapter 1's spawn: blocks the forwarded signals (blocked signals are queued even for
    // PID 1), forks, and waits until the command has exec'd or failed.
    let command = process::spawn(|| {
        // The command dies with us (a no-op as PID 2: the namespace dies with its PID 1).
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and nothing else.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        if unistd::getppid() != init {
            // We died before the prctl: no one would end the command.
            // SAFETY: _exit never returns and runs none of the parent's exit handlers.
            unsafe { libc::_exit(i32::from(exit::RUNTIME_ERROR)) }
        }
        start()
    })?;
    pipe.command_started();

    let mut waited = process::forwarded_signals();
    waited.add(Signal::SIGCHLD);
    let status = loop {
        if let Some(status) = reap(command.pid) {
            break status;
        }
        match process::wait_signal(&waited, None) {
            // The runtime is gone (the SIGHUP of watch_the_runtime): nobody would end the
            // container now, so we do, and go.
            Ok(Some(_)) if runtime.is_some_and(|pid| unistd::getppid() != pid) => {
                kill_children();
                // SAFETY: _exit ends init at once; nobody is left to read its code.
                unsafe { libc::_exit(i32::from(exit::RUNTIME_ERROR)) }
            }
            // Ctrl-C from a terminal reaches the whole process group already.
            Ok(Some((signal, from_terminal))) if signal != Signal::SIGCHLD && !from_terminal => {
                let _ = signal::kill(command.pid, signal);
            }
            Ok(_) => {}
            Err(error) => return Err(error.into()),
        }
    };
    // What the command leaves behind ends with it, as it does in a pid namespace whose PID 1
    // exits (man 7 pid_namespaces); without one, nothing else would end it.
    kill_children();
    // SAFETY: _exit ends init at once; the kernel then kills what is left in the namespace.
    unsafe { libc::_exit(i32::from(exit::code_for(status))) }
}

/// Without a pid namespace, the kernel does not end the container when the runtime dies: we
/// must. The parent-death signal set at the clone (SIGKILL, man 2 PR_SET_PDEATHSIG) becomes
/// SIGHUP, one of the signals our loop waits for, told apart from a forwarded SIGHUP by our
/// parent having changed. Returns the runtime's pid to compare with. As PID 1 we keep SIGKILL:
/// the kernel then ends the whole namespace.
fn watch_the_runtime() -> Option<Pid> {
    if unistd::getpid() == Pid::from_raw(1) {
        return None;
    }
    // Were the runtime gone already, SIGKILL would be on its way to us: getppid is its pid.
    let runtime = unistd::getppid();
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and nothing else.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP) };
    // Until spawn blocks it, SIGHUP kills us: the command is not started yet, nothing leaks.
    Some(runtime)
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

// ANCHOR: kill_children
/// As a subreaper: sends SIGKILL to every child we still have, reaps it, and does the same to
/// the children its death hands us (orphans come to the nearest subreaper, man 2 prctl
/// `PR_SET_CHILD_SUBREAPER`), until none is left. The children are listed in
/// `/proc/thread-self/children` (man 5 proc); false when there is no such file to read (no
/// /proc, as in a container without a mount namespace).
pub fn kill_children() -> bool {
    loop {
        let Ok(listed) = fs::read_to_string("/proc/thread-self/children") else { return false };
        let children: Vec<Pid> = listed
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .map(Pid::from_raw)
            .collect();
        if children.is_empty() {
            return true;
        }
        for &child in &children {
            let _ = signal::kill(child, Signal::SIGKILL);
        }
        // Each was sent SIGKILL (or is a zombie already): these waits are short.
        for &child in &children {
            let _ = waitpid(child, None);
        }
    }
}
// ANCHOR_END: kill_children

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

// ANCHOR: stopping
/// How the runtime stops its container when it is asked to, as `docker stop` does: the signal
/// first, then SIGKILL if the command is still running `grace` later (`--stop-timeout`).
///
/// SIGTERM, SIGINT, SIGHUP and SIGQUIT passed on to the command ask it to stop. As PID 1 of
/// its namespace it drops those it has no handler for, and one with a handler may still hang;
/// SIGKILL from the parent namespace always gets through (man 7 pid_namespaces, man 7 signal).
///
/// A terminal's Ctrl-C is different: the kernel delivered it to the command already (to the
/// whole foreground process group), and a program that catches it (a shell, an editor, a
/// REPL) means to go on. So it asks for a stop only when PID 1 dropped it; pressed again while
/// a stop is under way, it kills at once.
#[derive(Debug)]
pub struct Stopping {
    grace: Duration,
    command_is_pid1: bool,
    /// When the command gets SIGKILL, and the signal that asked it to stop.
    deadline: Option<(Instant, Signal)>,
    /// Did we say already that PID 1 drops signals?
    warned: bool,
    /// Did we send SIGKILL already?
    killed: bool,
}

impl Stopping {
    /// A runtime whose command may take `grace` to stop, and is PID 1 or not.
    pub fn new(grace: Duration, command_is_pid1: bool) -> Stopping {
        // A century is forever enough, and keeps `Instant + grace` from overflowing.
        let grace = grace.min(Duration::from_secs(100 * 365 * 24 * 3600));
        Stopping { grace, command_is_pid1, deadline: None, warned: false, killed: false }
    }

    /// Watches the runtime's wait for `child` (see `process::wait_forwarding_signals_and`):
    /// sends SIGKILL when it is time, and returns the next deadline and what to tell the user.
    pub fn watch(&mut self, child: Pid, waiting: Waiting) -> (Option<Instant>, Vec<String>) {
        let mut said = Vec::new();
        match waiting {
            _ if self.killed => {}
            Waiting::Deadline => {
                if let Some((_, signal)) = self.deadline {
                    said.push(format!(
                        "the command is still running {} after {}: SIGKILL sent \
                         (--stop-timeout sets the wait)",
                        seconds(self.grace),
                        signal.as_str()
                    ));
                    self.kill(child);
                }
            }
            Waiting::Signal { signal, from_terminal } if asks_to_stop(signal) => {
                let dropped = self.command_is_pid1 && pid1_drops(child, signal);
                if from_terminal && self.deadline.is_some() {
                    said.push(format!("{} again: SIGKILL sent to the command", key(signal)));
                    self.kill(child);
                } else if from_terminal && !dropped {
                    // The command got it and decides: it may stop, or mean to go on.
                } else if self.grace.is_zero() {
                    said.push(format!(
                        "{} {}; --stop-timeout 0: SIGKILL sent to the command",
                        signal.as_str(),
                        if dropped { "dropped by PID 1" } else { "passed on" }
                    ));
                    self.kill(child);
                } else {
                    if dropped && !self.warned {
                        said.push(self.pid1_warning(signal, from_terminal));
                        self.warned = true;
                    }
                    self.deadline.get_or_insert((Instant::now() + self.grace, signal));
                }
            }
            Waiting::Signal { .. } => {}
        }
        (self.deadline.filter(|_| !self.killed).map(|(at, _)| at), said)
    }
}
// ANCHOR_END: stopping

impl Stopping {
    /// The line that says PID 1 dropped `signal`, and what will happen.
    fn pid1_warning(&self, signal: Signal, from_terminal: bool) -> String {
        let again =
            if from_terminal { format!(" ({} again: at once)", key(signal)) } else { "".into() };
        format!(
            "{} not delivered: the command is PID 1 of its pid namespace and has no handler for \
             it (man 7 pid_namespaces); SIGKILL in {}{again}; --init gives it an init that \
             passes signals on",
            signal.as_str(),
            seconds(self.grace)
        )
    }

    fn kill(&mut self, child: Pid) {
        let _ = signal::kill(child, Signal::SIGKILL);
        self.killed = true;
    }
}

/// Waits for the container's first process `child` as `process::wait_forwarding_signals`
/// does, stopping it as `stopping` says and giving `say` what to tell the user as it happens;
/// then, as a subreaper (see `namespaces::spawn_into`), ends what it left behind.
pub fn wait_stopping(
    child: Child,
    mut stopping: Stopping,
    mut say: impl FnMut(&[String]),
) -> Result<WaitStatus> {
    let status = process::wait_forwarding_signals_and(child, |pid, waiting| {
        let (deadline, said) = stopping.watch(pid, waiting);
        if !said.is_empty() {
            say(&said);
        }
        deadline
    });
    kill_children();
    status
}

/// What to tell the user before a container without a pid namespace runs.
pub fn without_pid_namespace() -> String {
    "no pid namespace: what the command starts is ended by our init (a subreaper), not by the \
     kernel, and a process that kills that init first can outlive the container; add pid to \
     --ns for the kernel's guarantee (man 7 pid_namespaces)"
        .to_string()
}

/// The signals that ask a program to stop (`man 7 signal`: their default action ends it).
fn asks_to_stop(signal: Signal) -> bool {
    matches!(signal, Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT)
}

/// The key that sends `signal` from a terminal.
fn key(signal: Signal) -> &'static str {
    match signal {
        Signal::SIGQUIT => "Ctrl-\\",
        Signal::SIGHUP => "a hangup",
        _ => "Ctrl-C",
    }
}

fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid that is surely no process: the watcher's kill fails harmlessly.
    const NOBODY: Pid = Pid::from_raw(i32::MAX);

    fn forwarded(signal: Signal) -> Waiting {
        Waiting::Signal { signal, from_terminal: false }
    }

    #[test]
    fn a_stop_signal_starts_the_grace_period_and_the_deadline_kills() {
        let mut stopping = Stopping::new(Duration::from_secs(10), false);
        let before = Instant::now();
        let (deadline, said) = stopping.watch(NOBODY, forwarded(Signal::SIGTERM));
        let deadline = deadline.expect("a deadline");
        assert!(deadline >= before + Duration::from_secs(10), "{said:?}");
        assert!(said.is_empty(), "not PID 1: nothing to say yet: {said:?}");
        // Another stop signal does not move the deadline.
        assert_eq!(stopping.watch(NOBODY, forwarded(Signal::SIGINT)).0, Some(deadline));
        let (after, said) = stopping.watch(NOBODY, Waiting::Deadline);
        assert_eq!(after, None);
        assert_eq!(
            said,
            ["the command is still running 10 s after SIGTERM: SIGKILL sent \
                           (--stop-timeout sets the wait)"]
        );
    }

    #[test]
    fn other_signals_and_a_caught_ctrl_c_start_nothing() {
        let mut stopping = Stopping::new(Duration::from_secs(10), false);
        assert_eq!(stopping.watch(NOBODY, forwarded(Signal::SIGUSR1)), (None, vec![]));
        let ctrl_c = Waiting::Signal { signal: Signal::SIGINT, from_terminal: true };
        assert_eq!(stopping.watch(NOBODY, ctrl_c), (None, vec![]));
    }

    #[test]
    fn zero_kills_at_once_and_ctrl_c_during_a_stop_too() {
        let mut stopping = Stopping::new(Duration::ZERO, false);
        let (deadline, said) = stopping.watch(NOBODY, forwarded(Signal::SIGTERM));
        assert_eq!(deadline, None);
        assert_eq!(said, ["SIGTERM passed on; --stop-timeout 0: SIGKILL sent to the command"]);

        let mut stopping = Stopping::new(Duration::from_secs(10), false);
        stopping.watch(NOBODY, forwarded(Signal::SIGTERM));
        let ctrl_c = Waiting::Signal { signal: Signal::SIGINT, from_terminal: true };
        let (deadline, said) = stopping.watch(NOBODY, ctrl_c);
        assert_eq!(deadline, None);
        assert_eq!(said, ["Ctrl-C again: SIGKILL sent to the command"]);
    }

    #[test]
    fn the_pid1_warning_says_what_will_happen() {
        let stopping = Stopping::new(Duration::from_secs(10), true);
        let line = stopping.pid1_warning(Signal::SIGTERM, false);
        assert!(line.starts_with("SIGTERM not delivered: the command is PID 1"), "{line}");
        assert!(line.contains("SIGKILL in 10 s; --init gives it an init"), "{line}");
        let line = stopping.pid1_warning(Signal::SIGINT, true);
        assert!(line.contains("SIGKILL in 10 s (Ctrl-C again: at once); --init"), "{line}");
    }
}
