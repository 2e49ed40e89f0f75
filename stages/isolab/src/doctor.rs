//! `isolab doctor`: can this machine run the course?
//!
//! Each stage leans on a kernel feature that a machine may lack or switch off: root for
//! chroot and mounts, user namespaces (stage 2), a cgroup hierarchy with the memory, pids and
//! cpu controllers (stage 3), overlayfs (stage 4), and a statically linked busybox for every
//! rootfs. Doctor looks at each, prints one `ok` / `warn` / `fail` line with what it found,
//! and for every problem the exact command that fixes it.
//!
//! Then, for the user it runs as, one line per stage: `ok` (it runs, all of it), `limited` (it
//! runs, without something: the line says what, and the fix how to get it) or `no`. Without
//! root, stage 1 cannot chroot, but stages 2 to 4 run in a user namespace where the kernel
//! allows unprivileged ones, with limits only in a delegated cgroup v2 subtree. The machine is
//! *ready* for that user when no check fails and the stages they asked for (`--stage`; by
//! default, any) run for them as they are.
//!
//! The detection functions read everything under a root directory ([`Machine::root`]) and
//! get `statfs(2)` and the mount table passed in ([`Machine::filesystems`]), so tests run them
//! on fake trees. The cgroup detection is stage 3's own (`libisolab::cgroups::detect`): what
//! doctor reports is what the runtime will find.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use libisolab::cgroups::{self, rootless, FsTypes, Hierarchy, Kernel};
use libisolab::idrange;
use nix::unistd::Uid;

/// Arguments of `isolab doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stages you mean to run, 1 to 5 (2,4 or --stage 2 --stage 4): ready only if each runs
    /// for you as you are [default: ready if any stage does]
    #[arg(long, value_name = "N", value_delimiter = ',', value_parser = parse_stage)]
    pub stage: Vec<u8>,
}

fn parse_stage(text: &str) -> Result<u8, String> {
    text.trim()
        .parse()
        .ok()
        .filter(|stage| (1..=5).contains(stage))
        .ok_or_else(|| format!("invalid --stage '{text}': the stages are 1, 2, 3, 4 and 5"))
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Nothing to do.
    Ok,
    /// Part of the course may not work; the rest does.
    Warn,
    /// A stage cannot run until this is fixed.
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// ok, warn or fail.
    pub level: Level,
    /// What was checked (`kernel`, `cgroups`).
    pub topic: &'static str,
    /// What was found, in words.
    pub found: String,
    /// The command that fixes it, for warn and fail.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(topic: &'static str, found: impl Into<String>) -> Self {
        Finding { level: Level::Ok, topic, found: found.into(), fix: None }
    }

    fn problem(level: Level, topic: &'static str, found: impl Into<String>, fix: &str) -> Self {
        Finding { level, topic, found: found.into(), fix: Some(fix.to_string()) }
    }
}

/// Everything doctor looks at: the real machine, or a fake one in tests.
pub struct Machine<'a> {
    /// The directory the machine's files are read under: `/`, or a fake tree.
    pub root: PathBuf,
    /// The effective uid doctor runs as.
    pub euid: u32,
    /// `uname -r`.
    pub kernel_release: String,
    /// `statfs(2)` and the mount table, passed in so that a fake tree can pretend to be any
    /// cgroup layout.
    pub filesystems: &'a dyn FsTypes,
    /// The PATH busybox is looked up in.
    pub path: OsString,
}

impl Machine<'static> {
    /// This machine.
    pub fn this_one() -> Result<Machine<'static>> {
        let uts =
            nix::sys::utsname::uname().map_err(|errno| anyhow::anyhow!("uname failed: {errno}"))?;
        Ok(Machine {
            root: PathBuf::from("/"),
            euid: nix::unistd::geteuid().as_raw(),
            kernel_release: uts.release().to_string_lossy().into_owned(),
            filesystems: &Kernel,
            path: std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        })
    }
}

impl Machine<'_> {
    /// An absolute machine path (`/proc/filesystems`) under [`Machine::root`].
    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> Option<String> {
        fs::read_to_string(self.at(path)).ok()
    }
}

