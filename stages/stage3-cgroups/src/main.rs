//! Stage 3: cgroups — what a process can use.
//!
//! Stage 2's container, now in a control group of its own: the kernel counts the memory, CPU
//! time and processes of everything the command starts, and enforces the limits given on the
//! command line (`--memory`, `--cpus`, `--pids`…). This binary plans the cgroup with the rest
//! of the container, makes it before the clone, moves the child in before the child may run
//! anything, reports what the command used once it has exited, and removes the cgroup again
//! on every way out. Chapter: `book/src/stage3-cgroups.md`.

use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use libisolab::cgroups::{self, Backend, Cgroup, ContainerId, Hierarchy, Kernel};
use libisolab::cgroups::{LimitArgs, Limits, Machine, Usage};
use libisolab::container::{CommandArgs, ContainerArgs, Inside, Plan, Request};
use libisolab::init;
use libisolab::process::{self, Failure};
use libisolab::{cli, exit, namespaces, Error};
use nix::unistd::Uid;

const PROGRAM: &str = "stage3-cgroups";

const EXAMPLES: &str = "\
Examples:
  rootfs-builder busybox rootfs
  stage3-cgroups run --rootfs rootfs --memory 64M -- /bin/sh        # a shell with 64 MiB
  stage3-cgroups run --rootfs rootfs --memory 32M -- dd if=/dev/zero of=/dev/null bs=64M count=1
                                                                  # killed: out of memory
  stage3-cgroups run --rootfs rootfs --pids 16 -- /isolab/probe --human --check fork-bomb
  stage3-cgroups run --rootfs rootfs --cpus 0.2 -- /isolab/probe --human --check cpu-share
  stage3-cgroups run --rootfs rootfs --json -- /bin/true          # the report as JSON
  stage3-cgroups run --rootfs rootfs --memory 64M --dry-run -- /bin/sh   # the plan only
  stage3-cgroups run --rootfs rootfs --cgroup-root /sys/fs/cgroup/unified --dry-run -- /bin/sh
                                                  # a hybrid host's cgroup v2 mount instead
  stage3-cgroups gc                                               # remove stale cgroups

On exit, a report of what the command used goes to stderr (to stdout with --json): peak
memory, CPU time, throttling, OOM kills, peak processes. The cgroup is then removed.

Exit status: the command's own; 125 if stage3-cgroups itself failed, 126 if the command
cannot be executed, 127 if it is not found in the rootfs, 128+N if it was killed by signal N
(137 when the OOM killer ended it: the report says so).";

/// Stage 3 of isolab: run a command in new namespaces and a cgroup of its own.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Run a command in new namespaces and a cgroup of its own, with DIR as its root
    #[command(after_help = EXAMPLES)]
    Run(Box<RunArgs>),
    /// Remove the cgroups that killed runtimes left behind, saying what was removed
    #[command(after_help = "Examples:\n  stage3-cgroups gc\n  isolab gc        # the same")]
    Gc,
}

/// What to do when this user cannot have a cgroup (`--cgroups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CgroupsWhen {
    /// No cgroup, no run: refuse, and say how to get one
    Required,
    /// No cgroup: run without limits and without a report, and say so
    Optional,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    container: ContainerArgs,
    #[command(flatten)]
    limits: LimitArgs,
    /// Without root, limits need a cgroup v2 subtree delegated to you (`isolab doctor` says
    /// how to get one): required refuses to run without it, optional runs without limits
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = CgroupsWhen::Required)]
    cgroups: CgroupsWhen,
    /// Where the host's cgroups are mounted; on a hybrid host, /sys/fs/cgroup/unified picks
    /// its cgroup v2 mount
    #[arg(long, value_name = "DIR", default_value = CGROUP_ROOT)]
    cgroup_root: PathBuf,
    /// Print the report of what the command used as JSON, on stdout
    #[arg(long)]
    json: bool,
    /// Print the plan (every namespace, map, mount, link and cgroup file) and do nothing
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    command: CommandArgs,
}

fn main() -> std::process::ExitCode {
    let cli: Cli = match cli::parse(PROGRAM) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Verb::Run(args) => run(*args),
        Verb::Gc => gc(),
    };
    cli::finish(PROGRAM, result)
}

