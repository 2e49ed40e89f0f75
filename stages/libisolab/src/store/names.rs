//! Names and ids: how a user's word (`web`, `7cac925614ca`, `7ca`) becomes one container.
//!
//! A container has an id (12 random hex digits, its directory's name) and a name (unique in
//! the store). The store keeps an index of names, `<root>/names/<name>`, a symbolic link whose
//! target is the id: `symlink(2)` fails with EEXIST when the name is taken, so claiming a name
//! is one atomic call, and finding a container by name is one `readlink(2)`, however many
//! containers the store holds.
//!
//! A word is resolved as docker resolves it: an exact id, then an exact name, then a unique
//! prefix of an id; a prefix that fits several ids is refused with the candidates. A name
//! that reads as an id (12 hex digits), or as the start of an existing one, is refused, so
//! that a name never hides a container's id.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

use crate::cgroups;
use crate::error::{Error, Result};

/// How many hex digits an id has.
pub const ID_LENGTH: usize = 12;

// ANCHOR: check_name
/// Checks a `--name`: 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`, and
/// not 12 or more hex digits (it would read as an id). A shorter all-hex name is refused
/// later, by [`super::Store::create`], if it is the start of an existing container's id.
pub fn check_name(name: &str) -> Result<String> {
    // The rule a cgroup's name follows (chapter 3), and one of the store's own.
    cgroups::check_container_name(name)?;
    if looks_like_id(name) && name.len() >= ID_LENGTH {
        return Err(Error::Invalid(format!(
            "invalid container name '{name}': {} hex digits read as a container id; add a \
             letter g-z or a '-'",
            name.len()
        )));
    }
    Ok(name.to_string())
}
// ANCHOR_END: check_name

/// Is `word` made only of lowercase hex digits (an id, or the start of one)?
pub fn looks_like_id(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 64
        && word.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 12 random hex digits, from the kernel's random source (through `rand`'s generator, which
/// `getrandom(2)` seeds).
pub fn random_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Claims `name` for container `id` in the index `names`: a symlink `names/<name>` → `id`.
/// A link whose container is gone (`is_live` says no) is stale and replaced. Returns the id
/// of the container that has the name, if another one does.
pub(super) fn claim(
    names: &Path,
    name: &str,
    id: &str,
    is_live: impl Fn(&str) -> bool,
) -> Result<Option<String>> {
    let link = names.join(name);
    for _ in 0..2 {
        match symlink(id, &link) {
            Ok(()) => return Ok(None),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                match fs::read_link(&link) {
                    Ok(other) => {
                        let other = other.to_string_lossy().into_owned();
                        if other == id || is_live(&other) {
                            return Ok((other != id).then_some(other));
                        }
                        // Stale: its container is gone. Replace it.
                        let _ = fs::remove_file(&link);
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    // Not a link: something else sits in the index; leave it, and say so.
                    Err(error) => {
                        return Err(Error::io("readlink", &link, &error).hint(
                            "the index of names holds something that is not a link isolab \
                             made: remove it, or pick another --name",
                        ))
                    }
                }
            }
            Err(error) => return Err(Error::io("symlink", &link, &error)),
        }
    }
    Err(Error::sys("symlink", link.display(), nix::errno::Errno::EEXIST)
        .hint("another runtime is claiming the same name right now: try again"))
}

/// Releases `name` if it still points at `id` (a name may have been taken over since).
pub(super) fn release(names: &Path, name: &str, id: &str) {
    let link = names.join(name);
    if fs::read_link(&link).is_ok_and(|target| target.as_os_str() == id) {
        let _ = fs::remove_file(&link);
    }
}

/// The id the index has for `name`.
pub(super) fn lookup(names: &Path, name: &str) -> Option<String> {
    if check_name(name).is_err() && !looks_like_id(name) {
        return None; // not a name the index can hold (`..`, `a/b`)
    }
    let target = fs::read_link(names.join(name)).ok()?;
    Some(target.to_string_lossy().into_owned())
}

/// Every (name, id) of the index.
pub(super) fn all(names: &Path) -> Result<Vec<(String, String)>> {
    let entries = match fs::read_dir(names) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(Error::io("opendir", names, &error)),
    };
    let mut pairs = Vec::new();
    for entry in entries.flatten() {
        if let Ok(target) = fs::read_link(entry.path()) {
            pairs.push((
                entry.file_name().to_string_lossy().into_owned(),
                target.to_string_lossy().into_owned(),
            ));
        }
    }
    Ok(pairs)
}