/// Runs `isolab doctor`: prints the findings, what each stage can do for this user, and the
/// verdict; exit 0 when the machine is ready for them (see [`verdict`]), 1 otherwise.
pub fn run(args: Args) -> Result<ExitCode> {
    let machine = Machine::this_one()?;
    let findings = examine(&machine);
    let stages = check_stages(&machine);
    let verdict = verdict(&findings, &stages, &args.stage, machine.euid);
    print!("{}", render(&findings, &stages, &verdict));
    Ok(if verdict.ready { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Every check, in the order the course needs them.
pub fn examine(machine: &Machine) -> Vec<Finding> {
    let mut findings = vec![check_user(machine.euid), check_kernel(&machine.kernel_release)];
    findings.extend(check_user_namespaces(machine));
    findings.push(check_user_ids(machine));
    let (layout, hierarchy) = detect_cgroups(machine);
    findings.extend(check_cgroups(&layout));
    // For root, how other users get limits; for anyone else it is stage 3's line below.
    if let Some(hierarchy) = hierarchy.as_ref().filter(|_| machine.euid == 0) {
        findings.push(check_delegation(machine, hierarchy));
    }
    findings.push(check_overlay(machine));
    findings.push(check_busybox(machine));
    findings
}

/// The report: one aligned line per finding, the fix under each problem; one line per stage,
/// for this user; the verdict.
pub fn render(findings: &[Finding], stages: &[StageFinding], verdict: &Verdict) -> String {
    let width = findings.iter().map(|f| f.topic.len()).max().unwrap_or(0);
    let mut out = String::from("isolab doctor: can this machine run the course?\n\n");
    for finding in findings {
        out.push_str(&format!(
            "{:4}  {:width$}  {}\n",
            finding.level, finding.topic, finding.found
        ));
        if let Some(fix) = &finding.fix {
            out.push_str(&format!("{:4}  {:width$}  fix: {fix}\n", "", ""));
        }
    }
    if !stages.is_empty() {
        out.push_str(&format!("\nwhat runs for {}:\n", verdict.who));
    }
    for stage in stages {
        out.push_str(&format!("{:7}  stage {}  {}\n", stage.runs, stage.stage, stage.found));
        if let Some(fix) = &stage.fix {
            out.push_str(&format!("{:7}  {:7}  fix: {fix}\n", "", ""));
        }
    }
    out.push('\n');
    out.push_str(&verdict.line);
    out.push('\n');
    out
}

/// Whether the machine is ready for the user doctor runs as, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Ready: exit 0.
    pub ready: bool,
    /// Who doctor ran as: `root`, `uid 1000 (not root)`.
    pub who: String,
    /// The last line of the report.
    pub line: String,
}

// ANCHOR: verdict
/// Ready, for this user as they are, when no check fails and the stages they `asked` for run
/// for them (`ok` or `limited`), or, when they asked for none, when at least one does. A
/// stage that needs root is not a failure for a user without it: its line says so, and how.
pub fn verdict(findings: &[Finding], stages: &[StageFinding], asked: &[u8], euid: u32) -> Verdict {
    let who = if euid == 0 { "root".to_string() } else { format!("uid {euid} (not root)") };
    let count = |level| findings.iter().filter(|f| f.level == level).count();
    let (fails, warns) = (count(Level::Fail), count(Level::Warn));
    let numbers = |runs: &dyn Fn(Runs) -> bool| -> Vec<u8> {
        stages.iter().filter(|s| runs(s.runs)).map(|s| s.stage).collect()
    };
    let running = numbers(&|runs| runs != Runs::No);
    let limited = numbers(&|runs| runs == Runs::Limited);
    let not_running = numbers(&|runs| runs == Runs::No);
    let refused: Vec<u8> = asked.iter().copied().filter(|n| !running.contains(n)).collect();
    let user = if euid == 0 { "root".to_string() } else { format!("uid {euid}") };
    let (ready, line) = if fails > 0 {
        (
            false,
            format!(
                "not ready: {fails} check{} fail{}; run the fixes above",
                plural(fails),
                if fails == 1 { "s" } else { "" }
            ),
        )
    } else if !refused.is_empty() {
        let does = if refused.len() == 1 { "does" } else { "do" };
        (
            false,
            format!(
                "not ready for {user}: {} {does} not run; see the fixes above",
                stage_list(&refused)
            ),
        )
    } else if running.is_empty() {
        (false, format!("not ready for {user}: no stage runs; see the fixes above"))
    } else {
        let mut line = format!("ready for {user}: {} run", stage_list(&running));
        if !limited.is_empty() {
            line.push_str(&format!(" ({} limited)", and_list(&limited)));
        }
        if !not_running.is_empty() {
            let does = if not_running.len() == 1 { "does" } else { "do" };
            line.push_str(&format!(", {} {does} not", stage_list(&not_running)));
        }
        if warns > 0 {
            line.push_str(&format!(" ({warns} warning{})", plural(warns)));
        }
        if warns > 0 || !limited.is_empty() || !not_running.is_empty() {
            line.push_str("; see the fixes above");
        }
        (true, line)
    };
    Verdict { ready, who, line }
}
// ANCHOR_END: verdict

/// `stage 1`, `stages 2, 3 and 4`.
fn stage_list(stages: &[u8]) -> String {
    let noun = if stages.len() == 1 { "stage" } else { "stages" };
    format!("{noun} {}", and_list(stages))
}

/// `1`, `2 and 3`, `2, 3 and 4`.
fn and_list(numbers: &[u8]) -> String {
    let words: Vec<String> = numbers.iter().map(u8::to_string).collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => words.join(""),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Who doctor runs as. Not being root is no problem in itself: the stages' lines say what
/// runs without root.
pub fn check_user(euid: u32) -> Finding {
    if euid == 0 {
        Finding::ok("user", "root (uid 0)")
    } else {
        Finding::ok("user", format!("uid {euid}, not root: what runs without root is below"))
    }
}

/// `6.1.0-18-amd64` → (6, 1, 0).
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32, u32)> {
    let numbers = release.split(|c: char| !c.is_ascii_digit()).filter(|part| !part.is_empty());
    let mut numbers = numbers.map(|part| part.parse::<u32>().ok());
    let major = numbers.next()??;
    let minor = numbers.next()??;
    let patch = numbers.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// The oldest kernel the course is written against: cgroup v2 with the pids and memory
/// controllers, and overlayfs with everything stage 4 uses.
pub const OLDEST_KERNEL: (u32, u32) = (5, 4);

/// The kernel's version.
pub fn check_kernel(release: &str) -> Finding {
    let fix = "upgrade the kernel (Debian: apt-get install linux-image-amd64, then reboot)";
    match parse_kernel_release(release) {
        Some((major, minor, _)) if (major, minor) >= OLDEST_KERNEL => {
            Finding::ok("kernel", format!("Linux {release}"))
        }
        Some(_) => Finding::problem(
            Level::Warn,
            "kernel",
            format!(
                "Linux {release} is older than {}.{}, which the course is written for",
                OLDEST_KERNEL.0, OLDEST_KERNEL.1
            ),
            fix,
        ),
        None => Finding::problem(
            Level::Warn,
            "kernel",
            format!("cannot read a version in {release:?}"),
            fix,
        ),
    }
}

/// Where root's containers get their host ids (`libisolab::idrange`): the pool, and how many of
/// its slots no container holds (the claims are root's: for anyone else, only the pool).
pub fn check_user_ids(machine: &Machine) -> Finding {
    let topic = "user namespace ids";
    let pool = match idrange::HostIds::read(&machine.at("/etc")) {
        Ok(host) => idrange::Pool::of(&host),
        Err(error) => return Finding::problem(Level::Warn, topic, error.to_string(), "ls -l /etc"),
    };
    let slots = pool.slots().count();
    let claims = idrange::Claims::at(machine.at(&idrange::claims_dir().to_string_lossy()));
    match claims.free_slots(&pool) {
        Ok(0) => Finding::problem(
            Level::Warn,
            topic,
            format!("{pool}: all {slots} slots are held, root's containers cannot start"),
            "stage4-overlay rm <the stopped containers you no longer need>",
        ),
        Ok(free) => Finding::ok(topic, format!("{pool}: {free} of {slots} slots free")),
        Err(_) => Finding::ok(topic, format!("{pool}: {slots} slots")),
    }
}

/// The sysctls that decide whether user namespaces may be created (`man 7 user_namespaces`).
pub fn check_user_namespaces(machine: &Machine) -> Vec<Finding> {
    let topic = "user namespaces";
    let number = |path: &str| machine.read(path).and_then(|text| text.trim().parse::<i64>().ok());
    let mut findings = Vec::new();
    match number("/proc/sys/user/max_user_namespaces") {
        None => findings.push(Finding::problem(
            Level::Warn,
            topic,
            "no /proc/sys/user/max_user_namespaces: this kernel may lack CONFIG_USER_NS",
            "install a kernel built with user namespaces (Debian's linux-image-amd64 is)",
        )),
        Some(0) => findings.push(Finding::problem(
            Level::Fail,
            topic,
            "user.max_user_namespaces = 0: nobody, not even root, may create one",
            "sysctl -w user.max_user_namespaces=15000",
        )),
        Some(max) => {
            findings.push(Finding::ok(topic, format!("allowed: user.max_user_namespaces = {max}")))
        }
    }
    // Debian's and Ubuntu's own switches; they only stop *unprivileged* users, so a warning.
    if number("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        findings.push(Finding::problem(
            Level::Warn,
            topic,
            "kernel.unprivileged_userns_clone = 0: only root may create user namespaces",
            "sysctl -w kernel.unprivileged_userns_clone=1",
        ));
    }
    if number("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
        findings.push(Finding::problem(
            Level::Warn,
            topic,
            "kernel.apparmor_restrict_unprivileged_userns = 1: AppArmor stops unprivileged ones",
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        ));
    }
    findings
}

/// How the machine mounts its cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// `/sys/fs/cgroup` is a cgroup2 mount: every controller in one tree.
    V2,
    /// `/sys/fs/cgroup` is a tmpfs of v1 hierarchies, plus a cgroup2 mount at `unified/`.
    Hybrid,
    /// `/sys/fs/cgroup` is a tmpfs of v1 hierarchies only.
    V1,
    /// Nothing usable is mounted at `/sys/fs/cgroup`.
    Missing,
}

