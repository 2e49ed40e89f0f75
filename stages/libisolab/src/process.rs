//! Starting the contained process: fork, set it up, exec — and report what went wrong.
//!
//! A runtime does its set-up (chroot, dropping privileges, and in later chapters namespaces,
//! mounts and cgroups) in the *child*, between `fork(2)` and `execve(2)`, because those calls
//! change the calling process and the runtime itself must stay on the host. That creates a
//! problem: if a step fails in the child, the parent must learn which step and why, and the
//! child's exit code alone cannot say it. The classic answer (used by runc, crun and Rust's own
//! `std::process`) is an *error pipe*: a pipe whose write end is `O_CLOEXEC`. If `execve`
//! succeeds the kernel closes it and the parent reads end-of-file; if a step fails, the child
//! writes the error into it before exiting.

use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{self, ForkResult, Pid};

use crate::error::{Error, Result, SysResultExt};
use crate::exit;

/// The PATH a contained command gets unless `--env PATH=…` says otherwise.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the child did not reach its command, and the exit code that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 125, 126 or 127 (see [`crate::exit`]).
    pub code: u8,
    /// What failed, in words.
    pub message: String,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure { code: exit::RUNTIME_ERROR, message: error.to_string() }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// What the child runs after its set-up: argv, environment, working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The program (a path, or a name looked up in the environment's PATH) and its arguments.
    pub argv: Vec<OsString>,
    /// `KEY=VALUE` pairs, exactly what the command will see.
    pub env: Vec<(OsString, OsString)>,
    /// The directory to start in, inside the new root.
    pub workdir: PathBuf,
}

impl Command {
    /// A command with the minimal environment a contained process gets: PATH, HOME and TERM
    /// (the host's TERM, so that an interactive shell draws correctly), then `extra` on top.
    pub fn new(argv: Vec<OsString>, home: &str, extra: &[(OsString, OsString)]) -> Self {
        let term = std::env::var_os("TERM").unwrap_or_else(|| "xterm".into());
        let mut env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), home.into()),
            ("TERM".into(), term),
        ];
        for (key, value) in extra {
            env.retain(|(existing, _)| existing != key);
            env.push((key.clone(), value.clone()));
        }
        Command { argv, env, workdir: PathBuf::from("/") }
    }

    fn env_value(&self, key: &str) -> Option<&OsStr> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_os_str())
    }
}

/// Parses `KEY=VALUE` (as given to `--env`); the key must be non-empty.
pub fn parse_env(text: &str) -> Result<(OsString, OsString)> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.into(), value.into())),
        _ => Err(Error::Invalid(format!("invalid --env '{text}': expected KEY=VALUE"))),
    }
}

/// A started child: its pid, and the signal mask to restore once it is gone.
#[derive(Debug)]
pub struct Child {
    /// The child's pid, as the parent sees it.
    pub pid: Pid,
    saved_mask: SigSet,
}

/// The signals the runtime passes on to its child instead of dying of them itself.
pub fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(signal);
    }
    set
}

// ANCHOR: spawn
/// Forks; the child runs `child_main` (which ends by exec'ing the command) and the parent gets
/// the child's pid once the command is running — or the child's [`Failure`] if it is not.
///
/// The parent must be single-threaded: after `fork(2)` only the calling thread exists in the
/// child, and a lock held by another thread would never be released.
pub fn spawn<F>(child_main: F) -> Result<Child, Failure>
where
    F: FnOnce() -> Result<Infallible, Failure>,
{
    // Block the signals we forward (and SIGCHLD) *before* forking, so none is lost between
    // fork and the wait loop; the child unblocks them again before its command runs.
    let saved_mask = block_for_child()?;

    let (error_read, error_write) = error_pipe()?;
    // SAFETY: the stage binaries are single-threaded (see above), so the child may allocate
    // and run ordinary Rust code until it execs.
    match unsafe { unistd::fork() } {
        Err(errno) => {
            restore(&saved_mask);
            Err(Error::sys("fork", "", errno).into())
        }
        Ok(ForkResult::Child) => {
            drop(error_read);
            run_child(error_write, &saved_mask, |_| child_main())
        }
        Ok(ForkResult::Parent { child }) => {
            drop(error_write);
            wait_for_exec(Child { pid: child, saved_mask }, error_read)
        }
    }
}
// ANCHOR_END: spawn

