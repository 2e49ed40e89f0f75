//! v1 cpuacct: accounting only, no limits. `cpuacct.usage_user` and `cpuacct.usage_sys` hold
//! the CPU time in user and system mode in nanoseconds; older kernels have only
//! `cpuacct.stat`, in clock ticks (`USER_HZ`, `sysconf(_SC_CLK_TCK)`: 100 per second).

use std::path::Path;
use std::time::Duration;

use nix::unistd::{sysconf, SysconfVar};

use super::super::{read_number, read_optional, report, Cgroupfs, Usage};
use crate::error::Result;

// ANCHOR: report
/// CPU time in user and system mode.
pub fn report(fs: &dyn Cgroupfs, dir: &Path, usage: &mut Usage) -> Result<()> {
    let user = read_number(fs, &dir.join("cpuacct.usage_user"))?;
    let system = read_number(fs, &dir.join("cpuacct.usage_sys"))?;
    if let (Some(user), Some(system)) = (user, system) {
        usage.cpu_user = Some(Duration::from_nanos(user));
        usage.cpu_system = Some(Duration::from_nanos(system));
        return Ok(());
    }
    let Some(stat) = read_optional(fs, &dir.join("cpuacct.stat"))? else { return Ok(()) };
    let ticks_per_second = match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as u64,
        _ => 100,
    };
    let time = |ticks: u64| Duration::from_nanos(ticks * 1_000_000_000 / ticks_per_second);
    usage.cpu_user = report::keyed(&stat, "user").map(time);
    usage.cpu_system = report::keyed(&stat, "system").map(time);
    Ok(())
}
// ANCHOR_END: report

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::super::super::fake::FakeTree;
    use super::*;

    #[test]
    fn old_kernels_count_in_clock_ticks() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cpuacct.stat"), "user 152\nsystem 3\n").unwrap();
        let fs = Rc::new(FakeTree::v1(tmp.path()));
        let mut usage = Usage::default();
        report(&*fs, tmp.path(), &mut usage).unwrap();
        // USER_HZ is 100 on every Linux architecture but alpha.
        assert_eq!(usage.cpu_user, Some(Duration::from_millis(1520)));
        assert_eq!(usage.cpu_system, Some(Duration::from_millis(30)));
    }
}
