//! The dependency graph is the curriculum: stage N may use only library modules that chapters
//! 1..=N introduce (`libisolab::CHAPTERS`), so a reader who has read up to chapter N has seen
//! every mechanism stage N uses; and a library module uses only modules of its own chapter or
//! earlier ones, so no chapter leans on a later one, and no two modules lean on each other.
//!
//! The sources are parsed (with `syn`), not searched as text: a `use` may group, nest and
//! rename (`use libisolab::{cgroups::{self, Kernel}, store}`, `use libisolab as lib`), and a
//! path may stand anywhere: in an expression, a type, a macro's arguments, an attribute.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use isolab_tests::workspace_root;
use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::visit::Visit;

/// Which side of the library a file is on: a stage reaches it as `libisolab::…`, a module of
/// the library as `crate::…`, `super::…` or `self::…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Stage,
    Library,
}

/// What a file uses of the library.
#[derive(Debug, Default)]
struct Scan {
    /// Each path into the library.
    used: Vec<Used>,
    /// Glob imports of the library's root (`use libisolab::*`), which hide what is used.
    globs: Vec<String>,
}

/// A path into the library, from its root (`["cgroups", "Kernel"]`), and whether only tests
/// use it (inside a `#[cfg(test)]` item).
#[derive(Debug)]
struct Used {
    path: Vec<String>,
    in_tests: bool,
}

/// Finds every path into the library in one file.
struct Scanner {
    side: Side,
    /// The module being visited, from the crate's root (`["cgroups", "detect", "tests"]`).
    module: Vec<String>,
    /// The names that stand for the library's root: `libisolab` or `crate`, and their aliases.
    roots: BTreeSet<String>,
    /// Inside a `#[cfg(test)]` item.
    in_tests: bool,
    scan: Scan,
}

/// The last part of a flattened `use`: `x`, `x as y` or `*`.
enum Leaf {
    Name,
    Rename(String),
    Glob,
}

/// Parses `source` and lists what it uses of the library. `module` is the file's own module
/// path, from which `super::` and `self::` start.
fn scan(source: &str, side: Side, module: &[&str]) -> Scan {
    let file = syn::parse_file(source).unwrap_or_else(|error| panic!("does not parse: {error}"));
    let root = match side {
        Side::Stage => "libisolab",
        Side::Library => "crate",
    };
    let mut scanner = Scanner {
        side,
        module: module.iter().map(|part| part.to_string()).collect(),
        roots: BTreeSet::from([root.to_string()]),
        in_tests: false,
        scan: Scan::default(),
    };
    // Twice: the first pass learns the aliases (`use libisolab as lib`), wherever they are in
    // the file; the second finds every path with them known.
    scanner.visit_file(&file);
    scanner.scan = Scan::default();
    scanner.visit_file(&file);
    scanner.scan
}

impl Scanner {
    /// The path from the library's root that `segments` names here, if it names one.
    fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
        let first = segments.first()?;
        if self.roots.contains(first) {
            return Some(segments[1..].to_vec());
        }
        if self.side == Side::Stage {
            return None;
        }
        let mut module = self.module.clone();
        let mut rest = segments;
        match first.as_str() {
            "self" => rest = &rest[1..],
            "super" => {
                while rest.first().map(String::as_str) == Some("super") {
                    module.pop()?;
                    rest = &rest[1..];
                }
            }
            _ => return None,
        }
        module.extend(rest.iter().cloned());
        Some(module)
    }

    fn record(&mut self, segments: &[String], leaf: Leaf) {
        let Some(path) = self.resolve(segments) else { return };
        if !path.is_empty() {
            self.scan.used.push(Used { path, in_tests: self.in_tests });
            return;
        }
        match leaf {
            Leaf::Rename(alias) => {
                self.roots.insert(alias);
            }
            Leaf::Glob => self.scan.globs.push(segments.join("::")),
            Leaf::Name => {}
        }
    }

    /// Every path of a `use` tree, groups and `self` unfolded.
    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(&path.tree, prefix);
                prefix.pop();
            }
            syn::UseTree::Name(name) => self.use_leaf(prefix, &name.ident, Leaf::Name),
            syn::UseTree::Rename(rename) => {
                self.use_leaf(prefix, &rename.ident, Leaf::Rename(rename.rename.to_string()))
            }
            syn::UseTree::Glob(_) => self.record(&prefix.clone(), Leaf::Glob),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(tree, prefix);
                }
            }
        }
    }

    fn use_leaf(&mut self, prefix: &[String], ident: &syn::Ident, leaf: Leaf) {
        let mut segments = prefix.to_vec();
        if ident != "self" {
            segments.push(ident.to_string());
        }
        self.record(&segments, leaf);
    }

    /// Paths in tokens that no parser has read: a macro's arguments, an attribute's list
    /// (`#[arg(value_parser = libisolab::…)]`). A path is `ident (:: ident)*`.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut index = 0;
        while index < trees.len() {
            match &trees[index] {
                TokenTree::Group(group) => self.tokens(group.stream()),
                TokenTree::Ident(start) => {
                    let mut segments = vec![start.to_string()];
                    while let Some(next) = next_segment(&trees[index + 1..]) {
                        segments.push(next.to_string());
                        index += 3;
                    }
                    if segments.len() > 1 {
                        self.record(&segments, Leaf::Name);
                    }
                }
                TokenTree::Punct(_) | TokenTree::Literal(_) => {}
            }
            index += 1;
        }
    }
}

