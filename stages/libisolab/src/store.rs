//! The container store: where containers live on disk between runs.
//!
//! Until chapter 4 a container was a process: it began with `run` and was gone when its
//! command ended. With a writable layer of its own it has something to keep, so it gets a
//! directory in the store, and a life of its own: created, running, exited, started again,
//! removed.
//!
//! ```text
//! <root>/                       --root, $ISOLAB_ROOT, /var/lib/isolab (root) or
//!   lock                        $XDG_DATA_HOME/isolab (any other user)
//!   containers/<id>/
//!     config.json               what it is: name, base, storage, the command line that made it
//!     state.json                what it is doing: created, running (runtime pid), exited (code)
//!     lock                      held (flock) by the runtime while the container runs
//!     upper/ work/ merged/      overlay: its own layer, overlayfs's scratch, the mount point
//!     rootfs/                   copy: its full copy of the base
//! ```
//!
//! Three rules keep the store sound when runtimes crash or are killed:
//!
//! - **Files are replaced, never rewritten in place.** A JSON file is written to a temporary
//!   name, flushed to disk (`fsync`) and renamed over the old one (`rename(2)` is atomic), so
//!   a reader sees the old file or the new one, never half of one ([`write_atomic`]).
//! - **Locks, not pids, say who is alive.** A runtime holds an exclusive `flock(2)` on its
//!   container's `lock` file for as long as the container runs; the kernel drops it when the
//!   runtime dies, however it dies. A pid can be reused, a lock cannot outlive its holder.
//!   The store's own `lock` serialises creation (names are unique) with [`Store::gc`].
//! - **What a killed runtime left is cleaned up by the next one.** [`Store::gc`] finds
//!   containers marked running whose lock is free, and fixes their state (or removes them,
//!   if they were run with `--rm`); it unmounts whatever is still mounted on the host in a
//!   stopped container's directory, and removes half-made containers. `run`, `rm` and `gc`
//!   call it and say what it did.
//!
//! The overlay itself is mounted inside the container's own mount namespace (see
//! [`crate::container::Plan::move_rootfs`]), so it dies with the container even after a
//! SIGKILL of the runtime: there is normally nothing on the host to unmount.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::MntFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::changes::{self, Change, UpperEntry};
use crate::copy;
use crate::error::{Error, Result};
use crate::mounts::Step;
use crate::overlay::Layers;

/// The store of a root user, unless `--root` or `ISOLAB_ROOT` say otherwise.
pub const SYSTEM_ROOT: &str = "/var/lib/isolab";

/// How long `rm --force` waits for a killed container's runtime to let go of it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How a container's root filesystem is made from its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// A union mount: the base read-only below, the container's own upper above.
    Overlay,
    /// A full copy of the base, made when the container is created.
    Copy,
}

impl std::str::FromStr for Storage {
    type Err = Error;

    fn from_str(text: &str) -> Result<Storage> {
        match text {
            "overlay" => Ok(Storage::Overlay),
            "copy" => Ok(Storage::Copy),
            _ => Err(Error::Invalid(format!(
                "invalid storage '{text}': overlay (a union mount over the base) or copy (a \
                 full copy of it)"
            ))),
        }
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Storage::Overlay => "overlay",
            Storage::Copy => "copy",
        })
    }
}

/// What a container is: written once, when it is created (`config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// 12 random hex digits.
    pub id: String,
    /// Unique in the store.
    pub name: String,
    /// When it was created: UTC, RFC 3339 with nanoseconds (`2025-01-31T09:15:02.123456789Z`),
    /// which sorts as text in time order.
    pub created: String,
    /// How its root filesystem is made.
    pub storage: Storage,
    /// The read-only layers its root is made of, topmost first: for now one, the base rootfs
    /// (chapter 5 stacks an image's layers here).
    pub lowers: Vec<PathBuf>,
    /// The overlay is mounted in a user namespace, with `userxattr`.
    pub userxattr: bool,
    /// The host uid and gid that own its upper and work directories: root of its user
    /// namespace, who mounts the overlay and writes to it. `None`: the caller's.
    pub owner: Option<(u32, u32)>,
    /// Remove it when its command ends (`--rm`).
    pub remove: bool,
    /// The command line that created it (without the program's name): `start` runs it again.
    pub argv: Vec<String>,
    /// The command, for `ps`.
    pub command: Vec<String>,
}

/// What a container is doing (`state.json`), rewritten at every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Created, running or exited.
    pub status: Status,
    /// The runtime that runs (or last ran) it.
    pub runtime_pid: Option<i32>,
    /// When it last started (as [`Config::created`]).
    pub started: Option<String>,
    /// When it last ended.
    pub finished: Option<String>,
    /// Its command's exit code; `None` while running, or when the runtime died without
    /// being able to tell.
    pub exit_code: Option<u8>,
}