impl CgroupVersion {
    /// `v2`, `hybrid`, `v1`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V2 => "v2",
            CgroupVersion::Hybrid => "hybrid",
            CgroupVersion::V1 => "v1",
            CgroupVersion::Missing => "none",
        }
    }
}

/// The cgroup setup of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    /// Which version.
    pub version: CgroupVersion,
    /// Controllers on v1 hierarchies (from `/proc/cgroups`: enabled, hierarchy ≠ 0).
    pub v1_controllers: Vec<String>,
    /// Controllers the cgroup2 tree offers (its root's `cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// Controllers the kernel has but were switched off (`cgroup_disable=` at boot).
    pub disabled: Vec<String>,
}

impl CgroupLayout {
    /// Can stage 3 use `controller`, in either version?
    pub fn has(&self, controller: &str) -> bool {
        self.v1_controllers.iter().chain(&self.v2_controllers).any(|c| c == controller)
    }
}

// ANCHOR: detect_cgroups
/// Finds the cgroup layout the way stage 3 does (`libisolab::cgroups::detect`): by the
/// *filesystem type* of `/sys/fs/cgroup` and of the cgroup mounts below it (`statfs(2)`), not
/// by guessing from which files exist. Also returns the hierarchy, for the delegation check.
pub fn detect_cgroups(machine: &Machine) -> (CgroupLayout, Option<Hierarchy>) {
    let (_, disabled) = parse_proc_cgroups(&machine.read("/proc/cgroups").unwrap_or_default());
    let mut layout = CgroupLayout {
        version: CgroupVersion::Missing,
        v1_controllers: Vec::new(),
        v2_controllers: Vec::new(),
        disabled,
    };
    let Ok(hierarchy) = cgroups::detect(&machine.at("/sys/fs/cgroup"), machine.filesystems) else {
        return (layout, None);
    };
    layout.version = match &hierarchy {
        Hierarchy::V2(_) => CgroupVersion::V2,
        Hierarchy::V1(_) => CgroupVersion::V1,
        Hierarchy::Hybrid { .. } => CgroupVersion::Hybrid,
    };
    layout.v1_controllers = hierarchy
        .v1_mounts()
        .iter()
        .flat_map(|mount| mount.controllers.iter())
        .filter(|controller| !controller.starts_with("name="))
        .cloned()
        .collect();
    if let Some(unified) = hierarchy.unified() {
        layout.v2_controllers = unified.controllers.clone();
    }
    (layout, Some(hierarchy))
}
// ANCHOR_END: detect_cgroups

/// Parses `/proc/cgroups` (`subsys_name hierarchy num_cgroups enabled`, `man 7 cgroups`) into
/// the controllers mounted on a v1 hierarchy and those disabled.
pub fn parse_proc_cgroups(text: &str) -> (Vec<String>, Vec<String>) {
    let mut on_v1 = Vec::new();
    let mut disabled = Vec::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, hierarchy, _, enabled] = fields[..] else { continue };
        if enabled == "0" {
            disabled.push(name.to_string());
        } else if hierarchy != "0" {
            on_v1.push(name.to_string());
        }
    }
    (on_v1, disabled)
}

/// The controllers stage 3 uses.
pub const NEEDED_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The cgroup version and whether the controllers stage 3 needs are there.
pub fn check_cgroups(layout: &CgroupLayout) -> Vec<Finding> {
    let layout_words = match layout.version {
        CgroupVersion::V2 => "the unified hierarchy at /sys/fs/cgroup",
        CgroupVersion::Hybrid => {
            "v1 hierarchies under /sys/fs/cgroup, cgroup2 at /sys/fs/cgroup/unified"
        }
        CgroupVersion::V1 => "one hierarchy per controller under /sys/fs/cgroup",
        CgroupVersion::Missing => {
            return vec![Finding::problem(
                Level::Fail,
                "cgroups",
                "no cgroup filesystem at /sys/fs/cgroup",
                "mount -t cgroup2 none /sys/fs/cgroup",
            )]
        }
    };
    let version = Finding::ok("cgroups", format!("{}: {layout_words}", layout.version.as_str()));
    let mut findings = vec![version];
    let missing: Vec<&str> = NEEDED_CONTROLLERS.into_iter().filter(|c| !layout.has(c)).collect();
    if missing.is_empty() {
        let mut where_: Vec<String> = Vec::new();
        for (version, list) in [("v1", &layout.v1_controllers), ("v2", &layout.v2_controllers)] {
            let used: Vec<&str> =
                NEEDED_CONTROLLERS.into_iter().filter(|c| list.iter().any(|l| l == c)).collect();
            if !used.is_empty() {
                where_.push(format!("{} on {version}", used.join(", ")));
            }
        }
        findings.push(Finding::ok("controllers", where_.join("; ")));
    }
    for controller in missing {
        let found = format!("no {controller} controller: stage 3 cannot limit it");
        let fix = if layout.disabled.iter().any(|c| c == controller) {
            format!("remove cgroup_disable={controller} from the kernel command line (/etc/default/grub), update-grub, reboot")
        } else if layout.version == CgroupVersion::V2 {
            format!("find which v1 hierarchy holds it (grep {controller} /proc/self/mountinfo) and umount it")
        } else {
            format!(
                "mkdir -p /sys/fs/cgroup/{controller} && mount -t cgroup -o {controller} cgroup /sys/fs/cgroup/{controller}"
            )
        };
        findings.push(Finding::problem(Level::Fail, "controllers", found, &fix));
    }
    findings
}

