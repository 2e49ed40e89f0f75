//! Who the contained process runs as, and how the runtime stops being root.
//!
//! The runtime needs root for its set-up (chroot needs `CAP_SYS_CHROOT`), but the command need
//! not keep it. Dropping privileges is three calls, and their order matters (`man 2 setuid`,
//! `man 2 setgroups`): supplementary groups and the group id can only be changed while we are
//! still root, so `setuid` must come last — once it succeeds there is no way back.

use std::fmt;
use std::str::FromStr;

use nix::unistd::{self, Gid, Uid};

use crate::error::{Error, Result, SysResultExt};

/// A numeric user and group, as given to `--user UID[:GID]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// The user id the command runs as.
    pub uid: u32,
    /// The group id; when `--user` names only a uid, the group has the same number.
    pub gid: u32,
}

impl User {
    /// root:root.
    pub const ROOT: User = User { uid: 0, gid: 0 };

    /// The HOME a command gets: `/root` for root, `/` for everyone else (we do not read the
    /// jail's /etc/passwd: a rootfs need not have one).
    pub fn home(&self) -> &'static str {
        if self.uid == 0 {
            "/root"
        } else {
            "/"
        }
    }
}

impl FromStr for User {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = || {
            Error::Invalid(format!(
                "invalid --user '{text}': expected UID[:GID] as numbers, e.g. 65534 or 1000:1000"
            ))
        };
        let (uid, gid) = match text.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (text, None),
        };
        let uid: u32 = uid.parse().map_err(|_| invalid())?;
        let gid: u32 = match gid {
            Some(gid) => gid.parse().map_err(|_| invalid())?,
            None => uid,
        };
        Ok(User { uid, gid })
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

// ANCHOR: drop_privileges
/// Becomes `user` for good: supplementary groups, then the group, then the user.
pub fn drop_privileges(user: User) -> Result<()> {
    // LAB stage1/drop-privileges BEGIN: become the user for good, in the one order that works
    let gid = Gid::from_raw(user.gid);
    // 1. Forget root's supplementary groups (root is often in groups like `disk`).
    unistd::setgroups(&[gid])
        .sys("setgroups", user.gid)
        .map_err(|e| e.hint("changing groups needs CAP_SETGID: run the runtime as root"))?;
    // 2. The group id, while we still may change it.
    unistd::setgid(gid).sys("setgid", user.gid)?;
    // 3. Last, the user id: from here on we are no longer root.
    unistd::setuid(Uid::from_raw(user.uid)).sys("setuid", user.uid)?;
    Ok(())
    // LAB END
}
// ANCHOR_END: drop_privileges

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uid_and_gid() {
        assert_eq!("1000:100".parse::<User>().unwrap(), User { uid: 1000, gid: 100 });
        assert_eq!("65534".parse::<User>().unwrap(), User { uid: 65534, gid: 65534 });
    }

    #[test]
    fn refuses_names_and_junk() {
        for bad in ["abc", "", "1000:", ":1", "1:2:3", "-1", "1000:abc"] {
            let error = bad.parse::<User>().unwrap_err().to_string();
            assert!(error.starts_with(&format!("invalid --user '{bad}'")), "{bad}: {error}");
        }
    }

    #[test]
    fn home_depends_on_root() {
        assert_eq!(User::ROOT.home(), "/root");
        assert_eq!("65534".parse::<User>().unwrap().home(), "/");
    }
}
