//! What a container changed in its base: `A`dded, `C`hanged and `D`eleted paths, as
//! `docker diff` prints them.
//!
//! With overlayfs the answer is already on disk: every change a container makes lands in its
//! upper directory (see [`crate::overlay`]), so the changes are read from there, comparing
//! each name with what the lower layers have. Two kinds of entries in an upper are not files
//! but notes to overlayfs, and [`read_upper`] names them:
//!
//! - a **whiteout**, a character device with device number 0/0: "this name is deleted";
//! - an **opaque directory**, marked with the xattr `trusted.overlay.opaque=y` (or
//!   `user.overlay.opaque=y` when mounted with `userxattr`): "this directory was deleted and
//!   made again; nothing the lowers have below it shows through".
//!
//! [`read_upper`]'s list is also what an image *commit* (chapter 5) packs into a layer tar,
//! where a whiteout becomes a `.wh.<name>` entry and an opaque directory a `.wh..wh..opq`.
//!
//! With the copy driver there is no upper: [`tree_changes`] compares the container's copy
//! with the base, file by file, as the naive storage drivers must.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{CString, OsString};
use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::overlay::{OPAQUE_TRUSTED, OPAQUE_USER};

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Not in the base; in the container.
    Added,
    /// In both, but different (for a directory: something below it changed, or the
    /// directory itself).
    Changed,
    /// In the base; gone from the container.
    Deleted,
}

/// One line of `diff`: a kind and a path inside the container (`/etc/hostname`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Added, changed or deleted.
    pub kind: Kind,
    /// The path as the container sees it, absolute.
    pub path: PathBuf,
}

/// `A /etc/new`, `C /etc`, `D /etc/motd`.
impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letter = match self.kind {
            Kind::Added => 'A',
            Kind::Changed => 'C',
            Kind::Deleted => 'D',
        };
        write!(f, "{letter} {}", self.path.display())
    }
}

/// What an entry of an upper directory is, to overlayfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpperKind {
    /// A character device 0/0: the name is deleted.
    Whiteout,
    /// A directory marked opaque: the lowers' entries below it are hidden.
    OpaqueDir,
    /// A directory (copied up, or new).
    Dir,
    /// A regular file (copied up, or new).
    File,
    /// A symbolic link.
    Symlink,
    /// A device node, fifo or socket.
    Special,
}

/// One entry of an upper directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpperEntry {
    /// The path inside the container, absolute.
    pub path: PathBuf,
    /// What it is to overlayfs.
    pub kind: UpperKind,
}

/// `whiteout  /etc/motd  (character device 0/0)`: the upper as overlayfs wrote it.
impl fmt::Display for UpperEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, note) = match self.kind {
            UpperKind::Whiteout => ("whiteout", "  (character device 0/0: deleted)"),
            UpperKind::OpaqueDir => ("opaque", "  (xattr overlay.opaque=y: lowers hidden below)"),
            UpperKind::Dir => ("dir", ""),
            UpperKind::File => ("file", ""),
            UpperKind::Symlink => ("symlink", ""),
            UpperKind::Special => ("special", ""),
        };
        write!(f, "{word:<9}{}{note}", self.path.display())
    }
}

// ANCHOR: read_upper
/// Lists an upper directory, every entry with what it is to overlayfs, in path order.
pub fn read_upper(upper: &Path) -> Result<Vec<UpperEntry>> {
    let mut entries = Vec::new();
    walk(upper, Path::new("/"), &mut |path, metadata| {
        let full = upper.join(path.strip_prefix("/").unwrap_or(path));
        let kind = upper_kind(&full, metadata)?;
        entries.push(UpperEntry { path: path.to_path_buf(), kind });
        Ok(kind != UpperKind::Whiteout)
    })?;
    Ok(entries)
}