/// The life of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, never run.
    Created,
    /// Its runtime holds its lock.
    Running,
    /// Its command ended (or its runtime died).
    Exited,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        })
    }
}

/// A store of containers, at a root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A container of the store (it may not be on disk yet: see [`Store::prepare`]).
#[derive(Debug, Clone)]
pub struct Container {
    /// What it is.
    pub config: Config,
    /// Its directory, `<root>/containers/<id>`.
    pub dir: PathBuf,
}

/// What a new container should be; [`Store::prepare`] gives it an id and paths.
#[derive(Debug, Clone)]
pub struct New {
    /// `--name`, or `None` for a generated one.
    pub name: Option<String>,
    /// `--storage`.
    pub storage: Storage,
    /// The base, first the topmost.
    pub lowers: Vec<PathBuf>,
    /// The overlay will be mounted in a user namespace.
    pub userxattr: bool,
    /// Who will write its upper (root of its user namespace), if not the caller.
    pub owner: Option<(u32, u32)>,
    /// `--rm`.
    pub remove: bool,
    /// The command line.
    pub argv: Vec<String>,
    /// The command.
    pub command: Vec<String>,
}

/// One line of [`Store::list`]: a container, or one whose files cannot be read.
#[derive(Debug)]
pub enum Listed {
    /// A container and its state.
    Found(Container, State),
    /// A directory whose config or state is missing or corrupt.
    Broken {
        /// The container's id (its directory's name).
        id: String,
        /// Its name, if its config could be read.
        name: Option<String>,
        /// What is wrong, naming the file.
        error: Error,
    },
}

// ANCHOR: default_root
/// The store to use when `--root` is not given: `$ISOLAB_ROOT`; for root `/var/lib/isolab`;
/// for any other user `$XDG_DATA_HOME/isolab` (by default `~/.local/share/isolab`), as the
/// XDG base directory specification places a program's data.
pub fn default_root() -> Result<PathBuf> {
    let set = |name| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    if let Some(root) = set("ISOLAB_ROOT") {
        return Ok(root);
    }
    if Uid::effective().is_root() {
        return Ok(PathBuf::from(SYSTEM_ROOT));
    }
    if let Some(data) = set("XDG_DATA_HOME").filter(|path| path.is_absolute()) {
        return Ok(data.join("isolab"));
    }
    if let Some(home) = set("HOME") {
        return Ok(home.join(".local/share/isolab"));
    }
    Err(Error::Invalid(
        "no store: HOME and XDG_DATA_HOME are not set; pass --root DIR or set ISOLAB_ROOT"
            .to_string(),
    ))
}
// ANCHOR_END: default_root

