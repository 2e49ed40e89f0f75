//! The container store under faults, as an adversarial user meets it: directories it did not
//! make, names that look like ids, broken files, runtimes killed at every step of create and
//! remove, a stopped runtime, parallel runs and removals, a full disk, thousands of stored
//! containers. After each: nothing the user made is lost, nothing is left on the host, and
//! `ps` tells the truth. The real `stage4-overlay` binary, each test in its own directory.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use isolab_tests::*;
use nix::sys::signal::{kill, Signal};

const STAGE: &str = "stage4-overlay";

/// Runs stage4-overlay on the store `<env>/store`.
fn stage4(env: &TestEnv, args: &[&str]) -> Output {
    run(env.cmd(STAGE).arg("--root").arg("store").args(args))
}

/// The same, with `ISOLAB_FAULT` set: the runtime SIGKILLs itself at that point.
fn stage4_killed_at(env: &TestEnv, point: &str, args: &[&str]) -> Output {
    run(env.cmd(STAGE).env("ISOLAB_FAULT", point).arg("--root").arg("store").args(args))
}

fn ok(output: &Output) -> String {
    assert_eq!(
        code(output),
        0,
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// A base for the containers, and a first container `keep` with a file of the user's in its
/// upper: what no fault may lose.
fn set_up(env: &TestEnv) {
    env.namespaced_rootfs("rootfs");
    let output = stage4(
        env,
        &[
            "run",
            "--rootfs",
            "rootfs",
            "--name",
            "keep",
            "--",
            "/bin/sh",
            "-c",
            "echo mine > /work",
        ],
    );
    ok(&output);
    assert_eq!(fs::read_to_string(upper_of(env, "keep").join("work")).unwrap(), "mine\n");
}

/// The upper directory of the container called `name`.
fn upper_of(env: &TestEnv, name: &str) -> PathBuf {
    let id = fs::read_link(env.path().join("store/names").join(name)).expect("indexed");
    env.path().join("store/containers").join(id).join("upper")
}

/// The container directories of the store.
fn container_dirs(env: &TestEnv) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(env.path().join("store/containers")) else { return vec![] };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    dirs.sort();
    dirs
}

/// What every fault test checks last: `keep` and its file are there, no mount and no
/// process is left, the journal is empty, and `ps` lists only whole containers.
fn check_sound(env: &TestEnv) {
    assert_eq!(fs::read_to_string(upper_of(env, "keep").join("work")).unwrap(), "mine\n");
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    assert!(processes_rooted_in(env.path()).is_empty(), "{:?}", processes_rooted_in(env.path()));
    let journal: Vec<_> = fs::read_dir(env.path().join("store/active"))
        .map(|entries| entries.flatten().map(|entry| entry.file_name()).collect())
        .unwrap_or_default();
    assert!(journal.is_empty(), "journal entries left: {journal:?}");
    let ps = ok(&stage4(env, &["ps"]));
    assert!(!ps.contains("broken") && !ps.contains("running"), "{ps}");
}

// Regression: `gc` (and the gc of run, rm and start) removed any directory of
// `<root>/containers/` without a config.json, a user's files and a real container's upper
// alike.
#[test]
fn gc_never_removes_a_directory_it_cannot_prove_it_made() {
    if !require_root("gc_never_removes_a_directory_it_cannot_prove_it_made") {
        return;
    }
    let env = TestEnv::new();
    set_up(&env);
    let foreign = env.path().join("store/containers/web-app");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("Dockerfile"), "important\n").unwrap();
    // A real container that lost only its config.json.
    ok(&stage4(
        &env,
        &[
            "run",
            "--rootfs",
            "rootfs",
            "--name",
            "lost",
            "--",
            "/bin/sh",
            "-c",
            "echo data > /data",
        ],
    ));
    let lost_upper = upper_of(&env, "lost");
    fs::remove_file(lost_upper.parent().unwrap().join("config.json")).unwrap();

    let gc = stage4(&env, &["gc"]);
    let said = ok(&gc);
    assert!(said.contains("web-app alone") && said.contains("rm --force"), "{said}");
    // Every verb that collects garbage first: none touches them.
    ok(&stage4(&env, &["run", "--rootfs", "rootfs", "--name", "other", "--", "/bin/true"]));
    ok(&stage4(&env, &["start", "other"]));
    ok(&stage4(&env, &["rm", "other"]));
    ok(&stage4(&env, &["gc"]));
    assert_eq!(fs::read_to_string(foreign.join("Dockerfile")).unwrap(), "important\n");
    assert_eq!(fs::read_to_string(lost_upper.join("data")).unwrap(), "data\n");
    // `ps` shows the broken one, and the way out; `rm --force ID` takes it.
    let ps = ok(&stage4(&env, &["ps"]));
    let id = lost_upper.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    assert!(ps.contains(&id) && ps.contains("broken"), "{ps}");
    let output = stage4(&env, &["rm", &id]);
    assert_eq!(code(&output), 125, "{}", text(&output.stderr));
    ok(&stage4(&env, &["rm", "--force", &id]));
    assert!(!lost_upper.exists());
    fs::remove_dir_all(&foreign).unwrap();
    check_sound(&env);
}

