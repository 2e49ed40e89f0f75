//! Deterministic tar archives of a directory: the layer format of container images.
//!
//! An image layer is a tar archive (OCI image-spec, `layer.md`), and an image refers to it by
//! the SHA-256 of its bytes ([`libisolab::digest`]). If archiving the same tree twice gave two
//! different files, every rebuild would make a "new" layer, caches would never hit, and no one
//! could check a published image against its sources. So everything that can vary while the
//! tree's content stays the same is fixed, and everything that *is* content is kept:
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
//! be archived (GNU tar skips them too); they are listed in [`Summary::skipped`]. Extended
//! attributes (file capabilities, SELinux labels) are not recorded.
//!
//! With gzip ([`Compression::Gzip`]), the gzip header is fixed as well (`man 1 gzip`, RFC 1952):
//! no file name, mtime 0, "unknown" OS, and a fixed compression level.
//!
//! Why one file of over 600 lines: the code is some 360 of them; the rest are its tests, which
//! archive the same tree twice (and touched, and re-ordered) to check every row of the table above.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::{Compression as Level, GzBuilder};
use libisolab::digest::{Digest, DigestWriter};
use tar::{EntryType, Header};

use crate::error::{Error, IoResultExt, Result};

/// What went into an archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Entries written (not counting GNU long-name entries).
    pub entries: usize,
    /// Regular files with their content.
    pub files: usize,
    /// Directories.
    pub dirs: usize,
    /// Symbolic links.
    pub symlinks: usize,
    /// Hard-link entries (files already archived under another name).
    pub hard_links: usize,
    /// Character and block devices.
    pub devices: usize,
    /// Named pipes.
    pub fifos: usize,
    /// Bytes of file content.
    pub content_bytes: u64,
    /// Paths that cannot be archived (sockets), relative to the top directory.
    pub skipped: Vec<PathBuf>,
}

/// One filesystem object found by the walk.
struct Found {
    /// The name in the archive: relative, `/`-separated, directories ending with `/`.
    name: Vec<u8>,
    /// Where it is on disk.
    path: PathBuf,
    metadata: Metadata,
}

// ANCHOR: write
/// Writes a deterministic tar of everything under `dir` to `out`, end marker included.
pub fn write<W: Write>(dir: &Path, out: &mut W) -> Result<Summary> {
    write_named(dir, out, Path::new("the archive"))
}

