//! Each container its own host ids, never a host user's: end to end, as root.
//!
//! Root's containers with a user namespace take a free slot of 65,536 host ids from a pool
//! (root's range in /etc/subuid, or isolab's own) by a claim file; `--map-base` is checked
//! against the host's users, groups and subordinate ranges. Every test claims in its own
//! directory (`ISOLAB_USERNS_DIR`), never in /var/lib, and looks from outside: the maps of the
//! containers' processes in /proc, the owners of stage 4's uppers, the claim files.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use isolab_tests::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The test's own claims directory.
fn claims(env: &TestEnv) -> PathBuf {
    env.path().join("userns")
}

/// `name` run in `env` with `args`, claiming in the test's own directory.
fn command(env: &TestEnv, name: &str, args: &[&str]) -> Command {
    let mut command = env.cmd(name);
    command.args(args).env("ISOLAB_USERNS_DIR", claims(env));
    command
}

/// Runs `name` with `args`; the transcript, as the book would show it, and the output.
fn isolab(env: &TestEnv, name: &str, args: &[&str]) -> (String, Output) {
    let output = run(&mut command(env, name, args));
    let shown = std::iter::once(name.to_string()).chain(args.iter().map(|a| shell_quote(a)));
    (transcript(&shown.collect::<Vec<_>>().join(" "), &output), output)
}

/// The first line of a uid_map (`inside outside count`, as numbers).
fn parse_map(text: &str) -> (u32, u32, u32) {
    let numbers: Vec<u32> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    assert_eq!(numbers.len(), 3, "not a map line: {text:?}");
    (numbers[0], numbers[1], numbers[2])
}

/// Checks a refusal: exit 125, one line on stderr naming the program, containing `words`.
fn refused(transcript: &str, output: &Output, program: &str, words: &str) {
    assert_eq!(code(output), 125, "{transcript}");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {transcript}");
    assert!(stderr.starts_with(&format!("{program}: error: ")), "{transcript}");
    assert!(stderr.contains(words), "{words:?} not in {transcript}");
}

/// Ids the host has given out, read here independently of isolab: the uids of /etc/passwd,
/// the gids of /etc/group, and the ranges of /etc/subuid and /etc/subgid that are not root's.
fn host_ids_in_use() -> Vec<(u64, u64, String)> {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let mut used = Vec::new();
    for (file, field) in [("/etc/passwd", 2), ("/etc/group", 2)] {
        for line in read(file).lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if let Some(id) = fields.get(field).and_then(|id| id.parse::<u64>().ok()) {
                used.push((id, id + 1, format!("{} in {file}", fields[0])));
            }
        }
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        for line in read(file).lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if let [owner, start, count] = fields[..] {
                if let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) {
                    if owner != "root" && owner != "0" {
                        used.push((start, start + count, format!("{owner}'s range in {file}")));
                    }
                }
            }
        }
    }
    used
}

/// Asserts `outside..outside+count` holds no id the host gave anyone.
fn assert_nobody_elses(outside: u32, count: u32) {
    let (start, end) = (u64::from(outside), u64::from(outside) + u64::from(count));
    for (used_start, used_end, who) in host_ids_in_use() {
        assert!(
            end <= used_start || used_end <= start,
            "host ids {start}-{} overlap {who}",
            end - 1
        );
    }
}

/// The claim files of the test's claims directory, by first uid.
fn claim_files(env: &TestEnv) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(claims(env)) else { return Vec::new() };
    let mut uids: Vec<u32> =
        entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect();
    uids.sort();
    uids
}

/// A runtime started by this test in the background, and its container's first process;
/// killed with its container when dropped, whatever happened.
struct Background {
    runtime: Child,
    container: Pid,
}

/// The first child of `runtime`, as the host sees it: the container's first process. (Its
/// root is the rootfs, but after `pivot_root` in its own mount namespace /proc shows it as
/// `/`; the runtime's children are what tell.)
fn child_of(runtime: &Child) -> Option<Pid> {
    let pid = runtime.id();
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok().map(Pid::from_raw)
}

/// The uid map of process `pid`, as the host reads it.
fn map_of(pid: Pid) -> Option<(u32, u32, u32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/uid_map")).ok()?;
    Some(parse_map(&text))
}

