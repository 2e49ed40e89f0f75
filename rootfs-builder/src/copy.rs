//! `rootfs-builder copy`: host programs into a rootfs, with everything they need to start.
//!
//! Three steps, kept apart so that nothing is written before we know it will work:
//!
//! 1. **Look** ([`plan`]): decide what each requested path is (a program, a data file, a
//!    directory) and run the loader's search ([`crate::elf_deps`]) for every ELF file,
//!    including each one inside a requested directory (Python's extension modules are
//!    `dlopen`ed, so no header names them: copying the directory is how they are found). A
//!    library that cannot be found stops everything here, before the rootfs is touched.
//! 2. **Copy** ([`Plan::execute`]): install each requested path, then every library, with
//!    [`crate::install`], which reproduces the host's symlinks on the way.
//! 3. **Report** ([`Report`]): one line ([`Report::summary`]), or the whole story of why each
//!    file is there and what was written ([`Report::explain`]).

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::elf;
use crate::elf_deps::{self, Closure, Found, HostFiles, Inspected, ObjectSource, Search, Via};
use crate::error::{Error, IoResultExt, Result};
use crate::install::{self, Installer, Op};
use crate::ld_cache::{self, LdCache};
use crate::{count, human_size};

/// One requested path, looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An ELF file, and everything the loader would load with it.
    Program {
        /// The path as asked for.
        requested: PathBuf,
        /// What the loader needs for it; `closure.program().real_path` is the file itself.
        closure: Closure,
    },
    /// A file that is not ELF: copied as it is.
    Data {
        /// The path as asked for.
        requested: PathBuf,
        /// For a script, the interpreter its `#!` line names.
        interpreter: Option<String>,
    },
    /// A directory, copied recursively; its ELF files get their libraries.
    Directory {
        /// The path as asked for.
        requested: PathBuf,
        /// How many files it holds (regular files, and links to files).
        files: usize,
        /// The ELF files among them, each with its closure, by path.
        programs: Vec<Closure>,
    },
}

impl Item {
    /// The path as asked for.
    pub fn requested(&self) -> &Path {
        match self {
            Item::Program { requested, .. }
            | Item::Data { requested, .. }
            | Item::Directory { requested, .. } => requested,
        }
    }
}

/// What [`plan`] found: everything needed, nothing written yet.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The requested paths, in order.
    pub items: Vec<Item>,
    /// A library found through the loader's cache in a directory the loader does not search
    /// by default: then the rootfs needs the cache too, or its loader will not find it.
    pub cache_needed_for: Option<PathBuf>,
}

/// Step 1: looks at every path and finds every library; reads the host, writes nothing.
pub fn plan(paths: &[PathBuf]) -> Result<Plan> {
    let cache = LdCache::load(Path::new(ld_cache::PATH))?;
    let files = HostFiles::new();
    let search = Search::new(&files, cache.as_ref());
    let mut items = Vec::new();
    for requested in paths {
        let requested = std::path::absolute(requested).io("getcwd", requested)?;
        let metadata = fs::metadata(&requested)
            .map_err(|error| Error::io("stat", &requested, error).hint("check the path"))?;
        let item = if metadata.is_dir() {
            let mut found = Vec::new();
            files_in(&requested, &mut found)?;
            let programs = programs_among(&found, &files, &search)?;
            Item::Directory { requested, files: found.len(), programs }
        } else if elf::is_elf(&requested)? {
            Item::Program { closure: search.resolve(&requested)?, requested }
        } else {
            Item::Data { interpreter: shebang(&requested)?, requested }
        };
        items.push(item);
    }
    let cache_needed_for = items.iter().flat_map(closures).find_map(|closure| {
        closure.libraries().iter().find_map(|object| {
            let outside_defaults = object.path.parent().is_some_and(|dir| {
                !elf_deps::default_dirs(&closure.program().info.abi).iter().any(|d| d == dir)
            });
            let via_cache = matches!(&object.found, Found::Needed { via: Via::Cache, .. });
            (via_cache && outside_defaults).then(|| object.path.clone())
        })
    });
    Ok(Plan { items, cache_needed_for })
}

