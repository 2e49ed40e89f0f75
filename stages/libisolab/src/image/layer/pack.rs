//! Packing: a tree, or a container's overlay upper, as a deterministic layer tar.
//!
//! An image refers to a layer by the SHA-256 of its bytes ([`crate::digest`]). If packing the
//! same tree twice gave two different files, every rebuild would make a "new" layer, caches
//! would never hit, and no one could check a published image against its sources. So
//! everything that can vary while the tree's content stays the same is fixed, and everything
//! that *is* content is kept:
//!
//! | field          | we write                         | because                              |
//! |----------------|----------------------------------|--------------------------------------|
//! | order          | entries sorted by path, bytewise | `readdir` order depends on history   |
//! | mtime          | 0 (1970-01-01)                   | `touch` or a checkout changes it     |
//! | uid, gid       | the numbers                      | ownership is content                 |
//! | uname, gname   | empty                            | names are the *host's* `/etc/passwd` |
//! | mode           | all 12 bits, set-user-ID too     | `/usr/bin/su` needs set-user-ID      |
//! | symlinks       | symlink entries, not followed    | a link is content, its target is not |
//! | hard links     | a link entry to the first path   | one file, not two copies             |
//! | devices, fifos | their type, major and minor      | `/dev/null` is content too           |
//! | xattrs         | PAX `SCHILY.xattr.*`, by name    | file capabilities (`ping`) are content |
//!
//! Two ready-made helpers of the `tar` crate would break this: `Builder::append_dir_all` walks
//! in `readdir` order, and `HeaderMode::Deterministic` drops the set-user-ID, set-group-ID and
//! sticky bits. So the walk and the headers are ours.
//!
//! Paths are relative, without a `./` prefix (`bin/`, `bin/busybox`), as in the layers Docker
//! builds; directories end with `/`; the top directory itself is not an entry. Sorting compares
//! these names byte by byte, so `LC_ALL=C tar -tf layer.tar | LC_ALL=C sort -c` succeeds.
//! Names longer than the header's 100 bytes use GNU long-name entries (`././@LongLink`, type
//! `L` for a path, `K` for a link target), which every tar reader understands. Sockets cannot
//! be archived (GNU tar skips them too); they are listed in [`Summary::skipped`].
//!
//! Extended attributes are recorded as GNU tar and Docker record them (`SCHILY.xattr.<name>`
//! in a PAX header), except overlayfs's own (`*.overlay.*`: an upper's bookkeeping, which
//! the layer says with `.wh.` entries instead), `security.selinux` (a label the *host's*
//! policy gave the file, not content) and `system.*` (ACLs, which isolab does not handle).
//! A symlink's xattrs are read too (through its directory's descriptor, never following it).
//!
//! The walk goes by directory descriptors ([`crate::copy`]'s [`DirStack`]), so trees deeper
//! than a path can name are packed too. Each directory's names are sorted with a `/` after
//! the directories' names, so that visiting them depth first gives the global bytewise order
//! of the table: `a-b` comes before `a/` because `-` (0x2d) is less than `/` (0x2f).
//!
//! With gzip ([`Compression::Gzip`]), the gzip header is fixed as well (`man 1 gzip`, RFC 1952):
//! no file name, mtime 0, "unknown" OS, and a fixed compression level.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use flate2::{Compression as Level, GzBuilder};
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use tar::{EntryType, Header};

