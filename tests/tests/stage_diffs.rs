//! Each stage is the one before plus its chapter: the unified diff of stage N's `run()` and
//! stage N+1's shows only the new chapter's lines. The diffs are snapshots
//! (`tests/snapshots/run_diff_stage<N>_to_<N+1>.snap`), which the book includes at the end of
//! each chapter by way of `book/src/generated/` (see `book.rs`): when a stage's `run()`
//! changes, this test fails until the diff is accepted, and the chapter shows the new one.

use std::fs;
use std::path::PathBuf;

use isolab_tests::workspace_root;

/// Stage N's directory under `stages/`, e.g. `stage2-namespaces`.
fn stage_dir(n: u8) -> String {
    let prefix = format!("stage{n}-");
    let dirs = fs::read_dir(workspace_root().join("stages")).unwrap();
    let mut names = dirs.map(|entry| entry.unwrap().file_name().into_string().unwrap());
    names.find(|name| name.starts_with(&prefix)).unwrap_or_else(|| panic!("no stage {n}"))
}

/// The lines between `// ANCHOR: run` and `// ANCHOR_END: run` of stage N's `main.rs`: what
/// the chapter shows as `run()`.
fn run_of(n: u8) -> (String, String) {
    let file = format!("{}/src/main.rs", stage_dir(n));
    let path: PathBuf = workspace_root().join("stages").join(&file);
    let source = fs::read_to_string(&path).unwrap();
    let marker = |line: &str, marker: &str| {
        line.trim_start().trim_start_matches("//").trim() == format!("{marker}: run")
    };
    let lines: Vec<&str> = source.lines().collect();
    let start = lines.iter().position(|line| marker(line, "ANCHOR"));
    let end = lines.iter().position(|line| marker(line, "ANCHOR_END"));
    let (Some(start), Some(end)) = (start, end) else {
        panic!("{} has no `run` anchor", path.display())
    };
    let body: String = lines[start + 1..end].iter().map(|line| format!("{line}\n")).collect();
    (file, body)
}

/// `diff -u` of stage N's `run()` and stage N+1's, with the files named as in the workspace.
fn run_diff(n: u8) -> String {
    let (old_file, old) = run_of(n);
    let (new_file, new) = run_of(n + 1);
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("stages/{old_file} (run)"), &format!("stages/{new_file} (run)"))
        .to_string()
}

/// The lines a diff removes and adds.
fn changed(diff: &str) -> (usize, usize) {
    let lines = diff.lines().filter(|line| !line.starts_with("---") && !line.starts_with("+++"));
    lines.fold((0, 0), |(removed, added), line| match line.chars().next() {
        Some('-') => (removed + 1, added),
        Some('+') => (removed, added + 1),
        _ => (removed, added),
    })
}

fn snapshot(name: &str, diff: String) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(workspace_root().join("tests/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_snapshot!(name, diff));
}

#[test]
fn each_stage_adds_its_chapter_to_the_run_of_the_one_before() {
    for n in 1..=4 {
        let diff = run_diff(n);
        let (removed, added) = changed(&diff);
        // Stage 2 replaces stage 1's fork by a plan and a clone; from then on a stage keeps
        // what the one before does, and changes only the few lines its chapter must (the
        // signature, a call that takes the new part): a diff that removes more has
        // renumbered, reworded or reordered what a reader would have to tell apart from the
        // new idea.
        if n > 1 {
            assert!(
                removed <= 10,
                "stage {} removes {removed} lines of stage {n}'s run():\n{diff}",
                n + 1
            );
        }
        assert!(added > removed, "stage {} adds nothing to stage {n}'s run():\n{diff}", n + 1);
        snapshot(&format!("run_diff_stage{n}_to_{}", n + 1), diff);
    }
}
