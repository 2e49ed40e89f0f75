//! `isolab bench`: how close to the host does a container run, and what does it cost to start?
//!
//! The steps, in order (each a section of the book's "How close to the host?" chapter):
//! 1. Make a working directory with a busybox rootfs that also carries the workloads' own
//!    binaries — Debian's `sysbench` and `iperf3`, copied with their libraries by
//!    `rootfs-builder copy` — and the probe (whose `bench` modes are the disk kernels): the
//!    host and the container run the *same files* on the same data ([`Bench::setup`]).
//! 2. Throughput ([`workloads`]): CPU, memory, disk and network, each run on the host, in the
//!    highest stage built (and in crun when installed), the sides taking turns round after
//!    round, so that both see the same moments of a busy machine; a ratio per round.
//! 3. Start ([`start`]): `/bin/true` under every stage and the other sandboxes on this machine,
//!    back to back and spaced apart; the store's cost with many containers in it ([`storage`]).
//! 4. The report ([`report`]): the seed's table (host = 1) beside the 2014 figures, `--json`,
//!    `--markdown`, and the chart ([`svg`]). The working directory goes with every container,
//!    veth and file in it (a guard, also on error or Ctrl-C).

mod progress;
mod report;
mod start;
mod stats;
mod storage;
mod svg;
mod workloads;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::Serialize;

use crate::compare::watch::Workdir;
use crate::compare::{self, last_line, run_bounded};
use progress::Progress;
pub use report::Report;

/// Arguments of `isolab bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many rounds of each throughput workload (cpu, mem, disk, net), each side once a round
    /// [default: 5, or 3 with --quick]. start and storage have their own counts (15 starts each
    /// way, or 5 with --quick), which the report shows
    #[arg(long, value_name = "N", value_parser = parse_runs)]
    runs: Option<u32>,
    /// Print the whole report as JSON (every sample of every run) instead of the tables
    #[arg(long)]
    json: bool,
    /// Also write the chart of the ratios to FILE, as SVG
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Also write the tables to FILE, as markdown (what the book includes)
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Run only these parts, comma-separated [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    only: Vec<Section>,
    /// Small sizes and few runs: a check that everything works, not a measurement
    #[arg(long)]
    quick: bool,
    /// Keep the working directory (rootfs, stores) and print its path
    #[arg(long)]
    keep: bool,
    /// Where the stage binaries, the probe and rootfs-builder are [default: the running
    /// isolab's directory; from target/debug, target/release instead when it has every one of
    /// them, none older than its debug build]. The report names the build it measured: starts
    /// of a debug build are not what a reader compares with crun (`scripts/build-release`, then
    /// `sudo target/release/isolab bench`)
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// `--runs N`: 1 to 1,000 (the error names the flag: clap's range message alone does not).
fn parse_runs(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(runs @ 1..=1000) => Ok(runs),
        _ => Err(format!("--runs {text}: give a number of rounds from 1 to 1000")),
    }
}

/// The parts of the benchmark (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// sysbench cpu: events per second
    Cpu,
    /// sysbench memory: write and read bandwidth
    Mem,
    /// O_DIRECT write and read, and a copy-up
    Disk,
    /// iperf3 over the veth and over loopback
    Net,
    /// The start latency of /bin/true
    Start,
    /// Storage drivers, and the start with many containers in the store
    Storage,
}

impl Section {
    /// Its name, as `--only` takes it.
    fn name(self) -> &'static str {
        match self {
            Section::Cpu => "cpu",
            Section::Mem => "mem",
            Section::Disk => "disk",
            Section::Net => "net",
            Section::Start => "start",
            Section::Storage => "storage",
        }
    }
}

/// How long each part took, in seconds (the same part's laps added up; none that took no time).
struct Clock {
    last: std::time::Instant,
    laps: Vec<(&'static str, f64)>,
}

impl Clock {
    fn start() -> Clock {
        Clock { last: std::time::Instant::now(), laps: Vec::new() }
    }