impl Background {
    /// Starts `name run --rootfs <rootfs> --init -- sleep 30` and waits until its container's
    /// first process is in a user namespace whose map is written.
    fn start(env: &TestEnv, name: &str, rootfs: &str) -> Background {
        let args = ["run", "--rootfs", rootfs, "--init", "--", "sleep", "30"];
        let mut runtime = command(env, name, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the runtime");
        let mut container = None;
        let up = eventually(Duration::from_secs(20), || {
            // Until the parent has written it, a new user namespace maps nothing (an empty
            // file); before the clone, the child of a runtime is in the host's (all ids).
            container = child_of(&runtime).filter(|&pid| {
                let map = fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap_or_default();
                map.lines().count() == 1 && !map.contains(" 4294967295")
            });
            container.is_some()
        });
        let Some(container) = container.filter(|_| up) else {
            let _ = runtime.kill();
            let _ = runtime.wait();
            panic!("{name}'s container never started in {rootfs}");
        };
        Background { runtime, container }
    }

    /// The uid map of the container's first process.
    fn map(&self) -> (u32, u32, u32) {
        map_of(self.container).expect("the container's uid_map")
    }

    /// Asks the runtime to end (SIGTERM, passed on to the command by --init) and waits for it,
    /// at most 20 seconds.
    fn stop(mut self) {
        let pid = Pid::from_raw(self.runtime.id() as i32);
        kill(pid, Signal::SIGTERM).unwrap();
        let ended =
            eventually(Duration::from_secs(20), || matches!(self.runtime.try_wait(), Ok(Some(_))));
        assert!(ended, "the runtime did not end on SIGTERM");
    }

    /// Kills the runtime with SIGKILL, as a crash would (its container follows: the parent
    /// death signal), and waits for both.
    fn kill(mut self) {
        let _ = self.runtime.kill();
        let _ = self.runtime.wait();
        let container = format!("/proc/{}", self.container);
        let gone = eventually(Duration::from_secs(10), || !Path::new(&container).exists());
        assert!(gone, "the container outlived its runtime");
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.runtime.try_wait(), Ok(None)) {
            let _ = kill(self.container, Signal::SIGKILL);
            let _ = self.runtime.kill();
        }
        let _ = self.runtime.wait();
    }
}

#[test]
fn containers_running_at_once_get_different_ranges_of_ids_nobody_else_has() {
    if !require_root("containers_running_at_once_get_different_ranges_of_ids_nobody_else_has") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let a = Background::start(&env, "stage2-namespaces", "rootfs");
    let b = Background::start(&env, "stage2-namespaces", "rootfs");
    let c = Background::start(&env, "stage3-cgroups", "rootfs");
    let maps = [a.map(), b.map(), c.map()];
    for (index, &(inside, outside, count)) in maps.iter().enumerate() {
        assert_eq!((inside, count), (0, 65536), "{maps:?}");
        assert_nobody_elses(outside, count);
        for &(_, other, _) in &maps[index + 1..] {
            assert!(outside.abs_diff(other) >= 65536, "overlapping ranges: {maps:?}");
        }
    }
    // Each range is claimed by a file named by its first uid, held by its runtime.
    let mut claimed: Vec<u32> = maps.iter().map(|map| map.1).collect();
    claimed.sort();
    assert_eq!(claim_files(&env), claimed);
    let mode = fs::metadata(claims(&env)).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "the claims are root's business");

    // A runtime that ends releases its claim; one killed leaves a stale file, which the next
    // run takes over: it gets the lowest slot no live runtime holds.
    let lowest = claimed[0];
    assert_eq!(maps[0].1, lowest, "the first container started took the pool's first slot");
    a.kill();
    b.stop();
    assert!(claim_files(&env).contains(&lowest), "a killed runtime's file stays");
    let (shown, output) = isolab(
        &env,
        "stage2-namespaces",
        &["run", "--rootfs", "rootfs", "--", "cat", "/proc/self/uid_map"],
    );
    assert_eq!(code(&output), 0, "{shown}");
    assert_eq!(parse_map(&text(&output.stdout)), (0, lowest, 65536), "{shown}");
    c.stop();
    assert_eq!(claim_files(&env), Vec::<u32>::new(), "every claim was released");
}

