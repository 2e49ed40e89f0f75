//! Process isolation: can the sandbox see, and signal, a process of the host's?
//!
//! Process ids are numbers in a pid namespace (`man 7 pid_namespaces`). Without one of its
//! own, a sandboxed process can signal any host process its uid allows — and root's uid
//! allows all of them. `isolab compare` starts a marker process whose command line carries
//! the run's token; the probe sends it signal 0, which checks existence and permission without
//! delivering anything (`man 2 kill`).

use std::fs;

use libisolab::error::errno_name;
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::{Check, CheckId, Inputs, Status};

/// `host-processes`: `kill(pid, 0)`, then, if /proc is there, is it really the marker?
pub fn host_processes(inputs: &Inputs) -> Check {
    let id = CheckId::HostProcesses;
    let Some(pid) = inputs.host_pid else {
        return Check::not_applicable(id, "no --host-pid given");
    };
    let exists = match kill(Pid::from_raw(pid), None) {
        Ok(()) => format!("kill({pid}, 0) succeeded"),
        // EPERM: the process exists, we only may not signal it. Still a leak.
        Err(errno @ Errno::EPERM) => {
            format!("kill({pid}, 0) failed with {}, which proves it exists", errno_name(errno))
        }
        Err(errno @ Errno::ESRCH) => {
            return Check::new(
                id,
                Status::Isolated,
                format!("kill({pid}, 0) failed: {} (no process {pid} here)", errno_name(errno)),
            )
        }
        Err(errno) => {
            return Check::not_applicable(
                id,
                format!("kill({pid}, 0) failed: {}", errno_name(errno)),
            )
        }
    };
    judge(pid, &exists, fs::read(format!("/proc/{pid}/cmdline")).ok(), inputs.token.as_deref())
}

/// In a pid namespace, `pid` may be some other process of the sandbox's: when /proc lets us
/// read its command line, it must carry the token to count as the host's marker.
fn judge(pid: i32, exists: &str, cmdline: Option<Vec<u8>>, token: Option<&str>) -> Check {
    let id = CheckId::HostProcesses;
    let Some(cmdline) = cmdline else {
        return Check::new(
            id,
            Status::Leaks,
            format!("{exists} (no /proc/{pid}/cmdline here to tell whose it is)"),
        );
    };
    // Arguments are separated by NUL bytes (man 5 proc_pid_cmdline).
    let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim_end().to_string();
    match token {
        Some(token) if !shown.contains(token) => Check::new(
            id,
            Status::Isolated,
            format!("process {pid} here is {shown:?}, not the host's marker"),
        ),
        Some(_) => Check::new(id, Status::Leaks, format!("{exists}: it is the host's {shown:?}")),
        None => Check::new(id, Status::Leaks, format!("{exists} ({shown:?}; no --token to check)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_must_carry_the_token() {
        let ok = "kill(42, 0) succeeded";
        let marker = judge(42, ok, Some(b"isolab-marker-t0k\x00600\x00".to_vec()), Some("t0k"));
        assert_eq!(marker.status, Status::Leaks);
        assert_eq!(
            marker.evidence,
            "kill(42, 0) succeeded: it is the host's \"isolab-marker-t0k 600\""
        );

        let other = judge(42, ok, Some(b"/bin/sh\x00".to_vec()), Some("t0k"));
        assert_eq!(other.status, Status::Isolated);

        let no_proc = judge(42, ok, None, Some("t0k"));
        assert_eq!(no_proc.status, Status::Leaks);
        assert!(no_proc.evidence.contains("no /proc/42/cmdline"));
    }

    #[test]
    fn our_own_process_is_visible() {
        let me = std::process::id() as i32;
        let check = host_processes(&Inputs { host_pid: Some(me), ..Inputs::default() });
        assert_eq!(check.status, Status::Leaks, "{check:?}");
    }
}
