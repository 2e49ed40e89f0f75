//! Filesystem isolation: can the sandbox see the host's files, climb out of its root, or
//! change the root filesystem it was started from?
//!
//! Three checks, one per lesson:
//! - `host-filesystem`: the host's marker directory lies outside the sandbox's root. If `stat`
//!   finds it, the sandbox sees the host's tree (no chroot at all).
//! - `chroot-escape`: `chroot(2)` is not a boundary for a process that may call chroot again
//!   ([`libisolab::chroot::attempt_escape`]). A forked child tries the break-out and says
//!   whether the marker became visible; the child, not the probe, is the one that may end up
//!   outside, so the probe itself stays where it was.
//! - `rootfs-write`: a file created at `/`. Whether it landed in the *base* rootfs (stage 1)
//!   or in a private layer (stage 4's overlay) only the host can see, so the verdict is
//!   provisional.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use libisolab::chroot::{self, DirId};
use libisolab::error::errno_name;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use nix::unistd::{self, ForkResult};
use serde::{Deserialize, Serialize};

use crate::{io_errno, Check, CheckId, Inputs, Status};

/// What `stat(2)` says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// It exists, as seen from here.
    Visible,
    /// `ENOENT` or `ENOTDIR`: nothing there.
    Invisible(Errno),
    /// Another error (e.g. `EACCES`): we cannot tell.
    Unknown(Errno),
}

/// Looks at `path` without following a final symlink (`man 2 lstat`).
pub fn visibility(path: &Path) -> Visibility {
    match nix::sys::stat::lstat(path) {
        Ok(_) => Visibility::Visible,
        Err(errno @ (Errno::ENOENT | Errno::ENOTDIR)) => Visibility::Invisible(errno),
        Err(errno) => Visibility::Unknown(errno),
    }
}

/// `host-filesystem`: is the host's marker directory visible?
pub fn host_filesystem(inputs: &Inputs) -> Check {
    let id = CheckId::HostFilesystem;
    let Some(host_path) = &inputs.host_path else {
        return Check::not_applicable(id, "no --host-path given");
    };
    let shown = host_path.display();
    match visibility(host_path) {
        Visibility::Visible => Check::new(id, Status::Leaks, format!("{shown} is visible")),
        Visibility::Invisible(errno) => Check::new(
            id,
            Status::Isolated,
            format!("{shown} is not visible (stat: {})", errno_name(errno)),
        ),
        Visibility::Unknown(errno) => Check::not_applicable(
            id,
            format!("cannot tell whether {shown} is visible: stat failed: {}", errno_name(errno)),
        ),
    }
}

/// One step of the escape, as the child reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StepOutcome {
    call: String,
    error: Option<String>,
}

/// What the escaping child reports over the pipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EscapeOutcome {
    steps: Vec<StepOutcome>,
    /// `/` before the attempt, as a [`DirId`].
    root_before: String,
    /// `/` after it.
    root_after: String,
    /// Could the child see the host's marker afterwards?
    host_path_visible: bool,
}

/// `chroot-escape`: can a process in here break out to the host's `/`?
pub fn chroot_escape(inputs: &Inputs) -> Check {
    let id = CheckId::ChrootEscape;
    let Some(host_path) = &inputs.host_path else {
        return Check::not_applicable(id, "no --host-path given");
    };
    match visibility(host_path) {
        Visibility::Visible => {
            return Check::new(id, Status::Leaks, "the host filesystem is already visible")
        }
        Visibility::Unknown(errno) => {
            return Check::not_applicable(
                id,
                format!("stat {} failed: {}", host_path.display(), errno_name(errno)),
            )
        }
        Visibility::Invisible(_) => {}
    }

    // The attempt gets a directory of its own, so that whatever it leaves (its hideout, if
    // the child escaped before it could remove it) is found and removed without guessing names.
    let workspace = inputs.scratch.join(format!("isolab-escape-{}", std::process::id()));
    if let Err(error) = fs::create_dir(&workspace) {
        return Check::not_applicable(
            id,
            format!(
                "mkdir {} failed: {} (pass a writable directory with --scratch)",
                workspace.display(),
                io_errno(&error)
            ),
        );
    }
    let _cleanup = RemoveDirOnDrop(workspace.clone());

    match escape_in_child(&workspace, host_path) {
        Ok(outcome) => judge_escape(&outcome, host_path),
        Err(error) => Check::not_applicable(id, error),
    }
}

