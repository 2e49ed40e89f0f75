//! Chapter 4's part of the container: its base, idmapped into its user namespace (see
//! [`crate::idmapped`]), so that root inside may change the base's files as the host's root
//! may change them without a user namespace: in its upper, the base never written.
//!
//! Who does what, and when:
//!
//! 1. planning, before anything is written ([`Plan::idmap_lowers`]): the check, with a
//!    throwaway user namespace of the container's maps ([`crate::idmapped::check`]);
//! 2. the runtime, before the clone ([`Plan::open_handoff`]): a socket pair, so that the child
//!    holds its end;
//! 3. the runtime, once the child exists and its id maps are written
//!    ([`Outside::IdmapLowers`]): a detached, idmapped mount of each lower, with the child's
//!    own user namespace (`/proc/<pid>/ns/user`), sent to the child over the socket;
//! 4. the child, once its mounts are private ([`Inside::AttachLowers`]): receives them and
//!    attaches each at its mount point in the container's directory, in its own mount
//!    namespace, where the overlay takes it as a lower.
//!
//! Only a root runtime can, and only it needs to: making an idmapped mount of the host's
//! filesystem takes `CAP_SYS_ADMIN` over it. Rootless, the base is the caller's own, and the
//! caller is root inside already.

use std::cell::OnceCell;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;

use nix::mount::MsFlags;
use nix::unistd::Pid;

use super::plan::invalid;
use super::steps::{Inside, Outside, CHILD};
use super::Plan;
use crate::error::Error;
use crate::idmapped;
use crate::mounts::Step;

/// One lower layer: the base's directory on the host, and the mount point in the container's
/// directory where the child attaches its idmapped mount (the overlay's `lowerdir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lower {
    /// The directory on the host (the container's config records it).
    pub base: PathBuf,
    /// Where its idmapped mount goes, inside the container's mount namespace.
    pub target: PathBuf,
}

/// The lowers to idmap, and the socket pair that takes their mounts from the runtime to the
/// child (opened by [`Plan::open_handoff`]; both steps share it).
#[derive(Debug, Clone)]
pub struct IdmappedLowers {
    /// Topmost first, as the overlay lists them.
    pub lowers: Vec<Lower>,
    /// The check tried a mount of theirs: the runtime notes them once they are idmapped.
    note: bool,
    handoff: Rc<OnceCell<(OwnedFd, OwnedFd)>>,
}

/// Two parts are the same when they list the same lowers and share one socket pair.
impl PartialEq for IdmappedLowers {
    fn eq(&self, other: &Self) -> bool {
        self.lowers == other.lowers
            && self.note == other.note
            && Rc::ptr_eq(&self.handoff, &other.handoff)
    }
}

impl Eq for IdmappedLowers {}

/// How the plan names the socket pair's ends and the mounts (a dry run has no descriptors).
const SOCKET: &str = "<socket>";
const CHILD_END: &str = "<child's socket>";

fn tree(index: usize) -> String {
    format!("<lower{index}>")
}

impl IdmappedLowers {
    fn sockets(&self) -> Result<&(OwnedFd, OwnedFd), Error> {
        self.handoff.get().ok_or_else(|| {
            invalid(
                "no socket pair to hand the idmapped base over: open_handoff must come \
                     before the clone"
                    .to_string(),
            )
        })
    }

