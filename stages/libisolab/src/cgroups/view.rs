//! What the container sees of its cgroup: its own cgroup as the root of the tree, read-only
//! at `/sys/fs/cgroup`.
//!
//! Stage 2 mounted a fresh sysfs at `/sys`. A sysfs has an empty `fs/cgroup` directory: the
//! cgroup filesystems are separate mounts, and a fresh sysfs carries none of the host's. So a
//! container sees no cgroup at all, and a program inside cannot learn its own limits (a JVM
//! sizing its heap, a build tool choosing how many jobs to run, our probe).
//!
//! A cgroup filesystem mounted inside would show the *whole* host tree, unless the container
//! has a cgroup namespace: then the kernel mounts the namespace's root cgroup as the root of
//! the filesystem (`man 7 cgroup_namespaces`), and `/proc/self/cgroup` says `/`. The root of a
//! cgroup namespace is the cgroup its creator was in *when it was created*. That is why stage 3
//! does not create it with `clone(2)` as stage 2 did: at the clone, the child is still in the
//! runtime's cgroup. The child creates it with `unshare(CLONE_NEWCGROUP)` once the parent has
//! moved it into its own cgroup, and then mounts:
//!
//! - on **v2**, the cgroup2 filesystem at `/sys/fs/cgroup`;
//! - on **v1**, a small tmpfs at `/sys/fs/cgroup` and in it one mount per hierarchy the
//!   container joined (`memory`, `cpu`, …), as hosts lay them out. Only those: in the others
//!   the child is still in the runtime's cgroup, which would become *their* root.
//!
//! Everything is read-only: the container may read its limits, not raise them.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use super::{Hierarchy, Plan, Version};
use crate::error::{Result, SysResultExt};
use crate::mounts::Step;

/// Where the container sees its cgroup.
pub const MOUNT_POINT: &str = "/sys/fs/cgroup";

const READ_ONLY: MsFlags =
    MsFlags::MS_RDONLY.union(MsFlags::MS_NOSUID).union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

// ANCHOR: unshare
/// In the child, once the parent has moved it into its cgroup: a new cgroup namespace, whose
/// root is that cgroup (`man 7 cgroup_namespaces`). From now on `/proc/self/cgroup` says `/`.
pub fn unshare_namespace() -> Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).sys("unshare", "CLONE_NEWCGROUP")
}
// ANCHOR_END: unshare

// ANCHOR: mounts
/// The mounts, inside the container's root, that show it the cgroup of `plan`; the child makes
/// them after `unshare(CLONE_NEWCGROUP)`.
pub fn mounts(plan: &Plan, hierarchy: &Hierarchy) -> Vec<Step> {
    let top = PathBuf::from(MOUNT_POINT);
    let cgroup_mount = |target: PathBuf, fstype, data: Option<String>| Step::Mount {
        source: Some(PathBuf::from(fstype)),
        target,
        fstype: Some(fstype),
        flags: READ_ONLY,
        data,
        why: "read-only, with our cgroup as its root (the cgroup namespace's)",
    };
    if plan.version == Version::V2 {
        return vec![cgroup_mount(top, "cgroup2", None)];
    }
    let mut steps = vec![Step::Mount {
        source: Some(PathBuf::from("tmpfs")),
        target: top.clone(),
        fstype: Some("tmpfs"),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: Some("mode=755,size=64k".to_string()),
        why: "v1: a directory per hierarchy, on a tmpfs of our own",
    }];
    // One hierarchy per joined `<mount>/isolab/<id>/cgroup.procs`: its mount point, then it.
    let mut hierarchies = Vec::new();
    for procs in &plan.join {
        let Some(mount) = procs.ancestors().nth(3) else { continue };
        let Some(v1) = hierarchy.v1_mounts().iter().find(|v1| v1.path == mount) else {
            continue;
        };
        let target = inside(Version::V1, mount);
        steps.push(Step::MakeDir { path: target.clone(), mode: 0o755, why: "mount points" });
        hierarchies.push(cgroup_mount(target, "cgroup", Some(v1.controllers.join(","))));
    }
    steps.extend(hierarchies);
    steps.push(Step::Mount {
        source: None,
        target: top,
        fstype: None,
        flags: MsFlags::MS_REMOUNT | MsFlags::MS_BIND | READ_ONLY,
        data: None,
        why: "then the tmpfs read-only too",
    });
    steps
}
// ANCHOR_END: mounts

