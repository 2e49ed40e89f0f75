//! v2 cpu: `cpu.max` is "quota period" — so many microseconds of CPU time in every period,
//! after which the group waits for the next period (it is *throttled*). `cpu.weight` shares
//! contended CPUs in proportion (1 to 10000, default 100). `cpu.stat` counts the time used
//! (always there) and the throttling (with the cpu controller).

use std::path::Path;
use std::time::Duration;

use super::super::limits::shares_to_weight;
use super::super::{read_optional, report, Cgroupfs, Limits, Step, Usage};
use crate::error::Result;

// ANCHOR: steps
/// The writes for `--cpus` and `--cpu-shares`.
pub fn steps(dir: &Path, limits: &Limits) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(quota) = limits.cpus {
        steps.push(Step::write(
            dir.join("cpu.max"),
            format!("{} {}", quota.quota_us, quota.period_us),
            format!(
                "--cpus {}: {} µs of CPU time in every {} µs period",
                quota.cpus(),
                quota.quota_us,
                quota.period_us
            ),
        ));
    }
    if let Some(shares) = limits.cpu_shares {
        steps.push(Step::write(
            dir.join("cpu.weight"),
            shares_to_weight(shares),
            format!(
                "--cpu-shares {shares} as a v2 weight (runc's curve: 1024 shares are weight 100)"
            ),
        ));
    }
    steps
}
// ANCHOR_END: steps

// ANCHOR: report
/// CPU time in user and system mode, and the throttling: all in microseconds.
pub fn report(fs: &dyn Cgroupfs, dir: &Path, usage: &mut Usage) -> Result<()> {
    let Some(stat) = read_optional(fs, &dir.join("cpu.stat"))? else { return Ok(()) };
    let micros = |key| report::keyed(&stat, key).map(Duration::from_micros);
    usage.cpu_user = micros("user_usec");
    usage.cpu_system = micros("system_usec");
    usage.throttled_periods = report::keyed(&stat, "nr_throttled");
    usage.throttled_time = micros("throttled_usec");
    Ok(())
}
// ANCHOR_END: report
