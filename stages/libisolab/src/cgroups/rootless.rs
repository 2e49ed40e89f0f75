//! Limits without root: a cgroup v2 subtree *delegated* to the user.
//!
//! Only root may create cgroups anywhere. But on v2 a cgroup directory can be handed to a user
//! — chowned to them, with its `cgroup.procs` and `cgroup.subtree_control` — and then the user
//! may create cgroups below it and move their own processes between them (`man 7 cgroups`,
//! "Cgroup delegation"). systemd does this for a user's `user@UID.service`, and for a scope
//! or service started with `Delegate=yes`. Moving a process also needs write access to the
//! common ancestor of where it is and where it goes, so the runtime itself must run inside
//! the delegated subtree: `systemd-run --user --scope -p Delegate=yes stage3-cgroups …`.
//!
//! v1 has no safe delegation: rootless limits need v2.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::Uid;

use super::Hierarchy;
use crate::error::{Error, Result};

/// What to tell a user who has no delegated cgroup.
pub const HOW_TO_DELEGATE: &str = "run the runtime in a delegated systemd scope: `systemd-run \
     --user --scope -p Delegate=yes -- <command>`, or set Delegate=yes on the service that \
     starts it; or run as root";

/// The one line a user without a cgroup of their own hears on every run with `--cgroups
/// optional`. It is said on every run, so it is short; why, and what to do about it, is
/// `isolab doctor`'s to explain, once, at length.
pub const WITHOUT_LIMITS: &str =
    "warning: running without a cgroup, so without limits: `isolab doctor` says how to get them";

/// The cgroup of this process on v2 (the `0::` line of `/proc/self/cgroup`), relative to the
/// cgroup2 mount.
pub fn own_cgroup() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|error| Error::io("read", "/proc/self/cgroup", &error))?;
    parse_own_cgroup(&text).ok_or_else(|| {
        Error::Invalid("/proc/self/cgroup has no cgroup v2 line (0::/…)".to_string())
    })
}

/// The path in the `0::/path` line of a `/proc/<pid>/cgroup` text, without its leading `/`.
pub fn parse_own_cgroup(text: &str) -> Option<PathBuf> {
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    Some(PathBuf::from(path.trim().trim_start_matches('/')))
}

// ANCHOR: delegated
/// The top of the subtree delegated to `user` that holds `own` (this process's cgroup,
/// relative to `mount`): the highest ancestor of `own`, below the mount, owned by `user`,
/// whose `cgroup.procs` and `cgroup.subtree_control` are theirs too.
pub fn delegated_parent(mount: &Path, own: &Path, user: Uid) -> Result<PathBuf> {
    let owned = |dir: &Path| {
        ["", "cgroup.procs", "cgroup.subtree_control"].iter().all(|file| {
            std::fs::metadata(dir.join(file)).is_ok_and(|meta| meta.uid() == user.as_raw())
        })
    };
    let mut top = None;
    let mut dir = mount.join(own);
    while dir.starts_with(mount) && dir != mount && owned(&dir) {
        top = Some(dir.clone());
        dir = match dir.parent() {
            Some(parent) => parent.to_path_buf(),
            None => break,
        };
    }
    top.ok_or_else(|| {
        Error::Invalid(format!(
            "no cgroup is delegated to uid {user} here: this process runs in {}, which uid \
             {user} does not own; {HOW_TO_DELEGATE}",
            mount.join(own).display()
        ))
    })
}
// ANCHOR_END: delegated

/// Where a user's containers' cgroups go on this host, or why there is nowhere.
pub fn delegation(hierarchy: &Hierarchy, user: Uid) -> Result<PathBuf> {
    let Hierarchy::V2(unified) = hierarchy else {
        // The host's hierarchies are not named here: this is said on every run without root,
        // and `isolab doctor` shows them.
        return Err(Error::Invalid(
            "limits without root need cgroup v2, and this host's controllers are on cgroup v1, \
             which cannot be delegated to a user safely: run as root, or boot with \
             systemd.unified_cgroup_hierarchy=1 (`isolab doctor` shows this host's cgroups)"
                .to_string(),
        ));
    };
    delegated_parent(&unified.mount, &own_cgroup()?, user)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn own_cgroup_is_the_v2_line() {
        let text = "12:pids:/user.slice\n0::/user.slice/user-1000.slice/session-2.scope\n";
        assert_eq!(
            parse_own_cgroup(text),
            Some(PathBuf::from("user.slice/user-1000.slice/session-2.scope"))
        );
        assert_eq!(parse_own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn the_delegated_top_is_the_highest_owned_ancestor() {
        // Everything in a tempdir belongs to us, so the top is the first level below the mount.
        let tmp = tempfile::tempdir().unwrap();
        let own = Path::new("user.slice/user@1000.service/app.slice/run-1.scope");
        for dir in own.ancestors().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(tmp.path().join(dir)).unwrap();
            fs::write(tmp.path().join(dir).join("cgroup.procs"), "").unwrap();
            fs::write(tmp.path().join(dir).join("cgroup.subtree_control"), "").unwrap();
        }
        let me = Uid::effective();
        let top = delegated_parent(tmp.path(), own, me).unwrap();
        assert_eq!(top, tmp.path().join("user.slice"));

        // A level whose cgroup.procs we cannot write ends the delegated subtree.
        fs::remove_file(tmp.path().join("user.slice/cgroup.procs")).unwrap();
        let top = delegated_parent(tmp.path(), own, me).unwrap();
        assert_eq!(top, tmp.path().join("user.slice/user@1000.service"));
    }

    #[test]
    fn without_delegation_the_error_says_how_to_get_it() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("session-2.scope")).unwrap();
        let stranger = Uid::from_raw(Uid::effective().as_raw() + 1);
        let error = delegated_parent(tmp.path(), Path::new("session-2.scope"), stranger)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("no cgroup is delegated to uid"), "{error}");
        assert!(error.contains("systemd-run --user --scope -p Delegate=yes"), "{error}");
    }

    #[test]
    fn v1_cannot_be_delegated() {
        let error = delegation(&Hierarchy::V1(Vec::new()), Uid::from_raw(1000)).unwrap_err();
        assert!(error.to_string().starts_with("limits without root need cgroup v2"));
    }

    #[test]
    fn the_error_and_the_warning_leave_the_host_s_cgroups_to_doctor() {
        // Nine v1 hierarchies made this a 500-character line, on every run.
        let mounts: Vec<super::super::V1Mount> = (0..9)
            .map(|n| super::super::V1Mount {
                path: PathBuf::from(format!("/sys/fs/cgroup/controller{n}")),
                controllers: vec![format!("controller{n}")],
            })
            .collect();
        let error = delegation(&Hierarchy::V1(mounts), Uid::from_raw(1000)).unwrap_err();
        let error = error.to_string();
        assert!(!error.contains("/sys/fs/cgroup/controller"), "{error}");
        assert!(error.ends_with("(`isolab doctor` shows this host's cgroups)"), "{error}");
        // With the longest prefix a stage gives it.
        assert!(format!("stage4-overlay: {WITHOUT_LIMITS}").len() < 120);
        assert!(WITHOUT_LIMITS.contains("without limits") && WITHOUT_LIMITS.contains("doctor"));
    }
}
