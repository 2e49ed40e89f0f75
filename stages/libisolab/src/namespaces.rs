//! Namespaces: what a process can *see*. `clone(2)` with `CLONE_NEW*` flags starts a child
//! that has its own view of one kind of global resource each (`man 7 namespaces`).
//!
//! Chapter 1's jail changed only where `/` is. A namespace changes what a name *means*: which
//! mounts `/` is made of (mnt), which processes pid 1, 2, 3… are (pid), what the hostname is
//! (uts), which SysV/POSIX IPC objects exist (ipc), which network devices and ports there are
//! (net), which user ids map to which (user), where the cgroup tree starts (cgroup), and what
//! the boot clock says (time). This module names them, finds which the kernel offers, and
//! starts a child inside the chosen ones ([`spawn`]), with a pause between the `clone` and
//! the child's set-up so that the parent can do what only it can do (write the id maps, move
//! a network device in).

use std::convert::Infallible;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::str::FromStr;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Pid};

use crate::error::{Error, Result, SysResultExt};
use crate::process::{self, Child, ErrorPipe, Failure};

/// One kind of namespace (`man 7 namespaces`, the table "Namespace types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespace {
    /// Mount points (`CLONE_NEWNS`, the first namespace, 2002: hence the name).
    Mnt,
    /// Hostname and NIS domain name (`CLONE_NEWUTS`).
    Uts,
    /// System V IPC and POSIX message queues (`CLONE_NEWIPC`).
    Ipc,
    /// Process ids (`CLONE_NEWPID`): the child is PID 1 of a new tree.
    Pid,
    /// Network devices, addresses, routes, ports (`CLONE_NEWNET`).
    Net,
    /// User and group ids, and capabilities (`CLONE_NEWUSER`).
    User,
    /// The root of the cgroup tree the process sees (`CLONE_NEWCGROUP`).
    Cgroup,
    /// Boot and monotonic clocks (`CLONE_NEWTIME`; not a `clone(2)` flag, see [`unshare_time`]).
    Time,
}

impl Namespace {
    /// All of them, in the order the plan prints them.
    pub const ALL: [Namespace; 8] = [
        Namespace::User,
        Namespace::Mnt,
        Namespace::Uts,
        Namespace::Ipc,
        Namespace::Pid,
        Namespace::Net,
        Namespace::Cgroup,
        Namespace::Time,
    ];

    /// The name `--ns` takes and `/proc/self/ns/` uses.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Mnt => "mnt",
            Namespace::Uts => "uts",
            Namespace::Ipc => "ipc",
            Namespace::Pid => "pid",
            Namespace::Net => "net",
            Namespace::User => "user",
            Namespace::Cgroup => "cgroup",
            Namespace::Time => "time",
        }
    }

    /// The `CLONE_NEW*` flag.
    pub fn flag(self) -> CloneFlags {
        match self {
            Namespace::Mnt => CloneFlags::CLONE_NEWNS,
            Namespace::Uts => CloneFlags::CLONE_NEWUTS,
            Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
            Namespace::Pid => CloneFlags::CLONE_NEWPID,
            Namespace::Net => CloneFlags::CLONE_NEWNET,
            Namespace::User => CloneFlags::CLONE_NEWUSER,
            Namespace::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            Namespace::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
        }
    }

    fn flag_name(self) -> &'static str {
        match self {
            Namespace::Mnt => "CLONE_NEWNS",
            Namespace::Uts => "CLONE_NEWUTS",
            Namespace::Ipc => "CLONE_NEWIPC",
            Namespace::Pid => "CLONE_NEWPID",
            Namespace::Net => "CLONE_NEWNET",
            Namespace::User => "CLONE_NEWUSER",
            Namespace::Cgroup => "CLONE_NEWCGROUP",
            Namespace::Time => "CLONE_NEWTIME",
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Namespace {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Namespace::ALL.into_iter().find(|ns| ns.name() == text).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown namespace '{text}' in --ns: expected a comma-separated list of \
                 mnt,uts,ipc,pid,net,user,cgroup,time, or none"
            ))
        })
    }
}

