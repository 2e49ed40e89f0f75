//! Stage 4 end to end: the real `stage4-overlay` binary, a busybox rootfs built by the real
//! `rootfs-builder` as the base, and a container store in the test's own directory. Each test
//! looks at what the containers see and at the disk (the base, untouched; the store, holding
//! each container's changes), and leaves nothing behind: no mount, no process, no store.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use isolab_tests::*;
use nix::sys::signal::{kill, Signal};

const STAGE: &str = "stage4-overlay";

/// The namespaces of the default run but the user namespace: root inside is the host's root,
/// who may change every file of the base. Stage 2 wrote straight into the base like this;
/// stage 4 must not.
const NO_USERNS: &str = "mnt,uts,ipc,pid,net,cgroup";

/// The base at `<env>/rootfs`: the busybox rootfs, with a few files and directories to
/// change and delete, and the test directory opened to root of a user namespace.
fn base(env: &TestEnv) -> PathBuf {
    let rootfs = env.namespaced_rootfs("rootfs");
    let output = run(Command::new("sh").args(["-ec", BASE_FILES]).current_dir(env.path()));
    assert!(output.status.success(), "{}", text(&output.stderr));
    rootfs
}

/// What the chapter tells a reader to add to the busybox rootfs before the `diff` section:
/// shown there from a snapshot of this very text, and run as it is by every test here.
const BASE_FILES: &str = "\
mkdir -p rootfs/srv/data rootfs/srv/cache/deep
echo welcome > rootfs/etc/motd
echo base > rootfs/etc/hostname
echo old > rootfs/srv/data/old
echo kept > rootfs/srv/data/kept
echo blob > rootfs/srv/cache/deep/blob
";

/// Runs stage4-overlay with the store `store` (relative to the test's directory) and `args`;
/// the transcript shows the command as a reader would type it.
fn stage4(env: &TestEnv, args: &[&str]) -> (String, Output) {
    let mut all = vec!["--root", "store"];
    if args.contains(&"--root") {
        all.clear();
    }
    all.extend_from_slice(args);
    transcript_of(env, STAGE, &all)
}

