//! The exit-code convention every isolab stage follows.
//!
//! A container runtime stands between the user and the command, so its own failures must not
//! be mistaken for the command's. We use the convention of `docker run`, `chroot(1)` and POSIX
//! shells (`man 1p sh`, "Exit Status"):
//!
//! | code    | meaning                                                  |
//! |---------|----------------------------------------------------------|
//! | 0–124   | the command's own exit status, passed through            |
//! | 125     | the runtime itself failed (bad input, a refused syscall) |
//! | 126     | the command was found but could not be executed          |
//! | 127     | the command was not found inside the root filesystem     |
//! | 128 + N | the command was killed by signal N (137 = SIGKILL)       |

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

// ANCHOR: codes
/// The runtime itself failed: bad input, or a system call the kernel refused.
pub const RUNTIME_ERROR: u8 = 125;
/// The command exists but cannot be executed (permissions, wrong format).
pub const NOT_EXECUTABLE: u8 = 126;
/// The command (or the loader it needs) does not exist inside the root filesystem.
pub const NOT_FOUND: u8 = 127;

/// The code a shell would show for a child's final status.
pub fn code_for(status: WaitStatus) -> u8 {
    match status {
        // The command's own exit status, unchanged (an exit status is 8 bits: man 2 _exit).
        WaitStatus::Exited(_, code) => code as u8,
        // Killed by a signal: 128 + the signal's number, as shells report it.
        WaitStatus::Signaled(_, signal, _) => 128 + signal as u8,
        // Stopped/continued are not final states; callers wait until the child is gone.
        _ => RUNTIME_ERROR,
    }
}
// ANCHOR_END: codes

/// Words for an exit code, for reports: `exited with 3`, `killed by SIGKILL`.
pub fn describe(code: u8) -> String {
    if code > 128 {
        if let Ok(signal) = Signal::try_from(i32::from(code - 128)) {
            return format!("killed by {}", signal.as_str());
        }
    }
    format!("exited with {code}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Pid;

    #[test]
    fn exit_status_passes_through() {
        assert_eq!(code_for(WaitStatus::Exited(Pid::from_raw(1), 3)), 3);
        assert_eq!(code_for(WaitStatus::Exited(Pid::from_raw(1), 0)), 0);
    }

    #[test]
    fn signals_are_128_plus_n() {
        let status = WaitStatus::Signaled(Pid::from_raw(1), Signal::SIGKILL, false);
        assert_eq!(code_for(status), 137);
        let status = WaitStatus::Signaled(Pid::from_raw(1), Signal::SIGTERM, false);
        assert_eq!(code_for(status), 143);
    }

    #[test]
    fn describes_codes_in_words() {
        assert_eq!(describe(137), "killed by SIGKILL");
        assert_eq!(describe(3), "exited with 3");
    }
}
