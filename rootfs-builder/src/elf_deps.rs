//! The dynamic loader's search for libraries, written out step by step (`man 8 ld.so`).
//!
//! A dynamically linked program does not run by itself. The kernel maps it, sees `PT_INTERP`
//! and starts *that* program, the loader (`/lib64/ld-linux-x86-64.so.2`), which reads the
//! program's `DT_NEEDED` names, finds and maps each library, then the libraries' own
//! `DT_NEEDED`, breadth first, until the whole graph is loaded. A chroot has to contain every
//! file the loader will open, so to copy a program we have to run the loader's search
//! ourselves. For each name (the order is the one `man 8 ld.so` gives, "Description"):
//!
//! 1. A name containing a slash is a path and is used as it is; no search.
//! 2. Already loaded? If an object of that name (its `DT_SONAME`, or the name it was found
//!    under) is in the process, it is reused. This is why `libc.so.6` is loaded once.
//! 3. `DT_RPATH` of the object that needs the library, *unless that object has `DT_RUNPATH`*,
//!    then `DT_RPATH` of the object that loaded it, and so on up to the program: RPATH is
//!    inherited. (The old mechanism; linkers today write `DT_RUNPATH` unless told otherwise.)
//! 4. `LD_LIBRARY_PATH`. We skip it on purpose: it belongs to the process that will run, not
//!    to the files, and the jail will not have the host's environment.
//! 5. `DT_RUNPATH` of the object that needs the library, and only of that object: RUNPATH
//!    is *not* inherited, so a library found through it cannot find its own dependencies there.
//! 6. `/etc/ld.so.cache` (see [`crate::ld_cache`]), unless the object was linked with
//!    `-z nodefaultlib` (`DF_1_NODEFLIB`).
//! 7. The default directories: `/lib/<triplet>`, `/usr/lib/<triplet>`, then `/lib`, `/usr/lib`.
//!
//! Search paths may use `$ORIGIN` (the directory of the object whose path it is), `$LIB` and
//! `$PLATFORM` (see [`expand_tokens`]). A file found in a directory is taken only if its ELF
//! class, byte order and machine match the program's; otherwise the search goes on, as the
//! loader's does ("skipping incompatible" in `LD_DEBUG=libs` output).
//!
//! Left out, and why: the `glibc-hwcaps` subdirectories (CPU-specific builds of a library; the
//! baseline build we find runs everywhere, and Debian 12 ships none), `LD_PRELOAD` and
//! `/etc/ld.so.preload` (the process's business), and libraries a program opens at run time
//! with `dlopen(3)` (NSS modules, plugins, Python's extension modules): no header names them,
//! so no search can find them. Copy those by path; a directory copy finds the ELF files in it.
//!
//! Why one file of over 1,000 lines: the search is one algorithm, the loader's, in the order
//! `man 8 ld.so` gives its steps, and a reader follows it beside that page (about 700 lines);
//! the other 400 are its tests, which check it against the real loader, on the host's
//! programs and on objects built with RPATH and RUNPATH.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::elf::{self, Abi, ElfInfo};
use crate::error::{Error, IoResultExt, Result};
use crate::ld_cache::{self, LdCache};

/// What the loader would find when it opens a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspected {
    /// Nothing there (`ENOENT`): the search goes on.
    Missing,
    /// Something that is not an ELF file (a directory, a linker script, a text file).
    NotElf,
    /// An ELF object.
    Elf(ElfInfo),
}

/// Where the search gets its files from. [`HostFiles`] reads the real filesystem; tests pass
/// a map of made-up objects, so the search rules can be checked without a compiler.
pub trait ObjectSource {
    /// What is at `path` (following symlinks, as `open(2)` does).
    fn inspect(&self, path: &Path) -> Result<Inspected>;
    /// `path` with every symlink resolved: the program's `$ORIGIN` is computed from it, and two
    /// names of one file are recognised as one object.
    fn real_path(&self, path: &Path) -> Result<PathBuf>;
}

/// The host's files, each parsed once (a directory copy asks about `libc.so.6` many times).
#[derive(Debug, Default)]
pub struct HostFiles {
    seen: RefCell<HashMap<PathBuf, Inspected>>,
}

impl HostFiles {
    /// A reader of the host's files with an empty memo.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ObjectSource for HostFiles {
    fn inspect(&self, path: &Path) -> Result<Inspected> {
        if let Some(known) = self.seen.borrow().get(path) {
            return Ok(known.clone());
        }
        let inspected = match std::fs::metadata(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Inspected::Missing,
            Err(error) => return Err(error).io("stat", path),
            Ok(metadata) if !metadata.is_file() => Inspected::NotElf,
            Ok(_) if !elf::is_elf(path)? => Inspected::NotElf,
            Ok(_) => Inspected::Elf(elf::read(path)?),
        };
        self.seen.borrow_mut().insert(path.to_path_buf(), inspected.clone());
        Ok(inspected)
    }

    fn real_path(&self, path: &Path) -> Result<PathBuf> {
        std::fs::canonicalize(path).io("realpath", path)
    }
}

/// Why an object is part of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The program (or library) we were asked about.
    Requested,
    /// The program's `PT_INTERP`: the loader, started by the kernel.
    Interpreter,
    /// A `DT_NEEDED` entry of its loader ([`Object::loader`]), found by [`Via`].
    Needed {
        /// The name as written in `DT_NEEDED`.
        name: String,
        /// Which step of the search found it.
        via: Via,
    },
}

