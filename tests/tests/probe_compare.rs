//! The isolation probe and `isolab compare`, end to end: the real binaries, real markers on
//! the host, and a check afterwards that the host is exactly as it was (hostname, mount table,
//! processes, shared memory, temporary files).
//!
//! Every test that runs the probe under a stage takes [`host_lock`]: the probe renames the host
//! for a moment, and another test reading the hostname then would see it.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use isolab_tests::*;
use serde_json::Value;

/// A token for a test's own markers: different in every run.
fn fresh_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("t{:x}{:x}", std::process::id(), nanos.subsec_nanos())
}

/// A marker process (`sleep`, with the token in argv[0]) that is killed when dropped, also when
/// the test fails.
struct MarkerProcess(Child);

impl MarkerProcess {
    fn start(token: &str) -> Self {
        let child = Command::new("sleep")
            .arg0(format!("isolab-marker-{token}"))
            .arg("120")
            .stdin(Stdio::null())
            .spawn()
            .expect("start sleep");
        MarkerProcess(child)
    }
}

impl Drop for MarkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A SysV shared-memory segment, removed when dropped.
struct Shm {
    key: i32,
    id: i32,
}

impl Shm {
    fn create() -> Self {
        let key = 0x2000_0000 + (std::process::id() as i32 & 0x0fff_ffff);
        // SAFETY: shmget only creates a segment; no memory of ours is involved.
        let id = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "shmget failed: {}", std::io::Error::last_os_error());
        Shm { key, id }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID on our own segment, with a null buffer (man 2 shmctl).
        unsafe { libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// The cell of `check` in the column `column` of a `compare --json` document.
fn cell<'a>(comparison: &'a Value, column: &str, check: &str) -> &'a Value {
    let column = comparison["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == column)
        .unwrap_or_else(|| panic!("no column {column} in {comparison:#}"));
    column["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == check)
        .unwrap_or_else(|| panic!("no {check} in column {column:#}"))
}

fn status<'a>(comparison: &'a Value, column: &str, check: &str) -> &'a str {
    cell(comparison, column, check)["status"].as_str().unwrap()
}

fn evidence<'a>(comparison: &'a Value, column: &str, check: &str) -> &'a str {
    cell(comparison, column, check)["evidence"].as_str().unwrap()
}

/// Pids of processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|entry| {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

fn hostname() -> String {
    nix::unistd::gethostname().unwrap().to_string_lossy().into_owned()
}

#[test]
fn probe_on_the_host_sees_every_marker() {
    if !require_root("probe_on_the_host_sees_every_marker") {
        return;
    }
    let env = TestEnv::new();
    let token = fresh_token();
    let marker_dir = env.path().join(format!("host-marker-{token}"));
    fs::create_dir(&marker_dir).unwrap();
    let marker = MarkerProcess::start(&token);
    let shm = Shm::create();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = token.clone();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.write_all(answer.as_bytes());
        }
    });

    let output = run(env.cmd("isolab-probe").args([
        "--on-host",
        "--scratch",
        env.path().to_str().unwrap(),
        "--token",
        &token,
        "--host-path",
        marker_dir.to_str().unwrap(),
        "--host-pid",
        &marker.0.id().to_string(),
        "--port",
        &port.to_string(),
        "--shm-key",
        &shm.key.to_string(),
    ]));
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["on_host"], true);
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 13);
    for check in checks {
        assert_eq!(check["status"], "leaks", "{check}");
        assert_eq!(check["provisional"], false, "{check}");
    }
    let evidence = |name: &str| {
        let check = checks.iter().find(|c| c["name"] == name).unwrap();
        check["evidence"].as_str().unwrap().to_string()
    };
    assert_eq!(evidence("host-filesystem"), format!("{} is visible", marker_dir.display()));
    assert!(evidence("host-processes").contains(&format!("isolab-marker-{token}")));
    assert!(evidence("network").contains(&format!("127.0.0.1:{port}")));
    assert!(evidence("ipc").contains(&format!("{:#x}", shm.key)));
    for skipped in ["chroot-escape", "hostname", "mounts", "rootfs-write"] {
        assert_eq!(evidence(skipped), "this is the host itself");
    }
    // --on-host changed nothing, so nothing is left to clean up.
    assert_eq!(fs::read_dir(env.path()).unwrap().count(), 1, "the probe left files behind");
}

