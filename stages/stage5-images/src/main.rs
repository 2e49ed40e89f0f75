//! Stage 5: layered images — content-addressed layers, shared by every image and container.
//!
//! Stage 4's container, but its base is no longer one directory: it is an image, a stack of
//! read-only layers, each a tar stored once in the store under its SHA-256 and unpacked once,
//! shared as an overlay lower by every image and container over it. `import` makes an image
//! of a directory, `build` one of a Dockerfile (each RUN in a container of this stage, its
//! upper the next layer), `commit` one of a container's upper; `images`, `history`, `tag`,
//! `rmi`, `inspect`, `save` and `load` handle them as docker does. The store is an OCI image
//! layout, so umoci and skopeo read and write it too. Chapter: `book/src/stage5-images.md`.

mod build;
// Stage 4's store commands (ps, diff, rm of the containers), unchanged: stage 5 adds images,
// not another way to list containers. Its `df` is not used: stage 5's shows the images too.
#[allow(dead_code)]
#[path = "../../stage4-overlay/src/commands.rs"]
mod commands;
mod images;
mod registry;

use std::cell::Cell;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, Parser, Subcommand};
use libisolab::cgroups::{self, Kernel};
use libisolab::container::cgroup::{self, CgroupArgs};
use libisolab::container::{CommandArgs, ContainerArgs, Plan};
use libisolab::init;
use libisolab::process::Failure;
use libisolab::store::runtime::{self, Spec, StoreArgs};
use libisolab::store::{self, Container, Store};
use libisolab::{cli, exit, namespaces, Error};
use nix::unistd::Uid;

const PROGRAM: &str = "stage5-images";

const EXAMPLES: &str = "\
Examples:
  rootfs-builder busybox rootfs
  stage5-images import rootfs base:1.0                      # a directory becomes an image
  stage5-images run --name web base:1.0 -- /bin/sh          # a shell over its layers
  stage5-images commit web base:1.1                         # web's upper becomes a layer
  stage5-images build -t app:1.0 .                          # from ./Dockerfile
  stage5-images images                                      # the tags, their ids and sizes
  stage5-images history app:1.0                             # its layers, like git log
  stage5-images tag app:1.0 app:stable                      # another name, the same image
  stage5-images save app:1.0 -o app.tar                     # for docker load, skopeo, umoci
  stage5-images load -i app.tar                             # an OCI or docker save tar
  stage5-images push app:1.0 127.0.0.1:5000/team/app:1.0    # only the blobs it lacks
  stage5-images pull 127.0.0.1:5000/team/app:1.0            # only the blobs we lack
  stage5-images rmi app:stable                              # untag, remove what only it used
  stage5-images df                                          # images, shared layers, containers
  stage5-images run --rootfs rootfs -- /bin/sh              # stage 4's way still works

The store is --root DIR, else $ISOLAB_ROOT, else /var/lib/isolab for root and
$XDG_DATA_HOME/isolab (~/.local/share/isolab) for other users; it is also an OCI image layout
(blobs/sha256, index.json), which umoci and skopeo (oci:DIR:TAG) read. Every stage 2-4
option works with images; stage 3's report goes to stderr on exit.

Exit status: the command's own; 125 if stage5-images itself failed, 126 if the command
cannot be executed, 127 if it is not found in the image, 128+N if it was killed by signal N.";

/// Stage 5 of isolab: layered images, each layer stored once and shared.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    /// The store of containers and images [default: $ISOLAB_ROOT; /var/lib/isolab as root,
    /// $XDG_DATA_HOME/isolab otherwise]
    #[arg(long, value_name = "DIR", global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Create a container over an image's layers (or a --rootfs base), and run a command in it
    #[command(after_help = EXAMPLES)]
    Run(Box<RunArgs>),
    /// Run a stopped container again: the same command, its changes kept
    Start(NameArgs),
    /// List the containers of the store
    Ps,
    /// What a container changed in its image: A(dded), C(hanged), D(eleted)
    Diff(DiffArgs),
    /// Remove containers and everything they have on disk
    Rm(RmArgs),
    /// The disk the images, their shared layers and the containers take
    Df,
    /// Clean up: stale cgroups and states of killed runtimes, and the blobs and layers no
    /// image, container or build cache uses
    Gc(images::GcArgs),
    /// Make an image of a directory (a root filesystem) or a tar
    Import(images::ImportArgs),
    /// Build an image from a Dockerfile
    Build(build::BuildArgs),
    /// Make an image of a stopped container: its image's layers plus its upper
    Commit(images::CommitArgs),
    /// List the images: tag, id, when, size
    Images(images::ImagesArgs),
    /// The layers of an image, newest first, and the step that made each
    History(images::ImageArg),
    /// Give an image another name
    Tag(images::TagArgs),
    /// Remove image tags; gc removes the layers nothing uses any more
    Rmi(images::RmiArgs),
    /// An image's manifest and config
    Inspect(images::InspectArgs),
    /// Write images to a tar: an OCI image layout that `docker load` also reads
    Save(images::SaveArgs),
    /// Read images from a tar (an OCI image layout, or what `docker save` writes)
    Load(images::LoadArgs),
    /// Send an image to a registry: only the blobs it lacks
    Push(registry::PushArgs),
    /// Fetch an image from a registry: only the blobs the store lacks; tag it as REF
    Pull(registry::PullArgs),
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
    /// The image: NAME[:TAG] (TAG latest if left out), an id as `images` shows it, or the
    /// manifest's sha256:DIGEST
    #[arg(value_name = "IMAGE")]
    image: Option<String>,
    #[command(flatten)]
    command: CommandArgs,
    /// Whether --workdir was typed (the image's WorkingDir is the default otherwise)
    #[arg(skip)]
    workdir_given: bool,
    /// The command line it was parsed from, without the program's name: the store keeps it
    /// for `start` (for `build`'s RUN steps, the `run` line the build made)
    #[arg(skip)]
    line: Vec<std::ffi::OsString>,
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

