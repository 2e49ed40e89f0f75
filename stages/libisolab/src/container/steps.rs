//! The steps of a container's plan. Each is one value that both runs ([`Outside::apply`],
//! [`Inside::apply`]) and describes itself (`Display`, what `--dry-run` prints): the words and
//! the work come from the same fields, so they cannot drift apart.

use std::fmt;

use nix::unistd::Pid;

use super::cgroup::JoinItself;
use super::idmapped::{IdmappedLowers, OutsideCalls};
use crate::error::Error;
use crate::idmap::IdMap;
use crate::mounts::{self, Step};
use crate::namespaces;
use crate::network::{self, Subnet};
use crate::user::{self, User};
use crate::uts;

/// How a plan names the child before there is one: a dry run has no pid to show.
pub const CHILD: &str = "<pid>";

/// A step the parent takes for the child, between `clone` and releasing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outside {
    /// Write the child's uid/gid maps (and `setgroups`).
    IdMaps(IdMap),
    /// Create the veth pair, the peer inside the child's net namespace.
    Veth(Veth),
    /// Make an idmapped mount of the base with the child's user namespace, and send it to
    /// the child (chapter 4; see `container::idmapped`).
    IdmapLowers(IdmappedLowers),
}

/// The veth pair of `--net veth`: a cable between the host and the container's network
/// namespace, the host's end named after the child (see [`Veth::host_link`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Veth {
    /// Host `.1`, container `.2`.
    pub subnet: Subnet,
}

impl Veth {
    /// The name of the host's end for child `pid` (or [`CHILD`] in a plan): the one name the
    /// run creates, the dry run shows and the clean-up deletes (see `network::host_link_name`).
    pub fn host_link(&self, pid: impl fmt::Display) -> String {
        network::host_link_name(pid)
    }
}

impl Outside {
    /// In the parent: takes this step for child `pid`.
    pub fn apply(&self, pid: Pid) -> Result<(), Error> {
        match self {
            Outside::IdMaps(map) => map.write(pid),
            Outside::Veth(veth) => network::create_veth(&veth.host_link(pid), pid, veth.subnet),
            Outside::IdmapLowers(lowers) => lowers.send_to(pid),
        }
    }
}

/// The calls, one a line, with [`CHILD`] for the child's pid.
impl fmt::Display for Outside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = Vec::new();
        match self {
            Outside::IdMaps(map) => {
                for (file, content) in map.writes() {
                    lines.push(format!("write(\"/proc/{CHILD}/{file}\", \"{content}\")"));
                }
            }
            Outside::Veth(veth) => {
                let host = veth.host_link(CHILD);
                let subnet = veth.subnet;
                lines.push(format!(
                    "RTM_NEWLINK {host} mtu {mtu} type veth peer eth0 mtu {mtu} (IFLA_NET_NS_PID \
                     {CHILD})",
                    mtu = network::VETH_MTU
                ));
                lines.push(format!(
                    "RTM_NEWADDR {}/{} dev {host}",
                    subnet.host_address(),
                    subnet.prefix
                ));
                lines.push(format!("RTM_SETLINK {host} up"));
            }
            Outside::IdmapLowers(lowers) => lines.push(OutsideCalls(lowers).to_string()),
        }
        f.write_str(&lines.join("\n"))
    }
}

/// A step the child takes inside its namespaces, before the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inside {
    /// cgroup v1: move ourselves into our cgroup, first thing (chapter 3; see
    /// `container::cgroup::JoinItself`).
    JoinCgroup(JoinItself),
    /// Become root of the user namespace (see `idmap::become_root`).
    BecomeRoot(IdMap),
    /// A mount, mkdir, pivot_root… (see `libisolab::mounts`).
    Mount(Step),
    /// Receive the base's idmapped mounts from the parent and attach them (chapter 4; see
    /// `container::idmapped`).
    AttachLowers(IdmappedLowers),
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