    // ANCHOR: handoff
    /// In the runtime, for child `pid` whose id maps are written: a detached mount of each
    /// lower, idmapped through the child's user namespace, sent to the child. Ours are closed
    /// when this returns; the child's copies keep the mounts.
    pub fn send_to(&self, pid: Pid) -> Result<(), Error> {
        let userns = idmapped::user_namespace_of(pid)?;
        let trees = self
            .lowers
            .iter()
            .map(|lower| idmapped::idmapped_tree(&lower.base, userns.as_fd()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(idmapped::after_the_check)?;
        idmapped::send(self.sockets()?.0.as_fd(), &trees)?;
        // Their mounts could be idmapped: the next start's check skips them.
        if self.note {
            let bases: Vec<&std::path::Path> =
                self.lowers.iter().map(|l| l.base.as_path()).collect();
            idmapped::note_idmapped(&bases);
        }
        Ok(())
    }

    /// In the child, in its own mount namespace once it is private: receives the mounts and
    /// attaches each at its mount point.
    pub fn attach(&self) -> Result<(), Error> {
        let trees = idmapped::receive(self.sockets()?.1.as_fd(), self.lowers.len())?;
        for (tree, lower) in trees.into_iter().zip(&self.lowers) {
            idmapped::attach(tree, &lower.target)?;
        }
        Ok(())
    }
    // ANCHOR_END: handoff

    /// The runtime's calls before the clone, as the plan prints them.
    pub(super) fn before_clone(&self) -> String {
        format!("socketpair(AF_UNIX, SOCK_SEQPACKET|SOCK_CLOEXEC) = [{SOCKET}, {CHILD_END}]")
    }

    /// The runtime's calls for the child, one a line, as the plan prints them.
    pub(super) fn outside_calls(&self) -> Vec<String> {
        let mut lines = vec![format!("open(\"/proc/{CHILD}/ns/user\") = <userns>")];
        for (index, lower) in self.lowers.iter().enumerate() {
            let tree = tree(index);
            lines.push(format!(
                "open_tree(AT_FDCWD, \"{}\", {}) = {tree}",
                lower.base.display(),
                idmapped::OPEN_TREE_FLAGS
            ));
            lines.push(format!(
                "mount_setattr({tree}, \"\", AT_EMPTY_PATH, {{attr_set=MOUNT_ATTR_IDMAP, \
                 userns_fd=<userns>}})"
            ));
        }
        let trees: Vec<String> = (0..self.lowers.len()).map(tree).collect();
        lines.push(format!("sendmsg({SOCKET}, SCM_RIGHTS [{}])", trees.join(", ")));
        lines.push(format!(
            "write(\"{}\") unless it notes their mounts already",
            idmapped::verdicts_path().display()
        ));
        lines
    }

    /// The child's calls, on one line, as the plan prints them.
    pub(super) fn inside_calls(&self) -> String {
        let trees: Vec<String> = (0..self.lowers.len()).map(tree).collect();
        let mut calls = vec![format!("recvmsg({CHILD_END}) = SCM_RIGHTS [{}]", trees.join(", "))];
        for (index, lower) in self.lowers.iter().enumerate() {
            calls.push(format!(
                "move_mount({}, \"\", AT_FDCWD, \"{}\", MOVE_MOUNT_F_EMPTY_PATH)",
                tree(index),
                lower.target.display()
            ));
        }
        calls.join("; ")
    }
}

/// The parent's part, as one step prints it (see [`IdmappedLowers::outside_calls`]).
pub(super) struct OutsideCalls<'a>(pub(super) &'a IdmappedLowers);

impl fmt::Display for OutsideCalls<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# the base, as the child's user namespace maps it: host root's is root's")?;
        f.write_str(&self.0.outside_calls().join("\n"))
    }
}

impl Plan {
    // ANCHOR: idmap_lowers
    /// Chapter 4, as root with a user namespace: the container's `lowers` (from the store:
    /// none without a user namespace, and none rootless, where the caller owns its base) are
    /// idmapped into that namespace by the runtime and attached by the child before its
    /// overlay is mounted over them. Checked now, before anything is written: a kernel or a
    /// filesystem that cannot idmap them is refused here.
    pub fn idmap_lowers(&mut self, lowers: Vec<Lower>) -> Result<(), Error> {
        if lowers.is_empty() {
            return Ok(());
        }
        let Some(map) = self.id_map().filter(|map| !map.is_rootless()) else {
            return Err(invalid(
                "an idmapped base needs a user namespace whose maps root writes".to_string(),
            ));
        };
        let bases: Vec<&std::path::Path> =
            lowers.iter().map(|lower| lower.base.as_path()).collect();
        let note = idmapped::check(&bases, &map)?;
        let part = IdmappedLowers { lowers, note, handoff: Rc::default() };
        // The runtime: once the child's maps are written (mount_setattr needs them).
        let maps = self.outside.iter().position(|step| matches!(step, Outside::IdMaps(_)));
        let after_maps = maps.map_or(0, |at| at + 1);
        self.outside.insert(after_maps, Outside::IdmapLowers(part.clone()));
        // The child: once its mounts are private (nothing it attaches may reach the host),
        // before the overlay that takes them as its lowers.
        let private = self.inside.iter().position(|step| {
            matches!(step, Inside::Mount(Step::Mount { source: None, flags, .. })
                if flags.contains(MsFlags::MS_PRIVATE))
        });
        let Some(private) = private else {
            return Err(invalid(
                "an idmapped base is attached in the container's own mount namespace: add mnt \
                 to --ns"
                    .to_string(),
            ));
        };
        self.inside.insert(private + 1, Inside::AttachLowers(part));
        Ok(())
    }
    // ANCHOR_END: idmap_lowers

    /// Before the clone, when the plan idmaps its base: the socket pair the mounts will go
    /// through, so that the child holds its end.
    pub fn open_handoff(&self) -> Result<(), Error> {
        if let Some(part) = self.idmapped_lowers() {
            let pair = idmapped::socket_pair()?;
            // A second call keeps the first pair: the steps share it.
            let _ = part.handoff.set(pair);
        }
        Ok(())
    }

    /// The idmapped lowers, if the plan has them.
    pub fn idmapped_lowers(&self) -> Option<&IdmappedLowers> {
        self.outside.iter().find_map(|step| match step {
            Outside::IdmapLowers(part) => Some(part),
            _ => None,
        })
    }
}
