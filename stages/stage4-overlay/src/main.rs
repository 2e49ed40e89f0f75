//! Stage 4: union mounts — one read-only base, many writable containers.
//!
//! Stage 3's container, but its root is no longer the base rootfs itself: it is an overlay of
//! the container's own writable layer (upper) over the read-only base, mounted inside the
//! container's mount namespace. The base is never written; what a container changes stays in
//! its directory of the container store, which keeps it between runs (`ps`, `diff`, `start`,
//! `rm`, `df`). `--storage copy` is the naive alternative, a full copy of the base per
//! container, kept to measure what overlayfs saves (`bench-storage`). Chapter:
//! `book/src/stage4-overlay.md`.

mod bench;
mod commands;

use std::cell::Cell;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use libisolab::cgroups::{self, Kernel};
use libisolab::container::cgroup::{self, CgroupArgs};
use libisolab::container::{CommandArgs, ContainerArgs, Plan};
use libisolab::init;
use libisolab::process::Failure;
use libisolab::store::runtime::{self, Spec, StoreArgs};
use libisolab::store::{self, Container, Store};
use libisolab::{cli, exit, namespaces, Error};
use nix::unistd::Uid;

const PROGRAM: &str = "stage4-overlay";

const EXAMPLES: &str = "\
Examples:
  rootfs-builder busybox rootfs
  stage4-overlay run --rootfs rootfs --name web -- /bin/sh      # a shell over the read-only base
  stage4-overlay ps                                             # the containers of the store
  stage4-overlay diff web                                       # what web changed: A, C, D
  stage4-overlay diff web --upper                               # its upper: whiteouts, opaque dirs
  stage4-overlay start web                                      # run it again, changes kept
  stage4-overlay rm web                                         # remove it and its layer
  stage4-overlay df                                             # the base vs each container
  stage4-overlay run --rootfs rootfs --rm -- /bin/true          # removed when it ends
  stage4-overlay run --rootfs rootfs --storage copy -- /bin/sh  # a full copy, to compare
  stage4-overlay bench-storage --rootfs rootfs --count 50       # overlay vs copy, measured
  stage4-overlay run --rootfs rootfs --dry-run -- /bin/sh       # the plan only
  stage4-overlay gc                                             # clean up after killed runtimes

The store is --root DIR, else $ISOLAB_ROOT, else /var/lib/isolab for root and
$XDG_DATA_HOME/isolab (~/.local/share/isolab) for other users. Stage 3's limits and report
are all here: on exit, a report of what the command used goes to stderr.

Exit status: the command's own; 125 if stage4-overlay itself failed, 126 if the command
cannot be executed, 127 if it is not found in the rootfs, 128+N if it was killed by signal N
(137 when the OOM killer ended it: the report says so).";

/// Stage 4 of isolab: containers on a union mount over a read-only base, kept in a store.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    /// The container store [default: $ISOLAB_ROOT; /var/lib/isolab as root,
    /// $XDG_DATA_HOME/isolab otherwise]
    #[arg(long, value_name = "DIR", global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Create a container over a read-only base, and run a command in it
    #[command(after_help = EXAMPLES)]
    Run(Box<RunArgs>),
    /// Run a stopped container again: the same command, its changes kept
    Start(NameArgs),
    /// List the containers of the store
    Ps,
    /// What a container changed in its base: A(dded), C(hanged), D(eleted)
    Diff(DiffArgs),
    /// Remove containers and everything they have on disk
    Rm(RmArgs),
    /// The disk the bases take, and each container of its own
    Df,
    /// Create many containers from one base with each storage driver, and print the cost
    BenchStorage(bench::BenchArgs),
    /// Clean up after killed runtimes: stale cgroups, stale container states, leftover
    /// mounts; saying what was done
    #[command(after_help = "Examples:\n  stage4-overlay gc\n  isolab gc        # the same")]
    Gc,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    container: ContainerArgs,
    #[command(flatten)]
    cgroup: CgroupArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// Print the plan (the store's directories, every namespace, map, mount, link and
    /// cgroup file) and do nothing
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    command: CommandArgs,
}

#[derive(Debug, Args)]
struct NameArgs {
    /// The container's name or id
    #[arg(value_name = "NAME")]
    name: String,
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// The container's name or id
    #[arg(value_name = "NAME")]
    name: String,
    /// List the upper directory as overlayfs wrote it (whiteouts, opaque directories)
    #[arg(long)]
    upper: bool,
}

#[derive(Debug, Args)]
struct RmArgs {
    /// The containers' names or ids
    #[arg(value_name = "NAME", required = true)]
    names: Vec<String>,
    /// Kill a running container first (and remove one whose state cannot be read)
    #[arg(long, short)]
    force: bool,
}

fn main() -> std::process::ExitCode {
    let cli: Cli = match cli::parse(PROGRAM) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = open_store(cli.root).and_then(|store| match cli.command {
        Verb::Run(args) => run(*args, &store, None),
        Verb::Start(args) => start(&args.name, &store),
        Verb::Ps => commands::ps(&store),
        Verb::Diff(args) => commands::diff(&store, &args.name, args.upper),
        Verb::Rm(args) => commands::rm(&store, &args.names, args.force),
        Verb::Df => commands::df(&store),
        Verb::BenchStorage(args) => bench::bench_storage(&store, &args),
        Verb::Gc => gc(&store),
    });
    cli::finish(PROGRAM, result)
}

