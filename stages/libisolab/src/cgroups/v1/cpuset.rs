//! v1 cpuset: a new cpuset cgroup starts with *no* CPUs and *no* memory nodes, and the kernel
//! refuses to let a process join it (ENOSPC) until both are set. So each level copies its
//! parent's `cpuset.cpus` and `cpuset.mems` down (or, for the container, takes `--cpuset`).
//! (`cgroup.clone_children` would make the kernel copy them; doing it ourselves shows it.)

use std::path::Path;

use super::super::{Limits, Step};

// ANCHOR: steps
/// For the shared `isolab/` parent: the mount root's CPUs and memory nodes.
pub fn parent_steps(mount: &Path, parent: &Path) -> Vec<Step> {
    let copy = |file: &str, why: &str| Step::Copy {
        from: mount.join(file),
        to: parent.join(file),
        why: why.to_string(),
    };
    vec![
        copy("cpuset.cpus", "a new v1 cpuset is empty: copy the CPUs down from its parent …"),
        copy("cpuset.mems", "… and the memory nodes, or no process may join it"),
    ]
}

/// For the container: `--cpuset`, or the parent's CPUs; and the parent's memory nodes.
pub fn steps(parent: &Path, dir: &Path, limits: &Limits) -> Vec<Step> {
    let cpus = match &limits.cpuset {
        Some(cpus) => Step::write(dir.join("cpuset.cpus"), cpus, format!("--cpuset {cpus}")),
        None => Step::Copy {
            from: parent.join("cpuset.cpus"),
            to: dir.join("cpuset.cpus"),
            why: "the parent's CPUs".to_string(),
        },
    };
    let mems = Step::Copy {
        from: parent.join("cpuset.mems"),
        to: dir.join("cpuset.mems"),
        why: "the parent's memory nodes".to_string(),
    };
    vec![cpus, mems]
}
// ANCHOR_END: steps