use super::{is_overlay_xattr, Compression, Packed, Summary, OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use crate::copy::{DirStack, OPEN_DIRS};
use crate::digest::DigestWriter;
use crate::error::{Error, Result};
use crate::idrange::SLOT_SIZE;
use crate::overlay::{OPAQUE_TRUSTED, OPAQUE_USER};

/// The gzip level [`Compression::Gzip`] uses: gzip's own default. It is fixed because the
/// compressed bytes, hence the digest, depend on it.
pub const GZIP_LEVEL: u32 = 6;

/// What the walk packs: a plain tree, or an overlay upper whose notes to overlayfs become
/// the OCI's whiteouts.
#[derive(Clone, Copy)]
enum Source {
    Dir {
        /// Host ids to record as a user namespace's (a rootless import).
        shift: Option<Shift>,
    },
    Upper {
        /// The container's first host uid and gid, subtracted from every owner.
        shift: Option<Shift>,
    },
}

/// Host ids that a layer records as a user namespace's: root inside is host `uid`/`gid`, and
/// the namespace maps `count` ids from there (65,536 for root's containers, one for a user's:
/// their own uid, root inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shift {
    /// Root's host uid.
    pub uid: u32,
    /// Root's host gid.
    pub gid: u32,
    /// How many ids the namespace maps.
    pub count: u32,
}

impl Shift {
    /// A container of root's, whose ids start at `uid`/`gid` on the host.
    pub fn slot(uid: u32, gid: u32) -> Shift {
        Shift { uid, gid, count: SLOT_SIZE }
    }
}

// ANCHOR: pack_dir
/// Writes a deterministic layer of everything under `dir` (a rootfs) to `out`.
pub fn pack_dir(dir: &Path, out: impl Write, compression: Compression) -> Result<Packed> {
    pack(dir, Source::Dir { shift: None }, out, compression, Path::new("the layer"))
}

/// [`pack_dir`] with owners recorded as a user namespace sees them: a user's import, whose
/// files are theirs on the host and root's in their containers.
pub fn pack_dir_shifted(
    dir: &Path,
    shift: Option<Shift>,
    out: impl Write,
    compression: Compression,
) -> Result<Packed> {
    pack(dir, Source::Dir { shift }, out, compression, Path::new("the layer"))
}
// ANCHOR_END: pack_dir

// ANCHOR: pack_upper
/// Writes a container's overlay upper directory as a layer to `out`, deterministic as
/// [`pack_dir`]: a whiteout (character device 0/0) becomes an empty file `.wh.<name>`, an
/// opaque directory (`trusted.overlay.opaque=y`, or `user.overlay.opaque=y` with `userxattr`)
/// the directory and an empty `.wh..wh..opq` in it, and overlayfs's own xattrs are left out.
///
/// `shift` is the container's first host uid and gid, when it ran in a user namespace: its
/// root's files are owned by uid 100000 on the host, say, and the layer must record 0. An
/// owner outside the container's 65,536 ids is refused, naming the path. The upper must not
/// be in use (the container stopped), or the layer is whatever the walk happened to see.
pub fn pack_upper(
    upper: &Path,
    shift: Option<Shift>,
    out: impl Write,
    compression: Compression,
) -> Result<Packed> {
    pack(upper, Source::Upper { shift }, out, compression, Path::new("the layer"))
}
// ANCHOR_END: pack_upper

/// [`pack_dir`] into the file `out` (created, or truncated), flushed to disk (`fsync`) when
/// it returns: what `rootfs-builder tar` does. Refuses to write the file inside `dir`, where
/// it would archive part of itself.
pub fn pack_dir_to_file(dir: &Path, out: &Path, compression: Compression) -> Result<Packed> {
    refuse_archive_inside(dir, out)?;
    let file = File::create(out).map_err(|error| Error::io("create", out, &error))?;
    let packed = pack(dir, Source::Dir { shift: None }, &file, compression, out)?;
    file.sync_all().map_err(|error| Error::io("fsync", out, &error))?;
    Ok(packed)
}

