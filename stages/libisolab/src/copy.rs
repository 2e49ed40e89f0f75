//! The naive storage driver: every container gets a full copy of its base.
//!
//! This is what a runtime without union mounts must do (docker's `vfs` driver still does):
//! copy every file, as `cp -a` would, before the container can start, and keep the copy for
//! as long as the container exists. It is kept here so that the chapter can measure what
//! overlayfs saves: the time to create a container, and the disk it takes.
//!
//! The module also measures trees as `du` does ([`disk_usage`]: allocated blocks, a file
//! with several hard links counted once) and removes them ([`remove_tree`]).
//!
//! Every walk goes by directory file descriptors, never by long paths: a container may nest
//! directories deeper than a path can name (`mkdir d; cd d` 2,100 times makes a path longer
//! than PATH_MAX, 4,096 bytes), and a walk by paths fails with ENAMETOOLONG on exactly the
//! container its user most wants to remove. So each call names one entry relative to an open
//! directory (`man 2 openat`: `openat`, `fstatat`, `unlinkat`, `mkdirat`, …), and the walk
//! keeps its place with a [`DirStack`] and a list of names per level instead of recursion, so
//! that neither the kernel's path limit nor the thread's stack bounds the depth.
//!
//! Why one file of over 900 lines: the walker ([`DirStack`], [`Walk`]) and the three things done
//! with it (copy, remove, measure) are one idea, walking by descriptors, and the book shows them
//! together (about 700 lines); the rest are the tests, ten thousand levels deep included.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmodat, fstat, fstatat, mkdirat, mknodat, utimensat, FchmodatFlags, FileStat, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{
    faccessat, fchownat, linkat, symlinkat, unlinkat, AccessFlags, Gid, Uid, UnlinkatFlags,
};

use crate::error::{Error, Result, SysResultExt};

/// What [`copy_tree`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Files, directories, links and nodes made.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// The directory descriptors one walk keeps open at most, over all its [`DirStack`]s. Far
/// below the default soft limit of 1,024 (`ulimit -n`), and deeper than any ordinary tree (a
/// rootfs is about ten levels deep), so that only very deep trees ever re-open a directory.
pub(crate) const OPEN_DIRS: usize = 64;

// ANCHOR: copy_tree
/// Copies the tree at `from` to `to` (which must not exist) as `cp -a` does: file content,
/// directories, symlinks, device nodes and fifos; modes, owners and modification times;
/// hard links stay hard links. Extended attributes and ACLs are not copied.
pub fn copy_tree(from: &Path, to: &Path) -> Result<Copied> {
    let mut copied = Copied::default();
    let mut links = HashMap::new();
    let top = lstat(from)?.ok_or_else(|| Error::sys("lstat", from.display(), Errno::ENOENT))?;
    if !is_dir(&top) {
        // One file: copy it between the directories it is and will be in.
        let (source, target) = (DirStack::parent_of(from)?, DirStack::parent_of(to)?);
        let (from_name, to_name) = (file_name(from)?, file_name(to)?);
        let (source, target) = (Entry::new(&source, from_name), Entry::new(&target, to_name));
        return copy_entry(source, target, &top, &mut links, &mut copied).map(|()| copied);
    }
    mkdirat(None, to, Mode::from_bits_truncate(0o700)).sys("mkdir", to.display())?;
    let mut walk = Walk::open(from, OPEN_DIRS / 2)?;
    let mut made = DirStack::open(to, OPEN_DIRS / 2)?;
    // The directories being copied, from the top down: their owner, mode and times are set
    // once their entries are made (making an entry would move the directory's time again).
    let mut dirs = Vec::new();
    while let Some(event) = walk.next()? {
        match event {
            Event::Entry(name, metadata) if is_dir(&metadata) => {
                mkdirat(Some(made.fd()), name.as_os_str(), Mode::from_bits_truncate(0o700))
                    .sys("mkdirat", made.path_of(&name).display())?;
                walk.enter(&name)?;
                made.enter(&name)?;
                dirs.push(metadata);
            }
            Event::Entry(name, metadata) => {
                let (source, target) = (Entry::new(walk.stack(), &name), Entry::new(&made, &name));
                copy_entry(source, target, &metadata, &mut links, &mut copied)?;
            }
            Event::Left(name) => {
                made.leave()?;
                let metadata = dirs.pop().expect("one directory per level");
                set_attributes(Entry::new(&made, &name), &metadata)?;
                copied.entries += 1;
            }
        }
    }
    set_attributes(Entry::new(&DirStack::parent_of(to)?, file_name(to)?), &top)?;
    copied.entries += 1;
    Ok(copied)
}

