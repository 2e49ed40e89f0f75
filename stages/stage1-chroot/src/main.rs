//! Stage 1: the chroot jail.
//!
//! The oldest container idea: give a process a different `/`. This binary forks, and the child
//! chroots into a root filesystem, optionally stops being root, and execs the command; the
//! parent waits and hands back the command's exit code. `escape` then shows why a chroot jail
//! is no security boundary. Chapter: `book/src/stage1-chroot.md`.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use libisolab::chroot::{self, DirId};
use libisolab::process::{self, Command, Failure};
use libisolab::user::{self, User};
use libisolab::{cli, exit, Error};

const PROGRAM: &str = "stage1-chroot";

const EXAMPLES: &str = "\
Examples:
  rootfs-builder busybox rootfs
  stage1-chroot run --rootfs rootfs -- /bin/sh          # an interactive shell in the jail
  stage1-chroot run --rootfs rootfs -- ls /             # the jail's / is the rootfs
  stage1-chroot run --rootfs rootfs --user 65534 -- id  # as nobody
  stage1-chroot escape --rootfs rootfs                  # root breaks out of the jail

Exit status: the command's own; 125 if stage1-chroot itself failed, 126 if the command
cannot be executed, 127 if it is not found in the rootfs, 128+N if it was killed by signal N.";

/// Stage 1 of isolab: run a command in a chroot jail.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Run a command with DIR as its root directory (needs root: chroot needs CAP_SYS_CHROOT)
    #[command(after_help = EXAMPLES)]
    Run(RunArgs),
    /// Show the classic chroot break-out from inside the jail (exit 0: escaped, 1: the jail held)
    #[command(after_help = "Examples:\n  stage1-chroot escape --rootfs rootfs\n  \
                            stage1-chroot escape --rootfs rootfs --user 65534")]
    Escape(EscapeArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The directory that becomes the command's /
    #[arg(long, value_name = "DIR")]
    rootfs: PathBuf,
    /// Run the command as this user (numbers: UID or UID:GID), not as root
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    user: Option<User>,
    /// The directory inside the jail to start in
    #[arg(long, value_name = "PATH", default_value = "/")]
    workdir: PathBuf,
    /// Add or override an environment variable (the command gets only PATH, HOME and TERM)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(OsString, OsString)>,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct EscapeArgs {
    /// The jail to break out of
    #[arg(long, value_name = "DIR")]
    rootfs: PathBuf,
    /// Attempt the escape as this user instead of root
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    user: Option<User>,
}

fn parse_user(text: &str) -> Result<User, String> {
    text.parse().map_err(|error: Error| error.to_string())
}

fn parse_env(text: &str) -> Result<(OsString, OsString), String> {
    process::parse_env(text).map_err(|error| error.to_string())
}

fn main() -> ExitCode {
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
/// Runs the command in the jail and returns its exit code.
fn run(args: RunArgs) -> Result<u8, Failure> {
    // The plan: the input is checked before anything is touched (the rootfs must be a
    // directory), and the command is decided.
    let rootfs = chroot::check_rootfs(&args.rootfs)?;
    let as_user = args.user.unwrap_or(User::ROOT);
    let mut command = Command::new(args.command, as_user.home(), &args.env);
    command.workdir = args.workdir;

    // The child: fork(2). The child becomes the contained process; the parent stays on the
    // host.
    let child = process::spawn(|| {
        chroot::enter(&rootfs)?; // chroot(2) + chdir("/")
        if let Some(user) = args.user {
            user::drop_privileges(user)?; // setgroups, setgid, setuid: in that order
        }
        process::exec(&command) // execve(2): returns only if it failed
    })?;

    // The wait: signals are passed on; the command's exit code is ours.
    let status = process::wait_forwarding_signals(child);
    let code = exit::code_for(status?);
    Ok(code)
}
// ANCHOR_END: run

// ANCHOR: escape
/// Jails a child like `run` does, then has it try the classic escape and report.
fn escape(args: EscapeArgs) -> Result<u8, Failure> {
    let rootfs = chroot::check_rootfs(&args.rootfs)?;
    // Remember what the host's / is, so the child can tell whether it got back there.
    let host_root = DirId::of(Path::new("/"))?;

    let child = process::spawn(|| {
        chroot::enter(&rootfs)?;
        if let Some(user) = args.user {
            user::drop_privileges(user)?;
        }
        let code = escape_from_inside(&rootfs, host_root)?;
        let _ = std::io::stdout().flush();
        // SAFETY: _exit ends the forked child without running the parent's exit handlers.
        unsafe { libc_exit(code) }
    })?;
    let status = process::wait_forwarding_signals(child)?;
    Ok(exit::code_for(status))
}

/// Runs inside the jail: tries the escape, prints each step, and judges the result.
fn escape_from_inside(rootfs: &Path, host_root: DirId) -> Result<i32, Error> {
    let jail_root = DirId::of(Path::new("/"))?;
    println!("inside the jail, / is {jail_root}; the host's / is {host_root}");
    let scratch = if Path::new("/tmp").is_dir() { Path::new("/tmp") } else { Path::new("/") };
    let attempt = chroot::attempt_escape(scratch);
    print!("{attempt}");
    let now = DirId::of(Path::new("/"))?;
    if now == host_root {
        println!(
            "escaped: / is now the host's root ({now}), and the jail's own directory {} is \
             visible from here: {}",
            rootfs.display(),
            if rootfs.is_dir() { "yes" } else { "no" }
        );
        Ok(0)
    } else {
        println!("the jail held: / is still the jail ({now})");
        Ok(1)
    }
}
// ANCHOR_END: escape

/// `_exit(2)` for the forked child.
///
/// # Safety
/// Ends the process at once; only call it in a forked child that must not return.
unsafe fn libc_exit(code: i32) -> ! {
    // SAFETY: see above; _exit is always safe to call, it just never returns.
    unsafe { nix::libc::_exit(code) }
}
