//! The command-line option groups every stage from 2 on shares ([`ContainerArgs`],
//! [`CommandArgs`]; each stage flattens them into its own `run`), and the [`Request`] they make.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::plan::invalid;
use crate::error::Error;
use crate::idmap;
use crate::idrange::Wanted;
use crate::init;
use crate::namespaces::Namespaces;
use crate::network::{Mode, Subnet};
use crate::process::{self, Failure};
use crate::user::User;
use crate::uts;

/// What the user asked for (the command line, parsed).
#[derive(Debug, Clone)]
pub struct Request {
    /// `--rootfs`
    pub rootfs: PathBuf,
    /// `--ns`, or `None` for "all this kernel has".
    pub namespaces: Option<Namespaces>,
    /// `--hostname`
    pub hostname: Option<String>,
    /// `--net`
    pub net: Option<Mode>,
    /// `--subnet`
    pub subnet: Option<Subnet>,
    /// Whose host ids root inside gets: a free slot, `--map-base` (and `--map-base-force`),
    /// or, for stage 4's `start`, the slot a stopped container's files are owned by.
    pub ids: Wanted,
    /// `--user`
    pub user: Option<User>,
    /// `--init`
    pub init: bool,
    /// `--stop-timeout`
    pub stop_timeout: Duration,
    /// `--workdir`
    pub workdir: PathBuf,
    /// `--env`
    pub env: Vec<(OsString, OsString)>,
    /// The command; empty for `escape`.
    pub argv: Vec<OsString>,
}

/// Checks `--subnet` is only given with `--net veth`.
pub fn check_subnet_use(net: Option<Mode>, subnet: Option<Subnet>) -> Result<(), Error> {
    if subnet.is_some() && net != Some(Mode::Veth) {
        return Err(invalid("--subnet is only used with --net veth".to_string()));
    }
    Ok(())
}

/// Parses `--map-base`.
pub fn parse_map_base(text: &str) -> Result<u32, String> {
    idmap::parse_base(text).map_err(|error| error.to_string())
}

/// The command-line options that describe a container, shared by every stage from 2 on (each
/// stage flattens them into its own `run`, and adds its chapter's options beside them).
#[derive(Debug, Clone, clap::Args)]
pub struct ContainerArgs {
    /// The directory that becomes the command's / (from stage 4 on: the read-only base)
    // Optional only for stage 5, which takes an image instead and lifts `required`.
    #[arg(long, value_name = "DIR", required = true)]
    pub rootfs: Option<PathBuf>,
    /// Namespaces to create: a comma-separated list of mnt,uts,ipc,pid,net,user,cgroup,time,
    /// or none [default: all that this kernel has]
    #[arg(long, value_name = "LIST", value_parser = parse_with::<Namespaces>)]
    pub ns: Option<Namespaces>,
    /// The container's hostname (from stage 3 on, also the name of its cgroup) [default:
    /// isolab-<6 random hex digits>]
    #[arg(long, value_name = "NAME", value_parser = parse_hostname)]
    pub hostname: Option<String>,
    /// The network: none (no device up), loopback (lo up), veth (lo, and eth0 paired with
    /// the host) [default: loopback]
    #[arg(long, value_name = "MODE", value_parser = parse_with::<Mode>)]
    pub net: Option<Mode>,
    /// The subnet for --net veth (host .1, container .2) [default: a free /30 from
    /// 10.200.0.0/16]
    #[arg(long, value_name = "CIDR", value_parser = parse_with::<Subnet>)]
    pub subnet: Option<Subnet>,
    /// As root with a user namespace: the host uid/gid that root inside is (0-65535 inside
    /// map to BASE..BASE+65535) [default: a free slot of root's range in /etc/subuid, or of
    /// isolab's pool]
    #[arg(long, value_name = "BASE", value_parser = parse_map_base)]
    pub map_base: Option<u32>,
    /// Use --map-base even over ids the host has given to a user, a group or another user's
    /// range in /etc/subuid or /etc/subgid
    #[arg(long, requires = "map_base")]
    pub map_base_force: bool,
    /// Run the command as this user inside (numbers: UID or UID:GID), not as root
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_with::<User>)]
    pub user: Option<User>,
}

/// The command-line options that say what runs inside and how: shared by every `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommandArgs {
    /// Run a small init as PID 1 that forwards signals to the command and reaps orphans
    #[arg(long)]
    pub init: bool,
    /// When a signal that asks to stop (TERM, INT, HUP, QUIT) is passed on, send SIGKILL if the
    /// command is still running this many seconds later (0: at once), as `docker stop` does
    #[arg(long, value_name = "SECONDS", default_value_t = init::DEFAULT_STOP_TIMEOUT)]
    pub stop_timeout: u64,
    /// The directory inside the container to start in
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub workdir: PathBuf,
    /// Add or override an environment variable (the command gets only PATH, HOME and TERM)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(OsString, OsString)>,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl Request {
    /// The request for a container described by `container`, running `command` (`None`: a
    /// container that runs no command of the user's, like `escape`'s). A command without a
    /// program name fails as a shell's would, with 127 (see `process::check_program`).
    pub fn new(container: ContainerArgs, command: Option<CommandArgs>) -> Result<Request, Failure> {
        check_subnet_use(container.net, container.subnet)?;
        if let Some(command) = &command {
            process::check_program(&command.command)?;
        }
        let command = command.unwrap_or(CommandArgs {
            init: false,
            stop_timeout: init::DEFAULT_STOP_TIMEOUT,
            workdir: PathBuf::from("/"),
            env: Vec::new(),
            command: Vec::new(),
        });
        Ok(Request {
            rootfs: container.rootfs.ok_or_else(|| {
                Failure::from(invalid("no --rootfs: give the directory to run in".to_string()))
            })?,
            namespaces: container.ns,
            hostname: container.hostname,
            net: container.net,
            subnet: container.subnet,
            ids: match container.map_base {
                Some(base) => Wanted::Base { base, force: container.map_base_force },
                None => Wanted::Free,
            },
            user: container.user,
            init: command.init,
            stop_timeout: Duration::from_secs(command.stop_timeout),
            workdir: command.workdir,
            env: command.env,
            argv: command.command,
        })
    }
}

/// A clap value parser for any of our `FromStr` types, keeping our error's words.
fn parse_with<T: std::str::FromStr<Err = Error>>(text: &str) -> Result<T, String> {
    text.parse().map_err(|error: Error| error.to_string())
}

fn parse_hostname(text: &str) -> Result<String, String> {
    uts::check_hostname(text).map(|()| text.to_string()).map_err(|error| error.to_string())
}

fn parse_env(text: &str) -> Result<(OsString, OsString), String> {
    process::parse_env(text).map_err(|error| error.to_string())
}
