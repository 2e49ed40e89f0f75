//! The report: the seed's table (host = 1) with the 2014 column beside it, the starts, the
//! store; as text for people, markdown for the book, JSON for everything.
//!
//! Every figure carries what it measured, with what, and how many runs; a ratio whose rounds'
//! interquartile range includes 1 is flagged `~` (within noise), one of fewer than 3 rounds
//! `?` (too few runs to tell); a ratio not flagged is a real difference ([`super::stats::noise`]).

use std::fmt::Write;

use serde::Serialize;

use super::start::Starts;
use super::stats::{Noise, Ratio, Summary};
use super::storage::{Storage, StoreRow, STORE_GOAL};
use super::workloads::RowInfo;
use super::{Bench, Build, Plan, Stage};

/// One throughput row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What it measures, as the table says it.
    pub what: String,
    /// The rest of what it measures.
    #[serde(flatten)]
    pub info: RowInfo,
    /// Rounds (each side once per round).
    pub runs: u32,
    /// The host's samples, in `info.unit`.
    pub host: Summary,
    /// The container's samples.
    pub container: Summary,
    /// Container against host, round by round (1 = the host's speed; below 1 is slower).
    pub ratio: Summary,
    /// Why the ratio cannot be told from 1, if it cannot (`super::stats::noise`).
    pub noise: Option<Noise>,
    /// Does the median ratio reach the goal, if the row has one?
    pub meets_goal: Option<bool>,
    /// crun's samples, when crun ran this workload.
    pub crun: Option<Summary>,
    /// crun against the host.
    pub crun_ratio: Option<Summary>,
}

/// The machine while the benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: usize,
    /// The kernel's release (`uname -r`).
    pub kernel: String,
    /// `/proc/loadavg` before the run.
    pub load_before: [f64; 3],
    /// `/proc/loadavg` after it.
    pub load_after: [f64; 3],
}

/// Everything `isolab bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// A random id of this run: the book's table and chart carry it, to show they are one run.
    pub run_id: String,
    /// The sizes and counts used.
    pub plan: Plan,
    /// The stage the containers ran in.
    pub stage: Stage,
    /// The binaries measured: `debug` or `release`, and where.
    pub build: Build,
    /// The machine.
    pub machine: Machine,
    /// Throughput, host = 1.
    pub rows: Vec<Row>,
    /// Start latency, when measured.
    pub starts: Option<Starts>,
    /// The store, when measured.
    pub storage: Option<Storage>,
    /// Seconds each part took, setup first.
    pub seconds: Vec<(&'static str, f64)>,
}

impl Report {
    pub(super) fn new(
        plan: &Plan,
        bench: &Bench,
        rows: Vec<Row>,
        starts: Option<Starts>,
        storage: Option<Storage>,
        load_before: [f64; 3],
        load_after: [f64; 3],
    ) -> Report {
        let kernel = nix::sys::utsname::uname()
            .map(|name| name.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        Report {
            run_id: format!("{:08x}", rand::random::<u32>()),
            plan: plan.clone(),
            stage: bench.stage,
            build: bench.build.clone(),
            machine: Machine { cpus, kernel, load_before, load_after },
            rows,
            starts,
            storage,
            seconds: Vec::new(),
        }
    }

    /// With the time each part took.
    pub(super) fn took(self, seconds: Vec<(&'static str, f64)>) -> Report {
        Report { seconds, ..self }
    }

    fn stage_name(&self) -> &'static str {
        match self.stage {
            Stage::Five => "stage5-images (every namespace, a cgroup, an overlay over an image)",
            Stage::Four => "stage4-overlay (every namespace, a cgroup, an overlay)",
        }
    }
}

/// The mark of a ratio that cannot be told from 1: `~` within noise, `?` too few runs.
fn flag(noise: Option<Noise>) -> &'static str {
    match noise {
        None => "",
        Some(Noise::SpreadIncludesOne) => " ~",
        Some(Noise::TooFewRuns) => " ?",
    }
}

/// `0.9945`, and its flag.
fn ratio_cell(ratio: &Summary, noise: Option<Noise>) -> String {
    format!("{:.3}{}", ratio.median, flag(noise))
}

