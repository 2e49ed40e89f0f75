//! cgroup v1: one hierarchy per controller, so one directory per controller per container.
//!
//! On v1 each controller (or a few sharing one, like `cpu,cpuacct`) is a separate filesystem,
//! mounted on its own: a container's cgroup is `isolab/<id>` in *each* hierarchy, and the
//! child joins each of them. The controllers do not agree on much: memory takes bytes in
//! `memory.limit_in_bytes`, cpu a quota in `cpu.cfs_quota_us`, and a new cpuset cgroup
//! starts with no CPUs and no memory nodes at all, so no process may join it until both are
//! copied from its parent. There is no `cgroup.kill`: killing a group that may be forking
//! means freezing it first (the freezer controller), then killing, then thawing.
//!
//! Each controller has its file here: [`memory`], [`cpu`], [`cpuacct`], [`pids`],
//! [`cpuset`], [`freezer`].

pub mod cpu;
pub mod cpuacct;
pub mod cpuset;
pub mod freezer;
pub mod memory;
pub mod pids;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::detect::v1_mount;
use super::{
    kill_each, procs_in_all, remove_if_unused, remove_tree, wait_until_empty, Backend, Cgroupfs,
    ContainerId, Limits, Plan, Removed, Step, Usage, V1Mount, Version, PARENT,
};
use crate::error::{Error, Result};

/// The controllers isolab uses on v1, in the order their hierarchies are set up.
pub const CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "cpuset", "freezer"];

/// cgroup v1, with the containers' cgroups in `<mount>/isolab/` of each hierarchy.
pub struct V1 {
    mounts: Vec<V1Mount>,
    fs: Rc<dyn Cgroupfs>,
}

impl V1 {
    /// The hierarchies found by [`super::detect()`].
    pub fn new(mounts: Vec<V1Mount>, fs: Rc<dyn Cgroupfs>) -> V1 {
        V1 { mounts, fs }
    }

    /// Where the hierarchy carrying `controller` is mounted.
    pub fn mount(&self, controller: &str) -> Option<&Path> {
        v1_mount(&self.mounts, controller)
    }

    /// The mounts of `controllers`, each once (`cpu` and `cpuacct` may share one).
    fn mounts_of<'a>(&self, controllers: impl Iterator<Item = &'a str>) -> Vec<PathBuf> {
        let mut mounts: Vec<PathBuf> = Vec::new();
        for controller in controllers {
            if let Some(mount) = self.mount(controller) {
                if !mounts.iter().any(|known| known == mount) {
                    mounts.push(mount.to_path_buf());
                }
            }
        }
        mounts
    }

    /// Whether the hierarchy mounted at `mount` carries `controller`.
    fn carries(&self, mount: &Path, controller: &str) -> bool {
        self.mount(controller) == Some(mount)
    }

    /// The container's directory in the hierarchy carrying `controller`, if it exists.
    fn existing_dir(&self, controller: &str, id: &ContainerId) -> Option<PathBuf> {
        let dir = self.mount(controller)?.join(PARENT).join(id.to_string());
        self.fs.exists(&dir).then_some(dir)
    }

    /// The controllers the plan uses: all that are mounted, for the report and for killing,
    /// except cpuset when it is not asked for (it needs setting up before anyone may join).
    /// Those `limits` need must be mounted.
    fn used(&self, limits: &Limits) -> Result<Vec<&'static str>> {
        let mut used = Vec::new();
        for controller in CONTROLLERS {
            let (needed, flag) = match controller {
                "memory" => (limits.memory.is_some() || limits.memory_swap.is_some(), "--memory"),
                "cpu" => (limits.cpus.is_some() || limits.cpu_shares.is_some(), "--cpus"),
                "pids" => (limits.pids.is_some(), "--pids"),
                "cpuset" => (limits.cpuset.is_some(), "--cpuset"),
                _ => (false, ""),
            };
            match self.mount(controller) {
                Some(_) if needed || controller != "cpuset" => used.push(controller),
                Some(_) => {}
                None if needed => {
                    let mounted: Vec<String> =
                        self.mounts.iter().map(|m| m.controllers.join(",")).collect();
                    return Err(Error::Invalid(format!(
                        "{flag} needs the cgroup v1 {controller} controller, which is not \
                         mounted on this host (its v1 hierarchies: {})",
                        mounted.join(" ")
                    )));
                }
                None => {}
            }
        }
        Ok(used)
    }

    // ANCHOR: kill
    /// Kills every process in the container's cgroups. Without `cgroup.kill`, a group that
    /// forks could outrun a loop of kill(2); frozen, it cannot: freeze it, SIGKILL every
    /// process, thaw it (a frozen process dies only once thawed), and wait until it is empty.
    fn kill_all(&self, id: &ContainerId, dirs: &[PathBuf]) -> Result<Vec<Pid>> {
        let fs = &*self.fs;
        let pids = procs_in_all(fs, dirs)?;
        if pids.is_empty() {
            return Ok(pids);
        }
        match self.existing_dir("freezer", id) {
            Some(freezer_dir) => {
                freezer::freeze(fs, &freezer_dir)?;
                // Read again: a child forked before the freeze completed is in it now.
                let killed = kill_each(fs, &procs_in_all(fs, dirs)?);
                freezer::thaw(fs, &freezer_dir)?;
                killed?;
                wait_until_empty(fs, dirs, |_| {})?;
            }
            None => {
                kill_each(fs, &pids)?;
                wait_until_empty(fs, dirs, |left| {
                    let _ = kill_each(fs, left);
                })?;
            }
        }
        Ok(pids)
    }
    // ANCHOR_END: kill
}