/// The tar goes through a buffer to the diff ID's hasher, then (with gzip) the compressor,
/// then the blob's hasher and `out`: each hasher sees large writes, and each digest the
/// bytes it names.
fn pack(
    top: &Path,
    source: Source,
    out: impl Write,
    compression: Compression,
    out_name: &Path,
) -> Result<Packed> {
    const BUFFER: usize = 256 * 1024;
    let blob = DigestWriter::new(Watched { inner: out, failed: false });
    let written = |error: io::Error| Error::io("write", out_name, &error);
    match compression {
        // The blob is the tar: one digest serves as both.
        Compression::None => {
            let mut tar = BufWriter::with_capacity(BUFFER, blob);
            let summary = write_tar(top, source, &mut tar, out_name)?;
            let blob = tar.into_inner().map_err(|error| written(error.into_error()))?;
            let size = blob.bytes_written();
            let (mut out, digest) = blob.finish();
            out.flush().map_err(written)?;
            Ok(Packed { digest, diff_id: digest, size, summary })
        }
        Compression::Gzip => {
            // RFC 1952 header: no FNAME, MTIME 0, OS 255 ("unknown"): nothing of this machine.
            let gzip = GzBuilder::new().mtime(0).operating_system(255);
            let gzip = gzip.write(blob, Level::new(GZIP_LEVEL));
            let mut tar = BufWriter::with_capacity(BUFFER, DigestWriter::new(gzip));
            let summary = write_tar(top, source, &mut tar, out_name)?;
            let hashed = tar.into_inner().map_err(|error| written(error.into_error()))?;
            let (gzip, diff_id) = hashed.finish();
            let blob = gzip.finish().map_err(written)?;
            let size = blob.bytes_written();
            let (mut out, digest) = blob.finish();
            out.flush().map_err(written)?;
            Ok(Packed { digest, diff_id, size, summary })
        }
    }
}

/// One name of a directory, as the walk will write it.
struct Item {
    /// What it sorts by: the name, and a `/` after a directory's.
    key: Vec<u8>,
    /// What it is.
    kind: ItemKind,
}

enum ItemKind {
    /// A file, directory, link or node on disk, with its `lstat`.
    OnDisk(OsString, FileStat),
    /// A whiteout's `.wh.<name>` (the key says the name).
    Whiteout,
    /// A `.wh..wh..opq` in an opaque directory.
    Opaque,
}