// ANCHOR: run
/// Creates a container over the base (or, for `start`, takes the `stopped` one), runs the
/// command in it, and returns its exit code.
fn run(args: RunArgs, store: &Store, stopped: Option<Container>) -> Result<u8, Failure> {
    // The plan: every call we will make, checked and listed before the first one.
    // Now also the limits, and every mkdir and write that makes the cgroup, on the kernel's
    // cgroup filesystem (`Kernel`; the library's tests plan on a fake one).
    // Now also the container: its base is checked as stage 3 checked its rootfs (a stopped
    // container's is the one its first run resolved and recorded); then its root moves to
    // its own directory in the store, where an overlay mount will show its upper over the base.
    let new = stopped.is_none();
    let spec = Spec::new(&args.store, &args.command, std::env::args_os().skip(1))?;
    let mut plan = Plan::from(runtime::request(args.container, args.command, stopped.as_ref())?)?;
    // The user namespace's host ids: a new container's are claimed before the store is
    // written, since its upper is made theirs (a dry run claims nothing, and shows the pool's
    // first slot).
    let mut ids = if new && !args.dry_run { plan.claim_ids()? } else { None };
    let container = match stopped {
        Some(container) => container,
        None => store.prepare(spec.over(&plan))?,
    };
    plan.move_rootfs(&container.rootfs(), container.rootfs_mounts())?;
    // As root with a user namespace, the base is shown to it idmapped into that namespace, so
    // that its root may change the base's files (in the upper); refused now if it cannot be.
    plan.idmap_lowers(container.idmapped_lowers())?;
    let name = container.config.name.clone();
    let (host, said) =
        cgroup::plan(&mut plan, &args.cgroup, &name, args.dry_run, Kernel)?.into_host();
    cli::say(PROGRAM, &said);
    if args.dry_run {
        let _ = write!(std::io::stdout(), "{}", runtime::dry_run(&plan, &container));
        return Ok(0);
    }
    plan.check_privileges()?;

    // The store: what killed runtimes left goes first; then the container is made (its
    // directories, config and state) or the stopped one taken, locked for as long as it
    // runs. The guard removes a new container again if its command never starts.
    cli::say(PROGRAM, &runtime::collect_garbage(store));
    if let Some(ids) = &mut ids {
        // The ids stay the container's when we exit, for as long as its directory exists.
        // Said before the directory is made: a runtime killed in between leaves no
        // container whose ids another could take.
        ids.keep_for(&container.dir)?;
    }
    let running = if new { store.create(&container)? } else { container.start()? };
    // A stopped container runs on the ids its files are owned by, claimed once the store has
    // let it start (a `start` of a running container is the store's to refuse).
    let _ids = match ids {
        None if !new => plan.claim_ids()?,
        ids => ids,
    };

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
    // Now the child's first mount is its root: the overlay, in its own mount namespace.
    // Now the parent also makes the base's idmapped mount with the child's user namespace and
    // sends it over a socket pair made before the clone; the child attaches it first.
    let started = Cell::new(None);
    let start_time = Instant::now();
    let born_in = plan.cgroup_to_clone_into().map(cgroup::open_dir).transpose()?;
    plan.open_handoff()?;
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

    // The state: the container's state says how it ended; with --rm, it goes.
    if running.container.config.remove {
        running.remove()?;
    } else {
        running.exited(code)?;
    }
    Ok(code)
}
// ANCHOR_END: run

// ANCHOR: start
/// Runs a stopped container again, with the upper it left: the command line that created it
/// gives the options (limits, network, command); what its first run resolved (its base)
/// comes from the store's record of it, never from a second reading of that command line.
fn start(name: &str, store: &Store) -> Result<u8, Failure> {
    let container = store.find(name)?;
    let argv = std::iter::once(PROGRAM.to_string()).chain(container.config.argv.clone());
    let Ok(Cli { command: Verb::Run(args), .. }) = Cli::try_parse_from(argv) else {
        return Err(Error::Invalid(format!(
            "{}/config.json holds no `run` command line to start again",
            container.dir.display()
        ))
        .into());
    };
    run(*args, store, Some(container))
}
// ANCHOR_END: start

/// The store: `--root`, or where it is by default.
fn open_store(root: Option<PathBuf>) -> Result<Store, Failure> {
    let root = match root {
        Some(root) => root,
        None => store::default_root()?,
    };
    Ok(Store::at(&root)?)
}

// ANCHOR: gc
/// `gc`: removes the cgroups of runtimes that no longer run, fixes the state of the
/// containers they left running and unmounts what they left mounted; says what it did.
fn gc(store: &Store) -> Result<u8, Failure> {
    let hierarchy = cgroups::detect(Path::new(cgroup::CGROUP_ROOT), &Kernel)?;
    let collected = cgroups::gc::gc_for(&hierarchy, Uid::effective(), Rc::new(Kernel))?;
    // Without root and a delegated subtree, the host's cgroups are not this user's: one line
    // says so, and the store, which is theirs, is cleaned all the same.
    let removed = collected.removed;
    if let Some(not_theirs) = &collected.not_theirs {
        println!("{not_theirs}");
    }
    let cleaned = store.gc()?;
    if collected.not_theirs.is_some() && cleaned.is_empty() {
        println!("no stale container states or mounts");
    } else if removed.is_empty() && cleaned.is_empty() {
        println!("no stale isolab cgroups, container states or mounts");
    }
    for stale in removed {
        println!("{stale}");
    }
    for cleaned in cleaned {
        println!("{cleaned}");
    }
    Ok(0)
}
// ANCHOR_END: gc
