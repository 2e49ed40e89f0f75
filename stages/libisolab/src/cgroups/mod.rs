//! Control groups: what a process may *use* — memory, CPU time, processes — counted and
//! enforced by the kernel (`man 7 cgroups`).
//!
//! A cgroup is a directory in a special filesystem. Its files are knobs (write `67108864` to
//! `memory.max`) and meters (read `memory.peak`); a process joins a cgroup when its pid is
//! written to `cgroup.procs`, and every child it forks is born there. The kernel has two
//! versions of this filesystem, and hosts still run both:
//!
//! - **v1**: one hierarchy per controller, each mounted on its own (`/sys/fs/cgroup/memory`,
//!   `/sys/fs/cgroup/cpu`, …). A container is one directory *per controller*, each controller
//!   has its own file names, and freezing or killing a whole group is left to the caller.
//! - **v2**: one unified hierarchy. A container is one directory; a parent hands controllers
//!   down to its children by writing `+memory +cpu` to its `cgroup.subtree_control`; and
//!   `cgroup.kill` kills every process of a group in one write.
//!
//! [`Backend`] is the one interface stage 3 uses, with an implementation per version
//! ([`v1::V1`], [`v2::V2`]) and one small file per controller in each. [`detect()`] finds out
//! which version the host has by asking `statfs(2)` what filesystem is mounted, never by
//! guessing from paths. Every call on the cgroup filesystem goes through [`Cgroupfs`]:
//! [`Kernel`] makes the real calls, and the tests pass a fake that works in a temporary
//! directory, so the very same backend code is checked without root.
//!
//! The life of a container's cgroup, in the order stage 3 runs it:
//!
//! 1. [`Limits::parse`] checks `--memory`, `--cpus`… before anything is touched;
//! 2. [`detect()`], then [`open`] the backend (as a user without root: the delegated v2 subtree
//!    that [`rootless::delegation`] finds);
//! 3. [`gc()`] removes what runtimes killed earlier left behind;
//! 4. [`Backend::plan`] lists every `mkdir` and `write` (printed by `--dry-run`), and
//!    [`Backend::create`] runs that very list;
//! 5. the child is in it before it runs a step of its own: born in it on v2 (`clone3`), on
//!    v1 it moves itself ([`SelfJoin`]); the parent writes its pid ([`Plan::join`]) only on a
//!    v2 kernel without `clone3`. [`Backend::join`] is that write for a created cgroup;
//! 6. [`Backend::report`] reads the meters once the child has exited;
//! 7. [`Backend::destroy`] kills whatever is left inside and removes the directories.
//!
//! [`Cgroup`] (in [`guard`]) holds a created cgroup and removes it when dropped, so that no way
//! out of the runtime leaves it behind; [`view`] is what the container sees of its cgroup
//! (a cgroup namespace, and its own cgroup mounted read-only at `/sys/fs/cgroup`).
//!
//! A container's cgroup is `isolab/<name>-<runtime pid>` (a [`ContainerId`]): the shared
//! `isolab/` parent keeps our cgroups together, and the runtime's pid in the name is how [`gc()`]
//! tells a stale cgroup (its runtime is gone) from a live one.

pub mod detect;
pub mod fs;
pub mod gc;
pub mod guard;
pub mod id;
pub mod limits;
pub mod report;
pub mod rootless;
pub mod v1;
pub mod v2;
pub mod view;

#[cfg(test)]
pub(crate) mod fake;

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::{Pid, Uid};

pub use self::detect::{detect, FsType, FsTypes, Hierarchy, Unified, V1Mount};
pub use self::fs::{Cgroupfs, Kernel};
pub use self::gc::gc;
pub use self::guard::Cgroup;
pub use self::id::{check_container_name, ContainerId};
pub use self::limits::{CpuList, CpuQuota, LimitArgs, Limits, Machine, Swap};
pub use self::report::{describe_oom, format_size, Bound, Usage};
use crate::error::{Error, Result};

/// The directory, in every hierarchy, under which isolab keeps its containers' cgroups.
pub const PARENT: &str = "isolab";

