//! The labs prove themselves (issue 13): every starter builds and fails its tasks while the
//! reference passes them (`isolab lab check`), and the grader catches real mistakes: broken
//! variants of the reference, each one mistake a student makes, fail the grader naming the
//! task the mistake belongs to, and only that task.
//!
//! Builds are slow: every starter and variant shares one target directory
//! (`target/labs`, as `lab check` uses), so that the dependencies build once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use isolab_tests::*;

/// Held while a test writes starters and builds them in [`shared_target`], and takes the
/// binaries out: two builds of the same binary name would replace each other's (`lab check`
/// builds the stubbed starters), and see [`build`].
static SHARED_TARGET: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The target directory every starter and variant builds in.
fn shared_target() -> PathBuf {
    workspace_root().join("target/labs")
}

/// A starter of `stage` with the reference's answers to that stage's tasks and the earlier
/// ones put back (the later stages' regions stay stubbed: the stage's binary never runs
/// them, which the grading of each variant proves), then `patch` applied to it: a student's
/// attempt with one mistake.
fn variant(env: &TestEnv, name: &str, stage: u8, patch: &dyn Fn(&Path)) -> PathBuf {
    let dir = env.path().join(name);
    let output = run(env.cmd("isolab").args(["lab", "new", &stage.to_string()]).arg(&dir));
    assert!(output.status.success(), "lab new: {}", text(&output.stderr));
    let src = "stages/libisolab/src";
    // Every file of the library that has a region: the stubs replaced by the answers.
    let marked = marked_files(&workspace_root().join(src));
    assert!(marked.len() >= 8, "the library's marked files: {marked:?}");
    for file in marked {
        let reference = fs::read_to_string(workspace_root().join(src).join(&file)).unwrap();
        let starter = fs::read_to_string(dir.join(src).join(&file)).unwrap();
        fs::write(dir.join(src).join(&file), answered(&starter, &reference, stage)).unwrap();
    }
    patch(&dir.join(src));
    dir
}

/// The regions of a file, in order: (task's stage, BEGIN line index, END line index).
fn regions_of(lines: &[&str]) -> Vec<(u8, usize, usize)> {
    let mut found = Vec::new();
    let mut open = None;
    for (index, line) in lines.iter().enumerate() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("// LAB stage") {
            let stage: String = rest.chars().take_while(char::is_ascii_digit).collect();
            open = Some((stage.parse::<u8>().unwrap(), index));
        } else if line.trim_end() == "// LAB END" {
            let (stage, begin) = open.take().expect("END after a BEGIN");
            found.push((stage, begin, index));
        }
    }
    found
}

/// `starter` (a file of a fresh starter) with the body of each region of a stage up to
/// `stage` taken from `reference`, region by region.
fn answered(starter: &str, reference: &str, stage: u8) -> String {
    let ours: Vec<&str> = starter.lines().collect();
    let theirs: Vec<&str> = reference.lines().collect();
    let (our_regions, their_regions) = (regions_of(&ours), regions_of(&theirs));
    assert_eq!(our_regions.len(), their_regions.len());
    let mut out: Vec<&str> = Vec::new();
    let mut next = 0;
    for (ours_at, theirs_at) in our_regions.iter().zip(&their_regions) {
        out.extend(&ours[next..=ours_at.1]);
        let body = if ours_at.0 <= stage {
            &theirs[theirs_at.1 + 1..theirs_at.2]
        } else {
            &ours[ours_at.1 + 1..ours_at.2]
        };
        out.extend(body);
        next = ours_at.2;
    }
    out.extend(&ours[next..]);
    out.join("\n") + "\n"
}

/// The `.rs` files under `dir` (relative to it) that hold a `// LAB` region.
fn marked_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in fs::read_dir(dir.join(&relative)).unwrap() {
            let entry = entry.unwrap();
            let name = relative.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                pending.push(name);
            } else if name.extension().is_some_and(|ext| ext == "rs")
                && fs::read_to_string(entry.path()).unwrap().contains("// LAB stage")
            {
                found.push(name);
            }
        }
    }
    found
}

/// The binary of each stage.
fn stage_binary(stage: u8) -> &'static str {
    ["stage1-chroot", "stage2-namespaces", "stage3-cgroups", "stage4-overlay", "stage5-images"]
        [stage as usize - 1]
}

