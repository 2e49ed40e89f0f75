//! `bench-storage`: what union mounts save, measured. Creates N containers from one base
//! with each storage driver, in a scratch store that is removed afterwards, and prints how
//! long creating them took and how much disk they take.
//!
//! "Create" is what `run` does before the clone: the container's directories, its config
//! and state (and, for `copy`, the copy of the base). The overlay itself is mounted later, at
//! each start, inside the container's mount namespace: its cost is part of `run`'s time.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use libisolab::cgroups::format_size;
use libisolab::copy;
use libisolab::process::Failure;
use libisolab::store::{New, Storage, Store};
use libisolab::{chroot, Error};

/// `bench-storage`'s options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The base every container is made from
    #[arg(long, value_name = "DIR")]
    rootfs: PathBuf,
    /// How many containers to create with each driver
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    count: u32,
    /// Print the numbers as JSON (bytes and nanoseconds)
    #[arg(long)]
    json: bool,
}

/// What one driver cost.
struct Measured {
    storage: Storage,
    create: Duration,
    disk: u64,
    remove: Duration,
}

// ANCHOR: bench
/// Creates `--count` containers with each driver, measures, removes them.
pub fn bench_storage(store: &Store, args: &BenchArgs) -> Result<u8, Failure> {
    let base = chroot::check_rootfs(&args.rootfs)?;
    let base_size = copy::disk_usage(&base)?;
    let scratch = store.root().join(format!("bench-{}", std::process::id()));
    // The scratch store is removed at the end: it must be ours, never something that was
    // already there.
    if fs::symlink_metadata(&scratch).is_ok() {
        return Err(Error::Invalid(format!(
            "{} already exists, and bench-storage removes its scratch store when done: move it \
             away, or pass another --root",
            scratch.display()
        ))
        .into());
    }
    let mut measured = Vec::new();
    for storage in [Storage::Overlay, Storage::Copy] {
        let result = measure(&scratch, &base, storage, args.count);
        // The scratch store goes, whatever happened.
        let removed = copy::remove_tree(&scratch);
        measured.push(result?);
        removed?;
    }
    if args.json {
        print_json(&base, base_size, args.count, &measured);
    } else {
        print_human(&base, base_size, args.count, &scratch, &measured);
    }
    Ok(0)
}

/// Creates `count` containers in a scratch store at `scratch`, then removes them.
fn measure(scratch: &Path, base: &Path, storage: Storage, count: u32) -> Result<Measured, Error> {
    let store = Store::at(scratch)?;
    // Start with nothing waiting to be written back: what an earlier run left dirty in
    // the page cache would slow this one down (`man 2 sync`).
    nix::unistd::sync();
    let mut create = Duration::ZERO;
    for number in 0..count {
        let container = store.prepare(New {
            name: Some(format!("bench-{number}")),
            storage,
            lowers: vec![base.to_path_buf()],
            image: None,
            userxattr: false,
            owner: None,
            remove: false,
            argv: Vec::new(),
            command: vec!["/bin/true".to_string()],
        })?;
        // Made as `run` makes it, ready for the clone; then marked exited (not timed).
        let start = Instant::now();
        let running = store.create(&container)?;
        create += start.elapsed();
        running.exited(0)?;
    }
    let disk = copy::disk_usage(&scratch.join("containers"))?;
    let start = Instant::now();
    copy::remove_tree(&scratch.join("containers"))?;
    let remove = start.elapsed();
    Ok(Measured { storage, create, disk, remove })
}
// ANCHOR_END: bench

fn print_human(base: &Path, base_size: u64, count: u32, scratch: &Path, measured: &[Measured]) {
    println!("base {}: {} on disk", base.display(), format_size(base_size));
    println!("{count} containers per driver, in a scratch store at {}", scratch.display());
    for m in measured {
        println!(
            "{:<8} created in {:.1?} ({:.1?} each), {} on disk ({} each), removed in {:.1?}",
            format!("{}:", m.storage),
            m.create,
            m.create / count,
            format_size(m.disk),
            format_size(m.disk / u64::from(count)),
            m.remove
        );
    }
    if let [overlay, copy] = measured {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
        println!(
            "overlay vs copy: {:.0}× faster to create, {:.0}× less disk (an overlay is mounted \
             at each start, inside the container: that cost is in `run`'s time)",
            ratio(copy.create.as_secs_f64(), overlay.create.as_secs_f64()),
            ratio(copy.disk as f64, overlay.disk as f64)
        );
    }
}

fn print_json(base: &Path, base_size: u64, count: u32, measured: &[Measured]) {
    let drivers: Vec<serde_json::Value> = measured
        .iter()
        .map(|m| {
            serde_json::json!({
                "storage": m.storage.to_string(),
                "create_ns": m.create.as_nanos() as u64,
                "disk_bytes": m.disk,
                "remove_ns": m.remove.as_nanos() as u64,
            })
        })
        .collect();
    let report = serde_json::json!({
        "base": base.display().to_string(),
        "base_bytes": base_size,
        "count": count,
        "drivers": drivers,
    });
    println!("{report}");
}
