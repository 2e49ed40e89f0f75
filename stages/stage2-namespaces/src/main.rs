//! Stage 2: namespaces — what a process can see.
//!
//! The jail of stage 1, but the kernel now gives the contained process its own view of the
//! world: its own mount table with the rootfs as `/` (pivot_root, not chroot), its own process
//! ids (it is PID 1), hostname, IPC objects, network devices, user ids, cgroup root and clocks.
//! This binary plans every call it will make, clones a child into new namespaces, prepares
//! from outside what only the parent can (id maps, a veth pair), and lets the child build its
//! view and exec the command. Chapter: `book/src/stage2-namespaces.md`.

use std::cell::Cell;
use std::io::Write;
use std::path::Path;

use clap::{Args, Parser, Subcommand};
use libisolab::chroot::{self, DirId};
use libisolab::init;
use libisolab::namespaces;
use libisolab::process::{self, Failure};
use libisolab::{cli, exit, Error};

use libisolab::container::{CommandArgs, ContainerArgs, Plan, Request};

const PROGRAM: &str = "stage2-namespaces";

const EXAMPLES: &str = "\
Examples:
  rootfs-builder busybox rootfs
  stage2-namespaces run --rootfs rootfs -- /bin/sh                 # a shell in new namespaces
  stage2-namespaces run --rootfs rootfs -- ps                      # it is PID 1, alone
  stage2-namespaces run --rootfs rootfs --hostname box -- hostname
  stage2-namespaces run --rootfs rootfs --ns mnt,pid -- ps         # only two namespaces
  stage2-namespaces run --rootfs rootfs --net veth -- ip addr      # a cable to the host
  stage2-namespaces run --rootfs rootfs --init -- sleep 60         # an init as PID 1
  stage2-namespaces run --rootfs rootfs --dry-run -- /bin/sh       # print the plan only
  stage2-namespaces escape --rootfs rootfs                         # stage 1's escape fails

Exit status: the command's own; 125 if stage2-namespaces itself failed, 126 if the command
cannot be executed, 127 if it is not found in the rootfs, 128+N if it was killed by signal N.";

/// Stage 2 of isolab: run a command in new namespaces.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Run a command in new namespaces with DIR as its root
    #[command(after_help = EXAMPLES)]
    Run(RunArgs),
    /// Try stage 1's chroot escape inside the namespaces (exit 0: escaped, 1: held)
    #[command(after_help = "Examples:\n  stage2-namespaces escape --rootfs rootfs\n  \
                            stage2-namespaces escape --rootfs rootfs --ns none")]
    Escape(ContainerArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    container: ContainerArgs,
    /// Print the plan (every namespace, map, mount and link) and do nothing
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
        Verb::Run(args) => run(args),
        Verb::Escape(args) => escape(args),
    };
    cli::finish(PROGRAM, result)
}

// ANCHOR: run
/// Runs the command in new namespaces and returns its exit code.
fn run(args: RunArgs) -> Result<u8, Failure> {
    // The plan: every call we will make, checked and listed before the first one.
    let mut plan = Plan::from(Request::new(args.container, Some(args.command))?)?;
    if args.dry_run {
        let _ = write!(std::io::stdout(), "{}", plan.dry_run());
        return Ok(0);
    }
    plan.check_privileges()?;
    // The user namespace's host ids: a slot no other container holds, ours until we return
    // (the claim's lock dies with this process, however it ends).
    let _ids = plan.claim_ids()?;

    // The child: clone(2) into the namespaces. The parent writes the id maps and creates the
    // veth pair while the child waits; then the child builds its view (mounts, hostname,
    // network, clocks, user) and execs the command, or forks it under our init.
    let started = Cell::new(None);
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
    Ok(code)
}
// ANCHOR_END: run

// ANCHOR: escape
/// Builds the same container as `run`, then has the child try stage 1's escape and report.
fn escape(args: ContainerArgs) -> Result<u8, Failure> {
    let mut plan = Plan::from(Request::new(args, None)?)?;
    plan.check_privileges()?;
    let _ids = plan.claim_ids()?;
    // Remember what the host's / is, so the child can tell whether it got back there.
    let host_root = DirId::of(Path::new("/"))?;
    let child = namespaces::spawn(
        plan.namespaces,
        |pid| Ok(plan.apply_outside(pid)?),
        |_pipe| {
            plan.apply_inside()?;
            let code = escape_from_inside(host_root)?;
            let _ = std::io::stdout().flush();
            // SAFETY: _exit ends the cloned child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        },
    )?;
    let status = process::wait_forwarding_signals(child)?;
    Ok(exit::code_for(status))
}

/// Runs inside the container: tries the escape, prints each step, and judges the result.
fn escape_from_inside(host_root: DirId) -> Result<i32, Error> {
    let container_root = DirId::of(Path::new("/"))?;
    println!("inside, / is {container_root}; the host's / is {host_root}");
    let scratch = if Path::new("/tmp").is_dir() { Path::new("/tmp") } else { Path::new("/") };
    let attempt = chroot::attempt_escape(scratch);
    print!("{attempt}");
    let now = DirId::of(Path::new("/"))?;
    if now == host_root {
        println!("escaped: / is now the host's root ({now})");
        Ok(0)
    } else if now == container_root {
        println!(
            "the container held: '..' stopped at the container's / ({now}); after pivot_root \
             and the detach of the old root there is nothing above it to climb to"
        );
        Ok(1)
    } else {
        println!("the container held: / is {now}, neither the host's nor the container's");
        Ok(1)
    }
}
// ANCHOR_END: escape
