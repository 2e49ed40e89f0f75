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
use std::os::fd::AsFd;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use libisolab::cgroups::{self, Kernel};
use libisolab::container::cgroup::{self, CgroupArgs};
use libisolab::container::{CommandArgs, ContainerArgs, Plan, Request};
use libisolab::init;
use libisolab::process::Failure;
use libisolab::{cli, exit, namespaces};
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

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    container: ContainerArgs,
    #[command(flatten)]
    cgroup: CgroupArgs,
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
    // The plan: every call we will make, checked and listed before the first one.
    // Now also the limits, and every mkdir and write that makes the cgroup, on the kernel's
    // cgroup filesystem (`Kernel`; the library's tests plan on a fake one).
    let mut plan = Plan::from(Request::new(args.container, Some(args.command))?)?;
    let name = plan.name().to_string();
    let (host, said) =
        cgroup::plan(&mut plan, &args.cgroup, &name, args.dry_run, Kernel)?.into_host();
    cli::say(PROGRAM, &said);
    if args.dry_run {
        let _ = write!(std::io::stdout(), "{}", plan.dry_run());
        return Ok(0);
    }
    plan.check_privileges()?;
    // The user namespace's host ids: a slot no other container holds, ours until we return
    // (the claim's lock dies with this process, however it ends).
    let _ids = plan.claim_ids()?;

    // The cgroup: the stale ones of killed runtimes go first, then ours is made. The guard
    // removes it again however this function is left.
    let created = host.map(|host| cgroup::create(host, &plan)).transpose()?;
    let cgroup = created.map(|created| {
        cli::say(PROGRAM, &created.said);
        created.cgroup
    });

    // The child: clone(2) into the namespaces. The parent writes the id maps and creates the
    // veth pair while the child waits; then the child builds its view (mounts, hostname,
    // network, clocks, user) and execs the command, or forks it under our init.
    // Now on cgroup v2 the child is born in its cgroup (clone3); on v1 the parent moves it in
    // first. The child makes its cgroup namespace before it builds its view.
    let started = Cell::new(None);
    let start_time = Instant::now();
    let born_in = plan.cgroup_to_clone_into().map(cgroup::open_dir).transpose()?;
    let spawned = namespaces::spawn_into(
        plan.clone_namespaces(),
        born_in.as_ref().map(AsFd::as_fd),
        |pid, born_in_cgroup| {
            started.set(Some(pid));
            Ok(plan.apply_outside_born(pid, born_in_cgroup)?)
        },
        |pipe| {
            plan.apply_inside()?;
            plan.start_command(pipe)
        },
    );
    let child = spawned.inspect_err(|_| plan.remove_host_end(started.get()))?;

    // The wait: signals are passed on. A command asked to stop that is still running after
    // --stop-timeout gets SIGKILL, as with `docker stop`; what happens (PID 1 dropping a
    // signal, the SIGKILL) is said as it happens. Then the host's end of the veth pair goes.
    let child_pid = child.pid;
    if !plan.namespaces.contains(namespaces::Namespace::Pid) {
        cli::say(PROGRAM, &[init::without_pid_namespace()]);
    }
    let stopping = init::Stopping::new(plan.stop_timeout, plan.command_is_pid1());
    let status = init::wait_stopping(child, stopping, |said| cli::say(PROGRAM, said));
    plan.remove_host_end(Some(child_pid));
    let code = exit::code_for(status?);

    // The report: what the cgroup counted; then the cgroup is removed.
    if let Some(cgroup) = cgroup {
        let shown = cgroup::finish(cgroup, code, start_time.elapsed(), &args.cgroup);
        if let Some(json) = shown.json {
            let _ = writeln!(std::io::stdout(), "{json}");
        }
        cli::say(PROGRAM, &shown.said);
    }
    Ok(code)
}
// ANCHOR_END: run

// ANCHOR: gc
/// `gc`: removes the cgroups of runtimes that no longer run, and says what it removed. Without
/// root, only the user's own (in their delegated subtree), and where they have none, it says
/// so: the host's cgroups are root's.
fn gc() -> Result<u8, Failure> {
    let hierarchy = cgroups::detect(Path::new(cgroup::CGROUP_ROOT), &Kernel)?;
    let collected = cgroups::gc::gc_for(&hierarchy, Uid::effective(), Rc::new(Kernel))?;
    if let Some(not_theirs) = collected.not_theirs {
        println!("{not_theirs}");
    } else if collected.removed.is_empty() {
        println!("no stale isolab cgroups");
    }
    for stale in collected.removed {
        println!("{stale}");
    }
    Ok(0)
}
// ANCHOR_END: gc