impl Store {
    /// The store at `root` (made absolute; nothing is created until a container is).
    pub fn at(root: &Path) -> Result<Store> {
        let absolute = std::path::absolute(root).map_err(|e| io_error("getcwd", root, &e))?;
        // Without symlinks: the overlay's options name these paths, and the kernel resolves
        // them with the mounter's permissions.
        let root = fs::canonicalize(&absolute).unwrap_or(absolute);
        Ok(Store { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    // ANCHOR: prepare
    /// A new container's id, name and paths, checked; nothing is written (a dry run prints
    /// this, [`Store::create`] makes it).
    pub fn prepare(&self, new: New) -> Result<Container> {
        let id = random_id();
        let name = match new.name {
            Some(name) => check_name(&name)?,
            None => format!("c-{}", &id[..6]),
        };
        let config = Config {
            id: id.clone(),
            name,
            created: timestamp(),
            storage: new.storage,
            lowers: new.lowers,
            userxattr: new.userxattr,
            owner: new.owner,
            remove: new.remove,
            argv: new.argv,
            command: new.command,
        };
        let container = Container { config, dir: self.containers_dir().join(&id) };
        if let Some(layers) = container.layers() {
            layers.check(container.config.owner)?;
        }
        Ok(container)
    }

    /// Makes `container` on disk and returns it running (locked by this runtime): its
    /// directories, then its config and state. Under the store's lock, so that two runtimes
    /// cannot take the same name; if a step fails, what was made is removed again.
    pub fn create(&self, container: &Container) -> Result<Running> {
        self.make_root()?;
        let _store = self.lock()?;
        if let Some(other) = self.find_name(&container.config.name)? {
            return Err(Error::Invalid(format!(
                "the name '{}' is already in use by container {} (`rm {}` removes it, or \
                 pick another --name)",
                container.config.name, other, container.config.name
            )));
        }
        let made = container.make_dirs().and_then(|()| container.lock_new());
        made.inspect_err(|_| {
            let _ = remove_dir(&container.dir);
        })
    }
    // ANCHOR_END: prepare

    /// Every container in the store, by creation time; broken ones too.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut listed = Vec::new();
        for id in self.ids()? {
            let dir = self.containers_dir().join(&id);
            match read_json::<Config>(&dir.join("config.json")) {
                Err(error) => listed.push(Listed::Broken { id, name: None, error }),
                Ok(config) => {
                    let container = Container { config, dir };
                    match container.state() {
                        Ok(state) => listed.push(Listed::Found(container, state)),
                        Err(error) => listed.push(Listed::Broken {
                            id,
                            name: Some(container.config.name),
                            error,
                        }),
                    }
                }
            }
        }
        listed.sort_by_key(|entry| match entry {
            Listed::Found(container, _) => {
                (container.config.created.clone(), container.config.id.clone())
            }
            Listed::Broken { id, .. } => (String::new(), id.clone()),
        });
        Ok(listed)
    }

    /// The container with this name or id. A container whose config cannot be read can be
    /// found by its id only.
    pub fn find(&self, name_or_id: &str) -> Result<Container> {
        for id in self.ids()? {
            let dir = self.containers_dir().join(&id);
            match read_json::<Config>(&dir.join("config.json")) {
                Ok(config) if config.name == name_or_id || config.id == name_or_id => {
                    return Ok(Container { config, dir })
                }
                Ok(_) => {}
                Err(error) if id == name_or_id => return Err(error),
                Err(_) => {}
            }
        }
        Err(Error::Invalid(format!(
            "no container named '{name_or_id}' in the store at {} (`ps` lists them)",
            self.root.display()
        )))
    }

    // ANCHOR: remove
    /// Removes a container and everything it has on disk. A running one is refused unless
    /// `force`, which kills it first; one whose state cannot be read only with `force`.
    pub fn remove(&self, name_or_id: &str, force: bool) -> Result<Removed> {
        let container = self.find(name_or_id)?;
        let mut removed = Removed { id: container.config.id.clone(), ..Removed::default() };
        removed.name = container.config.name.clone();
        let state = match container.state() {
            Ok(state) => Some(state),
            Err(_) if force => {
                removed.broken = true;
                None
            }
            Err(error) => return Err(error),
        };
        let lock = match container.try_lock_patiently()? {
            Some(lock) => lock,
            None if !force => {
                let pid = state.and_then(|state| state.runtime_pid).unwrap_or(0);
                return Err(Error::Invalid(format!(
                    "container {} is running (runtime pid {pid}): wait for it to end, or \
                     `rm --force {}` kills it",
                    container.config.name, container.config.name
                )));
            }
            None => {
                removed.killed = true;
                container.kill(state.and_then(|state| state.runtime_pid))?
            }
        };
        removed.freed = copy::disk_usage(&container.dir)?;
        removed.unmounted = remove_dir(&container.dir)?;
        drop(lock);
        Ok(removed)
    }
    // ANCHOR_END: remove

    // ANCHOR: gc
    /// Cleans up after runtimes that could not: see the module's documentation.
    pub fn gc(&self) -> Result<Vec<Cleaned>> {
        let mut cleaned = Vec::new();
        if !self.containers_dir().is_dir() {
            return Ok(cleaned);
        }
        let _store = self.lock()?;
        // Mounts on the host in the store: none, unless something mounted there by hand
        // (the overlay is mounted in the container's own namespace).
        let mounted = mount_points_under(&self.containers_dir())?;
        for (id, config) in self.configs_by_age()? {
            let dir = self.containers_dir().join(&id);
            let mounts = mounted.iter().any(|point| point.starts_with(&dir));
            // Creation runs under the store's lock, which we hold: a directory without a
            // config is one whose runtime died while making it.
            if !dir.join("config.json").exists() {
                let unmounted = remove_dir(&dir)?;
                cleaned.extend(unmounted.into_iter().map(|path| Cleaned::Unmounted { path }));
                cleaned.push(Cleaned::Incomplete { dir });
                continue;
            }
            let Some(config) = config else { continue }; // `ps` shows it as broken
            let container = Container { config, dir };
            let Ok(state) = container.state() else { continue };
            let running = state.status == Status::Running;
            if !running && !mounts && !container.has_half_written()? {
                continue; // nothing to do, and no lock to take
            }
            // A runtime holds the lock: it runs, and will clean up after itself.
            let Some(lock) = container.try_lock()? else { continue };
            cleaned.extend(container.remove_half_written()?);
            if mounts {
                let unmounted = unmount_under(&container.dir)?;
                cleaned.extend(unmounted.into_iter().map(|path| Cleaned::Unmounted { path }));
            }
            if running {
                // Marked running, and nobody holds the lock: its runtime died.
                cleaned.push(container.after_death(state)?);
            }
            drop(lock);
        }
        Ok(cleaned)
    }
    // ANCHOR_END: gc

    /// Makes the store's directories if they are missing: `0711`, so that root of a user
    /// namespace (an ordinary uid outside) may pass through to its container's layers.
    fn make_root(&self) -> Result<()> {
        for dir in [&self.root, &self.containers_dir()] {
            if dir.is_dir() {
                continue;
            }
            match fs::DirBuilder::new().recursive(true).mode(0o711).create(dir) {
                Ok(()) => {
                    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o711));
                }
                Err(error) => return Err(not_writable("mkdir", &self.root, dir, &error)),
            }
        }
        Ok(())
    }

