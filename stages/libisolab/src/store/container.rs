//! A container of the store: what it is made of, how a runtime takes it to run (its lock,
//! its state), and how `rm --force` stops the runtime that holds it.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::Flock;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::files::{self, not_writable, read_json, write_json, Lock};
use super::journal::{self, Intent};
use super::names;
use super::{fault_point, timestamp, Container, State, Status, Storage, Store, KILL_WAIT};
use crate::changes::{self, Change, UpperEntry};
use crate::container::idmapped::Lower;
use crate::copy;
use crate::error::{Error, Result};
use crate::mountinfo;
use crate::mounts::Step;
use crate::overlay::Layers;

impl State {
    /// Running, by this runtime, from now.
    pub(super) fn running() -> State {
        State {
            status: Status::Running,
            runtime_pid: Some(std::process::id() as i32),
            started: Some(timestamp()),
            finished: None,
            exit_code: None,
            runtime_died: false,
        }
    }
}

impl Container {
    /// The directory that becomes the container's `/`: for an overlay, the store's shared
    /// mount point (see [`Container::mount_points`]); for a copy, the copy.
    pub fn rootfs(&self) -> PathBuf {
        match self.config.storage {
            Storage::Overlay => self.store().mounts_dir().join("root"),
            Storage::Copy => self.dir.join("rootfs"),
        }
    }

    /// The directories its child mounts on, inside its own mount namespace: the overlay's
    /// (`root`) and the idmapped base's (`lower0`, …). The store's, not the container's: the
    /// same directories serve every container, each mounting on them in a mount namespace of
    /// its own, where no other container and not the host sees the mount (`man 7
    /// mount_namespaces`). Made once per store, not twice per container, which spares each
    /// start a `mkdir` and an `rmdir` per mount point (a directory's block allocated and
    /// freed: on a filesystem mounted with `discard`, as this project's VM is, a trip to the
    /// disk each).
    pub fn mount_points(&self) -> Vec<PathBuf> {
        if self.config.storage != Storage::Overlay {
            return Vec::new();
        }
        let lowers = self.idmapped_lowers().into_iter().map(|lower| lower.target);
        std::iter::once(self.rootfs()).chain(lowers).collect()
    }

