//! Chapter 3: the container's cgroup, from the command line to the report.
//!
//! Stage 3 and every later stage do the same things with a cgroup: plan it with the rest of
//! the container ([`plan`], which adds it to the [`Plan`] with [`Plan::add_cgroup`]), collect
//! what killed runtimes left and make it ([`create`]), move the child in (on v1 the child
//! moves itself, [`JoinItself`]; on v2 it is born there, [`Plan::cgroup_to_clone_into`];
//! else the plan's `apply_outside`), and report
//! what the command used before removing it ([`finish`]). They live here once, beside the plan
//! they extend; `cgroups` itself knows nothing of containers. Nothing here prints: warnings and
//! reports come back as values, for the binary to show.
//!
//! The cgroup filesystem is a parameter: the stages pass the kernel's ([`cgroups::Kernel`]),
//! the tests a fake tree in a temporary directory, for each of the v1, v2 and hybrid layouts.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use nix::unistd::{Pid, Uid};

use super::steps::Inside;
use super::Plan;
use crate::cgroups::{self, Backend, Cgroup, Cgroupfs, ContainerId, FsTypes, Hierarchy};
use crate::cgroups::{LimitArgs, Limits, Machine, SelfJoin, Usage, Version};
use crate::error::{Error, Result};
use crate::mounts::Step;
use crate::namespaces::Namespace;

/// Where the host's cgroups are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What to do when this user cannot have a cgroup (`--cgroups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CgroupsWhen {
    /// No cgroup, no run: refuse, and say how to get one
    Required,
    /// No cgroup: run without limits and without a report, and say so
    Optional,
}

/// The command-line options of a container's cgroup, shared by every stage from 3 on.
#[derive(Debug, Clone, clap::Args)]
pub struct CgroupArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: LimitArgs,
    /// Without root, limits need a cgroup v2 subtree delegated to you (`isolab doctor` says
    /// how to get one): required refuses to run without it, optional runs without limits
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = CgroupsWhen::Required)]
    pub cgroups: CgroupsWhen,
    /// Where the host's cgroups are mounted; on a hybrid host, /sys/fs/cgroup/unified picks
    /// its cgroup v2 mount
    #[arg(long, value_name = "DIR", default_value = CGROUP_ROOT)]
    pub cgroup_root: PathBuf,
    /// Print the report of what the command used as JSON, on stdout
    #[arg(long)]
    pub json: bool,
    /// Print the report of what the command used (memory, CPU, processes) on stderr when it
    /// ends [default: when a limit is set]
    #[arg(long)]
    pub report: bool,
}

impl CgroupArgs {
    /// Is the report wanted? When asked for (`--report`, `--json`), and when a limit was
    /// set: then what the command used against it is the point. Without either, a run says
    /// nothing of its own but what went wrong.
    pub fn wants_report(&self) -> bool {
        self.report || self.json || self.limits != LimitArgs::default()
    }
}

/// The container's cgroup, as its plan holds it (see [`Plan::add_cgroup`]).
#[derive(Clone)]
pub struct PlannedCgroup {
    /// Every mkdir and write that makes it, and the `cgroup.procs` files the child joins.
    pub plan: cgroups::Plan,
    /// The cgroup filesystem the calls go through: the kernel's, or a test's fake.
    pub fs: Rc<dyn Cgroupfs>,
    /// Set in a dry run by a user who may not make this cgroup (the plan shown is root's):
    /// why not.
    pub refused: Option<String>,
    /// cgroup v1: the `tasks` files the child moves itself in through, opened by [`create`]
    /// (see [`JoinItself`]).
    self_join: Rc<RefCell<Option<SelfJoin>>>,
}

impl std::fmt::Debug for PlannedCgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedCgroup")
            .field("plan", &self.plan)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl PlannedCgroup {
    /// In the parent: moves child `pid` in, by the plan's own list of `cgroup.procs` files,
    /// unless the child moves itself ([`JoinItself`]); then only closes the parent's copies of
    /// the files the child does it through.
    pub fn join(&self, pid: Pid) -> Result<()> {
        if self.plan.tasks_files().is_empty() {
            return self.plan.join(&*self.fs, pid);
        }
        drop(self.self_join.borrow_mut().take());
        Ok(())
    }

    /// `text` with this runtime's pid in the cgroup's name shown as `<runtime pid>`: a real run
    /// has another.
    pub fn hide_runtime_pid(&self, text: &str) -> String {
        let id = self.plan.id.to_string();
        text.replace(&id, &format!("{}-<runtime pid>", self.plan.id.name()))
    }
}

