//! The naive storage driver: every container gets a full copy of its base.
//!
//! This is what a runtime without union mounts must do (docker's `vfs` driver still does):
//! copy every file, as `cp -a` would, before the container can start, and keep the copy for
//! as long as the container exists. It is kept here so that the chapter can measure what
//! overlayfs saves: the time to create a container, and the disk it takes.
//!
//! The module also measures trees as `du` does ([`disk_usage`]: allocated blocks, a file
//! with several hard links counted once) and removes them ([`remove_tree`]).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{chown, lchown, DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::error::{Error, Result};

/// What [`copy_tree`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Files, directories, links and nodes made.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

// ANCHOR: copy_tree
/// Copies the tree at `from` to `to` (which must not exist) as `cp -a` does: file content,
/// directories, symlinks, device nodes and fifos; modes, owners and modification times;
/// hard links stay hard links. Extended attributes and ACLs are not copied.
pub fn copy_tree(from: &Path, to: &Path) -> Result<Copied> {
    let mut copied = Copied::default();
    let mut links = HashMap::new();
    copy_entry(from, to, &mut links, &mut copied)?;
    Ok(copied)
}

fn copy_entry(
    from: &Path,
    to: &Path,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
    copied: &mut Copied,
) -> Result<()> {
    let metadata = fs::symlink_metadata(from).map_err(|e| io_error("lstat", from, e))?;
    let file_type = metadata.file_type();
    // A second name of a file already copied: link it, do not copy it again.
    if !file_type.is_dir() && metadata.nlink() > 1 {
        let inode = (metadata.dev(), metadata.ino());
        if let Some(first) = links.get(&inode) {
            fs::hard_link(first, to).map_err(|e| io_error("link", to, e))?;
            copied.entries += 1;
            return Ok(());
        }
        links.insert(inode, to.to_path_buf());
    }
    if file_type.is_dir() {
        fs::DirBuilder::new().mode(0o700).create(to).map_err(|e| io_error("mkdir", to, e))?;
        let mut names: Vec<_> = fs::read_dir(from)
            .map_err(|e| io_error("opendir", from, e))?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|e| io_error("readdir", from, e))?;
        names.sort();
        for name in names {
            copy_entry(&from.join(&name), &to.join(&name), links, copied)?;
        }
    } else if file_type.is_file() {
        copied.bytes += fs::copy(from, to).map_err(|e| io_error("copy", from, e))?;
    } else if file_type.is_symlink() {
        let target = fs::read_link(from).map_err(|e| io_error("readlink", from, e))?;
        std::os::unix::fs::symlink(target, to).map_err(|e| io_error("symlink", to, e))?;
    } else {
        let kind = if file_type.is_char_device() {
            SFlag::S_IFCHR
        } else if file_type.is_block_device() {
            SFlag::S_IFBLK
        } else if file_type.is_fifo() {
            SFlag::S_IFIFO
        } else {
            SFlag::S_IFSOCK
        };
        mknod(to, kind, Mode::from_bits_truncate(0o600), metadata.rdev())
            .map_err(|errno| Error::sys("mknod", to.display(), errno))?;
    }
    copied.entries += 1;
    // Owner first (chown clears the setuid bit), then the mode, then the time (any change
    // to a directory's entries would move its time again, so it is set after them).
    match lchown(to, Some(metadata.uid()), Some(metadata.gid())) {
        Ok(()) => {}
        // Only root may give files away: a user's copy is the user's (and root of its user
        // namespace owns it, which is what a rootless container wants).
        Err(error) if error.raw_os_error() == Some(libc::EPERM) && !is_root() => {}
        Err(error) => return Err(io_error("lchown", to, error)),
    }
    if !file_type.is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(metadata.mode() & 0o7777))
            .map_err(|e| io_error("chmod", to, e))?;
    }
    set_times(to, &metadata)
}
// ANCHOR_END: copy_tree

