//! Copying a host path into a rootfs *faithfully*: so that inside the rootfs, the same path
//! opens the same file.
//!
//! Copying `/lib64/ld-linux-x86-64.so.2` to `ROOT/lib64/ld-linux-x86-64.so.2` looks right and
//! is subtly wrong. On Debian 12 (merged `/usr`), `/lib64` is a symlink to `usr/lib64`, and
//! `/usr/lib64/ld-linux-x86-64.so.2` is itself a symlink into `/usr/lib/x86_64-linux-gnu`. A
//! plain copy makes `ROOT/lib64` a real directory, and a later copy of `/usr/lib64/...` lands
//! somewhere else: two files where the host has one, and programs that compute paths from
//! their own location (`$ORIGIN`, Python's `sys.prefix`) see a different tree.
//!
//! So we do what the kernel does when it resolves a path (`man 7 path_resolution`): walk it
//! one component at a time, *inside the rootfs*:
//!
//! - the component exists in the rootfs as a directory: descend into it;
//! - it exists as a symlink: follow it, resolving the target inside the rootfs (an absolute
//!   target starts again at the rootfs's root, `..` stops there), never outside;
//! - it is missing: look at the same path on the host, and recreate what is there: a symlink
//!   as the same symlink (then follow it), a directory as a directory with the same mode and
//!   owner, and for the last component, the file itself, with its mode (set-user-ID included).
//!
//! At most [`MAX_SYMLINKS`] symlinks are followed per path, as in the kernel, so a loop ends
//! in an error rather than hanging. Every change made is recorded as an [`Op`], which is what
//! `copy --explain` prints under "what was written".
//!
//! Why one file of over 600 lines: the walk is one algorithm, component by component as the
//! kernel resolves a path, and reads best whole (about 540 lines); its tests, on a fake merged-/usr
//! host in a temporary directory, are the other 200.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoResultExt, Result};

/// How many symlinks one path may go through (Linux's `MAXSYMLINKS`, `man 7 path_resolution`).
pub const MAX_SYMLINKS: usize = 40;

/// One change made to the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A directory was created, as on the host.
    Mkdir {
        /// Its path inside the rootfs.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A symlink was recreated, with the host's target.
    Symlink {
        /// Its path inside the rootfs.
        path: PathBuf,
        /// What it points to, exactly as on the host.
        target: PathBuf,
    },
    /// A regular file was copied.
    Copy {
        /// Its path inside the rootfs.
        path: PathBuf,
        /// Its permission bits, set-user-ID and friends included.
        mode: u32,
        /// Its size.
        bytes: u64,
    },
    /// A device node or fifo was recreated (`man 2 mknod`).
    Mknod {
        /// Its path inside the rootfs.
        path: PathBuf,
        /// `character device 1:3`, `fifo`, …
        kind: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file was already in the rootfs and was left alone.
    Kept {
        /// Its path inside the rootfs (after following symlinks).
        path: PathBuf,
    },
    /// A directory was copied recursively; what happened inside it is counted, not listed.
    Tree {
        /// Its path inside the rootfs.
        path: PathBuf,
        /// Regular files (and device nodes) created.
        files: usize,
        /// Directories created.
        dirs: usize,
        /// Symlinks created.
        symlinks: usize,
    },
}

impl Op {
    /// The path inside the rootfs this operation is about.
    pub fn path(&self) -> &Path {
        match self {
            Op::Mkdir { path, .. }
            | Op::Symlink { path, .. }
            | Op::Copy { path, .. }
            | Op::Mknod { path, .. }
            | Op::Kept { path }
            | Op::Tree { path, .. } => path,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Mkdir { path, mode } => write!(f, "mkdir    {}  ({mode:04o})", path.display()),
            Op::Symlink { path, target } => {
                write!(f, "symlink  {} -> {}", path.display(), target.display())
            }
            Op::Copy { path, mode, .. } => write!(f, "copy     {}  ({mode:04o})", path.display()),
            Op::Mknod { path, kind, mode } => {
                write!(f, "mknod    {}  ({kind}, {mode:04o})", path.display())
            }
            Op::Kept { path } => write!(f, "kept     {}  (already there)", path.display()),
            Op::Tree { path, files, dirs, symlinks } => write!(
                f,
                "tree     {}/  ({}, {}, {})",
                path.display(),
                crate::count(*files, "file", "files"),
                crate::count(*dirs, "directory", "directories"),
                crate::count(*symlinks, "symlink", "symlinks"),
            ),
        }
    }
}

/// The result of installing one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The path as asked for, e.g. `/usr/bin/python3`.
    pub requested: PathBuf,
    /// Where it ended up inside the rootfs, symlinks resolved, e.g. `/usr/bin/python3.11`.
    pub path: PathBuf,
    /// False if the file was already there.
    pub copied: bool,
}

