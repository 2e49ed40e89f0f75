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
//!   containers/<id>/            0700, the caller's (0710 for the container root's group)
//!     config.json               what it is: name, base, storage, the command line that made it
//!     state.json                what it is doing: created, running (runtime pid), exited (code)
//!     lock                      held (flock) by the runtime while the container runs
//!     upper/ work/              overlay: its own layer, overlayfs's scratch
//!     rootfs/                   copy: its full copy of the base
//!   names/<name> -> <id>        the index of names: one symlink per container
//!   active/<id> -> run          the journal: create, run or remove, while a runtime does it
//!   mnt/                        0711: root/ lower0/ … the mount points every container's
//!                               child mounts its overlay and idmapped base on, each in its
//!                               own mount namespace
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
//! This file is the store itself: its layout, its owner check, and the verbs that change it
//! (create, remove) with the name resolution they share, some 750 lines with their comments.
//! They stay together on purpose: the four rules above are checked against each other here,
//! create beside remove. A container (`container.rs`), the files (`files.rs`), names, the
//! journal and gc have files of their own.
//!
//! The overlay itself is mounted inside the container's own mount namespace (see
//! [`crate::container::Plan::move_rootfs`]), so it dies with the container even after a
//! SIGKILL of the runtime: there is normally nothing on the host to unmount.

mod container;
mod files;
mod gc;
mod journal;
mod names;
pub mod runtime;
mod time;

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::Flock;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::copy;
use crate::error::{Error, Result};

pub use container::Running;
use container::{kill_runtime, lock_patiently};
pub use files::write_atomic;
use files::{json, not_writable, read_json};
pub use gc::{gc, Cleaned};
use journal::Intent;
use names::Resolved;
pub use names::{check_name, looks_like_id, ID_LENGTH};
pub use time::{show_time, timestamp, timestamp_at};

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
    /// The read-only layers its root is made of, topmost first: one, the base rootfs, or
    /// (chapter 5) an image's layers, each unpacked once in the store.
    pub lowers: Vec<PathBuf>,
    /// The image it was made from (chapter 5): the digest of its manifest, as `run` resolved
    /// the name it was given, and that name. A `start` runs on this digest, never on what the
    /// name means by then; an image a container uses is not removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
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
    /// The image the lowers are the layers of (chapter 5).
    pub image: Option<ImageRef>,
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

