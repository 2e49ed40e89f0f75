//! Resource isolation: is this process under a memory or pids limit?
//!
//! Limits are cgroups' job (`man 7 cgroups`): a process belongs to one cgroup per hierarchy,
//! listed in `/proc/self/cgroup`, and a limit set on that cgroup *or any ancestor* applies to
//! it. Without one, a sandboxed process can fork-bomb the host or eat all its memory. The
//! probe walks its cgroups from the leaf up to the root of each mounted hierarchy and reads:
//!
//! | version | memory                  | pids       |
//! |---------|-------------------------|------------|
//! | v2      | `memory.max`            | `pids.max` |
//! | v1      | `memory.limit_in_bytes` | `pids.max` |
//!
//! The mounts come from `/proc/self/mountinfo`, not from guessing `/sys/fs/cgroup/...`: v1
//! hierarchies may be co-mounted (`cpu,cpuacct`) and anything may be mounted anywhere.
//!
//! Everything below [`resources`] is a pure function over text and a root directory, so the
//! tests run on fake trees, and stage 3 can grow the same walk for cpu and io.

use std::fs;
use std::path::{Path, PathBuf};

use libisolab::mountinfo;

use crate::{Check, CheckId, Status};

/// Which cgroup version a hierarchy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller (or group of controllers): `cgroup` in mountinfo.
    V1,
    /// The unified hierarchy: `cgroup2` in mountinfo.
    V2,
}

/// A mounted cgroup hierarchy, from one line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// v1 or v2.
    pub version: Version,
    /// Where it is mounted (field 5).
    pub mount_point: PathBuf,
    /// Which cgroup of the hierarchy appears at the mount point (field 4; `/` usually).
    pub root: PathBuf,
    /// v1: the controllers in the super options (`memory`, `cpu`, `name=systemd`); v2: empty.
    pub controllers: Vec<String>,
}

/// The cgroup mounts of a mount table (`/proc/self/mountinfo`, `man 5 proc_pid_mountinfo`).
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    mountinfo::parse(text)
        .filter_map(|mount| {
            let version = match mount.fstype.as_str() {
                "cgroup" => Version::V1,
                "cgroup2" => Version::V2,
                _ => return None,
            };
            let controllers = match version {
                Version::V2 => Vec::new(),
                Version::V1 => mount
                    .super_options
                    .split(',')
                    .filter(|option| is_controller(option))
                    .map(String::from)
                    .collect(),
            };
            Some(CgroupMount {
                version,
                mount_point: mount.mount_point,
                root: mount.root,
                controllers,
            })
        })
        .collect()
}

/// The super options of a v1 mount mix controllers with flags; these are the flags.
fn is_controller(option: &str) -> bool {
    !matches!(option, "rw" | "ro" | "noprefix" | "xattr" | "clone_children" | "cpuset_v2_mode")
        && !option.starts_with("release_agent=")
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path` (`man 7 cgroups`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// v1: the hierarchy's controllers; v2 (`0::/path`): empty.
    pub controllers: Vec<String>,
    /// The cgroup, relative to the hierarchy's root.
    pub path: PathBuf,
}

/// Parses `/proc/self/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _hierarchy = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
                path: PathBuf::from(path),
            })
        })
        .collect()
}

/// What a limit is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Bytes of memory.
    Memory,
    /// Number of processes (tasks).
    Pids,
}

/// A limit found in a cgroup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// What is limited.
    pub resource: Resource,
    /// The limit (bytes, or tasks).
    pub value: u64,
    /// The file it was read from, as seen by this process.
    pub file: PathBuf,
}

/// v1 reports "no memory limit" as the largest page-aligned counter value
/// (9223372036854771712 with 4 KiB pages); anything this big is no limit at all.
const V1_UNLIMITED: u64 = 1 << 62;

