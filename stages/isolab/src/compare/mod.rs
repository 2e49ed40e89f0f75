//! `isolab compare`: run the probe on the host and under every stage, side by side.
//!
//! The steps, in order (each a section of the book's "comparing the stages" chapter):
//! 1. Make a working directory and build a busybox rootfs in it (`rootfs-builder`), which
//!    carries the probe at `/isolab/probe`.
//! 2. Plant the markers on the host, all named after a fresh random token ([`markers`]).
//! 3. For each column ([`columns`]), make what it needs first (stage 5 imports the rootfs as
//!    an image, or pulls the image `--image` names, into a store in the working directory),
//!    run the probe there while a thread watches the host ([`watch`]), and combine the
//!    probe's report with what the host saw ([`verdict`]).
//! 4. Remove everything, the stores of stages 4 and 5 with the working directory (guards,
//!    also on error, panic or Ctrl-C), then print the matrix
//!    ([`render`]).

mod columns;
pub(crate) mod markers;
mod render;
mod verdict;
pub(crate) mod watch;

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use isolab_probe::filesystem::rootfs_write_name;
use isolab_probe::{CheckId, Report};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use columns::{PulledImage, Setup, COLUMNS};
use markers::{MarkerInfo, Markers};
use verdict::Cell;
use watch::{HostGuard, Watcher, Workdir};

/// How long the probe holds the changes the host should notice.
const HOLD_MS: u64 = 300;
/// How long one column (or the rootfs build) may take before it is stopped.
const COLUMN_TIMEOUT: Duration = Duration::from_secs(60);

/// Arguments of `isolab compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print everything as JSON: markers, each column's command, report and cells
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// Print only the matrix, as a markdown table (for the book)
    #[arg(long)]
    markdown: bool,
    /// Keep the working directory (rootfs, marker directory) and print its path
    #[arg(long)]
    keep: bool,
    /// Stage 5 runs the probe from this image, pulled from a registry
    /// (HOST[:PORT]/REPOSITORY[:TAG] or …@sha256:DIGEST), instead of importing the rootfs; the
    /// image must hold the probe at /isolab/probe (push one made from `rootfs-builder busybox`)
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// With --image: plain HTTP to a registry that is not on this machine
    #[arg(long, requires = "image")]
    insecure: bool,
    /// With --image: USER:PASSWORD for the registry [default: docker's config.json, else
    /// anonymous]; never shown in the output
    #[arg(long, value_name = "USER:PASS", requires = "image")]
    creds: Option<String>,
}

/// The whole comparison, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// This run's random token.
    pub token: String,
    /// The run's working directory on the host.
    pub workdir: PathBuf,
    /// Whether it was kept (`--keep`); otherwise it is gone.
    pub kept: bool,
    /// The base rootfs the stages ran in.
    pub rootfs: PathBuf,
    /// The markers the probe looked for.
    pub markers: MarkerInfo,
    /// The rows: each check and its question.
    pub checks: Vec<CheckInfo>,
    /// The columns that ran.
    pub columns: Vec<ColumnResult>,
}

/// A row of the matrix.
#[derive(Debug, Serialize)]
pub struct CheckInfo {
    /// The check's name.
    pub name: CheckId,
    /// The question it answers.
    pub question: &'static str,
}

/// One column: how the probe was run, what it said, and the cells.
#[derive(Debug, Serialize)]
pub struct ColumnResult {
    /// The column's id (`stage1-nobody`).
    pub id: &'static str,
    /// Its heading (`stage1 (as nobody)`).
    pub title: &'static str,
    /// The command line that ran the probe.
    pub command: Vec<String>,
    /// Its exit code (128 + N for a signal), if it ended.
    pub exit_code: Option<i32>,
    /// Why the probe did not report, if it did not.
    pub error: Option<String>,
    /// What the host showed while it ran.
    pub seen: watch::Seen,
    /// The probe's own report.
    pub report: Option<Report>,
    /// The matrix cells, in check order.
    pub cells: Vec<Cell>,
}

