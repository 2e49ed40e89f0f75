//! The limits a user asks for, checked before a single cgroup file is touched.
//!
//! `--memory 64M`, `--cpus 0.5`, `--pids 16`… arrive as text. [`Limits::parse`] turns them
//! into the numbers the kernel wants and refuses, with one clear message each, what the kernel
//! would refuse later or silently misread: `12XB`, `0`, `-1`, more CPUs than the machine has,
//! a memory limit too small for any command to start.
//! The conversions between the versions' units live here too: `--cpus` becomes a quota per
//! period, and `--cpu-shares` (v1) becomes a `cpu.weight` (v2) with the curve runc and crun
//! use, so the same flag means the same on every host.

use std::fmt;

use crate::error::{Error, Result};

/// The length of a CFS period, in microseconds: `--cpus 0.5` is 50 ms of CPU time in every
/// 100 ms (`cpu.max` "50000 100000" on v2, `cpu.cfs_quota_us` on v1).
pub const PERIOD_US: u64 = 100_000;

/// The smallest quota the kernel accepts: 1 ms per period, so `--cpus` is at least 0.01.
pub const MIN_QUOTA_US: u64 = 1_000;

/// The range of v1 `cpu.shares` (the kernel clamps to it; we refuse outside it).
pub const SHARES: std::ops::RangeInclusive<u64> = 2..=262_144;

/// The largest `pids.max` the kernel takes (`PID_MAX_LIMIT`).
pub const PIDS_MAX: u64 = 4_194_304;

/// The smallest `--memory`: 6 MiB, docker's minimum (`linuxMinMemory` in moby's
/// `daemon/daemon_unix.go`, "to account for overhead during startup"; podman and older docker
/// use 4 MiB). The kernel has none: it rounds `memory.max` (v2) or `memory.limit_in_bytes` (v1)
/// down to whole pages, so `--memory 4095` is a limit of 0 bytes, and even a few hundred KiB
/// are less than the runtime's child needs to exec the command: the OOM killer ends it before
/// it starts, and the report says "limit 0 B". Refusing is clearer.
pub const MIN_MEMORY: u64 = 6 << 20;

/// The limit flags, as typed. Stage 3 flattens this into its command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct LimitArgs {
    /// Memory limit: bytes, or with a binary unit (512k, 64M, 1G); past it the kernel
    /// reclaims, then kills
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory plus swap, as docker counts it (at least --memory), or -1 for unlimited swap
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// CPU time, in CPUs (0.5 = half of one CPU), enforced every 100 ms
    #[arg(long, value_name = "FLOAT", allow_hyphen_values = true)]
    pub cpus: Option<String>,
    /// Relative CPU weight when CPUs are contended: 2 to 262144, default 1024 (v1 cpu.shares,
    /// converted to cpu.weight on v2)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub cpu_shares: Option<String>,
    /// The most processes (and threads) the container may have at once
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids: Option<String>,
    /// The CPUs the container may run on, such as 0-1,3
    #[arg(long, value_name = "LIST", allow_hyphen_values = true)]
    pub cpuset: Option<String>,
}

/// Limits, checked and in the kernel's units. `None` leaves the kernel's default (no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `--memory`, in bytes.
    pub memory: Option<u64>,
    /// `--memory-swap`: memory plus swap.
    pub memory_swap: Option<Swap>,
    /// `--cpus`, as a quota per period.
    pub cpus: Option<CpuQuota>,
    /// `--cpu-shares`, in v1 shares.
    pub cpu_shares: Option<u64>,
    /// `--pids`.
    pub pids: Option<u64>,
    /// `--cpuset`.
    pub cpuset: Option<CpuList>,
}

/// `--memory-swap`: docker's total of memory and swap, or no limit on swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// Memory plus swap, in bytes.
    Total(u64),
    /// `-1`: swap as much as the host has.
    Unlimited,
}

/// `--cpus` as the kernel enforces it: `quota_us` of CPU time in every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    /// Microseconds of CPU time per period (across all CPUs).
    pub quota_us: u64,
    /// The period, in microseconds.
    pub period_us: u64,
}

impl CpuQuota {
    /// How many CPUs' worth this is.
    pub fn cpus(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }
}

/// A set of CPU numbers, written as the kernel writes them: `0-1,3`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuList(Vec<u32>);