/// [`write`], naming the output `out_name` when writing to it fails.
fn write_named<W: Write>(dir: &Path, out: &mut W, out_name: &Path) -> Result<Summary> {
    let mut found = Vec::new();
    walk(dir, b"", &mut found)?;
    // One global bytewise sort: parents come before children because "a/" is a prefix of "a/b".
    found.sort_by(|a, b| a.name.cmp(&b.name));

    let mut summary = Summary::default();
    let mut builder = tar::Builder::new(Watched { inner: out, failed: false });
    // The first name under which we archived each inode that has more than one name.
    let mut first_names: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for entry in &found {
        let file_type = entry.metadata.file_type();
        if file_type.is_socket() {
            summary.skipped.push(PathBuf::from(std::ffi::OsStr::from_bytes(&entry.name)));
            continue;
        }
        let mut header = Header::new_gnu();
        header.set_mode(entry.metadata.mode() & 0o7777);
        header.set_uid(u64::from(entry.metadata.uid()));
        header.set_gid(u64::from(entry.metadata.gid()));
        header.set_mtime(0);
        header.set_size(0);
        let mut link_name: Option<Vec<u8>> = None;
        let mut content: Option<File> = None;

        let inode = (entry.metadata.dev(), entry.metadata.ino());
        let hard_linked = !file_type.is_dir() && entry.metadata.nlink() > 1;
        if let Some(first) = hard_linked.then(|| first_names.get(&inode)).flatten() {
            header.set_entry_type(EntryType::Link);
            link_name = Some(first.clone());
            summary.hard_links += 1;
        } else {
            if hard_linked {
                first_names.insert(inode, entry.name.clone());
            }
            if file_type.is_dir() {
                header.set_entry_type(EntryType::Directory);
                summary.dirs += 1;
            } else if file_type.is_symlink() {
                header.set_entry_type(EntryType::Symlink);
                let target = fs::read_link(&entry.path).io("readlink", &entry.path)?;
                link_name = Some(target.as_os_str().as_bytes().to_vec());
                summary.symlinks += 1;
            } else if file_type.is_file() {
                header.set_entry_type(EntryType::Regular);
                header.set_size(entry.metadata.len());
                content = Some(File::open(&entry.path).io("open", &entry.path)?);
                summary.files += 1;
                summary.content_bytes += entry.metadata.len();
            } else if file_type.is_char_device() || file_type.is_block_device() {
                let kind =
                    if file_type.is_char_device() { EntryType::Char } else { EntryType::Block };
                header.set_entry_type(kind);
                let rdev = entry.metadata.rdev();
                header.set_device_major(libc::major(rdev)).io("archive", &entry.path)?;
                header.set_device_minor(libc::minor(rdev)).io("archive", &entry.path)?;
                summary.devices += 1;
            } else {
                header.set_entry_type(EntryType::Fifo);
                summary.fifos += 1;
            }
        }

        // An error from the builder comes either from the archive's writer (a full disk, a
        // closed pipe) or from reading the entry (a file that shrank): the writer knows which.
        let blame = |builder: &tar::Builder<Watched<&mut W>>, error, hint: Option<&str>| {
            if builder.get_ref().failed {
                return Error::io("write", out_name, error);
            }
            let error = Error::io("archive", &entry.path, error);
            match hint {
                Some(hint) => error.hint(hint),
                None => error,
            }
        };
        for (kind, name) in [(b'L', Some(&entry.name)), (b'K', link_name.as_ref())] {
            let Some(name) = name else { continue };
            set_name(&mut builder, &mut header, kind, name)
                .map_err(|error| blame(&builder, error, None))?;
        }
        header.set_cksum();
        let size = header.entry_size().map_err(|error| blame(&builder, error, None))?;
        match content {
            Some(file) => builder.append(&header, ExactSize { inner: file, remaining: size }),
            None => builder.append(&header, io::empty()),
        }
        .map_err(|error| blame(&builder, error, Some("did it change while being archived?")))?;
        summary.entries += 1;
    }
    builder.finish().io("write", out_name)?;
    Ok(summary)
}
// ANCHOR_END: write

/// Collects everything under `dir` (depth first; the order is fixed by sorting afterwards).
/// Symlinks are never followed: `symlink_metadata` is `lstat(2)`.
fn walk(dir: &Path, prefix: &[u8], found: &mut Vec<Found>) -> Result<()> {
    for entry in fs::read_dir(dir).io("opendir", dir)? {
        let entry = entry.io("readdir", dir)?;
        let path = entry.path();
        let metadata = fs::symlink_metadata(&path).io("lstat", &path)?;
        let mut name = prefix.to_vec();
        name.extend_from_slice(entry.file_name().as_bytes());
        if metadata.is_dir() {
            name.push(b'/');
            walk(&path, &name, found)?;
        }
        found.push(Found { name, path, metadata });
    }
    Ok(())
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

/// A writer that notes whether its inner writer failed (`man 2 write`: ENOSPC, EPIPE, EIO):
/// [`write_named`] then blames the output, not the entry being archived.
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

/// How [`archive`] stores the tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain `.tar`.
    None,
    /// gzip with a fixed header and level 6 (`.tar.gz`, an OCI `tar+gzip` layer).
    Gzip,
}

/// A written archive and its digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// What went in.
    pub summary: Summary,
    /// SHA-256 of the file as written (compressed, if it is): the blob's digest.
    pub digest: Digest,
    /// SHA-256 of the uncompressed tar: an OCI layer's "diff ID". Equal to `digest` without
    /// compression.
    pub diff_id: Digest,
    /// Size of the file.
    pub size: u64,
}

