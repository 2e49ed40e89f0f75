//! Mount isolation: do the mounts made in here show up in the host's mount table?
//!
//! Every process sees the mount table of its mount namespace (`man 7 mount_namespaces`).
//! Without a namespace of its own, a root process's `mount(2)` changes the host's table, and a
//! chroot only changes where the new mount *appears* in the host's tree. The probe mounts a
//! tiny tmpfs whose source is `isolab-<token>` (so the host can recognise it in its
//! `/proc/self/mountinfo`), holds it for `--hold-ms`, then unmounts it and removes the
//! directory. Success from inside proves nothing, so the verdict is provisional.

use std::fs;
use std::path::{Path, PathBuf};

use libisolab::error::errno_name;
use nix::errno::Errno;
use nix::mount::{self, MntFlags, MsFlags};

use crate::filesystem::RemoveDirOnDrop;
use crate::{io_errno, Check, CheckId, Inputs, Status};

/// The source name of the probe's tmpfs, `isolab-<token>`: the host greps its mount table
/// for it.
pub fn source_for(token: &str) -> String {
    format!("isolab-{token}")
}

/// The mount point of one `/proc/self/mountinfo` line (the library's parser, which the host
/// side of `isolab compare` uses through the probe).
pub use libisolab::mountinfo::mount_point;

/// `mounts`: mount a tmpfs in the scratch directory, hold it, unmount it.
pub fn mounts(inputs: &Inputs) -> Check {
    let id = CheckId::Mounts;
    let Some(token) = &inputs.token else {
        return Check::not_applicable(id, "no --token given");
    };
    let target = inputs.scratch.join(format!("isolab-mnt-{token}"));
    if let Err(error) = fs::create_dir(&target) {
        return Check::not_applicable(
            id,
            format!(
                "mkdir {} failed: {} (pass a writable directory with --scratch)",
                target.display(),
                io_errno(&error)
            ),
        );
    }
    // Dropped last: the directory goes only after the mount on it is gone.
    let _directory = RemoveDirOnDrop(target.clone());

    let source = source_for(token);
    // nosuid, nodev, noexec and 16 KiB: a mount that could be of no use to anyone.
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let call = format!("mount({source:?}, {:?}, \"tmpfs\")", target.display().to_string());
    match mount::mount(Some(source.as_str()), &target, Some("tmpfs"), flags, Some("size=16k")) {
        Ok(()) => {
            let unmount = Unmount(Some(target.clone()));
            crate::hold(inputs.hold);
            let undone = match unmount.now() {
                Ok(()) => "unmounted".to_string(),
                Err(errno) => format!("umount failed: {}, detached", errno_name(errno)),
            };
            Check::provisional_leak(
                id,
                format!(
                    "{call} succeeded ({undone} after {} ms); whether the host's mount table \
                     showed it only the host can tell",
                    inputs.hold.as_millis()
                ),
            )
        }
        // mount(2) needs CAP_SYS_ADMIN in the user namespace that owns the mount namespace.
        Err(errno @ Errno::EPERM) => Check::new(
            id,
            Status::Isolated,
            format!("{call} failed: {} (no CAP_SYS_ADMIN here)", errno_name(errno)),
        ),
        Err(errno) => Check::not_applicable(id, format!("{call} failed: {}", errno_name(errno))),
    }
}

/// Unmounts when dropped (`man 2 umount`); if the mount is busy, detaches it lazily
/// (`MNT_DETACH`) so it disappears from the table anyway.
struct Unmount(Option<PathBuf>);

impl Unmount {
    fn now(mut self) -> nix::Result<()> {
        match self.0.take() {
            Some(target) => unmount(&target),
            None => Ok(()),
        }
    }
}

fn unmount(target: &Path) -> nix::Result<()> {
    mount::umount2(target, MntFlags::empty()).inspect_err(|_| {
        let _ = mount::umount2(target, MntFlags::MNT_DETACH);
    })
}

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(target) = self.0.take() {
            let _ = unmount(&target);
        }
    }
}
