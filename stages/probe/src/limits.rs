//! Limits at work: the probe pushes against memory, processes and CPU, and reports where it
//! was stopped — or that nothing stopped it.
//!
//! The `resources` check reads the limit files; these three show the limits *working*, the
//! way a runaway program would meet them (`man 7 cgroups`):
//!
//! - `memory-hog`: a forked child touches memory in steps of [`STEP_MIB`] MiB up to
//!   [`MEMORY_CAP_MIB`] MiB. A memory limit ends it with the OOM killer (SIGKILL) on the way.
//! - `fork-bomb`: up to [`FORK_CAP`] children that only wait. A pids limit makes `fork(2)`
//!   fail with EAGAIN on the way.
//! - `cpu-share`: a busy loop for [`BUSY`] of wall time, measuring the CPU time it got. A CPU
//!   quota holds it well below one CPU.
//!
//! They run everywhere, on the host too, so each is bounded: a cap, a timeout, and every
//! child killed and reaped before the check returns (and `PR_SET_PDEATHSIG`, should the probe
//! itself be killed first).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use libisolab::error::errno_name;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{self, ForkResult, Pid};

use crate::{Check, CheckId, Status};

/// The most memory the hog touches, in MiB: more than a test limit, little for a host.
pub const MEMORY_CAP_MIB: usize = 256;
/// The hog's step, in MiB.
pub const STEP_MIB: usize = 8;
/// How long the hog may take before it is stopped (swap can make it slow).
pub const HOG_TIMEOUT: Duration = Duration::from_secs(10);
/// The most children the fork bomb makes.
pub const FORK_CAP: usize = 64;
/// How long the CPU check keeps a CPU busy.
pub const BUSY: Duration = Duration::from_millis(300);
/// Below this share of one CPU, a busy loop is being held back …
pub const THROTTLED_BELOW: f64 = 0.8;
/// … by a quota, when it also stalls this long at a time: a throttled group waits for the
/// next period (50 ms of every 100 ms at 0.5 CPUs), while other busy processes on the same
/// CPU only take turns of a few milliseconds with it.
pub const QUOTA_STALL: Duration = Duration::from_millis(25);

/// In a forked child: die with the probe (`man 2 PR_SET_PDEATHSIG`), even if it is already
/// gone by the time we ask.
fn die_with_parent(parent: Pid) {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and nothing else.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if unistd::getppid() != parent {
        // SAFETY: _exit ends the forked child without running the probe's exit handlers.
        unsafe { libc::_exit(0) }
    }
}

// ANCHOR: memory_hog
/// `memory-hog`: a child touches up to [`MEMORY_CAP_MIB`] MiB, telling the probe after each
/// step; an OOM kill on the way means a limit holds.
pub fn memory_hog() -> Check {
    let id = CheckId::MemoryHog;
    let (read_end, write_end) = match unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(errno) => return Check::not_applicable(id, format!("pipe2: {}", errno_name(errno))),
    };
    let parent = unistd::getpid();
    // SAFETY: the probe is single-threaded; the child only maps, touches and writes memory,
    // then ends with _exit.
    let child = match unsafe { unistd::fork() } {
        Err(errno) => return Check::not_applicable(id, format!("fork: {}", errno_name(errno))),
        Ok(ForkResult::Child) => {
            drop(read_end);
            die_with_parent(parent);
            touch_memory(write_end)
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(write_end);
    let (touched, timed_out) = read_progress(read_end, HOG_TIMEOUT);
    if timed_out {
        let _ = kill(child, Signal::SIGKILL);
    }
    let status = waitpid(child, None);
    match status {
        _ if timed_out => Check::not_applicable(
            id,
            format!("the child touched {touched} MiB in {HOG_TIMEOUT:?} and was stopped"),
        ),
        Ok(WaitStatus::Exited(_, 0)) => Check::new(
            id,
            Status::Leaks,
            format!("a child touched {touched} MiB and nothing stopped it: no memory limit"),
        ),
        Ok(WaitStatus::Signaled(_, Signal::SIGKILL, _)) => Check::new(
            id,
            Status::Isolated,
            format!(
                "a child was killed (SIGKILL, the OOM killer) after touching {touched} of \
                 {MEMORY_CAP_MIB} MiB: a memory limit holds"
            ),
        ),
        other => Check::not_applicable(id, format!("the child ended unexpectedly: {other:?}")),
    }
}

/// In the child: map [`MEMORY_CAP_MIB`] MiB and write to every page, step by step, writing the
/// MiB touched so far into `progress` after each step.
fn touch_memory(progress: OwnedFd) -> ! {
    let size = MEMORY_CAP_MIB << 20;
    // SAFETY: an anonymous private mapping of `size` bytes; nothing else refers to it.
    let memory = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if memory == libc::MAP_FAILED {
        // SAFETY: _exit ends the forked child.
        unsafe { libc::_exit(2) }
    }
    let memory = memory.cast::<u8>();
    let mut pipe = File::from(progress);
    for step in 0..MEMORY_CAP_MIB / STEP_MIB {
        for offset in (step * (STEP_MIB << 20)..(step + 1) * (STEP_MIB << 20)).step_by(4096) {
            // SAFETY: offset < size, inside the mapping; a volatile write so that the page is
            // really touched (and charged to our cgroup).
            unsafe { memory.add(offset).write_volatile(1) };
        }
        let touched = ((step + 1) * STEP_MIB) as u32;
        if std::io::Write::write_all(&mut pipe, &touched.to_le_bytes()).is_err() {
            break;
        }
    }
    // SAFETY: _exit ends the forked child without running the probe's exit handlers.
    unsafe { libc::_exit(0) }
}
// ANCHOR_END: memory_hog

/// Reads the child's progress reports until it closes the pipe or `timeout` passes; returns
/// the last MiB count and whether the time ran out.
fn read_progress(read_end: OwnedFd, timeout: Duration) -> (u32, bool) {
    let deadline = Instant::now() + timeout;
    let mut pipe = File::from(read_end);
    let mut touched = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut fd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for an fd that stays open meanwhile (`man 2 poll`).
        match unsafe { libc::poll(&mut fd, 1, millis) } {
            0 => return (touched, true),
            ready if ready > 0 => {}
            _ if Errno::last() == Errno::EINTR => continue,
            _ => return (touched, false),
        }
        let mut bytes = [0u8; 4];
        match pipe.read_exact(&mut bytes) {
            Ok(()) => touched = u32::from_le_bytes(bytes),
            Err(_) => return (touched, false), // closed: the child is done, one way or another
        }
    }
}