/// The shared filters, plus what varies in stage 4's output: container ids and generated
/// names, times, pids, hostnames, sizes and the cgroup report stage 3 prints on exit.
fn settings(env: &TestEnv) -> insta::Settings {
    let mut settings = snapshot_settings(Some(env));
    let bin = bin_dir().display().to_string();
    settings.add_filter(&format!("{}/", regex_escape(&bin)), "");
    // Tables keep their columns: an id at the start of a row, and an age, become
    // placeholders of their own width.
    settings.add_filter(r"(?m)^[0-9a-f]{12}  ", "[ID        ]  ");
    settings.add_filter(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b", "[DATE AND TIME UTC]");
    settings.add_filter(r"\b[0-9a-f]{12}\b", "[ID]");
    settings.add_filter(r"runtime pid \d+", "runtime pid [PID]");
    settings.add_filter(r"\bc-[0-9a-f]{6}\b", "c-[ID6]");
    // In `ps`, a running container's STATUS cell is padded to a fixed column: keep the
    // padding as wide as it is whatever the pid's digits.
    settings.add_filter(r"running \(pid \d+\) +", "running (pid [PID])    ");
    settings.add_filter(r"\(pid \d+\)", "(pid [PID])");
    settings.add_filter(r"isolab-[0-9a-f]{6}\b", "isolab-[HOSTNAME]");
    settings.add_filter(r"\b\d+(\.\d+)? (B|KiB|MiB|GiB)\b", "[SIZE]");
    settings.add_filter(r"\b\d+(\.\d+)?(ns|µs|ms|s)\b", "[DURATION]");
    settings.add_filter(r"\b\d+× ", "[N]× ");
    settings.add_filter(r"/bench-\d+", "/bench-[PID]");
    // Tests run in parallel and cgroups are host-wide: a `run` here may collect the cgroup of
    // another test's killed runtime, and say so. That line is about the other test, never
    // about this transcript's containers (none of which is killed without its own gc).
    settings.add_filter(r"(?m)^stage4-overlay: gc: removed cgroup .*\n", "");
    // Stage 3's report, when a limit is set: what the command used varies, the lines do not.
    settings.add_filter(r"memory: peak \d+(\.\d+)? (B|KiB|MiB|GiB)", "memory: peak [SIZE]");
    settings.add_filter(r"\b\d+\.\d\d s\b", "[DURATION]");
    settings.add_filter(r"throttled \d+ periods", "throttled [N] periods");
    settings.add_filter(r"this kernel \([^)]*\)", "this kernel ([RELEASE])");
    settings
}

/// The container directories of the store.
fn containers(env: &TestEnv) -> Vec<PathBuf> {
    let dir = env.path().join("store/containers");
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries.map(|entry| entry.unwrap().path()).collect();
    dirs.sort();
    dirs
}

/// The directory of the container called `name`.
fn container_dir(env: &TestEnv, name: &str) -> PathBuf {
    containers(env)
        .into_iter()
        .find(|dir| {
            let config = fs::read_to_string(dir.join("config.json")).unwrap_or_default();
            config.contains(&format!("\"name\": \"{name}\""))
        })
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A runtime of stage 4 on the test's store, started in the background (see [`Background`]).
fn background(env: &TestEnv, args: &[&str]) -> Background {
    Background::spawn(env.cmd(STAGE).args(["--root", "store"]).args(args).stderr(Stdio::null()))
}

/// Checks a command failed as a runtime error: exit 125, one line on stderr, no stdout.
fn check_one_line_125(transcript: &str, output: &Output) {
    assert_eq!(code(output), 125, "{transcript}");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("stage4-overlay: error: "), "{stderr}");
    assert!(output.stdout.is_empty(), "{transcript}");
}

#[test]
fn dry_run_shows_the_overlay_mount_and_writes_nothing() {
    if !require_root("dry_run_shows_the_overlay_mount_and_writes_nothing") {
        return;
    }
    let env = TestEnv::new();
    env.skeleton_rootfs("rootfs");
    // The default namespaces, a user namespace among them: root of that namespace mounts the
    // overlay, over the base idmapped into that namespace.
    let (plan, output) =
        stage4(&env, &["run", "--rootfs", "rootfs", "--name", "web", "--dry-run", "--", "/bin/sh"]);
    assert_eq!(code(&output), 0, "{plan}");
    assert!(!env.path().join("store").exists(), "a dry run writes nothing");
    // Root inside is a slot of the pool (the plan shows its first slot; see idrange). It owns
    // the upper, and overlayfs keeps its marks in user.* xattrs.
    let hosts = libisolab::idrange::HostIds::read(Path::new("/etc")).unwrap();
    let root = libisolab::idrange::Pool::of(&hosts).first().unwrap();
    let chown = format!("/upper\", 0755); chown({}, {})", root.uid, root.gid);
    assert!(plan.contains(&chown), "{plan}");
    assert!(plan.contains(",userxattr\")"), "{plan}");
    // The base is idmapped by the runtime with the child's user namespace once its maps are
    // written, and attached by the child before the overlay, which takes it as its lower.
    let order = [
        "socketpair(AF_UNIX",
        "clone(CLONE_NEWUSER",
        "write(\"/proc/<pid>/gid_map\"",
        "open(\"/proc/<pid>/ns/user\")",
        "/rootfs\", OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC) = <lower0>",
        "mount_setattr(<lower0>, \"\", AT_EMPTY_PATH, {attr_set=MOUNT_ATTR_IDMAP",
        "sendmsg(",
        "write(sync pipe",
        "mount(NULL, \"/\", NULL, MS_REC|MS_PRIVATE, NULL)",
        "recvmsg(",
        "/lower0\", MOVE_MOUNT_F_EMPTY_PATH)",
        "/lower0,upperdir=",
        "pivot_root",
    ];
    let mut from = 0;
    for call in order {
        let at =
            plan[from..].find(call).unwrap_or_else(|| panic!("no {call} after {from}: {plan}"));
        from += at + call.len();
    }
    settings(&env).bind(|| insta::assert_snapshot!("stage4_dry_run", plan));

    // Without a user namespace, root inside is the host's root: nothing to idmap.
    let args = ["run", "--rootfs", "rootfs", "--ns", "mnt,pid", "--dry-run", "--", "/bin/sh"];
    let (plan, output) = stage4(&env, &args);
    assert_eq!(code(&output), 0, "{plan}");
    assert!(plan.contains("/rootfs,upperdir="), "{plan}");
    assert!(!plan.contains("open_tree") && !plan.contains("lower0"), "{plan}");
}

#[test]
fn the_base_is_never_written() {
    if !require_root("the_base_is_never_written") {
        return;
    }
    let env = TestEnv::new();
    let rootfs = base(&env);
    let before = describe_tree(&rootfs);
    // As the host's root (no user namespace): every kind of change to the base's files.
    let script = "echo changed > /etc/hostname; echo more >> /etc/motd; rm /etc/passwd; \
                  rm -rf /srv/cache; rm -rf /srv/data; mkdir /srv/data; echo new > /srv/data/new; \
                  mv /bin/ls /bin/ls.old; chmod 700 /root; touch /etc/group; \
                  ln -sf /srv/data/new /etc/link; mkdir -p /opt/app && echo app > /opt/app/run";
    let (run, output) = stage4(
        &env,
        &["run", "--rootfs", "rootfs", "--ns", NO_USERNS, "--", "/bin/sh", "-c", script],
    );
    assert_eq!(code(&output), 0, "{run}");
    // And with the user namespace, as an unprivileged root over the base idmapped into its
    // namespace: the same changes, and its writes at / too.
    let script_userns = format!("{script}; echo x > /new-at-root");
    let (run, output) =
        stage4(&env, &["run", "--rootfs", "rootfs", "--", "/bin/sh", "-c", &script_userns]);
    assert_eq!(code(&output), 0, "{run}");
    // The copy driver changes its copy, never the base.
    let (run, output) = stage4(
        &env,
        &[
            "run",
            "--rootfs",
            "rootfs",
            "--storage",
            "copy",
            "--ns",
            NO_USERNS,
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    assert_eq!(code(&output), 0, "{run}");

    let after = describe_tree(&rootfs);
    let changed: Vec<_> = before
        .iter()
        .filter(|(path, description)| after.get(*path) != Some(*description))
        .map(|(path, _)| path.clone())
        .chain(after.keys().filter(|path| !before.contains_key(*path)).cloned())
        .collect();
    assert!(changed.is_empty(), "the base changed: {changed:?}");
    // The changes are in the containers' directories, and visible inside: a new run sees the
    // base as it was.
    let output =
        run_stage4(&env, &["run", "--rm", "--rootfs", "rootfs", "--", "/bin/cat", "/etc/hostname"]);
    assert_eq!(text(&output.stdout), "base\n");
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
}

fn run_stage4(env: &TestEnv, args: &[&str]) -> Output {
    stage4(env, args).1
}

#[test]
fn diff_lists_adds_changes_deletes_and_an_opaque_directory() {
    if !require_root("diff_lists_adds_changes_deletes_and_an_opaque_directory") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    let script = "echo changed > /etc/hostname; rm /etc/motd; rm -rf /srv/cache; \
                  rm -rf /srv/data; mkdir /srv/data; echo new > /srv/data/new; \
                  echo again > /srv/data/kept; mkdir -p /opt/app; echo app > /opt/app/run";
    let (run, output) = stage4(
        &env,
        &[
            "run", "--rootfs", "rootfs", "--name", "web", "--ns", NO_USERNS, "--", "/bin/sh", "-c",
            script,
        ],
    );
    assert_eq!(code(&output), 0, "{run}");
    let (diff, output) = stage4(&env, &["diff", "web"]);
    assert_eq!(code(&output), 0, "{diff}");
    let expected = "C /etc\nC /etc/hostname\nD /etc/motd\nA /opt\nA /opt/app\nA /opt/app/run\n\
                    C /srv\nD /srv/cache\nC /srv/data\nC /srv/data/kept\nA /srv/data/new\n\
                    D /srv/data/old\n";
    assert_eq!(text(&output.stdout), expected, "{diff}");
    let (upper, output) = stage4(&env, &["diff", "web", "--upper"]);
    assert_eq!(code(&output), 0, "{upper}");
    assert!(upper.contains("whiteout /etc/motd"), "{upper}");
    assert!(upper.contains("opaque   /srv/data"), "{upper}");
    // The upper itself, as the kernel wrote it: a whiteout is a character device 0/0.
    let whiteout = fs::symlink_metadata(container_dir(&env, "web").join("upper/etc/motd")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&whiteout.file_type()));
    assert_eq!(whiteout.rdev(), 0);
    let shown = format!("{run}{diff}{upper}");
    settings(&env).bind(|| insta::assert_snapshot!("stage4_diff", shown));
    settings(&env).bind(|| insta::assert_snapshot!("stage4_diff_base", BASE_FILES));
}

/// Every entry below `root` (not `root` itself), with its owner on the host.
fn owners_below(root: &Path) -> Vec<(PathBuf, u32, u32)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            found.push((path.strip_prefix(root).unwrap().to_path_buf(), meta.uid(), meta.gid()));
        }
    }
    found.sort();
    found
}