/// The command line as stage 5 takes it: stage 4's, where an image may stand in for
/// `--rootfs`, and its config for the command.
fn command() -> clap::Command {
    let mut command = Cli::command().mut_subcommand("run", |run| {
        run.mut_arg("rootfs", |arg| arg.required(false))
            .mut_arg("command", |arg| arg.required(false))
            .mut_arg("workdir", |arg| {
                arg.hide_default_value(true).help(
                    "The directory inside the container to start in [default: the image's \
                     WorkingDir, else /]",
                )
            })
            .mut_arg("env", |arg| {
                arg.help(
                    "Add or override an environment variable (the command gets the image's \
                     Env, PATH if it has none, HOME and TERM)",
                )
            })
    });
    for (verb, examples) in VERB_EXAMPLES {
        command =
            command.mut_subcommand(verb, |sub| sub.after_help(format!("Examples:\n{examples}")));
    }
    command
}

/// Each verb's examples, for its `--help` (`run`'s are the program's).
const VERB_EXAMPLES: [(&str, &str); 18] = [
    ("start", "  stage5-images start web      # web's command again, its changes kept"),
    ("ps", "  stage5-images ps"),
    (
        "diff",
        "  stage5-images diff web          # A, C, D against its image\n  \
              stage5-images diff web --upper  # whiteouts and opaque directories as written",
    ),
    ("rm", "  stage5-images rm web\n  stage5-images rm --force web   # kill it first if it runs"),
    ("df", "  stage5-images df"),
    (
        "gc",
        "  stage5-images gc\n  stage5-images gc --build-cache   # the next build runs every step",
    ),
    (
        "import",
        "  rootfs-builder busybox rootfs && stage5-images import rootfs base:1.0\n  \
                stage5-images import debian.tar.gz debian:12   # a tar, gzip or not",
    ),
    (
        "build",
        "  stage5-images build -t app:1.0 .              # ./Dockerfile, context .\n  \
               stage5-images build -t app:1.0 -f web.Dockerfile ctx\n  \
               stage5-images build -t app:1.0 --build-arg VERSION=2 .\n  \
               stage5-images build -t app:1.0 --no-cache .   # every step again",
    ),
    (
        "commit",
        "  stage5-images commit web base:1.1\n  \
                stage5-images commit -m 'add motd' web base:1.1",
    ),
    ("images", "  stage5-images images\n  stage5-images images --digests"),
    ("history", "  stage5-images history app:1.0"),
    (
        "tag",
        "  stage5-images tag app:1.0 app:stable\n  \
             stage5-images tag 3f2a9c app:1.0   # an id as `images` shows it",
    ),
    (
        "rmi",
        "  stage5-images rmi app:stable\n  stage5-images rmi --force 3f2a9c   # every tag of it",
    ),
    (
        "inspect",
        "  stage5-images inspect app:1.0\n  \
                 stage5-images inspect --json app:1.0 | python3 -m json.tool",
    ),
    (
        "save",
        "  stage5-images save app:1.0 -o app.tar\n  \
              stage5-images save app:1.0 base:1.0 -o both.tar",
    ),
    (
        "load",
        "  stage5-images load -i app.tar\n  \
              skopeo copy oci:layout:app docker-archive:x.tar:x:1 && stage5-images load -i x.tar",
    ),
    (
        "push",
        "  stage5-images push app:1.0 127.0.0.1:5000/team/app:1.0     # a local registry\n  \
              stage5-images push --creds ann:secret app:1.0 registry.example/team/app:1.0\n  \
              stage5-images push --mount-from team/base app:1.0 127.0.0.1:5000/team/app:1.0\n  \
              stage5-images push --chunk-size 8M app:1.0 127.0.0.1:5000/team/app:1.0\n  \
              stage5-images push --json app:1.0 127.0.0.1:5000/team/app:1.0 | jq .moved\n  \
              stage5-images push --timeout 120 app:1.0 registry.lan:5000/team/app:1.0\n\n\
         Blobs larger than --chunk-size (16M) go in pieces. Interrupted (Ctrl-C), it stops\n\
         after the piece on its way, cancels the upload and exits 130; run again, it sends\n\
         only the blobs the registry still lacks (a blob cut mid-way is sent again whole).",
    ),
    (
        "pull",
        "  stage5-images pull 127.0.0.1:5000/team/app:1.0               # a local registry\n  \
              stage5-images pull --creds ann:secret registry.example/team/app:1.0\n  \
              stage5-images pull 127.0.0.1:5000/team/app@sha256:<digest>  # exactly that image\n  \
              stage5-images pull --insecure registry.lan:5000/team/app:1.0\n  \
              stage5-images pull --json 127.0.0.1:5000/team/app:1.0 | jq .bytes_fetched\n\n\
         Interrupted (Ctrl-C), it keeps only whole blobs, tags nothing and exits 130; run\n\
         again, it fetches only the blobs the store still lacks.",
    ),
];

