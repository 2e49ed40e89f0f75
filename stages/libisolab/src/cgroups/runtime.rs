//! A runtime's side of its container's cgroup, from the command line to the report.
//!
//! Stage 3 and every later stage do the same four things with a cgroup: plan it with the rest
//! of the container ([`plan_cgroup`]), collect what killed runtimes left and make it
//! ([`create`]), show the plan in a dry run ([`dry_run_notes`]), and report what the command
//! used before removing it ([`finish`]). They live here once. Nothing here prints: warnings
//! and reports come back as values, for the binary to show.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use nix::unistd::Uid;

use super::{gc, open, Backend, Cgroup, ContainerId, Hierarchy, Kernel, LimitArgs, Limits};
use super::{Machine, Usage, Version};
use crate::container::{Inside, Plan};
use crate::error::{Error, Result};

/// Where the host's cgroups are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What to do when this user cannot have a cgroup (`--cgroups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CgroupsWhen {
    /// No cgroup, no run: refuse, and say how to get one
    Required,
    /// No cgroup: run without limits and without a report, and say so
    Optional,
}

/// The command-line options of a container's cgroup, shared by every stage from 3 on.
#[derive(Debug, Clone, clap::Args)]
pub struct CgroupArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: LimitArgs,
    /// Without root, limits need a cgroup v2 subtree delegated to you (`isolab doctor` says
    /// how to get one): required refuses to run without it, optional runs without limits
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = CgroupsWhen::Required)]
    pub cgroups: CgroupsWhen,
    /// Where the host's cgroups are mounted; on a hybrid host, /sys/fs/cgroup/unified picks
    /// its cgroup v2 mount
    #[arg(long, value_name = "DIR", default_value = CGROUP_ROOT)]
    pub cgroup_root: PathBuf,
    /// Print the report of what the command used as JSON, on stdout
    #[arg(long)]
    pub json: bool,
}

/// The host's cgroups, and the backend that makes this container's.
pub struct Host {
    /// What [`super::detect`] found.
    pub hierarchy: Hierarchy,
    /// The backend this user may use.
    pub backend: Box<dyn Backend>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Host({})", self.hierarchy)
    }
}

/// What [`plan_cgroup`] decided.
#[derive(Debug)]
pub enum Planned {
    /// The plan has a cgroup, to be made on this host.
    Cgroup(Host),
    /// No cgroup (`--cgroups optional`), for this reason: the run goes on without limits.
    Without(Error),
    /// No cgroup (`--cgroups optional`): this user may not make one on this host (no cgroup v2
    /// subtree is delegated to them, see [`super::rootless`]). The run goes on without limits.
    NotDelegated(Error),
}

impl Planned {
    /// The host to make the cgroup on, if any, and what to tell the user when there is none.
    pub fn into_host(self) -> (Option<Host>, Vec<String>) {
        match self {
            Planned::Cgroup(host) => (Some(host), Vec::new()),
            Planned::Without(reason) => (
                None,
                vec![format!(
                    "warning: running without a cgroup, so without limits and without a report \
                     (--cgroups optional): {reason}"
                )],
            ),
            // Said on every run of a user who cannot have limits here: one short line, the
            // reason is `isolab doctor`'s to explain.
            Planned::NotDelegated(_) => (None, vec![super::rootless::WITHOUT_LIMITS.to_string()]),
        }
    }
}

// ANCHOR: plan_cgroup
/// Finds the host's cgroups (by statfs), opens the backend this user may use, checks the
/// limits against it and adds the cgroup, named `name`, to the container's plan.
///
/// A dry run plans as root would when the user may not (and says so): the plan is printable
/// by anyone.
pub fn plan_cgroup(
    plan: &mut Plan,
    args: &CgroupArgs,
    name: &str,
    dry_run: bool,
) -> Result<Planned> {
    let limits = Limits::parse(&args.limits, &Machine::current()?)?;
    let user = Uid::effective();
    let hierarchy = match super::detect(&args.cgroup_root, &Kernel) {
        Ok(hierarchy) => hierarchy,
        Err(error) => return without(error, args.cgroups, Planned::Without),
    };
    // Without root, a backend only where a cgroup v2 subtree is delegated to this user; a dry
    // run shows root's plan instead (and says what would be refused).
    let opened = match open(&hierarchy, user, Rc::new(Kernel)) {
        Err(_) if dry_run && !user.is_root() => open(&hierarchy, Uid::from_raw(0), Rc::new(Kernel)),
        opened => opened,
    };
    let backend = match opened {
        Ok(backend) => backend,
        Err(error) if user.is_root() => return without(error, args.cgroups, Planned::Without),
        Err(error) => return without(error, args.cgroups, Planned::NotDelegated),
    };
    let host = Host { hierarchy, backend };
    let id = ContainerId::for_this_runtime(name)?;
    let cgroup = host.backend.plan(&id, &limits)?;
    let view = super::view::mounts(&cgroup, &host.hierarchy);
    plan.add_cgroup(cgroup, view);
    Ok(Planned::Cgroup(host))
}
// ANCHOR_END: plan_cgroup

