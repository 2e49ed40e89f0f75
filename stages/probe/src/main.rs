//! `isolab-probe`: run inside a sandbox, print what it can see of the host and change there.
//!
//! The binary is glue: it turns flags into [`Inputs`], runs the checks of the library
//! ([`isolab_probe::run_checks`]) and prints the report as JSON (for `isolab compare`) or as a
//! table (for people). It needs nothing from the runtime it runs under, so the same binary
//! probes every stage of isolab — and any other runtime you point it at.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use isolab_probe::{run_checks, validate_token, CheckId, Inputs};
use libisolab::{cli, exit};

const EXAMPLES: &str = "\
Each marker is optional; a check whose marker is missing reports n/a. `isolab compare` plants
the markers on the host and passes them in, then watches the host while the probe runs.

Examples:
  isolab-probe --human --on-host                       # what the host itself looks like
  stage1-chroot run --rootfs rootfs -- /isolab/probe --human --token abc123 \\
      --host-path /root/secret --port 8080             # from inside a chroot jail
  stage3-cgroups run --rootfs rootfs --pids 16 -- /isolab/probe --human --check fork-bomb
  isolab compare                                       # everything, for every stage
  isolab-probe bench disk --dir /var/tmp --mib 256     # a workload of `isolab bench`

Exit status: 0 when the report was printed (whatever it says), 125 if the probe failed,
128+N when signal N interrupted it (every change it made is undone first).";

/// Report, as JSON, what this process can see of the host and what it can change there.
#[derive(Debug, Parser)]
#[command(name = "isolab-probe", version, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
struct Args {
    /// Run one of `isolab bench`'s workloads instead of the checks, and print its result as
    /// JSON
    #[command(subcommand)]
    bench: Option<Bench>,
    /// Print the report as JSON (the default)
    #[arg(long, conflicts_with = "human")]
    json: bool,
    /// Print the report as a table for people
    #[arg(long)]
    human: bool,
    /// This run's random token: it names the probe's changes and identifies the markers
    #[arg(long, value_name = "T", value_parser = parse_token)]
    token: Option<String>,
    /// A directory on the host, outside the sandbox's root (host-filesystem, chroot-escape)
    #[arg(long, value_name = "P")]
    host_path: Option<PathBuf>,
    /// A host process whose command line contains the token (host-processes)
    #[arg(long, value_name = "N")]
    host_pid: Option<i32>,
    /// A TCP port on the host's 127.0.0.1 that answers with the token (network)
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// The key of a SysV shared-memory segment on the host (ipc)
    #[arg(long, value_name = "K")]
    shm_key: Option<i32>,
    /// Where the probe may create (and remove again) directories
    #[arg(long, value_name = "DIR", default_value = "/tmp")]
    scratch: PathBuf,
    /// How long the hostname, the mount and the file at / are held for the host to notice
    #[arg(long, value_name = "N", default_value_t = 300)]
    hold_ms: u64,
    /// The probe runs on the host itself: skip the checks that would change the host and
    /// report them as leaks
    #[arg(long)]
    on_host: bool,
    /// Run only this check (repeat for more): host-filesystem, chroot-escape,
    /// host-processes, hostname, mounts, network, ipc, user, resources, memory-hog,
    /// fork-bomb, cpu-share, rootfs-write [default: all]
    #[arg(long = "check", value_name = "NAME", value_parser = parse_check)]
    checks: Vec<CheckId>,
}

/// The workloads `isolab bench` runs through the probe, the same binary on the host and
/// inside a container.
#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// Benchmark workloads: the same binary inside and out (`isolab bench`)
    #[command(subcommand)]
    Bench(Workload),
}

#[derive(Debug, clap::Subcommand)]
enum Workload {
    /// Sequential write then read of a new file with O_DIRECT, in 1 MiB blocks
    Disk {
        /// The directory the file is made in (and removed from)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// How many MiB to write and read
        #[arg(long, value_name = "N", default_value_t = 256)]
        mib: u64,
    },
    /// The first 4 KiB write to an existing file, fsync included (a copy-up in a container)
    FirstWrite {
        /// The file to write to
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

fn parse_check(text: &str) -> Result<CheckId, String> {
    CheckId::from_name(text).ok_or_else(|| {
        let names: Vec<&str> = CheckId::ALL.iter().map(|id| id.name()).collect();
        format!("unknown check '{text}': expected one of {}", names.join(", "))
    })
}

fn parse_token(text: &str) -> Result<String, String> {
    validate_token(text).map(|()| text.to_string())
}

fn main() -> ExitCode {
    let args: Args = match cli::parse("isolab-probe") {
        Ok(args) => args,
        Err(code) => return code,
    };
    match run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("isolab-probe: error: {error:#}");
            ExitCode::from(exit::RUNTIME_ERROR)
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    if let Some(Bench::Bench(workload)) = args.bench {
        return bench(workload);
    }
    let inputs = Inputs {
        token: args.token,
        host_path: args.host_path,
        host_pid: args.host_pid,
        port: args.port,
        shm_key: args.shm_key,
        scratch: args.scratch,
        hold: Duration::from_millis(args.hold_ms),
        on_host: args.on_host,
        checks: if args.checks.is_empty() { CheckId::ALL.to_vec() } else { args.checks },
    };
    isolab_probe::catch_interrupts().context("cannot set up the signal handlers")?;
    let report = run_checks(&inputs);
    if let Some(signal) = isolab_probe::interrupted() {
        // Every change has been undone by now; the report would be incomplete.
        eprintln!("isolab-probe: interrupted by signal {signal}: every change was undone");
        return Ok(ExitCode::from(128 + signal as u8));
    }
    if args.human {
        print!("{}", report.human());
    } else {
        let json = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        println!("{json}");
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(workload: Workload) -> Result<ExitCode> {
    let json = match workload {
        Workload::Disk { dir, mib } => {
            let speed = isolab_probe::bench::disk(&dir, mib << 20)
                .with_context(|| format!("O_DIRECT write and read in {} failed", dir.display()))?;
            serde_json::to_string(&speed)
        }
        Workload::FirstWrite { file } => {
            let measured = isolab_probe::bench::first_write(&file)
                .with_context(|| format!("the first write to {} failed", file.display()))?;
            serde_json::to_string(&measured)
        }
    };
    println!("{}", json.context("cannot encode the result")?);
    Ok(ExitCode::SUCCESS)
}
