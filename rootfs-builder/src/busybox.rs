//! `rootfs-builder busybox`: the smallest root filesystem worth entering.
//!
//! busybox is one binary holding some four hundred small programs ("applets": `sh`, `ls`,
//! `mount`, …). It decides which one to be from the name it was started under (`argv[0]`), so a
//! rootfs needs the binary once and a symlink per applet: `/bin/sh -> /bin/busybox`. It must be
//! the *static* build (Debian's `busybox-static`): a dynamically linked busybox would need the
//! loader and libc inside the rootfs too, which is the problem [`crate::copy`] solves and a
//! busybox rootfs is meant to avoid.
//!
//! Around it, what programs expect to find:
//!
//! - `/etc/passwd` and `/etc/group` (`man 5 passwd`, `man 5 group`) with root (0) and nobody
//!   (65534), so `id` and `ls -l` can put names on those numbers;
//! - empty mount points `/proc`, `/sys` and `/dev`, which later chapters mount over;
//! - `/tmp` with mode 1777: anyone may create files, the sticky bit lets only a file's owner
//!   delete it (`man 1 chmod`); `/root` with mode 0700, root's alone;
//! - the isolation probe at [`PROBE_PATH`], which every chapter runs inside its sandbox to
//!   report what it can see. It is an ordinary dynamically linked Rust program, so its loader
//!   and libraries are copied the loader's way ([`crate::elf_deps`], [`crate::install`]).

use std::ffi::OsStr;
use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::elf;
use crate::elf_deps::{HostFiles, Search};
use crate::error::{Error, IoResultExt, Result};
use crate::install::{self, Installer};
use crate::ld_cache::{self, LdCache};
use crate::{count, human_size};

/// Where Debian's packages put busybox, searched after `PATH`.
pub const WELL_KNOWN_PLACES: [&str; 2] = ["/usr/bin/busybox", "/bin/busybox"];

/// Where the probe goes inside the rootfs.
pub const PROBE_PATH: &str = "/isolab/probe";

/// The name of the probe binary that `cargo build --workspace` puts next to rootfs-builder.
pub const PROBE_BINARY: &str = "isolab-probe";

/// The environment variable that may name the probe binary.
pub const PROBE_ENV: &str = "ISOLAB_PROBE";

/// `/etc/passwd`: root, and nobody for processes that should own nothing (`man 5 passwd`).
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

/// `/etc/group`: root, and Debian's name for group 65534 (`man 5 group`).
pub const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The directories every busybox rootfs has, with their modes.
const DIRS: [(&str, u32); 11] = [
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("proc", 0o755),
    ("sys", 0o755),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
];

/// Finds busybox: `explicit` if given, else the first `busybox` on `path_var` (the value of
/// `PATH`), else [`WELL_KNOWN_PLACES`].
pub fn find_busybox(explicit: Option<&Path>, path_var: Option<&OsStr>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        fs::metadata(path).map_err(|error| {
            Error::io("stat", path, error).hint("--busybox must name a busybox binary")
        })?;
        return Ok(path.to_path_buf());
    }
    let on_path =
        path_var.into_iter().flat_map(std::env::split_paths).map(|dir| dir.join("busybox"));
    let well_known = WELL_KNOWN_PLACES.iter().map(PathBuf::from);
    on_path.chain(well_known).find(|path| path.is_file()).ok_or(Error::BusyboxNotFound)
}

