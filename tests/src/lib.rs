//! Helpers for isolab's end-to-end tests: find the real binaries, give each test its own
//! temporary directory, build a rootfs in it, and run commands as a learner would.
//!
//! Every test runs the binaries as subprocesses (black box). The test runner itself never
//! unshares, mounts or chroots: it is multi-threaded, and such calls would change the state of
//! every test at once.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod registry;
pub use registry::*;

/// Where cargo put the workspace's binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    // The test executable lives in target/<profile>/deps/; the binaries one level up.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
    dir
}

/// The path of a workspace binary, e.g. `bin("stage1-chroot")`.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace`, which the README's \
         test command does)",
        path.display()
    );
    path
}

/// The workspace root (where Cargo.toml, book/ and tests/ are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Are we root? Most of isolab needs it.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Is this CI (`CI=true`)? CI runs as root on a machine `scripts/setup` prepared, so every
/// test can run there, and a test that does not is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Says that `test` (or the part of it that `what` names) did not run on this machine, and
/// `why`. Under CI a test must run, so there this fails instead.
pub fn skip(test: &str, what: &str, why: &str) {
    assert!(!in_ci(), "{test}: {what} cannot run here ({why}), and under CI a test must run");
    eprintln!("skipping {test}: {what}: {why}");
}

/// Says that `test` (or its part `what`) did not run on this machine and `why`, where the same
/// check runs elsewhere, in `covered_by`; so this is no failure under CI either. Name only a
/// check that CI really runs.
pub fn skip_covered(test: &str, what: &str, why: &str, covered_by: &str) {
    eprintln!("skipping {test}: {what}: {why}; covered by {covered_by}");
}

/// Which of `checks` the cgroup v2 lane does *not* run: those without a `pass <check>` in its
/// `/init` (`tests/vm/init`, booted by `tests/tests/cgroup_v2_vm.rs` with cgroup v2's memory,
/// cpu and pids controllers, which this machine's cgroup2 mount lacks).
pub fn not_in_v2_lane<'a>(checks: &[&'a str]) -> Vec<&'a str> {
    let init = std::fs::read_to_string(workspace_root().join("tests/vm/init")).unwrap_or_default();
    let lane = workspace_root().join("tests/tests/cgroup_v2_vm.rs").is_file();
    checks
        .iter()
        .copied()
        .filter(|check| {
            let passes = init.lines().any(|line| line.trim() == format!("pass {check}"));
            !(lane && passes)
        })
        .collect()
}

/// A part of `test` that needs cgroup v2 with controllers, which this machine lacks: covered
/// when the cgroup v2 lane runs every one of `lane_checks`, else a skip (a failure under CI).
pub fn needs_v2_controllers(test: &str, what: &str, lane_checks: &[&str]) {
    let why = "no cgroup2 mount here offers the controllers (they are on cgroup v1)";
    let missing = not_in_v2_lane(lane_checks);
    if missing.is_empty() {
        let covered = format!("the cgroup v2 lane's checks {}", lane_checks.join(", "));
        skip_covered(test, what, why, &covered);
    } else {
        skip(test, what, &format!("{why}, and the v2 lane does not check {}", missing.join(", ")));
    }
}

/// Call at the top of a test that needs root. Returns false (and says so) when the test must
/// be skipped; under CI (`CI=true`) a skip is a failure, because CI runs as root.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, "the whole test", "it needs root (run the tests with sudo, as the README says)");
    false
}

