//! Start latency: how long `/bin/true` takes from `exec` of the runtime to its exit, under
//! every stage and under the other sandboxes this machine has.
//!
//! Two ways, because they differ for a reason worth seeing: *back to back* (each starter's N
//! starts in a row, the next the moment the last one ended) and *spaced* (a pause before each,
//! the starters taking turns). On cgroup v1 a runtime that moves its child into a new cgroup
//! (crun, runc) makes the kernel wait for an RCU grace period (`cgroup_attach_lock` takes
//! `cgroup_threadgroup_rwsem`, a per-CPU rwsem whose write side waits for readers with
//! `synchronize_rcu`, kernel/cgroup/cgroup.c); right after an earlier start the rwsem's fast
//! path is still off and the wait is short, after a quiet period it is a whole grace period.
//! isolab's stages skip that lock: the child moves itself in (`cgroups::SelfJoin`).

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::stats::{Better, Goal, Ratio, Summary};
use super::{check_interrupted, compare, last_line, which, Bench, Plan, Progress};

/// How many starters there are at most (the progress bar's estimate).
const MAX_STARTERS: u64 = 10;

/// One way to start `/bin/true`.
struct Starter {
    id: &'static str,
    what: &'static str,
    /// The command of the `n`th start (crun and runc need a fresh container id each time).
    command: Box<dyn Fn(u64) -> Result<Command> + 'static>,
}

/// One starter's times.
#[derive(Debug, Clone, Serialize)]
pub struct StartRow {
    /// The starter's id in JSON.
    pub id: &'static str,
    /// What it starts, as the table says it.
    pub what: &'static str,
    /// Milliseconds, this starter's starts one right after the other.
    pub back_to_back_ms: Summary,
    /// Milliseconds, each start after a pause.
    pub spaced_ms: Summary,
    /// Its time over crun's, back to back: the `i`th start of its block over the `i`th of
    /// crun's (below 1 is faster than crun).
    pub to_crun_back_to_back: Option<Ratio>,
    /// Its time over crun's, spaced, round by round.
    pub to_crun_spaced: Option<Ratio>,
}

/// A goal of the start (the issue's): one starter's time over another's, one way.
#[derive(Debug, Clone, Serialize)]
pub struct StartGoal {
    /// The starter judged.
    pub id: &'static str,
    /// The starter it is compared with.
    pub against: &'static str,
    /// `back to back` or `spaced`.
    pub way: &'static str,
    /// Its time over the other's, pairing the starts as the rows do.
    pub ratio: Ratio,
    /// What the ratio should be.
    pub goal: Goal,
    /// Does the median ratio reach it?
    pub met: bool,
}

/// Every starter's times, and the ones that could not run here.
#[derive(Debug, Clone, Serialize)]
pub struct Starts {
    /// Starts of each starter, each way.
    pub runs: u32,
    /// The pause before each spaced start.
    pub spacing_ms: u64,
    /// The starters, fastest isolation first.
    pub rows: Vec<StartRow>,
    /// The goals whose starters both ran.
    pub goals: Vec<StartGoal>,
    /// Starters that failed their first run here, and why.
    pub skipped: Vec<(String, String)>,
}

/// The progress bar's steps for this part.
pub fn steps(plan: &Plan) -> u64 {
    // A first start each, a warm-up before each back-to-back block, then both ways.
    MAX_STARTERS * (2 + 2 * u64::from(plan.start_runs))
}