/// The gzip level [`Compression::Gzip`] uses: gzip's own default. It is fixed because the
/// compressed bytes, hence the digest, depend on it.
pub const GZIP_LEVEL: u32 = 6;

/// Writes a deterministic tar of `dir` to the file `out` and returns its digests.
pub fn archive(dir: &Path, out: &Path, compression: Compression) -> Result<Archive> {
    refuse_archive_inside(dir, out)?;
    let file = File::create(out).io("create", out)?;
    let mut blob = DigestWriter::new(BufWriter::new(file));
    let (blob, summary, diff_id) = match compression {
        // The file is the tar: one digest serves as both.
        Compression::None => {
            let summary = write_named(dir, &mut blob, out)?;
            (blob, summary, None)
        }
        Compression::Gzip => {
            // RFC 1952 header: no FNAME, MTIME 0, OS 255 ("unknown"): nothing of this machine.
            let gzip = GzBuilder::new().mtime(0).operating_system(255);
            let mut tar = DigestWriter::new(gzip.write(blob, Level::new(GZIP_LEVEL)));
            let summary = write_named(dir, &mut tar, out)?;
            let (gzip, diff_id) = tar.finish();
            (gzip.finish().io("write", out)?, summary, Some(diff_id))
        }
    };
    let size = blob.bytes_written();
    let (file, digest) = blob.finish();
    let diff_id = diff_id.unwrap_or(digest);
    file.into_inner()
        .map_err(|error| error.into_error())
        .io("write", out)?
        .sync_all()
        .io("fsync", out)?;
    Ok(Archive { summary, digest, diff_id, size })
}