#[test]
fn map_base_is_checked_against_the_host_and_needs_a_user_namespace() {
    if !require_root("map_base_is_checked_against_the_host_and_needs_a_user_namespace") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let uid_map = ["--", "cat", "/proc/self/uid_map"];
    let mut book = String::new();
    // Host uid 1 is daemon: container ids on it would be the host's daemon, bin, sys, …
    for stage in ["stage2-namespaces", "stage3-cgroups"] {
        let args = [&["run", "--rootfs", "rootfs", "--map-base", "1"][..], &uid_map[..]].concat();
        let (shown, output) = isolab(&env, stage, &args);
        refused(&shown, &output, stage, "uid 1 (daemon in /etc/passwd)");
        assert!(shown.contains("--map-base-force"), "the refusal names the way out: {shown}");
        if stage == "stage2-namespaces" {
            book.push_str(&shown);
        }
    }
    // Forced, it is done as asked.
    let args =
        [&["run", "--rootfs", "rootfs", "--map-base", "1", "--map-base-force"][..], &uid_map[..]];
    let (shown, output) = isolab(&env, "stage2-namespaces", &args.concat());
    assert_eq!(code(&output), 0, "{shown}");
    assert_eq!(parse_map(&text(&output.stdout)), (0, 1, 65536), "{shown}");
    book.push_str(&shown);
    // Without a user namespace there is nothing to map: refused, not ignored.
    let args = ["run", "--rootfs", "rootfs", "--map-base", "200000", "--ns", "mnt,pid", "--"];
    let (shown, output) =
        isolab(&env, "stage2-namespaces", &[&args[..], &["/bin/true"][..]].concat());
    refused(&shown, &output, "stage2-namespaces", "--map-base needs the user namespace");
    book.push_str(&shown);
    let mut settings = snapshot_settings(Some(&env));
    // How many users and groups the host has beyond the three named.
    settings.add_filter(r"and \d+ more", "and [N] more");
    settings.bind(|| insta::assert_snapshot!("idranges_map_base", book));
    // A forced range still may not be another running container's.
    let holder = Background::start(&env, "stage2-namespaces", "rootfs");
    let taken = holder.map().1.to_string();
    let args = ["run", "--rootfs", "rootfs", "--map-base", &taken, "--map-base-force", "--"];
    let (shown, output) =
        isolab(&env, "stage2-namespaces", &[&args[..], &["/bin/true"][..]].concat());
    refused(&shown, &output, "stage2-namespaces", "a running isolab runtime holds");
    holder.stop();
}

#[test]
fn a_dry_run_says_where_the_ids_come_from_and_claims_nothing() {
    if !require_root("a_dry_run_says_where_the_ids_come_from_and_claims_nothing") {
        return;
    }
    let env = TestEnv::new();
    env.skeleton_rootfs("rootfs");
    let (plan, output) = isolab(
        &env,
        "stage2-namespaces",
        &["run", "--rootfs", "rootfs", "--dry-run", "--", "/bin/sh"],
    );
    assert_eq!(code(&output), 0, "{plan}");
    let line = plan.lines().find(|line| line.starts_with("# user namespace: ")).expect(&plan);
    assert!(line.starts_with("# user namespace: 0-65535 inside are host "), "{line}");
    let from_subuid = fs::read_to_string("/etc/subuid")
        .unwrap_or_default()
        .lines()
        .any(|line| line.starts_with("root:") || line.starts_with("0:"));
    let pool = if from_subuid { "root's range in /etc/subuid" } else { "isolab's pool" };
    assert!(line.contains(&format!("the first slot of {pool}")), "{line}");
    assert!(plan.contains("# a run claims the first slot no other container holds"), "{plan}");
    assert!(!claims(&env).exists(), "a dry run claims nothing");

    let args = ["run", "--rootfs", "rootfs", "--map-base", "300000000", "--dry-run", "--", "sh"];
    let (plan, output) = isolab(&env, "stage2-namespaces", &args);
    assert_eq!(code(&output), 0, "{plan}");
    assert!(
        plan.contains("# user namespace: 0-65535 inside are host 300000000-300065535 (--map-base)"),
        "{plan}"
    );
    assert!(plan.contains("write(\"/proc/<pid>/uid_map\", \"0 300000000 65536\")"), "{plan}");
}