impl Backend for V1 {
    fn version(&self) -> Version {
        Version::V1
    }

    fn fs(&self) -> &dyn Cgroupfs {
        &*self.fs
    }

    fn parents(&self) -> Vec<PathBuf> {
        let mounts = self.mounts_of(CONTROLLERS.into_iter());
        mounts.into_iter().map(|mount| mount.join(PARENT)).collect()
    }

    fn dirs(&self, id: &ContainerId) -> Vec<PathBuf> {
        self.parents().into_iter().map(|parent| parent.join(id.to_string())).collect()
    }

    // ANCHOR: plan
    fn plan(&self, id: &ContainerId, limits: &Limits) -> Result<Plan> {
        let used = self.used(limits)?;
        if let (Some(_), Some(mount)) = (limits.memory_swap, self.mount("memory")) {
            memory::check_swap_accounting(&*self.fs, mount)?;
        }
        let mut steps = Vec::new();
        let mut join = Vec::new();
        // One directory per hierarchy; then each controller of that hierarchy writes its own.
        for mount in self.mounts_of(used.iter().copied()) {
            let parent = mount.join(PARENT);
            let dir = parent.join(id.to_string());
            let names: Vec<&str> =
                used.iter().copied().filter(|c| self.carries(&mount, c)).collect();
            steps.push(Step::MakeDir {
                path: parent.clone(),
                shared: true,
                why: format!("{}: the parent of every isolab cgroup", names.join(",")),
            });
            if self.carries(&mount, "cpuset") {
                steps.extend(cpuset::parent_steps(&mount, &parent));
            }
            steps.push(Step::MakeDir { path: dir.clone(), shared: false, why: String::new() });
            for controller in names {
                steps.extend(match controller {
                    "memory" => memory::steps(&dir, limits),
                    "cpu" => cpu::steps(&dir, limits),
                    "pids" => pids::steps(&dir, limits),
                    "cpuset" => cpuset::steps(&parent, &dir, limits),
                    _ => Vec::new(), // cpuacct and freezer: nothing to set
                });
            }
            join.push(dir.join("cgroup.procs"));
        }
        Ok(Plan { version: Version::V1, id: id.clone(), steps, join })
    }
    // ANCHOR_END: plan

    // ANCHOR: report
    fn report(&self, id: &ContainerId) -> Result<Usage> {
        if self.dirs(id).iter().all(|dir| !self.fs.exists(dir)) {
            return Err(Error::sys("read", id, Errno::ENOENT)
                .hint("the cgroup is gone: read the report before destroying it"));
        }
        let fs = &*self.fs;
        let mut usage = Usage::default();
        if let Some(dir) = self.existing_dir("memory", id) {
            memory::report(fs, &dir, &mut usage)?;
        }
        if let Some(dir) = self.existing_dir("cpu", id) {
            cpu::report(fs, &dir, &mut usage)?;
        }
        if let Some(dir) = self.existing_dir("cpuacct", id) {
            cpuacct::report(fs, &dir, &mut usage)?;
        }
        if let Some(dir) = self.existing_dir("pids", id) {
            pids::report(fs, &dir, &mut usage)?;
        }
        Ok(usage)
    }
    // ANCHOR_END: report

