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
//!
//! The walks go by directory descriptors, as [`crate::copy`]'s do, so that a container may
//! nest directories deeper than a path can name: the upper (or the copy) is walked with a
//! [`Walk`], and the lower layers (or the base) follow it down and up, each held open at the
//! same directory, so that looking a name up in them is one `fstatat` (`man 2 fstatat`)
//! relative to that directory, never a long path. Only the reported paths are long.
//!
//! Why one file of over 600 lines: the three readings (an upper, an overlay's changes, a copy
//! against its base) share one walk and one notion of a change, and the book shows them side by
//! side (about 500 lines); the rest are the tests.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::Metadata;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{readlinkat, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::copy::{is_dir, DirStack, Event, Walk, OPEN_DIRS};
use crate::error::{Error, Result, SysResultExt};
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
    let mut walk = Walk::open_following(upper, OPEN_DIRS)?;
    while let Some(event) = walk.next()? {
        let Event::Entry(name, metadata) = event else { continue };
        let path = container_path(walk.stack(), &name);
        // A directory is entered (its entries come next), and asked for its mark there.
        let opaque = is_dir(&metadata) && {
            walk.enter(&name)?;
            opaque_dir(walk.stack())?
        };
        entries.push(UpperEntry { path, kind: upper_kind(&metadata, opaque) });
    }
    Ok(entries)
}

/// What an entry (with `metadata`, and marked `opaque` if it is a directory) is to overlayfs.
fn upper_kind(metadata: &FileStat, opaque: bool) -> UpperKind {
    match SFlag::from_bits_truncate(metadata.st_mode & SFlag::S_IFMT.bits()) {
        _ if whiteout(metadata) => UpperKind::Whiteout,
        SFlag::S_IFDIR if opaque => UpperKind::OpaqueDir,
        SFlag::S_IFDIR => UpperKind::Dir,
        SFlag::S_IFREG => UpperKind::File,
        SFlag::S_IFLNK => UpperKind::Symlink,
        _ => UpperKind::Special,
    }
}

/// A whiteout: a character device whose device number is 0/0 (`man 2 mknod`).
pub fn is_whiteout(metadata: &Metadata) -> bool {
    metadata.file_type().is_char_device() && metadata.rdev() == 0
}

/// [`is_whiteout`], from `fstatat`'s answer.
fn whiteout(metadata: &FileStat) -> bool {
    metadata.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFCHR.bits() && metadata.st_rdev == 0
}

/// An opaque directory: `overlay.opaque` is `y` in the trusted or the user xattrs.
pub fn is_opaque(dir: &Path) -> Result<bool> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match Dir::open(dir, flags, Mode::empty()) {
        Ok(opened) => opaque_fd(opened.as_raw_fd(), &|| dir.to_path_buf()),
        // Not a directory (a symlink is not followed): not an opaque one either.
        Err(Errno::ENOTDIR | Errno::ELOOP | Errno::ENOENT) => Ok(false),
        Err(errno) => Err(Error::sys("open", dir.display(), errno)),
    }
}

/// [`is_opaque`], for the directory a walk is in.
fn opaque_dir(stack: &DirStack) -> Result<bool> {
    opaque_fd(stack.fd(), &|| stack.path())
}

