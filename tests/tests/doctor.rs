//! `isolab doctor` on this machine: it runs, passes, and reports what the course's CI machine
//! has (cgroup v1 controllers beside a nearly empty cgroup2 mount: "hybrid", so no limits
//! without root). The detection
//! logic itself is unit-tested on fake trees in `stages/isolab/src/doctor.rs`.

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
    assert!(
        report.ends_with("ready: nothing fails\n") || report.contains("ready: nothing fails (")
    );

    let line = |topic: &str| {
        report
            .lines()
            .find(|line| line.get(6..).is_some_and(|rest| rest.starts_with(topic)))
            .unwrap_or_else(|| panic!("no {topic} line in\n{report}"))
            .to_string()
    };
    let release = nix::sys::utsname::uname().unwrap().release().to_string_lossy().into_owned();
    assert!(line("kernel").ends_with(&format!("Linux {release}")), "{report}");
    assert!(line("root").starts_with("ok "), "{report}");
    let cgroups = line("cgroups");
    assert!(cgroups.contains(" v1: ") || cgroups.contains(" hybrid: "), "{cgroups}");
    assert!(line("controllers").contains("memory"), "{report}");
    // Limits without root need a delegated cgroup v2 subtree: on this machine's v1
    // controllers there is none, and doctor says how to get cgroup v2.
    let rootless = line("rootless limits");
    assert!(rootless.starts_with("warn ") && rootless.contains("cannot be delegated"), "{report}");
    assert!(report.contains("fix: boot with cgroup v2 only"), "{report}");
    assert!(line("busybox").contains("statically linked"), "{report}");
    for topic in ["user namespaces", "overlayfs"] {
        line(topic);
    }
}

#[test]
fn doctor_fails_for_a_non_root_user_and_says_how_to_fix_it() {
    if !require_root("doctor_fails_for_a_non_root_user_and_says_how_to_fix_it") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new();
    let output = run(env.cmd("isolab").arg("doctor").uid(65534).gid(65534));
    let report = text(&output.stdout);
    assert_eq!(code(&output), 1, "{report}");
    assert!(report.contains("fail  root "), "{report}");
    assert!(report.contains("fix: sudo isolab doctor"), "{report}");
    assert!(report.ends_with("not ready: 1 check fails; run the fixes above\n"), "{report}");
}
