//! Watching the host while a probe runs, and putting the host back afterwards.
//!
//! From inside a sandbox, "my sethostname succeeded" cannot tell a UTS namespace from the
//! host's own name. So while each probe runs, a [`Watcher`] thread looks at the host every
//! few milliseconds: its hostname (`uname`), its mount table (`/proc/self/mountinfo`), and the
//! base rootfs for the probe's file. Seeing the run's token there is the proof of a leak.
//!
//! The guards here undo what a probe may have left if it was killed halfway: [`HostGuard`]
//! restores the hostname and unmounts anything carrying the token; [`Workdir`] unmounts what
//! is still mounted under the run's directory *before* deleting it, because a recursive
//! delete would walk into a mount and delete the files of whatever is mounted there.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use isolab_probe::mounts::mount_point;
use nix::mount::{umount2, MntFlags};
use nix::sys::utsname::uname;
use nix::unistd;
use serde::Serialize;

/// How often the watcher looks; the probe holds its changes for 300 ms by default.
pub const POLL: Duration = Duration::from_millis(5);

/// What the host showed while a probe ran (the first sighting of each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// The host's hostname, when it carried the token.
    pub hostname: Option<String>,
    /// The mount point of a host mount whose mountinfo line carried the token.
    pub mount: Option<PathBuf>,
    /// The probe's file, when it appeared in the base rootfs.
    pub rootfs_write: Option<PathBuf>,
}

/// A thread that polls the host until stopped.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Seen>>,
}

impl Watcher {
    /// Starts watching for `token`, and for `rootfs_write` (the probe's file as it would appear
    /// in the base rootfs).
    pub fn start(token: &str, rootfs_write: PathBuf) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let token = token.to_string();
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            loop {
                // Read the flag first, look once more, then stop: a change made just before
                // the probe exited is still seen.
                let last = stopping.load(Ordering::SeqCst);
                look(&token, &rootfs_write, &mut seen);
                if last {
                    break seen;
                }
                std::thread::sleep(POLL);
            }
        });
        Watcher { stop, thread: Some(thread) }
    }

    /// Stops the thread and returns what it saw.
    pub fn stop(mut self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|thread| thread.join().ok()).unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One look at the host.
fn look(token: &str, rootfs_write: &Path, seen: &mut Seen) {
    if seen.hostname.is_none() {
        if let Ok(uts) = uname() {
            let name = uts.nodename().to_string_lossy().into_owned();
            if name.contains(token) {
                seen.hostname = Some(name);
            }
        }
    }
    if seen.mount.is_none() {
        seen.mount = mounts_with(token).into_iter().next();
    }
    if seen.rootfs_write.is_none() && rootfs_write.symlink_metadata().is_ok() {
        seen.rootfs_write = Some(rootfs_write.to_path_buf());
    }
}

/// The mount points of the host's mounts whose mountinfo line contains `needle`.
pub fn mounts_with(needle: &str) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo.lines().filter(|line| line.contains(needle)).filter_map(mount_point).collect()
}

/// The host's mounts at or under `dir`, deepest first (the order they must be unmounted in).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> =
        mountinfo.lines().filter_map(mount_point).filter(|point| point.starts_with(dir)).collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points
}

/// Unmounts lazily (`MNT_DETACH`, `man 2 umount`): gone from the table now, even if busy.
pub fn detach(points: &[PathBuf]) {
    for point in points {
        let _ = umount2(point, MntFlags::MNT_DETACH);
    }
}

/// Restores the host after the run: its hostname, if it still carries the token, and
/// unmounts every mount that carries the token.
#[derive(Debug)]
pub struct HostGuard {
    token: String,
    hostname: OsString,
}

impl HostGuard {
    /// Remembers the host's hostname now, before any probe runs.
    pub fn new(token: &str) -> anyhow::Result<HostGuard> {
        let hostname = unistd::gethostname()
            .map_err(|errno| anyhow::anyhow!("gethostname failed: {errno}"))?;
        Ok(HostGuard { token: token.to_string(), hostname })
    }

    /// Puts back what a probe left, and says what that was (normally nothing).
    pub fn restore(&self) -> Vec<String> {
        let mut repaired = Vec::new();
        let current = unistd::gethostname().unwrap_or_default();
        if current.to_string_lossy().contains(&self.token) {
            let _ = unistd::sethostname(&self.hostname);
            repaired.push(format!(
                "restored the hostname {:?} (it was still {:?})",
                self.hostname.to_string_lossy(),
                current.to_string_lossy()
            ));
        }
        let mounts = mounts_with(&self.token);
        if !mounts.is_empty() {
            detach(&mounts);
            repaired.push(format!("unmounted {}", shown(&mounts)));
        }
        repaired
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        for repair in self.restore() {
            eprintln!("isolab: {repair}");
        }
    }
}

/// The run's temporary directory: removed at the end unless `--keep`, and never while
/// something is still mounted in it.
#[derive(Debug)]
pub struct Workdir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    /// Keep the directory (`--keep`)?
    pub keep: bool,
}

impl Workdir {
    /// A fresh directory `isolab-<verb>-XXXX` in the system's temp dir.
    pub fn create(verb: &str, keep: bool) -> anyhow::Result<Workdir> {
        use anyhow::Context;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(&format!("isolab-{verb}-"))
            .tempdir()
            .context("cannot create a temporary directory for the comparison")?;
        // tempfile makes it 0700. The markers in it must be visible to whoever can see the
        // host's tree, also to uid 65534: otherwise "not visible" would mean "not allowed".
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 755 {} failed", dir.path().display()))?;
        Ok(Workdir { path: dir.path().to_path_buf(), dir: Some(dir), keep })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let mounts = mounts_under(&self.path);
        if !mounts.is_empty() {
            detach(&mounts);
            eprintln!("isolab: unmounted {} before removing the directory", shown(&mounts));
        }
        if self.keep {
            let _ = dir.keep();
        } else if !mounts_under(&self.path).is_empty() {
            let _ = dir.keep();
            eprintln!(
                "isolab: kept {}: something is still mounted in it (see /proc/self/mountinfo)",
                self.path.display()
            );
        }
        // Otherwise dropping `dir` removes it.
    }
}

fn shown(points: &[PathBuf]) -> String {
    points.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