/// Finds the probe binary: `explicit` (`--probe`), else `env` (the value of `ISOLAB_PROBE`),
/// else `isolab-probe` in `exe_dir`, the directory of the running rootfs-builder, where cargo
/// builds both.
pub fn find_probe(
    explicit: Option<&Path>,
    env: Option<&OsStr>,
    exe_dir: Option<&Path>,
) -> Result<PathBuf> {
    let named = match (explicit, env.filter(|value| !value.is_empty())) {
        (Some(path), _) => Some((path.to_path_buf(), "--probe must name the isolab-probe binary")),
        (None, Some(value)) => {
            Some((PathBuf::from(value), "ISOLAB_PROBE must name the isolab-probe binary"))
        }
        (None, None) => None,
    };
    if let Some((path, hint)) = named {
        fs::metadata(&path).map_err(|error| Error::io("stat", &path, error).hint(hint))?;
        return Ok(path);
    }
    let beside = exe_dir.map(|dir| dir.join(PROBE_BINARY));
    match beside {
        Some(path) if path.is_file() => Ok(path),
        _ => Err(Error::ProbeNotFound { tried: beside.into_iter().collect() }),
    }
}

/// What to build with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The static busybox binary on the host.
    pub busybox: PathBuf,
    /// The probe binary on the host.
    pub probe: PathBuf,
    /// Build into a directory that is not empty.
    pub force: bool,
}

/// What [`build`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The rootfs.
    pub root: PathBuf,
    /// How many applet symlinks point to `/bin/busybox`.
    pub applets: usize,
    /// How many libraries (the loader included) the probe needs.
    pub probe_libraries: usize,
    /// Total size of the rootfs's files.
    pub bytes: u64,
}

impl Built {
    /// `built busybox rootfs at R: 1 binary, 397 applets, probe with 3 libraries, 2.3 MiB`.
    pub fn summary(&self) -> String {
        format!(
            "built busybox rootfs at {}: 1 binary, {}, probe with {}, {}",
            self.root.display(),
            count(self.applets, "applet", "applets"),
            count(self.probe_libraries, "library", "libraries"),
            human_size(self.bytes)
        )
    }
}

// ANCHOR: build
/// Builds a busybox rootfs in `root` (created if missing; its parent must exist).
pub fn build(root: &Path, options: &Options) -> Result<Built> {
    // Everything that can fail on the host side is checked before the rootfs is touched.
    check_static(&options.busybox)?;
    let applets = list_applets(&options.busybox)?;
    let cache = LdCache::load(Path::new(ld_cache::PATH))?;
    let files = HostFiles::new();
    let probe = Search::new(&files, cache.as_ref()).resolve(&options.probe)?;

    install::prepare_root(root)?;
    let mut entries = fs::read_dir(root).io("opendir", root)?;
    if entries.next().is_some() && !options.force {
        return Err(Error::NotEmpty { path: root.to_path_buf() });
    }

    // Every path is resolved inside the rootfs first: with --force, it may already hold
    // symlinks, and an absolute one (`etc -> /etc`) must not lead our writes to the host.
    for (dir, mode) in DIRS {
        make_dir(root, Path::new(dir), mode)?;
    }
    place_file(&options.busybox, &in_root(root, "bin/busybox")?)?;
    for applet in &applets {
        if let Some(parent) = applet.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            make_dir(root, parent, 0o755)?;
        }
        let link = install::resolve_in_root(root, applet, false)?;
        remove_if_present(&link)?;
        // Absolute, so the link works from any directory (`usr/sbin/` is two levels down).
        symlink("/bin/busybox", &link).io("symlink", &link)?;
    }
    write_file(&in_root(root, "etc/passwd")?, PASSWD, 0o644)?;
    write_file(&in_root(root, "etc/group")?, GROUP, 0o644)?;

    make_dir(root, Path::new("isolab"), 0o755)?;
    place_file(&options.probe, &in_root(root, PROBE_PATH)?)?;
    let mut installer = Installer::new(root);
    for library in probe.libraries() {
        installer.install(&library.path)?;
    }

    Ok(Built {
        root: root.to_path_buf(),
        applets: applets.len(),
        probe_libraries: probe.libraries().len(),
        bytes: install::tree_size(root)?,
    })
}
// ANCHOR_END: build

