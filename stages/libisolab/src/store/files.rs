//! The store's files: JSON replaced atomically, locks that say who is alive, and taking a
//! container's directory apart in an order that a crash at any moment leaves readable.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::MntFlags;
use nix::unistd::Uid;
use serde::{Deserialize, Serialize};

use crate::copy;
use crate::error::{Error, Result};

// ANCHOR: write_atomic
/// Replaces files of directory `dir`, each atomically: written to a temporary file in the
/// same directory, flushed to the disk, then renamed over the old one (`man 2 rename`: "If
/// newpath already exists, it will be atomically replaced"). Last, the directory is flushed
/// (once for all of them), so that the renames survive a crash too. A reader never sees half
/// a file; a failed write (a full disk) leaves the old file and no temporary one.
pub fn write_atomic(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    for (name, bytes) in files {
        let temporary = dir.join(format!("{name}.tmp-{}", std::process::id()));
        let written = File::create(&temporary)
            .map_err(|e| io_error("open", &temporary, &e))
            .and_then(|mut file| {
                file.write_all(bytes).map_err(|e| io_error("write", &temporary, &e))?;
                file.sync_all().map_err(|e| io_error("fsync", &temporary, &e))
            });
        if let Err(error) = written {
            let _ = fs::remove_file(&temporary);
            return Err(error);
        }
        let path = dir.join(name);
        fs::rename(&temporary, &path).map_err(|e| io_error("rename", &path, &e))?;
    }
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|e| io_error("fsync", dir, &e))
}
// ANCHOR_END: write_atomic

/// Replaces file `name` of `dir` atomically as [`write_atomic`] does, but without flushing
/// it to the disk: for the journal, which must survive a killed runtime (the page cache
/// does), not a power cut (after one, every lock is free and a lost entry makes `gc` report a
/// directory rather than remove it: the safe way to be wrong). Two `fsync`s fewer per start.
pub(super) fn replace_quickly(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let temporary = dir.join(format!("{name}.tmp-{}", std::process::id()));
    if let Err(error) = fs::write(&temporary, bytes) {
        let _ = fs::remove_file(&temporary);
        return Err(io_error("write", &temporary, &error));
    }
    let path = dir.join(name);
    fs::rename(&temporary, &path).map_err(|e| io_error("rename", &path, &e))
}

/// Is this the name of a temporary file of [`write_atomic`]?
pub(super) fn is_temporary(name: &str) -> bool {
    name.rsplit_once(".tmp-").is_some_and(|(_, pid)| pid.parse::<u32>().is_ok())
}

/// `value` as pretty JSON, with a final newline.
pub(super) fn json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|error| Error::Invalid(format!("cannot write JSON: {error}")))?;
    text.push('\n');
    Ok(text.into_bytes())
}

/// Replaces one JSON file (see [`write_atomic`]).
pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    write_atomic(path.parent().unwrap_or(Path::new(".")), &[(&name, json(value)?)])
}

/// Reads one of a container's JSON files; an error names the file and the way out.
pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let id = container_id(path);
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(Error::Invalid(format!(
                "{} is missing: `rm --force {id}` removes the container",
                path.display()
            )))
        }
        Err(error) => return Err(io_error("read", path, &error)),
    };
    serde_json::from_slice(&text).map_err(|error| {
        Error::Invalid(format!(
            "{} is corrupt ({error}): `rm --force {id}` removes the container",
            path.display()
        ))
    })
}

/// The id of the container a file of the store belongs to: its directory's name.
fn container_id(file: &Path) -> String {
    let dir = file.parent().and_then(Path::file_name).unwrap_or_default();
    dir.to_string_lossy().into_owned()
}

/// What the lock of a container says about its runtime.
#[derive(Debug)]
pub(super) enum Lock {
    /// Nobody held it: now we do.
    Taken(Flock<File>),
    /// A live runtime holds it.
    Held,
    /// There is no lock file: no runtime can be holding it.
    Missing,
}

/// Tries to take the `flock(2)` on `path` without waiting. With `create`, a missing lock file
/// is made (a runtime about to run the container); without, a missing one is
/// [`Lock::Missing`] (gc and `ps` only look: they must not make files in a directory that is
/// being removed).
pub(super) fn try_lock(path: &Path, create: bool) -> Result<Lock> {
    let opened = File::options().create(create).truncate(false).write(true).open(path);
    let file = match opened {
        Ok(file) => file,
        Err(error) if !create && error.kind() == io::ErrorKind::NotFound => {
            return Ok(Lock::Missing)
        }
        Err(error) => {
            let error = io_error("open", path, &error);
            return Err(match error.errno() {
                Some(Errno::EISDIR) => error.hint(
                    "the container's lock is a directory, not a file isolab made: `rm --force` \
                     removes the container",
                ),
                _ => error,
            });
        }
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Lock::Taken(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(Lock::Held),
        Err((_, errno)) => Err(Error::sys("flock", path.display(), errno)),
    }
}

/// Does a live runtime hold the lock at `path`? Looks only: a shared lock taken and let go
/// at once, on a file opened read-only, never created (`ps` writes nothing).
pub(super) fn is_held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(lock) => {
            drop(lock);
            false
        }
        Err((_, errno)) => errno == Errno::EWOULDBLOCK,
    }
}

