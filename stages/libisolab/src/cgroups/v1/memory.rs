//! v1 memory: `memory.limit_in_bytes` limits memory, `memory.memsw.limit_in_bytes` memory
//! *plus* swap (docker's `--memory-swap` comes from here), and the second may never be below
//! the first, so they are written in that order. `memory.max_usage_in_bytes` is the
//! high-water mark; `memory.oom_control` counts the OOM kills.

use std::path::Path;

use super::super::{format_size, read_number, read_optional, report, Bound, Cgroupfs};
use super::super::{Limits, Step, Swap, Usage};
use crate::error::{Error, Result};

/// What v1 reads back for "no limit": the largest multiple of the page size below 2^63.
/// Anything this large is no limit.
const UNLIMITED_FROM: u64 = 1 << 62;

// ANCHOR: steps
/// The writes for `--memory` and `--memory-swap`.
pub fn steps(dir: &Path, limits: &Limits) -> Vec<Step> {
    let mut steps = Vec::new();
    let Some(memory) = limits.memory else { return steps };
    steps.push(Step::write(
        dir.join("memory.limit_in_bytes"),
        memory,
        format!(
            "--memory {}: past it the kernel reclaims, then the OOM killer kills",
            format_size(memory)
        ),
    ));
    let swap = match limits.memory_swap {
        Some(Swap::Total(total)) => Some((total.to_string(), format_size(total))),
        Some(Swap::Unlimited) => Some(("-1".to_string(), "-1 (no limit)".to_string())),
        None => None,
    };
    if let Some((value, shown)) = swap {
        steps.push(Step::write(
            dir.join("memory.memsw.limit_in_bytes"),
            value,
            format!("--memory-swap {shown}: memory plus swap, never below the memory limit"),
        ));
    }
    steps
}
// ANCHOR_END: steps

/// `--memory-swap` needs swap accounting, which some kernels leave out (`swapaccount=0`):
/// then the hierarchy has no `memory.memsw.*` files.
pub fn check_swap_accounting(fs: &dyn Cgroupfs, mount: &Path) -> Result<()> {
    if fs.exists(&mount.join("memory.memsw.limit_in_bytes")) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--memory-swap needs swap accounting, which this kernel does not do ({} has no \
         memory.memsw.limit_in_bytes): boot with swapaccount=1, or leave --memory-swap out",
        mount.display()
    )))
}

// ANCHOR: report
/// Peak memory, the limit, and how many processes the OOM killer took.
pub fn report(fs: &dyn Cgroupfs, dir: &Path, usage: &mut Usage) -> Result<()> {
    usage.memory_peak = read_number(fs, &dir.join("memory.max_usage_in_bytes"))?;
    usage.memory_limit = read_number(fs, &dir.join("memory.limit_in_bytes"))?.map(|bytes| {
        if bytes >= UNLIMITED_FROM {
            Bound::Max
        } else {
            Bound::At(bytes)
        }
    });
    // `oom_kill` appeared in memory.oom_control with Linux 4.13.
    let oom_control = read_optional(fs, &dir.join("memory.oom_control"))?;
    usage.oom_kills = oom_control.and_then(|text| report::keyed(&text, "oom_kill"));
    Ok(())
}
// ANCHOR_END: report
