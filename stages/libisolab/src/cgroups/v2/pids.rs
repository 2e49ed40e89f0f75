//! v2 pids: `pids.max` caps the number of processes *and threads*; past it `fork(2)` and
//! `clone(2)` fail with EAGAIN — which is what stops a fork bomb. `pids.peak` (Linux 6.1)
//! is the most there ever were.

use std::path::Path;

use super::super::{read_bound, read_number, Cgroupfs, Limits, Step, Usage};
use crate::error::Result;

// ANCHOR: steps
/// The write for `--pids`.
pub fn steps(dir: &Path, limits: &Limits) -> Vec<Step> {
    let Some(pids) = limits.pids else { return Vec::new() };
    vec![Step::write(
        dir.join("pids.max"),
        pids,
        format!("--pids {pids}: fork and clone fail with EAGAIN past it"),
    )]
}
// ANCHOR_END: steps

/// The peak and the limit.
pub fn report(fs: &dyn Cgroupfs, dir: &Path, usage: &mut Usage) -> Result<()> {
    usage.pids_peak = read_number(fs, &dir.join("pids.peak"))?;
    usage.pids_limit = read_bound(fs, &dir.join("pids.max"))?;
    Ok(())
}