/// The result of copying a directory recursively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledTree {
    /// The directory as asked for.
    pub requested: PathBuf,
    /// Where it is inside the rootfs, symlinks resolved.
    pub path: PathBuf,
    /// Every regular file in it, and every file a symlink in it points to, as paths inside the
    /// rootfs (which, on the host, are the same paths): the caller looks for ELF files here.
    pub files: Vec<PathBuf>,
}

/// Copies host paths into one rootfs, faithfully; see the module documentation.
#[derive(Debug)]
pub struct Installer {
    host_root: PathBuf,
    root: PathBuf,
    ops: Vec<Op>,
    bytes: u64,
    tree: Option<Op>,
}

impl Installer {
    /// Copies from the host's `/` into `root`.
    pub fn new(root: &Path) -> Self {
        Self::with_host_root(Path::new("/"), root)
    }

    /// Copies from `host_root` (instead of `/`) into `root`; tests use a made-up host tree.
    pub fn with_host_root(host_root: &Path, root: &Path) -> Self {
        Installer {
            host_root: host_root.to_path_buf(),
            root: root.to_path_buf(),
            ops: Vec::new(),
            bytes: 0,
            tree: None,
        }
    }

    /// Everything done so far, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Bytes of file content written so far.
    pub fn bytes_copied(&self) -> u64 {
        self.bytes
    }

    /// Installs `path` (absolute, as on the host) and, like `open(2)`, what its symlinks point
    /// to. Anything already in the rootfs is kept.
    pub fn install(&mut self, path: &Path) -> Result<Installed> {
        let walked = self.walk(path, true)?;
        if !walked.created_last && !walked.is_dir {
            self.record(Op::Kept { path: walked.path.clone() });
        }
        Ok(Installed {
            requested: path.to_path_buf(),
            path: walked.path,
            copied: walked.created_last,
        })
    }

    // ANCHOR: install_tree
    /// Copies the directory `path` and everything in it. Symlinks inside it are recreated as
    /// symlinks; when one points to a file, that file is installed too (wherever it is), so
    /// the link works in the rootfs as it does on the host. Links to directories stay links.
    pub fn install_tree(&mut self, path: &Path) -> Result<InstalledTree> {
        let top = self.walk(path, true)?;
        if !top.is_dir {
            return Err(Error::Invalid(format!(
                "{} is not a directory inside {}: cannot copy {} into it",
                top.path.display(),
                self.root.display(),
                path.display()
            )));
        }
        self.tree = Some(Op::Tree { path: top.path.clone(), files: 0, dirs: 0, symlinks: 0 });
        let mut files = Vec::new();
        let copied = self.copy_children(&top.path, &mut files);
        let tree = self.tree.take();
        copied?;
        self.ops.extend(tree);
        Ok(InstalledTree { requested: path.to_path_buf(), path: top.path, files })
    }

