//! Unpacking: a layer blob into a directory that overlayfs stacks as a lower as it is.
//!
//! Each layer is unpacked once, into `<root>/layers/<hex>/`, and every container of every
//! image over it mounts that directory as one of its overlay's lowerdirs. So the directory
//! must say what the layer says in overlayfs's own terms (`Documentation/filesystems/
//! overlayfs.rst`, "whiteouts and opaque directories"):
//!
//! | in the tar (OCI image-spec, `layer.md`) | in the directory                       |
//! |------------------------------------------|-----------------------------------------|
//! | `d/.wh.name`, an empty file              | `d/name`, a character device 0/0        |
//! | `d/.wh..wh..opq`                          | the xattr `trusted.overlay.opaque=y` on `d` (`user.overlay.` for `userxattr`) |
//!
//! A whiteout needs `mknod` (`man 2 mknod`): root may make any device, and since Linux 5.8 a
//! user namespace may make a 0/0 one. Where neither holds, unpacking refuses: a directory
//! without the device would show the deleted file again.
//!
//! A layer is input from anyone, and unpacking runs as root: a tar can name `../../etc/passwd`,
//! `/etc/shadow`, a symlink `link -> /` and then `link/etc/cron.d/x`, or a hard link to a host
//! file. Every entry is therefore made relative to a directory *descriptor* below `dest`
//! (`man 2 openat`): absolute names and `..` are refused, each directory on the way is opened
//! with `O_NOFOLLOW | O_DIRECTORY` (a symlink on the way stops the entry with an error, it is
//! never followed), and a hard link's target is found the same way, so it is a file already
//! unpacked inside `dest`. The entry's own name is made with calls that do not follow it
//! either (`O_CREAT | O_EXCL`, `mkdirat`, `symlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`).
//!
//! Entries are made in the tar's order, and a later entry of the same path replaces the
//! earlier one (a directory over a directory merges), as `tar -x` does. A directory's mode and
//! mtime are set after everything, since making an entry in it changes its mtime (and a mode
//! without `w` would stop the entries). Xattrs come from PAX `SCHILY.xattr.*` records, except
//! overlayfs's own: a layer marks an opaque directory only with `.wh..wh..opq`.
//!
//! The diff ID is the SHA-256 of the whole uncompressed stream, end blocks and padding
//! included, so the stream is read to its end after the last entry. gzip is recognised by its
//! magic bytes (`1f 8b`, RFC 1952); zstd layers (`28 b5 2f fd`) are refused, not supported.
//!
//! Speed: one `openat` per new directory on the way (the open directories of the previous
//! entry's path are kept), and per file `openat`, `write`, `fchown`, `fchmod`, `futimens`;
//! the blob and the tar are read through large buffers.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::pack::proc_path;
use super::{is_overlay_xattr, UnpackOptions, Unpacked, OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// The read buffers (blob, uncompressed tar) and the largest write of file content.
const BUFFER: usize = 1024 * 1024;

/// Directories of the last entry's path kept open, at most (see [`crate::copy::DirStack`]
/// for why a bound).
const OPEN_DIRS: usize = 32;

// ANCHOR: unpack
/// Unpacks the layer `blob` (a tar, or a gzipped one) into `dest`, an empty directory that
/// must exist, with OCI whiteouts made overlayfs whiteouts; returns the tar's diff ID.
///
/// On an error, what was made so far is left in `dest`: the caller unpacks into a temporary
/// directory, renames it into place only on success, and removes it otherwise.
pub fn unpack(blob: impl Read, dest: &Path, options: &UnpackOptions) -> Result<Unpacked> {
    let top = open_empty(dest)?;
    let mut blob = BufReader::with_capacity(BUFFER, blob);
    let head = blob.fill_buf().map_err(|error| Error::io("read", "the layer", &error))?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(Error::Invalid(
            "the layer is compressed with zstd, which isolab does not support: use a tar or \
             tar+gzip layer"
                .into(),
        ));
    }
    let stream: Box<dyn Read + '_> =
        if gzip { Box::new(MultiGzDecoder::new(blob)) } else { Box::new(blob) };
    let hashed = Hashing { inner: stream, hasher: Sha256::new() };
    let mut archive = tar::Archive::new(BufReader::with_capacity(BUFFER, hashed));
    let mut unpacker = Unpacker {
        dest,
        top,
        options,
        chain: Vec::new(),
        dirs: BTreeMap::new(),
        buffer: vec![0; BUFFER],
        unpacked: Unpacked { diff_id: Digest([0; 32]), entries: 0, bytes: 0, skipped: Vec::new() },
    };
    let entries = archive.entries().map_err(|error| read_error(error, gzip, None))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| read_error(error, gzip, None))?;
        unpacker.entry(&mut entry, gzip)?;
    }
    unpacker.set_directories()?;
    // The end blocks and whatever pads the tar to its record size are part of the diff ID.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|error| read_error(error, gzip, None))?;
    let mut unpacked = unpacker.unpacked;
    unpacked.diff_id = Digest(rest.into_inner().hasher.finalize().into());
    Ok(unpacked)
}
// ANCHOR_END: unpack