/// Serialises tests that change state shared by the whole host (its hostname, for a moment,
/// during `isolab compare`), so that a test checking that state never sees another's change.
/// Held until dropped; works across test binaries (an flock on a file in /tmp).
pub struct HostLock(#[allow(dead_code)] File);

/// Takes the [`HostLock`].
pub fn host_lock() -> HostLock {
    let file = File::create(std::env::temp_dir().join("isolab-tests-host.lock")).expect("lock");
    // SAFETY: flock on a valid, open fd.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock failed");
    HostLock(file)
}

/// A test's own temporary directory; commands run with it as their working directory, so
/// paths in their output are short and relative (and snapshots stable).
pub struct TestEnv {
    /// The directory; removed when the TestEnv is dropped.
    pub dir: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// A fresh directory under the system's temp dir.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("isolab-test-").tempdir().expect("tempdir");
        TestEnv { dir }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A command for workspace binary `name`, run in this directory.
    pub fn cmd(&self, name: &str) -> Command {
        let mut command = Command::new(bin(name));
        command.current_dir(self.path()).stdin(Stdio::null());
        // The claims of user namespace ids go in the test's own directory, not the host's
        // /var/lib/isolab/userns: nothing is left behind, and tests cannot take each other's.
        command.env("ISOLAB_USERNS_DIR", self.path().join("userns"));
        command
    }

    /// Builds the default busybox rootfs at `<dir>/<name>` and returns its path.
    pub fn busybox_rootfs(&self, name: &str) -> PathBuf {
        let output = self.cmd("rootfs-builder").args(["busybox", name]).output().expect("run");
        assert!(output.status.success(), "rootfs-builder busybox failed: {}", text(&output.stderr));
        self.path().join(name)
    }
}

/// Runs `command` and returns its output (panics if it cannot be started at all).
pub fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

/// The exit code a shell would show (128 + N for a signal).
pub fn code(output: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (output.status.code(), output.status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    }
}

/// Bytes as text (lossy).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A terminal transcript of one command, as the book shows it: the command line a learner
/// types, what it printed (stdout, then stderr), and its exit code when it is not 0.
///
/// `shown` is the command as the reader would type it (with the binary's bare name).
pub fn transcript(shown: &str, output: &Output) -> String {
    let mut out = format!("$ {shown}\n");
    out.push_str(&text(&output.stdout));
    out.push_str(&text(&output.stderr));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let code = code(output);
    if code != 0 {
        out.push_str(&format!("[exit status {code}]\n"));
    }
    out
}

/// Runs workspace binary `name` with `args` in `env` and returns its transcript, shown with
/// the bare binary name.
pub fn transcript_of(env: &TestEnv, name: &str, args: &[&str]) -> (String, Output) {
    let output = run(env.cmd(name).args(args));
    let shown = std::iter::once(name.to_string())
        .chain(args.iter().map(|arg| shell_quote(arg)))
        .collect::<Vec<_>>()
        .join(" ");
    (transcript(&shown, &output), output)
}

/// Quotes an argument the way a reader would type it in a shell (the library's, which stage 4's
/// `ps` shows commands with).
pub use libisolab::cli::shell_quote;

/// insta settings shared by every snapshot: filters for what varies between runs (temporary
/// paths, pids, inode and device numbers, durations), and the snapshot dir beside the tests.
pub fn snapshot_settings(env: Option<&TestEnv>) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(workspace_root().join("tests/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    if let Some(env) = env {
        let real = std::fs::canonicalize(env.path()).unwrap_or_else(|_| env.path().to_path_buf());
        settings.add_filter(&regex_escape(&real.display().to_string()), "[TMP]");
        settings.add_filter(&regex_escape(&env.path().display().to_string()), "[TMP]");
    }
    settings.add_filter(r"/tmp/\.tmp[A-Za-z0-9]+", "[TMP]");
    settings.add_filter(r"/tmp/isolab-[a-z]+-[A-Za-z0-9]+", "[TMP]");
    settings.add_filter(r"\.isolab-escape-\d+", ".isolab-escape-[PID]");
    settings.add_filter(r"device \d+:\d+, inode \d+", "device [DEV], inode [INO]");
    settings.add_filter(r"\b\d+(\.\d+)? ?(ms|µs|s)\b", "[DURATION]");
    settings
}

/// Escapes `text` for use as a literal in an insta filter (a regex).
pub fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// True if `needle` occurs in the host's mount table (`/proc/self/mountinfo`).
pub fn host_mounts_contain(needle: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().contains(needle)
}

/// Is `program` on the host's PATH?
pub fn host_has(program: impl AsRef<OsStr>) -> bool {
    let program = program.as_ref();
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

impl TestEnv {
    /// Opens this directory to everyone (tempdirs are 0700): root inside a user namespace is
    /// an unprivileged uid on the host, and must be able to reach a rootfs in here.
    pub fn open_to_namespaced_root(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod 0755");
    }

    /// A busybox rootfs that root of a user namespace can reach (see
    /// [`TestEnv::open_to_namespaced_root`]).
    pub fn namespaced_rootfs(&self, name: &str) -> PathBuf {
        self.open_to_namespaced_root();
        self.busybox_rootfs(name)
    }

    /// Only the directories a container's mounts need (`proc sys dev tmp`) under `name`: enough
    /// for a `--dry-run`, which checks them but runs nothing.
    pub fn skeleton_rootfs(&self, name: &str) -> PathBuf {
        for dir in ["proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(self.path().join(name).join(dir)).expect("mkdir");
        }
        self.open_to_namespaced_root();
        self.path().join(name)
    }
}

/// Polls `condition` every 20 ms until it holds or `limit` has passed; its last answer.
pub fn eventually(limit: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    condition()
}

/// Lines of the host's mount table that name `dir` (as given, or with symlinks resolved).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            line.contains(&*real.to_string_lossy()) || line.contains(&*dir.to_string_lossy())
        })
        .map(String::from)
        .collect()
}