impl CpuList {
    /// Parses `0-1,3`; the error says what is wrong, in words.
    pub fn parse(text: &str) -> Result<CpuList, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the list is empty".to_string());
        }
        let number = |item: &str| -> Result<u32, String> {
            if item.is_empty() || !item.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(format!("'{item}' is not a CPU number"));
            }
            item.parse().ok().filter(|&cpu| cpu < 65_536).ok_or(format!("CPU {item} is too large"))
        };
        let mut cpus = Vec::new();
        for item in text.split(',') {
            match item.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (number(first)?, number(last)?);
                    if first > last {
                        return Err(format!("the range {item} runs backwards"));
                    }
                    cpus.extend(first..=last);
                }
                None => cpus.push(number(item)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }

    /// The CPU numbers, in order.
    pub fn cpus(&self) -> &[u32] {
        &self.0
    }

    /// How many CPUs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No CPU at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Ranges where they save room: `0-3,5`.
impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut index = 0;
        while index < self.0.len() {
            let first = self.0[index];
            let mut last = first;
            while index + 1 < self.0.len() && self.0[index + 1] == last + 1 {
                index += 1;
                last = self.0[index];
            }
            if first != self.0[0] {
                f.write_str(",")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
            index += 1;
        }
        Ok(())
    }
}

/// What limits are checked against: the CPUs this machine has online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The online CPUs (`/sys/devices/system/cpu/online`).
    pub cpus: CpuList,
}

impl Machine {
    /// This machine.
    pub fn current() -> Result<Machine> {
        const ONLINE: &str = "/sys/devices/system/cpu/online";
        let cpus = match std::fs::read_to_string(ONLINE) {
            Ok(text) => CpuList::parse(&text).map_err(|reason| {
                Error::Invalid(format!(
                    "cannot read the CPUs of this machine from {ONLINE}: {reason}"
                ))
            })?,
            // No sysfs (an unusual container): count the CPUs we may run on instead.
            Err(_) => {
                let count = std::thread::available_parallelism().map_or(1, |n| n.get());
                CpuList((0..count as u32).collect())
            }
        };
        Ok(Machine { cpus })
    }
}

impl Limits {
    // ANCHOR: parse
    /// Checks every flag, and the flags against each other and against `machine`.
    pub fn parse(args: &LimitArgs, machine: &Machine) -> Result<Limits> {
        let memory = args.memory.as_deref().map(parse_memory).transpose()?;
        let memory_swap = args.memory_swap.as_deref().map(parse_swap).transpose()?;
        match (memory, memory_swap) {
            (None, Some(_)) => {
                return Err(Error::Invalid(
                    "--memory-swap needs --memory: it is the total of memory and swap".into(),
                ))
            }
            (Some(memory), Some(Swap::Total(total))) if total < memory => {
                return Err(Error::Invalid(format!(
                    "invalid --memory-swap '{}': memory plus swap ({}) cannot be less than \
                     --memory ({})",
                    args.memory_swap.as_deref().unwrap_or_default(),
                    super::format_size(total),
                    super::format_size(memory)
                )))
            }
            _ => {}
        }
        Ok(Limits {
            memory,
            memory_swap,
            cpus: args.cpus.as_deref().map(|text| parse_cpus(text, machine)).transpose()?,
            cpu_shares: args.cpu_shares.as_deref().map(parse_shares).transpose()?,
            pids: args.pids.as_deref().map(parse_pids).transpose()?,
            cpuset: args.cpuset.as_deref().map(|text| parse_cpuset(text, machine)).transpose()?,
        })
    }
    // ANCHOR_END: parse

    /// No limit at all (the cgroup still counts usage for the report).
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

// ANCHOR: size
/// Parses a size in bytes with an optional binary unit: `1048576`, `512k`, `64M`, `1.5G`
/// (`k` = 1024 bytes; `KB`, `KiB` and `kb` mean the same). `flag` names the option in errors.
pub fn parse_size(flag: &str, text: &str) -> Result<u64> {
    let invalid = |why: &str| Error::Invalid(format!("invalid {flag} '{text}': {why}"));
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(invalid("a size cannot be negative"));
    }
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(invalid(SIZE_FORMAT)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(SIZE_FORMAT));
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || (number.contains('.') && shift == 0) {
        return Err(invalid(SIZE_FORMAT));
    }
    let too_large = || invalid("that is more than any machine has");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole << shift;
    if !fraction.is_empty() {
        let digits = fraction.len().min(18) as u32;
        let fraction: u128 = fraction[..digits as usize].parse().map_err(|_| too_large())?;
        bytes += (fraction << shift) / 10u128.pow(digits);
    }
    if bytes > i64::MAX as u128 {
        return Err(too_large());
    }
    if bytes == 0 {
        return Err(invalid("the limit must be more than 0 bytes"));
    }
    Ok(bytes as u64)
}
// ANCHOR_END: size