/// The step of the search that found a library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The `DT_NEEDED` name contained a slash: a path, not searched for.
    Path,
    /// A `DT_RPATH` entry of object `owner` (the one that needed it, or one of its loaders).
    Rpath {
        /// Index into [`Closure::objects`] of the object whose `DT_RPATH` it is.
        owner: usize,
        /// The entry as written, e.g. `$ORIGIN/../lib`.
        entry: String,
        /// The directory it expanded to.
        dir: PathBuf,
    },
    /// A `DT_RUNPATH` entry of the object that needed it.
    Runpath {
        /// The entry as written.
        entry: String,
        /// The directory it expanded to.
        dir: PathBuf,
    },
    /// `/etc/ld.so.cache`.
    Cache,
    /// One of the loader's default directories.
    DefaultDir(PathBuf),
}

/// A candidate file the search looked at and passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The file.
    pub path: PathBuf,
    /// Why: "ELF 32-bit LSB i386, but the program is ELF 64-bit LSB x86-64".
    pub reason: String,
}

/// One object of the process: the program, its loader, or a library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The path the loader opens (what `ldd` prints after `=>`).
    pub path: PathBuf,
    /// The same with symlinks resolved.
    pub real_path: PathBuf,
    /// What the object's `$ORIGIN` expands to. For the program, the directory of its real
    /// path (the kernel tells the loader the program's path, resolved: `/proc/self/exe`); for a
    /// library, the directory of the path it was found at, symlinks *not* resolved (glibc's
    /// `_dl_new_object`).
    pub origin: PathBuf,
    /// What the loader read from it.
    pub info: ElfInfo,
    /// Why it is here.
    pub found: Found,
    /// Index of the object whose `DT_NEEDED` brought it in first; `None` for the program and
    /// its loader.
    pub loader: Option<usize>,
    /// For each of `info.needed`, in order: the index of the object that satisfies it.
    pub needed: Vec<usize>,
    /// Candidates the search passed over before finding this one.
    pub rejected: Vec<Rejected>,
    /// Every name this object answers to (`DT_SONAME`, the names it was asked for, its path).
    names: Vec<String>,
}

impl Object {
    /// A short name for messages: `libc.so.6`, or the program's file name (`python3.11`).
    pub fn short_name(&self) -> String {
        let path = if self.found == Found::Requested { &self.real_path } else { &self.path };
        path.file_name()
            .map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned())
    }

    fn answers_to(&self, name: &str) -> bool {
        self.names.iter().any(|known| known == name)
    }
}

/// Everything the loader would map into one process, in load order: the program first, then
/// its loader (if any), then the libraries breadth first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    /// The objects; index 0 is the program.
    pub objects: Vec<Object>,
}

impl Closure {
    /// The program we were asked about.
    pub fn program(&self) -> &Object {
        &self.objects[0]
    }

    /// The loader and the libraries: every object except the program.
    pub fn libraries(&self) -> &[Object] {
        &self.objects[1..]
    }

    /// The dependency tree below the program, one line per edge, as `--explain` prints it.
    /// Every line starts with `prefix` (so a tree can be nested in another).
    ///
    /// A library is expanded under the object that loaded it first; everywhere else it is
    /// shown as "already loaded", which is also what the loader does with it.
    pub fn render_tree(&self, prefix: &str) -> String {
        let mut out = String::new();
        let mut expanded = vec![false; self.objects.len()];
        expanded[0] = true;
        self.render_children(0, prefix, &mut expanded, &mut out);
        out
    }

    fn render_children(&self, index: usize, prefix: &str, expanded: &mut [bool], out: &mut String) {
        let object = &self.objects[index];
        let mut edges: Vec<(String, usize)> = Vec::new();
        if index == 0 {
            if let Some(interp) = self.objects.iter().position(|o| o.found == Found::Interpreter) {
                edges.push((String::new(), interp));
            }
        }
        edges.extend(object.info.needed.iter().cloned().zip(object.needed.iter().copied()));

        for (position, (name, target)) in edges.iter().enumerate() {
            let last = position + 1 == edges.len();
            let (branch, indent) =
                if last { ("└── ", "    ") } else { ("├── ", "│   ") };
            let child = &self.objects[*target];
            let first_time = !expanded[*target] && loaded_here(child, index, name);
            if !first_time {
                let why = match (&child.found, child.loader) {
                    (Found::Interpreter, _) => {
                        "already loaded: it is the program's PT_INTERP".into()
                    }
                    (Found::Requested, _) => "already loaded: it is the program itself".into(),
                    (_, Some(loader)) => format!(
                        "already loaded: DT_NEEDED by {} first",
                        self.objects[loader].short_name()
                    ),
                    (_, None) => "already loaded".into(),
                };
                out.push_str(&format!("{prefix}{branch}{name}  ({why})\n"));
                continue;
            }
            expanded[*target] = true;
            let line = match &child.found {
                Found::Interpreter => format!(
                    "{}  (PT_INTERP: the loader the kernel starts first)",
                    child.path.display()
                ),
                Found::Needed { name, via: Via::Path } => {
                    format!("{name}  (DT_NEEDED by {}; a path: used as it is)", object.short_name())
                }
                Found::Needed { name, via } => format!(
                    "{name} => {}  (DT_NEEDED by {}; {})",
                    child.path.display(),
                    object.short_name(),
                    self.describe_via(via, index)
                ),
                Found::Requested => child.path.display().to_string(),
            };
            out.push_str(&format!("{prefix}{branch}{line}\n"));
            for rejected in &child.rejected {
                out.push_str(&format!(
                    "{prefix}{indent}(skipped {}: {})\n",
                    rejected.path.display(),
                    rejected.reason
                ));
            }
            self.render_children(*target, &format!("{prefix}{indent}"), expanded, out);
        }
    }