    // ANCHOR: destroy
    fn destroy(&self, id: &ContainerId) -> Result<Removed> {
        let dirs: Vec<PathBuf> =
            self.dirs(id).into_iter().filter(|dir| self.fs.exists(dir)).collect();
        let mut removed = Removed { id: id.to_string(), ..Removed::default() };
        // First no process may be left, in any hierarchy.
        removed.killed = self.kill_all(id, &dirs)?;
        // Then, in each hierarchy, the directories deepest first, and the shared parent if
        // no other container uses it.
        for dir in &dirs {
            remove_tree(&*self.fs, dir, &mut removed.dirs)?;
        }
        for parent in self.parents() {
            if !dirs.iter().any(|dir| dir.parent() == Some(parent.as_path())) {
                continue; // this hierarchy had nothing of this container
            }
            remove_if_unused(&*self.fs, &parent, &mut removed.dirs)?;
        }
        Ok(removed)
    }
    // ANCHOR_END: destroy
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::fake::FakeTree;
    use super::super::{Bound, CpuList, CpuQuota, Swap};
    use super::*;

    fn id() -> ContainerId {
        ContainerId::new("c1", Pid::from_raw(4242)).unwrap()
    }

    /// Hierarchies like this machine's, but cpu and cpuacct sharing one (as on most hosts).
    fn tree() -> (tempfile::TempDir, FakeTree, V1) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut mounts = Vec::new();
        for (dir, controllers) in [
            ("memory", "memory"),
            ("cpu,cpuacct", "cpu,cpuacct"),
            ("pids", "pids"),
            ("cpuset", "cpuset"),
            ("freezer", "freezer"),
        ] {
            fs::create_dir(root.join(dir)).unwrap();
            let controllers = controllers.split(',').map(str::to_string).collect();
            mounts.push(V1Mount { path: root.join(dir), controllers });
        }
        fs::write(root.join("memory/memory.memsw.limit_in_bytes"), "9223372036854771712\n")
            .unwrap();
        fs::write(root.join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        fs::write(root.join("cpuset/cpuset.mems"), "0\n").unwrap();
        let tree = FakeTree::v1(root);
        let backend = V1::new(mounts, Rc::new(tree.clone()));
        (tmp, tree, backend)
    }

    fn all_limits() -> Limits {
        Limits {
            memory: Some(32 << 20),
            memory_swap: Some(Swap::Total(48 << 20)),
            cpus: Some(CpuQuota { quota_us: 20_000, period_us: 100_000 }),
            cpu_shares: Some(512),
            pids: Some(16),
            cpuset: Some(CpuList::parse("1").unwrap()),
        }
    }

    /// A tree where another runtime, leaving, removes the shared `isolab/` of one hierarchy
    /// just before our cgroup is made in it (once).
    struct ParentVanishes {
        tree: FakeTree,
        parent: PathBuf,
        done: std::cell::Cell<bool>,
    }

    impl Cgroupfs for ParentVanishes {
        fn mkdir(&self, path: &Path) -> Result<(), Errno> {
            if !self.done.get() && path.parent() == Some(self.parent.as_path()) {
                self.done.set(true);
                self.tree.rmdir(&self.parent)?;
            }
            self.tree.mkdir(path)
        }
        fn rmdir(&self, path: &Path) -> Result<(), Errno> {
            self.tree.rmdir(path)
        }
        fn write(&self, path: &Path, value: &str) -> Result<(), Errno> {
            self.tree.write(path, value)
        }
        fn read(&self, path: &Path) -> Result<String, Errno> {
            self.tree.read(path)
        }
        fn exists(&self, path: &Path) -> bool {
            self.tree.exists(path)
        }
        fn children(&self, path: &Path) -> Result<Vec<PathBuf>, Errno> {
            self.tree.children(path)
        }
        fn kill(&self, pid: Pid) -> Result<(), Errno> {
            self.tree.kill(pid)
        }
        fn is_running(&self, pid: Pid) -> bool {
            self.tree.is_running(pid)
        }
    }

