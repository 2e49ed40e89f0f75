//! What a container used, read from its cgroup's meters once it has exited, and said in words.
//!
//! Both versions count the same things under different names and units (`memory.peak` or
//! `memory.max_usage_in_bytes`, microseconds or nanoseconds or clock ticks); each controller's
//! module reads its own files into one [`Usage`]. A meter this host does not have stays
//! `None` and is printed as "not available": a report never invents a number.

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A limit as a cgroup file holds it: a number, or no limit (`max` on v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// No limit.
    Max,
    /// At most this many (bytes, or processes).
    At(u64),
}

impl Bound {
    /// Parses `max` or a number.
    pub fn parse(text: &str) -> Option<Bound> {
        match text.trim() {
            "max" => Some(Bound::Max),
            number => number.parse().ok().map(Bound::At),
        }
    }

    /// The number, if there is a limit.
    pub fn value(self) -> Option<u64> {
        match self {
            Bound::Max => None,
            Bound::At(value) => Some(value),
        }
    }
}

/// JSON: the number, or `"max"`.
impl Serialize for Bound {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Bound::Max => serializer.serialize_str("max"),
            Bound::At(value) => serializer.serialize_u64(*value),
        }
    }
}

/// What a container used. `None`: this host does not provide that meter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// The most memory the cgroup ever held, in bytes.
    pub memory_peak: Option<u64>,
    /// Its memory limit.
    pub memory_limit: Option<Bound>,
    /// CPU time spent in user mode.
    #[serde(rename = "cpu_user_usec", serialize_with = "micros")]
    pub cpu_user: Option<Duration>,
    /// CPU time spent in the kernel on its behalf.
    #[serde(rename = "cpu_system_usec", serialize_with = "micros")]
    pub cpu_system: Option<Duration>,
    /// How many periods it was stopped for having used its `--cpus` quota.
    pub throttled_periods: Option<u64>,
    /// For how long, in all.
    #[serde(rename = "throttled_usec", serialize_with = "micros")]
    pub throttled_time: Option<Duration>,
    /// How many of its processes the OOM killer killed.
    pub oom_kills: Option<u64>,
    /// The most processes (and threads) it had at once.
    pub pids_peak: Option<u64>,
    /// Its pids limit.
    pub pids_limit: Option<Bound>,
}

fn micros<S: Serializer>(time: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_u64(time.as_micros() as u64),
        None => serializer.serialize_none(),
    }
}

impl Usage {
    /// Whether the OOM killer killed something in the cgroup.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills.is_some_and(|kills| kills > 0)
    }

    /// [`describe_oom`] for this usage.
    pub fn describe_oom(&self) -> String {
        describe_oom(self.memory_limit.and_then(Bound::value), self.memory_peak)
    }
}

/// Three lines: memory, cpu, pids; a meter this host lacks is "not available".
impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NA: &str = "not available";
        let size = |bytes: Option<u64>| bytes.map_or(NA.to_string(), format_size);
        let limit = |bound: Option<Bound>, show: &dyn Fn(u64) -> String| match bound {
            Some(Bound::At(value)) => show(value),
            Some(Bound::Max) => "none".to_string(),
            None => NA.to_string(),
        };
        let count = |value: Option<u64>| value.map_or(NA.to_string(), |value| value.to_string());
        let seconds = |time: Option<Duration>| {
            time.map_or(NA.to_string(), |time| format!("{:.2} s", time.as_secs_f64()))
        };
        writeln!(
            f,
            "memory: peak {}, limit {}, oom kills {}",
            size(self.memory_peak),
            limit(self.memory_limit, &format_size),
            count(self.oom_kills)
        )?;
        let throttled = match (self.throttled_periods, self.throttled_time) {
            (None, None) => NA.to_string(),
            (periods, time) => format!("{} periods ({})", count(periods), seconds(time)),
        };
        writeln!(
            f,
            "cpu: user {}, system {}, throttled {throttled}",
            seconds(self.cpu_user),
            seconds(self.cpu_system),
        )?;
        write!(
            f,
            "pids: peak {}, limit {}",
            count(self.pids_peak),
            limit(self.pids_limit, &|value| value.to_string())
        )
    }
}

// ANCHOR: describe
/// Sizes in binary units, as the limits were given: `64 MiB`, `1.5 GiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    let whole = bytes / scale;
    if whole * scale == bytes {
        format!("{whole} {}", UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

/// The line stage 3 prints when the OOM killer ended the command:
/// `killed: out of memory (limit 64 MiB, peak 64 MiB)`.
pub fn describe_oom(limit: Option<u64>, peak: Option<u64>) -> String {
    let limit = limit.map_or("none".to_string(), format_size);
    let peak = peak.map_or("not available".to_string(), format_size);
    format!("killed: out of memory (limit {limit}, peak {peak})")
}
// ANCHOR_END: describe

/// The value of `key` in a flat-keyed file (`key value` per line: `memory.events`,
/// `cpu.stat`, `memory.oom_control`, `cpuacct.stat`).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(33_554_432 - 4096), "32.0 MiB");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(13_002_752), "12.4 MiB");
    }

    #[test]
    fn oom_is_said_in_words() {
        assert_eq!(
            describe_oom(Some(64 << 20), Some(64 << 20)),
            "killed: out of memory (limit 64 MiB, peak 64 MiB)"
        );
        assert_eq!(
            describe_oom(None, None),
            "killed: out of memory (limit none, peak not available)"
        );
    }

    #[test]
    fn flat_keyed_files() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(1));
        assert_eq!(keyed(events, "oom"), Some(1));
        assert_eq!(keyed(events, "absent"), None);
    }

    #[test]
    fn usage_reads_well_and_says_what_is_missing() {
        let usage = Usage {
            memory_peak: Some(13_002_752),
            memory_limit: Some(Bound::At(64 << 20)),
            cpu_user: Some(Duration::from_millis(520)),
            cpu_system: Some(Duration::from_millis(10)),
            throttled_periods: Some(12),
            throttled_time: Some(Duration::from_millis(1530)),
            oom_kills: Some(0),
            pids_peak: None,
            pids_limit: Some(Bound::Max),
        };
        assert_eq!(
            usage.to_string(),
            "memory: peak 12.4 MiB, limit 64 MiB, oom kills 0\n\
             cpu: user 0.52 s, system 0.01 s, throttled 12 periods (1.53 s)\n\
             pids: peak not available, limit none"
        );
        assert!(!usage.oom_killed());
        let bare = Usage { cpu_user: Some(Duration::from_millis(240)), ..Usage::default() };
        assert_eq!(
            bare.to_string(),
            "memory: peak not available, limit not available, oom kills not available\n\
             cpu: user 0.24 s, system not available, throttled not available\n\
             pids: peak not available, limit not available"
        );
    }

    #[test]
    fn usage_as_json_has_units_in_its_names() {
        let usage = Usage {
            memory_peak: Some(4096),
            memory_limit: Some(Bound::Max),
            cpu_user: Some(Duration::from_micros(1500)),
            pids_limit: Some(Bound::At(16)),
            ..Usage::default()
        };
        assert_eq!(
            serde_json::to_string(&usage).unwrap(),
            r#"{"memory_peak":4096,"memory_limit":"max","cpu_user_usec":1500,"cpu_system_usec":null,"throttled_periods":null,"throttled_usec":null,"oom_kills":null,"pids_peak":null,"pids_limit":16}"#
        );
    }
}