/// Writes the tar of everything under `top` to `out`, end marker included.
fn write_tar<W: Write>(
    top: &Path,
    source: Source,
    out: &mut W,
    out_name: &Path,
) -> Result<Summary> {
    let mut stack = DirStack::open_following(top, OPEN_DIRS)?;
    let mut summary = Summary::default();
    let mut builder = tar::Builder::new(Watched { inner: out, failed: false });
    // The first name under which we archived each inode that has more than one name.
    let mut first_names: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    // Per directory being visited, its items still to write (the next last), and the length
    // of its name in `prefix`.
    let mut todo = vec![items(&mut stack, source)?];
    let mut prefix: Vec<u8> = Vec::new();
    let mut prefix_lengths: Vec<usize> = Vec::new();
    while let Some(level) = todo.last_mut() {
        let Some(item) = level.pop() else {
            todo.pop();
            if todo.is_empty() {
                break;
            }
            stack.leave()?;
            prefix.truncate(prefix_lengths.pop().expect("one length per level"));
            continue;
        };
        let mut name = prefix.clone();
        name.extend_from_slice(&item.key);
        let entry = Entry { name };
        match item.kind {
            // Both are empty marker files, owner 0 and mode 0600 whatever the device's:
            // overlayfs makes whiteouts with the mounter's credentials (and may share one inode
            // among them), so their owner says nothing about the container, and may lie outside
            // its ids.
            ItemKind::Whiteout | ItemKind::Opaque => {
                let shown = || stack.path_of(OsStr::from_bytes(&item.key));
                entry.append(
                    &mut builder,
                    marker_header(),
                    &Extras::default(),
                    out_name,
                    &shown,
                )?;
                if matches!(item.kind, ItemKind::Whiteout) {
                    summary.whiteouts += 1;
                } else {
                    summary.opaques += 1;
                }
            }
            ItemKind::OnDisk(file_name, metadata) => {
                let kind = SFlag::from_bits_truncate(metadata.st_mode & SFlag::S_IFMT.bits());
                if kind == SFlag::S_IFDIR {
                    // Entered first: its xattrs are read through its own descriptor.
                    stack.enter(&file_name)?;
                    let xattrs = read_xattrs(XattrOf::Fd(stack.fd()), &|| stack.path(), source)?;
                    let mut header = owned_header(&metadata, source, &|| stack.path())?;
                    header.set_entry_type(EntryType::Directory);
                    let extras = Extras { xattrs, ..Extras::default() };
                    entry.append(&mut builder, header, &extras, out_name, &|| stack.path())?;
                    summary.dirs += 1;
                    summary.entries += 1;
                    prefix_lengths.push(prefix.len());
                    prefix.extend_from_slice(&item.key);
                    todo.push(items(&mut stack, source)?);
                    continue;
                }
                let path = || stack.path_of(&file_name);
                let mut header = owned_header(&metadata, source, &path)?;
                let mut extras = Extras::default();
                let inode = (metadata.st_dev, metadata.st_ino);
                let hard_linked = metadata.st_nlink > 1;
                if let Some(first) = hard_linked.then(|| first_names.get(&inode)).flatten() {
                    // A second name: the content and xattrs are the first one's.
                    header.set_entry_type(EntryType::Link);
                    extras.link_name = Some(first.clone());
                    summary.hard_links += 1;
                } else {
                    if hard_linked {
                        first_names.insert(inode, entry.name.clone());
                    }
                    match kind {
                        SFlag::S_IFREG => {
                            let file = open_file(stack.fd(), &file_name, &path)?;
                            extras.xattrs =
                                read_xattrs(XattrOf::Fd(file.as_raw_fd()), &path, source)?;
                            header.set_entry_type(EntryType::Regular);
                            header.set_size(metadata.st_size as u64);
                            extras.content = Some(file);
                            summary.files += 1;
                            summary.content_bytes += metadata.st_size as u64;
                        }
                        SFlag::S_IFLNK => {
                            let target = readlinkat(Some(stack.fd()), file_name.as_os_str())
                                .map_err(|errno| {
                                    Error::sys("readlinkat", path().display(), errno)
                                })?;
                            extras.link_name = Some(target.as_bytes().to_vec());
                            extras.xattrs =
                                read_xattrs(XattrOf::Name(stack.fd(), &file_name), &path, source)?;
                            header.set_entry_type(EntryType::Symlink);
                            summary.symlinks += 1;
                        }
                        SFlag::S_IFCHR | SFlag::S_IFBLK => {
                            let kind = if kind == SFlag::S_IFCHR {
                                EntryType::Char
                            } else {
                                EntryType::Block
                            };
                            header.set_entry_type(kind);
                            let rdev = metadata.st_rdev;
                            let set = header
                                .set_device_major(libc::major(rdev))
                                .and_then(|()| header.set_device_minor(libc::minor(rdev)));
                            set.map_err(|error| Error::io("archive", path(), &error))?;
                            extras.xattrs =
                                read_xattrs(XattrOf::Name(stack.fd(), &file_name), &path, source)?;
                            summary.devices += 1;
                        }
                        SFlag::S_IFIFO => {
                            header.set_entry_type(EntryType::Fifo);
                            extras.xattrs =
                                read_xattrs(XattrOf::Name(stack.fd(), &file_name), &path, source)?;
                            summary.fifos += 1;
                        }
                        _ => {
                            // A socket: a listening process's, not content (GNU tar skips
                            // them as well).
                            let relative = PathBuf::from(OsStr::from_bytes(&entry.name));
                            summary.skipped.push(relative);
                            continue;
                        }
                    }
                }
                entry.append(&mut builder, header, &extras, out_name, &path)?;
            }
        }
        summary.entries += 1;
    }
    builder.finish().map_err(|error| Error::io("write", out_name, &error))?;
    Ok(summary)
}