// ANCHOR: starters
/// Every way to start `/bin/true` that this machine has: each stage built, then the other
/// sandboxes for comparison.
fn starters(bench: &Bench) -> Vec<Starter> {
    let mut found: Vec<Starter> = Vec::new();
    let rootfs = bench.rootfs.clone();
    let stage = |name: &str| bench.bin_dir.join(name);
    let with_claims = {
        let claims = bench.workdir.join("userns");
        move |mut command: Command| {
            command.env(libisolab::idrange::CLAIMS_DIR_VAR, &claims);
            command
        }
    };
    let plain: [(&str, &str, &str); 3] = [
        ("stage1", "stage1-chroot: chroot, no namespaces", "stage1-chroot"),
        ("stage2", "stage2-namespaces: every namespace", "stage2-namespaces"),
        ("stage3", "stage3-cgroups: namespaces + cgroup", "stage3-cgroups"),
    ];
    for (id, what, binary) in plain {
        let (program, rootfs, with_claims) = (stage(binary), rootfs.clone(), with_claims.clone());
        if program.is_file() {
            found.push(Starter {
                id,
                what,
                command: Box::new(move |_| {
                    let mut command = Command::new(&program);
                    command.arg("run").arg("--rootfs").arg(&rootfs).args(["--", "/bin/true"]);
                    Ok(with_claims(command))
                }),
            });
        }
    }
    let stage4 = stage("stage4-overlay");
    if stage4.is_file() {
        let (store, rootfs, with_claims) =
            (bench.workdir.join("start-store4"), rootfs.clone(), with_claims.clone());
        found.push(Starter {
            id: "stage4",
            what: "stage4-overlay: + overlay (run --rm)",
            command: Box::new(move |_| {
                let mut command = Command::new(&stage4);
                command.arg("--root").arg(&store).args(["run", "--rm", "--rootfs"]).arg(&rootfs);
                command.args(["--", "/bin/true"]);
                Ok(with_claims(command))
            }),
        });
    }
    if bench.stage == super::Stage::Five {
        // A fresh store of its own, whose image is the plain rootfs every other starter runs
        // (the workloads' image also holds the 64 MiB copy-up file, and their store has had
        // every workload's container in it): made in `measure`.
        let (program, store, with_claims) =
            (stage("stage5-images"), bench.workdir.join("start-store5"), with_claims.clone());
        found.push(Starter {
            id: "stage5",
            what: "stage5-images: + image (run --rm IMAGE)",
            command: Box::new(move |_| {
                let mut command = Command::new(&program);
                command.arg("--root").arg(&store).args(["run", "--rm", super::IMAGE]);
                command.args(["--", "/bin/true"]);
                Ok(with_claims(command))
            }),
        });
    }
    let chroot_rootfs = rootfs.clone();
    found.push(Starter {
        id: "unshare-chroot",
        what: "unshare -muinpf + chroot",
        command: Box::new(move |_| {
            let mut command = Command::new("unshare");
            command.args(["--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "chroot"]);
            command.arg(&chroot_rootfs).arg("/bin/true");
            Ok(command)
        }),
    });
    if which("bwrap").is_some() {
        let rootfs = rootfs.clone();
        found.push(Starter {
            id: "bwrap",
            what: "bwrap --unshare-all",
            command: Box::new(move |_| {
                let mut command = Command::new("bwrap");
                command.args(["--unshare-all", "--bind"]).arg(&rootfs).arg("/");
                command.args(["--proc", "/proc", "--dev", "/dev", "/bin/true"]);
                Ok(command)
            }),
        });
    }
    if let Some(bundle) = &bench.crun {
        // The bundle's own config runs /bin/true (`crun_bundle`); the workloads pass theirs.
        let (bundle, state) = (bundle.clone(), bench.workdir.join("crun-state"));
        let crun_bundle = bundle.clone();
        let pid = std::process::id();
        found.push(Starter {
            id: "crun",
            what: "crun run (in unshare -m)",
            command: Box::new(move |n| {
                let script = format!(
                    "umount /sys/fs/cgroup/unified 2>/dev/null; cd '{}' && exec crun --root \
                     '{}' run isolab-start-{pid}-{n}",
                    crun_bundle.display(),
                    state.display()
                );
                let mut command = Command::new("unshare");
                command.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
                Ok(command)
            }),
        });
        found.push(Starter {
            id: "unshare-sh",
            what: "  (unshare -m sh: crun's wrapper alone)",
            command: Box::new(|_| {
                let mut command = Command::new("unshare");
                command.args(["--mount", "--propagation", "private", "sh", "-c", "true"]);
                Ok(command)
            }),
        });
        if which("runc").is_some() {
            let state = bench.workdir.join("runc-state");
            found.push(Starter {
                id: "runc",
                what: "runc run",
                command: Box::new(move |n| {
                    let mut command = Command::new("runc");
                    command.arg("--root").arg(&state).args(["run", "--bundle"]).arg(&bundle);
                    command.arg(format!("isolab-start-{pid}-{n}"));
                    Ok(command)
                }),
            });
        }
    }
    found
}
// ANCHOR_END: starters

/// Times every starter: a first run each (dropped: it fills caches, and a starter that fails
/// here is left out); then back to back, a block of starts in a row per starter (after one
/// more start, dropped, so that the block's first start does not follow another starter's);
/// then spaced, a pause before each start, the starters taking turns.
///
/// Back to back means in a row *for one starter*: between starters taking turns, each start
/// follows another runtime's, whose cgroup move some tens of ms earlier leaves the next move
/// neither warm nor cold (crun measured twice its own in-a-row time that way).
pub fn measure(bench: &Bench, plan: &Plan, progress: &mut Progress) -> Result<Starts> {
    if bench.stage == super::Stage::Five {
        let store = bench.workdir.join("start-store5");
        super::import_image(&bench.bin_dir, &store, &bench.workdir.join("userns"), &bench.rootfs)?;
    }
    let mut skipped = Vec::new();
    let mut ready = Vec::new();
    let mut count = 0u64;
    for starter in starters(bench) {
        progress.step(&format!("first start: {}", starter.id));
        count += 1;
        match time(&starter, count) {
            Ok(_) => ready.push(starter),
            Err(error) => skipped.push((starter.id.to_string(), format!("{error:#}"))),
        }
    }
    let one = |starter: &Starter, count: &mut u64| -> Result<f64> {
        check_interrupted()?;
        *count += 1;
        let elapsed = time(starter, *count)
            .with_context(|| format!("starting /bin/true with {}", starter.id))?;
        Ok(elapsed.as_secs_f64() * 1000.0)
    };
    let mut back_to_back = vec![Vec::new(); ready.len()];
    for (index, starter) in ready.iter().enumerate() {
        progress.step(&format!("start back to back: {} (warm-up)", starter.id));
        // Each block from a filesystem with nothing of the last one's left to write back.
        super::settle(&bench.workdir)?;
        one(starter, &mut count)?;
        for round in 0..plan.start_runs {
            progress.step(&format!(
                "start back to back: {} ({}/{})",
                starter.id,
                round + 1,
                plan.start_runs
            ));
            back_to_back[index].push(one(starter, &mut count)?);
        }
    }
    let mut spaced = vec![Vec::new(); ready.len()];
    super::settle(&bench.workdir)?;
    for round in 0..plan.start_runs {
        for (index, starter) in ready.iter().enumerate() {
            progress.step(&format!(
                "start spaced: {} ({}/{})",
                starter.id,
                round + 1,
                plan.start_runs
            ));
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(plan.spacing_ms));
            spaced[index].push(one(starter, &mut count)?);
        }
    }
    let position = |id: &str| ready.iter().position(|starter| starter.id == id);
    // This starter's time over `other`'s, start by start: a duration over a duration, so
    // below 1 is faster.
    let over = |samples: &[Vec<f64>], index: usize, other: usize| {
        Ratio::of(&samples[other], &samples[index], Better::Higher)
    };
    let crun = position("crun");
    let mut rows = Vec::new();
    for (index, starter) in ready.iter().enumerate() {
        rows.push(StartRow {
            id: starter.id,
            what: starter.what,
            back_to_back_ms: Summary::of(&back_to_back[index]).context("no start samples")?,
            spaced_ms: Summary::of(&spaced[index]).context("no start samples")?,
            to_crun_back_to_back: crun.and_then(|crun| over(&back_to_back, index, crun)),
            to_crun_spaced: crun.and_then(|crun| over(&spaced, index, crun)),
        });
    }
    // The goals: full isolation (the highest stage) at most half of crun's start back
    // to back and three quarters spaced; stage 2 no slower than bwrap --unshare-all.
    let full = match bench.stage {
        super::Stage::Five => "stage5",
        super::Stage::Four => "stage4",
    };
    let wanted: [(&str, &str, Goal, Goal); 2] = [
        (full, "crun", Goal::AtMost(0.5), Goal::AtMost(0.75)),
        ("stage2", "bwrap", Goal::AtMost(1.0), Goal::AtMost(1.0)),
    ];
    let mut goals = Vec::new();
    for (id, against, back_to_back_goal, spaced_goal) in wanted {
        let (Some(index), Some(other)) = (position(id), position(against)) else { continue };
        for (way, samples, goal) in
            [("back to back", &back_to_back, back_to_back_goal), ("spaced", &spaced, spaced_goal)]
        {
            if let Some(ratio) = over(samples, index, other) {
                let met = goal.met_by(ratio.median());
                goals.push(StartGoal {
                    id: ready[index].id,
                    against: ready[other].id,
                    way,
                    ratio,
                    goal,
                    met,
                });
            }
        }
    }
    Ok(Starts { runs: plan.start_runs, spacing_ms: plan.spacing_ms, rows, goals, skipped })
}

/// One start, timed from spawn to exit; an error unless `/bin/true` succeeded. A blocking
/// `waitpid` wakes the moment the runtime exits (a polling loop would round every start up
/// to its period).
fn time(starter: &Starter, n: u64) -> Result<Duration> {
    timed((starter.command)(n)?, starter.id)
}

/// Runs `command` to its end and returns how long it took; an error unless it succeeded.
///
/// The child gets a process group of its own (`setpgid(0, 0)`, man 2 setpgid), as
/// `run_bounded`'s do: a terminal's Ctrl-C goes to its foreground group only, so it reaches
/// isolab, which stops after this start, and not runc or crun halfway through one (whose
/// failure the report would then blame on them).
pub fn timed(mut command: Command, what: &str) -> Result<Duration> {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0);
    let started = Instant::now();
    let child = command.spawn().with_context(|| format!("cannot start {what}"))?;
    let output = child.wait_with_output().context("waitpid")?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!("{what} ({}): {}", compare::describe(output.status), last_line(&output.stderr));
    }
    Ok(elapsed)
}