impl Plan {
    // ANCHOR: add_cgroup
    /// Chapter 3: puts the container in the cgroup of `cgroup`. On v1 the child moves itself in,
    /// as its very first step ([`JoinItself`]); elsewhere the parent moves it in first thing,
    /// before it releases it (or it is born there: [`Plan::cgroup_to_clone_into`]). The child
    /// then makes its cgroup namespace, which `clone(2)` made in stage 2 but would root at the
    /// runtime's cgroup, and mounts `view` (its own cgroup, read-only) once its new root is in
    /// place.
    pub fn add_cgroup(&mut self, cgroup: PlannedCgroup, view: Vec<Step>) {
        let tasks = cgroup.plan.tasks_files();
        if !tasks.is_empty() {
            let files = cgroup.self_join.clone();
            self.inside.insert(0, Inside::JoinCgroup(JoinItself { tasks, files }));
        }
        if self.namespaces.contains(Namespace::Cgroup) {
            let last_mount = self.inside.iter().rposition(|step| matches!(step, Inside::Mount(_)));
            let at = last_mount.map_or(self.inside.len(), |index| index + 1);
            let mut steps = vec![Inside::UnshareCgroup];
            if self.namespaces.contains(Namespace::Mnt) {
                steps.extend(view.into_iter().map(Inside::CgroupMount));
            }
            self.inside.splice(at..at, steps);
        }
        self.cgroup = Some(cgroup);
    }
    // ANCHOR_END: add_cgroup

    /// Chapter 3, cgroup v1: the child's step that moves it into its cgroup by itself.
    pub fn joins_itself(&self) -> Option<&JoinItself> {
        self.inside.iter().find_map(|step| match step {
            Inside::JoinCgroup(join) => Some(join),
            _ => None,
        })
    }

    /// Chapter 3: the cgroup v2 directory the child can be born in (`clone3` with
    /// `CLONE_INTO_CGROUP`, see `namespaces::spawn_into`), instead of being moved in after
    /// the clone. v1 has one directory per hierarchy, and no such thing.
    pub fn cgroup_to_clone_into(&self) -> Option<&Path> {
        let cgroup = self.cgroup.as_ref().filter(|cgroup| cgroup.plan.version == Version::V2)?;
        match cgroup.plan.join.as_slice() {
            [procs] => procs.parent(),
            _ => None,
        }
    }

    /// The container's name, which its cgroup is named after: its hostname, if it has one.
    pub fn name(&self) -> &str {
        let hostname = self.inside.iter().find_map(|step| match step {
            Inside::Hostname(name) if !name.starts_with('.') => Some(name.as_str()),
            _ => None,
        });
        hostname.unwrap_or("container")
    }
}

/// In the child, once the parent has moved it into its cgroup: the cgroup namespace whose root
/// that cgroup is (see `cgroups::view`).
pub(super) fn unshare_namespace() -> Result<()> {
    cgroups::view::unshare_namespace()
}

/// The host's cgroups, and the backend that makes this container's.
pub struct Host {
    /// What [`cgroups::detect()`] found.
    pub hierarchy: Hierarchy,
    /// The backend this user may use.
    pub backend: Box<dyn Backend>,
    /// The cgroup filesystem (the kernel's, or a test's fake).
    pub fs: Rc<dyn Cgroupfs>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Host({})", self.hierarchy)
    }
}

/// What [`plan`] decided.
#[derive(Debug)]
pub enum Planned {
    /// The plan has a cgroup, to be made on this host.
    Cgroup(Host),
    /// No cgroup (`--cgroups optional`), for this reason: the run goes on without limits.
    Without(Error),
    /// No cgroup (`--cgroups optional`): this user may not make one on this host (no cgroup v2
    /// subtree is delegated to them, see [`cgroups::rootless`]). The run goes on without
    /// limits.
    NotDelegated(Error),
}

