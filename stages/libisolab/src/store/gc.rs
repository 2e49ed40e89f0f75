//! Cleaning up after runtimes that could not: what the journal proves they left half done.
//!
//! [`Store::gc_journal`] is what every `run`, `start` and `rm` does first: it reads the
//! journal (one entry per runtime at work, or killed at work) and, for each entry whose
//! container lock is free, finishes what the dead runtime was doing: a half-made container
//! is removed, a container left running is marked exited (or removed, if it was run with
//! `--rm`), a half-removed one is removed. [`Store::gc`] (the `gc` command) also walks the
//! whole store: containers marked running by a store without a journal, temporary files of
//! interrupted writes, mounts left on the host, names whose container is gone. A directory
//! it cannot account for (no config, no journal entry) is reported and left alone.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::idrange::Claims;

use super::files::{self, Lock};
use super::journal::{self, Intent};
use super::names;
use super::{timestamp, Container, State, Status, Store};

/// `isolab gc`'s entry point: [`Store::gc`] on the store at `root`.
pub fn gc(root: &Path) -> Result<Vec<Cleaned>> {
    Store::at(root)?.gc()
}

/// One thing [`Store::gc`] cleaned, or found and left alone.
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
    /// A container whose runtime died while creating or removing it: removed.
    Interrupted {
        /// Its id.
        id: String,
        /// What the runtime was doing.
        intent: Intent,
    },
    /// A mount on the host under the store, detached.
    Unmounted {
        /// Where it was.
        path: PathBuf,
    },
    /// A temporary file of an interrupted atomic write.
    HalfWritten {
        /// The file, removed.
        path: PathBuf,
    },
    /// A name of the index whose container is gone.
    StaleName {
        /// The name, free again.
        name: String,
    },
    /// A container whose name was missing from the index (a store made by an older isolab):
    /// indexed.
    Indexed {
        /// Its name.
        name: String,
        /// Its id.
        id: String,
    },
    /// Claims of user namespace ids whose containers are gone, removed (see
    /// [`Claims::release_all_stale`](crate::idrange::Claims::release_all_stale)).
    StaleClaims {
        /// How many.
        count: usize,
        /// The claims directory.
        dir: PathBuf,
    },
    /// Something gc cannot account for: reported, not touched.
    LeftAlone {
        /// The directory.
        dir: PathBuf,
        /// Why it was left, and what the user can do.
        why: String,
    },
}

impl Cleaned {
    /// Is this a report of something left alone, rather than something done?
    pub fn is_left_alone(&self) -> bool {
        matches!(self, Cleaned::LeftAlone { .. })
    }
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
            Cleaned::Interrupted { id, intent: Intent::Create } => {
                write!(f, "container {id} was being created by a runtime that died: removed")
            }
            Cleaned::Interrupted { id, .. } => {
                write!(f, "container {id} was being removed by a runtime that died: removed")
            }
            Cleaned::Unmounted { path } => write!(f, "unmounted {} (MNT_DETACH)", path.display()),
            Cleaned::HalfWritten { path } => {
                write!(f, "removed {}: a write was interrupted", path.display())
            }
            Cleaned::StaleName { name } => {
                write!(f, "the name {name} belonged to a container that is gone: free again")
            }
            Cleaned::Indexed { name, id } => {
                write!(f, "container {name} ({id}) was missing from the index of names: added")
            }
            Cleaned::StaleClaims { count, dir } => write!(
                f,
                "removed {count} stale claim{} of user namespace ids from {} (their containers \
                 are gone)",
                if *count == 1 { "" } else { "s" },
                dir.display()
            ),
            Cleaned::LeftAlone { dir, why } => write!(f, "left {} alone: {why}", dir.display()),
        }
    }
}

impl Store {
    // ANCHOR: gc_journal
    /// Finishes what runtimes that died were doing, as the journal says: the `gc` every
    /// `run`, `start` and `rm` does first. Reads only the journal's entries, however many
    /// containers the store holds.
    pub fn gc_journal(&self) -> Result<Vec<Cleaned>> {
        self.check_owner()?;
        self.settle_journal()
    }