/// The closure of every program or library among `files`, each file once (a directory may
/// hold a library under two names: `libpython3.11.so` and the file it links to).
fn programs_among(files: &[PathBuf], host: &HostFiles, search: &Search) -> Result<Vec<Closure>> {
    let mut programs = Vec::new();
    let mut seen = BTreeSet::new();
    for file in files {
        let real = fs::canonicalize(file).io("realpath", file)?;
        if !seen.insert(real) {
            continue;
        }
        // Only what the loader can load: relocatable objects (`.o`) never are.
        if let Inspected::Elf(info) = host.inspect(file)? {
            if info.is_loadable() {
                programs.push(search.resolve(file)?);
            }
        }
    }
    Ok(programs)
}

/// The closures of an item: one for a program, one per ELF file of a directory.
fn closures(item: &Item) -> Vec<&Closure> {
    match item {
        Item::Program { closure, .. } => vec![closure],
        Item::Directory { programs, .. } => programs.iter().collect(),
        Item::Data { .. } => vec![],
    }
}

/// The files under `dir`, sorted: regular files, and symlinks that lead to one.
fn files_in(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .io("opendir", dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<std::io::Result<_>>()
        .io("readdir", dir)?;
    entries.sort();
    for path in entries {
        let metadata = fs::symlink_metadata(&path).io("lstat", &path)?;
        if metadata.is_dir() {
            files_in(&path, found)?;
        } else if metadata.is_file() || fs::metadata(&path).is_ok_and(|target| target.is_file()) {
            found.push(path);
        }
    }
    Ok(())
}

/// The interpreter named by a script's `#!` line (`man 2 execve`, "Interpreter scripts").
fn shebang(path: &Path) -> Result<Option<String>> {
    let file = fs::File::open(path).io("open", path)?;
    // A `#!` line is short: the kernel reads at most 256 bytes of it (BINPRM_BUF_SIZE).
    let mut line = Vec::new();
    BufReader::new(file.take(256)).read_until(b'\n', &mut line).io("read", path)?;
    let Some(rest) = line.strip_prefix(b"#!") else {
        return Ok(None);
    };
    Ok(String::from_utf8_lossy(rest).split_whitespace().next().map(str::to_string))
}

/// What a copy did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The rootfs, as the user named it.
    pub root: PathBuf,
    /// The requested paths, looked at.
    pub items: Vec<Item>,
    /// Everything written, in order.
    pub ops: Vec<Op>,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Libraries copied now.
    pub libraries_copied: usize,
    /// Libraries that were already in the rootfs.
    pub libraries_kept: usize,
    /// Requested paths that were already in the rootfs, and were left alone.
    pub kept: Vec<PathBuf>,
    /// Things the user should know: scripts and their interpreters, kept files, the cache.
    pub notes: Vec<String>,
}

impl Plan {
    /// Step 2: copies everything into `root` (created if missing; its parent must exist).
    pub fn execute(self, root: &Path) -> Result<Report> {
        install::prepare_root(root)?;
        let mut installer = Installer::new(root);
        let mut notes = Vec::new();
        let mut kept = Vec::new();
        let mut libraries = BTreeSet::new();
        let (mut libraries_copied, mut libraries_kept) = (0, 0);
        let shown = root.display();
        for item in &self.items {
            match item {
                Item::Program { requested, .. } | Item::Data { requested, .. } => {
                    let installed = installer.install(requested)?;
                    if !installed.copied {
                        kept.push(requested.clone());
                        notes.push(format!(
                            "{} was already in {shown} (as {}): kept it, the host's copy was not \
                             copied",
                            requested.display(),
                            installed.path.display()
                        ));
                    }
                }
                Item::Directory { requested, .. } => {
                    installer.install_tree(requested)?;
                }
            }
            if let Item::Data { requested, interpreter } = item {
                let script = match interpreter {
                    Some(interpreter) => {
                        format!(": a script for {interpreter}, which must be in {shown} too")
                    }
                    None => String::new(),
                };
                notes.push(format!(
                    "{} is not an ELF file: copied as data{script}",
                    requested.display()
                ));
            }
            for closure in closures(item) {
                for library in closure.libraries() {
                    let installed = installer.install(&library.path)?;
                    if libraries.insert(installed.path) {
                        if installed.copied {
                            libraries_copied += 1;
                        } else {
                            libraries_kept += 1;
                        }
                    }
                }
            }
        }
        if let Some(library) = &self.cache_needed_for {
            installer.install(Path::new(ld_cache::PATH))?;
            notes.push(format!(
                "copied {}: {} was found through it, in a directory the loader does not search \
                 by default",
                ld_cache::PATH,
                library.display()
            ));
        }
        Ok(Report {
            root: root.to_path_buf(),
            items: self.items,
            ops: installer.ops().to_vec(),
            bytes: installer.bytes_copied(),
            libraries_copied,
            libraries_kept,
            kept,
            notes,
        })
    }
}

