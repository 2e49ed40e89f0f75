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
//!   containers/<id>/            0700, owned by the container's root: nobody else gets in
//!     config.json               what it is: name, base, storage, the command line that made it
//!     state.json                what it is doing: created, running (runtime pid), exited (code)
//!     lock                      held (flock) by the runtime while the container runs
//!     upper/ work/ merged/      overlay: its own layer, overlayfs's scratch, the mount point
//!     rootfs/                   copy: its full copy of the base
//!   names/<name> -> <id>        the index of names: one symlink per container
//!   active/<id>                 the journal: create, run or remove, while a runtime does it
//! ```
//!
//! Four rules keep the store sound when runtimes crash or are killed:
//!
//! - **Files are replaced, never rewritten in place.** A JSON file is written to a temporary
//!   name, flushed to disk (`fsync`) and renamed over the old one (`rename(2)` is atomic), so
//!   a reader sees the old file or the new one, never half of one ([`write_atomic`]).
//! - **Locks, not pids, say who is alive.** A runtime holds an exclusive `flock(2)` on its
//!   container's `lock` file for as long as it works on the container; the kernel drops it
//!   when the runtime dies, however it dies. A pid can be reused, a lock cannot outlive its
//!   holder. `ps` looks at the lock, so it tells the truth without any clean-up first.
//! - **Say what you are about to do, then do it.** Before a runtime creates, runs or removes
//!   a container it writes that in the journal (`active/<id>`), and clears the entry when it
//!   is done. `gc` removes only what the journal proves isolab was making or removing when its
//!   runtime died; a directory it cannot account for is reported and left alone, and a
//!   container's upper is never removed but by `rm` (or the `--rm` its user asked for).
//! - **Nothing scales with the size of the store on the way to a start.** A name is claimed
//!   with one `symlink(2)` in the index, and the `gc` that `run` does first reads only the
//!   journal: starting a container costs the same with ten or ten thousand in the store.
//!
//! The overlay itself is mounted inside the container's own mount namespace (see
//! [`crate::container::Plan::move_rootfs`]), so it dies with the container even after a
//! SIGKILL of the runtime: there is normally nothing on the host to unmount.

mod files;
mod gc;
mod journal;
mod names;
mod time;

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::Flock;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::changes::{self, Change, UpperEntry};
use crate::copy;
use crate::error::{Error, Result};
use crate::mounts::Step;
use crate::overlay::Layers;

pub use files::write_atomic;
use files::{io_error, json, not_writable, read_json, write_json, Lock};
pub use gc::{gc, Cleaned};
use journal::Intent;
use names::Resolved;
pub use names::{check_name, looks_like_id, ID_LENGTH};
pub use time::{show_time, timestamp};

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
    /// Marked running, but no runtime holds its lock: its runtime was killed. Never written;
    /// [`Store::list`] finds it out (and shows the container exited).
    #[serde(skip)]
    pub runtime_died: bool,
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

/// A test hook: when `ISOLAB_FAULT` names this point, the runtime kills itself here with
/// SIGKILL, as a crash or `kill -9` would, so that the tests can check what every step
/// leaves behind. Unset (always, outside the tests), it costs one environment lookup.
pub(crate) fn fault_point(point: &str) {
    if std::env::var_os("ISOLAB_FAULT").is_some_and(|wanted| wanted == point) {
        let _ = kill(Pid::this(), Signal::SIGKILL);
    }
}

