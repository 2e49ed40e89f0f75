//! The book's listings are numbered, name their file, and fit the page (issue 9 §6).
//!
//! 1. Every code block that includes source code (a `{{#include}}` of a file outside `book/`)
//!    is followed by its caption, as the Rust Book has them:
//!
//!    ```text
//!    <span class="caption">Listing C-N: <code>PATH</code>, what it shows</span>
//!    ```
//!
//!    C is the chapter (stage N's chapter is N; the introduction and setup are 0), N counts
//!    the chapter's listings 1, 2, 3… in order, and PATH is the included file, relative to the
//!    repository root.
//! 2. No line that a listing includes is longer than 100 columns: rustfmt's `max_width`
//!    (`rustfmt.toml`), which `book/theme/isolab.css` fits on the page at 1280 px with the
//!    sidebar open. A source comment that is longer fails here too, with its file and line.
//! 3. The text diagrams, `book/src/diagrams/*.txt`, are each included by a chapter in a
//!    ```` ```text ```` block, and held to the same 100 columns.

use std::collections::BTreeSet;
use std::fs;

use isolab_tests::workspace_root;

/// rustfmt's `max_width`, and what the book's stylesheet fits on the page.
const MAX_COLUMNS: usize = 100;

/// Which lines of a file an include takes (mdBook's `{{#include file:…}}`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Selector {
    All,
    Anchor(String),
    /// 1-based, inclusive; `None` for an open end.
    Lines(Option<usize>, Option<usize>),
}

/// One `{{#include}}` of a chapter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Include {
    /// The included file, relative to the repository root (the chapter's path resolved).
    file: String,
    selector: Selector,
}

impl Include {
    /// Source code, not the book's own text: a file outside `book/`.
    fn is_code(&self) -> bool {
        !self.file.starts_with("book/")
    }
}

/// Parses the target of `{{#include TARGET}}`, written relative to `book/src/`.
fn parse_include(target: &str) -> Option<Include> {
    let (path, selector) = match target.split_once(':') {
        None => (target, Selector::All),
        Some((path, rest)) if rest.starts_with(|c: char| c.is_ascii_digit() || c == ':') => {
            let number = |s: &str| if s.is_empty() { None } else { s.parse().ok() };
            let selector = match rest.split_once(':') {
                // `file:N` is line N alone.
                None => Selector::Lines(number(rest), number(rest)),
                Some((from, to)) => Selector::Lines(number(from), number(to)),
            };
            (path, selector)
        }
        Some((path, anchor)) => (path, Selector::Anchor(anchor.to_string())),
    };
    Some(Include { file: repo_relative(path)?, selector })
}

/// `path`, written relative to `book/src/`, as a path relative to the repository root.
fn repo_relative(path: &str) -> Option<String> {
    let mut parts = vec!["book", "src"];
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// Every `{{#include …}}` on a line.
fn includes_on(line: &str) -> Vec<Option<Include>> {
    line.split("{{#include ")
        .skip(1)
        .map(|piece| parse_include(piece.split("}}").next().unwrap_or_default().trim()))
        .collect()
}

/// A fenced code block of a chapter that includes something, and what follows it.
#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    /// The info string: `rust,ignore`, `text`, `console`…
    lang: String,
    includes: Vec<Include>,
    /// The first non-blank line after the closing fence, with its 1-based number.
    next: Option<(usize, String)>,
}

/// Every fenced block of `text` that has an include; and the errors of includes outside
/// blocks or that cannot be parsed.
fn blocks(chapter: &str, text: &str) -> (Vec<Block>, Vec<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut open: Option<Block> = None;
    for (index, line) in lines.iter().enumerate() {
        let here = format!("{chapter}:{}", index + 1);
        let fence = line.trim_start().starts_with("```");
        if open.is_none() {
            if fence {
                let lang = line.trim_start().trim_start_matches('`').trim().to_string();
                open = Some(Block { line: index + 1, lang, includes: Vec::new(), next: None });
            } else if includes_on(line).iter().flatten().any(Include::is_code) {
                errors.push(format!("{here}: source code included outside a code block"));
            }
            continue;
        }
        let block = open.as_mut().expect("a block is open");
        // An included file without a final newline leaves the closing fence on the include's
        // own line (`{{#include file}}` then three backticks).
        let closes = fence || (line.contains("{{#include") && line.trim_end().ends_with("```"));
        for include in includes_on(line) {
            match include {
                Some(include) => block.includes.push(include),
                None => errors.push(format!("{here}: an include that leaves book/src/../..")),
            }
        }
        if closes {
            let mut block = open.take().expect("a block is open");
            block.next = lines
                .iter()
                .enumerate()
                .skip(index + 1)
                .find(|(_, next)| !next.trim().is_empty())
                .map(|(number, next)| (number + 1, next.trim().to_string()));
            if !block.includes.is_empty() {
                found.push(block);
            }
        }
    }
    (found, errors)
}