    fn lap(&mut self, part: &'static str) {
        let seconds = self.last.elapsed().as_secs_f64();
        self.last = std::time::Instant::now();
        match self.laps.iter_mut().find(|(name, _)| *name == part) {
            Some((_, total)) => *total += seconds,
            None if seconds >= 0.05 => self.laps.push((part, seconds)),
            None => {}
        }
    }
}

/// How much of everything: the defaults, or `--quick`'s small sizes.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Runs of each throughput workload on each side.
    pub runs: u32,
    /// `sysbench cpu --events`: a fixed amount of work (primes up to 10,000).
    pub cpu_events: u32,
    /// `sysbench memory --memory-total-size`, in MiB, over a 64 MiB block (far beyond caches).
    pub memory_mib: u64,
    /// MiB written then read with O_DIRECT.
    pub disk_mib: u64,
    /// The image's large file that a container's first write copies up, in MiB.
    pub copy_up_mib: u64,
    /// `iperf3 -t`, in seconds.
    pub net_seconds: u32,
    /// Runs of each start, back to back and spaced.
    pub start_runs: u32,
    /// The pause before each spaced start.
    pub spacing_ms: u64,
    /// Containers per storage driver.
    pub storage_count: u32,
    /// The stores a start is timed in: this many containers in each.
    pub store_sizes: Vec<u32>,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let quick = args.quick;
        Plan {
            runs: args.runs.unwrap_or(if quick { 3 } else { 5 }),
            cpu_events: if quick { 300 } else { 1000 },
            memory_mib: if quick { 1024 } else { 2048 },
            disk_mib: if quick { 32 } else { 256 },
            copy_up_mib: if quick { 16 } else { 64 },
            net_seconds: 1,
            start_runs: if quick { 5 } else { 15 },
            spacing_ms: 50,
            storage_count: if quick { 5 } else { 10 },
            store_sizes: if quick { vec![0, 10, 50] } else { vec![0, 100, 1000] },
        }
    }
}