// Regression: `run --name <an existing id>` was accepted, and `rm <that word>` removed
// whichever container sorted first.
#[test]
fn names_never_shadow_ids_and_prefixes_resolve_as_docker_does() {
    if !require_root("names_never_shadow_ids_and_prefixes_resolve_as_docker_does") {
        return;
    }
    let env = TestEnv::new();
    set_up(&env);
    let keep_id = upper_of(&env, "keep")
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for bad in [keep_id.as_str(), &keep_id[..6], "0123456789abcdef"] {
        let output = stage4(&env, &["run", "--rootfs", "rootfs", "--name", bad, "--", "/bin/true"]);
        assert_eq!(code(&output), 125, "--name {bad}: {}", text(&output.stderr));
        assert_eq!(text(&output.stderr).lines().count(), 1, "{}", text(&output.stderr));
    }
    assert_eq!(container_dirs(&env).len(), 1, "a refused name leaves nothing");
    // 17 containers: two of them share a first hex digit, an ambiguous prefix.
    for number in 0..16 {
        ok(&stage4(
            &env,
            &["run", "--rootfs", "rootfs", "--name", &format!("n{number}"), "--", "/bin/true"],
        ));
    }
    let ids: Vec<String> = container_dirs(&env)
        .iter()
        .map(|dir| dir.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let shared = (0..16u8)
        .map(|digit| format!("{digit:x}"))
        .find(|digit| ids.iter().filter(|id| id.starts_with(digit.as_str())).count() > 1)
        .unwrap();
    let output = stage4(&env, &["rm", &shared]);
    assert_eq!(code(&output), 125);
    let said = text(&output.stderr);
    assert!(said.contains("is the start of") && said.contains("give more of the id"), "{said}");
    assert_eq!(container_dirs(&env).len(), 17, "an ambiguous rm removes nothing");
    // A unique prefix, an exact id, an exact name: each removes the one it names.
    let unique = ids.iter().find(|id| !id.starts_with(&shared) && *id != &keep_id).unwrap();
    let prefix = (1..=12)
        .map(|n| &unique[..n])
        .find(|p| ids.iter().filter(|id| id.starts_with(p)).count() == 1)
        .unwrap();
    let said = ok(&stage4(&env, &["rm", prefix]));
    assert!(said.contains(unique.as_str()), "{said}");
    // By name: one of the n* containers still there (the prefix above may have taken n0).
    let name = (0..16)
        .map(|number| format!("n{number}"))
        .find(|name| fs::symlink_metadata(env.path().join("store/names").join(name)).is_ok())
        .unwrap();
    ok(&stage4(&env, &["rm", &name]));
    assert_eq!(container_dirs(&env).len(), 15);
    check_sound(&env);
}

// Regression: `rm --force` failed on a garbage config.json with the very error that told
// the user to run `rm --force`; a lock that is a directory defeated it too.
#[test]
fn rm_force_removes_whatever_is_there() {
    if !require_root("rm_force_removes_whatever_is_there") {
        return;
    }
    let env = TestEnv::new();
    set_up(&env);
    for (name, damage) in [("garbage", "config"), ("lockdir", "lock"), ("nostate", "state")] {
        ok(&stage4(&env, &["run", "--rootfs", "rootfs", "--name", name, "--", "/bin/true"]));
        let dir = upper_of(&env, name).parent().unwrap().to_path_buf();
        match damage {
            "config" => fs::write(dir.join("config.json"), "{ garbage").unwrap(),
            "lock" => {
                fs::remove_file(dir.join("lock")).unwrap();
                fs::create_dir(dir.join("lock")).unwrap();
            }
            _ => fs::remove_file(dir.join("state.json")).unwrap(),
        }
        let ps = ok(&stage4(&env, &["ps"]));
        assert!(ps.contains("keep"), "{ps}");
        let output = stage4(&env, &["rm", "--force", name]);
        assert_eq!(code(&output), 0, "{name}: {}", text(&output.stderr));
        assert!(!dir.exists(), "{name}");
    }
    check_sound(&env);
}

/// Every point where the tests kill the runtime, and the command that passes it.
const FAULTS: &[(&str, &[&str])] = &[
    ("create:journal", &["run", "--rootfs", "rootfs", "--name", "victim", "--", "/bin/true"]),
    ("create:locked", &["run", "--rootfs", "rootfs", "--name", "victim", "--", "/bin/true"]),
    ("create:contents", &["run", "--rootfs", "rootfs", "--name", "victim", "--", "/bin/true"]),
    ("create:files", &["run", "--rootfs", "rootfs", "--name", "victim", "--", "/bin/true"]),
    ("create:done", &["run", "--rootfs", "rootfs", "--name", "victim", "--", "/bin/true"]),
    (
        "create:done",
        &["run", "--rootfs", "rootfs", "--name", "victim", "--storage", "copy", "--", "/bin/true"],
    ),
    (
        "remove:journal",
        &["run", "--rootfs", "rootfs", "--name", "victim", "--rm", "--", "/bin/true"],
    ),
];

#[test]
fn a_runtime_killed_at_any_step_leaves_nothing_half_made() {
    if !require_root("a_runtime_killed_at_any_step_leaves_nothing_half_made") {
        return;
    }
    let env = TestEnv::new();
    set_up(&env);
    for (point, args) in FAULTS {
        let output = stage4_killed_at(&env, point, args);
        assert_eq!(
            output.status.signal(),
            Some(9),
            "{point}: not killed: {}",
            text(&output.stderr)
        );
        // `ps` tells the truth at once, with no gc: a half-made container is not listed as
        // running.
        let ps = ok(&stage4(&env, &["ps"]));
        assert!(!ps.contains("running"), "{point}: {ps}");
        // The next run cleans up what the journal proves was half made, and says so.
        let next = stage4(&env, &["run", "--rootfs", "rootfs", "--rm", "--", "/bin/true"]);
        let said = text(&next.stderr);
        assert_eq!(code(&next), 0, "{point}: {said}");
        match *point {
            // Killed before its directory was made: nothing to say.
            "create:journal" => assert!(!said.contains("gc:"), "{point}: {said}"),
            "create:done" => assert!(said.contains("marked exited"), "{point}: {said}"),
            _ => assert!(said.contains("gc: container"), "{point}: {said}"),
        }
        // The name is free again, or held by a whole, exited container.
        let output = stage4(&env, &["rm", "victim"]);
        let created = *point == "create:done";
        assert_eq!(
            code(&output),
            if created { 0 } else { 125 },
            "{point}: {}",
            text(&output.stderr)
        );
        ok(&stage4(
            &env,
            &["run", "--rootfs", "rootfs", "--name", "victim", "--rm", "--", "/bin/true"],
        ));
        assert_eq!(container_dirs(&env).len(), 1, "{point}: {:?}", container_dirs(&env));
        check_sound(&env);
    }
    // Killed while `rm` removes a container: `gc` finishes the removal.
    ok(&stage4(&env, &["run", "--rootfs", "rootfs", "--name", "victim", "--", "/bin/true"]));
    let output = stage4_killed_at(&env, "remove:journal", &["rm", "victim"]);
    assert_eq!(output.status.signal(), Some(9));
    let said = ok(&stage4(&env, &["gc"]));
    assert!(said.contains("was being removed") || said.contains("removed"), "{said}");
    assert_eq!(container_dirs(&env).len(), 1);
    check_sound(&env);
    // No claim of user namespace ids outlives its container: `keep`'s is the only one left.
    assert_eq!(claims(&env).len(), 1, "claims left: {:?} ({said})", claims(&env));
}

/// A container its runtime died making or removing is removed by the journal's gc, which
/// every `run`, `start` and `rm` does first; its claim of user namespace ids goes with it,
/// also when the runtime died before the config (which names the ids) was written.
#[test]
fn a_dead_runtimes_claim_of_ids_goes_with_its_container() {
    if !require_root("a_dead_runtimes_claim_of_ids_goes_with_its_container") {
        return;
    }
    let env = TestEnv::new();
    set_up(&env);
    let run = ["run", "--rootfs", "rootfs", "--name", "victim", "--", "/bin/true"];
    let run_rm = ["run", "--rootfs", "rootfs", "--name", "victim", "--rm", "--", "/bin/true"];
    let cases: [(&str, &[&str]); 4] = [
        ("create:locked", &run),
        ("create:contents", &run),
        ("create:files", &run),
        ("remove:journal", &run_rm),
    ];
    for (point, args) in cases {
        let output = stage4_killed_at(&env, point, args);
        assert_eq!(output.status.signal(), Some(9), "{point}: {}", text(&output.stderr));
        assert_eq!(claims(&env).len(), 2, "{point}: keep's and the victim's: {:?}", claims(&env));
        // `rm` of nothing: only its journal gc runs (a `run` would take the stale claim over).
        let output = stage4(&env, &["rm", "no-such-container"]);
        let said = text(&output.stderr);
        assert!(said.contains("gc: container"), "{point}: {said}");
        assert_eq!(claims(&env).len(), 1, "{point}: claims left: {:?} ({said})", claims(&env));
        assert_eq!(container_dirs(&env).len(), 1, "{point}: {:?}", container_dirs(&env));
    }
    check_sound(&env);
}

/// The full `gc` removes every claim whose container is gone, whichever store it was in: also
/// run on a store that does not exist (any more), and past entries that are no claim files.
#[test]
fn the_full_gc_sweeps_stale_claims_of_any_store() {
    if !require_root("the_full_gc_sweeps_stale_claims_of_any_store") {
        return;
    }
    let env = TestEnv::new();
    let claims_dir = env.path().join("userns");
    fs::create_dir(&claims_dir).unwrap();
    // A killed runtime's claim, one kept for a container directory deleted by hand, a live
    // kept one, and a FIFO under a claim's name (reading it would wait forever).
    fs::create_dir(env.path().join("alive")).unwrap();
    let kept = |dir: &str| format!("gid 1\ndir {}\n", env.path().join(dir).display());
    fs::write(claims_dir.join("1000131072"), "gid 1000131072\npid 1\n").unwrap();
    fs::write(claims_dir.join("1000196608"), kept("deleted")).unwrap();
    fs::write(claims_dir.join("1000262144"), kept("alive")).unwrap();
    let fifo = claims_dir.join("1000000000");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let said = ok(&stage4(&env, &["gc"]));
    let line = format!(
        "removed 2 stale claims of user namespace ids from {} (their containers are gone)",
        claims_dir.display()
    );
    assert!(said.contains(&line), "{said}");
    assert_eq!(claims(&env), ["1000000000", "1000262144"], "the FIFO and the live claim stay");
    assert!(!env.path().join("store").exists(), "gc made no store");
    let said = ok(&stage4(&env, &["gc"]));
    assert!(said.contains("no stale isolab cgroups, container states or mounts"), "{said}");
}

/// The claim files of user namespace ids in the test's claims directory (one per container
/// that keeps its ids, and one per runtime running).
fn claims(env: &TestEnv) -> Vec<String> {
    let Ok(entries) = fs::read_dir(env.path().join("userns")) else { return vec![] };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.parse::<u32>().is_ok())
        .collect();
    names.sort();
    names
}