/// Runs the comparison and prints it. Exit 0 when every column's probe reported, 1 if one
/// did not (the matrix is printed anyway).
pub fn run(args: Args) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "isolab compare needs root: the stages chroot, mount and set the hostname (run it \
             with sudo)"
        );
    }
    // A reference the pull would refuse is refused now, before the matrix's minute of work:
    // it must parse and name its registry.
    if let Some(text) = &args.image {
        let reference: libisolab::image::reference::Reference =
            text.parse().with_context(|| format!("--image {text}"))?;
        if reference.registry.is_none() {
            bail!(
                "--image {text} names no registry: write HOST[:PORT]/REPOSITORY[:TAG] (an image \
                 pushed from a rootfs that rootfs-builder made carries the probe)"
            );
        }
    }
    catch_interrupts()?;
    let image = args.image.map(|reference| PulledImage {
        reference,
        insecure: args.insecure,
        creds: args.creds,
    });
    let comparison = compare(args.keep, image.as_ref())?;
    // Every guard has run by now: what is printed below describes a clean host.
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparison).context("cannot encode JSON")?);
    } else if args.markdown {
        print!("{}", render::markdown(&comparison));
    } else {
        print!("{}", render::text(&comparison));
    }
    let all_reported = comparison.columns.iter().all(|column| column.error.is_none());
    Ok(if all_reported { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

// ANCHOR: compare
/// Steps 1 to 4; the guards are locals, so they run in reverse order when this returns —
/// markers first, then the host's hostname and mounts, then the working directory.
fn compare(keep: bool, image: Option<&PulledImage>) -> Result<Comparison> {
    let bin_dir = bin_dir()?;
    let workdir = Workdir::create("compare", keep)?;
    let token = markers::random_token();
    let host_guard = HostGuard::new(&token)?;

    // 1. The rootfs, with the probe inside.
    let rootfs = workdir.path().join("rootfs");
    build_rootfs(&bin_dir, &rootfs)?;

    // 2. The markers.
    let markers = Markers::plant(workdir.path(), &token)?;
    let probe_flags = markers.probe_flags(HOLD_MS);

    // 3. Each column whose binary exists.
    let setup = Setup { rootfs: &rootfs, workdir: workdir.path(), image };
    let mut columns = Vec::new();
    for column in COLUMNS {
        let Some((program, args)) = column.command(&bin_dir, &setup, &probe_flags) else {
            continue;
        };
        let result = match column.prepare(&bin_dir, &setup) {
            Some((first, first_args)) => match prepare_column(column, &first, &first_args)? {
                Some(failed) => failed,
                None => run_column(column, &program, &args, &token, &rootfs)?,
            },
            None => run_column(column, &program, &args, &token, &rootfs)?,
        };
        columns.push(result);
        // Whatever a probe left (it may have been killed halfway) goes before the next one.
        for repair in host_guard.restore() {
            eprintln!("isolab: after the {} column: {repair}", column.title);
        }
    }

    // 4. The guards run as this function returns.
    Ok(Comparison {
        token: token.clone(),
        workdir: workdir.path().to_path_buf(),
        kept: workdir.keep,
        rootfs,
        markers: markers.info.clone(),
        checks: CheckId::ALL
            .iter()
            .map(|&name| CheckInfo { name, question: name.question() })
            .collect(),
        columns,
    })
}
// ANCHOR_END: compare

/// Where the workspace's binaries are: next to our own executable.
pub(crate) fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find isolab's own executable")?;
    Ok(exe.parent().context("isolab's executable has no directory")?.to_path_buf())
}

pub(crate) fn build_rootfs(bin_dir: &Path, rootfs: &Path) -> Result<()> {
    let builder = bin_dir.join("rootfs-builder");
    if !builder.is_file() {
        bail!(
            "{} is missing: build the workspace first (`cargo build --workspace`)",
            builder.display()
        );
    }
    let mut command = Command::new(&builder);
    command.arg("busybox").arg(rootfs);
    let output = run_bounded(&mut command)?;
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "`{} busybox {}` failed ({}): {}",
        builder.display(),
        rootfs.display(),
        describe(output.status),
        last_line(&output.stderr)
    )
}

// ANCHOR: run_column
/// Runs the probe in one column while watching the host, and judges the result.
fn run_column(
    column: &columns::Column,
    program: &Path,
    args: &[OsString],
    token: &str,
    rootfs: &Path,
) -> Result<ColumnResult> {
    let written = rootfs.join(rootfs_write_name(token));
    let watcher = Watcher::start(token, written.clone());
    let mut command = Command::new(program);
    command.args(args);
    let output = run_bounded(&mut command);
    let seen = watcher.stop();
    // The probe removes its file itself; if it was killed first, we do.
    let _ = fs::remove_file(&written);
    let output = output?;

    let parsed = serde_json::from_slice::<Report>(&output.stdout);
    let program_name = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy();
    let error = if !output.status.success() {
        let stderr = last_line(&output.stderr);
        Some(format!("{program_name} {}: {stderr}", describe(output.status)))
    } else if let Err(error) = &parsed {
        Some(format!("the probe's output is not a report: {error}"))
    } else {
        None
    };
    let report = parsed.ok();
    let cells = match (&report, &error) {
        (Some(report), None) => verdict::cells(report, &seen, token, rootfs),
        (_, error) => verdict::failed_cells(error.as_deref().unwrap_or("no report")),
    };
    Ok(ColumnResult {
        id: column.id,
        title: column.title,
        command: shown(program, args),
        exit_code: exit_code(output.status),
        error,
        seen,
        report,
        cells,
    })
}
// ANCHOR_END: run_column