/// The segment after `::`, if `trees` start with `:: ident`.
fn next_segment(trees: &[TokenTree]) -> Option<&proc_macro2::Ident> {
    let [TokenTree::Punct(first), TokenTree::Punct(second), TokenTree::Ident(next), ..] = trees
    else {
        return None;
    };
    let joint = first.spacing() == Spacing::Joint;
    (joint && first.as_char() == ':' && second.as_char() == ':').then_some(next)
}

/// Is this `#[cfg(test)]` (or `#[cfg(all(test, …))]`)?
fn is_cfg_test(attribute: &syn::Attribute) -> bool {
    let syn::Meta::List(list) = &attribute.meta else { return false };
    list.path.is_ident("cfg")
        && list
            .tokens
            .clone()
            .into_iter()
            .any(|tree| matches!(&tree, TokenTree::Ident(i) if i == "test"))
}

impl<'ast> Visit<'ast> for Scanner {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attributes: &[syn::Attribute] = match item {
            syn::Item::Mod(item) => &item.attrs,
            syn::Item::Fn(item) => &item.attrs,
            syn::Item::Use(item) => &item.attrs,
            syn::Item::Impl(item) => &item.attrs,
            syn::Item::Const(item) => &item.attrs,
            syn::Item::Static(item) => &item.attrs,
            syn::Item::Struct(item) => &item.attrs,
            _ => &[],
        };
        let outer = self.in_tests;
        self.in_tests |= attributes.iter().any(is_cfg_test);
        syn::visit::visit_item(self, item);
        self.in_tests = outer;
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&item.tree, &mut Vec::new());
    }

    fn visit_item_extern_crate(&mut self, item: &'ast syn::ItemExternCrate) {
        if let Some((_, alias)) = &item.rename {
            if self.roots.contains(&item.ident.to_string()) {
                self.roots.insert(alias.to_string());
            }
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.module.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.module.pop();
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.segments.len() > 1 {
            let segments: Vec<String> =
                path.segments.iter().map(|segment| segment.ident.to_string()).collect();
            self.record(&segments, Leaf::Name);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        syn::visit::visit_macro(self, mac);
        self.tokens(mac.tokens.clone());
    }

    fn visit_attribute(&mut self, attribute: &'ast syn::Attribute) {
        syn::visit::visit_attribute(self, attribute);
        if let syn::Meta::List(list) = &attribute.meta {
            self.tokens(list.tokens.clone());
        }
    }
}

/// The chapter that introduces what `path` (from the library's root) names: the longest
/// prefix of it that `CHAPTERS` lists (`container::cgroup` before `container`). What is in no
/// module is an item of the root, `lib.rs` (`Error`, `Result`, `CHAPTERS`): chapter 1.
fn chapter_of(path: &[String]) -> (String, u8) {
    for length in (1..=path.len()).rev() {
        let name = path[..length].join("::");
        if let Some((_, chapter)) = libisolab::CHAPTERS.iter().find(|(module, _)| *module == name) {
            return (name, *chapter);
        }
    }
    ("the root".to_string(), 1)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            out.push(path);
        }
    }
}

fn library_src() -> PathBuf {
    workspace_root().join("stages/libisolab/src")
}