/// An archive written inside the directory it archives would contain a part of itself.
fn refuse_archive_inside(dir: &Path, out: &Path) -> Result<()> {
    let dir = fs::canonicalize(dir).io("realpath", dir)?;
    if !dir.is_dir() {
        return Err(Error::io("opendir", &dir, io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    let parent = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let parent = fs::canonicalize(parent).io("realpath", parent)?;
    if parent.starts_with(&dir) {
        return Err(Error::Invalid(format!(
            "{} is inside {}: the archive would contain itself, write it somewhere else",
            out.display(),
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::time::{Duration, SystemTime};

    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;

    const LONG: &str = "a-directory-name-that-is-long-enough/to-push-the-whole-path-over-the-\
                        hundred-bytes-of-a-tar-header/file.txt";

    /// A small tree with one of everything a rootfs has.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("usr/bin")).unwrap();
        fs::create_dir(d.join("tmp")).unwrap();
        fs::set_permissions(d.join("tmp"), Permissions::from_mode(0o1777)).unwrap();
        fs::write(d.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
        fs::set_permissions(d.join("usr/bin/tool"), Permissions::from_mode(0o755)).unwrap();
        fs::write(d.join("usr/bin/su"), "pretend setuid binary").unwrap();
        fs::set_permissions(d.join("usr/bin/su"), Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(d.join("usr/bin/tool"), d.join("usr/bin/tool-again")).unwrap();
        symlink("usr/bin", d.join("bin")).unwrap();
        // Absolute and pointing at a host file: must be stored as a link, never followed.
        symlink("/etc/passwd", d.join("passwd-link")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap();
        fs::create_dir_all(d.join(LONG).parent().unwrap()).unwrap();
        fs::write(d.join(LONG), "long").unwrap();
        dir
    }

    fn digest_of(dir: &Path) -> Digest {
        let mut out = DigestWriter::new(Vec::new());
        write(dir, &mut out).unwrap();
        out.finish().1
    }

    fn archive_bytes(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        write(dir, &mut out).unwrap();
        out
    }

    /// Every entry as (name, type, mode, link name, size), read back with the `tar` crate.
    fn listing(bytes: &[u8]) -> Vec<(String, EntryType, u32, Option<String>, u64)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                assert_eq!(header.mtime().unwrap(), 0);
                assert_eq!(header.username().unwrap(), Some(""));
                assert_eq!(header.groupname().unwrap(), Some(""));
                (
                    String::from_utf8(entry.path_bytes().into_owned()).unwrap(),
                    header.entry_type(),
                    header.mode().unwrap(),
                    entry.link_name_bytes().map(|l| String::from_utf8(l.into_owned()).unwrap()),
                    header.size().unwrap(),
                )
            })
            .collect()
    }

    /// Sets every mtime (and atime) under `dir` to `when`, symlinks themselves included.
    fn touch_all(dir: &Path, when: SystemTime) {
        let spec = TimeSpec::from_duration(when.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = fs::symlink_metadata(&path).unwrap();
            if metadata.is_dir() {
                touch_all(&path, when);
            }
            utimensat(None, &path, &spec, &spec, UtimensatFlags::NoFollowSymlink).unwrap();
        }
    }

    #[test]
    fn same_tree_same_digest_even_after_touching_every_file() {
        let dir = tree();
        let first = digest_of(dir.path());
        assert_eq!(digest_of(dir.path()), first, "two runs, one digest");

        touch_all(dir.path(), SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(digest_of(dir.path()), first, "mtimes are not content");
    }

    #[test]
    fn digest_changes_with_content_and_with_mode() {
        let dir = tree();
        let first = digest_of(dir.path());

        fs::write(dir.path().join("usr/bin/su"), "pretend setuid binary!").unwrap();
        fs::set_permissions(dir.path().join("usr/bin/su"), Permissions::from_mode(0o4755)).unwrap();
        let changed_content = digest_of(dir.path());
        assert_ne!(changed_content, first);

        fs::set_permissions(dir.path().join("usr/bin/su"), Permissions::from_mode(0o755)).unwrap();
        assert_ne!(digest_of(dir.path()), changed_content, "dropping set-user-ID is a change");
    }

    #[test]
    fn entries_are_sorted_and_keep_what_matters() {
        let dir = tree();
        let entries = listing(&archive_bytes(dir.path()));
        let names: Vec<&str> = entries.iter().map(|(name, ..)| name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "bytewise order");
        assert_eq!(
            names,
            [
                "a-directory-name-that-is-long-enough/",
                "a-directory-name-that-is-long-enough/to-push-the-whole-path-over-the-\
                 hundred-bytes-of-a-tar-header/",
                LONG,
                "bin",
                "fifo",
                "passwd-link",
                "tmp/",
                "usr/",
                "usr/bin/",
                "usr/bin/su",
                "usr/bin/tool",
                "usr/bin/tool-again",
            ]
        );
        let find = |wanted: &str| entries.iter().find(|(name, ..)| name == wanted).unwrap().clone();

        let (_, kind, mode, _, _) = find("usr/bin/su");
        assert_eq!((kind, mode), (EntryType::Regular, 0o4755), "set-user-ID kept");
        let (_, kind, mode, _, _) = find("tmp/");
        assert_eq!((kind, mode), (EntryType::Directory, 0o1777), "sticky bit kept");

        let (_, kind, _, link, size) = find("passwd-link");
        assert_eq!((kind, link.as_deref(), size), (EntryType::Symlink, Some("/etc/passwd"), 0));
        let (_, kind, _, link, _) = find("bin");
        assert_eq!((kind, link.as_deref()), (EntryType::Symlink, Some("usr/bin")));

        let (_, kind, _, link, size) = find("usr/bin/tool-again");
        assert_eq!((kind, link.as_deref(), size), (EntryType::Link, Some("usr/bin/tool"), 0));
        let (_, kind, _, _, size) = find("usr/bin/tool");
        assert_eq!((kind, size), (EntryType::Regular, 20));

        assert_eq!(find("fifo").1, EntryType::Fifo);
        assert_eq!(find(LONG).4, 4, "the long name's content follows its header");
    }

    #[test]
    fn summary_counts_each_kind() {
        let dir = tree();
        let summary = write(dir.path(), &mut io::sink()).unwrap();
        assert_eq!(
            summary,
            Summary {
                entries: 12,
                files: 3,
                dirs: 5,
                symlinks: 2,
                hard_links: 1,
                devices: 0,
                fifos: 1,
                content_bytes: 20 + 21 + 4,
                skipped: vec![],
            }
        );
    }

    #[test]
    fn device_nodes_are_kept_with_major_and_minor() {
        if !nix::unistd::geteuid().is_root() {
            return crate::skip("device_nodes_are_kept_with_major_and_minor", "mknod needs root");
        }
        let dir = tempfile::tempdir().unwrap();
        let null = dir.path().join("null");
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
        nix::sys::stat::mknod(&null, nix::sys::stat::SFlag::S_IFCHR, mode, libc::makedev(1, 3))
            .unwrap();
        fs::set_permissions(&null, Permissions::from_mode(0o666)).unwrap(); // past the umask
        let bytes = archive_bytes(dir.path());
        let mut archive = tar::Archive::new(&bytes[..]);
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        let header = entry.header();
        assert_eq!(header.entry_type(), EntryType::Char);
        assert_eq!(header.device_major().unwrap(), Some(1));
        assert_eq!(header.device_minor().unwrap(), Some(3));
        assert_eq!(header.mode().unwrap(), 0o666);
    }

    #[test]
    fn gzip_is_deterministic_too() {
        let dir = tree();
        let out = tempfile::tempdir().unwrap();
        let first = archive(dir.path(), &out.path().join("a.tar.gz"), Compression::Gzip).unwrap();
        touch_all(dir.path(), SystemTime::now() + Duration::from_secs(60));
        let second = archive(dir.path(), &out.path().join("b.tar.gz"), Compression::Gzip).unwrap();
        assert_eq!(first.digest, second.digest);
        let bytes = fs::read(out.path().join("a.tar.gz")).unwrap();
        assert_eq!(first.digest, Digest::of(&bytes));
        assert_eq!(first.size, bytes.len() as u64);
        // ID1 ID2 CM FLG, then MTIME (4 bytes), XFL, OS: no name flag, zero time, OS unknown.
        assert_eq!(&bytes[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[9], 255);
        // The diff ID is the digest of the plain tar.
        let plain = archive(dir.path(), &out.path().join("c.tar"), Compression::None).unwrap();
        assert_eq!(first.diff_id, plain.digest);
        assert_eq!(plain.diff_id, plain.digest);
    }

    #[test]
    fn refuses_to_write_the_archive_inside_the_tree() {
        let dir = tree();
        let error = archive(dir.path(), &dir.path().join("usr/layer.tar"), Compression::None)
            .unwrap_err()
            .to_string();
        assert!(error.ends_with("the archive would contain itself, write it somewhere else"));
    }

    /// A writer that is always full, as `/dev/full` is (`man 4 full`).
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Regression: a full output was reported as "archive <file> failed: ENOSPC (did it
    /// change while being archived?)", blaming the tree for the disk.
    #[test]
    fn a_failed_write_blames_the_output_not_the_tree() {
        let dir = tree();
        let error = write(dir.path(), &mut Full).unwrap_err().to_string();
        assert_eq!(error, "write the archive failed: ENOSPC: no space left on device");
        // More than BufWriter's 8 KiB, so that the write fails while a file is being appended.
        fs::write(dir.path().join("big"), vec![7u8; 100_000]).unwrap();
        for compression in [Compression::None, Compression::Gzip] {
            let error = archive(dir.path(), Path::new("/dev/full"), compression).unwrap_err();
            assert_eq!(
                error.to_string(),
                "write /dev/full failed: ENOSPC: no space left on device",
                "{compression:?}"
            );
        }
    }
}