/// Runs what a column needs before its probe (stage 5 imports the rootfs as an image, or pulls
/// the one `--image` names).
/// `None` when it succeeded; otherwise the column, failed, with what went wrong.
fn prepare_column(
    column: &columns::Column,
    program: &Path,
    args: &[OsString],
) -> Result<Option<ColumnResult>> {
    let output = run_bounded(Command::new(program).args(args))?;
    if output.status.success() {
        return Ok(None);
    }
    let program_name = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy();
    let error = format!(
        "{program_name} {} before the probe: {}",
        describe(output.status),
        last_line(&output.stderr)
    );
    Ok(Some(ColumnResult {
        id: column.id,
        title: column.title,
        command: shown(program, args),
        exit_code: exit_code(output.status),
        cells: verdict::failed_cells(&error),
        error: Some(error),
        seen: watch::Seen::default(),
        report: None,
    }))
}

/// A command line as one list of strings, for `--json`, with a password hidden.
fn shown(program: &Path, args: &[OsString]) -> Vec<String> {
    let args = columns::redacted(args);
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect()
}

/// What a bounded command printed and how it ended.
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

/// Runs `command` in a process group of its own, so that Ctrl-C on the terminal reaches only
/// isolab, which then stops the group and cleans up; stops it as well after
/// [`COLUMN_TIMEOUT`].
pub(crate) fn run_bounded(command: &mut Command) -> Result<Output> {
    if interrupted() {
        bail!("interrupted: cleaned up before starting {:?}", command.get_program());
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = command.spawn().with_context(|| format!("cannot start {command:?}"))?;
    let group = Pid::from_raw(-(child.id() as i32));
    // Read both pipes on threads: a child that fills one pipe while we wait would hang.
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let started = Instant::now();
    let mut stopped = None;
    let status = loop {
        if let Some(status) = child.try_wait().context("waitpid")? {
            break status;
        }
        if stopped.is_none() && (interrupted() || started.elapsed() > COLUMN_TIMEOUT) {
            // SIGTERM first, so the stage can forward it; SIGKILL if that is not enough.
            let _ = signal::kill(group, Signal::SIGTERM);
            stopped = Some(Instant::now());
        }
        if stopped.is_some_and(|at| at.elapsed() > Duration::from_secs(2)) {
            let _ = signal::kill(group, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if interrupted() {
        bail!("interrupted: stopped {:?} and cleaned up", command.get_program());
    }
    if stopped.is_some() {
        bail!(
            "{:?} took longer than {} s and was stopped",
            command.get_program(),
            COLUMN_TIMEOUT.as_secs()
        );
    }
    Ok(Output { status, stdout, stderr })
}

fn exit_code(status: ExitStatus) -> Option<i32> {
    status.code().or_else(|| status.signal().map(|signal| 128 + signal))
}

pub(crate) fn describe(status: ExitStatus) -> String {
    match exit_code(status) {
        Some(code) => libisolab::exit::describe(u8::try_from(code).unwrap_or(255)),
        None => "ended".to_string(),
    }
}

pub(crate) fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("(no output)").trim().into()
}

/// The signal that interrupted the run; 0 until one comes.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    INTERRUPTED.store(signal, Ordering::SeqCst);
}

pub(crate) fn interrupted() -> bool {
    interrupting_signal().is_some()
}

/// The signal that interrupted the run, if one did (the bench exits with 128 + its number).
pub(crate) fn interrupting_signal() -> Option<i32> {
    Some(INTERRUPTED.load(Ordering::SeqCst)).filter(|&signal| signal != 0)
}

/// Ctrl-C, `kill` and a closed terminal must not leave the host renamed or a tmpfs mounted:
/// they only note which signal came, and the run stops at the next step with every guard
/// running.
pub(crate) fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe
        // (man 7 signal-safety).
        unsafe { signal::sigaction(signal, &action) }
            .with_context(|| format!("sigaction({signal}) failed"))?;
    }
    Ok(())
}