/// `0.43`, `1.02 ~`, or `-` when there is none.
fn short_ratio(ratio: Option<&Ratio>, none: &str) -> String {
    ratio.map_or(none.into(), |ratio| format!("{:.2}{}", ratio.median(), flag(ratio.noise)))
}

/// What the flags mean, for the notes under the tables.
const FLAGS: &str = "~ = the middle half of the rounds' ratios includes 1 (within noise: this \
                     run cannot tell the two apart); ? = fewer than 3 rounds (too few runs to \
                     tell); no mark = the middle half lies wholly on one side of 1, a real \
                     difference";

fn quartiles(ratio: &Summary) -> String {
    format!("{:.3}–{:.3}", ratio.q1, ratio.q3)
}

fn value(summary: &Summary) -> String {
    if summary.median >= 100.0 {
        format!("{:.0}", summary.median)
    } else {
        format!("{:.2}", summary.median)
    }
}

fn goal_cell(row: &Row) -> String {
    match (row.info.goal, row.meets_goal) {
        (Some(goal), Some(true)) => format!("≥ {goal} yes"),
        (Some(goal), _) => format!("≥ {goal} NO"),
        _ => "-".into(),
    }
}

fn load(values: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", values[0], values[1], values[2])
}

/// What the run compared, by the parts it ran (`--only`).
fn compared(report: &Report) -> String {
    let mut parts = Vec::new();
    if !report.rows.is_empty() {
        parts.push(format!("the host against {}", report.stage_name()));
    }
    if report.starts.is_some() {
        parts.push("the start of every stage and sandbox found here".to_string());
    }
    if report.storage.is_some() {
        let binary = match report.stage {
            Stage::Five => "stage5-images",
            Stage::Four => "stage4-overlay",
        };
        parts.push(format!("{binary}'s start with full and empty stores"));
    }
    parts.join("; ")
}

/// `release build (target/release)`; a directory cargo did not name is an unknown build.
fn build_label(build: &Build) -> String {
    match build.profile.as_str() {
        "unknown" => format!(
            "an unknown build (not target/debug or target/release: {}){}",
            short_dir(&build.dir),
            match build.linking.as_str() {
                "unknown" => String::new(),
                linking => format!(", {linking}"),
            }
        ),
        profile => match build.linking.as_str() {
            "unknown" => format!("{profile} build ({})", short_dir(&build.dir)),
            linking => format!("{profile} build, {linking} ({})", short_dir(&build.dir)),
        },
    }
}

/// What the report says under its header about the build: a debug build's starts, or a
/// release build linked dynamically.
fn build_note(build: &Build) -> Option<&'static str> {
    match (build.profile.as_str(), build.linking.as_str()) {
        ("debug", _) => Some(DEBUG_NOTE),
        ("release", "dynamic") => Some(DYNAMIC_NOTE),
        _ => None,
    }
}

fn header(report: &Report) -> String {
    let machine = &report.machine;
    format!(
        "run {}: {}, {}; {} CPUs, kernel {}, load average {} before, {} after",
        report.run_id,
        compared(report),
        build_label(&report.build),
        machine.cpus,
        machine.kernel,
        load(machine.load_before),
        load(machine.load_after)
    )
}

/// `target/release` for a directory of cargo's target; any other path whole.
fn short_dir(dir: &std::path::Path) -> String {
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) if parent.file_name() == Some("target".as_ref()) => {
            format!("target/{}", name.to_string_lossy())
        }
        _ => dir.display().to_string(),
    }
}

/// What a debug build's starts mean, under the header.
const DEBUG_NOTE: &str = "debug build: its starts are slower than a release build's, and not \
                          what to compare with crun (`scripts/build-release`, then `sudo \
                          target/release/isolab bench`)";

/// What a dynamically linked release build's starts mean, under the header.
const DYNAMIC_NOTE: &str = "dynamically linked: each start also pays the dynamic loader (about \
                            1 ms a start on this project's VM); `scripts/build-release` links \
                            the binaries statically, as the book's numbers were measured";

