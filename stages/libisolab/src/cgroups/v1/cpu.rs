//! v1 cpu: the CFS bandwidth controller takes the quota and the period in two files
//! (`cpu.cfs_quota_us`, `cpu.cfs_period_us`; -1 is no quota), and the relative weight in
//! `cpu.shares`. Its `cpu.stat` counts the throttled periods and time (in nanoseconds); the
//! time *used* is counted by another controller, [`super::cpuacct`].

use std::path::Path;
use std::time::Duration;

use super::super::{read_optional, report, Cgroupfs, Limits, Step, Usage};
use crate::error::Result;

// ANCHOR: steps
/// The writes for `--cpus` and `--cpu-shares`.
pub fn steps(dir: &Path, limits: &Limits) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(quota) = limits.cpus {
        steps.push(Step::write(
            dir.join("cpu.cfs_period_us"),
            quota.period_us,
            format!("--cpus {}: periods of {} µs …", quota.cpus(), quota.period_us),
        ));
        steps.push(Step::write(
            dir.join("cpu.cfs_quota_us"),
            quota.quota_us,
            format!("… with {} µs of CPU time in each", quota.quota_us),
        ));
    }
    if let Some(shares) = limits.cpu_shares {
        steps.push(Step::write(
            dir.join("cpu.shares"),
            shares,
            format!("--cpu-shares {shares}: the weight when CPUs are contended"),
        ));
    }
    steps
}
// ANCHOR_END: steps

/// How often and for how long the group was throttled.
pub fn report(fs: &dyn Cgroupfs, dir: &Path, usage: &mut Usage) -> Result<()> {
    let Some(stat) = read_optional(fs, &dir.join("cpu.stat"))? else { return Ok(()) };
    usage.throttled_periods = report::keyed(&stat, "nr_throttled");
    usage.throttled_time = report::keyed(&stat, "throttled_time").map(Duration::from_nanos);
    Ok(())
}
