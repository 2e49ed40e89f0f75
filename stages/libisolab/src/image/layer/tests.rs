//! The layer's tests: determinism and the table of `pack`, round trips through `unpack`, an
//! overlay upper packed and unpacked, and a corpus of hostile tars that must be refused or
//! contained.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::{EntryType, Header};

use super::*;
use crate::digest::Digest;
use crate::Result;

const LONG: &str = "a-directory-name-that-is-long-enough/to-push-the-whole-path-over-the-\
                    hundred-bytes-of-a-tar-header/file.txt";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `lsetxattr(path, name, value)`.
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings, `value` readable for its length.
    let rc = unsafe {
        libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
    };
    assert_eq!(rc, 0, "setxattr {name:?} on {path:?}: {}", io::Error::last_os_error());
}

/// `lgetxattr(path, name)`, `None` if it has none.
fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut value = vec![0u8; 256];
    // SAFETY: NUL-terminated strings, `value` writable for its length.
    let size = unsafe {
        libc::lgetxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len())
    };
    (size >= 0).then(|| value[..size as usize].to_vec())
}

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
    nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    fs::create_dir_all(d.join(LONG).parent().unwrap()).unwrap();
    fs::write(d.join(LONG), "long").unwrap();
    dir
}

/// [`tree`] and more for a round trip: xattrs, a third name, a read-only directory with a
/// file in it, and, as root, owners and a device.
fn rich_tree() -> tempfile::TempDir {
    let dir = tree();
    let d = dir.path();
    set_xattr(&d.join("usr/bin/su"), "user.note", b"\x00binary\xff");
    set_xattr(&d.join("usr"), "user.dir-note", b"dir");
    fs::hard_link(d.join("usr/bin/tool"), d.join("tool-third")).unwrap();
    fs::create_dir(d.join("ro")).unwrap();
    fs::write(d.join("ro/inside"), "in a read-only directory").unwrap();
    fs::set_permissions(d.join("ro"), Permissions::from_mode(0o555)).unwrap();
    fs::write(d.join("sgid"), "").unwrap();
    fs::set_permissions(d.join("sgid"), Permissions::from_mode(0o2710)).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(d.join("usr/bin/su"), Some(1234), Some(5678)).unwrap();
        fs::set_permissions(d.join("usr/bin/su"), Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::lchown(d.join("tmp"), Some(42), Some(43)).unwrap();
        std::os::unix::fs::lchown(d.join("bin"), Some(7), Some(8)).unwrap();
        set_xattr(&d.join("usr/bin/tool"), "trusted.isolab-test", b"t");
        mknod(
            &d.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            libc::makedev(1, 3),
        )
        .unwrap();
        fs::set_permissions(d.join("null"), Permissions::from_mode(0o666)).unwrap();
    }
    dir
}

fn pack_bytes(dir: &Path, compression: Compression) -> (Vec<u8>, Packed) {
    let mut out = Vec::new();
    let packed = pack_dir(dir, &mut out, compression).unwrap();
    (out, packed)
}

fn digest_of(dir: &Path) -> Digest {
    pack_bytes(dir, Compression::None).1.digest
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

/// Every PAX key of every entry, with the entry's name.
fn pax_keys(bytes: &[u8]) -> Vec<(String, String)> {
    let mut archive = tar::Archive::new(bytes);
    let mut keys = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if let Some(extensions) = entry.pax_extensions().unwrap() {
            for extension in extensions {
                keys.push((name.clone(), extension.unwrap().key().unwrap().to_string()));
            }
        }
    }
    keys
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

// ---- pack_dir: determinism and the table ----

#[test]
fn same_tree_same_digest_even_after_touching_every_file() {
    let dir = tree();
    let first = digest_of(dir.path());
    assert_eq!(digest_of(dir.path()), first, "two runs, one digest");

    touch_all(dir.path(), SystemTime::now() + Duration::from_secs(3600));
    assert_eq!(digest_of(dir.path()), first, "mtimes are not content");
}

#[test]
fn digest_changes_with_content_mode_and_xattrs() {
    let dir = tree();
    let first = digest_of(dir.path());

    fs::write(dir.path().join("usr/bin/su"), "pretend setuid binary!").unwrap();
    fs::set_permissions(dir.path().join("usr/bin/su"), Permissions::from_mode(0o4755)).unwrap();
    let changed_content = digest_of(dir.path());
    assert_ne!(changed_content, first);

    fs::set_permissions(dir.path().join("usr/bin/su"), Permissions::from_mode(0o755)).unwrap();
    let changed_mode = digest_of(dir.path());
    assert_ne!(changed_mode, changed_content, "dropping set-user-ID is a change");

    set_xattr(&dir.path().join("usr/bin/su"), "user.x", b"1");
    assert_ne!(digest_of(dir.path()), changed_mode, "an xattr is content");
}

#[test]
fn entries_are_sorted_and_keep_what_matters() {
    let dir = tree();
    let entries = listing(&pack_bytes(dir.path(), Compression::None).0);
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

/// The walk sorts each directory with `/` after its directories' names, so that depth first
/// is the global bytewise order: `a-b` and `a.c` before `a/`.
#[test]
fn order_is_bytewise_over_whole_paths() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("a")).unwrap();
    fs::write(dir.path().join("a/z"), "").unwrap();
    fs::write(dir.path().join("a-b"), "").unwrap();
    fs::write(dir.path().join("a.c"), "").unwrap();
    fs::write(dir.path().join("a0"), "").unwrap();
    let entries = listing(&pack_bytes(dir.path(), Compression::None).0);
    let names: Vec<&str> = entries.iter().map(|(name, ..)| name.as_str()).collect();
    assert_eq!(names, ["a-b", "a.c", "a/", "a/z", "a0"]);
}