// ANCHOR: run
/// Runs the command in new namespaces and a cgroup of its own, and returns its exit code.
fn run(args: RunArgs) -> Result<u8, Failure> {
    // 1. The plan: every call we will make, checked and listed before the first one; now
    //    also the limits, and every mkdir and write that makes the cgroup.
    let mut plan = Plan::from(Request::new(args.container, Some(args.command))?)?;
    let limits = Limits::parse(&args.limits, &Machine::current()?)?;
    let host = plan_cgroup(&mut plan, &limits, &args.cgroup_root, args.cgroups, args.dry_run)?;
    if args.dry_run {
        print_plan(&plan, host.as_ref());
        return Ok(0);
    }
    plan.check_privileges()?;

    // 2. The cgroup: the stale ones of killed runtimes go first, then ours is made. The
    //    guard removes it again however this function is left.
    let cgroup = host.map(|host| create_cgroup(host, &plan)).transpose()?;

    // 3. clone(2) into the namespaces. The parent moves the child into its cgroup, writes
    //    the id maps and creates the veth pair while the child waits; then the child makes
    //    its cgroup namespace, builds its view and execs the command.
    let started = Cell::new(None);
    let start_time = Instant::now();
    let spawned = namespaces::spawn(
        plan.clone_namespaces(),
        |pid| {
            started.set(Some(pid));
            Ok(plan.apply_outside(pid)?)
        },
        |pipe| {
            plan.apply_inside()?;
            plan.start_command(pipe)
        },
    );
    let child = spawned.inspect_err(|_| plan.remove_host_end(started.get()))?;

    // 4. Wait, passing on signals (and saying so when PID 1 will drop one), then clean up.
    let child_pid = child.pid;
    let mut warned = false;
    let status = process::wait_forwarding_signals_and(child, |pid, signal| {
        if plan.command_is_pid1() && !warned && init::pid1_drops(pid, signal) {
            eprintln!(
                "{PROGRAM}: {} not delivered: the command is PID 1 of its pid namespace and has \
                 no handler for it (man 7 pid_namespaces); run it with --init",
                signal.as_str()
            );
            warned = true;
        }
    });
    plan.remove_host_end(Some(child_pid));
    let code = exit::code_for(status?);

    // 5. The report: what the cgroup counted; then the cgroup is removed.
    if let Some(cgroup) = cgroup {
        report(cgroup, code, start_time.elapsed(), args.json);
    }
    Ok(code)
}
// ANCHOR_END: run

/// Where the host's cgroups are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The host's cgroups, and the backend that makes this container's.
struct Host {
    hierarchy: Hierarchy,
    backend: Box<dyn Backend>,
}

// ANCHOR: plan_cgroup
/// Finds the host's cgroups (by statfs), opens the backend this user may use, checks the
/// limits against it and adds the cgroup to the container's plan. `None` when this user
/// cannot have a cgroup and `--cgroups optional` says to run without one.
///
/// A dry run plans as root would when the user may not (and says so): the plan is printable
/// by anyone.
fn plan_cgroup(
    plan: &mut Plan,
    limits: &Limits,
    cgroup_root: &Path,
    when: CgroupsWhen,
    dry_run: bool,
) -> Result<Option<Host>, Failure> {
    let opened = cgroups::detect(cgroup_root, &Kernel).and_then(|hierarchy| {
        let user = Uid::effective();
        let backend = match cgroups::open(&hierarchy, user, Rc::new(Kernel)) {
            Err(_) if dry_run && !user.is_root() => {
                cgroups::open(&hierarchy, Uid::from_raw(0), Rc::new(Kernel))?
            }
            opened => opened?,
        };
        Ok(Host { hierarchy, backend })
    });
    let host = match (opened, when) {
        (Ok(host), _) => host,
        (Err(error), CgroupsWhen::Required) => {
            return Err(Failure {
                code: exit::RUNTIME_ERROR,
                message: format!("{error}; or run without limits: --cgroups optional"),
            })
        }
        (Err(error), CgroupsWhen::Optional) => {
            eprintln!(
                "{PROGRAM}: warning: running without a cgroup, so without limits and without a \
                 report (--cgroups optional): {error}"
            );
            return Ok(None);
        }
    };
    let id = ContainerId::for_this_runtime(container_name(plan))?;
    let cgroup = host.backend.plan(&id, limits)?;
    let view = cgroups::view::mounts(&cgroup, &host.hierarchy);
    plan.add_cgroup(cgroup, view);
    Ok(Some(host))
}
// ANCHOR_END: plan_cgroup