    /// Makes the mount points that are missing (and `mnt/`, in a store an older version
    /// made). A mount point that exists must be a directory of the store's owner that others
    /// may not write, and no mount on the host: a link would take the mount elsewhere. One
    /// `mkdir` and one `statx` each, on every start.
    pub(super) fn make_mount_points(&self) -> Result<()> {
        let caller = nix::unistd::Uid::effective().as_raw();
        let mkdir = |point: &Path| fs::DirBuilder::new().mode(0o755).create(point);
        for point in self.mount_points() {
            let mut made = mkdir(&point);
            if made.as_ref().is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound) {
                self.store().make_root()?;
                made = mkdir(&point);
            }
            match made {
                Ok(()) => continue,
                Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                    let root = self.store().root;
                    return Err(not_writable("mkdir", &root, &point, &error));
                }
                Err(_) => {}
            }
            let mask = libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_UID;
            let stat = mountinfo::statx(&point, libc::AT_SYMLINK_NOFOLLOW, mask)
                .ok_or_else(|| Error::sys("statx", point.display(), Errno::last()))?;
            let mount_root = libc::STATX_ATTR_MOUNT_ROOT as u64;
            if stat.stx_attributes_mask & stat.stx_attributes & mount_root != 0 {
                return Err(Error::Invalid(format!(
                    "{} has a mount on it on the host, where isolab mounts only inside \
                     containers: `gc` detaches it (do not remove what is under it: that is the \
                     mounted directory's)",
                    point.display()
                )));
            }
            let mode = u32::from(stat.stx_mode);
            if mode & libc::S_IFMT != libc::S_IFDIR || stat.stx_uid != caller {
                return Err(Error::Invalid(format!(
                    "{} is not a directory of uid {caller}: isolab mounts there and follows no \
                     link in a store; remove it, and the next run makes it again",
                    point.display()
                )));
            }
            if mode & 0o022 != 0 {
                return Err(Error::Invalid(format!(
                    "{} is mode {:04o}: others may write in the mount point; `chmod go-w {}`",
                    point.display(),
                    mode & 0o7777,
                    point.display()
                )));
            }
        }
        Ok(())
    }

    /// Its overlay's layers (`None` for a copy).
    pub fn layers(&self) -> Option<Layers> {
        (self.config.storage == Storage::Overlay).then(|| Layers {
            lowers: self.config.lowers.clone(),
            upper: self.dir.join("upper"),
            work: self.dir.join("work"),
            userxattr: self.config.userxattr,
            volatile: self.config.remove,
        })
    }

    // ANCHOR: rootfs_mounts
    /// The mounts that make its root, inside its mount namespace: the overlay (none for a
    /// copy, which is a plain directory). Its lowers are the base's idmapped mounts when it
    /// has them (see [`Container::idmapped_lowers`]), the base's directories otherwise.
    pub fn rootfs_mounts(&self) -> Vec<Step> {
        let Some(layers) = self.mounted_layers() else { return Vec::new() };
        vec![layers.mount_step(&self.rootfs())]
    }

    /// Its overlay's layers as they are mounted: the lowers are the idmapped mounts' points
    /// when it has them.
    pub fn mounted_layers(&self) -> Option<Layers> {
        let mut layers = self.layers()?;
        if self.idmaps_base() {
            layers.lowers = self.idmapped_lowers().into_iter().map(|lower| lower.target).collect();
        }
        Some(layers)
    }
    // ANCHOR_END: rootfs_mounts

    // ANCHOR: idmapped_lowers
    /// Is its base idmapped into its user namespace? When a root runtime maps the container's
    /// root to a host uid of its own (`owner`, which owns its upper): through the idmapped
    /// mount, that uid owns what the host's root owns in the base, and may change it (in the
    /// upper). Rootless, root inside is the caller, who owns the base already; without a user
    /// namespace, root inside is the host's root.
    pub fn idmaps_base(&self) -> bool {
        self.config.storage == Storage::Overlay && self.config.owner.is_some()
    }

    /// Its lowers to idmap, each with the store's mount point where the child attaches the
    /// idmapped mount (`mnt/lower0`, …): none if it does not idmap its base.
    pub fn idmapped_lowers(&self) -> Vec<Lower> {
        if !self.idmaps_base() {
            return Vec::new();
        }
        let mounts = self.store().mounts_dir();
        let target = |index: usize| mounts.join(format!("lower{index}"));
        let lowers = self.config.lowers.iter().enumerate();
        lowers.map(|(index, base)| Lower { base: base.clone(), target: target(index) }).collect()
    }
    // ANCHOR_END: idmapped_lowers

    /// What it changed in its base, as `diff` lists it.
    pub fn changes(&self) -> Result<Vec<Change>> {
        match self.layers() {
            Some(layers) => changes::overlay_changes(&layers.upper, &layers.lowers),
            None => {
                let base = self.config.lowers.first().cloned().unwrap_or_default();
                changes::tree_changes(&base, &self.rootfs())
            }
        }
    }

    /// Its upper directory as overlayfs wrote it (for a copy: an error saying there is none).
    pub fn upper_entries(&self) -> Result<Vec<UpperEntry>> {
        match self.layers() {
            Some(layers) => changes::read_upper(&layers.upper),
            None => Err(Error::Invalid(format!(
                "container {} is a copy (--storage copy): it has no upper layer",
                self.config.name
            ))),
        }
    }

    /// The disk it takes of its own: its directory (for an overlay, mostly its upper).
    pub fn disk_usage(&self) -> Result<u64> {
        copy::disk_usage(&self.dir)
    }

    /// Its state, from `state.json`.
    pub fn state(&self) -> Result<State> {
        read_json(&self.dir.join("state.json"))
    }

    /// `state` as it really is: marked running, but nobody holds the lock, means its
    /// runtime died (`ps` shows that without waiting for a `gc`).
    pub(super) fn truth(&self, state: State) -> State {
        if state.status == Status::Running && !files::is_held(&self.dir.join("lock")) {
            return State { status: Status::Exited, runtime_died: true, ..state };
        }
        state
    }

    /// The store this container is in.
    pub(super) fn store(&self) -> Store {
        let root = self.dir.parent().and_then(Path::parent).unwrap_or(Path::new("/"));
        Store { root: root.to_path_buf() }
    }

    /// Takes its lock to run it again (`start`): refused while it runs, and when what it
    /// is made of is gone.
    pub fn start(&self) -> Result<Running> {
        let state = self.state()?;
        for (what, path) in self.needs() {
            if fs::symlink_metadata(&path).is_err() {
                return Err(Error::Invalid(format!(
                    "container {} cannot start: its {what} {} is gone{}",
                    self.config.name,
                    path.display(),
                    if what == "base" {
                        format!(" (rebuild it there, or `rm {}`)", self.config.name)
                    } else {
                        format!(": what it changed is lost; `rm {}` removes it", self.config.name)
                    }
                )));
            }
        }
        let Some(lock) = lock_patiently(&self.dir.join("lock"))? else {
            return Err(Error::Invalid(format!(
                "container {} is running (runtime pid {}): one runtime at a time",
                self.config.name,
                state.runtime_pid.unwrap_or(0)
            )));
        };
        // Not running, then: only a runtime that died leaves a `--rm` container behind (the
        // next `gc` removes it when the journal says so). Its upper was mounted `volatile`,
        // which the kernel refuses to mount again after an unclean end; and its user asked
        // for it to go.
        if self.config.remove {
            return Err(Error::Invalid(format!(
                "container {} was run with --rm and its runtime died before removing it: it \
                 cannot start again; `rm {}` removes it",
                self.config.name, self.config.name
            )));
        }
        // An image of more layers than any before it in this store needs more of them.
        self.make_mount_points()?;
        // A container made before the mount points were the store's has its own, empty:
        // they go (rmdir removes only an empty directory, and never follows a link).
        let lowers = (0..self.config.lowers.len()).map(|index| format!("lower{index}"));
        for old in std::iter::once("merged".to_string()).chain(lowers) {
            let _ = fs::remove_dir(self.dir.join(old));
        }
        let store = self.store();
        journal::write(&store.active_dir(), &self.config.id, Intent::Run)
            .map_err(|e| store.full_hint(e))?;
        let state = State { finished: None, ..State::running() };
        write_json(&self.dir.join("state.json"), &state).map_err(|e| store.full_hint(e))?;
        Ok(Running { container: self.clone(), lock: Some(lock), state, new: false })
    }

    /// What must be there for it to start: its base, and its upper or its copy.
    pub(super) fn needs(&self) -> Vec<(&'static str, PathBuf)> {
        let mut needs: Vec<_> =
            self.config.lowers.iter().map(|lower| ("base", lower.clone())).collect();
        match self.layers() {
            Some(layers) => {
                needs.push(("upper directory", layers.upper));
                needs.push(("overlay work directory", layers.work));
            }
            None => needs.push(("copy of the base", self.rootfs())),
        }
        needs
    }

    /// What [`Store::create`] will do, one call a line (the dry run prints it).
    pub fn create_steps(&self) -> Vec<String> {
        let dir = |name: &str| self.dir.join(name).display().to_string();
        let store = self.store();
        let active_dir = store.active_dir();
        let owner = self.config.owner.map(|(uid, gid)| format!("; chown({uid}, {gid})"));
        let chown = owner.clone().unwrap_or_default();
        // The directory stays the caller's; its root passes through it by group (see make_dir).
        let group = self.config.owner.map(|(_, gid)| format!("; chown(-1, {gid}); chmod(0710)"));
        let mut steps = store.root_steps();
        steps.extend([
            journal::write_step(&active_dir, &self.config.id, Intent::Create),
            format!("mkdir(\"{}\", 0700){}", self.dir.display(), group.unwrap_or_default()),
            format!("flock(\"{}\", LOCK_EX)", dir("lock")),
            format!(
                "symlink(\"{}\", \"{}\")",
                self.config.id,
                store.names_dir().join(&self.config.name).display()
            ),
        ]);
        match self.config.storage {
            Storage::Overlay => {
                for name in ["upper", "work"] {
                    steps.push(format!("mkdir(\"{}\", 0755){chown}", dir(name)));
                }
                for point in self.mount_points() {
                    steps.push(format!("mkdir(\"{}\", 0755) unless it exists", point.display()));
                }
            }
            Storage::Copy => {
                let base = self.config.lowers.first().cloned().unwrap_or_default();
                steps.push(format!("copy(\"{}\", \"{}\"){chown}", base.display(), dir("rootfs")));
            }
        }
        steps.push(format!("write(\"{}\")", dir("config.json")));
        steps.push(format!("write(\"{}\", running)", dir("state.json")));
        steps.push(journal::write_step(&active_dir, &self.config.id, Intent::Run));
        steps
    }

    /// What the runtime does last, one call a line (the dry run prints it).
    pub fn finish_steps(&self) -> Vec<String> {
        let active_dir = self.store().active_dir();
        let active = active_dir.join(&self.config.id).display().to_string();
        if self.config.remove {
            vec![
                journal::write_step(&active_dir, &self.config.id, Intent::Remove),
                format!("remove the container (--rm): {}", self.dir.display()),
                format!("unlink(\"{active}\")"),
            ]
        } else {
            vec![
                format!("write(\"{}\", exited)", self.dir.join("state.json").display()),
                format!("unlink(\"{active}\")"),
            ]
        }
    }

    /// Makes its directory: the caller's, `0700`, so that no other user of the host can
    /// reach its upper (a setuid file written there by root of a container without a user
    /// namespace is a setuid-root file on the host); with a user namespace, `0710` with the
    /// group of the namespace's root, who may pass through to its upper but may not touch
    /// the runtime's files beside it (no other container's root either: each has its own ids).
    pub(super) fn make_dir(&self) -> Result<()> {
        let root = self.dir.parent().and_then(Path::parent).unwrap_or(&self.dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.dir)
            .map_err(|error| not_writable("mkdir", root, &self.dir, &error))?;
        // With a user namespace, its root must pass through to its upper and work, but must
        // not be able to change what the runtime keeps here (config, state, lock): the
        // directory stays the caller's, and the namespace's root gets in through the group,
        // search only (0710). Its own directories below (upper, work) are its own.
        if let Some((_, gid)) = self.config.owner {
            nix::unistd::chown(&self.dir, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|errno| Error::sys("chown", self.dir.display(), errno))?;
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o710))
                .map_err(|e| Error::io("chmod", &self.dir, &e))?;
        }
        Ok(())
    }

    /// Takes the lock of the container just made.
    pub(super) fn lock_dir(&self) -> Result<Flock<File>> {
        match files::try_lock(&self.dir.join("lock"), true)? {
            Lock::Taken(lock) => Ok(lock),
            _ => Err(Error::sys("flock", self.dir.join("lock").display(), Errno::EWOULDBLOCK)),
        }
    }

    /// Makes what is in its directory: upper and work (or the copy); and the store's mount
    /// points it needs.
    pub(super) fn make_contents(&self) -> Result<()> {
        let mkdir = |path: &Path, mode: u32| {
            fs::DirBuilder::new().mode(mode).create(path).map_err(|error| {
                let root = self.dir.parent().and_then(Path::parent).unwrap_or(&self.dir);
                not_writable("mkdir", root, path, &error)
            })
        };
        match self.layers() {
            Some(layers) => {
                // The upper's top is the container's /: it takes the base's mode.
                let base_mode = self
                    .config
                    .lowers
                    .first()
                    .and_then(|base| fs::metadata(base).ok())
                    .map_or(0o755, |metadata| metadata.mode() & 0o7777);
                mkdir(&layers.upper, base_mode)?;
                mkdir(&layers.work, 0o755)?;
                self.make_mount_points()?;
                fs::set_permissions(&layers.upper, fs::Permissions::from_mode(base_mode))
                    .map_err(|e| Error::io("chmod", &layers.upper, &e))?;
                if let Some((uid, gid)) = self.config.owner {
                    copy::change_owner(&layers.upper, uid, gid)?;
                    copy::change_owner(&layers.work, uid, gid)?;
                }
            }
            None => {
                let base = self.config.lowers.first().cloned().unwrap_or_default();
                copy::copy_tree(&base, &self.rootfs())?;
                // Its top is the container's /, its own as an overlay's upper is.
                if let Some((uid, gid)) = self.config.owner {
                    copy::change_owner(&self.rootfs(), uid, gid)?;
                }
            }
        }
        Ok(())
    }
}