#[test]
fn summary_counts_each_kind() {
    let dir = tree();
    let packed = pack_dir(dir.path(), io::sink(), Compression::None).unwrap();
    assert_eq!(
        packed.summary,
        Summary {
            entries: 12,
            files: 3,
            dirs: 5,
            symlinks: 2,
            hard_links: 1,
            devices: 0,
            fifos: 1,
            whiteouts: 0,
            opaques: 0,
            content_bytes: 20 + 21 + 4,
            skipped: vec![],
        }
    );
}

#[test]
fn device_nodes_are_kept_with_major_and_minor() {
    if !is_root() {
        return crate::skip("device_nodes_are_kept_with_major_and_minor", "mknod needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let null = dir.path().join("null");
    mknod(&null, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), libc::makedev(1, 3)).unwrap();
    fs::set_permissions(&null, Permissions::from_mode(0o666)).unwrap(); // past the umask
    let bytes = pack_bytes(dir.path(), Compression::None).0;
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
    let first = pack_dir_to_file(dir.path(), &out.path().join("a.tar.gz"), Compression::Gzip);
    let first = first.unwrap();
    touch_all(dir.path(), SystemTime::now() + Duration::from_secs(60));
    let second = pack_dir_to_file(dir.path(), &out.path().join("b.tar.gz"), Compression::Gzip);
    assert_eq!(first.digest, second.unwrap().digest);
    let bytes = fs::read(out.path().join("a.tar.gz")).unwrap();
    assert_eq!(first.digest, Digest::of(&bytes));
    assert_eq!(first.size, bytes.len() as u64);
    // ID1 ID2 CM FLG, then MTIME (4 bytes), XFL, OS: no name flag, zero time, OS unknown.
    assert_eq!(&bytes[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    assert_eq!(bytes[9], 255);
    // The diff ID is the digest of the plain tar.
    let plain = pack_dir_to_file(dir.path(), &out.path().join("c.tar"), Compression::None);
    let plain = plain.unwrap();
    assert_eq!(first.diff_id, plain.digest);
    assert_eq!(plain.diff_id, plain.digest);
    assert_eq!(plain.size, fs::metadata(out.path().join("c.tar")).unwrap().len());
}

#[test]
fn refuses_to_write_the_archive_inside_the_tree() {
    let dir = tree();
    let inside = dir.path().join("usr/layer.tar");
    let error = pack_dir_to_file(dir.path(), &inside, Compression::None).unwrap_err();
    assert!(error
        .to_string()
        .ends_with("the archive would contain itself, write it somewhere else"));
}

/// A name that a layer reads as a deletion cannot be packed as a file.
#[test]
fn refuses_a_file_named_like_a_whiteout() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("etc")).unwrap();
    fs::write(dir.path().join("etc/.wh.motd"), "").unwrap();
    let error = pack_dir(dir.path(), io::sink(), Compression::None).unwrap_err().to_string();
    let expected = format!(
        "{}: a name starting with .wh. means a deletion",
        dir.path().join("etc/.wh.motd").display()
    );
    assert!(error.starts_with(&expected), "{error}");
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
    // More than the 256 KiB buffer, so that the write fails while a file is being appended.
    fs::write(dir.path().join("big"), vec![7u8; 600_000]).unwrap();
    for compression in [Compression::None, Compression::Gzip] {
        let error = pack_dir(dir.path(), Full, compression).unwrap_err().to_string();
        assert_eq!(error, "write the layer failed: ENOSPC: no space left on device");
        let error = pack_dir_to_file(dir.path(), Path::new("/dev/full"), compression).unwrap_err();
        assert_eq!(
            error.to_string(),
            "write /dev/full failed: ENOSPC: no space left on device",
            "{compression:?}"
        );
    }
}

// ---- round trips ----

/// What a tree holds, path by path: kind, mode, owner, content (or target, or device
/// number), xattrs (overlay's own aside), and the first path of its inode (hard links).
fn describe(top: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(
        top: &Path,
        dir: &Path,
        out: &mut BTreeMap<PathBuf, String>,
        inodes: &mut BTreeMap<u64, PathBuf>,
    ) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for path in names {
            let meta = fs::symlink_metadata(&path).unwrap();
            let relative = path.strip_prefix(top).unwrap().to_path_buf();
            let kind = meta.file_type();
            let what = if kind.is_dir() {
                "dir".to_string()
            } else if kind.is_symlink() {
                format!("symlink -> {}", fs::read_link(&path).unwrap().display())
            } else if kind.is_file() {
                format!("file {:?}", String::from_utf8_lossy(&fs::read(&path).unwrap()))
            } else if kind.is_char_device() {
                format!("char {}/{}", libc::major(meta.rdev()), libc::minor(meta.rdev()))
            } else if kind.is_fifo() {
                "fifo".to_string()
            } else {
                "other".to_string()
            };
            let first = if kind.is_dir() {
                relative.clone()
            } else {
                inodes.entry(meta.ino()).or_insert_with(|| relative.clone()).clone()
            };
            let mut xattrs = Vec::new();
            for name in [
                "user.note",
                "user.dir-note",
                "trusted.isolab-test",
                "trusted.overlay.opaque",
                "user.overlay.opaque",
            ] {
                if let Some(value) = get_xattr(&path, name) {
                    xattrs.push(format!("{name}={value:?}"));
                }
            }
            let mode = if kind.is_symlink() { 0 } else { meta.mode() & 0o7777 };
            out.insert(
                relative,
                format!(
                    "{what} mode {mode:o} owner {}:{} first {} xattrs {xattrs:?}",
                    meta.uid(),
                    meta.gid(),
                    first.display()
                ),
            );
            if kind.is_dir() {
                walk(top, &path, out, inodes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(top, top, &mut out, &mut BTreeMap::new());
    out
}

/// What a root unpacks with, or a user without privileges.
fn options() -> UnpackOptions {
    if is_root() {
        UnpackOptions::default()
    } else {
        UnpackOptions::rootless()
    }
}

/// Unpacks `bytes` into a new `dest` inside a new tempdir (with a sibling `outside/`).
fn unpack_new(bytes: &[u8], options: &UnpackOptions) -> (tempfile::TempDir, Result<Unpacked>) {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("dest")).unwrap();
    fs::create_dir(tmp.path().join("outside")).unwrap();
    fs::write(tmp.path().join("outside/f"), "keep").unwrap();
    let result = unpack(bytes, &tmp.path().join("dest"), options);
    (tmp, result)
}

#[test]
fn round_trip_gives_the_same_tree_and_the_same_diff_id() {
    let dir = rich_tree();
    for compression in [Compression::None, Compression::Gzip] {
        let (bytes, packed) = pack_bytes(dir.path(), compression);
        let (tmp, unpacked) = unpack_new(&bytes, &options());
        let unpacked = unpacked.unwrap();
        let dest = tmp.path().join("dest");
        assert_eq!(unpacked.diff_id, packed.diff_id, "{compression:?}");
        assert_eq!(unpacked.entries, packed.summary.entries);
        assert_eq!(unpacked.bytes, packed.summary.content_bytes);
        assert_eq!(unpacked.skipped, Vec::<String>::new());
        assert_eq!(describe(&dest), describe(dir.path()), "{compression:?}");
        // Packed again, the unpacked tree is the same layer.
        assert_eq!(pack_bytes(&dest, compression).1.digest, packed.digest);
        // Every mtime is the tar's: 0 (directories' set last, after their entries).
        for path in [dest.join("usr"), dest.join("usr/bin/su"), dest.join("ro"), dest.join("fifo")]
        {
            assert_eq!(fs::symlink_metadata(&path).unwrap().mtime(), 0, "{}", path.display());
        }
        assert_eq!(fs::symlink_metadata(dest.join("bin")).unwrap().mtime(), 0);
    }
}

/// A layer made by GNU tar (`./` names, a `./` entry for the top, PAX headers) unpacks, and
/// its diff ID is the digest of the whole stream, end blocks and padding to 10 KiB included.
#[test]
fn a_gnu_tar_layer_unpacks_with_its_whole_digest() {
    let dir = tree();
    let out = tempfile::tempdir().unwrap();
    let layer = out.path().join("layer.tar");
    let status = Command::new("tar")
        .args(["--format=posix", "--numeric-owner", "-C"])
        .arg(dir.path())
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = fs::read(&layer).unwrap();
    assert_eq!(bytes.len() % 10240, 0, "GNU tar pads to its record size");
    let (tmp, unpacked) = unpack_new(&bytes, &options());
    assert_eq!(unpacked.unwrap().diff_id, Digest::of(&bytes));
    let mut expected = describe(dir.path());
    let mut got = describe(&tmp.path().join("dest"));
    // GNU tar's mtimes are the files' own; compare the rest.
    for map in [&mut expected, &mut got] {
        map.retain(|path, _| !path.as_os_str().is_empty());
    }
    assert_eq!(got, expected);
}

/// Later entries replace earlier ones of the same path; a directory over a directory merges
/// (its later mode wins); a file replaces a directory with content.
#[test]
fn later_entries_replace_earlier_ones() {
    let bytes = raw_tar(&[
        Raw::dir("d/", 0o700),
        Raw::file("d/f", b"first"),
        Raw::file("x", b"first x"),
        Raw::dir("d/", 0o751),
        Raw::file("d/g", b"second"),
        Raw::file("x", b"second x"),
        Raw::dir("gone/", 0o755),
        Raw::file("gone/inner", b"in"),
        Raw::file("gone", b"now a file"),
        Raw::link("x-again", "x"),
    ]);
    let (tmp, unpacked) = unpack_new(&bytes, &options());
    unpacked.unwrap();
    let dest = tmp.path().join("dest");
    assert_eq!(fs::read(dest.join("d/f")).unwrap(), b"first");
    assert_eq!(fs::read(dest.join("d/g")).unwrap(), b"second");
    assert_eq!(fs::metadata(dest.join("d")).unwrap().mode() & 0o7777, 0o751);
    assert_eq!(fs::read(dest.join("x")).unwrap(), b"second x");
    assert_eq!(fs::read(dest.join("gone")).unwrap(), b"now a file");
    assert_eq!(
        fs::metadata(dest.join("x-again")).unwrap().ino(),
        fs::metadata(dest.join("x")).unwrap().ino()
    );
}

#[test]
fn refuses_a_dest_that_is_not_empty_and_zstd() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("f"), "").unwrap();
    let error = unpack(&b""[..], tmp.path(), &options()).unwrap_err().to_string();
    assert!(
        error.ends_with("is not empty: a layer is unpacked into an empty directory"),
        "{error}"
    );
    let (_tmp, result) = unpack_new(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0], &options());
    let error = result.unwrap_err().to_string();
    assert!(error.starts_with("the layer is compressed with zstd"), "{error}");
}