/// Runs the benchmark and prints the report.
pub fn run(args: Args) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "isolab bench needs root: the stages mount, make cgroups and veths (run it with \
             sudo)"
        );
    }
    compare::catch_interrupts()?;
    let sections = if args.only.is_empty() {
        vec![
            Section::Cpu,
            Section::Mem,
            Section::Disk,
            Section::Net,
            Section::Start,
            Section::Storage,
        ]
    } else {
        args.only.clone()
    };
    // A file the run cannot write should not cost two minutes of measuring first.
    for (flag, path) in [("--svg", &args.svg), ("--markdown", &args.markdown)] {
        if let Some(path) = path {
            let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
            let dir = dir.unwrap_or(Path::new("."));
            if !dir.is_dir() {
                bail!(
                    "{flag} {}: the directory {} does not exist (create it, or name another \
                     file)",
                    path.display(),
                    dir.display()
                );
            }
        }
    }
    let plan = Plan::new(&args);
    let build = Build::find(args.bin_dir.as_deref())?;
    let report = match bench(&plan, &sections, &build, args.keep) {
        Ok(report) => report,
        // Everything is cleaned up by now (the guards ran as `bench` returned): say so, and
        // exit as a shell says of a command a signal stopped, 128 + its number (130 after
        // Ctrl-C, 143 after `kill`), as stage 5's push and pull do.
        Err(error) if compare::interrupted() => {
            eprintln!("isolab: error: {error:#}");
            let signal = compare::interrupting_signal().unwrap_or(libc::SIGINT).clamp(1, 127);
            return Ok(ExitCode::from(128 + signal as u8));
        }
        Err(error) => return Err(error),
    };
    // The report first: a file that cannot be written now does not lose the run.
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("cannot encode JSON")?);
    } else {
        print!("{}", report::text(&report));
    }
    if let Some(path) = &args.svg {
        if report.rows.is_empty() {
            eprintln!(
                "isolab: --svg {}: not written: the chart shows the throughput rows (cpu, mem, \
                 disk, net), and this run had none",
                path.display()
            );
        } else {
            fs::write(path, svg::chart(&report)?)
                .with_context(|| format!("cannot write the chart to {}", path.display()))?;
        }
    }
    if let Some(path) = &args.markdown {
        fs::write(path, report::markdown(&report))
            .with_context(|| format!("cannot write the tables to {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes back what the bench itself left dirty on the working directory's filesystem
/// (`syncfs(2)`), before a part that times starts: each start should pay for its own work, not
/// for the rootfs, image or stores the bench wrote a moment before. It matters: on this
/// project's VM (ext4 without a journal), stage 4's start took 31 ms with the setup's writes
/// still dirty and 14 ms once they were written back, most of the difference in the inode
/// allocator (`find_inode_bit`, fs/ext4/ialloc.c), which a stage 4 start calls some twenty
/// times (crun's four). A user's start does not follow a bulk write as a rule.
pub(crate) fn settle(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let opened = fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    nix::unistd::syncfs(opened.as_raw_fd())
        .with_context(|| format!("syncfs on the filesystem of {} failed", dir.display()))
}

// ANCHOR: bench
/// Steps 1 to 4; the working directory's guard removes everything as this returns.
fn bench(plan: &Plan, sections: &[Section], build: &Build, keep: bool) -> Result<Report> {
    let load_before = load_average();
    let workdir = Workdir::create("bench", keep)?;
    let mut progress = Progress::new(1 + plan_steps(plan, sections));
    let mut clock = Clock::start();

    // 1. The rootfs with the workloads' binaries, the image, crun's bundle.
    progress.step("building the rootfs and the image");
    let bench = Bench::setup(workdir.path(), plan, build)?;
    clock.lap("setup");

    // 2. Throughput: the same binaries on the host and inside.
    let mut rows = Vec::new();
    for workload in workloads::WORKLOADS.iter().filter(|w| sections.contains(&w.section)) {
        rows.extend(workloads::measure(&bench, workload, plan, &mut progress)?);
        clock.lap(workload.section.name());
    }

    // 3. Start latency and the store.
    let starts = match sections.contains(&Section::Start) {
        true => Some(start::measure(&bench, plan, &mut progress)?),
        false => None,
    };
    clock.lap("start");
    let storage = match sections.contains(&Section::Storage) {
        true => Some(storage::measure(&bench, plan, &mut progress)?),
        false => None,
    };
    clock.lap("storage");
    progress.finish();

    // 4. The report; the guard removes the working directory after it.
    if workdir.keep {
        eprintln!("isolab: kept the working directory {}", workdir.path().display());
    }
    let report = Report::new(plan, &bench, rows, starts, storage, load_before, load_average());
    Ok(report.took(clock.laps))
}
// ANCHOR_END: bench

/// How many progress steps the plan has.
fn plan_steps(plan: &Plan, sections: &[Section]) -> u64 {
    let mut steps = 0;
    for workload in workloads::WORKLOADS.iter().filter(|w| sections.contains(&w.section)) {
        // At most three sides: the host, the container, crun.
        steps += u64::from(plan.runs) * workload.sides.len() as u64;
    }
    if sections.contains(&Section::Start) {
        steps += start::steps(plan);
    }
    if sections.contains(&Section::Storage) {
        steps += storage::steps(plan);
    }
    steps
}

/// The stage the containers of the benchmark run in: the highest one built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// `stage5-images run --rm IMAGE`: every namespace, a cgroup, an overlay over the image.
    Five,
    /// `stage4-overlay run --rm --rootfs DIR`: every namespace, a cgroup, an overlay.
    Four,
}

impl Stage {
    fn binary(self) -> &'static str {
        match self {
            Stage::Five => "stage5-images",
            Stage::Four => "stage4-overlay",
        }
    }
}

/// The binaries the benchmark runs: which build, where, and why those.
#[derive(Debug, Clone, Serialize)]
pub struct Build {
    /// `release`, `debug`, or `unknown` (a directory that is neither of cargo's).
    pub profile: String,
    /// The directory of the stage binaries, the probe and rootfs-builder.
    pub dir: PathBuf,
    /// Why this directory: `--bin-dir`, the running isolab's own, or target/release beside it.
    pub chosen: String,
    /// How its stage binaries are linked: `static`, `dynamic` or `unknown` (see
    /// [`linking_of`]).
    pub linking: String,
}

/// The binaries a run uses from the build's directory (those that are there).
const BINARIES: &[&str] = &[
    "stage1-chroot",
    "stage2-namespaces",
    "stage3-cgroups",
    "stage4-overlay",
    "stage5-images",
    "isolab-probe",
    "rootfs-builder",
];

impl Build {
    /// `--bin-dir`, else the running isolab's directory; from cargo's `target/debug`, its
    /// sibling `target/release` when that has a build of every binary debug has, none older
    /// (a start measured with a debug build is several times a release build's: not what a
    /// reader compares with crun).
    fn find(asked: Option<&Path>) -> Result<Build> {
        if let Some(dir) = asked {
            let dir = fs::canonicalize(dir)
                .with_context(|| format!("--bin-dir {}: no such directory", dir.display()))?;
            let (profile, linking) = (profile_of(&dir), linking_of(&dir));
            return Ok(Build { profile, linking, dir, chosen: "--bin-dir".into() });
        }
        let own = compare::bin_dir()?;
        let release = own.parent().map(|target| target.join("release"));
        if let Some(release) = release.filter(|release| {
            own.file_name() == Some("debug".as_ref()) && fresh_release(&own, release)
        }) {
            return Ok(Build {
                profile: "release".into(),
                linking: linking_of(&release),
                dir: release,
                chosen: "target/release beside this debug isolab: every binary built there too, \
                         none older"
                    .into(),
            });
        }
        let (profile, linking) = (profile_of(&own), linking_of(&own));
        Ok(Build { profile, linking, dir: own, chosen: "the running isolab's".into() })
    }
}

/// How the highest stage binary in `dir` is linked: `dynamic` if its ELF program headers
/// name an interpreter (`PT_INTERP`, the dynamic loader: man 5 elf), else `static`;
/// `unknown` if there is none or it cannot be read. A dynamic runtime pays the loader on
/// every start (`scripts/build-release` says how much).
fn linking_of(dir: &Path) -> String {
    let binary = ["stage5-images", "stage4-overlay", "stage3-cgroups", "stage2-namespaces"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file());
    let interpreter =
        binary.and_then(|path| fs::read(path).ok()).and_then(|elf| has_interpreter(&elf));
    match interpreter {
        Some(true) => "dynamic",
        Some(false) => "static",
        None => "unknown",
    }
    .to_string()
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header (`None`: not one).
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let offset = u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?) as usize;
    let (size, count) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    let mut found = false;
    for index in 0..count {
        let at = offset.checked_add(index.checked_mul(size)?)?;
        found |= u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?) == PT_INTERP;
    }
    Some(found)
}

