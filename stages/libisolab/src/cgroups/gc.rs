//! Cleaning up after runtimes that could not: stale cgroups found and removed.
//!
//! A runtime removes its container's cgroup when the command ends. A runtime killed with
//! SIGKILL cannot, and leaves `isolab/<name>-<pid>` behind (its processes die with it, by
//! `PR_SET_PDEATHSIG`, but the directories stay). Such a cgroup is *stale* when the runtime
//! pid in its name no longer runs. Stage 3 collects stale cgroups when it starts, and
//! `isolab gc` does it on demand; both say what they removed.
//!
//! A pid can be reused: a stale cgroup whose pid now belongs to an unrelated process is kept
//! until that process ends — the safe way to be wrong. The one pid we can be sure of is our
//! own: we have not made our cgroup yet, so a cgroup with our pid is a leftover.

use std::rc::Rc;

use nix::unistd::{getpid, Uid};

use super::{backends, Backend, Cgroupfs, Hierarchy, Removed};
use crate::error::Result;

/// Removes the stale isolab cgroups of every part of `hierarchy` (v1 hierarchies and the v2
/// mount), killing what is left in them; returns what was removed.
pub fn gc(hierarchy: &Hierarchy, fs: Rc<dyn Cgroupfs>) -> Result<Vec<Removed>> {
    let mut removed = Vec::new();
    for backend in backends(hierarchy, fs) {
        removed.extend(collect(&*backend)?);
    }
    Ok(removed)
}

/// The stale cgroups `user` may remove: root those of every hierarchy ([`gc()`]), any other
/// user those in the cgroup v2 subtree delegated to them (see [`super::rootless`]).
pub fn gc_for(hierarchy: &Hierarchy, user: Uid, fs: Rc<dyn Cgroupfs>) -> Result<Vec<Removed>> {
    if user.is_root() {
        return gc(hierarchy, fs);
    }
    collect(&*super::open(hierarchy, user, fs)?)
}

// ANCHOR: collect
/// Removes the stale cgroups of one backend (a user's delegated subtree, say).
pub fn collect(backend: &dyn Backend) -> Result<Vec<Removed>> {
    let mut removed = Vec::new();
    for id in backend.containers()? {
        let runtime = id.runtime_pid();
        // A runtime that still runs will remove its cgroup itself.
        if runtime != getpid() && backend.fs().is_running(runtime) {
            continue;
        }
        let done = backend.destroy(&id)?;
        if !done.is_empty() {
            removed.push(done);
        }
    }
    Ok(removed)
}
// ANCHOR_END: collect

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use nix::unistd::Pid;

    use super::super::fake::FakeTree;
    use super::super::{v1::V1, v2::V2, ContainerId, Unified, V1Mount};
    use super::*;

    #[test]
    fn stale_cgroups_are_removed_live_ones_and_strangers_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = FakeTree::v2(tmp.path());
        let backend = V2::new(tmp.path(), Rc::new(tree.clone()));
        tree.mkdir(&backend.parent()).unwrap();
        for name in ["dead-111", "alive-222", "not-ours"] {
            tree.mkdir(&backend.parent().join(name)).unwrap();
        }
        tree.run(222);
        // The dead runtime's command was not killed (no PDEATHSIG): gc kills it.
        tree.add_process("isolab/dead-111", 5000);
        tree.take_log();

        let removed = collect(&backend).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].id, "dead-111");
        assert_eq!(removed[0].killed, [Pid::from_raw(5000)]);
        assert_eq!(removed[0].dirs, [backend.parent().join("dead-111")]);
        assert_eq!(
            tree.take_log(),
            ["write isolab/dead-111/cgroup.kill 1", "rmdir isolab/dead-111"]
        );
        let alive = ContainerId::new("alive", Pid::from_raw(222)).unwrap();
        assert_eq!(backend.containers().unwrap(), [alive]);
        assert!(backend.parent().join("not-ours").exists());
    }

    #[test]
    fn a_cgroup_with_our_own_pid_is_a_leftover() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = FakeTree::v2(tmp.path());
        tree.run(getpid().as_raw());
        let backend = V2::new(tmp.path(), Rc::new(tree.clone()));
        tree.mkdir(&backend.parent()).unwrap();
        tree.mkdir(&backend.parent().join(format!("c1-{}", getpid()))).unwrap();
        let removed = collect(&backend).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!backend.parent().exists());
    }

    #[test]
    fn gc_looks_in_every_hierarchy_of_a_hybrid_host() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let tree = FakeTree::v1(root);
        let mut v1 = Vec::new();
        for controller in ["memory", "pids"] {
            fs::create_dir(root.join(controller)).unwrap();
            v1.push(V1Mount { path: root.join(controller), controllers: vec![controller.into()] });
        }
        fs::create_dir(root.join("unified")).unwrap();
        let unified = Unified { mount: root.join("unified"), controllers: vec![], enabled: vec![] };
        let hierarchy = Hierarchy::Hybrid { v1: v1.clone(), unified };
        // Left behind: a v1 cgroup in one hierarchy only, and a v2 one.
        let mkdirs = |dir: &Path| {
            tree.mkdir(&dir.join("isolab")).unwrap();
            tree.mkdir(&dir.join("isolab/c1-111")).unwrap();
        };
        mkdirs(&root.join("memory"));
        mkdirs(&root.join("unified"));
        let removed = gc(&hierarchy, Rc::new(tree.clone())).unwrap();
        let dirs: Vec<String> = removed
            .iter()
            .flat_map(|r| r.dirs.iter())
            .map(|d| d.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(
            dirs,
            ["memory/isolab/c1-111", "memory/isolab", "unified/isolab/c1-111", "unified/isolab"]
        );
        assert!(V1::new(v1, Rc::new(tree)).containers().unwrap().is_empty());
    }
}
