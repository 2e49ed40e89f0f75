//! The one layer through which the backends touch the cgroup filesystem.
//!
//! Everything a backend does to cgroups is one of a handful of calls: make or remove a
//! directory, write a value to a file, read a file, list the child cgroups, kill a process.
//! [`Cgroupfs`] names them and [`Kernel`] makes them for real. The tests pass in a fake that
//! works in a temporary directory and records every call, so that the backends' real code is
//! checked — the files written, their values, the kill before the rmdir, children before
//! parents — without root and without touching the host. The implementation is always passed
//! in explicitly: nothing switches silently between the real and the fake.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::io_errno;

/// The calls the backends make on cgroups. Errors are the kernel's errno.
pub trait Cgroupfs {
    /// `mkdir(2)`: creates a cgroup; the kernel fills it with the files of its controllers.
    fn mkdir(&self, path: &Path) -> Result<(), Errno>;
    /// `rmdir(2)`: removes a cgroup, which must have no processes and no child cgroups.
    fn rmdir(&self, path: &Path) -> Result<(), Errno>;
    /// `open(2)` for writing, and one `write(2)`: a cgroup file takes one value per write.
    fn write(&self, path: &Path, value: &str) -> Result<(), Errno>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> Result<String, Errno>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// The child cgroups (the sub-directories) of `path`, sorted by name.
    fn children(&self, path: &Path) -> Result<Vec<PathBuf>, Errno>;
    /// `kill(pid, SIGKILL)`.
    fn kill(&self, pid: Pid) -> Result<(), Errno>;
    /// `kill(pid, 0)`: whether a process with this pid exists (EPERM means it does), and is
    /// not a zombie.
    fn is_running(&self, pid: Pid) -> bool;
}

/// The real cgroup filesystem: each method is one or two system calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel;

impl Cgroupfs for Kernel {
    fn mkdir(&self, path: &Path) -> Result<(), Errno> {
        fs::create_dir(path).map_err(|error| io_errno(&error))
    }

    fn rmdir(&self, path: &Path) -> Result<(), Errno> {
        fs::remove_dir(path).map_err(|error| io_errno(&error))
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), Errno> {
        // No O_CREAT and no O_TRUNC: the kernel made the file, we only hand it a value.
        let mut file =
            fs::OpenOptions::new().write(true).open(path).map_err(|error| io_errno(&error))?;
        file.write_all(value.as_bytes()).map_err(|error| io_errno(&error))
    }

    fn read(&self, path: &Path) -> Result<String, Errno> {
        fs::read_to_string(path).map_err(|error| io_errno(&error))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn children(&self, path: &Path) -> Result<Vec<PathBuf>, Errno> {
        let mut dirs = Vec::new();
        for entry in fs::read_dir(path).map_err(|error| io_errno(&error))? {
            let entry = entry.map_err(|error| io_errno(&error))?;
            if entry.file_type().map_err(|error| io_errno(&error))?.is_dir() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        Ok(dirs)
    }

    fn kill(&self, pid: Pid) -> Result<(), Errno> {
        signal::kill(pid, Signal::SIGKILL)
    }

    fn is_running(&self, pid: Pid) -> bool {
        if matches!(signal::kill(pid, None), Err(Errno::ESRCH)) {
            return false;
        }
        // A zombie (state Z: dead, not yet reaped by its parent) takes signal 0 too, but it
        // will never clean up after itself (`man 5 proc_pid_stat`, field 3).
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X'))
    }
}