/// The report for people.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", header(report));
    if let Some(note) = build_note(&report.build) {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(out);
    if !report.rows.is_empty() {
        let _ = writeln!(
            out,
            "{:<48} {:<16} {:>10} {:>10} {:<9} {:>8} {:<13} {:>7} {:>7} {:<11}",
            "what is measured (host = 1)",
            "tool",
            "host",
            "container",
            "unit",
            "ratio",
            "quartiles",
            "crun",
            "2014",
            "goal"
        );
        for row in &report.rows {
            let _ = writeln!(
                out,
                "{:<48} {:<16} {:>10} {:>10} {:<9} {:>8} {:<13} {:>7} {:>7} {:<11}",
                row.what,
                row.info.tool,
                value(&row.host),
                value(&row.container),
                row.info.unit,
                ratio_cell(&row.ratio, row.noise),
                quartiles(&row.ratio),
                row.crun_ratio.as_ref().map_or("-".into(), |r| format!("{:.3}", r.median)),
                row.info.seed_2014.map_or("-".into(), |seed| format!("{seed:.4}")),
                goal_cell(row),
            );
        }
        let runs = report.rows[0].runs;
        let _ = writeln!(
            out,
            "\nmedians of {runs} runs per side, the sides taking turns; ratio = container / host \
             per round (for ms: host / container), its quartiles beside it;\n{FLAGS}"
        );
    }
    if let Some(starts) = &report.starts {
        let _ = writeln!(
            out,
            "\nstart of /bin/true, ms (median and quartiles of {} runs; back to back: each \
             starter's {} starts in a row, after one dropped; spaced: a {} ms pause before each, \
             the starters taking turns; the filesystem synced before each block and the spaced \
             rounds)",
            starts.runs, starts.runs, starts.spacing_ms
        );
        let _ = writeln!(
            out,
            "{:<44} {:>8} {:<15} {:>8} {:<15} {:>9} {:>9}",
            "how", "b2b", "quartiles", "spaced", "quartiles", "b2b/crun", "sp/crun"
        );
        for row in &starts.rows {
            let _ = writeln!(
                out,
                "{:<44} {:>8.1} {:<15} {:>8.1} {:<15} {:>9} {:>9}",
                row.what,
                row.back_to_back_ms.median,
                format!("{:.1}–{:.1}", row.back_to_back_ms.q1, row.back_to_back_ms.q3),
                row.spaced_ms.median,
                format!("{:.1}–{:.1}", row.spaced_ms.q1, row.spaced_ms.q3),
                short_ratio(row.to_crun_back_to_back.as_ref(), "-"),
                short_ratio(row.to_crun_spaced.as_ref(), "-"),
            );
        }
        for (id, why) in &starts.skipped {
            let _ = writeln!(out, "skipped {id}: {why}");
        }
        for line in start_goals(starts) {
            let _ = writeln!(out, "goal: {line}");
        }
        let _ = writeln!(
            out,
            "x/crun = this starter's time over crun's, start by start (below 1 is faster); {FLAGS}"
        );
    }
    if let Some(storage) = &report.storage {
        storage_text(&mut out, storage);
    }
    let _ = writeln!(out, "\n{}", took(report));
    out
}

/// One line per start goal: `stage5 ÷ crun, back to back: 0.43 (0.40–0.47) ≤ 0.5 yes`.
fn start_goals(starts: &Starts) -> Vec<String> {
    starts
        .goals
        .iter()
        .map(|goal| {
            format!(
                "{} ÷ {}, {}: {:.2}{} ({:.2}–{:.2}) {} {}",
                goal.id,
                goal.against,
                goal.way,
                goal.ratio.median(),
                flag(goal.ratio.noise),
                goal.ratio.summary.q1,
                goal.ratio.summary.q3,
                goal.goal.label(),
                if goal.met { "yes" } else { "NO" }
            )
        })
        .collect()
}