impl Planned {
    /// The host to make the cgroup on, if any, and what to tell the user when there is none.
    pub fn into_host(self) -> (Option<Host>, Vec<String>) {
        match self {
            Planned::Cgroup(host) => (Some(host), Vec::new()),
            Planned::Without(reason) => (
                None,
                vec![format!(
                    "warning: running without a cgroup, so without limits and without a report \
                     (--cgroups optional): {reason}"
                )],
            ),
            // Said on every run of a user who cannot have limits here: one short line, the
            // reason is `isolab doctor`'s to explain.
            Planned::NotDelegated(_) => (None, vec![cgroups::rootless::WITHOUT_LIMITS.to_string()]),
        }
    }
}

// ANCHOR: plan_cgroup
/// Finds the host's cgroups (by statfs) through `kernel`, opens the backend this user may
/// use, checks the limits against it and adds the cgroup, named `name`, to the container's
/// plan. `kernel` is the cgroup filesystem: [`cgroups::Kernel`], or a test's fake tree.
///
/// A dry run plans as root would when the user may not (and says so): the plan is printable
/// by anyone.
pub fn plan(
    container: &mut Plan,
    args: &CgroupArgs,
    name: &str,
    dry_run: bool,
    kernel: impl Cgroupfs + FsTypes + 'static,
) -> Result<Planned> {
    let limits = Limits::parse(&args.limits, &Machine::current()?)?;
    let user = Uid::effective();
    let hierarchy = match cgroups::detect(&args.cgroup_root, &kernel) {
        Ok(hierarchy) => hierarchy,
        Err(error) => return without(error, args.cgroups, Planned::Without),
    };
    let fs: Rc<dyn Cgroupfs> = Rc::new(kernel);
    // Without root, a backend only where a cgroup v2 subtree is delegated to this user; a dry
    // run shows root's plan instead (and says what would be refused).
    let mut refused = None;
    let opened = match cgroups::open(&hierarchy, user, fs.clone()) {
        Err(error) if dry_run && !user.is_root() => {
            refused = Some(error.to_string());
            cgroups::open(&hierarchy, Uid::from_raw(0), fs.clone())
        }
        opened => opened,
    };
    let backend = match opened {
        Ok(backend) => backend,
        Err(error) if user.is_root() => return without(error, args.cgroups, Planned::Without),
        Err(error) => return without(error, args.cgroups, Planned::NotDelegated),
    };
    let host = Host { hierarchy, backend, fs };
    let id = ContainerId::for_this_runtime(name)?;
    let cgroup = host.backend.plan(&id, &limits)?;
    let view = cgroups::view::mounts(&cgroup, &host.hierarchy);
    let planned =
        PlannedCgroup { plan: cgroup, fs: host.fs.clone(), refused, self_join: Rc::default() };
    container.add_cgroup(planned, view);
    Ok(Planned::Cgroup(host))
}
// ANCHOR_END: plan_cgroup

/// No cgroup for this run, because of `error`: refused with `--cgroups required`, planned as
/// `planned` with `--cgroups optional`.
fn without(error: Error, when: CgroupsWhen, planned: fn(Error) -> Planned) -> Result<Planned> {
    match when {
        CgroupsWhen::Required => {
            Err(Error::Invalid(format!("{error}; or run without limits: --cgroups optional")))
        }
        CgroupsWhen::Optional => Ok(planned(error)),
    }
}

/// The made cgroup, and what to tell the user about what was collected on the way.
#[derive(Debug)]
pub struct Created {
    /// The container's cgroup; dropping it removes it.
    pub cgroup: Cgroup,
    /// One line for each stale cgroup of a killed runtime removed first, or why that failed
    /// (someone else's mess must not stop this container: `isolab gc` can try again).
    pub said: Vec<String>,
}