/// A set of namespaces, as given to `--ns` (`none` is the empty set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Namespaces(u8);

impl Namespaces {
    /// No new namespace at all: the child shares every view with the host (as in stage 1).
    pub const NONE: Namespaces = Namespaces(0);

    fn bit(ns: Namespace) -> u8 {
        1 << Namespace::ALL.iter().position(|&n| n == ns).unwrap_or(0)
    }

    /// Is `ns` in the set?
    pub fn contains(self, ns: Namespace) -> bool {
        self.0 & Self::bit(ns) != 0
    }

    /// Adds `ns`.
    pub fn insert(&mut self, ns: Namespace) {
        self.0 |= Self::bit(ns);
    }

    /// Removes `ns`.
    pub fn remove(&mut self, ns: Namespace) {
        self.0 &= !Self::bit(ns);
    }

    /// The members, in [`Namespace::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Namespace> {
        Namespace::ALL.into_iter().filter(move |&ns| self.contains(ns))
    }

    /// Is the set empty?
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The namespaces this kernel offers: one file each in `/proc/self/ns/` (`man 7
    /// namespaces`, "The /proc/[pid]/ns/ directory"). A kernel built without, say,
    /// `CONFIG_TIME_NS` has no `time` file there. Each is a symbolic link, looked at, not
    /// followed (`lstat`): following one opens the namespace itself (an nsfs inode), eight
    /// times per start for nothing.
    pub fn supported() -> Namespaces {
        let dir = Path::new("/proc/self/ns");
        let mut set = Namespaces::NONE;
        for ns in Namespace::ALL {
            if dir.join(ns.name()).symlink_metadata().is_ok() {
                set.insert(ns);
            }
        }
        set
    }

    /// The flags for `clone(2)`: every member except `time` (see [`unshare_time`]).
    pub fn clone_flags(self) -> CloneFlags {
        self.iter()
            .filter(|&ns| ns != Namespace::Time)
            .fold(CloneFlags::empty(), |flags, ns| flags | ns.flag())
    }

    /// `CLONE_NEWUSER | CLONE_NEWNS | …`, as a man page writes them.
    pub fn flag_names(self) -> String {
        let names: Vec<&str> =
            self.iter().filter(|&ns| ns != Namespace::Time).map(Namespace::flag_name).collect();
        names.join(" | ")
    }
}

impl FromStr for Namespaces {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let mut set = Namespaces::NONE;
        if text.trim() == "none" {
            return Ok(set);
        }
        for name in text.split(',') {
            set.insert(name.trim().parse()?);
        }
        Ok(set)
    }
}

impl fmt::Display for Namespaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(Namespace::name).collect();
        f.write_str(&names.join(","))
    }
}

// ANCHOR: clone
/// `clone(2)` used like `fork(2)`: no new stack, the child continues from here with a copy of
/// the parent's memory, but it starts inside new namespaces (`flags`).
///
/// We call the raw system call rather than glibc's `clone()` wrapper, which insists on a
/// separate stack and a function to run; with a null stack the kernel reuses the caller's
/// stack (copy-on-write), exactly as `fork` does. `SIGCHLD` is the signal the parent gets when
/// the child ends, so that `waitpid` treats it as an ordinary child.
pub(crate) fn clone_like_fork(flags: CloneFlags) -> nix::Result<ForkResult> {
    let flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: with a null stack and no CLONE_VM/CLONE_THREAD/CLONE_SETTLS the kernel gives the
    // child a private copy of our address space, as fork(2) does; the remaining arguments
    // (parent_tid, child_tid, tls) are unused for these flags. The runtime is single-threaded,
    // so no lock can be held by a thread that does not exist in the child.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match pid {
        -1 => Err(Errno::last()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent { child: Pid::from_raw(pid as i32) }),
    }
}
// ANCHOR_END: clone

/// The arguments of `clone3(2)` (`struct clone_args` of linux/sched.h, as of Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (linux/sched.h): the child starts in the cgroup v2 directory
/// `clone_args.cgroup` names, instead of its parent's.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