/// Turns the child's report into a verdict.
fn judge_escape(outcome: &EscapeOutcome, host_path: &Path) -> Check {
    let id = CheckId::ChrootEscape;
    if outcome.host_path_visible {
        let calls: Vec<&str> = outcome.steps.iter().map(|step| step.call.as_str()).collect();
        return Check::new(
            id,
            Status::Leaks,
            format!(
                "escaped with {}: / became {} (was {}) and {} is visible",
                calls.join(", "),
                outcome.root_after,
                outcome.root_before,
                host_path.display()
            ),
        );
    }
    match outcome.steps.iter().find_map(|step| step.error.as_ref()) {
        Some(error) => Check::new(id, Status::Isolated, error.clone()),
        None => Check::new(
            id,
            Status::Isolated,
            format!(
                "every step succeeded, but the climb up '..' ended at this sandbox's own root \
                 ({}): the host's / is not above it",
                outcome.root_after
            ),
        ),
    }
}

/// Forks a child that attempts the escape and writes an [`EscapeOutcome`] into a pipe.
fn escape_in_child(workspace: &Path, host_path: &Path) -> Result<EscapeOutcome, String> {
    let (read_end, write_end) = unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|errno| format!("pipe2 failed: {}", errno_name(errno)))?;
    // SAFETY: the probe is single-threaded, so the child may allocate and run ordinary Rust
    // code; it ends with _exit and never returns into the probe's own code.
    match unsafe { unistd::fork() } {
        Err(errno) => Err(format!("fork failed: {}", errno_name(errno))),
        Ok(ForkResult::Child) => {
            drop(read_end);
            // A panic must not unwind into the probe's main (which would print a second
            // report from the child): catch it and end the child.
            let message = std::panic::catch_unwind(AssertUnwindSafe(|| {
                serde_json::to_vec(&attempt(workspace, host_path)).unwrap_or_default()
            }))
            .unwrap_or_default();
            let mut pipe = File::from(write_end);
            let code = if pipe.write_all(&message).is_ok() { 0 } else { 1 };
            drop(pipe);
            // SAFETY: _exit ends the forked child without running the parent's exit handlers
            // or flushing its stdio buffers a second time (man 2 _exit).
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(write_end);
            let mut bytes = Vec::new();
            let _ = File::from(read_end).read_to_end(&mut bytes);
            let status = waitpid(child, None);
            serde_json::from_slice(&bytes).map_err(|_| {
                format!("the escaping child (pid {child}) ended without a report: {status:?}")
            })
        }
    }
}

/// In the child: the escape itself, then a look around.
fn attempt(workspace: &Path, host_path: &Path) -> EscapeOutcome {
    let root_id = || DirId::of(Path::new("/")).map_or_else(|e| e.to_string(), |id| id.to_string());
    let root_before = root_id();
    let escape = chroot::attempt_escape(workspace);
    EscapeOutcome {
        steps: escape
            .steps
            .into_iter()
            .map(|step| StepOutcome { call: step.call, error: step.error })
            .collect(),
        root_before,
        root_after: root_id(),
        host_path_visible: visibility(host_path) == Visibility::Visible,
    }
}

/// The file `rootfs-write` creates at `/` (`isolab-write-<token>`); `isolab compare` looks for
/// it in the base rootfs.
pub fn rootfs_write_name(token: &str) -> String {
    format!("isolab-write-{token}")
}