// Issue 10 §0: with the default user namespace, root inside could change no root-owned file
// of the base (EACCES: overlayfs copies up as the mounter, who did not own them).
#[test]
fn root_of_a_user_namespace_changes_the_bases_files_over_an_idmapped_base() {
    if !require_root("root_of_a_user_namespace_changes_the_bases_files_over_an_idmapped_base") {
        return;
    }
    let env = TestEnv::new();
    let rootfs = base(&env);
    // A file of an ordinary host user: through the idmapped base, that user's id inside.
    fs::write(rootfs.join("srv/owned"), "mine\n").unwrap();
    nix::unistd::chown(&rootfs.join("srv/owned"), Some(1000.into()), Some(1000.into())).unwrap();
    let before = describe_tree(&rootfs);
    // Changed, deleted, replaced: root-owned files and directories of the base.
    let script = "echo x >> /etc/motd; rm -f /bin/ls; rm -rf /srv/data; mkdir /srv/data; \
                  echo new > /srv/data/new; chmod 700 /etc; chown 1:1 /etc/hostname; \
                  stat -c \"%u:%g %a %n\" /etc /srv/data; stat -c \"%u:%g %n\" \
                  /etc/hostname /srv/owned; cat /etc/motd";
    let args = ["run", "--rootfs", "rootfs", "--name", "web", "--", "/bin/sh", "-c", script];
    let (ran, output) = stage4(&env, &args);
    assert_eq!(code(&output), 0, "{ran}");
    assert_eq!(
        text(&output.stdout),
        "0:0 700 /etc\n0:0 755 /srv/data\n1:1 /etc/hostname\n1000:1000 /srv/owned\nwelcome\nx\n",
        "{ran}"
    );
    // The base: its bytes, owners and modes as they were.
    assert_eq!(describe_tree(&rootfs), before, "the base changed");

    // `diff` shows the changes.
    let (diff, output) = stage4(&env, &["diff", "web"]);
    assert_eq!(code(&output), 0, "{diff}");
    let expected = "C /bin\nD /bin/ls\nC /etc\nC /etc/hostname\nC /etc/motd\nC /srv\n\
                    C /srv/data\nD /srv/data/kept\nA /srv/data/new\nD /srv/data/old\n";
    assert_eq!(text(&output.stdout), expected, "{diff}");
    let (upper, output) = stage4(&env, &["diff", "web", "--upper"]);
    assert_eq!(code(&output), 0, "{upper}");
    assert!(upper.contains("whiteout /bin/ls") && upper.contains("opaque   /srv/data"), "{upper}");

    // On the host, what it wrote is its root's: the first uid of its slot (the tests' claims
    // directory is their own, so the pool's first slot), or that slot's uid 1 for the file it
    // gave to uid 1; and the idmapped base's mount point is an empty directory.
    let hosts = libisolab::idrange::HostIds::read(Path::new("/etc")).unwrap();
    let slot = libisolab::idrange::Pool::of(&hosts).first().unwrap();
    let dir = container_dir(&env, "web");
    for (path, uid, gid) in owners_below(&dir.join("upper")) {
        let expected = match path == Path::new("etc/hostname") {
            true => (slot.uid + 1, slot.gid + 1),
            false => (slot.uid, slot.gid),
        };
        assert_eq!((uid, gid), expected, "upper/{}", path.display());
    }
    // The idmapped base was attached in the container's mount namespace only: on the host,
    // the store's mount point is an empty directory.
    assert_eq!(fs::read_dir(env.path().join("store/mnt/lower0")).unwrap().count(), 0);
    assert!(!dir.join("lower0").exists() && !dir.join("merged").exists());
    let stat =
        format!("store/containers/{}/upper/etc/motd", dir.file_name().unwrap().to_str().unwrap());
    let output =
        run(Command::new("stat").args(["-c", "%u:%g %a %n", &stat]).current_dir(env.path()));
    let owner = transcript(&format!("stat -c '%u:%g %a %n' {stat}"), &output);

    // `ps` still reads it, and `start` sees its changes (the script appends to motd again).
    let (ps, output) = stage4(&env, &["ps"]);
    assert_eq!(code(&output), 0, "{ps}");
    assert!(ps.contains(" web "), "{ps}");
    let (start, output) = stage4(&env, &["start", "web"]);
    assert_eq!(code(&output), 0, "{start}");
    assert!(text(&output.stdout).ends_with("welcome\nx\nx\n"), "{start}");
    assert_eq!(describe_tree(&rootfs), before, "the base changed");
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    let shown = format!("{ran}{diff}{owner}{start}");
    settings(&env).bind(|| insta::assert_snapshot!("stage4_idmapped", shown));
}

