//! A container, planned: every call a runtime will make, decided before the first one, as data.
//!
//! [`Plan::from`] checks the input and lists the steps in the order they will run, one list
//! for the parent (outside the new namespaces) and one for the child (inside). `Display`
//! prints them (that is `--dry-run`); [`Plan::apply_outside`] and [`Plan::apply_inside`] run
//! them. There is no second description of the work that could drift from the first.

use std::convert::Infallible;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cgroups;
use crate::chroot;
use crate::error::Error;
use crate::idmap::{self, IdMap};
use crate::idrange::{self, Claim, Claims, UserIds, Wanted};
use crate::init;
use crate::mounts::{self, Step};
use crate::namespaces::{self, Namespace, Namespaces};
use crate::network::{self, Mode, Subnet};
use crate::process::{self, Command, ErrorPipe, Failure};
use crate::user::{self, User};
use crate::uts;
use nix::unistd::{Gid, Pid, Uid};

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

/// A step the parent takes for the child, between `clone` and releasing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outside {
    /// Write the child's uid/gid maps (and `setgroups`).
    IdMaps(IdMap),
    /// Create the veth pair, the peer inside the child's net namespace.
    Veth(Subnet),
}

/// A step the child takes inside its namespaces, before the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inside {
    /// Become root of the user namespace (see `idmap::become_root`).
    BecomeRoot(IdMap),
    /// A mount, mkdir, pivot_root… (see `libisolab::mounts`).
    Mount(Step),
    /// `sethostname`
    Hostname(String),
    /// `lo` up.
    LoopbackUp,
    /// `eth0`'s address, and up.
    ContainerEnd(Subnet),
    /// `unshare(CLONE_NEWTIME)`, for the command.
    UnshareTime,
    /// setgroups, setgid, setuid.
    DropPrivileges(User),
    /// `unshare(CLONE_NEWCGROUP)`, once the parent has moved us into our cgroup, which becomes
    /// the root of the tree we see (chapter 3; see `cgroups::view`).
    UnshareCgroup,
    /// A mount that shows us our cgroup, inside the new root (chapter 3).
    CgroupMount(Step),
}

/// Everything stage 2 will ask the kernel for.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The canonical rootfs path.
    pub rootfs: PathBuf,
    /// The namespaces the child starts in (`time` included; see `unshare_time`).
    pub namespaces: Namespaces,
    /// Done by the parent, in order.
    pub outside: Vec<Outside>,
    /// Done by the child, in order.
    pub inside: Vec<Inside>,
    /// Run the command under a small init (PID 1) instead of as PID 1.
    pub init: bool,
    /// How long the command may take to stop when asked to, before SIGKILL (`init::Stopping`).
    pub stop_timeout: Duration,
    /// The command.
    pub command: Command,
    /// Chapter 3: the cgroup the runtime makes before the clone and moves the child into
    /// before it releases it (see [`Plan::add_cgroup`]).
    pub cgroup: Option<cgroups::Plan>,
    /// The user namespace's host ids and where they come from (see `idrange`), if there is
    /// one; claimed by [`Plan::claim_ids`].
    pub user_ids: Option<UserIds>,
}

fn invalid(message: String) -> Error {
    Error::Invalid(message)
}