/// Parses `args` (the program's name first) with [`command`].
fn parse(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<Cli, std::process::ExitCode> {
    let line: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let (mut cli, matches): (Cli, _) = cli::parse_from(PROGRAM, command(), line.clone())?;
    if let (Verb::Run(args), Some(("run", run))) = (&mut cli.command, matches.subcommand()) {
        args.workdir_given = run.value_source("workdir") == Some(ValueSource::CommandLine);
        args.line = line.into_iter().skip(1).collect();
    }
    Ok(cli)
}

fn main() -> std::process::ExitCode {
    let cli = match parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = open_store(cli.root).and_then(|store| match cli.command {
        Verb::Run(args) => run(*args, &store, None),
        Verb::Start(args) => start(&args.name, &store),
        Verb::Ps => commands::ps(&store),
        Verb::Diff(args) => commands::diff(&store, &args.name, args.upper),
        Verb::Rm(args) => commands::rm(&store, &args.names, args.force),
        Verb::Df => images::df(&store),
        Verb::Gc(args) => gc(&store, &args),
        Verb::Import(args) => images::import(&store, &args),
        Verb::Build(args) => build::build(&store, &args),
        Verb::Commit(args) => images::commit(&store, &args),
        Verb::Images(args) => images::images(&store, &args),
        Verb::History(args) => images::history(&store, &args),
        Verb::Tag(args) => images::tag(&store, &args),
        Verb::Rmi(args) => images::rmi(&store, &args),
        Verb::Inspect(args) => images::inspect(&store, &args),
        Verb::Save(args) => images::save(&store, &args),
        Verb::Load(args) => images::load(&store, &args),
        Verb::Push(args) => registry::push(&store, &args),
        Verb::Pull(args) => registry::pull(&store, &args),
    });
    cli::finish(PROGRAM, result)
}

// ANCHOR: run
/// Creates a container over the base (or, for `start`, takes the `stopped` one), runs the
/// command in it, and returns its exit code.
fn run(mut args: RunArgs, store: &Store, stopped: Option<Container>) -> Result<u8, Failure> {
    // The plan: every call we will make, checked and listed before the first one.
    // Now also the limits, and every mkdir and write that makes the cgroup, on the kernel's
    // cgroup filesystem (`Kernel`; the library's tests plan on a fake one).
    // Now also the container: its base is checked as stage 3 checked its rootfs (a stopped
    // container's is the one its first run resolved and recorded); then its root moves to
    // its own directory in the store, where an overlay mount will show its upper over the base.
    let new = stopped.is_none();
    let spec = Spec::new(&args.store, &args.command, args.line.clone())?;
    // Now the image: its layers, unpacked once in the store, are the base (a stopped
    // container's are the ones its first run resolved), and its config gives the command,
    // environment, directory and user the command line leaves out.
    let image = images::for_run(&mut args, store, stopped.as_ref())?;
    let mut plan = Plan::from(runtime::request(args.container, args.command, stopped.as_ref())?)?;
    // The user namespace's host ids: a new container's are claimed before the store is
    // written, since its upper is made theirs (a dry run claims nothing, and shows the pool's
    // first slot).
    let mut ids = if new && !args.dry_run { plan.claim_ids()? } else { None };
    let container = match stopped {
        Some(container) => container,
        None => match image {
            Some((image, lowers)) => store.prepare(spec.over(&plan).over_image(image, lowers))?,
            None => store.prepare(spec.over(&plan))?,
        },
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
    let Ok(Cli { command: Verb::Run(args), .. }) = parse(argv) else {
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
fn gc(store: &Store, args: &images::GcArgs) -> Result<u8, Failure> {
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
    // Now also the images: what no tag, container or build-cache entry reaches.
    images::gc(store, args)
}
// ANCHOR_END: gc