/// cargo's profile by the directory's name (`target/<profile>`).
fn profile_of(dir: &Path) -> String {
    match dir.file_name().and_then(|name| name.to_str()) {
        Some(name @ ("release" | "debug")) => name.to_string(),
        _ => "unknown".to_string(),
    }
}

/// Does `release` hold a build of every binary `debug` holds, each at least as new?
fn fresh_release(debug: &Path, release: &Path) -> bool {
    let modified = |path: PathBuf| fs::metadata(path).and_then(|meta| meta.modified()).ok();
    let mut found = 0;
    for binary in BINARIES {
        let Some(debug_time) = modified(debug.join(binary)) else { continue };
        match modified(release.join(binary)) {
            Some(release_time) if release_time >= debug_time => found += 1,
            _ => return false,
        }
    }
    found > 0
}

/// The image stage 5 runs, imported from the rootfs.
const IMAGE: &str = "bench:1";
/// Where the copy-up file is, inside the image.
const BIG_FILE: &str = "isolab/big";

/// Everything the workloads run with: binaries, rootfs, the store, crun's bundle.
#[derive(Debug)]
pub struct Bench {
    /// Where `isolab` and the stage binaries are.
    pub bin_dir: PathBuf,
    /// Which build they are.
    pub build: Build,
    /// The run's working directory.
    pub workdir: PathBuf,
    /// The rootfs (busybox, the probe, sysbench, iperf3), without the copy-up file.
    pub rootfs: PathBuf,
    /// The stage the containers run in.
    pub stage: Stage,
    /// The stage's store.
    pub store: PathBuf,
    /// The lower of a stage 4 container (the rootfs with the copy-up file); stage 5's is the
    /// image.
    pub stage4_lower: PathBuf,
    /// crun's bundle, when crun is installed.
    pub crun: Option<PathBuf>,
    /// The host's copy of the copy-up file: the same size, on the same filesystem.
    pub host_big_file: PathBuf,
    /// A directory on the same filesystem as the store, for the host's disk runs.
    pub host_disk_dir: PathBuf,
}

