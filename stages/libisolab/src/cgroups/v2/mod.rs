//! cgroup v2: one hierarchy, one directory per container.
//!
//! Under v2 a controller works in a cgroup only if every ancestor hands it down: a parent
//! lists in `cgroup.subtree_control` the controllers its children get (`+memory +cpu +pids`),
//! and can hand down only those in its own `cgroup.controllers`. So creating
//! `isolab/<id>` under `top` (the mount's root for root, a delegated subtree for a user) is:
//! enable the controllers in `top`, make `isolab/`, enable them in `isolab/`, make `<id>`,
//! write the limits. One more rule shapes the layout: a cgroup with processes of its own
//! cannot hand controllers down ("no internal processes"), which is why the containers live
//! in leaves below a parent that never has processes.
//!
//! Each controller has its file here: [`memory`], [`cpu`], [`pids`], [`cpuset`].

pub mod cpu;
pub mod cpuset;
pub mod memory;
pub mod pids;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;

use super::{
    kill_each, procs_in_tree, remove_if_unused, remove_tree, wait_until_empty, Backend, Cgroupfs,
    ContainerId, Limits, Plan, Removed, Step, Usage, Version, PARENT,
};
use crate::error::{Error, Result};

/// The controllers isolab uses, in the order they are enabled.
pub const CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "cpuset"];

/// cgroup v2, with the containers' cgroups in `<top>/isolab/`.
pub struct V2 {
    top: PathBuf,
    fs: Rc<dyn Cgroupfs>,
}

impl V2 {
    /// Containers in `<top>/isolab/<id>`: `top` is the cgroup2 mount (as root) or the
    /// subtree delegated to the user (see [`super::rootless`]).
    pub fn new(top: &Path, fs: Rc<dyn Cgroupfs>) -> V2 {
        V2 { top: top.to_path_buf(), fs }
    }

    /// `<top>/isolab`.
    pub fn parent(&self) -> PathBuf {
        self.top.join(PARENT)
    }

    /// `<top>/isolab/<id>`.
    pub fn dir(&self, id: &ContainerId) -> PathBuf {
        self.parent().join(id.to_string())
    }

    /// The controllers `limits` need (they must be available) and those the report reads
    /// (enabled where available): memory, cpu and pids always, cpuset only when asked for.
    fn controllers(&self, limits: &Limits) -> Result<Vec<&'static str>> {
        let file = self.top.join("cgroup.controllers");
        let available = self.fs.read(&file).map_err(|e| Error::sys("read", file.display(), e))?;
        let available: Vec<&str> = available.split_whitespace().collect();
        let mut enable = Vec::new();
        for controller in CONTROLLERS {
            let (needed, flag) = match controller {
                "memory" => (limits.memory.is_some() || limits.memory_swap.is_some(), "--memory"),
                "cpu" => (limits.cpus.is_some() || limits.cpu_shares.is_some(), "--cpus"),
                "pids" => (limits.pids.is_some(), "--pids"),
                _ => (limits.cpuset.is_some(), "--cpuset"),
            };
            if available.contains(&controller) {
                if needed || controller != "cpuset" {
                    enable.push(controller);
                }
            } else if needed {
                return Err(Error::Invalid(format!(
                    "{flag} needs the cgroup v2 {controller} controller, which {} does not \
                     have (its cgroup.controllers: {})",
                    self.top.display(),
                    if available.is_empty() { "empty".to_string() } else { available.join(" ") },
                )));
            }
        }
        Ok(enable)
    }

    // ANCHOR: kill
    /// Kills every process in `dir` and below: one write of `1` to `cgroup.kill` (Linux
    /// 5.14), which the kernel carries out for the whole subtree, forks in flight included.
    /// Older kernels: SIGKILL each pid in `cgroup.procs`, again until none is left.
    fn kill_all(&self, dir: &Path) -> Result<Vec<nix::unistd::Pid>> {
        let fs = &*self.fs;
        let pids = procs_in_tree(fs, dir)?;
        if pids.is_empty() {
            return Ok(pids);
        }
        let dirs = [dir.to_path_buf()];
        if fs.exists(&dir.join("cgroup.kill")) {
            super::write_file(fs, &dir.join("cgroup.kill"), "1")?;
            wait_until_empty(fs, &dirs, |_| {})?;
        } else {
            kill_each(fs, &pids)?;
            wait_until_empty(fs, &dirs, |left| {
                let _ = kill_each(fs, left);
            })?;
        }
        Ok(pids)
    }
    // ANCHOR_END: kill
}