/// A runtime of stage 4 on the test's store, started in the background (see [`Background`]).
fn background(env: &TestEnv, args: &[&str]) -> Background {
    Background::spawn(env.cmd(STAGE).args(["--root", "store"]).args(args).stderr(Stdio::null()))
}

#[test]
fn a_stopped_runtime_is_running_until_rm_force_kills_it() {
    if !require_root("a_stopped_runtime_is_running_until_rm_force_kills_it") {
        return;
    }
    let env = TestEnv::new();
    set_up(&env);
    let runtime = background(
        &env,
        &["run", "--rootfs", "rootfs", "--name", "paused", "--", "/bin/sleep", "60"],
    );
    assert!(eventually(Duration::from_secs(5), || text(&stage4(&env, &["ps"]).stdout)
        .contains("running")));
    kill(runtime.pid(), Signal::SIGSTOP).unwrap();
    let ps = ok(&stage4(&env, &["ps"]));
    assert!(ps.contains("running (pid"), "a stopped runtime still holds its lock: {ps}");
    ok(&stage4(&env, &["gc"]));
    let output = stage4(&env, &["rm", "paused"]);
    assert_eq!(code(&output), 125, "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("is running"), "{}", text(&output.stderr));
    let start = Instant::now();
    let said = ok(&stage4(&env, &["rm", "--force", "paused"]));
    assert!(said.contains("killed first"), "{said}");
    assert!(start.elapsed() < Duration::from_secs(8), "{:?}", start.elapsed());
    drop(runtime);
    assert_eq!(container_dirs(&env).len(), 1);
    check_sound(&env);
}

// Regression: 30 parallel `rm` printed false "creation was interrupted" lines about each
// other's containers.
#[test]
fn parallel_runs_and_removals_say_nothing_false() {
    if !require_root("parallel_runs_and_removals_say_nothing_false") {
        return;
    }
    let env = TestEnv::new();
    set_up(&env);
    let spawn = |args: Vec<String>| {
        env.cmd(STAGE)
            .arg("--root")
            .arg("store")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runs: Vec<Child> = (0..20)
        .map(|n| {
            let name = format!("p{n}");
            spawn(
                ["run", "--rootfs", "rootfs", "--name", &name, "--", "/bin/true"]
                    .map(String::from)
                    .to_vec(),
            )
        })
        .collect();
    // The same name, five times at once: exactly one wins.
    let same: Vec<Child> = (0..5)
        .map(|_| {
            spawn(
                ["run", "--rootfs", "rootfs", "--name", "twin", "--", "/bin/true"]
                    .map(String::from)
                    .to_vec(),
            )
        })
        .collect();
    for child in runs {
        let output = child.wait_with_output().unwrap();
        assert_eq!(code(&output), 0, "{}", text(&output.stderr));
        assert!(!text(&output.stderr).contains("gc:"), "{}", text(&output.stderr));
    }
    let twins: Vec<Output> =
        same.into_iter().map(|child| child.wait_with_output().unwrap()).collect();
    assert_eq!(twins.iter().filter(|output| code(output) == 0).count(), 1);
    for lost in twins.iter().filter(|output| code(output) != 0) {
        assert!(text(&lost.stderr).contains("already in use"), "{}", text(&lost.stderr));
    }
    let removals: Vec<Child> = (0..20).map(|n| spawn(vec!["rm".into(), format!("p{n}")])).collect();
    for child in removals {
        let output = child.wait_with_output().unwrap();
        assert_eq!(code(&output), 0, "{}", text(&output.stderr));
        assert!(!text(&output.stderr).contains("gc:"), "a false gc line: {}", text(&output.stderr));
    }
    ok(&stage4(&env, &["rm", "twin"]));
    assert_eq!(container_dirs(&env).len(), 1);
    check_sound(&env);
}

// Regression: store directories were 0711 and uppers 0755: a setuid-root file written by a
// container without a user namespace could be run by any host user.
#[test]
fn no_host_user_can_reach_a_containers_upper() {
    if !require_root("no_host_user_can_reach_a_containers_upper") {
        return;
    }
    let env = TestEnv::new();
    set_up(&env);
    let script = "cp /bin/busybox /suid && chmod 4755 /suid";
    ok(&stage4(
        &env,
        &[
            "run",
            "--rootfs",
            "rootfs",
            "--name",
            "setuid",
            "--ns",
            "mnt,uts,ipc,pid,net",
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
    ));
    let file = upper_of(&env, "setuid").join("suid");
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o4000, 0o4000, "the setuid bit is there");
    let dir = file.parent().unwrap().parent().unwrap();
    assert_eq!(fs::metadata(dir).unwrap().mode() & 0o777, 0o700);
    // Through a shell running as nobody: setpriv itself still holds root's capabilities until
    // it execs, so it must not be the one to open the file.
    for attempt in ["cat \"$0\"", "\"$0\" true"] {
        let output = run(std::process::Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
            .args(["/bin/sh", "-c", attempt])
            .arg(&file));
        assert_ne!(code(&output), 0, "nobody reached {}: {}", file.display(), text(&output.stdout));
        assert!(text(&output.stderr).contains("Permission denied"), "{}", text(&output.stderr));
    }
    check_sound(&env);
}

/// Runs `script` in a private mount namespace in which `<env>/store` is a 4 MiB tmpfs: the
/// mount dies with the namespace, so nothing is mounted on the host, ever.
fn with_small_store(env: &TestEnv, script: &str) -> Output {
    let stage4 = bin(STAGE);
    let full = format!(
        "set -u; mount --make-rprivate / && mkdir -p store && mount -t tmpfs -o size=4m tmpfs store \
         && S={} && {script}",
        shell_quote(&stage4.display().to_string())
    );
    run(std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &full])
        .env("ISOLAB_USERNS_DIR", env.path().join("userns"))
        .current_dir(env.path()))
}

