//! The throughput workloads: what runs on each side, and how its output becomes a number.
//!
//! Every workload is one command line whose program is the same file on the host and inside
//! the rootfs (`/usr/bin/sysbench`, `/usr/bin/iperf3`, `/isolab/probe`, the host's
//! `isolab-probe`): whatever differs between the sides is where it ran, never what ran. The
//! sides take turns round after round, in a rotating order, so that a machine that gets busier
//! during the run slows every side alike; each round gives one ratio.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use super::report::Row;
use super::stats::{self, Better, Summary};
use super::{check_interrupted, output, Bench, CrunOverlay, Plan, Progress, Section};

/// Where a workload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// On the host, as root, in the host's namespaces.
    Host,
    /// In a throw-away container of the highest stage built.
    Container,
    /// In crun (when installed), from a copy of the same rootfs.
    Crun,
}

/// One row of the report: what a number means.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RowInfo {
    /// The row's id in JSON.
    pub id: &'static str,
    /// What is measured, as the table says it (`{MiB}` stands for the copy-up file's size;
    /// the report's row carries the label with it filled in).
    #[serde(skip)]
    pub what: &'static str,
    /// The tool that measured it.
    pub tool: &'static str,
    /// The unit of the samples.
    pub unit: &'static str,
    /// Whether more or less is better.
    pub better: Better,
    /// The seed's 2014 ratio (Docker 1.1.2), where it measured the same.
    pub seed_2014: Option<f64>,
    /// The ratio this project aims at, if any.
    pub goal: Option<f64>,
}

impl RowInfo {
    /// What is measured, with the copy-up file's size filled in.
    pub fn label(&self, plan: &Plan) -> String {
        self.what.replace("{MiB}", &plan.copy_up_mib.to_string())
    }
}

/// A workload: one command per side, whose output gives one sample per row.
#[derive(Debug)]
pub struct Workload {
    /// The `--only` part it belongs to.
    pub section: Section,
    /// The rows its runs fill, in the order `run` returns their samples.
    pub rows: &'static [RowInfo],
    /// The sides it runs on (crun only where crun is installed).
    pub sides: &'static [Side],
    /// One run on one side: a sample per row.
    pub run: fn(&Bench, &Plan, Side) -> Result<Vec<f64>>,
}

const WITHIN_3_PERCENT: Option<f64> = Some(0.97);

// ANCHOR: workloads
/// Every throughput workload, in the report's order: the seed's table, then what it did not
/// measure (the copy-up, the loopback inside the container).
pub const WORKLOADS: &[Workload] = &[
    Workload {
        section: Section::Cpu,
        rows: &[RowInfo {
            id: "cpu",
            what: "CPU",
            tool: "sysbench cpu",
            unit: "events/s",
            better: Better::Higher,
            seed_2014: Some(0.9945),
            goal: WITHIN_3_PERCENT,
        }],
        sides: &[Side::Host, Side::Container, Side::Crun],
        run: cpu,
    },
    Workload {
        section: Section::Mem,
        rows: &[RowInfo {
            id: "memory-write",
            what: "memory, write",
            tool: "sysbench memory",
            unit: "MiB/s",
            better: Better::Higher,
            seed_2014: Some(0.9826),
            goal: WITHIN_3_PERCENT,
        }],
        sides: &[Side::Host, Side::Container, Side::Crun],
        run: memory_write,
    },
    Workload {
        section: Section::Mem,
        rows: &[RowInfo {
            id: "memory-read",
            what: "memory, read",
            tool: "sysbench memory",
            unit: "MiB/s",
            better: Better::Higher,
            seed_2014: Some(1.0025),
            goal: WITHIN_3_PERCENT,
        }],
        sides: &[Side::Host, Side::Container, Side::Crun],
        run: memory_read,
    },
    Workload {
        section: Section::Disk,
        rows: &[
            RowInfo {
                id: "disk-write",
                what: "disk, write (O_DIRECT)",
                tool: "isolab-probe",
                unit: "MiB/s",
                better: Better::Higher,
                seed_2014: Some(0.9811),
                goal: WITHIN_3_PERCENT,
            },
            RowInfo {
                id: "disk-read",
                what: "disk, read (O_DIRECT)",
                tool: "isolab-probe",
                unit: "MiB/s",
                better: Better::Higher,
                seed_2014: None,
                goal: WITHIN_3_PERCENT,
            },
        ],
        sides: &[Side::Host, Side::Container, Side::Crun],
        run: disk,
    },
    Workload {
        section: Section::Disk,
        rows: &[RowInfo {
            id: "copy-up",
            what: "disk, first write to an image's {MiB} MiB file (copy-up)",
            tool: "isolab-probe",
            unit: "ms",
            better: Better::Lower,
            seed_2014: None,
            goal: None,
        }],
        sides: &[Side::Host, Side::Container, Side::Crun],
        run: copy_up,
    },
    Workload {
        section: Section::Net,
        rows: &[
            RowInfo {
                id: "network-veth",
                what: "network, container → host over veth",
                tool: "iperf3",
                unit: "Gbit/s",
                better: Better::Higher,
                seed_2014: Some(0.9626),
                goal: Some(0.85),
            },
            RowInfo {
                id: "network-loopback",
                what: "network, loopback inside the container",
                tool: "iperf3",
                unit: "Gbit/s",
                better: Better::Higher,
                seed_2014: None,
                goal: None,
            },
        ],
        sides: &[Side::Host, Side::Container, Side::Crun],
        run: network,
    },
];
// ANCHOR_END: workloads