#[test]
fn a_base_that_cannot_be_idmapped_is_refused_up_front() {
    if !require_root("a_base_that_cannot_be_idmapped_is_refused_up_front") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    // ramfs cannot be idmapped. It is mounted in a mount namespace of the test's own, where
    // the runtime runs too: never on the host.
    let stage4 = bin(STAGE).display().to_string();
    let in_ramfs = |args: &str| {
        let script = format!(
            "mkdir -p ramfs && mount -t ramfs ramfs ramfs && cp -a rootfs/. ramfs/ && \
             {stage4} --root store {args}"
        );
        run(Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .current_dir(env.path())
            .env("ISOLAB_USERNS_DIR", env.path().join("userns")))
    };
    let shown_run = "run --rootfs ramfs --name r -- /bin/true";
    let output = in_ramfs(shown_run);
    let refused = transcript(
        &format!(
            "unshare --mount sh -c 'mkdir -p ramfs && mount -t ramfs ramfs ramfs && \
             cp -a rootfs/. ramfs/ && {STAGE} --root store {shown_run}'"
        ),
        &output,
    );
    check_one_line_125(&refused, &output);
    for words in ["the base ", "/ramfs cannot be idmapped", "its filesystem (ramfs)"] {
        assert!(refused.contains(words), "{words}: {refused}");
    }
    for way_out in ["--ns without user", "rootless with a base of your own"] {
        assert!(refused.contains(way_out), "{way_out}: {refused}");
    }
    assert!(containers(&env).is_empty(), "refused before anything is written");
    // The dry run is refused alike; without a user namespace there is nothing to idmap.
    let output = in_ramfs("run --rootfs ramfs --dry-run -- /bin/true");
    assert_eq!(code(&output), 125, "{}", text(&output.stderr));
    let output = in_ramfs(&format!("run --rootfs ramfs --rm --ns {NO_USERNS} -- /bin/true"));
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    assert!(containers(&env).is_empty());
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    settings(&env).bind(|| insta::assert_snapshot!("stage4_idmap_refused", refused));
}

#[test]
fn two_containers_from_one_base_do_not_see_each_others_writes() {
    if !require_root("two_containers_from_one_base_do_not_see_each_others_writes") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    // Each prints what its /mine held, then writes its word there and into a base file.
    for (name, word) in [("one", "alpha"), ("two", "beta")] {
        let script =
            format!("cat /mine 2>/dev/null; echo {word} > /mine; echo {word} > /srv/data/kept");
        let output = run_stage4(
            &env,
            &[
                "run", "--rootfs", "rootfs", "--name", name, "--ns", NO_USERNS, "--", "/bin/sh",
                "-c", &script,
            ],
        );
        assert_eq!(code(&output), 0, "{}", text(&output.stderr));
        assert_eq!(text(&output.stdout), "", "{name} saw another container's /mine");
    }
    // Started again, each finds its own word: not the other's.
    for (name, word) in [("one", "alpha"), ("two", "beta")] {
        let output = run_stage4(&env, &["start", name]);
        assert_eq!(code(&output), 0, "{}", text(&output.stderr));
        assert_eq!(text(&output.stdout), format!("{word}\n"));
        let upper = container_dir(&env, name).join("upper");
        assert_eq!(fs::read_to_string(upper.join("srv/data/kept")).unwrap(), format!("{word}\n"));
    }
    // A third container sees the base only.
    let output = run_stage4(
        &env,
        &[
            "run",
            "--rm",
            "--rootfs",
            "rootfs",
            "--",
            "/bin/sh",
            "-c",
            "cat /srv/data/kept; ls /mine",
        ],
    );
    assert_eq!(text(&output.stdout), "kept\n");
    assert_ne!(code(&output), 0, "/mine is not in the base");
}

