//! The cgroup v2 lane: stage 3 and stage 4 on a real cgroup v2 hierarchy, in a VM.
//!
//! The machine the tests usually run on has its controllers on cgroup v1 (and a cgroup2 mount
//! with none); most learners' hosts are v2-only. So this test boots Debian 12's own kernel
//! (`linux-image-amd64`, downloaded, never installed) under qemu with TCG, from an initramfs of
//! the real binaries that `scripts/v2-lane` builds. Its /init, `tests/vm/init`, mounts cgroup2
//! with memory, cpu and pids handed down and runs each check with the real binaries, printing
//! `PASS <check>` or `FAIL <check>: <detail>` on the serial console; the test asserts that every
//! check passed. The transcripts the book shows for v1 are recorded for v2 too
//! (`stage3_v2_*` snapshots, hence `book/src/generated/stage3_v2_*.txt`).
//!
//! Outside CI, a machine without qemu, cpio or Debian's kernel package is told what is missing
//! and the test passes; in CI (`CI=true`) a missing piece is a failure.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isolab_tests::*;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The checks `tests/vm/init` runs; each must print `PASS <check>`.
const CHECKS: [&str; 7] = ["oom", "pids", "cpu", "born-in-cgroup", "gc", "stage4", "rootless"];

/// The transcripts it prints between `BEGIN <name>` and `END <name>`: the v2 twins of the
/// book's `stage3_oom`, `stage3_fork_bomb`, `stage3_cpu_share`, `stage3_gc`, `stage3_rootless`.
const TRANSCRIPTS: [&str; 5] = [
    "stage3_v2_oom",
    "stage3_v2_fork_bomb",
    "stage3_v2_cpu_share",
    "stage3_v2_gc",
    "stage3_v2_rootless",
];