    fn describe_via(&self, via: &Via, requester: usize) -> String {
        match via {
            Via::Path => "a path: used as it is".into(),
            Via::Rpath { owner, entry, dir } => {
                let expansion = expansion(entry, dir);
                if *owner == requester {
                    format!("found via its DT_RPATH {entry}{expansion}")
                } else {
                    format!(
                        "found via DT_RPATH {entry}{expansion} of {}, inherited",
                        self.objects[*owner].short_name()
                    )
                }
            }
            Via::Runpath { entry, dir } => {
                format!("found via its DT_RUNPATH {entry}{}", expansion(entry, dir))
            }
            Via::Cache => format!("found via {}", ld_cache::PATH),
            Via::DefaultDir(dir) => format!("found in {}, a default directory", dir.display()),
        }
    }
}

/// Is the edge `parent --name--> child` the one that brought `child` in? Only there is its
/// subtree shown; the PT_INTERP edge (from the program, with no name) always is.
fn loaded_here(child: &Object, parent: usize, name: &str) -> bool {
    match &child.found {
        Found::Interpreter => true,
        Found::Needed { name: wanted, .. } => child.loader == Some(parent) && wanted == name,
        Found::Requested => false,
    }
}

/// ` = /opt/app/lib` when a search path entry had tokens, nothing otherwise.
fn expansion(entry: &str, dir: &Path) -> String {
    if Path::new(entry) == dir {
        String::new()
    } else {
        format!(" = {}", dir.display())
    }
}

/// The loader's default directories for programs of `abi`, in the order it searches them.
///
/// Debian's loader searches `/lib/<triplet>`, `/usr/lib/<triplet>`, `/lib`, `/usr/lib` (run
/// `/lib64/ld-linux-x86-64.so.2 --help` to see its list); Fedora's, built for `/lib64`,
/// searches `/lib64` and `/usr/lib64`. We cannot ask which loader we will be copying, so we
/// search the union: the multiarch directories first, then the lib64 ones (64-bit only).
pub fn default_dirs(abi: &Abi) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(triplet) = abi.multiarch_triplet() {
        dirs.push(PathBuf::from(format!("/lib/{triplet}")));
        dirs.push(PathBuf::from(format!("/usr/lib/{triplet}")));
    }
    if abi.is_64 {
        dirs.push(PathBuf::from("/lib64"));
        dirs.push(PathBuf::from("/usr/lib64"));
    }
    dirs.push(PathBuf::from("/lib"));
    dirs.push(PathBuf::from("/usr/lib"));
    dirs
}

/// Expands the tokens of one search path entry (`man 8 ld.so`, "Dynamic string tokens"):
///
/// - `$ORIGIN` (or `${ORIGIN}`): the directory of the object the entry belongs to, so that an
///   application can carry its libraries along (`$ORIGIN/../lib`).
/// - `$LIB`: the loader's library directory name. Debian's loader says `lib/<triplet>`
///   (`LD_DEBUG=libs` shows it), other distributions' `lib64` or `lib`.
/// - `$PLATFORM`: the kernel's `AT_PLATFORM` for this machine (`x86_64`).
///
/// A token we know but cannot expand drops the whole entry (`None`), as the loader does; an
/// unknown `$NAME` is left as it is.
pub fn expand_tokens(entry: &str, origin: Option<&Path>, abi: &Abi) -> Option<String> {
    let lib = match abi.multiarch_triplet() {
        Some(triplet) => format!("lib/{triplet}"),
        None if abi.is_64 => "lib64".to_string(),
        None => "lib".to_string(),
    };
    let mut out = String::new();
    let mut rest = entry;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let token = ["ORIGIN", "LIB", "PLATFORM"].into_iter().find_map(|name| {
            let braced = format!("{{{name}}}");
            if after.starts_with(&braced) {
                Some((name, braced.len()))
            } else if after.starts_with(name)
                && !after[name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            {
                Some((name, name.len()))
            } else {
                None
            }
        });
        let Some((name, len)) = token else {
            out.push('$');
            rest = after;
            continue;
        };
        let value = match name {
            "ORIGIN" => origin?.to_str()?.to_string(),
            "LIB" => lib.clone(),
            _ => abi.platform()?.to_string(),
        };
        out.push_str(&value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Some(out)
}

/// The loader's search, over some [`ObjectSource`] and an optional cache.
pub struct Search<'a> {
    source: &'a dyn ObjectSource,
    cache: Option<&'a LdCache>,
}

impl fmt::Debug for Search<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Search").field("cache", &self.cache.is_some()).finish_non_exhaustive()
    }
}

/// Where one name was looked for, and what was passed over; for messages.
#[derive(Default)]
struct Attempt {
    searched: Vec<String>,
    rejected: Vec<Rejected>,
}

