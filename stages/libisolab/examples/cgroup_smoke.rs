//! A cgroup from start to end, on the real kernel (as root): detect, gc, plan, create, join
//! a child before it execs, wait, report, destroy. The shape of stage 3, without namespaces.
//!
//! ```text
//! cargo run -p libisolab --example cgroup_smoke -- --memory 32M --pids 16 --cpus 0.2 -- sleep 1
//! cargo run -p libisolab --example cgroup_smoke -- --v2 -- sleep 0.1       # the cgroup2 mount
//! cargo run -p libisolab --example cgroup_smoke -- --bench 50              # the cost, 50 times
//! ```

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use libisolab::cgroups::{self, v2::V2, Backend, ContainerId, Kernel, LimitArgs, Limits, Machine};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{self, ForkResult, Pid, Uid};

/// Runs a command in a cgroup of its own and reports what it used.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    limits: LimitArgs,
    /// Use the cgroup2 mount, even on a hybrid host
    #[arg(long)]
    v2: bool,
    /// Create, join and destroy N times (running `true`), and print the times
    #[arg(long, value_name = "N")]
    bench: Option<usize>,
    /// The command [default: sleep 0.2]
    command: Vec<String>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cgroup_smoke: error: {error}");
            ExitCode::from(125)
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let hierarchy = cgroups::detect(Path::new("/sys/fs/cgroup"), &Kernel)?;
    println!("# detected: {hierarchy}");
    for removed in cgroups::gc(&hierarchy, Rc::new(Kernel))? {
        println!("# gc: {removed}");
    }
    let backend: Box<dyn Backend> = match (args.v2, hierarchy.unified()) {
        (true, Some(unified)) => Box::new(V2::new(&unified.mount, Rc::new(Kernel))),
        (true, None) => return Err("no cgroup2 mount on this host".into()),
        (false, _) => cgroups::open(&hierarchy, Uid::effective(), Rc::new(Kernel))?,
    };
    let limits = Limits::parse(&args.limits, &Machine::current()?)?;
    let id = ContainerId::for_this_runtime("smoke")?;
    if let Some(runs) = args.bench {
        return bench(&*backend, &id, &limits, runs);
    }
    let command = if args.command.is_empty() {
        vec!["sleep".to_string(), "0.2".to_string()]
    } else {
        args.command
    };

    let plan = backend.plan(&id, &limits)?;
    print!("{plan}");
    let start = Instant::now();
    backend.create(&plan)?;
    let created = start.elapsed();
    let (child, joined) = match spawn_joined(&*backend, &id, &command) {
        Ok(spawned) => spawned,
        Err(error) => {
            backend.destroy(&id)?;
            return Err(error);
        }
    };
    let status = waitpid(child, None)?;
    let usage = backend.report(&id)?;
    let start = Instant::now();
    let removed = backend.destroy(&id)?;
    let destroyed = start.elapsed();

    println!("# {command:?} ended: {status:?}");
    println!("{usage}");
    if matches!(status, WaitStatus::Signaled(_, nix::sys::signal::SIGKILL, _)) && usage.oom_killed()
    {
        println!("{}", usage.describe_oom());
    }
    println!("{removed}");
    println!("# create {created:.1?}, join {joined:.1?}, destroy {destroyed:.1?}");
    Ok(())
}

/// Forks a child that waits until the parent has put it in the cgroup, then execs `command`.
fn spawn_joined(
    backend: &dyn Backend,
    id: &ContainerId,
    command: &[String],
) -> Result<(Pid, Duration), Box<dyn std::error::Error>> {
    let argv: Vec<CString> =
        command.iter().map(|arg| CString::new(arg.as_bytes())).collect::<Result<_, _>>()?;
    let (go_read, go_write) = unistd::pipe()?;
    // SAFETY: this example is single-threaded; the child only reads a pipe and execs.
    match unsafe { unistd::fork() }? {
        ForkResult::Child => {
            drop(go_write);
            let mut byte = [0u8; 1];
            if File::from(go_read).read_exact(&mut byte).is_ok() {
                let _ = unistd::execvp(&argv[0], &argv);
            }
            // SAFETY: _exit ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(go_read);
            let start = Instant::now();
            let joined = backend.join(id, child);
            let elapsed = start.elapsed();
            if let Err(error) = joined {
                drop(go_write); // the child reads end-of-file and exits
                let _ = waitpid(child, None);
                return Err(error.into());
            }
            File::from(go_write).write_all(b"g")?;
            Ok((child, elapsed))
        }
    }
}

/// Creates, joins (a child running `true`) and destroys `runs` times; prints the medians.
fn bench(
    backend: &dyn Backend,
    id: &ContainerId,
    limits: &Limits,
    runs: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut times: [Vec<Duration>; 4] = Default::default();
    let plan = backend.plan(id, limits)?;
    for _ in 0..runs {
        let start = Instant::now();
        backend.create(&plan)?;
        let created = start.elapsed();
        let (child, joined) = spawn_joined(backend, id, &["true".to_string()])?;
        waitpid(child, None)?;
        let start = Instant::now();
        backend.destroy(id)?;
        let destroyed = start.elapsed();
        for (list, time) in
            times.iter_mut().zip([created, joined, destroyed, created + joined + destroyed])
        {
            list.push(time);
        }
    }
    for (name, list) in ["create", "join", "destroy", "all three"].iter().zip(times.iter_mut()) {
        list.sort();
        println!(
            "{name:>9}: median {:.2?}, min {:.2?}, max {:.2?} ({runs} runs, {})",
            list[list.len() / 2],
            list[0],
            list[list.len() - 1],
            backend.version()
        );
    }
    Ok(())
}