/// Opens `dest` (following it, if it is a symlink: the caller names it) and checks it is
/// empty: a layer's directory holds the layer and nothing else.
fn open_empty(dest: &Path) -> Result<Dir> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut top = Dir::open(dest, flags, Mode::empty())
        .map_err(|errno| Error::sys("open", dest.display(), errno))?;
    for entry in top.iter() {
        let entry = entry.map_err(|errno| Error::sys("readdir", dest.display(), errno))?;
        if ![&b"."[..], b".."].contains(&entry.file_name().to_bytes()) {
            return Err(Error::Invalid(format!(
                "{} is not empty: a layer is unpacked into an empty directory",
                dest.display()
            )));
        }
    }
    Ok(top)
}

/// A reader that hashes what passes through it: the diff ID of the uncompressed tar.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

/// A failed read of the blob: the kernel's error, or a stream that is not what it claims.
fn read_error(error: io::Error, gzip: bool, entry: Option<&[u8]>) -> Error {
    if error.raw_os_error().is_some() {
        return Error::io("read", "the layer", &error);
    }
    let format = if gzip { "tar+gzip" } else { "tar" };
    match entry {
        Some(name) => {
            Error::Invalid(format!("layer entry {}: not a valid {format}: {error}", shown(name)))
        }
        None => Error::Invalid(format!("the layer is not a valid {format}: {error}")),
    }
}

/// A refused entry: `layer entry ../x: <why>`.
fn refuse(name: &[u8], why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("layer entry {}: {why}", shown(name)))
}