/// `0.985 ~ (≥ 0.9 yes)` for a store's ratio to the empty store; `–` for the empty one.
fn store_cell(store: &StoreRow) -> String {
    match (&store.to_empty, store.meets_goal) {
        (Some(ratio), Some(met)) => format!(
            "{:.3}{} ({} {})",
            ratio.median(),
            flag(ratio.noise),
            STORE_GOAL.label(),
            if met { "yes" } else { "NO" }
        ),
        _ => "–".to_string(),
    }
}

/// `took 96 s: setup 9.1, cpu 11.0, ...`.
fn took(report: &Report) -> String {
    let total: f64 = report.seconds.iter().map(|(_, seconds)| seconds).sum();
    let parts: Vec<String> =
        report.seconds.iter().map(|(part, seconds)| format!("{part} {seconds:.1}")).collect();
    format!("took {total:.0} s: {}", parts.join(", "))
}

fn storage_text(out: &mut String, storage: &Storage) {
    if !storage.drivers.is_empty() {
        let _ = writeln!(
            out,
            "\n{} containers per storage driver (stage4-overlay bench-storage, 1 run), base {:.1} MiB",
            storage.count,
            storage.base_bytes as f64 / 1048576.0
        );
        for driver in &storage.drivers {
            let _ = writeln!(
                out,
                "  {:<8} {:>8.2} ms and {:>10.1} KiB per container",
                driver.storage,
                driver.create_ms_per_container,
                driver.disk_bytes_per_container / 1024.0
            );
        }
    }
    if let Some(first) = storage.stores.first() {
        let _ = writeln!(
            out,
            "\nrun --rm /bin/true with N stopped containers in the store, ms ({} runs back to \
             back, the stores taking turns; each store filled with `run --name`, {} at a time, \
             timed from 31 s after the fill, the filesystem synced)",
            first.start_ms.runs, storage.fill_jobs
        );
        for store in &storage.stores {
            let _ = writeln!(
                out,
                "  {:>5} containers {:>8.1} (quartiles {:.1}–{:.1})  empty/this {}  (filled in \
                 {:.1} s)",
                store.containers,
                store.start_ms.median,
                store.start_ms.q1,
                store.start_ms.q3,
                store_cell(store),
                store.fill_seconds
            );
        }
    }
}

/// `29.4 (27.0–31.2)`: a median in ms and its quartiles.
fn with_quartiles(summary: &Summary) -> String {
    format!("{:.1} ({:.1}–{:.1})", summary.median, summary.q1, summary.q3)
}

