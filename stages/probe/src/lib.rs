//! The isolation probe: a program that runs *inside* a sandbox and reports what it can see of
//! the host and what it can change there.
//!
//! Every stage of isolab claims to isolate something; the probe is how we check the claim
//! without trusting the stage. It needs no cooperation from the runtime it runs under (it works
//! the same under `stage1-chroot`, a later stage, or another runtime entirely): all it gets are
//! *markers* that `isolab compare` planted on the host — a random token, a directory, a
//! process, a TCP listener, a SysV shared-memory segment — and it reports, for each kind of
//! isolation, whether the marker reached it ([`Status::Leaks`]) or not ([`Status::Isolated`]).
//!
//! Three checks change something (the hostname, the mount table, a file at `/`). From inside,
//! the probe can only tell that the change *succeeded*, not whether the host saw it: a UTS
//! namespace makes `sethostname` succeed harmlessly. Those checks hold the change for a moment,
//! undo it, and report a *provisional* verdict; `isolab compare` watches the host meanwhile and
//! decides for real. Whatever happens, the probe leaves nothing behind: every change is undone
//! by a guard that runs even if a later step fails.
//!
//! The library holds the report types (so `isolab` can read the JSON) and one module per kind
//! of isolation, named after the kernel concept it probes.

pub mod bench;
pub mod filesystem;
pub mod hostname;
pub mod ipc;
pub mod limits;
pub mod mounts;
pub mod network;
pub mod processes;
pub mod report;
pub mod resources;
pub mod user;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

pub use report::{Check, CheckId, Report, Status};

/// What `isolab compare` (or a person) tells the probe about the host. Every marker is
/// optional: a check whose marker is missing reports [`Status::NotApplicable`].
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The random token of this run; it is in every marker, so an old or foreign one never
    /// counts.
    pub token: Option<String>,
    /// A directory on the host, outside the sandbox's root.
    pub host_path: Option<PathBuf>,
    /// A process on the host whose command line contains the token.
    pub host_pid: Option<i32>,
    /// A TCP port on the host's 127.0.0.1 that answers with the token.
    pub port: Option<u16>,
    /// The key of a SysV shared-memory segment on the host.
    pub shm_key: Option<i32>,
    /// Where the probe may create (and remove again) directories.
    pub scratch: PathBuf,
    /// How long a change the host should notice (hostname, mount, file) is held.
    pub hold: Duration,
    /// The probe runs on the host itself: the checks that would change the host are skipped
    /// and reported as leaks.
    pub on_host: bool,
    /// The checks to run (`--check`): all of them unless some are named.
    pub checks: Vec<CheckId>,
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs {
            token: None,
            host_path: None,
            host_pid: None,
            port: None,
            shm_key: None,
            scratch: PathBuf::from("/tmp"),
            hold: Duration::from_millis(300),
            on_host: false,
            checks: CheckId::ALL.to_vec(),
        }
    }
}

/// The evidence of a check skipped because the probe runs on the host.
pub const ON_HOST: &str = "this is the host itself";

/// Checks that a token can be used where the probe puts it: in a hostname (at most 64 bytes,
/// `man 2 sethostname`), a mount source and file names.
pub fn validate_token(token: &str) -> Result<(), String> {
    let fits = !token.is_empty()
        && token.len() <= 40
        && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if fits {
        Ok(())
    } else {
        Err(format!(
            "invalid --token '{token}': use 1 to 40 letters, digits or '-' (it becomes part of a \
             hostname and of file names)"
        ))
    }
}

/// The signal that interrupted the probe (0: none yet).
static INTERRUPTED_BY: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    INTERRUPTED_BY.store(signal, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP cut a hold short instead of killing the probe on the
/// spot, so that its guards still undo every change (a killed probe would leave the hostname
/// changed and the tmpfs mounted). Returns the handler's setup error, if any.
pub fn catch_interrupts() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// The signal that interrupted the probe, if one did.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED_BY.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Holds a change for `duration`, or until the probe is interrupted.
pub(crate) fn hold(duration: Duration) {
    let until = Instant::now() + duration;
    while interrupted().is_none() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// Runs the checks of [`Inputs::checks`] (every one, by default), in the order of
/// [`CheckId::ALL`], and returns the report. After an interruption ([`catch_interrupts`]) the
/// remaining checks are not started.
pub fn run_checks(inputs: &Inputs) -> Report {
    let checks = CheckId::ALL
        .iter()
        .filter(|id| inputs.checks.contains(id))
        .map(|&id| {
            if let Some(signal) = interrupted() {
                return Check::not_applicable(
                    id,
                    format!("not run: interrupted by signal {signal}"),
                );
            }
            if inputs.on_host && id.changes_the_host() {
                // On the host these would really change the host (or, for the escape, prove
                // nothing): there is nothing to be isolated from.
                return Check::new(id, Status::Leaks, ON_HOST);
            }
            match id {
                CheckId::HostFilesystem => filesystem::host_filesystem(inputs),
                CheckId::ChrootEscape => filesystem::chroot_escape(inputs),
                CheckId::HostProcesses => processes::host_processes(inputs),
                CheckId::Hostname => hostname::hostname(inputs),
                CheckId::Mounts => mounts::mounts(inputs),
                CheckId::Network => network::network(inputs),
                CheckId::Ipc => ipc::ipc(inputs),
                CheckId::User => user::user(),
                CheckId::Resources => resources::resources(),
                CheckId::MemoryHog => limits::memory_hog(),
                CheckId::ForkBomb => limits::fork_bomb(),
                CheckId::CpuShare => limits::cpu_share(),
                CheckId::RootfsWrite => filesystem::rootfs_write(inputs),
            }
        })
        .collect();
    Report {
        probe: format!("isolab-probe {}", env!("CARGO_PKG_VERSION")),
        pid: std::process::id(),
        uid: nix::unistd::geteuid().as_raw(),
        on_host: inputs.on_host,
        checks,
    }
}

/// `EPERM: operation not permitted` for an I/O error that came from the kernel.
pub(crate) fn io_errno(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => libisolab::error::errno_name(nix::errno::Errno::from_raw(code)),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_fit_a_hostname_and_a_file_name() {
        assert!(validate_token("a1b2-c3").is_ok());
        for bad in ["", "a b", "a/b", "x.y", &"a".repeat(41)] {
            let error = validate_token(bad).unwrap_err();
            assert!(error.starts_with("invalid --token"), "{error}");
        }
    }

    #[test]
    fn on_host_skips_what_would_change_the_host() {
        // Only checks that need no marker and change nothing run here: the rest are n/a or
        // skipped, so this is safe to run as any user, anywhere.
        let report = run_checks(&Inputs { on_host: true, ..Inputs::default() });
        assert_eq!(report.checks.len(), CheckId::ALL.len());
        for check in &report.checks {
            if check.name.changes_the_host() {
                assert_eq!(check.status, Status::Leaks);
                assert_eq!(check.evidence, ON_HOST);
            }
        }
        let network = report.check(CheckId::Network).unwrap();
        assert_eq!(network.status, Status::NotApplicable);
        assert_eq!(network.evidence, "no --port given");
    }
}
