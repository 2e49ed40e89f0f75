//! Idmapped mounts: the same files, their owners seen through a user namespace's id maps
//! (`man 2 mount_setattr`, `MOUNT_ATTR_IDMAP`; Linux 5.12).
//!
//! The kernel knows a file's owner by a host id. The base of a stage 4 container belongs to
//! the host's root (uid 0), and root of the container's user namespace is an ordinary host uid
//! (say 1000000000), which may read the base but not change it: overlayfs copies a file up
//! with the mounter's rights, and the mounter does not own it. An *idmapped mount* of the base
//! changes what owner the kernel sees through that mount, and nothing on the disk: with the
//! container's user namespace as its idmap, an id `k` on the disk is seen as the host id that
//! namespace maps `k` to, so uid 0 on the disk is uid 1000000000 through the mount, which is
//! root inside. The base's root-owned files are the container's root's, through that mount
//! only; the base itself is unchanged, and so is every other view of it.
//!
//! Three calls of the new mount API make and place one (`man 2 open_tree`, `man 2
//! mount_setattr`, `man 2 move_mount`):
//!
//! - `open_tree(path, OPEN_TREE_CLONE)` copies the mount at `path` (a bind mount) and returns
//!   it *detached*: attached nowhere, held by a file descriptor, gone when that is closed;
//! - `mount_setattr(fd, MOUNT_ATTR_IDMAP, userns_fd)` gives a detached mount its idmapping,
//!   once: it takes the caller's `CAP_SYS_ADMIN` over the filesystem (the host's root, for a
//!   disk: never the container's root, never a rootless user), a user namespace whose maps are
//!   written, and a filesystem that supports it (ext4, xfs and btrfs since 5.12–5.15, tmpfs
//!   since 6.3; not ramfs, NFS or overlayfs);
//! - `move_mount(fd, target)` attaches it at `target`, in the caller's mount namespace.
//!
//! overlayfs accepts idmapped lower layers since Linux 5.19 (the commit "ovl: support idmapped
//! layers"); the upper stays a plain directory, owned on the disk by the namespace's root, so
//! what the container writes is its root's on the host.
//!
//! The runtime makes the mount and the container attaches it: a file descriptor travels from
//! one process to the other over a Unix socket, as `SCM_RIGHTS` ancillary data (`man 7
//! unix`): [`send`] and [`receive`].

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use nix::unistd::Pid;

use crate::error::{errno_name, Error, Result, SysResultExt};
use crate::idmap::IdMap;
use crate::idrange;
use crate::mountinfo;
use crate::namespaces;
use crate::overlay;
use crate::process;

/// The first kernel with idmapped mounts (`mount_setattr(2)`, Linux 5.12).
pub const MINIMUM: (u32, u32) = (5, 12);

/// The first kernel whose overlayfs takes idmapped layers (Linux 5.19).
pub const OVERLAY_MINIMUM: (u32, u32) = (5, 19);

/// How `open_tree` is called, as the plan prints it.
pub const OPEN_TREE_FLAGS: &str = "OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC";

// ANCHOR: idmapped_tree
/// A detached copy of the mount at `path`, idmapped through the user namespace `userns`
/// (an open `/proc/<pid>/ns/user`): the base as that namespace's processes should see it.
///
/// `OPEN_TREE_CLONE` without `AT_RECURSIVE` copies only the mount that holds `path`, not the
/// mounts below it: overlayfs never crosses a mount point inside a layer (it shows the
/// directory under it), so the container sees the same base as with the path itself.
pub fn idmapped_tree(path: &Path, userns: BorrowedFd) -> Result<OwnedFd> {
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    let path_c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::sys("open_tree", path.display(), Errno::EINVAL))?;
    // SAFETY: open_tree takes a directory fd, a NUL-terminated path and flags; it returns a
    // new file descriptor, which we own from here on.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path_c.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::sys("open_tree", path.display(), Errno::last()));
    }
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr takes the detached mount's fd, an empty path with AT_EMPTY_PATH
    // (the fd itself), and a mount_attr of the size we pass, which lives across the call.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if set < 0 {
        let subject = format!("MOUNT_ATTR_IDMAP on {}", path.display());
        return Err(Error::sys("mount_setattr", subject, Errno::last()));
    }
    Ok(tree)
}
// ANCHOR_END: idmapped_tree

