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
use crate::error::{io_errno, Error, Result};
use crate::mountinfo;

// ANCHOR: write_atomic
/// Replaces files of directory `dir`, each atomically: written to a temporary file in the
/// same directory, flushed to the disk, then renamed over the old one (`man 2 rename`: "If
/// newpath already exists, it will be atomically replaced"). Last, the directory is flushed
/// (once for all of them), so that the renames survive a crash too. A reader never sees half
/// a file; a failed write (a full disk) leaves the old file and no temporary one.
pub fn write_atomic(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    for (name, bytes) in files {
        let temporary = temporary(dir, name);
        let written = create_new(&temporary)
            .map_err(|e| Error::io("open", &temporary, &e))
            .and_then(|mut file| {
                file.write_all(bytes).map_err(|e| Error::io("write", &temporary, &e))?;
                file.sync_all().map_err(|e| Error::io("fsync", &temporary, &e))
            });
        if let Err(error) = written {
            let _ = fs::remove_file(&temporary);
            return Err(error);
        }
        let path = dir.join(name);
        fs::rename(&temporary, &path).map_err(|e| Error::io("rename", &path, &e))?;
    }
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|e| Error::io("fsync", dir, &e))
}
// ANCHOR_END: write_atomic

/// Replaces file `name` of `dir` atomically as [`write_atomic`] does, but without flushing
/// it to the disk: for the files of a `--rm` container, which nobody wants back after a
/// power cut (a killed runtime loses nothing: the page cache keeps them). Three `fsync`s
/// fewer per start.
pub(super) fn replace_quickly(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let temporary = temporary(dir, name);
    if let Err(error) = create_new(&temporary).and_then(|mut file| file.write_all(bytes)) {
        let _ = fs::remove_file(&temporary);
        return Err(Error::io("write", &temporary, &error));
    }
    let path = dir.join(name);
    fs::rename(&temporary, &path).map_err(|e| Error::io("rename", &path, &e))
}

/// Creates a temporary file afresh: never through a symlink, never into an existing file
/// (`O_CREAT|O_EXCL`, which also refuses a symlink at the name, `man 2 open`). One a dead
/// runtime with our pid left is removed first (unlinking a link removes the link only).
fn create_new(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Where `name` of `dir` is written before it is renamed into place: `<name>.tmp-<our pid>`,
/// which [`is_temporary`] tells from the real names.
pub(super) fn temporary(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.tmp-{}", std::process::id()))
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

/// Replaces one JSON file as [`write_json`] does; on a full disk (`ENOSPC`, `EDQUOT`), where
/// the temporary file cannot be written, overwrites the existing file in place instead: its
/// blocks are already allocated, and a state is a few hundred bytes, so this works when
/// nothing else can. For the last word of a runtime (a container exited; its runtime died),
/// which must not be lost because the container filled the disk. The price: a crash during
/// that one write could leave half a file, which `ps` then shows as broken.
pub(super) fn write_json_even_if_full<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    match write_json(path, value) {
        Err(error) if matches!(error.errno(), Some(Errno::ENOSPC | Errno::EDQUOT)) => {
            let bytes = json(value)?;
            use std::os::unix::fs::OpenOptionsExt;
            let opened = File::options()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path)
                .and_then(|file| match file.metadata()?.is_file() {
                    true => Ok(file),
                    false => Err(io::Error::from_raw_os_error(libc::EINVAL)),
                });
            let in_place = opened.and_then(|mut file| {
                file.write_all(&bytes)?;
                file.set_len(bytes.len() as u64)?;
                file.sync_all()
            });
            in_place.map_err(|_| error)
        }
        other => other,
    }
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
        Err(error) => return Err(Error::io("read", path, &error)),
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

/// Opens a lock file the way the store must: never through a symlink (`O_NOFOLLOW`: a link
/// planted there must not make root create or lock a file elsewhere), never waiting on a FIFO
/// (`O_NONBLOCK`: `ps` only looks, it must not hang), and only if it is a regular file.
fn open_lock(path: &Path, create: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .create(create)
        .truncate(false)
        .read(true)
        .write(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(file)
}

/// Tries to take the `flock(2)` on `path` without waiting. With `create`, a missing lock file
/// is made (a runtime about to run the container); without, a missing one is
/// [`Lock::Missing`] (gc and `ps` only look: they must not make files in a directory that is
/// being removed). A lock that is not a regular file isolab made (a directory, a symlink, a
/// FIFO) is an error that names the way out.
pub(super) fn try_lock(path: &Path, create: bool) -> Result<Lock> {
    let file = match open_lock(path, create) {
        Ok(file) => file,
        Err(error) if !create && error.kind() == io::ErrorKind::NotFound => {
            return Ok(Lock::Missing)
        }
        Err(error) => {
            let error = Error::io("open", path, &error);
            return Err(match error.errno() {
                Some(Errno::EISDIR | Errno::ELOOP | Errno::EINVAL | Errno::ENXIO) => error.hint(
                    "the container's lock is not a file isolab made (a directory, a symlink or a \
                     FIFO): `rm --force` removes the container",
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
    let Ok(file) = open_lock(path, false) else { return false };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(lock) => {
            drop(lock);
            false
        }
        Err((_, errno)) => errno == Errno::EWOULDBLOCK,
    }
}

/// Is `path` a real directory (not a symlink to one)? The store follows no symlink it did not
/// make, and it makes none under `containers/`.
pub(super) fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_dir())
}

/// Takes a container's directory apart, in an order that a crash at any moment leaves in a
/// state the next `gc` can finish: whatever is mounted in it first (removing files through a
/// mount point would remove the mounted filesystem's files), then everything but its `lock`
/// (which the caller holds, so that nobody else touches the directory meanwhile), then the
/// lock and the directory itself. Returns the mounts it detached.
pub(super) fn dismantle(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::symlink_metadata(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(Error::io("lstat", dir, &error)),
        // A symlink (or a file) where a container's directory should be: isolab never makes
        // one, so it goes itself, and nothing it points to is touched.
        Ok(metadata) if !metadata.is_dir() => {
            remove_any(dir)?;
            return Ok(Vec::new());
        }
        Ok(_) => {}
    }
    let unmounted = unmount_under(dir)?;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(unmounted),
        Err(error) => return Err(Error::io("opendir", dir, &error)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("readdir", dir, &e))?;
        if entry.file_name() != "lock" {
            remove_any(&entry.path())?;
        }
    }
    remove_any(&dir.join("lock"))?;
    match fs::remove_dir(dir) {
        Ok(()) => Ok(unmounted),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(unmounted),
        Err(error) => Err(Error::io("rmdir", dir, &error)),
    }
}

/// Removes a file, a symlink or a whole directory tree; what is already gone is fine.
pub(super) fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::io("lstat", path, &error)),
        Ok(metadata) if metadata.is_dir() => copy::remove_tree(path),
        Ok(_) => match fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(Error::io("unlink", path, &error))
            }
            _ => Ok(()),
        },
    }
}

/// The mount points on the host at or below `dir`, deepest first.
pub(super) fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut points: Vec<PathBuf> = mountinfo::parse(&mountinfo::read()?)
        .map(|mount| mount.mount_point)
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

/// An error for a store directory the caller may not write, with the way out.
pub(super) fn not_writable(
    call: &'static str,
    root: &Path,
    path: &Path,
    error: &io::Error,
) -> Error {
    let errno = io_errno(error);
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

#[cfg(test)]
mod tests {
    use super::*;

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