impl Backend for V2 {
    fn version(&self) -> Version {
        Version::V2
    }

    fn fs(&self) -> &dyn Cgroupfs {
        &*self.fs
    }

    fn parents(&self) -> Vec<PathBuf> {
        vec![self.parent()]
    }

    fn dirs(&self, id: &ContainerId) -> Vec<PathBuf> {
        vec![self.dir(id)]
    }

    // ANCHOR: plan
    fn plan(&self, id: &ContainerId, limits: &Limits) -> Result<Plan> {
        let controllers = self.controllers(limits)?;
        let enable: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
        let enable = enable.join(" ");
        let (parent, dir) = (self.parent(), self.dir(id));
        let mut steps = Vec::new();
        if !controllers.is_empty() {
            steps.push(Step::write(
                self.top.join("cgroup.subtree_control"),
                &enable,
                format!(
                    "hand {} down to the children of {}",
                    controllers.join(", "),
                    self.top.display()
                ),
            ));
        }
        steps.push(Step::MakeDir {
            path: parent.clone(),
            shared: true,
            why: "the parent of every isolab cgroup (made by the first runtime, then shared)"
                .into(),
        });
        if !controllers.is_empty() {
            steps.push(Step::write(
                parent.join("cgroup.subtree_control"),
                &enable,
                "and down to each container's cgroup",
            ));
        }
        steps.push(Step::MakeDir {
            path: dir.clone(),
            shared: false,
            why: format!("the cgroup of container {id}"),
        });
        steps.extend(memory::steps(&dir, limits));
        steps.extend(cpu::steps(&dir, limits));
        steps.extend(pids::steps(&dir, limits));
        steps.extend(cpuset::steps(&dir, limits));
        Ok(Plan {
            version: Version::V2,
            id: id.clone(),
            steps,
            join: vec![dir.join("cgroup.procs")],
        })
    }
    // ANCHOR_END: plan

    // ANCHOR: report
    fn report(&self, id: &ContainerId) -> Result<Usage> {
        let dir = self.dir(id);
        if !self.fs.exists(&dir) {
            return Err(Error::sys("read", dir.display(), Errno::ENOENT)
                .hint("the cgroup is gone: read the report before destroying it"));
        }
        let mut usage = Usage::default();
        memory::report(&*self.fs, &dir, &mut usage)?;
        cpu::report(&*self.fs, &dir, &mut usage)?;
        pids::report(&*self.fs, &dir, &mut usage)?;
        Ok(usage)
    }
    // ANCHOR_END: report

    // ANCHOR: destroy
    fn destroy(&self, id: &ContainerId) -> Result<Removed> {
        let dir = self.dir(id);
        let mut removed = Removed { id: id.to_string(), ..Removed::default() };
        if !self.fs.exists(&dir) {
            return Ok(removed); // nothing to do: destroying twice is fine
        }
        // First no process may be left: rmdir refuses a cgroup that has one.
        removed.killed = self.kill_all(&dir)?;
        // Then the directories, deepest first, and the shared parent if it is now empty.
        remove_tree(&*self.fs, &dir, &mut removed.dirs)?;
        remove_if_unused(&*self.fs, &self.parent(), &mut removed.dirs)?;
        Ok(removed)
    }
    // ANCHOR_END: destroy
}

#[cfg(test)]
mod tests {
    use std::fs;

    use nix::unistd::Pid;

