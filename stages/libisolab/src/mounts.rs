//! The mount namespace: a private copy of the mount table, and a new root made with
//! `pivot_root(2)` instead of `chroot(2)`.
//!
//! The steps are data ([`Step`]): [`container_steps`] lists every `mount`, `mkdir`, `symlink`,
//! `pivot_root` and `umount2` the child will make, `Display` prints them (that is
//! `--dry-run`), and [`apply`] runs the very same list one by one. The dry run cannot disagree
//! with the real run, because there is only one list.
//!
//! Order matters, and each step says why (`man 7 mount_namespaces`, `man 2 pivot_root`):
//! first make every mount private, so that nothing we do propagates back to the host; then
//! make the rootfs a mount point (pivot_root needs one) and mount `/proc`, `/sys`, `/dev`
//! and `/tmp` inside it *while the host's tree is still reachable* (bind mounts of host
//! device nodes need it, and a user namespace may mount proc only where a full proc is already
//! visible); last, swap the roots and detach the old one, so nothing above `/` remains.

use std::fmt;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result, SysResultExt};

/// One call the child makes to build its filesystem view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `mount(source, target, fstype, flags, data)` (`man 2 mount`).
    Mount {
        /// Device, directory to bind, or a name for a pseudo filesystem.
        source: Option<PathBuf>,
        /// Where it goes.
        target: PathBuf,
        /// `proc`, `sysfs`, `tmpfs`, `devpts`, or none for binds and propagation changes.
        fstype: Option<&'static str>,
        /// `MS_*` flags.
        flags: MsFlags,
        /// Filesystem options (`mode=755`).
        data: Option<String>,
        /// Why, in words.
        why: &'static str,
    },
    /// `mkdir(path, mode)` (inside a tmpfs we mounted: we never write to the rootfs).
    MakeDir {
        /// The directory.
        path: PathBuf,
        /// Its mode (set with chmod, so the umask does not change it).
        mode: u32,
        /// Why.
        why: &'static str,
    },
    /// An empty file to bind a device node onto (`open(O_CREAT)`).
    MakeFile {
        /// The file.
        path: PathBuf,
    },
    /// `symlink(target, link)`.
    Symlink {
        /// What the link points to.
        target: &'static str,
        /// The link.
        link: PathBuf,
    },
    /// `chdir(new_root); pivot_root(".", ".")` (`man 2 pivot_root`, the "." "." form).
    PivotRoot {
        /// The new root: a mount point.
        new_root: PathBuf,
    },
    /// `umount2(target, flags)`.
    Umount {
        /// What to unmount.
        target: PathBuf,
        /// `MNT_DETACH`.
        flags: MntFlags,
        /// Why.
        why: &'static str,
    },
    /// `chdir(path)`.
    Chdir {
        /// Where to.
        path: PathBuf,
    },
    /// `chroot(path); chdir("/")`: stage 1's way, when there is no mount namespace.
    Chroot {
        /// The new root.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
}

/// How `/proc` and `/sys` can be had, which depends on the namespaces around them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Is there a user namespace? Then the kernel lets us mount only what our namespaces own.
    pub user_ns: bool,
    /// A new pid namespace: a fresh proc shows only its processes.
    pub pid_ns: bool,
    /// A new net namespace: a fresh sysfs shows only its network devices.
    pub net_ns: bool,
}

/// The host device nodes a container gets, bind-mounted (`mknod` is refused in a user
/// namespace, a bind mount of the host's node is not).
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The directories the rootfs must have: the mount points of [`container_steps`].
pub const MOUNT_POINTS: [&str; 4] = ["proc", "sys", "dev", "tmp"];

const PSEUDO: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