    /// Takes the store's lock (blocking: it is only held for moments).
    fn lock(&self) -> Result<Flock<File>> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| not_writable("open", &self.root, &path, &error))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::sys("flock", path.display(), errno))
    }

    /// The ids of the containers (the directory names), sorted.
    fn ids(&self) -> Result<Vec<String>> {
        let dir = self.containers_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error("opendir", &dir, &error)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("readdir", &dir, &e))?;
            if entry.path().is_dir() {
                ids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The ids and configs (`None`: missing or corrupt), the oldest container first (those
    /// without a readable config before all).
    fn configs_by_age(&self) -> Result<Vec<(String, Option<Config>)>> {
        let mut configs: Vec<(String, String, Option<Config>)> = Vec::new();
        for id in self.ids()? {
            let config = read_json::<Config>(&self.containers_dir().join(&id).join("config.json"));
            let created = config.as_ref().map(|config| config.created.clone()).unwrap_or_default();
            configs.push((created, id, config.ok()));
        }
        configs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(configs.into_iter().map(|(_, id, config)| (id, config)).collect())
    }

    /// The id of the container called `name`, if there is one.
    fn find_name(&self, name: &str) -> Result<Option<String>> {
        for id in self.ids()? {
            let path = self.containers_dir().join(&id).join("config.json");
            if let Ok(config) = read_json::<Config>(&path) {
                if config.name == name {
                    return Ok(Some(id));
                }
            }
        }
        Ok(None)
    }
}

/// `isolab gc`'s entry point: [`Store::gc`] on the store at `root`.
pub fn gc(root: &Path) -> Result<Vec<Cleaned>> {
    Store::at(root)?.gc()
}

impl Container {
    /// The directory that becomes the container's `/`.
    pub fn rootfs(&self) -> PathBuf {
        match self.config.storage {
            Storage::Overlay => self.dir.join("merged"),
            Storage::Copy => self.dir.join("rootfs"),
        }
    }

    /// Its overlay's layers (`None` for a copy).
    pub fn layers(&self) -> Option<Layers> {
        (self.config.storage == Storage::Overlay).then(|| Layers {
            lowers: self.config.lowers.clone(),
            upper: self.dir.join("upper"),
            work: self.dir.join("work"),
            userxattr: self.config.userxattr,
        })
    }

    // ANCHOR: rootfs_mounts
    /// The mounts that make its root, inside its mount namespace: the overlay (none for a
    /// copy, which is a plain directory).
    pub fn rootfs_mounts(&self) -> Vec<Step> {
        self.layers().map(|layers| vec![layers.mount_step(&self.rootfs())]).unwrap_or_default()
    }
    // ANCHOR_END: rootfs_mounts

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

    /// Takes its lock to run it again (`start`): refused while it runs.
    pub fn start(&self) -> Result<Running> {
        let state = self.state()?;
        match self.try_lock_patiently()? {
            Some(lock) => self.set_running(lock, state, false),
            None => Err(Error::Invalid(format!(
                "container {} is running (runtime pid {}): one runtime at a time",
                self.config.name,
                state.runtime_pid.unwrap_or(0)
            ))),
        }
    }

    /// What [`Store::create`] will do, one call a line (the dry run prints it).
    pub fn create_steps(&self) -> Vec<String> {
        let dir = |name: &str| self.dir.join(name).display().to_string();
        let owner = self.config.owner.map(|(uid, gid)| format!("; chown({uid}, {gid})"));
        let mut steps = vec![format!("mkdir(\"{}\", 0711)", self.dir.display())];
        match self.config.storage {
            Storage::Overlay => {
                for name in ["upper", "work"] {
                    let chown = owner.clone().unwrap_or_default();
                    steps.push(format!("mkdir(\"{}\", 0755){chown}", dir(name)));
                }
                steps.push(format!("mkdir(\"{}\", 0755)", dir("merged")));
            }
            Storage::Copy => {
                let base = self.config.lowers.first().cloned().unwrap_or_default();
                let chown = owner.clone().unwrap_or_default();
                steps.push(format!("copy(\"{}\", \"{}\"){chown}", base.display(), dir("rootfs")));
            }
        }
        steps.push(format!("write(\"{}\")", dir("config.json")));
        steps.push(format!("flock(\"{}\", LOCK_EX)", dir("lock")));
        steps.push(format!("write(\"{}\", running)", dir("state.json")));
        steps
    }

    fn make_dirs(&self) -> Result<()> {
        let mkdir = |path: &Path, mode: u32| {
            fs::DirBuilder::new().mode(mode).create(path).map_err(|error| {
                let root = self.dir.parent().and_then(Path::parent).unwrap_or(&self.dir);
                not_writable("mkdir", root, path, &error)
            })
        };
        mkdir(&self.dir, 0o711)?;
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
                mkdir(&self.rootfs(), 0o755)?;
                fs::set_permissions(&layers.upper, fs::Permissions::from_mode(base_mode))
                    .map_err(|e| io_error("chmod", &layers.upper, &e))?;
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

    /// Takes the lock of a container just made, and marks it running.
    /// Takes the lock of a container just made, and writes its config and its state:
    /// running, by us.
    fn lock_new(&self) -> Result<Running> {
        let lock = self.try_lock()?.ok_or_else(|| {
            Error::sys("flock", self.dir.join("lock").display(), Errno::EWOULDBLOCK)
        })?;
        let state = State {
            status: Status::Running,
            runtime_pid: Some(std::process::id() as i32),
            started: Some(timestamp()),
            finished: None,
            exit_code: None,
        };
        let files = [("config.json", json(&self.config)?), ("state.json", json(&state)?)];
        write_atomic(&self.dir, &files)?;
        Ok(Running { container: self.clone(), lock: Some(lock), state, new: true })
    }

    fn set_running(&self, lock: Flock<File>, state: State, new: bool) -> Result<Running> {
        let state = State {
            status: Status::Running,
            runtime_pid: Some(std::process::id() as i32),
            started: Some(timestamp()),
            exit_code: None,
            ..state
        };
        write_json(&self.dir.join("state.json"), &state)?;
        Ok(Running { container: self.clone(), lock: Some(lock), state, new })
    }

    /// Settles a container whose runtime died: removed if it was run with `--rm`, otherwise
    /// marked exited, with an exit code nobody knows.
    fn after_death(&self, state: State) -> Result<Cleaned> {
        let (id, name) = (self.config.id.clone(), self.config.name.clone());
        if self.config.remove {
            remove_dir(&self.dir)?;
            return Ok(Cleaned::RemovedDead { id, name });
        }
        let state = State { status: Status::Exited, finished: Some(timestamp()), ..state };
        write_json(&self.dir.join("state.json"), &state)?;
        Ok(Cleaned::MarkedExited { id, name, runtime: state.runtime_pid })
    }

    /// Does its directory hold a temporary file of an unfinished atomic write?
    fn has_half_written(&self) -> Result<bool> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("opendir", &self.dir, &e))?;
        Ok(entries.flatten().any(|entry| entry.file_name().to_string_lossy().contains(".tmp-")))
    }

    /// Removes the temporary files of atomic writes a dead runtime did not finish.
    fn remove_half_written(&self) -> Result<Vec<Cleaned>> {
        let mut cleaned = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_error("opendir", &self.dir, &e))? {
            let path = entry.map_err(|e| io_error("readdir", &self.dir, &e))?.path();
            if path.file_name().is_some_and(|name| name.to_string_lossy().contains(".tmp-")) {
                fs::remove_file(&path).map_err(|e| io_error("unlink", &path, &e))?;
                cleaned.push(Cleaned::HalfWritten { path });
            }
        }
        Ok(cleaned)
    }

    /// Takes its lock if no runtime holds it.
    fn try_lock(&self) -> Result<Option<Flock<File>>> {
        let path = self.dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("open", &path, &e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(Error::sys("flock", path.display(), errno)),
        }
    }

    /// [`Container::try_lock`], trying for a moment: `gc` holds a lock briefly.
    fn try_lock_patiently(&self) -> Result<Option<Flock<File>>> {
        let start = Instant::now();
        loop {
            if let Some(lock) = self.try_lock()? {
                return Ok(Some(lock));
            }
            if start.elapsed() > Duration::from_millis(200) {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills a running container and waits for its runtime to let go of the lock: first
    /// its first process (the runtime then reports its end and cleans up, as after any
    /// exit), then, if the runtime does not let go, the runtime itself.
    fn kill(&self, runtime: Option<i32>) -> Result<Flock<File>> {
        // Only the process that holds the lock open is the runtime: a pid alone could
        // have been reused by an unrelated process since it was written down.
        let lock_path = self.dir.join("lock");
        let runtime = runtime.map(Pid::from_raw).filter(|&pid| holds_open(pid, &lock_path));
        let Some(runtime) = runtime else {
            return Err(Error::sys("flock", lock_path.display(), Errno::EWOULDBLOCK).hint(
                "another process holds the container's lock, and it is not the runtime its \
                 state names: try again in a moment",
            ));
        };
        let children = children_of(runtime);
        for victims in [children, vec![runtime]] {
            for pid in victims {
                match kill(pid, Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(errno) => return Err(Error::sys("kill", pid, errno)),
                }
            }
            let start = Instant::now();
            while start.elapsed() < KILL_WAIT {
                if let Some(lock) = self.try_lock()? {
                    return Ok(lock);
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        Err(Error::sys("flock", self.dir.join("lock").display(), Errno::EWOULDBLOCK).hint(
            "the container's runtime still holds its lock after SIGKILL: a process in \
             uninterruptible sleep dies only when its I/O ends; try again",
        ))
    }
}

/// A container this runtime runs: its lock is held until it is settled or dropped.
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
    lock: Option<Flock<File>>,
    state: State,
    new: bool,
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

    /// `Some(code)`: write the exited state; `None`: remove the container.
    fn settle(&mut self, exit_code: Option<u8>) -> Result<()> {
        let Some(lock) = self.lock.take() else { return Ok(()) };
        let done = match exit_code {
            Some(code) => {
                let state = State {
                    status: Status::Exited,
                    finished: Some(timestamp()),
                    exit_code: Some(code),
                    ..self.state.clone()
                };
                write_json(&self.container.dir.join("state.json"), &state)
            }
            None => remove_dir(&self.container.dir).map(drop),
        };
        drop(lock);
        done
    }
}

#[cfg(test)]
impl Running {
    /// As if the runtime were killed: the lock goes, nothing is written.
    fn die(mut self) {
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

/// What [`Store::remove`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// The container's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// It was running and was killed.
    pub killed: bool,
    /// Its state file could not be read (removed with `--force`).
    pub broken: bool,
    /// Mounts on the host that were detached first.
    pub unmounted: Vec<PathBuf>,
    /// Bytes of disk given back.
    pub freed: u64,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "removed {} ({})", self.name, self.id)?;
        if self.killed {
            write!(f, ", killed first")?;
        }
        if self.broken {
            write!(f, ", whose state could not be read")?;
        }
        for path in &self.unmounted {
            write!(f, ", unmounted {}", path.display())?;
        }
        write!(f, ": {} freed", crate::cgroups::format_size(self.freed))
    }
}

/// One thing [`Store::gc`] cleaned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleaned {
    /// A container marked running whose runtime is gone: now exited, code unknown.
    MarkedExited {
        /// Its id.
        id: String,
        /// Its name.
        name: String,
        /// The runtime that died.
        runtime: Option<i32>,
    },
    /// A `--rm` container whose runtime died: removed, as it would have been.
    RemovedDead {
        /// Its id.
        id: String,
        /// Its name.
        name: String,
    },
    /// A mount on the host under the store, detached.
    Unmounted {
        /// Where it was.
        path: PathBuf,
    },
    /// A container directory without a config: its creation was interrupted.
    Incomplete {
        /// The directory, removed.
        dir: PathBuf,
    },
    /// A temporary file of an interrupted atomic write.
    HalfWritten {
        /// The file, removed.
        path: PathBuf,
    },
}

impl fmt::Display for Cleaned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cleaned::MarkedExited { id, name, runtime } => {
                let pid = runtime.map_or("?".to_string(), |pid| pid.to_string());
                write!(
                    f,
                    "container {name} ({id}) was left running by a runtime that died (pid \
                     {pid}): marked exited, exit code unknown"
                )
            }
            Cleaned::RemovedDead { id, name } => write!(
                f,
                "container {name} ({id}) was run with --rm by a runtime that died: removed"
            ),
            Cleaned::Unmounted { path } => write!(f, "unmounted {} (MNT_DETACH)", path.display()),
            Cleaned::Incomplete { dir } => {
                write!(f, "removed {}: its creation was interrupted", dir.display())
            }
            Cleaned::HalfWritten { path } => {
                write!(f, "removed {}: a write was interrupted", path.display())
            }
        }
    }
}

