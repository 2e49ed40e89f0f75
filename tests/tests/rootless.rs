//! Without root, end to end: what a user who is not root meets, run as uid 65534 with
//! `setpriv` (the test runner itself stays root, to set up and to clean up).
//!
//! - `gc` cleans what is theirs (their store) and says, in one line, that the host's cgroups
//!   were not theirs to clean, instead of failing on them;
//! - `isolab doctor` says per stage what runs for them, and is ready when something does;
//! - `--cgroups optional` warns in one short line, not with every hierarchy of the host;
//!
//! and two clear errors anyone may meet: a `--memory` too small to start a command, and
//! `isolab gc --root` naming a file.
//!
//! Nothing here assumes this host's cgroup layout: without root, on cgroup v1 or on a v2 host
//! where nothing is delegated to uid 65534, there is no cgroup for them either way.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use isolab_tests::*;
use nix::unistd::Pid;

/// The unprivileged user the tests act as.
const NOBODY: &str = "65534";

/// `setpriv` to uid and gid 65534 with no supplementary groups, then `program`.
fn as_nobody(env: &TestEnv, program: &str) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
        .arg(bin(program))
        .current_dir(env.path())
        .stdin(Stdio::null());
    command
}

/// A base rootfs of nobody's own and an empty store they may write, as the rootless stage 4
/// test sets them up: root of nobody's user namespace is nobody outside.
fn nobody_s_base_and_store(env: &TestEnv) -> (PathBuf, PathBuf) {
    let rootfs = env.namespaced_rootfs("rootfs");
    let chown = run(Command::new("chown").args(["-R", "65534:65534"]).arg(&rootfs));
    assert!(chown.status.success(), "{}", text(&chown.stderr));
    let store = env.path().join("store");
    fs::create_dir(&store).unwrap();
    nix::unistd::chown(&store, Some(65534.into()), Some(65534.into())).unwrap();
    (rootfs, store)
}

/// Lines of `text` that begin with `prefix`.
fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|line| line.starts_with(prefix)).collect()
}

/// The STATUS of container `name` in `stage4-overlay ps`.
fn status_of(env: &TestEnv, name: &str) -> String {
    let output = run(as_nobody(env, "stage4-overlay").args(["--root", "store", "ps"]));
    let ps = text(&output.stdout);
    let row = ps.lines().find(|line| line.split_whitespace().nth(1) == Some(name));
    row.and_then(|row| row.split_whitespace().nth(2)).unwrap_or_default().to_string()
}

