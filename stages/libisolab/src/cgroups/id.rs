//! The name of a container's cgroup, `<name>-<runtime pid>`, and the rule a container's name
//! follows (which the store of chapter 4 keeps, and adds to).

use std::fmt;

use nix::unistd::Pid;

use crate::error::{Error, Result};

/// Checks a container's name: 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`.
/// The name becomes a directory's (a cgroup's here, a store's entry in chapter 4), so it must
/// not be `..`, hold a `/` or hide itself; the store adds its own rule about names that read as
/// ids (`store::check_name`).
pub fn check_container_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(Error::Invalid(format!(
            "invalid container name '{name}': use 1 to 64 letters, digits, '-', '_' or '.', not \
             starting with '.'"
        )));
    }
    Ok(())
}

/// The name of a container's cgroup: `<name>-<runtime pid>`.
///
/// The runtime's pid is part of the name so that a cgroup left behind by a runtime that was
/// killed (even with SIGKILL, which leaves no chance to clean up) can be recognised later:
/// it is stale when no process with that pid runs any more (see [`super::gc()`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId {
    name: String,
    runtime: i32,
}

impl ContainerId {
    /// The id of container `name`, run by the runtime with pid `runtime`.
    pub fn new(name: &str, runtime: Pid) -> Result<ContainerId> {
        check_container_name(name)?;
        Ok(ContainerId { name: name.to_string(), runtime: runtime.as_raw() })
    }

    /// The id of container `name` run by this process.
    pub fn for_this_runtime(name: &str) -> Result<ContainerId> {
        ContainerId::new(name, nix::unistd::getpid())
    }

    /// Reads a cgroup directory's name back; `None` if it is not one of ours.
    pub fn parse(dir_name: &str) -> Option<ContainerId> {
        let (name, pid_text) = dir_name.rsplit_once('-')?;
        let pid: i32 = pid_text.parse().ok().filter(|&pid| pid > 0)?;
        if pid.to_string() != pid_text {
            return None; // "c1-007" or "c1-+7" is not a name we would have made
        }
        ContainerId::new(name, Pid::from_raw(pid)).ok()
    }

    /// The container's name, without the pid.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the runtime that created the cgroup.
    pub fn runtime_pid(&self) -> Pid {
        Pid::from_raw(self.runtime)
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.name, self.runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_id_round_trips_and_refuses_what_we_never_make() {
        let id = ContainerId::new("web-1", Pid::from_raw(4242)).unwrap();
        assert_eq!(id.to_string(), "web-1-4242");
        assert_eq!(ContainerId::parse("web-1-4242"), Some(id));
        for not_ours in ["web", "web-", "-42", "web-0", "web-x", "web-007", ".x-42", "a b-42"] {
            assert_eq!(ContainerId::parse(not_ours), None, "{not_ours}");
        }
        assert!(ContainerId::new("", Pid::from_raw(1)).is_err());
        assert!(ContainerId::new("a/b", Pid::from_raw(1)).is_err());
    }
}