/// The module a library file holds: `cgroups/v1/mod.rs` is `cgroups::v1`.
fn module_of(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(library_src()).unwrap().with_extension("");
    let mut parts: Vec<String> =
        relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Every library file but `lib.rs`, with its module and what it uses of other modules.
fn library_uses() -> Vec<(PathBuf, Vec<String>, Vec<Used>)> {
    let mut files = Vec::new();
    rust_files(&library_src(), &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let module = module_of(&file);
        if module.is_empty() {
            continue;
        }
        let source = fs::read_to_string(&file).unwrap();
        let parts: Vec<&str> = module.iter().map(String::as_str).collect();
        let scan = scan(&source, Side::Library, &parts);
        assert!(scan.globs.is_empty(), "{}: glob import of the crate root", file.display());
        // A module's own parts may name each other (`container`'s plan holds the parts of later
        // chapters by design: ARCHITECTURE, "container is where the chapters meet").
        let used = scan.used.into_iter().filter(|used| used.path[0] != module[0]).collect();
        found.push((file, module, used));
    }
    found
}

#[test]
fn every_library_module_has_a_chapter() {
    let lib = syn::parse_file(&fs::read_to_string(library_src().join("lib.rs")).unwrap()).unwrap();
    let mut modules = BTreeSet::new();
    for item in &lib.items {
        if let syn::Item::Mod(module) = item {
            let name = module.ident.to_string();
            assert!(
                libisolab::CHAPTERS.iter().any(|(listed, _)| *listed == name),
                "libisolab::{name} is missing from CHAPTERS"
            );
            modules.insert(name);
        }
    }
    for (listed, _) in libisolab::CHAPTERS {
        let path: PathBuf = listed.split("::").collect();
        let exists = library_src().join(&path).with_extension("rs").exists()
            || library_src().join(&path).join("mod.rs").exists();
        assert!(exists, "CHAPTERS lists {listed}, which is not a module of the library");
    }
}

#[test]
fn stage_n_uses_only_chapters_up_to_n() {
    let mut checked = 0;
    let mut wrong = Vec::new();
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
            let scan = scan(&fs::read_to_string(&file).unwrap(), Side::Stage, &[]);
            for glob in scan.globs {
                wrong.push(format!("{}: `use {glob}::*` hides what it uses", file.display()));
            }
            for Used { path, .. } in scan.used {
                let (module, chapter) = chapter_of(&path);
                if chapter > stage {
                    wrong.push(format!(
                        "{} (stage {stage}) uses libisolab::{} from chapter {chapter} ({module})",
                        file.display(),
                        path.join("::")
                    ));
                }
                checked += 1;
            }
        }
    }
    assert!(wrong.is_empty(), "stages ahead of their chapter:\n{}", wrong.join("\n"));
    assert!(checked > 0, "no stage uses the library?");
}

#[test]
fn library_modules_use_only_their_chapter_or_earlier() {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (file, module, used) in library_uses() {
        let (own, own_chapter) = chapter_of(&module);
        for Used { path, .. } in used {
            let (other, chapter) = chapter_of(&path);
            if chapter > own_chapter {
                wrong.push(format!(
                    "{} ({own}, chapter {own_chapter}) uses crate::{} ({other}, chapter {chapter})",
                    file.display(),
                    path.join("::")
                ));
            }
            checked += 1;
        }
    }
    assert!(wrong.is_empty(), "library modules ahead of their chapter:\n{}", wrong.join("\n"));
    assert!(checked > 0, "no module uses another?");
}

#[test]
fn no_two_library_modules_use_each_other() {
    // Edges between top-level modules, with one place that makes each.
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for (file, module, used) in library_uses() {
        for Used { path, in_tests } in used {
            // A test may check its module against a sibling (copy's tests read a copy back with
            // `changes`, which walks trees with copy's walker): a circle is about the code.
            if in_tests {
                continue;
            }
            let shown = format!("{} uses crate::{}", file.display(), path.join("::"));
            edges.entry((module[0].clone(), path[0].clone())).or_insert(shown);
        }
    }
    // Each circle once, by the set of its modules, with the places that close it.
    let mut circles: BTreeMap<BTreeSet<String>, Vec<String>> = BTreeMap::new();
    for ((from, to), why) in &edges {
        // A circle through this edge is a way back from `to` to `from`.
        if let Some(back) = way(&edges, to, from) {
            let members = back.iter().cloned().collect();
            let circle = circles.entry(members).or_default();
            if circle.is_empty() {
                circle.push(format!("{from} → {}", back.join(" → ")));
            }
            circle.push(format!("  {why}"));
        }
    }
    let circles: Vec<String> = circles.into_values().map(|lines| lines.join("\n")).collect();
    assert!(circles.is_empty(), "modules in a circle:\n{}", circles.join("\n"));
}

/// A path of modules from `start` to `goal` along `edges` (breadth first), if there is one.
fn way(edges: &BTreeMap<(String, String), String>, start: &str, goal: &str) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.to_string()]);
    let mut seen = BTreeSet::from([start.to_string()]);
    while let Some(here) = queue.pop_front() {
        if here == goal {
            let mut path = vec![here.clone()];
            while let Some(previous) = came_from.get(path.last().unwrap()) {
                path.push(previous.clone());
            }
            path.reverse();
            return Some(path);
        }
        for (from, to) in edges.keys() {
            if *from == here && seen.insert(to.clone()) {
                came_from.insert(to.clone(), here.clone());
                queue.push_back(to.clone());
            }
        }
    }
    None
}

// The scanner's own tests: what the text scan it replaced missed.

