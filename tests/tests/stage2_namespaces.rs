//! Stage 2 end to end: the real `stage2-namespaces` binary in a busybox rootfs built by the real
//! `rootfs-builder`. Each test looks from inside (what the command prints) and from outside
//! (the host's hostname, mount table, links, IPC objects), and leaves nothing behind: links,
//! shm segments and processes are removed by guards even when an assertion fails.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use isolab_tests::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const STAGE: &str = "stage2-namespaces";

/// Runs stage2-namespaces with `args` and returns the transcript (as the book shows it).
fn stage2(env: &TestEnv, args: &[&str]) -> (String, Output) {
    transcript_of(env, STAGE, args)
}

/// The shared filters, plus what varies in stage 2's output: the binary's directory, the
/// generated hostname, veth names, MAC addresses and interface indexes.
fn settings(env: &TestEnv) -> insta::Settings {
    let mut settings = snapshot_settings(Some(env));
    let bin = bin_dir().display().to_string();
    settings.add_filter(&format!("{}/", regex_escape(&bin)), "");
    settings.add_filter(r"isolab-[0-9a-f]{6}\b", "isolab-[HOSTNAME]");
    settings.add_filter(r"isolab\d+h", "isolab[PID]h");
    settings.add_filter(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", "[MAC]");
    settings.add_filter(r"@if\d+", "@if[N]");
    settings
}

/// The isolab links on the host (`ip -o link`: the test may use `ip`; the runtime may not).
fn isolab_links() -> Vec<String> {
    let output = run(Command::new("ip").args(["-o", "link"]));
    text(&output.stdout)
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or_default().to_string())
        .filter(|name| name.starts_with("isolab"))
        .collect()
}

fn link_exists(name: &str) -> bool {
    isolab_links().iter().any(|link| link == name)
}

/// The runtime's child (the container's first process), as the host sees it.
fn child_of(runtime: &Child) -> Option<Pid> {
    let pid = runtime.id();
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok().map(Pid::from_raw)
}

/// Kills a started runtime and its container, and deletes its host link, whatever happened.
struct Running {
    runtime: Child,
    container: Option<Pid>,
}

impl Running {
    fn start(command: &mut Command) -> Running {
        let runtime = command.spawn().expect("start stage2-namespaces");
        let mut running = Running { runtime, container: None };
        assert!(
            eventually(Duration::from_secs(5), || {
                running.container = child_of(&running.runtime);
                running.container.is_some()
            }),
            "the runtime started no container"
        );
        running
    }

    fn link(&self) -> String {
        format!("isolab{}h", self.container.unwrap())
    }

    fn runtime_pid(&self) -> Pid {
        Pid::from_raw(self.runtime.id() as i32)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.runtime.kill();
        if let Some(pid) = self.container {
            let _ = kill(pid, Signal::SIGKILL);
            let name = format!("isolab{pid}h");
            if link_exists(&name) {
                let _ = Command::new("ip").args(["link", "del", &name]).output();
            }
        }
        let _ = self.runtime.wait();
    }
}

/// Serialises the tests that create veth links with the one that checks none is created.
static LINKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn dry_run_prints_the_plan_without_root() {
    let env = TestEnv::new();
    // A rootfs need not be real for a plan: only the mount points must exist.
    env.skeleton_rootfs("rootfs");
    let cases: &[(&str, &[&str])] = &[
        (
            "stage2_dry_run_mnt_uts_ipc_pid_net",
            &["--ns", "mnt,uts,ipc,pid,net", "--hostname", "box"],
        ),
        ("stage2_dry_run_none", &["--ns", "none"]),
        ("stage2_dry_run_mnt_pid_init", &["--ns", "mnt,pid", "--init"]),
    ];
    for (name, options) in cases {
        let mut args = vec!["run", "--rootfs", "rootfs", "--dry-run"];
        args.extend_from_slice(options);
        args.extend_from_slice(&["--", "/bin/sh", "-c", "echo hello"]);
        let (transcript, output) = stage2(&env, &args);
        assert_eq!(code(&output), 0, "{transcript}");
        assert!(output.stderr.is_empty(), "{transcript}");
        // Only a plan: nothing was mounted in the rootfs.
        assert_eq!(fs::read_dir(env.path().join("rootfs/dev")).unwrap().count(), 0);
        // The root-only plans say, for another user, that they would be refused.
        let transcript = transcript
            .lines()
            .filter(|line| !line.starts_with("# as uid"))
            .map(|line| format!("{line}\n"))
            .collect::<String>();
        settings(&env).bind(|| insta::assert_snapshot!(*name, transcript));
    }
}

