//! The UTS namespace: a hostname of the container's own.
//!
//! "UTS" is the `struct utsname` that `uname(2)` fills in (UNIX Time-sharing System); the
//! namespace holds its `nodename` (the hostname) and `domainname`. In a new UTS namespace
//! `sethostname(2)` changes only the namespace's copy: the host keeps its name
//! (`man 7 uts_namespaces`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::error::{Error, Result, SysResultExt};

// ANCHOR: set_hostname
/// Sets the hostname of the calling process's UTS namespace (`man 2 sethostname`).
pub fn set_hostname(name: &str) -> Result<()> {
    nix::unistd::sethostname(name).sys("sethostname", name).map_err(|error| {
        error.hint("without a UTS namespace of its own this would rename the host: add uts to --ns")
    })
}
// ANCHOR_END: set_hostname

/// A short name for a container that was given none: `isolab-` and six hex digits.
pub fn generated_name() -> String {
    // RandomState is seeded from the OS's random source: no extra crate needed.
    let random = RandomState::new().build_hasher().finish();
    format!("isolab-{:06x}", random & 0xff_ffff)
}

/// Checks a `--hostname`: 1 to 64 bytes (`HOST_NAME_MAX`), letters, digits, `-` and `.`.
pub fn check_hostname(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid --hostname '{name}': 1 to 64 letters, digits, '-' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_short_and_valid() {
        let name = generated_name();
        assert_eq!(name.len(), "isolab-".len() + 6);
        check_hostname(&name).unwrap();
    }

    #[test]
    fn refuses_bad_names() {
        assert!(check_hostname("").is_err());
        assert!(check_hostname("a b").is_err());
        assert!(check_hostname(&"x".repeat(65)).is_err());
        check_hostname("box-1.lab").unwrap();
    }
}
