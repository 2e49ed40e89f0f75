//! The lab regions of a source file: the code a student writes, marked in the reference.
//!
//! A region opens with `// LAB <stageN/task> BEGIN: <one-line title>` and closes with
//! `// LAB END`, both comment lines of their own, so the reference compiles and behaves as
//! if they were not there. A starter keeps both marker lines and replaces what is between
//! them with `todo!("<task>: <first hint>")`: a region is always written so that this
//! compiles (a function's whole body, whole statements, or whole elements of a `vec!`), and
//! the stub's terminator follows the region's last line (`,` inside a list, `;` otherwise:
//! a block whose last statement diverges has any type the function needs).

use anyhow::{bail, Result};

/// One marked region of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// `stage1/chroot`.
    pub task: String,
    /// The title after `BEGIN:`.
    pub title: String,
    /// Line index of the BEGIN marker (0-based).
    pub begin: usize,
    /// Line index of the END marker.
    pub end: usize,
}

impl Region {
    /// The stage number the task belongs to (`stage2/proc` is 2).
    pub fn stage(&self) -> u8 {
        stage_of(&self.task)
    }
}

/// The stage of a task id: the number after `stage`, 0 if there is none.
pub fn stage_of(task: &str) -> u8 {
    task.strip_prefix("stage")
        .and_then(|rest| rest.split('/').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0)
}

const BEGIN: &str = " BEGIN:";

/// The regions of `text`, in order; `file` names it in errors. Regions do not nest.
pub fn parse(file: &str, text: &str) -> Result<Vec<Region>> {
    let mut regions = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let Some(marker) = trimmed.strip_prefix("// LAB ") else { continue };
        if marker.trim() == "END" {
            let Some((begin, task, title)) = open.take() else {
                bail!("{file}:{}: `// LAB END` without a BEGIN", index + 1);
            };
            regions.push(Region { task, title, begin, end: index });
        } else if let Some((task, title)) = marker.split_once(BEGIN) {
            if let Some((begin, task, _)) = &open {
                bail!("{file}:{}: region {task} (line {}) is not closed", index + 1, begin + 1);
            }
            if stage_of(task) == 0 {
                bail!("{file}:{}: a task is named stageN/name, not '{task}'", index + 1);
            }
            open = Some((index, task.to_string(), title.trim().to_string()));
        } else {
            bail!("{file}:{}: expected `// LAB <task> BEGIN: <title>` or `// LAB END`", index + 1);
        }
    }
    if let Some((begin, task, _)) = open {
        bail!("{file}:{}: region {task} is not closed", begin + 1);
    }
    Ok(regions)
}

/// `text` with the body of every region for which `stub` says `Some(message)` replaced by
/// `todo!("message")`; the marker lines stay, so that a later stage can find them.
pub fn stub(file: &str, text: &str, stub: impl Fn(&Region) -> Option<String>) -> Result<String> {
    let regions = parse(file, text)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut next = 0;
    for region in &regions {
        out.extend(lines[next..=region.begin].iter().map(|line| line.to_string()));
        next = region.end;
        let body = &lines[region.begin + 1..region.end];
        let Some(message) = stub(region) else {
            out.extend(body.iter().map(|line| line.to_string()));
            continue;
        };
        let last = body
            .iter()
            .rev()
            .map(|line| line.trim())
            .find(|line| !line.is_empty() && !line.starts_with("//"));
        let terminator = if last.is_some_and(|line| line.ends_with(',')) { "," } else { ";" };
        let indent: String =
            lines[region.begin].chars().take_while(|c| c.is_whitespace()).collect();
        out.push(format!("{indent}todo!(\"{}\"){terminator}", literal(&message)));
    }
    out.extend(lines[next..].iter().map(|line| line.to_string()));
    Ok(joined(out, text))
}

/// `message` as the inside of a string literal that is also a format string (`todo!`).
fn literal(message: &str) -> String {
    message.replace('\\', "\\\\").replace('"', "\\\"").replace('{', "{{").replace('}', "}}")
}

fn joined(lines: Vec<String>, like: &str) -> String {
    let mut text = lines.join("\n");
    if like.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// `text` (a fresh starter's file) with the regions `carry` says taken from `theirs` (the
/// same file of the student's earlier starter), matched by task and order.
pub fn carry(
    file: &str,
    text: &str,
    theirs: &str,
    carry: impl Fn(&Region) -> bool,
) -> Result<String> {
    let ours = parse(file, text)?;
    let their_regions = parse(file, theirs)?;
    let their_lines: Vec<&str> = theirs.lines().collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut next = 0;
    for (index, region) in ours.iter().enumerate() {
        out.extend(lines[next..=region.begin].iter().map(|line| line.to_string()));
        next = region.end;
        let body = match their_regions.get(index) {
            Some(their) if carry(region) && their.task == region.task => {
                &their_lines[their.begin + 1..their.end]
            }
            _ => &lines[region.begin + 1..region.end],
        };
        out.extend(body.iter().map(|line| line.to_string()));
    }
    out.extend(lines[next..].iter().map(|line| line.to_string()));
    Ok(joined(out, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "fn a() -> u8 {\n    // LAB stage1/a BEGIN: the a\n    let x = 1;\n    x\n    // LAB END\n}\nfn b() -> Vec<u8> {\n    vec![\n        // LAB stage2/b BEGIN: an element\n        1,\n        // LAB END\n        2,\n    ]\n}\n";

    #[test]
    fn regions_are_found_with_their_task_and_title() {
        let regions = parse("x.rs", SOURCE).unwrap();
        assert_eq!(regions.len(), 2);
        assert_eq!((regions[0].task.as_str(), regions[0].title.as_str()), ("stage1/a", "the a"));
        assert_eq!((regions[0].begin, regions[0].end), (1, 4));
        assert_eq!(regions[1].stage(), 2);
    }

    #[test]
    fn stubs_keep_the_markers_and_follow_the_terminator() {
        let stubbed = stub("x.rs", SOURCE, |r| Some(format!("{}: do \"it\"", r.task))).unwrap();
        assert!(
            stubbed.contains("    todo!(\"stage1/a: do \\\"it\\\"\");\n    // LAB END"),
            "{stubbed}"
        );
        assert!(stubbed.contains("        todo!(\"stage2/b: do \\\"it\\\"\"),\n"), "{stubbed}");
        assert!(!stubbed.contains("let x = 1"));
        assert_eq!(parse("x.rs", &stubbed).unwrap().len(), 2);
    }

    #[test]
    fn carry_takes_the_students_regions() {
        let starter = stub("x.rs", SOURCE, |r| Some(r.task.clone())).unwrap();
        let theirs = SOURCE.replace("let x = 1;", "let x = 7;");
        let carried = carry("x.rs", &starter, &theirs, |r| r.stage() == 1).unwrap();
        assert!(carried.contains("let x = 7;"));
        assert!(carried.contains("todo!(\"stage2/b\"),"));
    }

    #[test]
    fn broken_markers_are_refused_with_their_line() {
        let error = parse("x.rs", "// LAB END\n").unwrap_err().to_string();
        assert!(error.starts_with("x.rs:1:"), "{error}");
        let error = parse("x.rs", "// LAB stage1/a BEGIN: t\n").unwrap_err().to_string();
        assert!(error.contains("not closed"), "{error}");
        let error = parse("x.rs", "// LAB nope BEGIN: t\n// LAB END\n").unwrap_err().to_string();
        assert!(error.contains("stageN/name"), "{error}");
    }
}