/// How long [`Backend::destroy`] waits for killed processes to leave their cgroup.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// Which version of cgroups a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller.
    V1,
    /// The unified hierarchy.
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        })
    }
}

/// One call on the cgroup filesystem that [`Backend::create`] will make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `mkdir(2)`: a new cgroup. A `shared` one (the `isolab/` parent) may exist already.
    MakeDir {
        /// The directory.
        path: PathBuf,
        /// Whether it may exist already (then it is left as it is).
        shared: bool,
        /// Why, in words.
        why: String,
    },
    /// `write(2)` of one value to one file.
    Write {
        /// The file.
        path: PathBuf,
        /// What is written.
        value: String,
        /// Why, in words.
        why: String,
    },
    /// Reads `from` and writes what it holds to `to` (v1 cpuset: a child starts empty).
    Copy {
        /// The parent's file.
        from: PathBuf,
        /// The child's file.
        to: PathBuf,
        /// Why, in words.
        why: String,
    },
}

impl Step {
    /// A write of `value` to `path`.
    pub fn write(path: PathBuf, value: impl fmt::Display, why: impl Into<String>) -> Step {
        Step::Write { path, value: value.to_string(), why: why.into() }
    }

    /// Why the step is there, in words (empty when it needs no comment).
    pub fn why(&self) -> &str {
        match self {
            Step::MakeDir { why, .. } | Step::Write { why, .. } | Step::Copy { why, .. } => why,
        }
    }
}

/// The call, as `strace` would show it.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::MakeDir { path, .. } => write!(f, "mkdir(\"{}\", 0755)", path.display()),
            Step::Write { path, value, .. } => {
                write!(f, "write(\"{}\", \"{value}\")", path.display())
            }
            Step::Copy { from, to, .. } => {
                write!(f, "write(\"{}\", read(\"{}\"))", to.display(), from.display())
            }
        }
    }
}

/// Everything [`Backend::create`] and [`Backend::join`] will do for one container: the
/// `--dry-run` output, and the exact list that runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Which version of cgroups.
    pub version: Version,
    /// The container.
    pub id: ContainerId,
    /// The calls of [`Backend::create`], in order.
    pub steps: Vec<Step>,
    /// The `cgroup.procs` files [`Backend::join`] writes the child's pid to.
    pub join: Vec<PathBuf>,
}

// ANCHOR: plan_join
impl Plan {
    /// Moves process `pid` (and the children it will have) into the planned cgroup: its pid
    /// written to each `cgroup.procs` of [`Plan::join`], as [`Backend::join`] does. The
    /// container's plan calls this from the parent, before it releases the child, where the
    /// child cannot move itself ([`SelfJoin`]) nor be born in its cgroup.
    pub fn join(&self, fs: &dyn Cgroupfs, pid: Pid) -> Result<()> {
        // LAB stage3/join BEGIN: the child moves in before it may exec
        for procs in &self.join {
            write_file(fs, procs, &pid.to_string())?;
        }
        Ok(())
        // LAB END
    }

    /// cgroup v1: the `tasks` file beside each `cgroup.procs` of [`Plan::join`], through
    /// which a child moves itself in ([`SelfJoin`]). None on v2, where `tasks` does not exist
    /// (a child is born in its cgroup there: `namespaces::spawn_into`).
    pub fn tasks_files(&self) -> Vec<PathBuf> {
        match self.version {
            Version::V1 => {
                let dirs = self.join.iter().filter_map(|procs| procs.parent());
                dirs.map(|dir| dir.join("tasks")).collect()
            }
            Version::V2 => Vec::new(),
        }
    }
}
// ANCHOR_END: plan_join

