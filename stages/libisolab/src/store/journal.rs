//! The store's journal: what runtimes are doing to containers right now.
//!
//! Before a runtime creates, runs or removes a container, it writes `<root>/active/<id>`
//! naming what it is doing (`create`, `run` or `remove`); when it is done, it removes the
//! entry. It holds the container's lock all the while. So when `gc` finds an entry whose
//! container's lock is free, it knows three things: isolab was doing this, its runtime is
//! gone, and what was left half done. That is the proof `gc` needs before it removes
//! anything: a directory without an entry is never taken for a half-made container.
//!
//! The journal also keeps `gc` cheap: the `gc` each `run` does first reads only the entries,
//! one per live (or killed) runtime, not every container of the store.
//!
//! An entry is a symbolic link whose target is the word (`active/<id> -> run`), never
//! followed, only read (`readlink(2)`). A link that short lives in its inode (a "fast
//! symlink", as ext4 and xfs store one): writing, replacing and removing an entry allocate
//! and free no data block. Files did, three times per start; freeing a block costs each
//! rename and unlink the filesystem's work on it (on a filesystem mounted with `discard`, a
//! trip to the disk), and ext4 starts writing a file out when a rename replaces another with
//! it (`auto_da_alloc`, ext4(5)). Entries that older versions wrote as files are still read.

use std::fs;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};

use super::files::{is_temporary, temporary};

/// What a runtime was doing to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Making its directories and files.
    Create,
    /// Running its command.
    Run,
    /// Removing it.
    Remove,
}

impl Intent {
    fn word(self) -> &'static str {
        match self {
            Intent::Create => "create",
            Intent::Run => "run",
            Intent::Remove => "remove",
        }
    }
}

/// Records (atomically) that a runtime is doing `intent` to container `id`: a link made under
/// a temporary name, then renamed over the entry (`rename(2)` replaces it in one step, so a
/// reader finds the old word or the new one, never neither). Like every journal write it is
/// not flushed: it must survive a killed runtime (the page cache does), not a power cut
/// (after one, every lock is free and a lost entry makes `gc` report a directory rather than
/// remove it: the safe way to be wrong).
pub(super) fn write(active: &Path, id: &str, intent: Intent) -> Result<()> {
    let temporary = temporary(active, id);
    // One a dead runtime with our pid left goes first (unlinking a link removes the link).
    let _ = fs::remove_file(&temporary);
    std::os::unix::fs::symlink(intent.word(), &temporary)
        .map_err(|error| Error::io("symlink", &temporary, &error))?;
    let path = active.join(id);
    fs::rename(&temporary, &path).map_err(|error| {
        let _ = fs::remove_file(&temporary);
        Error::io("rename", &path, &error)
    })
}

/// [`write`] as the dry run shows it: the link under its temporary name, then the rename.
pub(super) fn write_step(active: &Path, id: &str, intent: Intent) -> String {
    let path = active.join(id).display().to_string();
    format!("symlink(\"{}\", \"{path}.tmp-<pid>\"); rename(…, \"{path}\")", intent.word())
}

/// What the entry for `id` says (`None`: no entry).
pub(super) fn read(active: &Path, id: &str) -> Result<Option<Intent>> {
    let path = active.join(id);
    let text = match fs::read_link(&path) {
        Ok(target) => target.to_string_lossy().into_owned(),
        // Not a link: an entry of an older version, a file holding the word.
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => match read_entry(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io("read", &path, &error)),
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io("readlink", &path, &error)),
    };
    match text.trim() {
        "create" => Ok(Some(Intent::Create)),
        "run" => Ok(Some(Intent::Run)),
        "remove" => Ok(Some(Intent::Remove)),
        // A crash cannot leave this (entries are replaced atomically): someone wrote it.
        other => Err(Error::Invalid(format!(
            "{} says '{other}', not create, run or remove: remove it by hand",
            path.display()
        ))),
    }
}

/// An older entry's text: a regular file only, never waiting on a FIFO.
fn read_entry(path: &Path) -> io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Removes the entry for `id` (done, or nothing to do).
pub(super) fn clear(active: &Path, id: &str) -> Result<()> {
    let path = active.join(id);
    match fs::remove_file(&path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(Error::io("unlink", &path, &error))
        }
        _ => Ok(()),
    }
}

/// The ids with an entry, sorted (temporary files of interrupted writes, and anything that is
/// not an entry, left out).
pub(super) fn ids(active: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(active) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(Error::io("opendir", active, &error)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("readdir", active, &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Only what a runtime writes: a link (or an older version's file) named by a
        // container id. Anything else there (a directory, a stray file, a temporary link of
        // an interrupted write) is nobody's entry, and must not stop the others.
        let kind = entry.file_type();
        let is_entry = kind.is_ok_and(|kind| kind.is_symlink() || kind.is_file());
        if is_entry
            && !is_temporary(&name)
            && name.len() == super::names::ID_LENGTH
            && super::names::looks_like_id(&name)
        {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let active = tmp.path();
        assert_eq!(read(active, "aaaaaaaaaaaa").unwrap(), None);
        write(active, "aaaaaaaaaaaa", Intent::Create).unwrap();
        write(active, "aaaaaaaaaaaa", Intent::Run).unwrap();
        write(active, "bbbbbbbbbbbb", Intent::Remove).unwrap();
        fs::write(active.join("cccccccccccc.tmp-9"), "cr").unwrap();
        fs::create_dir(active.join("abcd")).unwrap();
        fs::create_dir(active.join("dddddddddddd")).unwrap();
        fs::write(active.join("abc"), "junk").unwrap();
        assert_eq!(ids(active).unwrap(), ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]);
        assert_eq!(read(active, "aaaaaaaaaaaa").unwrap(), Some(Intent::Run));
        // A link whose target is the word: no data block to allocate or free.
        assert_eq!(fs::read_link(active.join("aaaaaaaaaaaa")).unwrap(), Path::new("run"));
        assert!(!active
            .join("aaaaaaaaaaaa.tmp-".to_string() + &std::process::id().to_string())
            .exists());
        // An older version's entry, a file holding the word, is read alike.
        fs::write(active.join("ffffffffffff"), "remove\n").unwrap();
        assert_eq!(read(active, "ffffffffffff").unwrap(), Some(Intent::Remove));
        fs::remove_file(active.join("ffffffffffff")).unwrap();
        clear(active, "aaaaaaaaaaaa").unwrap();
        clear(active, "aaaaaaaaaaaa").unwrap();
        assert_eq!(ids(active).unwrap(), ["bbbbbbbbbbbb"]);
        fs::write(active.join("eeeeeeeeeeee"), "nonsense").unwrap();
        assert!(read(active, "eeeeeeeeeeee").is_err());
    }
}
