//! Fakes for the tests: a cgroup filesystem in a temporary directory, and a `statfs` that says
//! whatever the test wants.
//!
//! [`FakeTree`] behaves like the kernel where the backends depend on it: `mkdir` fills a new
//! cgroup with interface files (and a write to a file that is not there fails with ENOENT,
//! as it would), `rmdir` refuses a cgroup with processes or children (EBUSY), a write to
//! `cgroup.kill` empties the subtree, and `kill` takes a pid out of every `cgroup.procs`.
//! It also records each call, with paths relative to the tree's root, so that the tests can
//! check the order.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::detect::{FsType, FsTypes};
use super::fs::Cgroupfs;
use crate::error::{io_errno, Result};

/// `statfs` and the mount table, as a test sets them.
pub struct FakeTypes {
    types: HashMap<PathBuf, FsType>,
    mountinfo: String,
}

impl FakeTypes {
    pub fn new(types: &[(&Path, FsType)], mountinfo: &str) -> FakeTypes {
        let types = types.iter().map(|(path, fs_type)| (path.to_path_buf(), *fs_type)).collect();
        FakeTypes { types, mountinfo: mountinfo.to_string() }
    }
}

impl FsTypes for FakeTypes {
    fn fs_type(&self, path: &Path) -> Result<FsType> {
        Ok(self.types.get(path).copied().unwrap_or(FsType::Other(0xef53)))
    }

    fn mountinfo(&self) -> Result<String> {
        Ok(self.mountinfo.clone())
    }
}

/// A cgroup tree in a temporary directory.
#[derive(Clone)]
pub struct FakeTree {
    root: PathBuf,
    /// The files `mkdir` creates in a new cgroup, with their first contents.
    files: Rc<Vec<(String, String)>>,
    running: Rc<RefCell<BTreeSet<i32>>>,
    log: Rc<RefCell<Vec<String>>>,
}

impl FakeTree {
    /// A tree at `root` whose new cgroups get `files` (name, contents).
    pub fn new(root: &Path, files: &[(&str, &str)]) -> FakeTree {
        FakeTree {
            root: root.to_path_buf(),
            files: Rc::new(files.iter().map(|(n, c)| (n.to_string(), c.to_string())).collect()),
            running: Rc::default(),
            log: Rc::default(),
        }
    }

    /// The files a v2 cgroup has (with the memory, cpu, pids and cpuset controllers).
    pub fn v2(root: &Path) -> FakeTree {
        FakeTree::new(
            root,
            &[
                ("cgroup.procs", ""),
                ("cgroup.controllers", ""),
                ("cgroup.subtree_control", ""),
                ("cgroup.kill", ""),
                ("cgroup.events", "populated 0\nfrozen 0\n"),
                ("memory.max", "max\n"),
                ("memory.swap.max", "max\n"),
                ("memory.peak", "0\n"),
                ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
                ("cpu.max", "max 100000\n"),
                ("cpu.weight", "100\n"),
                ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
                ("pids.max", "max\n"),
                ("pids.peak", "0\n"),
                ("cpuset.cpus", ""),
                ("cpuset.mems", ""),
            ],
        )
    }

    /// The files a v1 cgroup has, in any hierarchy (simpler than one list per controller:
    /// the backend must still write only where it should, which the log shows).
    pub fn v1(root: &Path) -> FakeTree {
        FakeTree::new(
            root,
            &[
                ("cgroup.procs", ""),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
                ("memory.max_usage_in_bytes", "0\n"),
                ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
                ("cpu.cfs_period_us", "100000\n"),
                ("cpu.cfs_quota_us", "-1\n"),
                ("cpu.shares", "1024\n"),
                ("cpu.stat", "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"),
                ("cpuacct.usage_user", "0\n"),
                ("cpuacct.usage_sys", "0\n"),
                ("cpuacct.stat", "user 0\nsystem 0\n"),
                ("pids.max", "max\n"),
                ("pids.peak", "0\n"),
                ("cpuset.cpus", "\n"),
                ("cpuset.mems", "\n"),
                ("freezer.state", "THAWED\n"),
            ],
        )
    }

    /// A process the fake `kill(pid, 0)` says runs.
    pub fn run(&self, pid: i32) {
        self.running.borrow_mut().insert(pid);
    }

