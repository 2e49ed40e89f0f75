//! User namespaces: which user and group ids *inside* are which ids *outside*.
//!
//! A new user namespace starts with no ids mapped at all: its processes are `nobody` (65534)
//! to themselves, and cannot `setuid` to anything. The parent, from outside, writes the maps:
//! `/proc/<pid>/uid_map` and `/proc/<pid>/gid_map`, one line `inside outside count` each
//! (`man 7 user_namespaces`, "User and group ID mappings"). Two cases matter here:
//!
//! - **rootless** (the caller is not root): an unprivileged process may map exactly one id,
//!   its own, and must first write `deny` to `/proc/<pid>/setgroups` before it may write the
//!   gid map (otherwise it could drop a group that was denying it access to a file, which
//!   setgroups(2) would have forbidden; CVE-2014-8989). We map the caller to root inside.
//! - **root with a user namespace**: root may map any range. We map root inside to 65,536
//!   unprivileged ids outside, a slot that no host user and no other container has (see
//!   [`crate::idrange`]: e.g. `0 1000000000 65536`): the container's root is then a host uid
//!   that owns nothing there. That is the point, and its price: root inside cannot write the
//!   rootfs's root-owned files, nor enter a directory outside that is closed to "others"
//!   (chapter 4 shows a container its base through an idmapped mount, `idmapped`, whose
//!   root-owned files are root's inside).

use std::fmt;
use std::fs;

use nix::unistd::{Gid, Pid, Uid};

use crate::error::{Error, Result, SysResultExt};

/// How many ids are mapped when the runtime runs as root: 0–65535 inside, as a full system has.
pub const DEFAULT_COUNT: u32 = 65_536;

/// One line of a map: ids `inside..inside+count` are `outside..outside+count` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First id inside the namespace.
    pub inside: u32,
    /// The id it is outside.
    pub outside: u32,
    /// How many consecutive ids.
    pub count: u32,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.inside, self.outside, self.count)
    }
}

/// The maps the parent writes for a child in a new user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// The line for `uid_map`.
    pub uid: Range,
    /// The line for `gid_map`.
    pub gid: Range,
    /// Write `deny` to `setgroups` first (required for an unprivileged caller).
    pub deny_setgroups: bool,
}

impl IdMap {
    /// The maps of a root caller: root inside is host uid `uid` and gid `gid`, and the 65,535
    /// ids above it inside are the ones above those outside.
    pub fn root_to(uid: u32, gid: u32) -> IdMap {
        IdMap {
            uid: Range { inside: 0, outside: uid, count: DEFAULT_COUNT },
            gid: Range { inside: 0, outside: gid, count: DEFAULT_COUNT },
            deny_setgroups: false,
        }
    }

    /// The rootless map of any other caller: its own `uid`/`gid` as root inside, the one id it
    /// may map, and `setgroups` denied.
    pub fn rootless(uid: Uid, gid: Gid) -> IdMap {
        IdMap {
            uid: Range { inside: 0, outside: uid.as_raw(), count: 1 },
            gid: Range { inside: 0, outside: gid.as_raw(), count: 1 },
            deny_setgroups: true,
        }
    }

    /// Is this the one-id map of an unprivileged caller?
    pub fn is_rootless(&self) -> bool {
        self.deny_setgroups
    }

    /// The uid that root inside is on the host.
    pub fn root_outside(&self) -> u32 {
        self.uid.outside
    }

    /// Does the map cover `uid` inside (so that `setuid(uid)` can work there)?
    pub fn maps_uid(&self, uid: u32) -> bool {
        uid >= self.uid.inside && uid - self.uid.inside < self.uid.count
    }

    /// Does the map cover `gid` inside?
    pub fn maps_gid(&self, gid: u32) -> bool {
        gid >= self.gid.inside && gid - self.gid.inside < self.gid.count
    }

    /// The writes, in order: `(file, content)` with `file` relative to `/proc/<pid>/`.
    pub fn writes(&self) -> Vec<(&'static str, String)> {
        // LAB stage2/id-maps BEGIN: the map files, in the order the kernel accepts them
        let mut writes = Vec::new();
        if self.deny_setgroups {
            writes.push(("setgroups", "deny".to_string()));
        }
        writes.push(("uid_map", self.uid.to_string()));
        writes.push(("gid_map", self.gid.to_string()));
        writes
        // LAB END
    }