// ANCHOR: write_atomic
/// Replaces files of directory `dir`, each atomically: written to a temporary file in the
/// same directory, flushed to the disk, then renamed over the old one (`man 2 rename`: "If
/// newpath already exists, it will be atomically replaced"). Last, the directory is flushed
/// (once for all of them), so that the renames survive a crash too. A reader never sees half
/// a file.
pub fn write_atomic(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    for (name, bytes) in files {
        let temporary = dir.join(format!("{name}.tmp-{}", std::process::id()));
        let mut file = File::create(&temporary).map_err(|e| io_error("open", &temporary, &e))?;
        file.write_all(bytes).map_err(|e| io_error("write", &temporary, &e))?;
        file.sync_all().map_err(|e| io_error("fsync", &temporary, &e))?;
        let path = dir.join(name);
        fs::rename(&temporary, &path).map_err(|e| io_error("rename", &path, &e))?;
    }
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|e| io_error("fsync", dir, &e))
}
// ANCHOR_END: write_atomic

/// `value` as pretty JSON, with a final newline.
fn json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|error| Error::Invalid(format!("cannot write JSON: {error}")))?;
    text.push('\n');
    Ok(text.into_bytes())
}

/// Replaces one JSON file (see [`write_atomic`]).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    write_atomic(path.parent().unwrap_or(Path::new(".")), &[(&name, json(value)?)])
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(Error::Invalid(format!(
                "{} is missing: `rm --force {}` removes the container",
                path.display(),
                container_id(path)
            )))
        }
        Err(error) => return Err(io_error("read", path, &error)),
    };
    serde_json::from_slice(&text).map_err(|error| {
        Error::Invalid(format!(
            "{} is corrupt ({error}): `rm --force {}` removes the container",
            path.display(),
            container_id(path)
        ))
    })
}