/// The items of the directory the walk is in, sorted so that the last is written first.
fn items(stack: &mut DirStack, source: Source) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for name in stack.names()? {
        // Gone since the directory was read: nothing to pack.
        let Some(metadata) = stack.stat(&name)? else { continue };
        let bytes = name.as_bytes();
        if bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // A file of that name would be read back as a deletion: refuse rather than
            // write a layer that means something else than the tree.
            return Err(Error::Invalid(format!(
                "{}: a name starting with {WHITEOUT_PREFIX} means a deletion in a layer (OCI \
                 image-spec, layer.md), so this tree cannot be packed as one: rename it",
                stack.path_of(&name).display()
            )));
        }
        let whiteout = metadata.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFCHR.bits()
            && metadata.st_rdev == 0;
        if matches!(source, Source::Upper { .. }) && whiteout {
            let mut key = WHITEOUT_PREFIX.as_bytes().to_vec();
            key.extend_from_slice(bytes);
            items.push(Item { key, kind: ItemKind::Whiteout });
            continue;
        }
        let mut key = bytes.to_vec();
        if metadata.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
            key.push(b'/');
        }
        items.push(Item { key, kind: ItemKind::OnDisk(name, metadata) });
    }
    if matches!(source, Source::Upper { .. }) && is_opaque(stack.fd(), &|| stack.path())? {
        items.push(Item { key: OPAQUE_WHITEOUT.as_bytes().to_vec(), kind: ItemKind::Opaque });
    }
    items.sort_by(|a, b| b.key.cmp(&a.key));
    Ok(items)
}

/// A new entry's header: mode, owner (shifted, for an upper), mtime 0, size 0.
fn owned_header(metadata: &FileStat, source: Source, path: &dyn Fn() -> PathBuf) -> Result<Header> {
    let (mut uid, mut gid) = (metadata.st_uid, metadata.st_gid);
    if let Source::Upper { shift: Some(shift) } | Source::Dir { shift: Some(shift) } = source {
        uid = shifted(uid, shift.uid, shift.count, "uid", path)?;
        gid = shifted(gid, shift.gid, shift.count, "gid", path)?;
    }
    let mut header = Header::new_gnu();
    header.set_mode(metadata.st_mode & 0o7777);
    header.set_uid(u64::from(uid));
    header.set_gid(u64::from(gid));
    header.set_mtime(0);
    header.set_size(0);
    Ok(header)
}

/// `id` as the container sees it, whose ids start at `base` on the host: one of its
/// [`SLOT_SIZE`] ids, or refused (a file the host gave the upper that the container cannot
/// own, which its layer cannot say).
fn shifted(id: u32, base: u32, count: u32, what: &str, path: &dyn Fn() -> PathBuf) -> Result<u32> {
    match id.checked_sub(base) {
        Some(inside) if inside < count => Ok(inside),
        _ => Err(Error::Invalid(format!(
            "{}: owner {what} {id} is not one of the container's ids ({base}-{}), so the layer \
             cannot record it",
            path().display(),
            u64::from(base) + u64::from(count) - 1
        ))),
    }
}

/// The header of a `.wh.` marker: an empty regular file, owner 0, mode 0600.
fn marker_header() -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o600);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    header
}