/// Fetching the kernel (a 70 MB download, the first time) or building the initramfs.
const PREPARE_LIMIT: Duration = Duration::from_secs(300);
/// The VM, from qemu's start to its power-off: about 30 s on 2 cores with TCG.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// A process group this test started: killed, all of it, if the test leaves before the
/// group's leader has ended (a timeout, a panic), so that no qemu outlives the test.
struct Group {
    child: Child,
    reaped: bool,
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            // The leader is not reaped yet, so its pid still names our group and nothing else.
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// What [`run_for`] saw: the exit status (None after a timeout), stdout and stderr.
struct Ran {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Ran {
    fn ok(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        text(&bytes)
    })
}

/// Runs `command` in a process group of its own for at most `limit`, then kills the group.
/// The command also dies with the test's thread (PR_SET_PDEATHSIG), should the test be killed.
fn run_for(mut command: Command, limit: Duration) -> Ran {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // SAFETY: between fork and exec the closure only calls prctl, which is async-signal-safe
    // and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child =
        command.spawn().unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    let stdout = read_all(child.stdout.take().expect("stdout"));
    let stderr = read_all(child.stderr.take().expect("stderr"));
    let mut group = Group { child, reaped: false };
    let status = loop {
        if let Some(status) = group.child.try_wait().expect("wait") {
            group.reaped = true;
            break Some(status);
        }
        if start.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = start.elapsed();
    drop(group);
    Ran { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap(), took }
}

/// `scripts/v2-lane <step>` with this test's binaries and work directory.
fn lane(work: &Path, step: &str) -> Command {
    let mut command = Command::new(workspace_root().join("scripts/v2-lane"));
    command.arg("--bin-dir").arg(bin_dir()).arg("--work").arg(work).arg(step);
    command
}

/// The lines between `BEGIN <name>` and `END <name>`, without their `| ` prefix.
fn transcript_in(console: &str, name: &str) -> Option<String> {
    let begin = format!("BEGIN {name}");
    let mut lines = console.lines().skip_while(|line| *line != begin).skip(1);
    let mut body = String::new();
    for line in lines.by_ref() {
        if line == format!("END {name}") {
            return Some(body);
        }
        let line = line.strip_prefix("| ").or_else(|| line.strip_prefix('|'))?;
        body.push_str(line);
        body.push('\n');
    }
    None
}

/// Stage 3's filters (tests/tests/stage3_cgroups.rs): what varies between runs.
fn settings() -> insta::Settings {
    let mut settings = snapshot_settings(None);
    settings.clear_filters();
    settings.add_filter(r"box-\d+", "box-[RUNTIME PID]");
    settings.add_filter(r"\b\d+\.\d\d s\b", "[DURATION]");
    settings.add_filter(r"throttled \d+ periods", "throttled [N] periods");
    settings.add_filter(r"got \d\.\d\d of a CPU", "got [SHARE] of a CPU");
    settings.add_filter(r"longest stall \d+ ms", "longest stall [N] ms");
    settings.add_filter(
        r"memory: peak \d+(\.\d+)? (B|KiB|MiB|GiB), limit none",
        "memory: peak [SIZE], limit none",
    );
    settings
}

#[test]
fn stage3_and_stage4_on_cgroup_v2_in_a_vm() {
    // What this machine lacks to run the lane: a skip outside CI, a failure in CI.
    let mut missing: Vec<String> = ["qemu-system-x86_64", "cpio"]
        .iter()
        .filter(|program| !host_has(program))
        .map(|program| format!("{program} (scripts/setup installs it)"))
        .collect();
    for name in ["stage3-cgroups", "stage4-overlay", "isolab-probe", "rootfs-builder"] {
        bin(name); // built by the README's test command; says how when it is not
    }
    let env = TestEnv::new();
    let work = env.path().join("v2-lane");
    let kernel = missing.is_empty().then(|| run_for(lane(&work, "kernel"), PREPARE_LIMIT));
    if let Some(kernel) = kernel.as_ref().filter(|kernel| !kernel.ok()) {
        missing.push(format!(
            "Debian's kernel (`scripts/v2-lane kernel` failed: {})",
            kernel.stderr.trim()
        ));
    }
    if !missing.is_empty() {
        let why = format!("missing {}", missing.join("; "));
        skip("stage3_and_stage4_on_cgroup_v2_in_a_vm", "the cgroup v2 lane (a VM)", &why);
        return;
    }
    let kernel = kernel.expect("fetched");

    let initramfs = run_for(lane(&work, "initramfs"), PREPARE_LIMIT);
    assert!(
        initramfs.ok(),
        "scripts/v2-lane initramfs failed ({:?}):\n{}{}",
        initramfs.status,
        initramfs.stdout,
        initramfs.stderr
    );

    let vm = run_for(lane(&work, "boot"), BOOT_LIMIT);
    let console = vm.stdout.replace('\r', "");
    let lines: Vec<&str> = console.lines().map(str::trim_end).collect();
    let protocol: Vec<&str> = lines.iter().copied().filter(|line| !line.starts_with('|')).collect();
    eprintln!(
        "cgroup v2 lane: kernel {:.1} s, initramfs {:.1} s, VM {:.1} s; {}",
        kernel.took.as_secs_f64(),
        initramfs.took.as_secs_f64(),
        vm.took.as_secs_f64(),
        initramfs.stderr.trim()
    );
    for line in &protocol {
        if ["BOOTED", "INFO", "TIME", "PASS", "FAIL", "DONE"].iter().any(|p| line.starts_with(p)) {
            eprintln!("  {line}");
        }
    }

    let timed_out = vm.status.is_none();
    assert!(!timed_out, "the VM did not power off within {BOOT_LIMIT:?}:\n{console}{}", vm.stderr);
    assert!(
        lines.iter().any(|line| line.starts_with("DONE")),
        "the VM's init did not finish its checks ({:?}):\n{console}{}",
        vm.status,
        vm.stderr
    );
    let failed: Vec<&str> =
        protocol.iter().copied().filter(|line| line.starts_with("FAIL")).collect();
    let not_passed: Vec<&str> = CHECKS
        .iter()
        .copied()
        .filter(|check| !protocol.contains(&format!("PASS {check}").as_str()))
        .collect();
    assert!(
        failed.is_empty() && not_passed.is_empty(),
        "checks in the cgroup v2 VM failed: {failed:?}, not passed: {not_passed:?}\n{console}"
    );

    // The book's transcripts, whole, as the console showed them (tests/tests/book.rs copies
    // the snapshots the chapter includes into book/src/generated).
    for name in TRANSCRIPTS {
        let shown = transcript_in(&console, name)
            .unwrap_or_else(|| panic!("no transcript {name} on the console:\n{console}"));
        settings().bind(|| insta::assert_snapshot!(name, shown));
    }
}