    /// [`Store::gc_journal`] in a store whose owner was checked already (a start checks it
    /// once, for the gc and the create that follows).
    pub(super) fn settle_journal(&self) -> Result<Vec<Cleaned>> {
        let mut cleaned = Vec::new();
        if !self.active_dir().is_dir() {
            return Ok(cleaned);
        }
        let _store = self.lock()?;
        // In the order the runtimes last wrote them (then by id): the order they worked in,
        // so that what gc says reads the same from run to run.
        let mut ids = journal::ids(&self.active_dir())?;
        let written = |id: &String| {
            fs::symlink_metadata(self.active_dir().join(id)).and_then(|m| m.modified()).ok()
        };
        ids.sort_by_cached_key(|id| (written(id), id.clone()));
        for id in ids {
            // One entry that cannot be settled (a junk file, a full disk) is reported and
            // left; it must not keep the others, or the user's own `rm`, from going on.
            match self.settle_entry(&id) {
                Ok(done) => cleaned.extend(done),
                Err(error) => cleaned.push(Cleaned::LeftAlone {
                    dir: self.active_dir().join(&id),
                    why: format!("this journal entry could not be settled: {error}"),
                }),
            }
        }
        Ok(cleaned)
    }
    // ANCHOR_END: gc_journal

    /// Settles the journal's entry for `id`: nothing while a live runtime holds the
    /// container's lock; otherwise finishes what its dead runtime was doing.
    fn settle_entry(&self, id: &str) -> Result<Vec<Cleaned>> {
        let Some(intent) = journal::read(&self.active_dir(), id)? else { return Ok(vec![]) };
        let dir = self.container_dir(id);
        match fs::symlink_metadata(&dir) {
            // Its runtime got no further than the journal, or finished all but clearing the
            // entry: nothing to say.
            Err(_) => {
                journal::clear(&self.active_dir(), id)?;
                return Ok(vec![]);
            }
            // isolab never makes a symlink (or a file) there: not its to touch.
            Ok(metadata) if !metadata.is_dir() => {
                journal::clear(&self.active_dir(), id)?;
                return Ok(vec![Cleaned::LeftAlone {
                    dir,
                    why: "not a directory isolab made (a symlink or a file), though the \
                          journal named it; nothing it points to was touched"
                        .to_string(),
                }]);
            }
            Ok(_) => {}
        }
        // A live runtime holds the lock: it is at work, and will clean up after itself.
        let lock = match files::try_lock(&dir.join("lock"), false)? {
            Lock::Held => return Ok(vec![]),
            Lock::Taken(lock) => Some(lock),
            Lock::Missing => None,
        };
        let cleaned = self.finish(id, &dir, intent)?;
        journal::clear(&self.active_dir(), id)?;
        drop(lock);
        Ok(cleaned)
    }

    /// Finishes what a dead runtime was doing to container `id` (we hold its lock, or it has
    /// none any more).
    fn finish(&self, id: &str, dir: &Path, intent: Intent) -> Result<Vec<Cleaned>> {
        let mut cleaned = Vec::new();
        let container = self.open(id);
        let id = id.to_string();
        match (intent, container) {
            (Intent::Create | Intent::Remove, container) => {
                let owner = container.as_ref().ok().and_then(|container| container.config.owner);
                // Its name may point here; with the config gone, the index is read whole.
                match container {
                    Ok(container) => names::release(&self.names_dir(), &container.config.name, &id),
                    Err(_) => self.release_names_of(&id)?,
                }
                let had_content = fs::read_dir(dir)
                    .map(|entries| entries.flatten().any(|entry| entry.file_name() != "lock"))
                    .unwrap_or(false);
                let unmounted = files::dismantle(dir)?;
                cleaned.extend(unmounted.into_iter().map(|path| Cleaned::Unmounted { path }));
                release_claim(owner, dir);
                // A removal that got as far as the lock is finished but for the journal (its
                // runtime may be clearing it right now): nothing to say about it.
                if had_content || intent == Intent::Create {
                    cleaned.push(Cleaned::Interrupted { id, intent });
                }
            }
            (Intent::Run, Ok(container)) => {
                cleaned.extend(remove_half_written(dir, false)?);
                if let Ok(state) = container.state() {
                    if state.status == Status::Running {
                        cleaned.push(self.after_death(&container, state)?);
                    }
                }
            }
            (Intent::Run, Err(error)) => cleaned.push(Cleaned::LeftAlone {
                dir: dir.to_path_buf(),
                why: format!("its runtime died and {error}"),
            }),
        }
        Ok(cleaned)
    }