/// Runs `workload` on its sides, `plan.runs` rounds, and summarises each row.
pub fn measure(
    bench: &Bench,
    workload: &Workload,
    plan: &Plan,
    progress: &mut Progress,
) -> Result<Vec<Row>> {
    let sides: Vec<Side> = workload
        .sides
        .iter()
        .copied()
        .filter(|&side| side != Side::Crun || bench.crun.is_some())
        .collect();
    // samples[side][row][round]
    let mut samples = vec![vec![Vec::new(); workload.rows.len()]; sides.len()];
    for round in 0..plan.runs as usize {
        // Rotate who goes first, so that no side is always the one after a container's exit.
        for offset in 0..sides.len() {
            let index = (round + offset) % sides.len();
            let side = sides[index];
            progress.step(&format!(
                "{} on {side:?} ({}/{})",
                workload.rows[0].label(plan),
                round + 1,
                plan.runs
            ));
            check_interrupted()?;
            let values = (workload.run)(bench, plan, side)
                .with_context(|| format!("{} on {side:?}", workload.rows[0].label(plan)))?;
            for (row, value) in values.into_iter().enumerate() {
                samples[index][row].push(value);
            }
        }
    }
    let of = |side: Side| sides.iter().position(|&s| s == side);
    let host = of(Side::Host).context("every workload runs on the host")?;
    let container = of(Side::Container).context("every workload runs in a container")?;
    let mut rows = Vec::new();
    for (row, info) in workload.rows.iter().enumerate() {
        let summary = |index: usize| Summary::of(&samples[index][row]);
        let ratio = |index: usize| {
            stats::ratios(&samples[host][row], &samples[index][row], info.better)
                .and_then(|ratios| Summary::of(&ratios))
        };
        let container_ratio = ratio(container).context("a run gave no positive value")?;
        let crun = of(Side::Crun);
        rows.push(Row {
            what: info.label(plan),
            info: *info,
            runs: plan.runs,
            host: summary(host).context("no host samples")?,
            container: summary(container).context("no container samples")?,
            noise: stats::noise(&container_ratio),
            meets_goal: info.goal.map(|goal| container_ratio.median >= goal),
            ratio: container_ratio,
            crun: crun.and_then(summary),
            crun_ratio: crun.and_then(ratio),
        });
    }
    Ok(rows)
}