    fn copy_children(&mut self, dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
        let host_dir = self.host(dir);
        let mut names: Vec<OsString> = fs::read_dir(&host_dir)
            .io("opendir", &host_dir)?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<io::Result<_>>()
            .io("readdir", &host_dir)?;
        // Sorted, so that the order of operations (and of any error) is the same every time.
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let host = self.host(&path);
            let metadata = fs::symlink_metadata(&host).io("lstat", &host)?;
            if metadata.file_type().is_symlink() {
                self.walk(&path, false)?;
                if fs::metadata(&host).is_ok_and(|target| target.is_file()) {
                    files.push(self.walk(&path, true)?.path);
                }
            } else if metadata.is_dir() {
                let walked = self.walk(&path, true)?;
                if walked.is_dir {
                    self.copy_children(&walked.path, files)?;
                }
            } else {
                let walked = self.walk(&path, true)?;
                if metadata.is_file() {
                    files.push(walked.path);
                }
            }
        }
        Ok(())
    }
    // ANCHOR_END: install_tree

    /// `root` + `path`, for a path inside the rootfs.
    pub fn inside(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// `host_root` + `path`, for a path on the host.
    fn host(&self, path: &Path) -> PathBuf {
        self.host_root.join(path.strip_prefix("/").unwrap_or(path))
    }

    // ANCHOR: walk
    /// Resolves `path` inside the rootfs one component at a time, creating what is missing
    /// from the host. `follow_last`: follow a symlink in the last component (like `open`), or
    /// not (like `lstat`).
    fn walk(&mut self, path: &Path, follow_last: bool) -> Result<Walked> {
        let mut done = PathBuf::from("/");
        let mut todo: VecDeque<OsString> = components(path);
        let mut links_followed = 0;
        let mut created_last = false;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                // `..` of the root is the root: nothing resolves to outside the rootfs.
                done.pop();
                continue;
            }
            let candidate = done.join(&name);
            let last = todo.is_empty();
            let inside = self.inside(&candidate);
            let metadata = match fs::symlink_metadata(&inside) {
                Ok(metadata) => {
                    created_last = false;
                    metadata
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    self.create_from_host(&candidate, last, path)?;
                    created_last = true;
                    fs::symlink_metadata(&inside).io("lstat", &inside)?
                }
                Err(error) => return Err(error).io("lstat", &inside),
            };
            if metadata.file_type().is_symlink() && (follow_last || !last) {
                links_followed += 1;
                if links_followed > MAX_SYMLINKS {
                    return Err(Error::SymlinkLoop {
                        path: path.to_path_buf(),
                        root: self.root.clone(),
                    });
                }
                let target = fs::read_link(&inside).io("readlink", &inside)?;
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                for component in components(&target).into_iter().rev() {
                    todo.push_front(component);
                }
                continue;
            }
            if !last && !metadata.is_dir() {
                return Err(not_a_directory(&inside, path));
            }
            done = candidate;
            if last {
                return Ok(Walked { path: done, created_last, is_dir: metadata.is_dir() });
            }
        }
        // An empty path, or one that ended in `..`/a symlink to a directory: a directory.
        let is_dir = fs::metadata(self.inside(&done)).is_ok_and(|metadata| metadata.is_dir());
        Ok(Walked { path: done, created_last, is_dir })
    }
    // ANCHOR_END: walk

    /// Recreates the host's `path` (missing in the rootfs, whose parent exists there).
    fn create_from_host(&mut self, path: &Path, last: bool, requested: &Path) -> Result<()> {
        let host = self.host(path);
        let inside = self.inside(path);
        let metadata = fs::symlink_metadata(&host).map_err(|error| {
            let hint = if path == requested {
                "check the path".to_string()
            } else {
                format!("needed for {}", requested.display())
            };
            Error::io("lstat", &host, error).hint(hint)
        })?;
        let file_type = metadata.file_type();
        let mode = metadata.mode() & 0o7777;
        if file_type.is_symlink() {
            let target = fs::read_link(&host).io("readlink", &host)?;
            std::os::unix::fs::symlink(&target, &inside).io("symlink", &inside)?;
            set_owner(&inside, &metadata)?;
            self.record(Op::Symlink { path: path.to_path_buf(), target });
        } else if file_type.is_dir() {
            fs::create_dir(&inside).io("mkdir", &inside)?;
            set_owner_and_mode(&inside, &metadata)?;
            self.record(Op::Mkdir { path: path.to_path_buf(), mode });
        } else if !last {
            return Err(not_a_directory(&host, requested));
        } else if file_type.is_file() {
            fs::copy(&host, &inside).map_err(|error| {
                Error::io("copy", &host, error).hint(format!("to {}", inside.display()))
            })?;
            // chown(2) clears the set-user-ID and set-group-ID bits, so the mode comes last.
            set_owner_and_mode(&inside, &metadata)?;
            self.bytes += metadata.len();
            self.record(Op::Copy { path: path.to_path_buf(), mode, bytes: metadata.len() });
        } else if let Some((kind, flag)) = special_kind(&file_type, metadata.rdev()) {
            let permissions = nix::sys::stat::Mode::from_bits_truncate(mode);
            nix::sys::stat::mknod(&inside, flag, permissions, metadata.rdev()).map_err(
                |errno| {
                    Error::io("mknod", &inside, io::Error::from_raw_os_error(errno as i32))
                        .hint("device nodes can only be created by root")
                },
            )?;
            set_owner_and_mode(&inside, &metadata)?;
            self.record(Op::Mknod { path: path.to_path_buf(), kind, mode });
        } else {
            return Err(Error::Invalid(format!(
                "{} is a socket: a socket belongs to a running program and cannot be copied",
                host.display()
            )));
        }
        Ok(())
    }

    /// Logs `op`, or counts it when it happens inside the directory being copied.
    fn record(&mut self, op: Op) {
        if let Some(Op::Tree { path, files, dirs, symlinks }) = &mut self.tree {
            if op.path().starts_with(&*path) {
                match op {
                    Op::Mkdir { .. } => *dirs += 1,
                    Op::Symlink { .. } => *symlinks += 1,
                    Op::Copy { .. } | Op::Mknod { .. } => *files += 1,
                    Op::Kept { .. } | Op::Tree { .. } => {}
                }
                return;
            }
        }
        self.ops.push(op);
    }
}