    #[test]
    fn a_shared_parent_removed_under_us_is_made_again_with_its_copies() {
        let (tmp, tree, backend) = tree();
        let parent = tmp.path().join("cpuset/isolab");
        let racing = ParentVanishes { tree: tree.clone(), parent, done: Default::default() };
        let backend = V1::new(backend.mounts.clone(), Rc::new(racing));
        let plan = backend.plan(&id(), &all_limits()).unwrap();
        backend.create(&plan).unwrap();
        let log = tree.take_log();
        let made: Vec<&String> =
            log.iter().filter(|line| line.starts_with("mkdir cpuset/")).collect();
        assert_eq!(
            made,
            ["mkdir cpuset/isolab", "mkdir cpuset/isolab", "mkdir cpuset/isolab/c1-4242"],
            "{log:#?}"
        );
        // The new parent got the CPUs and memory nodes a new cpuset needs, again.
        let copied = log.iter().filter(|line| *line == "write cpuset/isolab/cpuset.cpus 0-1");
        assert_eq!(copied.count(), 2, "{log:#?}");
        assert!(tmp.path().join("cpuset/isolab/c1-4242").is_dir());
    }

    #[test]
    fn create_makes_one_directory_per_hierarchy_and_writes_each_controller() {
        let (_tmp, tree, backend) = tree();
        let plan = backend.plan(&id(), &all_limits()).unwrap();
        backend.create(&plan).unwrap();
        backend.join(&id(), Pid::from_raw(777)).unwrap();
        assert_eq!(
            tree.take_log(),
            [
                "mkdir memory/isolab",
                "mkdir memory/isolab/c1-4242",
                "write memory/isolab/c1-4242/memory.limit_in_bytes 33554432",
                // Never below memory.limit_in_bytes: set after it.
                "write memory/isolab/c1-4242/memory.memsw.limit_in_bytes 50331648",
                "mkdir cpu,cpuacct/isolab",
                "mkdir cpu,cpuacct/isolab/c1-4242",
                "write cpu,cpuacct/isolab/c1-4242/cpu.cfs_period_us 100000",
                "write cpu,cpuacct/isolab/c1-4242/cpu.cfs_quota_us 20000",
                "write cpu,cpuacct/isolab/c1-4242/cpu.shares 512",
                "mkdir pids/isolab",
                "mkdir pids/isolab/c1-4242",
                "write pids/isolab/c1-4242/pids.max 16",
                "mkdir cpuset/isolab",
                // A new v1 cpuset is empty: copy the parent's CPUs and memory nodes down.
                "write cpuset/isolab/cpuset.cpus 0-1",
                "write cpuset/isolab/cpuset.mems 0",
                "mkdir cpuset/isolab/c1-4242",
                "write cpuset/isolab/c1-4242/cpuset.cpus 1",
                "write cpuset/isolab/c1-4242/cpuset.mems 0",
                "mkdir freezer/isolab",
                "mkdir freezer/isolab/c1-4242",
                "write memory/isolab/c1-4242/cgroup.procs 777",
                "write cpu,cpuacct/isolab/c1-4242/cgroup.procs 777",
                "write pids/isolab/c1-4242/cgroup.procs 777",
                "write cpuset/isolab/c1-4242/cgroup.procs 777",
                "write freezer/isolab/c1-4242/cgroup.procs 777",
            ]
        );
        assert_eq!(plan.join.len(), 5);
    }

    #[test]
    fn plan_prints_as_calls() {
        let (tmp, _tree, backend) = tree();
        let limits = Limits { memory: Some(32 << 20), ..Limits::default() };
        let text = backend.plan(&id(), &limits).unwrap().to_string();
        let text = text.replace(&tmp.path().display().to_string(), "/cg");
        assert_eq!(
            text.lines().take(5).collect::<Vec<_>>(),
            [
                "# memory: the parent of every isolab cgroup",
                "mkdir(\"/cg/memory/isolab\", 0755)",
                "mkdir(\"/cg/memory/isolab/c1-4242\", 0755)",
                "# --memory 32 MiB: past it the kernel reclaims, then the OOM killer kills",
                "write(\"/cg/memory/isolab/c1-4242/memory.limit_in_bytes\", \"33554432\")",
            ]
        );
        // Without --cpuset, no cpuset cgroup: it would need setting up for nothing.
        assert!(!text.contains("cpuset"), "{text}");
        assert!(text.contains("# cpu,cpuacct: the parent of every isolab cgroup"), "{text}");
    }