// The pieces below are shared by every way of starting a child: `fork(2)` here, `clone(2)`
// with namespaces in chapter 2 (`crate::namespaces::spawn`).

/// Blocks the forwarded signals and SIGCHLD; returns the mask to restore afterwards.
pub(crate) fn block_for_child() -> Result<SigSet> {
    let mut blocked = forwarded_signals();
    blocked.add(Signal::SIGCHLD);
    block(&blocked)
}

/// The child's end of the error pipe, lent to the code that runs in the child.
///
/// The parent learns that the command runs when every copy of this end is closed: `execve`
/// closes it (it is `O_CLOEXEC`). A child that does not exec the command itself, but forks it
/// and stays around (chapter 2's init), says so with [`ErrorPipe::command_started`].
pub struct ErrorPipe(std::cell::Cell<Option<OwnedFd>>);

impl std::fmt::Debug for ErrorPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErrorPipe")
    }
}

impl ErrorPipe {
    /// Closes our end: the command is running, nothing more will be reported.
    pub fn command_started(&self) {
        drop(self.0.take());
    }
}

/// In the child: restores the signal mask, runs `child_main` and reports its failure.
pub(crate) fn run_child<F>(error_write: OwnedFd, saved_mask: &SigSet, child_main: F) -> !
where
    F: FnOnce(&ErrorPipe) -> Result<Infallible, Failure>,
{
    restore(saved_mask);
    let pipe = ErrorPipe(std::cell::Cell::new(Some(error_write)));
    let failure = match child_main(&pipe) {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    match pipe.0.take() {
        Some(error_write) => report_and_exit(error_write, &failure),
        // SAFETY: _exit never returns and is async-signal-safe.
        None => unsafe { libc::_exit(i32::from(failure.code)) },
    }
}

/// In the parent: waits until the child has exec'd (the error pipe closes empty) or failed.
pub(crate) fn wait_for_exec(child: Child, error_read: OwnedFd) -> Result<Child, Failure> {
    match read_failure(error_read) {
        None => Ok(child),
        Some(failure) => {
            // Reap the child, which exits right after writing its failure.
            let _ = waitpid(child.pid, None);
            restore(&child.saved_mask);
            Err(failure)
        }
    }
}

impl Child {
    /// A started child whose parent blocked its signals with [`block_for_child`].
    pub(crate) fn new(pid: Pid, saved_mask: SigSet) -> Self {
        Child { pid, saved_mask }
    }

    /// Kills a child that never got to run its command, reaps it and restores the mask.
    pub(crate) fn abandon(self) {
        let _ = signal::kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
        restore(&self.saved_mask);
    }
}

/// Creates the error pipe: both ends close on exec (`man 2 pipe2`).
pub fn error_pipe() -> Result<(OwnedFd, OwnedFd)> {
    // LAB stage1/error-pipe BEGIN: a pipe that execve closes
    unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).sys("pipe2", "")
    // LAB END
}

/// In the child: writes `failure` to the error pipe and exits with its code.
pub fn report_and_exit(error_write: OwnedFd, failure: &Failure) -> ! {
    // LAB stage1/error-pipe BEGIN: the child reports its failure
    let mut pipe = File::from(error_write);
    let mut message = vec![failure.code];
    message.extend_from_slice(failure.message.as_bytes());
    let _ = pipe.write_all(&message);
    drop(pipe);
    // _exit, not exit: the child must not run the parent's atexit handlers or flush the
    // parent's stdio buffers a second time (man 2 _exit).
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(i32::from(failure.code)) }
    // LAB END
}

/// In the parent: reads the error pipe to its end. `None` means the exec succeeded.
pub fn read_failure(error_read: OwnedFd) -> Option<Failure> {
    // LAB stage1/error-pipe BEGIN: the parent reads what failed, or end-of-file
    let mut bytes = Vec::new();
    let _ = File::from(error_read).read_to_end(&mut bytes);
    let (&code, message) = bytes.split_first()?;
    Some(Failure { code, message: String::from_utf8_lossy(message).into_owned() })
    // LAB END
}