/// [`files::try_lock`], trying for a moment: `gc` and `ps` hold a lock briefly. `None`: a
/// runtime holds it.
pub(super) fn lock_patiently(path: &Path) -> Result<Option<Flock<File>>> {
    let start = Instant::now();
    loop {
        if let Lock::Taken(lock) = files::try_lock(path, true)? {
            return Ok(Some(lock));
        }
        if start.elapsed() > Duration::from_millis(200) {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the runtime that holds the lock at `lock_path` and waits for the lock: first the
/// runtime's children (its container; the runtime then reports the end and cleans up, as
/// after any exit), then, if it does not let go, the runtime itself. Works on a stopped
/// (SIGSTOP) runtime too: SIGKILL needs no cooperation.
pub(super) fn kill_runtime(lock_path: &Path, runtime: Option<i32>) -> Result<Flock<File>> {
    // Only the process that holds the lock open is the runtime: a pid alone could have
    // been reused by an unrelated process since it was written down.
    let runtime = runtime.map(Pid::from_raw).filter(|&pid| holds_open(pid, lock_path));
    let Some(runtime) = runtime else {
        return Err(Error::sys("flock", lock_path.display(), Errno::EWOULDBLOCK).hint(
            "another process holds the container's lock, and it is not the runtime its state \
             names: try again in a moment",
        ));
    };
    // A stopped runtime (SIGSTOP, a debugger) cannot let go of the lock after its container
    // dies: it is killed at once, not after the wait.
    let stopped = is_stopped(runtime);
    for (step, victims) in [children_of(runtime), vec![runtime]].into_iter().enumerate() {
        for pid in victims {
            match kill(pid, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(errno) => return Err(Error::sys("kill", pid, errno)),
            }
        }
        if step == 0 && stopped {
            continue;
        }
        let start = Instant::now();
        while start.elapsed() < KILL_WAIT {
            if let Lock::Taken(lock) = files::try_lock(lock_path, true)? {
                return Ok(lock);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    Err(Error::sys("flock", lock_path.display(), Errno::EWOULDBLOCK).hint(
        "the container's runtime still holds its lock after SIGKILL: a process in \
         uninterruptible sleep dies only when its I/O ends; try again",
    ))
}

/// Does process `pid` have `path` open (`/proc/<pid>/fd`)?
fn holds_open(pid: Pid, path: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
}

/// Is process `pid` stopped (state `T` or `t` in `/proc/<pid>/stat`, `man 5 proc_pid_stat`)?
fn is_stopped(pid: Pid) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may hold anything.
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some('T' | 't'))
}

/// The children of process `pid` (`/proc/<pid>/task/<pid>/children`).
fn children_of(pid: Pid) -> Vec<Pid> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// A container this runtime works on: its lock is held until it is settled or dropped.
///
/// Its end is recorded with [`Running::exited`], or the container removed with
/// [`Running::remove`]. Dropped without either (the run failed before its command could
/// start), it cleans up as a guard: a container made for this run is removed again, so a
/// failed `run` leaves nothing; one that was started again keeps its upper, marked exited
/// with the runtime's code 125.
#[derive(Debug)]
pub struct Running {
    /// The container.
    pub container: Container,
    pub(super) lock: Option<Flock<File>>,
    pub(super) state: State,
    pub(super) new: bool,
}

impl Running {
    /// Records the end of its command and lets go of it.
    pub fn exited(mut self, exit_code: u8) -> Result<()> {
        self.settle(Some(exit_code))
    }

    /// Removes the container (`--rm`), then lets go of it.
    pub fn remove(mut self) -> Result<()> {
        self.settle(None)
    }

    /// `Some(code)`: write the exited state; `None`: remove the container. The journal
    /// entry goes last, before the lock.
    fn settle(&mut self, exit_code: Option<u8>) -> Result<()> {
        let Some(lock) = self.lock.take() else { return Ok(()) };
        let store = self.container.store();
        let id = &self.container.config.id;
        let done = match exit_code {
            Some(code) => {
                let state = State {
                    status: Status::Exited,
                    finished: Some(timestamp()),
                    exit_code: Some(code),
                    ..self.state.clone()
                };
                files::write_json_even_if_full(&self.container.dir.join("state.json"), &state)
            }
            None => {
                // Best effort, as in `Store::remove`: a full disk must not keep a failed
                // container (whose copy may be what filled it) from being removed.
                let _ = journal::write(&store.active_dir(), id, Intent::Remove);
                fault_point("remove:journal");
                // Only if the index's link is this container's (a refused name is another's).
                names::release(&store.names_dir(), &self.container.config.name, id);
                files::dismantle(&self.container.dir).map(drop)
            }
        };
        let cleared = done.and_then(|()| journal::clear(&store.active_dir(), id));
        drop(lock);
        cleared
    }
}

#[cfg(test)]
impl Running {
    /// As if the runtime were killed: the lock goes, nothing is written.
    pub(super) fn die(mut self) {
        drop(self.lock.take());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.new {
            let _ = self.settle(None);
        } else {
            let _ = self.settle(Some(crate::exit::RUNTIME_ERROR));
        }
    }
}
