//! The memory bound of a task: a cgroup of the grader's own, `isolab/grade-<grader pid>`,
//! with a memory limit, that every run of the binary joins between fork and exec.
//!
//! Why a cgroup and not `setrlimit(RLIMIT_AS)`: an address-space limit counts what a process
//! maps, not what it uses, and a runtime maps a lot it never touches (thread stacks, a
//! reserved heap, the libraries of every process it forks): a sound runtime would fail under
//! a tight one. A memory cgroup counts the pages actually charged, for the binary and every
//! process it forks, and the kernel's OOM killer ends the cgroup's largest process past the
//! limit (man 7 cgroups; the kernel's Documentation/admin-guide/cgroup-v1/memory.rst and
//! cgroup-v2.rst). The cgroup is made with stage 3's own library (`libisolab::cgroups`), v1
//! or v2 as the host has it, and removed after the task.
//!
//! What it does not bound: a container the binary puts in a cgroup of its own is charged
//! there from then on (its own `--memory`, if any), as the runtime moves it out of ours.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use anyhow::{Context, Result};
use libisolab::cgroups::{self, Backend, ContainerId, Kernel, Limits};
use nix::unistd::{Pid, Uid};

use super::Miss;

/// The default bound: far above what a stage's runtime needs (a few MiB), far below the
/// machine.
pub const DEFAULT_MIB: u64 = 512;

/// Less than this, and a sound runtime (a Rust binary, a shell, busybox) cannot start.
pub const MINIMUM_MIB: u64 = 16;

/// The most `--memory-limit` takes, in MiB (1 TiB: far above any runtime's need, and far
/// below where MiB in bytes would overflow).
pub const MAXIMUM_MIB: u64 = 1 << 20;

/// A task's memory cgroup, while the task runs.
pub struct Budget {
    backend: Box<dyn Backend>,
    id: ContainerId,
    mib: u64,
}

impl Budget {
    /// Makes the cgroup with its limit: `mib` MiB.
    pub fn create(mib: u64) -> Result<Budget> {
        let hierarchy = cgroups::detect(Path::new("/sys/fs/cgroup"), &Kernel)
            .context("the grader bounds each task's memory with a cgroup")?;
        let backend = cgroups::open(&hierarchy, Uid::from_raw(0), Rc::new(Kernel))?;
        let id = ContainerId::new("grade", Pid::this())?;
        // A cgroup of a grader that was killed (same pid, reused) would refuse the mkdir.
        backend.destroy(&id)?;
        let limits = Limits { memory: Some(mib << 20), ..Limits::default() };
        let plan = backend.plan(&id, &limits)?;
        backend.create(&plan).with_context(|| format!("cannot make the grader's cgroup {id}"))?;
        Ok(Budget { backend, id, mib })
    }

    /// The `cgroup.procs` files a process writes its pid to, to join (one per hierarchy the
    /// cgroup has, on v1).
    pub fn procs(&self) -> Vec<CString> {
        self.backend
            .dirs(&self.id)
            .into_iter()
            .filter(|dir| dir.is_dir())
            .filter_map(|dir| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// Reads whether the OOM killer acted in the cgroup, then removes it (killing what is
    /// left in it): a [`Miss`] if the task went over its bound.
    pub fn finish(self) -> Result<Option<Miss>> {
        let usage = self.backend.report(&self.id);
        self.backend
            .destroy(&self.id)
            .with_context(|| format!("cannot remove the grader's cgroup {}", self.id))?;
        let usage = usage?;
        Ok(usage.oom_killed().then(|| Miss {
            expected: format!("the binary and what it forks use at most {} MiB", self.mib),
            happened: format!(
                "it used more than {} MiB: the kernel's OOM killer ended it ({} kill{}); \
                 a runtime needs a few MiB, look for what grows",
                self.mib,
                usage.oom_kills.unwrap_or(1),
                if usage.oom_kills == Some(1) { "" } else { "s" }
            ),
        }))
    }
}

/// Between fork and exec: writes this process's pid to each of `procs`. Only
/// async-signal-safe calls (man 7 signal-safety), on memory allocated before the fork: the
/// parent may have other threads, whose locks a forked child must never wait for.
pub fn join_self(procs: &[CString]) -> std::io::Result<()> {
    // SAFETY: getpid has no preconditions.
    let mut pid = unsafe { libc::getpid() } as u32;
    let mut digits = [0u8; 12];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for path in procs {
        // SAFETY: a NUL-terminated path that lives until the call returns.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let length = digits.len() - start;
        // SAFETY: `digits[start..]` is `length` initialised bytes.
        let written = unsafe { libc::write(fd, digits[start..].as_ptr().cast(), length) };
        let error = std::io::Error::last_os_error();
        // SAFETY: fd is ours, opened above.
        unsafe { libc::close(fd) };
        if written != length as isize {
            return Err(error);
        }
    }
    Ok(())
}
