//! What the store costs: N containers with each storage driver (stage 4's `bench-storage`:
//! the time to create them, the disk they take), and the start of a container in a store that
//! already holds 0, 100 or 1,000 of them — a store whose start reads every container would
//! slow down as it fills.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::start::timed;
use super::stats::{Better, Goal, Ratio, Summary};

/// The issue's goal: a start in a full store within 10% of an empty store's.
pub const STORE_GOAL: Goal = Goal::AtLeast(0.9);
use super::{check_interrupted, output, Bench, Plan, Progress, Stage};

/// One storage driver's cost per container.
#[derive(Debug, Clone, Serialize)]
pub struct Driver {
    /// `overlay` or `copy`.
    pub storage: String,
    /// Milliseconds to create one container (its directories, config, and for copy the copy).
    pub create_ms_per_container: f64,
    /// Bytes on disk per container.
    pub disk_bytes_per_container: f64,
}

/// The start in a store that holds `containers` stopped containers.
#[derive(Debug, Clone, Serialize)]
pub struct StoreRow {
    /// Stopped containers already in the store.
    pub containers: u32,
    /// Milliseconds of `run --rm /bin/true` there.
    pub start_ms: Summary,
    /// The empty store's time over this one's, round by round (the stores take turns): 1 is as
    /// fast, 0.9 is 10% slower. `None` for the empty store itself.
    pub to_empty: Option<Ratio>,
    /// Does the median reach [`STORE_GOAL`]? `None` for the empty store.
    pub meets_goal: Option<bool>,
    /// Seconds it took to fill the store (setup, not measured: [`fill`]).
    pub fill_seconds: f64,
}

/// The store's costs.
#[derive(Debug, Clone, Serialize)]
pub struct Storage {
    /// Containers per driver (stage 4's `bench-storage --count`).
    pub count: u32,
    /// The base each driver's containers are made from, bytes.
    pub base_bytes: u64,
    /// Each driver, when stage 4 is built.
    pub drivers: Vec<Driver>,
    /// The start in each store, the stores taking turns.
    pub stores: Vec<StoreRow>,
    /// How many `run --name` filled a store at once.
    pub fill_jobs: usize,
}

/// The progress bar's steps for this part.
pub fn steps(plan: &Plan) -> u64 {
    let sizes = &plan.store_sizes;
    2 + sizes.iter().map(|&n| u64::from(n)).sum::<u64>()
        + sizes.len() as u64 * (1 + u64::from(plan.start_runs))
}

/// How long after the stores are filled their starts are timed: ext4 without a journal (this
/// project's VM) does not reuse an inode freed in the last 30 seconds, and checks each one it
/// steps over (`recently_deleted`, fs/ext4/ialloc.c). A fill frees thousands (journal entries,
/// temporary files), and a start right after it took 17.5 ms in a store of 1,000 against
/// 14.0 in an empty one; 40 s later, 12.0 against 11.2. A user's store of 1,000 containers
/// was not made in the last half minute.
const SETTLED_AFTER: Duration = Duration::from_secs(31);

// ANCHOR: storage
/// Both measurements; every store is in the working directory and goes with it.
pub fn measure(bench: &Bench, plan: &Plan, progress: &mut Progress) -> Result<Storage> {
    // The stores: stopped containers made the way a user makes them (`run --name`), so every
    // one has what a real one has (its directory, its name in the index, its id claims). Each
    // store has its own directory of id claims, as a machine with only that store would: a
    // stopped container keeps its claim, and a start steps over the claims (`idrange`), so
    // with one directory for all of them even the empty store's starts would pay for the
    // others' 1,100 claims.
    let mut stores = Vec::new();
    for &size in &plan.store_sizes {
        let store = bench.workdir.join(format!("store-{size}"));
        let claims = bench.workdir.join(format!("userns-{size}"));
        progress.step(&format!("a store for {size} containers"));
        if bench.stage == Stage::Five {
            super::import_image(&bench.bin_dir, &store, &claims, &bench.rootfs)?;
        }
        let started = std::time::Instant::now();
        fill(bench, &store, &claims, size, progress)?;
        stores.push((size, store, claims, started.elapsed().as_secs_f64()));
    }
    let filled = Instant::now();
    // The drivers while the fill's freed inodes age (see `SETTLED_AFTER`).
    progress.step(&format!("{} containers with each storage driver", plan.storage_count));
    let (base_bytes, drivers) = drivers(bench, plan)?;
    progress.step("letting the fill settle (ext4 reuses no inode freed in the last 30 s)");
    while filled.elapsed() < SETTLED_AFTER {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    // The 1,100 containers just made are written back before the starts are timed: the
    // stores taking turns, every start would otherwise pay for them (see `settle`).
    super::settle(&bench.workdir)?;
    let mut samples = vec![Vec::new(); stores.len()];
    for round in 0..plan.start_runs {
        for (index, (size, store, claims, _)) in stores.iter().enumerate() {
            progress.step(&format!(
                "start with {size} in the store ({}/{})",
                round + 1,
                plan.start_runs
            ));
            check_interrupted()?;
            let mut command = bench.in_container(store, &[], &["/bin/true"]);
            command.env(libisolab::idrange::CLAIMS_DIR_VAR, claims);
            samples[index].push(timed(command, "run --rm /bin/true")?.as_secs_f64() * 1000.0);
        }
    }
    let empty = samples.first().context("no store was timed")?;
    let mut rows = Vec::new();
    for (index, (size, _, _, fill_seconds)) in stores.iter().enumerate() {
        let start_ms = Summary::of(&samples[index]).context("no start samples")?;
        // A duration: empty / this, so that below 1 is slower than the empty store.
        let to_empty = match index {
            0 => None,
            _ => Ratio::of(empty, &samples[index], Better::Lower),
        };
        rows.push(StoreRow {
            containers: *size,
            meets_goal: to_empty.as_ref().map(|ratio| STORE_GOAL.met_by(ratio.median())),
            to_empty,
            fill_seconds: *fill_seconds,
            start_ms,
        });
    }
    let stores = rows;
    Ok(Storage { count: plan.storage_count, base_bytes, drivers, stores, fill_jobs: fill_jobs() })
}
// ANCHOR_END: storage

/// Makes `size` stopped containers in `store` with the stage's own `run --name box-N
/// /bin/true`, several at a time: part of a start is waiting (for the disk, for the child's
/// exit and its grace periods), so on 2 CPUs four runs at once make the store about three
/// times as fast as one after the other (1,000 containers: from most of the section's time to a fraction),
/// and every container is still exactly what a user's run leaves.
fn fill(
    bench: &Bench,
    store: &Path,
    claims: &Path,
    size: u32,
    progress: &mut Progress,
) -> Result<()> {
    let jobs = fill_jobs();
    let next = AtomicU32::new(0);
    let failed = AtomicBool::new(false);
    let (done, finished) = mpsc::channel::<Result<u32>>();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(size as usize) {
            let (done, next, failed) = (done.clone(), &next, &failed);
            scope.spawn(move || loop {
                let number = next.fetch_add(1, Ordering::SeqCst);
                if number >= size || failed.load(Ordering::SeqCst) {
                    return;
                }
                let made = make_one(bench, store, claims, number);
                if made.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                let _ = done.send(made);
            });
        }
        drop(done);
        let mut count = 0;
        let mut first_error = None;
        for made in finished {
            match made {
                Ok(_) => {
                    count += 1;
                    progress.step(&format!("filling the store: container {count}/{size}"));
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    })
}

/// Runs at once while filling a store: two per CPU.
fn fill_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from) * 2
}