/// Kills and reaps the fork bomb's children, also when the check is left early.
struct Children(Vec<Pid>);

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = kill(pid, Signal::SIGKILL);
        }
        for &pid in &self.0 {
            let _ = waitpid(pid, None);
        }
    }
}

// ANCHOR: fork_bomb
/// `fork-bomb`: forks up to [`FORK_CAP`] children that only wait; EAGAIN on the way means a
/// limit on processes holds. Every child is killed and reaped before this returns.
pub fn fork_bomb() -> Check {
    let id = CheckId::ForkBomb;
    let parent = unistd::getpid();
    let mut children = Children(Vec::new());
    let mut refused = None;
    while children.0.len() < FORK_CAP {
        // SAFETY: the probe is single-threaded; the child only waits for a signal, then ends
        // with _exit.
        match unsafe { unistd::fork() } {
            Ok(ForkResult::Child) => {
                die_with_parent(parent);
                // SAFETY: pause and _exit are async-signal-safe; SIGKILL ends us, and any
                // other signal (the probe's handlers are inherited) ends the wait.
                unsafe {
                    libc::pause();
                    libc::_exit(0)
                }
            }
            Ok(ForkResult::Parent { child }) => children.0.push(child),
            Err(errno) => {
                refused = Some(errno);
                break;
            }
        }
    }
    let forked = children.0.len();
    drop(children);
    match refused {
        None => Check::new(
            id,
            Status::Leaks,
            format!(
                "forked {forked} children and nothing stopped it: no limit on processes (all \
                 killed and reaped)"
            ),
        ),
        Some(Errno::EAGAIN) => Check::new(
            id,
            Status::Isolated,
            format!(
                "after {forked} children ({} processes with the probe) fork failed with {}: a \
                 limit on processes holds",
                forked + 1,
                errno_name(Errno::EAGAIN)
            ),
        ),
        Some(errno) => Check::not_applicable(
            id,
            format!("fork failed after {forked} children: {}", errno_name(errno)),
        ),
    }
}
// ANCHOR_END: fork_bomb

/// The CPU time this thread has used (`man 2 clock_gettime`, `CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

// ANCHOR: cpu_share
/// `cpu-share`: keeps one CPU busy for [`BUSY`] and measures the CPU time it got. Well below
/// one CPU, with long stalls, means a quota holds it back; well below with short stalls only
/// means a busy host.
pub fn cpu_share() -> Check {
    let id = CheckId::CpuShare;
    let (wall_start, cpu_start) = (Instant::now(), thread_cpu_time());
    let mut last = wall_start;
    let mut longest_stall = Duration::ZERO;
    while last.duration_since(wall_start) < BUSY {
        for spin in 0..10_000u32 {
            std::hint::black_box(spin);
        }
        let now = Instant::now();
        longest_stall = longest_stall.max(now - last);
        last = now;
    }
    let wall = last.duration_since(wall_start);
    let share = (thread_cpu_time() - cpu_start).as_secs_f64() / wall.as_secs_f64();
    let measured = format!(
        "a busy loop got {share:.2} of a CPU over {:.2} s (longest stall {} ms)",
        wall.as_secs_f64(),
        longest_stall.as_millis()
    );
    if share < THROTTLED_BELOW && longest_stall >= QUOTA_STALL {
        Check::new(id, Status::Isolated, format!("{measured}: a CPU quota holds it back"))
    } else if share < THROTTLED_BELOW {
        let busy = "other processes took turns on its CPU, but no quota holds it back";
        Check::new(id, Status::Leaks, format!("{measured}: {busy}"))
    } else {
        Check::new(id, Status::Leaks, format!("{measured}: nothing holds it back"))
    }
}
// ANCHOR_END: cpu_share

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_read_until_the_pipe_closes() {
        let (read_end, write_end) = unistd::pipe().unwrap();
        let mut pipe = File::from(write_end);
        for mib in [8u32, 16, 24] {
            std::io::Write::write_all(&mut pipe, &mib.to_le_bytes()).unwrap();
        }
        drop(pipe);
        assert_eq!(read_progress(read_end, Duration::from_secs(1)), (24, false));
    }

    #[test]
    fn a_silent_child_times_out() {
        let (read_end, _write_end) = unistd::pipe().unwrap();
        assert_eq!(read_progress(read_end, Duration::from_millis(20)), (0, true));
    }
}