impl Bench {
    fn setup(workdir: &Path, plan: &Plan, build: &Build) -> Result<Bench> {
        let bin_dir = build.dir.clone();
        let stage = if bin_dir.join(Stage::Five.binary()).is_file() {
            Stage::Five
        } else if bin_dir.join(Stage::Four.binary()).is_file() {
            Stage::Four
        } else {
            bail!(
                "neither stage5-images nor stage4-overlay is in {}: build them first (`cargo \
                 build --workspace`)",
                bin_dir.display()
            );
        };
        for tool in ["sysbench", "iperf3"] {
            if which(tool).is_none() {
                bail!("{tool} is not installed: `apt-get install {tool}` (or scripts/setup)");
            }
        }
        let rootfs = workdir.join("rootfs");
        compare::build_rootfs(&bin_dir, &rootfs)?;
        // The workloads' binaries, at the same paths inside as on the host.
        let mut copy = Command::new(bin_dir.join("rootfs-builder"));
        copy.arg("copy").arg(&rootfs).args(["/usr/bin/sysbench", "/usr/bin/iperf3"]);
        checked(&mut copy, "rootfs-builder copy")?;

        // The copy-up file: random bytes, so that nothing along the way can compress them.
        let big = random_file(plan.copy_up_mib << 20)?;
        let host_big_file = workdir.join("host-big");
        fs::write(&host_big_file, &big)
            .with_context(|| format!("cannot write {}", host_big_file.display()))?;
        let host_disk_dir = workdir.join("host-disk");
        fs::create_dir(&host_disk_dir)
            .with_context(|| format!("cannot create {}", host_disk_dir.display()))?;
        let stage4_lower = workdir.join("lower");
        let store = workdir.join("store");
        match stage {
            Stage::Five => {
                fs::write(rootfs.join(BIG_FILE), &big)
                    .with_context(|| format!("cannot write {}/{BIG_FILE}", rootfs.display()))?;
                import_image(&bin_dir, &store, &workdir.join("userns"), &rootfs)?;
                // Every later use of the rootfs (other stages, crun, storage) goes without it.
                fs::remove_file(rootfs.join(BIG_FILE))
                    .with_context(|| format!("cannot remove {}/{BIG_FILE}", rootfs.display()))?;
            }
            Stage::Four => {
                let mut copy = Command::new("cp");
                copy.arg("-a").arg(&rootfs).arg(&stage4_lower);
                checked(&mut copy, "cp -a rootfs")?;
                fs::write(stage4_lower.join(BIG_FILE), &big).with_context(|| {
                    format!("cannot write {}/{BIG_FILE}", stage4_lower.display())
                })?;
            }
        }
        let crun = match which("crun") {
            Some(_) => {
                // crun's copy-up lower: the same file at the same path, over its rootfs.
                let file = workdir.join("crun-big").join(BIG_FILE);
                fs::create_dir_all(file.parent().context("BIG_FILE has a directory")?)
                    .with_context(|| format!("cannot create {}", file.display()))?;
                fs::write(&file, &big)
                    .with_context(|| format!("cannot write {}", file.display()))?;
                Some(crun_bundle(workdir, &rootfs)?)
            }
            None => None,
        };
        Ok(Bench {
            bin_dir,
            build: build.clone(),
            workdir: workdir.to_path_buf(),
            rootfs,
            stage,
            store,
            stage4_lower,
            crun,
            host_big_file,
            host_disk_dir,
        })
    }

