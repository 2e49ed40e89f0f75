//! `rootfs-builder`: builds the root filesystems isolab's chapters run in, and shows how.
//!
//! Three verbs, each a few lines over the library (`rootfs_builder`):
//!
//! - `busybox OUT_DIR`: a minimal rootfs from the host's static busybox, with the probe;
//! - `copy OUT_DIR PATH...`: host programs with every library the loader would load for them;
//! - `tar DIR OUT.tar`: a deterministic archive of a directory, and its sha256 digest.
//!
//! An error is printed once, as `rootfs-builder: error: <what failed: why>`, and the exit code
//! is 125, isolab's code for "the tool itself failed" (see `libisolab::exit`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use libisolab::image::layer;
use rootfs_builder::{busybox, copy};

/// The tool itself failed: bad input, or a call the system refused.
const RUNTIME_ERROR: u8 = 125;

const EXAMPLES: &str = "\
Examples:
  rootfs-builder busybox rootfs
      a minimal rootfs: busybox and its applets, /etc/passwd, the isolation probe
  rootfs-builder copy rootfs /bin/bash /usr/bin/python3 /usr/lib/python3.11
      add bash and python to it, with every library they need
  rootfs-builder copy --explain rootfs /bin/bash
      the same for bash, showing why each file is needed and what was written
  rootfs-builder tar rootfs rootfs.tar
      a reproducible archive of it, and its digest
  sudo chroot rootfs /bin/sh -c 'echo hello from the jail'
      try it";

const BUSYBOX_EXAMPLES: &str = "\
Examples:
  rootfs-builder busybox rootfs
  rootfs-builder busybox rootfs --force --busybox /usr/bin/busybox
  ISOLAB_PROBE=target/debug/isolab-probe rootfs-builder busybox rootfs
  sudo chroot rootfs /bin/sh -c 'ls /bin | head'";

const COPY_EXAMPLES: &str = "\
Examples:
  rootfs-builder copy rootfs /bin/bash
  rootfs-builder copy rootfs /usr/bin/python3 /usr/lib/python3.11
  rootfs-builder copy --explain jail /bin/bash
  sudo chroot rootfs /usr/bin/python3 -c 'import json; print(1 + 1)'

Libraries are found the way the loader finds them (man 8 ld.so): PT_INTERP, DT_NEEDED,
DT_RPATH, DT_RUNPATH with $ORIGIN, /etc/ld.so.cache, the default directories. Libraries a
program opens itself at run time (dlopen) cannot be seen in its headers: copy their
directory too, as with /usr/lib/python3.11 above.";

const TAR_EXAMPLES: &str = "\
Examples:
  rootfs-builder tar rootfs rootfs.tar
  rootfs-builder tar rootfs layer.tar.gz --gzip
  tar -tvf rootfs.tar | head

The same tree always gives the same bytes: entries sorted by name, mtime 0, numeric owners,
all mode bits kept, symlinks stored as symlinks. Touching files does not change the digest;
changing their content or mode does.";

/// Builds root filesystems for isolab: busybox, host programs with their libraries, tars
#[derive(Debug, Parser)]
#[command(name = "rootfs-builder", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a minimal rootfs from the host's static busybox, with the isolation probe
    #[command(after_help = BUSYBOX_EXAMPLES)]
    Busybox(BusyboxArgs),
    /// Copy host programs (or directories) into a rootfs, with every library they need
    #[command(after_help = COPY_EXAMPLES)]
    Copy(CopyArgs),
    /// Write a deterministic tar of a directory and print its sha256 digest
    #[command(after_help = TAR_EXAMPLES)]
    Tar(TarArgs),
}

#[derive(Debug, Args)]
struct BusyboxArgs {
    /// Where to build the rootfs (created if missing; its parent must exist)
    #[arg(value_name = "OUT_DIR")]
    out_dir: PathBuf,
    /// The busybox to use [default: the first on PATH, then /usr/bin/busybox, /bin/busybox]
    #[arg(long, value_name = "PATH")]
    busybox: Option<PathBuf>,
    /// The probe binary to put at /isolab/probe [default: $ISOLAB_PROBE, then isolab-probe
    /// next to rootfs-builder]
    #[arg(long, value_name = "PATH")]
    probe: Option<PathBuf>,
    /// Build into OUT_DIR even if it is not empty
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct CopyArgs {
    /// The rootfs to copy into (created if missing; its parent must exist)
    #[arg(value_name = "OUT_DIR")]
    out_dir: PathBuf,
    /// Host files or directories to copy, each with the libraries its ELF files need
    #[arg(value_name = "PATH", required = true)]
    paths: Vec<PathBuf>,
    /// Show the dependency tree, why each library was chosen, and every file written
    #[arg(long)]
    explain: bool,
}

#[derive(Debug, Args)]
struct TarArgs {
    /// The directory to archive (its contents; the directory itself is not an entry)
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The archive to write
    #[arg(value_name = "OUT.tar")]
    out: PathBuf,
    /// Compress with gzip (fixed header and level, so the digest is stable too)
    #[arg(long)]
    gzip: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors; a bad command line is, and exits like one.
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(RUNTIME_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("rootfs-builder: error: {error:#}");
            ExitCode::from(RUNTIME_ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Busybox(args) => build_busybox(args),
        Command::Copy(args) => copy_programs(args),
        Command::Tar(args) => write_tar(args),
    }
}

// ANCHOR: busybox
fn build_busybox(args: BusyboxArgs) -> Result<ExitCode> {
    let path_var = env::var_os("PATH");
    let busybox = busybox::find_busybox(args.busybox.as_deref(), path_var.as_deref())?;
    // cargo builds every binary of the workspace into one directory: look for the probe there.
    let exe_dir = env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf));
    let probe_env = env::var_os(busybox::PROBE_ENV);
    let probe =
        busybox::find_probe(args.probe.as_deref(), probe_env.as_deref(), exe_dir.as_deref())?;
    let options = busybox::Options { busybox, probe, force: args.force };
    let built = busybox::build(&args.out_dir, &options)
        .with_context(|| format!("cannot build a busybox rootfs in {}", args.out_dir.display()))?;
    println!("{}", built.summary());
    Ok(ExitCode::SUCCESS)
}
// ANCHOR_END: busybox

// ANCHOR: copy
fn copy_programs(args: CopyArgs) -> Result<ExitCode> {
    let report = copy::copy(&args.out_dir, &args.paths)
        .with_context(|| format!("cannot copy into {}", args.out_dir.display()))?;
    if args.explain {
        print!("{}", report.explain());
    } else {
        for note in &report.notes {
            println!("note: {note}");
        }
        println!("{}", report.summary());
    }
    Ok(ExitCode::SUCCESS)
}
// ANCHOR_END: copy

// ANCHOR: tar
fn write_tar(args: TarArgs) -> Result<ExitCode> {
    let compression = if args.gzip { layer::Compression::Gzip } else { layer::Compression::None };
    let archive =
        layer::pack_dir_to_file(&args.dir, &args.out, compression).with_context(|| {
            format!("cannot archive {} into {}", args.dir.display(), args.out.display())
        })?;
    for skipped in &archive.summary.skipped {
        eprintln!("rootfs-builder: note: {} is a socket: not archived", skipped.display());
    }
    // The format of sha256sum's output, with the digest written the way images write it.
    println!("{}  {}", archive.digest, args.out.display());
    Ok(ExitCode::SUCCESS)
}
// ANCHOR_END: tar
