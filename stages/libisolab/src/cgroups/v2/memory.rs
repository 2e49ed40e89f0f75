//! v2 memory: `memory.max` limits the memory of the group (page cache included); past it the
//! kernel reclaims what it can, then the OOM killer kills a process *of this group*.
//! `memory.swap.max` limits swap on its own. `memory.peak` is the high-water mark (Linux
//! 5.19), `memory.events` counts the OOM kills.

use std::path::Path;

use super::super::{format_size, read_bound, read_number, read_optional, report, Cgroupfs};
use super::super::{Limits, Step, Swap, Usage};
use crate::error::Result;

// ANCHOR: steps
/// The writes for `--memory` and `--memory-swap`.
pub fn steps(dir: &Path, limits: &Limits) -> Vec<Step> {
    let mut steps = Vec::new();
    let Some(memory) = limits.memory else { return steps };
    steps.push(Step::write(
        dir.join("memory.max"),
        memory,
        format!(
            "--memory {}: past it the kernel reclaims, then the OOM killer kills",
            format_size(memory)
        ),
    ));
    match limits.memory_swap {
        // docker's --memory-swap is memory plus swap; v2 counts swap apart.
        Some(Swap::Total(total)) => steps.push(Step::write(
            dir.join("memory.swap.max"),
            total.saturating_sub(memory),
            format!(
                "--memory-swap {}: v2 limits swap alone, so memory+swap minus memory",
                format_size(total)
            ),
        )),
        Some(Swap::Unlimited) => steps.push(Step::write(
            dir.join("memory.swap.max"),
            "max",
            "--memory-swap -1: swap without limit",
        )),
        None => {}
    }
    steps
}
// ANCHOR_END: steps

// ANCHOR: report
/// Peak memory, the limit, and how many processes the OOM killer took.
pub fn report(fs: &dyn Cgroupfs, dir: &Path, usage: &mut Usage) -> Result<()> {
    usage.memory_peak = read_number(fs, &dir.join("memory.peak"))?;
    usage.memory_limit = read_bound(fs, &dir.join("memory.max"))?;
    let events = read_optional(fs, &dir.join("memory.events"))?;
    usage.oom_kills = events.and_then(|text| report::keyed(&text, "oom_kill"));
    Ok(())
}
// ANCHOR_END: report
