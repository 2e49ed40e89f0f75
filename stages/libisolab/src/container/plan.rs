//! The plan itself: [`Plan::from`] checks a request and lists its steps; the `apply_*`
//! functions run them, in the parent and in the child.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Gid, Pid, Uid};

use super::cgroup::PlannedCgroup;
use super::steps::{Inside, Outside, Veth};
use super::Request;
use crate::chroot;
use crate::error::Error;
use crate::idmap::IdMap;
use crate::idrange::{self, Claim, Claims, UserIds, Wanted};
use crate::init;
use crate::mounts::{self, Step};
use crate::namespaces::{Namespace, Namespaces};
use crate::network::{self, Mode, Subnet};
use crate::process::{self, Command, ErrorPipe, Failure};
use crate::user::User;
use crate::uts;

/// Everything stage 2 will ask the kernel for (and, from chapter 3 on, a labelled part per
/// chapter).
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
    /// Chapter 3: the cgroup the runtime makes before the clone, which the child is in before
    /// it runs a step of its own (see [`Plan::add_cgroup`]).
    pub cgroup: Option<PlannedCgroup>,
    /// The user namespace's host ids and where they come from (see `idrange`), if there is
    /// one; claimed by [`Plan::claim_ids`].
    pub user_ids: Option<UserIds>,
}

pub(super) fn invalid(message: String) -> Error {
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
            outside.push(Outside::Veth(Veth { subnet }));
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
            Outside::Veth(_) | Outside::IdmapLowers(_) => None,
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
            // A copy needs no mount, but without a mount namespace its root would be a chroot
            // into the store, which root of the container leaves with stage 1's escape, to
            // find the store's files within reach.
            return Err(invalid(format!(
                "the rootfs at {} is in the container store, which a chroot does not hide (root \
                 of the container could climb out to the store): add mnt to --ns, so that the \
                 old root is detached after pivot_root",
                target.display()
            )));
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

    /// The veth pair, if any.
    pub fn veth(&self) -> Option<Veth> {
        self.outside.iter().find_map(|step| match step {
            Outside::Veth(veth) => Some(*veth),
            Outside::IdMaps(_) | Outside::IdmapLowers(_) => None,
        })
    }

    /// In the parent, when the child is gone (or never started): deletes the host's end of
    /// the veth pair, if there is one (the peer goes with it). When the container's network
    /// namespace has died the kernel has removed both already, and this finds nothing.
    pub fn remove_host_end(&self, child: Option<Pid>) {
        if let (Some(veth), Some(pid)) = (self.veth(), child) {
            let _ = network::delete_link(&veth.host_link(pid));
        }
    }

    /// In the parent: the steps for child `pid`, before it is released.
    pub fn apply_outside(&self, pid: Pid) -> Result<(), Error> {
        self.apply_outside_born(pid, false)
    }

    /// [`Plan::apply_outside`], for a child that `born_in_cgroup` or not.
    pub fn apply_outside_born(&self, pid: Pid, born_in_cgroup: bool) -> Result<(), Error> {
        // Chapter 3: into its cgroup first, so that all the child does is counted (unless it
        // was born there).
        if let (Some(cgroup), false) = (&self.cgroup, born_in_cgroup) {
            cgroup.join(pid)?;
        }
        for step in &self.outside {
            step.apply(pid)?;
        }
        Ok(())
    }

    /// In the child: the steps inside the namespaces, one by one.
    pub fn apply_inside(&self) -> Result<(), Error> {
        for step in &self.inside {
            step.apply()?;
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
