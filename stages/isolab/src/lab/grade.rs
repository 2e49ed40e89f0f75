//! `isolab grade STAGE --bin PATH`: a black-box grader for a student's stage binary.
//!
//! Every task of the stage and of the earlier ones (regressions count) is one check that runs
//! the binary as a subprocess, as a user would, on a busybox rootfs that carries the probe,
//! with markers named after a fresh random token each time (a file, a host directory, a
//! process name, ids), so that no answer can be hard-coded. Each task has a time limit, and
//! after each one the host is searched for what the binary left: mounts under the grader's
//! directory (`/proc/self/mountinfo`), new cgroups of isolab's, processes whose root is the
//! rootfs. Those are removed, and the task fails. A failure says what was expected, what
//! happened, and which hint to read (`isolab lab hint`).
//!
//! Stage 3's checks are in [`cgroups`], stages 4 and 5's in [`store`]; [`budget`] is the
//! memory bound every task runs under (a cgroup of the grader's own).

mod budget;
mod cgroups;
mod evidence;
mod plant;
mod store;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use isolab_probe::{CheckId, Report, Status};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rand::Rng;
use serde::Serialize;

use crate::compare::markers::random_token;
use crate::compare::watch::{detach, mounts_under, Workdir};
use crate::compare::{bin_dir, build_rootfs};

/// Arguments of `isolab grade`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stage whose tasks (and the earlier stages' tasks) are checked: 1 to 5
    #[arg(long_help = stage_help())]
    stage: u8,
    /// The student's stage binary (e.g. target/debug/stage2-namespaces of a starter)
    #[arg(long, value_name = "PATH")]
    bin: PathBuf,
    /// Only these tasks (`pivot-root` or `stage2/pivot-root`; repeat)
    #[arg(long, value_name = "TASK")]
    task: Vec<String>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// Also write the result as JUnit XML to FILE (for a classroom's CI)
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// The most memory the binary (and what it forks, outside its containers' own cgroups)
    /// may use in one task, in MiB; past it the kernel kills it and the task fails
    #[arg(long, value_name = "MIB", default_value_t = budget::DEFAULT_MIB)]
    memory_limit: u64,
    /// The most time one task (every run of the binary it makes, and their output) may take,
    /// in seconds; at the limit everything the task started is killed and the task fails
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TASK_SECS)]
    task_timeout: u64,
}

/// `isolab grade --help`'s text for STAGE: every task graded, by stage, and an example each.
fn stage_help() -> String {
    let mut text = String::from(
        "The stage whose tasks (and the earlier stages' tasks) are checked: 1 to 5. The tasks:",
    );
    for stage in 1..=5u8 {
        let tasks: Vec<&str> = CHECKS
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| super::regions::stage_of(id) == stage)
            .collect();
        text.push_str(&format!("\n  {stage}: {}", tasks.join(", ")));
    }
    text.push_str("\nOne binary per stage, graded with the earlier stages' tasks too:");
    for (stage, binary) in [
        (1, "stage1-chroot"),
        (2, "stage2-namespaces"),
        (3, "stage3-cgroups"),
        (4, "stage4-overlay"),
        (5, "stage5-images"),
    ] {
        text.push_str(&format!(
            "\n  sudo isolab grade {stage} --bin ~/lab{stage}/target/debug/{binary}"
        ));
    }
    text.push_str("\n  sudo isolab grade 3 --bin BIN --task join --task limit   # two tasks only");
    text
}

/// How long one task may take, every run of the binary in it together, unless
/// `--task-timeout` says otherwise. The slowest task of the reference (stage 5's commit:
/// import, run, commit, run) takes a few seconds; a loaded CI runner, several times that.
pub const DEFAULT_TASK_SECS: u64 = 60;

/// One task's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `stage2/pivot-root`.
    pub task: String,
    /// Did every check of the task hold?
    pub passed: bool,
    /// What the task expected (when it failed).
    pub expected: String,
    /// What happened instead.
    pub happened: String,
    /// The command that shows the task's first hint.
    pub hint: String,
    /// How long it took.
    pub seconds: f64,
}

/// Everything a grading run did.
#[derive(Debug, Serialize)]
pub struct Grading {
    /// The stage graded.
    pub stage: u8,
    /// The binary graded.
    pub binary: PathBuf,
    /// Every task, in order.
    pub outcomes: Vec<Outcome>,
}

impl Grading {
    /// Every task passed.
    pub fn passed(&self) -> bool {
        self.outcomes.iter().all(|outcome| outcome.passed)
    }
}

/// A failed check: what was expected, what happened.
struct Miss {
    expected: String,
    happened: String,
}

type Verdict = std::result::Result<(), Miss>;

fn miss(expected: impl Into<String>, happened: impl Into<String>) -> Verdict {
    Err(Miss { expected: expected.into(), happened: happened.into() })
}

/// The checks, by task, in the order a student does them.
/// A task's check: runs the binary and judges what it did.
type Check = fn(&Task) -> Verdict;

const CHECKS: &[(&str, Check)] = &[
    // The error pipe first: every start goes through it, so until it is written every task
    // fails on its `todo!`.
    ("stage1/error-pipe", error_pipe),
    ("stage1/chroot", chroot),
    ("stage1/drop-privileges", drop_privileges),
    ("stage1/exec", exec),
    ("stage2/id-maps", id_maps),
    ("stage2/private-mounts", private_mounts),
    ("stage2/proc", proc),
    ("stage2/pivot-root", pivot_root),
    ("stage3/create", cgroups::create),
    ("stage3/limit", cgroups::limit),
    ("stage3/join", cgroups::join),
    ("stage3/remove", cgroups::remove),
    ("stage4/overlay-options", store::overlay_options),
    ("stage4/diff-whiteouts", store::diff_whiteouts),
    ("stage5/commit", store::commit),
    ("stage5/verify-digest", store::verify_digest),
];

/// Does the grader check `task` yet?
pub fn has_check(task: &str) -> bool {
    CHECKS.iter().any(|(id, _)| *id == task)
}

/// Does the grader have checks for the tasks of `stage`'s own?
pub fn graded_stage(stage: u8) -> bool {
    CHECKS.iter().any(|(id, _)| super::regions::stage_of(id) == stage)
}

