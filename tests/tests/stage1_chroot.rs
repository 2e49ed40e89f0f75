//! Stage 1 end to end: the real `stage1-chroot` binary, run as a learner would, in a busybox
//! rootfs built by the real `rootfs-builder`. Transcripts are insta snapshots, and the book
//! shows the very same text (see `book.rs`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isolab_tests::*;

/// Runs stage1-chroot with `args` and returns the transcript (as the book shows it).
fn stage1(env: &TestEnv, args: &[&str]) -> (String, std::process::Output) {
    transcript_of(env, "stage1-chroot", args)
}

#[test]
fn exit_codes_are_the_commands_own() {
    if !require_root("exit_codes_are_the_commands_own") {
        return;
    }
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    std::fs::write(env.path().join("rootfs/tmp/notes.txt"), "not a program\n").unwrap();

    let cases: &[(&[&str], i32)] = &[
        (&["run", "--rootfs", "rootfs", "--", "/bin/sh", "-c", "echo hello from the jail"], 0),
        (&["run", "--rootfs", "rootfs", "--", "/bin/sh", "-c", "exit 3"], 3),
        (&["run", "--rootfs", "rootfs", "--", "/tmp/notes.txt"], 126),
        (&["run", "--rootfs", "rootfs", "--", "python3"], 127),
        (&["run", "--rootfs", "rootfs", "--", "/bin/sh", "-c", "kill -KILL $$"], 137),
    ];
    let mut shown = String::new();
    for (args, expected) in cases {
        let (transcript, output) = stage1(&env, args);
        assert_eq!(code(&output), *expected, "{transcript}");
        shown.push_str(&transcript);
    }
    snapshot_settings(Some(&env)).bind(|| insta::assert_snapshot!("stage1_exit_codes", shown));
}

#[test]
fn the_jail_sees_the_rootfs_not_the_host() {
    if !require_root("the_jail_sees_the_rootfs_not_the_host") {
        return;
    }
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    // A host file next to the rootfs: absolute paths inside the jail cannot reach it.
    let secret = env.path().join("host-secret.txt");
    std::fs::write(&secret, "host only\n").unwrap();
    let secret_path = secret.to_str().unwrap();

    let (listing, output) = stage1(&env, &["run", "--rootfs", "rootfs", "--", "ls", "/"]);
    assert_eq!(code(&output), 0, "{listing}");
    let names: Vec<String> = text(&output.stdout).split_whitespace().map(String::from).collect();
    for expected in ["bin", "etc", "isolab", "proc", "tmp"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n == "work" || n == "boot"), "host dirs visible: {names:?}");

    let output = run(env
        .cmd("stage1-chroot")
        .args(["run", "--rootfs", "rootfs", "--", "cat"])
        .arg(secret_path));
    assert_eq!(code(&output), 1, "cat of the host path must fail inside the jail");
    assert!(text(&output.stderr).contains("No such file or directory"));

    snapshot_settings(Some(&env)).bind(|| insta::assert_snapshot!("stage1_ls", listing));
}

