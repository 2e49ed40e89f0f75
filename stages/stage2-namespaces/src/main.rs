//! Stage 2: namespaces — what a process can see.
//!
//! The jail of stage 1, but the kernel now gives the contained process its own view of the
//! world: its own mount table with the rootfs as `/` (pivot_root, not chroot), its own process
//! ids (it is PID 1), hostname, IPC objects, network devices, user ids, cgroup root and clocks.
//! This binary plans every call it will make, clones a child into new namespaces, prepares
//! from outside what only the parent can (id maps, a veth pair), and lets the child build its
//! view and exec the command. Chapter: `book/src/stage2-namespaces.md`.

use std::cell::Cell;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use libisolab::chroot::{self, DirId};
use libisolab::init;
use libisolab::namespaces::{self, Namespaces};
use libisolab::network::{self, Mode, Subnet};
use libisolab::process::{self, Failure};
use libisolab::user::User;
use libisolab::{cli, exit, idmap, Error};
use nix::unistd::Pid;

use libisolab::container::{self, Plan, Request};

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
struct ContainerArgs {
    /// The directory that becomes the command's /
    #[arg(long, value_name = "DIR")]
    rootfs: PathBuf,
    /// Namespaces to create: a comma-separated list of mnt,uts,ipc,pid,net,user,cgroup,time,
    /// or none [default: all that this kernel has]
    #[arg(long, value_name = "LIST", value_parser = parse_namespaces)]
    ns: Option<Namespaces>,
    /// The container's hostname [default: isolab-<6 random hex digits>]
    #[arg(long, value_name = "NAME", value_parser = parse_hostname)]
    hostname: Option<String>,
    /// The network: none (no device up), loopback (lo up), veth (lo, and eth0 paired with
    /// the host) [default: loopback]
    #[arg(long, value_name = "MODE", value_parser = parse_net)]
    net: Option<Mode>,
    /// The subnet for --net veth (host .1, container .2) [default: a free /30 from
    /// 10.200.0.0/16]
    #[arg(long, value_name = "CIDR", value_parser = parse_subnet)]
    subnet: Option<Subnet>,
    /// As root with a user namespace: the host uid/gid that root inside is (0-65535 inside
    /// map to BASE..BASE+65535)
    #[arg(long, value_name = "BASE", default_value_t = idmap::DEFAULT_BASE,
          value_parser = container::parse_map_base)]
    map_base: u32,
    /// Run the command as this user inside (numbers: UID or UID:GID), not as root
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    user: Option<User>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    container: ContainerArgs,
    /// Run a small init as PID 1 that forwards signals to the command and reaps orphans
    #[arg(long)]
    init: bool,
    /// The directory inside the container to start in
    #[arg(long, value_name = "PATH", default_value = "/")]
    workdir: PathBuf,
    /// Add or override an environment variable (the command gets only PATH, HOME and TERM)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(OsString, OsString)>,
    /// Print the plan (every namespace, map, mount and link) and do nothing
    #[arg(long)]
    dry_run: bool,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn text_error(error: Error) -> String {
    error.to_string()
}

fn parse_namespaces(text: &str) -> Result<Namespaces, String> {
    text.parse().map_err(text_error)
}

fn parse_hostname(text: &str) -> Result<String, String> {
    libisolab::uts::check_hostname(text).map(|()| text.to_string()).map_err(text_error)
}

fn parse_net(text: &str) -> Result<Mode, String> {
    text.parse().map_err(text_error)
}

fn parse_subnet(text: &str) -> Result<Subnet, String> {
    text.parse().map_err(text_error)
}

fn parse_user(text: &str) -> Result<User, String> {
    text.parse().map_err(text_error)
}

fn parse_env(text: &str) -> Result<(OsString, OsString), String> {
    process::parse_env(text).map_err(text_error)
}

fn main() -> std::process::ExitCode {
    let cli: Cli = match cli::parse("stage2-namespaces") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Verb::Run(args) => run(args),
        Verb::Escape(args) => escape(args),
    };
    cli::finish("stage2-namespaces", result)
}

fn request(args: ContainerArgs, argv: Vec<OsString>) -> Result<Request, Error> {
    container::check_subnet_use(args.net, args.subnet)?;
    Ok(Request {
        rootfs: args.rootfs,
        namespaces: args.ns,
        hostname: args.hostname,
        net: args.net,
        subnet: args.subnet,
        map_base: args.map_base,
        user: args.user,
        init: false,
        workdir: PathBuf::from("/"),
        env: Vec::new(),
        argv,
    })
}

// ANCHOR: run
/// Runs the command in new namespaces and returns its exit code.
fn run(args: RunArgs) -> Result<u8, Failure> {
    // 1. The plan: every call we will make, checked and listed before the first one.
    let mut request = request(args.container, args.command)?;
    (request.init, request.workdir, request.env) = (args.init, args.workdir, args.env);
    let plan = Plan::from(request)?;
    if args.dry_run {
        let _ = write!(std::io::stdout(), "{plan}");
        if let Err(refused) = plan.check_privileges() {
            let _ = writeln!(
                std::io::stdout(),
                "# as uid {}, this would be refused: {refused}",
                nix::unistd::Uid::effective()
            );
        }
        return Ok(0);
    }
    plan.check_privileges()?;

    // 2. clone(2) into the namespaces. The parent writes the id maps and creates the veth
    //    pair while the child waits; then the child builds its view (mounts, hostname,
    //    network, clocks, user) and execs the command, or forks it under our init.
    let started = Cell::new(None);
    let spawned = namespaces::spawn(
        plan.namespaces,
        |pid| {
            started.set(Some(pid));
            Ok(plan.apply_outside(pid)?)
        },
        |pipe| {
            plan.apply_inside()?;
            plan.start_command(pipe)
        },
    );
    let child = spawned.inspect_err(|_| remove_host_end(&plan, started.get()))?;

    // 3. Wait, passing on signals (and saying so when PID 1 will drop one), then clean up.
    let child_pid = child.pid;
    let mut warned = false;
    let status = process::wait_forwarding_signals_and(child, |pid, signal| {
        if plan.command_is_pid1() && !warned && init::pid1_drops(pid, signal) {
            eprintln!(
                "stage2-namespaces: {} not delivered: the command is PID 1 of its pid \
                 namespace and has no handler for it (man 7 pid_namespaces); run it with --init",
                signal.as_str()
            );
            warned = true;
        }
    });
    remove_host_end(&plan, Some(child_pid));
    Ok(exit::code_for(status?))
}
// ANCHOR_END: run

/// Deletes the host's end of the veth pair, if there is one (the peer goes with it). When the
/// container's network namespace has died the kernel has removed both already.
fn remove_host_end(plan: &Plan, child: Option<Pid>) {
    if let (Some(_), Some(pid)) = (plan.veth(), child) {
        let _ = network::delete_link(&network::host_link_name(pid));
    }
}

// ANCHOR: escape
/// Builds the same container as `run`, then has the child try stage 1's escape and report.
fn escape(args: ContainerArgs) -> Result<u8, Failure> {
    let plan = Plan::from(request(args, Vec::new())?)?;
    plan.check_privileges()?;
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