    use super::super::fake::FakeTree;
    use super::super::{CpuList, CpuQuota, Swap};
    use super::*;

    fn id() -> ContainerId {
        ContainerId::new("c1", Pid::from_raw(4242)).unwrap()
    }

    /// A cgroup2 root with the controllers of a typical systemd host.
    fn tree() -> (tempfile::TempDir, FakeTree, V2) {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids\n")
            .unwrap();
        fs::write(tmp.path().join("cgroup.subtree_control"), "").unwrap();
        let tree = FakeTree::v2(tmp.path());
        let backend = V2::new(tmp.path(), Rc::new(tree.clone()));
        (tmp, tree, backend)
    }

    fn all_limits() -> Limits {
        Limits {
            memory: Some(64 << 20),
            memory_swap: Some(Swap::Total(96 << 20)),
            cpus: Some(CpuQuota { quota_us: 50_000, period_us: 100_000 }),
            cpu_shares: Some(1024),
            pids: Some(16),
            cpuset: Some(CpuList::parse("0").unwrap()),
        }
    }

    #[test]
    fn plan_lists_every_call_in_order() {
        let (tmp, _tree, backend) = tree();
        let plan = backend.plan(&id(), &all_limits()).unwrap();
        let text = plan.to_string().replace(&tmp.path().display().to_string(), "/cg");
        assert_eq!(
            text,
            "# hand memory, cpu, pids, cpuset down to the children of /cg\n\
             write(\"/cg/cgroup.subtree_control\", \"+memory +cpu +pids +cpuset\")\n\
             # the parent of every isolab cgroup (made by the first runtime, then shared)\n\
             mkdir(\"/cg/isolab\", 0755)\n\
             # and down to each container's cgroup\n\
             write(\"/cg/isolab/cgroup.subtree_control\", \"+memory +cpu +pids +cpuset\")\n\
             # the cgroup of container c1-4242\n\
             mkdir(\"/cg/isolab/c1-4242\", 0755)\n\
             # --memory 64 MiB: past it the kernel reclaims, then the OOM killer kills\n\
             write(\"/cg/isolab/c1-4242/memory.max\", \"67108864\")\n\
             # --memory-swap 96 MiB: v2 limits swap alone, so memory+swap minus memory\n\
             write(\"/cg/isolab/c1-4242/memory.swap.max\", \"33554432\")\n\
             # --cpus 0.5: 50000 µs of CPU time in every 100000 µs period\n\
             write(\"/cg/isolab/c1-4242/cpu.max\", \"50000 100000\")\n\
             # --cpu-shares 1024 as a v2 weight (runc's curve: 1024 shares are weight 100)\n\
             write(\"/cg/isolab/c1-4242/cpu.weight\", \"100\")\n\
             # --pids 16: fork and clone fail with EAGAIN past it\n\
             write(\"/cg/isolab/c1-4242/pids.max\", \"16\")\n\
             # --cpuset 0\n\
             write(\"/cg/isolab/c1-4242/cpuset.cpus\", \"0\")\n\
             # join: the parent moves the child in, before the child execs\n\
             write(\"/cg/isolab/c1-4242/cgroup.procs\", \"<pid>\")\n"
        );
    }

    #[test]
    fn create_writes_the_values_and_join_the_pid() {
        let (_tmp, tree, backend) = tree();
        let plan = backend.plan(&id(), &all_limits()).unwrap();
        backend.create(&plan).unwrap();
        backend.join(&id(), Pid::from_raw(777)).unwrap();
        assert_eq!(
            tree.take_log(),
            [
                "write cgroup.subtree_control +memory +cpu +pids +cpuset",
                "mkdir isolab",
                "write isolab/cgroup.subtree_control +memory +cpu +pids +cpuset",
                "mkdir isolab/c1-4242",
                "write isolab/c1-4242/memory.max 67108864",
                "write isolab/c1-4242/memory.swap.max 33554432",
                "write isolab/c1-4242/cpu.max 50000 100000",
                "write isolab/c1-4242/cpu.weight 100",
                "write isolab/c1-4242/pids.max 16",
                "write isolab/c1-4242/cpuset.cpus 0",
                "write isolab/c1-4242/cgroup.procs 777",
            ]
        );
        assert_eq!(tree.contents("isolab/c1-4242/memory.max"), "67108864\n");
        assert_eq!(tree.contents("isolab/c1-4242/cgroup.procs"), "777\n");
    }

