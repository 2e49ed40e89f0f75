//! The lab machine's recipe (`lab-vm/`, for readers without a suitable Linux host), checked as
//! far as a machine without a VM image can: `lab-vm/check` parses the Vagrantfile, validates
//! the cloud-init user-data against cloud-init's own schema, checks that both recipes
//! provision with `lab-vm/provision` (which ends in `scripts/setup`) and nothing else, and
//! boots Debian 12's own kernel under qemu (TCG, no network) to mount the repository over 9p
//! exactly as the user-data does. One `PASS`/`FAIL`/`SKIP` line per check.
//!
//! In CI every check must pass (a `SKIP` is a missing tool `scripts/setup` should have
//! installed); elsewhere a `SKIP` is shown and tolerated.

use std::process::Command;
use std::time::{Duration, Instant};

use isolab_tests::*;

#[test]
fn the_lab_machine_recipe_checks_pass() {
    if !require_root("the_lab_machine_recipe_checks_pass") {
        return;
    }
    let started = Instant::now();
    let output = run(&mut Command::new(workspace_root().join("lab-vm/check")));
    let said = text(&output.stdout);
    let lines: Vec<&str> = said.lines().collect();
    let failed: Vec<&&str> = lines.iter().filter(|line| line.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "{said}\n{}", text(&output.stderr));
    assert!(output.status.success(), "{said}\n{}", text(&output.stderr));
    // The checks the recipe must have had: the boot is the one that proves the share.
    for needed in ["Vagrantfile parses", "user-data: Valid cloud-config", "the share is read-only"]
    {
        let passed = lines.iter().any(|line| line.starts_with("PASS") && line.contains(needed));
        let skipped: Vec<&&str> = lines.iter().filter(|line| line.starts_with("SKIP")).collect();
        if !passed && !in_ci() && !skipped.is_empty() {
            eprintln!("lab-vm/check skipped what this machine lacks: {skipped:?}");
            continue;
        }
        assert!(passed, "no PASS for `{needed}`:\n{said}");
    }
    assert!(started.elapsed() < Duration::from_secs(600), "took {:?}", started.elapsed());
}