fn block(set: &SigSet) -> Result<SigSet> {
    let mut saved = SigSet::empty();
    signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(set), Some(&mut saved))
        .sys("sigprocmask", "")?;
    Ok(saved)
}

pub(crate) fn restore(saved: &SigSet) {
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(saved), None);
}

// ANCHOR: exec
/// Replaces the child with the command (`man 2 execve`); returns only on failure.
///
/// The name is looked up in the *command's* PATH, not the runtime's: after `chroot` the files
/// are the jail's. Failures carry the shell's codes: 127 when nothing is found, 126 when a file
/// is found but cannot be executed.
pub fn exec(command: &Command) -> Result<Infallible, Failure> {
    // LAB stage1/exec BEGIN: exec the command: 127 when not found, 126 when not executable
    check_program(&command.argv)?;
    let program = &command.argv[0];
    let argv = to_cstrings(command.argv.iter().map(|arg| arg.as_bytes().to_vec()))?;
    let envp = to_cstrings(command.env.iter().map(|(key, value)| {
        let mut pair = key.as_bytes().to_vec();
        pair.push(b'=');
        pair.extend_from_slice(value.as_bytes());
        pair
    }))?;

    // A signal that is ignored stays ignored across execve, and the mask is kept (man 7
    // signal): the command would inherit the runtime's (Rust ignores SIGPIPE: `yes | head`
    // would never stop) and its caller's (a shell starts `&` jobs with SIGINT and SIGQUIT
    // ignored: `kill -INT` would never stop them). It starts as a fresh program does.
    reset_signals()?;

    // The working directory is entered last, as the user the command runs as.
    unistd::chdir(&command.workdir).sys("chdir", command.workdir.display()).map_err(|error| {
        error.hint("the working directory must exist inside the root filesystem")
    })?;

    let candidates = candidates(program, command.env_value("PATH"));
    let mut denied = None;
    for path in &candidates {
        let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else { continue };
        let errno = match unistd::execve(&c_path, &argv, &envp) {
            Err(errno) => errno,
            Ok(never) => match never {},
        };
        match errno {
            // Not here: try the next PATH entry (execvp does the same, man 3 execvp).
            Errno::ENOENT | Errno::ENOTDIR => {
                if path.exists() {
                    // The file is there, but the kernel could not find what it needs to run
                    // it: the ELF loader (PT_INTERP) or the script's #! interpreter.
                    return Err(missing_interpreter(path));
                }
            }
            Errno::EACCES | Errno::ENOEXEC | Errno::EISDIR | Errno::ETXTBSY => {
                denied.get_or_insert((path.clone(), errno));
            }
            other => return Err(Error::sys("execve", path.display(), other).into()),
        }
    }
    Err(match denied {
        Some((path, errno)) => Failure {
            code: exit::NOT_EXECUTABLE,
            message: format!(
                "execve {} failed: {} (the file exists but cannot be executed: check its mode \
                 and format)",
                path.display(),
                crate::error::errno_name(errno)
            ),
        },
        None => not_found(program, &candidates),
    })
    // LAB END
}
// ANCHOR_END: exec

/// Refuses a command line without a program: none at all, or an empty name (`-- ""`, often a
/// variable that was empty: `-- "$CMD"`).
///
/// An empty name is no path, and a PATH lookup would try each directory itself
/// (`/usr/local/sbin/` + ``), failing with a confusing EACCES. Shells answer `: command not
/// found` and 127 (bash, dash and busybox sh; so do `env ""` and `docker run IMAGE ""`): the
/// same answer here, before anything runs, for a user who typed what they would type there.
pub fn check_program(argv: &[OsString]) -> Result<(), Failure> {
    match argv.first() {
        None => Err(Failure { code: exit::RUNTIME_ERROR, message: "no command given".to_string() }),
        Some(program) if program.is_empty() => Err(Failure {
            code: exit::NOT_FOUND,
            message: "'': command not found: the program name after -- is empty (was a \
                      variable empty, as in -- \"$CMD\"?)"
                .to_string(),
        }),
        Some(_) => Ok(()),
    }
}

