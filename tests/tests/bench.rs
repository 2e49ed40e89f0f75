//! `isolab bench`, end to end: a real `--quick` run (every part, real containers, veths, crun
//! when installed), whose report must have every row, positive ratios, the runs it claims, a
//! noise flag that follows its own rule, and nothing left behind. The run's markdown table and
//! SVG chart are what the book's chapter "How close to the host?" shows: this test writes them
//! to `book/src/bench/` (outside CI) and checks that the two there come from one run. The
//! values change from run to run; only the report's shape is asserted.

use std::fs;
use std::path::Path;

use isolab_tests::*;
use serde_json::Value;

/// The throughput rows, in the report's order.
const ROWS: &[&str] = &[
    "cpu",
    "memory-write",
    "memory-read",
    "disk-write",
    "disk-read",
    "copy-up",
    "network-veth",
    "network-loopback",
];

/// The run id in the first line of a markdown table the tool wrote.
fn markdown_run_id(markdown: &str) -> Option<&str> {
    markdown.lines().next()?.strip_prefix("<!-- isolab bench run ")?.strip_suffix(" -->")
}

fn numbers(summary: &Value) -> Vec<f64> {
    summary["samples"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

fn check_summary(summary: &Value, runs: usize, what: &str) {
    let samples = numbers(summary);
    assert_eq!(samples.len(), runs, "{what}: {summary}");
    assert_eq!(summary["runs"].as_u64(), Some(runs as u64), "{what}");
    assert!(samples.iter().all(|&v| v > 0.0), "{what}: every sample positive: {summary}");
    let (q1, median, q3) = (
        summary["q1"].as_f64().unwrap(),
        summary["median"].as_f64().unwrap(),
        summary["q3"].as_f64().unwrap(),
    );
    assert!(q1 <= median && median <= q3, "{what}: quartiles in order: {summary}");
}

#[test]
fn quick_run_reports_every_row_cleans_up_and_feeds_the_book() {
    if !require_root("quick_run_reports_every_row_cleans_up_and_feeds_the_book") {
        return;
    }
    let env = TestEnv::new();
    // The bench's working directory goes under TMPDIR: the test's own directory, where it can
    // check afterwards that nothing is left.
    let output = run(env.cmd("isolab").env("TMPDIR", env.path()).args([
        "bench",
        "--quick",
        "--json",
        "--svg",
        "chart.svg",
        "--markdown",
        "table.md",
    ]));
    assert_eq!(code(&output), 0, "isolab bench failed: {}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("the report is JSON");

    // Every row, in order, with the runs it claims, positive ratios, and the noise flag
    // exactly when the ratio's interquartile range is wider than its distance from 1.
    let runs = report["plan"]["runs"].as_u64().unwrap() as usize;
    // The report names the build it measured, and its directory holds the stages.
    let build = &report["build"];
    assert!(matches!(build["profile"].as_str(), Some("debug" | "release")), "{build}");
    let dir = Path::new(build["dir"].as_str().unwrap());
    assert!(dir.join("stage5-images").is_file(), "{build}");
    assert_eq!(runs, 3, "--quick runs 3 rounds");
    let rows = report["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|row| row["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ROWS);
    for row in rows {
        let id = row["id"].as_str().unwrap();
        for side in ["host", "container", "ratio"] {
            check_summary(&row[side], runs, &format!("{id} {side}"));
        }
        let ratio = &row["ratio"];
        let spread = ratio["q3"].as_f64().unwrap() - ratio["q1"].as_f64().unwrap();
        let distance = (ratio["median"].as_f64().unwrap() - 1.0).abs();
        assert_eq!(row["within_noise"].as_bool(), Some(spread > distance), "{id}: {row}");
        match row["goal"].as_f64() {
            Some(goal) => assert_eq!(
                row["meets_goal"].as_bool(),
                Some(ratio["median"].as_f64().unwrap() >= goal),
                "{id}"
            ),
            None => assert!(row["meets_goal"].is_null(), "{id}"),
        }
        // crun runs every row: the network in a namespace and veth of the bench's own, the
        // copy-up on an overlay.
        if host_has("crun") {
            check_summary(&row["crun_ratio"], runs, &format!("{id} crun"));
        }
    }

    // Every start: each stage, the other sandboxes installed here, both ways.
    let starts = &report["starts"];
    let start_runs = starts["runs"].as_u64().unwrap() as usize;
    let started: Vec<&str> =
        starts["rows"].as_array().unwrap().iter().map(|row| row["id"].as_str().unwrap()).collect();
    let mut expected = vec!["stage1", "stage2", "stage3", "stage4", "stage5", "unshare-chroot"];
    for (program, id) in [("bwrap", "bwrap"), ("crun", "crun"), ("crun", "unshare-sh")] {
        if host_has(program) {
            expected.push(id);
        }
    }
    if host_has("crun") && host_has("runc") {
        expected.push("runc");
    }
    assert_eq!(started, expected, "skipped: {}", starts["skipped"]);
    for row in starts["rows"].as_array().unwrap() {
        let id = row["id"].as_str().unwrap();
        check_summary(&row["back_to_back_ms"], start_runs, id);
        check_summary(&row["spaced_ms"], start_runs, id);
        assert_eq!(row["to_crun_back_to_back"].is_number(), host_has("crun"), "{id}");
    }

    // The store: both drivers, and a start in each store size.
    let storage = &report["storage"];
    let drivers: Vec<&str> = storage["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|driver| driver["storage"].as_str().unwrap())
        .collect();
    assert_eq!(drivers, ["overlay", "copy"]);
    let sizes: Vec<u64> = storage["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|store| store["containers"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [0, 10, 50]);
    for store in storage["stores"].as_array().unwrap() {
        check_summary(&store["start_ms"], start_runs, "store");
        assert!(store["to_empty"].as_f64().unwrap() > 0.0);
    }

    // Nothing left: no working directory, no mount, no process, no veth of this run.
    let left: Vec<_> = fs::read_dir(env.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("isolab-bench-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    assert!(processes_rooted_in(env.path()).is_empty(), "{:?}", processes_rooted_in(env.path()));
    // crun's veth (`ibench<pid of its namespace's holder>`): only this test's bench makes them.
    let links = run(std::process::Command::new("ip").args(["-o", "link", "show"]));
    let links = text(&links.stdout);
    assert!(!links.contains("ibench"), "a veth of the bench is left: {links}");

    // The table and the chart name the same run as the JSON.
    let run_id = report["run_id"].as_str().unwrap();
    let markdown = fs::read_to_string(env.path().join("table.md")).unwrap();
    let svg = fs::read_to_string(env.path().join("chart.svg")).unwrap();
    assert_eq!(markdown_run_id(&markdown), Some(run_id));
    assert!(svg.starts_with("<svg") && svg.contains(&format!("run {run_id}")), "{svg:.200}");
    for id in ROWS {
        let what = rows.iter().find(|row| row["id"] == *id).unwrap()["what"].as_str().unwrap();
        assert!(markdown.contains(&format!("| {what} |")), "{what} in the table");
        // The SVG escapes XML's special characters in its labels.
        let label = what.replace('&', "&amp;").replace('\'', "&apos;");
        assert!(svg.contains(&label), "{what} in the chart");
    }

    // The book shows this run (outside CI, where the worktree is the author's); in CI, the
    // committed table and chart must at least be one run's.
    let book = workspace_root().join("book/src/bench");
    if !in_ci() {
        fs::write(book.join("table.md"), &markdown).unwrap();
        fs::write(book.join("chart.svg"), &svg).unwrap();
    }
    book_shows_one_run(&book);
}

/// The book's table and chart are the output of one run: the same run id in both.
fn book_shows_one_run(book: &Path) {
    let markdown = fs::read_to_string(book.join("table.md")).expect("book/src/bench/table.md");
    let svg = fs::read_to_string(book.join("chart.svg")).expect("book/src/bench/chart.svg");
    let run_id = markdown_run_id(&markdown).expect("the table names its run");
    assert!(svg.contains(&format!("run {run_id}")), "the chart is not from run {run_id}");
}

#[test]
fn a_bin_dir_without_the_stages_is_refused() {
    if !require_root("a_bin_dir_without_the_stages_is_refused") {
        return;
    }
    let env = TestEnv::new();
    fs::create_dir(env.path().join("empty")).unwrap();
    let output = run(env.cmd("isolab").env("TMPDIR", env.path()).args([
        "bench",
        "--only",
        "cpu",
        "--bin-dir",
        "empty",
    ]));
    assert_eq!(code(&output), 125);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("stage5-images") && stderr.contains("empty"), "{stderr}");
    let left: Vec<_> = fs::read_dir(env.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("isolab-bench-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn unknown_parts_are_refused_with_the_list() {
    let env = TestEnv::new();
    let output = run(env.cmd("isolab").args(["bench", "--only", "cpu,gpu"]));
    assert_eq!(code(&output), 125);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("gpu") && stderr.contains("storage"), "{stderr}");
}
