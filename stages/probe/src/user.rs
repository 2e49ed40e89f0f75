//! User isolation: is root in here root on the host?
//!
//! A uid is a number the kernel compares; a user namespace (`man 7 user_namespaces`) maps the
//! numbers inside to other numbers outside, listed in `/proc/self/uid_map` as lines of
//! `inside outside count`. Uid 0 inside mapped to, say, 100000 outside is root only over the
//! namespace's own resources. Without a mapping (or without /proc to show one), uid 0 is the
//! host's root, and every escape above is an escape *as root*.

use std::fs;

use nix::unistd;

use crate::{Check, CheckId, Status};

/// One line of a uid_map or gid_map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the namespace.
    pub inside: u32,
    /// The id it maps to in the parent namespace.
    pub outside: u32,
    /// How many consecutive ids are mapped.
    pub count: u32,
}

/// Parses `/proc/<pid>/uid_map` (`man 7 user_namespaces`, "User and group ID mappings").
pub fn parse_id_map(text: &str) -> Result<Vec<IdRange>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let numbers: Vec<u32> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| format!("invalid id map line {line:?}: expected three numbers"))?;
            match numbers[..] {
                [inside, outside, count] => Ok(IdRange { inside, outside, count }),
                _ => Err(format!("invalid id map line {line:?}: expected three numbers")),
            }
        })
        .collect()
}

/// The id outside that `id` inside maps to, if it is mapped at all.
pub fn map_outside(map: &[IdRange], id: u32) -> Option<u32> {
    map.iter().find_map(|range| {
        let offset = u64::from(id).checked_sub(u64::from(range.inside))?;
        (offset < u64::from(range.count)).then(|| (u64::from(range.outside) + offset) as u32)
    })
}

/// `user`: who are we, on the host?
pub fn user() -> Check {
    let uid = unistd::geteuid().as_raw();
    judge(uid, fs::read_to_string("/proc/self/uid_map").ok().as_deref())
}

fn judge(uid: u32, uid_map: Option<&str>) -> Check {
    let id = CheckId::User;
    let Some(text) = uid_map else {
        return if uid == 0 {
            Check::new(
                id,
                Status::Leaks,
                "root inside is root on the host (no /proc/self/uid_map here says otherwise)",
            )
        } else {
            Check::new(id, Status::Isolated, format!("runs as uid {uid}"))
        };
    };
    let shown = text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
    let shown = shown.collect::<Vec<_>>().join(", ");
    let map = match parse_id_map(text) {
        Ok(map) => map,
        Err(error) => return Check::not_applicable(id, error),
    };
    match map_outside(&map, uid) {
        Some(0) if uid == 0 => Check::new(
            id,
            Status::Leaks,
            format!("root inside is root on the host (uid_map: {shown})"),
        ),
        Some(0) => Check::new(
            id,
            Status::Leaks,
            format!("uid {uid} inside is root on the host (uid_map: {shown})"),
        ),
        Some(outside) => Check::new(
            id,
            Status::Isolated,
            format!("runs as uid {uid}, which is uid {outside} on the host (uid_map: {shown})"),
        ),
        None => Check::new(
            id,
            Status::Isolated,
            format!("runs as uid {uid}, which no host uid maps to (uid_map: {shown})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_format() {
        let text = "         0          0 4294967295\n";
        assert_eq!(
            parse_id_map(text).unwrap(),
            [IdRange { inside: 0, outside: 0, count: u32::MAX }]
        );
        let two = "0 100000 1000\n1000 1000 1\n";
        assert_eq!(parse_id_map(two).unwrap().len(), 2);
        assert!(parse_id_map("0 1\n").unwrap_err().contains("expected three numbers"));
        assert!(parse_id_map("a b c\n").is_err());
        assert_eq!(parse_id_map("").unwrap(), []);
    }

    #[test]
    fn maps_inside_to_outside() {
        let map = parse_id_map("0 100000 1000\n1000 1000 1\n").unwrap();
        assert_eq!(map_outside(&map, 0), Some(100000));
        assert_eq!(map_outside(&map, 999), Some(100999));
        assert_eq!(map_outside(&map, 1000), Some(1000));
        assert_eq!(map_outside(&map, 1001), None);
        let full = parse_id_map("0 0 4294967295").unwrap();
        assert_eq!(map_outside(&full, 65534), Some(65534));
        assert_eq!(map_outside(&full, u32::MAX), None);
    }

    #[test]
    fn verdicts() {
        let host = judge(0, Some("0 0 4294967295\n"));
        assert_eq!(host.status, Status::Leaks);
        assert_eq!(host.evidence, "root inside is root on the host (uid_map: 0 0 4294967295)");
        assert_eq!(judge(0, Some("0 100000 65536\n")).status, Status::Isolated);
        assert_eq!(judge(0, None).status, Status::Leaks);
        assert_eq!(
            judge(65534, None),
            Check::new(CheckId::User, Status::Isolated, "runs as uid 65534")
        );
        assert_eq!(judge(0, Some("junk")).status, Status::NotApplicable);
    }
}