// ANCHOR: self_join
/// cgroup v1: the container's `tasks` files, one per hierarchy, opened by the runtime before
/// the clone, for the child to move *itself* in, as its first step.
///
/// Why the child, and why `tasks`: a move through `cgroup.procs` (a whole process, or any
/// pid but the writer's own thread) takes the machine-wide `cgroup_threadgroup_rwsem` for
/// writing, and after a quiet spell that waits for an RCU grace period, 5 to 10 ms. A thread
/// that moves only itself (`"0"` written to v1's `tasks`) cannot exit or exec while it is
/// moved, and the kernel skips that lock (`cgroup_procs_write_start`, kernel/cgroup/cgroup.c):
/// some 50 µs. The child has one thread, so that is all of it. The runtime opens the files,
/// as root: v1 judges a write by the credentials of the *open* (`of->file->f_cred`), and
/// root of the container's user namespace could not open them. They close on exec, and the
/// child closes them as soon as it has moved: the command never holds them.
#[derive(Debug)]
pub struct SelfJoin {
    files: Vec<(PathBuf, File)>,
}

impl SelfJoin {
    /// In the runtime, before the clone: opens each of `tasks` for writing, closed on exec.
    pub fn open(tasks: &[PathBuf]) -> Result<SelfJoin> {
        let open = |path: &PathBuf| {
            let file = File::options().write(true).custom_flags(libc::O_CLOEXEC).open(path);
            file.map(|file| (path.clone(), file)).map_err(|error| Error::io("open", path, &error))
        };
        Ok(SelfJoin { files: tasks.iter().map(open).collect::<Result<_>>()? })
    }

    /// In the child, before anything else: moves the calling thread (the child's only one)
    /// into each hierarchy's cgroup, then closes the files.
    pub fn join(self) -> Result<()> {
        // LAB stage3/join BEGIN: the child moves itself in before it may exec
        for (path, mut file) in self.files {
            file.write_all(b"0").map_err(|error| Error::io("write", &path, &error))?;
        }
        Ok(())
        // LAB END
    }
}
// ANCHOR_END: self_join

/// One line per call, each after a `# why` comment; the join last, with `<pid>` for the child.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            if !step.why().is_empty() {
                writeln!(f, "# {}", step.why())?;
            }
            writeln!(f, "{step}")?;
        }
        for (index, procs) in self.join.iter().enumerate() {
            if index == 0 {
                writeln!(f, "# join: the parent moves the child in, before the child execs")?;
            }
            writeln!(f, "write(\"{}\", \"<pid>\")", procs.display())?;
        }
        Ok(())
    }
}

/// What [`Backend::destroy`] did: the leftover processes it killed and the directories it
/// removed, children before parents. Both empty if there was nothing (destroy is idempotent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// The cgroup's directory name, `<name>-<pid>`.
    pub id: String,
    /// Processes that were still inside, killed with SIGKILL.
    pub killed: Vec<Pid>,
    /// The directories removed, in the order they were.
    pub dirs: Vec<PathBuf>,
}

impl Removed {
    /// Nothing was there.
    pub fn is_empty(&self) -> bool {
        self.killed.is_empty() && self.dirs.is_empty()
    }
}

/// `removed cgroup c1-4242 (killed 2 leftover processes): /sys/fs/cgroup/…, …`
impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "removed cgroup {}", self.id)?;
        match self.killed.len() {
            0 => {}
            1 => write!(f, " (killed 1 leftover process)")?,
            n => write!(f, " (killed {n} leftover processes)")?,
        }
        let dirs: Vec<String> = self.dirs.iter().map(|dir| dir.display().to_string()).collect();
        write!(f, ": {}", dirs.join(", "))
    }
}

/// One version of cgroups: how a container's cgroup is laid out, made, joined, read and
/// removed. [`v1::V1`] and [`v2::V2`] implement it; stage 3 only sees this trait.
pub trait Backend {
    /// Which version this is.
    fn version(&self) -> Version;

    /// The filesystem calls go through (the real kernel, or a test's fake).
    fn fs(&self) -> &dyn Cgroupfs;

    /// The shared `isolab/` parents: one per hierarchy on v1, one on v2.
    fn parents(&self) -> Vec<PathBuf>;

    /// The directories of container `id`, whether they exist or not (one per hierarchy on
    /// v1, one on v2).
    fn dirs(&self, id: &ContainerId) -> Vec<PathBuf>;