    /// A command that runs `argv` (paths as inside the rootfs) in a throw-away container of
    /// the benchmark's stage, in `store`, with the stage's network option `net`.
    pub fn in_container(&self, store: &Path, net: &[&str], argv: &[&str]) -> Command {
        let options: Vec<&str> = ["--rm"].iter().chain(net).copied().collect();
        self.container(store, &options, argv)
    }

    /// A command that runs `argv` in a new container of the benchmark's stage, in `store`,
    /// with `run`'s `options`.
    pub fn container(&self, store: &Path, options: &[&str], argv: &[&str]) -> Command {
        let mut command = Command::new(self.bin_dir.join(self.stage.binary()));
        command.arg("--root").arg(store).arg("run").args(options);
        match self.stage {
            Stage::Five => command.arg(IMAGE),
            Stage::Four => command.arg("--rootfs").arg(&self.stage4_lower),
        };
        command.arg("--").args(argv);
        self.isolab_env(&mut command);
        command
    }

    /// Where the stages keep their id-range claims: in the working directory, gone with it.
    fn isolab_env(&self, command: &mut Command) {
        command.env(libisolab::idrange::CLAIMS_DIR_VAR, self.workdir.join("userns"));
    }

    /// A command that runs `argv` in crun, in a private mount namespace (see [`crun_bundle`]),
    /// on the bundle's plain rootfs, in a network namespace of crun's own.
    pub fn in_crun(&self, bundle: &Path, argv: &[&str]) -> Result<Command> {
        self.crun_command(bundle, argv, None, None)
    }

    /// A command that runs `argv` in crun: in the network namespace at `netns` if given (else
    /// one of crun's own), on `overlay`'s merged directory if given (else the bundle's rootfs).
    ///
    /// Each run gets its own config (`crun run --config`) and container id. The wrapper's
    /// private mount namespace (`unshare --mount --propagation private`) holds the overlay too:
    /// it is mounted there, seen by crun's own mount namespace (a copy of its parent's,
    /// `man 7 mount_namespaces`), and goes with the namespace when crun exits — never a mount
    /// on the host, even if the bench is killed.
    pub fn crun_command(
        &self,
        bundle: &Path,
        argv: &[&str],
        netns: Option<&Path>,
        overlay: Option<&CrunOverlay>,
    ) -> Result<Command> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let id = format!("isolab-bench-{}-{n}", std::process::id());
        let config = self.workdir.join(format!("crun-{n}.json"));
        let root = overlay.map_or_else(|| bundle.join("rootfs"), |o| o.merged.clone());
        write_run_config(bundle, &config, argv, &root, netns)?;
        let mount = match overlay {
            Some(o) => format!(
                "mount -t overlay overlay -o 'lowerdir={}:{},upperdir={},workdir={}' '{}' || exit \
                 125; ",
                o.lower.display(),
                bundle.join("rootfs").display(),
                o.upper.display(),
                o.work.display(),
                o.merged.display()
            ),
            None => String::new(),
        };
        let script = format!(
            "umount /sys/fs/cgroup/unified 2>/dev/null; {mount}cd '{}' && exec crun --root '{}' \
             run --config '{}' {id}",
            bundle.display(),
            self.workdir.join("crun-state").display(),
            config.display()
        );
        let mut command = Command::new("unshare");
        command.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        Ok(command)
    }

    /// The host's own path of a program the workloads name by its path inside.
    pub fn on_host(&self, inside: &str) -> PathBuf {
        match inside {
            "/isolab/probe" => self.bin_dir.join("isolab-probe"),
            other => PathBuf::from(other),
        }
    }
}