/// Copies one entry that is not a directory from `source` to `target`; a second name of a
/// file already copied (`links`: inode to the first copy's path below the top) becomes a
/// hard link to that copy.
fn copy_entry(
    source: Entry,
    target: Entry,
    metadata: &FileStat,
    links: &mut HashMap<(u64, u64), PathBuf>,
    copied: &mut Copied,
) -> Result<()> {
    let kind = SFlag::from_bits_truncate(metadata.st_mode & SFlag::S_IFMT.bits());
    // A second name of a file already copied: link it, do not copy it again.
    if metadata.st_nlink > 1 {
        let inode = (metadata.st_dev, metadata.st_ino);
        if let Some(first) = links.get(&inode) {
            return link_to_first(first, target).map(|()| copied.entries += 1);
        }
        links.insert(inode, target.dir.relative().join(target.name));
    }
    match kind {
        SFlag::S_IFREG => {
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let mut from = source.open(flags, Mode::empty())?;
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
            let mut to = target.open(flags | OFlag::O_CLOEXEC, Mode::from_bits_truncate(0o600))?;
            // std's copy between two files asks the kernel to do it (`man 2 copy_file_range`).
            copied.bytes += io::copy(&mut from, &mut to)
                .map_err(|error| Error::io("copy", source.path(), &error))?;
        }
        SFlag::S_IFLNK => {
            let link = readlinkat(Some(source.dir.fd()), source.name)
                .sys("readlinkat", source.path().display())?;
            symlinkat(link.as_os_str(), Some(target.dir.fd()), target.name)
                .sys("symlinkat", target.path().display())?;
        }
        _ => {
            // A device node, fifo or socket: made again with the same kind and number.
            mknodat(
                Some(target.dir.fd()),
                target.name,
                kind,
                Mode::from_bits_truncate(0o600),
                metadata.st_rdev,
            )
            .sys("mknodat", target.path().display())?;
        }
    }
    copied.entries += 1;
    set_attributes(target, metadata)
}

/// Owner first (chown clears the setuid bit), then the mode, then the times, of `target`
/// (a symlink's own, for its owner and times; a symlink has no mode of its own).
fn set_attributes(target: Entry, metadata: &FileStat) -> Result<()> {
    let (dir, name) = (Some(target.dir.fd()), target.name);
    let (uid, gid) = (Uid::from_raw(metadata.st_uid), Gid::from_raw(metadata.st_gid));
    match fchownat(dir, name, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(()) => {}
        // Only root may give files away: a user's copy is the user's (and root of its user
        // namespace owns it, which is what a rootless container wants).
        Err(Errno::EPERM) if !is_root() => {}
        Err(errno) => return Err(Error::sys("fchownat", target.path().display(), errno)),
    }
    if metadata.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFLNK.bits() {
        let mode = Mode::from_bits_truncate(metadata.st_mode & 0o7777);
        fchmodat(dir, name, mode, FchmodatFlags::FollowSymlink)
            .sys("fchmodat", target.path().display())?;
    }
    let atime = TimeSpec::new(metadata.st_atime, metadata.st_atime_nsec);
    let mtime = TimeSpec::new(metadata.st_mtime, metadata.st_mtime_nsec);
    utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .sys("utimensat", target.path().display())
}
// ANCHOR_END: copy_tree

/// Makes `target` a hard link to the copy at `first` (a path below the copy's top): by
/// descriptor of its directory, which is most often the directory `target` is made in.
fn link_to_first(first: &Path, target: Entry) -> Result<()> {
    let first_dir = first.parent().unwrap_or(Path::new(""));
    let first_name = first.file_name().map(Path::new).unwrap_or(first);
    let opened;
    let dir = if first_dir == target.dir.relative() {
        target.dir.fd()
    } else {
        opened = target.dir.open_below(first_dir)?;
        opened.as_raw_fd()
    };
    linkat(Some(dir), first_name, Some(target.dir.fd()), target.name, AtFlags::empty())
        .sys("linkat", target.path().display())
}