/// Processes whose root directory is inside `dir`: a container left behind.
///
/// A chrooted process's `/proc/<pid>/root` names its root on the host. One that called
/// `pivot_root(2)` in a mount namespace of its own shows `/` there, so its mount table is read
/// too: the line of its `/` names where that root came from (the bind mount's root within its
/// filesystem, or an overlay's layers in the options), which is inside `dir`.
pub fn processes_rooted_in(dir: &Path) -> Vec<String> {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let needle = real.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() {
            continue;
        }
        let rooted = std::fs::read_link(entry.path().join("root")).is_ok_and(|root| {
            root.starts_with(&real)
                || (root == Path::new("/") && root_mount_names(&entry.path(), &needle))
        });
        if rooted {
            found.push(name);
        }
    }
    found
}

/// Does the mount of `/` in the mount table of process `proc_dir` name `needle`?
fn root_mount_names(proc_dir: &Path, needle: &str) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string(proc_dir.join("mountinfo")) else { return false };
    let found = libisolab::mountinfo::parse(&mountinfo)
        .filter(|mount| mount.mount_point == Path::new("/"))
        .any(|mount| mount.root.starts_with(needle) || mount.super_options.contains(needle));
    found
}

/// A runtime started in the background; killed, with its children (the container's first
/// process), when dropped, also when an assertion fails first. Kills only the pids it started.
pub struct Background(pub std::process::Child);

impl Background {
    /// Starts `command`, its stderr discarded unless the command says otherwise.
    pub fn spawn(command: &mut Command) -> Background {
        Background(
            command.spawn().unwrap_or_else(|error| panic!("cannot start {command:?}: {error}")),
        )
    }

    /// The runtime's pid.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.id() as i32)
    }

    /// Its children now.
    pub fn children(&self) -> Vec<nix::unistd::Pid> {
        let pid = self.0.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
        children
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|child| child.parse().ok())
            .map(nix::unistd::Pid::from_raw)
            .collect()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for child in self.children() {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A description of every entry under `root`: type, mode, owner, size, times and a hash of
/// the content (or link target). Two equal descriptions: nothing was changed, added or
/// removed (reading changes only the access time, which is left out).
pub fn describe_tree(root: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut entries = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        if meta.is_file() {
            std::fs::read(&path).unwrap().hash(&mut hasher);
        } else if meta.file_type().is_symlink() {
            std::fs::read_link(&path).unwrap().hash(&mut hasher);
        } else if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
        let description = format!(
            "mode {:o} owner {}:{} size {} mtime {}.{} ctime {}.{} inode {} content {:x}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.ino(),
            hasher.finish()
        );
        entries.insert(path.strip_prefix(root).unwrap().to_path_buf(), description);
    }
    entries
}