/// Runs `argv` (paths as inside the rootfs) on `side`, and returns its stdout.
fn on_side(bench: &Bench, side: Side, argv: &[&str], what: &str) -> Result<String> {
    let mut command = match side {
        Side::Host => {
            let mut command = Command::new(bench.on_host(argv[0]));
            command.args(&argv[1..]);
            command
        }
        Side::Container => bench.in_container(&bench.store, &[], argv),
        Side::Crun => {
            let bundle = bench.crun.as_ref().context("crun is not installed")?;
            bench.in_crun(bundle, argv)?
        }
    };
    output(&mut command, what)
}

/// `sysbench cpu`: primes up to 10,000, one thread, a fixed number of events.
fn cpu(bench: &Bench, plan: &Plan, side: Side) -> Result<Vec<f64>> {
    let events = format!("--events={}", plan.cpu_events);
    let argv = ["/usr/bin/sysbench", "cpu", "--threads=1", "--time=0", &events, "run"];
    let text = on_side(bench, side, &argv, "sysbench cpu")?;
    Ok(vec![number_after(&text, "events per second:")?])
}

fn memory_write(bench: &Bench, plan: &Plan, side: Side) -> Result<Vec<f64>> {
    memory(bench, plan, side, "write")
}

fn memory_read(bench: &Bench, plan: &Plan, side: Side) -> Result<Vec<f64>> {
    memory(bench, plan, side, "read")
}

/// `sysbench memory`: one thread sweeps a 64 MiB block (far larger than any CPU cache) until
/// it has moved the plan's total.
fn memory(bench: &Bench, plan: &Plan, side: Side, operation: &str) -> Result<Vec<f64>> {
    let total = format!("--memory-total-size={}M", plan.memory_mib);
    let operation = format!("--memory-oper={operation}");
    let argv = [
        "/usr/bin/sysbench",
        "memory",
        "--threads=1",
        "--time=0",
        "--memory-block-size=64M",
        &total,
        &operation,
        "run",
    ];
    let text = on_side(bench, side, &argv, "sysbench memory")?;
    // "4096.00 MiB transferred (9541.28 MiB/sec)"
    let line = text.lines().find(|line| line.contains("MiB/sec")).context("no MiB/sec line")?;
    let inside = line.split('(').nth(1).context("no '(' in the MiB/sec line")?;
    Ok(vec![number_after(inside, "")?])
}

/// The probe's O_DIRECT write and read: on the host in a directory beside the store, in a
/// container at its root (the overlay's upper, on that same filesystem), in crun at the root
/// of its bundle (a plain directory there too).
fn disk(bench: &Bench, plan: &Plan, side: Side) -> Result<Vec<f64>> {
    let mib = plan.disk_mib.to_string();
    let host_dir = bench.host_disk_dir.to_string_lossy().into_owned();
    let dir = if side == Side::Host { host_dir.as_str() } else { "/" };
    let argv = ["/isolab/probe", "bench", "disk", "--dir", dir, "--mib", &mib];
    let text = on_side(bench, side, &argv, "isolab-probe bench disk")?;
    let speed: isolab_probe::bench::DiskSpeed =
        serde_json::from_str(text.trim()).context("the probe's disk result is not JSON")?;
    let mib_per_second = |bytes: f64| bytes / f64::from(1u32 << 20);
    Ok(vec![
        mib_per_second(speed.write_bytes_per_second),
        mib_per_second(speed.read_bytes_per_second),
    ])
}

