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
mod store;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io::Read;
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
}

/// The memory bound of a task, in MiB, unless `--memory-limit` says otherwise.
pub const DEFAULT_MEMORY_MIB: u64 = budget::DEFAULT_MIB;

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

/// How long one task may take before the binary is stopped.
const TASK_TIMEOUT: Duration = Duration::from_secs(20);

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
    // The JUnit file's directory is checked first: a grading is not thrown away at the end
    // for a typo in the path.
    if let Some(path) = &args.junit {
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!("--junit {}: {} is not a directory", path.display(), dir.display());
        }
    }
    let grading = grade(args.stage, &args.bin, filter.as_ref(), args.memory_limit)?;
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
    let read = fs::File::open(binary).and_then(|mut file| file.read(&mut head));
    let head = &head[..read.with_context(|| format!("cannot read {}", binary.display()))?];
    if head != b"\x7fELF" && !head.starts_with(b"#!") {
        bail!("{} is neither an ELF program nor a #! script", binary.display());
    }
    Ok(())
}

/// Grades `binary` as stage `stage`: the tasks of that stage and of the earlier ones (only
/// those in `filter`, if given), each under a memory bound of `memory_mib` MiB.
pub fn grade(
    stage: u8,
    binary: &Path,
    filter: Option<&BTreeSet<String>>,
    memory_mib: u64,
) -> Result<Grading> {
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
        };
        let started = Instant::now();
        let verdict = check(&task);
        // Read and removed before the leftovers are looked for: it is the grader's, not the
        // binary's (and it kills what the binary left in it).
        let over_budget = budget.finish()?;
        let leftovers = leftovers(&task, &cgroups_before);
        let verdict = match (over_budget, verdict, leftovers.is_empty()) {
            // Killed for its memory: whatever else went wrong followed from that.
            (Some(over), _, _) => Err(over),
            (None, Err(miss), _) => Err(miss),
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
}

/// What a run of the binary did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

impl Ran {
    fn told(&self) -> String {
        let code = match (self.timed_out, self.code) {
            (true, _) => format!("stopped after {} s", TASK_TIMEOUT.as_secs()),
            (false, Some(code)) => format!("exit {code}"),
            (false, None) => "no exit code".to_string(),
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
        bounded(cmd, &mut self.started.borrow_mut(), &self.join, watch)
    }

    /// `BIN ARGS…`: one of the binary's other commands (stage 4's `diff`, stage 5's `commit`),
    /// bounded in time and memory like a run.
    fn invoke(&self, args: &[&std::ffi::OsStr]) -> Ran {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args);
        cmd.env("ISOLAB_USERNS_DIR", &self.userns_dir).current_dir(&self.workdir);
        bounded(cmd, &mut self.started.borrow_mut(), &self.join, &mut |_| {})
    }
}