/// No cgroup for this run, because of `error`: refused with `--cgroups required`, planned as
/// `planned` with `--cgroups optional`.
fn without(error: Error, when: CgroupsWhen, planned: fn(Error) -> Planned) -> Result<Planned> {
    match when {
        CgroupsWhen::Required => {
            Err(Error::Invalid(format!("{error}; or run without limits: --cgroups optional")))
        }
        CgroupsWhen::Optional => Ok(planned(error)),
    }
}

/// The container's name, which its cgroup is named after: its hostname, if it has one.
pub fn container_name(plan: &Plan) -> &str {
    let hostname = plan.inside.iter().find_map(|step| match step {
        Inside::Hostname(name) if !name.starts_with('.') => Some(name.as_str()),
        _ => None,
    });
    hostname.unwrap_or("container")
}

/// For `--dry-run`: the plan's text with the runtime's pid shown as `<runtime pid>` (a real
/// run has another), and what would be refused for a user without the privileges.
pub fn dry_run_text(plan: &Plan, plan_text: String, host: Option<&Host>) -> String {
    let mut text = plan_text;
    if let Some(cgroup) = &plan.cgroup {
        let id = cgroup.id.to_string();
        text = text.replace(&id, &format!("{}-<runtime pid>", cgroup.id.name()));
    }
    let user = Uid::effective();
    if let Err(refused) = plan.check_privileges() {
        text.push_str(&format!("# as uid {user}, this would be refused: {refused}\n"));
    }
    if let Some(host) = host {
        if let Err(refused) = open(&host.hierarchy, user, Rc::new(Kernel)) {
            text.push_str(&format!("# as uid {user}, the cgroup would be refused: {refused}\n"));
        }
    }
    text
}

/// The made cgroup, and what to tell the user about what was collected on the way.
#[derive(Debug)]
pub struct Created {
    /// The container's cgroup; dropping it removes it.
    pub cgroup: Cgroup,
    /// One line for each stale cgroup of a killed runtime removed first, or why that failed
    /// (someone else's mess must not stop this container: `isolab gc` can try again).
    pub said: Vec<String>,
}

/// Removes what killed runtimes left behind, then makes the container's cgroup.
pub fn create(host: Host, plan: &Plan) -> Result<Created> {
    let said = match gc::gc_for(&host.hierarchy, Uid::effective(), Rc::new(Kernel)) {
        Ok(collected) => collected.removed.iter().map(|stale| format!("gc: {stale}")).collect(),
        Err(error) => vec![format!("warning: gc of stale cgroups failed: {error}")],
    };
    let planned = plan.cgroup.clone().ok_or_else(|| Error::Invalid("no cgroup planned".into()))?;
    Ok(Created { cgroup: Cgroup::create(host.backend, planned)?, said })
}

/// Opens the cgroup v2 directory a child will be born in (`clone3`'s `cgroup` field, see
/// `namespaces::spawn_into`).
pub fn open_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    std::fs::File::open(dir).map_err(|error| {
        let errno = nix::errno::Errno::from_raw(error.raw_os_error().unwrap_or(0));
        Error::sys("open", dir.display(), errno)
    })
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

/// The report, as the binary shows it.
#[derive(Debug, Default)]
pub struct Shown {
    /// `--json`: one document, for stdout.
    pub json: Option<String>,
    /// Lines for stderr, beneath the command's own output (the OOM kill in words first).
    pub said: Vec<String>,
}

// ANCHOR: report
/// Reads what the cgroup counted and removes it; returns the report (`code` is how the
/// command ended: 137 and an OOM kill counted means the OOM killer ended it). If that fails,
/// the command still ran and its code stands: a warning says so, and `isolab gc` removes the
/// rest.
pub fn finish(cgroup: Cgroup, code: u8, elapsed: Duration, json: bool) -> Shown {
    let name = format!("{}/{}", super::PARENT, cgroup.id());
    let version = cgroup.version();
    let usage = match cgroup.finish() {
        Ok((usage, _removed)) => usage,
        Err(error) => {
            let warning = format!("warning: cannot report on or remove cgroup {name}: {error}");
            return Shown { json: None, said: vec![warning] };
        }
    };
    let oom_killed = code == 128 + libc::SIGKILL as u8 && usage.oom_killed();
    if json {
        let report = JsonReport {
            cgroup: name,
            version: match version {
                Version::V1 => "v1",
                Version::V2 => "v2",
            },
            exit_code: code,
            oom_killed,
            elapsed_usec: elapsed.as_micros() as u64,
            usage: &usage,
        };
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        return Shown { json: Some(text), said: Vec::new() };
    }
    let mut said = Vec::new();
    if oom_killed {
        said.push(usage.describe_oom());
    }
    said.extend(usage.to_string().lines().map(String::from));
    Shown { json: None, said }
}
// ANCHOR_END: report