    // ANCHOR: write
    /// Writes the maps of child `pid`, from the parent (outside its user namespace).
    ///
    /// Each map file may be written once, in a single `write(2)`; `setgroups` must be `deny`
    /// before an unprivileged process may write `gid_map`.
    pub fn write(&self, pid: Pid) -> Result<()> {
        for (file, content) in self.writes() {
            let path = format!("/proc/{pid}/{file}");
            fs::write(&path, format!("{content}\n")).map_err(|error| {
                Error::io("write", format!("'{content}' to {path}"), &error).hint(
                    "root may map a range, any other user only its own id (man 7 \
                     user_namespaces); the uid range outside must not overflow",
                )
            })?;
        }
        Ok(())
    }
    // ANCHOR_END: write

    // ANCHOR: become_root
    /// In the child, once the maps are written: become root *of the namespace*.
    ///
    /// The child keeps the host ids it was cloned with; when the runtime ran as root, that is
    /// host uid 0, which the new namespace does not map (inside it shows as 65534, and files
    /// it creates there fail with EOVERFLOW). `setresuid(0, 0, 0)` makes it the namespace's
    /// uid 0, i.e. the mapped host uid; a process that is uid 0 of its user namespace keeps
    /// its capabilities *in that namespace* (`man 7 user_namespaces`, `man 7 capabilities`).
    /// Supplementary groups go too, when the map allows it (not rootless: setgroups is denied).
    pub fn become_root(&self) -> Result<()> {
        use nix::unistd::{setgroups, setresgid, setresuid};
        let (root_uid, root_gid) = (Uid::from_raw(0), Gid::from_raw(0));
        if !self.deny_setgroups {
            setgroups(&[root_gid]).sys("setgroups", "[0]")?;
        }
        setresgid(root_gid, root_gid, root_gid).sys("setresgid", "0, 0, 0")?;
        setresuid(root_uid, root_uid, root_uid).sys("setresuid", "0, 0, 0")?;
        Ok(())
    }
    // ANCHOR_END: become_root

    /// The calls [`IdMap::become_root`] makes, as the plan prints them.
    pub fn become_root_calls(&self) -> String {
        let groups = if self.deny_setgroups { "" } else { "setgroups([0]); " };
        format!("{groups}setresgid(0, 0, 0); setresuid(0, 0, 0)")
    }
}

/// Parses `--map-base`, the first host uid/gid that root inside maps to.
pub fn parse_base(text: &str) -> Result<u32> {
    let base: u32 = text.parse().map_err(|_| {
        Error::Invalid(format!("invalid --map-base '{text}': expected a uid, e.g. 1000000000"))
    })?;
    if base == 0 || base.checked_add(DEFAULT_COUNT).is_none() {
        return Err(Error::Invalid(format!(
            "invalid --map-base '{text}': root inside must map to an unprivileged range, from 1 \
             to {}",
            u32::MAX - DEFAULT_COUNT
        )));
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_maps_a_range_without_touching_setgroups() {
        let map = IdMap::root_to(1_000_000_000, 1_000_065_536);
        let writes: Vec<String> =
            map.writes().iter().map(|(file, content)| format!("{file}: {content}")).collect();
        assert_eq!(writes, ["uid_map: 0 1000000000 65536", "gid_map: 0 1000065536 65536"]);
        assert!(map.maps_uid(65534) && !map.maps_uid(65536));
    }

    #[test]
    fn rootless_maps_only_itself_and_denies_setgroups_first() {
        let map = IdMap::rootless(Uid::from_raw(1000), Gid::from_raw(100));
        let writes: Vec<String> =
            map.writes().iter().map(|(file, content)| format!("{file}: {content}")).collect();
        assert_eq!(writes, ["setgroups: deny", "uid_map: 0 1000 1", "gid_map: 0 100 1"]);
        assert!(map.is_rootless() && map.maps_uid(0) && !map.maps_uid(1));
    }

    #[test]
    fn base_must_be_unprivileged() {
        assert_eq!(parse_base("200000").unwrap(), 200000);
        assert!(parse_base("0").is_err());
        assert!(parse_base("abc").is_err());
        assert!(parse_base("4294967295").is_err());
    }
}
