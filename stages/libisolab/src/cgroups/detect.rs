//! Which cgroups this host has: v2, v1, or both (hybrid) — asked of the kernel, not guessed.
//!
//! A path proves nothing: `/sys/fs/cgroup` may be the cgroup2 filesystem itself (v2), a tmpfs
//! holding one mount per v1 hierarchy, or that plus a cgroup2 mount beside them (`unified/`,
//! the hybrid layout systemd used for years). `statfs(2)` says what a directory really is: its
//! `f_type` is `CGROUP2_SUPER_MAGIC` for v2 and `CGROUP_SUPER_MAGIC` for a v1 hierarchy. The
//! mount table (`/proc/self/mountinfo`) then tells, for each v1 mount, which controllers it
//! carries (its super options: `rw,memory`, or `rw,cpu,cpuacct` when two share one).
//!
//! Both questions go through [`FsTypes`], so the tests can present a temporary directory as
//! any of the three layouts; [`Kernel`] asks the real kernel.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use nix::sys::statfs::statfs;

use super::fs::Kernel;
use crate::error::{Error, Result};
use crate::mountinfo;

/// `f_type` of the cgroup2 filesystem (`man 2 statfs`; "cgrp" in ASCII).
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `f_type` of a cgroup v1 hierarchy.
pub const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
/// `f_type` of tmpfs, which holds the v1 mounts.
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The v1 controllers the kernel has; anything else in a mount's options is an option.
const V1_CONTROLLERS: [&str; 14] = [
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// What kind of filesystem `statfs(2)` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    /// cgroup v2.
    Cgroup2,
    /// A cgroup v1 hierarchy.
    Cgroup1,
    /// tmpfs.
    Tmpfs,
    /// Anything else, with its magic number.
    Other(i64),
}

impl FsType {
    /// The type a `statfs(2)` `f_type` stands for.
    pub fn from_magic(magic: i64) -> FsType {
        match magic {
            CGROUP2_SUPER_MAGIC => FsType::Cgroup2,
            CGROUP_SUPER_MAGIC => FsType::Cgroup1,
            TMPFS_MAGIC => FsType::Tmpfs,
            other => FsType::Other(other),
        }
    }
}

/// What detection asks the system about filesystems.
pub trait FsTypes {
    /// `statfs(2)`: the type of the filesystem that holds `path`.
    fn fs_type(&self, path: &Path) -> Result<FsType>;
    /// The mount table, in the format of `/proc/self/mountinfo` (`man 5 proc_pid_mountinfo`).
    fn mountinfo(&self) -> Result<String>;
}

impl FsTypes for Kernel {
    fn fs_type(&self, path: &Path) -> Result<FsType> {
        let stat = statfs(path).map_err(|errno| Error::sys("statfs", path.display(), errno))?;
        Ok(FsType::from_magic(stat.filesystem_type().0 as i64))
    }

    fn mountinfo(&self) -> Result<String> {
        mountinfo::read()
    }
}

/// The cgroup2 mount: one hierarchy for every controller it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unified {
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The controllers it has (its root's `cgroup.controllers`).
    pub controllers: Vec<String>,
    /// Those its root hands down to children (its root's `cgroup.subtree_control`).
    pub enabled: Vec<String>,
}

/// One v1 hierarchy: a mount and the controllers attached to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    /// Where it is mounted.
    pub path: PathBuf,
    /// Its controllers (`cpu`, `cpuacct`), or a name for a hierarchy without any
    /// (`name=systemd`).
    pub controllers: Vec<String>,
}

/// The cgroups of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2 only.
    V2(Unified),
    /// cgroup v1 only: one mount per hierarchy.
    V1(Vec<V1Mount>),
    /// v1 hierarchies for the controllers, and a cgroup2 mount beside them (which usually has
    /// few or no controllers: a controller is in one hierarchy at a time).
    Hybrid {
        /// The v1 hierarchies.
        v1: Vec<V1Mount>,
        /// The cgroup2 mount.
        unified: Unified,
    },
}

impl Hierarchy {
    /// The v1 hierarchies (none on v2).
    pub fn v1_mounts(&self) -> &[V1Mount] {
        match self {
            Hierarchy::V2(_) => &[],
            Hierarchy::V1(mounts) | Hierarchy::Hybrid { v1: mounts, .. } => mounts,
        }
    }

    /// The cgroup2 mount, if there is one.
    pub fn unified(&self) -> Option<&Unified> {
        match self {
            Hierarchy::V2(unified) | Hierarchy::Hybrid { unified, .. } => Some(unified),
            Hierarchy::V1(_) => None,
        }
    }

    /// Where the v1 hierarchy carrying `controller` is mounted.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        v1_mount(self.v1_mounts(), controller)
    }
}

/// Where the v1 hierarchy carrying `controller` is mounted, in `mounts`.
pub fn v1_mount<'a>(mounts: &'a [V1Mount], controller: &str) -> Option<&'a Path> {
    let carries = |mount: &&V1Mount| mount.controllers.iter().any(|c| c == controller);
    mounts.iter().find(carries).map(|mount| mount.path.as_path())
}