#[test]
fn probe_human_table_and_bad_input() {
    let env = TestEnv::new();
    let output = run(env.cmd("isolab-probe").args(["--human", "--on-host"]));
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(table.contains("host-filesystem  n/a        no --host-path given"), "{table}");
    assert!(table.contains("rootfs-write     leaks      this is the host itself"), "{table}");

    // A token ends up in a hostname and in file names: anything else is refused, with 125.
    let output = run(env.cmd("isolab-probe").args(["--token", "../x"]));
    assert_eq!(code(&output), 125);
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("isolab-probe: error: invalid --token '../x'"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn compare_matrix_and_a_clean_host_afterwards() {
    if !require_root("compare_matrix_and_a_clean_host_afterwards") {
        return;
    }
    let _lock = host_lock();
    let env = TestEnv::new();
    let hostname_before = hostname();
    // The run's working directory goes into this test's directory, so that a failing run
    // leaves nothing in /tmp either.
    let output = run(env.cmd("isolab").args(["compare", "--json"]).env("TMPDIR", env.path()));
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    let comparison: Value = serde_json::from_slice(&output.stdout).unwrap();

    let token = comparison["token"].as_str().unwrap();
    let host_path = comparison["markers"]["host_path"].as_str().unwrap();
    let workdir = comparison["workdir"].as_str().unwrap();
    let rootfs = comparison["rootfs"].as_str().unwrap();
    let port = comparison["markers"]["port"].as_u64().unwrap();
    assert!(host_path.ends_with(&format!("host-marker-{token}")), "{host_path}");
    assert!(Path::new(workdir).starts_with(env.path()), "{workdir}");

    // The matrix, as chapters 1 and 3 tell it.
    let expected: &[(&str, [&str; 4])] = &[
        //                  host      stage1      stage1 as nobody  stage3
        ("host-filesystem", ["leaks", "isolated", "isolated", "isolated"]),
        ("chroot-escape", ["leaks", "leaks", "isolated", "isolated"]),
        ("host-processes", ["leaks", "leaks", "leaks", "isolated"]),
        ("hostname", ["leaks", "leaks", "isolated", "isolated"]),
        ("mounts", ["leaks", "leaks", "isolated", "isolated"]),
        ("network", ["leaks", "leaks", "leaks", "isolated"]),
        ("ipc", ["leaks", "leaks", "leaks", "isolated"]),
        ("user", ["leaks", "leaks", "isolated", "isolated"]),
        ("resources", ["leaks", "leaks", "leaks", "isolated"]),
        ("memory-hog", ["leaks", "leaks", "leaks", "isolated"]),
        ("fork-bomb", ["leaks", "leaks", "leaks", "isolated"]),
        ("cpu-share", ["leaks", "leaks", "leaks", "isolated"]),
        ("rootfs-write", ["leaks", "leaks", "isolated", "isolated"]),
    ];
    for (check, statuses) in expected {
        for (column, expected) in ["host", "stage1", "stage1-nobody", "stage3"].iter().zip(statuses)
        {
            assert_eq!(
                status(&comparison, column, check),
                *expected,
                "{check} in {column}: {}",
                evidence(&comparison, column, check)
            );
        }
    }

    // The evidence is about *this* run's markers.
    assert_eq!(evidence(&comparison, "host", "host-filesystem"), format!("{host_path} is visible"));
    let escape = evidence(&comparison, "stage1", "chroot-escape");
    assert!(escape.starts_with("escaped") && escape.contains(host_path), "{escape}");
    assert!(evidence(&comparison, "stage1-nobody", "chroot-escape").contains("EPERM"));
    assert!(evidence(&comparison, "host", "host-processes").contains(token));
    let renamed = evidence(&comparison, "stage1", "hostname");
    assert!(renamed.contains(&format!("\"isolab-{token}\"")), "{renamed}");
    assert_eq!(cell(&comparison, "stage1", "hostname")["decided_by"], "host");
    let mounted = evidence(&comparison, "stage1", "mounts");
    assert!(mounted.contains(&format!("{rootfs}/tmp/isolab-mnt-{token}")), "{mounted}");
    let written = evidence(&comparison, "stage1", "rootfs-write");
    assert!(written.contains(&format!("{rootfs}/isolab-write-{token}")), "{written}");
    assert!(evidence(&comparison, "stage1", "network").contains(&format!("127.0.0.1:{port}")));
    assert_eq!(evidence(&comparison, "stage1-nobody", "user"), "runs as uid 65534");
    // Stage 3's limits, present and working: the column runs with --memory 64M --pids 32
    // --cpus 0.5.
    let limits = evidence(&comparison, "stage3", "resources");
    assert!(limits.contains("(64 MiB") && limits.contains("pids limited to 32"), "{limits}");
    let hog = evidence(&comparison, "stage3", "memory-hog");
    assert!(hog.contains("killed (SIGKILL, the OOM killer)"), "{hog}");
    let bomb = evidence(&comparison, "stage3", "fork-bomb");
    assert!(bomb.starts_with("after 31 children (32 processes with the probe)"), "{bomb}");
    assert!(evidence(&comparison, "stage3", "cpu-share").contains("a CPU quota holds it back"));
    assert!(evidence(&comparison, "host", "memory-hog").contains("touched 256 MiB"));
    assert!(evidence(&comparison, "host", "fork-bomb").starts_with("forked 64 children"));

    // And the host is as it was.
    assert_eq!(hostname(), hostname_before);
    assert!(!host_mounts_contain(token), "a mount of the run is still there");
    assert!(!host_mounts_contain(workdir), "something is still mounted in {workdir}");
    assert_eq!(processes_with(&format!("isolab-marker-{token}")), Vec::<String>::new());
    let key = comparison["markers"]["shm_key"].as_i64().unwrap() as i32;
    // SAFETY: shmget only looks the key up.
    assert_eq!(unsafe { libc::shmget(key, 0, 0) }, -1, "the shm marker is still there");
    assert!(!Path::new(workdir).exists(), "{workdir} was not removed");
    assert_eq!(comparison["kept"], false);
    // Stage 3 and 4 removed their cgroups and containers: there is nothing stale to collect.
    let gc = run(env.cmd("isolab").args(["gc", "--root", "store"]));
    let said = text(&gc.stdout);
    assert_eq!(said.lines().next(), Some("no stale isolab cgroups"), "{said}");
    assert!(
        said.lines().nth(1).unwrap_or_default().starts_with("no stale containers in "),
        "{said}"
    );
}

#[test]
fn compare_markdown_is_the_books_table() {
    if !require_root("compare_markdown_is_the_books_table") {
        return;
    }
    let _lock = host_lock();
    let env = TestEnv::new();
    let output = run(env.cmd("isolab").args(["compare", "--markdown"]).env("TMPDIR", env.path()));
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    let table = text(&output.stdout);
    // No evidence, so nothing random: the snapshot is stable from run to run.
    assert!(!table.contains("/tmp") && !table.contains("isolab-"), "{table}");
    snapshot_settings(Some(&env)).bind(|| insta::assert_snapshot!("compare_markdown", table));
    // Each stage's chapter ends with its columns of the same table, beside the stage before.
    for (stage, columns) in STAGE_COLUMNS {
        let shown = columns_of(&table, columns);
        let name = format!("compare_column_{stage}");
        snapshot_settings(Some(&env)).bind(|| insta::assert_snapshot!(name, shown));
    }
    // The claims of user namespace ids (TestEnv puts them here, for the host's
    // /var/lib/isolab/userns): every run's claim went with it. What stays is the note of
    // the mounts that passed the idmap check this boot (a cache, not a claim).
    let claims = env.path().join("userns");
    if claims.exists() {
        let left: Vec<String> = fs::read_dir(&claims)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != libisolab::idmapped::VERDICTS)
            .collect();
        assert!(left.is_empty(), "claims left behind: {left:?}");
        fs::remove_dir_all(&claims).unwrap();
    }
    assert_eq!(fs::read_dir(env.path()).unwrap().count(), 0, "compare left files behind");
}

#[test]
fn compare_keep_keeps_the_workdir_but_nothing_else() {
    if !require_root("compare_keep_keeps_the_workdir_but_nothing_else") {
        return;
    }
    let _lock = host_lock();
    let env = TestEnv::new();
    let output =
        run(env.cmd("isolab").args(["compare", "--json", "--keep"]).env("TMPDIR", env.path()));
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    let comparison: Value = serde_json::from_slice(&output.stdout).unwrap();
    let token = comparison["token"].as_str().unwrap();
    assert_eq!(comparison["kept"], true);
    let workdir = Path::new(comparison["workdir"].as_str().unwrap());
    assert!(workdir.join("rootfs/isolab/probe").is_file());
    assert!(workdir.join(format!("host-marker-{token}")).is_dir());
    // The probe's own traces are gone even so.
    assert!(!workdir.join(format!("rootfs/isolab-write-{token}")).exists());
    assert!(!workdir.join(format!("rootfs/tmp/isolab-mnt-{token}")).exists());
    assert!(!host_mounts_contain(token));
    assert_eq!(processes_with(&format!("isolab-marker-{token}")), Vec::<String>::new());
}

#[test]
fn compare_says_it_needs_root() {
    if !require_root("compare_says_it_needs_root") {
        return;
    }
    // Run as nobody (we are root, so we may switch): one line, exit 125.
    let env = TestEnv::new();
    let output = run(env.cmd("isolab").args(["compare"]).uid(65534).gid(65534));
    assert_eq!(code(&output), 125);
    assert_eq!(
        text(&output.stderr),
        "isolab: error: isolab compare needs root: the stages chroot, mount and set the \
         hostname (run it with sudo)\n"
    );
}

/// The columns each stage's chapter shows: the stage before it, then its own (stage 1's
/// chapter shows the whole table).
const STAGE_COLUMNS: &[(&str, &[&str])] = &[
    ("stage2", &["stage1", "stage2", "stage2 (no user ns)"]),
    ("stage3", &["stage2", "stage3"]),
    ("stage4", &["stage3", "stage4"]),
    ("stage5", &["stage4", "stage5"]),
];

/// The `check` column and `columns` of a markdown table, as a markdown table again.
fn columns_of(table: &str, columns: &[&str]) -> String {
    let rows: Vec<Vec<String>> = table
        .lines()
        .filter(|line| line.starts_with('|') && !line.starts_with("| ---"))
        .map(|line| line.trim_matches('|').split('|').map(|cell| cell.trim().to_string()).collect())
        .collect();
    let header = &rows[0];
    let wanted: Vec<usize> = std::iter::once("check")
        .chain(columns.iter().copied())
        .map(|name| {
            header
                .iter()
                .position(|cell| cell == name)
                .unwrap_or_else(|| panic!("no column {name}"))
        })
        .collect();
    let mut out = String::new();
    for (number, row) in rows.iter().enumerate() {
        let cells: Vec<&str> = wanted.iter().map(|&index| row[index].as_str()).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if number == 0 {
            out.push_str(&format!("|{}\n", " --- |".repeat(cells.len())));
        }
    }
    out
}