// ANCHOR: reset_signals
/// Gives the calling process the signal state a program expects when it starts: every
/// catchable signal's disposition back to `SIG_DFL`, and an empty signal mask.
///
/// `execve(2)` resets only the signals that have a *handler*: an ignored signal stays ignored,
/// and the mask is kept (`man 7 signal`, "Signal disposition" and "Signal mask and pending
/// signals"). Without this, whatever the runtime or its caller ignored or blocked would reach
/// the command.
pub fn reset_signals() -> Result<()> {
    // SAFETY: sigaction is plain data; all zeroes is SIG_DFL, no flags and an empty sa_mask.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    for number in 1..=libc::SIGRTMAX() {
        if number == libc::SIGKILL || number == libc::SIGSTOP {
            continue; // their disposition cannot be changed
        }
        // glibc keeps two real-time signals for its threads (man 7 nptl) and refuses them
        // with EINVAL: they are not ours to reset, so the error is ignored.
        // SAFETY: `default` is a valid sigaction that installs no handler, and we ask for no
        // old value back.
        let _ = unsafe { libc::sigaction(number, &default, std::ptr::null_mut()) };
    }
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .sys("sigprocmask", "SIG_SETMASK, an empty set")
}
// ANCHOR_END: reset_signals

fn to_cstrings(items: impl Iterator<Item = Vec<u8>>) -> Result<Vec<CString>, Failure> {
    items
        .map(|bytes| {
            CString::new(bytes).map_err(|_| Failure {
                code: exit::RUNTIME_ERROR,
                message: "an argument or environment entry contains a NUL byte".to_string(),
            })
        })
        .collect()
}

/// The paths `execvp` would try for `program` with this PATH.
fn candidates(program: &OsStr, path_var: Option<&OsStr>) -> Vec<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return vec![PathBuf::from(program)];
    }
    let path_var = path_var.map(OsStr::as_bytes).unwrap_or(DEFAULT_PATH.as_bytes());
    path_var
        .split(|&byte| byte == b':')
        .map(|dir| if dir.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(dir)) })
        .map(|dir| dir.join(program))
        .collect()
}

fn missing_interpreter(path: &Path) -> Failure {
    Failure {
        code: exit::NOT_FOUND,
        message: format!(
            "execve {} failed: ENOENT: the file exists, but the interpreter it names is missing \
             inside the root filesystem (the dynamic loader in its ELF PT_INTERP, or its #! line): \
             copy it in with `rootfs-builder copy`",
            path.display()
        ),
    }
}

fn not_found(program: &OsStr, candidates: &[PathBuf]) -> Failure {
    let looked = if candidates.len() == 1 {
        String::new()
    } else {
        let dirs: Vec<String> =
            candidates.iter().filter_map(|c| c.parent().map(|p| p.display().to_string())).collect();
        format!(" (looked in {})", dirs.join(":"))
    };
    Failure {
        code: exit::NOT_FOUND,
        message: format!(
            "{}: command not found inside the root filesystem{looked}",
            program.to_string_lossy()
        ),
    }
}

// ANCHOR: wait
/// Waits for the child to end, passing on the signals the runtime receives, and returns its
/// final status.
///
/// Without forwarding, `kill <runtime>` would end the runtime and leave the command running
/// with nobody to report its exit. Signals that the kernel sends to the whole foreground
/// process group (Ctrl-C from the terminal) already reach the child, so they are not sent a
/// second time.
pub fn wait_forwarding_signals(child: Child) -> Result<WaitStatus> {
    wait_forwarding_signals_and(child, |_pid, _event| None)
}

/// What [`wait_forwarding_signals_and`] tells its caller while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The runtime received `signal` and passed it on to the child; not when it came
    /// `from_terminal`: the kernel delivered that one to the whole foreground group already.
    Signal {
        /// The signal.
        signal: Signal,
        /// Sent by the kernel (`si_code` `SI_KERNEL`: a terminal's Ctrl-C), not by a process.
        from_terminal: bool,
    },
    /// The deadline the caller asked for has passed, and the child is still there.
    Deadline,
}