// ANCHOR: clone_into
/// `clone3(2)` used like `fork(2)`, with the child born inside the cgroup v2 directory
/// `cgroup` (chapter 3). Moving a process between cgroups afterwards takes a machine-wide lock
/// for writing, which can cost an RCU grace period (milliseconds); a child born in its cgroup
/// never moves, and `fork` takes that lock only for reading.
fn clone_into_cgroup(flags: CloneFlags, cgroup: BorrowedFd) -> nix::Result<ForkResult> {
    let args = CloneArgs {
        flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size we pass; with no stack and no
    // CLONE_VM the child gets a copy of our address space and returns here, as with fork(2)
    // (see `clone_like_fork` for why that is safe in this single-threaded runtime).
    let pid = unsafe {
        libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>())
    };
    match pid {
        -1 => Err(Errno::last()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent { child: Pid::from_raw(pid as i32) }),
    }
}
// ANCHOR_END: clone_into

// ANCHOR: spawn
/// Starts a child in new namespaces; it runs `child_main` (which ends by exec'ing the
/// command) once the parent has run `prepare` for it.
///
/// Compared with chapter 1's `process::spawn` there is one more pipe: the *sync* pipe. Some
/// set-up can only be done from outside, after the child exists and before it goes on: the
/// parent writes its user id maps (`man 7 user_namespaces`: only a process outside the new user
/// namespace may map its ids), and moves one end of a veth pair into its network namespace.
/// So the child waits, reading the sync pipe, until `prepare` has run. If `prepare` fails the
/// parent kills the child, which never ran anything, and reports the error.
pub fn spawn<P, F>(namespaces: Namespaces, prepare: P, child_main: F) -> Result<Child, Failure>
where
    P: FnOnce(Pid) -> Result<(), Failure>,
    F: FnOnce(&ErrorPipe) -> Result<Infallible, Failure>,
{
    spawn_into(namespaces, None, |pid, _| prepare(pid), child_main)
}
// ANCHOR_END: spawn

/// [`spawn`], with the child born inside the cgroup v2 directory `cgroup` when one is given
/// and the kernel can (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7). `prepare` is told
/// whether it was: when not (an older kernel), the parent must move the child in itself.
pub fn spawn_into<P, F>(
    namespaces: Namespaces,
    cgroup: Option<BorrowedFd>,
    prepare: P,
    child_main: F,
) -> Result<Child, Failure>
where
    P: FnOnce(Pid, bool) -> Result<(), Failure>,
    F: FnOnce(&ErrorPipe) -> Result<Infallible, Failure>,
{
    let saved_mask = process::block_for_child()?;
    let (error_read, error_write) = process::error_pipe()?;
    let (sync_read, sync_write) = process::error_pipe()?;
    // We become a subreaper: what the container leaves when its first process dies outside a
    // pid namespace (the orphans of an init that was sent SIGKILL, or that had no /proc to
    // find them) comes to us rather than to the host's init, and `init::wait_stopping` ends
    // it (man 2 prctl, PR_SET_CHILD_SUBREAPER; the child does not inherit it).
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and nothing else.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };

    let flags = namespaces.clone_flags();
    let (cloned, born_in_cgroup) = match cgroup.map(|fd| clone_into_cgroup(flags, fd)) {
        // No clone3 (before 5.3), or no CLONE_INTO_CGROUP (before 5.7): clone, then move.
        None | Some(Err(Errno::ENOSYS | Errno::E2BIG | Errno::EINVAL)) => {
            (clone_like_fork(flags), false)
        }
        Some(cloned) => (cloned, true),
    };
    match cloned {
        Err(errno) => {
            process::restore(&saved_mask);
            Err(clone_error(namespaces, errno).into())
        }
        Ok(ForkResult::Child) => {
            drop((error_read, sync_write));
            // Die with the runtime: if it is killed (even by SIGKILL), the kernel kills us
            // too, so that no container outlives the only process that would report on it
            // (man 2 PR_SET_PDEATHSIG). Then wait for the parent's "go".
            // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and nothing else.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            if !released(sync_read) {
                // The parent failed (or died) before releasing us: end quietly, it reports.
                // SAFETY: _exit never returns and runs none of the parent's exit handlers.
                unsafe { libc::_exit(i32::from(crate::exit::RUNTIME_ERROR)) }
            }
            process::run_child(error_write, &saved_mask, child_main)
        }
        Ok(ForkResult::Parent { child }) => {
            drop((error_write, sync_read));
            let child = Child::new(child, saved_mask);
            if let Err(failure) = prepare(child.pid, born_in_cgroup) {
                child.abandon();
                return Err(failure);
            }
            let _ = File::from(sync_write).write_all(b"g");
            process::wait_for_exec(child, error_read)
        }
    }
}