/// The limits that apply to a process in `memberships`, read from the hierarchies in `mounts`
/// under `fs_root` (`/` for real, a fake tree in tests). The tightest limit of each kind wins,
/// as the kernel enforces every ancestor's limit too.
pub fn find_limits(
    fs_root: &Path,
    mounts: &[CgroupMount],
    memberships: &[Membership],
) -> Vec<Limit> {
    let mut found: Vec<Limit> = Vec::new();
    for membership in memberships {
        for mount in mounts.iter().filter(|mount| serves(mount, membership)) {
            let files = limit_files(mount);
            let top =
                fs_root.join(mount.mount_point.strip_prefix("/").unwrap_or(&mount.mount_point));
            // The membership path is relative to the hierarchy's root; the mount shows the
            // hierarchy from `mount.root` on.
            let relative = membership.path.strip_prefix(&mount.root).unwrap_or(&membership.path);
            let mut dir = top.join(relative.strip_prefix("/").unwrap_or(relative));
            loop {
                for &(resource, name) in &files {
                    let file = dir.join(name);
                    if let Some(value) = read_limit(&file, mount.version, resource) {
                        let tighter = !found
                            .iter()
                            .any(|limit| limit.resource == resource && limit.value <= value);
                        if tighter {
                            found.retain(|limit| limit.resource != resource);
                            found.push(Limit { resource, value, file });
                        }
                    }
                }
                if dir == top || !dir.pop() || !dir.starts_with(&top) {
                    break;
                }
            }
        }
    }
    found.sort_by_key(|limit| limit.resource == Resource::Pids);
    found
}

/// The files a hierarchy may hold for the limits we look for.
fn limit_files(mount: &CgroupMount) -> Vec<(Resource, &'static str)> {
    let has = |name: &str| mount.controllers.iter().any(|c| c == name);
    match mount.version {
        Version::V2 => vec![(Resource::Memory, "memory.max"), (Resource::Pids, "pids.max")],
        Version::V1 => {
            let mut files = Vec::new();
            if has("memory") {
                files.push((Resource::Memory, "memory.limit_in_bytes"));
            }
            if has("pids") {
                files.push((Resource::Pids, "pids.max"));
            }
            files
        }
    }
}

/// Does this mount hold the hierarchy of this `/proc/self/cgroup` line?
fn serves(mount: &CgroupMount, membership: &Membership) -> bool {
    match mount.version {
        Version::V2 => membership.controllers.is_empty(),
        Version::V1 => membership.controllers.iter().any(|c| mount.controllers.contains(c)),
    }
}

/// Reads one limit file: `max` (v2, and v1 pids) or a huge v1 number mean no limit.
fn read_limit(file: &Path, version: Version, resource: Resource) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    let value: u64 = text.trim().parse().ok()?;
    let unlimited = version == Version::V1 && resource == Resource::Memory && value >= V1_UNLIMITED;
    (!unlimited).then_some(value)
}

/// `resources`: the limits this process is under, as seen from here.
pub fn resources() -> Check {
    let cgroup = fs::read_to_string("/proc/self/cgroup");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo");
    judge(Path::new("/"), cgroup.ok().as_deref(), mountinfo.ok().as_deref())
}

fn judge(fs_root: &Path, cgroup: Option<&str>, mountinfo: Option<&str>) -> Check {
    let id = CheckId::Resources;
    let unbounded = "no memory or pids limit: the host's resources are unbounded";
    let (Some(cgroup), Some(mountinfo)) = (cgroup, mountinfo) else {
        return Check::new(
            id,
            Status::Leaks,
            format!("{unbounded} (no /proc here shows a cgroup)"),
        );
    };
    let mounts = parse_mountinfo(mountinfo);
    if mounts.is_empty() {
        return Check::new(id, Status::Leaks, format!("{unbounded} (no cgroupfs is mounted here)"));
    }
    let limits = find_limits(fs_root, &mounts, &parse_proc_cgroup(cgroup));
    if limits.is_empty() {
        return Check::new(
            id,
            Status::Leaks,
            format!("{unbounded} (none set from this process's cgroups up to the root)"),
        );
    }
    let described: Vec<String> = limits.iter().map(describe).collect();
    Check::new(id, Status::Isolated, described.join(", "))
}