#[test]
fn dry_run_with_user_namespace_and_veth() {
    if !require_root("dry_run_with_user_namespace_and_veth") {
        return;
    }
    let env = TestEnv::new();
    env.skeleton_rootfs("rootfs");
    let (all, output) = stage2(
        &env,
        &[
            "run",
            "--rootfs",
            "rootfs",
            "--dry-run",
            "--hostname",
            "box",
            "--net",
            "veth",
            "--subnet",
            "10.213.0.0/30",
            "--",
            "/bin/sh",
        ],
    );
    assert_eq!(code(&output), 0, "{all}");
    // Root's container maps root inside to a slot of the pool: the plan shows its first slot
    // (root's range in /etc/subuid, or isolab's own pool), which no host user has.
    let hosts = libisolab::idrange::HostIds::read(Path::new("/etc")).unwrap();
    let first = libisolab::idrange::Pool::of(&hosts).first().unwrap();
    let map = format!("write(\"/proc/<pid>/uid_map\", \"0 {} 65536\")", first.uid);
    assert!(all.contains(&map), "{all}");
    assert!(all.contains("# a run claims the first slot no other container holds"), "{all}");
    settings(&env).bind(|| insta::assert_snapshot!("stage2_dry_run_all_veth", all));

    // The same request from an unprivileged user: rootless maps, and veth refused.
    let output = run(Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(bin(STAGE))
        .args(["run", "--rootfs", "rootfs", "--dry-run", "--hostname", "box", "--", "/bin/sh"])
        .current_dir(env.path()));
    let shown = "stage2-namespaces run --rootfs rootfs --dry-run --hostname box -- /bin/sh";
    let rootless = transcript(&format!("{shown}   # as uid 65534"), &output);
    assert_eq!(code(&output), 0, "{rootless}");
    assert!(rootless.contains("write(\"/proc/<pid>/setgroups\", \"deny\")"), "{rootless}");
    settings(&env).bind(|| insta::assert_snapshot!("stage2_dry_run_rootless", rootless));
}

#[test]
fn the_command_is_pid_1_and_sees_no_host_process() {
    if !require_root("the_command_is_pid_1_and_sees_no_host_process") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let (ps, output) = stage2(&env, &["run", "--rootfs", "rootfs", "--", "ps"]);
    assert_eq!(code(&output), 0, "{ps}");
    let (ps_init, output) = stage2(&env, &["run", "--rootfs", "rootfs", "--init", "--", "ps"]);
    assert_eq!(code(&output), 0, "{ps_init}");

    // From inside: $$ is 1, and /proc lists only the container's processes.
    let output = run(env.cmd(STAGE).args([
        "run",
        "--rootfs",
        "rootfs",
        "--",
        "/bin/sh",
        "-c",
        "echo $$; ls /proc | grep -E '^[0-9]+$' | wc -l",
    ]));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"1"), "{stdout}");
    // sh, ls, grep and wc: a handful, where the host has many.
    let inside: usize = lines[1].trim().parse().unwrap();
    assert!(inside <= 4, "{stdout}");
    // From outside: the host sees this test process; inside, no such pid exists.
    let me = std::process::id().to_string();
    let output = run(env.cmd(STAGE).args(["run", "--rootfs", "rootfs", "--", "/bin/ls", "/proc"]));
    assert!(
        !text(&output.stdout).split_whitespace().any(|entry| entry == me),
        "host pid {me} visible"
    );
    assert!(Path::new(&format!("/proc/{me}")).exists());

    settings(&env).bind(|| {
        insta::assert_snapshot!("stage2_ps", ps);
        insta::assert_snapshot!("stage2_ps_init", ps_init);
    });
}