    #[test]
    fn unlimited_swap_and_missing_controllers() {
        let (tmp, _tree, backend) = tree();
        let limits = Limits {
            memory: Some(1 << 20),
            memory_swap: Some(Swap::Unlimited),
            ..Limits::default()
        };
        let plan = backend.plan(&id(), &limits).unwrap().to_string();
        assert!(plan.contains("memory.memsw.limit_in_bytes\", \"-1\")"), "{plan}");

        let no_pids = V1::new(
            vec![V1Mount { path: tmp.path().join("memory"), controllers: vec!["memory".into()] }],
            Rc::new(FakeTree::v1(tmp.path())),
        );
        let error = no_pids.plan(&id(), &Limits { pids: Some(4), ..Limits::default() });
        assert_eq!(
            error.unwrap_err().to_string(),
            "--pids needs the cgroup v1 pids controller, which is not mounted on this host \
             (its v1 hierarchies: memory)"
        );

        fs::remove_file(tmp.path().join("memory/memory.memsw.limit_in_bytes")).unwrap();
        let error = backend.plan(&id(), &limits).unwrap_err().to_string();
        assert!(error.contains("swapaccount=1"), "{error}");
    }

    #[test]
    fn destroy_freezes_kills_thaws_then_removes() {
        let (_tmp, tree, backend) = tree();
        backend.create(&backend.plan(&id(), &Limits::default()).unwrap()).unwrap();
        backend.join(&id(), Pid::from_raw(100)).unwrap();
        tree.run(100);
        tree.mkdir(&backend.dir_in("memory").join("inner")).unwrap();
        tree.add_process("memory/isolab/c1-4242/inner", 101);
        tree.take_log();

        let removed = backend.destroy(&id()).unwrap();
        assert_eq!(
            tree.take_log(),
            [
                "write freezer/isolab/c1-4242/freezer.state FROZEN",
                "kill 100",
                "kill 101",
                "write freezer/isolab/c1-4242/freezer.state THAWED",
                "rmdir memory/isolab/c1-4242/inner",
                "rmdir memory/isolab/c1-4242",
                "rmdir cpu,cpuacct/isolab/c1-4242",
                "rmdir pids/isolab/c1-4242",
                "rmdir freezer/isolab/c1-4242",
                "rmdir memory/isolab",
                "rmdir cpu,cpuacct/isolab",
                "rmdir pids/isolab",
                "rmdir freezer/isolab",
            ]
        );
        assert_eq!(removed.killed, [Pid::from_raw(100), Pid::from_raw(101)]);
        assert!(backend.destroy(&id()).unwrap().is_empty());
        assert!(tree.take_log().is_empty());
    }

    impl V1 {
        fn dir_in(&self, controller: &str) -> PathBuf {
            self.mount(controller).unwrap().join(PARENT).join(id().to_string())
        }
    }

    #[test]
    fn report_reads_each_controllers_files() {
        let (_tmp, tree, backend) = tree();
        backend.create(&backend.plan(&id(), &Limits::default()).unwrap()).unwrap();
        let write = |controller: &str, file: &str, text: &str| {
            fs::write(backend.dir_in(controller).join(file), text).unwrap();
        };
        write("memory", "memory.max_usage_in_bytes", "33554432\n");
        write("memory", "memory.limit_in_bytes", "33554432\n");
        write("memory", "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n");
        write("cpu", "cpu.stat", "nr_periods 21\nnr_throttled 19\nthrottled_time 1612345678\n");
        write("cpuacct", "cpuacct.usage_user", "398000000\n");
        write("cpuacct", "cpuacct.usage_sys", "2000000\n");
        write("pids", "pids.peak", "16\n");
        write("pids", "pids.max", "16\n");
        let usage = backend.report(&id()).unwrap();
        assert_eq!(usage.memory_peak, Some(32 << 20));
        assert_eq!(usage.oom_kills, Some(1));
        assert_eq!(usage.throttled_periods, Some(19));
        assert_eq!(usage.throttled_time, Some(std::time::Duration::from_nanos(1_612_345_678)));
        assert_eq!(usage.cpu_user, Some(std::time::Duration::from_millis(398)));
        assert_eq!(usage.cpu_system, Some(std::time::Duration::from_millis(2)));
        assert_eq!(usage.pids_peak, Some(16));
        assert_eq!(usage.pids_limit, Some(Bound::At(16)));
        assert_eq!(usage.describe_oom(), "killed: out of memory (limit 32 MiB, peak 32 MiB)");

        // An unlimited v1 memory cgroup reads as a huge number: that is "no limit".
        write("memory", "memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(backend.report(&id()).unwrap().memory_limit, Some(Bound::Max));
        drop(tree);
    }
}