/// The id of the container a file of the store belongs to: its directory's name.
fn container_id(file: &Path) -> String {
    let dir = file.parent().and_then(Path::file_name).unwrap_or_default();
    dir.to_string_lossy().into_owned()
}

/// Removes a container's directory: first whatever is mounted in it (removing files through
/// a mount point would remove the mounted filesystem's files), then the tree. Returns the
/// mounts it detached.
fn remove_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let unmounted = unmount_under(dir)?;
    copy::remove_tree(dir)?;
    Ok(unmounted)
}

/// The mount points on the host at or below `dir`, deepest first.
fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| io_error("read", Path::new("/proc/self/mountinfo"), &e))?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_point)
        .filter(|point| point.starts_with(dir))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    Ok(points)
}

/// Detaches every mount on the host at or below `dir`, deepest first; returns them.
fn unmount_under(dir: &Path) -> Result<Vec<PathBuf>> {
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

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_point(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |value, digit| value * 8 + (digit - b'0')));
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Does process `pid` have `path` open (`/proc/<pid>/fd`)?
fn holds_open(pid: Pid, path: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
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

/// Checks a `--name`: 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`.
pub fn check_name(name: &str) -> Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(Error::Invalid(format!(
            "invalid container name '{name}': use 1 to 64 letters, digits, '-', '_' or '.', not \
             starting with '.'"
        )));
    }
    Ok(name.to_string())
}