/// Removes what killed runtimes left behind, then makes the container's cgroup.
pub fn create(host: Host, plan: &Plan) -> Result<Created> {
    let said = match cgroups::gc::gc_for(&host.hierarchy, Uid::effective(), host.fs.clone()) {
        Ok(collected) => collected.removed.iter().map(|stale| format!("gc: {stale}")).collect(),
        Err(error) => vec![format!("warning: gc of stale cgroups failed: {error}")],
    };
    let planned = plan.cgroup.as_ref().ok_or_else(|| Error::Invalid("no cgroup planned".into()))?;
    let cgroup = Cgroup::create(host.backend, planned.plan.clone())?;
    // v1: the files the child will move itself in through, opened now that they exist (if
    // this fails, the guard `cgroup` removes the cgroup again).
    let tasks = planned.plan.tasks_files();
    if !tasks.is_empty() {
        *planned.self_join.borrow_mut() = Some(SelfJoin::open(&tasks)?);
    }
    Ok(Created { cgroup, said })
}

// ANCHOR: join_itself
/// The child's first step on cgroup v1: it moves itself into its cgroup, through the `tasks`
/// files the runtime opened before the clone (see [`SelfJoin`] for why the child, and why
/// that costs no grace period).
#[derive(Clone)]
pub struct JoinItself {
    /// The files, one per hierarchy, as the plan shows them.
    pub tasks: Vec<PathBuf>,
    files: Rc<RefCell<Option<SelfJoin>>>,
}

impl JoinItself {
    /// In the child: the move.
    pub fn apply(&self) -> Result<()> {
        let files = self.files.borrow_mut().take().ok_or_else(|| {
            Error::Invalid(
                "the cgroup's tasks files were not opened before the clone (cgroup::create)"
                    .to_string(),
            )
        })?;
        files.join()
    }
}
// ANCHOR_END: join_itself

/// How the plan names the runtime's descriptor of `tasks` file `index`.
fn tasks_fd(index: usize) -> String {
    format!("<tasks{index}>")
}

impl JoinItself {
    /// The runtime's opens, before the clone, one a line.
    pub(super) fn before_clone(&self) -> Vec<String> {
        let open = |(index, path): (usize, &PathBuf)| {
            format!("open(\"{}\", O_WRONLY|O_CLOEXEC) = {}", path.display(), tasks_fd(index))
        };
        self.tasks.iter().enumerate().map(open).collect()
    }
}

/// The child's writes, one a line.
impl std::fmt::Display for JoinItself {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let writes: Vec<String> = (0..self.tasks.len())
            .map(|index| format!("write({}, \"0\")", tasks_fd(index)))
            .collect();
        f.write_str(&writes.join("\n"))
    }
}

impl std::fmt::Debug for JoinItself {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinItself").field("tasks", &self.tasks).finish_non_exhaustive()
    }
}

/// Two are the same when they name the same files and share one set of descriptors.
impl PartialEq for JoinItself {
    fn eq(&self, other: &Self) -> bool {
        self.tasks == other.tasks && Rc::ptr_eq(&self.files, &other.files)
    }
}

impl Eq for JoinItself {}

/// Opens the cgroup v2 directory a child will be born in (`clone3`'s `cgroup` field, see
/// `namespaces::spawn_into`).
pub fn open_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::File::open(dir).map_err(|error| Error::io("open", dir, &error))
}

/// `--json`: the report, with the cgroup it was read from and how the command ended.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    cgroup: String,
    version: &'a str,
    exit_code: u8,
    oom_killed: bool,
    elapsed_usec: u64,
    #[serde(flatten)]
    usage: &'a Usage,
}

/// The report, as the binary shows it.
#[derive(Debug, Default)]
pub struct Shown {
    /// `--json`: one document, for stdout.
    pub json: Option<String>,
    /// Lines for stderr, beneath the command's own output (the OOM kill in words first).
    pub said: Vec<String>,
}