/// `rootfs-write`: create a file at `/`, hold it, remove it.
pub fn rootfs_write(inputs: &Inputs) -> Check {
    let id = CheckId::RootfsWrite;
    let Some(token) = &inputs.token else {
        return Check::not_applicable(id, "no --token given");
    };
    let path = Path::new("/").join(rootfs_write_name(token));
    let shown = path.display();
    // O_EXCL: never touch a file that is not ours (man 2 open).
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(mut file) => {
            let _remove = RemoveFileOnDrop(path.clone());
            let _ = file.write_all(token.as_bytes());
            drop(file);
            crate::hold(inputs.hold);
            Check::provisional_leak(
                id,
                format!(
                    "created {shown} (removed after {} ms); whether it reached the base rootfs \
                     only the host can tell",
                    inputs.hold.as_millis()
                ),
            )
        }
        Err(error) => {
            let errno = io_errno(&error);
            match error.raw_os_error().map(Errno::from_raw) {
                Some(Errno::EROFS) => Check::new(
                    id,
                    Status::Isolated,
                    format!("open {shown} failed: {errno} (the root is mounted read-only)"),
                ),
                Some(Errno::EACCES | Errno::EPERM) => Check::new(
                    id,
                    Status::Isolated,
                    format!(
                        "open {shown} failed: {errno} (uid {} may not write to /)",
                        unistd::geteuid()
                    ),
                ),
                Some(Errno::EEXIST) => Check::not_applicable(
                    id,
                    format!("{shown} already exists: it is not this probe's, so it stays"),
                ),
                _ => Check::not_applicable(id, format!("open {shown} failed: {errno}")),
            }
        }
    }
}

/// Removes a file when dropped, so that a failing check still leaves nothing behind.
struct RemoveFileOnDrop(PathBuf);

impl Drop for RemoveFileOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Removes a directory of ours and the empty directories in it when dropped.
pub(crate) struct RemoveDirOnDrop(pub(crate) PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        // Only empty directories (rmdir), never a recursive delete: if something unexpected
        // is in there, it is better left than destroyed.
        if let Ok(entries) = fs::read_dir(&self.0) {
            for entry in entries.flatten() {
                let _ = fs::remove_dir(entry.path());
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(errors: &[Option<&str>], visible: bool) -> EscapeOutcome {
        EscapeOutcome {
            steps: errors
                .iter()
                .enumerate()
                .map(|(n, e)| StepOutcome { call: format!("step{n}"), error: e.map(String::from) })
                .collect(),
            root_before: "device 1:1, inode 10".into(),
            root_after: "device 1:1, inode 2".into(),
            host_path_visible: visible,
        }
    }

    #[test]
    fn escape_verdicts() {
        let host = Path::new("/tmp/x/host-marker-abc");
        let escaped = judge_escape(&outcome(&[None, None], true), host);
        assert_eq!(escaped.status, Status::Leaks);
        assert!(escaped.evidence.contains("/tmp/x/host-marker-abc is visible"), "{escaped:?}");
        assert!(escaped.evidence.starts_with("escaped with step0, step1"), "{escaped:?}");

        let held = judge_escape(&outcome(&[None, Some("chroot /x failed: EPERM")], false), host);
        assert_eq!(
            held,
            Check::new(CheckId::ChrootEscape, Status::Isolated, "chroot /x failed: EPERM")
        );

        let climbed = judge_escape(&outcome(&[None, None], false), host);
        assert_eq!(climbed.status, Status::Isolated);
        assert!(climbed.evidence.contains("own root (device 1:1, inode 2)"), "{climbed:?}");
    }

    #[test]
    fn host_filesystem_sees_an_existing_marker() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("host-marker-t0k3n");
        let inputs = Inputs { host_path: Some(marker.clone()), ..Inputs::default() };
        assert_eq!(host_filesystem(&inputs).status, Status::Isolated);
        fs::create_dir(&marker).unwrap();
        let check = host_filesystem(&inputs);
        assert_eq!(check.status, Status::Leaks);
        assert_eq!(check.evidence, format!("{} is visible", marker.display()));
    }

    #[test]
    fn remove_dir_on_drop_only_removes_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours");
        fs::create_dir_all(ours.join("empty")).unwrap();
        fs::create_dir_all(ours.join("full")).unwrap();
        fs::write(ours.join("full/keep"), "").unwrap();
        drop(RemoveDirOnDrop(ours.clone()));
        assert!(!ours.join("empty").exists());
        assert!(ours.join("full/keep").exists());
    }
}