impl<'a> Search<'a> {
    /// A search over `source`, consulting `cache` (the host's `/etc/ld.so.cache`) if given.
    pub fn new(source: &'a dyn ObjectSource, cache: Option<&'a LdCache>) -> Self {
        Search { source, cache }
    }

    /// Everything the loader would load to run `program` (which may also be a library: then
    /// this is what `dlopen` would load for it).
    pub fn resolve(&self, program: &Path) -> Result<Closure> {
        let info = match self.source.inspect(program)? {
            Inspected::Elf(info) => info,
            Inspected::Missing => {
                return Err(Error::io(
                    "open",
                    program,
                    std::io::Error::from_raw_os_error(libc::ENOENT),
                ))
            }
            Inspected::NotElf => {
                return Err(Error::BadElf {
                    path: program.to_path_buf(),
                    reason: "it does not start with \\x7fELF".into(),
                })
            }
        };
        let real_path = self.source.real_path(program)?;
        let abi = info.abi;
        let interpreter = info.interpreter.clone();
        let mut closure = Closure {
            objects: vec![Object {
                path: program.to_path_buf(),
                origin: real_path.parent().unwrap_or(Path::new("/")).to_path_buf(),
                real_path,
                names: info.soname.iter().cloned().collect(),
                info,
                found: Found::Requested,
                loader: None,
                needed: Vec::new(),
                rejected: Vec::new(),
            }],
        };

        // The kernel maps the loader named by PT_INTERP; everything else is the loader's work.
        if let Some(interpreter) = interpreter {
            let path = PathBuf::from(&interpreter);
            let info = match self.source.inspect(&path)? {
                Inspected::Elf(info) => info,
                _ => {
                    return Err(Error::Invalid(format!(
                        "{interpreter} (PT_INTERP of {}) is not on this host: the program cannot \
                         start without its loader (is it built for another system?)",
                        program.display()
                    )))
                }
            };
            let mut names = vec![interpreter.clone()];
            names.extend(info.soname.iter().cloned());
            closure.objects.push(Object {
                origin: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
                real_path: self.source.real_path(&path)?,
                path,
                names,
                info,
                found: Found::Interpreter,
                loader: None,
                needed: Vec::new(),
                rejected: Vec::new(),
            });
        }

        // Breadth first, like the loader (glibc's _dl_map_object_deps): all of the program's
        // DT_NEEDED, then all of theirs. The order decides which object is each library's
        // "loader", and RPATH inheritance follows that chain.
        let mut next = 0;
        while next < closure.objects.len() {
            let names = closure.objects[next].info.needed.clone();
            let mut targets = Vec::with_capacity(names.len());
            for name in &names {
                targets.push(self.load(&mut closure, next, name, &abi)?);
            }
            closure.objects[next].needed = targets;
            next += 1;
        }
        Ok(closure)
    }

    /// Finds `name` for object `requester` and returns its index in the closure.
    fn load(
        &self,
        closure: &mut Closure,
        requester: usize,
        name: &str,
        abi: &Abi,
    ) -> Result<usize> {
        // Already loaded under that name: the loader reuses it (glibc's _dl_name_match_p).
        if let Some(index) = closure.objects.iter().position(|object| object.answers_to(name)) {
            return Ok(index);
        }
        let mut attempt = Attempt::default();
        let Some((path, info, via)) = self.search(closure, requester, name, abi, &mut attempt)?
        else {
            return Err(Error::LibraryNotFound {
                name: name.to_string(),
                needed_by: closure.objects[requester].path.clone(),
                searched: attempt.searched,
            });
        };
        // The same file under another name (a symlink, or a path in DT_NEEDED) is still one
        // object: the loader compares device and inode before mapping a second copy.
        let real_path = self.source.real_path(&path)?;
        if let Some(index) = closure.objects.iter().position(|object| object.real_path == real_path)
        {
            closure.objects[index].names.push(name.to_string());
            return Ok(index);
        }
        let mut names = vec![name.to_string(), path.display().to_string()];
        names.extend(info.soname.iter().cloned());
        closure.objects.push(Object {
            origin: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
            path,
            real_path,
            names,
            info,
            found: Found::Needed { name: name.to_string(), via },
            loader: Some(requester),
            needed: Vec::new(),
            rejected: attempt.rejected,
        });
        Ok(closure.objects.len() - 1)
    }