/// [`is_opaque`], for the directory open as `fd` (`shown` gives its path, for messages).
fn opaque_fd(fd: RawFd, shown: &dyn Fn() -> PathBuf) -> Result<bool> {
    for name in [OPAQUE_TRUSTED, OPAQUE_USER] {
        if xattr(fd, name, shown)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}
// ANCHOR_END: read_upper

/// Reads one xattr of the file open as `fd` (`man 2 fgetxattr`; `shown` gives its path, for
/// messages); `None` if it has none of that name (or may not read it: `trusted.*` is for
/// the host's root only).
fn xattr(fd: RawFd, name: &str, shown: &dyn Fn() -> PathBuf) -> Result<Option<Vec<u8>>> {
    let c_name = CString::new(name).expect("xattr names have no NUL");
    let mut value = vec![0u8; 64];
    // SAFETY: `fd` is open, the name is NUL-terminated, and `value` is writable for its
    // length.
    let size =
        unsafe { libc::fgetxattr(fd, c_name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    if size < 0 {
        return match Errno::last() {
            Errno::ENODATA | Errno::ENOTSUP | Errno::EPERM | Errno::EACCES | Errno::ERANGE => {
                Ok(None)
            }
            errno => {
                Err(Error::sys("fgetxattr", format!("{name} of {}", shown().display()), errno))
            }
        };
    }
    value.truncate(size as usize);
    Ok(Some(value))
}

// ANCHOR: overlay_changes
/// The changes an upper directory holds, compared with the lowers it was mounted over
/// (topmost first), in path order.
pub fn overlay_changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let window = OPEN_DIRS / (lowers.len() + 1);
    let mut below = Layers::open(lowers, Marks::Overlay, window)?;
    let mut walk = Walk::open_following(upper, window)?;
    let mut changes = Vec::new();
    while let Some(event) = walk.next()? {
        let (name, metadata) = match event {
            Event::Entry(name, metadata) => (name, metadata),
            // The lowers follow the walk back up.
            Event::Left(_) => {
                below.leave()?;
                continue;
            }
        };
        let path = container_path(walk.stack(), &name);
        let before = below.lookup(&name)?;
        let opaque = is_dir(&metadata) && {
            walk.enter(&name)?;
            opaque_dir(walk.stack())?
        };
        let kind = upper_kind(&metadata, opaque);
        // LAB stage4/diff-whiteouts BEGIN: an upper entry is A, C or D: whiteouts are deletions
        match (kind, &before) {
            // A whiteout over nothing hides nothing.
            (UpperKind::Whiteout, None) => {}
            (UpperKind::Whiteout, Some(_)) => changes.push(change(Kind::Deleted, &path)),
            (_, None) => changes.push(change(Kind::Added, &path)),
            (_, Some(_)) => changes.push(change(Kind::Changed, &path)),
        }
        // LAB END
        if !is_dir(&metadata) {
            continue;
        }
        // The walk went into the directory: the lowers follow it down.
        below.enter(&name)?;
        // An opaque directory that replaced one of the base's: what the base had below it
        // and the upper does not is deleted (a whiteout says so for other directories).
        if kind == UpperKind::OpaqueDir && before.is_some_and(|found| is_dir(&found.metadata)) {
            let now: HashSet<&OsString> = walk.names_ahead().iter().collect();
            for name in below.names()? {
                if !now.contains(&name) {
                    changes.push(change(Kind::Deleted, &path.join(name)));
                }
            }
        }
    }
    sort(&mut changes);
    Ok(changes)
}
// ANCHOR_END: overlay_changes

/// Whether overlayfs's marks mean something in [`Layers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marks {
    /// The lowers of an overlay: a whiteout hides a name, an opaque directory hides the
    /// layers below it.
    Overlay,
    /// The base of a copy: files are only files.
    None,
}

/// The lower layers of an overlay (or the base of a copy), following a walk of the upper
/// (or of the copy) down and up, as overlayfs looks a path up: at each directory of the
/// walk, the layers that have that directory and show it are open there, topmost first.
///
/// Going down into a name, the layers are asked from the top: one that has a directory
/// there goes down with the walk (and if it is opaque, the layers below it stop there); one
/// that has anything else (a file, a whiteout) stops the layers below it; one that has
/// nothing lets the next one answer. A layer that stopped stays where it is, and shows again
/// when the walk comes back up to it.
struct Layers {
    /// Topmost first; `None` for a layer whose top is not there.
    stacks: Vec<Option<DirStack>>,
    marks: Marks,
    /// How deep the walk is: the layers whose stack is this deep show its directory.
    depth: usize,
}

/// A name that the layers show: its metadata, and the layer that has it.
struct Found {
    metadata: FileStat,
    layer: usize,
}

impl Layers {
    fn open(tops: &[PathBuf], marks: Marks, window: usize) -> Result<Layers> {
        let mut stacks = Vec::new();
        for top in tops {
            stacks.push(match DirStack::open_following(top, window) {
                Ok(stack) => Some(stack),
                Err(error) if error.errno() == Some(Errno::ENOENT) => None,
                Err(error) => return Err(error),
            });
        }
        Ok(Layers { stacks, marks, depth: 0 })
    }

    /// The layers that show the walk's directory, topmost first, with their index.
    fn showing(&self) -> impl Iterator<Item = (usize, &DirStack)> {
        let depth = self.depth;
        let stacks = self.stacks.iter().enumerate();
        stacks.filter_map(move |(index, stack)| {
            stack.as_ref().filter(|stack| stack.depth() == depth).map(|stack| (index, stack))
        })
    }

    /// What the layers show at `name` in the walk's directory: the topmost layer that has
    /// the name answers; a whiteout there means deleted.
    fn lookup(&self, name: &OsStr) -> Result<Option<Found>> {
        for (layer, stack) in self.showing() {
            if let Some(metadata) = stack.stat(name)? {
                if self.marks == Marks::Overlay && whiteout(&metadata) {
                    return Ok(None);
                }
                return Ok(Some(Found { metadata, layer }));
            }
        }
        Ok(None)
    }

    /// Follows the walk into its directory `name`.
    fn enter(&mut self, name: &OsStr) -> Result<()> {
        let depth = self.depth;
        self.depth += 1;
        for stack in self.stacks.iter_mut().flatten() {
            if stack.depth() != depth {
                continue;
            }
            let Some(metadata) = stack.stat(name)? else { continue };
            if !is_dir(&metadata) {
                break;
            }
            stack.enter(name)?;
            if self.marks == Marks::Overlay && opaque_dir(stack)? {
                break;
            }
        }
        Ok(())
    }

    /// Follows the walk back up.
    fn leave(&mut self) -> Result<()> {
        for stack in self.stacks.iter_mut().flatten() {
            if stack.depth() == self.depth {
                stack.leave()?;
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// The names the layers show in the walk's directory, sorted.
    fn names(&mut self) -> Result<Vec<OsString>> {
        let mut candidates = BTreeSet::new();
        for stack in self.stacks.iter_mut().flatten() {
            if stack.depth() == self.depth {
                candidates.extend(stack.names()?);
            }
        }
        let mut visible = Vec::new();
        for name in candidates {
            if self.lookup(&name)?.is_some() {
                visible.push(name);
            }
        }
        Ok(visible)
    }

    /// The stack of layer `layer`.
    fn stack(&self, layer: usize) -> &DirStack {
        self.stacks[layer].as_ref().expect("a layer that answered is there")
    }
}

// ANCHOR: tree_changes
/// The changes between a base and a full copy of it (the copy driver): every path of the
/// copy is compared with the base's by type, mode, owner, size, modification time and link
/// target; what the base has and the copy lacks is deleted. The directories above a change
/// are changed too, as `docker diff` lists them.
pub fn tree_changes(base: &Path, copy: &Path) -> Result<Vec<Change>> {
    let window = OPEN_DIRS / 2;
    let mut before = Layers::open(&[base.to_path_buf()], Marks::None, window)?;
    let mut walk = Walk::open_following(copy, window)?;
    let mut changes = Vec::new();
    // Per level of the walk, whether its directory is listed (the top, `/`, never is).
    let mut listed = vec![true];
    while let Some(event) = walk.next()? {
        let (name, after) = match event {
            Event::Entry(name, metadata) => (name, metadata),
            Event::Left(_) => {
                before.leave()?;
                listed.pop();
                continue;
            }
        };
        let path = container_path(walk.stack(), &name);
        let found = before.lookup(&name)?;
        let kind = match &found {
            None => Some(Kind::Added),
            Some(found) => {
                let base_dir = before.stack(found.layer);
                differs(&found.metadata, &after, base_dir, walk.stack(), &name)?
                    .then_some(Kind::Changed)
            }
        };
        if let Some(kind) = kind {
            list_directories(&mut changes, &mut listed, walk.stack());
            changes.push(change(kind, &path));
        }
        if !is_dir(&after) {
            continue;
        }
        walk.enter(&name)?;
        before.enter(&name)?;
        listed.push(kind.is_some());
        if found.is_some_and(|found| is_dir(&found.metadata)) {
            let now: HashSet<&OsString> = walk.names_ahead().iter().collect();
            let gone: Vec<OsString> =
                before.names()?.into_iter().filter(|name| !now.contains(name)).collect();
            if !gone.is_empty() {
                list_directories(&mut changes, &mut listed, walk.stack());
            }
            for name in gone {
                changes.push(change(Kind::Deleted, &path.join(name)));
            }
        }
    }
    sort(&mut changes);
    Ok(changes)
}
// ANCHOR_END: tree_changes

/// Lists the walk's directory and those above it as changed, up to the first one listed
/// already (its own ancestors are then listed too): each directory once, whatever the depth.
fn list_directories(changes: &mut Vec<Change>, listed: &mut [bool], stack: &DirStack) {
    let mut path = Path::new("/").join(stack.relative());
    for listed in listed.iter_mut().rev() {
        if *listed {
            break;
        }
        *listed = true;
        changes.push(change(Kind::Changed, &path));
        path.pop();
    }
}

/// Whether an entry `name` of the copy differs from the base's; `base` and `copy` are the
/// directories it is in.
fn differs(
    before: &FileStat,
    after: &FileStat,
    base: &DirStack,
    copy: &DirStack,
    name: &OsStr,
) -> Result<bool> {
    if before.st_mode != after.st_mode
        || before.st_uid != after.st_uid
        || before.st_gid != after.st_gid
        || before.st_rdev != after.st_rdev
    {
        return Ok(true);
    }
    if is_dir(before) {
        // A directory's size is the filesystem's business, and its time changes with its
        // entries, which are compared one by one.
        return Ok(false);
    }
    if before.st_size != after.st_size
        || (before.st_mtime, before.st_mtime_nsec) != (after.st_mtime, after.st_mtime_nsec)
    {
        return Ok(true);
    }
    if before.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits() {
        let target = |dir: &DirStack| {
            readlinkat(Some(dir.fd()), name).sys("readlinkat", dir.path_of(name).display())
        };
        return Ok(target(base)? != target(copy)?);
    }
    Ok(false)
}

fn change(kind: Kind, path: &Path) -> Change {
    Change { kind, path: path.to_path_buf() }
}

/// The path inside the container of `name` in the walk's directory (`/etc/hostname`).
fn container_path(stack: &DirStack, name: &OsStr) -> PathBuf {
    let mut path = Path::new("/").join(stack.relative());
    path.push(name);
    path
}

/// Sorts changes by path, bytewise, as `docker diff` lists them.
fn sort(changes: &mut [Change]) {
    changes.sort_by(|a, b| a.path.as_os_str().as_bytes().cmp(b.path.as_os_str().as_bytes()));
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use nix::unistd::{unlinkat, UnlinkatFlags};

    use super::*;
    use crate::copy::tests::deep_tree;
    use crate::copy::{copy_tree, remove_tree};

    fn lines(changes: &[Change]) -> Vec<String> {
        changes.iter().map(Change::to_string).collect()
    }

    /// A hand-made upper (no overlay mount needed, except for the whiteout's mknod).
    #[test]
    fn an_upper_reads_as_adds_changes_and_deletes() {
        if !nix::unistd::geteuid().is_root() {
            let why = "the whiteout's mknod of a character device needs root";
            return crate::skip("an_upper_reads_as_adds_changes_and_deletes", why);
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

    /// A walk of `top` gone down `depth` directories `d`.
    fn down(top: &Path, depth: usize) -> DirStack {
        let mut stack = DirStack::open(top, OPEN_DIRS).unwrap();
        for _ in 0..depth {
            stack.enter(OsStr::new("d")).unwrap();
        }
        stack
    }

    /// Makes an empty file `name` in the directory a walk is in.
    fn touch(stack: &DirStack, name: &str) {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(Some(stack.fd()), name, flags, Mode::from_bits_truncate(0o644));
        nix::unistd::close(fd.unwrap()).unwrap();
    }

    /// `/d/d/…/d` (`depth` of them), then `rest`.
    fn deep_path(depth: usize, rest: &str) -> String {
        format!("{}{rest}", "/d".repeat(depth))
    }

    /// Regression: a container that nests directories deeper than PATH_MAX made `diff` fail
    /// with ENAMETOOLONG. The upper goes 3,000 deep, the lower 1,500 (with a file the upper's
    /// opaque directory at depth 1,000 hides).
    #[test]
    fn a_deep_upper_reads_as_changes_against_its_lowers() {
        let tmp = tempfile::tempdir().unwrap();
        let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
        deep_tree(&lower, 1_500, b"old");
        touch(&down(&lower, 1_000), "gone");
        deep_tree(&upper, 3_000, b"new");
        let opaque = down(&upper, 1_000);
        let name = CString::new(OPAQUE_USER).unwrap();
        // SAFETY: an open descriptor, a NUL-terminated name and a one-byte value.
        let rc = unsafe { libc::fsetxattr(opaque.fd(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0, "{}", Errno::last());
        drop(opaque);

        let raw = read_upper(&upper).unwrap();
        assert_eq!(raw.len(), 3_001);
        assert_eq!(raw[999].kind, UpperKind::OpaqueDir);
        assert_eq!(raw[3_000].to_string(), format!("file     {}", deep_path(3_000, "/f")));

        let changes = overlay_changes(&upper, std::slice::from_ref(&lower)).unwrap();
        let lines = lines(&changes);
        let count = |prefix: &str| lines.iter().filter(|line| line.starts_with(prefix)).count();
        assert_eq!((count("C "), count("A "), count("D ")), (1_500, 1_501, 1), "{:?}", &lines[..3]);
        assert!(lines.contains(&format!("C {}", deep_path(1_500, ""))));
        assert!(lines.contains(&format!("A {}", deep_path(1_501, ""))));
        assert!(lines.contains(&format!("D {}", deep_path(1_000, "/gone"))));
        let last = lines.iter().find(|line| line.ends_with("/d/f")).unwrap();
        assert_eq!(last, &format!("A {}", deep_path(3_000, "/f")));
        assert!(last.len() > 4_096);
        for tree in [&lower, &upper] {
            remove_tree(tree).unwrap();
        }
    }

    /// The copy driver's `diff`, 3,000 deep: a file deleted at the bottom, one added at depth
    /// 10, and every directory above a change listed once.
    #[test]
    fn a_deep_copy_compares_with_its_base() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, copy) = (tmp.path().join("base"), tmp.path().join("copy"));
        deep_tree(&base, 3_000, b"x");
        copy_tree(&base, &copy).unwrap();
        assert_eq!(tree_changes(&base, &copy).unwrap(), []);
        let bottom = down(&copy, 3_000);
        unlinkat(Some(bottom.fd()), "f", UnlinkatFlags::NoRemoveDir).unwrap();
        drop(bottom);
        touch(&down(&copy, 10), "new");

        let lines = lines(&tree_changes(&base, &copy).unwrap());
        assert_eq!(lines.len(), 3_002);
        assert_eq!(lines.iter().filter(|line| line.starts_with("C ")).count(), 3_000);
        assert!(lines.contains(&format!("A {}", deep_path(10, "/new"))));
        assert!(lines.contains(&format!("D {}", deep_path(3_000, "/f"))));
        for tree in [&base, &copy] {
            remove_tree(tree).unwrap();
        }
    }
}