/// Parses `--memory`: a size of at least [`MIN_MEMORY`].
pub fn parse_memory(text: &str) -> Result<u64> {
    let bytes = parse_size("--memory", text)?;
    if bytes < MIN_MEMORY {
        return Err(Error::Invalid(format!(
            "invalid --memory '{text}': less than {}, too little for any command to start \
             (docker refuses it too); use 6M or more",
            super::format_size(MIN_MEMORY)
        )));
    }
    Ok(bytes)
}

const SIZE_FORMAT: &str =
    "expected bytes, or a number with a binary unit: 512k, 64M, 1.5G (1k = 1024 bytes)";

/// Parses `--memory-swap`: a size, or `-1` for unlimited swap.
pub fn parse_swap(text: &str) -> Result<Swap> {
    if text.trim() == "-1" {
        return Ok(Swap::Unlimited);
    }
    if text.trim().starts_with('-') {
        return Err(Error::Invalid(format!(
            "invalid --memory-swap '{text}': a size, or -1 for unlimited swap"
        )));
    }
    parse_size("--memory-swap", text).map(Swap::Total)
}

// ANCHOR: cpus
/// Parses `--cpus` into a quota per [`PERIOD_US`]: `0.5` is 50 000 µs every 100 000 µs.
pub fn parse_cpus(text: &str, machine: &Machine) -> Result<CpuQuota> {
    let available = machine.cpus.len().max(1);
    let range = format!("use a number from 0.01 to {available}");
    let invalid = |why: String| Error::Invalid(format!("invalid --cpus '{text}': {why}"));
    let cpus: f64 = text.trim().parse().map_err(|_| invalid(format!("not a number; {range}")))?;
    if !cpus.is_finite() {
        return Err(invalid(format!("not a number; {range}")));
    }
    if cpus <= 0.0 {
        return Err(invalid(format!("must be more than 0; {range}")));
    }
    if cpus > available as f64 {
        let plural = if available == 1 { "" } else { "s" };
        return Err(invalid(format!("this machine has {available} CPU{plural}; {range}")));
    }
    let quota_us = (cpus * PERIOD_US as f64).round() as u64;
    if quota_us < MIN_QUOTA_US {
        return Err(invalid(format!(
            "the kernel's smallest quota is 1 ms per 100 ms period; {range}"
        )));
    }
    Ok(CpuQuota { quota_us, period_us: PERIOD_US })
}
// ANCHOR_END: cpus

/// Parses `--cpu-shares` (v1 units, 2 to 262144).
pub fn parse_shares(text: &str) -> Result<u64> {
    text.trim().parse().ok().filter(|shares| SHARES.contains(shares)).ok_or_else(|| {
        Error::Invalid(format!(
            "invalid --cpu-shares '{text}': use a whole number from {} to {} (the default \
             weight is 1024)",
            SHARES.start(),
            SHARES.end()
        ))
    })
}

// ANCHOR: weight
/// Converts v1 `cpu.shares` (2…262144, default 1024) to v2 `cpu.weight` (1…10000, default
/// 100) as runc (from 1.3.2) and crun (from 1.23) do: a curve through the points that matter,
/// both ends and both defaults, so the default 1024 shares become the default weight 100.
/// (The straight line runc used before, `1 + (shares - 2) * 9999 / 262142`, met only the
/// ends: it turned the default 1024 into 39, and a container given the default shares lost to
/// every process left at v2's default weight.) The curve is `10^((l² + 125·l) / 612 − 7/34)`
/// with `l = log2(shares)`, rounded up.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(*SHARES.start(), *SHARES.end());
    let l = (shares as f64).log2();
    let weight = 10f64.powf((l * l + 125.0 * l) / 612.0 - 7.0 / 34.0);
    // Rounded up, but a value that is whole up to floating-point noise stays whole (1024
    // shares must give 100, not 101).
    let weight =
        if (weight - weight.round()).abs() < 1e-9 { weight.round() } else { weight.ceil() };
    (weight as u64).clamp(1, 10_000)
}
// ANCHOR_END: weight

/// Parses `--pids` (at least 1).
pub fn parse_pids(text: &str) -> Result<u64> {
    text.trim().parse().ok().filter(|pids| (1..=PIDS_MAX).contains(pids)).ok_or_else(|| {
        Error::Invalid(format!(
            "invalid --pids '{text}': use a whole number from 1 to {PIDS_MAX} (it counts \
             threads too)"
        ))
    })
}