// ANCHOR: steps
/// Every step that builds the container's filesystem view on `rootfs`, in order.
pub fn container_steps(rootfs: &Path, options: Options) -> Vec<Step> {
    let inside = |path: &str| rootfs.join(path);
    let mount =
        |source: &str, target: PathBuf, fstype, flags, data: Option<&str>, why| Step::Mount {
            source: Some(PathBuf::from(source)),
            target,
            fstype,
            flags,
            data: data.map(String::from),
            why,
        };
    let mut steps = vec![
        // LAB stage2/private-mounts BEGIN: no mount event travels between us and the host
        // 1. Before anything: our copy of the mount table must not share events with the
        //    host's. On systemd hosts `/` is MS_SHARED, and every mount below would appear on
        //    the host too (and the detach of the old root would unmount the host's!).
        Step::Mount {
            source: None,
            target: PathBuf::from("/"),
            fstype: None,
            flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            data: None,
            why: "make every mount private: nothing propagates to or from the host",
        },
        // LAB END
        // 2. pivot_root needs the new root to be a mount point: bind it onto itself.
        mount(
            &rootfs.display().to_string(),
            rootfs.to_path_buf(),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            "make the rootfs a mount point (pivot_root needs one)",
        ),
    ];

    // 3. /proc for the new pid namespace. A user namespace may mount proc only for a pid
    //    namespace it owns; without one, bind the host's.
    // LAB stage2/proc BEGIN: a /proc for the new pid namespace
    if options.pid_ns || !options.user_ns {
        steps.push(mount(
            "proc",
            inside("proc"),
            Some("proc"),
            PSEUDO,
            None,
            "the processes of our pid namespace",
        ));
    } else {
        steps.push(mount(
            "/proc",
            inside("proc"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            "the host's /proc (no pid namespace of our own to mount one for)",
        ));
    }
    // LAB END
    // 4. /sys, read-only. sysfs shows the network devices of the mounter's net namespace, and
    //    a user namespace may mount it only for a net namespace it owns.
    if options.net_ns || !options.user_ns {
        steps.push(mount(
            "sysfs",
            inside("sys"),
            Some("sysfs"),
            PSEUDO | MsFlags::MS_RDONLY,
            None,
            "read-only: the kernel's knobs stay the host's",
        ));
    } else {
        steps.push(mount(
            "/sys",
            inside("sys"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            "the host's /sys (no net namespace of our own to mount one for)",
        ));
        steps.push(mount(
            "/sys",
            inside("sys"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | PSEUDO,
            None,
            "then read-only",
        ));
    }
    // 5. A minimal /dev on a tmpfs of our own: the host's device nodes we allow, bound one by one.
    steps.push(mount(
        "tmpfs",
        inside("dev"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=755,size=65536k"),
        "an empty /dev: no disks, no host terminals",
    ));
    for device in DEVICES {
        steps.push(Step::MakeFile { path: inside("dev").join(device) });
        steps.push(mount(
            &format!("/dev/{device}"),
            inside("dev").join(device),
            None,
            MsFlags::MS_BIND,
            None,
            "the host's node (mknod is refused in a user namespace)",
        ));
    }
    steps.push(Step::MakeDir {
        path: inside("dev/pts"),
        mode: 0o755,
        why: "for a devpts of our own",
    });
    steps.push(mount(
        "devpts",
        inside("dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
        "new terminals, invisible to the host's",
    ));
    steps.push(Step::Symlink { target: "pts/ptmx", link: inside("dev/ptmx") });
    steps.push(Step::MakeDir { path: inside("dev/shm"), mode: 0o1777, why: "POSIX shared memory" });
    steps.push(mount(
        "shm",
        inside("dev/shm"),
        Some("tmpfs"),
        PSEUDO,
        Some("mode=1777,size=65536k"),
        "POSIX shared memory of our own",
    ));
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink { target, link: inside("dev").join(link) });
    }
    // 6. A /tmp of our own, so that the command never writes the rootfs's.
    steps.push(mount(
        "tmpfs",
        inside("tmp"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
        "a /tmp of our own",
    ));
    // 7. Swap the roots: the rootfs becomes /, the old / is stacked on top of it …
    // LAB stage2/pivot-root BEGIN: swap the roots, then detach the old one
    steps.push(Step::PivotRoot { new_root: rootfs.to_path_buf() });
    // … and is detached: nothing is left above the new / to climb to.
    steps.push(Step::Umount {
        target: PathBuf::from("."),
        flags: MntFlags::MNT_DETACH,
        why: "detach the old root: the host's tree is gone from this namespace",
    });
    // LAB END
    steps.push(Step::Chdir { path: PathBuf::from("/") });
    steps
}
// ANCHOR_END: steps

/// Without a mount namespace there is nothing to pivot and nothing may be mounted (it would
/// be mounted on the host): fall back to stage 1's `chroot`.
pub fn chroot_steps(rootfs: &Path) -> Vec<Step> {
    vec![Step::Chroot {
        path: rootfs.to_path_buf(),
        why: "no mount namespace: chroot as in stage 1, and no /proc, /sys, /dev, /tmp mounts",
    }]
}

// ANCHOR: apply
/// Runs `steps` in order, in the child; stops at the first failure.
pub fn apply(steps: &[Step]) -> Result<()> {
    steps.iter().try_for_each(apply_one)
}

fn apply_one(step: &Step) -> Result<()> {
    match step {
        Step::Mount { source, target, fstype, flags, data, .. } => {
            nix::mount::mount(source.as_deref(), target, *fstype, *flags, data.as_deref())
                .sys("mount", format!("{} on {}", source_name(source), target.display()))
                .map_err(mount_hint)
        }
        Step::MakeDir { path, mode, .. } => fs::DirBuilder::new()
            .mode(*mode)
            .create(path)
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(*mode)))
            .map_err(|e| Error::io("mkdir", path, &e)),
        Step::MakeFile { path } => {
            fs::File::create(path).map(drop).map_err(|e| Error::io("open", path, &e))
        }
        Step::Symlink { target, link } => {
            std::os::unix::fs::symlink(target, link).map_err(|e| Error::io("symlink", link, &e))
        }
        Step::PivotRoot { new_root } => {
            // LAB stage2/pivot-root BEGIN: pivot_root(".", ".") from inside the rootfs
            nix::unistd::chdir(new_root).sys("chdir", new_root.display())?;
            // pivot_root(".", "."): the new root is the working directory, and the old root
            // is stacked on top of it, at "." too (man 2 pivot_root, NOTES): no directory for
            // the old root is needed inside the rootfs, which we may not be able to write.
            nix::unistd::pivot_root(".", ".").sys("pivot_root", new_root.display()).map_err(
                |error| match error.errno() {
                    Some(Errno::EINVAL) => error.hint("is / a shared mount? make it private first"),
                    Some(Errno::EPERM) => error.hint(
                        "pivot_root needs CAP_SYS_ADMIN in the mount namespace's user namespace",
                    ),
                    _ => error,
                },
            )
            // LAB END
        }
        Step::Umount { target, flags, .. } => {
            nix::mount::umount2(target, *flags).sys("umount2", target.display())
        }
        Step::Chdir { path } => nix::unistd::chdir(path).sys("chdir", path.display()),
        Step::Chroot { path, .. } => crate::chroot::enter(path),
    }
}
// ANCHOR_END: apply

fn source_name(source: &Option<PathBuf>) -> String {
    source.as_ref().map(|s| s.display().to_string()).unwrap_or_else(|| "none".to_string())
}

fn mount_hint(error: Error) -> Error {
    match error.errno() {
        Some(Errno::EPERM) => error.hint(
            "mounting needs CAP_SYS_ADMIN in the user namespace that owns the mount namespace, \
             and some filesystems (proc, sysfs) only for namespaces that user namespace owns",
        ),
        Some(Errno::ENOENT) => error.hint("the mount point must exist inside the rootfs"),
        // mount(2) has one errno for every reason a filesystem refuses its source or options;
        // the filesystem writes the reason to the kernel log.
        Some(Errno::EINVAL) => error.hint(
            "the filesystem refused this source or these options; the kernel log says why \
             (`dmesg | tail`)",
        ),
        _ => error,
    }
}

/// Checks, before anything runs, that `rootfs` has the directories the steps mount on.
pub fn check_mount_points(rootfs: &Path) -> Result<()> {
    for dir in MOUNT_POINTS {
        let path = rootfs.join(dir);
        if !path.is_dir() {
            return Err(Error::Invalid(format!(
                "rootfs {} has no /{dir} directory to mount {dir} on: create it (mkdir {}) or \
                 rebuild the rootfs with `rootfs-builder busybox`",
                rootfs.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

// ANCHOR: reachable
/// Checks that host user `uid` (group `gid`) can reach `rootfs`: search permission on every
/// directory from `/` down to it. Root inside a user namespace is an ordinary user outside,
/// and the kernel checks the path of every mount source with those ids.
pub fn check_reachable(rootfs: &Path, uid: u32, gid: u32) -> Result<()> {
    for dir in rootfs.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let Ok(metadata) = fs::metadata(dir) else { continue };
        let mode = metadata.mode();
        let bit = if metadata.uid() == uid {
            0o100
        } else if metadata.gid() == gid {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Err(Error::Invalid(format!(
                "rootfs {} cannot be reached from the user namespace: {} is mode {:04o} and \
                 root inside is uid {uid} outside, which may not enter it: `chmod o+x {}`, or \
                 leave `user` out of --ns",
                rootfs.display(),
                dir.display(),
                mode & 0o7777,
                dir.display()
            )));
        }
    }
    Ok(())
}
// ANCHOR_END: reachable

/// `MS_BIND|MS_REC`, as the man page writes flags.
pub fn flag_names(flags: MsFlags) -> String {
    const NAMES: [(MsFlags, &str); 10] = [
        (MsFlags::MS_REMOUNT, "MS_REMOUNT"),
        (MsFlags::MS_BIND, "MS_BIND"),
        (MsFlags::MS_REC, "MS_REC"),
        (MsFlags::MS_PRIVATE, "MS_PRIVATE"),
        (MsFlags::MS_RDONLY, "MS_RDONLY"),
        (MsFlags::MS_NOSUID, "MS_NOSUID"),
        (MsFlags::MS_NODEV, "MS_NODEV"),
        (MsFlags::MS_NOEXEC, "MS_NOEXEC"),
        (MsFlags::MS_SHARED, "MS_SHARED"),
        (MsFlags::MS_SLAVE, "MS_SLAVE"),
    ];
    let names: Vec<&str> =
        NAMES.iter().filter(|(flag, _)| flags.contains(*flag)).map(|(_, name)| *name).collect();
    if names.is_empty() {
        "0".to_string()
    } else {
        names.join("|")
    }
}

fn quoted(value: Option<&str>) -> String {
    value.map(|v| format!("\"{v}\"")).unwrap_or_else(|| "NULL".to_string())
}

impl Step {
    /// Why the step is there, in words (the dry run prints it as a comment).
    pub fn why(&self) -> Option<&'static str> {
        match self {
            Step::Mount { why, .. }
            | Step::MakeDir { why, .. }
            | Step::Umount { why, .. }
            | Step::Chroot { why, .. } => Some(why),
            Step::PivotRoot { .. } => Some("the rootfs becomes /, the old / is stacked on it"),
            Step::MakeFile { .. } | Step::Symlink { .. } | Step::Chdir { .. } => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Mount { source, target, fstype, flags, data, .. } => write!(
                f,
                "mount({}, \"{}\", {}, {}, {})",
                quoted(source.as_ref().map(|s| s.to_str().unwrap_or("?"))),
                target.display(),
                quoted(*fstype),
                flag_names(*flags),
                quoted(data.as_deref())
            ),
            Step::MakeDir { path, mode, .. } => {
                write!(f, "mkdir(\"{}\", {mode:04o})", path.display())
            }
            Step::MakeFile { path } => write!(f, "open(\"{}\", O_CREAT)", path.display()),
            Step::Symlink { target, link } => {
                write!(f, "symlink(\"{target}\", \"{}\")", link.display())
            }
            Step::PivotRoot { new_root } => {
                write!(f, "chdir(\"{}\"); pivot_root(\".\", \".\")", new_root.display())
            }
            Step::Umount { target, .. } => {
                write!(f, "umount2(\"{}\", MNT_DETACH)", target.display())
            }
            Step::Chdir { path } => write!(f, "chdir(\"{}\")", path.display()),
            Step::Chroot { path, .. } => write!(f, "chroot(\"{}\"); chdir(\"/\")", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Options = Options { user_ns: true, pid_ns: true, net_ns: true };

    #[test]
    fn private_first_pivot_and_detach_last() {
        let steps = container_steps(Path::new("/r"), ALL);
        assert_eq!(steps[0].to_string(), "mount(NULL, \"/\", NULL, MS_REC|MS_PRIVATE, NULL)");
        let n = steps.len();
        assert!(matches!(steps[n - 3], Step::PivotRoot { .. }));
        assert!(matches!(steps[n - 2], Step::Umount { .. }));
    }

    #[test]
    fn user_namespace_without_pid_binds_the_hosts_proc() {
        let options = Options { user_ns: true, pid_ns: false, net_ns: true };
        let text: Vec<String> =
            container_steps(Path::new("/r"), options).iter().map(Step::to_string).collect();
        assert!(
            text[2].starts_with("mount(\"/proc\", \"/r/proc\", NULL, MS_BIND|MS_REC"),
            "{}",
            text[2]
        );
    }

    #[test]
    fn mount_points_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["sys", "dev", "tmp"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let error = check_mount_points(dir.path()).unwrap_err().to_string();
        assert!(error.contains("has no /proc directory"), "{error}");
        fs::create_dir(dir.path().join("proc")).unwrap();
        check_mount_points(dir.path()).unwrap();
    }

    #[test]
    fn closed_parent_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let error = check_reachable(&rootfs, 100_000, 100_000).unwrap_err().to_string();
        assert!(error.contains(&format!("{} is mode 0700", dir.path().display())), "{error}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        check_reachable(&rootfs, 100_000, 100_000).unwrap();
    }
}
