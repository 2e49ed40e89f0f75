//! What the kernel says of the command, read from the host while it runs: the grader does not
//! take the binary's word for it.
//!
//! A check that reads only the command's stdout can be passed by a script that prints what
//! the command would print (every marker is on its command line). So the key tasks' commands
//! end with `sleep 0.3`, and while the binary runs the grader looks in `/proc` for that
//! `sleep`: a process named `sleep` (`/proc/PID/comm`, set by execve) that descends from the
//! binary's pid. What its `/proc/PID/…` files say, as the host's root reads them, is what the
//! task must show (man 5 proc): its root (`root`, a magic link the host can read files
//! through, into any mount namespace), its ids (`status`), its user namespace's maps
//! (`uid_map`, `gid_map`, shown relative to the reader's namespace: here the host's), its
//! namespaces (`ns/mnt`, `ns/pid`) and its cgroups (`cgroup`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The `sleep` the command ended with, as the host saw it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub pid: i32,
    /// `/proc/PID/root`.
    pub root: PathBuf,
    /// The `Uid:` and `Gid:` lines of `/proc/PID/status`: real, effective, saved, fs.
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    /// `/proc/PID/uid_map` and `gid_map`, each line's words joined by one space.
    pub uid_map: Vec<String>,
    pub gid_map: Vec<String>,
    /// `/proc/PID/ns/mnt` and `ns/pid` (`mnt:[4026531840]`).
    pub mnt_ns: String,
    pub pid_ns: String,
    /// `/proc/PID/cgroup`.
    pub cgroup: String,
    /// Its root is the host's `/` (the same directory of the same mount).
    pub root_is_hosts: bool,
    /// The file the looker was asked to read through its root, if it could.
    pub file: Option<String>,
    /// Whether the path the looker was asked about exists through its root.
    pub visible: Option<bool>,
}

impl Seen {
    /// Its ids, as its own user namespace names them: the host's ids mapped back through its
    /// `uid_map` / `gid_map` (`inside outside count`; no user namespace maps all ids to
    /// themselves).
    pub fn ids_inside(&self) -> (Vec<Option<u32>>, Vec<Option<u32>>) {
        let inside = |ids: &[u32], map: &[String]| -> Vec<Option<u32>> {
            ids.iter()
                .map(|id| {
                    map.iter().find_map(|line| {
                        let words: Vec<u64> =
                            line.split(' ').filter_map(|word| word.parse().ok()).collect();
                        let [first, lower, count] = words[..] else { return None };
                        let id = u64::from(*id);
                        (lower <= id && id < lower + count).then(|| (first + id - lower) as u32)
                    })
                })
                .collect()
        };
        (inside(&self.uids, &self.uid_map), inside(&self.gids, &self.gid_map))
    }
}

/// Looks for the command's `sleep` every time it is called, until it finds it.
#[derive(Default)]
pub struct Looker {
    pub seen: Option<Seen>,
    /// A file to read through the process's root (a path inside it).
    pub file: Option<PathBuf>,
    /// A path to look for through the process's root.
    pub absent: Option<PathBuf>,
}

impl Looker {
    /// One look through `/proc` for a `sleep` under `runtime` (the binary's pid).
    pub fn look(&mut self, runtime: u32) {
        if self.seen.is_some() {
            return;
        }
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != "sleep" || !descends(pid, runtime as i32) {
                continue;
            }
            if let Some(seen) = self.read(pid) {
                self.seen = Some(seen);
                return;
            }
        }
    }
}

/// Is `pid` a descendant of `ancestor` (the parent chain of `/proc/PID/stat`)?
fn descends(pid: i32, ancestor: i32) -> bool {
    let mut current = pid;
    for _ in 0..64 {
        let Some(parent) = parent_of(current) else { return false };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        current = parent;
    }
    false
}

/// The parent's pid: the fourth field of `/proc/PID/stat`, after the command name in
/// parentheses (which may hold spaces and parentheses itself: the last `)` ends it).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

impl Looker {
    fn read(&self, pid: i32) -> Option<Seen> {
        let dir = Path::new("/proc").join(pid.to_string());
        let root = dir.join("root");
        let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
        let root_is_hosts = match (fs::metadata(&root), fs::metadata("/")) {
            (Ok(theirs), Ok(ours)) => (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()),
            _ => true,
        };
        let status = fs::read_to_string(dir.join("status")).ok()?;
        let ids = |key: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(|rest| rest.split_whitespace().filter_map(|word| word.parse().ok()).collect())
                .unwrap_or_default()
        };
        let map = |name: &str| -> Vec<String> {
            fs::read_to_string(dir.join(name))
                .unwrap_or_default()
                .lines()
                .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|line| !line.is_empty())
                .collect()
        };
        let link = |name: &str| {
            fs::read_link(dir.join(name)).map(|p| p.display().to_string()).unwrap_or_default()
        };
        Some(Seen {
            pid,
            root: fs::read_link(dir.join("root")).ok()?,
            uids: ids("Uid:"),
            gids: ids("Gid:"),
            uid_map: map("uid_map"),
            gid_map: map("gid_map"),
            mnt_ns: link("ns/mnt"),
            pid_ns: link("ns/pid"),
            cgroup: fs::read_to_string(dir.join("cgroup")).unwrap_or_default(),
            root_is_hosts,
            file: self.file.as_ref().and_then(|file| fs::read_to_string(inside(file)).ok()),
            visible: self.absent.as_ref().map(|path| inside(path).exists()),
        })
    }
}

/// The grader's own namespace of `kind` (`mnt`, `pid`): the host's.
pub fn host_ns(kind: &str) -> String {
    fs::read_link(format!("/proc/self/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_back_through_the_maps() {
        let seen = Seen {
            uids: vec![102_000, 102_000, 102_000, 102_000],
            gids: vec![7, 7, 7, 7],
            uid_map: vec!["0 100000 65536".into()],
            gid_map: vec!["0 0 4294967295".into()],
            ..Seen::default()
        };
        let (uids, gids) = seen.ids_inside();
        assert_eq!(uids, vec![Some(2000); 4]);
        assert_eq!(gids, vec![Some(7); 4]);
        let outside = Seen { uids: vec![5], uid_map: vec!["0 100000 65536".into()], ..seen };
        assert_eq!(outside.ids_inside().0, vec![None]);
    }

    #[test]
    fn the_parent_is_read_past_a_name_with_parentheses() {
        // Our own parent: the test runner's process is this test's.
        let parent = parent_of(std::process::id() as i32);
        assert_eq!(parent, Some(nix::unistd::getppid().as_raw()));
    }
}