/// An entry's name, for messages.
fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// The components of an entry's name below `dest`: empty ones and `.` dropped; an absolute
/// name or a `..` refused (either could name a file outside `dest`).
fn components(name: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if name.first() == Some(&b'/') {
        return Err("an absolute name: a layer's names are relative to its top");
    }
    let mut parts = Vec::new();
    for part in name.split(|byte| *byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("a `..` component would leave the layer's directory"),
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// One open directory of the last entry's path.
struct Level {
    name: Vec<u8>,
    /// Open while it is one of the [`OPEN_DIRS`] deepest.
    fd: Option<OwnedFd>,
}

/// Why a directory on an entry's way could not be opened.
enum Blocked {
    /// It does not exist (and was not to be made).
    Missing,
    /// The component at this index is not a directory: a symlink, or a file.
    NotADirectory(usize),
    /// Opening the component at this index failed otherwise.
    Failed(usize, Errno),
}

/// A directory's mode and mtime, set once everything is unpacked.
struct DirAttributes {
    mode: u32,
    mtime: i64,
}

/// What one entry's header says, besides its name.
struct Attributes {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker<'a> {
    dest: &'a Path,
    top: Dir,
    options: &'a UnpackOptions,
    /// The directories of the last path resolved, from below `dest` down.
    chain: Vec<Level>,
    /// Every directory entry, by its path: its mode and mtime come last.
    dirs: BTreeMap<Vec<u8>, DirAttributes>,
    /// File content on its way from the tar to a file.
    buffer: Vec<u8>,
    unpacked: Unpacked,
}

impl Unpacker<'_> {
    /// Makes one entry of the tar.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, gzip: bool) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Defaults for the entries after it (a comment, a charset): nothing to make.
            return Ok(());
        }
        let attributes = self.attributes(entry, &raw, gzip)?;
        let parts = components(&raw).map_err(|why| refuse(&raw, why))?;
        let Some((name, parents)) = parts.split_last() else {
            // `./`: the layer's top directory itself.
            if !kind.is_dir() {
                return Err(refuse(&raw, "only a directory may name the layer's top"));
            }
            if self.options.owners {
                let (uid, gid) = (Uid::from_raw(attributes.uid), Gid::from_raw(attributes.gid));
                fchown(self.top.as_raw_fd(), Some(uid), Some(gid))
                    .map_err(|errno| Error::sys("fchown", self.dest.display(), errno))?;
            }
            let mode = attributes.mode;
            self.dirs.insert(Vec::new(), DirAttributes { mode, mtime: attributes.mtime });
            self.unpacked.entries += 1;
            return Ok(());
        };
        let last_raw = raw.split(|byte| *byte == b'/').rfind(|part| !part.is_empty());
        if !kind.is_dir() && last_raw == Some(b".") {
            return Err(refuse(&raw, "only a directory may end in `.`"));
        }
        if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parents, name, &raw);
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, &parts, attributes, &raw, gzip)?
            }
            EntryType::Directory => self.directory(&parts, attributes, &raw)?,
            EntryType::Symlink => {
                let Some(target) = entry.link_name_bytes() else {
                    return Err(refuse(&raw, "a symlink without a target"));
                };
                let target = target.into_owned();
                self.symlink(&parts, &target, attributes, &raw)?
            }
            EntryType::Link => {
                let Some(target) = entry.link_name_bytes() else {
                    return Err(refuse(&raw, "a hard link without a target"));
                };
                let target = target.into_owned();
                self.hard_link(&parts, &target, &raw)?
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                if !self.node(&parts, kind, (major, minor), attributes, &raw)? {
                    return Ok(());
                }
            }
            other => {
                self.unpacked.skipped.push(format!(
                    "{}: entry type {:?} ({}) is not a file isolab makes",
                    shown(&raw),
                    other,
                    char::from(other.as_byte())
                ));
                return Ok(());
            }
        }
        self.unpacked.entries += 1;
        Ok(())
    }

    /// The entry's mode, owner, mtime and xattrs (overlay's own left out, and listed).
    fn attributes<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        raw: &[u8],
        gzip: bool,
    ) -> Result<Attributes> {
        let header = entry.header();
        let bad = |field: &str, error: io::Error| refuse(raw, format!("its {field}: {error}"));
        let mode = header.mode().map_err(|error| bad("mode", error))? & 0o7777;
        let uid = header.uid().map_err(|error| bad("uid", error))?;
        let gid = header.gid().map_err(|error| bad("gid", error))?;
        let mtime = header.mtime().map_err(|error| bad("mtime", error))?;
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(refuse(raw, format!("owner {uid}:{gid} is not a Linux uid and gid")));
        };
        let mtime = i64::try_from(mtime).unwrap_or(i64::MAX);
        let mut xattrs = Vec::new();
        let extensions =
            entry.pax_extensions().map_err(|error| read_error(error, gzip, Some(raw)))?;
        for extension in extensions.into_iter().flatten() {
            let extension = extension.map_err(|error| read_error(error, gzip, Some(raw)))?;
            let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if is_overlay_xattr(name) {
                self.unpacked.skipped.push(format!(
                    "{}: xattr {} ignored: a layer marks an opaque directory with {OPAQUE_WHITEOUT} \
                     only",
                    shown(raw),
                    shown(name)
                ));
                continue;
            }
            xattrs.push((name.to_vec(), extension.value_bytes().to_vec()));
        }
        Ok(Attributes { mode, uid, gid, mtime, xattrs })
    }

    /// A regular file: made new (what was at its path is replaced), content, then owner,
    /// mode, xattrs and mtime, in that order: `chown` clears set-user-ID and file capabilities
    /// (`man 2 chown`), and writing would move the mtime.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        parts: &[&[u8]],
        attributes: Attributes,
        raw: &[u8],
        gzip: bool,
    ) -> Result<()> {
        let (name, parents) = parts.split_last().expect("a file has a name");
        let parent = self.parent(parents, raw)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let create =
            || openat(Some(parent), *name, flags | OFlag::O_CLOEXEC, Mode::S_IRUSR | Mode::S_IWUSR);
        let fd = match create() {
            Err(Errno::EEXIST) => {
                self.remove_existing(parent, parts)?;
                create()
            }
            other => other,
        }
        .map_err(|errno| Error::sys("openat", self.path_of(parts).display(), errno))?;
        // SAFETY: `openat` just returned this descriptor, and nothing else owns it.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });

        let declared = entry.header().entry_size().unwrap_or(0);
        let size = entry.size();
        let mut written = 0u64;
        loop {
            // Fill the buffer before writing: fewer, larger writes.
            let mut filled = 0;
            while filled < self.buffer.len() {
                let read = entry
                    .read(&mut self.buffer[filled..])
                    .map_err(|error| read_error(error, gzip, Some(raw)))?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            if filled == 0 {
                break;
            }
            file.write_all(&self.buffer[..filled])
                .map_err(|error| Error::io("write", self.path_of(parts), &error))?;
            written += filled as u64;
        }
        if written != size {
            return Err(refuse(
                raw,
                format!(
                    "declares {} bytes, but the layer ends after {written}",
                    size.max(declared)
                ),
            ));
        }
        self.unpacked.bytes += written;
        let fd = file.as_raw_fd();
        let path = || self.path_of(parts);
        if self.options.owners {
            let (uid, gid) = (Uid::from_raw(attributes.uid), Gid::from_raw(attributes.gid));
            fchown(fd, Some(uid), Some(gid))
                .map_err(|errno| Error::sys("fchown", path().display(), errno))?;
        }
        fchmod(fd, Mode::from_bits_truncate(attributes.mode))
            .map_err(|errno| Error::sys("fchmod", path().display(), errno))?;
        self.set_xattrs(XattrAt::Fd(fd), &attributes.xattrs, raw, parts)?;
        let mtime = TimeSpec::new(attributes.mtime, 0);
        futimens(fd, &omit(), &mtime)
            .map_err(|errno| Error::sys("futimens", self.path_of(parts).display(), errno))
    }

    /// A directory: made if new (over a whiteout: marked opaque, see [`Self::whiteout`]),
    /// merged if one is there; owner and xattrs now, mode and mtime at the end.
    fn directory(&mut self, parts: &[&[u8]], attributes: Attributes, raw: &[u8]) -> Result<()> {
        let (name, parents) = parts.split_last().expect("a directory has a name");
        let parent = self.parent(parents, raw)?;
        let make = || mkdirat(Some(parent), *name, Mode::S_IRWXU);
        let mut opaque = false;
        match make() {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let existing = fstatat(Some(parent), *name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|errno| Error::sys("fstatat", self.path_of(parts).display(), errno))?;
                let format = existing.st_mode & SFlag::S_IFMT.bits();
                if format != SFlag::S_IFDIR.bits() {
                    opaque = format == SFlag::S_IFCHR.bits() && existing.st_rdev == 0;
                    self.remove_existing(parent, parts)?;
                    make().map_err(|errno| {
                        Error::sys("mkdirat", self.path_of(parts).display(), errno)
                    })?;
                }
            }
            Err(errno) => return Err(Error::sys("mkdirat", self.path_of(parts).display(), errno)),
        }
        self.owner_at(parent, name, &attributes, parts)?;
        self.set_xattrs(XattrAt::Name(parent, name), &attributes.xattrs, raw, parts)?;
        if opaque {
            self.mark_opaque(XattrAt::Name(parent, name), parts)?;
        }
        let mode = attributes.mode;
        self.dirs.insert(parts.join(&b'/'), DirAttributes { mode, mtime: attributes.mtime });
        Ok(())
    }

    /// A symbolic link, with any target: it is made, never followed.
    fn symlink(
        &mut self,
        parts: &[&[u8]],
        target: &[u8],
        attributes: Attributes,
        raw: &[u8],
    ) -> Result<()> {
        let (name, parents) = parts.split_last().expect("a symlink has a name");
        let parent = self.parent(parents, raw)?;
        let target = OsStr::from_bytes(target);
        let make = || symlinkat(target, Some(parent), *name);
        match make() {
            Err(Errno::EEXIST) => {
                self.remove_existing(parent, parts)?;
                make()
            }
            other => other,
        }
        .map_err(|errno| Error::sys("symlinkat", self.path_of(parts).display(), errno))?;
        self.owner_at(parent, name, &attributes, parts)?;
        self.set_xattrs(XattrAt::Name(parent, name), &attributes.xattrs, raw, parts)?;
        self.mtime_at(parent, name, attributes.mtime, parts)
    }

    /// A second name of a file already unpacked inside `dest`, found as safely as the entry's
    /// own directory: a target outside, through a symlink, or not there yet, is refused.
    fn hard_link(&mut self, parts: &[&[u8]], target: &[u8], raw: &[u8]) -> Result<()> {
        let target_parts = components(target)
            .map_err(|why| refuse(raw, format!("links to {}: {why}", shown(target))))?;
        let Some((target_name, target_parents)) = target_parts.split_last() else {
            return Err(refuse(raw, "links to the layer's top directory"));
        };
        if target_parts == parts {
            // A link to itself, as GNU tar writes for a file appended twice: nothing to do.
            return Ok(());
        }
        let target_dir = match self.open_beneath(target_parents) {
            Ok(dir) => dir,
            Err(Blocked::Missing) => {
                return Err(refuse(
                    raw,
                    format!("links to {}, which is not in the layer", shown(target)),
                ))
            }
            Err(Blocked::NotADirectory(index)) => {
                return Err(refuse(
                    raw,
                    format!(
                        "links to {}, but {} is not a directory (a symlink is never followed)",
                        shown(target),
                        shown(&target_parents[..=index].join(&b'/'))
                    ),
                ))
            }
            Err(Blocked::Failed(index, errno)) => {
                let path = self.path_of(&target_parents[..=index]);
                return Err(Error::sys("openat", path.display(), errno));
            }
        };
        let (name, parents) = parts.split_last().expect("a link has a name");
        let parent = self.parent(parents, raw)?;
        let from = (Some(target_dir.as_raw_fd()), *target_name);
        let link = || linkat(from.0, from.1, Some(parent), *name, AtFlags::empty());
        match link() {
            Err(Errno::EEXIST) => {
                self.remove_existing(parent, parts)?;
                link()
            }
            other => other,
        }
        .map_err(|errno| match errno {
            Errno::ENOENT => {
                refuse(raw, format!("links to {}, which is not in the layer", shown(target)))
            }
            Errno::EPERM => refuse(raw, format!("links to {}, a directory", shown(target))),
            errno => Error::sys("linkat", self.path_of(parts).display(), errno),
        })
    }

    /// A device node (if allowed) or a fifo; whether it was made.
    fn node(
        &mut self,
        parts: &[&[u8]],
        kind: EntryType,
        (major, minor): (u32, u32),
        attributes: Attributes,
        raw: &[u8],
    ) -> Result<bool> {
        let format = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        if format != SFlag::S_IFIFO && !self.options.devices {
            let what = if format == SFlag::S_IFCHR { "character" } else { "block" };
            self.unpacked.skipped.push(format!(
                "{}: {what} device {major}/{minor} not made: devices are not allowed",
                shown(raw)
            ));
            return Ok(false);
        }
        let (name, parents) = parts.split_last().expect("a node has a name");
        let parent = self.parent(parents, raw)?;
        let device = libc::makedev(major, minor);
        let make = || mknodat(Some(parent), *name, format, Mode::S_IRUSR | Mode::S_IWUSR, device);
        match make() {
            Err(Errno::EEXIST) => {
                self.remove_existing(parent, parts)?;
                make()
            }
            other => other,
        }
        .map_err(|errno| Error::sys("mknodat", self.path_of(parts).display(), errno))?;
        self.owner_at(parent, name, &attributes, parts)?;
        // Not a symlink (just made), so following it is the same as not.
        fchmodat(
            Some(parent),
            *name,
            Mode::from_bits_truncate(attributes.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|errno| Error::sys("fchmodat", self.path_of(parts).display(), errno))?;
        self.set_xattrs(XattrAt::Name(parent, name), &attributes.xattrs, raw, parts)?;
        self.mtime_at(parent, name, attributes.mtime, parts).map(|()| true)
    }

    /// A `.wh.` entry: a whiteout made overlayfs's way, or an opaque directory marked.
    ///
    /// A whiteout hides only what the layers *below* have (OCI `layer.md`): a name this layer
    /// has made already stays. If that is a directory, the layers below must not show through
    /// it any more, which overlayfs says by marking it opaque.
    fn whiteout(&mut self, parents: &[&[u8]], name: &[u8], raw: &[u8]) -> Result<()> {
        let parent = self.parent(parents, raw)?;
        if name == OPAQUE_WHITEOUT.as_bytes() {
            self.mark_opaque(XattrAt::Fd(parent), parents)?;
            self.unpacked.entries += 1;
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            // AUFS's own bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`), meaningless to overlayfs.
            self.unpacked.skipped.push(format!("{}: AUFS metadata, not needed", shown(raw)));
            return Ok(());
        }
        let deleted = &name[WHITEOUT_PREFIX.len()..];
        if deleted.is_empty() || deleted == b"." || deleted == b".." {
            return Err(refuse(
                raw,
                "a whiteout must name a file: `.wh.` with nothing, `.` or `..` after it would \
                 delete the directory itself or its parent",
            ));
        }
        let mut parts = parents.to_vec();
        parts.push(deleted);
        // Mode 0, as overlayfs makes its own (`fs/overlayfs/dir.c`, `ovl_whiteout`).
        match mknodat(Some(parent), deleted, SFlag::S_IFCHR, Mode::empty(), 0) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let existing = fstatat(Some(parent), deleted, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|errno| {
                        Error::sys("fstatat", self.path_of(&parts).display(), errno)
                    })?;
                if existing.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
                    self.mark_opaque(XattrAt::Name(parent, deleted), &parts)?;
                }
            }
            Err(errno @ (Errno::EPERM | Errno::EACCES)) => {
                return Err(Error::sys("mknodat", self.path_of(&parts).display(), errno).hint(
                    format!(
                        "layer entry {} deletes {}: in an overlay lower a deletion is a \
                         character device 0/0, which needs CAP_MKNOD (or Linux 5.8+ in a user \
                         namespace); an unpacked layer cannot express the deletion otherwise",
                        shown(raw),
                        shown(deleted)
                    ),
                ));
            }
            Err(errno) => return Err(Error::sys("mknodat", self.path_of(&parts).display(), errno)),
        }
        self.unpacked.entries += 1;
        Ok(())
    }

    /// Sets `<prefix>opaque=y` on a directory (`overlayfs.rst`: "whiteouts and opaque
    /// directories").
    fn mark_opaque(&mut self, at: XattrAt, parts: &[&[u8]]) -> Result<()> {
        for prefix in self.options.xattr_prefixes {
            let name = format!("{prefix}opaque");
            set_xattr(&at, name.as_bytes(), b"y").map_err(|errno| {
                let subject = format!("{name} on {}", self.path_of(parts).display());
                Error::sys("setxattr", subject, errno).hint(
                    "trusted.* xattrs need CAP_SYS_ADMIN: unpack as root, or with the \
                     user.overlay. prefix for an overlay mounted with userxattr",
                )
            })?;
        }
        Ok(())
    }

    /// Sets an entry's xattrs; one that may not be set here is listed as skipped.
    fn set_xattrs(
        &mut self,
        at: XattrAt,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        raw: &[u8],
        parts: &[&[u8]],
    ) -> Result<()> {
        for (name, value) in xattrs {
            match set_xattr(&at, name, value) {
                Ok(()) => {}
                // Not ours to set here (`trusted.*` without CAP_SYS_ADMIN, `user.*` on a
                // symlink or device, no xattrs on this filesystem): noted, not fatal.
                Err(errno @ (Errno::EPERM | Errno::EACCES | Errno::ENOTSUP)) => {
                    self.unpacked.skipped.push(format!(
                        "{}: xattr {} not set: {}",
                        shown(raw),
                        shown(name),
                        crate::error::errno_name(errno)
                    ));
                }
                Err(errno) => {
                    let subject = format!("{} on {}", shown(name), self.path_of(parts).display());
                    return Err(Error::sys("setxattr", subject, errno));
                }
            }
        }
        Ok(())
    }

    /// Gives `name` (not followed) the entry's owner, when the options say so.
    fn owner_at(
        &self,
        parent: RawFd,
        name: &[u8],
        attributes: &Attributes,
        parts: &[&[u8]],
    ) -> Result<()> {
        if !self.options.owners {
            return Ok(());
        }
        let (uid, gid) = (Uid::from_raw(attributes.uid), Gid::from_raw(attributes.gid));
        fchownat(Some(parent), name, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|errno| Error::sys("fchownat", self.path_of(parts).display(), errno))
    }

    /// Sets the mtime of `name` (not followed), leaving its atime.
    fn mtime_at(&self, parent: RawFd, name: &[u8], mtime: i64, parts: &[&[u8]]) -> Result<()> {
        let mtime = TimeSpec::new(mtime, 0);
        utimensat(Some(parent), name, &omit(), &mtime, UtimensatFlags::NoFollowSymlink)
            .map_err(|errno| Error::sys("utimensat", self.path_of(parts).display(), errno))
    }

    /// The directory an entry goes in, open: each component below `dest` opened without
    /// following a symlink, made (mode 0755) if the tar did not list it before its entries,
    /// as `tar -x` does. The directories of the previous entry's path are reused.
    fn parent(&mut self, parents: &[&[u8]], raw: &[u8]) -> Result<RawFd> {
        match self.resolve(parents, true) {
            Ok(fd) => Ok(fd),
            Err(Blocked::NotADirectory(index)) => Err(refuse(
                raw,
                format!(
                    "{} is not a directory (a symlink or a file): an entry is never made \
                     through a symlink",
                    shown(&parents[..=index].join(&b'/'))
                ),
            )),
            Err(Blocked::Failed(index, errno)) => {
                Err(Error::sys("openat", self.path_of(&parents[..=index]).display(), errno))
            }
            Err(Blocked::Missing) => unreachable!("missing directories are made"),
        }
    }

    /// Opens the directories `parents` below `dest`, reusing the open part of [`Self::chain`].
    /// Kernel errors other than "missing" and "not a directory" are `Sys` errors inside.
    fn resolve(&mut self, parents: &[&[u8]], make: bool) -> std::result::Result<RawFd, Blocked> {
        let mut keep = 0;
        while keep < self.chain.len()
            && keep < parents.len()
            && self.chain[keep].name == parents[keep]
        {
            keep += 1;
        }
        self.chain.truncate(keep);
        if self.chain.last().is_some_and(|level| level.fd.is_none()) {
            // Its descriptor was closed (deeper than OPEN_DIRS): start again from the top.
            self.chain.clear();
        }
        let start = self.chain.len();
        for (index, name) in parents.iter().copied().enumerate().skip(start) {
            let at = match self.chain.last() {
                Some(level) => level.fd.as_ref().expect("the deepest levels are open").as_raw_fd(),
                None => self.top.as_raw_fd(),
            };
            let fd = match open_dir(at, name) {
                Err(Errno::ENOENT) if make => {
                    match mkdirat(Some(at), name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(errno) => return Err(Blocked::Failed(index, errno)),
                    }
                    open_dir(at, name)
                }
                other => other,
            };
            let fd = match fd {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Err(Blocked::Missing),
                Err(Errno::ENOTDIR | Errno::ELOOP) => return Err(Blocked::NotADirectory(index)),
                Err(errno) => return Err(Blocked::Failed(index, errno)),
            };
            self.chain.push(Level { name: name.to_vec(), fd: Some(fd) });
            if self.chain.len() > OPEN_DIRS {
                let closing = self.chain.len() - 1 - OPEN_DIRS;
                self.chain[closing].fd = None;
            }
        }
        Ok(match self.chain.last() {
            Some(level) => level.fd.as_ref().expect("the deepest level is open").as_raw_fd(),
            None => self.top.as_raw_fd(),
        })
    }

    /// Opens the directory `parents` below `dest` on its own (for a hard link's target),
    /// making nothing and following no symlink.
    fn open_beneath(&self, parents: &[&[u8]]) -> std::result::Result<OwnedFd, Blocked> {
        let mut dir = open_dir(self.top.as_raw_fd(), b".").map_err(|_| Blocked::Missing)?;
        for (index, name) in parents.iter().enumerate() {
            dir = match open_dir(dir.as_raw_fd(), name) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Err(Blocked::Missing),
                Err(Errno::ENOTDIR | Errno::ELOOP) => return Err(Blocked::NotADirectory(index)),
                Err(errno) => return Err(Blocked::Failed(index, errno)),
            };
        }
        Ok(dir)
    }

    /// Removes what is at `parts` (in the open directory `parent`), for a later entry of the
    /// same path: a file or link is unlinked, a directory removed with all it holds.
    fn remove_existing(&mut self, parent: RawFd, parts: &[&[u8]]) -> Result<()> {
        let name = *parts.last().expect("an entry has a name");
        let path = self.path_of(parts);
        // The open directories at or below it are about to go.
        let depth = parts.len() - 1;
        if self.chain.len() > depth
            && self.chain[..=depth].iter().map(|level| &level.name[..]).eq(parts.iter().copied())
        {
            self.chain.truncate(depth);
        }
        match unlinkat(Some(parent), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(()),
            // A directory (EISDIR on Linux, EPERM by POSIX): removed with its content, by
            // descriptor and never through a symlink ([`crate::copy::remove_tree`]). Its
            // path below `dest` was just opened component by component, without symlinks.
            Err(Errno::EISDIR | Errno::EPERM) => {
                self.dirs.retain(|key, _| !(key.starts_with(&parts.join(&b'/')[..])));
                crate::copy::remove_tree(&path)
            }
            Err(errno) => Err(Error::sys("unlinkat", path.display(), errno)),
        }
    }

    /// Sets every directory's mode and mtime, deepest first (a parent without `x` would stop
    /// the walk down to its children otherwise). A directory replaced since is skipped.
    fn set_directories(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, attributes) in dirs.iter().rev() {
            let mode = Mode::from_bits_truncate(attributes.mode);
            let mtime = TimeSpec::new(attributes.mtime, 0);
            let parts: Vec<&[u8]> = if path.is_empty() {
                Vec::new()
            } else {
                path.split(|byte| *byte == b'/').collect()
            };
            let opened;
            let fd = match parts.split_last() {
                None => self.top.as_raw_fd(),
                Some((name, parents)) => {
                    let Ok(parent) = self.resolve(parents, false) else { continue };
                    // O_NOFOLLOW: a symlink that replaced the directory is not followed.
                    match open_dir(parent, name) {
                        Ok(fd) => {
                            opened = fd;
                            opened.as_raw_fd()
                        }
                        Err(_) => continue,
                    }
                }
            };
            let shown = || self.path_of(&parts);
            fchmod(fd, mode).map_err(|errno| Error::sys("fchmod", shown().display(), errno))?;
            futimens(fd, &omit(), &mtime)
                .map_err(|errno| Error::sys("futimens", shown().display(), errno))?;
        }
        Ok(())
    }

    /// The path of an entry, for messages.
    fn path_of(&self, parts: &[&[u8]]) -> PathBuf {
        let mut path = self.dest.to_path_buf();
        for part in parts {
            path.push(OsStr::from_bytes(part));
        }
        path
    }
}