#[test]
fn a_full_disk_is_one_line_and_leaves_the_store_consistent() {
    if !require_root("a_full_disk_is_one_line_and_leaves_the_store_consistent") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    // A copy of the base (over 4 MiB) does not fit; then a container fits, the disk is filled,
    // and its start fails on the state write; freed, it starts.
    let script = r#"
        $S --root store run --rootfs rootfs --storage copy --name big -- /bin/true; echo "copy=$?"
        echo "left=$(ls store/containers | wc -l) journal=$(ls store/active | wc -l)"
        $S --root store run --rootfs rootfs --name small -- /bin/true; echo "small=$?"
        dd if=/dev/zero of=store/filler bs=64k 2>/dev/null; sync
        $S --root store start small; echo "start=$?"
        $S --root store ps | grep -c 'exited' | sed 's/^/exited=/'
        rm store/filler
        $S --root store start small; echo "again=$?"
        $S --root store rm small; echo "rm=$?"
        $S --root store run --rootfs rootfs --name filler -- /bin/sh -c 'dd if=/dev/zero of=/big bs=64k 2>/dev/null; true'; echo "fill=$?"
        $S --root store ps | grep filler | grep -vc 'runtime killed' | sed 's/^/recorded=/'
        $S --root store rm filler; echo "rmfill=$?"
        echo "end=$(ls store/containers | wc -l)"
    "#;
    let output = with_small_store(&env, script);
    let out = text(&output.stdout);
    let err = text(&output.stderr);
    for expected in [
        "copy=125",
        "left=0 journal=0",
        "small=0",
        "start=125",
        "exited=1",
        "again=0",
        "rm=0",
        // A container that fills the disk: its end is still recorded, and rm removes it.
        "fill=0",
        "recorded=1",
        "rmfill=0",
        "end=0",
    ] {
        assert!(out.contains(expected), "{expected} missing:\n{out}\n{err}");
    }
    let errors: Vec<&str> = err.lines().filter(|line| line.contains("error:")).collect();
    assert_eq!(errors.len(), 2, "{err}");
    assert!(errors.iter().all(|line| line.contains("full") || line.contains("ENOSPC")), "{err}");
    assert!(mounts_under(env.path()).is_empty());
}