/// In the container, in its own mount namespace: attaches the detached mount `tree` at
/// `target` (`move_mount(2)` with `MOVE_MOUNT_F_EMPTY_PATH`: the source is the fd itself).
/// It takes `CAP_SYS_ADMIN` over our mount namespace, which root of our user namespace has.
pub fn attach(tree: OwnedFd, target: &Path) -> Result<()> {
    let target_c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::sys("move_mount", target.display(), Errno::EINVAL))?;
    // SAFETY: move_mount takes the source fd with an empty path (MOVE_MOUNT_F_EMPTY_PATH), and
    // a directory fd and NUL-terminated path for the target; all live across the call.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(Error::sys("move_mount", target.display(), Errno::last()));
    }
    Ok(())
}

/// The user namespace of process `pid`, as a file descriptor (`/proc/<pid>/ns/user`).
pub fn user_namespace_of(pid: Pid) -> Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/user");
    File::open(&path).map(OwnedFd::from).map_err(|e| Error::io("open", &path, &e))
}

/// A pair of connected Unix sockets that keep message boundaries (`SOCK_SEQPACKET`), closed
/// on exec: one end for each process, to pass file descriptors over.
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .sys("socketpair", "AF_UNIX, SOCK_SEQPACKET")
}

/// Sends `fds` over `socket` in one message (`SCM_RIGHTS`): the receiver gets its own
/// descriptors of the same open files, here of the same detached mounts.
pub fn send(socket: BorrowedFd, fds: &[OwnedFd]) -> Result<()> {
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let byte = [fds.len() as u8];
    let control = [ControlMessage::ScmRights(&raw)];
    socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&byte)],
        &control,
        MsgFlags::empty(),
        None,
    )
    .sys("sendmsg", "SCM_RIGHTS")?;
    Ok(())
}

/// Receives the descriptors [`send`] sent (`count` of them), closed on exec.
pub fn receive(socket: BorrowedFd, count: usize) -> Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let room = (count * std::mem::size_of::<i32>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let mut buffer = vec![0u8; unsafe { libc::CMSG_SPACE(room) } as usize];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let message = socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut buffer),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .sys("recvmsg", "SCM_RIGHTS")?;
    let mut fds = Vec::new();
    for control in message.cmsgs().sys("recvmsg", "SCM_RIGHTS")? {
        if let socket::ControlMessageOwned::ScmRights(raw) = control {
            // SAFETY: the kernel installed these descriptors in our table for us alone.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if fds.len() != count {
        let subject = format!("SCM_RIGHTS ({} of {count} mounts)", fds.len());
        return Err(Error::sys("recvmsg", subject, Errno::EPROTO));
    }
    Ok(fds)
}

// ANCHOR: check
/// Checks, before anything runs, that each of `bases` can be idmapped here and overlayfs will
/// take it: the kernel is recent enough, and an idmapped mount of each base through a user
/// namespace with the container's `map` can be made (and is dropped again at once). That
/// namespace is a throwaway one, the same for every base (making one costs a process): the
/// container's does not exist yet. Refused in one line that says why and what to do instead.
///
/// What decides is the mount a base is on (its filesystem, its flags), so one base per mount
/// is tried: an image's layers and its init layer all sit on the store's. Dropping a detached
/// mount waits for an RCU grace period (`namespace_unlock`, fs/namespace.c), each one. And
/// since that is fixed when the mount is made, a mount on which a container's base was
/// idmapped is noted ([`note_idmapped`]): the next start on it skips the throwaway namespace.
/// Says whether it tried a mount that a note would spare the next check.
pub fn check(bases: &[&Path], map: &IdMap) -> Result<bool> {
    check_with(bases, map, &verdicts_path())
}

