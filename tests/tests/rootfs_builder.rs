//! End-to-end tests of `rootfs-builder`: build root filesystems with the real binary and check
//! them the way a learner would: enter them with `chroot`, list the archive, compare digests.
//!
//! `chroot` needs root; those tests say so and skip without it (and fail under CI, which runs
//! as root). Everything else runs as any user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use isolab_tests::{
    code, host_has, require_root, run, skip, snapshot_settings, text, transcript_of, TestEnv,
};

/// Runs `rootfs-builder ARGS` in the test's directory.
fn builder(env: &TestEnv, args: &[&str]) -> Output {
    run(env.cmd("rootfs-builder").args(args))
}

/// Runs `ARGS` inside `rootfs` with the host's chroot(8) (stage1-chroot behaves the same).
fn in_chroot(rootfs: &Path, args: &[&str]) -> Output {
    run(Command::new("chroot").arg(rootfs).args(args))
}

/// A host program, run in the test's directory.
fn host_cmd(env: &TestEnv, program: &str) -> Command {
    let mut command = Command::new(program);
    command.current_dir(env.path());
    command
}

/// Asserts success and returns stdout.
fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed with {}:\nstdout: {}\nstderr: {}",
        code(output),
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Where `path` leads inside `root`, following symlinks the way a process chrooted there would
/// (an absolute target starts again at `root`), so that a check from outside cannot be fooled
/// by a link that would point into the host's `/`.
fn resolve_inside(root: &Path, path: &str) -> PathBuf {
    let mut todo: Vec<PathBuf> = vec![PathBuf::from(path)];
    let mut done = PathBuf::from("/");
    let mut links = 0;
    while let Some(next) = todo.pop() {
        let mut components: Vec<_> = next.components().collect();
        components.reverse();
        while let Some(component) = components.pop() {
            match component {
                Component::RootDir => done = PathBuf::from("/"),
                Component::ParentDir => {
                    done.pop();
                }
                Component::Normal(name) => {
                    let candidate = done.join(name);
                    let inside = root.join(candidate.strip_prefix("/").unwrap());
                    match fs::read_link(&inside) {
                        Ok(target) => {
                            links += 1;
                            assert!(links < 40, "symlink loop at {}", inside.display());
                            let rest: PathBuf = components.iter().rev().collect();
                            components.clear();
                            todo.push(rest);
                            todo.push(target);
                        }
                        Err(_) => done = candidate,
                    }
                }
                Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    root.join(done.strip_prefix("/").unwrap())
}

/// The `sha256:<hex>` that `rootfs-builder tar` printed for `archive`.
fn printed_digest(stdout: &str, archive: &str) -> String {
    let line = stdout.trim_end();
    let (digest, name) = line.split_once("  ").unwrap_or_else(|| panic!("odd output: {line:?}"));
    assert_eq!(name, archive, "{line}");
    assert!(digest.starts_with("sha256:") && digest.len() == 7 + 64, "{line}");
    digest.to_string()
}

/// Sets the mtime of everything under `dir` (symlinks themselves included) to `when`.
fn touch_all(dir: &Path, when: SystemTime) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let spec = TimeSpec::from_duration(when.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            touch_all(&path, when);
        }
        utimensat(None, &path, &spec, &spec, UtimensatFlags::NoFollowSymlink).unwrap();
    }
}

#[test]
fn busybox_rootfs_has_applets_users_and_the_probe_with_its_loader() {
    let env = TestEnv::new();
    let output = builder(&env, &["busybox", "rootfs"]);
    let stdout = ok(&output, "rootfs-builder busybox rootfs");
    assert!(stdout.starts_with("built busybox rootfs at rootfs: 1 binary, "), "{stdout}");
    assert!(stdout.contains(" applets, probe with "), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    let rootfs = env.path().join("rootfs");
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(fs::read_link(rootfs.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
    assert_eq!(fs::read_link(rootfs.join("usr/bin/awk")).unwrap(), Path::new("/bin/busybox"));
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
    assert!(passwd.contains("nobody:x:65534:65534:"), "{passwd}");
    let group = fs::read_to_string(rootfs.join("etc/group")).unwrap();
    assert!(group.contains("nogroup:x:65534:"), "{group}");
    let mode = |path: &str| fs::metadata(rootfs.join(path)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("root"), 0o700);
    for dir in ["proc", "sys", "dev", "etc"] {
        assert!(rootfs.join(dir).is_dir(), "/{dir} is missing");
    }

    // The probe, and the loader it names, as a process inside the rootfs would find them.
    assert!(resolve_inside(&rootfs, "/isolab/probe").is_file());
    let loader = resolve_inside(&rootfs, "/lib64/ld-linux-x86-64.so.2");
    assert!(loader.is_file(), "the probe's loader: {}", loader.display());
    assert!(loader.starts_with(&rootfs));
    assert!(resolve_inside(&rootfs, "/lib/x86_64-linux-gnu/libc.so.6").is_file());

    if !require_root("busybox_rootfs_has_applets_users_and_the_probe_with_its_loader") {
        return;
    }
    let shell = in_chroot(&rootfs, &["/bin/sh", "-c", "echo ok"]);
    assert_eq!(ok(&shell, "chroot rootfs /bin/sh -c 'echo ok'"), "ok\n");
    // The probe starts: its loader and libraries are where the loader looks. (What it prints is
    // the probe's business; 126/127 or a loader error would be ours.)
    let probe = in_chroot(&rootfs, &["/isolab/probe"]);
    assert!(![126, 127].contains(&code(&probe)), "probe: {}", text(&probe.stderr));
    assert!(!text(&probe.stderr).contains("error while loading shared libraries"));
}

/// The standard library directory of the host's /usr/bin/python3 (e.g. /usr/lib/python3.11).
fn python_stdlib() -> Option<String> {
    let output = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"])
        .output()
        .ok()?;
    let stdlib = text(&output.stdout).trim().to_string();
    (output.status.success() && Path::new(&stdlib).is_dir()).then_some(stdlib)
}

#[test]
fn copy_makes_bash_and_python_run_in_a_jail() {
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    let rootfs = env.path().join("rootfs");
    // The distribution's python3 (scripts/setup installs it) and its standard library, which
    // python opens by path at run time: no ELF header names it, so it is copied as a directory.
    let stdlib = python_stdlib();
    let python = stdlib.is_some();
    let mut paths = vec!["/bin/bash".to_string()];
    match stdlib {
        Some(stdlib) => paths.extend(["/usr/bin/python3".to_string(), stdlib]),
        None => skip(
            "copy_makes_bash_and_python_run_in_a_jail",
            "python3 (bash alone is tested)",
            "/usr/bin/python3 or its standard library is missing (scripts/setup installs them)",
        ),
    }
    let args: Vec<&str> =
        ["copy", "rootfs"].into_iter().chain(paths.iter().map(String::as_str)).collect();
    let stdout = ok(&builder(&env, &args), "rootfs-builder copy");
    let summary = stdout.lines().last().unwrap();
    assert!(summary.starts_with("copied "), "{stdout}");
    assert!(summary.contains(" libraries into rootfs ("), "{stdout}");

    // Faithful: /lib is what it is on the host, a merged-/usr symlink pointing where it points
    // there, or a directory.
    match fs::read_link("/lib") {
        Ok(host_lib) => assert_eq!(fs::read_link(rootfs.join("lib")).unwrap(), host_lib),
        Err(_) => assert!(fs::symlink_metadata(rootfs.join("lib")).unwrap().is_dir()),
    }
    assert!(resolve_inside(&rootfs, "/bin/bash").is_file());
    assert!(resolve_inside(&rootfs, "/lib/x86_64-linux-gnu/libtinfo.so.6").is_file());

    if !require_root("copy_makes_bash_and_python_run_in_a_jail") {
        return;
    }
    let bash = in_chroot(&rootfs, &["/bin/bash", "-c", "echo hi"]);
    assert_eq!(ok(&bash, "chroot rootfs /bin/bash -c 'echo hi'"), "hi\n");
    if python {
        let script = "import json; print(1+1)";
        let python = in_chroot(&rootfs, &["/usr/bin/python3", "-c", script]);
        assert_eq!(ok(&python, "chroot rootfs /usr/bin/python3"), "2\n");
    }
}

#[test]
fn copy_alone_is_enough_for_bash() {
    // No busybox underneath: the loader, libc and libtinfo come from `copy` alone.
    let env = TestEnv::new();
    ok(&builder(&env, &["copy", "jail", "/bin/bash"]), "rootfs-builder copy jail /bin/bash");
    if !require_root("copy_alone_is_enough_for_bash") {
        return;
    }
    let jail = env.path().join("jail");
    let bash = in_chroot(&jail, &["/bin/bash", "-c", "echo hi from $0"]);
    assert_eq!(ok(&bash, "chroot jail /bin/bash"), "hi from /bin/bash\n");
}

#[test]
fn copy_explain_shows_the_dependency_tree() {
    let env = TestEnv::new();
    let (transcript, output) =
        transcript_of(&env, "rootfs-builder", &["copy", "--explain", "jail", "/bin/bash"]);
    ok(&output, "rootfs-builder copy --explain jail /bin/bash");
    // What a reader checks by eye: the loader first, then the libraries and how each was found.
    assert!(transcript.contains("/bin/bash -> /usr/bin/bash  (requested)"), "{transcript}");
    assert!(transcript.contains("(PT_INTERP: the loader the kernel starts first)"), "{transcript}");
    let libc = "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6  (DT_NEEDED by bash; found via \
                /etc/ld.so.cache)";
    assert!(transcript.contains(libc), "{transcript}");
    assert!(transcript.contains("  symlink  /lib -> usr/lib\n"), "{transcript}");

    let mut settings = snapshot_settings(Some(&env));
    // Library sizes change with security updates; the tree does not.
    settings.add_filter(r"\(\d+(\.\d+)? (B|KiB|MiB|GiB)\)", "([SIZE])");
    settings.bind(|| insta::assert_snapshot!("rootfs_builder_copy_explain_bash", transcript));
}

#[test]
fn tar_digest_is_stable_and_changes_only_with_content() {
    let env = TestEnv::new();
    // A small probe keeps the tree small (a debug build hashes and compresses slowly).
    ok(&builder(&env, &["busybox", "rootfs", "--probe", "/bin/true"]), "rootfs-builder busybox");
    let rootfs = env.path().join("rootfs");
    // A set-user-ID file, whose bit a careless archiver would drop.
    fs::write(rootfs.join("bin/suid"), "pretend").unwrap();
    fs::set_permissions(rootfs.join("bin/suid"), fs::Permissions::from_mode(0o4755)).unwrap();

    let first = printed_digest(&ok(&builder(&env, &["tar", "rootfs", "a.tar"]), "tar"), "a.tar");
    let second = printed_digest(&ok(&builder(&env, &["tar", "rootfs", "b.tar"]), "tar"), "b.tar");
    assert_eq!(first, second, "the same tree twice");
    assert_eq!(
        fs::read(env.path().join("a.tar")).unwrap(),
        fs::read(env.path().join("b.tar")).unwrap()
    );

    // The digest is the file's: sha256sum agrees.
    if host_has("sha256sum") {
        let sum = ok(&run(host_cmd(&env, "sha256sum").arg("a.tar")), "sha256sum a.tar");
        assert_eq!(format!("sha256:{}", sum.split_whitespace().next().unwrap()), first);
    }

    touch_all(&rootfs, SystemTime::now() + Duration::from_secs(3600));
    let touched = printed_digest(&ok(&builder(&env, &["tar", "rootfs", "c.tar"]), "tar"), "c.tar");
    assert_eq!(touched, first, "touching every file changes no content");

    let gz1 = ok(&builder(&env, &["tar", "rootfs", "a.tar.gz", "--gzip"]), "tar --gzip");
    let gz2 = ok(&builder(&env, &["tar", "rootfs", "b.tar.gz", "--gzip"]), "tar --gzip");
    assert_eq!(printed_digest(&gz1, "a.tar.gz"), printed_digest(&gz2, "b.tar.gz"));
    assert_ne!(printed_digest(&gz1, "a.tar.gz"), first);

    // What GNU tar sees: sorted names, the set-user-ID bit, mtime 0, links as links.
    if host_has("tar") {
        let listing =
            ok(&run(host_cmd(&env, "tar").args(["--numeric-owner", "-tvf", "a.tar"])), "tar -tvf");
        let suid = listing.lines().find(|line| line.ends_with(" bin/suid")).unwrap();
        assert!(suid.starts_with("-rwsr-xr-x 0/0 "), "{suid}");
        assert!(suid.contains(" 1970-01-01 "), "{suid}");
        let sh = listing.lines().find(|line| line.contains(" bin/sh -> ")).unwrap();
        assert!(sh.starts_with('l') && sh.ends_with(" bin/sh -> /bin/busybox"), "{sh}");
        let names = ok(&run(host_cmd(&env, "tar").args(["-tf", "a.tar"])), "tar -tf");
        let names: Vec<&str> = names.lines().collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "entries in bytewise order");
        assert!(names.contains(&"tmp/") && !names.iter().any(|name| name.starts_with("./")));
    }

    fs::write(rootfs.join("etc/motd"), "welcome").unwrap();
    let changed = printed_digest(&ok(&builder(&env, &["tar", "rootfs", "d.tar"]), "tar"), "d.tar");
    assert_ne!(changed, first, "new content, new digest");
}

/// Every error: exit status 125 and exactly one line, `rootfs-builder: error: ...`.
fn assert_one_line_error(output: &Output, expected: &str) {
    assert_eq!(code(output), 125, "stderr: {}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(stderr.trim_end(), expected);
    assert!(!expected.ends_with('.'));
}

#[test]
fn errors_exit_125_with_one_line_that_says_what_to_do() {
    let env = TestEnv::new();
    assert_one_line_error(
        &builder(&env, &["busybox", "no/such/rootfs"]),
        "rootfs-builder: error: cannot build a busybox rootfs in no/such/rootfs: mkdir \
         no/such/rootfs failed: ENOENT: no such file or directory (the parent directory no/such \
         does not exist: create it first)",
    );

    fs::create_dir(env.path().join("full")).unwrap();
    fs::write(env.path().join("full/file"), "").unwrap();
    assert_one_line_error(
        &builder(&env, &["busybox", "full"]),
        "rootfs-builder: error: cannot build a busybox rootfs in full: full is not empty: pass \
         --force to build into it anyway, or choose a new directory",
    );
    assert!(!env.path().join("full/bin").exists(), "nothing written");

    assert_one_line_error(
        &builder(&env, &["copy", "jail", "/usr/bin/definitely-not-here"]),
        "rootfs-builder: error: cannot copy into jail: stat /usr/bin/definitely-not-here failed: \
         ENOENT: no such file or directory (check the path)",
    );
    assert!(!env.path().join("jail").exists(), "nothing written");

    assert_one_line_error(
        &builder(&env, &["busybox", "rootfs", "--busybox", "/bin/bash"]),
        "rootfs-builder: error: cannot build a busybox rootfs in rootfs: /bin/bash is dynamically \
         linked (PT_INTERP /lib64/ld-linux-x86-64.so.2), but a busybox rootfs has no shared \
         libraries: install the static one with `apt-get install busybox-static`",
    );

    assert_one_line_error(
        &builder(&env, &["busybox", "rootfs", "--probe", "/nope/isolab-probe"]),
        "rootfs-builder: error: stat /nope/isolab-probe failed: ENOENT: no such file or directory \
         (--probe must name the isolab-probe binary)",
    );

    fs::create_dir(env.path().join("tree")).unwrap();
    assert_one_line_error(
        &builder(&env, &["tar", "tree", "tree/layer.tar"]),
        &format!(
            "rootfs-builder: error: cannot archive tree into tree/layer.tar: tree/layer.tar is \
             inside {}: the archive would contain itself, write it somewhere else",
            fs::canonicalize(env.path().join("tree")).unwrap().display()
        ),
    );

    // A command line clap refuses is an error too, with clap's own (multi-line) usage text.
    assert_eq!(code(&builder(&env, &["copy", "jail"])), 125);
}

#[test]
fn help_shows_examples() {
    let env = TestEnv::new();
    let help = ok(&builder(&env, &["--help"]), "rootfs-builder --help");
    assert!(help.contains("Examples:\n  rootfs-builder busybox rootfs"), "{help}");
    for command in ["busybox", "copy", "tar"] {
        let help = ok(&builder(&env, &[command, "--help"]), "rootfs-builder COMMAND --help");
        assert!(help.contains(&format!("Examples:\n  rootfs-builder {command} ")), "{help}");
    }
}
