//! `isolab grade` refuses, up front and in one line with exit 125, what it cannot grade,
//! rather than grading nothing as a pass or failing every task with a shell's words (found by
//! a student's pass over the grader).

use std::fs;
use std::os::unix::fs::PermissionsExt;

use isolab_tests::*;

#[test]
fn grade_refuses_what_it_cannot_grade_before_grading() {
    if !require_root("grade_refuses_what_it_cannot_grade_before_grading") {
        return;
    }
    let env = TestEnv::new();
    let stage1 = bin_dir().join("stage1-chroot");
    let not_executable = env.path().join("stage1-chroot.d");
    fs::write(&not_executable, "target/debug/stage1-chroot: src/main.rs\n").unwrap();
    let rlib = env.path().join("libstage.rlib");
    fs::write(&rlib, "!<arch>\n").unwrap();
    fs::set_permissions(&rlib, fs::Permissions::from_mode(0o755)).unwrap();
    let junit = env.path().join("no-such-dir/grade.xml");
    let cases: [(Vec<std::ffi::OsString>, &str); 5] = [
        // A task of a later stage: nothing would be graded, and "every task passed".
        (args(&["1", "--task", "pivot-root", "--bin"], &stage1), "is a task of stage 2"),
        (args(&["1", "--bin"], &not_executable), "is not executable"),
        (args(&["1", "--bin"], &rlib), "neither an ELF program nor a #! script"),
        (
            [args(&["1", "--memory-limit", "17592186044416", "--bin"], &stage1)].concat(),
            "is more than",
        ),
        (
            [args(&["1", "--junit"], &junit), args(&["--bin"], &stage1)].concat(),
            "is not a directory",
        ),
    ];
    for (words, said) in cases {
        let output = run(env.cmd("isolab").arg("grade").args(&words));
        let stderr = text(&output.stderr);
        assert_eq!(code(&output), 125, "{words:?}: {stderr}");
        assert!(stderr.contains(said), "{words:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{words:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{words:?}: graded anyway");
    }
}

fn args(words: &[&str], path: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut all: Vec<std::ffi::OsString> = words.iter().map(Into::into).collect();
    all.push(path.into());
    all
}
