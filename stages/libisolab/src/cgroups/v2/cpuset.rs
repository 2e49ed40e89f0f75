//! v2 cpuset: `cpuset.cpus` pins the group to some CPUs. Unlike v1, an empty `cpuset.cpus`
//! or `cpuset.mems` means "the parent's", so a new cgroup can take processes at once.

use std::path::Path;

use super::super::{Limits, Step};

// ANCHOR: steps
/// The write for `--cpuset`.
pub fn steps(dir: &Path, limits: &Limits) -> Vec<Step> {
    let Some(cpus) = &limits.cpuset else { return Vec::new() };
    vec![Step::write(dir.join("cpuset.cpus"), cpus, format!("--cpuset {cpus}"))]
}
// ANCHOR_END: steps