/// The directory inside the container where the hierarchy mounted at `host_mount` on the host
/// appears (`/sys/fs/cgroup/memory` for `/sys/fs/cgroup/memory`; `/sys/fs/cgroup` on v2).
pub fn inside(version: Version, host_mount: &Path) -> PathBuf {
    match (version, host_mount.file_name()) {
        (Version::V1, Some(name)) => Path::new(MOUNT_POINT).join(name),
        _ => PathBuf::from(MOUNT_POINT),
    }
}

#[cfg(test)]
mod tests {
    use nix::unistd::Pid;

    use super::super::{ContainerId, Unified, V1Mount};
    use super::*;

    fn plan(version: Version, join: &[&str]) -> Plan {
        Plan {
            version,
            id: ContainerId::new("c1", Pid::from_raw(42)).unwrap(),
            steps: Vec::new(),
            join: join.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn v1_mounts_each_joined_hierarchy_on_a_read_only_tmpfs() {
        let mount = |path: &str, controllers: &str| V1Mount {
            path: PathBuf::from(path),
            controllers: controllers.split(',').map(str::to_string).collect(),
        };
        let hierarchy = Hierarchy::V1(vec![
            mount("/sys/fs/cgroup/memory", "memory"),
            mount("/sys/fs/cgroup/cpu,cpuacct", "cpu,cpuacct"),
            mount("/sys/fs/cgroup/systemd", "name=systemd"),
        ]);
        let plan = plan(
            Version::V1,
            &[
                "/sys/fs/cgroup/memory/isolab/c1-42/cgroup.procs",
                "/sys/fs/cgroup/cpu,cpuacct/isolab/c1-42/cgroup.procs",
            ],
        );
        let lines: Vec<String> = mounts(&plan, &hierarchy).iter().map(Step::to_string).collect();
        assert_eq!(
            lines,
            [
                "mount(\"tmpfs\", \"/sys/fs/cgroup\", \"tmpfs\", MS_NOSUID|MS_NODEV|MS_NOEXEC, \
                 \"mode=755,size=64k\")",
                "mkdir(\"/sys/fs/cgroup/memory\", 0755)",
                "mkdir(\"/sys/fs/cgroup/cpu,cpuacct\", 0755)",
                "mount(\"cgroup\", \"/sys/fs/cgroup/memory\", \"cgroup\", \
                 MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC, \"memory\")",
                "mount(\"cgroup\", \"/sys/fs/cgroup/cpu,cpuacct\", \"cgroup\", \
                 MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC, \"cpu,cpuacct\")",
                "mount(NULL, \"/sys/fs/cgroup\", NULL, \
                 MS_REMOUNT|MS_BIND|MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC, NULL)",
            ]
        );
        assert_eq!(
            inside(Version::V1, Path::new("/sys/fs/cgroup/cpu,cpuacct")),
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
    }

    #[test]
    fn v2_is_one_cgroup2_mount() {
        let unified = Unified {
            mount: PathBuf::from("/sys/fs/cgroup"),
            controllers: vec!["memory".into()],
            enabled: vec![],
        };
        let plan = plan(Version::V2, &["/sys/fs/cgroup/isolab/c1-42/cgroup.procs"]);
        let lines: Vec<String> =
            mounts(&plan, &Hierarchy::V2(unified)).iter().map(Step::to_string).collect();
        assert_eq!(
            lines,
            ["mount(\"cgroup2\", \"/sys/fs/cgroup\", \"cgroup2\", \
              MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC, NULL)"]
        );
    }
}