/// One stopped container of the store, by the stage's own `run --name box-N /bin/true`. A
/// failed run fails the fill with the runtime's own error: concurrent runs must not fail
/// (2,000 runs, four at a time, on this VM's cgroup v1: none did), and a retry would hide
/// the runtime bug that made one fail.
fn make_one(bench: &Bench, store: &Path, claims: &Path, number: u32) -> Result<u32> {
    check_interrupted()?;
    let name = format!("box-{number}");
    let mut command = bench.container(store, &["--name", &name], &["/bin/true"]);
    command.env(libisolab::idrange::CLAIMS_DIR_VAR, claims);
    output(&mut command, "a container for the store").with_context(|| name.clone())?;
    Ok(number)
}

/// Stage 4's `bench-storage`, which creates the containers with the library's own store
/// calls (what `run` does before the clone) and removes its scratch store.
fn drivers(bench: &Bench, plan: &Plan) -> Result<(u64, Vec<Driver>)> {
    let stage4 = bench.bin_dir.join("stage4-overlay");
    if !stage4.is_file() {
        return Ok((0, Vec::new()));
    }
    let root = bench.workdir.join("bench-storage");
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut command = Command::new(&stage4);
    command.arg("--root").arg(&root).arg("bench-storage").arg("--rootfs").arg(&bench.rootfs);
    command.args(["--count", &plan.storage_count.to_string(), "--json"]);
    let text = output(&mut command, "stage4-overlay bench-storage")?;
    parse_bench_storage(&text, plan.storage_count, &root)
}

fn parse_bench_storage(text: &str, count: u32, root: &Path) -> Result<(u64, Vec<Driver>)> {
    let json: serde_json::Value = serde_json::from_str(text)
        .with_context(|| format!("bench-storage's output in {} is not JSON", root.display()))?;
    let base = json["base_bytes"].as_u64().context("no base_bytes in bench-storage's output")?;
    let mut drivers = Vec::new();
    for driver in json["drivers"].as_array().context("no drivers in bench-storage's output")? {
        let number = |key: &str| driver[key].as_f64().with_context(|| format!("no {key}"));
        drivers.push(Driver {
            storage: driver["storage"].as_str().context("no storage")?.to_string(),
            create_ms_per_container: number("create_ns")? / 1e6 / f64::from(count),
            disk_bytes_per_container: number("disk_bytes")? / f64::from(count),
        });
    }
    Ok((base, drivers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bench_storage_per_container() {
        let text = r#"{"base":"/r","base_bytes":1000,"count":5,"drivers":[
            {"create_ns":10000000,"disk_bytes":5000,"remove_ns":1,"storage":"overlay"},
            {"create_ns":500000000,"disk_bytes":5000000,"remove_ns":1,"storage":"copy"}]}"#;
        let (base, drivers) = parse_bench_storage(text, 5, Path::new("/s")).unwrap();
        assert_eq!(base, 1000);
        assert_eq!(drivers[0].storage, "overlay");
        assert_eq!(drivers[0].create_ms_per_container, 2.0);
        assert_eq!(drivers[1].disk_bytes_per_container, 1_000_000.0);
    }
}