#[test]
fn start_keeps_the_upper_and_ps_shows_the_containers() {
    if !require_root("start_keeps_the_upper_and_ps_shows_the_containers") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    let count = "echo run >> /runs; wc -l < /runs";
    let (first, output) = stage4(
        &env,
        &["run", "--rootfs", "rootfs", "--name", "counter", "--", "/bin/sh", "-c", count],
    );
    assert_eq!(code(&output), 0, "{first}");
    assert_eq!(text(&output.stdout).trim(), "1");
    let (second, output) = stage4(&env, &["start", "counter"]);
    assert_eq!(text(&output.stdout).trim(), "2", "{second}");
    let (_, output) = stage4(&env, &["start", "counter"]);
    assert_eq!(text(&output.stdout).trim(), "3");
    // An exit code is kept too.
    let output = run_stage4(
        &env,
        &["run", "--rootfs", "rootfs", "--name", "fails", "--", "/bin/sh", "-c", "exit 3"],
    );
    assert_eq!(code(&output), 3);
    let (ps, output) = stage4(&env, &["ps"]);
    assert_eq!(code(&output), 0, "{ps}");
    assert!(ps.contains("counter") && ps.contains("fails"), "{ps}");
    let shown = format!("{first}{second}{ps}");
    settings(&env).bind(|| insta::assert_snapshot!("stage4_start_ps", shown));
}

#[test]
fn rm_removes_everything_and_refuses_a_running_container() {
    if !require_root("rm_removes_everything_and_refuses_a_running_container") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    let output = run_stage4(
        &env,
        &["run", "--rootfs", "rootfs", "--name", "done", "--", "/bin/sh", "-c", "echo x > /x"],
    );
    assert_eq!(code(&output), 0);
    let dir = container_dir(&env, "done");
    let (removed, output) = stage4(&env, &["rm", "done"]);
    assert_eq!(code(&output), 0, "{removed}");
    assert!(!dir.exists(), "{} is left", dir.display());

    // A running container: refused, then killed with --force.
    let running = background(
        &env,
        &["run", "--rootfs", "rootfs", "--name", "busy", "--", "/bin/sleep", "60"],
    );
    assert!(
        eventually(Duration::from_secs(5), || text(&run_stage4(&env, &["ps"]).stdout)
            .contains("running")),
        "busy never ran"
    );
    let (refused, output) = stage4(&env, &["rm", "busy"]);
    check_one_line_125(&refused, &output);
    assert!(refused.contains("is running"), "{refused}");
    let (twice, output) = stage4(&env, &["start", "busy"]);
    check_one_line_125(&twice, &output);
    assert!(twice.contains("is running"), "{twice}");
    let (forced, output) = stage4(&env, &["rm", "--force", "busy"]);
    assert_eq!(code(&output), 0, "{forced}");
    assert!(forced.contains("killed first"), "{forced}");
    drop(running);
    assert!(containers(&env).is_empty(), "{:?}", containers(&env));
    assert!(mounts_under(env.path()).is_empty());
    settings(&env)
        .bind(|| insta::assert_snapshot!("stage4_rm", format!("{removed}{refused}{forced}")));
}

// A `--rm` container's upper goes when it ends: its overlay is mounted `volatile`, so that the
// unmount at its end does not sync the whole filesystem of the store. A container that stays
// keeps the sync. While either runs, the journal's entry is a link naming what the runtime
// does (no data block to write and free).
#[test]
fn a_removed_containers_overlay_is_volatile_and_a_kept_ones_is_not() {
    if !require_root("a_removed_containers_overlay_is_volatile_and_a_kept_ones_is_not") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    // The overlay at the container's / as it sees it: its line of the mount table.
    let root_line = "grep ' / / ' /proc/self/mountinfo";
    for (remove, name) in [(true, "gone"), (false, "kept")] {
        let mut args = vec!["run", "--rootfs", "rootfs", "--name", name];
        if remove {
            args.push("--rm");
        }
        args.extend(["--", "/bin/sh", "-c", root_line]);
        let output = run_stage4(&env, &args);
        assert_eq!(code(&output), 0, "{}", text(&output.stderr));
        let line = text(&output.stdout);
        assert!(line.contains(" - overlay overlay "), "{line}");
        assert_eq!(line.contains("volatile"), remove, "{name}: {line}");
    }
    assert_eq!(containers(&env).len(), 1, "{:?}", containers(&env));
    let running = background(
        &env,
        &["run", "--rootfs", "rootfs", "--rm", "--name", "busy", "--", "/bin/sleep", "60"],
    );
    let active = env.path().join("store/active");
    let entry =
        || fs::read_dir(&active).ok()?.flatten().find_map(|entry| fs::read_link(entry.path()).ok());
    assert!(
        eventually(Duration::from_secs(5), || entry() == Some(PathBuf::from("run"))),
        "no journal link saying run: {:?}",
        entry()
    );
    drop(running);
    assert!(mounts_under(env.path()).is_empty());
}