/// In the child: blocks until the parent writes its "go" byte (true) or closes the pipe (false).
fn released(sync_read: OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    matches!(File::from(sync_read).read(&mut byte), Ok(1))
}

fn clone_error(namespaces: Namespaces, errno: Errno) -> Error {
    let error = Error::sys("clone", namespaces.flag_names(), errno);
    match errno {
        Errno::EPERM if namespaces.contains(Namespace::User) => error.hint(
            "this kernel refuses unprivileged user namespaces: check the sysctls \
             kernel.unprivileged_userns_clone and user.max_user_namespaces, and AppArmor's \
             kernel.apparmor_restrict_unprivileged_userns (see `isolab doctor`)",
        ),
        Errno::EPERM => error.hint(
            "creating namespaces needs CAP_SYS_ADMIN: run as root, or add `user` to --ns to \
             run rootless",
        ),
        Errno::EINVAL => error.hint("this kernel does not offer one of these namespaces"),
        Errno::ENOSPC | Errno::EUSERS => error.hint(
            "the limit of nested or total namespaces is reached (/proc/sys/user/max_*_namespaces)",
        ),
        _ => error,
    }
}

// ANCHOR: unshare_time
/// Asks for a new time namespace for the *children* of the calling process.
///
/// `CLONE_NEWTIME` has the value `0x80`, which `clone(2)` already uses for the exit signal, so
/// the time namespace cannot be made by `clone`. `unshare(CLONE_NEWTIME)` does not move the
/// caller either (`man 7 time_namespaces`): it sets the namespace its *next children* start in
/// (`/proc/self/ns/time_for_children`), and since Linux 6.0 `execve(2)` moves the caller in
/// too. So the child calls this last, just before it forks the command (`--init`) or execs it.
pub fn unshare_time() -> Result<()> {
    nix::sched::unshare(Namespace::Time.flag()).sys("unshare", "CLONE_NEWTIME")
}
// ANCHOR_END: unshare_time

/// The namespace of `kind` that `pid` is in, as `/proc/<pid>/ns/<kind>` names it
/// (`mnt:[4026531841]`): two processes share a namespace when these are equal.
pub fn identity(pid: Pid, kind: Namespace) -> Result<String> {
    let path = format!("/proc/{pid}/ns/{}", kind.name());
    std::fs::read_link(&path)
        .map(|target| target.display().to_string())
        .map_err(|e| Error::io("readlink", &path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_none() {
        let set: Namespaces = "mnt,pid,uts".parse().unwrap();
        assert_eq!(set.to_string(), "mnt,uts,pid");
        assert!(set.contains(Namespace::Pid) && !set.contains(Namespace::Net));
        assert_eq!("none".parse::<Namespaces>().unwrap(), Namespaces::NONE);
        assert_eq!(Namespaces::NONE.to_string(), "none");
    }

    #[test]
    fn refuses_unknown_names() {
        let error = "mnt,bogus".parse::<Namespaces>().unwrap_err().to_string();
        assert!(error.starts_with("unknown namespace 'bogus' in --ns"), "{error}");
    }

    #[test]
    fn time_is_not_a_clone_flag() {
        let set: Namespaces = "user,mnt,time".parse().unwrap();
        assert_eq!(set.clone_flags(), CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS);
        assert_eq!(set.flag_names(), "CLONE_NEWUSER | CLONE_NEWNS");
    }

    #[test]
    fn this_kernel_has_mount_namespaces() {
        assert!(Namespaces::supported().contains(Namespace::Mnt));
    }
}