fn modules(scan: &Scan) -> Vec<String> {
    scan.used.iter().map(|used| used.path[0].clone()).collect()
}

#[test]
fn the_scanner_sees_grouped_and_plain_uses() {
    let scan = scan(
        "use libisolab::chroot::{self, DirId};\nuse libisolab::{cli, exit, Error};",
        Side::Stage,
        &[],
    );
    assert_eq!(modules(&scan), ["chroot", "chroot", "cli", "exit", "Error"]);
}

#[test]
fn the_scanner_sees_everything_in_nested_groups() {
    // The text scan saw only `cgroups` here.
    let scan = scan("use libisolab::{cgroups::{self, Kernel}, store, cli};", Side::Stage, &[]);
    assert_eq!(modules(&scan), ["cgroups", "cgroups", "store", "cli"]);
}

#[test]
fn the_scanner_follows_aliases() {
    // The alias is used before it is declared: a file is read whole first.
    let source = "fn main() { lib::overlay::mount(); other::copy::tree(); x::store::open(); }\n\
                  use libisolab as lib;\n\
                  use libisolab::{self as other};\n\
                  extern crate libisolab as x;";
    assert_eq!(modules(&scan(source, Side::Stage, &[])), ["overlay", "copy", "store"]);
    // A renamed module is recorded where it is imported.
    let scan = scan("use libisolab::cgroups as cg; fn f() { cg::detect(); }", Side::Stage, &[]);
    assert_eq!(modules(&scan), ["cgroups"]);
}

#[test]
fn the_scanner_sees_paths_in_expressions_types_macros_and_attributes() {
    let source = r#"
        #[derive(clap::Parser)]
        struct Args {
            #[arg(long, value_parser = libisolab::cgroups::parse_size)]
            memory: u64,
        }
        fn run(store: libisolab::store::Store) -> libisolab::Result<()> {
            let upper = libisolab::changes::read(&store)?;
            println!("{}", libisolab::copy::describe(&upper));
            Ok(())
        }
    "#;
    assert_eq!(
        modules(&scan(source, Side::Stage, &[])),
        ["cgroups", "store", "Result", "changes", "copy"]
    );
}

#[test]
fn the_scanner_refuses_a_glob_of_the_root() {
    let scan = scan("use libisolab::*; use libisolab::cgroups::*;", Side::Stage, &[]);
    assert_eq!(scan.globs, ["libisolab"]);
    assert_eq!(modules(&scan), ["cgroups"]);
}

#[test]
fn the_scanner_resolves_crate_super_and_self_inside_the_library() {
    let source = "
        use crate::{mounts::Step, cgroups::{self, Kernel}};
        use super::files::json;
        fn f() { crate::overlay::mount(); self::helper(); }
        mod tests {
            use super::super::super::copy;
            use super::*;
        }
    ";
    let scan = scan(source, Side::Library, &["store", "names"]);
    let paths: Vec<String> = scan.used.iter().map(|used| used.path.join("::")).collect();
    assert_eq!(
        paths,
        [
            "mounts::Step",
            "cgroups",
            "cgroups::Kernel",
            "store::files::json",
            "overlay::mount",
            "store::names::helper",
            "copy",
            "store::names",
        ]
    );
    // `use super::*` in the tests is the file's own module: not a root glob.
    assert!(scan.globs.is_empty());
    // What only tests use is marked: `mod tests` is not `#[cfg(test)]` here, so nothing is.
    assert!(scan.used.iter().all(|used| !used.in_tests));
    let tests = scan_tests_only();
    assert_eq!(tests, [("cgroups".to_string(), false), ("copy".to_string(), true)]);
    // A stage's `crate::` is its own, not the library.
    assert!(crate_paths_of_a_stage().is_empty());
}

fn scan_tests_only() -> Vec<(String, bool)> {
    let source = "use crate::cgroups; #[cfg(test)] mod tests { fn f() { crate::copy::tree(); } }";
    let scan = scan(source, Side::Library, &["store"]);
    scan.used.into_iter().map(|used| (used.path[0].clone(), used.in_tests)).collect()
}

fn crate_paths_of_a_stage() -> Vec<Used> {
    scan("use crate::commands::ps; fn f() { crate::PROGRAM; }", Side::Stage, &[]).used
}

#[test]
fn chapters_follow_the_longest_listed_prefix() {
    let path = |text: &str| text.split("::").map(String::from).collect::<Vec<_>>();
    assert_eq!(chapter_of(&path("cgroups::v2::V2")), ("cgroups".into(), 3));
    assert_eq!(chapter_of(&path("container::Plan")), ("container".into(), 2));
    assert_eq!(chapter_of(&path("container::cgroup::plan")), ("container::cgroup".into(), 3));
    assert_eq!(chapter_of(&path("Error")), ("the root".into(), 1));
}