/// A container of `template`'s kind, cloned `count` times into the store `root` by hand (as
/// many `run`s would, only faster): configs, states and the index of names.
fn fill_store(env: &TestEnv, root: &str, count: usize) {
    let containers = env.path().join(root).join("containers");
    let template = fs::read_dir(&containers).unwrap().next().unwrap().unwrap().path();
    let config = fs::read_to_string(template.join("config.json")).unwrap();
    let state = fs::read_to_string(template.join("state.json")).unwrap();
    let old_id = template.file_name().unwrap().to_string_lossy().into_owned();
    let old_name = format!("\"name\": \"{}\"", fill_name(&config));
    for number in 0..count {
        let id = format!("{:012x}", 0xf000_0000_0000u64 + number as u64);
        let dir = containers.join(&id);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        for sub in ["upper", "work", "merged"] {
            fs::create_dir(dir.join(sub)).unwrap();
        }
        let name = format!("filler-{number}");
        let config =
            config.replace(&old_id, &id).replace(&old_name, &format!("\"name\": \"{name}\""));
        fs::write(dir.join("config.json"), config).unwrap();
        fs::write(dir.join("state.json"), &state).unwrap();
        std::os::unix::fs::symlink(&id, env.path().join(root).join("names").join(&name)).unwrap();
    }
}