    #[test]
    fn without_limits_the_meters_are_still_enabled() {
        let (_tmp, _tree, backend) = tree();
        let plan = backend.plan(&id(), &Limits::default()).unwrap();
        let writes: Vec<String> = plan.steps.iter().map(|s| s.to_string()).collect();
        assert!(writes[0].ends_with("\"+memory +cpu +pids\")"), "{writes:?}");
        assert_eq!(plan.steps.len(), 4);
    }

    #[test]
    fn a_missing_controller_is_refused_before_anything_is_made() {
        let (tmp, tree, backend) = tree();
        fs::write(tmp.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        let limits = Limits { memory: Some(1 << 20), ..Limits::default() };
        let error = backend.plan(&id(), &limits).unwrap_err().to_string();
        assert!(
            error.starts_with("--memory needs the cgroup v2 memory controller, which"),
            "{error}"
        );
        assert!(error.ends_with("does not have (its cgroup.controllers: cpu pids)"), "{error}");
        assert!(tree.take_log().is_empty());
    }

    #[test]
    fn a_failed_create_leaves_nothing_behind() {
        let (tmp, tree, _) = tree();
        // A kernel without swap accounting: memory.swap.max does not exist.
        let no_swap = FakeTree::new(
            tmp.path(),
            &[("cgroup.procs", ""), ("cgroup.subtree_control", ""), ("memory.max", "max")],
        );
        let backend = V2::new(tmp.path(), Rc::new(no_swap));
        let limits = Limits {
            memory: Some(1 << 20),
            memory_swap: Some(Swap::Unlimited),
            ..Limits::default()
        };
        let plan = backend.plan(&id(), &limits).unwrap();
        let error = backend.create(&plan).unwrap_err().to_string();
        assert!(error.contains("memory.swap.max failed: ENOENT"), "{error}");
        assert!(error.contains("does not account swap"), "{error}");
        assert!(!tmp.path().join("isolab").exists());
        drop(tree);
    }

    #[test]
    fn destroy_kills_first_then_removes_children_before_parents() {
        let (_tmp, tree, backend) = tree();
        backend.create(&backend.plan(&id(), &Limits::default()).unwrap()).unwrap();
        // The command made a cgroup of its own inside, and left processes in both.
        tree.mkdir(&backend.dir(&id()).join("inner")).unwrap();
        tree.add_process("isolab/c1-4242", 100);
        tree.add_process("isolab/c1-4242/inner", 101);
        tree.take_log();

        let removed = backend.destroy(&id()).unwrap();
        assert_eq!(
            tree.take_log(),
            [
                "write isolab/c1-4242/cgroup.kill 1",
                "rmdir isolab/c1-4242/inner",
                "rmdir isolab/c1-4242",
                "rmdir isolab",
            ]
        );
        assert_eq!(removed.killed, [Pid::from_raw(100), Pid::from_raw(101)]);
        assert_eq!(removed.dirs.len(), 3);

        // Again: nothing left, nothing done.
        assert!(backend.destroy(&id()).unwrap().is_empty());
        assert!(tree.take_log().is_empty());
    }

    #[test]
    fn destroy_without_cgroup_kill_kills_each_process() {
        let (tmp, tree, _) = tree();
        let old_kernel = FakeTree::new(tmp.path(), &[("cgroup.procs", "")]);
        let backend = V2::new(tmp.path(), Rc::new(old_kernel.clone()));
        apply_plain(&backend);
        old_kernel.add_process("isolab/c1-4242", 100);
        old_kernel.add_process("isolab/c1-4242", 102);
        old_kernel.take_log();
        backend.destroy(&id()).unwrap();
        assert_eq!(
            old_kernel.take_log(),
            ["kill 100", "kill 102", "rmdir isolab/c1-4242", "rmdir isolab"]
        );
        drop(tree);
    }

    fn apply_plain(backend: &V2) {
        backend.fs().mkdir(&backend.parent()).unwrap();
        backend.fs().mkdir(&backend.dir(&id())).unwrap();
    }

    #[test]
    fn the_shared_parent_stays_while_another_container_uses_it() {
        let (_tmp, tree, backend) = tree();
        let other = ContainerId::new("c2", Pid::from_raw(4243)).unwrap();
        backend.create(&backend.plan(&id(), &Limits::default()).unwrap()).unwrap();
        backend.create(&backend.plan(&other, &Limits::default()).unwrap()).unwrap();
        tree.take_log();
        let removed = backend.destroy(&id()).unwrap();
        assert_eq!(tree.take_log(), ["rmdir isolab/c1-4242"]);
        assert_eq!(removed.dirs, [backend.dir(&id())]);
        assert_eq!(backend.containers().unwrap(), [other]);
    }

    #[test]
    fn report_reads_the_meters() {
        let (_tmp, tree, backend) = tree();
        backend.create(&backend.plan(&id(), &Limits::default()).unwrap()).unwrap();
        let dir = backend.dir(&id());
        fs::write(dir.join("memory.peak"), "67100672\n").unwrap();
        fs::write(dir.join("memory.max"), "67108864\n").unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 1450\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        fs::write(
            dir.join("cpu.stat"),
            "usage_usec 1520000\nuser_usec 1500000\nsystem_usec 20000\nnr_periods 40\n\
             nr_throttled 31\nthrottled_usec 2410000\nnr_bursts 0\nburst_usec 0\n",
        )
        .unwrap();
        fs::write(dir.join("pids.peak"), "3\n").unwrap();
        fs::write(dir.join("pids.max"), "16\n").unwrap();
        let usage = backend.report(&id()).unwrap();
        assert_eq!(usage.memory_peak, Some(67_100_672));
        assert_eq!(usage.memory_limit, Some(super::super::Bound::At(64 << 20)));
        assert_eq!(usage.oom_kills, Some(1));
        assert_eq!(usage.cpu_user, Some(std::time::Duration::from_millis(1500)));
        assert_eq!(usage.cpu_system, Some(std::time::Duration::from_millis(20)));
        assert_eq!(usage.throttled_periods, Some(31));
        assert_eq!(usage.throttled_time, Some(std::time::Duration::from_millis(2410)));
        assert_eq!(usage.pids_peak, Some(3));
        assert_eq!(usage.describe_oom(), "killed: out of memory (limit 64 MiB, peak 64.0 MiB)");
        drop(tree);
    }

    #[test]
    fn report_says_not_available_without_the_controllers() {
        // A cgroup2 mount with no controllers enabled (this hybrid machine's `unified/`).
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cgroup.controllers"), "").unwrap();
        let bare = FakeTree::new(
            tmp.path(),
            &[
                ("cgroup.procs", ""),
                ("cgroup.kill", ""),
                ("cpu.stat", "usage_usec 9\nuser_usec 7\nsystem_usec 2\n"),
            ],
        );
        let backend = V2::new(tmp.path(), Rc::new(bare));
        backend.create(&backend.plan(&id(), &Limits::default()).unwrap()).unwrap();
        let usage = backend.report(&id()).unwrap();
        assert_eq!(usage.cpu_user, Some(std::time::Duration::from_micros(7)));
        assert_eq!((usage.memory_peak, usage.oom_kills, usage.pids_peak), (None, None, None));
        assert_eq!(usage.throttled_periods, None);
        let limits = Limits { pids: Some(4), ..Limits::default() };
        assert!(backend.plan(&id(), &limits).is_err());
    }
}
