//! One error type for the whole library.
//!
//! A learner who sees an error should learn three things from it: which system call failed,
//! on what (a path, a pid, a value), and what to do next. [`Error::Sys`] carries exactly that;
//! [`Error::Invalid`] is for input we refuse before asking the kernel anything.

use std::fmt;
use std::io;
use std::path::Path;

use nix::errno::Errno;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from the library: a failed system call, or input we refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{}", SysDisplay(self))]
    Sys {
        /// The call, as its man page names it (`chroot`, `execve`, …).
        call: &'static str,
        /// What it was called on: a path, a pid, a value (may be empty).
        subject: String,
        /// What the kernel answered.
        errno: Errno,
        /// What the user can do about it, if we know.
        hint: Option<String>,
    },
    /// Input that we refuse before making any call.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A failed call on `subject`, without a hint.
    pub fn sys(call: &'static str, subject: impl fmt::Display, errno: Errno) -> Self {
        Error::Sys { call, subject: subject.to_string(), errno, hint: None }
    }

    /// A failed call that the standard library reported as an [`io::Error`]
    /// (`fs::read_to_string`, `File::open`, …): the same error as [`Error::sys`], with the
    /// kernel's errno. `subject` is usually a path (any `&str`, `String` or `Path` will do).
    pub fn io(call: &'static str, subject: impl AsRef<Path>, error: &io::Error) -> Self {
        Error::sys(call, subject.as_ref().display(), io_errno(error))
    }

    /// Adds (or replaces) the hint of a [`Error::Sys`]; other errors are returned unchanged.
    pub fn hint(mut self, text: impl Into<String>) -> Self {
        if let Error::Sys { hint, .. } = &mut self {
            *hint = Some(text.into());
        }
        self
    }

    /// The errno, when the error came from the kernel.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Sys { errno, .. } => Some(*errno),
            Error::Invalid(_) => None,
        }
    }
}

/// Formats `call subject failed: EPERM (hint)` — lowercase, no trailing period.
struct SysDisplay<'a>(&'a Error);

impl fmt::Display for SysDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Error::Sys { call, subject, errno, hint } = self.0 else {
            return Ok(());
        };
        if subject.is_empty() {
            write!(f, "{call} failed: {}", errno_name(*errno))?;
        } else {
            write!(f, "{call} {subject} failed: {}", errno_name(*errno))?;
        }
        if let Some(hint) = hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// `EPERM: operation not permitted`: the symbolic name a man page uses, and the words.
pub fn errno_name(errno: Errno) -> String {
    let text = errno.desc();
    let mut words = text.chars();
    let lowered = match words.next() {
        Some(first) => first.to_lowercase().chain(words).collect::<String>(),
        None => String::new(),
    };
    format!("{errno:?}: {lowered}")
}

/// The errno behind an [`io::Error`]. The few I/O errors that no system call returned (invalid
/// UTF-8 in `read_to_string`, a write that wrote nothing) become `EIO`: a reader sees an
/// input/output error rather than `UnknownErrno`, and code that matches an errno never mistakes
/// one for `ENOENT`.
pub fn io_errno(error: &io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO))
}

/// Turns a nix result into ours, naming the call and its subject.
pub trait SysResultExt<T> {
    /// Names the call and what it was called on.
    fn sys(self, call: &'static str, subject: impl fmt::Display) -> Result<T>;
}

impl<T> SysResultExt<T> for nix::Result<T> {
    fn sys(self, call: &'static str, subject: impl fmt::Display) -> Result<T> {
        self.map_err(|errno| Error::sys(call, subject, errno))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_error_names_call_subject_errno_and_hint() {
        let error = Error::sys("chroot", "/srv/jail", Errno::EPERM).hint("run as root");
        assert_eq!(
            error.to_string(),
            "chroot /srv/jail failed: EPERM: operation not permitted (run as root)"
        );
    }

    #[test]
    fn io_error_keeps_the_kernels_errno() {
        let error = Error::io("open", "/srv/x", &io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(error.errno(), Some(Errno::ENOENT));
        assert_eq!(error.to_string(), "open /srv/x failed: ENOENT: no such file or directory");
        let not_from_the_kernel = io::Error::new(io::ErrorKind::InvalidData, "not UTF-8");
        assert_eq!(Error::io("read", "/x", &not_from_the_kernel).errno(), Some(Errno::EIO));
    }

    #[test]
    fn sys_error_without_subject() {
        let error = Error::sys("fork", "", Errno::EPERM);
        assert_eq!(error.to_string(), "fork failed: EPERM: operation not permitted");
    }
}
