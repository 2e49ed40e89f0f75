//! `isolab doctor` on this machine, as root: it runs, passes, and says what each stage can do.
//! What it reports depends on the machine (its kernel, its cgroup layout), so this test checks
//! the report's shape and what holds on any machine the course runs on, not this host's
//! layout; the detection logic itself is unit-tested on fake trees in
//! `stages/isolab/src/doctor.rs`, and doctor as a user without root in `rootless.rs`.

use isolab_tests::*;

#[test]
fn doctor_passes_on_this_machine() {
    if !require_root("doctor_passes_on_this_machine") {
        return;
    }
    let env = TestEnv::new();
    let output = run(env.cmd("isolab").arg("doctor"));
    let report = text(&output.stdout);
    assert_eq!(code(&output), 0, "{report}{}", text(&output.stderr));
    assert!(report.starts_with("isolab doctor: can this machine run the course?\n"), "{report}");
    let last = report.lines().last().unwrap_or_default();
    assert!(last.starts_with("ready for root: "), "{report}");

    let line = |topic: &str| {
        report
            .lines()
            .find(|line| line.get(6..).is_some_and(|rest| rest.starts_with(topic)))
            .unwrap_or_else(|| panic!("no {topic} line in\n{report}"))
            .to_string()
    };
    let release = nix::sys::utsname::uname().unwrap().release().to_string_lossy().into_owned();
    assert!(line("kernel").ends_with(&format!("Linux {release}")), "{report}");
    assert!(line("user").starts_with("ok ") && line("user").ends_with("root (uid 0)"), "{report}");
    assert!(line("busybox").contains("statically linked"), "{report}");
    // Every check has its line (what each says is this machine's business).
    for topic in ["user namespaces", "cgroups", "controllers", "rootless limits", "overlayfs"] {
        line(topic);
    }
    // No check fails, or doctor would not have said ready.
    assert!(!report.lines().any(|line| line.starts_with("fail ")), "{report}");

    // Then one line per stage, for root: every stage runs, chroot first of all.
    assert!(report.contains("\nwhat runs for root:\n"), "{report}");
    for n in 1..=5 {
        let stage = report.lines().find(|line| line.get(9..16) == Some(&format!("stage {n}")));
        let stage = stage.unwrap_or_else(|| panic!("no stage {n} line in\n{report}"));
        assert!(!stage.starts_with("no "), "root runs every stage: {report}");
    }
    assert!(report.contains("ok       stage 1  chroot, as root\n"), "{report}");
}

#[test]
fn doctor_stage_must_be_a_stage() {
    let env = TestEnv::new();
    let output = run(env.cmd("isolab").args(["doctor", "--stage", "6"]));
    assert_eq!(code(&output), 125, "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("--stage"), "{}", text(&output.stderr));
}