/// 12 random hex digits.
fn random_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's random source (and differs on every call).
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

/// Now, as the store writes times: UTC, RFC 3339, nanoseconds.
pub fn timestamp() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, time) = date_time(since.as_secs());
    format!("{date}T{time}.{:09}Z", since.subsec_nanos())
}

/// A stored time as `ps` shows it: `2025-01-31 09:15:02` (UTC).
pub fn show_time(timestamp: &str) -> String {
    timestamp.get(..19).unwrap_or(timestamp).replacen('T', " ", 1)
}

/// `YYYY-MM-DD` and `hh:mm:ss` of a time in seconds since the epoch, in UTC (the days to
/// a civil date as in Howard Hinnant's `civil_from_days`).
fn date_time(seconds: u64) -> (String, String) {
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let time = format!("{:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60);
    (format!("{year:04}-{month:02}-{day:02}"), time)
}

/// An error for a store directory the caller may not write, with the way out.
fn not_writable(call: &'static str, root: &Path, path: &Path, error: &io::Error) -> Error {
    let errno = Errno::from_raw(error.raw_os_error().unwrap_or(0));
    let error = Error::sys(call, path.display(), errno);
    match errno {
        Errno::EACCES | Errno::EPERM | Errno::EROFS => error.hint(format!(
            "the store {} is not writable by uid {}: pass --root DIR (or set ISOLAB_ROOT) to \
             a directory you may write",
            root.display(),
            Uid::effective()
        )),
        _ => error,
    }
}

fn io_error(call: &'static str, path: &Path, error: &io::Error) -> Error {
    Error::sys(call, path.display(), Errno::from_raw(error.raw_os_error().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: Option<&str>, base: &Path) -> New {
        New {
            name: name.map(String::from),
            storage: Storage::Overlay,
            lowers: vec![base.to_path_buf()],
            userxattr: false,
            owner: None,
            remove: false,
            argv: vec!["run".into()],
            command: vec!["/bin/true".into()],
        }
    }

    #[test]
    fn create_list_find_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        fs::create_dir(&base).unwrap();
        let store = Store::at(&tmp.path().join("store")).unwrap();
        let container = store.prepare(new(Some("web"), &base)).unwrap();
        assert!(!container.dir.exists(), "prepare writes nothing");
        let running = store.create(&container).unwrap();
        for dir in ["upper", "work", "merged"] {
            assert!(container.dir.join(dir).is_dir(), "{dir}");
        }
        // The name is taken; the lock is held.
        let again = store.prepare(new(Some("web"), &base)).unwrap();
        let error = store.create(&again).err().unwrap().to_string();
        assert!(error.contains("'web' is already in use"), "{error}");
        assert!(!again.dir.exists(), "a refused create leaves nothing");
        let error = store.remove("web", false).unwrap_err().to_string();
        assert!(error.contains("is running"), "{error}");
        running.exited(3).unwrap();

        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        let Listed::Found(found, state) = &listed[0] else { panic!("{listed:?}") };
        assert_eq!((found.config.name.as_str(), state.exit_code), ("web", Some(3)));
        assert_eq!(store.find(&found.config.id).unwrap().config.name, "web");
        let removed = store.remove("web", false).unwrap();
        assert!(!removed.killed);
        assert!(!container.dir.exists());
        assert!(store.find("web").unwrap_err().to_string().contains("no container named"));
    }

    #[test]
    fn gc_fixes_what_a_dead_runtime_left() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        fs::create_dir(&base).unwrap();
        let store = Store::at(&tmp.path().join("store")).unwrap();
        let kept = store.prepare(new(Some("kept"), &base)).unwrap();
        // A runtime that "dies": its lock goes, its state still says running.
        store.create(&kept).unwrap().die();
        let gone = store.prepare(New { remove: true, ..new(Some("gone"), &base) }).unwrap();
        store.create(&gone).unwrap().die();
        fs::create_dir(store.containers_dir().join("0123456789ab")).unwrap();
        fs::write(kept.dir.join("state.json.tmp-1"), "{").unwrap();

        let cleaned = store.gc().unwrap();
        let text: Vec<String> = cleaned.iter().map(Cleaned::to_string).collect();
        assert_eq!(cleaned.len(), 4, "{text:#?}");
        assert!(!gone.dir.exists() && !store.containers_dir().join("0123456789ab").exists());
        let state = kept.state().unwrap();
        assert_eq!((state.status, state.exit_code), (Status::Exited, None));
        assert!(store.gc().unwrap().is_empty(), "nothing left to clean");
    }

    #[test]
    fn a_corrupt_state_breaks_one_container_only() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        fs::create_dir(&base).unwrap();
        let store = Store::at(&tmp.path().join("store")).unwrap();
        for name in ["a", "b"] {
            let container = store.prepare(new(Some(name), &base)).unwrap();
            store.create(&container).unwrap().exited(0).unwrap();
        }
        let broken = store.find("a").unwrap();
        fs::write(broken.dir.join("state.json"), "{\"status\": \"runn").unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed
            .iter()
            .any(|entry| matches!(entry, Listed::Found(c, _) if c.config.name == "b")));
        let error = store.remove("a", false).unwrap_err().to_string();
        assert!(error.contains("state.json is corrupt"), "{error}");
        assert!(store.remove("a", true).unwrap().broken);
        assert!(store.gc().unwrap().is_empty());
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_point("/a\\040b\\134c"), PathBuf::from("/a b\\c"));
    }

    #[test]
    fn names_and_ages() {
        assert!(check_name("web-1.a_b").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(date_time(0), ("1970-01-01".to_string(), "00:00:00".to_string()));
        assert_eq!(date_time(951_782_400 + 3661), ("2000-02-29".into(), "01:01:01".into()));
        assert_eq!(date_time(1_767_225_599), ("2025-12-31".into(), "23:59:59".into()));
        let now = timestamp();
        assert_eq!((now.len(), &now[10..11], &now[29..]), (30, "T", "Z"));
        assert_eq!(show_time("2025-01-31T09:15:02.123456789Z"), "2025-01-31 09:15:02");
        assert_eq!(random_id().len(), 12);
        assert_ne!(random_id(), random_id());
    }
}
