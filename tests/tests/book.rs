//! The book never goes stale.
//!
//! 1. Output shown in a chapter is included from `book/src/generated/<name>.txt`, and those
//!    files are exactly the bodies of the insta snapshots in `tests/snapshots/`, which the other
//!    tests check against the real programs (only the snapshots a chapter includes). This test fails when the two differ (and, outside
//!    CI, rewrites the generated files so that the fix is a commit), in the manner of
//!    rust-analyzer's `ensure_file_contents`.
//! 2. Every `{{#include}}` names a file that exists and, where it names an anchor, an anchor
//!    that exists in that file: code in the book comes from the real sources.
//! 3. The book builds with mdBook (as a library: no tool to install).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use isolab_tests::workspace_root;

/// The body of an insta snapshot file: everything after its `---` header.
fn snapshot_body(snap: &str) -> &str {
    let rest = snap.strip_prefix("---\n").expect("a snapshot starts with a --- header");
    let end = rest.find("\n---\n").expect("the header ends with ---");
    &rest[end + "\n---\n".len()..]
}

fn snapshots() -> BTreeMap<String, String> {
    let dir = workspace_root().join("tests/snapshots");
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(&dir).expect("tests/snapshots") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("snap") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let body = snapshot_body(&fs::read_to_string(&path).unwrap()).to_string();
        found.insert(name, body);
    }
    found
}

#[test]
fn book_outputs_are_the_snapshots() {
    let generated = workspace_root().join("book/src/generated");
    let in_ci = std::env::var("CI").as_deref() == Ok("true");
    let mut stale = Vec::new();
    let snapshots = snapshots();
    assert!(!snapshots.is_empty(), "no snapshots found");
    // Only what a chapter shows is generated; a snapshot that no chapter includes is a test's
    // own, and a copy of it in the book would be dead text.
    let shown: BTreeSet<String> = includes()
        .into_iter()
        .filter_map(|(_, file, _)| {
            Some(file.strip_prefix("generated/")?.strip_suffix(".txt")?.into())
        })
        .collect();
    for (name, body) in snapshots.iter().filter(|(name, _)| shown.contains(*name)) {
        let path = generated.join(format!("{name}.txt"));
        if fs::read_to_string(&path).ok().as_deref() != Some(body.as_str()) {
            stale.push(path.display().to_string());
            if !in_ci {
                fs::write(&path, body).unwrap();
            }
        }
    }
    for entry in fs::read_dir(&generated).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let why = if !snapshots.contains_key(&stem) {
            "no snapshot any more"
        } else if !shown.contains(&stem) {
            "no chapter includes it"
        } else {
            continue;
        };
        stale.push(format!("{} ({why})", path.display()));
        if !in_ci {
            fs::remove_file(&path).unwrap();
        }
    }
    assert!(
        stale.is_empty(),
        "the book's shown output differs from the snapshots the tests check; {}:\n{}",
        if in_ci {
            "regenerate with `cargo test --test book` and commit"
        } else {
            "rewritten, commit them"
        },
        stale.join("\n")
    );
}

/// Every `{{#include path[:anchor]}}` in the chapters, with the chapter it is in.
fn includes() -> Vec<(PathBuf, String, Option<String>)> {
    let src = workspace_root().join("book/src");
    let mut found = Vec::new();
    for entry in fs::read_dir(&src).unwrap() {
        let chapter = entry.unwrap().path();
        if chapter.extension().and_then(|e| e.to_str()) != Some("md") {
            continue;
        }
        let text = fs::read_to_string(&chapter).unwrap();
        for piece in text.split("{{#include ").skip(1) {
            let target = piece.split("}}").next().unwrap().trim();
            let (file, anchor) = match target.split_once(':') {
                Some((file, anchor)) if !anchor.chars().next().unwrap().is_ascii_digit() => {
                    (file.to_string(), Some(anchor.to_string()))
                }
                Some((file, _lines)) => (file.to_string(), None),
                None => (target.to_string(), None),
            };
            found.push((chapter.clone(), file, anchor));
        }
    }
    found
}

#[test]
fn every_include_and_anchor_exists() {
    let src = workspace_root().join("book/src");
    let includes = includes();
    assert!(includes.iter().any(|(_, _, a)| a.is_some()), "chapters include code by anchor");
    let mut broken = Vec::new();
    for (chapter, file, anchor) in includes {
        let path = src.join(&file);
        let Ok(text) = fs::read_to_string(&path) else {
            broken.push(format!("{}: {file} does not exist", chapter.display()));
            continue;
        };
        if let Some(anchor) = anchor {
            let has = |marker: &str| {
                text.lines().any(|line| {
                    line.trim_start().trim_start_matches("//").trim()
                        == format!("{marker}: {anchor}")
                })
            };
            if !has("ANCHOR") || !has("ANCHOR_END") {
                broken.push(format!("{}: {file} has no anchor `{anchor}`", chapter.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken includes:\n{}", broken.join("\n"));
}

#[test]
fn every_chapter_is_in_the_summary_and_every_stage_has_a_chapter() {
    let root = workspace_root();
    let summary = fs::read_to_string(root.join("book/src/SUMMARY.md")).unwrap();
    for entry in fs::read_dir(root.join("stages")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with("stage") {
            assert!(
                summary.contains(&format!("({name}.md)")),
                "{name} has no chapter in SUMMARY.md"
            );
        }
    }
    for entry in fs::read_dir(root.join("book/src")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") && name != "SUMMARY.md" {
            assert!(summary.contains(&format!("({name})")), "{name} is not in SUMMARY.md");
        }
    }
}

#[test]
fn the_book_builds() {
    let out = tempfile::tempdir().unwrap();
    let mut book = mdbook_driver::MDBook::load(workspace_root().join("book")).expect("load book");
    book.config.build.build_dir = out.path().to_path_buf();
    book.build().expect("the book builds");
    let index = out.path().join("index.html");
    assert!(index.exists(), "index.html rendered");
    // No include was left unexpanded in the rendered pages.
    let mut unexpanded = Vec::new();
    visit(out.path(), &mut |path| {
        if path.extension().and_then(|e| e.to_str()) == Some("html") {
            let html = fs::read_to_string(path).unwrap();
            if html.contains("{{#include") {
                unexpanded.push(path.display().to_string());
            }
        }
    });
    assert!(unexpanded.is_empty(), "unexpanded includes in {unexpanded:?}");
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, f);
        } else {
            f(&path);
        }
    }
}