impl Plan {
    // ANCHOR: plan
    /// Checks the request and lists every step, in the order they run.
    pub fn from(request: Request) -> Result<Plan, Error> {
        let rootfs = chroot::check_rootfs(&request.rootfs)?;
        let supported = Namespaces::supported();
        let namespaces = request.namespaces.unwrap_or(supported);
        if let Some(missing) = namespaces.iter().find(|&ns| !supported.contains(ns)) {
            return Err(invalid(format!(
                "this kernel has no {missing} namespace (no /proc/self/ns/{missing}): leave it \
                 out of --ns"
            )));
        }
        let has = |ns| namespaces.contains(ns);
        let caller = Uid::effective();
        let mut outside = Vec::new();
        let mut inside = Vec::new();

        // user: the maps the parent writes, and where root inside can go outside: a slot of
        // host ids that no host user and no other container has (idrange).
        let user_ids = match (has(Namespace::User), &request.ids) {
            (true, wanted) => {
                let etc = Path::new("/etc");
                Some(idrange::plan(caller, Gid::effective(), wanted, etc, Claims::host())?)
            }
            (false, Wanted::Base { .. }) => {
                return Err(invalid(
                    "--map-base needs the user namespace: add user to --ns (without it, no id \
                     is mapped and root inside is the host's root)"
                        .to_string(),
                ))
            }
            (false, _) => None,
        };
        let id_map = user_ids.as_ref().map(|ids| ids.map);
        if let Some(map) = id_map {
            mounts::check_reachable(&rootfs, map.root_outside(), map.gid.outside)?;
            outside.push(Outside::IdMaps(map));
            inside.push(Inside::BecomeRoot(map));
        }

        // net: what the network namespace gets.
        let net = network_mode(&request, has(Namespace::Net))?;
        let subnet = match net {
            Some(Mode::Veth) => Some(veth_subnet(&request)?),
            _ => None,
        };
        if let Some(subnet) = subnet {
            outside.push(Outside::Veth(subnet));
        }

        // mnt: a private mount table, the rootfs as / (or stage 1's chroot without one).
        let steps = if has(Namespace::Mnt) {
            mounts::check_mount_points(&rootfs)?;
            let options = mounts::Options {
                user_ns: has(Namespace::User),
                pid_ns: has(Namespace::Pid),
                net_ns: has(Namespace::Net),
            };
            mounts::container_steps(&rootfs, options)
        } else {
            mounts::chroot_steps(&rootfs)
        };
        inside.extend(steps.into_iter().map(Inside::Mount));

        // uts: a hostname of our own.
        match (&request.hostname, has(Namespace::Uts)) {
            (Some(name), true) => inside.push(Inside::Hostname(name.clone())),
            (None, true) => inside.push(Inside::Hostname(uts::generated_name())),
            (Some(_), false) => {
                return Err(invalid(
                    "--hostname needs the uts namespace: add uts to --ns (without it, the \
                     host would be renamed)"
                        .to_string(),
                ))
            }
            (None, false) => {}
        }

        // net, inside: lo up, and our end of the pair.
        if matches!(net, Some(Mode::Loopback | Mode::Veth)) {
            inside.push(Inside::LoopbackUp);
        }
        if let Some(subnet) = subnet {
            inside.push(Inside::ContainerEnd(subnet));
        }

        // time: a clock namespace for the command (not a clone flag: see unshare_time).
        if has(Namespace::Time) {
            inside.push(Inside::UnshareTime);
        }

        // user, inside: who the command runs as.
        if let Some(user) = request.user {
            if let Some(map) = id_map {
                if !map.maps_uid(user.uid) || !map.maps_gid(user.gid) {
                    return Err(invalid(format!(
                        "--user {user} is not mapped in the user namespace (uid_map '{}'): \
                         rootless runs map only root; as root every id below 65536 is mapped",
                        map.uid
                    )));
                }
                if map.is_rootless() {
                    return Err(invalid(format!(
                        "--user {user} is not possible rootless: only one id is mapped"
                    )));
                }
            }
            inside.push(Inside::DropPrivileges(user));
        }

        let home = request.user.unwrap_or(User::ROOT).home();
        let mut command = Command::new(request.argv, home, &request.env);
        command.workdir = request.workdir;
        Ok(Plan {
            rootfs,
            namespaces,
            outside,
            inside,
            init: request.init,
            stop_timeout: request.stop_timeout,
            command,
            cgroup: None,
            user_ids,
        })
    }
    // ANCHOR_END: plan

    // ANCHOR: claim_ids
    /// Takes the host ids of the user namespace for this run (see `idrange`): the first slot
    /// of the pool that no other container holds (which may not be the one the plan showed),
    /// or exactly the `--map-base` range or a stopped container's slot. They are ours for as
    /// long as the returned claim lives; `None` when there is nothing to claim (no user
    /// namespace, or a rootless one, which maps only the caller's own id).
    pub fn claim_ids(&mut self) -> Result<Option<Claim>, Error> {
        let Some(ids) = &mut self.user_ids else { return Ok(None) };
        let Some(claim) = ids.claim()? else { return Ok(None) };
        let map = claim.slot().map();
        if map != ids.map {
            mounts::check_reachable(&self.rootfs, map.root_outside(), map.gid.outside)?;
            ids.map = map;
            for step in &mut self.outside {
                if let Outside::IdMaps(planned) = step {
                    *planned = map;
                }
            }
            for step in &mut self.inside {
                if let Inside::BecomeRoot(planned) = step {
                    *planned = map;
                }
            }
        }
        Ok(Some(claim))
    }
    // ANCHOR_END: claim_ids