// Regression: as a user without root on a v1 or hybrid host, every gc exited 125 ("limits
// without root need cgroup v2 …"): the cgroup gc failed first, so the store's never ran, and
// a container left `running` by a killed rootless runtime stayed so.
#[test]
fn nobody_s_gc_cleans_their_store_after_their_runtime_is_killed() {
    if !require_root("nobody_s_gc_cleans_their_store_after_their_runtime_is_killed") {
        return;
    }
    let env = TestEnv::new();
    nobody_s_base_and_store(&env);
    let said = fs::File::create(env.path().join("runtime.stderr")).unwrap();
    let child = as_nobody(&env, "stage4-overlay")
        .args(["--root", "store", "run", "--rootfs", "rootfs", "--name", "mine"])
        .args(["--cgroups", "optional", "--", "/bin/sleep", "60"])
        .stdout(Stdio::null())
        .stderr(said)
        .spawn()
        .expect("start stage4-overlay as uid 65534");
    let runtime = Background(child);
    // Running: its state says so, and its command is sleeping (the store records a container
    // as made, not half-made, once its command has started).
    let sleeping = |pid: &Pid| {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm == "sleep\n")
    };
    let started = eventually(Duration::from_secs(10), || {
        status_of(&env, "mine") == "running" && runtime.children().iter().any(sleeping)
    });
    let said = || fs::read_to_string(env.path().join("runtime.stderr")).unwrap_or_default();
    assert!(started, "the rootless container never ran: {}", said());
    // SIGKILL of the runtime (and of its container, which the guard kills with it).
    drop(runtime);

    // Stage 4's gc, as nobody: their store is cleaned (the state the dead runtime left says
    // running: gc marks it exited, and says so), the host's cgroups are left to root.
    let output = run(as_nobody(&env, "stage4-overlay").args(["--root", "store", "gc"]));
    let said = transcript("stage4-overlay --root store gc", &output);
    assert_eq!(code(&output), 0, "{said}");
    assert!(output.stderr.is_empty(), "{said}");
    let about_mine = lines_starting(&said, "container mine ");
    assert_eq!(about_mine.len(), 1, "{said}");
    assert!(about_mine[0].contains("runtime that died"), "{said}");
    assert_eq!(status_of(&env, "mine"), "exited", "{said}");
    let about_cgroups = lines_starting(&said, "cgroups: ");
    assert_eq!(about_cgroups.len(), 1, "one line about the host's cgroups: {said}");
    assert!(about_cgroups[0].len() < 120, "{said}");
    assert!(about_cgroups[0].contains("uid 65534"), "{said}");

    // And again: nothing left of theirs, said so; `isolab gc` and stage 3's the same way.
    let output = run(as_nobody(&env, "stage4-overlay").args(["--root", "store", "gc"]));
    let said = transcript("stage4-overlay --root store gc", &output);
    assert_eq!(code(&output), 0, "{said}");
    assert!(lines_starting(&said, "container mine ").is_empty(), "fixed once: {said}");
    let output = run(as_nobody(&env, "isolab").args(["gc", "--root", "store"]));
    let said = transcript("isolab gc --root store", &output);
    assert_eq!(code(&output), 0, "{said}");
    assert_eq!(lines_starting(&said, "cgroups: ").len(), 1, "{said}");
    let output = run(as_nobody(&env, "stage3-cgroups").arg("gc"));
    let said = transcript("stage3-cgroups gc", &output);
    assert_eq!(code(&output), 0, "{said}");
    assert_eq!(lines_starting(&said, "cgroups: ").len(), 1, "{said}");

    let output = run(as_nobody(&env, "stage4-overlay").args(["--root", "store", "rm", "mine"]));
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
}

// Regression: doctor as a user without root printed `fail root` and "not ready" (exit 1),
// though stages 2 and 4 run without root.
#[test]
fn doctor_as_nobody_is_ready_and_says_what_each_stage_can_do() {
    if !require_root("doctor_as_nobody_is_ready_and_says_what_each_stage_can_do") {
        return;
    }
    let env = TestEnv::new();
    let output = run(as_nobody(&env, "isolab").arg("doctor"));
    let report = text(&output.stdout);
    assert_eq!(code(&output), 0, "{report}{}", text(&output.stderr));
    assert!(lines_starting(&report, "fail ").is_empty(), "{report}");
    assert!(report.contains("\nwhat runs for uid 65534 (not root):\n"), "{report}");
    let stage = |n: u8| {
        let line = report.lines().find(|line| line.get(9..16) == Some(&format!("stage {n}")));
        line.unwrap_or_else(|| panic!("no stage {n} line in\n{report}")).to_string()
    };
    for n in 1..=5 {
        let status = stage(n).split_whitespace().next().unwrap().to_string();
        assert!(["ok", "limited", "no"].contains(&status.as_str()), "{report}");
    }
    // chroot needs CAP_SYS_CHROOT; a user namespace does not give it on the host.
    assert!(stage(1).starts_with("no "), "{report}");
    assert!(report.contains("fix: sudo stage1-chroot"), "{report}");
    // The other rootless tests run stages 2, 4 and 5 as uid 65534 on this machine: doctor
    // agrees.
    assert!(stage(2).starts_with("ok "), "{report}");
    assert!(!stage(4).starts_with("no "), "{report}");
    assert!(!stage(5).starts_with("no "), "{report}");
    let last = report.lines().last().unwrap_or_default();
    assert!(last.starts_with("ready for uid 65534: stages 2, 3, 4 and 5 run"), "{report}");

    // Asked for a stage that needs root: not ready, exit 1, and which one.
    let output = run(as_nobody(&env, "isolab").args(["doctor", "--stage", "1,4"]));
    let report = text(&output.stdout);
    assert_eq!(code(&output), 1, "{report}");
    assert!(
        report.ends_with("not ready for uid 65534: stage 1 does not run; see the fixes above\n"),
        "{report}"
    );
    let output = run(as_nobody(&env, "isolab").args(["doctor", "--stage", "2", "--stage", "4"]));
    assert_eq!(code(&output), 0, "{}", text(&output.stdout));
}

