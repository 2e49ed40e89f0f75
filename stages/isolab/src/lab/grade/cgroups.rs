//! Stage 3's checks: the container's cgroup, watched from the host while the command runs.
//!
//! A cgroup of isolab's is `isolab/<name>-<runtime pid>` (`libisolab::cgroups::ContainerId`;
//! the name is stage 3's `--hostname`, or a later stage's container's), and the grader knows
//! the runtime's pid: it started it, so it finds the cgroup under `isolab/` by that pid. While the command runs (it sleeps a second) the grader
//! reads that cgroup's directories and limit files every few milliseconds; the command's
//! first act is `cat /proc/self/cgroup`, which shows where it was when it started (without a
//! cgroup namespace, so that the paths are the host's). Limits are random each run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use libisolab::cgroups::{self, Backend, ContainerId, Kernel, Version};
use nix::unistd::{Pid, Uid};
use rand::Rng;

use super::{evidence, expected_seen, miss, Miss, Ran, Task, Verdict, SLEEP};

/// Every namespace but cgroup: `/proc/self/cgroup` then shows the host's paths.
const NO_CGROUP_NS: &str = "mnt,uts,ipc,pid,net,user";

/// Random limits for one run.
struct Asked {
    memory_mib: u64,
    pids: u64,
    /// CPUs in hundredths (37 is `--cpus 0.37`).
    cpu_hundredths: u64,
}

impl Asked {
    fn random() -> Asked {
        let mut rng = rand::thread_rng();
        Asked {
            memory_mib: rng.gen_range(48..=200),
            pids: rng.gen_range(20..=200),
            cpu_hundredths: rng.gen_range(10..=90),
        }
    }

    fn options(&self) -> Vec<String> {
        vec![
            "--memory".into(),
            format!("{}M", self.memory_mib),
            "--pids".into(),
            self.pids.to_string(),
            "--cpus".into(),
            format!("0.{:02}", self.cpu_hundredths),
        ]
    }

    fn shown(&self) -> String {
        self.options().join(" ")
    }
}

/// What the grader saw of one run.
struct Watched {
    ran: Ran,
    /// The cgroup's name, `lab-<token>-<runtime pid>`.
    id: Option<ContainerId>,
    /// Its directories (one per hierarchy on v1), as the host's stage 3 lays them out.
    dirs: Vec<PathBuf>,
    /// The directories seen while the command ran.
    seen_dirs: Vec<PathBuf>,
    /// The last reading of the limit files (file name → content) while processes were in it.
    files: BTreeMap<String, String>,
    /// Directories still there right after the runtime exited.
    left: Vec<PathBuf>,
    version: Option<Version>,
}

/// The host's cgroups as stage 3 sees them, as root.
fn backend() -> Result<Box<dyn Backend>, Miss> {
    let fail = |error: String| Miss {
        expected: "the grader finds the host's cgroups".into(),
        happened: error,
    };
    let hierarchy = cgroups::detect(std::path::Path::new("/sys/fs/cgroup"), &Kernel)
        .map_err(|e| fail(e.to_string()))?;
    cgroups::open(&hierarchy, Uid::from_raw(0), Rc::new(Kernel)).map_err(|e| fail(e.to_string()))
}

/// The limit files, on v1 and v2.
const LIMIT_FILES: &[&str] = &[
    "memory.limit_in_bytes",
    "memory.max",
    "pids.max",
    "cpu.cfs_quota_us",
    "cpu.cfs_period_us",
    "cpu.max",
];

/// Runs `BIN run --hostname lab-<token> OPTIONS -- /bin/sh -c SCRIPT` and watches its cgroup.
fn watch(task: &Task, options: &[String], script: &str) -> Result<Watched, Miss> {
    let backend = backend()?;
    let name = format!("lab-{}", task.token);
    let mut all: Vec<&str> = vec!["--hostname", &name];
    all.extend(options.iter().map(String::as_str));
    let mut id = None;
    let mut dirs = Vec::new();
    let mut seen_dirs: Vec<PathBuf> = Vec::new();
    let mut files = BTreeMap::new();
    let mut files_populated = false;
    let mut looker = evidence::Looker::default();
    let mut ran =
        task.run_watching(&task.rootfs, &all, &["/bin/sh", "-c", script], None, &mut |pid| {
            looker.look(pid);
            // Stage 3 names the cgroup after --hostname; stages 4 and 5 after the container
            // (its name or id): the runtime's pid, which ends the name, is what tells ours.
            if id.is_none() {
                id = backend
                    .containers()
                    .unwrap_or_default()
                    .into_iter()
                    .find(|id| id.runtime_pid() == Pid::from_raw(pid as i32));
                if let Some(id) = &id {
                    dirs = backend.dirs(id);
                }
            }
            let mut reading = BTreeMap::new();
            let mut populated = false;
            for dir in &dirs {
                if !dir.is_dir() {
                    continue;
                }
                if !seen_dirs.contains(dir) {
                    seen_dirs.push(dir.clone());
                }
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                populated |= !procs.trim().is_empty();
                for file in LIMIT_FILES {
                    if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                        reading.insert(file.to_string(), text.trim().to_string());
                    }
                }
            }
            // The limits are in the files whether or not the command has joined yet (`join`
            // judges that): a reading with processes in the cgroup wins; until there is one,
            // the latest (a reading taken while the runtime still makes the cgroup lacks the
            // files it has not written yet).
            if populated || !files_populated {
                files = reading;
                files_populated = populated;
            }
        });
    ran.seen = looker.seen;
    let left = dirs.iter().filter(|dir| dir.exists()).cloned().collect();
    Ok(Watched { ran, id, dirs, seen_dirs, files, left, version: Some(backend.version()) })
}