/// `cgroup v2 at /sys/fs/cgroup (cpu memory pids)`, or the v1 mounts, one per line.
impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unified = |f: &mut fmt::Formatter<'_>, unified: &Unified| {
            let controllers = if unified.controllers.is_empty() {
                "no controllers".to_string()
            } else {
                unified.controllers.join(" ")
            };
            write!(f, "cgroup v2 at {} ({controllers})", unified.mount.display())
        };
        let v1 = |f: &mut fmt::Formatter<'_>, mounts: &[V1Mount]| {
            let mounts: Vec<String> = mounts
                .iter()
                .map(|mount| format!("{} at {}", mount.controllers.join(","), mount.path.display()))
                .collect();
            write!(f, "cgroup v1: {}", mounts.join(", "))
        };
        match self {
            Hierarchy::V2(u) => unified(f, u),
            Hierarchy::V1(mounts) => v1(f, mounts),
            Hierarchy::Hybrid { v1: mounts, unified: u } => {
                f.write_str("hybrid: ")?;
                v1(f, mounts)?;
                f.write_str("; and ")?;
                unified(f, u)
            }
        }
    }
}

// ANCHOR: detect
/// Finds out which cgroups are mounted at `root` (normally `/sys/fs/cgroup`).
pub fn detect(root: &Path, probe: &dyn FsTypes) -> Result<Hierarchy> {
    match probe.fs_type(root)? {
        // The cgroup2 filesystem itself: one hierarchy for every controller.
        FsType::Cgroup2 => return Ok(Hierarchy::V2(unified(root)?)),
        // A tmpfs, or a single v1 hierarchy: look at what is mounted on and below it.
        FsType::Tmpfs | FsType::Cgroup1 => {}
        FsType::Other(magic) => return Err(not_cgroups(root, magic)),
    }
    let mut v1: Vec<V1Mount> = Vec::new();
    let mut unified_mount = None;
    for (path, controllers) in cgroup_mounts(&probe.mountinfo()?, root) {
        // Trust the filesystem, not the mount table's word: something may be mounted over it.
        match probe.fs_type(&path)? {
            FsType::Cgroup1 if !controllers.is_empty() => {
                // The same hierarchy may be mounted twice; a controller lives in one.
                let known = |c: &String| v1.iter().any(|m| m.controllers.contains(c));
                if !controllers.iter().any(known) {
                    v1.push(V1Mount { path, controllers });
                }
            }
            FsType::Cgroup2 if unified_mount.is_none() => unified_mount = Some(path),
            _ => {}
        }
    }
    match (v1.is_empty(), unified_mount) {
        (true, None) => Err(not_cgroups(root, TMPFS_MAGIC)),
        (true, Some(mount)) => Ok(Hierarchy::V2(unified(&mount)?)),
        (false, None) => Ok(Hierarchy::V1(v1)),
        (false, Some(mount)) => Ok(Hierarchy::Hybrid { v1, unified: unified(&mount)? }),
    }
}
// ANCHOR_END: detect

fn not_cgroups(root: &Path, magic: i64) -> Error {
    Error::Invalid(format!(
        "no cgroups at {}: it is not a cgroup filesystem (statfs f_type {magic:#x}) and has no \
         cgroup mounts below it (`findmnt -t cgroup2,cgroup` shows where this host has them)",
        root.display()
    ))
}

/// The cgroup2 mount at `mount`, with its controllers.
fn unified(mount: &Path) -> Result<Unified> {
    let words = |file: &str| -> Result<Vec<String>> {
        let path = mount.join(file);
        let text =
            std::fs::read_to_string(&path).map_err(|error| Error::io("read", &path, &error))?;
        Ok(text.split_whitespace().map(str::to_string).collect())
    };
    Ok(Unified {
        mount: mount.to_path_buf(),
        controllers: words("cgroup.controllers")?,
        enabled: words("cgroup.subtree_control")?,
    })
}

