//! The markers `isolab compare` plants on the host for the probe to find.
//!
//! Each marker belongs to one kind of isolation and carries this run's random token, so a
//! probe can only report "I see it" by really seeing it: a hard-coded answer, or a marker left
//! over from another run, cannot pass. Every marker is a guard that removes itself when
//! dropped — on success, on error and on panic alike.
//!
//! | marker                                   | probed by         | removed by        |
//! |------------------------------------------|-------------------|-------------------|
//! | directory `<workdir>/host-marker-<token>`| `host-filesystem` | the workdir       |
//! | process `isolab-marker-<token>` (sleep)  | `host-processes`  | `SIGKILL`, wait   |
//! | TCP listener on 127.0.0.1, says token    | `network`         | stop flag, join   |
//! | SysV shared memory, random key           | `ipc`             | `IPC_RMID`        |

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use libisolab::error::errno_name;
use nix::errno::Errno;
use rand::Rng;
use serde::Serialize;

/// A fresh random token: 12 lowercase letters and digits (fits a hostname and a file name).
pub fn random_token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..12).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// What the markers are, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct MarkerInfo {
    /// The host directory outside the rootfs.
    pub host_path: PathBuf,
    /// The marker process's pid on the host.
    pub host_pid: u32,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The SysV shared-memory key.
    pub shm_key: i32,
}

/// All markers of one run.
#[derive(Debug)]
pub struct Markers {
    /// Where the markers are and what they are called.
    pub info: MarkerInfo,
    token: String,
    _process: MarkerProcess,
    _listener: Listener,
    _shm: SharedMemory,
}

impl Markers {
    /// Plants every marker, for `token`, with the directory in `workdir`.
    pub fn plant(workdir: &Path, token: &str) -> Result<Markers> {
        let host_path = workdir.join(format!("host-marker-{token}"));
        fs::create_dir(&host_path)
            .with_context(|| format!("mkdir {} failed", host_path.display()))?;
        let process = MarkerProcess::start(token)?;
        let listener = Listener::start(token)?;
        let shm = SharedMemory::create()?;
        Ok(Markers {
            info: MarkerInfo {
                host_path,
                host_pid: process.child.id(),
                port: listener.port,
                shm_key: shm.key,
            },
            token: token.to_string(),
            _process: process,
            _listener: listener,
            _shm: shm,
        })
    }

    /// The probe's flags that hand it the markers (`--json --token … --shm-key …`).
    pub fn probe_flags(&self, hold_ms: u64) -> Vec<OsString> {
        let info = &self.info;
        [
            ("--token", OsString::from(&self.token)),
            ("--host-path", info.host_path.clone().into()),
            ("--host-pid", info.host_pid.to_string().into()),
            ("--port", info.port.to_string().into()),
            ("--shm-key", info.shm_key.to_string().into()),
            ("--hold-ms", hold_ms.to_string().into()),
        ]
        .into_iter()
        .fold(vec![OsString::from("--json")], |mut flags, (flag, value)| {
            flags.push(flag.into());
            flags.push(value);
            flags
        })
    }
}

/// A process that does nothing but carry the token in its command line.
#[derive(Debug)]
struct MarkerProcess {
    child: Child,
}

impl MarkerProcess {
    fn start(token: &str) -> Result<MarkerProcess> {
        let mut command = Command::new("sleep");
        // argv[0] is whatever the parent says it is (man 2 execve): the token goes there, so it
        // shows in /proc/<pid>/cmdline and in `ps`.
        command.arg0(format!("isolab-marker-{token}")).arg("600");
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        die_with_parent(&mut command);
        let child = command.spawn().context("cannot start the marker process (sleep 600)")?;
        Ok(MarkerProcess { child })
    }
}

impl Drop for MarkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP listener on the host's 127.0.0.1 that writes the token to every connection.
#[derive(Debug)]
struct Listener {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(token: &str) -> Result<Listener> {
        // Port 0: the kernel picks a free port (man 7 ip), so runs never collide.
        let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("cannot listen on 127.0.0.1 for the network marker")?;
        let port = socket.local_addr().context("getsockname on the marker listener")?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let answer = format!("{token}\n");
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in socket.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut stream) = stream {
                    let _ = stream.write_all(answer.as_bytes());
                }
            }
        });
        Ok(Listener { port, stop, thread: Some(thread) })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // accept() blocks: one last connection of our own wakes it to see the flag.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A SysV shared-memory segment with a random key (`man 2 shmget`).
#[derive(Debug)]
struct SharedMemory {
    key: i32,
    id: i32,
}

impl SharedMemory {
    fn create() -> Result<SharedMemory> {
        let mut rng = rand::thread_rng();
        for _ in 0..16 {
            // Positive and never IPC_PRIVATE (0).
            let key: i32 = rng.gen_range(0x1000_0000..0x7fff_ffff);
            // SAFETY: shmget creates a segment (or fails); it touches no memory of ours.
            let id = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
            if id >= 0 {
                return Ok(SharedMemory { key, id });
            }
            match Errno::last() {
                Errno::EEXIST => continue, // someone else's key: draw again
                errno => bail!(
                    "shmget({key:#x}, 4096, IPC_CREAT|IPC_EXCL) for the ipc marker failed: {} \
                     (see kernel.shmmni and `ipcs -m`)",
                    errno_name(errno)
                ),
            }
        }
        bail!("shmget for the ipc marker: no free key found in 16 tries (see `ipcs -m`)")
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID with a null buffer is valid (man 2 shmctl); the segment is ours and
        // attached nowhere, so it goes at once.
        unsafe {
            libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

/// Makes the kernel kill what `command` starts if isolab dies without running its guards
/// (man 2 PR_SET_PDEATHSIG): for helper processes a crash must not leave behind.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_fit_the_probe() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert!(isolab_probe::validate_token(&a).is_ok());
    }
}