    /// The calls so far, paths relative to the root; then forgets them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.borrow_mut())
    }

    /// Puts `pid` in the cgroup at `dir` (relative to the root) behind the backend's back.
    pub fn add_process(&self, dir: &str, pid: i32) {
        let procs = self.root.join(dir).join("cgroup.procs");
        let mut text = fs::read_to_string(&procs).unwrap();
        text.push_str(&format!("{pid}\n"));
        fs::write(procs, text).unwrap();
        self.run(pid);
    }

    /// A file's contents, relative to the root.
    pub fn contents(&self, file: &str) -> String {
        fs::read_to_string(self.root.join(file)).unwrap()
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }

    fn record(&self, entry: String) {
        self.log.borrow_mut().push(entry);
    }

    /// Every `cgroup.procs` at or below `dir`.
    fn procs_files(dir: &Path) -> Vec<PathBuf> {
        let mut files = vec![dir.join("cgroup.procs")];
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    files.extend(FakeTree::procs_files(&entry.path()));
                }
            }
        }
        files
    }

    fn remove_pid(dir: &Path, pid: Option<i32>) {
        for procs in FakeTree::procs_files(dir) {
            let Ok(text) = fs::read_to_string(&procs) else { continue };
            let kept: String = text
                .lines()
                .filter(|line| pid.is_some_and(|pid| line.trim() != pid.to_string()))
                .map(|line| format!("{line}\n"))
                .collect();
            fs::write(procs, kept).unwrap();
        }
    }
}

impl Cgroupfs for FakeTree {
    fn mkdir(&self, path: &Path) -> Result<(), Errno> {
        fs::create_dir(path).map_err(|error| io_errno(&error))?;
        for (name, contents) in self.files.iter() {
            fs::write(path.join(name), contents).unwrap();
        }
        self.record(format!("mkdir {}", self.relative(path)));
        Ok(())
    }

    fn rmdir(&self, path: &Path) -> Result<(), Errno> {
        if !path.is_dir() {
            return Err(Errno::ENOENT);
        }
        let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        let has_children = fs::read_dir(path).unwrap().flatten().any(|e| e.path().is_dir());
        if !procs.trim().is_empty() || has_children {
            return Err(Errno::EBUSY);
        }
        fs::remove_dir_all(path).unwrap();
        self.record(format!("rmdir {}", self.relative(path)));
        Ok(())
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), Errno> {
        if !path.is_file() {
            return Err(Errno::ENOENT);
        }
        self.record(format!("write {} {value}", self.relative(path)));
        match path.file_name().and_then(|name| name.to_str()) {
            Some("cgroup.kill") => FakeTree::remove_pid(path.parent().unwrap(), None),
            Some("cgroup.procs") => {
                let mut text = fs::read_to_string(path).unwrap();
                text.push_str(&format!("{value}\n"));
                fs::write(path, text).unwrap();
            }
            _ => fs::write(path, format!("{value}\n")).unwrap(),
        }
        Ok(())
    }

    fn read(&self, path: &Path) -> Result<String, Errno> {
        fs::read_to_string(path).map_err(|error| io_errno(&error))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn children(&self, path: &Path) -> Result<Vec<PathBuf>, Errno> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|error| io_errno(&error))?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.is_dir())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    fn kill(&self, pid: Pid) -> Result<(), Errno> {
        self.record(format!("kill {pid}"));
        if !self.running.borrow_mut().remove(&pid.as_raw()) {
            return Err(Errno::ESRCH);
        }
        FakeTree::remove_pid(&self.root, Some(pid.as_raw()));
        Ok(())
    }

    fn is_running(&self, pid: Pid) -> bool {
        self.running.borrow().contains(&pid.as_raw())
    }
}

/// A whole fake host for what a runtime asks about cgroups: where they are mounted (a
/// [`FakeTypes`]) and the calls on them (a [`FakeTree`]), as [`super::Kernel`] answers both
/// for real. The runtime's code takes it as a parameter, like the kernel.
#[derive(Clone)]
pub struct FakeKernel {
    /// `statfs` and the mount table.
    pub types: Rc<FakeTypes>,
    /// The tree.
    pub tree: FakeTree,
}

impl FsTypes for FakeKernel {
    fn fs_type(&self, path: &Path) -> Result<FsType> {
        self.types.fs_type(path)
    }

    fn mountinfo(&self) -> Result<String> {
        self.types.mountinfo()
    }
}

impl Cgroupfs for FakeKernel {
    fn mkdir(&self, path: &Path) -> Result<(), Errno> {
        self.tree.mkdir(path)
    }

    fn rmdir(&self, path: &Path) -> Result<(), Errno> {
        self.tree.rmdir(path)
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), Errno> {
        self.tree.write(path, value)
    }

    fn read(&self, path: &Path) -> Result<String, Errno> {
        self.tree.read(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.tree.exists(path)
    }

    fn children(&self, path: &Path) -> Result<Vec<PathBuf>, Errno> {
        self.tree.children(path)
    }

    fn kill(&self, pid: Pid) -> Result<(), Errno> {
        self.tree.kill(pid)
    }

    fn is_running(&self, pid: Pid) -> bool {
        self.tree.is_running(pid)
    }
}