#[test]
fn sigkill_of_the_runtime_then_gc_leaves_no_mount_and_no_stale_state() {
    if !require_root("sigkill_of_the_runtime_then_gc_leaves_no_mount_and_no_stale_state") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    // One after the other, so that `ps` and `gc` list them in this order.
    let running = |count: usize| {
        eventually(Duration::from_secs(5), || {
            text(&run_stage4(&env, &["ps"]).stdout).matches("running").count() == count
        })
    };
    let kept = background(
        &env,
        &["run", "--rootfs", "rootfs", "--name", "kept", "--", "/bin/sleep", "60"],
    );
    assert!(running(1), "kept never ran");
    let gone = background(
        &env,
        &["run", "--rootfs", "rootfs", "--name", "gone", "--rm", "--", "/bin/sleep", "60"],
    );
    assert!(running(2), "gone never ran");
    // While they run, their overlays are in their own mount namespaces: not on the host.
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    for runtime in [&kept, &gone] {
        kill(runtime.pid(), Signal::SIGKILL).unwrap();
    }
    drop((kept, gone));

    // Their state files still say running, but `ps` looks at the locks and tells the truth
    // without any gc (regression: it showed `running (pid N)` until a gc ran). The container's
    // init, a fork of the runtime, shares the lock until its parent-death SIGKILL lands a
    // moment later: until then the container does still run, and `ps` says so.
    let both_exited =
        || text(&run_stage4(&env, &["ps"]).stdout).matches("exited (runtime killed)").count() == 2;
    assert!(eventually(Duration::from_secs(5), both_exited), "the locks were never released");
    let (stale, _) = stage4(&env, &["ps"]);
    assert_eq!(stale.matches("exited (runtime killed)").count(), 2, "{stale}");
    assert!(!stale.contains("running (pid"), "{stale}");
    let (gc, output) = stage4(&env, &["gc"]);
    assert_eq!(code(&output), 0, "{gc}");
    assert!(gc.contains("container kept") && gc.contains("marked exited"), "{gc}");
    assert!(gc.contains("container gone") && gc.contains("removed"), "{gc}");
    let (ps, _) = stage4(&env, &["ps"]);
    let kept_row = ps.lines().find(|line| line.split_whitespace().nth(1) == Some("kept"));
    let kept_fields: Vec<&str> = kept_row.unwrap_or_default().split_whitespace().collect();
    assert_eq!(kept_fields.get(2..4), Some(&["exited", "unknown"][..]), "{ps}");
    assert!(!ps.contains("gone"), "{ps}");
    let mut settings = settings(&env);
    // Stage 3's part of gc: the killed runtimes' cgroups (host-specific paths, and removed by
    // whichever gc sees them first).
    settings.add_filter(r"(?m)^removed cgroup .*\n", "");
    settings.bind(|| insta::assert_snapshot!("stage4_gc", format!("{stale}{gc}{ps}")));
    // Nothing is left to clean up, and nothing is mounted.
    let output = run_stage4(&env, &["gc"]);
    assert!(
        text(&output.stdout).starts_with("no stale isolab cgroups, container states or mounts")
            || text(&output.stdout).contains("removed cgroup"),
        "{}",
        text(&output.stdout)
    );
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    // A mount left on the host in a container's directory or on the store's mount point
    // (by hand, here, in a mount namespace of the test's own) is detached by gc, and said so.
    let upper = container_dir(&env, "kept").join("upper");
    let point = env.path().join("store/mnt/root");
    let script = format!(
        "mount -t tmpfs leftover {} && mount -t tmpfs leftover {} && {} --root store gc && grep \
         -c leftover /proc/self/mountinfo",
        upper.display(),
        point.display(),
        bin(STAGE).display()
    );
    let output = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir(env.path()));
    let stdout = text(&output.stdout);
    for left in [&upper, &point] {
        assert!(stdout.contains(&format!("unmounted {} (MNT_DETACH)", left.display())), "{stdout}");
    }
    assert!(stdout.ends_with("0\n"), "the tmpfs is still mounted: {stdout}");
    let output = run_stage4(&env, &["rm", "kept"]);
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    assert!(containers(&env).is_empty());
}

#[test]
fn df_shows_the_base_and_what_each_container_takes() {
    if !require_root("df_shows_the_base_and_what_each_container_takes") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    for (name, storage) in [("thin", "overlay"), ("fat", "copy")] {
        let script = "echo hello > /hello";
        let output = run_stage4(
            &env,
            &[
                "run",
                "--rootfs",
                "rootfs",
                "--name",
                name,
                "--storage",
                storage,
                "--",
                "/bin/sh",
                "-c",
                script,
            ],
        );
        assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    }
    let (df, output) = stage4(&env, &["df"]);
    assert_eq!(code(&output), 0, "{df}");
    let own = |name: &str| {
        let line = df.lines().find(|line| line.contains(&format!("  {name}  "))).unwrap();
        line.split("  ").filter(|cell| !cell.is_empty()).last().unwrap().trim().to_string()
    };
    assert!(own("thin").ends_with("KiB"), "{df}");
    assert!(own("fat").ends_with("MiB"), "{df}");
    settings(&env).bind(|| insta::assert_snapshot!("stage4_df", df));
}