impl Inside {
    /// In the child: takes this step.
    pub fn apply(&self) -> Result<(), Error> {
        match self {
            Inside::JoinCgroup(join) => join.apply()?,
            Inside::BecomeRoot(map) => map.become_root()?,
            Inside::Mount(step) | Inside::CgroupMount(step) => {
                mounts::apply(std::slice::from_ref(step))?
            }
            Inside::AttachLowers(lowers) => lowers.attach()?,
            Inside::Hostname(name) => uts::set_hostname(name)?,
            Inside::LoopbackUp => network::loopback_up()?,
            Inside::ContainerEnd(subnet) => network::configure_container_end(*subnet)?,
            Inside::UnshareTime => namespaces::unshare_time()?,
            Inside::DropPrivileges(user) => user::drop_privileges(*user)?,
            Inside::UnshareCgroup => super::cgroup::unshare_namespace()?,
        }
        if self.changes_uid() {
            die_with_parent();
        }
        Ok(())
    }

    /// Does this step change our uid? That clears the parent-death signal set at the clone
    /// (man 2 PR_SET_PDEATHSIG), which [`Inside::apply`] then sets again.
    pub fn changes_uid(&self) -> bool {
        matches!(self, Inside::BecomeRoot(_) | Inside::DropPrivileges(_))
    }

    /// Why the step is there, in words, if it needs saying.
    pub fn why(&self) -> Option<&'static str> {
        match self {
            Inside::JoinCgroup(_) => Some(
                "into our cgroup first, by ourselves: one thread moving itself, no global lock",
            ),
            Inside::BecomeRoot(_) => Some("uid 0 of the user namespace, host uid of the map"),
            Inside::Mount(step) | Inside::CgroupMount(step) => step.why(),
            Inside::AttachLowers(_) => {
                Some("the base, idmapped by the runtime: attached in our own mount namespace")
            }
            Inside::Hostname(_) => Some("our own hostname; the host keeps its"),
            Inside::LoopbackUp => Some("lo up"),
            Inside::ContainerEnd(_) => Some("our end of the pair"),
            Inside::UnshareTime => Some("new clocks for our next child, and for us at execve"),
            Inside::DropPrivileges(_) => Some("--user"),
            Inside::UnshareCgroup => {
                Some("in our cgroup now: make it the root of the cgroup tree we see")
            }
        }
    }
}

/// The call (or calls, on one line), as `strace` would show them.
impl fmt::Display for Inside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inside::JoinCgroup(join) => write!(f, "{join}"),
            Inside::BecomeRoot(map) => f.write_str(&map.become_root_calls()),
            Inside::Mount(step) | Inside::CgroupMount(step) => write!(f, "{step}"),
            Inside::AttachLowers(lowers) => f.write_str(&lowers.inside_calls()),
            Inside::Hostname(name) => write!(f, "sethostname(\"{name}\")"),
            Inside::LoopbackUp => f.write_str("ioctl(SIOCSIFFLAGS, \"lo\", IFF_UP)"),
            Inside::ContainerEnd(subnet) => write!(
                f,
                "RTM_NEWADDR {}/{} dev eth0; RTM_SETLINK eth0 up",
                subnet.container_address(),
                subnet.prefix
            ),
            Inside::UnshareTime => f.write_str("unshare(CLONE_NEWTIME)"),
            Inside::DropPrivileges(user) => {
                write!(f, "setgroups([{0}]); setgid({0}); setuid({1})", user.gid, user.uid)
            }
            Inside::UnshareCgroup => f.write_str("unshare(CLONE_NEWCGROUP)"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_link_the_run_makes_is_the_one_the_plan_shows() {
        let veth = Veth { subnet: "10.200.0.4/30".parse().unwrap() };
        assert_eq!(veth.host_link(Pid::from_raw(4242)), "isolab4242h");
        assert_eq!(
            Outside::Veth(veth).to_string(),
            "RTM_NEWLINK isolab<pid>h mtu 65535 type veth peer eth0 mtu 65535 (IFLA_NET_NS_PID \
             <pid>)\n\
             RTM_NEWADDR 10.200.0.5/30 dev isolab<pid>h\n\
             RTM_SETLINK isolab<pid>h up"
        );
        // The longest pid Linux gives still makes a name the kernel takes.
        assert!(veth.host_link(Pid::from_raw(4_194_304)).len() < libc::IFNAMSIZ);
    }

    #[test]
    fn a_change_of_uid_is_marked() {
        assert!(Inside::DropPrivileges(User::ROOT).changes_uid());
        assert!(!Inside::LoopbackUp.changes_uid());
        assert_eq!(Inside::LoopbackUp.to_string(), "ioctl(SIOCSIFFLAGS, \"lo\", IFF_UP)");
    }
}