#[test]
fn the_hostname_is_the_containers_own() {
    if !require_root("the_hostname_is_the_containers_own") {
        return;
    }
    let _lock = host_lock();
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let host_before = nix::unistd::gethostname().unwrap();
    let mut running = Running::start(env.cmd(STAGE).stdout(Stdio::piped()).args([
        "run",
        "--rootfs",
        "rootfs",
        "--hostname",
        "box",
        "--",
        "/bin/sh",
        "-c",
        "hostname; sleep 1",
    ]));
    let mut line = String::new();
    BufReader::new(running.runtime.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "box\n");
    // While the container runs with its own name, the host keeps its name.
    assert_eq!(nix::unistd::gethostname().unwrap(), host_before);
    assert!(running.runtime.wait().unwrap().success());
    assert_eq!(nix::unistd::gethostname().unwrap(), host_before);

    let (transcript, output) =
        stage2(&env, &["run", "--rootfs", "rootfs", "--hostname", "box", "--", "hostname"]);
    assert_eq!(code(&output), 0, "{transcript}");
    settings(&env).bind(|| insta::assert_snapshot!("stage2_hostname", transcript));
}

#[test]
fn a_mount_inside_is_absent_from_the_hosts_table() {
    if !require_root("a_mount_inside_is_absent_from_the_hosts_table") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let marker = format!("isolab-marker-{}", std::process::id());
    let script = format!(
        "mkdir /tmp/m && mount -t tmpfs {marker} /tmp/m && grep -c {marker} /proc/self/mountinfo \
         && sleep 1"
    );
    let mut running = Running::start(
        env.cmd(STAGE)
            .stdout(Stdio::piped())
            .args(["run", "--rootfs", "rootfs", "--", "/bin/sh", "-c", &script]),
    );
    let mut line = String::new();
    BufReader::new(running.runtime.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "1\n", "inside, the tmpfs is mounted");
    assert!(!host_mounts_contain(&marker), "the container's tmpfs leaked to the host");
    // Nor does any of the container's own mounts (its /proc, /dev, /tmp) show on the host.
    assert!(!host_mounts_contain(&format!("{}/rootfs/", env.path().display())));
    assert!(running.runtime.wait().unwrap().success());
    assert!(mounts_under(env.path()).is_empty(), "no mount left behind");

    let (transcript, output) = stage2(&env, &["run", "--rootfs", "rootfs", "--", "mount"]);
    assert_eq!(code(&output), 0, "{transcript}");
    // Shown whole, options included; only what differs from machine to machine becomes a
    // placeholder: the host's disk under the rootfs, devtmpfs's size (half the host's memory),
    // and the host uid of root inside (the slot the run claimed).
    let mut settings = settings(&env);
    settings.add_filter(r"(?m)^\S+ on / type .*$", "[HOST DEVICE] on / type [FS] ([ITS OPTIONS])");
    settings.add_filter(r"size=\d+k,nr_inodes=\d+", "size=[HALF THE RAM]k,nr_inodes=[N]");
    settings.add_filter(r"uid=\d+,gid=\d+", "uid=[ROOT OUTSIDE],gid=[ROOT OUTSIDE]");
    settings.bind(|| insta::assert_snapshot!("stage2_mounts", transcript));
}