// ANCHOR: check_delegation
/// Limits without root (stage 3's rootless mode): only a cgroup v2 subtree *delegated* to the
/// user will do (`man 7 cgroups`, "Cgroup delegation"); v1 has no safe delegation at all.
pub fn check_delegation(machine: &Machine, hierarchy: &Hierarchy) -> Finding {
    let topic = "rootless limits";
    let Hierarchy::V2(unified) = hierarchy else {
        return Finding::problem(
            Level::Warn,
            topic,
            "the controllers are on cgroup v1, which cannot be delegated to a user: without \
             root, stages 3 and 4 run without limits (--cgroups optional)",
            "boot with cgroup v2 only: add systemd.unified_cgroup_hierarchy=1 to \
             GRUB_CMDLINE_LINUX in /etc/default/grub, update-grub, reboot; then run stage 3 in \
             `systemd-run --user --scope -p Delegate=yes -- stage3-cgroups run …`",
        );
    };
    let user = Uid::from_raw(machine.euid);
    if user.is_root() {
        return Finding::ok(
            topic,
            format!(
                "cgroup v2 at {}: another user gets limits in a delegated subtree: \
                 `systemd-run --user --scope -p Delegate=yes -- stage3-cgroups run …`",
                unified.mount.display()
            ),
        );
    }
    let own = machine.read("/proc/self/cgroup").and_then(|text| rootless::parse_own_cgroup(&text));
    let own = own.unwrap_or_default();
    match rootless::delegated_parent(&unified.mount, &own, user) {
        Ok(top) => {
            let offered = fs::read_to_string(top.join("cgroup.controllers")).unwrap_or_default();
            let missing: Vec<&str> = NEEDED_CONTROLLERS
                .into_iter()
                .filter(|needed| !offered.split_whitespace().any(|c| c == *needed))
                .collect();
            if missing.is_empty() {
                Finding::ok(topic, format!("delegated to uid {user}: {}", top.display()))
            } else {
                Finding::problem(
                    Level::Warn,
                    topic,
                    format!(
                        "{} is delegated to uid {user}, without the {} controller(s)",
                        top.display(),
                        missing.join(", ")
                    ),
                    "delegate them: `systemctl edit user@.service`, add [Service] \
                     Delegate=cpu cpuset io memory pids, then log in again",
                )
            }
        }
        Err(_) => Finding::problem(
            Level::Warn,
            topic,
            format!(
                "no cgroup is delegated to uid {user} where this runs: stages 3 and 4 run \
                 without limits (--cgroups optional)"
            ),
            rootless::HOW_TO_DELEGATE,
        ),
    }
}
// ANCHOR_END: check_delegation

/// overlayfs, for stage 4: compiled in or loaded (`/proc/filesystems`), or at least there as
/// a module.
pub fn check_overlay(machine: &Machine) -> Finding {
    let filesystems = machine.read("/proc/filesystems").unwrap_or_default();
    // Lines are `[nodev]\tname`.
    if filesystems.lines().any(|line| line.split_whitespace().last() == Some("overlay")) {
        return Finding::ok("overlayfs", "listed in /proc/filesystems");
    }
    let module_dir =
        machine.at(&format!("/lib/modules/{}/kernel/fs/overlayfs", machine.kernel_release));
    if module_dir.is_dir() {
        Finding::problem(
            Level::Warn,
            "overlayfs",
            "not loaded yet (the module is installed; a mount usually loads it)",
            "modprobe overlay",
        )
    } else {
        Finding::problem(
            Level::Fail,
            "overlayfs",
            "not in /proc/filesystems, and no overlay module for this kernel: stage 4 needs it",
            "modprobe overlay",
        )
    }
}

/// A statically linked busybox, which every rootfs is built from: it must run with no
/// libraries beside it.
pub fn check_busybox(machine: &Machine) -> Finding {
    let fix = "apt-get install busybox-static";
    let candidates = std::env::split_paths(&machine.path)
        .chain(["/bin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| machine.at(&dir.join("busybox").to_string_lossy()));
    let Some(found) = candidates.into_iter().find(|path| path.is_file()) else {
        return Finding::problem(Level::Fail, "busybox", "not found on PATH", fix);
    };
    let shown = Path::new("/").join(found.strip_prefix(&machine.root).unwrap_or(&found));
    match fs::read(&found).map(|bytes| is_static_elf(&bytes)) {
        Ok(Some(true)) => Finding::ok("busybox", format!("{}, statically linked", shown.display())),
        Ok(Some(false)) => Finding::problem(
            Level::Fail,
            "busybox",
            format!(
                "{} is dynamically linked: it would need its libraries in every rootfs",
                shown.display()
            ),
            fix,
        ),
        Ok(None) => Finding::problem(
            Level::Fail,
            "busybox",
            format!("{} is not an ELF executable", shown.display()),
            fix,
        ),
        Err(error) => Finding::problem(
            Level::Fail,
            "busybox",
            format!("cannot read {}: {error}", shown.display()),
            fix,
        ),
    }
}

/// `Some(true)` for an ELF file without a program interpreter (`PT_INTERP`): the kernel runs
/// it as is, with no dynamic loader and no libraries (`man 8 ld.so`).
pub fn is_static_elf(bytes: &[u8]) -> Option<bool> {
    let elf = goblin::elf::Elf::parse(bytes).ok()?;
    Some(elf.interpreter.is_none())
}

/// Whether a stage runs for the user doctor runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// It runs, with everything its chapter shows.
    Ok,
    /// It runs, without part of it (the line says which, the fix how to get it).
    Limited,
    /// It does not run for this user.
    No,
}

impl fmt::Display for Runs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Runs::Ok => "ok",
            Runs::Limited => "limited",
            Runs::No => "no",
        })
    }
}