#[test]
fn stdin_and_stdout_pass_through() {
    if !require_root("stdin_and_stdout_pass_through") {
        return;
    }
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    let mut child = env
        .cmd("stage1-chroot")
        .args([
            "run",
            "--rootfs",
            "rootfs",
            "--",
            "/bin/sh",
            "-c",
            "read line; echo \"got: $line\"",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"typed by the user\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(text(&output.stdout), "got: typed by the user\n");
}

#[test]
fn environment_workdir_and_user() {
    if !require_root("environment_workdir_and_user") {
        return;
    }
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    let script =
        "pwd; id -u; id -g; echo \"HOME=$HOME GREETING=$GREETING\"; env | sort | cut -d= -f1";
    let (transcript, output) = stage1(
        &env,
        &[
            "run",
            "--rootfs",
            "rootfs",
            "--user",
            "65534",
            "--workdir",
            "/tmp",
            "--env",
            "GREETING=hello",
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    assert_eq!(code(&output), 0, "{transcript}");
    let lines: Vec<&str> = std::str::from_utf8(&output.stdout).unwrap().lines().collect();
    assert_eq!(lines[..4], ["/tmp", "65534", "65534", "HOME=/ GREETING=hello"]);
    // Only the minimal environment (plus what the shell adds itself): nothing of the host's.
    assert_eq!(lines[4..], ["GREETING", "HOME", "PATH", "PWD", "SHLVL", "TERM"], "{transcript}");
}

#[test]
fn escape_succeeds_as_root() {
    if !require_root("escape_succeeds_as_root") {
        return;
    }
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    let (transcript, output) = stage1(&env, &["escape", "--rootfs", "rootfs"]);
    assert_eq!(code(&output), 0, "{transcript}");
    assert!(transcript.contains("escaped: / is now the host's root"), "{transcript}");
    // The escape tidies up after itself: nothing is left in the jail's /tmp.
    assert_eq!(std::fs::read_dir(env.path().join("rootfs/tmp")).unwrap().count(), 0);
    snapshot_settings(Some(&env))
        .bind(|| insta::assert_snapshot!("stage1_escape_root", transcript));
}

#[test]
fn escape_fails_as_nobody() {
    if !require_root("escape_fails_as_nobody") {
        return;
    }
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    let (transcript, output) = stage1(&env, &["escape", "--rootfs", "rootfs", "--user", "65534"]);
    assert_eq!(code(&output), 1, "{transcript}");
    assert!(transcript.contains("FAILED: chroot /tmp/.isolab-escape-"), "{transcript}");
    assert!(transcript.contains("EPERM"), "{transcript}");
    assert!(transcript.contains("the jail held"), "{transcript}");
    assert_eq!(std::fs::read_dir(env.path().join("rootfs/tmp")).unwrap().count(), 0);
    snapshot_settings(Some(&env))
        .bind(|| insta::assert_snapshot!("stage1_escape_nobody", transcript));
}

#[test]
fn sigterm_to_the_runtime_reaches_the_command() {
    if !require_root("sigterm_to_the_runtime_reaches_the_command") {
        return;
    }
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    let mut child = env
        .cmd("stage1-chroot")
        .args(["run", "--rootfs", "rootfs", "--", "/bin/sleep", "30"])
        .spawn()
        .unwrap();
    // Give it time to exec, then signal the *runtime*, not the command.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "the runtime reports the command's death by SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(5), "the command ended promptly");
}

#[test]
fn bad_input_is_one_line_and_exit_125() {
    if !require_root("bad_input_is_one_line_and_exit_125") {
        return;
    }
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    std::fs::write(env.path().join("a-file"), "").unwrap();
    let cases: &[(&[&str], i32)] = &[
        (&["run", "--rootfs", "missing", "--", "/bin/sh"], 125),
        (&["run", "--rootfs", "a-file", "--", "/bin/sh"], 125),
        (&["run", "--rootfs", "rootfs", "--user", "abc", "--", "/bin/sh"], 125),
        (&["run", "--rootfs", "rootfs", "--env", "NOVALUE", "--", "/bin/sh"], 125),
        (&["run", "--rootfs", "rootfs", "--workdir", "/nowhere", "--", "/bin/sh"], 125),
        (&["run", "--rootfs", "rootfs", "--", "no-such-command"], 127),
    ];
    let mut shown = String::new();
    for (args, expected) in cases {
        let (transcript, output) = stage1(&env, args);
        assert_eq!(code(&output), *expected, "{transcript}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("stage1-chroot: error: "), "{stderr}");
        assert!(output.stdout.is_empty());
        shown.push_str(&transcript);
    }
    snapshot_settings(Some(&env)).bind(|| insta::assert_snapshot!("stage1_errors", shown));
}

#[test]
fn not_root_is_told_to_run_as_root() {
    if !require_root("not_root_is_told_to_run_as_root") {
        return;
    }
    if !host_has("setpriv") {
        panic!("setpriv (util-linux) is needed to run a command as another user");
    }
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    let output = run(Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(bin("stage1-chroot"))
        .args(["run", "--rootfs"])
        .arg(env.path().join("rootfs"))
        .args(["--", "/bin/true"]));
    assert_eq!(code(&output), 125);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("chroot") && stderr.contains("EPERM") && stderr.contains("run as root"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