/// The `name` field of a config.json.
fn fill_name(config: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(config).unwrap();
    value["name"].as_str().unwrap().to_string()
}

/// The median times of `runs` runs of `run --rm -- /bin/true` in each of two stores, the runs
/// interleaved (A, B, A, B, …) so that the machine's load weighs on both alike.
fn start_costs(env: &TestEnv, stores: [&str; 2], runs: usize) -> [Duration; 2] {
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (which, store) in stores.iter().enumerate() {
            let start = Instant::now();
            let output = run(env.cmd(STAGE).args(["--root", store]).args([
                "run",
                "--rootfs",
                "rootfs",
                "--rm",
                "--ns",
                "mnt,pid",
                "--",
                "/bin/true",
            ]));
            times[which].push(start.elapsed());
            ok(&output);
        }
    }
    // The lower quartile, not the median: the two stores take turns, yet a machine busy with
    // something else (a build beside the tests) lengthens some runs of either by tens of
    // milliseconds; the quicker runs show what a start costs.
    times.map(|mut times| {
        times.sort();
        times[runs / 4]
    })
}

// Regression: every `run` read every container's config and state (7 ms with an empty store,
// 55 ms with 1,000 containers).
#[test]
fn start_cost_stays_flat_with_thousands_of_containers() {
    if !require_root("start_cost_stays_flat_with_thousands_of_containers") {
        return;
    }
    let env = TestEnv::new();
    set_up(&env);
    let big = run(env.cmd(STAGE).args(["--root", "big", "run", "--rootfs", "rootfs"]).args([
        "--name",
        "first",
        "--",
        "/bin/true",
    ]));
    ok(&big);
    fill_store(&env, "big", 3000);
    let [small, large] = start_costs(&env, ["store", "big"], 21);
    let ratio = large.as_secs_f64() / small.as_secs_f64();
    eprintln!("start: {small:?} with 1 container, {large:?} with 3,001 (x{ratio:.2})");
    assert!(ratio < 1.5, "start cost grew with the store: {small:?} -> {large:?}");
    // And the store is whole: ps lists them all, gc finds nothing to do.
    let ps = ok(&run(env.cmd(STAGE).args(["--root", "big", "ps"])));
    assert_eq!(ps.lines().count(), 3002, "header + 3,001 containers");
    let said = ok(&run(env.cmd(STAGE).args(["--root", "big", "gc"])));
    assert!(!said.contains("filler") && !said.contains("left"), "{said}");
    check_sound(&env);
}