/// What one stage can do for the user doctor runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFinding {
    /// 1 to 5.
    pub stage: u8,
    /// ok, limited or no.
    pub runs: Runs,
    /// What it can do, or why not, in words.
    pub found: String,
    /// What to do to get the rest, for limited and no.
    pub fix: Option<String>,
}

impl StageFinding {
    fn new(stage: u8, runs: Runs, found: impl Into<String>, fix: Option<&str>) -> Self {
        StageFinding { stage, runs, found: found.into(), fix: fix.map(str::to_string) }
    }
}

/// The oldest kernel whose overlayfs may be mounted in a user namespace (Linux 5.11,
/// `FS_USERNS_MOUNT` for overlay; `man 7 user_namespaces`): stage 4 without root needs it.
pub const ROOTLESS_OVERLAY_KERNEL: (u32, u32) = (5, 11);

// ANCHOR: check_stages
/// What each stage can do for the user doctor runs as, from the same findings as above.
///
/// Root runs every stage the machine supports. Without root: stage 1 cannot chroot (it needs
/// CAP_SYS_CHROOT, `man 2 chroot`); stage 2 runs in a user namespace, where the kernel allows
/// unprivileged ones (`man 7 user_namespaces`); stage 3 too, with limits only in a cgroup v2
/// subtree delegated to the user (`man 7 cgroups`), else only with `--cgroups optional`;
/// stage 4 as stage 3, where the kernel mounts overlayfs in a user namespace (5.11 on).
pub fn check_stages(machine: &Machine) -> Vec<StageFinding> {
    let root = machine.euid == 0;
    // The problems that stop this user's user namespaces: any, without root; root has other
    // ways (namespaces without a user namespace), so only a failure counts.
    let userns_problem = check_user_namespaces(machine).into_iter().find(|f| {
        if root {
            f.level == Level::Fail
        } else {
            f.level != Level::Ok
        }
    });

    let stage1 = if root {
        StageFinding::new(1, Runs::Ok, "chroot, as root", None)
    } else {
        StageFinding::new(
            1,
            Runs::No,
            "chroot(2) needs CAP_SYS_CHROOT, which only root has here",
            Some("sudo stage1-chroot run --rootfs rootfs -- /bin/sh"),
        )
    };

    let stage2 = match (&userns_problem, root) {
        (None, true) => {
            StageFinding::new(2, Runs::Ok, "every namespace, and a veth pair to the host", None)
        }
        (Some(problem), true) => StageFinding::new(
            2,
            Runs::Limited,
            "without a user namespace only (--ns mnt,uts,ipc,pid,net,cgroup)",
            problem.fix.as_deref(),
        ),
        (None, false) => StageFinding::new(
            2,
            Runs::Ok,
            format!(
                "rootless, in a user namespace: root inside is uid {} outside (a veth pair \
                 needs root)",
                machine.euid
            ),
            None,
        ),
        (Some(problem), false) => StageFinding::new(
            2,
            Runs::No,
            format!("without root it needs a user namespace: {}", problem.found),
            Some(&format!("{}; or run it as root", problem.fix.as_deref().unwrap_or("sudo"))),
        ),
    };

    let (layout, hierarchy) = detect_cgroups(machine);
    let stage3 = match &hierarchy {
        _ if stage2.runs == Runs::No => {
            StageFinding::new(3, Runs::No, "it needs stage 2's namespaces", stage2.fix.as_deref())
        }
        None => StageFinding::new(
            3,
            Runs::Limited,
            "no cgroups are mounted: it runs without limits (--cgroups optional)",
            Some("mount -t cgroup2 none /sys/fs/cgroup"),
        ),
        Some(hierarchy) if !root => {
            let delegation = check_delegation(machine, hierarchy);
            if delegation.level == Level::Ok {
                StageFinding::new(3, Runs::Ok, format!("limits, {}", delegation.found), None)
            } else {
                StageFinding::new(3, Runs::Limited, delegation.found, delegation.fix.as_deref())
            }
        }
        Some(_) => {
            let missing: Vec<&str> =
                NEEDED_CONTROLLERS.into_iter().filter(|c| !layout.has(c)).collect();
            if missing.is_empty() {
                StageFinding::new(3, Runs::Ok, "limits, on the controllers above", None)
            } else {
                StageFinding::new(
                    3,
                    Runs::Limited,
                    format!("without the {} controller(s)", missing.join(", ")),
                    Some("see the controllers line above"),
                )
            }
        }
    };

    let overlay = check_overlay(machine);
    let kernel = parse_kernel_release(&machine.kernel_release);
    let old_kernel =
        kernel.is_some_and(|(major, minor, _)| (major, minor) < ROOTLESS_OVERLAY_KERNEL);
    let stage4 = if stage3.runs == Runs::No {
        StageFinding::new(4, Runs::No, "it needs stage 3's namespaces", stage3.fix.as_deref())
    } else if overlay.level == Level::Fail {
        StageFinding::new(
            4,
            Runs::Limited,
            "no overlayfs: only --storage copy",
            overlay.fix.as_deref(),
        )
    } else if !root && old_kernel {
        StageFinding::new(
            4,
            Runs::Limited,
            format!(
                "Linux {} mounts no overlayfs in a user namespace (5.11 does): only --storage copy",
                machine.kernel_release
            ),
            Some("upgrade the kernel to 5.11 or later, or run it as root"),
        )
    } else if stage3.runs == Runs::Limited {
        let over = if root { "an overlay" } else { "an overlay in a user namespace" };
        StageFinding::new(
            4,
            Runs::Limited,
            format!("{over}; limits as for stage 3"),
            Some("as for stage 3"),
        )
    } else if root {
        StageFinding::new(4, Runs::Ok, "an overlay over a read-only base, and limits", None)
    } else {
        StageFinding::new(4, Runs::Ok, "an overlay in a user namespace, and limits", None)
    };
    // Stage 5 stacks an image's layers with overlayfs: what stage 4 can do, without the
    // copy driver to fall back on.
    let stage5 = match stage4.runs {
        Runs::No => {
            StageFinding::new(5, Runs::No, "it needs stage 4's overlay", stage4.fix.as_deref())
        }
        Runs::Limited if stage4.found.contains("only --storage copy") => StageFinding::new(
            5,
            Runs::No,
            format!("images need overlayfs: {}", stage4.found),
            stage4.fix.as_deref(),
        ),
        runs => StageFinding::new(
            5,
            runs,
            format!("images: their layers as the overlay's lowers; {}", stage4.found),
            stage4.fix.as_deref(),
        ),
    };
    vec![stage1, stage2, stage3, stage4, stage5]
}
// ANCHOR_END: check_stages