/// What `path` (with `metadata`) is to overlayfs.
fn upper_kind(path: &Path, metadata: &Metadata) -> Result<UpperKind> {
    let file_type = metadata.file_type();
    Ok(if is_whiteout(metadata) {
        UpperKind::Whiteout
    } else if file_type.is_dir() && is_opaque(path)? {
        UpperKind::OpaqueDir
    } else if file_type.is_dir() {
        UpperKind::Dir
    } else if file_type.is_file() {
        UpperKind::File
    } else if file_type.is_symlink() {
        UpperKind::Symlink
    } else {
        UpperKind::Special
    })
}

/// A whiteout: a character device whose device number is 0/0 (`man 2 mknod`).
pub fn is_whiteout(metadata: &Metadata) -> bool {
    metadata.file_type().is_char_device() && metadata.rdev() == 0
}

/// An opaque directory: `overlay.opaque` is `y` in the trusted or the user xattrs.
pub fn is_opaque(dir: &Path) -> Result<bool> {
    for name in [OPAQUE_TRUSTED, OPAQUE_USER] {
        if xattr(dir, name)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}
// ANCHOR_END: read_upper

/// Reads one xattr of `path` without following a symlink (`man 2 lgetxattr`); `None` if it
/// has none of that name (or may not read it: `trusted.*` is for the host's root only).
fn xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{} has a NUL byte", path.display())))?;
    let c_name = CString::new(name).expect("xattr names have no NUL");
    let mut value = vec![0u8; 64];
    // SAFETY: both strings are NUL-terminated, and `value` is writable for its length.
    let size = unsafe {
        libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_mut_ptr().cast(), value.len())
    };
    if size < 0 {
        return match Errno::last() {
            Errno::ENODATA | Errno::ENOTSUP | Errno::EPERM | Errno::EACCES | Errno::ERANGE => {
                Ok(None)
            }
            errno => Err(Error::sys("lgetxattr", format!("{name} of {}", path.display()), errno)),
        };
    }
    value.truncate(size as usize);
    Ok(Some(value))
}

// ANCHOR: overlay_changes
/// The changes an upper directory holds, compared with the lowers it was mounted over
/// (topmost first), in path order.
pub fn overlay_changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    walk(upper, Path::new("/"), &mut |path, metadata| {
        let relative = path.strip_prefix("/").unwrap_or(path);
        let before = lookup(lowers, relative)?;
        let kind = upper_kind(&upper.join(relative), metadata)?;
        match (kind, &before) {
            // A whiteout over nothing hides nothing.
            (UpperKind::Whiteout, None) => {}
            (UpperKind::Whiteout, Some(_)) => changes.push(change(Kind::Deleted, path)),
            (_, None) => changes.push(change(Kind::Added, path)),
            (_, Some(_)) => changes.push(change(Kind::Changed, path)),
        }
        // An opaque directory that replaced one of the base's: what the base had below it
        // and the upper does not is deleted (a whiteout says so for other directories).
        if let (UpperKind::OpaqueDir, Some(before)) = (kind, &before) {
            if before.is_dir() {
                let now: HashSet<OsString> = names(&upper.join(relative))?.into_iter().collect();
                for name in lower_names(lowers, relative)? {
                    if !now.contains(&name) {
                        changes.push(change(Kind::Deleted, &path.join(name)));
                    }
                }
            }
        }
        Ok(kind != UpperKind::Whiteout)
    })?;
    changes.sort_by(|a, b| a.path.as_os_str().as_bytes().cmp(b.path.as_os_str().as_bytes()));
    Ok(changes)
}
// ANCHOR_END: overlay_changes

/// What the lowers show at `relative` (a path below the mount's root), as overlayfs looks
/// it up: the topmost layer that has the name wins, a whiteout there means deleted, and an
/// opaque directory on the way hides the layers below it.
fn lookup(lowers: &[PathBuf], relative: &Path) -> Result<Option<Metadata>> {
    for layer in lowers {
        if let Some(metadata) = lstat(&layer.join(relative))? {
            return Ok((!is_whiteout(&metadata)).then_some(metadata));
        }
        // Not in this layer: an opaque ancestor here hides the layers below.
        for ancestor in relative.ancestors().skip(1) {
            let dir = layer.join(ancestor);
            if !ancestor.as_os_str().is_empty() && dir.is_dir() && is_opaque(&dir)? {
                return Ok(None);
            }
        }
    }
    Ok(None)
}