/// "Leave this time as it is" (`man 2 utimensat`: UTIME_OMIT).
fn omit() -> TimeSpec {
    TimeSpec::new(0, libc::UTIME_OMIT)
}

/// `openat(dir, name, O_DIRECTORY | O_NOFOLLOW)`: a directory, never a symlink to one.
fn open_dir(dir: RawFd, name: &[u8]) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(Some(dir), name, flags, Mode::empty())?;
    // SAFETY: `openat` just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where to set an xattr: an open file, or a name in an open directory.
enum XattrAt<'a> {
    Fd(RawFd),
    Name(RawFd, &'a [u8]),
}

/// `fsetxattr`, or `lsetxattr` through the directory's descriptor (`man 2 setxattr`).
fn set_xattr(at: &XattrAt, name: &[u8], value: &[u8]) -> nix::Result<()> {
    let c_name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let (pointer, len) = (value.as_ptr().cast(), value.len());
    let result = match at {
        // SAFETY: `fd` is open, the name is NUL-terminated, `value` readable for `len` bytes.
        XattrAt::Fd(fd) => unsafe { libc::fsetxattr(*fd, c_name.as_ptr(), pointer, len, 0) },
        XattrAt::Name(dir, file) => {
            let path = proc_path(*dir, OsStr::from_bytes(file));
            // SAFETY: both strings are NUL-terminated, `value` readable for `len` bytes.
            unsafe { libc::lsetxattr(path.as_ptr(), c_name.as_ptr(), pointer, len, 0) }
        }
    };
    Errno::result(result).map(drop)
}