#[cfg(test)]
mod tests {
    use super::*;
    use libisolab::cgroups::FsType;

    fn write(root: &Path, path: &str, text: &str) {
        let file = root.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, text).unwrap();
    }

    /// statfs and the mount table of a fake machine: a type per path (anything else is ext4),
    /// and a mountinfo text.
    struct Fake {
        types: Vec<(PathBuf, FsType)>,
        mountinfo: String,
    }

    impl FsTypes for Fake {
        fn fs_type(&self, path: &Path) -> libisolab::Result<FsType> {
            let found = self.types.iter().find(|(known, _)| known == path);
            Ok(found.map_or(FsType::Other(0xef53), |(_, fs_type)| *fs_type))
        }

        fn mountinfo(&self) -> libisolab::Result<String> {
            Ok(self.mountinfo.clone())
        }
    }

    fn nothing() -> Fake {
        Fake { types: Vec::new(), mountinfo: String::new() }
    }

    /// A fake machine under `root`, whose filesystems are `filesystems`.
    fn machine<'a>(root: &Path, filesystems: &'a Fake) -> Machine<'a> {
        Machine {
            root: root.to_path_buf(),
            euid: 0,
            kernel_release: "6.1.0-18-amd64".into(),
            filesystems,
            path: "/usr/bin:/bin".into(),
        }
    }

    const PROC_CGROUPS: &str = "\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t1\t1