// Regression: the warning of `--cgroups optional` without root was one ~500-character line
// naming every cgroup hierarchy of the host, on every run.
#[test]
fn the_rootless_cgroup_warning_is_one_short_line() {
    if !require_root("the_rootless_cgroup_warning_is_one_short_line") {
        return;
    }
    let env = TestEnv::new();
    nobody_s_base_and_store(&env);
    let stage3 = ["run", "--rootfs", "rootfs", "--cgroups", "optional", "--", "/bin/true"];
    let stage4 = ["--root", "store", "run", "--rm", "--rootfs", "rootfs"];
    let stage4: Vec<&str> = stage4.iter().chain(&stage3[3..]).copied().collect();
    for (program, args) in [("stage3-cgroups", &stage3[..]), ("stage4-overlay", &stage4[..])] {
        let output = run(as_nobody(&env, program).args(args));
        let stderr = text(&output.stderr);
        assert_eq!(code(&output), 0, "{program}: {stderr}");
        let warnings = lines_starting(&stderr, &format!("{program}: warning: "));
        assert_eq!(warnings.len(), 1, "{program}: {stderr}");
        let warning = warnings[0];
        assert!(warning.chars().count() < 120, "{} characters: {warning}", warning.len());
        assert!(warning.contains("without limits"), "{warning}");
        assert!(warning.contains("isolab doctor"), "{warning}");
        assert!(!warning.contains("/sys/fs/cgroup"), "{warning}");
    }
}

/// Runs `stage3-cgroups run --rootfs rootfs --memory <memory> -- /bin/true`; its transcript.
fn stage3_with_memory(env: &TestEnv, memory: &str) -> (String, Output) {
    let args = ["run", "--rootfs", "rootfs", "--memory", memory, "--", "/bin/true"];
    transcript_of(env, "stage3-cgroups", &args)
}

// Regression: `--memory 1`, `4095` and `64k` were accepted; the kernel rounds a limit down to
// whole pages, and the command was OOM-killed at once, reported with "limit 0 B".
#[test]
fn a_memory_limit_below_6_mib_is_refused_in_one_line() {
    let env = TestEnv::new();
    env.skeleton_rootfs("rootfs");
    let mut shown = String::new();
    for memory in ["1", "4095", "64k", "5M"] {
        let (said, output) = stage3_with_memory(&env, memory);
        assert_eq!(code(&output), 125, "{said}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {said}");
        assert!(
            stderr.starts_with(&format!("stage3-cgroups: error: invalid --memory '{memory}': ")),
            "{said}"
        );
        assert!(stderr.contains("less than 6 MiB"), "{said}");
        assert!(output.stdout.is_empty(), "{said}");
        shown.push_str(&said);
    }
    snapshot_settings(Some(&env)).bind(|| insta::assert_snapshot!("stage3_memory_minimum", shown));
}

// Regression: `isolab gc --root FILE` found "no stale containers in FILE" and exited 0.
#[test]
fn isolab_gc_refuses_a_root_that_is_a_file() {
    let env = TestEnv::new();
    fs::write(env.path().join("store.json"), "{}\n").unwrap();
    let (said, output) = transcript_of(&env, "isolab", &["gc", "--root", "store.json"]);
    assert_eq!(code(&output), 125, "{said}");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {said}");
    assert!(stderr.starts_with("isolab: error: --root store.json is not a directory"), "{said}");
    assert!(output.stdout.is_empty(), "nothing was cleaned first: {said}");
    assert_eq!(fs::read_to_string(env.path().join("store.json")).unwrap(), "{}\n");
}