/// `stage5-images import`, then one run, which unpacks the layer: later runs only mount it.
pub fn import_image(bin_dir: &Path, store: &Path, claims: &Path, rootfs: &Path) -> Result<()> {
    let stage5 = bin_dir.join(Stage::Five.binary());
    let mut import = Command::new(&stage5);
    import.arg("--root").arg(store).arg("import").arg(rootfs).arg(IMAGE);
    import.env(libisolab::idrange::CLAIMS_DIR_VAR, claims);
    checked(&mut import, "stage5-images import")?;
    let mut first = Command::new(&stage5);
    first.arg("--root").arg(store).args(["run", "--rm", IMAGE, "--", "/bin/true"]);
    first.env(libisolab::idrange::CLAIMS_DIR_VAR, claims);
    checked(&mut first, "stage5-images run (the first, which unpacks the image)")
}

/// crun's bundle: a copy of the rootfs and a `config.json` from `crun spec`, made writable.
///
/// On a hybrid cgroup host (v1 controllers, and cgroup2 at `/sys/fs/cgroup/unified`) crun
/// takes the v2 mount for the cgroup it must use and fails there; every run therefore starts
/// in a private mount namespace (`unshare --mount`) where that mount is removed first.
fn crun_bundle(workdir: &Path, rootfs: &Path) -> Result<PathBuf> {
    let bundle = workdir.join("bundle");
    fs::create_dir(&bundle).with_context(|| format!("cannot create {}", bundle.display()))?;
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(rootfs).arg(bundle.join("rootfs"));
    checked(&mut copy, "cp -a rootfs bundle/rootfs")?;
    let mut spec = Command::new("crun");
    spec.arg("spec").current_dir(&bundle);
    checked(&mut spec, "crun spec")?;
    write_crun_config(&bundle, &["/bin/true"])?;
    Ok(bundle)
}

/// The overlay a crun run's root is: the copy-up file's directory over the bundle's rootfs,
/// a fresh upper each run (see [`Bench::crun_command`]).
#[derive(Debug)]
pub struct CrunOverlay {
    /// The top lower: only the copy-up file, at its path in the image.
    pub lower: PathBuf,
    /// The run's upper, work and merged directories, removed when this is dropped.
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    dir: PathBuf,
}

