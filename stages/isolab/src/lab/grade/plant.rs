//! Files the grader plants in a directory the binary can write to (the rootfs, a store, an
//! archive it unpacked), made so that nothing the binary planted there first is written
//! through.
//!
//! A root binary that learns a file's name before the grader writes it (the `exec` task
//! passes its token in `--env`) could put a symlink at the name, to a host file, and the
//! grader, as root, would write through it (`open(2)` follows symlinks). So every directory
//! on the way is opened with `O_DIRECTORY|O_NOFOLLOW` from a trusted root, one component at a
//! time (`openat(2)`), and the file is made with `O_CREAT|O_EXCL|O_NOFOLLOW`: if anything is
//! at the name already, symlink or not, the call fails (EEXIST, ELOOP) instead of writing.
//! Removal is `unlinkat(2)` in the directory so opened, which never follows the last
//! component either.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use std::io::{Error, ErrorKind, Result};

/// The directory that holds `relative` under `root`, opened without following a symlink
/// anywhere (the root's own last component included), and the file's name in it.
fn parent(root: &Path, relative: &Path) -> Result<(OwnedFd, CString)> {
    let c_root = CString::new(root.as_os_str().as_bytes())?;
    let flags = libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY;
    // SAFETY: a NUL-terminated path; the fd, if any, is ours.
    let fd = unsafe { libc::open(c_root.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut names: Vec<&std::ffi::OsStr> = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => names.push(name),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("{} is not a plain relative path", relative.display()),
                ))
            }
        }
    }
    let Some(file) = names.pop() else {
        return Err(Error::new(ErrorKind::InvalidInput, "an empty path"));
    };
    for name in names {
        let c_name = CString::new(name.as_bytes())?;
        // SAFETY: a directory fd we own and a NUL-terminated name.
        let fd =
            unsafe { libc::openat(std::os::fd::AsRawFd::as_raw_fd(&dir), c_name.as_ptr(), flags) };
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        // SAFETY: as above.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok((dir, CString::new(file.as_bytes())?))
}

/// Makes a new file `relative` under `root` with permissions `mode`, failing if anything is
/// at its name or a directory on the way is a symlink.
pub fn create_new(root: &Path, relative: &Path, mode: u32) -> Result<File> {
    let (dir, name) = parent(root, relative)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a directory fd we own and a NUL-terminated name.
    let fd =
        unsafe { libc::openat(std::os::fd::AsRawFd::as_raw_fd(&dir), name.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    // The umask may have taken bits off: the mode asked for, exactly (fchmod, on the fd).
    // SAFETY: fchmod on a descriptor we own.
    unsafe { libc::fchmod(std::os::fd::AsRawFd::as_raw_fd(&file), mode) };
    Ok(file)
}

/// [`create_new`], with `content` written to it.
pub fn plant(root: &Path, relative: &Path, content: &[u8], mode: u32) -> Result<()> {
    create_new(root, relative, mode)?.write_all(content)
}

/// Removes `relative` under `root` (whatever it is now, a symlink itself and not its
/// target), without following a symlink on the way.
pub fn remove(root: &Path, relative: &Path) -> Result<()> {
    let (dir, name) = parent(root, relative)?;
    // SAFETY: a directory fd we own and a NUL-terminated name.
    let done = unsafe { libc::unlinkat(std::os::fd::AsRawFd::as_raw_fd(&dir), name.as_ptr(), 0) };
    if done < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "precious").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::os::unix::fs::symlink(&target, root.join("bin/planted")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("linked")).unwrap();
        let error = plant(&root, Path::new("bin/planted"), b"x", 0o644).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EEXIST), "{error}");
        let error = plant(&root, Path::new("linked/new"), b"x", 0o644).unwrap_err();
        assert!(matches!(error.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)), "{error}");
        assert!(!dir.path().join("new").exists());
        remove(&root, Path::new("bin/planted")).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        plant(&root, Path::new("bin/planted"), b"ours", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("bin/planted")).unwrap(), "ours");
        let mode = std::fs::metadata(root.join("bin/planted")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o644);
    }
}