/// Runs `command` in a process group of its own, in the memory bound's cgroups (`join`, its
/// `cgroup.procs` files); SIGKILL to the group after [`TASK_TIMEOUT`]. `watch` is called
/// with the pid every few milliseconds while it runs.
fn bounded(
    mut command: Command,
    started_pids: &mut Vec<u32>,
    join: &[CString],
    watch: &mut dyn FnMut(u32),
) -> Ran {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let join = join.to_vec();
    // SAFETY: between fork and exec only async-signal-safe calls (open, write, close,
    // getpid: man 7 signal-safety), on memory allocated before the fork. The child joins the
    // cgroup itself, before exec, so that the binary's first allocation is counted.
    unsafe {
        command.pre_exec(move || budget::join_self(&join));
    }
    let mut child: Child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return Ran {
                code: None,
                stdout: String::new(),
                stderr: format!("cannot start {:?}: {error}", command.get_program()),
                timed_out: false,
            }
        }
    };
    // setpriv execs the binary: the pid is the runtime's either way.
    started_pids.push(child.id());
    let group = Pid::from_raw(-(child.id() as i32));
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || read_all(stdout.as_mut()));
    let err = std::thread::spawn(move || read_all(stderr.as_mut()));
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        if started.elapsed() > TASK_TIMEOUT && !timed_out {
            timed_out = true;
            let _ = signal::kill(group, Signal::SIGKILL);
        }
        if !timed_out {
            watch(child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let code = status.and_then(|s| s.code().or_else(|| s.signal().map(|n| 128 + n)));
    Ran {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    }
}

fn read_all(pipe: Option<&mut impl Read>) -> String {
    let mut bytes = Vec::new();
    if let Some(pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

// --- Stage 1 ---------------------------------------------------------------------------------

/// The rootfs is `/`: a file planted in it is there, a directory beside it is not.
fn chroot(task: &Task) -> Verdict {
    let secret = random_token();
    let planted = format!("lab-{}", task.token);
    fs::write(task.rootfs.join(&planted), &secret).map_err(|e| Miss {
        expected: "the grader plants a file in the rootfs".into(),
        happened: e.to_string(),
    })?;
    let outside = task.workdir.join(format!("host-{}", task.token));
    let _ = fs::create_dir(&outside);
    let script = format!("cat /{planted}; test -e {} && echo HOST-VISIBLE", outside.display());
    let ran = task.run(&[], &["/bin/sh", "-c", &script]);
    let _ = fs::remove_file(task.rootfs.join(&planted));
    let _ = fs::remove_dir(&outside);
    let expected = format!(
        "inside, /{planted} (planted in the rootfs) holds {secret}, and {} (on the host, \
         outside the rootfs) does not exist",
        outside.display()
    );
    if ran.stdout.contains("HOST-VISIBLE") {
        return miss(expected, format!("the host's {} is visible inside", outside.display()));
    }
    if ran.stdout.trim() != secret {
        return miss(expected, ran.told());
    }
    Ok(())
}

/// `--user UID:GID` gives exactly those ids, and no supplementary group of root's.
fn drop_privileges(task: &Task) -> Verdict {
    let mut rng = rand::thread_rng();
    let uid: u32 = rng.gen_range(2000..30000);
    let gid: u32 = rng.gen_range(30000..60000);
    let user = format!("{uid}:{gid}");
    // busybox's id: the rootfs of stage 1 has no /proc to read the ids from.
    let ran = task.run(&["--user", &user], &["/bin/busybox", "id"]);
    let expected_line = format!("uid={uid} gid={gid} groups={gid}");
    if ran.code != Some(0) || ran.stdout.trim() != expected_line {
        return miss(
            format!("`--user {user} -- busybox id` prints `{expected_line}` (no group of root's)"),
            ran.told(),
        );
    }
    Ok(())
}

/// The command's exit code is the runtime's, its environment is `--env`'s, and a missing or
/// non-executable program gives 127 or 126.
fn exec(task: &Task) -> Verdict {
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
    let planted = format!("lab-notexec-{}", task.token);
    let path = task.rootfs.join("bin").join(&planted);
    let _ = fs::write(&path, "#!/bin/sh\necho ran\n");
    let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o644));
    let ran = task.run(&[], &[&format!("/bin/{planted}")]);
    let _ = fs::remove_file(&path);
    if ran.code != Some(126) {
        return miss(
            format!("/bin/{planted}, mode 0644, exits 126 (found, not executable)"),
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
    let started = Instant::now();
    let ran = task.run(&[], &["/bin/sh", "-c", "exec 3>&-; echo up"]);
    if ran.code != Some(0) || ran.stdout.trim() != "up" || started.elapsed() > TASK_TIMEOUT {
        return miss("a command that starts and exits 0 exits 0", ran.told());
    }
    Ok(())
}

// --- Stage 2 ---------------------------------------------------------------------------------

/// Root inside is an unprivileged id outside: as root, a range; rootless, the caller's own id.
fn id_maps(task: &Task) -> Verdict {
    let maps = ["/bin/cat", "/proc/self/uid_map", "/proc/self/gid_map"];
    let ran = task.run(&[], &maps);
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
    let uid: u32 = rand::thread_rng().gen_range(20000..60000);
    // From stage 3 on, a user without a delegated cgroup v2 subtree (any user on a v1 host)
    // must ask to run without limits.
    let rootless: &[&str] = if task.stage >= 3 { &["--cgroups", "optional"] } else { &[] };
    let ran = task.run_with(&task.rootfs, rootless, &maps, Some(uid));
    let want = format!("0 {uid} 1");
    let got: Vec<String> =
        ran.stdout.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    if ran.code != Some(0) || got != [want.clone(), want.clone()] {
        return miss(
            format!("run by uid {uid} (rootless): uid_map and gid_map are `{want}`"),
            ran.told(),
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
    let script = "echo $$; cat /proc/[0-9]*/cmdline | tr '\\0' ' '";
    let ran = task.run(&[], &["/bin/sh", "-c", script]);
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
    let ran = task.run(&[], &probe);
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

/// What a task left on the host, removed as it is found: mounts under the grader's
/// directory, new cgroups of isolab's, processes whose root is under the grader's directory.
fn leftovers(task: &Task, cgroups_before: &BTreeSet<PathBuf>) -> Vec<String> {
    let mut found = Vec::new();
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
    let mut processes = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(root) = fs::read_link(entry.path().join("root")) else { continue };
        if root.starts_with(&task.workdir) {
            processes.push(pid);
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if !processes.is_empty() {
        let shown: Vec<String> = processes.iter().map(|p| p.to_string()).collect();
        found.push(format!("processes rooted in the rootfs: {}", shown.join(", ")));
    }
    found
}

// --- Output ----------------------------------------------------------------------------------

fn human(grading: &Grading) -> String {
    let mut text = String::new();
    for outcome in &grading.outcomes {
        let word = if outcome.passed { "PASS" } else { "FAIL" };
        text.push_str(&format!("{word} {:<26} {:.1} s\n", outcome.task, outcome.seconds));
        if !outcome.passed {
            text.push_str(&format!("     expected: {}\n", outcome.expected));
            text.push_str(&format!("     happened: {}\n", outcome.happened));
            text.push_str(&format!("     hint:     {}\n", outcome.hint));
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

fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
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