    // ANCHOR: search
    /// The search itself, steps 1 and 3–7 of the module documentation.
    fn search(
        &self,
        closure: &Closure,
        requester: usize,
        name: &str,
        abi: &Abi,
        attempt: &mut Attempt,
    ) -> Result<Option<(PathBuf, ElfInfo, Via)>> {
        let object = &closure.objects[requester];

        // 1. A name with a slash is a path ($ORIGIN may still be used in it).
        if name.contains('/') {
            let Some(path) = expand_tokens(name, Some(&object.origin), abi) else {
                attempt.searched.push(format!("{name} (a token that cannot be expanded)"));
                return Ok(None);
            };
            attempt.searched.push(path.clone());
            if !path.starts_with('/') {
                attempt.searched.push("(relative to the working directory: not searched)".into());
                return Ok(None);
            }
            let path = PathBuf::from(path);
            return Ok(self.candidate(&path, abi, attempt)?.map(|info| (path, info, Via::Path)));
        }

        // 3. DT_RPATH, of the requester and then of each object up the chain of loaders; but
        //    not at all if the requester has DT_RUNPATH (and an object that has DT_RUNPATH
        //    contributes no DT_RPATH: the loader ignores an object's RPATH when it has both).
        if object.info.runpath.is_none() {
            let mut owner = Some(requester);
            while let Some(index) = owner {
                let holder = &closure.objects[index];
                if let (None, Some(rpath)) = (&holder.info.runpath, &holder.info.rpath) {
                    for entry in rpath.split(':') {
                        let Some(dir) = search_dir(entry, holder, abi, "DT_RPATH", attempt) else {
                            continue;
                        };
                        let path = dir.join(name);
                        if let Some(info) = self.candidate(&path, abi, attempt)? {
                            let via = Via::Rpath { owner: index, entry: entry.to_string(), dir };
                            return Ok(Some((path, info, via)));
                        }
                    }
                }
                owner = holder.loader;
            }
        }

        // 5. DT_RUNPATH of the requester only.
        if let Some(runpath) = &object.info.runpath {
            for entry in runpath.split(':') {
                let Some(dir) = search_dir(entry, object, abi, "DT_RUNPATH", attempt) else {
                    continue;
                };
                let path = dir.join(name);
                if let Some(info) = self.candidate(&path, abi, attempt)? {
                    let via = Via::Runpath { entry: entry.to_string(), dir };
                    return Ok(Some((path, info, via)));
                }
            }
        }

        // 6. The cache: the first entry for this name that was written for our ABI. With
        //    DF_1_NODEFLIB, entries in the default directories do not count.
        let defaults = default_dirs(abi);
        if let Some(cache) = self.cache {
            attempt.searched.push(ld_cache::PATH.to_string());
            let entry = cache.lookup(name).find(|entry| {
                // An ABI we have no flags for: take any entry, the ELF check below still applies.
                let ours = match abi.ld_cache_flags() {
                    Some(flags) => entry.flags == flags,
                    None => true,
                };
                entry.hwcap == 0 && ours
            });
            if let Some(entry) = entry {
                let in_defaults =
                    entry.path.parent().is_some_and(|dir| defaults.iter().any(|d| d == dir));
                if !(object.info.nodeflib && in_defaults) {
                    if let Some(info) = self.candidate(&entry.path, abi, attempt)? {
                        return Ok(Some((entry.path.clone(), info, Via::Cache)));
                    }
                }
            }
        }

        // 7. The default directories.
        if object.info.nodeflib {
            attempt.searched.push("(not the default directories: DF_1_NODEFLIB)".into());
            return Ok(None);
        }
        for dir in defaults {
            attempt.searched.push(dir.display().to_string());
            let path = dir.join(name);
            if let Some(info) = self.candidate(&path, abi, attempt)? {
                return Ok(Some((path, info, Via::DefaultDir(dir))));
            }
        }
        Ok(None)
    }
    // ANCHOR_END: search

    /// Would the loader take the file at `path`? It must exist, be ELF, and match the
    /// program's class, byte order and machine (glibc's `open_verify`).
    fn candidate(&self, path: &Path, abi: &Abi, attempt: &mut Attempt) -> Result<Option<ElfInfo>> {
        let reason = match self.source.inspect(path)? {
            Inspected::Missing => return Ok(None),
            Inspected::Elf(info) if info.abi.compatible_with(abi) => return Ok(Some(info)),
            Inspected::Elf(info) => format!("{}, but the program is {abi}", info.abi),
            Inspected::NotElf => "not an ELF file".to_string(),
        };
        if let Some(last) = attempt.searched.last_mut() {
            last.push_str(&format!(" (skipped {}: {reason})", path.display()));
        }
        attempt.rejected.push(Rejected { path: path.to_path_buf(), reason });
        Ok(None)
    }
}