// Regression: root worked in a store another user owned, following what that user planted
// there (a symlink at containers/<id>, a lock pointing at a file to create).
#[test]
fn root_refuses_a_store_it_does_not_own() {
    if !require_root("root_refuses_a_store_it_does_not_own") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let store = env.path().join("store");
    fs::create_dir_all(store.join("containers")).unwrap();
    let victim = env.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("keep"), "x").unwrap();
    std::os::unix::fs::symlink(&victim, store.join("containers/0123456789ab")).unwrap();
    nix::unistd::chown(&store, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    for args in [
        &["run", "--rootfs", "rootfs", "--rm", "--", "/bin/true"][..],
        &["rm", "--force", "0123456789ab"],
        &["gc"],
    ] {
        let output = stage4(&env, args);
        assert_eq!(code(&output), 125, "{args:?}: {}", text(&output.stderr));
        let said = text(&output.stderr);
        assert!(said.contains("belongs to uid 65534"), "{args:?}: {said}");
    }
    let output = run(env.cmd("isolab").args(["gc", "--root", "store"]));
    assert_ne!(code(&output), 0, "isolab gc: {}", text(&output.stdout));
    assert!(victim.join("keep").exists(), "root followed the user's symlink");
}

// Regression: `--storage copy` without a mount namespace ran in a chroot into the store,
// which root of the container left (stage 1's escape) to rewrite its own config.json; and the
// container's directory belonged to its root, who could replace the runtime's files in it.
#[test]
fn a_containers_root_cannot_reach_the_runtimes_files() {
    if !require_root("a_containers_root_cannot_reach_the_runtimes_files") {
        return;
    }
    let env = TestEnv::new();
    set_up(&env);
    let output = stage4(
        &env,
        &["run", "--rootfs", "rootfs", "--storage", "copy", "--ns", "user,pid", "--", "/bin/true"],
    );
    assert_eq!(code(&output), 125, "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("add mnt to --ns"), "{}", text(&output.stderr));
    // With a user namespace the directory stays root's: its root gets in through the group,
    // search only.
    let dir = upper_of(&env, "keep").parent().unwrap().to_path_buf();
    let metadata = fs::metadata(&dir).unwrap();
    let upper = fs::metadata(dir.join("upper")).unwrap();
    assert_eq!((metadata.uid(), metadata.mode() & 0o777), (0, 0o710));
    assert_eq!(metadata.gid(), upper.gid(), "the group is the container root's");
    assert_ne!(upper.uid(), 0, "its upper is its root's own");
    for file in ["config.json", "state.json", "lock"] {
        assert_eq!(fs::metadata(dir.join(file)).unwrap().uid(), 0, "{file}");
    }
    check_sound(&env);
}

// Regression: root accepted a store inside a directory another user owns (who could swap the
// store between the check and its use), and made its directories in another user's store
// before refusing it.
#[test]
fn root_refuses_a_store_whose_parent_another_user_controls() {
    if !require_root("root_refuses_a_store_whose_parent_another_user_controls") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let nobody = nix::unistd::Uid::from_raw(65534);
    for (parent, store) in [("u", "u/store"), ("v", "v")] {
        fs::create_dir(env.path().join(parent)).unwrap();
        nix::unistd::chown(&env.path().join(parent), Some(nobody), None).unwrap();
        let output = run(env
            .cmd(STAGE)
            .args(["--root", store, "run", "--rootfs", "rootfs"])
            .args(["--rm", "--", "/bin/true"]));
        assert_eq!(code(&output), 125, "{store}: {}", text(&output.stderr));
        assert!(text(&output.stderr).contains("uid 65534"), "{}", text(&output.stderr));
        let made: Vec<_> = fs::read_dir(env.path().join(parent)).unwrap().flatten().collect();
        assert!(made.is_empty(), "{store}: root made {made:?} in another user's directory");
    }
}
