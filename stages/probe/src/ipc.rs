//! IPC isolation: can the sandbox open the host's System V shared memory?
//!
//! SysV IPC objects (shared memory, semaphores, message queues) are found by a numeric *key*
//! in a table that belongs to the IPC namespace (`man 7 ipc_namespaces`). Without one of its
//! own, a sandboxed process can attach to the host's segments just by guessing or knowing
//! their key. `isolab compare` creates a segment with a random key; the probe asks for it
//! with `shmget(key, 0, 0)`, which opens an existing segment and creates nothing
//! (`man 2 shmget`).

use libisolab::error::errno_name;
use nix::errno::Errno;

use crate::{Check, CheckId, Inputs, Status};

/// `ipc`: look the host's segment up by its key.
pub fn ipc(inputs: &Inputs) -> Check {
    let id = CheckId::Ipc;
    let Some(key) = inputs.shm_key else {
        return Check::not_applicable(id, "no --shm-key given");
    };
    let call = format!("shmget({key:#x}, 0, 0)");
    // SAFETY: shmget only looks up a key; with size 0 and no IPC_CREAT it creates nothing and
    // touches no memory of ours.
    let shmid = unsafe { libc::shmget(key, 0, 0) };
    if shmid >= 0 {
        return Check::new(
            id,
            Status::Leaks,
            format!("{call} found the host's segment (shmid {shmid}): the IPC table is shared"),
        );
    }
    match Errno::last() {
        errno @ Errno::ENOENT => Check::new(
            id,
            Status::Isolated,
            format!("{call} failed: {} (this IPC table has no such key)", errno_name(errno)),
        ),
        // EACCES: the segment is there, only its mode keeps us out. Existence is the leak.
        errno @ Errno::EACCES => Check::new(
            id,
            Status::Leaks,
            format!(
                "{call} failed: {}, which proves the host's segment is there",
                errno_name(errno)
            ),
        ),
        errno => Check::not_applicable(id, format!("{call} failed: {}", errno_name(errno))),
    }
}