/// Parses `--cpuset` and checks each CPU exists on `machine`.
pub fn parse_cpuset(text: &str, machine: &Machine) -> Result<CpuList> {
    let list = CpuList::parse(text).map_err(|why| {
        Error::Invalid(format!(
            "invalid --cpuset '{text}': {why}; expected CPU numbers and ranges such as 0-1,3"
        ))
    })?;
    if let Some(missing) = list.cpus().iter().find(|cpu| !machine.cpus.cpus().contains(cpu)) {
        return Err(Error::Invalid(format!(
            "invalid --cpuset '{text}': this machine has no CPU {missing} (its CPUs: {})",
            machine.cpus
        )));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_cpus() -> Machine {
        Machine { cpus: CpuList::parse("0-1").unwrap() }
    }

    fn message(result: Result<impl fmt::Debug>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn sizes_take_binary_units() {
        let size = |text| parse_size("--memory", text).unwrap();
        assert_eq!(size("1048576"), 1_048_576);
        assert_eq!(size("512k"), 512 * 1024);
        assert_eq!(size("64M"), 64 << 20);
        assert_eq!(size("64m"), 64 << 20);
        assert_eq!(size("64MiB"), 64 << 20);
        assert_eq!(size("64MB"), 64 << 20);
        assert_eq!(size("1G"), 1 << 30);
        assert_eq!(size("1.5G"), 3 << 29);
        assert_eq!(size("100b"), 100);
    }

    #[test]
    fn bad_sizes_are_refused_with_one_clear_message() {
        let bad = |text| message(parse_size("--memory", text));
        assert_eq!(
            bad("12XB"),
            "invalid --memory '12XB': expected bytes, or a number with a binary unit: 512k, \
             64M, 1.5G (1k = 1024 bytes)"
        );
        assert_eq!(bad("0"), "invalid --memory '0': the limit must be more than 0 bytes");
        assert_eq!(bad("0M"), "invalid --memory '0M': the limit must be more than 0 bytes");
        assert_eq!(bad("-64M"), "invalid --memory '-64M': a size cannot be negative");
        for text in ["", "M", "1.2.3M", "1.5", "64 M M", "1e9", "0x10", "9999999999T"] {
            assert!(parse_size("--memory", text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn memory_below_the_minimum_is_refused() {
        // Each of these was accepted, then OOM-killed at once with "limit 0 B".
        for text in ["1", "4095", "64k", "5.9M", "6291455"] {
            assert_eq!(
                message(parse_memory(text)),
                format!(
                    "invalid --memory '{text}': less than 6 MiB, too little for any command to \
                     start (docker refuses it too); use 6M or more"
                )
            );
        }
        assert_eq!(parse_memory("6M").unwrap(), MIN_MEMORY);
        assert_eq!(parse_memory("6291456").unwrap(), MIN_MEMORY);
        // Bad text is still refused as such, and --memory-swap has no minimum of its own.
        assert!(message(parse_memory("0")).contains("more than 0 bytes"));
        assert_eq!(parse_swap("4M").unwrap(), Swap::Total(4 << 20));
        let args = LimitArgs { memory: Some("64k".into()), ..LimitArgs::default() };
        assert!(message(Limits::parse(&args, &two_cpus())).starts_with("invalid --memory '64k'"));
    }

    #[test]
    fn swap_is_a_total_or_unlimited() {
        assert_eq!(parse_swap("-1").unwrap(), Swap::Unlimited);
        assert_eq!(parse_swap("128M").unwrap(), Swap::Total(128 << 20));
        assert!(message(parse_swap("-2")).contains("-1 for unlimited swap"));
    }

    #[test]
    fn cpus_become_a_quota_per_period() {
        let quota = |text| parse_cpus(text, &two_cpus()).unwrap();
        assert_eq!(quota("0.5"), CpuQuota { quota_us: 50_000, period_us: 100_000 });
        assert_eq!(quota("0.2").quota_us, 20_000);
        assert_eq!(quota("2").quota_us, 200_000);
        assert_eq!(quota("0.01").quota_us, 1_000);
        assert!((quota("1.25").cpus() - 1.25).abs() < 1e-9);
    }

    #[test]
    fn bad_cpus_are_refused() {
        let bad = |text| message(parse_cpus(text, &two_cpus()));
        assert_eq!(
            bad("0"),
            "invalid --cpus '0': must be more than 0; use a number from 0.01 to 2"
        );
        assert_eq!(
            bad("-1"),
            "invalid --cpus '-1': must be more than 0; use a number from 0.01 to 2"
        );
        assert_eq!(bad("NaN"), "invalid --cpus 'NaN': not a number; use a number from 0.01 to 2");
        assert_eq!(bad("inf"), "invalid --cpus 'inf': not a number; use a number from 0.01 to 2");
        assert_eq!(bad("half"), "invalid --cpus 'half': not a number; use a number from 0.01 to 2");
        assert_eq!(
            bad("3"),
            "invalid --cpus '3': this machine has 2 CPUs; use a number from 0.01 to 2"
        );
        assert!(bad("0.001").contains("smallest quota is 1 ms"));
    }

    #[test]
    fn shares_convert_to_weight_as_runc_does() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(512), 59);
        assert_eq!(shares_to_weight(1536), 138);
        assert_eq!(shares_to_weight(3), 2);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(parse_shares("1024").unwrap(), 1024);
        assert!(message(parse_shares("1")).contains("from 2 to 262144"));
        assert!(parse_shares("262145").is_err());
        assert!(parse_shares("-5").is_err());
    }

    #[test]
    fn pids_must_be_at_least_one() {
        assert_eq!(parse_pids("16").unwrap(), 16);
        assert_eq!(
            message(parse_pids("0")),
            "invalid --pids '0': use a whole number from 1 to 4194304 (it counts threads too)"
        );
        assert!(parse_pids("-1").is_err());
        assert!(parse_pids("4194305").is_err());
    }

    #[test]
    fn cpu_lists_parse_and_print_like_the_kernel() {
        let list = CpuList::parse("3,0-1,1").unwrap();
        assert_eq!(list.cpus(), [0, 1, 3]);
        assert_eq!(list.to_string(), "0-1,3");
        assert_eq!(CpuList::parse("0-3,5,7-8\n").unwrap().to_string(), "0-3,5,7-8");
        assert_eq!(CpuList::parse("2").unwrap().to_string(), "2");
        for bad in ["", ",", "0,", "1-0", "a", "0-", "-1", "0 - 1", "0;1"] {
            assert!(CpuList::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpusets_are_checked_against_the_machine() {
        assert_eq!(parse_cpuset("0-1", &two_cpus()).unwrap().to_string(), "0-1");
        assert_eq!(
            message(parse_cpuset("0-3", &two_cpus())),
            "invalid --cpuset '0-3': this machine has no CPU 2 (its CPUs: 0-1)"
        );
        assert_eq!(
            message(parse_cpuset("1-0", &two_cpus())),
            "invalid --cpuset '1-0': the range 1-0 runs backwards; expected CPU numbers and \
             ranges such as 0-1,3"
        );
    }

    #[test]
    fn limits_are_checked_together() {
        let args = LimitArgs {
            memory: Some("64M".into()),
            memory_swap: Some("128M".into()),
            cpus: Some("0.5".into()),
            cpu_shares: Some("512".into()),
            pids: Some("16".into()),
            cpuset: Some("1".into()),
        };
        let limits = Limits::parse(&args, &two_cpus()).unwrap();
        assert_eq!(limits.memory, Some(64 << 20));
        assert_eq!(limits.memory_swap, Some(Swap::Total(128 << 20)));
        assert_eq!(limits.cpus.unwrap().quota_us, 50_000);
        assert_eq!(limits.cpu_shares, Some(512));
        assert_eq!(limits.pids, Some(16));
        assert_eq!(limits.cpuset.unwrap().cpus(), [1]);
        assert!(Limits::parse(&LimitArgs::default(), &two_cpus()).unwrap().is_empty());

        let swap_alone = LimitArgs { memory_swap: Some("1G".into()), ..LimitArgs::default() };
        assert!(message(Limits::parse(&swap_alone, &two_cpus())).contains("needs --memory"));
        let swap_too_small = LimitArgs { memory_swap: Some("32M".into()), ..args };
        assert_eq!(
            message(Limits::parse(&swap_too_small, &two_cpus())),
            "invalid --memory-swap '32M': memory plus swap (32 MiB) cannot be less than \
             --memory (64 MiB)"
        );
    }

    #[test]
    fn limit_flags_take_negative_values_to_refuse_them_clearly() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            limits: LimitArgs,
        }
        let cli = Cli::try_parse_from(["x", "--cpus", "-1", "--memory-swap", "-1"]).unwrap();
        assert_eq!(cli.limits.cpus.as_deref(), Some("-1"));
        assert_eq!(cli.limits.memory_swap.as_deref(), Some("-1"));
    }
}