/// Steps 1 and 2: copies `paths` and their libraries into `root`.
pub fn copy(root: &Path, paths: &[PathBuf]) -> Result<Report> {
    plan(paths)?.execute(root)
}

impl Report {
    /// One line: `copied 2 binaries and 9 libraries into jail (14.2 MiB)`, and what was
    /// already there.
    pub fn summary(&self) -> String {
        let is_program = |item: &&Item| matches!(item, Item::Program { .. });
        let is_data = |item: &&Item| matches!(item, Item::Data { .. });
        let kept = |item: &&Item| self.kept.iter().any(|path| path == item.requested());
        let programs = self.items.iter().filter(is_program);
        let data = self.items.iter().filter(is_data);
        let (programs_kept, data_kept) =
            (programs.clone().filter(kept).count(), data.clone().filter(kept).count());
        let (programs, data) = (programs.count() - programs_kept, data.count() - data_kept);

        let mut copied = Vec::new();
        if programs > 0 {
            copied.push(count(programs, "binary", "binaries"));
        }
        if data > 0 {
            copied.push(count(data, "other file", "other files"));
        }
        for item in &self.items {
            if let Item::Directory { files, .. } = item {
                copied.push(format!("1 directory ({})", count(*files, "file", "files")));
            }
        }
        copied.push(count(self.libraries_copied, "library", "libraries"));
        let mut line = format!(
            "copied {} into {} ({})",
            and_list(&copied),
            self.root.display(),
            human_size(self.bytes)
        );

        let mut already = Vec::new();
        if programs_kept > 0 {
            already.push(count(programs_kept, "binary", "binaries"));
        }
        if data_kept > 0 {
            already.push(count(data_kept, "other file", "other files"));
        }
        if self.libraries_kept > 0 {
            already.push(count(self.libraries_kept, "library", "libraries"));
        }
        if !already.is_empty() {
            let one = programs_kept + data_kept + self.libraries_kept == 1;
            let verb = if one { "was" } else { "were" };
            line.push_str(&format!("; {} {verb} already there", and_list(&already)));
        }
        line
    }

