//! Start latency: how long `/bin/true` takes from `exec` of the runtime to its exit, under
//! every stage and under the other sandboxes this machine has.
//!
//! Two ways, because they differ for a reason worth seeing: *back to back* (the next start the
//! moment the last one ended) and *spaced* (a pause first). On cgroup v1 every container pays
//! one move of a process into a new cgroup, and the kernel makes a move wait for an RCU grace
//! period (`cgroup_attach_lock` takes `cgroup_threadgroup_rwsem`, a per-CPU rwsem whose write
//! side waits for readers with `synchronize_rcu`, kernel/cgroup/cgroup.c); right after an
//! earlier start the rwsem's fast path is still off and the wait is short, after a quiet
//! period it is a whole grace period. crun pays it too: spaced starts show that floor.

use std::process::Command;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::stats::Summary;
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
    /// Milliseconds, one start right after the other.
    pub back_to_back_ms: Summary,
    /// Milliseconds, each start after a pause.
    pub spaced_ms: Summary,
    /// Its median over crun's, back to back (the goal for full isolation: at most 0.5).
    pub to_crun_back_to_back: Option<f64>,
    /// Its median over crun's, spaced (the goal: at most 0.75).
    pub to_crun_spaced: Option<f64>,
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
    /// Starters that failed their first run here, and why.
    pub skipped: Vec<(String, String)>,
}

/// The progress bar's steps for this part.
pub fn steps(plan: &Plan) -> u64 {
    MAX_STARTERS * (1 + 2 * u64::from(plan.start_runs))
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
        // `Bench::in_crun` rewrites the bundle's config; for starts it is set once, below.
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
/// here is left out), then back to back and spaced, the starters taking turns.
pub fn measure(bench: &Bench, plan: &Plan, progress: &mut Progress) -> Result<Starts> {
    if let Some(bundle) = &bench.crun {
        super::write_crun_config(bundle, &["/bin/true"])?;
    }
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
    let mut back_to_back = vec![Vec::new(); ready.len()];
    let mut spaced = vec![Vec::new(); ready.len()];
    for (samples, pause) in
        [(&mut back_to_back, None), (&mut spaced, Some(Duration::from_millis(plan.spacing_ms)))]
    {
        for round in 0..plan.start_runs {
            for (index, starter) in ready.iter().enumerate() {
                let how = if pause.is_some() { "spaced" } else { "back to back" };
                progress.step(&format!(
                    "start {how}: {} ({}/{})",
                    starter.id,
                    round + 1,
                    plan.start_runs
                ));
                check_interrupted()?;
                if let Some(pause) = pause {
                    std::thread::sleep(pause);
                }
                count += 1;
                let elapsed = time(starter, count)
                    .with_context(|| format!("starting /bin/true with {}", starter.id))?;
                samples[index].push(elapsed.as_secs_f64() * 1000.0);
            }
        }
    }
    let median_of = |samples: &[Vec<f64>], id: &str| {
        let index = ready.iter().position(|starter| starter.id == id)?;
        Summary::of(&samples[index]).map(|summary| summary.median)
    };
    let crun = (median_of(&back_to_back, "crun"), median_of(&spaced, "crun"));
    let mut rows = Vec::new();
    for (index, starter) in ready.iter().enumerate() {
        let back_to_back_ms = Summary::of(&back_to_back[index]).context("no start samples")?;
        let spaced_ms = Summary::of(&spaced[index]).context("no start samples")?;
        rows.push(StartRow {
            id: starter.id,
            what: starter.what,
            to_crun_back_to_back: crun.0.map(|crun| back_to_back_ms.median / crun),
            to_crun_spaced: crun.1.map(|crun| spaced_ms.median / crun),
            back_to_back_ms,
            spaced_ms,
        });
    }
    Ok(Starts { runs: plan.start_runs, spacing_ms: plan.spacing_ms, rows, skipped })
}

/// One start, timed from spawn to exit; an error unless `/bin/true` succeeded. A blocking
/// `waitpid` wakes the moment the runtime exits (a polling loop would round every start up
/// to its period).
fn time(starter: &Starter, n: u64) -> Result<Duration> {
    timed((starter.command)(n)?, starter.id)
}

/// Runs `command` to its end and returns how long it took; an error unless it succeeded.
pub fn timed(mut command: Command, what: &str) -> Result<Duration> {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = command.spawn().with_context(|| format!("cannot start {what}"))?;
    let output = child.wait_with_output().context("waitpid")?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!("{what} ({}): {}", compare::describe(output.status), last_line(&output.stderr));
    }
    Ok(elapsed)
}