/// Sets `path`'s access and modification times to `metadata`'s (a symlink's own).
fn set_times(path: &Path, metadata: &fs::Metadata) -> Result<()> {
    let atime = TimeSpec::new(metadata.atime(), metadata.atime_nsec());
    let mtime = TimeSpec::new(metadata.mtime(), metadata.mtime_nsec());
    utimensat(None, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|errno| Error::sys("utimensat", path.display(), errno))
}

// ANCHOR: disk_usage
/// The disk space a tree takes, as `du` counts it: the blocks allocated to each entry
/// (`st_blocks`, in 512-byte units), a file with several names counted once. Entries that
/// vanish while it looks are skipped, and so is the content of a directory it may not read.
pub fn disk_usage(path: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    usage(path, &mut seen)
}

fn usage(path: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(io_error("lstat", path, error)),
    };
    if !seen.insert((metadata.dev(), metadata.ino())) {
        return Ok(0);
    }
    let mut total = metadata.blocks() * 512;
    if metadata.is_dir() {
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            // Gone meanwhile, or closed to us (overlayfs leaves its `work/work` at mode 000,
            // and keeps it empty): count the directory alone.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                return Ok(total)
            }
            Err(error) => return Err(io_error("opendir", path, error)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error("readdir", path, e))?;
            total += usage(&entry.path(), seen)?;
        }
    }
    Ok(total)
}
// ANCHOR_END: disk_usage

/// Removes the tree at `path`, if it is there. Directories its owner may not enter (overlayfs
/// leaves its `work/work` at mode 000) are opened up first.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) if error.kind() != io::ErrorKind::PermissionDenied => {
            return Err(io_error("remove", path, error))
        }
        Err(_) => {}
    }
    open_up(path)?;
    fs::remove_dir_all(path).or_else(|error| match error.kind() {
        io::ErrorKind::NotFound => Ok(()),
        _ => Err(io_error("remove", path, error)),
    })
}

/// Gives the owner full access to every directory under `path` (that it owns).
fn open_up(path: &Path) -> Result<()> {
    let Ok(metadata) = fs::symlink_metadata(path) else { return Ok(()) };
    if !metadata.is_dir() {
        return Ok(());
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            open_up(&entry.path())?;
        }
    }
    Ok(())
}

/// Changes the owner of `path` (not following a symlink at the end).
pub fn change_owner(path: &Path, uid: u32, gid: u32) -> Result<()> {
    chown(path, Some(uid), Some(gid)).map_err(|e| io_error("chown", path, e))
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn io_error(call: &'static str, path: &Path, error: io::Error) -> Error {
    Error::sys(call, path.display(), Errno::from_raw(error.raw_os_error().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn a_copy_keeps_links_modes_and_times() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        fs::create_dir_all(base.join("bin")).unwrap();
        fs::write(base.join("bin/busybox"), vec![7u8; 10_000]).unwrap();
        fs::hard_link(base.join("bin/busybox"), base.join("bin/sh")).unwrap();
        symlink("busybox", base.join("bin/ls")).unwrap();
        fs::set_permissions(base.join("bin/busybox"), fs::Permissions::from_mode(0o751)).unwrap();

        let copy = tmp.path().join("copy");
        let copied = copy_tree(&base, &copy).unwrap();
        assert_eq!(copied.entries, 5, "base, bin, busybox, sh (a link), ls");
        assert_eq!(copied.bytes, 10_000, "the hard link's content is not copied twice");
        let meta = |path: &Path| fs::symlink_metadata(path).unwrap();
        assert_eq!(meta(&copy.join("bin/sh")).ino(), meta(&copy.join("bin/busybox")).ino());
        assert_eq!(meta(&copy.join("bin/busybox")).mode() & 0o7777, 0o751);
        assert_eq!(fs::read_link(copy.join("bin/ls")).unwrap(), Path::new("busybox"));
        assert_eq!(meta(&copy.join("bin")).mtime(), meta(&base.join("bin")).mtime());
        let changes = crate::changes::tree_changes(&base, &copy).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        // du: the hard link is counted once.
        let usage = disk_usage(&copy).unwrap();
        assert!((10_000..40_000).contains(&usage), "{usage}");
        remove_tree(&copy).unwrap();
        assert!(!copy.exists());
    }
}