fn shown(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "none".into();
    }
    dirs.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// While the command runs, its cgroup exists: `isolab/<hostname>-<runtime pid>` in every
/// hierarchy whose controller a limit needs.
pub fn create(task: &Task) -> Verdict {
    let asked = Asked::random();
    let watched = watch(task, &asked.options(), "sleep 1")?;
    let want: Vec<&str> = match watched.version {
        Some(Version::V1) => vec!["memory", "pids", "cpu"],
        _ => Vec::new(),
    };
    let name = watched.id.as_ref().map(|id| id.to_string()).unwrap_or_default();
    let expected = format!(
        "while `run --hostname lab-{} {}` runs, its cgroup isolab/{name} exists{}",
        task.token,
        asked.shown(),
        if want.len() > 1 { " in the memory, pids and cpu hierarchies" } else { "" }
    );
    // On v1 a hierarchy's mount may carry several controllers (cpu,cpuacct): a directory
    // counts for a controller when its path names it.
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|controller| {
            !watched.seen_dirs.iter().any(|dir| {
                dir.ancestors().nth(2).and_then(|mount| mount.file_name()).is_some_and(|mount| {
                    mount.to_string_lossy().split(',').any(|part| part == *controller)
                })
            })
        })
        .collect();
    if watched.seen_dirs.is_empty() || !missing.is_empty() {
        let happened = if watched.seen_dirs.is_empty() {
            format!("no such directory appeared ({})", watched.ran.told())
        } else {
            format!(
                "seen: {}; missing: {} ({})",
                shown(&watched.seen_dirs),
                missing.join(", "),
                watched.ran.told()
            )
        };
        return miss(expected, happened);
    }
    if watched.ran.code != Some(0) {
        return miss(expected, watched.ran.told());
    }
    Ok(())
}

/// The limits asked for are in the cgroup's files while the command runs, and the report on
/// exit says them.
pub fn limit(task: &Task) -> Verdict {
    let asked = Asked::random();
    let watched = watch(task, &asked.options(), "sleep 1")?;
    let memory = asked.memory_mib << 20;
    let quota_ok = |quota: &str, period: &str| -> bool {
        match (quota.parse::<f64>(), period.parse::<f64>()) {
            (Ok(quota), Ok(period)) if period > 0.0 => {
                (quota / period - asked.cpu_hundredths as f64 / 100.0).abs() < 0.005
            }
            _ => false,
        }
    };
    let files = &watched.files;
    let get = |name: &str| files.get(name).map(String::as_str).unwrap_or("");
    let (memory_file, memory_found) = if files.contains_key("memory.max") {
        ("memory.max", get("memory.max"))
    } else {
        ("memory.limit_in_bytes", get("memory.limit_in_bytes"))
    };
    let cpu_ok = match files.get("cpu.max") {
        Some(max) => {
            let mut words = max.split_whitespace();
            quota_ok(words.next().unwrap_or(""), words.next().unwrap_or(""))
        }
        None => quota_ok(get("cpu.cfs_quota_us"), get("cpu.cfs_period_us")),
    };
    let expected = format!(
        "while `run {}` runs, {memory_file} holds {memory}, pids.max {}, and the CPU quota \
         is {} of its period",
        asked.shown(),
        asked.pids,
        asked.cpu_hundredths as f64 / 100.0
    );
    if files.is_empty() {
        return miss(
            expected,
            format!("no cgroup was seen at {} ({})", shown(&watched.dirs), watched.ran.told()),
        );
    }
    if memory_found != memory.to_string() || get("pids.max") != asked.pids.to_string() || !cpu_ok {
        let read: Vec<String> =
            files.iter().map(|(file, value)| format!("{file}={value}")).collect();
        return miss(expected, format!("read: {}", read.join(", ")));
    }
    // The report on exit (stderr): "memory: peak …, limit N MiB" and "pids: peak …, limit N".
    let report_memory = format!("limit {} MiB", asked.memory_mib);
    let report_pids = format!("limit {}", asked.pids);
    let said = |prefix: &str, what: &str| {
        watched.ran.stderr.lines().any(|line| line.contains(prefix) && line.contains(what))
    };
    if watched.ran.code != Some(0)
        || !said("memory:", &report_memory)
        || !said("pids:", &report_pids)
    {
        return miss(
            format!(
                "on exit, the report on stderr says `memory: … {report_memory}` and `pids: … \
                 {report_pids}`, and the run exits 0"
            ),
            watched.ran.told(),
        );
    }
    Ok(())
}