/// The cgroup mounts at or below `root` in a mount table (the text of `/proc/self/mountinfo`),
/// each with its v1 controllers (none for cgroup2), in the order mounted.
///
/// A line: `35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory` — the
/// super options (after the type and the source) name a v1 hierarchy's controllers.
pub fn cgroup_mounts(table: &str, root: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let mut mounts = Vec::new();
    let mut seen = BTreeSet::new();
    for mount in mountinfo::parse(table) {
        let path = mount.mount_point;
        if !matches!(mount.fstype.as_str(), "cgroup" | "cgroup2") || !path.starts_with(root) {
            continue;
        }
        if !seen.insert(path.clone()) {
            continue;
        }
        let controllers = if mount.fstype == "cgroup" {
            mount
                .super_options
                .split(',')
                .filter(|option| V1_CONTROLLERS.contains(option) || option.starts_with("name="))
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        mounts.push((path, controllers));
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTypes;
    use super::*;

    /// This machine's layout (Debian 12 under a hybrid systemd), rooted in `root`.
    fn hybrid_mountinfo(root: &Path) -> String {
        let r = root.display();
        format!(
            "23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw\n\
             31 23 0:28 / {r} rw,relatime - tmpfs tmpfs rw,mode=755\n\
             32 31 0:29 / {r}/cpu rw,relatime - cgroup cgroup rw,cpu\n\
             33 31 0:30 / {r}/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
             35 31 0:32 / {r}/memory rw,relatime - cgroup cgroup rw,memory\n\
             39 31 0:36 / {r}/pids rw,relatime - cgroup cgroup rw,pids\n\
             40 31 0:37 / {r}/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
             41 31 0:38 / {r}/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
        )
    }

    fn unified_files(dir: &Path, controllers: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
    }

    #[test]
    fn v2_is_the_cgroup2_filesystem_itself() {
        let tmp = tempfile::tempdir().unwrap();
        unified_files(tmp.path(), "cpuset cpu io memory pids\n");
        let probe = FakeTypes::new(&[(tmp.path(), FsType::Cgroup2)], "");
        let Hierarchy::V2(unified) = detect(tmp.path(), &probe).unwrap() else { panic!() };
        assert_eq!(unified.controllers, ["cpuset", "cpu", "io", "memory", "pids"]);
        assert!(unified.enabled.is_empty());
    }

    #[test]
    fn v1_is_a_tmpfs_of_hierarchies_named_by_the_mount_table() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let mountinfo = format!(
            "31 23 0:28 / {0} rw - tmpfs tmpfs rw\n\
             32 31 0:29 / {0}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             35 31 0:32 / {0}/memory rw - cgroup cgroup rw,memory\n\
             36 31 0:33 / {0}/memory rw - cgroup cgroup rw,memory\n",
            r.display()
        );
        let probe = FakeTypes::new(
            &[
                (r, FsType::Tmpfs),
                (&r.join("cpu,cpuacct"), FsType::Cgroup1),
                (&r.join("memory"), FsType::Cgroup1),
            ],
            &mountinfo,
        );
        let hierarchy = detect(r, &probe).unwrap();
        let Hierarchy::V1(mounts) = &hierarchy else { panic!("{hierarchy:?}") };
        assert_eq!(mounts.len(), 2);
        assert_eq!(hierarchy.v1_mount("cpuacct"), Some(r.join("cpu,cpuacct").as_path()));
        assert_eq!(hierarchy.v1_mount("memory"), Some(r.join("memory").as_path()));
        assert_eq!(hierarchy.v1_mount("pids"), None);
    }

    #[test]
    fn hybrid_is_v1_with_a_cgroup2_mount_beside() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        unified_files(&r.join("unified"), "hugetlb\n");
        let mut types = vec![(r.to_path_buf(), FsType::Tmpfs)];
        for v1 in ["cpu", "cpuacct", "memory", "pids", "systemd"] {
            types.push((r.join(v1), FsType::Cgroup1));
        }
        types.push((r.join("unified"), FsType::Cgroup2));
        let types: Vec<(&Path, FsType)> = types.iter().map(|(p, t)| (p.as_path(), *t)).collect();
        let probe = FakeTypes::new(&types, &hybrid_mountinfo(r));
        let hierarchy = detect(r, &probe).unwrap();
        let Hierarchy::Hybrid { v1, unified } = &hierarchy else { panic!("{hierarchy:?}") };
        let names: Vec<&str> = v1.iter().map(|m| m.controllers[0].as_str()).collect();
        assert_eq!(names, ["cpu", "cpuacct", "memory", "pids", "name=systemd"]);
        assert_eq!(unified.controllers, ["hugetlb"]);
        assert_eq!(
            hierarchy.to_string().replace(&r.display().to_string(), "R"),
            "hybrid: cgroup v1: cpu at R/cpu, cpuacct at R/cpuacct, memory at R/memory, pids \
             at R/pids, name=systemd at R/systemd; and cgroup v2 at R/unified (hugetlb)"
        );
    }

    #[test]
    fn statfs_overrides_the_mount_table() {
        // The mount table says cgroup, but something else is mounted over it now.
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let probe = FakeTypes::new(
            &[(r, FsType::Tmpfs), (&r.join("memory"), FsType::Tmpfs)],
            &format!("35 31 0:32 / {}/memory rw - cgroup cgroup rw,memory\n", r.display()),
        );
        let error = detect(r, &probe).unwrap_err().to_string();
        assert!(error.starts_with("no cgroups at"), "{error}");
    }

    #[test]
    fn something_else_is_not_cgroups() {
        let tmp = tempfile::tempdir().unwrap();
        let probe = FakeTypes::new(&[(tmp.path(), FsType::Other(0xef53))], "");
        let error = detect(tmp.path(), &probe).unwrap_err().to_string();
        assert!(error.contains("statfs f_type 0xef53"), "{error}");
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let mounts = cgroup_mounts(
            "1 2 0:3 / /cg/with\\040space rw - cgroup cgroup rw,pids\n",
            Path::new("/cg"),
        );
        assert_eq!(mounts, [(PathBuf::from("/cg/with space"), vec!["pids".to_string()])]);
    }
}