/// Where a walk ended.
struct Walked {
    path: PathBuf,
    created_last: bool,
    is_dir: bool,
}

/// The normal components of `path`, as owned names; `.` is dropped, `..` kept.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn not_a_directory(path: &Path, requested: &Path) -> Error {
    Error::io("open", path, io::Error::from_raw_os_error(libc::ENOTDIR))
        .hint(format!("it is in the way of {}", requested.display()))
}

/// The `mknod` type of a device node or fifo, in words and as flags.
fn special_kind(file_type: &fs::FileType, rdev: u64) -> Option<(String, nix::sys::stat::SFlag)> {
    use nix::sys::stat::SFlag;
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    if file_type.is_char_device() {
        Some((format!("character device {major}:{minor}"), SFlag::S_IFCHR))
    } else if file_type.is_block_device() {
        Some((format!("block device {major}:{minor}"), SFlag::S_IFBLK))
    } else if file_type.is_fifo() {
        Some(("fifo".to_string(), SFlag::S_IFIFO))
    } else {
        None
    }
}

/// Gives `path` the host file's owner. Only root may do that; anyone else keeps the files as
/// their own, which is fine for a rootfs they will use themselves.
fn set_owner(path: &Path, host: &Metadata) -> Result<()> {
    match std::os::unix::fs::lchown(path, Some(host.uid()), Some(host.gid())) {
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        result => result.io("lchown", path),
    }
}

fn set_owner_and_mode(path: &Path, host: &Metadata) -> Result<()> {
    set_owner(path, host)?;
    fs::set_permissions(path, Permissions::from_mode(host.mode() & 0o7777)).io("chmod", path)
}