/// Refuses a busybox that has a `PT_INTERP`: it would need a loader the rootfs does not have.
fn check_static(busybox: &Path) -> Result<()> {
    let info = elf::read(busybox)?;
    match info.interpreter {
        Some(interpreter) => {
            Err(Error::BusyboxDynamic { path: busybox.to_path_buf(), interpreter })
        }
        None => Ok(()),
    }
}

/// Asks busybox for its applets: `busybox --list-full` prints one path per line, relative to
/// the root (`bin/sh`, `usr/bin/awk`).
fn list_applets(busybox: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new(busybox).arg("--list-full").output().io("execve", busybox)?;
    if !output.status.success() {
        return Err(Error::Invalid(format!(
            "`{} --list-full` failed ({}): {} (is it busybox?)",
            busybox.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let mut applets = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines().map(str::trim) {
        if line.is_empty() || line == "bin/busybox" {
            continue;
        }
        let path = PathBuf::from(line);
        // A line like `/etc/x` or `../x` would put a link outside the rootfs.
        if !path.components().all(|component| matches!(component, Component::Normal(_))) {
            return Err(Error::Invalid(format!(
                "`{} --list-full` printed {line:?}, which is not a relative path (is it busybox?)",
                busybox.display()
            )));
        }
        applets.push(path);
    }
    applets.sort();
    applets.dedup();
    Ok(applets)
}

/// Where a file about to be (re)placed at `path` goes inside `root` (its last component is not
/// followed: an old symlink there is replaced, not written through).
fn in_root(root: &Path, path: &str) -> Result<PathBuf> {
    install::resolve_in_root(root, Path::new(path), false)
}

/// Creates `dir` inside `root` (and missing parents) and gives it exactly `mode`: the
/// process's umask would otherwise take bits away (`/tmp` needs all of 1777).
fn make_dir(root: &Path, dir: &Path, mode: u32) -> Result<()> {
    let path = install::resolve_in_root(root, dir, true)?;
    fs::create_dir_all(&path).io("mkdir", &path)?;
    fs::set_permissions(&path, Permissions::from_mode(mode)).io("chmod", &path)
}

/// Copies a host file to `to` with the host file's mode (replacing whatever is there).
fn place_file(from: &Path, to: &Path) -> Result<()> {
    remove_if_present(to)?;
    fs::copy(from, to)
        .map_err(|error| Error::io("copy", from, error).hint(format!("to {}", to.display())))?;
    let mode = fs::metadata(from).io("stat", from)?.permissions().mode() & 0o7777;
    fs::set_permissions(to, Permissions::from_mode(mode)).io("chmod", to)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    remove_if_present(path)?;
    fs::write(path, contents).io("write", path)?;
    fs::set_permissions(path, Permissions::from_mode(mode)).io("chmod", path)
}

/// Removes a file or symlink at `path` (with `--force`, the rootfs may have an old one).
fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result.io("unlink", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn host_busybox(test: &str) -> Option<PathBuf> {
        let found = find_busybox(None, std::env::var_os("PATH").as_deref()).ok();
        if found.is_none() {
            crate::skip(test, "no busybox on this machine (apt-get install busybox-static)");
        }
        found
    }

    #[test]
    fn builds_a_rootfs_with_applets_users_and_the_probe() {
        let Some(busybox) = host_busybox("builds_a_rootfs_with_applets_users_and_the_probe") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        // Any dynamically linked program stands in for the probe here.
        let options = Options { busybox, probe: PathBuf::from("/bin/true"), force: false };
        let built = build(&root, &options).unwrap();

        assert!(built.applets > 100, "{built:?}");
        assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
        assert!(root.join("bin/busybox").is_file());
        assert_eq!(fs::read_to_string(root.join("etc/passwd")).unwrap(), PASSWD);
        assert!(fs::read_to_string(root.join("etc/group")).unwrap().contains("nogroup:x:65534:"));
        let mode = |path: &str| fs::metadata(root.join(path)).unwrap().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("root"), 0o700);
        for dir in ["proc", "sys", "dev"] {
            assert!(root.join(dir).is_dir(), "{dir}");
        }
        assert!(root.join("isolab/probe").is_file());
        let interpreter = elf::read(Path::new("/bin/true")).unwrap().interpreter.unwrap();
        assert!(root.join(interpreter.trim_start_matches('/')).is_file(), "{interpreter}");
        assert!(built.summary().starts_with(&format!(
            "built busybox rootfs at {}: 1 binary, {} applets, probe with {} libraries, ",
            root.display(),
            built.applets,
            built.probe_libraries
        )));

        // Not again, unless forced.
        let error = build(&root, &options).unwrap_err().to_string();
        assert!(
            error.ends_with(
                "is not empty: pass --force to build into it anyway, or choose a new directory"
            ),
            "{error}"
        );
        build(&root, &Options { force: true, ..options }).unwrap();
    }

    /// With --force, an old rootfs may hold an absolute symlink. Writing /etc/passwd through
    /// `etc -> /somewhere` must land in the rootfs's /somewhere, never the host's.
    #[test]
    fn force_never_writes_through_a_symlink_to_the_host() {
        let Some(busybox) = host_busybox("force_never_writes_through_a_symlink_to_the_host") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("etc")).unwrap();
        symlink(outside.join("bin"), root.join("bin")).unwrap();
        let options = Options { busybox, probe: PathBuf::from("/bin/true"), force: true };
        build(&root, &options).unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside");
        let inside = root.join(outside.strip_prefix("/").unwrap());
        assert_eq!(fs::read_to_string(inside.join("passwd")).unwrap(), PASSWD);
    }

    #[test]
    fn a_dynamic_busybox_is_refused_with_the_package_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let options =
            Options { busybox: "/bin/bash".into(), probe: "/bin/true".into(), force: false };
        let error = build(&dir.path().join("rootfs"), &options).unwrap_err().to_string();
        assert!(error.starts_with("/bin/bash is dynamically linked (PT_INTERP /lib"), "{error}");
        assert!(error.ends_with("install the static one with `apt-get install busybox-static`"));
        assert!(!dir.path().join("rootfs").exists());
    }

    #[test]
    fn busybox_search_order_and_absence() {
        let empty = tempfile::tempdir().unwrap();
        let on_path = tempfile::tempdir().unwrap();
        fs::write(on_path.path().join("busybox"), "").unwrap();
        let path_var = std::env::join_paths([empty.path(), on_path.path()]).unwrap();
        assert_eq!(find_busybox(None, Some(&path_var)).unwrap(), on_path.path().join("busybox"));
        let error = find_busybox(Some(Path::new("/nope/busybox")), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "stat /nope/busybox failed: ENOENT: no such file or directory (--busybox must name a \
             busybox binary)"
        );
        assert_eq!(
            Error::BusyboxNotFound.to_string(),
            "busybox not found on this machine: install it with `apt-get install busybox-static`"
        );
    }

    #[test]
    fn probe_is_found_by_flag_then_env_then_beside_the_executable() {
        let dir = tempfile::tempdir().unwrap();
        let beside = dir.path().join(PROBE_BINARY);
        let error = find_probe(None, None, Some(dir.path())).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "the isolation probe was not found (looked for {}): build it with `cargo build \
                 --workspace`, or pass --probe PATH",
                beside.display()
            )
        );
        fs::write(&beside, "").unwrap();
        assert_eq!(find_probe(None, None, Some(dir.path())).unwrap(), beside);
        let env = OsStr::new("/bin/true");
        assert_eq!(find_probe(None, Some(env), Some(dir.path())).unwrap(), Path::new("/bin/true"));
        let explicit = Path::new("/bin/false");
        assert_eq!(find_probe(Some(explicit), Some(env), None).unwrap(), explicit);
        let error = find_probe(None, Some(OsStr::new("/nope")), None).unwrap_err().to_string();
        assert!(error.ends_with("(ISOLAB_PROBE must name the isolab-probe binary)"), "{error}");
    }
}