/// The names the lowers show in directory `relative`, sorted.
fn lower_names(lowers: &[PathBuf], relative: &Path) -> Result<Vec<OsString>> {
    let mut candidates = BTreeSet::new();
    for layer in lowers {
        let dir = layer.join(relative);
        if dir.is_dir() {
            candidates.extend(names(&dir)?);
        }
    }
    let mut visible = Vec::new();
    for name in candidates {
        if lookup(lowers, &relative.join(&name))?.is_some() {
            visible.push(name);
        }
    }
    Ok(visible)
}

// ANCHOR: tree_changes
/// The changes between a base and a full copy of it (the copy driver): every path of the
/// copy is compared with the base's by type, mode, owner, size, modification time and link
/// target; what the base has and the copy lacks is deleted. The directories above a change
/// are changed too, as `docker diff` lists them.
pub fn tree_changes(base: &Path, copy: &Path) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    walk(copy, Path::new("/"), &mut |path, metadata| {
        let relative = path.strip_prefix("/").unwrap_or(path);
        match lstat(&base.join(relative))? {
            None => changes.push(change(Kind::Added, path)),
            Some(before) => {
                if differs(&before, metadata, &base.join(relative), &copy.join(relative))? {
                    changes.push(change(Kind::Changed, path));
                }
                if before.is_dir() && metadata.is_dir() {
                    let now: HashSet<OsString> = names(&copy.join(relative))?.into_iter().collect();
                    for name in names(&base.join(relative))? {
                        if !now.contains(&name) {
                            changes.push(change(Kind::Deleted, &path.join(name)));
                        }
                    }
                }
            }
        }
        Ok(true)
    })?;
    // The directories above a change, as changed.
    let mut listed: HashSet<PathBuf> = changes.iter().map(|c| c.path.clone()).collect();
    let mut parents = Vec::new();
    for change in &changes {
        for parent in change.path.ancestors().skip(1) {
            if parent != Path::new("/") && listed.insert(parent.to_path_buf()) {
                parents.push(self::change(Kind::Changed, parent));
            }
        }
    }
    changes.extend(parents);
    changes.sort_by(|a, b| a.path.as_os_str().as_bytes().cmp(b.path.as_os_str().as_bytes()));
    Ok(changes)
}
// ANCHOR_END: tree_changes

/// Whether a path of the copy differs from the base's.
fn differs(before: &Metadata, after: &Metadata, base: &Path, copy: &Path) -> Result<bool> {
    let kind = |m: &Metadata| m.mode() & libc::S_IFMT;
    if kind(before) != kind(after)
        || before.mode() != after.mode()
        || before.uid() != after.uid()
        || before.gid() != after.gid()
        || before.rdev() != after.rdev()
    {
        return Ok(true);
    }
    if before.is_dir() {
        // A directory's size is the filesystem's business, and its time changes with its
        // entries, which are compared one by one.
        return Ok(false);
    }
    if before.len() != after.len()
        || (before.mtime(), before.mtime_nsec()) != (after.mtime(), after.mtime_nsec())
    {
        return Ok(true);
    }
    if before.file_type().is_symlink() {
        let target = |path: &Path| fs::read_link(path).map_err(|e| io_error("readlink", path, e));
        return Ok(target(base)? != target(copy)?);
    }
    Ok(false)
}

fn change(kind: Kind, path: &Path) -> Change {
    Change { kind, path: path.to_path_buf() }
}

/// Walks the tree under `root`, calling `visit` with each entry's path inside the container
/// (`/etc/hostname`) and its metadata, in name order, parents before children; `visit`
/// returns whether to go into a directory.
fn walk(
    root: &Path,
    at: &Path,
    visit: &mut dyn FnMut(&Path, &Metadata) -> Result<bool>,
) -> Result<()> {
    let dir = root.join(at.strip_prefix("/").unwrap_or(at));
    for name in names(&dir)? {
        let path = at.join(&name);
        let Some(metadata) = lstat(&dir.join(&name))? else { continue };
        if visit(&path, &metadata)? && metadata.is_dir() {
            walk(root, &path, visit)?;
        }
    }
    Ok(())
}