fn describe(limit: &Limit) -> String {
    match limit.resource {
        Resource::Memory => {
            let mib = limit.value / (1024 * 1024);
            format!("memory limited to {} bytes ({mib} MiB, {})", limit.value, limit.file.display())
        }
        Resource::Pids => format!("pids limited to {} ({})", limit.value, limit.file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    fn write(root: &Path, path: &str, text: &str) {
        let file = root.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, text).unwrap();
    }

    #[test]
    fn parses_cgroup_mounts() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(mounts[0].mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(mounts[3].controllers, ["name=systemd"]);
        assert_eq!(mounts[4].version, Version::V2);
        assert_eq!(mounts[4].controllers, Vec::<String>::new());
        let escaped = parse_mountinfo("1 2 0:3 / /my\\040cgroups rw - cgroup2 none rw\n");
        assert_eq!(escaped[0].mount_point, Path::new("/my cgroups"));
    }

    #[test]
    fn parses_proc_cgroup() {
        let lines = parse_proc_cgroup("4:memory:/a/b\n1:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(
            lines[0],
            Membership { controllers: vec!["memory".into()], path: "/a/b".into() }
        );
        assert_eq!(lines[1].controllers, ["cpu", "cpuacct"]);
        assert_eq!(lines[2], Membership { controllers: vec![], path: "/user.slice".into() });
    }

    #[test]
    fn v1_unlimited_memory_is_no_limit_but_an_ancestor_limit_counts() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
        write(root, "sys/fs/cgroup/memory/a/memory.limit_in_bytes", "9223372036854771712\n");
        write(root, "sys/fs/cgroup/memory/a/b/memory.limit_in_bytes", "9223372036854771712\n");
        write(root, "sys/fs/cgroup/pids/pids.max", "max\n");
        let cgroup = "8:pids:/\n4:memory:/a/b\n0::/\n";
        let check = judge(root, Some(cgroup), Some(HYBRID));
        assert_eq!(check.status, Status::Leaks, "{check:?}");
        assert!(check.evidence.starts_with("no memory or pids limit"), "{check:?}");

        // A limit on the parent applies to the child.
        write(root, "sys/fs/cgroup/memory/a/memory.limit_in_bytes", "268435456\n");
        let limits = find_limits(root, &parse_mountinfo(HYBRID), &parse_proc_cgroup(cgroup));
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].value, 268435456);
        assert_eq!(limits[0].file, root.join("sys/fs/cgroup/memory/a/memory.limit_in_bytes"));
        let check = judge(root, Some(cgroup), Some(HYBRID));
        assert_eq!(check.status, Status::Isolated);
        assert!(
            check.evidence.starts_with("memory limited to 268435456 bytes (256 MiB"),
            "{check:?}"
        );
    }

    #[test]
    fn v2_tightest_limit_wins() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        write(root, "sys/fs/cgroup/box/memory.max", "1073741824\n");
        write(root, "sys/fs/cgroup/box/pids.max", "100\n");
        write(root, "sys/fs/cgroup/box/inner/memory.max", "max\n");
        write(root, "sys/fs/cgroup/box/inner/pids.max", "20\n");
        let check = judge(root, Some("0::/box/inner\n"), Some(mountinfo));
        assert_eq!(check.status, Status::Isolated);
        assert!(check.evidence.contains("1024 MiB"), "{check:?}");
        assert!(check.evidence.contains("pids limited to 20 ("), "{check:?}");
    }

    #[test]
    fn nothing_visible_is_unbounded() {
        assert_eq!(judge(Path::new("/nonexistent"), None, None).status, Status::Leaks);
        let no_cgroupfs =
            judge(Path::new("/"), Some("0::/\n"), Some("1 0 8:1 / / rw - ext4 /dev/sda rw\n"));
        assert!(no_cgroupfs.evidence.ends_with("(no cgroupfs is mounted here)"), "{no_cgroupfs:?}");
    }
}