#[test]
fn fifty_containers_overlay_is_cheaper_than_copy() {
    if !require_root("fifty_containers_overlay_is_cheaper_than_copy") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    let output =
        run_stage4(&env, &["bench-storage", "--rootfs", "rootfs", "--count", "50", "--json"]);
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let driver = |name: &str| {
        let drivers = report["drivers"].as_array().unwrap();
        drivers.iter().find(|d| d["storage"] == name).unwrap().clone()
    };
    let (overlay, copy) = (driver("overlay"), driver("copy"));
    let number = |value: &serde_json::Value, key: &str| value[key].as_u64().unwrap();
    eprintln!(
        "50 containers from a {} byte base: overlay created in {:.1} ms, {} bytes on disk; copy \
         in {:.1} ms, {} bytes",
        number(&report, "base_bytes"),
        number(&overlay, "create_ns") as f64 / 1e6,
        number(&overlay, "disk_bytes"),
        number(&copy, "create_ns") as f64 / 1e6,
        number(&copy, "disk_bytes")
    );
    assert!(number(&overlay, "create_ns") < number(&copy, "create_ns"));
    assert!(number(&overlay, "disk_bytes") < number(&copy, "disk_bytes"));
    // Clearly below: a copy holds the whole base.
    assert!(number(&overlay, "disk_bytes") * 10 < number(&copy, "disk_bytes"));
    // The bench cleans up after itself.
    assert!(fs::read_dir(env.path().join("store")).map_or(true, |mut dir| dir.next().is_none()));

    // The human output's shape, for the book (numbers filtered).
    let (bench, output) = stage4(&env, &["bench-storage", "--rootfs", "rootfs", "--count", "5"]);
    assert_eq!(code(&output), 0, "{bench}");
    settings(&env).bind(|| insta::assert_snapshot!("stage4_bench", bench));
}

#[test]
fn the_probe_writes_to_the_upper_not_the_base() {
    if !require_root("the_probe_writes_to_the_upper_not_the_base") {
        return;
    }
    let env = TestEnv::new();
    let rootfs = base(&env);
    let token = format!("t{}", std::process::id());
    let written = format!("isolab-write-{token}");
    let probe = env
        .cmd(STAGE)
        .args(["--root", "store", "run", "--name", "probe", "--rootfs", "rootfs", "--"])
        .args(["/isolab/probe", "--check", "rootfs-write", "--token", &token, "--hold-ms", "3000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = eventually(Duration::from_secs(10), || {
        containers(&env).iter().any(|dir| dir.join("upper").join(&written).exists())
    });
    assert!(!rootfs.join(&written).exists(), "the probe's file reached the base");
    let output = probe.wait_with_output().unwrap();
    assert!(seen, "the probe's file never appeared in the container's upper");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let check = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "rootfs-write");
    assert!(check.is_some(), "{report}");
    assert!(!rootfs.join(&written).exists());
    // The compare column's arguments (stage 3's, and a store): --rm leaves nothing behind.
    let column = ["run", "--rm", "--rootfs", "rootfs", "--memory", "64M", "--pids", "32"];
    let probe = ["/isolab/probe", "--check", "rootfs-write", "--token", &token, "--hold-ms", "10"];
    let mut args = column.to_vec();
    args.extend(["--cpus", "0.5", "--"]);
    args.extend(probe);
    let output = run_stage4(&env, &args);
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    assert_eq!(containers(&env).len(), 1, "only the container named probe is left");
}

