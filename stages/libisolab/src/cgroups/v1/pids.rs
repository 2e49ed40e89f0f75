//! v1 pids: the same files as on v2 — `pids.max` (past it fork and clone fail with EAGAIN)
//! and, since Linux 6.12, `pids.peak`. Without it the peak is "not available".

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

/// The peak (if this kernel has it) and the limit.
pub fn report(fs: &dyn Cgroupfs, dir: &Path, usage: &mut Usage) -> Result<()> {
    usage.pids_peak = read_number(fs, &dir.join("pids.peak"))?;
    usage.pids_limit = read_bound(fs, &dir.join("pids.max"))?;
    Ok(())
}