// ANCHOR: report
/// Reads what the cgroup counted and removes it; returns the report, if it is wanted (see
/// [`CgroupArgs::wants_report`]; `code` is how the command ended: 137 and an OOM kill
/// counted means the OOM killer ended it, which is said in any case). If that fails,
/// the command still ran and its code stands: a warning says so, and `isolab gc` removes the
/// rest.
pub fn finish(cgroup: Cgroup, code: u8, elapsed: Duration, args: &CgroupArgs) -> Shown {
    let json = args.json;
    let name = format!("{}/{}", cgroups::PARENT, cgroup.id());
    let version = cgroup.version();
    let usage = match cgroup.finish() {
        Ok((usage, _removed)) => usage,
        Err(error) => {
            let warning = format!("warning: cannot report on or remove cgroup {name}: {error}");
            return Shown { json: None, said: vec![warning] };
        }
    };
    let oom_killed = code == 128 + libc::SIGKILL as u8 && usage.oom_killed();
    if json {
        let report = JsonReport {
            cgroup: name,
            version: match version {
                Version::V1 => "v1",
                Version::V2 => "v2",
            },
            exit_code: code,
            oom_killed,
            elapsed_usec: elapsed.as_micros() as u64,
            usage: &usage,
        };
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        return Shown { json: Some(text), said: Vec::new() };
    }
    let mut said = Vec::new();
    // An OOM kill is always said: it is why the command ended.
    if oom_killed {
        said.push(usage.describe_oom());
    }
    if args.wants_report() {
        said.extend(usage.to_string().lines().map(String::from));
    }
    Shown { json: None, said }
}
// ANCHOR_END: report