#[test]
fn rootless_overlay_in_a_user_namespace() {
    if !require_root("rootless_overlay_in_a_user_namespace") {
        return;
    }
    let env = TestEnv::new();
    let rootfs = base(&env);
    // A base of the user's own (root inside is the user outside) and a store it may write.
    let chown = run(Command::new("chown").args(["-R", "65534:65534"]).arg(&rootfs));
    assert!(chown.status.success());
    fs::create_dir(env.path().join("store")).unwrap();
    nix::unistd::chown(&env.path().join("store"), Some(65534.into()), Some(65534.into())).unwrap();
    let before = describe_tree(&rootfs);
    let as_nobody = |args: &[&str]| {
        run(Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(bin(STAGE))
            .args(["--root", "store"])
            .args(args)
            .current_dir(env.path()))
    };
    let script = "rm -rf /srv/data; mkdir /srv/data; echo new > /srv/data/new; rm /etc/motd; id -u";
    let output = as_nobody(&[
        "run",
        "--rootfs",
        "rootfs",
        "--name",
        "mine",
        "--cgroups",
        "optional",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    let stderr = text(&output.stderr);
    assert!(
        !stderr.contains("refuses unprivileged user namespaces"),
        "this kernel does not allow unprivileged user namespaces: {stderr}"
    );
    assert_eq!(code(&output), 0, "{stderr}");
    assert_eq!(text(&output.stdout), "0\n", "root inside");
    // In a user namespace, overlayfs marks the opaque directory with a user.* xattr.
    let output = as_nobody(&["diff", "mine", "--upper"]);
    let upper = text(&output.stdout);
    assert!(
        upper.contains("opaque   /srv/data") && upper.contains("whiteout /etc/motd"),
        "{upper}"
    );
    let opaque = container_dir(&env, "mine").join("upper/srv/data");
    let listed = run(Command::new("ls").arg("-la").arg(&opaque));
    assert!(listed.status.success());
    assert_eq!(describe_tree(&rootfs), before, "the base changed");
    let output = as_nobody(&["rm", "mine"]);
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    assert!(containers(&env).is_empty());
}

#[test]
fn bad_input_is_one_line_exit_125_and_affects_no_other_container() {
    if !require_root("bad_input_is_one_line_exit_125_and_affects_no_other_container") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    let mut shown = String::new();
    for name in ["web", "db"] {
        let output =
            run_stage4(&env, &["run", "--rootfs", "rootfs", "--name", name, "--", "/bin/true"]);
        assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    }
    let cases: &[&[&str]] = &[
        &["run", "--rootfs", "rootfs", "--name", "web", "--", "/bin/true"],
        &["rm", "nosuch"],
        &["start", "nosuch"],
        &["run", "--rootfs", "rootfs", "--name", "bad/name", "--", "/bin/true"],
        &["run", "--rootfs", "rootfs", "--storage", "zfs", "--", "/bin/true"],
        &["run", "--rootfs", "rootfs", "--root", "rootfs/store", "--", "/bin/true"],
        &["run", "--rootfs", "rootfs", "--ns", "pid,user", "--", "/bin/true"],
    ];
    for args in cases {
        let (transcript, output) = stage4(&env, args);
        check_one_line_125(&transcript, &output);
        shown.push_str(&transcript);
    }

    // A store the user may not write: as nobody, in root's store.
    let output = run(Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(bin(STAGE))
        .args([
            "--root",
            "store",
            "run",
            "--rootfs",
            "rootfs",
            "--cgroups",
            "optional",
            "--",
            "/bin/true",
        ])
        .current_dir(env.path()));
    let typed = "stage4-overlay --root store run --rootfs rootfs --cgroups optional -- /bin/true";
    let nobody = transcript(&format!("{typed}   # as uid 65534"), &output);
    assert_eq!(code(&output), 125, "{nobody}");
    assert!(nobody.contains("belongs to uid 0, not to uid 65534"), "{nobody}");
    // The cgroup warning (rootless, --cgroups optional) depends on the host (none where a
    // cgroup v2 subtree is delegated to the user): shown as a placeholder that says so.
    let nobody: String = nobody
        .lines()
        .map(|l| match l.contains("warning: running without a cgroup") {
            true => "[on a host without a cgroup delegated to uid 65534: a warning that limits \
                     are off]\n"
                .to_string(),
            false => format!("{l}\n"),
        })
        .collect();
    shown.push_str(&nobody);

    // A read-only store, in a mount namespace of its own (the host's table is not touched).
    fs::create_dir(env.path().join("ro-store")).unwrap();
    let script = format!(
        "mount --bind -o ro ro-store ro-store && exec {} --root ro-store run --rootfs rootfs -- /bin/true",
        bin(STAGE).display()
    );
    let output = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir(env.path()));
    let ro = transcript(
        "stage4-overlay --root ro-store run --rootfs rootfs -- /bin/true   # ro-store is read-only",
        &output,
    );
    check_one_line_125(&ro, &output);
    assert!(ro.contains("EROFS"), "{ro}");
    shown.push_str(&ro);

    // A store on an overlayfs cannot hold an upper layer (isolab inside a container).
    fs::create_dir_all(env.path().join("o/lower")).unwrap();
    fs::create_dir_all(env.path().join("o/upper")).unwrap();
    fs::create_dir_all(env.path().join("o/work")).unwrap();
    fs::create_dir_all(env.path().join("o/merged")).unwrap();
    let script = format!(
        "mount -t overlay overlay -o lowerdir=o/lower,upperdir=o/upper,workdir=o/work o/merged && \
         exec {} --root o/merged/store run --rootfs rootfs -- /bin/true",
        bin(STAGE).display()
    );
    let output = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir(env.path()));
    let on_overlay = transcript(
        "stage4-overlay --root o/merged/store run --rootfs rootfs -- /bin/true   # o/merged is an overlay",
        &output,
    );
    check_one_line_125(&on_overlay, &output);
    assert!(on_overlay.contains("cannot be an overlay's upper layer"), "{on_overlay}");
    shown.push_str(&on_overlay);

    // A base on an overlay of an overlay: a third level is more than the kernel stacks.
    for dir in ["n/a-upper", "n/a-work", "n/a", "n/b-upper", "n/b-work", "n/b"] {
        fs::create_dir_all(env.path().join(dir)).unwrap();
    }
    let script = format!(
        "mount -t overlay overlay -o lowerdir=rootfs,upperdir=n/a-upper,workdir=n/a-work n/a && \
         mount -t overlay overlay -o lowerdir=n/a,upperdir=n/b-upper,workdir=n/b-work n/b && \
         exec {} --root store run --rootfs n/b -- /bin/true",
        bin(STAGE).display()
    );
    let output = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir(env.path()));
    let nested = transcript(
        "stage4-overlay --root store run --rootfs n/b -- /bin/true   # n/b: an overlay on n/a, an overlay",
        &output,
    );
    check_one_line_125(&nested, &output);
    assert!(nested.contains("stacking depth"), "{nested}");
    shown.push_str(&nested);

    // A corrupt state file: that container is broken, the others are not.
    let broken = container_dir(&env, "db");
    fs::write(broken.join("state.json"), "{\"status\": \"runn").unwrap();
    let (ps, output) = stage4(&env, &["ps"]);
    assert_eq!(code(&output), 0, "{ps}");
    assert!(ps.contains("broken") && ps.contains("state.json is corrupt"), "{ps}");
    assert!(ps.lines().any(|line| line.contains(" web ") && line.contains("exited")), "{ps}");
    shown.push_str(&ps);
    for args in [&["start", "db"][..], &["rm", "db"][..]] {
        let (transcript, output) = stage4(&env, args);
        check_one_line_125(&transcript, &output);
        assert!(transcript.contains("state.json is corrupt"), "{transcript}");
        shown.push_str(&transcript);
    }
    // Others work as before.
    let (started, output) = stage4(&env, &["start", "web"]);
    assert_eq!(code(&output), 0, "{started}");
    let (forced, output) = stage4(&env, &["rm", "--force", "db"]);
    assert_eq!(code(&output), 0, "{forced}");
    shown.push_str(&forced);
    assert!(!broken.exists());
    // No failed run left a container behind, nor a mount.
    assert_eq!(containers(&env).len(), 1, "{:?}", containers(&env));
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    settings(&env).bind(|| insta::assert_snapshot!("stage4_errors", shown));
}
