//! Signals and processes, end to end: the real stage binaries as a user starts and stops them
//! (from a script that ignores SIGINT, under `timeout`, with Ctrl-C on a terminal, killed with
//! SIGKILL), checked from outside: exit codes, the lines on stderr, how long it took, and which
//! processes are left.
//!
//! Every test bounds its waits, and a guard kills, by pid, what the test started and what it
//! saw the container start (a pid is killed only while its start time is the one recorded, so
//! a reused pid is never hit).

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use isolab_tests::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A process, named by its pid and its start time (`/proc/<pid>/stat`, field 22), so that a
/// pid the kernel has given to another process since is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Proc {
    pid: i32,
    start: u64,
}

impl Proc {
    fn of(pid: i32) -> Option<Proc> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, after_comm) = stat.rsplit_once(')')?;
        // Fields from the 3rd on; starttime is the 22nd.
        let start = after_comm.split_whitespace().nth(19)?.parse().ok()?;
        Some(Proc { pid, start })
    }

    /// Still there, and not a zombie.
    fn alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else { return false };
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        Proc::of(self.pid) == Some(*self) && !matches!(state, Some("Z" | "X"))
    }

    fn comm(&self) -> String {
        fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default().trim().into()
    }

    fn mount_namespace(&self) -> Option<PathBuf> {
        fs::read_link(format!("/proc/{}/ns/mnt", self.pid)).ok()
    }

    fn kill(&self) {
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// The children of `pid` (all its threads'), from `/proc/<pid>/task/*/children`.
fn children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let listed = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        found.extend(listed.split_whitespace().filter_map(|child| child.parse::<i32>().ok()));
    }
    found
}

/// `pid`'s descendants, as they are now.
fn descendants(pid: i32) -> Vec<Proc> {
    let mut found = Vec::new();
    let mut next = children(pid);
    while let Some(child) = next.pop() {
        next.extend(children(child));
        found.extend(Proc::of(child));
    }
    found
}

/// Every process in the mount namespace `namespace` (`/proc/<pid>/ns/mnt`).
fn in_mount_namespace(namespace: &PathBuf) -> Vec<Proc> {
    let pids = fs::read_dir("/proc").into_iter().flatten().flatten();
    pids.filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Proc::of)
        .filter(|proc| proc.alive() && proc.mount_namespace().as_ref() == Some(namespace))
        .collect()
}

/// A runtime started by a test (possibly through a shell or `timeout`). When dropped, kills
/// what is still there of it and of every process seen under it, by pid, and reaps it.
struct Started {
    child: Child,
    seen: BTreeSet<Proc>,
    stderr: Option<Receiver<String>>,
}