/// Where `path` is inside `root`, resolved the way a process chrooted into `root` would
/// resolve it: symlinks are followed inside `root` (an absolute target starts again at
/// `root`, `..` stops there), so the result is always under `root`. Components that do not
/// exist are appended as they are. `follow_last`: whether a symlink in the last component is
/// followed (for `mkdir -p`), or not (for a file about to be replaced, like `unlink(2)`).
///
/// The read-only half of [`Installer::install`]'s walk: use it before writing into a rootfs
/// that may already hold symlinks (an absolute `etc -> /etc` must not send `/etc/passwd` to
/// the host).
pub fn resolve_in_root(root: &Path, path: &Path, follow_last: bool) -> Result<PathBuf> {
    let mut done = PathBuf::from("/");
    let mut todo = components(path);
    let mut links_followed = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            done.pop();
            continue;
        }
        let candidate = done.join(&name);
        let inside = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        let is_link = match fs::symlink_metadata(&inside) {
            Ok(metadata) => metadata.file_type().is_symlink(),
            // Nothing there (yet): taken literally, it will be created.
            Err(error) if error.kind() == io::ErrorKind::NotFound => false,
            Err(error) => return Err(error).io("lstat", &inside),
        };
        if is_link && (follow_last || !todo.is_empty()) {
            links_followed += 1;
            if links_followed > MAX_SYMLINKS {
                return Err(Error::SymlinkLoop {
                    path: path.to_path_buf(),
                    root: root.to_path_buf(),
                });
            }
            let target = fs::read_link(&inside).io("readlink", &inside)?;
            if target.is_absolute() {
                done = PathBuf::from("/");
            }
            for component in components(&target).into_iter().rev() {
                todo.push_front(component);
            }
            continue;
        }
        done = candidate;
    }
    Ok(root.join(done.strip_prefix("/").unwrap_or(&done)))
}

/// Makes sure `root` is a directory we can build in, creating it (but not its parents).
pub fn prepare_root(root: &Path) -> Result<()> {
    match fs::metadata(root) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(Error::io("mkdir", root, io::Error::from_raw_os_error(libc::EEXIST))
            .hint("it exists and is not a directory: choose another path")),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(root).map_err(|error| {
                let error = Error::io("mkdir", root, error);
                match root.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                    Some(parent) if !parent.exists() => error.hint(format!(
                        "the parent directory {} does not exist: create it first",
                        parent.display()
                    )),
                    _ => error,
                }
            })
        }
        Err(error) => Err(error).io("stat", root),
    }
}