/// The first write to a large file: a fresh container's copy-up of the image's file, against
/// the same write to a file of the same size on the host (no copy there).
fn copy_up(bench: &Bench, _: &Plan, side: Side) -> Result<Vec<f64>> {
    let host_file = bench.host_big_file.to_string_lossy().into_owned();
    let file = match side {
        Side::Host => host_file,
        _ => format!("/{}", super::BIG_FILE),
    };
    let argv = ["/isolab/probe", "bench", "first-write", "--file", &file];
    let what = "isolab-probe bench first-write";
    let text = match side {
        // crun's root is an overlay too: the file in a lower of its own over the bundle's
        // rootfs, a fresh upper each run, as a stage's container has.
        Side::Crun => {
            let bundle = bench.crun.as_ref().context("crun is not installed")?;
            static RUNS: AtomicU64 = AtomicU64::new(0);
            let overlay = CrunOverlay::new(bench, RUNS.fetch_add(1, Ordering::SeqCst))?;
            output(&mut bench.crun_command(bundle, &argv, None, Some(&overlay))?, what)?
        }
        _ => on_side(bench, side, &argv, what)?,
    };
    let measured: isolab_probe::bench::FirstWrite =
        serde_json::from_str(text.trim()).context("the probe's first-write result is not JSON")?;
    Ok(vec![measured.seconds * 1000.0])
}

/// The port every iperf3 server listens on inside a container's own network namespace.
const CONTAINER_PORT: &str = "5201";

/// iperf3, the data flowing *to* the side that measures (`-R`: the server sends). On the
/// host: client and server over 127.0.0.1 (both rows compare to it). In the container: the
/// server inside, the client on the host over the veth; then both inside, over the
/// container's own loopback.
fn network(bench: &Bench, plan: &Plan, side: Side) -> Result<Vec<f64>> {
    match side {
        Side::Host => {
            let port = free_port()?.to_string();
            let mut server = Command::new("iperf3");
            server.args(["-s", "-1", "-B", "127.0.0.1", "-p", &port]);
            let server = Background::spawn(&mut server, "iperf3 -s on 127.0.0.1")?;
            let loopback = iperf3_client("127.0.0.1", "127.0.0.1", &port, plan.net_seconds)?;
            server.wait(Duration::from_secs(5))?;
            Ok(vec![loopback, loopback])
        }
        Side::Container => Ok(vec![over_veth(bench, plan)?, container_loopback(bench, plan)?]),
        Side::Crun => crun_network(bench, plan),
    }
}

/// crun's two network rows. crun makes no veth of its own (that is a CNI plugin's job, or
/// podman's): the bench makes the network namespace (a process of its own, `unshare --net`,
/// that dies with the bench), a veth pair into it with the stages' own call and MTU
/// (`network::create_veth`, [`libisolab::network::VETH_MTU`]) and a /30 of the stages' pool,
/// and crun joins that namespace by its path (`linux.namespaces`, runtime-spec config-linux.md).
/// Traffic goes only between the host and that namespace; the namespace and the veth go as
/// this returns, also on an error or Ctrl-C.
fn crun_network(bench: &Bench, plan: &Plan) -> Result<Vec<f64>> {
    let bundle = bench.crun.as_ref().context("crun is not installed")?;
    let netns = NetNamespace::new()?;
    let routes = libisolab::network::host_routes()?;
    // Another seed than the stage's: its veth may not be gone yet.
    let subnet = libisolab::network::pick_subnet(&routes, std::process::id().wrapping_add(1))?;
    let (host, inside) =
        (subnet.host_address().to_string(), subnet.container_address().to_string());
    let link = netns.veth(subnet)?;
    let path = netns.path();

    let argv = ["/usr/bin/iperf3", "-s", "-1", "-B", &inside, "-p", CONTAINER_PORT];
    let mut server = bench.crun_command(bundle, &argv, Some(&path), None)?;
    let server = Background::spawn(&mut server, "the iperf3 server in crun")?;
    // After a failed client (or Ctrl-C) the server waits for nobody: stopped as it drops.
    let over_veth = iperf3_client(&host, &inside, CONTAINER_PORT, plan.net_seconds)?;
    server.wait(Duration::from_secs(10))?;

    let script = loopback_script(plan);
    let mut command = bench.crun_command(bundle, &["/bin/sh", "-c", &script], Some(&path), None)?;
    let loopback = received(&output(&mut command, "iperf3 inside crun")?)?;
    drop(link);
    Ok(vec![over_veth, loopback])
}

