//! The dependency graph is the curriculum: stage N may use only library modules that chapters
//! 1..=N introduce (`libisolab::CHAPTERS`), so a reader who has read up to chapter N has seen
//! every mechanism stage N uses.

use std::fs;
use std::path::Path;

use isolab_tests::workspace_root;

fn chapter_of(module: &str) -> Option<u8> {
    libisolab::CHAPTERS.iter().find(|(name, _)| *name == module).map(|(_, chapter)| *chapter)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            out.push(path);
        }
    }
}

/// Module names that follow `libisolab::` in a source text (also inside `use libisolab::{..}`).
fn used_modules(source: &str) -> Vec<String> {
    let mut used = Vec::new();
    for piece in source.split("libisolab::").skip(1) {
        let piece = piece.trim_start();
        let names: Vec<&str> = if let Some(group) = piece.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            group
                .split(',')
                .map(|item| item.trim().split("::").next().unwrap_or_default())
                .collect()
        } else {
            vec![piece.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or_default()]
        };
        for name in names {
            let name = name.trim();
            // Items re-exported at the root (Error, Result, CHAPTERS) belong to chapter 1.
            if !name.is_empty() && name.chars().next().unwrap().is_lowercase() {
                used.push(name.to_string());
            }
        }
    }
    used
}

#[test]
fn every_library_module_has_a_chapter() {
    let lib = fs::read_to_string(workspace_root().join("stages/libisolab/src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(module) = line.strip_prefix("pub mod ") {
            let module = module.trim_end_matches(';');
            assert!(chapter_of(module).is_some(), "libisolab::{module} is missing from CHAPTERS");
        }
    }
}

#[test]
fn stage_n_uses_only_chapters_up_to_n() {
    let mut checked = 0;
    for entry in fs::read_dir(workspace_root().join("stages")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let Some(number) = name.strip_prefix("stage").and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        let stage: u8 = number.parse().expect("stage dirs are named stageN-topic");
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for file in files {
            let source = fs::read_to_string(&file).unwrap();
            for module in used_modules(&source) {
                let chapter = chapter_of(&module).unwrap_or_else(|| {
                    panic!("{}: libisolab::{module} is unknown", file.display())
                });
                assert!(
                    chapter <= stage,
                    "{} (stage {stage}) uses libisolab::{module} from chapter {chapter}",
                    file.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no stage uses the library?");
}

#[test]
fn the_scanner_sees_grouped_and_plain_uses() {
    let used =
        used_modules("use libisolab::chroot::{self, DirId};\nuse libisolab::{cli, exit, Error};");
    assert_eq!(used, ["chroot", "cli", "exit"]);
}
