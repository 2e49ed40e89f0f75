//! One cell of the matrix: the probe's verdict, overruled by what the host saw.
//!
//! For most checks the probe's word is final: it either saw the marker or it did not. For the
//! three checks that *change* something (hostname, mounts, rootfs-write) the probe only knows
//! that its change succeeded; the host knows whether the change reached it. Here the two are
//! combined, and each cell says who decided it.

use std::path::Path;

use isolab_probe::{hostname, Check, CheckId, Report, Status};
use serde::Serialize;

use super::watch::Seen;

/// Who decided a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecidedBy {
    /// The probe, from inside.
    Probe,
    /// `isolab compare`, watching the host.
    Host,
}

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// The check (the row).
    pub name: CheckId,
    /// The verdict.
    pub status: Status,
    /// Why, in one line.
    pub evidence: String,
    /// Who decided.
    pub decided_by: DecidedBy,
}

impl Cell {
    fn probe(check: &Check) -> Cell {
        Cell {
            name: check.name,
            status: check.status,
            evidence: check.evidence.clone(),
            decided_by: DecidedBy::Probe,
        }
    }

    fn host(name: CheckId, status: Status, evidence: String) -> Cell {
        Cell { name, status, evidence, decided_by: DecidedBy::Host }
    }
}

/// The cells of a column whose probe reported, in [`CheckId::ALL`] order.
pub fn cells(report: &Report, seen: &Seen, token: &str, rootfs: &Path) -> Vec<Cell> {
    CheckId::ALL
        .iter()
        .map(|&id| match report.check(id) {
            Some(check) => decide(check, seen, token, rootfs),
            None => Cell {
                name: id,
                status: Status::NotApplicable,
                evidence: "the probe did not report this check".into(),
                decided_by: DecidedBy::Probe,
            },
        })
        .collect()
}

/// The cells of a column whose probe did not report at all: n/a, saying why.
pub fn failed_cells(why: &str) -> Vec<Cell> {
    CheckId::ALL
        .iter()
        .map(|&name| Cell {
            name,
            status: Status::NotApplicable,
            evidence: format!("the probe did not report: {why}"),
            decided_by: DecidedBy::Probe,
        })
        .collect()
}

fn decide(check: &Check, seen: &Seen, token: &str, rootfs: &Path) -> Cell {
    let id = check.name;
    // What the host saw overrules the probe either way: a leak the host saw is a leak.
    let saw = match id {
        CheckId::Hostname => seen
            .hostname
            .as_ref()
            .map(|name| format!("the host's hostname became {name:?} while the probe ran")),
        CheckId::Mounts => seen.mount.as_ref().map(|point| {
            format!("the host's mount table showed the probe's tmpfs at {}", point.display())
        }),
        CheckId::RootfsWrite => seen.rootfs_write.as_ref().map(|file| {
            format!("the probe's file appeared in the base rootfs on the host: {}", file.display())
        }),
        _ => None,
    };
    if let Some(evidence) = saw {
        return Cell::host(id, Status::Leaks, evidence);
    }
    if !check.provisional {
        return Cell::probe(check);
    }
    // The change succeeded inside and the host never saw it: isolated, by the host's word.
    let evidence = match id {
        CheckId::Hostname => format!(
            "sethostname({:?}) succeeded inside, but the host's hostname never changed: a UTS \
             namespace of its own",
            hostname::name_for(token)
        ),
        CheckId::Mounts => "the probe's tmpfs mount succeeded inside, but never appeared in the \
                            host's mount table: a mount namespace of its own"
            .to_string(),
        CheckId::RootfsWrite => format!(
            "the probe's file at / never appeared in the base rootfs {}: its writes land \
             elsewhere",
            rootfs.display()
        ),
        // Only the three checks above are provisional; anything else keeps the probe's word.
        _ => return Cell::probe(check),
    };
    Cell::host(id, Status::Isolated, evidence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn report(checks: Vec<Check>) -> Report {
        Report { probe: "p".into(), pid: 1, uid: 0, on_host: false, checks }
    }

    fn cell(cells: &[Cell], id: CheckId) -> &Cell {
        cells.iter().find(|cell| cell.name == id).unwrap()
    }

    #[test]
    fn the_host_decides_provisional_checks() {
        let report = report(vec![
            Check::provisional_leak(CheckId::Hostname, "sethostname succeeded"),
            Check::provisional_leak(CheckId::Mounts, "mount succeeded"),
            Check::provisional_leak(CheckId::RootfsWrite, "created /isolab-write-t"),
            Check::new(CheckId::Network, Status::Leaks, "read the token"),
        ]);
        let rootfs = Path::new("/w/rootfs");
        let seen = Seen { hostname: Some("isolab-t".into()), ..Seen::default() };
        let cells = cells(&report, &seen, "t", rootfs);

        assert_eq!(cells.len(), CheckId::ALL.len());
        let hostname = cell(&cells, CheckId::Hostname);
        assert_eq!((hostname.status, hostname.decided_by), (Status::Leaks, DecidedBy::Host));
        assert!(hostname.evidence.contains("\"isolab-t\""));
        let mounts = cell(&cells, CheckId::Mounts);
        assert_eq!((mounts.status, mounts.decided_by), (Status::Isolated, DecidedBy::Host));
        let write = cell(&cells, CheckId::RootfsWrite);
        assert_eq!(write.status, Status::Isolated);
        assert!(write.evidence.contains("/w/rootfs"), "{write:?}");
        let network = cell(&cells, CheckId::Network);
        assert_eq!((network.status, network.decided_by), (Status::Leaks, DecidedBy::Probe));
        assert_eq!(cell(&cells, CheckId::Ipc).status, Status::NotApplicable);
    }

    #[test]
    fn a_leak_the_host_saw_overrules_the_probe() {
        let report = report(vec![Check::new(CheckId::Mounts, Status::Isolated, "EPERM")]);
        let seen = Seen { mount: Some(PathBuf::from("/w/rootfs/tmp/m")), ..Seen::default() };
        let cells = cells(&report, &seen, "t", Path::new("/w/rootfs"));
        let mounts = cell(&cells, CheckId::Mounts);
        assert_eq!((mounts.status, mounts.decided_by), (Status::Leaks, DecidedBy::Host));
        assert!(mounts.evidence.ends_with("/w/rootfs/tmp/m"));
    }

    #[test]
    fn failed_columns_are_all_not_applicable() {
        let cells = failed_cells("stage1-chroot exited with 127");
        assert!(cells.iter().all(|cell| cell.status == Status::NotApplicable));
        assert!(cells[0].evidence.ends_with("exited with 127"));
    }
}
