//! The probe's report: one verdict per check, with one line of evidence.
//!
//! These types are the JSON contract between the probe (which writes it) and `isolab compare`
//! (which reads it back): keep them plain data. A verdict is deliberately coarse —
//! [`Status::Isolated`], [`Status::Leaks`] or [`Status::NotApplicable`] — because the lesson is
//! the matrix; the `evidence` says *why*, in the words of the system call that answered.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// The host's marker did not reach the sandbox, or the change did not reach the host.
    #[serde(rename = "isolated")]
    Isolated,
    /// The sandbox saw or changed something of the host's.
    #[serde(rename = "leaks")]
    Leaks,
    /// The check could not be made (a marker was not given, or an unexpected error).
    #[serde(rename = "n/a")]
    NotApplicable,
}

impl Status {
    /// The word used in JSON, tables and the book.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Isolated => "isolated",
            Status::Leaks => "leaks",
            Status::NotApplicable => "n/a",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The checks, in the order the matrix shows them: roughly the order in which the stages
/// close them (chroot, namespaces, cgroups, overlay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckId {
    /// Can it see a directory of the host's, outside its root?
    HostFilesystem,
    /// Can it break out of its root with the classic chroot escape?
    ChrootEscape,
    /// Can it see (and signal) a process of the host's?
    HostProcesses,
    /// Does changing its hostname change the host's?
    Hostname,
    /// Do its mounts appear in the host's mount table?
    Mounts,
    /// Can it reach a service listening on the host's 127.0.0.1?
    Network,
    /// Can it open the host's SysV shared memory?
    Ipc,
    /// Is its root the host's root?
    User,
    /// Is it under a memory or pids limit?
    Resources,
    /// Can a child of it touch 256 MiB of memory without being killed?
    MemoryHog,
    /// Can it fork 64 processes?
    ForkBomb,
    /// Does a busy loop get a whole CPU?
    CpuShare,
    /// Do its writes at `/` change the base root filesystem?
    RootfsWrite,
}

impl CheckId {
    /// Every check, in report order.
    pub const ALL: [CheckId; 13] = [
        CheckId::HostFilesystem,
        CheckId::ChrootEscape,
        CheckId::HostProcesses,
        CheckId::Hostname,
        CheckId::Mounts,
        CheckId::Network,
        CheckId::Ipc,
        CheckId::User,
        CheckId::Resources,
        CheckId::MemoryHog,
        CheckId::ForkBomb,
        CheckId::CpuShare,
        CheckId::RootfsWrite,
    ];

    /// The name used in JSON and tables, e.g. `host-filesystem`.
    pub fn name(self) -> &'static str {
        match self {
            CheckId::HostFilesystem => "host-filesystem",
            CheckId::ChrootEscape => "chroot-escape",
            CheckId::HostProcesses => "host-processes",
            CheckId::Hostname => "hostname",
            CheckId::Mounts => "mounts",
            CheckId::Network => "network",
            CheckId::Ipc => "ipc",
            CheckId::User => "user",
            CheckId::Resources => "resources",
            CheckId::MemoryHog => "memory-hog",
            CheckId::ForkBomb => "fork-bomb",
            CheckId::CpuShare => "cpu-share",
            CheckId::RootfsWrite => "rootfs-write",
        }
    }

    /// The check called `name` (as [`CheckId::name`] writes it).
    pub fn from_name(name: &str) -> Option<CheckId> {
        CheckId::ALL.into_iter().find(|id| id.name() == name)
    }

    /// The question the check answers, for legends and evidence listings.
    pub fn question(self) -> &'static str {
        match self {
            CheckId::HostFilesystem => "can it see a directory of the host's, outside its root?",
            CheckId::ChrootEscape => "can it break out of its root (chroot, chdir .., chroot)?",
            CheckId::HostProcesses => "can it see and signal a process of the host's?",
            CheckId::Hostname => "does its sethostname change the host's name?",
            CheckId::Mounts => "do its mounts appear in the host's mount table?",
            CheckId::Network => "can it reach a listener on the host's 127.0.0.1?",
            CheckId::Ipc => "can it open the host's SysV shared memory?",
            CheckId::User => "is its root the host's root?",
            CheckId::Resources => "is it free of memory and pids limits?",
            CheckId::MemoryHog => "can a child of it touch 256 MiB without being killed?",
            CheckId::ForkBomb => "can it fork 64 processes?",
            CheckId::CpuShare => "does a busy loop get a whole CPU?",
            CheckId::RootfsWrite => "do its writes at / change the base rootfs?",
        }
    }

    /// Would this check change the host if the probe ran on the host itself? Those are
    /// skipped with `--on-host`.
    pub fn changes_the_host(self) -> bool {
        matches!(
            self,
            CheckId::ChrootEscape | CheckId::Hostname | CheckId::Mounts | CheckId::RootfsWrite
        )
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Which check.
    pub name: CheckId,
    /// The verdict.
    pub status: Status,
    /// Why, in one line: what was tried and what the kernel answered.
    pub evidence: String,
    /// True when the probe could only see that its change *succeeded*; whether the host saw
    /// the change is for someone on the host to say (`isolab compare` watches).
    #[serde(default)]
    pub provisional: bool,
}