/// [`wait_forwarding_signals`], telling `watch` about each signal received, and when the
/// deadline that `watch` returns (if any) has passed. Chapter 2 uses it to say when the
/// command, as PID 1 of its namespace, drops a signal, and to send SIGKILL when a command
/// asked to stop is still running after a grace period (`init::Stopping`).
pub fn wait_forwarding_signals_and(
    child: Child,
    mut watch: impl FnMut(Pid, Waiting) -> Option<Instant>,
) -> Result<WaitStatus> {
    let mut waited = forwarded_signals();
    waited.add(Signal::SIGCHLD);
    let mut deadline: Option<Instant> = None;
    let result = loop {
        // The child may already be gone (a SIGCHLD delivered before we got here is pending,
        // but check first anyway, so a fast exit is never missed).
        match waitpid(child.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => break Ok(status),
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(errno) => break Err(Error::sys("waitpid", child.pid, errno)),
        }
        let timeout = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        match wait_signal(&waited, timeout) {
            Ok(Some((Signal::SIGCHLD, _))) => {}
            Ok(Some((signal, from_terminal))) => {
                if !from_terminal {
                    let _ = signal::kill(child.pid, signal);
                }
                deadline = watch(child.pid, Waiting::Signal { signal, from_terminal });
            }
            Ok(None) => deadline = watch(child.pid, Waiting::Deadline),
            Err(error) => break Err(error),
        }
    };
    restore(&child.saved_mask);
    result
}
// ANCHOR_END: wait

/// Waits for one of `set` (which must be blocked) with `sigwaitinfo(2)`, or for at most
/// `timeout` with `sigtimedwait(2)` (`None` when it passed first); also says whether the
/// kernel sent it (a terminal's Ctrl-C) rather than a process (`kill`).
pub(crate) fn wait_signal(
    set: &SigSet,
    timeout: Option<Duration>,
) -> Result<Option<(Signal, bool)>> {
    loop {
        // SAFETY: siginfo_t is plain data, zeroes are a valid value for it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let number = match timeout {
            // SAFETY: `set` is a valid sigset_t and `info` a valid, writable siginfo_t.
            None => unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) },
            Some(timeout) => {
                let timespec = libc::timespec {
                    tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                    tv_nsec: timeout.subsec_nanos().into(),
                };
                // SAFETY: as above, and `timespec` is a valid timespec.
                unsafe { libc::sigtimedwait(set.as_ref(), &mut info, &timespec) }
            }
        };
        if number < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::EAGAIN => return Ok(None),
                errno => {
                    let call = if timeout.is_some() { "sigtimedwait" } else { "sigwaitinfo" };
                    return Err(Error::sys(call, "", errno));
                }
            }
        }
        let Ok(signal) = Signal::try_from(number) else { continue };
        return Ok(Some((signal, info.si_code == libc::SI_KERNEL)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_starts_minimal_and_extra_overrides() {
        let command = Command::new(
            vec!["sh".into()],
            "/root",
            &[parse_env("PATH=/bin").unwrap(), parse_env("GREETING=hi").unwrap()],
        );
        let keys: Vec<_> = command.env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(keys, ["HOME", "TERM", "PATH", "GREETING"]);
        assert_eq!(command.env_value("PATH"), Some(OsStr::new("/bin")));
        assert_eq!(command.env_value("HOME"), Some(OsStr::new("/root")));
    }

    #[test]
    fn env_needs_a_key() {
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), "".into()));
    }

    #[test]
    fn path_lookup_is_the_commands_path() {
        let found = candidates(OsStr::new("sh"), Some(OsStr::new("/bin:/usr/bin")));
        assert_eq!(found, [PathBuf::from("/bin/sh"), PathBuf::from("/usr/bin/sh")]);
        let direct = candidates(OsStr::new("./run"), Some(OsStr::new("/bin")));
        assert_eq!(direct, [PathBuf::from("./run")]);
    }

    #[test]
    fn an_empty_program_name_is_not_found() {
        let failure = check_program(&["".into(), "arg".into()]).unwrap_err();
        assert_eq!(failure.code, 127);
        assert!(failure.message.starts_with("'': command not found"), "{failure}");
        assert_eq!(check_program(&[]).unwrap_err().code, 125);
        assert!(check_program(&["sh".into()]).is_ok());
    }

    #[test]
    fn not_found_names_the_dirs() {
        let failure = not_found(OsStr::new("nope"), &candidates(OsStr::new("nope"), None));
        assert_eq!(failure.code, 127);
        assert!(failure.message.starts_with("nope: command not found inside the root filesystem"));
        assert!(failure.message.contains("/usr/bin:"));
    }
}