/// `Listing C-N: <code>PATH</code>, what`: (C, N, PATH, what).
fn parse_caption(line: &str) -> Option<(u32, u32, &str, &str)> {
    let rest = line.strip_prefix(CAPTION_START)?.strip_suffix("</span>")?;
    let (number, rest) = rest.strip_prefix("Listing ")?.split_once(": ")?;
    let (chapter, listing) = number.split_once('-')?;
    let (file, what) = rest.strip_prefix("<code>")?.split_once("</code>")?;
    let what = what.strip_prefix(", ")?;
    Some((chapter.parse().ok()?, listing.parse().ok()?, file, what))
}

const CAPTION_START: &str = "<span class=\"caption\">";

/// The chapter's number: N for `stageN-….md`, 6 for `bench.md` (the chapter after stage 5's),
/// 0 for the introduction and setup.
fn chapter_number(name: &str) -> u32 {
    if name == "bench.md" {
        return 6;
    }
    name.strip_prefix("stage")
        .and_then(|rest| rest.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Checks the captions of one chapter (`name` is its file name); returns what is wrong.
fn check_captions(name: &str, text: &str) -> Vec<String> {
    check_captions_from(name, text, 1).0
}

/// The same, for a chapter's file whose first listing is number `first` (a chapter in two
/// files, `stage5-images.md` then `stage5-registry.md`, numbers its listings across both);
/// also returns the next listing's number.
fn check_captions_from(name: &str, text: &str, first: u32) -> (Vec<String>, u32) {
    let chapter = chapter_number(name);
    let (blocks, mut errors) = blocks(name, text);
    let mut captioned = BTreeSet::new();
    let mut expected = first;
    for block in blocks.iter().filter(|block| block.includes.iter().any(Include::is_code)) {
        let here = format!("{name}:{}", block.line);
        let files: BTreeSet<&str> = block.includes.iter().map(|i| i.file.as_str()).collect();
        if files.len() > 1 || block.includes.iter().any(|include| !include.is_code()) {
            errors.push(format!("{here}: a listing includes one source file, this one {files:?}"));
        }
        let file = block.includes[0].file.as_str();
        let example = format!(
            "{CAPTION_START}Listing {chapter}-{expected}: <code>{file}</code>, what it shows</span>"
        );
        let Some((line, next)) = block.next.as_ref() else {
            errors.push(format!("{here}: listing of {file} has no caption after it: {example}"));
            expected += 1;
            continue;
        };
        let Some((c, n, named, what)) = parse_caption(next) else {
            errors.push(format!(
                "{here}: listing of {file} has no caption after it (line {line} is not one): \
                 {example}"
            ));
            expected += 1;
            continue;
        };
        captioned.insert(*line);
        if (c, n) != (chapter, expected) {
            errors.push(format!(
                "{name}:{line}: listing {c}-{n} should be {chapter}-{expected} (chapter \
                 {chapter}, listings numbered 1, 2, 3… in order)"
            ));
        }
        if named != file {
            errors.push(format!("{name}:{line}: the caption names {named}, the listing is {file}"));
        }
        if what.trim().is_empty() {
            errors.push(format!("{name}:{line}: the caption does not say what the listing shows"));
        }
        expected += 1;
    }
    for (index, line) in text.lines().enumerate() {
        if line.contains("class=\"caption\"") && !captioned.contains(&(index + 1)) {
            errors.push(format!("{name}:{}: a caption that follows no listing", index + 1));
        }
    }
    (errors, expected)
}

/// The lines `selector` takes from `text`, with their 1-based numbers, as mdBook takes them
/// (the lines of other anchors inside an anchored region are left out).
fn selected<'a>(text: &'a str, selector: &Selector) -> Option<Vec<(usize, &'a str)>> {
    let lines = text.lines().enumerate().map(|(index, line)| (index + 1, line));
    match selector {
        Selector::All => Some(lines.collect()),
        Selector::Lines(from, to) => Some(
            lines
                .filter(|(n, _)| {
                    !matches!(from, Some(from) if n < from) && !matches!(to, Some(to) if n > to)
                })
                .collect(),
        ),
        Selector::Anchor(anchor) => {
            let is = |line: &str, marker: &str| {
                line.split(marker).nth(1).is_some_and(|rest| {
                    rest.trim_start().split(|c: char| c.is_whitespace()).next() == Some(anchor)
                })
            };
            let mut lines = lines.skip_while(|(_, line)| !is(line, "ANCHOR:"));
            lines.next()?;
            Some(
                lines
                    .take_while(|(_, line)| !is(line, "ANCHOR_END:"))
                    .filter(|(_, line)| !line.contains("ANCHOR:") && !line.contains("ANCHOR_END:"))
                    .collect(),
            )
        }
    }
}

/// `file:line: N columns` for every line of `text` that `selector` takes and that is wider
/// than [`MAX_COLUMNS`].
fn too_wide(file: &str, text: &str, selector: &Selector) -> Vec<String> {
    let Some(lines) = selected(text, selector) else {
        return vec![format!("{file}: no region {selector:?}")];
    };
    lines
        .into_iter()
        .map(|(number, line)| (number, line.chars().count()))
        .filter(|&(_, columns)| columns > MAX_COLUMNS)
        .map(|(number, columns)| format!("{file}:{number}: {columns} columns"))
        .collect()
}

/// Every chapter: (file name, text).
fn chapters() -> Vec<(String, String)> {
    let src = workspace_root().join("book/src");
    let mut found: Vec<(String, String)> = fs::read_dir(&src)
        .expect("book/src")
        .map(|entry| entry.expect("an entry of book/src").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .filter(|path| path.file_name().is_some_and(|name| name != "SUMMARY.md"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read_to_string(&path).expect("a chapter"))
        })
        .collect();
    found.sort();
    assert!(found.len() > 4, "the chapters are in book/src");
    found
}

#[test]
fn every_listing_has_a_numbered_caption_naming_its_file() {
    let mut errors = Vec::new();
    let mut listings = 0;
    // The next listing's number in each chapter: the files of one chapter (sorted, the first
    // part's name sorts first) continue one numbering.
    let mut next: std::collections::BTreeMap<u32, u32> = Default::default();
    for (name, text) in chapters() {
        let first = next.get(&chapter_number(&name)).copied().unwrap_or(1);
        let (found, after) = check_captions_from(&name, &text, first);
        errors.extend(found);
        if chapter_number(&name) > 0 {
            next.insert(chapter_number(&name), after);
        }
        listings += blocks(&name, &text)
            .0
            .iter()
            .filter(|block| block.includes.iter().any(Include::is_code))
            .count();
    }
    assert!(listings > 50, "the chapters include their code ({listings} listings found)");
    assert!(errors.is_empty(), "listings and their captions:\n{}", errors.join("\n"));
}

#[test]
fn listings_fit_in_100_columns() {
    let root = workspace_root();
    let mut included = BTreeSet::new();
    for (name, text) in chapters() {
        for block in blocks(&name, &text).0 {
            included.extend(block.includes.into_iter().filter(Include::is_code));
        }
    }
    let mut wide = Vec::new();
    for include in &included {
        match fs::read_to_string(root.join(&include.file)) {
            Ok(text) => wide.extend(too_wide(&include.file, &text, &include.selector)),
            Err(error) => wide.push(format!("{}: {error}", include.file)),
        }
    }
    assert!(
        wide.is_empty(),
        "lines of the book's listings wider than {MAX_COLUMNS} columns (the page fits \
         {MAX_COLUMNS}; rustfmt wraps code, but not comments or strings):\n{}",
        wide.join("\n")
    );
}

#[test]
fn diagrams_are_included_as_text_and_fit_in_100_columns() {
    let root = workspace_root();
    let mut shown = BTreeSet::new();
    for (name, text) in chapters() {
        for block in blocks(&name, &text).0 {
            for include in block.includes {
                if include.file.starts_with("book/src/diagrams/") {
                    assert_eq!(
                        block.lang, "text",
                        "{name}:{}: a diagram is a text block",
                        block.line
                    );
                    shown.insert(include.file);
                }
            }
        }
    }
    let mut problems = Vec::new();
    let dir = root.join("book/src/diagrams");
    for entry in fs::read_dir(&dir).expect("book/src/diagrams") {
        let path = entry.expect("an entry of book/src/diagrams").path();
        let file = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        if !shown.contains(&file) {
            problems.push(format!("{file}: no chapter includes it"));
        }
        let text = fs::read_to_string(&path).expect("a diagram");
        problems.extend(too_wide(&file, &text, &Selector::All));
    }
    assert!(shown.len() >= 5, "the chapters show their diagrams ({shown:?})");
    assert!(problems.is_empty(), "the book's diagrams:\n{}", problems.join("\n"));
}

// The checks themselves, on made-up chapters: each must be able to fail.

const GOOD: &str = "\
# Stage 2

```rust,ignore
{{#include ../../stages/libisolab/src/a.rs:one}}
```

<span class=\"caption\">Listing 2-1: <code>stages/libisolab/src/a.rs</code>, <code>one</code></span>

```console
{{#include generated/out.txt}}
```

```rust,ignore
{{#include ../../stages/b/src/main.rs:run}}
```
<span class=\"caption\">Listing 2-2: <code>stages/b/src/main.rs</code>, <code>run</code></span>
";

#[test]
fn a_captioned_chapter_passes() {
    assert_eq!(check_captions("stage2-namespaces.md", GOOD), Vec::<String>::new());
}

#[test]
fn a_missing_caption_fails() {
    let caption = GOOD.lines().last().expect("GOOD ends with listing 2-2's caption");
    let text = GOOD.replace(caption, "Some prose.");
    let errors = check_captions("stage2-namespaces.md", &text);
    assert!(
        errors.iter().any(|e| e.contains(":13: listing of stages/b/src/main.rs has no caption")),
        "{errors:?}"
    );
}

#[test]
fn a_caption_naming_another_file_fails() {
    let text =
        GOOD.replace("<code>stages/b/src/main.rs</code>", "<code>stages/b/src/lib.rs</code>");
    let errors = check_captions("stage2-namespaces.md", &text);
    assert!(errors.iter().any(|e| e.contains("names stages/b/src/lib.rs")), "{errors:?}");
}

#[test]
fn numbers_out_of_order_or_of_another_chapter_fail() {
    let swapped = GOOD.replace("Listing 2-2", "Listing 2-3");
    let errors = check_captions("stage2-namespaces.md", &swapped);
    assert!(errors.iter().any(|e| e.contains("listing 2-3 should be 2-2")), "{errors:?}");
    let errors = check_captions("stage3-cgroups.md", GOOD);
    assert!(errors.iter().any(|e| e.contains("listing 2-1 should be 3-1")), "{errors:?}");
    let errors = check_captions("setup.md", GOOD);
    assert!(errors.iter().any(|e| e.contains("listing 2-1 should be 0-1")), "{errors:?}");
}

#[test]
fn a_stray_caption_fails() {
    let text =
        format!("{GOOD}\nProse.\n\n{CAPTION_START}Listing 2-3: <code>x.rs</code>, x</span>\n");
    let errors = check_captions("stage2-namespaces.md", &text);
    assert!(errors.iter().any(|e| e.contains("follows no listing")), "{errors:?}");
}

#[test]
fn a_line_of_101_columns_fails_with_its_file_and_line() {
    let source = format!(
        "fn other() {{}}\n// ANCHOR: one\nfn one() {{\n    // {}\n}}\n// ANCHOR_END: one\n",
        "x".repeat(MAX_COLUMNS - 7)
    );
    assert_eq!(too_wide("a.rs", &source, &Selector::Anchor("one".into())), Vec::<String>::new());
    let wider = source.replace("// x", "// xx");
    assert_eq!(
        too_wide("a.rs", &wider, &Selector::Anchor("one".into())),
        vec![format!("a.rs:4: {} columns", MAX_COLUMNS + 1)]
    );
    // Outside the region, it is not shown, and not counted.
    let outside = format!("// {}\n{source}", "x".repeat(MAX_COLUMNS));
    assert_eq!(too_wide("a.rs", &outside, &Selector::Anchor("one".into())), Vec::<String>::new());
}

#[test]
fn includes_resolve_from_book_src() {
    let include = parse_include("../../stages/libisolab/src/store/mod.rs:prepare").unwrap();
    assert_eq!(include.file, "stages/libisolab/src/store/mod.rs");
    assert_eq!(include.selector, Selector::Anchor("prepare".into()));
    assert!(include.is_code());
    let generated = parse_include("generated/stage1_ls.txt").unwrap();
    assert_eq!(generated.file, "book/src/generated/stage1_ls.txt");
    assert!(!generated.is_code());
    assert_eq!(parse_include("../x.rs:3:").unwrap().selector, Selector::Lines(Some(3), None));
    assert_eq!(parse_include("../../../../x").map(|i| i.file), None);
}
