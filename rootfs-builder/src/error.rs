//! One error type for the whole library.
//!
//! Every message tells the reader three things: what was being done (the call, named as its
//! man page names it, or the step of the loader's search), on which path, and what to do next.
//! Messages are lowercase and end without a period, because the binary prints them after
//! `rootfs-builder: error: `. The binary adds context with `anyhow`; the library never prints.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while building a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed (`open`, `mkdir`, `symlink`, …).
    #[error("{call} {} failed: {}{}", path.display(), io_words(error), Hint(hint))]
    Io {
        /// The call, as its man page names it.
        call: &'static str,
        /// The path it was called on.
        path: PathBuf,
        /// What the kernel answered.
        error: io::Error,
        /// What the user can do about it, if we know.
        hint: Option<String>,
    },

    /// A file that should be an ELF object but cannot be read as one (`man 5 elf`).
    #[error("{} is not a usable ELF file: {reason}", path.display())]
    BadElf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The loader's search (`man 8 ld.so`) found no file for a `DT_NEEDED` name.
    #[error(
        "{name} (DT_NEEDED by {}) not found: looked in {} (install the package that provides \
         it, or copy it by path)",
        needed_by.display(),
        searched.join(", ")
    )]
    LibraryNotFound {
        /// The name as written in `DT_NEEDED`, e.g. `libz.so.1`.
        name: String,
        /// The object whose `DT_NEEDED` it is.
        needed_by: PathBuf,
        /// Every place we looked, in order.
        searched: Vec<String>,
    },

    /// `/etc/ld.so.cache` exists but is not in a format we understand.
    #[error(
        "{} is not a valid loader cache: {reason} (regenerate it with `ldconfig`)",
        path.display()
    )]
    BadCache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Following symlinks inside the rootfs went round in circles (`man 7 path_resolution`).
    #[error(
        "too many levels of symbolic links resolving {} inside {} (a symlink loop: check the \
         links with `ls -l`)",
        path.display(),
        root.display()
    )]
    SymlinkLoop {
        /// The path being resolved.
        path: PathBuf,
        /// The rootfs it was resolved in.
        root: PathBuf,
    },

    /// No busybox binary on this machine.
    #[error("busybox not found on this machine: install it with `apt-get install busybox-static`")]
    BusyboxNotFound,

    /// The busybox we found needs shared libraries, so it would not run alone in a rootfs.
    #[error(
        "{} is dynamically linked (PT_INTERP {interpreter}), but a busybox rootfs has no shared \
         libraries: install the static one with `apt-get install busybox-static`",
        path.display()
    )]
    BusyboxDynamic {
        /// The busybox binary.
        path: PathBuf,
        /// The loader it asks for.
        interpreter: String,
    },

    /// The isolation probe binary is not where we looked.
    #[error(
        "the isolation probe was not found (looked for {}): build it with `cargo build \
         --workspace`, or pass --probe PATH",
        tried.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ProbeNotFound {
        /// The paths we tried.
        tried: Vec<PathBuf>,
    },

    /// The output directory already has files in it.
    #[error(
        "{} is not empty: pass --force to build into it anyway, or choose a new directory",
        path.display()
    )]
    NotEmpty {
        /// The output directory.
        path: PathBuf,
    },

    /// Input we refuse before touching anything; the message says why and what to do.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A failed filesystem call on `path`, without a hint.
    pub fn io(call: &'static str, path: impl AsRef<Path>, error: io::Error) -> Self {
        Error::Io { call, path: path.as_ref().to_path_buf(), error, hint: None }
    }

    /// Adds (or replaces) the hint of an [`Error::Io`]; other errors are returned unchanged.
    pub fn hint(mut self, text: impl Into<String>) -> Self {
        if let Error::Io { hint, .. } = &mut self {
            *hint = Some(text.into());
        }
        self
    }
}

/// Names the call and the path of an `io::Result`'s error.
pub trait IoResultExt<T> {
    /// Turns the error into [`Error::Io`] for `call` on `path`.
    fn io(self, call: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoResultExt<T> for io::Result<T> {
    fn io(self, call: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|error| Error::io(call, path, error))
    }
}

/// `ENOENT: no such file or directory`: the symbolic name a man page uses, and the words.
///
/// `io::Error`'s own text is capitalised and ends in `(os error 2)`, which reads badly in the
/// middle of a sentence; errors that did not come from the kernel keep their text, lowercased.
pub fn io_words(error: &io::Error) -> String {
    if let Some(raw) = error.raw_os_error() {
        return libisolab::error::errno_name(nix::errno::Errno::from_raw(raw));
    }
    lowercase_first(&error.to_string())
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Formats an optional hint as ` (hint)`.
struct Hint<'a>(&'a Option<String>);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(hint) => write!(f, " ({hint})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_names_call_path_errno_and_hint() {
        let error = Error::io("open", "/srv/x", io::Error::from_raw_os_error(libc::ENOENT))
            .hint("check the path");
        assert_eq!(
            error.to_string(),
            "open /srv/x failed: ENOENT: no such file or directory (check the path)"
        );
    }

    #[test]
    fn library_not_found_lists_where_we_looked() {
        let error = Error::LibraryNotFound {
            name: "libz.so.1".into(),
            needed_by: "/usr/bin/python3.11".into(),
            searched: vec!["/etc/ld.so.cache".into(), "/lib".into()],
        };
        assert_eq!(
            error.to_string(),
            "libz.so.1 (DT_NEEDED by /usr/bin/python3.11) not found: looked in /etc/ld.so.cache, \
             /lib (install the package that provides it, or copy it by path)"
        );
    }
}