    /// Settles a container whose runtime died: removed if it was run with `--rm`, otherwise
    /// marked exited, with an exit code nobody knows.
    fn after_death(&self, container: &Container, state: State) -> Result<Cleaned> {
        let (id, name) = (container.config.id.clone(), container.config.name.clone());
        if container.config.remove {
            journal::write(&self.active_dir(), &id, Intent::Remove)?;
            names::release(&self.names_dir(), &name, &id);
            files::dismantle(&container.dir)?;
            release_claim(container.config.owner, &container.dir);
            return Ok(Cleaned::RemovedDead { id, name });
        }
        let state = State { status: Status::Exited, finished: Some(timestamp()), ..state };
        files::write_json_even_if_full(&container.dir.join("state.json"), &state)?;
        Ok(Cleaned::MarkedExited { id, name, runtime: state.runtime_pid })
    }

    // ANCHOR: gc
    /// Cleans up after runtimes that could not (see the module's documentation): first the
    /// journal, then the whole store. Says what it did, and what it left alone.
    pub fn gc(&self) -> Result<Vec<Cleaned>> {
        let mut cleaned = self.gc_journal()?;
        if !self.containers_dir().is_dir() {
            cleaned.extend(release_stale_claims());
            return Ok(cleaned);
        }
        let _store = self.lock()?;
        self.ensure_index()?;
        // Mounts on the host in the store: none, unless something mounted there by hand
        // (the overlay is mounted in the container's own namespace).
        let mounted = files::mount_points_under(&self.containers_dir())?;
        // Nor on its mount points, where containers mount only in namespaces of their own.
        let strays = files::unmount_under(&self.mounts_dir())?;
        cleaned.extend(strays.into_iter().map(|path| Cleaned::Unmounted { path }));
        for (name, dir) in self.foreign_entries()? {
            cleaned.push(Cleaned::LeftAlone {
                dir,
                why: format!(
                    "not a directory (a symlink or a file): isolab made none such and follows \
                     none; `rm --force {name}` removes it (not what it points to)"
                ),
            });
        }
        for id in self.ids()? {
            let dir = self.container_dir(&id);
            match journal::read(&self.active_dir(), &id) {
                // A live runtime's: the journal's gc left it, so its lock is held.
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(error) => {
                    let dir = self.active_dir().join(&id);
                    let why = format!("not a journal entry isolab wrote: {error}");
                    cleaned.push(Cleaned::LeftAlone { dir, why });
                    continue;
                }
            }
            let lock = match files::try_lock(&dir.join("lock"), false)? {
                Lock::Held => continue,
                Lock::Taken(lock) => Some(lock),
                Lock::Missing => None,
            };
            let container = match self.open(&id) {
                Ok(container) => container,
                Err(error) => {
                    cleaned.extend(self.unaccounted(&dir, &error.to_string())?);
                    continue;
                }
            };
            let lock = match lock {
                Some(lock) => lock,
                // A config but no lock file: make one (we hold the store's lock).
                None => match files::try_lock(&dir.join("lock"), true)? {
                    Lock::Taken(lock) => lock,
                    _ => continue,
                },
            };
            cleaned.extend(remove_half_written(&dir, false)?);
            if mounted.iter().any(|point| point.starts_with(&dir)) {
                let unmounted = files::unmount_under(&dir)?;
                cleaned.extend(unmounted.into_iter().map(|path| Cleaned::Unmounted { path }));
            }
            let name = container.config.name.clone();
            match names::lookup(&self.names_dir(), &name) {
                Some(target) if target == id => {}
                Some(other) if self.container_dir(&other).join("config.json").exists() => {}
                _ => {
                    let link = self.names_dir().join(&name);
                    if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                        let _ = fs::remove_file(&link);
                    }
                    match names::claim(&self.names_dir(), &name, &id, |_| true) {
                        Ok(None) => cleaned.push(Cleaned::Indexed { name, id: id.clone() }),
                        Ok(Some(_)) => {}
                        Err(error) => cleaned.push(Cleaned::LeftAlone {
                            dir: link,
                            why: format!("the index of names cannot hold {name}: {error}"),
                        }),
                    }
                }
            }
            // Marked running, no journal entry (a store of an older isolab), lock free.
            if let Ok(state) = container.state() {
                if state.status == Status::Running {
                    cleaned.push(self.after_death(&container, state)?);
                }
            }
            drop(lock);
        }
        for (name, id) in names::all(&self.names_dir())? {
            if fs::symlink_metadata(self.container_dir(&id)).is_err() {
                names::release(&self.names_dir(), &name, &id);
                cleaned.push(Cleaned::StaleName { name });
            }
        }
        cleaned.extend(remove_half_written(&self.active_dir(), true)?);
        cleaned.extend(release_stale_claims());
        Ok(cleaned)
    }
    // ANCHOR_END: gc

    /// A container directory without a readable config and without a journal entry: isolab
    /// cannot prove it made it, so it is left alone and reported, even when it is empty (a
    /// removal interrupted at its very end still has its journal entry).
    fn unaccounted(&self, dir: &Path, why: &str) -> Result<Vec<Cleaned>> {
        let id = dir.file_name().unwrap_or_default().to_string_lossy();
        Ok(vec![Cleaned::LeftAlone {
            dir: dir.to_path_buf(),
            why: format!("{why}; isolab cannot tell that it made it, so `gc` never removes it"),
        }
        .with_id_hint(&id)])
    }

    /// Entries of `containers/` that are not directories (a symlink, a file): never made by
    /// isolab, never followed; reported by `gc`.
    fn foreign_entries(&self) -> Result<Vec<(String, PathBuf)>> {
        let dir = self.containers_dir();
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| crate::Error::io("opendir", &dir, &e))? {
            let entry = entry.map_err(|e| crate::Error::io("readdir", &dir, &e))?;
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                found.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }
}