/// Runs `isolab grade`.
pub fn run(args: Args) -> Result<ExitCode> {
    let filter = if args.task.is_empty() {
        None
    } else {
        let ids = args.task.iter().map(|word| {
            if word.contains('/') {
                word.clone()
            } else {
                CHECKS
                    .iter()
                    .map(|(id, _)| *id)
                    .find(|id| id.ends_with(&format!("/{word}")))
                    .unwrap_or(word)
                    .to_string()
            }
        });
        Some(ids.collect::<BTreeSet<String>>())
    };
    let limits = Limits {
        memory_mib: args.memory_limit,
        task_time: Duration::from_secs(args.task_timeout.max(1)),
    };
    // The JUnit file's directory is checked first: a grading is not thrown away at the end
    // for a typo in the path.
    if let Some(path) = &args.junit {
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!("--junit {}: {} is not a directory", path.display(), dir.display());
        }
    }
    let grading = grade(args.stage, &args.bin, filter.as_ref(), &limits)?;
    if args.json {
        super::out(&format!("{}\n", serde_json::to_string_pretty(&grading)?))?;
    } else {
        super::out(&human(&grading))?;
    }
    if let Some(path) = &args.junit {
        fs::write(path, junit(&grading))
            .with_context(|| format!("cannot write {} (the results are above)", path.display()))?;
    }
    Ok(if grading.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Refuses a `--bin` that is not a program: not executable (a `.d` file tab-completion
/// picked), or neither ELF nor a `#!` script (an `.rlib`). Copied and run anyway, it would
/// fail every task with a shell's confusing words instead of one clear line.
fn check_binary(binary: &Path) -> Result<()> {
    let meta = fs::metadata(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file: --bin takes the stage binary", binary.display());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "{} is not executable: --bin takes the stage binary (target/debug/stageN-…)",
            binary.display()
        );
    }
    let mut head = [0u8; 4];
    let read =
        fs::File::open(binary).and_then(|mut file| std::io::Read::read(&mut file, &mut head));
    let head = &head[..read.with_context(|| format!("cannot read {}", binary.display()))?];
    if head != b"\x7fELF" && !head.starts_with(b"#!") {
        bail!("{} is neither an ELF program nor a #! script", binary.display());
    }
    Ok(())
}

/// What each task may use.
pub struct Limits {
    /// The memory bound, in MiB.
    pub memory_mib: u64,
    /// The time of the whole task.
    pub task_time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_mib: budget::DEFAULT_MIB,
            task_time: Duration::from_secs(DEFAULT_TASK_SECS),
        }
    }
}