impl Check {
    /// A final verdict.
    pub fn new(name: CheckId, status: Status, evidence: impl Into<String>) -> Self {
        Check { name, status, evidence: one_line(evidence.into()), provisional: false }
    }

    /// A check that could not be made, and why.
    pub fn not_applicable(name: CheckId, why: impl Into<String>) -> Self {
        Check::new(name, Status::NotApplicable, why)
    }

    /// "The change succeeded here": leaks, unless the host says it never saw it.
    pub fn provisional_leak(name: CheckId, evidence: impl Into<String>) -> Self {
        Check { provisional: true, ..Check::new(name, Status::Leaks, evidence) }
    }
}

/// Evidence is one line: a table cell, not a log.
fn one_line(text: String) -> String {
    if text.contains('\n') {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        text
    }
}

/// Everything the probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `isolab-probe <version>`.
    pub probe: String,
    /// The probe's pid, as it sees itself (1 in a new pid namespace).
    pub pid: u32,
    /// The probe's effective uid, as it sees itself.
    pub uid: u32,
    /// Whether it was told it runs on the host (`--on-host`).
    pub on_host: bool,
    /// One entry per check, in [`CheckId::ALL`] order.
    pub checks: Vec<Check>,
}

impl Report {
    /// The verdict of one check.
    pub fn check(&self, id: CheckId) -> Option<&Check> {
        self.checks.iter().find(|check| check.name == id)
    }

    /// The report as an aligned table for people (`--human`).
    pub fn human(&self) -> String {
        let where_ = if self.on_host { ", on the host" } else { "" };
        let mut out = format!(
            "{}: what this process can see and do (pid {}, uid {}{where_})\n\n",
            self.probe, self.pid, self.uid
        );
        let name_width = self.checks.iter().map(|c| c.name.name().len()).max().unwrap_or(5);
        let status_width = "isolated".len() + 1;
        out.push_str(&format!("{:name_width$}  {:status_width$}  evidence\n", "check", "status"));
        for check in &self.checks {
            let mark = if check.provisional { "*" } else { "" };
            let status = format!("{}{mark}", check.status);
            out.push_str(&format!(
                "{:name_width$}  {status:status_width$}  {}\n",
                check.name, check.evidence
            ));
        }
        if self.checks.iter().any(|check| check.provisional) {
            out.push_str(
                "\n* provisional: the change succeeded in here; only the host can tell whether it \
                 reached the host (`isolab compare` watches)\n",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_the_matrix_words() {
        let check = Check::provisional_leak(CheckId::RootfsWrite, "created /x");
        let json = serde_json::to_string(&check).unwrap();
        assert_eq!(
            json,
            r#"{"name":"rootfs-write","status":"leaks","evidence":"created /x","provisional":true}"#
        );
        let na =
            serde_json::to_string(&Check::not_applicable(CheckId::Ipc, "no --shm-key")).unwrap();
        assert!(na.contains(r#""status":"n/a""#), "{na}");
        let back: Check = serde_json::from_str(
            r#"{"name":"host-filesystem","status":"isolated","evidence":"gone"}"#,
        )
        .unwrap();
        assert_eq!(back, Check::new(CheckId::HostFilesystem, Status::Isolated, "gone"));
    }

    #[test]
    fn names_match_serde() {
        for id in CheckId::ALL {
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{}\"", id.name()));
        }
    }

    #[test]
    fn evidence_is_one_line() {
        let check = Check::new(CheckId::User, Status::Leaks, "a\n  b");
        assert_eq!(check.evidence, "a b");
    }

    #[test]
    fn human_table_marks_provisional_verdicts() {
        let report = Report {
            probe: "isolab-probe 0".into(),
            pid: 7,
            uid: 0,
            on_host: false,
            checks: vec![
                Check::new(CheckId::HostFilesystem, Status::Isolated, "not visible"),
                Check::provisional_leak(CheckId::Hostname, "sethostname succeeded"),
            ],
        };
        let text = report.human();
        assert!(text.contains("hostname         leaks*     sethostname succeeded"), "{text}");
        assert!(text.contains("* provisional"), "{text}");
    }
}