    /// Why each file is needed (the loader's dependency tree of every program), then what was
    /// written, then the summary: what `copy --explain` prints.
    pub fn explain(&self) -> String {
        let mut out = String::from("why each file is needed (man 8 ld.so):\n");
        for item in &self.items {
            out.push('\n');
            match item {
                Item::Program { requested, closure } => {
                    out.push_str(&program_line(requested, closure));
                    out.push_str(&closure.render_tree(""));
                }
                Item::Data { requested, interpreter } => {
                    let script = match interpreter {
                        Some(interpreter) => format!(", a script for {interpreter}"),
                        None => String::new(),
                    };
                    out.push_str(&format!(
                        "{}  (requested; not ELF: copied as data{script})\n",
                        requested.display()
                    ));
                }
                Item::Directory { requested, files, programs } => {
                    out.push_str(&format!(
                        "{}/  (requested directory: {}; {} ELF programs or libraries, each with \
                         what it needs)\n",
                        requested.display().to_string().trim_end_matches('/'),
                        count(*files, "file", "files"),
                        programs.len()
                    ));
                    for (position, closure) in programs.iter().enumerate() {
                        let last = position + 1 == programs.len();
                        let (branch, indent) =
                            if last { ("└── ", "    ") } else { ("├── ", "│   ") };
                        let path = &closure.program().path;
                        let name = path.strip_prefix(requested).unwrap_or(path);
                        let needs = if closure.libraries().is_empty() {
                            "  (needs no libraries)"
                        } else {
                            ""
                        };
                        out.push_str(&format!("{branch}{}{needs}\n", name.display()));
                        out.push_str(&closure.render_tree(indent));
                    }
                }
            }
        }
        out.push_str(&format!(
            "\nwhat was written into {} (the host's symlinks are recreated, so each path opens \
             the same file as on the host):\n",
            self.root.display()
        ));
        for op in &self.ops {
            out.push_str(&format!("  {op}\n"));
        }
        out.push('\n');
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// `/usr/bin/python3 -> /usr/bin/python3.11  (requested)`: the path, where its symlinks lead.
fn program_line(requested: &Path, closure: &Closure) -> String {
    let program = closure.program();
    let real = if program.real_path != requested {
        format!(" -> {}", program.real_path.display())
    } else {
        String::new()
    };
    let kind =
        if program.info.is_static() { "; statically linked: needs no libraries" } else { "" };
    format!("{}{real}  (requested{kind})\n", requested.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_names_the_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        fs::write(&script, "#!/usr/bin/env python3\nprint(1)\n").unwrap();
        assert_eq!(shebang(&script).unwrap().as_deref(), Some("/usr/bin/env"));
        fs::write(&script, "just text").unwrap();
        assert_eq!(shebang(&script).unwrap(), None);
    }

    #[test]
    fn a_missing_path_is_an_error_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("jail");
        let error = copy(&root, &[PathBuf::from("/usr/bin/definitely-not-here")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "stat /usr/bin/definitely-not-here failed: ENOENT: no such file or directory (check \
             the path)"
        );
        assert!(!root.exists(), "nothing written");
    }

    /// The real thing, without root: bash and its libraries land where the loader will look.
    #[test]
    fn copies_bash_with_its_loader_and_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("jail");
        let report = copy(&root, &[PathBuf::from("/bin/bash")]).unwrap();
        assert!(root.join("bin/bash").is_file());
        let Item::Program { closure, .. } = &report.items[0] else { panic!("{report:?}") };
        let loader = closure.program().info.interpreter.clone().unwrap();
        assert!(root.join(loader.trim_start_matches('/')).is_file(), "the loader: {loader}");
        for library in closure.libraries() {
            let inside = root.join(library.path.strip_prefix("/").unwrap());
            assert!(inside.is_file(), "{} is missing from the jail", library.path.display());
        }
        assert_eq!(report.libraries_copied, closure.libraries().len());
        assert!(report.summary().starts_with(&format!(
            "copied 1 binary and {} libraries into {}",
            closure.libraries().len(),
            root.display()
        )));

        // Copying again keeps everything and says so.
        let again = copy(&root, &[PathBuf::from("/bin/bash")]).unwrap();
        assert_eq!(again.libraries_copied, 0);
        assert!(again.notes[0].starts_with("/bin/bash was already in"), "{:?}", again.notes);
    }

    #[test]
    fn a_script_is_copied_as_data_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hello.sh");
        fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
        let root = dir.path().join("jail");
        let report = copy(&root, std::slice::from_ref(&script)).unwrap();
        assert!(root.join(script.strip_prefix("/").unwrap()).is_file());
        assert_eq!(
            report.notes,
            [format!(
                "{} is not an ELF file: copied as data: a script for /bin/sh, which must be in {} \
                 too",
                script.display(),
                root.display()
            )]
        );
        assert!(report.summary().starts_with("copied 1 other file and 0 libraries into"));
    }
}