/// Takes a container's directory apart, in an order that a crash at any moment leaves in a
/// state the next `gc` can finish: whatever is mounted in it first (removing files through a
/// mount point would remove the mounted filesystem's files), then everything but its `lock`
/// (which the caller holds, so that nobody else touches the directory meanwhile), then the
/// lock and the directory itself. Returns the mounts it detached.
pub(super) fn dismantle(dir: &Path) -> Result<Vec<PathBuf>> {
    let unmounted = unmount_under(dir)?;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(unmounted),
        Err(error) => return Err(io_error("opendir", dir, &error)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error("readdir", dir, &e))?;
        if entry.file_name() != "lock" {
            remove_any(&entry.path())?;
        }
    }
    remove_any(&dir.join("lock"))?;
    match fs::remove_dir(dir) {
        Ok(()) => Ok(unmounted),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(unmounted),
        Err(error) => Err(io_error("rmdir", dir, &error)),
    }
}

/// Removes a file, a symlink or a whole directory tree; what is already gone is fine.
pub(super) fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("lstat", path, &error)),
        Ok(metadata) if metadata.is_dir() => copy::remove_tree(path),
        Ok(_) => match fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(io_error("unlink", path, &error))
            }
            _ => Ok(()),
        },
    }
}

/// The mount points on the host at or below `dir`, deepest first.
pub(super) fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| io_error("read", Path::new("/proc/self/mountinfo"), &e))?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_point)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort();
    points.dedup();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    Ok(points)
}

/// Detaches every mount on the host at or below `dir`, deepest first; returns them.
pub(super) fn unmount_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let points = mount_points_under(dir)?;
    for point in &points {
        match nix::mount::umount2(point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(errno) => {
                return Err(Error::sys("umount2", point.display(), errno)
                    .hint("unmounting needs root: run `gc` as the user who mounted it"))
            }
        }
    }
    Ok(points)
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo` octal.
pub(super) fn unescape_mount_point(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |value, digit| value * 8 + (digit - b'0')));
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// An error for a store directory the caller may not write, with the way out.
pub(super) fn not_writable(
    call: &'static str,
    root: &Path,
    path: &Path,
    error: &io::Error,
) -> Error {
    let errno = Errno::from_raw(error.raw_os_error().unwrap_or(0));
    let error = Error::sys(call, path.display(), errno);
    match errno {
        Errno::EACCES | Errno::EPERM | Errno::EROFS => error.hint(format!(
            "the store {} is not writable by uid {}: pass --root DIR (or set ISOLAB_ROOT) to \
             a directory you may write",
            root.display(),
            Uid::effective()
        )),
        Errno::ENOSPC | Errno::EDQUOT => error.hint(format!(
            "the filesystem of the store {} is full: free some space (`df` shows what each \
             container takes, `rm` removes one)",
            root.display()
        )),
        _ => error,
    }
}

pub(super) fn io_error(call: &'static str, path: &Path, error: &io::Error) -> Error {
    Error::sys(call, path.display(), Errno::from_raw(error.raw_os_error().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_point("/a\\040b\\134c"), PathBuf::from("/a b\\c"));
    }

    #[test]
    fn temporary_names() {
        assert!(is_temporary("state.json.tmp-123"));
        assert!(!is_temporary("notes.tmp-x"));
        assert!(!is_temporary("state.json"));
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a.json"), "old").unwrap();
        // A directory in the way of the rename: the write fails after the temporary file.
        fs::create_dir(tmp.path().join("b.json")).unwrap();
        fs::write(tmp.path().join("b.json/x"), "").unwrap();
        let error = write_atomic(tmp.path(), &[("b.json", b"new".to_vec())]).unwrap_err();
        assert!(error.to_string().contains("rename"), "{error}");
        assert_eq!(fs::read_to_string(tmp.path().join("a.json")).unwrap(), "old");
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().flatten().collect();
        // The temporary of a failed rename stays: gc removes it (it is named as ours).
        assert!(names.len() <= 3);
    }

    #[test]
    fn locks_tell_the_truth() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lock");
        assert!(matches!(try_lock(&path, false).unwrap(), Lock::Missing));
        let Lock::Taken(held) = try_lock(&path, true).unwrap() else { panic!("not taken") };
        assert!(is_held(&path));
        assert!(matches!(try_lock(&path, false).unwrap(), Lock::Held));
        drop(held);
        assert!(!is_held(&path));
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let error = try_lock(&path, true).unwrap_err().to_string();
        assert!(error.contains("rm --force"), "{error}");
    }

    #[test]
    fn dismantle_keeps_the_lock_to_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        fs::create_dir_all(dir.join("upper/a/b")).unwrap();
        fs::write(dir.join("config.json"), "{}").unwrap();
        fs::write(dir.join("lock"), "").unwrap();
        dismantle(&dir).unwrap();
        assert!(!dir.exists());
        dismantle(&dir).unwrap(); // already gone: fine
    }
}