/// What an entry carries besides its header.
#[derive(Default)]
struct Extras {
    /// A symlink's target, or the first name of a hard link.
    link_name: Option<Vec<u8>>,
    /// A regular file's content.
    content: Option<File>,
    /// Extended attributes, sorted by name.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One entry to write: its name in the archive.
struct Entry {
    name: Vec<u8>,
}

impl Entry {
    /// Appends the PAX header (xattrs), the long names and the entry itself.
    fn append<W: Write>(
        &self,
        builder: &mut tar::Builder<Watched<W>>,
        mut header: Header,
        extras: &Extras,
        out_name: &Path,
        shown: &dyn Fn() -> PathBuf,
    ) -> Result<()> {
        // An error from the builder comes either from the archive's writer (a full disk, a
        // closed pipe) or from reading the entry (a file that shrank): the writer knows which.
        let blame = |builder: &tar::Builder<Watched<W>>, error: io::Error, hint: Option<&str>| {
            if builder.get_ref().failed {
                return Error::io("write", out_name, &error);
            }
            let error = Error::io("archive", shown(), &error);
            match hint {
                Some(hint) => error.hint(hint),
                None => error,
            }
        };
        if !extras.xattrs.is_empty() {
            append_pax(builder, &extras.xattrs).map_err(|error| blame(builder, error, None))?;
        }
        for (kind, name) in [(b'L', Some(&self.name)), (b'K', extras.link_name.as_ref())] {
            let Some(name) = name else { continue };
            set_name(builder, &mut header, kind, name)
                .map_err(|error| blame(builder, error, None))?;
        }
        header.set_cksum();
        let size = header.entry_size().map_err(|error| blame(builder, error, None))?;
        match &extras.content {
            Some(file) => builder.append(&header, ExactSize { inner: file, remaining: size }),
            None => builder.append(&header, io::empty()),
        }
        .map_err(|error| blame(builder, error, Some("did it change while being archived?")))
    }
}

/// Puts `name` into the header's name (`kind` `L`) or link-name (`K`) field: as it is when it
/// fits in 100 bytes, else as a GNU long-name entry written just before the header, with the
/// field holding the first 100 bytes (readers that know GNU tar use the long entry).
///
/// The bytes are written unchanged; `Header::set_path` would normalise them (drop `.`
/// components, collapse `//`), and a symlink's target is content that must not change.
fn set_name<W: Write>(
    builder: &mut tar::Builder<W>,
    header: &mut Header,
    kind: u8,
    name: &[u8],
) -> io::Result<()> {
    let old = header.as_old_mut();
    let field: &mut [u8; 100] = if kind == b'L' { &mut old.name } else { &mut old.linkname };
    let shown = name.len().min(field.len());
    field.fill(0);
    field[..shown].copy_from_slice(&name[..shown]);
    if name.len() > field.len() {
        let mut long = Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_uid(0);
        long.set_gid(0);
        long.set_mtime(0);
        // The name and its terminating NUL, as GNU tar writes it.
        long.set_size(name.len() as u64 + 1);
        long.set_entry_type(EntryType::new(kind));
        long.set_cksum();
        builder.append(&long, name.chain(&[0u8][..]))?;
    }
    Ok(())
}

/// Appends a PAX extended header (POSIX `pax`, "pax Extended Header") with one
/// `SCHILY.xattr.<name>=<value>` record per xattr, as GNU tar's `--xattrs` writes them. A
/// record is `<length> <key>=<value>\n`, its length counting its own digits; the value is raw
/// bytes (a file capability is binary). The header's fields are fixed, like every other's.
fn append_pax<W: Write>(
    builder: &mut tar::Builder<W>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> io::Result<()> {
    let mut records = Vec::new();
    for (name, value) in xattrs {
        let body_len = b" SCHILY.xattr.".len() + name.len() + 1 + value.len() + 1;
        // The length includes its own digits: try the digits of the body's length, and one
        // more if adding them carried over (99 + 2 = 101 needs 3).
        let mut total = body_len + body_len.to_string().len();
        if total.to_string().len() != body_len.to_string().len() {
            total = body_len + total.to_string().len();
        }
        records.extend_from_slice(total.to_string().as_bytes());
        records.extend_from_slice(b" SCHILY.xattr.");
        records.extend_from_slice(name);
        records.push(b'=');
        records.extend_from_slice(value);
        records.push(b'\n');
    }
    let mut header = Header::new_ustar();
    header.as_ustar_mut().expect("a ustar header").name[..14].copy_from_slice(b"././@PaxHeader");
    header.set_entry_type(EntryType::XHeader);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(records.len() as u64);
    header.set_cksum();
    builder.append(&header, &records[..])
}

/// Where to read xattrs: an open file or directory, or a name in an open directory (for a
/// symlink, device or fifo, which we do not open).
enum XattrOf<'a> {
    Fd(RawFd),
    Name(RawFd, &'a OsStr),
}

/// The xattrs a layer records of one entry, sorted by name (see the module's documentation
/// for which). For an upper, an overlay xattr that a layer cannot express is refused.
fn read_xattrs(
    of: XattrOf,
    path: &dyn Fn() -> PathBuf,
    source: Source,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match list_xattrs(&of) {
        Ok(names) => names,
        // No xattrs on this filesystem (`man 2 listxattr`).
        Err(Errno::ENOTSUP) => return Ok(Vec::new()),
        Err(errno) => return Err(Error::sys("listxattr", path().display(), errno)),
    };
    let mut xattrs = Vec::new();
    for name in names.split(|byte| *byte == 0).filter(|name| !name.is_empty()) {
        if matches!(source, Source::Upper { .. }) && refused_overlay_xattr(name) {
            return Err(Error::Invalid(format!(
                "{}: has {}, which makes overlayfs take its content from a lower layer; a \
                 layer cannot say that (mount the overlay without redirect_dir and metacopy)",
                path().display(),
                String::from_utf8_lossy(name)
            )));
        }
        if is_overlay_xattr(name) || name == b"security.selinux" || name.starts_with(b"system.") {
            continue;
        }
        match get_xattr(&of, name) {
            Ok(value) => xattrs.push((name.to_vec(), value)),
            // Removed meanwhile, or `trusted.*` that only the host's root may read.
            Err(Errno::ENODATA | Errno::EPERM | Errno::EACCES) => {}
            Err(errno) => {
                let subject = format!("{} of {}", String::from_utf8_lossy(name), path().display());
                return Err(Error::sys("getxattr", subject, errno));
            }
        }
    }
    xattrs.sort();
    Ok(xattrs)
}

/// The overlay xattrs that point into the lowers (`overlayfs.rst`: "Redirect dir",
/// "Metadata only copy up"): the upper's entry is not the whole file or directory.
fn refused_overlay_xattr(name: &[u8]) -> bool {
    [b"redirect".as_slice(), b"metacopy"]
        .iter()
        .any(|suffix| is_overlay_xattr(name) && name.ends_with(suffix))
}

/// The path that reaches a name in an open directory through `/proc/self/fd`, for the
/// `l*xattr` calls that have no `*at` form: the directory is the descriptor we hold (no path
/// is resolved again), and the `l` calls do not follow the last name.
pub(super) fn proc_path(dir: RawFd, name: &OsStr) -> CString {
    let mut path = format!("/proc/self/fd/{dir}/").into_bytes();
    path.extend_from_slice(name.as_bytes());
    CString::new(path).expect("a file name has no NUL")
}

/// The NUL-separated names of `of`'s xattrs (`man 2 listxattr`).
fn list_xattrs(of: &XattrOf) -> std::result::Result<Vec<u8>, Errno> {
    let path = match of {
        XattrOf::Name(dir, name) => Some(proc_path(*dir, name)),
        XattrOf::Fd(_) => None,
    };
    let call = |buffer: &mut [u8]| -> isize {
        let (pointer, len) = (buffer.as_mut_ptr().cast(), buffer.len());
        match (of, &path) {
            // SAFETY: `fd` is open and `buffer` is writable for `len` bytes.
            (XattrOf::Fd(fd), _) => unsafe { libc::flistxattr(*fd, pointer, len) },
            // SAFETY: `path` is NUL-terminated and `buffer` is writable for `len` bytes.
            (_, Some(path)) => unsafe { libc::llistxattr(path.as_ptr(), pointer, len) },
            (XattrOf::Name(..), None) => unreachable!("a path for every name"),
        }
    };
    sized_call(call)
}

/// The value of xattr `name` of `of` (`man 2 getxattr`).
fn get_xattr(of: &XattrOf, name: &[u8]) -> std::result::Result<Vec<u8>, Errno> {
    let c_name = CString::new(name).expect("xattr names have no NUL");
    let path = match of {
        XattrOf::Name(dir, name) => Some(proc_path(*dir, name)),
        XattrOf::Fd(_) => None,
    };
    let call = |buffer: &mut [u8]| -> isize {
        let (pointer, len) = (buffer.as_mut_ptr().cast(), buffer.len());
        match (of, &path) {
            // SAFETY: `fd` is open, the name is NUL-terminated, `buffer` writable for `len`.
            (XattrOf::Fd(fd), _) => unsafe { libc::fgetxattr(*fd, c_name.as_ptr(), pointer, len) },
            // SAFETY: both strings are NUL-terminated, `buffer` writable for `len` bytes.
            (_, Some(path)) => unsafe {
                libc::lgetxattr(path.as_ptr(), c_name.as_ptr(), pointer, len)
            },
            (XattrOf::Name(..), None) => unreachable!("a path for every name"),
        }
    };
    sized_call(call)
}

/// Calls an xattr call that fills a buffer, growing the buffer while it answers ERANGE (the
/// value grew since we asked its size; `man 2 getxattr`).
fn sized_call(mut call: impl FnMut(&mut [u8]) -> isize) -> std::result::Result<Vec<u8>, Errno> {
    let mut buffer = vec![0u8; 256];
    loop {
        let size = call(&mut buffer);
        if size >= 0 {
            buffer.truncate(size as usize);
            return Ok(buffer);
        }
        match Errno::last() {
            Errno::ERANGE => {
                // Asking with an empty buffer answers the size needed.
                let needed = call(&mut []);
                if needed < 0 {
                    return Err(Errno::last());
                }
                buffer = vec![0u8; needed as usize + 1];
            }
            errno => return Err(errno),
        }
    }
}

/// Whether the directory open as `fd` is an opaque one (either overlay xattr set to `y`).
fn is_opaque(fd: RawFd, path: &dyn Fn() -> PathBuf) -> Result<bool> {
    for name in [OPAQUE_TRUSTED, OPAQUE_USER] {
        match get_xattr(&XattrOf::Fd(fd), name.as_bytes()) {
            Ok(value) if value == b"y" => return Ok(true),
            Ok(_) | Err(Errno::ENODATA | Errno::ENOTSUP | Errno::EPERM | Errno::EACCES) => {}
            Err(errno) => {
                return Err(Error::sys(
                    "getxattr",
                    format!("{name} of {}", path().display()),
                    errno,
                ))
            }
        }
    }
    Ok(false)
}

/// Opens a regular file of the walk's directory for reading, never through a symlink.
fn open_file(dir: RawFd, name: &OsStr, path: &dyn Fn() -> PathBuf) -> Result<File> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(Some(dir), name, flags, Mode::empty())
        .map_err(|errno| Error::sys("openat", path().display(), errno))?;
    // SAFETY: `openat` just returned this descriptor, and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A writer that notes whether its inner writer failed (`man 2 write`: ENOSPC, EPIPE, EIO):
/// [`Entry::append`] then blames the output, not the entry being archived.
struct Watched<W> {
    inner: W,
    failed: bool,
}

impl<W: Write> Watched<W> {
    fn note<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if matches!(&result, Err(error) if error.kind() != io::ErrorKind::Interrupted) {
            self.failed = true;
        }
        result
    }
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.inner.write(buf);
        self.note(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.inner.flush();
        self.note(result)
    }
}

/// Reads exactly `remaining` bytes from `inner`, or fails: a file that shrank after we took
/// its size would otherwise leave the archive's blocks out of step with its headers.
struct ExactSize<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let len = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..len])?;
        if read == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// An archive written inside the directory it archives would contain a part of itself.
fn refuse_archive_inside(dir: &Path, out: &Path) -> Result<()> {
    let dir = fs::canonicalize(dir).map_err(|error| Error::io("realpath", dir, &error))?;
    if !dir.is_dir() {
        return Err(Error::io("opendir", &dir, &io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    let parent = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let parent = fs::canonicalize(parent).map_err(|error| Error::io("realpath", parent, &error))?;
    if parent.starts_with(&dir) {
        return Err(Error::Invalid(format!(
            "{} is inside {}: the archive would contain itself, write it somewhere else",
            out.display(),
            dir.display()
        )));
    }
    Ok(())
}
