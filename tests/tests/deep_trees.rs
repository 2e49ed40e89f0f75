//! Trees deeper than a path can name, end to end: a container that nests 2,100 directories
//! (`mkdir d; cd d` in a loop) has files whose paths are longer than PATH_MAX (4,096 bytes),
//! which no system call takes whole. Its `diff`, the store's `df` and its `rm` must still
//! work, walking by directory descriptors; they used to fail with ENAMETOOLONG, leaving a
//! container that could not be removed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use isolab_tests::*;

const STAGE: &str = "stage4-overlay";

/// How deep the container nests `d`: 2,100 levels of `/d` are 4,200 bytes of path.
const DEPTH: usize = 2_100;

/// Runs stage4-overlay with the store `store` in the test's directory, under the usual soft
/// limit of 1,024 open files (the runner's may be higher: a walk that held one descriptor per
/// level would run out here), and for at most five minutes.
fn stage4(env: &TestEnv, args: &[&str]) -> Output {
    let script = r#"ulimit -n 1024 && exec timeout --kill-after=10 300 "$@""#;
    let output = Command::new("sh")
        .current_dir(env.path())
        .stdin(Stdio::null())
        .args(["-c", script, "sh"])
        .arg(bin(STAGE))
        .args(["--root", "store"])
        .args(args)
        .output();
    output.unwrap_or_else(|error| panic!("cannot run {STAGE} {args:?}: {error}"))
}

/// The directories of the store's containers.
fn containers(env: &TestEnv) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(env.path().join("store/containers")) else {
        return Vec::new();
    };
    entries.map(|entry| entry.unwrap().path()).collect()
}

/// Removes the container when the test ends, also when it fails half way: the temporary
/// directory's own removal is not made for such depths.
struct RemoveOnDrop<'a>(&'a TestEnv);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if !containers(self.0).is_empty() {
            let _ = stage4(self.0, &["rm", "--force", "deep"]);
        }
    }
}

#[test]
fn a_container_nested_deeper_than_path_max_is_diffed_measured_and_removed() {
    if !require_root("a_container_nested_deeper_than_path_max_is_diffed_measured_and_removed") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let _cleanup = RemoveOnDrop(&env);
    // `cd -P`: busybox's plain `cd` is logical, and asks chdir(2) for the whole path, which
    // fails with ENAMETOOLONG past 4,096 bytes; `-P` asks for `d` alone.
    let nest = format!(
        "i=0; while [ $i -lt {DEPTH} ]; do mkdir d && cd -P d || exit 1; i=$((i+1)); done; \
         echo x > f"
    );
    let args = ["run", "--rootfs", "rootfs", "--name", "deep", "--", "/bin/sh", "-c", &nest];
    let output = stage4(&env, &args);
    assert_eq!(code(&output), 0, "run: {}", text(&output.stderr));

    let started = Instant::now();
    let output = stage4(&env, &["diff", "deep"]);
    let diffed = started.elapsed();
    assert_eq!(code(&output), 0, "diff: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let deepest = format!("A {}/f", "/d".repeat(DEPTH));
    assert!(deepest.len() > 4_096);
    assert!(stdout.lines().any(|line| line == deepest), "no line {deepest:.40}… in {stdout:.400}");
    let added = stdout.lines().filter(|line| line.starts_with("A /d")).count();
    assert_eq!(added, DEPTH + 1, "every d and the file");
    let output = stage4(&env, &["diff", "deep", "--upper"]);
    assert_eq!(code(&output), 0, "diff --upper: {}", text(&output.stderr));
    let file = format!("file     {}/f", "/d".repeat(DEPTH));
    assert!(text(&output.stdout).lines().any(|line| line == file), "no {file:.40}…");

    let started = Instant::now();
    let output = stage4(&env, &["df"]);
    let measured = started.elapsed();
    assert_eq!(code(&output), 0, "df: {}", text(&output.stderr));
    assert!(text(&output.stdout).contains("deep"), "{}", text(&output.stdout));

    let dirs = containers(&env);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let started = Instant::now();
    let output = stage4(&env, &["rm", "deep"]);
    let removed = started.elapsed();
    assert_eq!(code(&output), 0, "rm: {}", text(&output.stderr));
    assert!(!Path::new(&dirs[0]).exists(), "{} is left", dirs[0].display());
    assert!(containers(&env).is_empty());
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    eprintln!("{DEPTH} levels: diff {diffed:?}, df {measured:?}, rm {removed:?}");
}