/// The image a container was made from: what the user named, and what it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// As given (`app:1.0`), for `ps`.
    pub name: String,
    /// `sha256:<hex>` of the image's manifest.
    pub manifest: String,
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
        let absolute = std::path::absolute(root).map_err(|e| Error::io("getcwd", root, &e))?;
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

    // ANCHOR: check_owner
    /// Refuses a store that is not the caller's own: its directories must be real directories
    /// (no symlinks) that belong to the user who runs this. Root working in another user's
    /// store would follow whatever that user planted there (a link in `containers/`, a lock
    /// that points at `/etc/nologin`) and remove or create files anywhere; a user in root's
    /// store can change nothing anyway. Every verb that writes or removes checks this first.
    pub fn check_owner(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let caller = Uid::effective().as_raw();
        // Nor may anyone else be able to swap a directory on the way to it: every parent
        // belongs to root or the caller and is not writable by others, unless it is sticky
        // (as /tmp is: others may not rename what is not theirs there).
        for parent in self.root.ancestors().skip(1) {
            let Ok(metadata) = fs::symlink_metadata(parent) else { continue };
            let writable_by_others = metadata.mode() & 0o022 != 0 && metadata.mode() & 0o1000 == 0;
            if (metadata.uid() != 0 && metadata.uid() != caller) || writable_by_others {
                return Err(Error::Invalid(format!(
                    "the store {} is inside {}, which {}: another user could replace the \
                     store under it; pass --root with a store in a directory only you and root \
                     may change",
                    self.root.display(),
                    parent.display(),
                    if writable_by_others {
                        "others may write".to_string()
                    } else {
                        format!("belongs to uid {}", metadata.uid())
                    }
                )));
            }
        }
        let dirs = [self.root.clone(), self.containers_dir(), self.names_dir(), self.active_dir()];
        for dir in dirs.into_iter().chain([self.mounts_dir()]) {
            let metadata = match fs::symlink_metadata(&dir) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(Error::io("lstat", &dir, &error)),
            };
            if !metadata.is_dir() {
                return Err(Error::Invalid(format!(
                    "{} is not a directory (a symlink or a file where the store keeps its own \
                     directory): isolab follows no link in a store; remove it, or pass --root \
                     with another store",
                    dir.display()
                )));
            }
            let what = match dir == self.root {
                true => format!("the store {}", self.root.display()),
                false => format!("{}, the store's own directory,", dir.display()),
            };
            if metadata.uid() != caller && dir == self.root {
                return Err(Error::Invalid(format!(
                    "{what} belongs to uid {}, not to uid {caller} who runs this: a store \
                     is used by its owner only (what another user put in it could make this \
                     run remove or create files elsewhere); run as uid {}, or pass --root with \
                     a store of your own",
                    metadata.uid(),
                    metadata.uid()
                )));
            }
            if metadata.uid() != caller {
                return Err(Error::Invalid(format!(
                    "{what} belongs to uid {}, not to uid {caller} who owns the store and runs \
                     this: isolab made it, so another user changed it, and what they put in \
                     it could make this run remove or create files elsewhere; look into it, \
                     then `chown -R {caller} {}` or remove it",
                    metadata.uid(),
                    dir.display()
                )));
            }
            // Nor may another user rename what is in them (a mount point swapped for a link
            // between our check and the container's mount): not others for the root, which
            // may be the user's own `mkdir` (group-writable under a umask of 002), nor the
            // group either for the directories isolab made.
            let writers = if dir == self.root { 0o002 } else { 0o022 };
            let loose = metadata.mode() & writers != 0 && metadata.mode() & 0o1000 == 0;
            if loose {
                return Err(Error::Invalid(format!(
                    "{what} is mode {:04o}: others may write in it, and replace what isolab \
                     made there; `chmod go-w {}`",
                    metadata.mode() & 0o7777,
                    dir.display()
                )));
            }
        }
        Ok(())
    }
    // ANCHOR_END: check_owner

    fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    fn names_dir(&self) -> PathBuf {
        self.root.join("names")
    }

    fn active_dir(&self) -> PathBuf {
        self.root.join("active")
    }

    /// The mount points, shared by every container ([`Container::mount_points`]).
    fn mounts_dir(&self) -> PathBuf {
        self.root.join("mnt")
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
            image: new.image,
            userxattr: new.userxattr,
            owner: new.owner,
            remove: new.remove,
            argv: new.argv,
            command: new.command,
        };
        let container = Container { config, dir: self.container_dir(&id) };
        // The mount points are every container's: a base there would be written to by a
        // container's set-up, and hidden by the next container's mount.
        if let Some(base) =
            container.config.lowers.iter().find(|b| b.starts_with(self.mounts_dir()))
        {
            return Err(Error::Invalid(format!(
                "the base {} is inside the store's mount points ({}), where containers mount \
                 their roots: pass a base outside the store",
                base.display(),
                self.mounts_dir().display()
            )));
        }
        // An idmapped base is handed to the mounter (root of the user namespace) by file
        // descriptor: it must reach the store's mount points, not the base's own path, which
        // may be closed to everyone but root (stage 5's layers are).
        let idmapped = container.idmaps_base();
        if let Some(layers) = container.layers() {
            layers.check(if idmapped { None } else { container.config.owner })?;
        }
        if let Some(mounted) = container.mounted_layers() {
            if idmapped {
                if let Some((uid, gid)) = container.config.owner {
                    for dir in [&self.mounts_dir(), &mounted.upper, &mounted.work] {
                        crate::mounts::check_reachable(dir, uid, gid)?;
                    }
                }
            }
            mounted.check_length()?;
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
        // Checked before anything is made in it (what make_root then makes is ours).
        self.check_owner()?;
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
        // A `--rm` container is gone when its command ends: after a power cut nothing of it is
        // worth keeping, and against a killed runtime the page cache is enough (gc reads it).
        // Its files are replaced as atomically, without the three `fsync`s (about a
        // millisecond each on an idle disk, many more on a busy one).
        let written = match container.config.remove {
            true => files
                .iter()
                .try_for_each(|(name, bytes)| files::replace_quickly(&container.dir, name, bytes)),
            false => write_atomic(&container.dir, &files),
        };
        written.map_err(|error| self.full_hint(error))?;
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
            // Last, any entry of `containers/` by its exact name: what `gc` reports as not
            // isolab's (a user's directory, a symlink) can then be removed by `rm --force`,
            // as its message says.
            Resolved::None
                if !word.is_empty()
                    && !word.contains('/')
                    && word != "."
                    && word != ".."
                    && fs::symlink_metadata(self.container_dir(word)).is_ok() =>
            {
                Ok(word.to_string())
            }
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
        self.check_owner()?;
        let id = self.resolve(word)?;
        let dir = self.container_dir(&id);
        if !files::is_real_dir(&dir) {
            if !force {
                return Err(Error::Invalid(format!(
                    "{} is not a directory isolab made (a symlink or a file): `rm --force {word}` \
                     removes it, and nothing it points to",
                    dir.display()
                )));
            }
            files::remove_any(&dir)?;
            return Ok(Removed {
                id: id.clone(),
                name: "?".into(),
                broken: true,
                ..Removed::default()
            });
        }
        let config = read_json::<Config>(&dir.join("config.json"));
        let state = read_json::<State>(&dir.join("state.json"));
        let mut removed = Removed { id: id.clone(), ..Removed::default() };
        removed.name = config.as_ref().map_or_else(|_| "?".to_string(), |c| c.name.clone());
        let owner = config.as_ref().ok().and_then(|config| config.owner);
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
        // The word itself, if it was another name of the index for this container.
        names::release(&self.names_dir(), word, &id);
        removed.unmounted = files::dismantle(&dir)?;
        // The user namespace ids its files were owned by are free once it is gone.
        gc::release_claim(owner, &dir);
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

    /// Makes the store's directories if they are missing: the root, `containers/` and `mnt/`
    /// are `0711`, so that root of a user namespace (an ordinary uid outside) may pass through
    /// to its own container's directory (which is `0700`, its own) and to the mount points;
    /// the index and the journal are `0700`.
    pub(super) fn make_root(&self) -> Result<()> {
        for (dir, mode) in self.root_dirs() {
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

    /// The store's own directories and their modes, parents first (see [`Store::make_root`]).
    fn root_dirs(&self) -> [(PathBuf, u32); 5] {
        [
            (self.root.clone(), 0o711),
            (self.containers_dir(), 0o711),
            (self.names_dir(), 0o700),
            (self.active_dir(), 0o700),
            (self.mounts_dir(), 0o711),
        ]
    }

    /// What [`Store::make_root`] and the store's lock and index do first, as the dry run lists
    /// them.
    pub(super) fn root_steps(&self) -> Vec<String> {
        let [(root, mode), inside @ ..] = self.root_dirs();
        let inside: Vec<String> = inside
            .iter()
            .map(|(dir, mode)| {
                let name = dir.strip_prefix(&root).unwrap_or(dir).display();
                format!("{name}/ {mode:04o}")
            })
            .collect();
        vec![
            format!(
                "mkdir(\"{}\", {mode:04o}) and its missing parents, in it {}: each unless it exists",
                root.display(),
                inside.join(", ")
            ),
            format!(
                "flock(\"{}\", LOCK_EX), made unless it exists; \"{}\" too (the index of names \
                 is whole)",
                root.join("lock").display(),
                self.names_dir().join(".complete").display()
            ),
        ]
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
            Err(error) => return Err(Error::io("opendir", &dir, &error)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("readdir", &dir, &e))?;
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                ids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        ids.sort();
        Ok(ids)
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
mod tests;