/// A network namespace of the bench's own: held by `unshare --net sleep`, a child that the
/// kernel kills when the bench dies (`PR_SET_PDEATHSIG`, man 2 prctl), so that even a killed
/// bench leaves no namespace (and with it goes any veth end inside, and so its peer).
struct NetNamespace {
    holder: Child,
}

impl NetNamespace {
    fn new() -> Result<NetNamespace> {
        let mut command = Command::new("unshare");
        command.args(["--net", "--", "sleep", "3600"]);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        crate::compare::markers::die_with_parent(&mut command);
        let holder = command.spawn().context("cannot start unshare --net")?;
        let netns = NetNamespace { holder };
        // unshare(2) happens after the spawn returns: wait until the holder's namespace is no
        // longer ours.
        let ours = std::fs::read_link("/proc/self/ns/net").context("readlink /proc/self/ns/net")?;
        let started = Instant::now();
        while std::fs::read_link(netns.path()).ok().as_ref() == Some(&ours) {
            if started.elapsed() > Duration::from_secs(5) {
                bail!("unshare --net (pid {}) did not make its namespace in 5 s", netns.pid());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(netns)
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    fn path(&self) -> std::path::PathBuf {
        format!("/proc/{}/ns/net", self.pid()).into()
    }

    /// A veth pair: the host's end `ibench<pid>` with the subnet's host address, `eth0` inside
    /// with the other, `lo` up inside; removed when the returned guard is dropped.
    fn veth(&self, subnet: libisolab::network::Subnet) -> Result<Link> {
        let name = format!("ibench{}", self.pid());
        let pid = Pid::from_raw(i32::try_from(self.pid()).context("pid out of range")?);
        libisolab::network::create_veth(&name, pid, subnet)
            .with_context(|| format!("cannot make the veth {name} for crun"))?;
        let link = Link(name);
        let address = format!("{}/{}", subnet.container_address(), subnet.prefix);
        let target = self.pid().to_string();
        for args in [
            vec!["addr", "add", &address, "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut ip = Command::new("nsenter");
            ip.args(["--target", &target, "--net", "--", "ip"]).args(&args);
            output(&mut ip, &format!("ip {} in crun's network namespace", args.join(" ")))?;
        }
        Ok(link)
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The host's end of a veth: deleted when dropped (its peer goes with it).
struct Link(String);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = libisolab::network::delete_link(&self.0);
    }
}

/// The server in a container with a veth, the client on the host at the veth's host end.
fn over_veth(bench: &Bench, plan: &Plan) -> Result<f64> {
    let routes = libisolab::network::host_routes()?;
    let subnet = libisolab::network::pick_subnet(&routes, std::process::id())?;
    let (host, inside) =
        (subnet.host_address().to_string(), subnet.container_address().to_string());
    let subnet_text = subnet.to_string();
    let net = ["--net", "veth", "--subnet", subnet_text.as_str()];
    let argv = ["/usr/bin/iperf3", "-s", "-1", "-B", &inside, "-p", CONTAINER_PORT];
    let mut container = bench.in_container(&bench.store, &net, &argv);
    let container = Background::spawn(&mut container, "the iperf3 server's container")?;
    // Bound to the veth's host address, the client cannot leave by another route: until the
    // stage has given the host end its address, bind(2) fails and the client tries again.
    // After a failed client (or Ctrl-C) the server waits for nobody: stopped as it drops.
    let speed = iperf3_client(&host, &inside, CONTAINER_PORT, plan.net_seconds)?;
    container.wait(Duration::from_secs(10))?;
    Ok(speed)
}

/// Client and server both inside one container, over its own `lo`.
fn container_loopback(bench: &Bench, plan: &Plan) -> Result<f64> {
    let script = loopback_script(plan);
    let mut command = bench.in_container(&bench.store, &[], &["/bin/sh", "-c", &script]);
    let text = output(&mut command, "iperf3 inside the container")?;
    received(&text)
}

/// iperf3's server and client in one network namespace, over `lo`; prints the client's JSON.
fn loopback_script(plan: &Plan) -> String {
    format!(
        "/usr/bin/iperf3 -s -1 -B 127.0.0.1 -p {CONTAINER_PORT} >/dev/null 2>&1 &
         for i in $(seq 100); do
           /usr/bin/iperf3 -c 127.0.0.1 -B 127.0.0.1 -p {CONTAINER_PORT} -R -t {} -J \
             >/tmp/iperf3.json 2>&1
           grep -q sum_received /tmp/iperf3.json && break
           sleep 0.05
         done
         cat /tmp/iperf3.json
         kill $! 2>/dev/null; wait",
        plan.net_seconds
    )
}

/// Runs the iperf3 client until it connects (the server may not be listening yet), then
/// returns the rate it received, in Gbit/s.
fn iperf3_client(bind: &str, server: &str, port: &str, seconds: u32) -> Result<f64> {
    let seconds = seconds.to_string();
    let started = Instant::now();
    loop {
        check_interrupted()?;
        let mut client = Command::new("iperf3");
        client.args(["-c", server, "-B", bind, "-p", port, "-R", "-t", &seconds, "-J"]);
        // iperf3 exits 0 with an "error" in its JSON when it cannot connect: read the JSON.
        let text = output(&mut client, "iperf3 -c")?;
        match received(&text) {
            Ok(rate) => return Ok(rate),
            Err(error) if started.elapsed() > Duration::from_secs(15) => {
                return Err(error.context(format!("iperf3 could not reach {server}:{port}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The receiver's rate in iperf3's JSON report, in Gbit/s.
fn received(json: &str) -> Result<f64> {
    let report: serde_json::Value =
        serde_json::from_str(json).context("iperf3's output is not JSON")?;
    if let Some(error) = report.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {error}");
    }
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's report")?;
    Ok(bits / 1e9)
}

/// A free TCP port on 127.0.0.1, as the kernel hands one out.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0 failed")?;
    Ok(listener.local_addr().context("getsockname failed")?.port())
}

/// The number after `label` in `text`.
fn number_after(text: &str, label: &str) -> Result<f64> {
    let start = text.find(label).with_context(|| format!("no '{label}' in the output"))?;
    let rest = text[start + label.len()..].trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    rest[..end].parse().with_context(|| format!("no number after '{label}'"))
}

/// A process running beside the measurement (a server), in its own process group; stopped
/// with its whole group if it is still running when dropped.
struct Background {
    child: Child,
    what: &'static str,
}

impl Background {
    fn spawn(command: &mut Command, what: &'static str) -> Result<Background> {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
        let child = command.spawn().with_context(|| format!("cannot start {what}"))?;
        Ok(Background { child, what })
    }

    /// Waits for it to end by itself; an error if it fails or outlasts `limit`.
    fn wait(mut self, limit: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("waitpid")? {
                if !status.success() {
                    bail!("{} failed ({status})", self.what);
                }
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("{} did not end within {} s", self.what, limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM first, so a stage can stop its container and remove its veth.
        let group = Pid::from_raw(-(self.child.id() as i32));
        let _ = signal::kill(group, Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = signal::kill(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sysbench_and_iperf3() {
        let cpu = "CPU speed:\n    events per second:  2709.95\n\nGeneral statistics:";
        assert_eq!(number_after(cpu, "events per second:").unwrap(), 2709.95);
        let ok = r#"{"end": {"sum_received": {"bits_per_second": 12.5e9}}}"#;
        assert_eq!(received(ok).unwrap(), 12.5);
        let refused = r#"{"end": {}, "error": "unable to connect to server: Connection refused"}"#;
        assert!(received(refused).unwrap_err().to_string().contains("Connection refused"));
    }

    #[test]
    fn every_row_id_is_unique_and_every_workload_runs_on_host_and_container() {
        let mut ids: Vec<_> = WORKLOADS.iter().flat_map(|w| w.rows.iter().map(|r| r.id)).collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count);
        for workload in WORKLOADS {
            assert!(
                workload.sides.contains(&Side::Host) && workload.sides.contains(&Side::Container)
            );
        }
    }
}