/// The directory of stage 4's container `name` in the store at `<env>/store`.
fn container_dir(env: &TestEnv, name: &str) -> PathBuf {
    let containers = fs::read_dir(env.path().join("store/containers")).expect("the store");
    containers
        .map(|entry| entry.unwrap().path())
        .find(|dir| {
            let config = fs::read_to_string(dir.join("config.json")).unwrap_or_default();
            config.contains(&format!("\"name\": \"{name}\""))
        })
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn stage4_containers_keep_their_own_ids_until_removed() {
    if !require_root("stage4_containers_keep_their_own_ids_until_removed") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let stage4 =
        |args: &[&str]| isolab(&env, "stage4-overlay", &[&["--root", "store"][..], args].concat());
    let run_named = |name: &str| {
        let (shown, output) = stage4(&[
            "run",
            "--rootfs",
            "rootfs",
            "--name",
            name,
            "--",
            "cat",
            "/proc/self/uid_map",
        ]);
        assert_eq!(code(&output), 0, "{shown}");
        parse_map(&text(&output.stdout)).1
    };
    let upper_owner = |name: &str| {
        let upper = fs::metadata(container_dir(&env, name).join("upper")).unwrap();
        (upper.uid(), upper.gid())
    };

    let one = run_named("one");
    let two = run_named("two");
    assert!(one.abs_diff(two) >= 65536, "one and two share host ids: {one}, {two}");
    assert_nobody_elses(one, 65536);
    assert_nobody_elses(two, 65536);
    // Each upper belongs to its own container's root, and to no other container's.
    assert_eq!(upper_owner("one"), (one, one));
    assert_eq!(upper_owner("two"), (two, two));
    // The runtimes are gone; the claims stay, kept for the containers' directories.
    let claim = fs::read_to_string(claims(&env).join(one.to_string())).unwrap();
    let dir = container_dir(&env, "one");
    assert!(claim.lines().any(|line| line == format!("dir {}", dir.display())), "{claim}");

    // Not even a forced --map-base may take a stopped container's ids.
    let forced = ["run", "--rootfs", "rootfs", "--map-base", &one.to_string(), "--map-base-force"];
    let (shown, output) =
        isolab(&env, "stage2-namespaces", &[&forced[..], &["--", "true"]].concat());
    refused(&shown, &output, "stage2-namespaces", "keeps them for the container");

    // `start` runs one on its own ids again.
    let (shown, output) = stage4(&["start", "one"]);
    assert_eq!(code(&output), 0, "{shown}");
    assert_eq!(parse_map(&text(&output.stdout)).1, one, "{shown}");

    // Removed, its ids are free: the next container gets them, and owns its upper with them.
    let (shown, output) = stage4(&["rm", "one"]);
    assert_eq!(code(&output), 0, "{shown}");
    assert_eq!(run_named("three"), one);
    assert_eq!(upper_owner("three"), (one, one));
    let (shown, output) = stage4(&["rm", "two", "three"]);
    assert_eq!(code(&output), 0, "{shown}");
    assert!(mounts_under(env.path()).is_empty());
}

#[test]
fn the_hosts_root_cannot_be_a_rootfs() {
    if !require_root("the_hosts_root_cannot_be_a_rootfs") {
        return;
    }
    let env = TestEnv::new();
    let words = "the host's / cannot be a container's root: build one with rootfs-builder";
    for (program, args) in [
        ("stage1-chroot", &["run", "--rootfs", "/", "--", "/bin/true"][..]),
        ("stage2-namespaces", &["run", "--rootfs", "/", "--", "/bin/true"][..]),
        ("stage2-namespaces", &["run", "--rootfs", "/tmp/..", "--dry-run", "--", "sh"][..]),
        ("stage3-cgroups", &["run", "--rootfs", "/", "--", "/bin/true"][..]),
        ("stage4-overlay", &["--root", "store", "run", "--rootfs", "/", "--", "/bin/true"][..]),
    ] {
        let (shown, output) = isolab(&env, program, args);
        refused(&shown, &output, program, words);
        assert!(output.stdout.is_empty(), "{shown}");
    }
    assert!(!env.path().join("store/containers").exists() || container_count(&env) == 0);
}

fn container_count(env: &TestEnv) -> usize {
    fs::read_dir(env.path().join("store/containers")).map_or(0, |entries| entries.count())
}
