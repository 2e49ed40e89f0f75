//! A container's cgroup for as long as the container runs, and not a moment longer.
//!
//! [`Cgroup::create`] runs a [`Plan`]; [`Cgroup::finish`] reads the report and removes the
//! cgroup. Between the two, anything may go wrong: the clone may fail, the command may not be
//! found, the runtime may panic. So removal is also the guard's `Drop`: however the runtime
//! leaves the function that holds it, the leftovers are killed and the directories removed.
//! (Only SIGKILL of the runtime skips every destructor; for that there is [`super::gc()`].)
//!
//! A clone of the runtime (the child, before it execs) holds a copy of the guard in its
//! memory. If that copy were dropped — the child panicking, say — it must not remove the cgroup
//! the child is in: only the process that made the cgroup removes it.

use nix::unistd::{getpid, Pid};

use super::{Backend, ContainerId, Plan, Removed, Usage, Version};
use crate::error::Result;

/// A container's cgroup, made by [`Cgroup::create`] and removed by [`Cgroup::finish`] or,
/// failing that, when dropped.
pub struct Cgroup {
    backend: Box<dyn Backend>,
    plan: Plan,
    /// The process that made it, and the only one that removes it.
    owner: Pid,
    /// Already removed: nothing left for `Drop`.
    removed: bool,
}

impl std::fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cgroup({}, {})", self.plan.id, self.plan.version)
    }
}

// ANCHOR: guard
impl Cgroup {
    /// Runs `plan` on `backend` (see [`Backend::create`]: a failed creation leaves nothing).
    pub fn create(backend: Box<dyn Backend>, plan: Plan) -> Result<Cgroup> {
        backend.create(&plan)?;
        Ok(Cgroup { backend, plan, owner: getpid(), removed: false })
    }

    /// Reads the meters, then removes the cgroup (killing whatever is left in it). The cgroup
    /// is removed even when the report cannot be read; the first error is returned.
    pub fn finish(mut self) -> Result<(Usage, Removed)> {
        let usage = self.backend.report(&self.plan.id);
        let removed = self.backend.destroy(&self.plan.id);
        self.removed = true;
        Ok((usage?, removed?))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.removed && getpid() == self.owner {
            let _ = self.backend.destroy(&self.plan.id);
        }
    }
}
// ANCHOR_END: guard

impl Cgroup {
    /// The container's id (`<name>-<runtime pid>`).
    pub fn id(&self) -> &ContainerId {
        &self.plan.id
    }

    /// Which version of cgroups it is made of.
    pub fn version(&self) -> Version {
        self.plan.version
    }

    /// The plan it was made from.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::super::fake::FakeTree;
    use super::super::{v2::V2, Limits};
    use super::*;

    fn tree() -> (tempfile::TempDir, FakeTree) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(tmp.path().join("cgroup.subtree_control"), "").unwrap();
        let tree = FakeTree::v2(tmp.path());
        (tmp, tree)
    }

    fn made(tree: &FakeTree, root: &std::path::Path) -> Cgroup {
        let backend = V2::new(root, Rc::new(tree.clone()));
        let id = ContainerId::for_this_runtime("c1").unwrap();
        let plan = backend.plan(&id, &Limits::default()).unwrap();
        Cgroup::create(Box::new(backend), plan).unwrap()
    }

    #[test]
    fn finish_reports_then_removes() {
        let (tmp, tree) = tree();
        let cgroup = made(&tree, tmp.path());
        assert!(tmp.path().join("isolab").join(cgroup.id().to_string()).is_dir());
        let (usage, removed) = cgroup.finish().unwrap();
        assert_eq!(usage.pids_peak, Some(0));
        assert_eq!(removed.dirs.len(), 2, "{removed}");
        assert!(!tmp.path().join("isolab").exists());
    }

    #[test]
    fn dropping_the_guard_removes_the_cgroup() {
        let (tmp, tree) = tree();
        let cgroup = made(&tree, tmp.path());
        tree.add_process(&format!("isolab/{}", cgroup.id()), 100);
        tree.take_log();
        drop(cgroup);
        let id = format!("isolab/c1-{}", getpid());
        assert_eq!(
            tree.take_log(),
            [format!("write {id}/cgroup.kill 1"), format!("rmdir {id}"), "rmdir isolab".into()]
        );
    }

    #[test]
    fn a_copy_in_another_process_leaves_it_alone() {
        let (tmp, tree) = tree();
        let mut cgroup = made(&tree, tmp.path());
        // As if this were the clone of the process that made it.
        cgroup.owner = Pid::from_raw(getpid().as_raw() + 1);
        tree.take_log();
        drop(cgroup);
        assert!(tree.take_log().is_empty());
        assert!(tmp.path().join("isolab").exists());
    }
}