cpu\t1\t1\t1
memory\t4\t18\t1
net_cls\t0\t1\t1
pids\t8\t1\t1
hugetlb\t0\t1\t0
";

    /// v1 hierarchies for `controllers` under `<root>/sys/fs/cgroup`, and `unified/` if asked.
    fn v1_machine(root: &Path, controllers: &[&str], unified: bool) -> Fake {
        let base = root.join("sys/fs/cgroup");
        let mut types = vec![(base.clone(), FsType::Tmpfs)];
        let mut mountinfo = format!("31 23 0:28 / {} rw - tmpfs tmpfs rw\n", base.display());
        for (index, controller) in controllers.iter().enumerate() {
            let path = base.join(controller);
            fs::create_dir_all(&path).unwrap();
            mountinfo.push_str(&format!(
                "{} 31 0:{} / {} rw - cgroup cgroup rw,{controller}\n",
                40 + index,
                40 + index,
                path.display()
            ));
            types.push((path, FsType::Cgroup1));
        }
        if unified {
            write(root, "sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n");
            write(root, "sys/fs/cgroup/unified/cgroup.subtree_control", "");
            let path = base.join("unified");
            mountinfo
                .push_str(&format!("60 31 0:60 / {} rw - cgroup2 cgroup2 rw\n", path.display()));
            types.push((path, FsType::Cgroup2));
        }
        Fake { types, mountinfo }
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_release("6.1.0-18-amd64"), Some((6, 1, 0)));
        assert_eq!(parse_kernel_release("6.18.44-fc-v782"), Some((6, 18, 44)));
        assert_eq!(parse_kernel_release("5.4"), Some((5, 4, 0)));
        assert_eq!(parse_kernel_release("weird"), None);
        assert_eq!(check_kernel("6.1.0").level, Level::Ok);
        assert_eq!(check_kernel("4.19.0-26-amd64").level, Level::Warn);
    }

    #[test]
    fn hybrid_is_tmpfs_with_cgroup2_at_unified() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(root, "proc/cgroups", PROC_CGROUPS);
        let fake = v1_machine(root, &["cpuset", "cpu", "memory", "pids"], true);
        let machine = machine(root, &fake);
        let (layout, hierarchy) = detect_cgroups(&machine);
        assert_eq!(layout.version, CgroupVersion::Hybrid);
        assert_eq!(layout.v1_controllers, ["cpuset", "cpu", "memory", "pids"]);
        assert_eq!(layout.v2_controllers, ["hugetlb"]);
        assert_eq!(layout.disabled, ["hugetlb"]);
        let findings = check_cgroups(&layout);
        assert!(findings.iter().all(|f| f.level == Level::Ok), "{findings:?}");
        assert_eq!(findings[1].found, "memory, pids, cpu on v1");
        // No rootless limits on v1: say so, and how to get cgroup v2.
        let rootless = check_delegation(&machine, &hierarchy.unwrap());
        assert_eq!(rootless.level, Level::Warn);
        assert!(rootless.found.contains("cannot be delegated"), "{rootless:?}");
        assert!(rootless.fix.unwrap().contains("systemd.unified_cgroup_hierarchy=1"));
    }

    #[test]
    fn v1_without_unified() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "proc/cgroups", PROC_CGROUPS);
        let fake = v1_machine(root.path(), &["memory"], false);
        assert_eq!(detect_cgroups(&machine(root.path(), &fake)).0.version, CgroupVersion::V1);
    }

    /// A cgroup2 mount at `<root>/sys/fs/cgroup` offering `controllers`.
    fn v2_machine(root: &Path, controllers: &str) -> Fake {
        write(root, "sys/fs/cgroup/cgroup.controllers", controllers);
        write(root, "sys/fs/cgroup/cgroup.subtree_control", "");
        Fake {
            types: vec![(root.join("sys/fs/cgroup"), FsType::Cgroup2)],
            mountinfo: String::new(),
        }
    }

    #[test]
    fn v2_reads_cgroup_controllers_and_names_whats_missing() {
        let root = tempfile::tempdir().unwrap();
        let fake = v2_machine(root.path(), "cpuset cpu io memory\n");
        write(
            root.path(),
            "proc/cgroups",
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\npids\t0\t1\t0\n",
        );
        let (layout, _) = detect_cgroups(&machine(root.path(), &fake));
        assert_eq!(layout.version, CgroupVersion::V2);
        assert!(layout.has("memory") && !layout.has("pids"));
        let findings = check_cgroups(&layout);
        let pids = findings.iter().find(|f| f.found.starts_with("no pids")).unwrap();
        assert_eq!(pids.level, Level::Fail);
        assert!(pids.fix.as_deref().unwrap().contains("cgroup_disable=pids"), "{pids:?}");
    }

    #[test]
    fn v2_delegation_for_a_user() {
        let root = tempfile::tempdir().unwrap();
        let fake = v2_machine(root.path(), "cpuset cpu io memory pids\n");
        let scope = "user.slice/user-1000.slice/user@1000.service/app.slice/run-1.scope";
        write(root.path(), "proc/self/cgroup", &format!("0::/{scope}\n"));
        let service =
            root.path().join("sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service");
        let delegated =
            [service.clone(), service.join("app.slice"), service.join("app.slice/run-1.scope")];
        for dir in &delegated {
            write(dir, "cgroup.procs", "");
            write(dir, "cgroup.subtree_control", "");
        }
        write(&service, "cgroup.controllers", "cpu memory pids\n");
        // The delegated subtree belongs to the user: as root, hand it to uid 1000; as anyone
        // else, it is ours already.
        let user = if Uid::effective().is_root() {
            for dir in &delegated {
                for entry in ["", "cgroup.procs", "cgroup.subtree_control"] {
                    std::os::unix::fs::chown(dir.join(entry), Some(1000), Some(1000)).unwrap();
                }
            }
            1000
        } else {
            Uid::effective().as_raw()
        };
        let hierarchy = cgroups::detect(&root.path().join("sys/fs/cgroup"), &fake).unwrap();
        let mut as_user = machine(root.path(), &fake);
        as_user.euid = user;
        let finding = check_delegation(&as_user, &hierarchy);
        assert_eq!(finding.level, Level::Ok, "{finding:?}");
        assert!(finding.found.ends_with("user@1000.service"), "{finding:?}");

        // Without the cpu controller in the subtree: a warning that says how to delegate it.
        write(&service, "cgroup.controllers", "memory pids\n");
        let finding = check_delegation(&as_user, &hierarchy);
        assert_eq!(finding.level, Level::Warn, "{finding:?}");
        assert!(finding.found.ends_with("without the cpu controller(s)"), "{finding:?}");

        // A user who owns nothing there: how to get a delegated scope.
        as_user.euid = user + 1;
        let finding = check_delegation(&as_user, &hierarchy);
        assert_eq!(finding.fix.as_deref(), Some(rootless::HOW_TO_DELEGATE));
        // And root is told how other users get one.
        as_user.euid = 0;
        assert!(check_delegation(&as_user, &hierarchy).found.contains("Delegate=yes"));
    }

    #[test]
    fn nothing_mounted_fails_with_the_mount_command() {
        let root = tempfile::tempdir().unwrap();
        let fake = nothing();
        let (layout, hierarchy) = detect_cgroups(&machine(root.path(), &fake));
        assert_eq!(layout.version, CgroupVersion::Missing);
        assert!(hierarchy.is_none());
        let findings = check_cgroups(&layout);
        assert_eq!(findings[0].fix.as_deref(), Some("mount -t cgroup2 none /sys/fs/cgroup"));
    }

    #[test]
    fn user_namespace_switches() {
        let root = tempfile::tempdir().unwrap();
        let kinds = nothing();
        write(root.path(), "proc/sys/user/max_user_namespaces", "0\n");
        write(root.path(), "proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1\n");
        let findings = check_user_namespaces(&machine(root.path(), &kinds));
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0].level, Level::Fail);
        assert_eq!(findings[0].fix.as_deref(), Some("sysctl -w user.max_user_namespaces=15000"));
        assert_eq!(findings[1].level, Level::Warn);
        assert_eq!(
            findings[1].fix.as_deref(),
            Some("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
        );

        write(root.path(), "proc/sys/user/max_user_namespaces", "96364\n");
        write(root.path(), "proc/sys/kernel/apparmor_restrict_unprivileged_userns", "0\n");
        write(root.path(), "proc/sys/kernel/unprivileged_userns_clone", "1\n");
        let findings = check_user_namespaces(&machine(root.path(), &kinds));
        assert_eq!(
            findings,
            [Finding::ok("user namespaces", "allowed: user.max_user_namespaces = 96364")]
        );
    }

    #[test]
    fn user_ids_name_the_pool_and_its_free_slots() {
        let root = tempfile::tempdir().unwrap();
        let kinds = nothing();
        write(root.path(), "etc/subuid", "alice:100000:65536\nroot:200000:131072\n");
        write(root.path(), "etc/subgid", "root:200000:131072\n");
        let found = check_user_ids(&machine(root.path(), &kinds));
        let pool = "root's range in /etc/subuid (200000-331071) and /etc/subgid (200000-331071)";
        assert_eq!(found, Finding::ok("user namespace ids", format!("{pool}: 2 of 2 slots free")));
    }

    #[test]
    fn overlay_listed_loadable_or_missing() {
        let root = tempfile::tempdir().unwrap();
        let kinds = nothing();
        let machine = machine(root.path(), &kinds);
        write(root.path(), "proc/filesystems", "nodev\tsysfs\n\text4\n");
        assert_eq!(check_overlay(&machine).level, Level::Fail);
        fs::create_dir_all(root.path().join("lib/modules/6.1.0-18-amd64/kernel/fs/overlayfs"))
            .unwrap();
        let loadable = check_overlay(&machine);
        assert_eq!(
            (loadable.level, loadable.fix.as_deref()),
            (Level::Warn, Some("modprobe overlay"))
        );
        write(root.path(), "proc/filesystems", "nodev\tsysfs\nnodev\toverlay\n");
        assert_eq!(check_overlay(&machine).level, Level::Ok);
    }

    #[test]
    fn busybox_must_be_static() {
        let root = tempfile::tempdir().unwrap();
        let kinds = nothing();
        let machine = machine(root.path(), &kinds);
        let missing = check_busybox(&machine);
        assert_eq!(
            (missing.level, missing.fix.as_deref()),
            (Level::Fail, Some("apt-get install busybox-static"))
        );

        // This test binary is dynamically linked (it has a PT_INTERP).
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        write(root.path(), "bin/busybox", "");
        fs::write(root.path().join("bin/busybox"), &me).unwrap();
        let dynamic = check_busybox(&machine);
        assert_eq!(dynamic.level, Level::Fail);
        assert!(dynamic.found.starts_with("/bin/busybox is dynamically linked"), "{dynamic:?}");

        fs::write(root.path().join("bin/busybox"), "#!/bin/sh\n").unwrap();
        assert!(check_busybox(&machine).found.ends_with("is not an ELF executable"));
    }

    #[test]
    fn render_shows_fixes_stages_and_a_verdict() {
        let findings = vec![
            Finding::ok("user", "root (uid 0)"),
            Finding::problem(Level::Warn, "overlayfs", "not loaded yet", "modprobe overlay"),
        ];
        let stages = vec![
            StageFinding::new(1, Runs::Ok, "chroot, as root", None),
            StageFinding::new(4, Runs::Limited, "no overlayfs", Some("modprobe overlay")),
        ];
        let verdict = verdict(&findings, &stages, &[], 0);
        let text = render(&findings, &stages, &verdict);
        assert!(text.contains("ok    user       root (uid 0)\n"), "{text}");
        let problem = "warn  overlayfs  not loaded yet\n                 fix: modprobe overlay\n";
        assert!(text.contains(problem), "{text}");
        assert!(
            text.contains("\nwhat runs for root:\nok       stage 1  chroot, as root\n"),
            "{text}"
        );
        let limited = "limited  stage 4  no overlayfs\n                  fix: modprobe overlay\n";
        assert!(text.contains(limited), "{text}");
        assert!(
            text.ends_with(
                "ready for root: stages 1 and 4 run (4 limited) (1 warning); see the fixes above\n"
            ),
            "{text}"
        );
    }

    /// The findings of a fake machine, but for busybox: a fake tree has no static one.
    fn examine_but_busybox(machine: &Machine) -> Vec<Finding> {
        examine(machine).into_iter().filter(|f| f.topic != "busybox").collect()
    }

    /// A non-root user on the course's kind of machine: a hybrid host (controllers on v1),
    /// user namespaces allowed, overlayfs there, a recent kernel.
    fn hybrid_machine_for_nobody(root: &Path) -> Fake {
        write(root, "proc/cgroups", PROC_CGROUPS);
        write(root, "proc/sys/user/max_user_namespaces", "96364\n");
        write(root, "proc/filesystems", "nodev\tsysfs\nnodev\toverlay\n");
        v1_machine(root, &["cpuset", "cpu", "memory", "pids"], true)
    }

    #[test]
    fn without_root_stages_2_to_5_run_and_stage_1_does_not() {
        let root = tempfile::tempdir().unwrap();
        let fake = hybrid_machine_for_nobody(root.path());
        let mut nobody = machine(root.path(), &fake);
        nobody.euid = 65534;
        let stages = check_stages(&nobody);
        let runs: Vec<(u8, Runs)> = stages.iter().map(|s| (s.stage, s.runs)).collect();
        assert_eq!(
            runs,
            [
                (1, Runs::No),
                (2, Runs::Ok),
                (3, Runs::Limited),
                (4, Runs::Limited),
                (5, Runs::Limited)
            ],
            "{stages:#?}"
        );
        assert!(stages[0].fix.as_deref().unwrap().starts_with("sudo stage1-chroot"));
        assert!(stages[2].found.contains("--cgroups optional"), "{stages:#?}");
        assert!(stages[2].fix.as_deref().unwrap().contains("systemd.unified_cgroup_hierarchy=1"));
        // Nothing fails: not being root is no failure, and the rootless limits are stage 3's.
        let findings = examine_but_busybox(&nobody);
        assert!(findings.iter().all(|f| f.level != Level::Fail), "{findings:#?}");
        assert!(findings.iter().all(|f| f.topic != "rootless limits"), "{findings:#?}");
        let ready = verdict(&findings, &stages, &[], 65534);
        assert!(ready.ready, "{ready:?}");
        assert_eq!(
            ready.line,
            "ready for uid 65534: stages 2, 3, 4 and 5 run (3, 4 and 5 limited), stage 1 does \
             not; see the fixes above"
        );
        assert!(verdict(&findings, &stages, &[2, 4], 65534).ready);
        let asked_for_1 = verdict(&findings, &stages, &[1, 2], 65534);
        assert!(!asked_for_1.ready);
        assert_eq!(
            asked_for_1.line,
            "not ready for uid 65534: stage 1 does not run; see the fixes above"
        );
        // Root, on the same machine, runs them all.
        let as_root = machine(root.path(), &fake);
        assert!(check_stages(&as_root).iter().all(|s| s.runs == Runs::Ok));
    }

    #[test]
    fn without_unprivileged_user_namespaces_nothing_runs_without_root() {
        let root = tempfile::tempdir().unwrap();
        let fake = hybrid_machine_for_nobody(root.path());
        write(root.path(), "proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1\n");
        let mut nobody = machine(root.path(), &fake);
        nobody.euid = 1000;
        let stages = check_stages(&nobody);
        assert!(stages.iter().all(|s| s.runs == Runs::No), "{stages:#?}");
        assert!(stages[1].fix.as_deref().unwrap().starts_with("sysctl -w kernel.apparmor"));
        let verdict = verdict(&examine_but_busybox(&nobody), &stages, &[], 1000);
        assert!(!verdict.ready);
        assert_eq!(verdict.line, "not ready for uid 1000: no stage runs; see the fixes above");
        // Root still runs every stage: those switches only stop unprivileged users.
        assert!(check_stages(&machine(root.path(), &fake)).iter().all(|s| s.runs == Runs::Ok));
    }

    #[test]
    fn rootless_overlay_needs_linux_5_11() {
        let root = tempfile::tempdir().unwrap();
        let fake = hybrid_machine_for_nobody(root.path());
        let mut nobody = machine(root.path(), &fake);
        nobody.euid = 1000;
        nobody.kernel_release = "5.10.0-28-amd64".into();
        let stages = check_stages(&nobody);
        assert_eq!(stages[3].runs, Runs::Limited);
        assert!(stages[3].found.contains("only --storage copy"), "{stages:?}");
        // Images have no copy driver to fall back on.
        assert_eq!(stages[4].runs, Runs::No);
        assert!(stages[4].found.starts_with("images need overlayfs"), "{stages:?}");
        nobody.kernel_release = "5.11.0".into();
        assert!(!check_stages(&nobody)[3].found.contains("--storage copy"));
        assert_eq!(check_stages(&nobody)[4].runs, Runs::Limited);
    }

    #[test]
    fn a_failed_check_is_not_ready_for_anyone() {
        let findings = vec![Finding::problem(Level::Fail, "busybox", "not found", "apt-get")];
        let stages = vec![StageFinding::new(2, Runs::Ok, "rootless", None)];
        let verdict = verdict(&findings, &stages, &[], 0);
        assert!(!verdict.ready);
        assert_eq!(verdict.line, "not ready: 1 check fails; run the fixes above");
    }
}
