//! v1 freezer: `freezer.state` stops every process of a group (`FROZEN`) and lets them go on
//! (`THAWED`). Nothing to set up; [`super::V1`] freezes a group before killing it, so that
//! no process can fork a new one between the reading of `cgroup.procs` and the kill.
//! (v2 has the same in `cgroup.freeze`, and `cgroup.kill` besides.)

use std::path::Path;
use std::time::{Duration, Instant};

use super::super::{read_file, write_file, Cgroupfs};
use crate::error::Result;

/// How long to wait for FREEZING to become FROZEN before killing anyway.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

// ANCHOR: freeze
/// Freezes the group at `dir` and waits until every process is stopped: the state reads
/// `FREEZING` until then. If that takes too long, the kill goes ahead regardless.
pub fn freeze(fs: &dyn Cgroupfs, dir: &Path) -> Result<()> {
    let state = dir.join("freezer.state");
    write_file(fs, &state, "FROZEN")?;
    let start = Instant::now();
    while read_file(fs, &state)?.trim() != "FROZEN" && start.elapsed() < FREEZE_TIMEOUT {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Lets the group run again (a process killed while frozen dies now).
pub fn thaw(fs: &dyn Cgroupfs, dir: &Path) -> Result<()> {
    write_file(fs, &dir.join("freezer.state"), "THAWED")
}
// ANCHOR_END: freeze