/// Replaces the body of the `index`th region of `task` in `file` with `body`.
fn replace_region(file: &Path, task: &str, index: usize, body: &str) {
    let text = fs::read_to_string(file).unwrap();
    let begin = format!("// LAB {task} BEGIN:");
    let start = text.match_indices(&begin).nth(index).expect("the region is marked").0;
    let body_start = start + text[start..].find('\n').unwrap() + 1;
    let end = body_start + text[body_start..].find("// LAB END").unwrap();
    let end = text[..end].rfind('\n').unwrap() + 1;
    let patched = format!("{}{body}\n{}", &text[..body_start], &text[end..]);
    fs::write(file, patched).unwrap();
}

/// Replaces `from` (which must be there once) with `to` in `file`.
fn replace(file: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(file).unwrap();
    assert_eq!(text.matches(from).count(), 1, "{from} in {}", file.display());
    fs::write(file, text.replace(from, to)).unwrap();
}

/// Builds the starter in `dir` and copies its stage binary to `to`. The caller holds
/// [`SHARED_TARGET`] from before it wrote `dir`: cargo tells a stale build by modification
/// times, and every starter has the same relative layout, so a starter written before
/// another test's build finished would look built already and get that build's binary.
fn build(dir: &Path, binary: &str, to: &Path) {
    let output = run(Command::new("cargo")
        .args(["build", "--offline", "--quiet", "--bin", binary])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", shared_target()));
    assert!(output.status.success(), "cargo build in {}: {}", dir.display(), text(&output.stderr));
    fs::copy(shared_target().join("debug").join(binary), to).unwrap();
}

/// The tasks `isolab grade --json` failed, and the whole output.
fn failed_tasks(env: &TestEnv, stage: u8, binary: &Path) -> (Vec<String>, String) {
    let output =
        run(env.cmd("isolab").args(["grade", &stage.to_string(), "--json", "--bin"]).arg(binary));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("grade printed no JSON: {}", text(&output.stderr)));
    let failed: Vec<String> = json["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|outcome| outcome["passed"] == false)
        .map(|outcome| outcome["task"].as_str().unwrap().to_string())
        .collect();
    let expected_code = if failed.is_empty() { 0 } else { 1 };
    assert_eq!(code(&output), expected_code, "{}", text(&output.stdout));
    (failed, text(&output.stdout))
}

#[test]
fn lab_check_every_starter_fails_its_tasks_and_the_reference_passes() {
    if !require_root("lab_check_every_starter_fails_its_tasks_and_the_reference_passes") {
        return;
    }
    let env = TestEnv::new();
    // `lab check` builds starters (stubbed) and references in the shared target directory:
    // a variant built meanwhile would take a stubbed binary out of it.
    let _building = SHARED_TARGET.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let output = run(env.cmd("isolab").args(["lab", "check", "--target-dir"]).arg(shared_target()));
    let said = text(&output.stdout);
    assert!(output.status.success(), "{said}\n{}", text(&output.stderr));
    for task in [
        "stage1/chroot",
        "stage1/error-pipe",
        "stage2/id-maps",
        "stage2/pivot-root",
        "stage3/create",
        "stage3/limit",
        "stage3/join",
        "stage3/remove",
        "stage4/overlay-options",
        "stage4/diff-whiteouts",
        "stage5/commit",
        "stage5/verify-digest",
    ] {
        assert!(said.contains(&format!("starter:   {task:<26} fails")), "{task}: {said}");
        assert!(said.contains(&format!("reference: {task:<26} passes")), "{task}: {said}");
    }
    assert!(said.ends_with("lab check: ok\n"), "{said}");
}

#[test]
fn the_grader_fails_each_broken_variant_naming_its_task_and_only_it() {
    if !require_root("the_grader_fails_each_broken_variant_naming_its_task_and_only_it") {
        return;
    }
    let env = TestEnv::new();
    type Patch = fn(&Path);
    let variants: [(&str, u8, &str, Patch); 8] = [
        ("pivot-root-by-chroot", 2, "stage2/pivot-root", |src| {
            // The old root stays in the mount namespace (nothing to detach after a chroot):
            // root climbs out as in stage 1.
            replace_region(
                &src.join("mounts.rs"),
                "stage2/pivot-root",
                0,
                "    steps.push(Step::PivotRoot { new_root: rootfs.to_path_buf() });",
            );
            replace(
                &src.join("mounts.rs"),
                "nix::unistd::pivot_root(\".\", \".\").sys(\"pivot_root\", new_root.display())",
                "nix::unistd::chroot(\".\").sys(\"chroot\", new_root.display())",
            );
        }),
        ("no-ms-private", 2, "stage2/private-mounts", |src| {
            replace_region(&src.join("mounts.rs"), "stage2/private-mounts", 0, "");
        }),
        ("gid-map-before-setgroups-deny", 2, "stage2/id-maps", |src| {
            replace_region(
                &src.join("idmap.rs"),
                "stage2/id-maps",
                0,
                "        let mut writes = vec![(\"uid_map\", self.uid.to_string())];\n        \
                 writes.push((\"gid_map\", self.gid.to_string()));\n        \
                 if self.deny_setgroups {\n            \
                 writes.push((\"setgroups\", \"deny\".to_string()));\n        }\n        writes",
            );
        }),
        ("host-proc-bound", 2, "stage2/proc", |src| {
            replace(
                &src.join("mounts.rs"),
                "if options.pid_ns || !options.user_ns {",
                "if false {",
            );
        }),
        ("setgroups-forgotten", 1, "stage1/drop-privileges", |src| {
            replace_region(
                &src.join("user.rs"),
                "stage1/drop-privileges",
                0,
                "    let gid = Gid::from_raw(user.gid);\n    \
                 unistd::setgid(gid).sys(\"setgid\", user.gid)?;\n    \
                 unistd::setuid(Uid::from_raw(user.uid)).sys(\"setuid\", user.uid)?;\n    Ok(())",
            );
        }),
        ("cgroup-joined-after-exec", 3, "stage3/join", |src| {
            // The child does not move itself in: a copy of it (fork, no exec: nothing to look
            // up mid-pivot_root) moves it 500 ms later, writing its pid (1, in their pid
            // namespace) through the runtime's tasks files, root's open, so allowed. The
            // command's first instructions run in the runtime's cgroup, unlimited; the limits
            // are in the files all along (so only `join` fails). The second region is v1's,
            // which this host has; the first, the parent's `cgroup.procs` write, is for v2 on
            // kernels without clone3.
            replace_region(
                &src.join("cgroups/mod.rs"),
                "stage3/join",
                1,
                "        if unsafe { libc::fork() } == 0 {\n            \
                 std::thread::sleep(std::time::Duration::from_millis(500));\n            \
                 for (_, file) in &self.files {\n                \
                 let mut file: &File = file;\n                \
                 let _ = file.write_all(b\"1\");\n            \
                 }\n            \
                 unsafe { libc::_exit(0) }\n        \
                 }\n        Ok(())",
            );
        }),
        ("whiteouts-ignored-by-diff", 4, "stage4/diff-whiteouts", |src| {
            // A whiteout taken for a file of the upper's like any other: never a deletion.
            replace_region(
                &src.join("changes.rs"),
                "stage4/diff-whiteouts",
                0,
                "        match (kind, &before) {\n            \
                 (UpperKind::Whiteout, _) => {}\n            \
                 (_, None) => changes.push(change(Kind::Added, &path)),\n            \
                 (_, Some(_)) => changes.push(change(Kind::Changed, &path)),\n        }",
            );
        }),
        ("blob-digest-unverified", 5, "stage5/verify-digest", |src| {
            // The digest a blob came with taken for its own: it is stored under that name
            // whatever its bytes hash to.
            replace_region(
                &src.join("image/layout.rs"),
                "stage5/verify-digest",
                0,
                "        let digest = expected.copied().unwrap_or(digest);",
            );
        }),
    ];
    let _building = SHARED_TARGET.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut wrong = Vec::new();
    for (name, stage, task, patch) in variants {
        let dir = variant(&env, name, stage, &patch);
        let binary = stage_binary(stage);
        let kept = env.path().join(format!("{name}.bin"));
        build(&dir, binary, &kept);
        let (failed, said) = failed_tasks(&env, stage, &kept);
        if failed != [task] {
            wrong.push(format!("{name}: expected only {task} to fail, failed: {failed:?}\n{said}"));
        }
    }
    // And the reference, through the same path: a starter with every answer put back (stage
    // 5's: every task of every stage).
    let dir = variant(&env, "reference", 5, &|_| {});
    let kept = env.path().join("reference.bin");
    build(&dir, stage_binary(5), &kept);
    let (failed, said) = failed_tasks(&env, 5, &kept);
    assert!(failed.is_empty(), "the reference failed {failed:?}\n{said}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_starter_never_holds_the_reference_s_answers() {
    let env = TestEnv::new();
    let dir = env.path().join("lab2");
    let output = run(env.cmd("isolab").args(["lab", "new", "2"]).arg(&dir));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let src = dir.join("stages/libisolab/src");
    for (file, answer) in [
        ("chroot.rs", "unistd::chroot(rootfs)"),
        ("user.rs", "unistd::setgroups(&[gid])"),
        ("idmap.rs", "writes.push((\"uid_map\""),
        ("mounts.rs", "nix::unistd::pivot_root(\".\", \".\")"),
        ("mounts.rs", "MsFlags::MS_REC | MsFlags::MS_PRIVATE"),
    ] {
        let text = fs::read_to_string(src.join(file)).unwrap();
        assert!(!text.contains(answer), "{file} still holds {answer}");
    }
    let mounts = fs::read_to_string(src.join("mounts.rs")).unwrap();
    assert!(mounts.contains("todo!(\"stage2/pivot-root: swap the roots"), "{mounts}");
    // Later stages' regions are stubbed too: a stage 1 starter holds no line of any region's
    // body (stage 2 to 5's are later labs' answers).
    let lab1 = env.path().join("lab1");
    let output = run(env.cmd("isolab").args(["lab", "new", "1"]).arg(&lab1));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let reference = workspace_root().join("stages/libisolab/src");
    let mut checked = 0;
    for file in marked_files(&reference) {
        let theirs = fs::read_to_string(reference.join(&file)).unwrap();
        let ours = fs::read_to_string(lab1.join("stages/libisolab/src").join(&file)).unwrap();
        let lines: Vec<&str> = theirs.lines().collect();
        for (stage, begin, end) in regions_of(&lines) {
            // A line of code that says something (not a brace, not a comment).
            for line in lines[begin + 1..end].iter().map(|line| line.trim()) {
                if line.len() > 12 && !line.starts_with("//") {
                    let found = ours.lines().any(|ours| ours.trim() == line);
                    // The same line may stand outside a region too: only a line of the body
                    // that the starter has nowhere else counts.
                    let elsewhere = theirs.lines().filter(|l| l.trim() == line).count() > 1;
                    assert!(
                        !found || elsewhere,
                        "the stage 1 starter's {} holds stage {stage}'s `{line}`",
                        file.display()
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} lines of the regions checked");
    let overlay = fs::read_to_string(lab1.join("stages/libisolab/src/overlay.rs")).unwrap();
    assert!(!overlay.contains("lowerdir={},upperdir={},workdir={}"), "{overlay}");
    assert!(overlay.contains("todo!(\"stage4/overlay-options: "), "{overlay}");
    // The hint ladder climbs, remembered in the starter.
    for rung in 1..=3 {
        let output =
            run(env.cmd("isolab").args(["lab", "hint", "2", "pivot-root", "--dir"]).arg(&dir));
        let said = text(&output.stdout);
        assert!(said.starts_with(&format!("stage2/pivot-root hint {rung} of 3: ")), "{said}");
    }
}

#[test]
fn a_task_that_uses_more_memory_than_its_bound_fails_saying_so() {
    if !require_root("a_task_that_uses_more_memory_than_its_bound_fails_saying_so") {
        return;
    }
    let env = TestEnv::new();
    // Fake stage binaries: dd holds a buffer of bs bytes, touched as it reads into it.
    let fake = |name: &str, mib: u32| {
        let path = env.path().join(name);
        let script = format!("#!/bin/sh\nexec dd if=/dev/zero of=/dev/null bs={mib}M count=1\n");
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path
    };
    // The graders' pids: each one's cgroup is `isolab/grade-<pid>` (other tests grade
    // meanwhile, with cgroups of their own).
    let graders = std::cell::RefCell::new(Vec::new());
    let grade = |binary: &Path| {
        let child = env
            .cmd("isolab")
            .args(["grade", "1", "--task", "chroot", "--memory-limit", "64", "--bin"])
            .arg(binary)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        graders.borrow_mut().push(format!("grade-{}", child.id()));
        let output = child.wait_with_output().unwrap();
        assert_eq!(code(&output), 1, "{}", text(&output.stderr));
        text(&output.stdout)
    };
    let said = grade(&fake("hog", 200));
    assert!(said.contains("it used more than 64 MiB"), "{said}");
    // Under the bound, the same binary fails for what it did (it is no runtime), not for
    // its memory: the bound is what bit above.
    let said = grade(&fake("small", 8));
    assert!(!said.contains("used more than"), "{said}");
    assert!(said.contains("FAIL stage1/chroot"), "{said}");
    // The grader's cgroup went with the task.
    let cgroups = fs::read_dir("/sys/fs/cgroup/memory/isolab")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| graders.borrow().contains(name))
        .collect::<Vec<_>>();
    assert_eq!(graders.borrow().len(), 2);
    assert!(cgroups.is_empty(), "left: {cgroups:?}");
}

#[test]
fn lab_output_to_a_closed_pipe_is_no_panic() {
    // `isolab lab list | head -1`: the reader goes before isolab has written. Here the read
    // end is closed before isolab starts writing, so that the write always fails (EPIPE).
    let env = TestEnv::new();
    for args in [&["lab", "list"][..], &["lab", "hint", "1", "chroot", "--level", "1"][..]] {
        let mut child = env
            .cmd("isolab")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = text(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(code(&output), 0, "{args:?}: {stderr}");
    }
}

/// A fake stage binary in `env`: a script, mode 0755.
fn fake(env: &TestEnv, name: &str, script: &str) -> PathBuf {
    let path = env.path().join(name);
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// The pids a fake binary wrote to `file`, one a line; each is SIGKILLed when dropped, in
/// case the grader let one live (the test fails then, and leaves nothing).
struct FakePids(PathBuf);

impl FakePids {
    fn read(&self) -> Vec<i32> {
        fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// The pids that are still running (a zombie has ended).
    fn alive(&self) -> Vec<i32> {
        self.read()
            .into_iter()
            .filter(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state =
                    stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().next());
                state.is_some_and(|state| state != "Z")
            })
            .collect()
    }
}

impl Drop for FakePids {
    fn drop(&mut self) {
        for pid in self.alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `isolab grade STAGE --json ARGS --bin BINARY`: the output's JSON and the time it took.
fn grade_json(env: &TestEnv, stage: u8, args: &[&str], binary: &Path) -> (serde_json::Value, f64) {
    let started = std::time::Instant::now();
    let output = run(env
        .cmd("isolab")
        .args(["grade", &stage.to_string(), "--json"])
        .args(args)
        .arg("--bin")
        .arg(binary));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("grade printed no JSON: {}", text(&output.stderr)));
    (json, started.elapsed().as_secs_f64())
}

/// The outcome of `task` in a grading's JSON.
fn outcome<'a>(json: &'a serde_json::Value, task: &str) -> &'a serde_json::Value {
    json["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|outcome| outcome["task"] == task)
        .unwrap_or_else(|| panic!("no {task} in {json}"))
}

// Regression (attacker's F3, F4): a background child holding stdout kept the grader reading
// after the binary had exited (`sleep infinity` hung it for ever), and a binary that left its
// process group outlived the one kill of the group.
#[test]
fn a_task_is_bounded_in_time_as_a_whole() {
    if !require_root("a_task_is_bounded_in_time_as_a_whole") {
        return;
    }
    let env = TestEnv::new();
    let pids = FakePids(env.path().join("pids"));
    let pid_file = pids.0.display().to_string();
    let holder =
        fake(&env, "holder", &format!("#!/bin/sh\nsleep 300 &\necho $! >> {pid_file}\nexit 0\n"));
    // Into the group of its parent, the grader's: a kill of its own group finds nobody.
    let runaway = fake(
        &env,
        "runaway",
        &format!(
            "#!/usr/bin/perl\nsetpgrp(0, getpgrp(getppid())) or die;\n\
             open(my $f, '>>', '{pid_file}'); print $f \"$$\\n\"; close($f);\nsleep 300;\n"
        ),
    );
    for (binary, told) in
        [(&holder, "its output stayed open"), (&runaway, "stopped at the task's limit")]
    {
        let (json, seconds) =
            grade_json(&env, 1, &["--task", "chroot", "--task-timeout", "3"], binary);
        let chroot = outcome(&json, "stage1/chroot");
        assert_eq!(chroot["passed"], false, "{json}");
        assert!(chroot["happened"].as_str().unwrap().contains(told), "{json}");
        let task_seconds = chroot["seconds"].as_f64().unwrap();
        assert!((3.0..8.0).contains(&task_seconds), "the task took {task_seconds} s: {json}");
        assert!(seconds < 30.0, "the grading took {seconds} s");
        assert!(
            eventually(std::time::Duration::from_secs(5), || pids.alive().is_empty()),
            "still running: {:?}",
            pids.alive()
        );
    }
    assert_eq!(pids.read().len(), 2, "{:?}", pids.read());
}

/// A fake runtime for stage 1's tasks: `run --rootfs R [--opt V]… -- CMD…` as coreutils'
/// chroot(8) (root's ids, no drop), with `hook` run first (`$rootfs` is set).
fn fake_runtime(env: &TestEnv, name: &str, hook: &str) -> PathBuf {
    fake(
        env,
        name,
        &format!(
            "#!/bin/sh\nrootfs=$3\n{hook}\n\
             while [ \"$1\" != \"--\" ]; do\n  \
               case \"$1\" in --env) export \"$2\";; esac\n  shift\ndone\nshift\n\
             exec chroot \"$rootfs\" \"$@\"\n"
        ),
    )
}

// Regression (attacker's F5, F6): what the binary left running was killed with the memory
// bound's cgroup before the leftovers were looked for, and the task passed.
#[test]
fn processes_a_task_leaves_are_named_and_fail_it() {
    if !require_root("processes_a_task_leaves_are_named_and_fail_it") {
        return;
    }
    let env = TestEnv::new();
    let pids = FakePids(env.path().join("pids"));
    let pid_file = pids.0.display().to_string();
    // One sleep left in the task's cgroup, one that moves itself out to every hierarchy's
    // root cgroup (root can), both chrooted into the rootfs.
    let hook = format!(
        "chroot \"$rootfs\" /bin/sleep 300 >/dev/null 2>&1 &\necho $! >> {pid_file}\n\
         sh -c 'for procs in /sys/fs/cgroup/*/cgroup.procs; do echo $$ > $procs; done 2>/dev/null; \
         exec chroot \"$0\" /bin/sleep 301' \"$rootfs\" >/dev/null 2>&1 &\necho $! >> {pid_file}\n\
         sleep 0.2"
    );
    let leaver = fake_runtime(&env, "leaver", &hook);
    let (json, _) = grade_json(&env, 1, &["--task", "chroot"], &leaver);
    let chroot = outcome(&json, "stage1/chroot");
    let happened = chroot["happened"].as_str().unwrap();
    assert_eq!(chroot["passed"], false, "{json}");
    let left = pids.read();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(happened.contains(&format!("{} `sleep` (in the task's cgroup)", left[0])), "{json}");
    assert!(happened.contains(&format!("{} `sleep` (rooted in ", left[1])), "{json}");
    assert!(
        eventually(std::time::Duration::from_secs(5), || pids.alive().is_empty()),
        "still running: {:?}",
        pids.alive()
    );
}

// Regression (attacker's F8): the exec task wrote its non-executable file, by a name the
// binary had been told, through whatever the binary had put there: a symlink to a host file
// made that file `#!/bin/sh\necho ran`, mode 0644.
#[test]
fn the_grader_never_writes_through_a_symlink_the_binary_planted() {
    if !require_root("the_grader_never_writes_through_a_symlink_the_binary_planted") {
        return;
    }
    let env = TestEnv::new();
    let target = env.path().join("precious");
    fs::write(&target, "precious\n").unwrap();
    fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // Told `--env LAB_<TOKEN>=…`, it puts a symlink at the name the grader uses next.
    let hook = format!(
        "for arg in \"$@\"; do case \"$arg\" in LAB_*=*)\n  \
           token=$(echo \"${{arg%%=*}}\" | sed 's/^LAB_//' | tr A-Z a-z)\n  \
           ln -sf {} \"$rootfs/bin/lab-notexec-$token\";;\nesac; done",
        target.display()
    );
    let planter = fake_runtime(&env, "planter", &hook);
    let (json, _) = grade_json(&env, 1, &["--task", "exec"], &planter);
    assert_eq!(outcome(&json, "stage1/exec")["passed"], false, "{json}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n", "{json}");
    let mode = fs::metadata(&target).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
}

// Regression (attacker's F1): a script that printed what the commands would print, computed
// from its command line, passed stages 1 to 3 without isolating anything.
#[test]
fn answers_computed_from_the_command_line_fail() {
    if !require_root("answers_computed_from_the_command_line_fail") {
        return;
    }
    let env = TestEnv::new();
    let cheat =
        fake(&env, "cheat.py", &CHEAT.replace("PROBE", &bin("isolab-probe").display().to_string()));
    let (json, _) = grade_json(&env, 3, &[], &cheat);
    let failed: Vec<&str> = json["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|outcome| outcome["passed"] == false)
        .map(|outcome| outcome["task"].as_str().unwrap())
        .collect();
    for task in [
        "stage1/chroot",
        "stage1/drop-privileges",
        "stage2/id-maps",
        "stage2/proc",
        "stage2/pivot-root",
        "stage3/join",
    ] {
        assert!(failed.contains(&task), "{task} passed: {json}");
    }
}

/// The attacker's script (their report, F1), the probe's path filled in, and adapted to the
/// grader's commands that now end with `; sleep 0.3` (the six lines after `c0=`): it gives
/// the same answers, and sleeps as long.
const CHEAT: &str = r#"#!/usr/bin/python3
import os, sys, re, time, subprocess
a=sys.argv[2:]; dd=a.index("--"); opts,cmd=a[:dd],a[dd+1:]; o={}; i=0
while i<len(opts):
    if i+1<len(opts) and not opts[i+1].startswith("--"): o.setdefault(opts[i],[]).append(opts[i+1]); i+=2
    else: o.setdefault(opts[i],[]).append(None); i+=1
rootfs=o["--rootfs"][0]; pid=os.getpid(); out=lambda s:(sys.stdout.write(s),sys.stdout.flush())
if "--workdir" in o: sys.stderr.write("cannot chdir to %s\n"%o["--workdir"][0]); sys.exit(125)
cg=[]
if "--memory" in o:
    name="%s-%d"%(o["--hostname"][0],pid); mem=int(o["--memory"][0][:-1]); pids=o["--pids"][0]; cpus=float(o["--cpus"][0])
    for ctl,files in [("memory",{"memory.limit_in_bytes":str(mem<<20)}),("pids",{"pids.max":pids}),
                      ("cpu",{"cpu.cfs_period_us":"100000","cpu.cfs_quota_us":str(int(cpus*100000))})]:
        d="/sys/fs/cgroup/%s/isolab/%s"%(ctl,name); os.makedirs(d,exist_ok=True)
        for f,v in files.items(): open(d+"/"+f,"w").write(v)
        cg.append(d)
    for d in cg: open(d+"/cgroup.procs","w").write(str(pid))
def done(code=0):
    if cg:
        sys.stderr.write("memory: peak 1 MiB, limit %d MiB\npids: peak 1, limit %s\n"%(mem,pids))
        for d in cg: open(os.path.dirname(os.path.dirname(d))+"/cgroup.procs","w").write(str(pid))
        for d in cg: os.rmdir(d)
    sys.exit(code)
c0=cmd[0]; script=cmd[2] if c0=="/bin/sh" and len(cmd)>2 else None
if script is not None and script.endswith("; sleep 0.3"):
    script=script[:-len("; sleep 0.3")]; time.sleep(0.3)
    if script=="busybox id": c0="/bin/busybox"
    elif script.startswith("cat /proc/self/uid_map"): c0="/bin/cat"; cmd=["/bin/cat","/proc/self/uid_map"]
    elif script.startswith("/isolab/probe"): cmd=script.split(); c0=cmd[0]
if c0=="/bin/busybox": u,g=o["--user"][0].split(":"); out("uid=%s gid=%s groups=%s\n"%(u,g,g)); done()
if c0=="/bin/cat" and cmd[1]=="/proc/self/uid_map":
    l="0 100000 65536" if os.getuid()==0 else "0 %d 1"%os.getuid(); out(l+"\n"+l+"\n"); done()
if c0=="/isolab/probe":
    out(subprocess.run(["PROBE"]+cmd[1:-2]+["--host-path","/nonexistent-xyz"],capture_output=True,text=True).stdout); done()
if script is not None:
    m=re.fullmatch(r"exit (\d+)",script)
    if m: done(int(m.group(1)))
    if script=="env": [out(e+"\n") for e in o.get("--env",[])]; done()
    m=re.match(r"cat /(lab-\S+); test -e",script)
    if m: out(open(os.path.join(rootfs,m.group(1))).read()+"\n"); done()
    if script.startswith("echo $$; cat /proc"): out("1\n"); done()
    if script.startswith("exec 3>&-"): out("up\n"); done()
    if script=="cat /proc/self/cgroup":
        for n,c in [(4,"memory"),(8,"pids"),(1,"cpu")]: out("%d:%s:/isolab/%s-%d\n"%(n,c,o["--hostname"][0],pid))
        done()
    if script.startswith("sleep"): time.sleep(float(script.split()[1])); done()
    done()
if c0=="/bin/true": done()
if c0.startswith("/bin/lab-notexec"): done(126)
if c0.startswith("lab-missing"): done(127)
done(1)
"#;

/// A reference of one small crate for `lab new --reference`, without a `Cargo.lock`: a
/// `lab new` from it writes the crate, then fails.
fn small_reference(env: &TestEnv) -> PathBuf {
    let root = env.path().join("reference");
    fs::create_dir_all(root.join("labs")).unwrap();
    fs::create_dir_all(root.join("tiny/src")).unwrap();
    fs::write(
        root.join("labs/hints.toml"),
        "[[stage]]\nnumber = 1\nbinary = \"tiny\"\ncrates = [\"tiny\"]\n\n\
         [[task]]\nid = \"stage1/tiny\"\nhints = [\"one\", \"two\", \"three\"]\n",
    )
    .unwrap();
    fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = [\"tiny\"]\n").unwrap();
    fs::write(root.join("tiny/Cargo.toml"), "[package]\nname = \"tiny\"\n").unwrap();
    fs::write(
        root.join("tiny/src/lib.rs"),
        "pub fn f() -> u8 {\n    // LAB stage1/tiny BEGIN: a number\n    1\n    // LAB END\n}\n",
    )
    .unwrap();
    root
}

// Regression (attacker's F10): `lab new 1 REF/stages/libisolab/lab1 --reference REF` copied
// the reference into itself until ENAMETOOLONG and left 739 files in it; a failed `lab new`
// left its partial starter; a file or a dangling symlink as DIR got a misleading message.
#[test]
fn lab_new_refuses_a_dir_in_the_reference_and_cleans_up_after_itself() {
    let env = TestEnv::new();
    let reference = small_reference(&env);
    let before = describe_tree(&reference);
    let lab_new = |dir: &Path| {
        let output = run(env
            .cmd("isolab")
            .args(["lab", "new", "1"])
            .arg(dir)
            .arg("--reference")
            .arg(&reference));
        assert_eq!(code(&output), 125, "{}", text(&output.stdout));
        text(&output.stderr)
    };
    let said = lab_new(&reference.join("tiny/lab1"));
    assert!(said.contains("is inside the reference"), "{said}");
    assert_eq!(describe_tree(&reference), before, "the reference changed");
    // A new directory (and the parent it needed) is gone again after the failure.
    let fresh = env.path().join("new/lab1");
    let said = lab_new(&fresh);
    assert!(said.contains("Cargo.lock"), "{said}");
    assert!(!env.path().join("new").exists(), "{said}");
    // An empty directory that was there stays, empty.
    let empty = env.path().join("empty");
    fs::create_dir(&empty).unwrap();
    lab_new(&empty);
    assert!(empty.is_dir() && fs::read_dir(&empty).unwrap().next().is_none());
    let file = env.path().join("a-file");
    fs::write(&file, "mine\n").unwrap();
    let said = lab_new(&file);
    assert!(said.contains("is a file, not a directory"), "{said}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "mine\n");
    let dangling = env.path().join("dangling");
    std::os::unix::fs::symlink(env.path().join("nowhere"), &dangling).unwrap();
    let said = lab_new(&dangling);
    assert!(said.contains("which does not exist"), "{said}");
    assert!(!env.path().join("nowhere").exists());
    assert_eq!(describe_tree(&reference), before, "the reference changed");
}