impl Cleaned {
    fn with_id_hint(self, id: &str) -> Cleaned {
        match self {
            Cleaned::LeftAlone { dir, why } if !why.contains("rm --force") => {
                Cleaned::LeftAlone { dir, why: format!("{why} (`rm --force {id}` does)") }
            }
            other => other,
        }
    }
}

/// The full gc's last step: the claims of ids whose containers are gone, in this store or any
/// other (kept claims of stopped containers and live runtimes' claims stay). A tidy-up, so a
/// failure is no error of gc's.
fn release_stale_claims() -> Option<Cleaned> {
    let claims = Claims::host();
    match claims.release_all_stale() {
        Ok(count @ 1..) => Some(Cleaned::StaleClaims { count, dir: claims.dir().to_path_buf() }),
        _ => None,
    }
}

/// The claim of the ids a removed container's files were owned by (`owner`, from its config),
/// stale now that its directory `dir` is gone: removed (by `rm`, and by gc after a dead
/// runtime). Without a config, killed before it was written, the claim is found by the
/// directory it names. A failure to tidy it is no error: a stale claim is taken over when its
/// slot is wanted, and the full `gc` sweeps them.
pub(super) fn release_claim(owner: Option<(u32, u32)>, dir: &Path) {
    let claims = Claims::host();
    let _ = match owner {
        Some((uid, _)) => claims.release_stale(uid),
        None => claims.release_stale_for(dir),
    };
}

/// Removes the temporary files of atomic writes a dead runtime did not finish: in a
/// container's directory whose lock we hold, all of them; in the journal, which every runtime
/// writes, those whose writer (the pid in their name) is gone.
fn remove_half_written(dir: &Path, shared: bool) -> Result<Vec<Cleaned>> {
    let mut cleaned = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return Ok(cleaned) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, pid)) = name.rsplit_once(".tmp-") else { continue };
        if !files::is_temporary(&name) || (shared && Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        let path = entry.path();
        files::remove_any(&path)?;
        cleaned.push(Cleaned::HalfWritten { path });
    }
    Ok(cleaned)
}
