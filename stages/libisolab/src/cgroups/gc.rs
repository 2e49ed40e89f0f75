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
//!
//! Without root, a user may only remove cgroups in a cgroup v2 subtree delegated to them, and
//! that is also the only place their runtimes could make one. A user with no such subtree
//! (every user but root on a v1 or hybrid host) has no cgroups to collect: the host's are
//! root's. Their gc says so and goes on with what is theirs (stage 4's store).

use std::rc::Rc;

use nix::unistd::{getpid, Uid};

use super::{backends, Backend, Cgroupfs, Hierarchy, Removed};
use crate::error::Result;

/// What [`gc_for`] did for one user.
#[derive(Debug, Default)]
pub struct Collected {
    /// The stale cgroups removed.
    pub removed: Vec<Removed>,
    /// Set when none were looked at because none can be this user's (no cgroup v2 subtree is
    /// delegated to them): one line that says so, for the user.
    pub not_theirs: Option<String>,
}

/// Removes the stale isolab cgroups of every part of `hierarchy` (v1 hierarchies and the v2
/// mount), killing what is left in them; returns what was removed.
pub fn gc(hierarchy: &Hierarchy, fs: Rc<dyn Cgroupfs>) -> Result<Vec<Removed>> {
    let mut removed = Vec::new();
    for backend in backends(hierarchy, fs) {
        removed.extend(collect(&*backend)?);
    }
    Ok(removed)
}

/// Removes the stale cgroups `user` may remove: root those of every hierarchy ([`gc()`]), any
/// other user those in the cgroup v2 subtree delegated to them (see [`super::rootless`]); a
/// user without one has none, and is told so in [`Collected::not_theirs`].
pub fn gc_for(hierarchy: &Hierarchy, user: Uid, fs: Rc<dyn Cgroupfs>) -> Result<Collected> {
    if user.is_root() {
        return Ok(Collected { removed: gc(hierarchy, fs)?, not_theirs: None });
    }
    // Without root, `open` fails only where nothing is delegated to this user.
    match super::open(hierarchy, user, fs) {
        Ok(backend) => Ok(Collected { removed: collect(&*backend)?, not_theirs: None }),
        Err(_) => {
            Ok(Collected { removed: Vec::new(), not_theirs: Some(not_theirs(hierarchy, user)) })
        }
    }
}

/// Why `user`, who has no delegated subtree, has no cgroups to collect, in one line.
fn not_theirs(hierarchy: &Hierarchy, user: Uid) -> String {
    match hierarchy {
        Hierarchy::V2(_) => format!(
            "cgroups: not collected, no cgroup v2 subtree is delegated to uid {user} where this \
             runs (run gc in the scope its runtimes ran in, or as root)"
        ),
        _ => format!(
            "cgroups: not uid {user}'s to collect: on cgroup v1 only root makes them (`sudo \
             isolab gc` collects the host's)"
        ),
    }
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
    fn without_root_on_a_hybrid_host_the_host_s_cgroups_are_left_alone_and_it_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let tree = FakeTree::v1(root);
        fs::create_dir(root.join("memory")).unwrap();
        let v1 = vec![V1Mount { path: root.join("memory"), controllers: vec!["memory".into()] }];
        fs::create_dir(root.join("unified")).unwrap();
        let unified = Unified { mount: root.join("unified"), controllers: vec![], enabled: vec![] };
        // A stale cgroup of root's runtime: not this user's to remove.
        tree.mkdir(&root.join("memory/isolab")).unwrap();
        tree.mkdir(&root.join("memory/isolab/c1-111")).unwrap();
        tree.take_log();
        let nobody = Uid::from_raw(65534);
        for hierarchy in [Hierarchy::Hybrid { v1: v1.clone(), unified }, Hierarchy::V1(v1)] {
            let collected = gc_for(&hierarchy, nobody, Rc::new(tree.clone())).unwrap();
            assert!(collected.removed.is_empty());
            let said = collected.not_theirs.unwrap();
            assert_eq!(
                said,
                "cgroups: not uid 65534's to collect: on cgroup v1 only root makes them (`sudo \
                 isolab gc` collects the host's)"
            );
            assert!(said.len() < 120);
        }
        assert!(tree.take_log().is_empty());
        assert!(root.join("memory/isolab/c1-111").exists());
        // Root's gc is unchanged: it removes it.
        let v1 = Hierarchy::V1(vec![V1Mount {
            path: root.join("memory"),
            controllers: vec!["memory".into()],
        }]);
        let collected = gc_for(&v1, Uid::from_raw(0), Rc::new(tree)).unwrap();
        assert_eq!((collected.removed.len(), collected.not_theirs), (1, None));
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