impl Store {
    /// The store at `root` (made absolute; nothing is created until a container is). A root
    /// that exists and is not a directory is refused.
    pub fn at(root: &Path) -> Result<Store> {
        let absolute = std::path::absolute(root).map_err(|e| io_error("getcwd", root, &e))?;
        // Without symlinks: the overlay's options name these paths, and the kernel resolves
        // them with the mounter's permissions.
        let root = fs::canonicalize(&absolute).unwrap_or(absolute);
        if root.exists() && !root.is_dir() {
            return Err(Error::Invalid(format!(
                "the store {} is not a directory: pass --root DIR (or set ISOLAB_ROOT) with a \
                 directory, made if it is missing",
                root.display()
            )));
        }
        Ok(Store { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    fn names_dir(&self) -> PathBuf {
        self.root.join("names")
    }

    fn active_dir(&self) -> PathBuf {
        self.root.join("active")
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }

    // ANCHOR: prepare
    /// A new container's id, name and paths, checked; nothing is written (a dry run prints
    /// this, [`Store::create`] makes it).
    pub fn prepare(&self, new: New) -> Result<Container> {
        let id = names::random_id();
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
        let container = Container { config, dir: self.container_dir(&id) };
        if let Some(layers) = container.layers() {
            layers.check(container.config.owner)?;
        }
        Ok(container)
    }

    /// Makes `container` on disk and returns it running (locked by this runtime). The
    /// journal says `create` first, the directory and its lock come next, then the name is
    /// claimed in the index (one `symlink(2)`: two runtimes cannot both get it), then its
    /// directories, config and state; last the journal says `run`. If a step fails, what was
    /// made is removed again; if the runtime dies, `gc` can tell what was half made.
    pub fn create(&self, container: &Container) -> Result<Running> {
        let (id, name) = (&container.config.id, &container.config.name);
        self.make_root()?;
        let lock = {
            let _store = self.lock()?;
            self.ensure_index()?;
            journal::write(&self.active_dir(), id, Intent::Create)
                .map_err(|error| self.full_hint(error))?;
            fault_point("create:journal");
            let lock = container.make_dir().and_then(|()| container.lock_dir());
            let lock = match lock {
                Ok(lock) => lock,
                Err(error) => {
                    let _ = fs::remove_dir(&container.dir);
                    let _ = journal::clear(&self.active_dir(), id);
                    return Err(self.full_hint(error));
                }
            };
            fault_point("create:locked");
            lock
        };
        let running = Running {
            container: container.clone(),
            lock: Some(lock),
            state: State::running(),
            new: true,
        };
        if names::looks_like_id(name) {
            // An all-hex name must not be the start of an id, or `rm <it>` would be ambiguous
            // to the reader (the name wins). Read only for such names: the usual start stays
            // flat.
            if let Some(other) = self
                .ids()?
                .into_iter()
                .find(|other| other.starts_with(name.as_str()) && other != id)
            {
                return Err(Error::Invalid(format!(
                    "the name '{name}' is the start of the id of container {other}: pick a name \
                     with a letter g-z or a '-'"
                )));
            }
        }
        let containers = self.containers_dir();
        let taken = names::claim(&self.names_dir(), name, id, |other| {
            containers.join(other).join("config.json").exists()
                || journal::read(&self.active_dir(), other).ok().flatten().is_some()
        })?;
        if let Some(other) = taken {
            return Err(Error::Invalid(format!(
                "the name '{name}' is already in use by container {other} (`rm {name}` removes \
                 it, or pick another --name)"
            )));
        }
        container.make_contents().map_err(|error| self.full_hint(error))?;
        fault_point("create:contents");
        let files =
            [("config.json", json(&container.config)?), ("state.json", json(&running.state)?)];
        write_atomic(&container.dir, &files).map_err(|error| self.full_hint(error))?;
        fault_point("create:files");
        journal::write(&self.active_dir(), id, Intent::Run)
            .map_err(|error| self.full_hint(error))?;
        fault_point("create:done");
        Ok(running)
    }
    // ANCHOR_END: prepare

    /// Every container in the store, by creation time; broken ones too. A container marked
    /// running whose runtime no longer holds its lock is shown exited, `runtime_died`.
    /// Containers being made or removed right now (their runtime holds the lock, their
    /// config is not there yet or any more) are left out. Reads only.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut listed = Vec::new();
        for id in self.ids()? {
            let dir = self.container_dir(&id);
            match read_json::<Config>(&dir.join("config.json")) {
                Err(_) if files::is_held(&dir.join("lock")) => {}
                Err(error) => listed.push(Listed::Broken { id, name: None, error }),
                Ok(config) => {
                    let container = Container { config, dir };
                    match container.state() {
                        Ok(state) => {
                            let state = container.truth(state);
                            listed.push(Listed::Found(container, state))
                        }
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

    // ANCHOR: resolve
    /// The id a user's word means, as docker resolves it: an exact id, then an exact name,
    /// then a unique prefix of an id. An ambiguous prefix is refused with the candidates.
    pub fn resolve(&self, word: &str) -> Result<String> {
        let exists = |id: &str| {
            names::looks_like_id(id) && fs::symlink_metadata(self.container_dir(id)).is_ok()
        };
        let resolved = names::resolve(
            word,
            exists,
            |name| names::lookup(&self.names_dir(), name),
            || self.ids(),
        )?;
        match resolved {
            Resolved::Id(id) => Ok(id),
            Resolved::None => Err(Error::Invalid(format!(
                "no container '{word}' in the store at {} (`ps` lists them)",
                self.root.display()
            ))),
            Resolved::Ambiguous(ids) => {
                let candidates: Vec<String> = ids
                    .iter()
                    .map(|id| match self.open(id) {
                        Ok(container) => format!("{id} ({})", container.config.name),
                        Err(_) => id.clone(),
                    })
                    .collect();
                Err(Error::Invalid(format!(
                    "'{word}' is the start of {} container ids: {}; give more of the id",
                    ids.len(),
                    candidates.join(", ")
                )))
            }
        }
    }
    // ANCHOR_END: resolve

    /// The container a user's word means (see [`Store::resolve`]); its config must be
    /// readable.
    pub fn find(&self, word: &str) -> Result<Container> {
        self.open(&self.resolve(word)?)
    }

    /// The container with this id.
    fn open(&self, id: &str) -> Result<Container> {
        let dir = self.container_dir(id);
        let config = read_json::<Config>(&dir.join("config.json"))?;
        Ok(Container { config, dir })
    }

    // ANCHOR: remove
    /// Removes a container and everything it has on disk. A running one is refused unless
    /// `force`, which kills it first. `force` also removes one whose files are missing,
    /// corrupt or not what isolab writes (a directory where its lock should be).
    pub fn remove(&self, word: &str, force: bool) -> Result<Removed> {
        let id = self.resolve(word)?;
        let dir = self.container_dir(&id);
        let config = read_json::<Config>(&dir.join("config.json"));
        let state = read_json::<State>(&dir.join("state.json"));
        let mut removed = Removed { id: id.clone(), ..Removed::default() };
        removed.name = config.as_ref().map_or_else(|_| "?".to_string(), |c| c.name.clone());
        if let Err(error) = config.as_ref().map(drop).and_then(|()| state.as_ref().map(drop)) {
            if !force {
                return Err(Error::Invalid(error.to_string()));
            }
            removed.broken = true;
        }
        let lock_path = dir.join("lock");
        if force && fs::symlink_metadata(&lock_path).is_ok_and(|m| !m.is_file()) {
            files::remove_any(&lock_path)?;
            removed.broken = true;
        }
        let container = config.ok().map(|config| Container { config, dir: dir.clone() });
        let runtime = state.as_ref().ok().and_then(|state| state.runtime_pid);
        let lock = match lock_patiently(&lock_path)? {
            Some(lock) => lock,
            None if !force => {
                return Err(Error::Invalid(format!(
                    "container {} is running (runtime pid {}): wait for it to end, or \
                     `rm --force {}` kills it",
                    removed.name,
                    runtime.unwrap_or(0),
                    word
                )))
            }
            None => {
                removed.killed = true;
                kill_runtime(&lock_path, runtime)?
            }
        };
        removed.freed = copy::disk_usage(&dir)?;
        // Best effort: on a full disk the entry cannot be written, and `rm` is how the user
        // makes room, so it goes on without (a crash now leaves a directory `gc` reports).
        let _ = journal::write(&self.active_dir(), &id, Intent::Remove);
        fault_point("remove:journal");
        match &container {
            Some(container) => names::release(&self.names_dir(), &container.config.name, &id),
            None => self.release_names_of(&id)?,
        }
        removed.unmounted = files::dismantle(&dir)?;
        journal::clear(&self.active_dir(), &id)?;
        drop(lock);
        Ok(removed)
    }
    // ANCHOR_END: remove

    /// Releases every name of the index that points at `id` (its config is gone, so its
    /// name is not known: the index is read whole).
    fn release_names_of(&self, id: &str) -> Result<()> {
        for (name, target) in names::all(&self.names_dir())? {
            if target == id {
                names::release(&self.names_dir(), &name, id);
            }
        }
        Ok(())
    }

    /// Makes the store's directories if they are missing: the root and `containers/` are
    /// `0711`, so that root of a user namespace (an ordinary uid outside) may pass through to
    /// its own container's directory (which is `0700`, its own); the index and the journal
    /// are `0700`.
    fn make_root(&self) -> Result<()> {
        for (dir, mode) in [
            (self.root.clone(), 0o711),
            (self.containers_dir(), 0o711),
            (self.names_dir(), 0o700),
            (self.active_dir(), 0o700),
        ] {
            if dir.is_dir() {
                continue;
            }
            match fs::DirBuilder::new().recursive(true).mode(mode).create(&dir) {
                Ok(()) => {
                    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode));
                }
                Err(error) => return Err(not_writable("mkdir", &self.root, &dir, &error)),
            }
        }
        Ok(())
    }

    /// A store made before the index of names had none: builds it once (under the store's
    /// lock), from the configs.
    fn ensure_index(&self) -> Result<()> {
        let marker = self.names_dir().join(".complete");
        if marker.exists() {
            return Ok(());
        }
        for id in self.ids()? {
            if let Ok(container) = self.open(&id) {
                let name = &container.config.name;
                let _ = names::claim(&self.names_dir(), name, &id, |_| true);
            }
        }
        File::create(&marker).map_err(|e| not_writable("open", &self.root, &marker, &e))?;
        Ok(())
    }

    /// Adds the hint for a full disk to an error of the store.
    fn full_hint(&self, error: Error) -> Error {
        match error.errno() {
            Some(Errno::ENOSPC | Errno::EDQUOT) => error.hint(format!(
                "the filesystem of the store {} is full: free some space (`df` shows what each \
                 container takes, `rm` removes one)",
                self.root.display()
            )),
            _ => error,
        }
    }

    /// Takes the store's lock (blocking: it is only held for moments, and by `gc`).
    fn lock(&self) -> Result<Flock<File>> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| not_writable("open", &self.root, &path, &error))?;
        Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
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
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                ids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }
}

impl State {
    /// Running, by this runtime, from now.
    fn running() -> State {
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

    /// `state` as it really is: marked running, but nobody holds the lock, means its
    /// runtime died (`ps` shows that without waiting for a `gc`).
    fn truth(&self, state: State) -> State {
        if state.status == Status::Running && !files::is_held(&self.dir.join("lock")) {
            return State { status: Status::Exited, runtime_died: true, ..state };
        }
        state
    }

    /// The store this container is in.
    fn store(&self) -> Store {
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
        let store = self.store();
        journal::write(&store.active_dir(), &self.config.id, Intent::Run)
            .map_err(|e| store.full_hint(e))?;
        let state = State { finished: None, ..State::running() };
        write_json(&self.dir.join("state.json"), &state).map_err(|e| store.full_hint(e))?;
        Ok(Running { container: self.clone(), lock: Some(lock), state, new: false })
    }

    /// What must be there for it to start: its base, and its upper or its copy.
    fn needs(&self) -> Vec<(&'static str, PathBuf)> {
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
        let active = store.active_dir().join(&self.config.id).display().to_string();
        let owner = self.config.owner.map(|(uid, gid)| format!("; chown({uid}, {gid})"));
        let chown = owner.clone().unwrap_or_default();
        let mut steps = vec![
            format!("write(\"{active}\", create)"),
            format!("mkdir(\"{}\", 0700){chown}", self.dir.display()),
            format!("flock(\"{}\", LOCK_EX)", dir("lock")),
            format!(
                "symlink(\"{}\", \"{}\")",
                self.config.id,
                store.names_dir().join(&self.config.name).display()
            ),
        ];
        match self.config.storage {
            Storage::Overlay => {
                for name in ["upper", "work"] {
                    steps.push(format!("mkdir(\"{}\", 0755){chown}", dir(name)));
                }
                steps.push(format!("mkdir(\"{}\", 0755)", dir("merged")));
            }
            Storage::Copy => {
                let base = self.config.lowers.first().cloned().unwrap_or_default();
                steps.push(format!("copy(\"{}\", \"{}\"){chown}", base.display(), dir("rootfs")));
            }
        }
        steps.push(format!("write(\"{}\")", dir("config.json")));
        steps.push(format!("write(\"{}\", running)", dir("state.json")));
        steps.push(format!("write(\"{active}\", run)"));
        steps
    }

    /// What the runtime does last, one call a line (the dry run prints it).
    pub fn finish_steps(&self) -> Vec<String> {
        let active = self.store().active_dir().join(&self.config.id).display().to_string();
        if self.config.remove {
            vec![
                format!("write(\"{active}\", remove)"),
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

    /// Makes its directory: `0700` and owned by root of its user namespace, so that no
    /// other user of the host can reach its upper (a setuid file written there by root of
    /// a container without a user namespace is a setuid-root file on the host), and no other
    /// container's root either.
    fn make_dir(&self) -> Result<()> {
        let root = self.dir.parent().and_then(Path::parent).unwrap_or(&self.dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.dir)
            .map_err(|error| not_writable("mkdir", root, &self.dir, &error))?;
        if let Some((uid, gid)) = self.config.owner {
            copy::change_owner(&self.dir, uid, gid)?;
        }
        Ok(())
    }

    /// Takes the lock of the container just made.
    fn lock_dir(&self) -> Result<Flock<File>> {
        match files::try_lock(&self.dir.join("lock"), true)? {
            Lock::Taken(lock) => Ok(lock),
            _ => Err(Error::sys("flock", self.dir.join("lock").display(), Errno::EWOULDBLOCK)),
        }
    }

    /// Makes what is in its directory: upper, work and merged (or the copy).
    fn make_contents(&self) -> Result<()> {
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
}

/// [`files::try_lock`], trying for a moment: `gc` and `ps` hold a lock briefly. `None`: a
/// runtime holds it.
fn lock_patiently(path: &Path) -> Result<Option<Flock<File>>> {
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
fn kill_runtime(lock_path: &Path, runtime: Option<i32>) -> Result<Flock<File>> {
    // Only the process that holds the lock open is the runtime: a pid alone could have
    // been reused by an unrelated process since it was written down.
    let runtime = runtime.map(Pid::from_raw).filter(|&pid| holds_open(pid, lock_path));
    let Some(runtime) = runtime else {
        return Err(Error::sys("flock", lock_path.display(), Errno::EWOULDBLOCK).hint(
            "another process holds the container's lock, and it is not the runtime its state \
             names: try again in a moment",
        ));
    };
    for victims in [children_of(runtime), vec![runtime]] {
        for pid in victims {
            match kill(pid, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(errno) => return Err(Error::sys("kill", pid, errno)),
            }
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
                write_json(&self.container.dir.join("state.json"), &state)
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
    /// Its name (`?` when its config could not be read).
    pub name: String,
    /// It was running and was killed.
    pub killed: bool,
    /// Its files could not be read, or were not what isolab writes (removed with `--force`).
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
            write!(f, ", whose files were broken")?;
        }
        for path in &self.unmounted {
            write!(f, ", unmounted {}", path.display())?;
        }
        write!(f, ": {} freed", crate::cgroups::format_size(self.freed))
    }
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

    fn scratch() -> (tempfile::TempDir, PathBuf, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        fs::create_dir(&base).unwrap();
        let store = Store::at(&tmp.path().join("store")).unwrap();
        (tmp, base, store)
    }

    fn said(cleaned: &[Cleaned]) -> Vec<String> {
        cleaned.iter().map(Cleaned::to_string).collect()
    }

    #[test]
    fn create_list_find_remove() {
        let (_tmp, base, store) = scratch();
        let container = store.prepare(new(Some("web"), &base)).unwrap();
        assert!(!container.dir.exists(), "prepare writes nothing");
        let running = store.create(&container).unwrap();
        for dir in ["upper", "work", "merged"] {
            assert!(container.dir.join(dir).is_dir(), "{dir}");
        }
        let mode = fs::metadata(&container.dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700, "no other user may reach the upper");
        // The name is taken; the lock is held.
        let again = store.prepare(new(Some("web"), &base)).unwrap();
        let error = store.create(&again).err().unwrap().to_string();
        assert!(error.contains("'web' is already in use"), "{error}");
        assert!(!again.dir.exists(), "a refused create leaves nothing");
        assert_eq!(store.resolve("web").unwrap(), container.config.id, "the name stays web's");
        let error = store.remove("web", false).unwrap_err().to_string();
        assert!(error.contains("is running"), "{error}");
        running.exited(3).unwrap();

        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        let Listed::Found(found, state) = &listed[0] else { panic!("{listed:?}") };
        assert_eq!((found.config.name.as_str(), state.exit_code), ("web", Some(3)));
        assert_eq!(store.find(&found.config.id).unwrap().config.name, "web");
        assert_eq!(store.find(&found.config.id[..4]).unwrap().config.name, "web");
        // A name that is the start of that id is refused.
        let prefix = store.prepare(new(Some(&found.config.id[..5]), &base)).unwrap();
        let error = store.create(&prefix).err().unwrap().to_string();
        assert!(error.contains("is the start of the id"), "{error}");
        let removed = store.remove("web", false).unwrap();
        assert!(!removed.killed);
        assert!(!container.dir.exists());
        assert!(store.find("web").unwrap_err().to_string().contains("no container 'web'"));
        assert!(journal::ids(&store.active_dir()).unwrap().is_empty());
        assert!(names::all(&store.names_dir()).unwrap().is_empty());
        // The name is free again.
        let third = store.prepare(new(Some("web"), &base)).unwrap();
        store.create(&third).unwrap().exited(0).unwrap();
    }

    #[test]
    fn ps_tells_the_truth_without_gc_and_gc_fixes_it() {
        let (_tmp, base, store) = scratch();
        let kept = store.prepare(new(Some("kept"), &base)).unwrap();
        // A runtime that "dies": its lock goes, its state still says running.
        store.create(&kept).unwrap().die();
        let gone = store.prepare(New { remove: true, ..new(Some("gone"), &base) }).unwrap();
        store.create(&gone).unwrap().die();
        fs::write(kept.dir.join("state.json.tmp-1"), "{").unwrap();

        let listed = store.list().unwrap();
        assert!(listed.iter().all(|entry| matches!(entry,
            Listed::Found(_, state) if state.runtime_died && state.status == Status::Exited)));
        assert_eq!(kept.state().unwrap().status, Status::Running, "list writes nothing");

        let cleaned = store.gc_journal().unwrap();
        assert_eq!(cleaned.len(), 3, "{:#?}", said(&cleaned));
        assert!(!gone.dir.exists());
        let state = kept.state().unwrap();
        assert_eq!((state.status, state.exit_code), (Status::Exited, None));
        assert!(store.gc().unwrap().is_empty(), "nothing left to clean");
    }

    #[test]
    fn gc_never_removes_what_it_did_not_make() {
        let (_tmp, base, store) = scratch();
        let container = store.prepare(new(Some("real"), &base)).unwrap();
        store.create(&container).unwrap().exited(0).unwrap();
        // A user's directory in the store, and a real container that lost its config.
        let foreign = store.containers_dir().join("web-app");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("Dockerfile"), "important").unwrap();
        fs::write(container.dir.join("upper/work.txt"), "mine").unwrap();
        fs::remove_file(container.dir.join("config.json")).unwrap();

        for _ in 0..2 {
            let cleaned = store.gc().unwrap();
            assert!(cleaned.iter().all(Cleaned::is_left_alone), "{:#?}", said(&cleaned));
            assert_eq!(cleaned.len(), 2, "{:#?}", said(&cleaned));
            assert!(said(&cleaned).iter().any(|line| line.contains("rm --force")));
        }
        assert_eq!(fs::read_to_string(foreign.join("Dockerfile")).unwrap(), "important");
        assert_eq!(fs::read_to_string(container.dir.join("upper/work.txt")).unwrap(), "mine");
        // Another container's create (whose gc reads the journal) does not touch them either.
        let other = store.prepare(new(Some("other"), &base)).unwrap();
        store.create(&other).unwrap().exited(0).unwrap();
        assert!(container.dir.join("upper/work.txt").exists() && foreign.exists());
        // Only an explicit rm --force does, by id.
        let error = store.remove(&container.config.id, false).unwrap_err().to_string();
        assert!(error.contains("config.json is missing"), "{error}");
        assert!(store.remove(&container.config.id, true).unwrap().broken);
        assert!(!container.dir.exists());
        assert!(store.resolve("real").unwrap_err().to_string().contains("no container"));
    }

    #[test]
    fn a_create_killed_half_way_is_removed_because_the_journal_says_so() {
        let (_tmp, base, store) = scratch();
        let container = store.prepare(new(Some("half"), &base)).unwrap();
        // As if the runtime died after making the directory: the journal says create.
        store.make_root().unwrap();
        journal::write(&store.active_dir(), &container.config.id, Intent::Create).unwrap();
        container.make_dir().unwrap();
        container.make_contents().unwrap();
        names::claim(&store.names_dir(), "half", &container.config.id, |_| true).unwrap();
        let cleaned = store.gc_journal().unwrap();
        assert_eq!(
            said(&cleaned),
            [format!(
                "container {} was being created by a runtime that died: removed",
                container.config.id
            )]
        );
        assert!(!container.dir.exists());
        assert!(names::lookup(&store.names_dir(), "half").is_none());
    }

    #[test]
    fn a_corrupt_state_breaks_one_container_only() {
        let (_tmp, base, store) = scratch();
        for name in ["a-one", "b-two"] {
            let container = store.prepare(new(Some(name), &base)).unwrap();
            store.create(&container).unwrap().exited(0).unwrap();
        }
        let broken = store.find("a-one").unwrap();
        fs::write(broken.dir.join("state.json"), "{\"status\": \"runn").unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed
            .iter()
            .any(|entry| matches!(entry, Listed::Found(c, _) if c.config.name == "b-two")));
        let error = store.remove("a-one", false).unwrap_err().to_string();
        assert!(error.contains("state.json is corrupt"), "{error}");
        assert!(store.remove("a-one", true).unwrap().broken);
        assert!(store.gc().unwrap().is_empty());
    }

    #[test]
    fn force_removes_whatever_is_there() {
        let (_tmp, base, store) = scratch();
        let container = store.prepare(new(Some("odd"), &base)).unwrap();
        store.create(&container).unwrap().exited(0).unwrap();
        fs::write(container.dir.join("config.json"), "garbage").unwrap();
        fs::remove_file(container.dir.join("lock")).unwrap();
        fs::create_dir(container.dir.join("lock")).unwrap();
        // By name (the index still knows it), though the config cannot be read.
        let removed = store.remove("odd", true).unwrap();
        assert!(removed.broken, "{removed}");
        assert!(!container.dir.exists());
        assert!(names::lookup(&store.names_dir(), "odd").is_none());
    }

    #[test]
    fn start_refuses_when_the_upper_is_gone() {
        let (_tmp, base, store) = scratch();
        let container = store.prepare(new(Some("lost"), &base)).unwrap();
        store.create(&container).unwrap().exited(0).unwrap();
        fs::remove_dir_all(container.dir.join("upper")).unwrap();
        let error = container.start().unwrap_err().to_string();
        assert!(error.contains("upper directory") && error.contains("is gone"), "{error}");
    }

    #[test]
    fn an_old_store_without_an_index_is_indexed() {
        let (_tmp, base, store) = scratch();
        let container = store.prepare(new(Some("old"), &base)).unwrap();
        store.create(&container).unwrap().exited(0).unwrap();
        fs::remove_dir_all(store.names_dir()).unwrap();
        fs::create_dir(store.names_dir()).unwrap();
        let same = store.prepare(new(Some("old"), &base)).unwrap();
        let error = store.create(&same).err().unwrap().to_string();
        assert!(error.contains("already in use"), "{error}");
        assert_eq!(store.resolve("old").unwrap(), container.config.id);
    }
}