// ---- overlay uppers ----

/// A hand-made upper: what overlayfs writes (a 0/0 whiteout, an opaque directory in each of
/// the two xattr namespaces, its bookkeeping xattrs) beside ordinary changes.
fn hand_made_upper() -> tempfile::TempDir {
    let upper = tempfile::tempdir().unwrap();
    let u = upper.path();
    fs::create_dir_all(u.join("etc")).unwrap();
    fs::create_dir_all(u.join("var/cache")).unwrap();
    fs::write(u.join("etc/new"), "added").unwrap();
    fs::write(u.join("var/cache/kept"), "kept").unwrap();
    mknod(&u.join("motd"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
    mknod(&u.join("etc/gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
    set_xattr(&u.join("etc"), "trusted.overlay.opaque", b"y");
    set_xattr(&u.join("var/cache"), "user.overlay.opaque", b"y");
    set_xattr(&u.join("var"), "trusted.overlay.impure", b"y");
    set_xattr(&u.join("var/cache/kept"), "trusted.overlay.origin", b"\x00\x01");
    set_xattr(&u.join("var/cache/kept"), "user.note", b"kept");
    upper
}

#[test]
fn an_upper_packs_whiteouts_and_opaque_dirs_the_oci_way_and_unpacks_overlays_way() {
    if !is_root() {
        let why = "the whiteouts' mknod and trusted xattrs need root";
        return crate::skip(
            "an_upper_packs_whiteouts_and_opaque_dirs_the_oci_way_and_unpacks_overlays_way",
            why,
        );
    }
    let upper = hand_made_upper();
    let mut bytes = Vec::new();
    let packed = pack_upper(upper.path(), None, &mut bytes, Compression::Gzip).unwrap();
    assert_eq!((packed.summary.whiteouts, packed.summary.opaques), (2, 2));
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_end_into(&mut plain);
    let names: Vec<(String, EntryType, u64)> =
        listing(&plain).into_iter().map(|(name, kind, _, _, size)| (name, kind, size)).collect();
    let regular = EntryType::Regular;
    let expected = [
        (".wh.motd", regular, 0),
        ("etc/", EntryType::Directory, 0),
        ("etc/.wh..wh..opq", regular, 0),
        ("etc/.wh.gone", regular, 0),
        ("etc/new", regular, 5),
        ("var/", EntryType::Directory, 0),
        ("var/cache/", EntryType::Directory, 0),
        ("var/cache/.wh..wh..opq", regular, 0),
        ("var/cache/kept", regular, 4),
    ];
    let expected: Vec<(String, EntryType, u64)> =
        expected.into_iter().map(|(name, kind, size)| (name.to_string(), kind, size)).collect();
    assert_eq!(names, expected);
    let keys = pax_keys(&plain);
    assert_eq!(keys, [("var/cache/kept".to_string(), "SCHILY.xattr.user.note".to_string())]);
    // Twice: one digest.
    let again = pack_upper(upper.path(), None, io::sink(), Compression::Gzip).unwrap();
    assert_eq!(again.digest, packed.digest);

    for prefixes in [&["trusted.overlay."], &["user.overlay."]] {
        let prefix = prefixes[0];
        let options = UnpackOptions { xattr_prefixes: prefixes, ..UnpackOptions::default() };
        let (tmp, unpacked) = unpack_new(&bytes, &options);
        assert_eq!(unpacked.unwrap().diff_id, packed.diff_id);
        let dest = tmp.path().join("dest");
        for whiteout in ["motd", "etc/gone"] {
            let meta = fs::symlink_metadata(dest.join(whiteout)).unwrap();
            assert!(meta.file_type().is_char_device() && meta.rdev() == 0, "{whiteout}");
        }
        let opaque = format!("{prefix}opaque");
        assert_eq!(get_xattr(&dest.join("etc"), &opaque).as_deref(), Some(&b"y"[..]));
        assert_eq!(get_xattr(&dest.join("var/cache"), &opaque).as_deref(), Some(&b"y"[..]));
        assert_eq!(get_xattr(&dest.join("var"), &opaque), None);
        assert!(!dest.join("etc/.wh..wh..opq").exists());
        assert_eq!(
            get_xattr(&dest.join("var/cache/kept"), "user.note").as_deref(),
            Some(&b"kept"[..])
        );
        assert_eq!(get_xattr(&dest.join("var/cache/kept"), "trusted.overlay.origin"), None);
    }
}

/// Reads all of a decoder into `out` (a helper that keeps the test's lines short).
trait ReadAll {
    fn read_to_end_into(self, out: &mut Vec<u8>);
}

impl<R: io::Read> ReadAll for R {
    fn read_to_end_into(mut self, out: &mut Vec<u8>) {
        self.read_to_end(out).unwrap();
    }
}

/// The real thing: an overlay mounted in a private mount namespace of a child process
/// (`unshare -m`), changed through the mount, unmounted; its upper packed.
#[test]
fn a_real_overlay_upper_becomes_a_layer() {
    if !is_root() {
        return crate::skip(
            "a_real_overlay_upper_becomes_a_layer",
            "mounting an overlay needs root",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for dir in ["lower/dir/sub", "upper", "work", "merged"] {
        fs::create_dir_all(t.join(dir)).unwrap();
    }
    fs::write(t.join("lower/gone"), "deleted in the container").unwrap();
    fs::write(t.join("lower/dir/sub/old"), "hidden by the opaque dir").unwrap();
    fs::write(t.join("lower/changed"), "before").unwrap();
    let script =
        "set -e; mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=work merged; \
                  rm merged/gone; rm -r merged/dir; mkdir merged/dir; echo new > merged/dir/new; \
                  echo after > merged/changed; umount merged";
    let output = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .current_dir(t)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let mut bytes = Vec::new();
    let packed = pack_upper(&t.join("upper"), None, &mut bytes, Compression::None).unwrap();
    let names: Vec<String> = listing(&bytes).into_iter().map(|(name, ..)| name).collect();
    assert_eq!(names, [".wh.gone", "changed", "dir/", "dir/.wh..wh..opq", "dir/new"]);
    assert!(
        pax_keys(&bytes).iter().all(|(_, key)| !key.contains("overlay")),
        "{:?}",
        pax_keys(&bytes)
    );

    // Unpacked and stacked over the lower again, the layer shows what the container saw.
    let layer = t.join("layer");
    fs::create_dir(&layer).unwrap();
    assert_eq!(
        unpack(&bytes[..], &layer, &UnpackOptions::default()).unwrap().diff_id,
        packed.diff_id
    );
    let script = "set -e; mount -t overlay overlay -o lowerdir=layer:lower merged; \
                  find merged | sort; cat merged/changed merged/dir/new; umount merged";
    let output = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .current_dir(t)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "merged\nmerged/changed\nmerged/dir\nmerged/dir/new\nafter\nnew\n"
    );
}

#[test]
fn shift_records_container_ids_and_refuses_others() {
    if !is_root() {
        return crate::skip("shift_records_container_ids_and_refuses_others", "chown needs root");
    }
    let upper = tempfile::tempdir().unwrap();
    let u = upper.path();
    fs::create_dir(u.join("home")).unwrap();
    fs::write(u.join("home/file"), "x").unwrap();
    std::os::unix::fs::lchown(u.join("home"), Some(100_000), Some(100_000)).unwrap();
    std::os::unix::fs::lchown(u.join("home/file"), Some(101_000), Some(100_005)).unwrap();
    // The whiteout is the host root's (overlayfs makes it as the mounter): not refused.
    mknod(&u.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
    let mut bytes = Vec::new();
    pack_upper(u, Some(Shift::slot(100_000, 100_000)), &mut bytes, Compression::None).unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let owners: Vec<(String, u64, u64)> = archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let header = entry.header();
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            (name, header.uid().unwrap(), header.gid().unwrap())
        })
        .collect();
    assert_eq!(
        owners,
        [(".wh.gone".into(), 0, 0), ("home/".into(), 0, 0), ("home/file".into(), 1000, 5)]
    );

    std::os::unix::fs::lchown(u.join("home/file"), Some(7), None).unwrap();
    let error = pack_upper(u, Some(Shift::slot(100_000, 100_000)), io::sink(), Compression::None)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: owner uid 7 is not one of the container's ids (100000-165535), so the layer \
             cannot record it",
            u.join("home/file").display()
        )
    );
    std::os::unix::fs::lchown(u.join("home/file"), Some(165_536), None).unwrap();
    assert!(
        pack_upper(u, Some(Shift::slot(100_000, 100_000)), io::sink(), Compression::None).is_err()
    );
}

/// A directory renamed with overlayfs's `redirect_dir` takes its content from a lower: the
/// upper alone cannot say it, so packing refuses.
#[test]
fn an_upper_with_a_redirect_is_refused() {
    if !is_root() {
        return crate::skip("an_upper_with_a_redirect_is_refused", "trusted xattrs need root");
    }
    let upper = tempfile::tempdir().unwrap();
    fs::create_dir(upper.path().join("moved")).unwrap();
    set_xattr(&upper.path().join("moved"), "trusted.overlay.redirect", b"/old");
    let error = pack_upper(upper.path(), None, io::sink(), Compression::None).unwrap_err();
    assert!(error.to_string().contains("has trusted.overlay.redirect"), "{error}");
}

// ---- the hostile corpus ----

/// One entry of a hand-written tar: any name, any link name, any declared size.
struct Raw {
    name: Vec<u8>,
    kind: EntryType,
    mode: u32,
    link: Option<Vec<u8>>,
    data: Vec<u8>,
    declared: Option<u64>,
    device: (u32, u32),
}

impl Raw {
    fn new(name: &str, kind: EntryType) -> Raw {
        Raw {
            name: name.into(),
            kind,
            mode: 0o644,
            link: None,
            data: Vec::new(),
            declared: None,
            device: (0, 0),
        }
    }
    fn file(name: &str, data: &[u8]) -> Raw {
        Raw { data: data.to_vec(), ..Raw::new(name, EntryType::Regular) }
    }
    fn dir(name: &str, mode: u32) -> Raw {
        Raw { mode, ..Raw::new(name, EntryType::Directory) }
    }
    fn symlink(name: &str, target: &str) -> Raw {
        Raw { link: Some(target.into()), ..Raw::new(name, EntryType::Symlink) }
    }
    fn link(name: &str, target: &str) -> Raw {
        Raw { link: Some(target.into()), ..Raw::new(name, EntryType::Link) }
    }
}

/// A tar of `entries`, names written raw into the header (`Header::set_path` refuses `..`),
/// with GNU long-name entries for longer ones, and the end blocks unless a declared size
/// cuts the stream short.
fn raw_tar(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut append = |header: &Header, data: &[u8]| {
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    };
    for entry in entries {
        for (kind, name) in [(b'L', Some(&entry.name)), (b'K', entry.link.as_ref())] {
            let Some(name) = name else { continue };
            if name.len() > 100 {
                let mut long = Header::new_gnu();
                long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
                long.set_size(name.len() as u64);
                long.set_entry_type(EntryType::new(kind));
                long.set_cksum();
                append(&long, name);
            }
        }
        let mut header = Header::new_gnu();
        let old = header.as_old_mut();
        let shown = entry.name.len().min(100);
        old.name[..shown].copy_from_slice(&entry.name[..shown]);
        if let Some(link) = &entry.link {
            let shown = link.len().min(100);
            old.linkname[..shown].copy_from_slice(&link[..shown]);
        }
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(entry.declared.unwrap_or(entry.data.len() as u64));
        if matches!(entry.kind, EntryType::Char | EntryType::Block) {
            header.set_device_major(entry.device.0).unwrap();
            header.set_device_minor(entry.device.1).unwrap();
        }
        header.set_cksum();
        append(&header, &entry.data);
    }
    if entries.iter().all(|entry| entry.declared.is_none()) {
        out.extend_from_slice(&[0; 1024]);
    }
    out
}

/// Everything in the tempdir but `dest`, and everything a hostile tar names outside it.
fn outside_state(tmp: &Path, extra: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    let mut state = describe(tmp);
    state.retain(|path, _| !path.starts_with("dest/") && path != Path::new("dest"));
    state.insert(
        "dest (itself)".into(),
        format!("{:?}", fs::symlink_metadata(tmp.join("dest")).map(|m| (m.mode(), m.is_dir()))),
    );
    for path in extra {
        state.insert(path.clone(), format!("{:?}", fs::symlink_metadata(path).map(|m| m.mode())));
    }
    state
}

/// Unpacks `entries` (written by `make`, which gets the tempdir's path) and checks that
/// nothing outside `dest` changed; returns what unpack said.
fn hostile(make: impl Fn(&Path) -> Vec<Raw>, options: &UnpackOptions) -> Result<Unpacked> {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fs::create_dir(t.join("dest")).unwrap();
    fs::create_dir(t.join("outside")).unwrap();
    fs::write(t.join("outside/f"), "keep").unwrap();
    let escape = PathBuf::from(format!("/tmp/isolab-layer-escape-{}", std::process::id()));
    let watched = [escape.clone(), PathBuf::from("/etc/isolab-escape")];
    let before = outside_state(t, &watched);
    let bytes = raw_tar(&make(t));
    let result = unpack(&bytes[..], &t.join("dest"), options);
    assert_eq!(outside_state(t, &watched), before, "something outside dest changed");
    assert_eq!(fs::read(t.join("outside/f")).unwrap(), b"keep");
    result
}

/// Asserts a refusal whose message contains `words`.
fn refused(result: Result<Unpacked>, words: &str) {
    match result {
        Ok(unpacked) => panic!("not refused: {unpacked:?}"),
        Err(error) => assert!(error.to_string().contains(words), "{error} (wanted: {words})"),
    }
}

#[test]
fn hostile_names_are_refused() {
    let options = UnpackOptions::rootless();
    refused(
        hostile(|_| vec![Raw::file("../escape", b"x")], &options),
        "layer entry ../escape: a `..` component",
    );
    refused(
        hostile(|t| vec![Raw::file(&format!("{}/outside/abs", t.display()), b"x")], &options),
        "an absolute name",
    );
    refused(hostile(|_| vec![Raw::file("/etc/isolab-escape", b"x")], &options), "an absolute name");
    refused(hostile(|_| vec![Raw::file("a/../../x", b"x")], &options), "a `..` component");
    refused(
        hostile(|_| vec![Raw::dir("a/", 0o755), Raw::file("a/../../x", b"x")], &options),
        "`..`",
    );
    // The same, past a header's 100 bytes, in a GNU long name.
    let long = format!("{}/../../../x", "d/".repeat(60));
    refused(hostile(|_| vec![Raw::file(&long, b"x")], &options), "a `..` component");
}

#[test]
fn hostile_symlinks_are_never_followed() {
    let options = UnpackOptions::rootless();
    let escape = format!("link/tmp/isolab-layer-escape-{}", std::process::id());
    refused(
        hostile(|_| vec![Raw::symlink("link", "/"), Raw::file(&escape, b"x")], &options),
        "link is not a directory (a symlink or a file)",
    );
    refused(
        hostile(
            |_| vec![Raw::symlink("link", "/"), Raw::file("link/etc/isolab-escape", b"x")],
            &options,
        ),
        "is not a directory",
    );
    refused(
        hostile(
            |t| {
                vec![
                    Raw::symlink("link", &t.join("outside").to_string_lossy()),
                    Raw::file("link/f", b"x"),
                ]
            },
            &options,
        ),
        "is not a directory",
    );
    refused(
        hostile(|_| vec![Raw::symlink("link", ".."), Raw::file("link/x", b"x")], &options),
        "is not a directory",
    );
    refused(
        hostile(|_| vec![Raw::symlink(".", "..")], &options),
        "only a directory may name the layer's top",
    );
    refused(
        hostile(|_| vec![Raw::dir("a/", 0o755), Raw::symlink("a/.", "/")], &options),
        "only a directory may end in `.`",
    );
    // A directory with content replaced by a symlink: its content goes (inside dest), and
    // nothing is then written through the symlink.
    refused(
        hostile(
            |t| {
                vec![
                    Raw::dir("d/", 0o755),
                    Raw::file("d/f", b"inside"),
                    Raw::symlink("d", &t.join("outside").to_string_lossy()),
                    Raw::file("d/g", b"x"),
                ]
            },
            &options,
        ),
        "layer entry d/g: d is not a directory",
    );
    let replaced = hostile(
        |_| vec![Raw::dir("d/", 0o755), Raw::file("d/f", b"inside"), Raw::symlink("d", "..")],
        &options,
    );
    assert_eq!(replaced.unwrap().entries, 3);
}

#[test]
fn hostile_hard_links_are_refused() {
    let options = UnpackOptions::rootless();
    refused(
        hostile(|_| vec![Raw::link("passwd", "/etc/passwd")], &options),
        "links to /etc/passwd: an absolute name",
    );
    refused(hostile(|_| vec![Raw::link("f", "../outside/f")], &options), "a `..` component");
    refused(
        hostile(
            |t| {
                vec![Raw::symlink("s", &t.join("outside").to_string_lossy()), Raw::link("h", "s/f")]
            },
            &options,
        ),
        "links to s/f, but s is not a directory",
    );
    refused(
        hostile(|_| vec![Raw::link("h", "not-yet"), Raw::file("not-yet", b"x")], &options),
        "which is not in the layer",
    );
    // A link to a symlink is a second name of the symlink, not of its target.
    let linked = hostile(|_| vec![Raw::symlink("s", "/etc/passwd"), Raw::link("h", "s")], &options);
    assert_eq!(linked.unwrap().entries, 2);
}

#[test]
fn hostile_whiteouts_are_refused() {
    let options = UnpackOptions::rootless();
    refused(hostile(|_| vec![Raw::file(".wh..", b"")], &options), "a whiteout must name a file");
    refused(hostile(|_| vec![Raw::file(".wh.", b"")], &options), "a whiteout must name a file");
    refused(
        hostile(|_| vec![Raw::dir("a/", 0o755), Raw::file("a/.wh...", b"")], &options),
        "a whiteout must name a file",
    );
    refused(hostile(|_| vec![Raw::file("../.wh.x", b"")], &options), "a `..` component");
}

#[test]
fn a_short_body_and_devices_are_refused_or_skipped() {
    let options = UnpackOptions::rootless();
    let huge = |_: &Path| vec![Raw { declared: Some(1 << 40), ..Raw::file("big", b"short") }];
    refused(hostile(huge, &options), "big");
    let node = |_: &Path| vec![Raw { device: (1, 3), ..Raw::new("null", EntryType::Char) }];
    let unpacked = hostile(node, &options).unwrap();
    assert_eq!(unpacked.entries, 0);
    assert_eq!(unpacked.skipped, ["null: character device 1/3 not made: devices are not allowed"]);
    // Overlay's own xattrs are not taken from a tar.
    let tmp = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_pax_extensions([("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..])]).unwrap();
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Directory);
    header.set_path("d/").unwrap();
    header.set_mode(0o755);
    header.set_size(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    builder.append(&header, io::empty()).unwrap();
    let bytes = builder.into_inner().unwrap();
    let unpacked = unpack(&bytes[..], tmp.path(), &options).unwrap();
    assert_eq!(get_xattr(&tmp.path().join("d"), "trusted.overlay.opaque"), None);
    assert_eq!(unpacked.skipped.len(), 1, "{:?}", unpacked.skipped);
}

/// Without CAP_MKNOD the whiteout's device cannot be made: refused, naming the entry. In a
/// child that drops the capability (the runner keeps its own).
#[test]
fn a_whiteout_that_cannot_be_made_is_refused_with_the_entry_named() {
    let bytes = raw_tar(&[Raw::file("etc/.wh.motd", b"")]);
    let tmp = tempfile::tempdir().unwrap();
    let nobody = nix::unistd::Uid::from_raw(65534);
    if is_root() {
        std::os::unix::fs::lchown(tmp.path(), Some(65534), Some(65534)).unwrap();
    }
    let found = crate::copy::tests::in_child(|| {
        // As a user without CAP_MKNOD (the child only: the runner stays root).
        if is_root() {
            nix::unistd::setresgid(65534.into(), 65534.into(), 65534.into())
                .map_err(|e| e.to_string())?;
            nix::unistd::setresuid(nobody, nobody, nobody).map_err(|e| e.to_string())?;
        }
        let mut result = unpack(&bytes[..], tmp.path(), &UnpackOptions::rootless());
        if let Ok(unpacked) = &result {
            // This kernel lets anyone make a 0/0 device (Linux 5.8+): nothing to refuse.
            let meta =
                fs::symlink_metadata(tmp.path().join("etc/motd")).map_err(|e| e.to_string())?;
            if meta.file_type().is_char_device() && meta.rdev() == 0 && unpacked.entries == 1 {
                return Ok(());
            }
            result = Err(crate::Error::Invalid(format!("{unpacked:?}")));
        }
        let error = result.unwrap_err().to_string();
        if error.contains("layer entry etc/.wh.motd deletes motd") {
            Ok(())
        } else {
            Err(error)
        }
    });
    assert_eq!(found, Ok(()));
}

/// Unpacking a layer of a real tree against GNU `tar -xzf` of the same layer, best of three
/// each, taking turns. Another tree: `ISOLAB_LAYER_BENCH=/usr/lib/gcc cargo test --release -p
/// libisolab --lib unpack_keeps_up -- --nocapture` (`ISOLAB_LAYER_BENCH_TMP=/dev/shm` to
/// leave the disk out).
#[test]
fn unpack_keeps_up_with_gnu_tar() {
    use std::time::Instant;
    // A real tree of a few thousand files: Python's standard library, which setup installs.
    let source = match std::env::var("ISOLAB_LAYER_BENCH") {
        Ok(source) => source,
        Err(_) => {
            let found = fs::read_dir("/usr/lib").unwrap().flatten().map(|entry| entry.path()).find(
                |path| {
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    name.starts_with("python3.") && path.join("os.py").exists()
                },
            );
            match found {
                Some(path) => path.display().to_string(),
                None => {
                    return crate::skip("unpack_keeps_up_with_gnu_tar", "no /usr/lib/python3.*")
                }
            }
        }
    };
    let scratch = std::env::var("ISOLAB_LAYER_BENCH_TMP").unwrap_or("/tmp".into());
    let tmp = tempfile::tempdir_in(scratch).unwrap();
    let layer = tmp.path().join("layer.tar.gz");
    let started = Instant::now();
    let packed = pack_dir_to_file(Path::new(&source), &layer, Compression::Gzip).unwrap();
    eprintln!(
        "{source}: {} entries, {} MB of content, blob {} MB; pack_dir took {:?}",
        packed.summary.entries,
        packed.summary.content_bytes / 1_000_000,
        packed.size / 1_000_000,
        started.elapsed()
    );
    // Every tree is kept until the end, and the two take turns going first: removing a tree
    // just before making one makes ext4 search its inode bitmaps for recently freed inodes
    // (`recently_deleted`), which would be measured instead.
    let (mut ours, mut gnu) = (Duration::MAX, Duration::MAX);
    for round in 0..3 {
        for turn in 0..2 {
            let dest = tmp.path().join(format!("{round}-{turn}"));
            fs::create_dir(&dest).unwrap();
            let started = Instant::now();
            if (round + turn) % 2 == 0 {
                let blob = fs::File::open(&layer).unwrap();
                let unpacked = unpack(blob, &dest, &UnpackOptions::default()).unwrap();
                ours = ours.min(started.elapsed());
                assert_eq!(unpacked.diff_id, packed.diff_id);
            } else {
                let status =
                    Command::new("tar").arg("-xzf").arg(&layer).arg("-C").arg(&dest).status();
                gnu = gnu.min(started.elapsed());
                assert!(status.unwrap().success());
            }
        }
    }
    let ratio = ours.as_secs_f64() / gnu.as_secs_f64();
    eprintln!("unpack {ours:?}, tar -xzf {gnu:?}: {ratio:.2}x");
    // The goal is 1.2x; measured alone 0.4-0.9x, and up to 1.6x once in the full
    // suite, where other tests run in the same process beside this one (and this is a debug
    // build). The margin is for that; a real regression (a syscall per byte) is far beyond.
    assert!(ratio < 2.0, "unpack took {ours:?}, GNU tar -xzf {gnu:?}: {ratio:.2}x");
}