impl Started {
    /// Starts `command` with stderr read line by line in the background.
    fn spawn(command: &mut Command) -> Started {
        let mut child = command.stderr(Stdio::piped()).spawn().expect("start the runtime");
        let stderr = child.stderr.take().unwrap();
        let (lines, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        Started { child, seen: BTreeSet::new(), stderr: Some(stderr_lines) }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The descendants now, remembered for the cleanup.
    fn descendants(&mut self) -> Vec<Proc> {
        let now = descendants(self.pid());
        self.seen.extend(now.iter().copied());
        now
    }

    /// Waits (at most 10 s) until a descendant runs `comm`, and returns it.
    fn wait_for(&mut self, comm: &str) -> Proc {
        let mut found = None;
        eventually(Duration::from_secs(10), || {
            found = self.descendants().into_iter().find(|proc| proc.comm() == comm);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {comm} started under the runtime: {:?}", self.lines()))
    }

    /// The next line on stderr, waiting at most `limit`.
    fn line(&self, limit: Duration) -> Option<String> {
        self.stderr.as_ref()?.recv_timeout(limit).ok()
    }

    /// The lines on stderr so far.
    fn lines(&self) -> Vec<String> {
        self.stderr.as_ref().map(|lines| lines.try_iter().collect()).unwrap_or_default()
    }

    /// Waits at most `limit` for the runtime to end.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.descendants();
        for proc in &self.seen {
            proc.kill();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for proc in &self.seen {
            proc.kill();
        }
    }
}

/// The exit code a shell would show.
fn shown(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The rootfs every test runs in (`rootfs` in the test's directory), reachable by root of a
/// user namespace.
fn rootfs(env: &TestEnv) {
    env.namespaced_rootfs("rootfs");
}

/// `stageN run` and its arguments, with stage 4's store in the test's directory and `--rm`.
fn run_args(stage: &str, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    if stage == "stage4-overlay" {
        all.extend(["--root", "store"].map(String::from));
    }
    all.extend(["run", "--rootfs", "rootfs"].map(String::from));
    if stage == "stage4-overlay" {
        all.push("--rm".into());
    }
    all.extend(args.iter().map(|arg| arg.to_string()));
    all
}

// 1. A command started from a script with `&` (SIGINT and SIGQUIT ignored, as POSIX shells do
//    for background jobs) used to inherit the ignored dispositions: `kill -INT` never stopped
//    it, even under --init.
#[test]
fn an_ignored_sigint_is_reset_for_the_command_so_kill_int_stops_it() {
    if !require_root("an_ignored_sigint_is_reset_for_the_command_so_kill_int_stops_it") {
        return;
    }
    let env = TestEnv::new();
    rootfs(&env);
    let cases: &[(&str, &[&str])] = &[
        ("stage1-chroot", &[]),
        ("stage2-namespaces", &["--init"]),
        ("stage2-namespaces", &["--ns", "mnt,uts"]),
        ("stage3-cgroups", &["--init"]),
    ];
    for (stage, options) in cases {
        let mut args = run_args(stage, options);
        args.extend(["--", "/bin/sleep", "30"].map(String::from));
        let quoted: Vec<String> = args.iter().map(|arg| shell_quote(arg)).collect();
        // The shell execs the runtime: the runtime has the shell's pid, and its dispositions.
        let script = format!(
            "trap '' INT QUIT; exec {} {}",
            shell_quote(&bin(stage).display().to_string()),
            quoted.join(" ")
        );
        let mut started = Started::spawn(
            Command::new("sh").arg("-c").arg(&script).current_dir(env.path()).stdin(Stdio::null()),
        );
        let sleep = started.wait_for("sleep");
        let ignored = fs::read_to_string(format!("/proc/{}/status", started.pid())).unwrap();
        let ignored = ignored.lines().find(|line| line.starts_with("SigIgn:")).unwrap().to_string();
        let ignored =
            u64::from_str_radix(ignored.trim_start_matches("SigIgn:").trim(), 16).unwrap();
        assert_ne!(ignored & (1 << (libc::SIGINT - 1)), 0, "the runtime should ignore SIGINT");

        let sent = Instant::now();
        kill(Pid::from_raw(started.pid()), Signal::SIGINT).unwrap();
        let status = started.wait(Duration::from_secs(5));
        assert_eq!(
            status.map(shown),
            Some(130),
            "{stage} {options:?}: the command should end by SIGINT; sleep still alive: {}; {:?}",
            sleep.alive(),
            started.lines()
        );
        assert!(sent.elapsed() < Duration::from_secs(3), "{stage}: took {:?}", sent.elapsed());
    }
}

// 2. A PID 1 without a handler drops the SIGTERM the runtime passes on: `timeout 3 stageN run
//    … -- <busy loop>` outlived its timeout by minutes. Now the runtime sends SIGKILL after
//    --stop-timeout, and says so.
#[test]
fn timeout_ends_a_pid1_busy_loop_with_sigkill_after_the_stop_timeout() {
    if !require_root("timeout_ends_a_pid1_busy_loop_with_sigkill_after_the_stop_timeout") {
        return;
    }
    assert!(host_has("timeout"), "this test needs coreutils' timeout on the host");
    let env = TestEnv::new();
    rootfs(&env);
    for stage in ["stage2-namespaces", "stage3-cgroups", "stage4-overlay"] {
        let mut args = run_args(stage, &["--stop-timeout", "1"]);
        args.extend(["--", "/bin/sh", "-c", "while :; do :; done"].map(String::from));
        // -k 20: should the runtime not end, timeout kills it (and the test fails on time).
        let mut started = Started::spawn(
            Command::new("timeout")
                .args(["--preserve-status", "-k", "20", "-s", "TERM", "2"])
                .arg(bin(stage))
                .args(&args)
                .current_dir(env.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        );
        let began = Instant::now();
        let status = started.wait(Duration::from_secs(30));
        let took = began.elapsed();
        let lines = started.lines();
        assert_eq!(status.map(shown), Some(137), "{stage}: {lines:?}");
        assert!(took < Duration::from_secs(5), "{stage}: ended after {took:?}: {lines:?}");
        assert!(
            lines.iter().any(|line| line.starts_with(&format!("{stage}: SIGTERM not delivered"))
                && line.contains("SIGKILL in 1 s; --init gives it an init")),
            "{stage}: {lines:?}"
        );
        assert!(
            lines.iter().any(|line| line
                == &format!(
                    "{stage}: the command is still running 1 s after SIGTERM: SIGKILL sent \
                     (--stop-timeout sets the wait)"
                )),
            "{stage}: {lines:?}"
        );
        if stage == "stage2-namespaces" {
            // The chapter's transcript: the command as typed, what the runtime said, the code.
            let typed = ["timeout", "--preserve-status", "-k", "20", "-s", "TERM", "2", stage]
                .into_iter()
                .map(String::from)
                .chain(args.iter().cloned())
                .map(|arg| shell_quote(&arg))
                .collect::<Vec<_>>()
                .join(" ");
            let shown = format!("$ {typed}\n{}\n[exit status 137]\n", lines.join("\n"));
            snapshot_settings(Some(&env))
                .bind(|| insta::assert_snapshot!("stage2_stop_timeout", shown));
        }
    }
}

#[test]
fn with_init_sigterm_ends_the_busy_loop_at_once_with_143_and_no_sigkill() {
    if !require_root("with_init_sigterm_ends_the_busy_loop_at_once_with_143_and_no_sigkill") {
        return;
    }
    assert!(host_has("timeout"), "this test needs coreutils' timeout on the host");
    let env = TestEnv::new();
    rootfs(&env);
    let stage = "stage2-namespaces";
    let mut args = run_args(stage, &["--init", "--stop-timeout", "1"]);
    args.extend(["--", "/bin/sh", "-c", "while :; do :; done"].map(String::from));
    let mut started = Started::spawn(
        Command::new("timeout")
            .args(["--preserve-status", "-k", "20", "-s", "TERM", "2"])
            .arg(bin(stage))
            .args(&args)
            .current_dir(env.path())
            .stdin(Stdio::null()),
    );
    let began = Instant::now();
    let status = started.wait(Duration::from_secs(30));
    let lines = started.lines();
    assert_eq!(status.map(shown), Some(143), "{lines:?}");
    assert!(began.elapsed() < Duration::from_millis(3500), "{:?}", began.elapsed());
    assert!(lines.iter().all(|line| !line.contains("SIGKILL")), "{lines:?}");
}

#[test]
fn stop_timeout_0_kills_at_once() {
    if !require_root("stop_timeout_0_kills_at_once") {
        return;
    }
    let env = TestEnv::new();
    rootfs(&env);
    let mut args = run_args("stage2-namespaces", &["--stop-timeout", "0"]);
    args.extend(["--", "/bin/sleep", "30"].map(String::from));
    let mut started = Started::spawn(env.cmd("stage2-namespaces").args(&args));
    started.wait_for("sleep");
    let sent = Instant::now();
    kill(Pid::from_raw(started.pid()), Signal::SIGTERM).unwrap();
    let status = started.wait(Duration::from_secs(5));
    assert_eq!(status.map(shown), Some(137), "{:?}", started.lines());
    assert!(sent.elapsed() < Duration::from_secs(1), "{:?}", sent.elapsed());
    assert_eq!(
        started.lines(),
        ["stage2-namespaces: SIGTERM dropped by PID 1; --stop-timeout 0: SIGKILL sent to the \
             command"]
    );
}

/// Starts `args` on a new terminal (a pty whose slave is the runtime's controlling terminal and
/// stdin, as in an interactive shell's foreground job); returns it and the pty's master, where
/// a test types.
fn on_a_terminal(env: &TestEnv, stage: &str, args: &[String]) -> (Started, fs::File) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = fs::File::from(pty.slave);
    let mut command = env.cmd(stage);
    command.args(args).stdin(Stdio::from(slave)).stdout(Stdio::null());
    // SAFETY: setsid and ioctl are async-signal-safe, as the forked child of a multi-threaded
    // test runner requires; they change only that child, which then execs the runtime.
    unsafe {
        command.pre_exec(|| {
            // A session of its own, with the pty (stdin, by now) as its controlling terminal:
            // its process group is the terminal's foreground group (man 4 tty_ioctl).
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Started::spawn(&mut command);
    (started, fs::File::from(pty.master))
}

fn ctrl_c(master: &mut fs::File) {
    master.write_all(b"\x03").expect("type Ctrl-C");
}

// Ctrl-C on a terminal reaches the whole foreground group, the command included, but PID 1
// drops it: pressing it again kills at once, long before --stop-timeout.
#[test]
fn ctrl_c_twice_kills_a_pid1_that_drops_it() {
    if !require_root("ctrl_c_twice_kills_a_pid1_that_drops_it") {
        return;
    }
    let env = TestEnv::new();
    rootfs(&env);
    let stage = "stage2-namespaces";
    let mut args = run_args(stage, &["--stop-timeout", "30"]);
    args.extend(["--", "/bin/sleep", "30"].map(String::from));
    let (mut started, mut master) = on_a_terminal(&env, stage, &args);
    let sleep = started.wait_for("sleep");
    assert!(master.as_raw_fd() >= 0);

    ctrl_c(&mut master);
    let warning = started.line(Duration::from_secs(5)).expect("a line after the first Ctrl-C");
    assert!(
        warning.starts_with("stage2-namespaces: SIGINT not delivered: the command is PID 1")
            && warning.contains("SIGKILL in 30 s (Ctrl-C again: at once); --init gives it"),
        "{warning}"
    );
    assert!(sleep.alive(), "PID 1 dropped the first Ctrl-C");

    let pressed = Instant::now();
    ctrl_c(&mut master);
    let status = started.wait(Duration::from_secs(5));
    assert_eq!(status.map(shown), Some(137), "{:?}", started.lines());
    assert!(pressed.elapsed() < Duration::from_secs(2), "{:?}", pressed.elapsed());
    let last = started.lines();
    assert_eq!(last, ["stage2-namespaces: Ctrl-C again: SIGKILL sent to the command"]);
    // The chapter's transcript, as a terminal shows it: each Ctrl-C echoed as ^C.
    let typed: Vec<String> = args.iter().map(|arg| shell_quote(arg)).collect();
    let shown =
        format!("$ {stage} {}\n^C{warning}\n^C{}\n[exit status 137]\n", typed.join(" "), last[0]);
    snapshot_settings(Some(&env)).bind(|| insta::assert_snapshot!("stage2_ctrl_c_twice", shown));
}

// A program that catches Ctrl-C (a shell with a trap, an editor, a REPL) means to go on: the
// runtime leaves it to it, however often it is pressed.
#[test]
fn ctrl_c_is_the_commands_own_when_it_catches_it() {
    if !require_root("ctrl_c_is_the_commands_own_when_it_catches_it") {
        return;
    }
    let env = TestEnv::new();
    rootfs(&env);
    let stage = "stage2-namespaces";
    let mut args = run_args(stage, &["--stop-timeout", "1"]);
    let script = "trap 'echo caught' INT; while :; do sleep 1; done";
    args.extend(["--", "/bin/sh", "-c", script].map(String::from));
    let (mut started, mut master) = on_a_terminal(&env, stage, &args);
    started.wait_for("sleep");
    ctrl_c(&mut master);
    std::thread::sleep(Duration::from_millis(300));
    ctrl_c(&mut master);
    assert_eq!(started.wait(Duration::from_millis(1800)), None, "{:?}", started.lines());
    assert_eq!(started.lines(), Vec::<String>::new());
}

// 3. Without a pid namespace, no kernel ends the container with its first process: children
//    of the command used to survive a SIGKILLed runtime (and a command that exited).
#[test]
fn without_a_pid_namespace_nothing_outlives_a_sigkilled_runtime() {
    if !require_root("without_a_pid_namespace_nothing_outlives_a_sigkilled_runtime") {
        return;
    }
    let env = TestEnv::new();
    rootfs(&env);
    let mut args = run_args("stage2-namespaces", &["--ns", "mnt,uts"]);
    args.extend(["--", "/bin/sh", "-c", "sleep 300 & sleep 300 & wait"].map(String::from));
    let mut started = Started::spawn(env.cmd("stage2-namespaces").args(&args));
    let first = started.wait_for("sleep");
    assert!(eventually(Duration::from_secs(5), || {
        started.descendants().iter().filter(|proc| proc.comm() == "sleep").count() == 2
    }));
    let namespace = first.mount_namespace().expect("the container's mount namespace");
    assert_ne!(
        Some(namespace.clone()),
        Proc::of(std::process::id() as i32).unwrap().mount_namespace()
    );
    let note = started.line(Duration::from_secs(5)).expect("the line up front");
    assert!(
        note.starts_with("stage2-namespaces: no pid namespace: ")
            && note.contains("add pid to --ns"),
        "{note}"
    );
    let typed: Vec<String> = args.iter().map(|arg| shell_quote(arg)).collect();
    let transcript = format!("$ stage2-namespaces {}\n{note}\n", typed.join(" "));
    snapshot_settings(Some(&env)).bind(|| insta::assert_snapshot!("stage2_no_pid_ns", transcript));

    kill(Pid::from_raw(started.pid()), Signal::SIGKILL).unwrap();
    assert_eq!(started.wait(Duration::from_secs(5)).map(shown), Some(137));
    let gone = eventually(Duration::from_secs(3), || in_mount_namespace(&namespace).is_empty());
    let left = in_mount_namespace(&namespace);
    started.seen.extend(left.iter().copied()); // for the guard to kill
    assert!(gone, "left behind: {left:?}");
}

#[test]
fn without_a_pid_namespace_what_the_command_leaves_ends_with_it() {
    if !require_root("without_a_pid_namespace_what_the_command_leaves_ends_with_it") {
        return;
    }
    let env = TestEnv::new();
    rootfs(&env);
    // With a mount namespace the init finds the leftovers in /proc; without (--ns none) it has
    // no /proc, and the runtime, a subreaper, ends them.
    for ns in ["mnt,uts", "none"] {
        let mut args = run_args("stage2-namespaces", &["--ns", ns]);
        args.extend(["--", "/bin/sh", "-c", "sleep 300 & sleep 1; exit 3"].map(String::from));
        let mut started = Started::spawn(env.cmd("stage2-namespaces").args(&args));
        started.wait_for("sleep");
        let left: Vec<Proc> = started.descendants();
        let status = started.wait(Duration::from_secs(10));
        assert_eq!(status.map(shown), Some(3), "--ns {ns}: {:?}", started.lines());
        let alive: Vec<Proc> = left.into_iter().filter(Proc::alive).collect();
        assert!(alive.is_empty(), "--ns {ns}: left behind: {alive:?}");
    }
}

// 4. `-- ""` used to exec `/usr/local/sbin/` and fail with a confusing EACCES.
#[test]
fn an_empty_program_name_is_127_command_not_found() {
    if !require_root("an_empty_program_name_is_127_command_not_found") {
        return;
    }
    let env = TestEnv::new();
    rootfs(&env);
    for stage in ["stage1-chroot", "stage2-namespaces", "stage3-cgroups", "stage4-overlay"] {
        let mut args = run_args(stage, &[]);
        args.extend(["--", "", "arg"].map(String::from));
        let output = run(env.cmd(stage).args(&args));
        let stderr = text(&output.stderr);
        assert_eq!(code(&output), 127, "{stage}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "{stage}: error: '': command not found: the program name after -- is empty (was \
                 a variable empty, as in -- \"$CMD\"?)\n"
            )
        );
    }
    // Refused before anything was made: stage 4's store holds no container.
    let containers = fs::read_dir(env.path().join("store/containers"));
    let made: Vec<_> = containers.into_iter().flatten().flatten().map(|e| e.file_name()).collect();
    assert!(made.is_empty(), "{made:?}");
}