    // ANCHOR: privileges
    /// Refuses a plan the caller's privileges cannot carry out (the dry run only reports it).
    pub fn check_privileges(&self) -> Result<(), Error> {
        if Uid::effective().is_root() {
            return Ok(());
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(Namespace::User) {
            return Err(invalid(format!(
                "--ns {} needs root: only root may create namespaces without a user namespace; \
                 add user to --ns to run rootless",
                self.namespaces
            )));
        }
        if self.veth().is_some() {
            return Err(invalid(
                "--net veth needs root: the host's end of the pair is created in the host's \
                 network namespace, which takes CAP_NET_ADMIN there; rootless containers get \
                 --net loopback or none"
                    .to_string(),
            ));
        }
        Ok(())
    }
    // ANCHOR_END: privileges

    /// Is there a pid namespace whose PID 1 is the command itself?
    pub fn command_is_pid1(&self) -> bool {
        self.namespaces.contains(Namespace::Pid) && !self.init
    }

    // ANCHOR: add_cgroup
    /// Chapter 3: puts the container in the cgroup of `cgroup`. The parent moves the child in
    /// first thing, before it releases it; the child then makes its cgroup namespace, which
    /// `clone(2)` made in stage 2 but would root at the runtime's cgroup, and mounts `view`
    /// (its own cgroup, read-only) once its new root is in place.
    pub fn add_cgroup(&mut self, cgroup: cgroups::Plan, view: Vec<Step>) {
        if self.namespaces.contains(Namespace::Cgroup) {
            let last_mount = self.inside.iter().rposition(|step| matches!(step, Inside::Mount(_)));
            let at = last_mount.map_or(self.inside.len(), |index| index + 1);
            let mut steps = vec![Inside::UnshareCgroup];
            if self.namespaces.contains(Namespace::Mnt) {
                steps.extend(view.into_iter().map(Inside::CgroupMount));
            }
            self.inside.splice(at..at, steps);
        }
        self.cgroup = Some(cgroup);
    }
    // ANCHOR_END: add_cgroup

    /// The namespaces `clone(2)` makes: all of [`Plan::namespaces`] but those the child makes
    /// itself with `unshare(2)`: time (see `namespaces::unshare_time`), and cgroup when it
    /// must come after the join (see [`Plan::add_cgroup`]).
    pub fn clone_namespaces(&self) -> Namespaces {
        let mut cloned = self.namespaces;
        if self.inside.contains(&Inside::UnshareCgroup) {
            cloned.remove(Namespace::Cgroup);
        }
        cloned
    }

    /// The user namespace's id maps, if there is one.
    pub fn id_map(&self) -> Option<IdMap> {
        self.outside.iter().find_map(|step| match step {
            Outside::IdMaps(map) => Some(*map),
            Outside::Veth(_) => None,
        })
    }

    // ANCHOR: move_rootfs
    /// Moves the container's root to `target`, a directory whose content is made before the
    /// command runs: by the caller (a copy of the rootfs), or by `rootfs_mounts` (a union
    /// mount of it, chapter 4).
    ///
    /// [`Plan::from`] checked the rootfs of the request, the directory whose content the
    /// container will see; `target` may still be empty, or not exist yet in a dry run. The
    /// `rootfs_mounts` run in the new mount namespace right after its mounts are made private,
    /// before the target is bound onto itself and pivoted into: they are never seen by the
    /// host, and end with the namespace.
    pub fn move_rootfs(&mut self, target: &Path, rootfs_mounts: Vec<Step>) -> Result<(), Error> {
        let has = |ns| self.namespaces.contains(ns);
        let steps = if has(Namespace::Mnt) {
            let options = mounts::Options {
                user_ns: has(Namespace::User),
                pid_ns: has(Namespace::Pid),
                net_ns: has(Namespace::Net),
            };
            let mut steps = mounts::container_steps(target, options);
            // The first step makes every mount private; nothing before it may be mounted.
            steps.splice(1..1, rootfs_mounts);
            steps
        } else if rootfs_mounts.is_empty() {
            mounts::chroot_steps(target)
        } else {
            return Err(invalid(format!(
                "the rootfs at {} is made by mounting, which needs the mnt namespace: add mnt \
                 to --ns (without it, the mount would be made on the host)",
                target.display()
            )));
        };
        if let Some(map) = self.id_map() {
            mounts::check_reachable(target, map.root_outside(), map.gid.outside)?;
        }
        // Replace the old root's mount steps by the new root's, where they were.
        let first = self.inside.iter().position(|step| matches!(step, Inside::Mount(_)));
        let first = first.unwrap_or(self.inside.len());
        self.inside.retain(|step| !matches!(step, Inside::Mount(_)));
        let at = first.min(self.inside.len());
        self.inside.splice(at..at, steps.into_iter().map(Inside::Mount));
        self.rootfs = target.to_path_buf();
        Ok(())
    }
    // ANCHOR_END: move_rootfs

    /// The veth subnet, if any.
    pub fn veth(&self) -> Option<Subnet> {
        self.outside.iter().find_map(|step| match step {
            Outside::Veth(subnet) => Some(*subnet),
            Outside::IdMaps(_) => None,
        })
    }

    /// In the parent, when the child is gone (or never started): deletes the host's end of
    /// the veth pair, if there is one (the peer goes with it). When the container's network
    /// namespace has died the kernel has removed both already, and this finds nothing.
    pub fn remove_host_end(&self, child: Option<Pid>) {
        if let (Some(_), Some(pid)) = (self.veth(), child) {
            let _ = network::delete_link(&network::host_link_name(pid));
        }
    }

    /// In the parent: the steps for child `pid`, before it is released.
    pub fn apply_outside(&self, pid: Pid) -> Result<(), Error> {
        self.apply_outside_born(pid, false)
    }

    /// Chapter 3: the cgroup v2 directory the child can be born in (`clone3` with
    /// `CLONE_INTO_CGROUP`, see `namespaces::spawn_into`), instead of being moved in after
    /// the clone. v1 has one directory per hierarchy, and no such thing.
    pub fn cgroup_to_clone_into(&self) -> Option<&Path> {
        let cgroup =
            self.cgroup.as_ref().filter(|cgroup| cgroup.version == cgroups::Version::V2)?;
        match cgroup.join.as_slice() {
            [procs] => procs.parent(),
            _ => None,
        }
    }

    /// [`Plan::apply_outside`], for a child that `born_in_cgroup` or not.
    pub fn apply_outside_born(&self, pid: Pid, born_in_cgroup: bool) -> Result<(), Error> {
        // Chapter 3: into its cgroup first, so that all the child does is counted (unless it
        // was born there).
        if let (Some(cgroup), false) = (&self.cgroup, born_in_cgroup) {
            cgroup.join(&cgroups::Kernel, pid)?;
        }
        for step in &self.outside {
            match step {
                Outside::IdMaps(map) => map.write(pid)?,
                Outside::Veth(subnet) => {
                    network::create_veth(&network::host_link_name(pid), pid, *subnet)?
                }
            }
        }
        Ok(())
    }

    /// In the child: the steps inside the namespaces, one by one.
    pub fn apply_inside(&self) -> Result<(), Error> {
        for step in &self.inside {
            match step {
                Inside::BecomeRoot(map) => {
                    map.become_root()?;
                    die_with_parent();
                }
                Inside::Mount(step) => mounts::apply(std::slice::from_ref(step))?,
                Inside::Hostname(name) => uts::set_hostname(name)?,
                Inside::LoopbackUp => network::loopback_up()?,
                Inside::ContainerEnd(subnet) => network::configure_container_end(*subnet)?,
                Inside::UnshareTime => namespaces::unshare_time()?,
                Inside::DropPrivileges(user) => {
                    user::drop_privileges(*user)?;
                    die_with_parent();
                }
                Inside::UnshareCgroup => cgroups::view::unshare_namespace()?,
                Inside::CgroupMount(step) => mounts::apply(std::slice::from_ref(step))?,
            }
        }
        Ok(())
    }

    /// Does the child stay, as an init, and fork the command? With `--init`; and without a pid
    /// namespace, where no kernel ends what the command leaves behind (see `init::run`).
    pub fn runs_init(&self) -> bool {
        self.init || !self.namespaces.contains(Namespace::Pid)
    }

    /// In the child, last: exec the command, or fork it under a small init (see `runs_init`).
    pub fn start_command(&self, pipe: &ErrorPipe) -> Result<Infallible, Failure> {
        if self.runs_init() {
            init::run(|| process::exec(&self.command), pipe)
        } else {
            process::exec(&self.command)
        }
    }
}

/// In the child, after a change of uid or gid, which clears the parent-death signal set at the
/// clone (man 2 PR_SET_PDEATHSIG): without it again, a container with a user namespace would
/// outlive a `kill -9` of its runtime.
fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and nothing else.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

fn network_mode(request: &Request, net_ns: bool) -> Result<Option<Mode>, Error> {
    match (request.net, net_ns) {
        (None, true) => Ok(Some(Mode::Loopback)),
        (Some(mode), true) => Ok(Some(mode)),
        (None, false) => Ok(None),
        (Some(mode), false) => Err(invalid(format!(
            "--net {mode} needs the net namespace: add net to --ns (without it the container \
             uses the host's network)"
        ))),
    }
}

fn veth_subnet(request: &Request) -> Result<Subnet, Error> {
    let routes = network::host_routes()?;
    match request.subnet {
        Some(subnet) => {
            network::check_free(subnet, &routes)?;
            Ok(subnet)
        }
        None => network::pick_subnet(&routes, std::process::id()),
    }
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

// ANCHOR: display
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = "<pid>";
        writeln!(f, "# the plan: nothing below has run (--dry-run)")?;
        writeln!(f, "# rootfs: {}", self.rootfs.display())?;
        writeln!(f, "# namespaces: {}", self.namespaces)?;
        for line in self.user_ids.iter().flat_map(UserIds::describe) {
            writeln!(f, "# {line}")?;
        }
        if let Some(cgroup) = &self.cgroup {
            writeln!(f, "# cgroup: {} ({})", cgroup.id, cgroup.version)?;
            writeln!(f, "runtime, before the clone:")?;
            for step in &cgroup.steps {
                if !step.why().is_empty() {
                    writeln!(f, "  # {}", step.why())?;
                }
                writeln!(f, "  {step}")?;
            }
        }
        let cloned = self.clone_namespaces();
        let into = self.cgroup_to_clone_into();
        if let Some(dir) = into {
            let flags = match cloned.clone_flags().is_empty() {
                true => String::new(),
                false => format!("{} | ", cloned.flag_names()),
            };
            writeln!(f, "# born in its cgroup: nothing to move, nothing counted elsewhere")?;
            writeln!(f, "clone3({flags}CLONE_INTO_CGROUP, cgroup=open(\"{}\"))", dir.display())?;
        } else if cloned.clone_flags().is_empty() {
            writeln!(f, "# no namespace: a plain fork, as in stage 1")?;
            writeln!(f, "clone(SIGCHLD)")?;
        } else {
            writeln!(f, "clone({} | SIGCHLD)", cloned.flag_names())?;
        }
        writeln!(f, "parent, for child {pid} (which waits on the sync pipe):")?;
        if let (Some(cgroup), None) = (&self.cgroup, into) {
            writeln!(f, "  # into its cgroup first: from now on, all it does is counted")?;
            for procs in &cgroup.join {
                writeln!(f, "  write(\"{}\", \"{pid}\")", procs.display())?;
            }
        }
        for step in &self.outside {
            match step {
                Outside::IdMaps(map) => {
                    for (file, content) in map.writes() {
                        writeln!(f, "  write(\"/proc/{pid}/{file}\", \"{content}\")")?;
                    }
                }
                Outside::Veth(subnet) => {
                    let host = format!("isolab{pid}h");
                    writeln!(
                        f,
                        "  RTM_NEWLINK {host} type veth peer eth0 (IFLA_NET_NS_PID {pid})"
                    )?;
                    writeln!(
                        f,
                        "  RTM_NEWADDR {}/{} dev {host}",
                        subnet.host_address(),
                        subnet.prefix
                    )?;
                    writeln!(f, "  RTM_SETLINK {host} up")?;
                }
            }
        }
        writeln!(f, "  write(sync pipe, \"g\")")?;
        writeln!(f, "child {pid}:")?;
        writeln!(f, "  prctl(PR_SET_PDEATHSIG, SIGKILL)")?;
        let mut last_why = None;
        for step in &self.inside {
            let (line, why) = match step {
                Inside::BecomeRoot(map) => (
                    map.become_root_calls(),
                    Some("uid 0 of the user namespace, host uid of the map"),
                ),
                Inside::Mount(step) => (step.to_string(), step.why()),
                Inside::Hostname(name) => (
                    format!("sethostname(\"{name}\")"),
                    Some("our own hostname; the host keeps its"),
                ),
                Inside::LoopbackUp => {
                    ("ioctl(SIOCSIFFLAGS, \"lo\", IFF_UP)".to_string(), Some("lo up"))
                }
                Inside::ContainerEnd(subnet) => (
                    format!(
                        "RTM_NEWADDR {}/{} dev eth0; RTM_SETLINK eth0 up",
                        subnet.container_address(),
                        subnet.prefix
                    ),
                    Some("our end of the pair"),
                ),
                Inside::UnshareTime => (
                    "unshare(CLONE_NEWTIME)".to_string(),
                    Some("new clocks for our next child, and for us at execve"),
                ),
                Inside::DropPrivileges(user) => (
                    format!("setgroups([{0}]); setgid({0}); setuid({1})", user.gid, user.uid),
                    Some("--user"),
                ),
                Inside::UnshareCgroup => (
                    "unshare(CLONE_NEWCGROUP)".to_string(),
                    Some("in our cgroup now: make it the root of the cgroup tree we see"),
                ),
                Inside::CgroupMount(step) => (step.to_string(), step.why()),
            };
            // Each reason once, above the first step it explains.
            if let Some(why) = why.filter(|&why| Some(why) != last_why) {
                writeln!(f, "  # {why}")?;
                last_why = Some(why);
            }
            writeln!(f, "  {line}")?;
            if matches!(step, Inside::BecomeRoot(_) | Inside::DropPrivileges(_)) {
                writeln!(f, "  # a change of uid clears the parent-death signal: set it again")?;
                writeln!(f, "  prctl(PR_SET_PDEATHSIG, SIGKILL)")?;
                last_why = None;
            }
        }
        let argv: Vec<String> = self
            .command
            .argv
            .iter()
            .map(|arg| format!("\"{}\"", String::from_utf8_lossy(arg.as_bytes())))
            .collect();
        let exec =
            format!("execve({}, [{}])", argv.first().map_or("?", String::as_str), argv.join(", "));
        if self.runs_init() {
            match self.init {
                true => writeln!(f, "  # --init: we stay PID 1, the command is PID 2")?,
                false => {
                    writeln!(f, "  # no pid namespace: we stay, to end what the command leaves")?
                }
            }
            writeln!(f, "  fork()")?;
            writeln!(f, "    child: {exec}")?;
            writeln!(
                f,
                "    init: forward signals to the command, reap orphans, exit with its code"
            )?;
        } else {
            writeln!(f, "  {exec}")?;
        }
        write!(f, "parent: wait for {pid}, forwarding signals")?;
        if self.veth().is_some() {
            write!(f, "; then RTM_DELLINK isolab{pid}h")?;
        }
        writeln!(f)?;
        if let Some(cgroup) = &self.cgroup {
            writeln!(f, "parent, once {pid} has exited:")?;
            writeln!(f, "  # the report: read the cgroup's meters; then kill what is left, and:")?;
            let dirs: Vec<&Path> = cgroup.join.iter().filter_map(|procs| procs.parent()).collect();
            for dir in &dirs {
                writeln!(f, "  rmdir(\"{}\")", dir.display())?;
            }
            writeln!(f, "  # and the shared parents, unless another container is in them")?;
            for parent in dirs.iter().filter_map(|dir| dir.parent()) {
                writeln!(f, "  rmdir(\"{}\")", parent.display())?;
            }
        }
        Ok(())
    }
}
// ANCHOR_END: display

/// The command-line options that describe a container, shared by every stage from 2 on (each
/// stage flattens them into its own `run`, and adds its chapter's options beside them).
#[derive(Debug, Clone, clap::Args)]
pub struct ContainerArgs {
    /// The directory that becomes the command's / (from stage 4 on: the read-only base)
    #[arg(long, value_name = "DIR")]
    pub rootfs: PathBuf,
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
            rootfs: container.rootfs,
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