/// Grades `binary` as stage `stage`: the tasks of that stage and of the earlier ones (only
/// those in `filter`, if given), each within `limits`.
pub fn grade(
    stage: u8,
    binary: &Path,
    filter: Option<&BTreeSet<String>>,
    limits: &Limits,
) -> Result<Grading> {
    let memory_mib = limits.memory_mib;
    if !nix::unistd::geteuid().is_root() {
        bail!("isolab grade needs root: the stages chroot, mount and map ids (run it with sudo)");
    }
    if !(1..=5).contains(&stage) {
        bail!("there is no stage {stage}: grade 1 to 5");
    }
    if !graded_stage(stage) {
        bail!("stage {stage}'s own tasks have no checks yet: grade an earlier stage");
    }
    if memory_mib < budget::MINIMUM_MIB {
        bail!(
            "--memory-limit {memory_mib} is too little for any runtime: give at least {} (MiB)",
            budget::MINIMUM_MIB
        );
    }
    if memory_mib > budget::MAXIMUM_MIB {
        bail!("--memory-limit {memory_mib} is more than {} (MiB, 1 TiB)", budget::MAXIMUM_MIB);
    }
    if let Some(filter) = filter {
        if let Some(unknown) = filter.iter().find(|task| !has_check(task)) {
            bail!("no task '{unknown}' is graded: `isolab lab list` shows them");
        }
        // A task of a later stage would be filtered out below, and nothing graded would
        // pass as "every task passed".
        if let Some(later) = filter.iter().find(|task| super::regions::stage_of(task) > stage) {
            bail!(
                "{later} is a task of stage {}: grade {} --task {later}",
                super::regions::stage_of(later),
                super::regions::stage_of(later)
            );
        }
    }
    check_binary(binary)?;
    let workdir = Workdir::create("grade", false)?;
    let rootfs = workdir.path().join("rootfs");
    build_rootfs(&bin_dir()?, &rootfs)?;
    // The binary is copied next to the rootfs: a student's target/ may be closed to the
    // unprivileged user the rootless checks run as.
    let bin_copy = workdir.path().join("student-bin");
    fs::copy(binary, &bin_copy).with_context(|| format!("cannot copy {}", binary.display()))?;
    fs::set_permissions(&bin_copy, fs::Permissions::from_mode(0o755))?;
    let userns_dir = workdir.path().join("userns");
    fs::create_dir(&userns_dir)?;

    let mut outcomes = Vec::new();
    for (id, check) in CHECKS {
        if super::regions::stage_of(id) > stage || filter.is_some_and(|f| !f.contains(*id)) {
            continue;
        }
        let cgroups_before = isolab_cgroups();
        // The memory bound: a cgroup of the grader's own that every run of the task joins
        // before it execs the binary (see `budget`).
        let budget = budget::Budget::create(memory_mib)?;
        let task = Task {
            binary: bin_copy.clone(),
            rootfs: rootfs.clone(),
            workdir: workdir.path().to_path_buf(),
            token: random_token(),
            userns_dir: userns_dir.clone(),
            started: std::cell::RefCell::new(Vec::new()),
            join: budget.procs(),
            stage,
            deadline: Instant::now() + limits.task_time,
            limit: limits.task_time,
        };
        let started = Instant::now();
        let verdict = check(&task);
        // The leftovers first: removing the budget's cgroup kills what is in it, and a
        // process the binary left there is the binary's mistake, to be named, not hidden.
        let leftovers = leftovers(&task, &cgroups_before);
        let over_budget = budget.finish()?;
        let verdict = match (over_budget, verdict, leftovers.is_empty()) {
            // Killed for its memory: whatever else went wrong followed from that.
            (Some(over), _, _) => Err(over),
            (None, Err(miss), true) => Err(miss),
            // What it left is told even when the check failed for something else.
            (None, Err(miss), false) => Err(Miss {
                happened: format!(
                    "{}; and left on the host: {}",
                    miss.happened,
                    leftovers.join("; ")
                ),
                ..miss
            }),
            (None, Ok(()), true) => Ok(()),
            (None, Ok(()), false) => {
                miss("nothing left on the host after the run", leftovers.join("; "))
            }
        };
        let stage_of_task = super::regions::stage_of(id);
        let name = id.split('/').nth(1).unwrap_or(id);
        let (passed, expected, happened) = match verdict {
            Ok(()) => (true, String::new(), String::new()),
            Err(miss) => (false, miss.expected, miss.happened),
        };
        outcomes.push(Outcome {
            task: id.to_string(),
            passed,
            expected,
            happened,
            hint: format!("isolab lab hint {stage_of_task} {name}"),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(Grading { stage, binary: binary.to_path_buf(), outcomes })
}

/// What one task's checks have: the binary, a fresh rootfs-wide token, the directories.
struct Task {
    binary: PathBuf,
    rootfs: PathBuf,
    workdir: PathBuf,
    token: String,
    userns_dir: PathBuf,
    /// The pids of the runtimes this task started: a cgroup of isolab's is named
    /// `<name>-<runtime pid>`, so only those are this task's (other runtimes may be running).
    started: std::cell::RefCell<Vec<u32>>,
    /// The `cgroup.procs` files of the memory bound, which each run joins before its exec.
    join: Vec<CString>,
    /// The stage graded (a later stage's binary takes options an earlier one lacks).
    stage: u8,
    /// When the task's time is up: every run stops there, output included.
    deadline: Instant,
    /// The task's time, for the messages.
    limit: Duration,
}

/// What a run of the binary did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Killed at the task's time limit, with the task's time.
    timed_out: Option<Duration>,
    /// It had exited, but something it left held its output open until the limit.
    held_open: bool,
    /// What the grader saw of the command from the host, if it looked.
    seen: Option<evidence::Seen>,
}

impl Ran {
    fn told(&self) -> String {
        let code = match (self.timed_out, self.code) {
            (Some(limit), Some(code)) if self.held_open => format!(
                "exit {code}, but its output stayed open until the task's limit ({} s): a \
                 process it left behind holds it",
                limit.as_secs()
            ),
            (Some(limit), _) => format!("stopped at the task's limit ({} s)", limit.as_secs()),
            (None, Some(code)) => format!("exit {code}"),
            (None, None) => "no exit code".to_string(),
        };
        // The last line that says something: a panic's "note: run with RUST_BACKTRACE" is not.
        let last = |text: &str| {
            text.lines()
                .rev()
                .find(|line| !line.trim().is_empty() && !line.starts_with("note: "))
                .map(str::to_string)
        };
        let mut told = code;
        // A panic (a todo!() not written yet) is told by its message, not its backtrace.
        let panic = self
            .stderr
            .lines()
            .skip_while(|line| !line.contains("panicked at"))
            .nth(1)
            .map(|message| format!(", panicked: {}", clip(message)));
        if let Some(panic) = panic {
            return told + &panic;
        }
        if let Some(line) = last(&self.stdout) {
            told.push_str(&format!(", stdout: {}", clip(&line)));
        }
        if let Some(line) = last(&self.stderr) {
            told.push_str(&format!(", stderr: {}", clip(&line)));
        }
        told
    }
}

fn clip(line: &str) -> String {
    let line = line.trim();
    if line.chars().count() > 160 {
        format!("{}…", line.chars().take(160).collect::<String>())
    } else {
        line.to_string()
    }
}

/// `text` with every control character (C0, DEL, C1) written as a Rust escape (`\u{1b}`):
/// what the binary printed is shown, never obeyed by the terminal (an ESC sequence could
/// erase a FAIL line and draw a PASS over it, a newline could add a line of its own).
pub fn escaped(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

impl Task {
    /// `BIN run --rootfs ROOTFS OPTIONS -- COMMAND`, bounded in time.
    fn run(&self, options: &[&str], command: &[&str]) -> Ran {
        self.run_with(self.rootfs.as_path(), options, command, None)
    }

    fn run_with(
        &self,
        rootfs: &Path,
        options: &[&str],
        command: &[&str],
        as_user: Option<u32>,
    ) -> Ran {
        self.run_watching(rootfs, options, command, as_user, &mut |_| {})
    }

    /// [`Task::run_with`], looking from the host for the command's `sleep` while it runs
    /// (see [`evidence`]): `Ran::seen` says what the kernel says of it.
    fn run_seen(
        &self,
        mut looker: evidence::Looker,
        rootfs: &Path,
        options: &[&str],
        command: &[&str],
        as_user: Option<u32>,
    ) -> Ran {
        let mut ran =
            self.run_watching(rootfs, options, command, as_user, &mut |pid| looker.look(pid));
        ran.seen = looker.seen;
        ran
    }

    /// [`Task::run_with`], calling `watch` with the runtime's pid every few milliseconds
    /// while it runs (stage 3 reads its cgroup then).
    fn run_watching(
        &self,
        rootfs: &Path,
        options: &[&str],
        command: &[&str],
        as_user: Option<u32>,
        watch: &mut dyn FnMut(u32),
    ) -> Ran {
        let mut cmd = match as_user {
            // setpriv(1): the ids and no supplementary groups, as a user's login would have.
            Some(uid) => {
                let mut cmd = Command::new("setpriv");
                let id = uid.to_string();
                cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups"]).arg(&self.binary);
                cmd
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("run").arg("--rootfs").arg(rootfs).args(options).arg("--").args(command);
        cmd.env("ISOLAB_USERNS_DIR", &self.userns_dir).current_dir(&self.workdir);
        // From stage 4 on, a run keeps its container in a store: never the host's
        // (/var/lib/isolab, or a user's ~/.local/share/isolab), always one in the grader's
        // directory, the caller's own (a store is used by its owner only).
        let store = self.workdir.join(format!("store-default-{}", as_user.unwrap_or(0)));
        if let Some(uid) = as_user {
            if fs::create_dir(&store).is_ok() {
                let _ = std::os::unix::fs::chown(&store, Some(uid), Some(uid));
            }
        }
        cmd.env("ISOLAB_ROOT", &store);
        bounded(cmd, self, watch)
    }

    /// `BIN ARGS…`: one of the binary's other commands (stage 4's `diff`, stage 5's `commit`),
    /// bounded in time and memory like a run.
    fn invoke(&self, args: &[&std::ffi::OsStr]) -> Ran {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args);
        cmd.env("ISOLAB_USERNS_DIR", &self.userns_dir).current_dir(&self.workdir);
        bounded(cmd, self, &mut |_| {})
    }
}

/// The most of each of stdout and stderr kept: a binary that floods its output must not
/// take the grader's memory.
const OUTPUT_CAP: usize = 4 << 20;

/// Runs `command` in a process group of its own, in the memory bound's cgroups (the task's
/// `join`, its `cgroup.procs` files), until it has exited and its stdout and stderr are
/// closed, or until the task's deadline: there everything the task started is killed
/// ([`kill_task`]) and the grader stops waiting, also for a pipe that a process the binary
/// left holds open. `watch` is called with the pid every few milliseconds while it runs.
fn bounded(mut command: Command, task: &Task, watch: &mut dyn FnMut(u32)) -> Ran {
    let mut ran = Ran {
        code: None,
        stdout: String::new(),
        stderr: String::new(),
        timed_out: None,
        held_open: false,
        seen: None,
    };
    if Instant::now() >= task.deadline {
        // The task's time went on earlier runs: this one does not start.
        ran.timed_out = Some(task.limit);
        return ran;
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let join = task.join.clone();
    // SAFETY: between fork and exec only async-signal-safe calls (open, write, close,
    // getpid: man 7 signal-safety), on memory allocated before the fork. The child joins the
    // cgroup itself, before exec, so that the binary's first allocation is counted.
    unsafe {
        command.pre_exec(move || budget::join_self(&join));
    }
    let mut child: Child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            ran.stderr = format!("cannot start {:?}: {error}", command.get_program());
            return ran;
        }
    };
    // setpriv execs the binary: the pid is the runtime's either way.
    task.started.borrow_mut().push(child.id());
    let pid = Pid::from_raw(child.id() as i32);
    // Both pipes read here, without blocking (man 2 poll), so that the deadline holds for
    // them too: a reader thread would wait for an EOF that a background process of the
    // binary's can put off for ever.
    let mut pipes: Vec<(OwnedFd, Vec<u8>)> = Vec::new();
    for fd in [child.stdout.take().map(OwnedFd::from), child.stderr.take().map(OwnedFd::from)] {
        let fd = fd.expect("both pipes were asked for");
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        pipes.push((fd, Vec::new()));
    }
    let mut open = [true, true];
    let mut status = None;
    loop {
        if status.is_none() {
            match child.try_wait() {
                Ok(Some(exited)) => status = Some(exited),
                Ok(None) => {}
                // Not ours to wait for any more: no code to report.
                Err(_) => break,
            }
        }
        if status.is_some() && !open.iter().any(|open| *open) {
            break;
        }
        if Instant::now() >= task.deadline {
            ran.timed_out = Some(task.limit);
            ran.held_open = status.is_some();
            kill_task(pid, &task.join);
            // Killed, so it ends at once, unless it left the grader's reach (a root binary
            // can): then the grader stops waiting for it all the same.
            for _ in 0..100 {
                if status.is_some() {
                    break;
                }
                if let Ok(Some(exited)) = child.try_wait() {
                    status = Some(exited);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            drain(&mut pipes, &mut open, 0);
            break;
        }
        if status.is_none() {
            watch(child.id());
        }
        drain(&mut pipes, &mut open, 5);
    }
    ran.code = status.and_then(|s| s.code().or_else(|| s.signal().map(|n| 128 + n)));
    ran.stdout = String::from_utf8_lossy(&pipes[0].1).into_owned();
    ran.stderr = String::from_utf8_lossy(&pipes[1].1).into_owned();
    ran
}

/// Waits up to `wait_ms` for output on the open pipes, and reads what there is; a pipe at
/// its end is closed.
fn drain(pipes: &mut [(OwnedFd, Vec<u8>)], open: &mut [bool; 2], wait_ms: i32) {
    let mut polled: Vec<libc::pollfd> = pipes
        .iter()
        .zip(open.iter())
        .map(|((fd, _), open)| libc::pollfd {
            fd: if *open { fd.as_raw_fd() } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if !open.iter().any(|open| *open) {
        std::thread::sleep(Duration::from_millis(wait_ms as u64));
        return;
    }
    // SAFETY: `polled` is a valid array of its length; a negative fd is ignored (man 2 poll).
    unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, wait_ms) };
    for (index, (fd, bytes)) in pipes.iter_mut().enumerate() {
        if !open[index] || polled[index].revents == 0 {
            continue;
        }
        let mut buffer = [0u8; 65536];
        loop {
            // SAFETY: reading into a buffer of its length from a descriptor we own.
            let got =
                unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
            if got > 0 {
                let room = OUTPUT_CAP.saturating_sub(bytes.len());
                bytes.extend_from_slice(&buffer[..(got as usize).min(room)]);
            } else if got == 0 {
                open[index] = false;
                break;
            } else {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    if error.kind() != std::io::ErrorKind::WouldBlock {
                        open[index] = false;
                    }
                    break;
                }
            }
        }
    }
}

/// The pids in the task's cgroup (every `cgroup.procs` of the memory bound).
fn task_processes(join: &[CString]) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    for procs in join {
        let path = Path::new(std::ffi::OsStr::from_bytes(procs.as_bytes()));
        for line in fs::read_to_string(path).unwrap_or_default().lines() {
            if let Ok(pid) = line.trim().parse::<i32>() {
                pids.insert(pid);
            }
        }
    }
    pids
}

/// Kills everything a task started: the binary, its process group, and every process in the
/// task's cgroup, again until the cgroup is empty (a process may fork while the list is
/// read; man 7 cgroups: a child starts in its parent's cgroup). A process that left its
/// group (setpgid) is still in the cgroup; one that left the cgroup too (root can) is found
/// later by the leftovers' search of /proc.
fn kill_task(pid: Pid, join: &[CString]) {
    let _ = signal::kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
    let _ = signal::kill(pid, Signal::SIGKILL);
    for _ in 0..200 {
        let pids = task_processes(join);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// --- Stage 1 ---------------------------------------------------------------------------------

/// The rootfs is `/`: a file planted in it is there, a directory beside it is not; and the
/// host sees the command's root: the planted file read through `/proc/PID/root`.
fn chroot(task: &Task) -> Verdict {
    let secret = random_token();
    let planted = format!("lab-{}", task.token);
    plant::plant(&task.rootfs, Path::new(&planted), secret.as_bytes(), 0o644).map_err(|e| {
        Miss {
            expected: "the grader plants a file in the rootfs".into(),
            happened: format!("{}: {e}", task.rootfs.join(&planted).display()),
        }
    })?;
    let outside = task.workdir.join(format!("host-{}", task.token));
    let _ = fs::create_dir(&outside);
    // `cat` by a relative name: the command starts in / of the rootfs, the default workdir
    // (a chroot without chdir, and an exec without its chdir to the workdir, leave it in the
    // host's tree, where the name is not found).
    let script =
        format!("cat {planted}; test -e {} && echo HOST-VISIBLE; {SLEEP}", outside.display());
    let looker = evidence::Looker {
        file: Some(PathBuf::from(&planted)),
        absent: Some(outside.clone()),
        ..Default::default()
    };
    let ran = task.run_seen(looker, &task.rootfs, &[], &["/bin/sh", "-c", &script], None);
    let _ = plant::remove(&task.rootfs, Path::new(&planted));
    let _ = fs::remove_dir(&outside);
    let expected = format!(
        "inside, starting in /, {planted} (planted in the rootfs) holds {secret}, and {} (on \
         the host, outside the rootfs) does not exist",
        outside.display()
    );
    if ran.stdout.contains("HOST-VISIBLE") {
        return miss(expected, format!("the host's {} is visible inside", outside.display()));
    }
    if ran.stdout.trim() != secret {
        return miss(expected, ran.told());
    }
    let Some(seen) = &ran.seen else { return miss(expected_seen(), ran.told()) };
    if seen.root_is_hosts
        || seen.file.as_deref() != Some(secret.as_str())
        || seen.visible != Some(false)
    {
        return miss(
            format!(
                "seen from the host, the command's root (/proc/PID/root) holds /{planted} and \
                 not {}",
                outside.display()
            ),
            format!(
                "pid {}: root {}{}",
                seen.pid,
                seen.root.display(),
                if seen.root_is_hosts { ", the host's /" } else { "" }
            ),
        );
    }
    Ok(())
}

/// What the key tasks' commands end with, so that the grader can look at it from the host
/// while it runs ([`evidence`]).
const SLEEP: &str = "sleep 0.3";

/// The miss when the command's `sleep` was never seen from the host.
fn expected_seen() -> String {
    format!(
        "the command runs: while the runtime runs, the host sees the command's `{SLEEP}` (a \
         process named sleep under the runtime's pid)"
    )
}

/// `--user UID:GID` gives exactly those ids, and no supplementary group of root's.
fn drop_privileges(task: &Task) -> Verdict {
    let mut rng = rand::thread_rng();
    let uid: u32 = rng.gen_range(2000..30000);
    let gid: u32 = rng.gen_range(30000..60000);
    let user = format!("{uid}:{gid}");
    // busybox's id: the rootfs of stage 1 has no /proc to read the ids from.
    let script = format!("busybox id; {SLEEP}");
    let ran = task.run_seen(
        evidence::Looker::default(),
        &task.rootfs,
        &["--user", &user],
        &["/bin/sh", "-c", &script],
        None,
    );
    let expected_line = format!("uid={uid} gid={gid} groups={gid}");
    if ran.code != Some(0) || ran.stdout.trim() != expected_line {
        return miss(
            format!("`--user {user} -- busybox id` prints `{expected_line}` (no group of root's)"),
            ran.told(),
        );
    }
    let Some(seen) = &ran.seen else { return miss(expected_seen(), ran.told()) };
    // Seen from the host: the real, effective, saved and filesystem ids, mapped back into
    // the command's user namespace if it has one.
    let (uids, gids) = seen.ids_inside();
    if uids.len() != 4 || gids.len() != 4 || uids.iter().chain(&gids).any(Option::is_none) || {
        uids.iter().any(|id| *id != Some(uid)) || gids.iter().any(|id| *id != Some(gid))
    } {
        return miss(
            format!(
                "seen from the host (/proc/PID/status), the command's real, effective, saved and \
                 fs ids are {uid} and {gid}"
            ),
            format!("pid {}: Uid {:?}, Gid {:?}", seen.pid, seen.uids, seen.gids),
        );
    }
    Ok(())
}

/// The command's exit code is the runtime's, its environment is `--env`'s, and a missing or
/// non-executable program gives 127 or 126.
fn exec(task: &Task) -> Verdict {
    // Planted before any run of the binary that is told the token: a file made now, with
    // O_EXCL|O_NOFOLLOW (see `plant`), is the grader's own; one made later could be written
    // through a symlink the binary put at its name.
    let planted = format!("lab-notexec-{}", task.token);
    let relative = PathBuf::from("bin").join(&planted);
    plant::plant(&task.rootfs, &relative, b"#!/bin/sh\necho ran\n", 0o644).map_err(|e| Miss {
        expected: "the grader plants a file in the rootfs".into(),
        happened: format!("{}: {e}", task.rootfs.join(&relative).display()),
    })?;
    let verdict = exec_runs(task, &planted);
    let _ = plant::remove(&task.rootfs, &relative);
    verdict
}

fn exec_runs(task: &Task, planted: &str) -> Verdict {
    let code = rand::thread_rng().gen_range(3..100);
    let ran = task.run(&[], &["/bin/sh", "-c", &format!("exit {code}")]);
    if ran.code != Some(code) {
        return miss(format!("`sh -c 'exit {code}'` makes the runtime exit {code}"), ran.told());
    }
    let value = random_token();
    let pair = format!("LAB_{}={value}", task.token.to_uppercase());
    let ran = task.run(&["--env", &pair], &["/bin/sh", "-c", "env"]);
    if ran.code != Some(0) || !ran.stdout.lines().any(|line| line == pair) {
        return miss(format!("`--env {pair}` is in the command's environment"), ran.told());
    }
    let missing = format!("lab-missing-{}", task.token);
    let ran = task.run(&[], &[&missing]);
    if ran.code != Some(127) {
        return miss(format!("`{missing}`, which the rootfs lacks, exits 127"), ran.told());
    }
    let ran = task.run(&[], &[&format!("/bin/{planted}")]);
    if ran.code != Some(126) {
        return miss(
            format!("/bin/{planted}, mode 0644, exits 126 (found, not executable)"),
            ran.told(),
        );
    }
    // A bare name is looked up in the command's PATH, as execvp does (every run above names
    // a path, or a name that is nowhere: an exec without the lookup passed them all).
    let said = format!("ok-{}", task.token);
    let ran = task.run(&[], &["sh", "-c", &format!("echo {said}")]);
    if ran.code != Some(0) || ran.stdout.trim() != said {
        return miss(
            format!("`sh -c 'echo {said}'` (a bare name: found in PATH) prints {said}"),
            ran.told(),
        );
    }
    Ok(())
}

/// A failure in the child, before exec, reaches the parent: 125 and the child's own words.
fn error_pipe(task: &Task) -> Verdict {
    let missing = format!("/lab-nowhere-{}", task.token);
    let ran = task.run(&["--workdir", &missing], &["/bin/true"]);
    if ran.code != Some(125) || !ran.stderr.contains(&missing[1..]) {
        return miss(
            format!(
                "`--workdir {missing}` (not in the rootfs) exits 125 naming {missing} on stderr"
            ),
            ran.told(),
        );
    }
    let ran = task.run(&[], &["/bin/sh", "-c", "exec 3>&-; echo up"]);
    if ran.code != Some(0) || ran.stdout.trim() != "up" || ran.timed_out.is_some() {
        return miss("a command that starts and exits 0 exits 0", ran.told());
    }
    Ok(())
}

// --- Stage 2 ---------------------------------------------------------------------------------

/// Root inside is an unprivileged id outside: as root, a range; rootless, the caller's own id.
fn id_maps(task: &Task) -> Verdict {
    let script = format!("cat /proc/self/uid_map /proc/self/gid_map; {SLEEP}");
    let maps = ["/bin/sh", "-c", &script];
    let looker = || evidence::Looker::default();
    let ran = task.run_seen(looker(), &task.rootfs, &[], &maps, None);
    let lines: Vec<Vec<String>> = ran
        .stdout
        .lines()
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect();
    let ranged = |line: &Vec<String>| {
        line.len() == 3 && line[0] == "0" && line[1] != "0" && line[2] == "65536"
    };
    if ran.code != Some(0) || lines.len() != 2 || !lines.iter().all(ranged) {
        return miss(
            "run as root: uid_map and gid_map are `0 <host id other than 0> 65536`",
            ran.told(),
        );
    }
    // The same, read by the host from the command's /proc/PID/uid_map and gid_map.
    let host_read = |seen: &evidence::Seen| {
        let words = |map: &[String]| -> Vec<Vec<String>> {
            map.iter().map(|line| line.split(' ').map(str::to_string).collect()).collect()
        };
        (words(&seen.uid_map), words(&seen.gid_map))
    };
    let Some(seen) = &ran.seen else { return miss(expected_seen(), ran.told()) };
    let (uid_map, gid_map) = host_read(seen);
    if uid_map.len() != 1 || gid_map.len() != 1 || !uid_map.iter().chain(&gid_map).all(ranged) {
        return miss(
            "run as root, seen from the host: the command's /proc/PID/uid_map and gid_map are \
             `0 <host id other than 0> 65536`",
            format!("pid {}: uid_map {:?}, gid_map {:?}", seen.pid, seen.uid_map, seen.gid_map),
        );
    }
    let uid: u32 = rand::thread_rng().gen_range(20000..60000);
    // From stage 3 on, a user without a delegated cgroup v2 subtree (any user on a v1 host)
    // must ask to run without limits.
    let rootless: &[&str] = if task.stage >= 3 { &["--cgroups", "optional"] } else { &[] };
    let ran = task.run_seen(looker(), &task.rootfs, rootless, &maps, Some(uid));
    let want = format!("0 {uid} 1");
    let got: Vec<String> =
        ran.stdout.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    if ran.code != Some(0) || got != [want.clone(), want.clone()] {
        return miss(
            format!("run by uid {uid} (rootless): uid_map and gid_map are `{want}`"),
            ran.told(),
        );
    }
    let Some(seen) = &ran.seen else { return miss(expected_seen(), ran.told()) };
    if seen.uid_map != [want.clone()] || seen.gid_map != [want.clone()] {
        return miss(
            format!(
                "run by uid {uid} (rootless), seen from the host: the command's uid_map and \
                 gid_map are `{want}`"
            ),
            format!("pid {}: uid_map {:?}, gid_map {:?}", seen.pid, seen.uid_map, seen.gid_map),
        );
    }
    Ok(())
}

/// Nothing the container mounts reaches the host, even where the host's mounts are shared.
fn private_mounts(task: &Task) -> Verdict {
    let shared = task.workdir.join(format!("shared-{}", task.token));
    let setup = (|| -> Result<PathBuf> {
        fs::create_dir(&shared)?;
        // A shared mount of our own (man 7 mount_namespaces): what a systemd host's / is.
        nix::mount::mount(
            Some(&shared),
            &shared,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )?;
        nix::mount::mount(
            None::<&str>,
            &shared,
            None::<&str>,
            nix::mount::MsFlags::MS_SHARED,
            None::<&str>,
        )?;
        let rootfs = shared.join("rootfs");
        let status = Command::new("cp").arg("-a").arg(&task.rootfs).arg(&rootfs).status()?;
        if !status.success() {
            bail!("cp -a {} failed", task.rootfs.display());
        }
        Ok(rootfs)
    })();
    let verdict = match setup {
        Err(error) => miss("the grader makes a shared mount", format!("{error:#}")),
        Ok(rootfs) => {
            // Without a user namespace: a mount namespace of root's own keeps the host's
            // propagation (with one, the kernel makes every mount a slave already).
            let ns = ["--ns", "mnt,uts,ipc,pid,net,cgroup"];
            let ran = task.run_with(&rootfs, &ns, &["/bin/true"], None);
            let leaked: Vec<String> =
                mounts_under(&rootfs).iter().map(|p| p.display().to_string()).collect();
            if !leaked.is_empty() {
                miss(
                    format!(
                        "with the rootfs under a shared mount of the host's ({}), no mount of \
                         the container's appears on the host",
                        shared.display()
                    ),
                    format!("on the host now: {} ({})", leaked.join(", "), ran.told()),
                )
            } else if ran.code != Some(0) {
                miss(format!("`--ns {}` under a shared mount exits 0", ns[1]), ran.told())
            } else {
                Ok(())
            }
        }
    };
    // Whatever leaked goes with the shared mount itself.
    let mut points = mounts_under(&shared);
    points.reverse();
    detach(&points);
    let _ = nix::mount::umount2(&shared, nix::mount::MntFlags::MNT_DETACH);
    let _ = fs::remove_dir_all(&shared);
    verdict
}

/// A /proc of the new pid namespace: the command is PID 1 and sees no process of the host's.
fn proc(task: &Task) -> Verdict {
    let name = format!("lab-marker-{}", task.token);
    let marker = Command::new("/bin/sleep").arg0(&name).arg("60").spawn();
    let Ok(mut marker) = marker else {
        return miss("the grader starts a marker process", "it did not start");
    };
    let script = format!("echo $$; cat /proc/[0-9]*/cmdline | tr '\\0' ' '; {SLEEP}");
    let looker = evidence::Looker::default();
    let ran = task.run_seen(looker, &task.rootfs, &[], &["/bin/sh", "-c", &script], None);
    let _ = marker.kill();
    let _ = marker.wait();
    let expected = format!(
        "inside, the shell is PID 1 and /proc shows no host process (a host process is named {name})"
    );
    if ran.stdout.contains(&name) {
        return miss(expected, format!("{name} is listed in the container's /proc"));
    }
    if ran.code != Some(0) || ran.stdout.lines().next() != Some("1") {
        return miss(expected, ran.told());
    }
    let Some(seen) = &ran.seen else { return miss(expected_seen(), ran.told()) };
    let host = (evidence::host_ns("pid"), evidence::host_ns("mnt"));
    if seen.pid_ns == host.0 || seen.mnt_ns == host.1 || seen.pid_ns.is_empty() {
        return miss(
            format!(
                "seen from the host, the command's pid and mount namespaces (/proc/PID/ns) are \
                 not the host's ({}, {})",
                host.0, host.1
            ),
            format!("pid {}: {}, {}", seen.pid, seen.pid_ns, seen.mnt_ns),
        );
    }
    Ok(())
}

/// No way back to the host's `/`: the probe's chroot escape fails inside.
fn pivot_root(task: &Task) -> Verdict {
    let outside = task.workdir.join(format!("host-{}", task.token));
    let _ = fs::create_dir(&outside);
    let host_path = outside.display().to_string();
    let probe = [
        "/isolab/probe",
        "--json",
        "--check",
        "chroot-escape",
        "--check",
        "host-filesystem",
        "--token",
        &task.token,
        "--host-path",
        &host_path,
    ];
    let script = format!("{}; {SLEEP}", probe.join(" "));
    let looker = evidence::Looker { absent: Some(outside.clone()), ..Default::default() };
    let ran = task.run_seen(looker, &task.rootfs, &[], &["/bin/sh", "-c", &script], None);
    let _ = fs::remove_dir(&outside);
    let expected =
        format!("the probe's chroot escape fails and {host_path} (on the host) stays invisible");
    let report: Report = match serde_json::from_str(&ran.stdout) {
        Ok(report) => report,
        Err(_) => return miss(expected, ran.told()),
    };
    for id in [CheckId::ChrootEscape, CheckId::HostFilesystem] {
        match report.check(id) {
            Some(check) if check.status == Status::Isolated => {}
            Some(check) => {
                return miss(
                    expected,
                    format!("{}: {}: {}", id, check.status.as_str(), check.evidence),
                )
            }
            None => return miss(expected, format!("the probe did not report {}", id)),
        }
    }
    let Some(seen) = &ran.seen else { return miss(expected_seen(), ran.told()) };
    if seen.root_is_hosts || seen.mnt_ns == evidence::host_ns("mnt") || seen.visible != Some(false)
    {
        return miss(
            format!(
                "seen from the host, the command has a mount namespace of its own and a root \
                 that is not the host's, without {host_path}"
            ),
            format!(
                "pid {}: {}, root {}{}",
                seen.pid,
                seen.mnt_ns,
                seen.root.display(),
                if seen.root_is_hosts { " (the host's /)" } else { "" }
            ),
        );
    }
    Ok(())
}

// --- Leftovers -------------------------------------------------------------------------------

/// isolab's cgroups on the host: every directory under an `isolab` directory of a hierarchy.
fn isolab_cgroups() -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let roots = ["/sys/fs/cgroup/isolab".into()].into_iter().chain(
        fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("isolab")),
    );
    for root in roots.collect::<Vec<PathBuf>>() {
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                found.insert(entry.path());
            }
        }
    }
    found
}

/// What a task left on the host, removed as it is found: processes still in the task's
/// cgroup or whose root is under the grader's directory, mounts under the grader's
/// directory, new cgroups of isolab's.
fn leftovers(task: &Task, cgroups_before: &BTreeSet<PathBuf>) -> Vec<String> {
    let mut found = Vec::new();
    // Every run has ended (or was killed at the deadline): what is still in the task's
    // cgroup a second look later was left running by the binary. The second look lets a
    // process that was exiting finish.
    let mut in_cgroup = task_processes(&task.join);
    if !in_cgroup.is_empty() {
        std::thread::sleep(Duration::from_millis(100));
        let again = task_processes(&task.join);
        in_cgroup.retain(|pid| again.contains(pid));
    }
    let mut processes: Vec<String> = Vec::new();
    let mut killed = BTreeSet::new();
    for pid in &in_cgroup {
        processes.push(format!("{pid} {} (in the task's cgroup)", command_name(*pid)));
        let _ = signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
        killed.insert(*pid);
    }
    // A process that left the cgroup (root can write any cgroup.procs) but is still rooted
    // in the grader's directory (a chroot into the rootfs).
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(root) = fs::read_link(entry.path().join("root")) else { continue };
        if root.starts_with(&task.workdir) && !killed.contains(&pid) {
            processes.push(format!("{pid} {} (rooted in {})", command_name(pid), root.display()));
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if !processes.is_empty() {
        found.push(format!("processes left running: {}", processes.join(", ")));
    }
    let mounts = mounts_under(&task.workdir);
    if !mounts.is_empty() {
        let shown: Vec<String> = mounts.iter().map(|p| p.display().to_string()).collect();
        found.push(format!("mounts: {}", shown.join(", ")));
        let mut deepest_first = mounts;
        deepest_first.reverse();
        detach(&deepest_first);
    }
    // Only the cgroups of the runtimes this task started: other runtimes (a test beside the
    // grader, another grading) make and remove theirs meanwhile.
    let started = task.started.borrow();
    let new_cgroups: Vec<PathBuf> = isolab_cgroups()
        .difference(cgroups_before)
        .filter(|dir| {
            let name = dir.file_name().and_then(|name| name.to_str()).unwrap_or("");
            libisolab::cgroups::ContainerId::parse(name).is_some_and(|id| {
                started.iter().any(|pid| *pid as i32 == id.runtime_pid().as_raw())
            })
        })
        .cloned()
        .collect();
    if !new_cgroups.is_empty() {
        let shown: Vec<String> = new_cgroups.iter().map(|p| p.display().to_string()).collect();
        found.push(format!("cgroups: {}", shown.join(", ")));
        for cgroup in &new_cgroups {
            let _ = fs::remove_dir(cgroup);
        }
    }
    found
}

/// A process's command name (`/proc/PID/comm`), quoted; the binary chose it, so it is
/// shown escaped.
fn command_name(pid: i32) -> String {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("`{}`", escaped(comm.trim_end_matches('\n')))
}

// --- Output ----------------------------------------------------------------------------------

fn human(grading: &Grading) -> String {
    let mut text = String::new();
    for outcome in &grading.outcomes {
        let word = if outcome.passed { "PASS" } else { "FAIL" };
        text.push_str(&format!("{word} {:<26} {:.1} s\n", outcome.task, outcome.seconds));
        if !outcome.passed {
            text.push_str(&format!("     expected: {}\n", escaped(&outcome.expected)));
            text.push_str(&format!("     happened: {}\n", escaped(&outcome.happened)));
            text.push_str(&format!("     hint:     {}\n", escaped(&outcome.hint)));
        }
    }
    let passed = grading.outcomes.iter().filter(|o| o.passed).count();
    text.push_str(&format!(
        "stage {}: {passed} of {} tasks passed\n",
        grading.stage,
        grading.outcomes.len()
    ));
    text
}

/// `text` as XML character data or an attribute value. XML 1.0 (section 2.2, `Char`) allows
/// no C0 control but tab, newline and carriage return, not even as a character reference,
/// nor U+FFFE and U+FFFF: those are written as Rust escapes (`\u{1b}`), as the human output
/// shows them.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                out.extend(c.escape_default())
            }
            // C1 controls are allowed in XML 1.0 but a terminal may obey them (CSI).
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML, as CI systems read it: one testsuite, one testcase per task.
pub fn junit(grading: &Grading) -> String {
    let failures = grading.outcomes.iter().filter(|o| !o.passed).count();
    let total: f64 = grading.outcomes.iter().map(|o| o.seconds).sum();
    let mut text = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    text.push_str(&format!(
        "<testsuites>\n  <testsuite name=\"isolab grade {}\" tests=\"{}\" failures=\"{failures}\" \
         time=\"{total:.3}\">\n",
        grading.stage,
        grading.outcomes.len()
    ));
    for outcome in &grading.outcomes {
        let (class, name) = outcome.task.split_once('/').unwrap_or(("", &outcome.task));
        text.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml(class),
            xml(name),
            outcome.seconds
        ));
        if outcome.passed {
            text.push_str("/>\n");
        } else {
            text.push_str(&format!(
                ">\n      <failure message=\"{}\">expected: {}\nhappened: {}\nhint: {}</failure>\n    </testcase>\n",
                xml(&outcome.happened),
                xml(&outcome.expected),
                xml(&outcome.happened),
                xml(&outcome.hint)
            ));
        }
    }
    text.push_str("  </testsuite>\n</testsuites>\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grading(happened: &str) -> Grading {
        Grading {
            stage: 1,
            binary: PathBuf::from("bin"),
            outcomes: vec![Outcome {
                task: "stage1/chroot".into(),
                passed: false,
                expected: "x".into(),
                happened: happened.into(),
                hint: "isolab lab hint 1 chroot".into(),
                seconds: 0.1,
            }],
        }
    }

    #[test]
    fn what_the_binary_printed_is_shown_escaped() {
        // An ESC sequence that erases the line and a newline that adds a PASS of its own.
        let forged = "\u{1b}[1A\u{1b}[2K\rPASS stage1/chroot\n\u{9b}2K\u{7}";
        let text = human(&grading(forged));
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(
            text.contains("\\u{1b}[1A\\u{1b}[2K\\rPASS stage1/chroot\\n\\u{9b}2K\\u{7}"),
            "{text}"
        );
        assert!(!text.lines().any(|line| line.starts_with("PASS")), "{text}");
    }

    #[test]
    fn junit_holds_only_characters_xml_allows() {
        let forged = "a\u{0}b\u{1b}c\u{8}d\u{fffe}e<&>\"\tf\u{85}";
        let text = junit(&grading(forged));
        // XML 1.0, section 2.2: Char ::= #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | ...
        let allowed = |c: char| {
            matches!(c, '\t' | '\n' | '\r')
                || ('\u{20}'..='\u{d7ff}').contains(&c)
                || ('\u{e000}'..='\u{fffd}').contains(&c)
                || c >= '\u{10000}'
        };
        assert!(text.chars().all(allowed), "{text:?}");
        assert!(text.contains("a\\u{0}b\\u{1b}c\\u{8}d\\u{fffe}e&lt;&amp;&gt;&quot;\tf"), "{text}");
        // Every element that opens closes, in order.
        let mut open: Vec<String> = Vec::new();
        for tag in text.split('<').skip(1).map(|rest| &rest[..rest.find('>').unwrap()]) {
            if tag.starts_with('?') || tag.ends_with('/') {
                continue;
            }
            match tag.strip_prefix('/') {
                Some(name) => assert_eq!(open.pop().as_deref(), Some(name), "{text}"),
                None => open.push(tag.split_whitespace().next().unwrap().to_string()),
            }
        }
        assert!(open.is_empty(), "{text}");
    }
}