#[test]
fn stage1s_escape_fails() {
    if !require_root("stage1s_escape_fails") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let (held, output) = stage2(&env, &["escape", "--rootfs", "rootfs"]);
    assert_eq!(code(&output), 1, "{held}");
    assert!(held.contains("the container held"), "{held}");
    // Without a mount namespace, stage 2 falls back to chroot: and root walks out again.
    let (escaped, output) = stage2(&env, &["escape", "--rootfs", "rootfs", "--ns", "none"]);
    assert_eq!(code(&output), 0, "{escaped}");
    assert!(escaped.contains("escaped: / is now the host's root"), "{escaped}");
    assert_eq!(fs::read_dir(env.path().join("rootfs/tmp")).unwrap().count(), 0);
    settings(&env).bind(|| {
        insta::assert_snapshot!("stage2_escape", held);
        insta::assert_snapshot!("stage2_escape_ns_none", escaped);
    });
}

#[test]
fn ip_link_shows_only_the_containers_devices() {
    if !require_root("ip_link_shows_only_the_containers_devices") {
        return;
    }
    let _links = LINKS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let (loopback, output) = stage2(&env, &["run", "--rootfs", "rootfs", "--", "ip", "link"]);
    assert_eq!(code(&output), 0, "{loopback}");
    let devices = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|line| line.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .map(|line| {
                line.split(':').nth(1).unwrap().trim().split('@').next().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(devices(&text(&output.stdout)), ["lo"]);
    assert!(text(&output.stdout).contains("UP"), "lo is up: {loopback}");

    let (none, output) =
        stage2(&env, &["run", "--rootfs", "rootfs", "--net", "none", "--", "ip", "link"]);
    assert_eq!(devices(&text(&output.stdout)), ["lo"]);
    assert!(!text(&output.stdout).contains(",UP"), "--net none leaves lo down: {none}");

    let output = run(env
        .cmd(STAGE)
        .args(["run", "--rootfs", "rootfs", "--net", "veth", "--", "ip", "link"]));
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    assert_eq!(devices(&text(&output.stdout)), ["lo", "eth0"]);
    // The host has its devices, the container saw none of them.
    let host = text(&run(Command::new("ip").args(["-o", "link"])).stdout);
    assert!(host.lines().count() >= 2);

    settings(&env).bind(|| {
        insta::assert_snapshot!("stage2_ip_link", loopback);
        insta::assert_snapshot!("stage2_ip_link_none", none);
    });
}

#[test]
fn tcp_over_the_veth_pair_and_links_gone_after_exit() {
    if !require_root("tcp_over_the_veth_pair_and_links_gone_after_exit") {
        return;
    }
    let _links = LINKS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let port = 7000 + (std::process::id() % 1000) as u16;
    let script =
        format!("ip -o -4 addr show eth0; echo hello from the container | nc -l -p {port}");
    let mut running = Running::start(
        env.cmd(STAGE)
            .stdout(Stdio::piped())
            .args(["run", "--rootfs", "rootfs", "--net", "veth", "--", "/bin/sh", "-c", &script]),
    );
    let link = running.link();
    assert!(eventually(Duration::from_secs(5), || link_exists(&link)), "{link} on the host");

    // The container prints its address: `2: eth0    inet 10.200.x.y/30 scope global eth0`.
    let mut line = String::new();
    let mut stdout = BufReader::new(running.runtime.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let address: Ipv4Addr = line
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert_eq!(address.octets()[..2], [10, 200], "{line}");

    // From the host, connect to the container's end (nc may need a moment to listen).
    let target = SocketAddr::from((address, port));
    let mut received = String::new();
    let connected = eventually(Duration::from_secs(5), || {
        match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                stream.read_to_string(&mut received).is_ok()
            }
            Err(_) => false,
        }
    });
    assert!(connected, "no TCP connection to {target}");
    assert_eq!(received, "hello from the container\n");

    assert!(running.runtime.wait().unwrap().success());
    assert!(eventually(Duration::from_secs(5), || !link_exists(&link)), "{link} left behind");
}

#[test]
fn links_are_gone_after_sigkill_of_the_runtime() {
    if !require_root("links_are_gone_after_sigkill_of_the_runtime") {
        return;
    }
    let _links = LINKS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let mut running = Running::start(env.cmd(STAGE).args([
        "run",
        "--rootfs",
        "rootfs",
        "--net",
        "veth",
        "--",
        "/bin/sleep",
        "30",
    ]));
    let link = running.link();
    let container = running.container.unwrap();
    assert!(eventually(Duration::from_secs(5), || link_exists(&link)), "{link} on the host");

    kill(running.runtime_pid(), Signal::SIGKILL).unwrap();
    let _ = running.runtime.wait();
    // The container dies with its runtime (PR_SET_PDEATHSIG); kill it anyway, in case.
    let _ = kill(container, Signal::SIGKILL);
    assert!(
        eventually(Duration::from_secs(5), || !Path::new(&format!("/proc/{container}")).exists()),
        "the container outlived its runtime"
    );
    // Its network namespace died with it, and took both ends of the pair.
    assert!(eventually(Duration::from_secs(5), || !link_exists(&link)), "{link} left behind");
}

/// A SysV shared-memory segment on the host, removed again when dropped.
struct HostShm {
    id: i32,
    key: i32,
}

impl HostShm {
    fn create() -> HostShm {
        let key = 0x1500_0000 | (std::process::id() as i32 & 0xffff);
        // SAFETY: shmget with plain integer arguments.
        let id = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
        HostShm { id, key }
    }
}

impl Drop for HostShm {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID on our own segment; no buffer is passed.
        unsafe { libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

#[test]
fn a_host_shm_segment_is_invisible_inside() {
    if !require_root("a_host_shm_segment_is_invisible_inside") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let shm = HostShm::create();
    let key = shm.key.to_string();
    // /proc/sysvipc/shm lists the segments of the reader's ipc namespace (busybox has no ipcs).
    let list = ["run", "--rootfs", "rootfs", "--", "/bin/cat", "/proc/sysvipc/shm"];
    let output = run(env.cmd(STAGE).args(list));
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    let keys = |output: &Output| -> Vec<String> {
        text(&output.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    };
    assert!(!keys(&output).contains(&key), "host segment {key} visible inside");
    // Without the ipc namespace the very same command sees it: the test can see what it checks.
    let output = run(env.cmd(STAGE).args([
        "run",
        "--rootfs",
        "rootfs",
        "--ns",
        "mnt,pid",
        "--",
        "/bin/cat",
        "/proc/sysvipc/shm",
    ]));
    assert!(keys(&output).contains(&key), "{}", text(&output.stdout));
}

#[test]
fn sigterm_to_the_runtime_ends_the_command_with_143_under_init() {
    if !require_root("sigterm_to_the_runtime_ends_the_command_with_143_under_init") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let mut running = Running::start(env.cmd(STAGE).args([
        "run",
        "--rootfs",
        "rootfs",
        "--init",
        "--",
        "/bin/sleep",
        "30",
    ]));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    kill(running.runtime_pid(), Signal::SIGTERM).unwrap();
    let status = running.runtime.wait().unwrap();
    assert_eq!(status.code(), Some(143), "the runtime reports the command's death by SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(5), "the command ended promptly");
}

#[test]
fn pid_1_without_init_drops_sigterm_and_says_so() {
    if !require_root("pid_1_without_init_drops_sigterm_and_says_so") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let mut running = Running::start(env.cmd(STAGE).stderr(Stdio::piped()).args([
        "run",
        "--rootfs",
        "rootfs",
        "--",
        "/bin/sleep",
        "30",
    ]));
    std::thread::sleep(Duration::from_millis(300));
    kill(running.runtime_pid(), Signal::SIGTERM).unwrap();
    let mut line = String::new();
    BufReader::new(running.runtime.stderr.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("SIGTERM not delivered") && line.contains("--init"), "{line}");
    // sleep, as PID 1 without a handler, is still running.
    std::thread::sleep(Duration::from_millis(300));
    assert!(running.runtime.try_wait().unwrap().is_none(), "sleep should have ignored SIGTERM");
    // SIGKILL from the parent namespace is never dropped.
    kill(running.container.unwrap(), Signal::SIGKILL).unwrap();
    assert_eq!(running.runtime.wait().unwrap().code(), Some(137));
}

#[test]
fn exit_codes_are_the_commands_own() {
    if !require_root("exit_codes_are_the_commands_own") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    fs::write(env.path().join("rootfs/etc/notes.txt"), "not a program\n").unwrap();
    let cases: &[(&[&str], i32)] = &[
        (
            &["run", "--rootfs", "rootfs", "--", "/bin/sh", "-c", "echo hello from the namespaces"],
            0,
        ),
        (&["run", "--rootfs", "rootfs", "--", "/bin/sh", "-c", "exit 3"], 3),
        (&["run", "--rootfs", "rootfs", "--", "/etc/notes.txt"], 126),
        (&["run", "--rootfs", "rootfs", "--", "python3"], 127),
        (&["run", "--rootfs", "rootfs", "--init", "--", "/bin/sh", "-c", "kill -KILL $$"], 137),
        // As PID 1, the shell is immune to its own SIGKILL: the kernel drops it.
        (
            &["run", "--rootfs", "rootfs", "--", "/bin/sh", "-c", "kill -KILL $$; echo still here"],
            0,
        ),
    ];
    let mut shown = String::new();
    for (args, expected) in cases {
        let (transcript, output) = stage2(&env, args);
        assert_eq!(code(&output), *expected, "{transcript}");
        shown.push_str(&transcript);
    }
    settings(&env).bind(|| insta::assert_snapshot!("stage2_exit_codes", shown));
}

#[test]
fn rootless_as_an_unprivileged_user() {
    if !require_root("rootless_as_an_unprivileged_user") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    let script =
        "id; cat /proc/self/uid_map; echo pid $$; touch /bin/x || echo the rootfs is not ours";
    let output = run(Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(bin(STAGE))
        .args([
            "run",
            "--rootfs",
            "rootfs",
            "--hostname",
            "rootless",
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
        .current_dir(env.path()));
    let stderr = text(&output.stderr);
    assert!(
        !stderr.contains("refuses unprivileged user namespaces"),
        "this kernel does not allow unprivileged user namespaces, so rootless mode cannot run \
         here (check kernel.unprivileged_userns_clone, user.max_user_namespaces and AppArmor's \
         kernel.apparmor_restrict_unprivileged_userns): {stderr}"
    );
    let shown = transcript(
        &format!(
            "setpriv --reuid 65534 --regid 65534 --clear-groups {STAGE} run --rootfs rootfs \
             --hostname rootless -- /bin/sh -c {}",
            shell_quote(script)
        ),
        &output,
    );
    assert_eq!(code(&output), 0, "{shown}");
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("uid=0(root) gid=0(root)"), "root inside: {stdout}");
    assert!(stdout.contains("0      65534          1"), "mapped to 65534 outside: {stdout}");
    assert!(stdout.contains("pid 1\n"), "{stdout}");
    assert!(!env.path().join("rootfs/bin/x").exists());
    settings(&env).bind(|| insta::assert_snapshot!("stage2_rootless", shown));
}

#[test]
fn bad_input_is_one_line_exit_125_and_leaves_nothing() {
    if !require_root("bad_input_is_one_line_exit_125_and_leaves_nothing") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    for dir in ["noproc/sys", "noproc/dev", "noproc/tmp"] {
        fs::create_dir_all(env.path().join(dir)).unwrap();
    }
    let _links = LINKS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let links_before = isolab_links();

    let cases: &[&[&str]] = &[
        &["run", "--rootfs", "rootfs", "--ns", "mnt,bogus", "--", "/bin/true"],
        &["run", "--rootfs", "noproc", "--", "/bin/true"],
        &[
            "run",
            "--rootfs",
            "rootfs",
            "--net",
            "veth",
            "--subnet",
            "127.1.0.0/30",
            "--",
            "/bin/true",
        ],
        &[
            "run",
            "--rootfs",
            "rootfs",
            "--net",
            "veth",
            "--subnet",
            "10.200.0.1/30",
            "--",
            "/bin/true",
        ],
        &["run", "--rootfs", "rootfs", "--ns", "mnt,pid", "--net", "veth", "--", "/bin/true"],
        &["run", "--rootfs", "rootfs", "--ns", "mnt,pid", "--hostname", "box", "--", "/bin/true"],
    ];
    let mut shown = String::new();
    let check = |transcript: &str, output: &Output| {
        assert_eq!(code(output), 125, "{transcript}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("stage2-namespaces: error: "), "{stderr}");
        assert!(output.stdout.is_empty());
    };
    for args in cases {
        let (transcript, output) = stage2(&env, args);
        check(&transcript, &output);
        shown.push_str(&transcript);
    }

    // --net veth without root and without a user namespace.
    let output = run(Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(bin(STAGE))
        .args(["run", "--rootfs", "rootfs", "--ns", "mnt,net", "--net", "veth", "--", "/bin/true"])
        .current_dir(env.path()));
    let typed = "stage2-namespaces run --rootfs rootfs --ns mnt,net --net veth -- /bin/true";
    let rootless = transcript(&format!("{typed}   # as uid 65534"), &output);
    check(&rootless, &output);
    assert!(rootless.contains("needs root"), "{rootless}");
    shown.push_str(&rootless);

    // A subnet inside the network of the host's default route's device (host-specific: not
    // in the snapshot).
    let routes = fs::read_to_string("/proc/net/route").unwrap();
    if let Some(network) = routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?;
        let destination = u32::from_str_radix(fields.get(1)?, 16).ok()?;
        let prefix = u32::from_be_bytes(mask.to_ne_bytes()).leading_ones();
        (prefix > 0 && prefix <= 30).then(|| Ipv4Addr::from(destination.to_ne_bytes()))
    }) {
        let subnet = format!("{network}/30");
        let output = run(env.cmd(STAGE).args([
            "run",
            "--rootfs",
            "rootfs",
            "--net",
            "veth",
            "--subnet",
            &subnet,
            "--",
            "/bin/true",
        ]));
        check(&subnet, &output);
        assert!(text(&output.stderr).contains("overlaps the host's route"));
    }

    // Nothing left behind: no mounts, no links, no processes in the rootfs.
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    assert_eq!(isolab_links(), links_before);
    assert!(processes_rooted_in(env.path()).is_empty());
    settings(&env).bind(|| insta::assert_snapshot!("stage2_errors", shown));
}

#[test]
fn a_closed_parent_directory_is_named_with_the_fix() {
    if !require_root("a_closed_parent_directory_is_named_with_the_fix") {
        return;
    }
    let env = TestEnv::new();
    env.busybox_rootfs("rootfs");
    // The tempdir stays 0700: root inside (a uid of the pool outside) cannot enter it.
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let (transcript, output) = stage2(&env, &["run", "--rootfs", "rootfs", "--", "/bin/true"]);
    assert_eq!(code(&output), 125, "{transcript}");
    assert!(
        transcript.contains("is mode 0700") && transcript.contains("chmod o+x"),
        "{transcript}"
    );
    // Without the user namespace, root is root and may enter.
    let (_, output) = stage2(
        &env,
        &["run", "--rootfs", "rootfs", "--ns", "mnt,uts,ipc,pid,net", "--", "/bin/true"],
    );
    assert_eq!(code(&output), 0);
    settings(&env).bind(|| insta::assert_snapshot!("stage2_closed_parent", transcript));
}