/// [`check`], with the notes in the file `verdicts`.
fn check_with(bases: &[&Path], map: &IdMap, verdicts: &Path) -> Result<bool> {
    if bases.is_empty() {
        return Ok(false);
    }
    let release = overlay::kernel_release()?;
    if !overlay::kernel_at_least(OVERLAY_MINIMUM)? {
        return Err(refusal(
            bases[0],
            format!(
                "this kernel ({release}) has no idmapped layers for overlayfs (Linux {}.{})",
                OVERLAY_MINIMUM.0, OVERLAY_MINIMUM.1
            ),
        ));
    }
    let verdicts = Verdicts::read(verdicts);
    let (mut userns, mut tried, mut to_note) = (None, Vec::new(), false);
    for base in bases {
        // A base whose mount cannot be told is tried all the same.
        let mount = mount_id(base);
        if mount.is_some() && tried.contains(&mount) {
            continue;
        }
        tried.push(mount);
        if mount.is_some_and(|mount| verdicts.passed(mount)) {
            continue;
        }
        let userns = match &userns {
            Some(userns) => userns,
            None => userns.insert(throwaway_user_namespace(map)?),
        };
        check_one(base, userns.as_fd(), &release)?;
        to_note |= mount.is_some_and(|mount| mount.unique);
    }
    Ok(to_note)
}

/// Notes the mounts of `bases`, which a container's idmapped mounts were just made of (the
/// runtime's step, never a dry run's): the next [`check`] on them skips the throwaway
/// namespace.
pub fn note_idmapped(bases: &[&Path]) {
    note_with(bases, &verdicts_path());
}

/// Where the mounts are noted: [`VERDICTS`] in the claims directory.
pub fn verdicts_path() -> std::path::PathBuf {
    idrange::claims_dir().join(VERDICTS)
}

/// An idmapped mount that failed after [`check`] passed its base: what to do about it (the
/// check skips a mount noted in [`VERDICTS`], so a wrong note is one way there).
pub fn after_the_check(error: Error) -> Error {
    let notes = verdicts_path();
    error.hint(format!(
        "the check before the run skips a mount that {} notes as idmapped before; if it \
         notes this one wrongly, remove that file and run again, and the check tries the \
         mount itself",
        notes.display()
    ))
}

/// [`note_idmapped`], in the file `verdicts`.
fn note_with(bases: &[&Path], verdicts: &Path) {
    let mounts: Vec<MountId> = bases.iter().filter_map(|base| mount_id(base)).collect();
    Verdicts::read(verdicts).note(&mounts);
}

/// The id of the mount `path` is on (`statx(2)`): unique until the next boot where the kernel
/// has `STATX_MNT_ID_UNIQUE` (Linux 6.8), else the id of `/proc/self/mountinfo`'s first column
/// (`STATX_MNT_ID`, 5.8), which a later mount may take again.
fn mount_id(path: &Path) -> Option<MountId> {
    let stat = mountinfo::statx(path, 0, libc::STATX_MNT_ID | STATX_MNT_ID_UNIQUE)?;
    let unique = stat.stx_mask & STATX_MNT_ID_UNIQUE != 0;
    let known = unique || stat.stx_mask & libc::STATX_MNT_ID != 0;
    known.then_some(MountId { id: stat.stx_mnt_id, unique })
}

/// One base of [`check`], through the throwaway namespace `userns`.
fn check_one(base: &Path, userns: BorrowedFd, release: &str) -> Result<()> {
    let refuse = |reason: String| refusal(base, reason);
    match idmapped_tree(base, userns) {
        Ok(_dropped) => Ok(()),
        Err(error) => {
            let errno = error.errno().unwrap_or(Errno::EINVAL);
            let fstype = filesystem_type(base).unwrap_or_else(|| "?".to_string());
            Err(refuse(match errno {
                Errno::ENOSYS => format!(
                    "this kernel ({release}) has no mount_setattr(2) (Linux {}.{})",
                    MINIMUM.0, MINIMUM.1
                ),
                Errno::EINVAL => format!(
                    "its filesystem ({fstype}) cannot be idmapped on this kernel ({release}): \
                     mount_setattr(MOUNT_ATTR_IDMAP) failed with {}",
                    errno_name(errno)
                ),
                _ => format!(
                    "mount_setattr(MOUNT_ATTR_IDMAP) on its {fstype} filesystem failed with {}",
                    errno_name(errno)
                ),
            }))
        }
    }
}
// ANCHOR_END: check