/// What a word resolved to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resolved {
    /// One container id.
    Id(String),
    /// Nothing.
    None,
    /// A prefix that fits several ids (sorted).
    Ambiguous(Vec<String>),
}

/// Resolves `word` against the ids in `ids` (lazily listed: only a prefix needs them) and
/// the index: an exact id, then an exact name, then a unique id prefix.
pub(super) fn resolve(
    word: &str,
    id_exists: impl Fn(&str) -> bool,
    name_to_id: impl Fn(&str) -> Option<String>,
    ids: impl FnOnce() -> Result<Vec<String>>,
) -> Result<Resolved> {
    if word.len() == ID_LENGTH && looks_like_id(word) && id_exists(word) {
        return Ok(Resolved::Id(word.to_string()));
    }
    if let Some(id) = name_to_id(word).filter(|id| id_exists(id)) {
        return Ok(Resolved::Id(id));
    }
    if !looks_like_id(word) {
        return Ok(Resolved::None);
    }
    let mut matches: Vec<String> = ids()?.into_iter().filter(|id| id.starts_with(word)).collect();
    matches.sort();
    Ok(match matches.len() {
        0 => Resolved::None,
        1 => Resolved::Id(matches.remove(0)),
        _ => Resolved::Ambiguous(matches),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("web-1.a_b").is_ok());
        assert!(check_name("web").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65), "7cac925614ca", &"a".repeat(20)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["a", "cafe", "42", "7cac925614c", "7cac925614cag"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        assert_eq!(random_id().len(), ID_LENGTH);
        assert!(looks_like_id(&random_id()));
        assert_ne!(random_id(), random_id());
    }

    #[test]
    fn resolution_order_is_id_then_name_then_prefix() {
        let ids = ["7cac925614ca", "7cab00000000", "123456789abc"];
        let exists = |id: &str| ids.contains(&id);
        let named = |name: &str| match name {
            "web" => Some("123456789abc".to_string()),
            "gone" => Some("000000000000".to_string()), // a stale link
            _ => None,
        };
        let list = || Ok(ids.iter().map(|id| id.to_string()).collect());
        let resolve = |word: &str| resolve(word, exists, named, list).unwrap();
        assert_eq!(resolve("7cac925614ca"), Resolved::Id("7cac925614ca".into()));
        assert_eq!(resolve("web"), Resolved::Id("123456789abc".into()));
        assert_eq!(resolve("gone"), Resolved::None);
        assert_eq!(resolve("7cac"), Resolved::Id("7cac925614ca".into()));
        assert_eq!(
            resolve("7ca"),
            Resolved::Ambiguous(vec!["7cab00000000".into(), "7cac925614ca".into()])
        );
        assert_eq!(resolve("nothing"), Resolved::None);
    }

    #[test]
    fn claims_are_atomic_and_stale_links_are_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let names = tmp.path();
        assert_eq!(claim(names, "web", "aaaaaaaaaaaa", |_| true).unwrap(), None);
        let other = claim(names, "web", "bbbbbbbbbbbb", |_| true).unwrap();
        assert_eq!(other.as_deref(), Some("aaaaaaaaaaaa"));
        // The first container is gone: its link is stale.
        assert_eq!(claim(names, "web", "bbbbbbbbbbbb", |_| false).unwrap(), None);
        assert_eq!(lookup(names, "web").as_deref(), Some("bbbbbbbbbbbb"));
        release(names, "web", "aaaaaaaaaaaa"); // not its name any more: kept
        assert!(lookup(names, "web").is_some());
        release(names, "web", "bbbbbbbbbbbb");
        assert!(lookup(names, "web").is_none());
        assert_eq!(lookup(names, "../etc"), None);
    }
}