/// The total size of the regular files under `root` (symlinks not followed).
pub fn tree_size(root: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(root).io("opendir", root)? {
        let entry = entry.io("readdir", root)?;
        let metadata = entry.metadata().io("lstat", entry.path())?;
        if metadata.is_dir() {
            total += tree_size(&entry.path())?;
        } else if metadata.is_file() {
            total += metadata.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A made-up host laid out like Debian 12: `/lib` -> `usr/lib`, `/bin` -> `usr/bin`, and
    /// the loader reached through two symlinks.
    fn merged_usr_host() -> tempfile::TempDir {
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        fs::create_dir_all(h.join("usr/lib/x86_64-linux-gnu")).unwrap();
        fs::create_dir_all(h.join("usr/lib64")).unwrap();
        fs::create_dir_all(h.join("usr/bin")).unwrap();
        symlink("usr/lib", h.join("lib")).unwrap();
        symlink("usr/lib64", h.join("lib64")).unwrap();
        symlink("usr/bin", h.join("bin")).unwrap();
        fs::write(h.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"), "loader").unwrap();
        symlink(
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            h.join("usr/lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        fs::write(h.join("usr/lib/x86_64-linux-gnu/libc.so.6"), "libc").unwrap();
        fs::write(h.join("usr/bin/su"), "setuid program").unwrap();
        fs::set_permissions(h.join("usr/bin/su"), Permissions::from_mode(0o4755)).unwrap();
        host
    }

    #[test]
    fn installs_through_symlinked_directories_like_the_host() {
        let host = merged_usr_host();
        let out = tempfile::tempdir().unwrap();
        let mut installer = Installer::with_host_root(host.path(), out.path());

        let loader = installer.install(Path::new("/lib64/ld-linux-x86-64.so.2")).unwrap();
        assert_eq!(loader.path, Path::new("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"));
        assert!(loader.copied);
        // The symlinks are the host's, and the path opens the file, inside the rootfs.
        let o = out.path();
        assert_eq!(fs::read_link(o.join("lib64")).unwrap(), Path::new("usr/lib64"));
        assert_eq!(
            fs::read_link(o.join("usr/lib64/ld-linux-x86-64.so.2")).unwrap(),
            Path::new("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        );
        assert_eq!(fs::read_to_string(o.join("lib64/ld-linux-x86-64.so.2")).unwrap(), "loader");

        // A second path through another symlink lands next to the first, not in a copy of it.
        installer.install(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        assert_eq!(fs::read_link(o.join("lib")).unwrap(), Path::new("usr/lib"));
        assert!(o.join("usr/lib/x86_64-linux-gnu/libc.so.6").is_file());

        // Installing again changes nothing and says so.
        let again = installer.install(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        assert!(!again.copied);

        let ops: Vec<String> = installer.ops().iter().map(ToString::to_string).collect();
        assert_eq!(
            ops,
            [
                "symlink  /lib64 -> usr/lib64",
                "mkdir    /usr  (0755)",
                "mkdir    /usr/lib64  (0755)",
                "symlink  /usr/lib64/ld-linux-x86-64.so.2 -> \
                 ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "mkdir    /usr/lib  (0755)",
                "mkdir    /usr/lib/x86_64-linux-gnu  (0755)",
                "copy     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2  (0644)",
                "symlink  /lib -> usr/lib",
                "copy     /usr/lib/x86_64-linux-gnu/libc.so.6  (0644)",
                "kept     /usr/lib/x86_64-linux-gnu/libc.so.6  (already there)",
            ]
        );
    }

    #[test]
    fn existing_directories_in_the_rootfs_are_used_as_they_are() {
        let host = merged_usr_host();
        let out = tempfile::tempdir().unwrap();
        // A busybox rootfs has a real /bin; the host's /bin is a symlink. We go into the real one.
        fs::create_dir(out.path().join("bin")).unwrap();
        let mut installer = Installer::with_host_root(host.path(), out.path());
        let su = installer.install(Path::new("/bin/su")).unwrap();
        assert_eq!(su.path, Path::new("/bin/su"));
        let mode = fs::metadata(out.path().join("bin/su")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o4755, "the set-user-ID bit survives the copy");
    }

    #[test]
    fn symlinks_in_the_rootfs_never_lead_outside_it() {
        let host = merged_usr_host();
        let out = tempfile::tempdir().unwrap();
        // A hostile (or careless) absolute link and a `..` climb: both stay inside the rootfs.
        symlink("/", out.path().join("escape")).unwrap();
        symlink("../../../../..", out.path().join("climb")).unwrap();
        let mut installer = Installer::with_host_root(host.path(), out.path());
        let via_abs = installer.install(Path::new("/escape/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(via_abs.unwrap().path, Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        let via_dots = installer.install(Path::new("/climb/usr/bin/su")).unwrap();
        assert_eq!(via_dots.path, Path::new("/usr/bin/su"));
        assert!(out.path().join("usr/bin/su").is_file());
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let host = tempfile::tempdir().unwrap();
        symlink("b", host.path().join("a")).unwrap();
        symlink("a", host.path().join("b")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut installer = Installer::with_host_root(host.path(), out.path());
        let error = installer.install(Path::new("/a/file")).unwrap_err();
        assert!(matches!(error, Error::SymlinkLoop { .. }), "{error}");
        assert!(error
            .to_string()
            .starts_with("too many levels of symbolic links resolving /a/file"));
    }

    #[test]
    fn a_missing_host_path_names_the_path() {
        let host = merged_usr_host();
        let out = tempfile::tempdir().unwrap();
        let mut installer = Installer::with_host_root(host.path(), out.path());
        let error = installer.install(Path::new("/usr/bin/nope")).unwrap_err().to_string();
        assert!(error.starts_with("lstat "), "{error}");
        assert!(
            error.ends_with(
                "/usr/bin/nope failed: ENOENT: no such file or directory (check the path)"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_tree_is_copied_with_its_links_and_the_files_they_point_to() {
        let host = merged_usr_host();
        let h = host.path();
        fs::create_dir_all(h.join("usr/lib/python/sub")).unwrap();
        fs::create_dir_all(h.join("etc/python")).unwrap();
        fs::write(h.join("usr/lib/python/os.py"), "import posix").unwrap();
        fs::write(h.join("usr/lib/python/sub/x.so"), "elf").unwrap();
        fs::write(h.join("etc/python/sitecustomize.py"), "# site").unwrap();
        // Relative: an absolute target would be looked up on the real host, not in `h`.
        symlink("../../../etc/python/sitecustomize.py", h.join("usr/lib/python/sitecustomize.py"))
            .unwrap();
        symlink("sub", h.join("usr/lib/python/alias")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut installer = Installer::with_host_root(h, out.path());

        let tree = installer.install_tree(Path::new("/lib/python")).unwrap();
        assert_eq!(tree.path, Path::new("/usr/lib/python"));
        assert_eq!(
            tree.files,
            [
                PathBuf::from("/usr/lib/python/os.py"),
                PathBuf::from("/etc/python/sitecustomize.py"),
                PathBuf::from("/usr/lib/python/sub/x.so"),
            ]
        );
        let o = out.path();
        assert_eq!(fs::read_to_string(o.join("lib/python/sitecustomize.py")).unwrap(), "# site");
        assert_eq!(fs::read_link(o.join("usr/lib/python/alias")).unwrap(), Path::new("sub"));
        let ops: Vec<String> = installer.ops().iter().map(ToString::to_string).collect();
        assert_eq!(
            ops,
            [
                "symlink  /lib -> usr/lib",
                "mkdir    /usr  (0755)",
                "mkdir    /usr/lib  (0755)",
                "mkdir    /usr/lib/python  (0755)",
                "mkdir    /etc  (0755)",
                "mkdir    /etc/python  (0755)",
                "copy     /etc/python/sitecustomize.py  (0644)",
                "tree     /usr/lib/python/  (2 files, 1 directory, 2 symlinks)",
            ]
        );
    }

    #[test]
    fn resolve_in_root_stays_in_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("/srv/etc", r.join("etc")).unwrap();
        symlink("/bin/busybox", r.join("sh")).unwrap();
        symlink("/loop", r.join("loop")).unwrap();
        let resolve = |path: &str, follow| resolve_in_root(r, Path::new(path), follow).unwrap();
        assert_eq!(resolve("/lib/x/libc.so.6", true), r.join("usr/lib/x/libc.so.6"));
        // The host's /srv is not ours: `etc -> /srv/etc` means the rootfs's own /srv/etc.
        assert_eq!(resolve("/etc/passwd", true), r.join("srv/etc/passwd"));
        assert_eq!(resolve("/etc/../../../../passwd", true), r.join("passwd"));
        assert_eq!(resolve("/nothing/../lib", true), r.join("usr/lib"));
        assert_eq!(resolve("/sh", false), r.join("sh"));
        assert_eq!(resolve("/sh", true), r.join("bin/busybox"));
        let error = resolve_in_root(r, Path::new("/loop/x"), true).unwrap_err();
        assert!(matches!(error, Error::SymlinkLoop { .. }), "{error}");
    }

    #[test]
    fn prepare_root_creates_only_the_last_component() {
        let dir = tempfile::tempdir().unwrap();
        prepare_root(&dir.path().join("jail")).unwrap();
        assert!(dir.path().join("jail").is_dir());
        let error = prepare_root(&dir.path().join("no/jail")).unwrap_err().to_string();
        assert!(error.contains("/no/jail failed: ENOENT: no such file or directory (the parent"));
        assert!(error.ends_with("/no does not exist: create it first)"), "{error}");
    }
}
