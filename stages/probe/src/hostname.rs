//! UTS isolation: is the hostname this process sets the host's hostname?
//!
//! The hostname lives in a UTS namespace (`man 7 uts_namespaces`). Without one of its own, a
//! root process that calls `sethostname(2)` renames the whole machine. With one, the call
//! succeeds just the same — so from inside, success proves nothing. The probe sets the name to
//! `isolab-<token>`, holds it for `--hold-ms` while `isolab compare` watches the host's name,
//! and puts the old name back.

use libisolab::error::errno_name;
use nix::errno::Errno;
use nix::unistd;

use crate::{Check, CheckId, Inputs, Status};

/// The hostname the probe sets: `isolab-<token>`.
pub fn name_for(token: &str) -> String {
    format!("isolab-{token}")
}

/// `hostname`: set the name, hold it, restore it.
pub fn hostname(inputs: &Inputs) -> Check {
    let id = CheckId::Hostname;
    let Some(token) = &inputs.token else {
        return Check::not_applicable(id, "no --token given");
    };
    let previous = match unistd::gethostname() {
        Ok(name) => name,
        Err(errno) => {
            return Check::not_applicable(id, format!("gethostname failed: {}", errno_name(errno)))
        }
    };
    let name = name_for(token);
    match unistd::sethostname(&name) {
        Ok(()) => {
            let restore = RestoreHostname { previous: Some(previous.clone()) };
            crate::hold(inputs.hold);
            let restored = match restore.now() {
                Ok(()) => format!("{:?} restored", previous.to_string_lossy()),
                Err(errno) => format!(
                    "restoring {:?} failed: {}",
                    previous.to_string_lossy(),
                    errno_name(errno)
                ),
            };
            Check::provisional_leak(
                id,
                format!(
                    "sethostname({name:?}) succeeded ({restored} after {} ms); whether the \
                     host's name changed only the host can tell",
                    inputs.hold.as_millis()
                ),
            )
        }
        // Changing the hostname needs CAP_SYS_ADMIN in the user namespace that owns the UTS
        // namespace (man 2 sethostname): an unprivileged process gets EPERM.
        Err(errno @ Errno::EPERM) => Check::new(
            id,
            Status::Isolated,
            format!("sethostname({name:?}) failed: {} (no CAP_SYS_ADMIN here)", errno_name(errno)),
        ),
        Err(errno) => Check::not_applicable(
            id,
            format!("sethostname({name:?}) failed: {}", errno_name(errno)),
        ),
    }
}

/// Puts the previous hostname back when dropped, so an early return or a panic cannot leave
/// the machine renamed.
struct RestoreHostname {
    previous: Option<std::ffi::OsString>,
}

impl RestoreHostname {
    /// Restores now, and says whether it worked.
    fn now(mut self) -> nix::Result<()> {
        match self.previous.take() {
            Some(previous) => unistd::sethostname(previous),
            None => Ok(()),
        }
    }
}

impl Drop for RestoreHostname {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = unistd::sethostname(previous);
        }
    }
}