impl CrunOverlay {
    /// Fresh directories under the working directory for the `n`th run.
    pub fn new(bench: &Bench, n: u64) -> Result<CrunOverlay> {
        let dir = bench.workdir.join(format!("crun-overlay-{n}"));
        let overlay = CrunOverlay {
            lower: bench.workdir.join("crun-big"),
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("merged"),
            dir,
        };
        for path in [&overlay.upper, &overlay.work, &overlay.merged] {
            fs::create_dir_all(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        Ok(overlay)
    }
}

impl Drop for CrunOverlay {
    fn drop(&mut self) {
        // Nothing is mounted here on the host: the mount lived in crun's wrapper's namespace.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The bundle's command, without a terminal, on a writable root (the disk workload writes
/// there, as it does in the stage's overlay).
fn write_crun_config(bundle: &Path, argv: &[&str]) -> Result<()> {
    let path = bundle.join("config.json");
    let config = crun_config(&path, argv, &bundle.join("rootfs"), None)?;
    fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))
}

/// The bundle's `config.json` for one run, written to `to`: its command, its root, and the
/// network namespace to join, if any (`linux.namespaces`' `path`, runtime-spec config-linux.md).
fn write_run_config(
    bundle: &Path,
    to: &Path,
    argv: &[&str],
    root: &Path,
    netns: Option<&Path>,
) -> Result<()> {
    let config = crun_config(&bundle.join("config.json"), argv, root, netns)?;
    fs::write(to, config).with_context(|| format!("cannot write {}", to.display()))
}

fn crun_config(path: &Path, argv: &[&str], root: &Path, netns: Option<&Path>) -> Result<Vec<u8>> {
    use serde_json::Value;
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut config: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    config["process"]["args"] = argv.iter().map(|&arg| Value::from(arg)).collect();
    config["process"]["terminal"] = false.into();
    config["root"]["readonly"] = false.into();
    config["root"]["path"] = root.to_string_lossy().into_owned().into();
    if let (Some(netns), Some(namespaces)) = (netns, config["linux"]["namespaces"].as_array_mut()) {
        namespaces.retain(|namespace| namespace["type"] != "network");
        namespaces.push(serde_json::json!({"type": "network", "path": netns}));
    }
    Ok(serde_json::to_vec_pretty(&config)?)
}

/// Runs `command` to the end; an error with its last line of stderr unless it succeeded.
pub fn checked(command: &mut Command, what: &str) -> Result<()> {
    output(command, what).map(drop)
}

/// Runs `command` to the end and returns its stdout; an error unless it succeeded.
pub fn output(command: &mut Command, what: &str) -> Result<String> {
    let output = run_bounded(command)?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            compare::describe(output.status),
            last_line(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `bytes` random bytes, from the kernel's generator (`man 4 urandom`): hundreds of MiB/s, where
/// a userspace generator in a debug build of isolab took seconds for the 64 MiB.
fn random_file(bytes: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut data =
        Vec::with_capacity(usize::try_from(bytes).context("the copy-up file is too large")?);
    fs::File::open("/dev/urandom")
        .and_then(|urandom| urandom.take(bytes).read_to_end(&mut data))
        .context("cannot read /dev/urandom")?;
    if data.len() as u64 != bytes {
        bail!("/dev/urandom gave {} bytes of {bytes}", data.len());
    }
    Ok(data)
}

/// The program's path in `$PATH`, if it is installed.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin"));
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|path| path.is_file())
}

/// `/proc/loadavg`'s three averages: how busy the machine was.
fn load_average() -> [f64; 3] {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut values = text.split_whitespace().map(|v| v.parse().unwrap_or(f64::NAN));
    [(); 3].map(|()| values.next().unwrap_or(f64::NAN))
}

/// Stops early, with every guard running, after Ctrl-C.
pub fn check_interrupted() -> Result<()> {
    if compare::interrupted() {
        bail!("interrupted: stopped and cleaned up");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_tells_a_static_binary_from_a_dynamic_one() {
        // This test program: linked dynamically, as cargo links a test.
        let own = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(has_interpreter(&own), Some(true));
        // The same headers with the interpreter's type changed: what a static-pie has.
        let offset = u64::from_le_bytes(own[0x20..0x28].try_into().unwrap()) as usize;
        let size = usize::from(u16::from_le_bytes(own[0x36..0x38].try_into().unwrap()));
        let count = usize::from(u16::from_le_bytes(own[0x38..0x3a].try_into().unwrap()));
        let mut without = own.clone();
        for index in 0..count {
            let at = offset + index * size;
            if without[at..at + 4] == 3u32.to_le_bytes() {
                without[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
            }
        }
        assert_eq!(has_interpreter(&without), Some(false));
        // Not an ELF file, or one cut short: unknown, never a guess.
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(has_interpreter(&own[..0x30]), None);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(linking_of(dir.path()), "unknown");
        fs::write(dir.path().join("stage3-cgroups"), &without).unwrap();
        assert_eq!(linking_of(dir.path()), "static");
    }
}