/// The container's name, which its cgroup is named after: its hostname, if it has one.
fn container_name(plan: &Plan) -> &str {
    let hostname = plan.inside.iter().find_map(|step| match step {
        Inside::Hostname(name) if !name.starts_with('.') => Some(name.as_str()),
        _ => None,
    });
    hostname.unwrap_or("container")
}

/// Prints the plan (`--dry-run`), the runtime's pid as `<runtime pid>`: a real run has
/// another. Says, for a user without the privileges, what would be refused.
fn print_plan(plan: &Plan, host: Option<&Host>) {
    let mut text = plan.to_string();
    if let Some(cgroup) = &plan.cgroup {
        let id = cgroup.id.to_string();
        text = text.replace(&id, &format!("{}-<runtime pid>", cgroup.id.name()));
    }
    let mut out = std::io::stdout();
    let _ = write!(out, "{text}");
    let user = Uid::effective();
    if let Err(refused) = plan.check_privileges() {
        let _ = writeln!(out, "# as uid {user}, this would be refused: {refused}");
    }
    if let Some(host) = host {
        if let Err(refused) = cgroups::open(&host.hierarchy, user, Rc::new(Kernel)) {
            let _ = writeln!(out, "# as uid {user}, the cgroup would be refused: {refused}");
        }
    }
}

/// Removes what killed runtimes left behind (one line on stderr for each), then makes the
/// container's cgroup.
fn create_cgroup(host: Host, plan: &Plan) -> Result<Cgroup, Failure> {
    let removed = cgroups::gc::gc_for(&host.hierarchy, Uid::effective(), Rc::new(Kernel));
    match removed {
        Ok(removed) => {
            for stale in removed {
                eprintln!("{PROGRAM}: gc: {stale}");
            }
        }
        // Someone else's mess must not stop this container: `isolab gc` can try again.
        Err(error) => eprintln!("{PROGRAM}: warning: gc of stale cgroups failed: {error}"),
    }
    let cgroup = plan.cgroup.clone().ok_or_else(|| Error::Invalid("no cgroup planned".into()))?;
    Ok(Cgroup::create(host.backend, cgroup)?)
}

/// `--json`: the report, with the cgroup it was read from and how the command ended.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    cgroup: String,
    version: &'a str,
    exit_code: u8,
    oom_killed: bool,
    elapsed_usec: u64,
    #[serde(flatten)]
    usage: &'a Usage,
}

// ANCHOR: report
/// Reads what the cgroup counted, removes it, and prints the report: on stderr, beneath the
/// command's own output, or as JSON on stdout. An OOM kill is said in words.
fn report(cgroup: Cgroup, code: u8, elapsed: Duration, json: bool) {
    let name = format!("{}/{}", cgroups::PARENT, cgroup.id());
    let version = cgroup.version();
    let usage = match cgroup.finish() {
        Ok((usage, _removed)) => usage,
        Err(error) => {
            // The command ran: its code stands. What is left, `isolab gc` removes.
            eprintln!("{PROGRAM}: warning: cannot report on or remove cgroup {name}: {error}");
            return;
        }
    };
    let oom_killed = code == 128 + libc::SIGKILL as u8 && usage.oom_killed();
    if json {
        let report = JsonReport {
            cgroup: name,
            version: match version {
                cgroups::Version::V1 => "v1",
                cgroups::Version::V2 => "v2",
            },
            exit_code: code,
            oom_killed,
            elapsed_usec: elapsed.as_micros() as u64,
            usage: &usage,
        };
        if let Ok(text) = serde_json::to_string_pretty(&report) {
            let _ = writeln!(std::io::stdout(), "{text}");
        }
        return;
    }
    // Written, not printed: a closed stderr must not turn the report into a panic.
    let mut stderr = std::io::stderr();
    if oom_killed {
        let _ = writeln!(stderr, "{PROGRAM}: {}", usage.describe_oom());
    }
    for line in usage.to_string().lines() {
        let _ = writeln!(stderr, "{PROGRAM}: {line}");
    }
}
// ANCHOR_END: report

// ANCHOR: gc
/// `gc`: removes the cgroups of runtimes that no longer run, and says what it removed.
fn gc() -> Result<u8, Failure> {
    let hierarchy = cgroups::detect(Path::new(CGROUP_ROOT), &Kernel)?;
    let removed = cgroups::gc::gc_for(&hierarchy, Uid::effective(), Rc::new(Kernel))?;
    if removed.is_empty() {
        println!("no stale isolab cgroups");
    }
    for stale in removed {
        println!("{stale}");
    }
    Ok(0)
}
// ANCHOR_END: gc