    /// Checks `limits` against what this host offers and lists every call that creates the
    /// cgroup of `id`. Reads the host's cgroup files but changes nothing.
    fn plan(&self, id: &ContainerId, limits: &Limits) -> Result<Plan>;

    /// Reads the meters of `id`: peak memory, CPU time, throttling, OOM kills, peak pids.
    /// What this host does not provide is `None` ("not available"), never invented.
    fn report(&self, id: &ContainerId) -> Result<Usage>;

    /// Kills every process left in the cgroup of `id`, then removes its directories,
    /// deepest first, and the shared `isolab/` parent if no other container uses it.
    /// Idempotent: a cgroup that is already gone gives an empty [`Removed`].
    fn destroy(&self, id: &ContainerId) -> Result<Removed>;

    /// Runs the plan's steps in order. If one fails, what was made is removed again, so that
    /// a failed start leaves nothing behind, and the first error is returned.
    fn create(&self, plan: &Plan) -> Result<()> {
        // LAB stage3/create BEGIN: make the cgroup; undo it if a step fails
        if let Err(error) = apply(self.fs(), &plan.steps) {
            let _ = self.destroy(&plan.id);
            return Err(error);
        }
        Ok(())
        // LAB END
    }

    // ANCHOR: join
    /// Moves process `pid` (and the children it will have) into the cgroup of `id`: one write
    /// of its pid to `cgroup.procs` in every hierarchy the cgroup has.
    ///
    /// The parent's way, for a created cgroup (the planned one's is [`Plan::join`]). Stage 3
    /// joins without it where it can: the child is born in its cgroup on v2 (`clone3`), and
    /// moves itself on v1 ([`SelfJoin`]), which skips the machine-wide lock a move by another
    /// process takes.
    fn join(&self, id: &ContainerId, pid: Pid) -> Result<()> {
        let dirs: Vec<PathBuf> =
            self.dirs(id).into_iter().filter(|dir| self.fs().exists(dir)).collect();
        if dirs.is_empty() {
            return Err(Error::sys("join", id, Errno::ENOENT)
                .hint("the cgroup does not exist: create it first"));
        }
        for dir in dirs {
            write_file(self.fs(), &dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }
    // ANCHOR_END: join

    /// The containers that have a cgroup here (directories under `isolab/` named as a
    /// [`ContainerId`]; other names are not ours and are left alone).
    fn containers(&self) -> Result<Vec<ContainerId>> {
        let mut ids = Vec::new();
        for parent in self.parents() {
            let children = match self.fs().children(&parent) {
                Ok(children) => children,
                Err(Errno::ENOENT) => continue,
                Err(errno) => return Err(Error::sys("readdir", parent.display(), errno)),
            };
            let names = children.iter().filter_map(|dir| dir.file_name()?.to_str());
            ids.extend(names.filter_map(ContainerId::parse));
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

/// The backend that enforces limits on this host, for a user: root gets the whole hierarchy
/// (v2, or v1 on v1 and hybrid hosts, where the controllers are on v1); any other user the v2
/// subtree delegated to them, or an error that says how to get one.
pub fn open(hierarchy: &Hierarchy, user: Uid, fs: Rc<dyn Cgroupfs>) -> Result<Box<dyn Backend>> {
    if !user.is_root() {
        let top = rootless::delegation(hierarchy, user)?;
        return Ok(Box::new(v2::V2::new(&top, fs)));
    }
    Ok(match hierarchy {
        Hierarchy::V2(unified) => Box::new(v2::V2::new(&unified.mount, fs)),
        Hierarchy::V1(mounts) | Hierarchy::Hybrid { v1: mounts, .. } => {
            Box::new(v1::V1::new(mounts.clone(), fs))
        }
    })
}

/// A backend for every part of the host's cgroups that may hold isolab cgroups: on a hybrid
/// host both the v1 hierarchies and the v2 mount beside them. [`gc()`] looks in all of them.
pub fn backends(hierarchy: &Hierarchy, fs: Rc<dyn Cgroupfs>) -> Vec<Box<dyn Backend>> {
    let mut backends: Vec<Box<dyn Backend>> = Vec::new();
    if !hierarchy.v1_mounts().is_empty() {
        backends.push(Box::new(v1::V1::new(hierarchy.v1_mounts().to_vec(), fs.clone())));
    }
    if let Some(unified) = hierarchy.unified() {
        backends.push(Box::new(v2::V2::new(&unified.mount, fs)));
    }
    backends
}

// ANCHOR: apply
/// Runs `steps` in order (see [`Backend::create`]).
pub fn apply(fs: &dyn Cgroupfs, steps: &[Step]) -> Result<()> {
    // LAB stage3/limit BEGIN: each limit is one write to a controller file
    // The shared parent (`isolab/`) is made by whichever runtime comes first and removed by
    // whichever leaves it empty last. Between our `mkdir` of it (EEXIST: someone's) and of
    // our own cgroup inside, another runtime may remove it: our `mkdir` then fails with
    // ENOENT, and the plan goes back to the parent's step (making it again, with what a new
    // parent needs, cpuset's copies on v1), a few times. Once our cgroup is inside, the
    // parent stays: rmdir(2) of a cgroup with children fails (EBUSY).
    let mut at = 0;
    let mut tries = 0;
    while let Some(step) = steps.get(at) {
        at += 1;
        match step {
            Step::MakeDir { path, shared, .. } => match fs.mkdir(path) {
                Ok(()) => {}
                Err(Errno::EEXIST) if *shared => {}
                Err(Errno::ENOENT) if !*shared && tries < PARENT_GONE_TRIES => {
                    let parent = steps.iter().position(|step| {
                        matches!(step, Step::MakeDir { path: made, shared: true, .. }
                                 if Some(made.as_path()) == path.parent())
                    });
                    let Some(parent) = parent else { return Err(mkdir_error(path, Errno::ENOENT)) };
                    tries += 1;
                    at = parent;
                }
                Err(errno) => return Err(mkdir_error(path, errno)),
            },
            Step::Write { path, value, .. } => write_file(fs, path, value)?,
            Step::Copy { from, to, .. } => {
                let value = read_file(fs, from)?;
                write_file(fs, to, value.trim())?;
            }
        }
    }
    Ok(())
    // LAB END
}
// ANCHOR_END: apply

/// Writes `value` to a cgroup file, naming the value, the file and what to do on failure.
pub(crate) fn write_file(fs: &dyn Cgroupfs, path: &Path, value: &str) -> Result<()> {
    fs.write(path, value).map_err(|errno| {
        let error = Error::sys("write", format!("\"{value}\" to {}", path.display()), errno);
        match write_hint(path, errno) {
            Some(hint) => error.hint(hint),
            None => error,
        }
    })
}

/// Reads a whole cgroup file.
pub(crate) fn read_file(fs: &dyn Cgroupfs, path: &Path) -> Result<String> {
    fs.read(path).map_err(|errno| Error::sys("read", path.display(), errno))
}

/// Reads a file that some kernels do not have: `None` when it is missing.
pub(crate) fn read_optional(fs: &dyn Cgroupfs, path: &Path) -> Result<Option<String>> {
    match fs.read(path) {
        Ok(text) => Ok(Some(text)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(Error::sys("read", path.display(), errno)),
    }
}

/// A file holding one number (`memory.peak`); `None` if this kernel does not have it.
pub(crate) fn read_number(fs: &dyn Cgroupfs, path: &Path) -> Result<Option<u64>> {
    Ok(read_optional(fs, path)?.and_then(|text| text.trim().parse().ok()))
}

/// A file holding a limit (`memory.max`: a number or `max`); `None` if it is missing.
pub(crate) fn read_bound(fs: &dyn Cgroupfs, path: &Path) -> Result<Option<Bound>> {
    Ok(read_optional(fs, path)?.and_then(|text| Bound::parse(&text)))
}

/// How often a plan goes back to its shared parent after that parent vanished under it.
const PARENT_GONE_TRIES: usize = 5;

fn mkdir_error(path: &Path, errno: Errno) -> Error {
    let error = Error::sys("mkdir", path.display(), errno);
    match errno {
        Errno::EEXIST => error.hint(
            "a cgroup of this name exists: a runtime with the same pid left it behind; \
             `isolab gc` removes it",
        ),
        Errno::EACCES | Errno::EPERM | Errno::EROFS => error.hint(PERMISSION_HINT),
        Errno::ENOENT => error.hint("its parent is gone: another runtime removed it; try again"),
        _ => error,
    }
}

const PERMISSION_HINT: &str = "creating cgroups needs root, or a cgroup v2 subtree delegated to \
                               your user (`isolab doctor` says how to get one)";

/// What to do when writing `path` failed with `errno`, when we know.
fn write_hint(path: &Path, errno: Errno) -> Option<String> {
    let file = path.file_name().and_then(|name| name.to_str()).unwrap_or("");
    let hint = match (file, errno) {
        (_, Errno::EACCES | Errno::EPERM) => PERMISSION_HINT,
        ("cgroup.subtree_control", Errno::EBUSY) => {
            "cgroup v2's \"no internal processes\" rule: a cgroup with processes of its own \
             cannot hand controllers down to children; move its processes to a leaf cgroup"
        }
        ("cgroup.subtree_control", Errno::EINVAL | Errno::ENOENT) => {
            "a cgroup can hand down only the controllers listed in its cgroup.controllers"
        }
        ("cgroup.procs", Errno::ENOSPC) => {
            "a v1 cpuset cgroup takes processes only once cpuset.cpus and cpuset.mems are set"
        }
        ("cgroup.procs", Errno::ESRCH) => "the process has already exited",
        ("cpuset.cpus" | "cpuset.mems", Errno::EINVAL) => {
            "a cpuset must be within its parent's cpuset.cpus and cpuset.mems"
        }
        ("memory.limit_in_bytes" | "memory.max", Errno::EBUSY) => {
            "the cgroup already uses more memory than this limit"
        }
        ("memory.memsw.limit_in_bytes", Errno::EINVAL) => {
            "memory+swap cannot be less than memory.limit_in_bytes"
        }
        ("memory.swap.max" | "memory.memsw.limit_in_bytes", Errno::ENOENT) => {
            "this kernel does not account swap in cgroups (boot with swapaccount=1, or leave \
             --memory-swap out)"
        }
        (_, Errno::ENOENT) => {
            return Some(format!(
                "this cgroup has no {file}: its controller is not enabled here, or this \
                 kernel does not have it"
            ))
        }
        _ => return None,
    };
    Some(hint.to_string())
}

// ANCHOR: remove
/// Removes `dir` and every cgroup below it, deepest first: `rmdir(2)` refuses a cgroup that
/// still has children (EBUSY). A cgroup's files are not removed one by one: they go with it.
fn remove_tree(fs: &dyn Cgroupfs, dir: &Path, removed: &mut Vec<PathBuf>) -> Result<()> {
    // LAB stage3/remove BEGIN: remove the cgroup, deepest first
    let children = match fs.children(dir) {
        Ok(children) => children,
        Err(Errno::ENOENT) => return Ok(()), // already gone
        Err(errno) => return Err(Error::sys("readdir", dir.display(), errno)),
    };
    for child in children {
        remove_tree(fs, &child, removed)?;
    }
    match fs.rmdir(dir) {
        Ok(()) => removed.push(dir.to_path_buf()),
        Err(Errno::ENOENT) => {}
        Err(errno) => {
            return Err(Error::sys("rmdir", dir.display(), errno)
                .hint("processes are still inside: `isolab gc` tries again"))
        }
    }
    Ok(())
    // LAB END
}

/// Removes the shared `isolab/` parent, unless another container still has a cgroup in it.
fn remove_if_unused(fs: &dyn Cgroupfs, parent: &Path, removed: &mut Vec<PathBuf>) -> Result<()> {
    match fs.rmdir(parent) {
        Ok(()) => removed.push(parent.to_path_buf()),
        // Another container's cgroup is in it (the kernel says EBUSY), or it is gone already.
        Err(Errno::EBUSY | Errno::ENOTEMPTY | Errno::ENOENT) => {}
        Err(errno) => return Err(Error::sys("rmdir", parent.display(), errno)),
    }
    Ok(())
}
// ANCHOR_END: remove

/// The pids in `cgroup.procs` of `dir` and of every cgroup below it, sorted.
fn procs_in_tree(fs: &dyn Cgroupfs, dir: &Path) -> Result<Vec<Pid>> {
    let mut pids = Vec::new();
    let Some(text) = read_optional(fs, &dir.join("cgroup.procs"))? else {
        return Ok(pids); // the cgroup is gone
    };
    pids.extend(text.lines().filter_map(|line| line.trim().parse().ok()).map(Pid::from_raw));
    let children = fs.children(dir).map_err(|errno| Error::sys("readdir", dir.display(), errno))?;
    for child in children {
        pids.extend(procs_in_tree(fs, &child)?);
    }
    pids.sort();
    pids.dedup();
    Ok(pids)
}

/// The pids in all of `dirs` (the same processes appear in every v1 hierarchy).
fn procs_in_all(fs: &dyn Cgroupfs, dirs: &[PathBuf]) -> Result<Vec<Pid>> {
    let mut pids = Vec::new();
    for dir in dirs {
        pids.extend(procs_in_tree(fs, dir)?);
    }
    pids.sort();
    pids.dedup();
    Ok(pids)
}

/// Waits until no process is left in `dirs`; `kill_again` runs between looks (the fallback
/// without `cgroup.kill` or a freezer must also kill what was forked meanwhile).
///
/// A killed process leaves its cgroup when it exits; it does not have to be reaped first (a
/// zombie is no longer listed in `cgroup.procs`). A process in uninterruptible sleep (state
/// D) dies only once its I/O ends, so the wait is bounded by [`KILL_TIMEOUT`].
fn wait_until_empty(
    fs: &dyn Cgroupfs,
    dirs: &[PathBuf],
    mut kill_again: impl FnMut(&[Pid]),
) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        let left = procs_in_all(fs, dirs)?;
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > KILL_TIMEOUT {
            let pids: Vec<String> = left.iter().map(Pid::to_string).collect();
            let dir = dirs.first().map(|dir| dir.display().to_string()).unwrap_or_default();
            return Err(Error::sys("rmdir", dir, Errno::EBUSY).hint(format!(
                "processes {} are still inside {:.0?} after SIGKILL: a process in \
                 uninterruptible sleep (state D) dies only when its I/O ends; `isolab gc` \
                 tries again",
                pids.join(" "),
                KILL_TIMEOUT
            )));
        }
        kill_again(&left);
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Sends SIGKILL to each of `pids`; one that is already gone is fine.
fn kill_each(fs: &dyn Cgroupfs, pids: &[Pid]) -> Result<()> {
    for &pid in pids {
        match fs.kill(pid) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(errno) => return Err(Error::sys("kill", pid, errno)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_errors_name_value_file_and_hint() {
        let error = Error::sys("write", "\"1\" to /cg/x/cgroup.procs", Errno::ENOSPC)
            .hint(write_hint(Path::new("/cg/x/cgroup.procs"), Errno::ENOSPC).unwrap());
        assert_eq!(
            error.to_string(),
            "write \"1\" to /cg/x/cgroup.procs failed: ENOSPC: no space left on device (a v1 \
             cpuset cgroup takes processes only once cpuset.cpus and cpuset.mems are set)"
        );
        let missing = write_hint(Path::new("/cg/x/pids.max"), Errno::ENOENT).unwrap();
        assert!(missing.starts_with("this cgroup has no pids.max"), "{missing}");
    }

    #[test]
    fn removed_says_what_it_did() {
        let removed = Removed {
            id: "c1-42".into(),
            killed: vec![Pid::from_raw(7), Pid::from_raw(8)],
            dirs: vec![PathBuf::from("/cg/isolab/c1-42"), PathBuf::from("/cg/isolab")],
        };
        assert_eq!(
            removed.to_string(),
            "removed cgroup c1-42 (killed 2 leftover processes): /cg/isolab/c1-42, /cg/isolab"
        );
    }
}