/// A mount's id, and whether no other mount takes it until the next boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MountId {
    id: u64,
    unique: bool,
}

/// `STATX_MNT_ID_UNIQUE` (include/uapi/linux/stat.h), which the libc crate lacks.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// The file in the claims directory ([`idrange::claims_dir`]) where the mounts whose bases
/// were idmapped are noted, a line `<boot id> <euid> <unique mount id>` each.
pub const VERDICTS: &str = "idmapped-mounts";

/// The most of it that is read (64 KiB: over a thousand lines), and the most lines kept.
const VERDICTS_MAX_BYTES: u64 = 64 * 1024;
const VERDICTS_MAX_LINES: usize = 1024;

/// The mounts noted since this boot: whether a mount can be idmapped is fixed when it is made
/// (its filesystem, who owns its superblock), so one that was passes for as long as it
/// exists, and its unique id is never another mount's before the next boot. Only the
/// throwaway namespace is saved (a clone of the runtime and a wait: 0.2 to 0.75 ms of a start
/// here, measured several times). A cache: a line lost to two runtimes writing at once costs
/// one more check, and a file that is not a regular one (a FIFO, a device through a link) is
/// not read, nor more than [`VERDICTS_MAX_BYTES`] of one.
#[derive(Debug, Default)]
struct Verdicts {
    /// The file.
    path: std::path::PathBuf,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`), and our euid.
    boot: String,
    euid: u32,
    /// This boot's lines, well formed, any user's.
    lines: Vec<String>,
}

impl Verdicts {
    /// What was noted in the file `path`; nothing if the boot id cannot be read.
    fn read(path: &Path) -> Verdicts {
        let path = path.to_path_buf();
        let euid = nix::unistd::geteuid().as_raw();
        let Ok(boot) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else {
            return Verdicts { path, euid, ..Verdicts::default() };
        };
        let boot = boot.trim().to_string();
        let text = Self::read_regular(&path).unwrap_or_default();
        let well_formed = |line: &&str| {
            let fields: Vec<&str> = line.split(' ').collect();
            matches!(fields[..], [b, uid, id] if b == boot
                && uid.parse::<u32>().is_ok() && id.parse::<u64>().is_ok())
        };
        let lines = text.lines().filter(well_formed).map(String::from).collect();
        Verdicts { path, boot, euid, lines }
    }

    /// The file's text, if it is a regular file (opened without following a link and
    /// without waiting for a writer), at most [`VERDICTS_MAX_BYTES`] of it.
    fn read_regular(path: &Path) -> Option<String> {
        use std::io::Read as _;
        let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let file = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path).ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        let mut text = String::new();
        file.take(VERDICTS_MAX_BYTES).read_to_string(&mut text).ok()?;
        // A line the limit cut is not one: a shorter mount id is another mount's.
        if text.len() as u64 == VERDICTS_MAX_BYTES && !text.ends_with('\n') {
            let whole = text.rfind('\n').map_or(0, |end| end + 1);
            text.truncate(whole);
        }
        Some(text)
    }

    fn line(&self, mount: MountId) -> Option<String> {
        let known = mount.unique && !self.boot.is_empty();
        known.then(|| format!("{} {} {}", self.boot, self.euid, mount.id))
    }

    /// Was `mount` noted? Only a unique id can tell: another may be a later mount's.
    fn passed(&self, mount: MountId) -> bool {
        self.line(mount).is_some_and(|line| self.lines.contains(&line))
    }

    /// Notes `mounts` with this boot's earlier lines (an earlier boot's go, and the oldest
    /// beyond [`VERDICTS_MAX_LINES`]), written whole to a temporary file renamed over the old
    /// one. Nothing is written if every one is noted already.
    fn note(mut self, mounts: &[MountId]) {
        let before = self.lines.len();
        let lines: Vec<String> = mounts.iter().filter_map(|mount| self.line(*mount)).collect();
        for line in lines {
            if !self.lines.contains(&line) {
                self.lines.push(line);
            }
        }
        if self.lines.len() == before {
            return;
        }
        let excess = self.lines.len().saturating_sub(VERDICTS_MAX_LINES);
        self.lines.drain(..excess);
        let temporary = self.path.with_extension(format!("tmp-{}", std::process::id()));
        // One a dead runtime with our pid left goes first; then a file of our own, never one
        // that is there already (O_EXCL: not through a link either).
        let _ = std::fs::remove_file(&temporary);
        let text = self.lines.join("\n") + "\n";
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
        if written.and_then(|()| std::fs::rename(&temporary, &self.path)).is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
    }
}

/// Why `base` is refused, and the ways out.
fn refusal(base: &Path, reason: String) -> Error {
    Error::Invalid(format!(
        "the base {} cannot be idmapped into the container's user namespace: {reason}; \
         without it root inside may not change the base's files: run without a user namespace \
         (--ns without user), or rootless with a base of your own",
        base.display()
    ))
}

/// A user namespace of our own with `map`, as a file descriptor: a child cloned into a new
/// one (`CLONE_NEWUSER`) that waits until we have written its maps and opened its namespace,
/// then exits; the namespace lives on for as long as the descriptor is open.
fn throwaway_user_namespace(map: &IdMap) -> Result<OwnedFd> {
    let (wait_read, wait_write) = process::error_pipe()?;
    match namespaces::clone_like_fork(nix::sched::CloneFlags::CLONE_NEWUSER)
        .sys("clone", "CLONE_NEWUSER")?
    {
        nix::unistd::ForkResult::Child => {
            drop(wait_write);
            // Until the parent says so (or closes its end, or dies): nothing is left to do.
            let _ = File::from(wait_read).read(&mut [0u8; 1]);
            // SAFETY: _exit never returns and runs none of the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(wait_read);
            let userns = map.write(child).and_then(|()| user_namespace_of(child));
            // A byte, not only the close: a fork of another thread (the tests') may hold a
            // copy of this end, and the child would never see the end of the pipe.
            let _ = nix::unistd::write(&wait_write, b"x");
            drop(wait_write);
            let _ = nix::sys::wait::waitpid(child, None);
            userns
        }
    }
}

/// The type of the filesystem that `path` is on (`ext4`, `tmpfs`), from the mount table: the
/// mount whose mount point is the longest prefix of `path`.
fn filesystem_type(path: &Path) -> Option<String> {
    let table = mountinfo::read().ok()?;
    mountinfo::parse(&table)
        .filter(|mount| path.starts_with(&mount.mount_point))
        .max_by_key(|mount| mount.mount_point.components().count())
        .map(|mount| mount.fstype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_ids_tell_mounts_apart() {
        let here = mount_id(Path::new("/proc/self")).unwrap();
        assert_eq!(mount_id(Path::new("/proc")), Some(here), "one mount");
        assert_ne!(mount_id(Path::new("/")), Some(here), "two mounts");
        assert_eq!(mount_id(Path::new("/no/such/path")), None);
    }

    #[test]
    fn a_mount_that_was_idmapped_is_noted_for_this_boot_and_not_tried_again() {
        if !nix::unistd::Uid::effective().is_root() {
            crate::skip("a_mount_that_was_idmapped_is_noted", "needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let verdicts = dir.path().join(VERDICTS);
        let map = IdMap::root_to(1_000_000_000, 1_000_000_000);
        let base = tempfile::tempdir().unwrap();
        let mount = mount_id(base.path()).unwrap();
        if !mount.unique {
            crate::skip("a_mount_that_was_idmapped_is_noted", "no STATX_MNT_ID_UNIQUE (Linux 6.8)");
            return;
        }
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let euid = nix::unistd::geteuid();
        let line = |boot: &str, id: u64| format!("{} {euid} {id}", boot.trim());
        // The check writes nothing (a dry run makes it too); the runtime's step notes.
        check_with(&[base.path()], &map, &verdicts).unwrap();
        assert!(!verdicts.exists(), "the check noted something");
        note_with(&[base.path(), base.path()], &verdicts);
        assert_eq!(std::fs::read_to_string(&verdicts).unwrap(), line(&boot, mount.id) + "\n");
        // A mount noted for this boot is not tried: procfs, which never can be idmapped,
        // passes once a line says it was (only root can write the claims directory).
        let proc = mount_id(Path::new("/proc")).unwrap();
        std::fs::write(&verdicts, line(&boot, proc.id) + "\n").unwrap();
        check_with(&[Path::new("/proc")], &map, &verdicts).unwrap();
        // Another boot's line is not believed, and goes when this boot's are noted; another
        // user's of this boot stays, and so does nothing malformed.
        let old = "00000000-0000-0000-0000-000000000000";
        let other = format!("{} 1234 {}", boot.trim(), proc.id);
        let junk = format!("{} 0 notanumber", boot.trim());
        std::fs::write(&verdicts, [line(old, proc.id), other.clone(), junk].join("\n")).unwrap();
        let error = check_with(&[Path::new("/proc")], &map, &verdicts).unwrap_err();
        assert!(error.to_string().contains("cannot be idmapped"), "{error}");
        note_with(&[base.path()], &verdicts);
        let noted = std::fs::read_to_string(&verdicts).unwrap();
        assert_eq!(noted, format!("{other}\n{}\n", line(&boot, mount.id)));
        let left: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [VERDICTS], "no temporary file left");
        // Not a regular file: not read (a FIFO would hang the start), and replaced.
        std::fs::remove_file(&verdicts).unwrap();
        nix::unistd::mkfifo(&verdicts, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        check_with(&[base.path()], &map, &verdicts).unwrap();
        note_with(&[base.path()], &verdicts);
        assert_eq!(std::fs::read_to_string(&verdicts).unwrap(), line(&boot, mount.id) + "\n");
    }

    #[test]
    fn descriptors_travel_over_the_socket_pair() {
        let (ours, theirs) = socket_pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        send(ours.as_fd(), &[OwnedFd::from(file)]).unwrap();
        let received = receive(theirs.as_fd(), 1).unwrap();
        assert_eq!(received.len(), 1);
        let flags = nix::fcntl::fcntl(received[0].as_raw_fd(), nix::fcntl::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "received descriptors close on exec");
    }

    #[test]
    fn the_filesystem_of_a_path_is_its_nearest_mounts() {
        assert!(filesystem_type(Path::new("/proc/self")).as_deref() == Some("proc"));
    }

    #[test]
    fn a_base_that_cannot_be_idmapped_is_refused_with_the_reason_and_the_ways_out() {
        if !nix::unistd::Uid::effective().is_root() {
            crate::skip("a_base_that_cannot_be_idmapped_is_refused", "needs root");
            return;
        }
        // procfs cannot be idmapped on any kernel.
        let map = IdMap::root_to(1_000_000_000, 1_000_000_000);
        let claims = tempfile::tempdir().unwrap();
        let check = |base: &Path| check_with(&[base], &map, &claims.path().join(VERDICTS));
        let error = check(Path::new("/proc")).unwrap_err().to_string();
        assert!(error.contains("its filesystem (proc) cannot be idmapped"), "{error}");
        assert!(error.contains("--ns without user"), "{error}");
        assert!(!error.contains('\n'), "{error}");
        // A directory of the disk can (on kernels from 5.19 on, which the tests run on).
        let dir = tempfile::tempdir().unwrap();
        check(dir.path()).unwrap();
    }
}