// The container's plan on every cgroup layout, whatever this host has: v1, v2 and hybrid, each
// against a fake cgroup tree in a temporary directory, passed in where the stages pass the
// kernel. What `--dry-run` would print for each is a snapshot
// (`stages/libisolab/src/snapshots/`), checked on every host alike.
#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::rc::Rc;
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::cgroups::fake::{FakeKernel, FakeTree, FakeTypes};
    use crate::cgroups::FsType;
    use crate::container::Request;
    use crate::idrange::Wanted;

    /// The cgroup options, as a stage parses them.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        cgroup: CgroupArgs,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Layout {
        V1,
        V2,
        Hybrid,
    }

    /// The v1 hierarchies of the course's test machine, one controller each.
    const V1_HIERARCHIES: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "cpuset", "freezer"];

    /// A host whose cgroups are at `root`, laid out as `layout`.
    fn fake_host(root: &Path, layout: Layout) -> FakeKernel {
        fs::create_dir_all(root).unwrap();
        if layout == Layout::V2 {
            fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids\n")
                .unwrap();
            fs::write(root.join("cgroup.subtree_control"), "").unwrap();
            let types = FakeTypes::new(&[(root, FsType::Cgroup2)], "");
            return FakeKernel { types: Rc::new(types), tree: FakeTree::v2(root) };
        }
        let r = root.display();
        let mut mountinfo = format!("31 23 0:28 / {r} rw,nosuid,nodev,noexec - tmpfs tmpfs rw\n");
        let mut types = vec![(root.to_path_buf(), FsType::Tmpfs)];
        for (n, controller) in V1_HIERARCHIES.iter().enumerate() {
            fs::create_dir(root.join(controller)).unwrap();
            mountinfo.push_str(&format!(
                "{} 31 0:{} / {r}/{controller} rw,relatime - cgroup cgroup rw,{controller}\n",
                32 + n,
                29 + n
            ));
            types.push((root.join(controller), FsType::Cgroup1));
        }
        if layout == Layout::Hybrid {
            // systemd's cgroup2 mount beside the v1 hierarchies, whose controllers are all on v1.
            let unified = root.join("unified");
            fs::create_dir(&unified).unwrap();
            fs::write(unified.join("cgroup.controllers"), "hugetlb\n").unwrap();
            fs::write(unified.join("cgroup.subtree_control"), "").unwrap();
            mountinfo.push_str(&format!("41 31 0:38 / {r}/unified rw - cgroup2 cgroup2 rw\n"));
            types.push((unified, FsType::Cgroup2));
        }
        let types: Vec<(&Path, FsType)> = types.iter().map(|(p, t)| (p.as_path(), *t)).collect();
        FakeKernel { types: Rc::new(FakeTypes::new(&types, &mountinfo)), tree: FakeTree::v1(root) }
    }

    /// What `stage3-cgroups run --rootfs rootfs --hostname box <cgroup options> --dry-run --
    /// /bin/sh` plans on `layout` (without user and time namespaces, which depend on the host),
    /// with the host's cgroups as detection found them on top. `options[0]` is the cgroup root
    /// below the fake `/sys/fs/cgroup` (empty: itself), the rest are given as they are.
    fn dry_run(layout: Layout, options: &[&str]) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cgroup");
        let kernel = fake_host(&root, layout);
        let rootfs = tmp.path().join("rootfs");
        for dir in crate::mounts::MOUNT_POINTS {
            fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        let request = Request {
            rootfs: rootfs.clone(),
            namespaces: Some("mnt,uts,ipc,pid,net,cgroup".parse().unwrap()),
            hostname: Some("box".to_string()),
            net: None,
            subnet: None,
            ids: Wanted::Free,
            user: None,
            init: false,
            stop_timeout: Duration::from_secs(10),
            workdir: "/".into(),
            env: Vec::new(),
            argv: vec!["/bin/sh".into()],
        };
        let mut plan = Plan::from(request).unwrap();
        let cgroup_root = if options[0].is_empty() { root.clone() } else { root.join(options[0]) };
        let root_option = format!("--cgroup-root={}", cgroup_root.display());
        let args = ["run", &root_option].into_iter().chain(options[1..].iter().copied());
        let cli = Cli::parse_from(args);
        let name = plan.name().to_string();
        let planned = super::plan(&mut plan, &cli.cgroup, &name, true, kernel.clone()).unwrap();
        let Planned::Cgroup(host) = planned else { panic!("no cgroup planned: {planned:?}") };
        // What a user without root would be told depends on who runs the test: not shown.
        let text: String = format!("# host: {}\n{}", host.hierarchy, plan.dry_run())
            .lines()
            .filter(|line| !line.starts_with("# as uid"))
            .map(|line| format!("{line}\n"))
            .collect();
        // Planning wrote nothing.
        assert!(kernel.tree.take_log().is_empty());
        let real = tmp.path().canonicalize().unwrap();
        text.replace(&root.display().to_string(), "/sys/fs/cgroup")
            .replace(&real.join("rootfs").display().to_string(), "[ROOTFS]")
    }

    fn snapshot(name: &str, text: String) {
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path("../snapshots");
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.bind(|| insta::assert_snapshot!(name, text));
    }

    const LIMITS: [&str; 6] = ["--memory", "64M", "--pids", "32", "--cpus", "0.5"];

    #[test]
    fn the_plan_on_cgroup_v1_makes_a_directory_per_hierarchy_and_moves_the_child_in() {
        let text = dry_run(Layout::V1, &[&[""], &LIMITS[..]].concat());
        // The runtime opens the tasks files; the child moves itself in, as its first step,
        // and the parent writes no pid anywhere.
        let open = "open(\"/sys/fs/cgroup/memory/isolab/box-<runtime pid>/tasks\", O_WRONLY";
        let at = |what: &str| text.find(what).unwrap_or_else(|| panic!("no {what}: {text}"));
        assert!(at(open) < at("clone("), "{text}");
        assert!(!text.contains("cgroup.procs\", \"<pid>\")"), "{text}");
        let child = &text[at("child <pid>:")..];
        let first = child.lines().nth(2).unwrap_or_default();
        assert!(first.starts_with("  # into our cgroup first"), "{child}");
        assert!(child.contains("write(<tasks0>, \"0\")"), "{child}");
        snapshot("container_plan_cgroup_v1", text);
    }

    #[test]
    fn the_plan_on_cgroup_v2_has_the_child_born_in_its_one_directory() {
        let text = dry_run(Layout::V2, &[&[""], &LIMITS[..]].concat());
        assert!(text.contains("CLONE_INTO_CGROUP"), "{text}");
        assert!(!text.contains("\"<pid>\")"), "no join on v2: {text}");
        snapshot("container_plan_cgroup_v2", text);
    }

    #[test]
    fn the_plan_on_a_hybrid_host_uses_v1_or_with_cgroup_root_its_cgroup2_mount() {
        let v1 = dry_run(Layout::Hybrid, &[&[""], &LIMITS[..]].concat());
        // The controllers are on v1: the plan is v1's. Its cgroup2 mount has none, so without
        // limits only.
        assert!(v1.contains("(cgroup v1)"), "{v1}");
        let unified = dry_run(Layout::Hybrid, &["unified"]);
        assert!(unified.contains("(cgroup v2)") && unified.contains("CLONE_INTO_CGROUP"));
        snapshot("container_plan_cgroup_hybrid", format!("{v1}\n{unified}"));
    }
}
