//! `isolab bench`, end to end: a real `--quick` run (every part, real containers, veths, crun
//! when installed), whose report must have every row, positive ratios, the runs it claims, a
//! noise flag that follows its own rule, and nothing left behind. The run's markdown table and
//! SVG chart are what the book's chapter "How close to the host?" shows: this test writes them
//! to `book/src/bench/` (outside CI) and checks that the two there come from one run. The
//! values change from run to run; only the report's shape is asserted.

use std::fs;
use std::path::Path;
use std::process::Command;

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

/// The noise flag the report must give a summary of ratios: too few runs under 3, within
/// noise when its quartiles include 1, none otherwise (a real difference).
fn expected_noise(ratio: &Value) -> Value {
    let (q1, q3) = (ratio["q1"].as_f64().unwrap(), ratio["q3"].as_f64().unwrap());
    if ratio["runs"].as_u64().unwrap() < 3 {
        Value::from("too-few-runs")
    } else if q1 <= 1.0 && 1.0 <= q3 {
        Value::from("spread-includes-one")
    } else {
        Value::Null
    }
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
    // exactly when the ratio's interquartile range includes 1 (or there are under 3 runs).
    let runs = report["plan"]["runs"].as_u64().unwrap() as usize;
    // The report names the build it measured, and its directory holds the stages.
    let build = &report["build"];
    assert!(matches!(build["profile"].as_str(), Some("debug" | "release")), "{build}");
    let dir = Path::new(build["dir"].as_str().unwrap());
    assert!(dir.join("stage5-images").is_file(), "{build}");
    // And how it is linked, as `readelf -l` (binutils, which the C compiler brought) says it.
    let headers = Command::new("readelf").arg("-l").arg(dir.join("stage5-images")).output();
    let headers = text(&headers.unwrap().stdout);
    let linked = if headers.contains("INTERP") { "dynamic" } else { "static" };
    assert_eq!(build["linking"].as_str(), Some(linked), "{build}");
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
        assert_eq!(row["noise"], expected_noise(ratio), "{id}: {row}");
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
        for way in ["to_crun_back_to_back", "to_crun_spaced"] {
            let ratio = &row[way];
            assert_eq!(ratio.is_object(), host_has("crun"), "{id} {way}");
            if host_has("crun") {
                check_summary(ratio, start_runs, &format!("{id} {way}"));
                assert_eq!(ratio["noise"], expected_noise(ratio), "{id} {way}: {ratio}");
            }
        }
    }
    // The goals: stage 5 against crun, stage 2 against bwrap, each both ways, judged by the
    // median, flagged by the same rule.
    let goals = starts["goals"].as_array().unwrap();
    let mut judged = Vec::new();
    for (id, against) in [("stage5", "crun"), ("stage2", "bwrap")] {
        if host_has(against) {
            judged.extend([(id, against, "back to back"), (id, against, "spaced")]);
        }
    }
    let found: Vec<_> = goals
        .iter()
        .map(|g| {
            (g["id"].as_str().unwrap(), g["against"].as_str().unwrap(), g["way"].as_str().unwrap())
        })
        .collect();
    assert_eq!(found, judged, "{}", starts["goals"]);
    for goal in goals {
        let (ratio, limit) = (&goal["ratio"], goal["goal"]["at-most"].as_f64().unwrap());
        assert_eq!(
            goal["met"].as_bool(),
            Some(ratio["median"].as_f64().unwrap() <= limit),
            "{goal}"
        );
        assert_eq!(ratio["noise"], expected_noise(ratio), "{goal}");
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
    for (index, store) in storage["stores"].as_array().unwrap().iter().enumerate() {
        check_summary(&store["start_ms"], start_runs, "store");
        let ratio = &store["to_empty"];
        if index == 0 {
            // The empty store is the base: no ratio, no goal.
            assert!(ratio.is_null() && store["meets_goal"].is_null(), "{store}");
            continue;
        }
        check_summary(ratio, start_runs, "store ratio");
        assert_eq!(ratio["noise"], expected_noise(ratio), "{store}");
        let met = ratio["median"].as_f64().unwrap() >= 0.9;
        assert_eq!(store["meets_goal"].as_bool(), Some(met), "{store}");
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

#[test]
fn a_missing_directory_for_the_chart_is_refused_before_the_run() {
    if !require_root("a_missing_directory_for_the_chart_is_refused_before_the_run") {
        return;
    }
    let env = TestEnv::new();
    for flag in ["--svg", "--markdown"] {
        let started = std::time::Instant::now();
        let output = run(env.cmd("isolab").env("TMPDIR", env.path()).args([
            "bench",
            "--only",
            "cpu",
            flag,
            "no-such-dir/out",
        ]));
        assert_eq!(code(&output), 125, "{flag}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{flag}: one line: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains("no-such-dir"), "{stderr}");
        // Refused at once: no rootfs was built, no workload ran.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{flag}: took {:?}",
            started.elapsed()
        );
    }
    let left: Vec<_> = fs::read_dir(env.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("isolab-bench-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn ctrl_c_cleans_up_and_exits_130() {
    if !require_root("ctrl_c_cleans_up_and_exits_130") {
        return;
    }
    let env = TestEnv::new();
    let mut command = env.cmd("isolab");
    command.env("TMPDIR", env.path()).args(["bench", "--quick", "--only", "start"]);
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut bench = Background::spawn(&mut command);
    // Into the run: once its working directory exists, the rootfs is being built.
    let working = eventually(std::time::Duration::from_secs(30), || {
        fs::read_dir(env.path())
            .unwrap()
            .any(|entry| entry.unwrap().file_name().to_string_lossy().starts_with("isolab-bench-"))
    });
    assert!(working, "the bench never made its working directory");
    std::thread::sleep(std::time::Duration::from_secs(2));
    nix::sys::signal::kill(bench.pid(), nix::sys::signal::Signal::SIGINT).unwrap();
    let stopped = eventually(std::time::Duration::from_secs(60), || {
        matches!(bench.0.try_wait(), Ok(Some(_)))
    });
    assert!(stopped, "the bench did not stop within 60 s of SIGINT");
    let status = bench.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bench.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let left: Vec<_> = fs::read_dir(env.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("isolab-bench-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    assert!(processes_rooted_in(env.path()).is_empty(), "{:?}", processes_rooted_in(env.path()));
}