/// The names in directory `dir`, sorted by their bytes.
fn names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error("opendir", dir, e))? {
        names.push(entry.map_err(|e| io_error("readdir", dir, e))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// `lstat(2)`; `None` if nothing is there.
fn lstat(path: &Path) -> Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(metadata) => Ok(Some(metadata)),
        Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            Ok(None)
        }
        Err(error) => Err(io_error("lstat", path, error)),
    }
}

fn io_error(call: &'static str, path: &Path, error: io::Error) -> Error {
    Error::sys(call, path.display(), Errno::from_raw(error.raw_os_error().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn lines(changes: &[Change]) -> Vec<String> {
        changes.iter().map(Change::to_string).collect()
    }

    /// A hand-made upper (no overlay mount needed, except for the whiteout's mknod).
    #[test]
    fn an_upper_reads_as_adds_changes_and_deletes() {
        if !nix::unistd::geteuid().is_root() {
            return; // mknod of a character device needs root
        }
        let tmp = tempfile::tempdir().unwrap();
        let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
        for dir in ["etc", "srv/data", "var"] {
            fs::create_dir_all(lower.join(dir)).unwrap();
        }
        fs::write(lower.join("etc/motd"), "hi").unwrap();
        fs::write(lower.join("etc/hostname"), "base").unwrap();
        fs::write(lower.join("srv/data/old"), "old").unwrap();
        fs::write(lower.join("srv/data/kept"), "old").unwrap();

        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::create_dir_all(upper.join("srv/data")).unwrap();
        fs::create_dir_all(upper.join("new/dir")).unwrap();
        fs::write(upper.join("etc/hostname"), "changed").unwrap();
        fs::write(upper.join("srv/data/kept"), "new").unwrap();
        symlink("/etc/hostname", upper.join("new/dir/link")).unwrap();
        nix::sys::stat::mknod(
            &upper.join("etc/motd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let opaque = CString::new(upper.join("srv/data").as_os_str().as_bytes()).unwrap();
        let name = CString::new(OPAQUE_TRUSTED).unwrap();
        // SAFETY: NUL-terminated strings and a one-byte value.
        let rc =
            unsafe { libc::lsetxattr(opaque.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0);

        let changes = overlay_changes(&upper, std::slice::from_ref(&lower)).unwrap();
        assert_eq!(
            lines(&changes),
            [
                "C /etc",
                "C /etc/hostname",
                "D /etc/motd",
                "A /new",
                "A /new/dir",
                "A /new/dir/link",
                "C /srv",
                "C /srv/data",
                "C /srv/data/kept",
                "D /srv/data/old",
            ]
        );
        let raw: Vec<String> = read_upper(&upper).unwrap().iter().map(|e| e.to_string()).collect();
        assert!(raw.contains(&"whiteout /etc/motd  (character device 0/0: deleted)".into()));
        assert!(raw.iter().any(|line| line.starts_with("opaque   /srv/data")), "{raw:?}");
    }

    #[test]
    fn a_copy_compares_with_its_base() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, copy) = (tmp.path().join("base"), tmp.path().join("copy"));
        for root in [&base, &copy] {
            fs::create_dir_all(root.join("etc/sub")).unwrap();
            fs::write(root.join("etc/same"), "x").unwrap();
            fs::write(root.join("etc/sub/gone"), "x").unwrap();
        }
        // Same content, same times: unchanged.
        let time = fs::metadata(base.join("etc/same")).unwrap().modified().unwrap();
        fs::File::options()
            .write(true)
            .open(copy.join("etc/same"))
            .unwrap()
            .set_modified(time)
            .unwrap();
        fs::remove_file(copy.join("etc/sub/gone")).unwrap();
        fs::write(copy.join("added"), "x").unwrap();
        let changes = tree_changes(&base, &copy).unwrap();
        assert_eq!(lines(&changes), ["A /added", "C /etc", "C /etc/sub", "D /etc/sub/gone"]);
    }
}