/// One entry of an RPATH or RUNPATH, expanded and checked; `None` (and a note in `attempt`)
/// when it cannot be searched.
fn search_dir(
    entry: &str,
    holder: &Object,
    abi: &Abi,
    tag: &str,
    attempt: &mut Attempt,
) -> Option<PathBuf> {
    let owner = holder.short_name();
    let Some(dir) = expand_tokens(entry, Some(&holder.origin), abi) else {
        attempt
            .searched
            .push(format!("{entry} ({tag} of {owner}: a token that cannot be expanded)"));
        return None;
    };
    // An empty entry means the working directory, and so does a relative one: the loader
    // searches relative to wherever the process happens to be, which we cannot know.
    if !dir.starts_with('/') {
        attempt.searched.push(format!(
            "{entry:?} ({tag} of {owner}: relative to the working directory, not searched)"
        ));
        return None;
    }
    attempt.searched.push(format!("{dir} ({tag} of {owner})"));
    Some(PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use goblin::elf::header::{EM_386, EM_X86_64, ET_DYN};

    const X86_64: Abi = Abi { is_64: true, little_endian: true, machine: EM_X86_64, flags: 0 };
    const I386: Abi = Abi { is_64: false, little_endian: true, machine: EM_386, flags: 0 };

    /// Made-up objects at made-up paths: enough to check the search rules by themselves.
    #[derive(Default)]
    struct FakeFiles(HashMap<PathBuf, Inspected>);

    impl FakeFiles {
        fn add(&mut self, path: &str, lib: Lib) -> &mut Self {
            self.0.insert(PathBuf::from(path), Inspected::Elf(lib.0));
            self
        }
    }

    impl ObjectSource for FakeFiles {
        fn inspect(&self, path: &Path) -> Result<Inspected> {
            // No symlinks here, so `..` can be resolved by just dropping a component.
            let mut normal = PathBuf::new();
            for component in path.components() {
                match component {
                    std::path::Component::ParentDir => {
                        normal.pop();
                    }
                    other => normal.push(other),
                }
            }
            Ok(self.0.get(&normal).cloned().unwrap_or(Inspected::Missing))
        }
        fn real_path(&self, path: &Path) -> Result<PathBuf> {
            Ok(path.to_path_buf())
        }
    }

    struct Lib(ElfInfo);

    impl Lib {
        fn new(needed: &[&str]) -> Lib {
            Lib(ElfInfo {
                abi: X86_64,
                kind: ET_DYN,
                interpreter: None,
                needed: needed.iter().map(|name| name.to_string()).collect(),
                soname: None,
                rpath: None,
                runpath: None,
                nodeflib: false,
            })
        }
        fn rpath(mut self, rpath: &str) -> Lib {
            self.0.rpath = Some(rpath.into());
            self
        }
        fn runpath(mut self, runpath: &str) -> Lib {
            self.0.runpath = Some(runpath.into());
            self
        }
        fn abi(mut self, abi: Abi) -> Lib {
            self.0.abi = abi;
            self
        }
    }

    fn path_of(closure: &Closure, name: &str) -> Option<PathBuf> {
        closure.objects.iter().find(|object| object.answers_to(name)).map(|o| o.path.clone())
    }

    #[test]
    fn origin_expands_to_the_objects_directory() {
        let origin = Path::new("/opt/app/bin");
        assert_eq!(
            expand_tokens("$ORIGIN/../lib", Some(origin), &X86_64).as_deref(),
            Some("/opt/app/bin/../lib")
        );
        assert_eq!(
            expand_tokens("${ORIGIN}/lib:x", Some(origin), &X86_64).as_deref(),
            Some("/opt/app/bin/lib:x")
        );
        assert_eq!(
            expand_tokens("/x/$LIB/$PLATFORM", None, &X86_64).as_deref(),
            Some("/x/lib/x86_64-linux-gnu/x86_64")
        );
        // Unknown names stay; `$ORIGINAL` is not `$ORIGIN` followed by "AL".
        assert_eq!(
            expand_tokens("/$HOME/$ORIGINAL", Some(origin), &X86_64).as_deref(),
            Some("/$HOME/$ORIGINAL")
        );
        // A known token without a value drops the entry.
        assert_eq!(expand_tokens("$ORIGIN/lib", None, &X86_64), None);
    }

    #[test]
    fn origin_in_runpath_finds_the_apps_own_libraries() {
        let mut files = FakeFiles::default();
        files
            .add("/opt/app/bin/app", Lib::new(&["libapp.so"]).runpath("$ORIGIN/../lib"))
            .add("/opt/app/lib/libapp.so", Lib::new(&[]));
        let closure = Search::new(&files, None).resolve(Path::new("/opt/app/bin/app")).unwrap();
        assert_eq!(
            path_of(&closure, "libapp.so").unwrap(),
            Path::new("/opt/app/bin/../lib/libapp.so")
        );
        let tree = closure.render_tree("");
        assert_eq!(
            tree,
            "└── libapp.so => /opt/app/bin/../lib/libapp.so  (DT_NEEDED by app; found via its \
             DT_RUNPATH $ORIGIN/../lib = /opt/app/bin/../lib)\n"
        );
    }

    /// The rule that surprises everyone: RPATH is inherited by the libraries an object loads,
    /// RUNPATH is not; and an object with RUNPATH has its RPATH ignored.
    #[test]
    fn rpath_is_inherited_and_runpath_is_not() {
        let program = "/opt/app/bin/app";
        let mut files = FakeFiles::default();
        files
            .add("/opt/app/lib/liba.so", Lib::new(&["libb.so"]))
            .add("/opt/app/lib/libb.so", Lib::new(&[]));

        // DT_RPATH on the program: liba finds libb through the program's RPATH.
        files.add(program, Lib::new(&["liba.so"]).rpath("$ORIGIN/../lib"));
        let closure = Search::new(&files, None).resolve(Path::new(program)).unwrap();
        let libb = closure.objects.iter().find(|o| o.answers_to("libb.so")).unwrap();
        assert!(
            matches!(&libb.found, Found::Needed { via: Via::Rpath { owner: 0, .. }, .. }),
            "{:?}",
            libb.found
        );
        assert!(closure.render_tree("").contains(
            "libb.so => /opt/app/bin/../lib/libb.so  (DT_NEEDED by liba.so; found via DT_RPATH \
             $ORIGIN/../lib = /opt/app/bin/../lib of app, inherited)"
        ));

        // DT_RUNPATH instead: liba is found, libb is not (the program's RUNPATH is its own).
        files.add(program, Lib::new(&["liba.so"]).runpath("$ORIGIN/../lib"));
        let error = Search::new(&files, None).resolve(Path::new(program)).unwrap_err();
        let Error::LibraryNotFound { name, needed_by, searched } = &error else {
            panic!("{error}");
        };
        assert_eq!(
            (name.as_str(), needed_by.as_path()),
            ("libb.so", Path::new("/opt/app/bin/../lib/liba.so"))
        );
        assert!(searched.contains(&"/lib/x86_64-linux-gnu".to_string()), "{searched:?}");

        // A library with its own DT_RUNPATH does not inherit its loaders' DT_RPATH either.
        files
            .add(program, Lib::new(&["liba.so"]).rpath("$ORIGIN/../lib"))
            .add("/opt/app/lib/liba.so", Lib::new(&["libb.so"]).runpath("/nowhere"));
        let error = Search::new(&files, None).resolve(Path::new(program)).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "libb.so (DT_NEEDED by /opt/app/bin/../lib/liba.so) not found: looked in \
                 /nowhere (DT_RUNPATH of liba.so), /lib/"
            ),
            "{error}"
        );
        files.add("/opt/app/lib/liba.so", Lib::new(&["libb.so"]));

        // Both: DT_RPATH is ignored, because DT_RUNPATH is present.
        files.add(program, Lib::new(&["liba.so"]).rpath("$ORIGIN/../lib").runpath("/nowhere"));
        let error = Search::new(&files, None).resolve(Path::new(program)).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "liba.so (DT_NEEDED by /opt/app/bin/app) not found: looked in /nowhere \
                 (DT_RUNPATH of app)"
            ),
            "{error}"
        );
    }

    #[test]
    fn already_loaded_names_are_reused_and_breadth_first_decides_the_loader() {
        let mut files = FakeFiles::default();
        let mut libc = Lib::new(&[]);
        libc.0.soname = Some("libc.so.6".into());
        files
            .add("/bin/prog", Lib::new(&["liba.so", "libc.so.6"]))
            .add("/lib/x86_64-linux-gnu/liba.so", Lib::new(&["libc.so.6"]))
            .add("/lib/x86_64-linux-gnu/libc.so.6", libc);
        let closure = Search::new(&files, None).resolve(Path::new("/bin/prog")).unwrap();
        assert_eq!(closure.objects.len(), 3);
        let libc = closure.objects.iter().position(|o| o.answers_to("libc.so.6")).unwrap();
        assert_eq!(closure.objects[libc].loader, Some(0), "the program asked for libc first");
        assert_eq!(
            closure.render_tree(""),
            "├── liba.so => /lib/x86_64-linux-gnu/liba.so  (DT_NEEDED by prog; found in \
             /lib/x86_64-linux-gnu, a default directory)\n\
             │   └── libc.so.6  (already loaded: DT_NEEDED by prog first)\n\
             └── libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6  (DT_NEEDED by prog; found in \
             /lib/x86_64-linux-gnu, a default directory)\n"
        );
    }

    #[test]
    fn an_incompatible_candidate_is_skipped_like_the_loader_does() {
        let mut files = FakeFiles::default();
        files
            .add("/bin/prog", Lib::new(&["libz.so.1"]).rpath("/opt/i386"))
            .add("/opt/i386/libz.so.1", Lib::new(&[]).abi(I386))
            .add("/usr/lib/x86_64-linux-gnu/libz.so.1", Lib::new(&[]));
        let closure = Search::new(&files, None).resolve(Path::new("/bin/prog")).unwrap();
        let libz = &closure.objects[1];
        assert_eq!(libz.path, Path::new("/usr/lib/x86_64-linux-gnu/libz.so.1"));
        assert_eq!(
            libz.rejected,
            [Rejected {
                path: "/opt/i386/libz.so.1".into(),
                reason: "ELF 32-bit LSB i386, but the program is ELF 64-bit LSB x86-64".into()
            }]
        );
    }

    #[test]
    fn the_cache_comes_after_runpath_and_before_the_default_dirs() {
        let mut files = FakeFiles::default();
        files
            .add("/bin/prog", Lib::new(&["libx.so"]))
            .add("/usr/local/lib/libx.so", Lib::new(&[]))
            .add("/lib/x86_64-linux-gnu/libx.so", Lib::new(&[]));
        let cache = LdCache::parse(&cache_image("libx.so", "/usr/local/lib/libx.so")).unwrap();
        let closure = Search::new(&files, Some(&cache)).resolve(Path::new("/bin/prog")).unwrap();
        assert_eq!(closure.objects[1].path, Path::new("/usr/local/lib/libx.so"));
        assert_eq!(
            closure.objects[1].found,
            Found::Needed { name: "libx.so".into(), via: Via::Cache }
        );

        files.add("/bin/prog", Lib::new(&["libx.so"]).runpath("/lib/x86_64-linux-gnu"));
        let closure = Search::new(&files, Some(&cache)).resolve(Path::new("/bin/prog")).unwrap();
        assert_eq!(closure.objects[1].path, Path::new("/lib/x86_64-linux-gnu/libx.so"));
    }

    /// A one-entry cache image (the layout is tested in `ld_cache`).
    fn cache_image(name: &str, path: &str) -> Vec<u8> {
        let strings_at = 48 + 24;
        let mut out = b"glibc-ld.so.cache1.1".to_vec();
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&((name.len() + path.len() + 2) as u32).to_le_bytes());
        out.extend_from_slice(&[2, 0, 0, 0]);
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&0x0303i32.to_le_bytes());
        out.extend_from_slice(&(strings_at as u32).to_le_bytes());
        out.extend_from_slice(&((strings_at + name.len() + 1) as u32).to_le_bytes());
        out.extend_from_slice(&[0; 12]);
        for text in [name, path] {
            out.extend_from_slice(text.as_bytes());
            out.push(0);
        }
        out
    }

    /// Our search against the real loader: `ld.so --list` prints what it would load. For the
    /// host's bash and python, both must name the same files.
    #[test]
    fn agrees_with_the_real_loader_on_host_programs() {
        let cache = LdCache::load(Path::new(ld_cache::PATH)).unwrap();
        let files = HostFiles::new();
        for program in ["/bin/bash", "/usr/bin/python3"] {
            if !Path::new(program).exists() {
                let why = format!("{program} is not installed (scripts/setup installs python3)");
                crate::skip("agrees_with_the_real_loader_on_host_programs", &why);
                continue;
            }
            let closure = Search::new(&files, cache.as_ref()).resolve(Path::new(program)).unwrap();
            let ours: Vec<String> = {
                let mut paths: Vec<_> =
                    closure.libraries().iter().map(|o| o.path.display().to_string()).collect();
                paths.sort();
                paths
            };
            let theirs =
                loader_list(program, closure.program().info.interpreter.as_deref().unwrap());
            assert_eq!(ours, theirs, "{program}");
        }
    }

    /// The RPATH/RUNPATH rule on real objects built with the host's C compiler, checked
    /// against the real loader (by running the program): `app` needs `liba.so`, which needs
    /// `libb.so`; both live in `$ORIGIN/libs`, and only `app` says so. With DT_RPATH the
    /// loader finds both; with DT_RUNPATH it finds `liba.so` and not `libb.so`. Our search
    /// must say the same.
    #[test]
    fn rpath_and_runpath_on_real_objects_agree_with_the_loader() {
        let Some(compiler) = ["cc", "gcc", "clang"].into_iter().find(|cc| {
            std::process::Command::new(cc)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        }) else {
            let why = "no C compiler on this machine (apt-get install gcc)";
            return crate::skip("rpath_and_runpath_on_real_objects_agree_with_the_loader", why);
        };
        let dir = tempfile::tempdir().unwrap();
        let d = fs_canonical(dir.path());
        let libs = d.join("libs");
        std::fs::create_dir(&libs).unwrap();
        std::fs::write(d.join("b.c"), "int b(void) { return 2; }\n").unwrap();
        std::fs::write(d.join("a.c"), "int b(void); int a(void) { return b(); }\n").unwrap();
        std::fs::write(d.join("app.c"), "int a(void); int main(void) { return a(); }\n").unwrap();
        let cc = |args: &[&str]| {
            let output =
                std::process::Command::new(compiler).current_dir(&d).args(args).output().unwrap();
            assert!(
                output.status.success(),
                "{compiler} {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        cc(&["-shared", "-fPIC", "-Wl,-soname,libb.so", "-o", "libs/libb.so", "b.c"]);
        cc(&[
            "-shared",
            "-fPIC",
            "-Wl,-soname,liba.so",
            "-o",
            "libs/liba.so",
            "a.c",
            "-Llibs",
            "-lb",
        ]);
        let cache = LdCache::load(Path::new(ld_cache::PATH)).unwrap();

        for (tags, inherited) in [("--disable-new-dtags", true), ("--enable-new-dtags", false)] {
            let app = d.join("app");
            cc(&[
                "-o",
                "app",
                "app.c",
                "-Llibs",
                "-la",
                &format!("-Wl,{tags}"),
                "-Wl,-rpath,$ORIGIN/libs",
                "-Wl,-rpath-link,libs",
            ]);
            let info = crate::elf::read(&app).unwrap();
            assert_eq!(info.rpath.is_some(), inherited, "{tags}: {info:?}");
            assert_eq!(info.runpath.is_some(), !inherited, "{tags}: {info:?}");

            let files = HostFiles::new();
            let ours = Search::new(&files, cache.as_ref()).resolve(&app);
            // The ground truth: run it. main returns a(), which returns b(): 2.
            let run = std::process::Command::new(&app).output().unwrap();
            let stderr = String::from_utf8_lossy(&run.stderr);
            if inherited {
                assert_eq!(run.status.code(), Some(2), "{tags}: {stderr}");
                let closure = ours.unwrap();
                let libb = closure.objects.iter().find(|o| o.answers_to("libb.so")).unwrap();
                assert_eq!(libb.path, libs.join("libb.so"));
            } else {
                assert_eq!(run.status.code(), Some(127), "{tags}: {stderr}");
                assert!(stderr.contains("libb.so: cannot open shared object file"), "{stderr}");
                let error = ours.unwrap_err().to_string();
                let needed_by = libs.join("liba.so");
                assert!(
                    error.starts_with(&format!(
                        "libb.so (DT_NEEDED by {}) not found",
                        needed_by.display()
                    )),
                    "{error}"
                );
            }
        }
    }

    fn fs_canonical(path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap()
    }

    /// The paths `ld.so --list PROGRAM` prints (the vDSO has no file and is left out).
    fn loader_list(program: &str, loader: &str) -> Vec<String> {
        let output = std::process::Command::new(loader).args(["--list", program]).output().unwrap();
        assert!(output.status.success(), "{loader} --list {program}");
        let mut paths: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let path = match line.split_once(" => ") {
                    Some((_, rest)) => rest,
                    None => line,
                };
                let path = path.split(" (0x").next().unwrap_or(path);
                path.starts_with('/').then(|| path.to_string())
            })
            .collect();
        paths.sort();
        paths
    }
}