/// The tables as markdown, for the book: the seed's shape, host = 1.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "<!-- isolab bench run {} -->", report.run_id);
    let _ = writeln!(out, "*{}.*\n", header(report));
    if let Some(note) = build_note(&report.build) {
        let _ = writeln!(out, "*Note: {note}.*\n");
    }
    if !report.rows.is_empty() {
        let _ = writeln!(
            out,
            "| what is measured | tool | host | container | quartiles | crun | 2014 (Docker 1.1.2) | runs |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|");
        for row in &report.rows {
            let _ = writeln!(
                out,
                "| {} | {} | 1 ({} {}) | {} | {} | {} | {} | {} |",
                row.what,
                row.info.tool,
                value(&row.host),
                row.info.unit,
                ratio_cell(&row.ratio, row.noise),
                quartiles(&row.ratio),
                row.crun_ratio.as_ref().map_or("–".into(), |r| format!("{:.3}", r.median)),
                row.info.seed_2014.map_or("–".into(), |seed| format!("{seed:.4}")),
                row.runs
            );
        }
        let _ = writeln!(
            out,
            "\n`~`: the middle half of the rounds' ratios includes 1 — this run cannot tell the \
             two apart; `?`: fewer than 3 rounds, too few to tell; no mark: the middle half lies \
             wholly on one side of 1, a real difference.\n"
        );
    }
    if let Some(starts) = &report.starts {
        let _ = writeln!(
            out,
            "| start of `/bin/true` | back to back, ms | spaced {} ms apart, ms | ÷ crun, back to back | ÷ crun, spaced |",
            starts.spacing_ms
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|");
        for row in &starts.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                row.what.trim(),
                with_quartiles(&row.back_to_back_ms),
                with_quartiles(&row.spaced_ms),
                short_ratio(row.to_crun_back_to_back.as_ref(), "–"),
                short_ratio(row.to_crun_spaced.as_ref(), "–")
            );
        }
        let _ = writeln!(
            out,
            "\nMedians (quartiles) of {} starts each way. Back to back: each starter's {} starts \
             in a row, after one dropped; spaced: the starters taking turns, a pause before \
             each; the filesystem synced (`syncfs`) before each block and the spaced rounds. \
             ÷ crun: this starter's time over crun's, start by start (the `i`th of each \
             block back to back), flagged as above.\n",
            starts.runs, starts.runs
        );
        let goals = start_goals(starts);
        if !goals.is_empty() {
            let _ = writeln!(out, "Goals:\n");
            for line in goals {
                let _ = writeln!(out, "- {line}");
            }
            let _ = writeln!(out);
        }
    }
    if let Some(storage) = &report.storage {
        if !storage.drivers.is_empty() {
            let _ = writeln!(out, "| storage driver | ms per container | KiB per container |");
            let _ = writeln!(out, "|---|--:|--:|");
            for driver in &storage.drivers {
                let _ = writeln!(
                    out,
                    "| {} | {:.2} | {:.1} |",
                    driver.storage,
                    driver.create_ms_per_container,
                    driver.disk_bytes_per_container / 1024.0
                );
            }
            let _ = writeln!(out, "\n{} containers per driver, one run.\n", storage.count);
        }
        if !storage.stores.is_empty() {
            let _ = writeln!(out, "| containers in the store | start, ms | empty ÷ this |");
            let _ = writeln!(out, "|--:|--:|--:|");
            for store in &storage.stores {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    store.containers,
                    with_quartiles(&store.start_ms),
                    store_cell(store)
                );
            }
            let runs = storage.stores[0].start_ms.runs;
            let _ = writeln!(
                out,
                "\nMedians (quartiles) of {runs} starts per store, back to back, the stores taking turns; \
                 every store made the same way, from the same image; timed from 31 s after the \
                 fill (ext4 without a journal reuses no inode freed in the last 30 s), the \
                 filesystem synced."
            );
        }
    }
    let _ = writeln!(out, "\n*{}.*", took(report));
    out
}

#[cfg(test)]
mod tests {
    use super::super::stats::{Better, Ratio};
    use super::*;

    fn ratio(base: &[f64], other: &[f64]) -> Ratio {
        Ratio::of(base, other, Better::Higher).unwrap()
    }

    #[test]
    fn ratio_cells_carry_the_flag_of_the_rule() {
        // Quartiles wholly below 1: a real difference, no mark.
        assert_eq!(short_ratio(Some(&ratio(&[10.0; 3], &[4.0, 5.0, 6.0])), "-"), "0.50");
        // Quartiles across 1: within noise.
        assert_eq!(short_ratio(Some(&ratio(&[10.0; 3], &[9.0, 10.0, 11.0])), "-"), "1.00 ~");
        // Two runs: too few, however clear they look.
        assert_eq!(short_ratio(Some(&ratio(&[10.0; 2], &[5.0, 5.0])), "-"), "0.50 ?");
        assert_eq!(short_ratio(None, "–"), "–");
    }

    #[test]
    fn a_store_row_says_its_goal() {
        let start_ms = Summary::of(&[20.0, 20.0, 20.0]).unwrap();
        let row = |to_empty: Option<Ratio>| StoreRow {
            containers: 100,
            meets_goal: to_empty.as_ref().map(|r| STORE_GOAL.met_by(r.median())),
            to_empty,
            start_ms: start_ms.clone(),
            fill_seconds: 1.0,
        };
        // empty / this: 20 ms against 25 ms is 0.8, more than 10% slower.
        let slow = ratio(&[25.0; 3], &[20.0; 3]);
        assert_eq!(store_cell(&row(Some(slow))), "0.800 (≥ 0.9 NO)");
        let even = ratio(&[20.0, 21.0, 19.0], &[20.0; 3]);
        assert_eq!(store_cell(&row(Some(even))), "1.000 ~ (≥ 0.9 yes)");
        assert_eq!(store_cell(&row(None)), "–");
    }
}