// ANCHOR: disk_usage
/// The disk space a tree takes, as `du` counts it: the blocks allocated to each entry
/// (`st_blocks`, in 512-byte units), a file with several names counted once. Entries that
/// vanish while it looks are skipped, and so is the content of a directory it may not read.
pub fn disk_usage(path: &Path) -> Result<u64> {
    let Some(top) = lstat(path)? else { return Ok(0) };
    let mut seen = HashSet::from([(top.st_dev, top.st_ino)]);
    let mut total = top.st_blocks as u64 * 512;
    if !is_dir(&top) {
        return Ok(total);
    }
    let root = is_root();
    let mut walk = match Walk::open(path, OPEN_DIRS) {
        Ok(walk) => walk,
        Err(error) if unreadable(&error) => return Ok(total),
        Err(error) => return Err(error),
    };
    while let Some(event) = walk.next()? {
        let Event::Entry(name, metadata) = event else { continue };
        if !seen.insert((metadata.st_dev, metadata.st_ino)) {
            continue;
        }
        total += metadata.st_blocks as u64 * 512;
        if is_dir(&metadata) && (root || may_read(walk.stack(), &name)) {
            match walk.enter(&name) {
                Ok(_) => {}
                // Gone meanwhile, or closed to us (overlayfs leaves its `work/work` at mode
                // 000, and keeps it empty): count the directory alone.
                Err(error) if unreadable(&error) => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(total)
}
// ANCHOR_END: disk_usage

/// Whether the walk may list directory `name` and come back out of it (through its `..`):
/// read and search permission (`man 2 faccessat`), which root always has.
fn may_read(stack: &DirStack, name: &OsStr) -> bool {
    let wanted = AccessFlags::R_OK | AccessFlags::X_OK;
    let flags = AtFlags::AT_EACCESS | AtFlags::AT_SYMLINK_NOFOLLOW;
    faccessat(Some(stack.fd()), name, wanted, flags).is_ok()
}

/// An error that [`disk_usage`] counts as "nothing more to see here".
fn unreadable(error: &Error) -> bool {
    matches!(error.errno(), Some(Errno::ENOENT | Errno::EACCES))
}

/// Removes the tree at `path`, if it is there, as `rm -rf` does: at any depth, and without
/// following a symlink (a symlink is removed, not what it points to). Directories its owner
/// may not enter (overlayfs leaves its `work/work` at mode 000) are opened up first.
///
/// It never removes through a mount point: below the top, a directory on another filesystem
/// (another `st_dev`), or the root of a bind mount, stops it with an error naming that
/// directory, because removing its content would remove another filesystem's files. (The
/// store unmounts what is mounted in a container's directory before removing it; this is
/// the guard in case something was mounted there meanwhile.)
pub fn remove_tree(path: &Path) -> Result<()> {
    let Some(top) = lstat(path)? else { return Ok(()) };
    if !is_dir(&top) {
        return ignore_gone(unlinkat(None, path, UnlinkatFlags::NoRemoveDir))
            .sys("unlink", path.display());
    }
    open_up(None, path.as_os_str(), &top);
    let mut walk = Walk::open(path, OPEN_DIRS)?;
    let top_dev = walk.stack().top_dev();
    while let Some(event) = walk.next()? {
        let stack = walk.stack();
        match event {
            Event::Entry(name, metadata) if is_dir(&metadata) => {
                // Checked before the chmod, which would change the mounted directory, and
                // again on the directory opened, which is the one whose entries we remove.
                refuse_other_mount(top_dev, metadata.st_dev, false, &stack.path_of(&name))?;
                open_up(Some(stack.fd()), &name, &metadata);
                let opened = walk.enter(&name)?;
                let mount_root = is_mount_root(walk.stack().fd());
                refuse_other_mount(top_dev, opened.st_dev, mount_root, &walk.stack().path())?;
            }
            Event::Entry(name, _) => {
                ignore_gone(unlinkat(
                    Some(stack.fd()),
                    name.as_os_str(),
                    UnlinkatFlags::NoRemoveDir,
                ))
                .sys("unlinkat", stack.path_of(&name).display())?;
            }
            // Empty now (`man 2 unlinkat`: AT_REMOVEDIR removes only an empty directory).
            Event::Left(name) => {
                ignore_gone(unlinkat(Some(stack.fd()), name.as_os_str(), UnlinkatFlags::RemoveDir))
                    .sys("unlinkat", stack.path_of(&name).display())?;
            }
        }
    }
    drop(walk);
    ignore_gone(unlinkat(None, path, UnlinkatFlags::RemoveDir)).sys("rmdir", path.display())
}

/// Refuses a directory that belongs to another mount than the top of the tree being removed:
/// another filesystem (`dev` differs from `top_dev`), or the root of a mount (`mount_root`:
/// a bind mount of the same filesystem has the same device).
fn refuse_other_mount(top_dev: u64, dev: u64, mount_root: bool, path: &Path) -> Result<()> {
    if dev == top_dev && !mount_root {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{} is a mount point: removing through it would remove another filesystem's files \
         (unmount it first)",
        path.display()
    )))
}

/// Whether the directory open as `fd` is the root of a mount: `STATX_ATTR_MOUNT_ROOT`
/// (`man 2 statx`, Linux 5.8). A kernel that does not know the attribute says so in
/// `stx_attributes_mask`; then only a change of device shows a mount.
fn is_mount_root(fd: RawFd) -> bool {
    // SAFETY: `statx` is plain integers, for which all zeroes is a valid value.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: `fd` is open, the path is an empty NUL-terminated string (with AT_EMPTY_PATH,
    // the call is about `fd` itself), and `buf` is a writable `statx`.
    let rc = unsafe { libc::statx(fd, c"".as_ptr(), flags, 0, &mut buf) };
    let attribute = libc::STATX_ATTR_MOUNT_ROOT as u64;
    rc == 0 && buf.stx_attributes_mask & attribute != 0 && buf.stx_attributes & attribute != 0
}

/// Gives the owner full access to directory `name` in `dir` if it lacks some: the walk must
/// list it, search it and remove its entries. A failure is left for the removal to report.
fn open_up(dir: Option<RawFd>, name: &OsStr, metadata: &FileStat) {
    let mode = metadata.st_mode & 0o7777;
    if mode & 0o700 != 0o700 {
        let wanted = Mode::from_bits_truncate(mode | 0o700);
        let _ = fchmodat(dir, name, wanted, FchmodatFlags::NoFollowSymlink);
    }
}

/// Something already gone is as good as removed.
fn ignore_gone(result: nix::Result<()>) -> nix::Result<()> {
    match result {
        Err(Errno::ENOENT) => Ok(()),
        other => other,
    }
}

/// Changes the owner of `path` (not following a symlink at the end).
pub fn change_owner(path: &Path, uid: u32, gid: u32) -> Result<()> {
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    fchownat(None, path, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
        .sys("lchown", path.display())
}

fn is_root() -> bool {
    Uid::effective().is_root()
}

/// `lstat(2)` of a path that is short (the top of a walk); `None` if nothing is there.
pub(crate) fn lstat(path: &Path) -> Result<Option<FileStat>> {
    match fstatat(None, path, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(metadata) => Ok(Some(metadata)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(errno) => Err(Error::sys("lstat", path.display(), errno)),
    }
}

/// Whether `metadata` is a directory's.
pub(crate) fn is_dir(metadata: &FileStat) -> bool {
    metadata.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()
}

fn file_name(path: &Path) -> Result<&OsStr> {
    path.file_name()
        .ok_or_else(|| Error::Invalid(format!("{} does not end in a name", path.display())))
}

/// One entry: a name in a directory of a [`DirStack`].
#[derive(Clone, Copy)]
struct Entry<'a> {
    dir: &'a DirStack,
    name: &'a Path,
}

impl<'a> Entry<'a> {
    fn new(dir: &'a DirStack, name: &'a OsStr) -> Self {
        Entry { dir, name: Path::new(name) }
    }

    /// Its path, for messages.
    fn path(&self) -> PathBuf {
        self.dir.path_of(self.name.as_os_str())
    }

    /// Opens it as a file (`man 2 openat`).
    fn open(&self, flags: OFlag, mode: Mode) -> Result<File> {
        let fd = openat(Some(self.dir.fd()), self.name, flags, mode)
            .sys("openat", self.path().display())?;
        // SAFETY: `openat` just returned this descriptor, and nothing else owns it.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// The directories from the top of a walk down to the one it is in, held by descriptor, so
/// that every call names one entry relative to an open directory whatever the depth.
///
/// A descriptor per level would not do: at depth 10,000 that is 10,000 descriptors, and the
/// default soft limit is 1,024 (`man 2 getrlimit`, RLIMIT_NOFILE). So the stack keeps only
/// the `window` deepest levels open, and remembers the device and inode of every level.
/// Going back up to a level that was closed re-opens it as `..` of the directory being left
/// (`openat(child, "..")`), and checks that it has the device and inode the walk went down
/// through. A bare `..` would not be safe: had someone renamed a directory of the path
/// meanwhile, `..` would lead to its new parent, outside the tree, and the walk would carry
/// on (removing!) there; with the check, it stops with an error instead. (GNU `rm`, through
/// gnulib's fts, climbs deep trees the same way.) A level is re-opened at most once per
/// visit, so the walk stays linear in the size of the tree, and the number of descriptors
/// stays at `window` whatever the depth.
pub(crate) struct DirStack {
    /// The top, as given: for messages, and to re-open it.
    top: PathBuf,
    /// The path from the top to the current directory (`d/d/d`): for messages and reports.
    relative: PathBuf,
    /// One per directory from the top (index 0) down to the current one.
    levels: Vec<Level>,
    /// The levels from this index down are open, the ones above are closed.
    first_open: usize,
    /// How many levels to keep open at most (at least one: the current directory).
    window: usize,
}

/// One directory of a [`DirStack`].
struct Level {
    /// Open while it is one of the stack's deepest.
    dir: Option<Dir>,
    /// Its identity, to check a re-opened directory against.
    dev: u64,
    ino: u64,
}

/// How the walks open a directory: for reading, never through a symlink (`O_NOFOLLOW`), and
/// not into children that `exec` (`O_CLOEXEC`).
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl DirStack {
    /// Opens the directory `top` (not a symlink to one) as the stack's top.
    pub(crate) fn open(top: &Path, window: usize) -> Result<DirStack> {
        Self::open_with(top, window, dir_flags())
    }

    /// Opens the directory `top`, following it if it is a symlink (the layers of an overlay
    /// may be given through one, as `mount` would follow it).
    pub(crate) fn open_following(top: &Path, window: usize) -> Result<DirStack> {
        Self::open_with(top, window, dir_flags() & !OFlag::O_NOFOLLOW)
    }

    /// The directory that `path` is in, as a stack of one level.
    fn parent_of(path: &Path) -> Result<DirStack> {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => Self::open_following(parent, 1),
            _ => Self::open_following(Path::new("."), 1),
        }
    }

    fn open_with(top: &Path, window: usize, flags: OFlag) -> Result<DirStack> {
        let dir = Dir::open(top, flags, Mode::empty()).sys("open", top.display())?;
        let stat = fstat(dir.as_raw_fd()).sys("fstat", top.display())?;
        Ok(DirStack {
            top: top.to_path_buf(),
            relative: PathBuf::new(),
            levels: vec![Level { dir: Some(dir), dev: stat.st_dev, ino: stat.st_ino }],
            first_open: 0,
            window: window.max(1),
        })
    }

    /// How deep it is: 0 at the top.
    pub(crate) fn depth(&self) -> usize {
        self.levels.len() - 1
    }

    /// The descriptor of the current directory (always open).
    pub(crate) fn fd(&self) -> RawFd {
        let current = self.levels.last().expect("the top is never left");
        current.dir.as_ref().expect("the current directory is open").as_raw_fd()
    }

    /// The device of the top.
    pub(crate) fn top_dev(&self) -> u64 {
        self.levels[0].dev
    }

    /// The path from the top to the current directory (empty at the top).
    pub(crate) fn relative(&self) -> &Path {
        &self.relative
    }

    /// The current directory's path, for messages (it may be longer than the kernel takes).
    pub(crate) fn path(&self) -> PathBuf {
        self.top.join(&self.relative)
    }

    /// The path of `name` in the current directory, for messages.
    pub(crate) fn path_of(&self, name: &OsStr) -> PathBuf {
        let mut path = self.path();
        path.push(name);
        path
    }

    /// How many directories it holds open.
    #[cfg(test)]
    pub(crate) fn open_count(&self) -> usize {
        self.levels.iter().filter(|level| level.dir.is_some()).count()
    }

    /// `lstat` of `name` in the current directory (`man 2 fstatat`: AT_SYMLINK_NOFOLLOW);
    /// `None` if nothing is there.
    pub(crate) fn stat(&self, name: &OsStr) -> Result<Option<FileStat>> {
        match fstatat(Some(self.fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(metadata) => Ok(Some(metadata)),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(Error::sys("fstatat", self.path_of(name).display(), errno)),
        }
    }

    /// The names in the current directory (without `.` and `..`), sorted by their bytes.
    pub(crate) fn names(&mut self) -> Result<Vec<OsString>> {
        let current = self.levels.last_mut().expect("the top is never left");
        let dir = current.dir.as_mut().expect("the current directory is open");
        let mut names = Vec::new();
        let mut failed = None;
        for entry in dir.iter() {
            match entry {
                Ok(entry) => {
                    let name = entry.file_name().to_bytes();
                    if name != b"." && name != b".." {
                        names.push(OsStr::from_bytes(name).to_os_string());
                    }
                }
                Err(errno) => {
                    failed = Some(errno);
                    break;
                }
            }
        }
        if let Some(errno) = failed {
            return Err(Error::sys("readdir", self.path().display(), errno));
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }

    /// Goes into directory `name` of the current directory (never through a symlink), and
    /// returns its metadata. Past the window, the shallowest open level is closed.
    pub(crate) fn enter(&mut self, name: &OsStr) -> Result<FileStat> {
        let dir = Dir::openat(Some(self.fd()), name, dir_flags(), Mode::empty())
            .sys("openat", self.path_of(name).display())?;
        let stat = fstat(dir.as_raw_fd()).sys("fstat", self.path_of(name).display())?;
        self.levels.push(Level { dir: Some(dir), dev: stat.st_dev, ino: stat.st_ino });
        self.relative.push(name);
        if self.levels.len() - self.first_open > self.window {
            self.levels[self.first_open].dir = None;
            self.first_open += 1;
        }
        Ok(stat)
    }

    /// Goes back up into the parent directory, and returns the name of the one it left.
    pub(crate) fn leave(&mut self) -> Result<OsString> {
        assert!(self.depth() > 0, "a walk never leaves its top");
        let child = self.levels.pop().expect("a level below the top");
        let name = self.relative.file_name().expect("a name per level").to_os_string();
        self.relative.pop();
        let parent_index = self.levels.len() - 1;
        if self.levels[parent_index].dir.is_none() {
            // Re-open the parent through the child's `..`, and check it is the directory
            // the walk came down through (see the type's documentation).
            let child_fd = child.dir.as_ref().expect("the current directory is open").as_raw_fd();
            let dir = Dir::openat(Some(child_fd), "..", dir_flags(), Mode::empty())
                .sys("openat", self.path_of(&name).join("..").display())?;
            let stat = fstat(dir.as_raw_fd()).sys("fstat", self.path().display())?;
            let parent = &mut self.levels[parent_index];
            if (stat.st_dev, stat.st_ino) != (parent.dev, parent.ino) {
                return Err(Error::Invalid(format!(
                    "{} was moved while being walked: stopped rather than go on outside {}",
                    self.path_of(&name).display(),
                    self.top.display()
                )));
            }
            parent.dir = Some(dir);
            self.first_open = parent_index;
        }
        Ok(name)
    }

    /// Opens the directory at `relative` below the top, one name at a time (each step
    /// `openat` with `O_NOFOLLOW`, so no symlink on the way is followed).
    fn open_below(&self, relative: &Path) -> Result<Dir> {
        let mut dir = match &self.levels[0].dir {
            Some(top) => Dir::openat(Some(top.as_raw_fd()), ".", dir_flags(), Mode::empty()),
            None => Dir::open(&self.top, dir_flags(), Mode::empty()),
        }
        .sys("open", self.top.display())?;
        let stat = fstat(dir.as_raw_fd()).sys("fstat", self.top.display())?;
        if (stat.st_dev, stat.st_ino) != (self.levels[0].dev, self.levels[0].ino) {
            return Err(Error::Invalid(format!(
                "{} was replaced while being walked",
                self.top.display()
            )));
        }
        let mut walked = self.top.clone();
        for name in relative.iter() {
            walked.push(name);
            dir = Dir::openat(Some(dir.as_raw_fd()), name, dir_flags(), Mode::empty())
                .sys("openat", walked.display())?;
        }
        Ok(dir)
    }
}

/// A depth-first walk of a tree: each directory's entries in name order, parents before
/// children, going into a directory only when asked ([`Walk::enter`]). Its place is a
/// [`DirStack`] and a list of names per level, not the thread's stack, so any depth fits.
pub(crate) struct Walk {
    stack: DirStack,
    /// Per level of the stack, the names of its directory still to visit, the next last.
    todo: Vec<Vec<OsString>>,
}

/// What a [`Walk`] meets next.
pub(crate) enum Event {
    /// An entry of the current directory, and its metadata (`lstat`: a symlink is a
    /// symlink). [`Walk::enter`] now would go into it.
    Entry(OsString, FileStat),
    /// Everything in directory `name` has been visited, and the walk is back in its parent.
    Left(OsString),
}

impl Walk {
    /// Starts a walk of the directory `top` (not a symlink to one).
    pub(crate) fn open(top: &Path, window: usize) -> Result<Walk> {
        Self::start(DirStack::open(top, window)?)
    }

    /// Starts a walk of the directory `top`, following it if it is a symlink.
    pub(crate) fn open_following(top: &Path, window: usize) -> Result<Walk> {
        Self::start(DirStack::open_following(top, window)?)
    }

    fn start(mut stack: DirStack) -> Result<Walk> {
        let mut names = stack.names()?;
        names.reverse();
        Ok(Walk { stack, todo: vec![names] })
    }

    /// Where the walk is.
    pub(crate) fn stack(&self) -> &DirStack {
        &self.stack
    }

    /// The next entry, or the end of a directory; `None` at the end of the walk. Entries
    /// that vanished since their directory was read are skipped.
    pub(crate) fn next(&mut self) -> Result<Option<Event>> {
        loop {
            let Some(names) = self.todo.last_mut() else { return Ok(None) };
            let Some(name) = names.pop() else {
                self.todo.pop();
                if self.todo.is_empty() {
                    return Ok(None);
                }
                return self.stack.leave().map(|name| Some(Event::Left(name)));
            };
            if let Some(metadata) = self.stack.stat(&name)? {
                return Ok(Some(Event::Entry(name, metadata)));
            }
        }
    }

    /// Goes into directory `name` (the entry just met): its entries come next, then
    /// [`Event::Left`]. Returns its metadata, as opened.
    pub(crate) fn enter(&mut self, name: &OsStr) -> Result<FileStat> {
        let metadata = self.stack.enter(name)?;
        match self.stack.names() {
            Ok(mut names) => {
                names.reverse();
                self.todo.push(names);
                Ok(metadata)
            }
            Err(error) => {
                // Nothing to visit in it: the walk still leaves it, in step with the stack.
                self.todo.push(Vec::new());
                Err(error)
            }
        }
    }

    /// The names of the current directory that are still to visit (all of them, just after
    /// [`Walk::enter`]), in no particular order.
    pub(crate) fn names_ahead(&self) -> &[OsString] {
        self.todo.last().map(Vec::as_slice).unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::time::Instant;

    use super::*;

    /// Makes directory `top` with `depth` directories `d` nested in it and a file `f` with
    /// `content` at the bottom, by descriptor (no path can name the bottom).
    pub(crate) fn deep_tree(top: &Path, depth: usize, content: &[u8]) {
        fs::create_dir(top).unwrap();
        let mut dir = OwnedFd::from(File::open(top).unwrap());
        for _ in 0..depth {
            mkdirat(Some(dir.as_raw_fd()), "d", Mode::from_bits_truncate(0o755)).unwrap();
            dir = open_in(&dir, "d", dir_flags());
        }
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
        let mut file = File::from(open_in(&dir, "f", flags));
        io::Write::write_all(&mut file, content).unwrap();
    }

    /// `openat(dir, name, flags)`, mode 0644 if it creates.
    fn open_in(dir: &OwnedFd, name: &str, flags: OFlag) -> OwnedFd {
        let fd =
            openat(Some(dir.as_raw_fd()), name, flags, Mode::from_bits_truncate(0o644)).unwrap();
        // SAFETY: `openat` just returned this descriptor, and nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// What `du` says `path` takes, in bytes (GNU du walks by descriptor too, through fts).
    fn du(path: &Path) -> u64 {
        let output = std::process::Command::new("du")
            .args(["--summarize", "--block-size=1"])
            .arg(path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Runs `body` in a forked child, for what the test runner must not do to itself (change
    /// its limits, its namespaces, its mounts), and returns what it found wrong, if anything.
    pub(crate) fn in_child(
        body: impl FnOnce() -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{fork, ForkResult};
        let (read, write) = nix::unistd::pipe().unwrap();
        // SAFETY: the child runs only `body` (calls, and allocations, which glibc's fork makes
        // safe in the child of a threaded process) and leaves with `_exit`, never returning
        // into the test runner.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                drop(read);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
                let found = match outcome {
                    Ok(Ok(())) => String::new(),
                    Ok(Err(found)) => found,
                    Err(_) => "the child panicked".to_string(),
                };
                let _ = nix::unistd::write(&write, found.as_bytes());
                // SAFETY: ends the child at once, without running the runner's exit code.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(write);
                let mut found = String::new();
                io::Read::read_to_string(&mut File::from(read), &mut found).unwrap();
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
                if found.is_empty() {
                    Ok(())
                } else {
                    Err(found)
                }
            }
        }
    }

    #[test]
    fn a_copy_keeps_links_modes_and_times() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        fs::create_dir_all(base.join("bin")).unwrap();
        fs::create_dir_all(base.join("sbin")).unwrap();
        fs::write(base.join("bin/busybox"), vec![7u8; 10_000]).unwrap();
        fs::hard_link(base.join("bin/busybox"), base.join("bin/sh")).unwrap();
        fs::hard_link(base.join("bin/busybox"), base.join("sbin/init")).unwrap();
        symlink("busybox", base.join("bin/ls")).unwrap();
        fs::set_permissions(base.join("bin/busybox"), fs::Permissions::from_mode(0o751)).unwrap();

        let copy = tmp.path().join("copy");
        let copied = copy_tree(&base, &copy).unwrap();
        assert_eq!(copied.entries, 7, "base, bin, busybox, sh and init (links), ls, sbin");
        assert_eq!(copied.bytes, 10_000, "the hard links' content is not copied again");
        let meta = |path: &Path| fs::symlink_metadata(path).unwrap();
        assert_eq!(meta(&copy.join("bin/sh")).ino(), meta(&copy.join("bin/busybox")).ino());
        assert_eq!(meta(&copy.join("sbin/init")).ino(), meta(&copy.join("bin/busybox")).ino());
        assert_eq!(meta(&copy.join("bin/busybox")).mode() & 0o7777, 0o751);
        assert_eq!(fs::read_link(copy.join("bin/ls")).unwrap(), Path::new("busybox"));
        assert_eq!(meta(&copy.join("bin")).mtime(), meta(&base.join("bin")).mtime());
        let changes = crate::changes::tree_changes(&base, &copy).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        // du: the hard link is counted once.
        let usage = disk_usage(&copy).unwrap();
        assert!((10_000..40_000).contains(&usage), "{usage}");
        assert_eq!(usage, du(&copy));
        remove_tree(&copy).unwrap();
        assert!(!copy.exists());
    }

    /// Regression: trees deeper than PATH_MAX could be made in a container but not measured,
    /// copied or removed (ENAMETOOLONG).
    #[test]
    fn a_tree_deeper_than_a_path_can_name_is_measured_copied_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        deep_tree(&base, 3_000, b"deep");
        assert_eq!(disk_usage(&base).unwrap(), du(&base));

        let copy = tmp.path().join("copy");
        let copied = copy_tree(&base, &copy).unwrap();
        assert_eq!(copied, Copied { entries: 3_002, bytes: 4 }, "top, 3,000 d, f");
        assert_eq!(disk_usage(&copy).unwrap(), du(&copy));
        let changes = crate::changes::tree_changes(&base, &copy).unwrap();
        assert!(changes.is_empty(), "{} changes, the first {:?}", changes.len(), changes.first());

        // Mode 000 near the bottom: opened up to be removed (for root it makes no difference).
        let mut stack = DirStack::open(&copy, OPEN_DIRS).unwrap();
        for _ in 0..2_999 {
            stack.enter(OsStr::new("d")).unwrap();
        }
        nix::sys::stat::fchmod(stack.fd(), Mode::empty()).unwrap();
        drop(stack);
        for tree in [&base, &copy] {
            remove_tree(tree).unwrap();
            assert!(!tree.exists());
        }
        // Gone already: nothing to do.
        remove_tree(&copy).unwrap();
    }

    /// 10,000 levels under the default limit of 1,024 descriptors, in a child whose limit is
    /// lowered to that (the runner's may be higher), and a stack that keeps a bounded few.
    #[test]
    fn ten_thousand_levels_are_removed_with_a_bounded_number_of_descriptors() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        deep_tree(&top, 10_000, b"x");
        let mut walk = Walk::open(&top, OPEN_DIRS).unwrap();
        let mut most_open = 0;
        while let Some(event) = walk.next().unwrap() {
            if let Event::Entry(name, metadata) = event {
                if is_dir(&metadata) {
                    walk.enter(&name).unwrap();
                }
            }
            most_open = most_open.max(walk.stack().open_count());
        }
        assert_eq!(most_open, OPEN_DIRS);
        drop(walk);

        let started = Instant::now();
        let removed = in_child(|| {
            let limit = libc::rlimit { rlim_cur: 1_024, rlim_max: libc::RLIM_INFINITY };
            let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: both are valid rlimit structs.
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) } != 0 {
                return Err("getrlimit failed".into());
            }
            let limit = libc::rlimit { rlim_max: old.rlim_max, ..limit };
            // SAFETY: a valid rlimit struct.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
                return Err("setrlimit failed".into());
            }
            remove_tree(&top).map_err(|error| error.to_string())
        });
        let took = started.elapsed();
        assert_eq!(removed, Ok(()));
        assert!(!top.exists());
        eprintln!("removed 10,000 levels in {took:?}");
    }

    /// remove_tree stops at a mount point below the top (another filesystem, and a bind
    /// mount of the same one) and leaves the mounted files alone. In a child that has its own
    /// user and mount namespaces (`man 2 unshare`), so the mounts die with it.
    #[test]
    fn removal_stops_at_a_mount_point() {
        use nix::mount::{mount, MsFlags};
        use nix::sched::{unshare, CloneFlags};
        let tmp = tempfile::tempdir().unwrap();
        let (tmpfs_tree, bind_tree) = (tmp.path().join("tmpfs"), tmp.path().join("bind"));
        let (tmpfs_point, bind_point) = (tmpfs_tree.join("a/mnt"), bind_tree.join("a/mnt"));
        let elsewhere = tmp.path().join("elsewhere");
        for dir in [&tmpfs_point, &bind_point, &elsewhere] {
            fs::create_dir_all(dir).unwrap();
        }
        fs::write(elsewhere.join("precious"), "keep").unwrap();
        let (uid, gid) = (Uid::effective(), Gid::effective());
        let found = in_child(|| {
            let check = |what: &str, ok: bool| if ok { Ok(()) } else { Err(what.to_string()) };
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
                .map_err(|errno| format!("unshare: {errno}"))?;
            for (file, line) in [
                ("setgroups", "deny".to_string()),
                ("uid_map", format!("0 {uid} 1")),
                ("gid_map", format!("0 {gid} 1")),
            ] {
                fs::write(Path::new("/proc/self").join(file), line)
                    .map_err(|error| format!("{file}: {error}"))?;
            }
            mount(Some("tmpfs"), &tmpfs_point, Some("tmpfs"), MsFlags::empty(), None::<&str>)
                .map_err(|errno| format!("mount tmpfs: {errno}"))?;
            fs::write(tmpfs_point.join("precious"), "keep").map_err(|e| e.to_string())?;
            mount(Some(&elsewhere), &bind_point, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|errno| format!("mount --bind: {errno}"))?;
            for (tree, point) in [(&tmpfs_tree, &tmpfs_point), (&bind_tree, &bind_point)] {
                let error = match remove_tree(tree) {
                    Ok(()) => return Err(format!("{} removed through a mount", tree.display())),
                    Err(error) => error.to_string(),
                };
                let expected = format!("{} is a mount point: removing through it", point.display());
                check(&format!("{error:?} names the mount"), error.starts_with(&expected))?;
                check("the mounted file is kept", point.join("precious").exists())?;
            }
            Ok(())
        });
        assert_eq!(found, Ok(()));
        assert!(elsewhere.join("precious").exists());
    }

    /// Going back up through `..` checks that it is the directory the walk came down
    /// through: a directory moved out of the tree meanwhile stops the walk there, rather
    /// than lead it (and a removal) on outside the tree.
    #[test]
    fn a_walk_stops_if_its_path_is_moved_away() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        deep_tree(&top, 10, b"x");
        let mut stack = DirStack::open(&top, 4).unwrap();
        for _ in 0..10 {
            stack.enter(OsStr::new("d")).unwrap();
        }
        assert_eq!(stack.open_count(), 4);
        fs::rename(top.join("d/d"), tmp.path().join("moved")).unwrap();
        // Back up to the moved directory: below it, everything is where it was.
        for _ in 0..8 {
            stack.leave().unwrap();
        }
        let error = stack.leave().unwrap_err().to_string();
        let expected = format!("{} was moved while being walked", top.join("d/d").display());
        assert!(error.starts_with(&expected), "{error}");
    }

    #[test]
    fn symlinks_are_removed_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (tree, outside) = (tmp.path().join("tree"), tmp.path().join("outside"));
        fs::create_dir_all(tree.join("dir")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("kept"), "x").unwrap();
        symlink(&outside, tree.join("dir/link")).unwrap();
        symlink(&outside, tmp.path().join("top-link")).unwrap();
        fs::set_permissions(tree.join("dir"), fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&tmp.path().join("top-link")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(!tmp.path().join("top-link").exists());
        assert!(outside.join("kept").exists());
    }
}