/// The command is in its cgroup from its first instruction: `/proc/self/cgroup`, read as its
/// first act, names `isolab/<hostname>-<runtime pid>` for every controller a limit needs.
pub fn join(task: &Task) -> Verdict {
    let asked = Asked::random();
    let mut options = asked.options();
    options.extend(["--ns".to_string(), NO_CGROUP_NS.to_string()]);
    let watched = watch(task, &options, &format!("cat /proc/self/cgroup; {SLEEP}"))?;
    let Some(id) = &watched.id else {
        return miss("the runtime starts", watched.ran.told());
    };
    let suffix = format!("/isolab/{id}");
    // `hierarchy-id:controllers:path` (man 7 cgroups, /proc/[pid]/cgroup): the lines of the
    // controllers the limits need (v1), or the one `0::` line (v2).
    let lines: Vec<&str> = watched.ran.stdout.lines().collect();
    let wanted = |line: &&str| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers) = (parts.next(), parts.next().unwrap_or(""));
        match watched.version {
            Some(Version::V1) => {
                controllers.split(',').any(|c| ["memory", "pids", "cpu"].contains(&c))
            }
            _ => controllers.is_empty() && line.starts_with("0::"),
        }
    };
    let relevant: Vec<&str> = lines.iter().copied().filter(wanted).collect();
    let expected = format!(
        "`cat /proc/self/cgroup` as the command's first act (with --ns {NO_CGROUP_NS}) shows \
         {suffix} for the memory, pids and cpu controllers: the runtime moves the child in \
         before it execs"
    );
    if relevant.is_empty() {
        return miss(expected, watched.ran.told());
    }
    if let Some(outside) = relevant.iter().find(|line| !line.ends_with(&suffix)) {
        return miss(
            expected,
            format!("the command started outside it: {outside} ({})", watched.ran.told()),
        );
    }
    if watched.ran.code != Some(0) {
        return miss(expected, watched.ran.told());
    }
    // The same, read by the host from the command's /proc/PID/cgroup: not the command's word.
    let Some(seen) = &watched.ran.seen else { return miss(expected_seen(), watched.ran.told()) };
    let host_read: Vec<&str> = seen.cgroup.lines().filter(wanted).collect();
    if host_read.is_empty() || host_read.iter().any(|line| !line.ends_with(&suffix)) {
        return miss(
            format!(
                "seen from the host, the command's /proc/PID/cgroup shows {suffix} for the \
                 memory, pids and cpu controllers"
            ),
            format!("pid {}: {}", seen.pid, seen.cgroup.lines().collect::<Vec<_>>().join(" ")),
        );
    }
    Ok(())
}

/// The cgroup is gone as soon as the runtime has exited, after a command that ran and after
/// a start that failed inside the child (a missing `--workdir`).
pub fn remove(task: &Task) -> Verdict {
    let asked = Asked::random();
    let watched = watch(task, &asked.options(), "sleep 0.2")?;
    if watched.seen_dirs.is_empty() || watched.ran.code != Some(0) {
        return miss(
            format!("`run {}` makes its cgroup and exits 0", asked.shown()),
            watched.ran.told(),
        );
    }
    if !watched.left.is_empty() {
        return miss(
            "the cgroup's directories are gone when the runtime exits",
            format!("still there: {}", shown(&watched.left)),
        );
    }
    let nowhere = format!("/lab-nowhere-{}", task.token);
    let mut options = asked.options();
    options.extend(["--workdir".to_string(), nowhere.clone()]);
    let watched = watch(task, &options, "true")?;
    if !watched.left.is_empty() || watched.ran.code != Some(125) {
        return miss(
            format!(
                "a run whose child fails before exec (`--workdir {nowhere}`) exits 125 and \
                 leaves no cgroup"
            ),
            format!("still there: {} ({})", shown(&watched.left), watched.ran.told()),
        );
    }
    Ok(())
}
