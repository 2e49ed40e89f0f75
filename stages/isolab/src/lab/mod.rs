//! `isolab lab`: classroom labs derived from the reference, so that they cannot drift from it.
//!
//! The code a student writes is marked in the real sources (`// LAB stageN/task BEGIN: …` …
//! `// LAB END`, see [`regions`]); the hints, a ladder of three rungs per task (the man page,
//! the shape of the call, the pitfall), are data in `labs/hints.toml`. From those two:
//! - `lab list` prints the stages and their tasks;
//! - `lab new STAGE DIR` writes a standalone starter crate: the crates the stage needs, copied,
//!   every region replaced by `todo!()`, the later stages' too (the reference's bodies
//!   never ship; `--from` carries a student's own earlier answers over), the
//!   workspace's `Cargo.lock`, so that it builds offline as it is;
//! - `lab hint STAGE TASK` shows the next rung, remembering in the starter how far it got;
//! - `lab check` (maintainers, and the test suite) builds every starter and grades it: each
//!   task must fail with the stubs, and the reference must pass them all.
//!
//! `isolab grade` ([`grade`]) is the grader itself.

pub mod grade;
pub mod regions;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Where the lab data lives in the reference.
const HINTS: &str = "labs/hints.toml";
/// The starter's own state (which stage it is, how far each hint ladder got).
const STATE: &str = ".isolab-lab.json";

/// `labs/hints.toml`: the stages and the tasks' hint ladders.
#[derive(Debug, Clone, Deserialize)]
pub struct Catalogue {
    /// The stages, in order.
    pub stage: Vec<StageInfo>,
    /// Every task, in the order a student does them.
    pub task: Vec<TaskInfo>,
}

/// One stage: its binary and the crates a starter copies.
#[derive(Debug, Clone, Deserialize)]
pub struct StageInfo {
    /// 1 to 5.
    pub number: u8,
    /// The stage's binary (`stage2-namespaces`).
    pub binary: String,
    /// The workspace's crates the starter holds, as paths from the workspace root.
    pub crates: Vec<String>,
}

/// One task: its id and hint ladder.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskInfo {
    /// `stage2/pivot-root`.
    pub id: String,
    /// The rungs, first to last.
    pub hints: Vec<String>,
}

impl Catalogue {
    /// Reads `labs/hints.toml` of the reference at `root`.
    pub fn load(root: &Path) -> Result<Catalogue> {
        let path = root.join(HINTS);
        let text = fs::read_to_string(&path).with_context(|| {
            format!("cannot read {}: is --reference the repository?", path.display())
        })?;
        let catalogue: Catalogue =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        Ok(catalogue)
    }

    /// The stage numbered `number`.
    pub fn stage(&self, number: u8) -> Result<&StageInfo> {
        match self.stage.iter().find(|stage| stage.number == number) {
            Some(stage) => Ok(stage),
            None => bail!("there is no lab for stage {number}: `isolab lab list` shows them"),
        }
    }

    /// The task `word` names: `stage2/proc`, or `proc` within `stage`.
    pub fn task(&self, stage: u8, word: &str) -> Result<&TaskInfo> {
        let id = if word.contains('/') { word.to_string() } else { format!("stage{stage}/{word}") };
        match self.task.iter().find(|task| task.id == id) {
            Some(task) => Ok(task),
            None => bail!("stage {stage} has no task '{word}': `isolab lab list` shows them"),
        }
    }
}

/// Every marked region of the reference, with the file (relative to the root) it is in.
pub fn reference_regions(
    root: &Path,
    crates: &[String],
) -> Result<Vec<(PathBuf, regions::Region)>> {
    let mut found = Vec::new();
    for krate in crates {
        for file in rust_files(&root.join(krate))? {
            let text = fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let relative = file.strip_prefix(root).unwrap_or(&file).to_path_buf();
            for region in regions::parse(&relative.display().to_string(), &text)? {
                found.push((relative.clone(), region));
            }
        }
    }
    Ok(found)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Arguments of `isolab lab`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
    /// The reference: the isolab repository the labs come from [default: the one isolab was
    /// built from]
    #[arg(long, global = true, value_name = "DIR")]
    reference: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// The stages and their tasks
    List,
    /// Write a starter crate for STAGE into DIR (which must not exist, or be empty)
    New {
        /// 1 to 5
        stage: u8,
        /// Where the starter goes
        dir: PathBuf,
        /// Carry your own answers to the earlier stages' tasks over from this starter
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
    },
    /// The next hint for a task (each call climbs one rung: man page, the call, the pitfall)
    Hint {
        /// 1 to 5
        stage: u8,
        /// The task (`pivot-root` or `stage2/pivot-root`)
        task: String,
        /// Show this rung (1-3) instead of the next one
        #[arg(long, value_name = "N")]
        level: Option<usize>,
        /// The starter, where the ladder's state is kept [default: the current directory]
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// For maintainers: every starter builds, fails each of its tasks, and the reference
    /// passes them all (needs root: it grades)
    Check {
        /// Only these stages [default: every stage the grader has checks for]
        #[arg(long, value_delimiter = ',')]
        stage: Vec<u8>,
        /// Where the starters are built (shared by all of them, so that the dependencies
        /// build once) [default: target/labs of the reference]
        #[arg(long, value_name = "DIR")]
        target_dir: Option<PathBuf>,
    },
}

/// The reference's root: `--reference`, else the workspace isolab was built from.
pub fn reference_root(given: Option<PathBuf>) -> Result<PathBuf> {
    let root =
        given.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").to_path_buf());
    if !root.join(HINTS).is_file() {
        bail!(
            "{} has no {HINTS}: pass --reference with the isolab repository the labs come from",
            root.display()
        );
    }
    fs::canonicalize(&root).with_context(|| format!("cannot resolve {}", root.display()))
}

/// Runs `isolab lab`.
pub fn run(args: Args) -> Result<ExitCode> {
    let root = reference_root(args.reference)?;
    let catalogue = Catalogue::load(&root)?;
    match args.verb {
        Verb::List => list(&root, &catalogue),
        Verb::New { stage, dir, from } => {
            new(&root, &catalogue, stage, &dir, from.as_deref())?;
            let binary = &catalogue.stage(stage)?.binary;
            let dir = dir.display();
            out(&format!(
                "wrote the stage {stage} starter to {dir}\n  \
                 cd {dir} && cargo build        # builds as it is, offline\n  \
                 isolab lab hint {stage} TASK                # the next hint\n  \
                 sudo isolab grade {stage} --bin {dir}/target/debug/{binary}\n"
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Hint { stage, task, level, dir } => hint(&catalogue, stage, &task, level, &dir),
        Verb::Check { stage, target_dir } => {
            let target = target_dir.unwrap_or_else(|| root.join("target/labs"));
            check(&root, &catalogue, &stage, &target)
        }
    }
}

/// Writes `text` to stdout. A reader that went away (`isolab lab list | head -1`) is no
/// error: Rust ignores SIGPIPE, so the write fails with EPIPE, and `println!` would panic on
/// it; the rest of the output is dropped instead, as a program killed by SIGPIPE drops it.
pub(crate) fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn list(root: &Path, catalogue: &Catalogue) -> Result<ExitCode> {
    for stage in &catalogue.stage {
        let regions = reference_regions(root, &stage.crates)?;
        out(&format!("stage {} ({}):\n", stage.number, stage.binary))?;
        for task in catalogue.task.iter().filter(|t| regions::stage_of(&t.id) == stage.number) {
            let marked: Vec<_> = regions.iter().filter(|(_, r)| r.task == task.id).collect();
            let title = marked.first().map(|(_, r)| r.title.as_str()).unwrap_or("(not marked)");
            let files: Vec<String> = marked.iter().map(|(f, _)| f.display().to_string()).collect();
            let mut files_shown = files.clone();
            files_shown.dedup();
            let graded = if grade::has_check(&task.id) { "graded" } else { "not graded yet" };
            out(&format!(
                "  {:<26} {title}\n  {:<26} in {} ({graded})\n",
                task.id,
                "",
                files_shown.join(", ")
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a starter remembers: its stage, and how many rungs of each ladder were shown.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    stage: u8,
    shown: BTreeMap<String, usize>,
}

/// Writes the starter of `stage` into `dir`, which must be outside the reference and not
/// exist or be an empty directory. If writing fails, what it wrote is removed again: `dir`
/// itself (and the parents it made) if it did not exist, else what is in it (it was empty).
pub fn new(
    root: &Path,
    catalogue: &Catalogue,
    stage: u8,
    dir: &Path,
    from: Option<&Path>,
) -> Result<()> {
    let target = Target::check(root, dir)?;
    let written = write_starter(root, catalogue, stage, dir, from);
    if written.is_err() {
        target.undo(dir);
    }
    written
}

/// Where a starter goes, checked before anything is written.
struct Target {
    /// The first directory on the way that did not exist (`dir` itself, or a parent that
    /// `create_dir_all` makes): removing it removes all that was written. None when `dir`
    /// was there already (empty).
    made: Option<PathBuf>,
}

impl Target {
    fn check(root: &Path, dir: &Path) -> Result<Target> {
        let shown = dir.display();
        let absolute =
            std::env::current_dir().context("cannot read the current directory")?.join(dir);
        let (resolved, made) = match fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_symlink() => match fs::metadata(dir) {
                Err(_) => bail!(
                    "{shown} is a symlink to {}, which does not exist: give a new directory",
                    fs::read_link(dir).map(|t| t.display().to_string()).unwrap_or_default()
                ),
                Ok(meta) if !meta.is_dir() => {
                    bail!("{shown} is a symlink to a file, not a directory: give a new directory")
                }
                Ok(_) => (fs::canonicalize(dir)?, None),
            },
            Ok(meta) if !meta.is_dir() => {
                bail!("{shown} is a file, not a directory: give a new directory")
            }
            Ok(_) => (fs::canonicalize(dir)?, None),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // The nearest existing ancestor, resolved, and the rest as given: a `..` in
                // the rest would climb out of what was resolved.
                let existing = absolute
                    .ancestors()
                    .find(|ancestor| fs::symlink_metadata(ancestor).is_ok())
                    .context("no ancestor of the directory exists")?;
                let rest = absolute.strip_prefix(existing).unwrap_or(Path::new(""));
                if rest.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                    bail!("{shown}: give a path without `..` in its part that does not exist yet");
                }
                let first_missing = rest.components().next().map(|c| existing.join(c));
                let resolved = fs::canonicalize(existing)
                    .with_context(|| format!("cannot resolve {}", existing.display()))?
                    .join(rest);
                (resolved, first_missing)
            }
            Err(error) => bail!("cannot look at {shown}: {error}"),
        };
        if made.is_none() && fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
            bail!("{shown} exists and is not empty: give a new directory");
        }
        // A starter copies the reference's crates: inside the reference, it would copy
        // itself into itself until the path is too long.
        if resolved.starts_with(root) {
            bail!(
                "{shown} is inside the reference {}: a starter there would copy itself into \
                 itself; give a directory outside it",
                root.display()
            );
        }
        if root.starts_with(&resolved) {
            bail!(
                "the reference {} is inside {shown}: give a directory outside it",
                root.display()
            );
        }
        Ok(Target { made })
    }

    /// Removes what a failed `lab new` wrote, and nothing else.
    fn undo(&self, dir: &Path) {
        match &self.made {
            Some(made) => {
                let _ = fs::remove_dir_all(made);
            }
            // It was empty before: whatever is in it now is the starter's.
            None => {
                for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                    let path = entry.path();
                    let _ = match entry.file_type() {
                        Ok(kind) if kind.is_dir() => fs::remove_dir_all(&path),
                        _ => fs::remove_file(&path),
                    };
                }
            }
        }
    }
}

fn write_starter(
    root: &Path,
    catalogue: &Catalogue,
    stage: u8,
    dir: &Path,
    from: Option<&Path>,
) -> Result<()> {
    let info = catalogue.stage(stage)?;
    // Every task of the stage and of the earlier ones must be marked and have hints: a
    // starter whose stubs say nothing, or a task nothing marks, is the catalogue's bug.
    let regions = reference_regions(root, &info.crates)?;
    for (file, region) in &regions {
        if region.stage() <= stage {
            catalogue.task(region.stage(), &region.task).with_context(|| {
                format!("{}: {} has no hints in {HINTS}", file.display(), region.task)
            })?;
        }
    }
    let first_hint = |task: &str| {
        catalogue.task(regions::stage_of(task), task).ok().and_then(|t| t.hints.first().cloned())
    };
    for krate in &info.crates {
        copy_crate(&root.join(krate), &dir.join(krate), &|relative, text| {
            let name = Path::new(krate).join(relative).display().to_string();
            // Every region is stubbed, a later stage's too: its body is a later lab's
            // answer, and this stage's binary never runs it (the curriculum: stage N uses
            // only chapters <= N), so its `todo!` builds and changes nothing graded.
            let stubbed = regions::stub(&name, text, |region| {
                let hint = first_hint(&region.task).unwrap_or_default();
                Some(if region.stage() <= stage {
                    format!("{}: {} (first hint: {hint})", region.task, region.title)
                } else {
                    format!("{}: {} (stage {}'s lab)", region.task, region.title, region.stage())
                })
            })?;
            match from {
                Some(from) => match fs::read_to_string(from.join(krate).join(relative)) {
                    Ok(theirs) => regions::carry(&name, &stubbed, &theirs, |r| r.stage() < stage),
                    Err(_) => Ok(stubbed),
                },
                None => Ok(stubbed),
            }
        })?;
    }
    write_manifest(root, dir, &info.crates)?;
    fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))
        .with_context(|| format!("cannot copy Cargo.lock to {}", dir.display()))?;
    let _ = fs::copy(root.join("rustfmt.toml"), dir.join("rustfmt.toml"));
    fs::write(dir.join(".gitignore"), "/target\n")?;
    let state = State { stage, shown: BTreeMap::new() };
    fs::write(dir.join(STATE), serde_json::to_string_pretty(&state)?)?;
    fs::write(dir.join("LAB.md"), readme(catalogue, &regions, info))?;
    Ok(())
}

/// Copies `from` to `to`, every `.rs` file through `transform` (given its path relative to
/// `from` and its text); `target` directories are left out.
fn copy_crate(
    from: &Path,
    to: &Path,
    transform: &dyn Fn(&Path, &str) -> Result<String>,
) -> Result<()> {
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        fs::create_dir_all(to.join(&relative))
            .with_context(|| format!("cannot create {}", to.join(&relative).display()))?;
        for entry in fs::read_dir(from.join(&relative))
            .with_context(|| format!("cannot list {}", from.join(&relative).display()))?
        {
            let entry = entry?;
            let name = relative.join(entry.file_name());
            let source = from.join(&name);
            if entry.file_type()?.is_dir() {
                if entry.file_name() != "target" {
                    pending.push(name);
                }
            } else if source.extension().is_some_and(|ext| ext == "rs") {
                let text = fs::read_to_string(&source)
                    .with_context(|| format!("cannot read {}", source.display()))?;
                fs::write(to.join(&name), transform(&name, &text)?)
                    .with_context(|| format!("cannot write {}", to.join(&name).display()))?;
            } else {
                fs::copy(&source, to.join(&name))
                    .with_context(|| format!("cannot copy {}", source.display()))?;
            }
        }
    }
    Ok(())
}

/// The starter's `Cargo.toml`: the reference's workspace manifest (its dependency versions,
/// lints and profiles, so that the copied `Cargo.lock` fits) with only the copied crates.
fn write_manifest(root: &Path, dir: &Path, crates: &[String]) -> Result<()> {
    let text = fs::read_to_string(root.join("Cargo.toml")).context("cannot read Cargo.toml")?;
    let mut manifest: toml::Table = toml::from_str(&text).context("Cargo.toml is not valid")?;
    let workspace = manifest
        .get_mut("workspace")
        .and_then(|w| w.as_table_mut())
        .context("Cargo.toml has no [workspace]")?;
    workspace.insert(
        "members".into(),
        toml::Value::Array(crates.iter().map(|c| toml::Value::String(c.clone())).collect()),
    );
    // Path dependencies whose crate was not copied would point nowhere.
    if let Some(deps) = workspace.get_mut("dependencies").and_then(|d| d.as_table_mut()) {
        deps.retain(|_, value| match value.get("path").and_then(|p| p.as_str()) {
            Some(path) => crates.iter().any(|c| c == path),
            None => true,
        });
    }
    let header = "# A lab starter written by `isolab lab new`: the reference's workspace manifest \
                  with only\n# the crates this stage needs. Cargo.lock is the reference's: it \
                  builds offline.\n";
    fs::write(dir.join("Cargo.toml"), format!("{header}{}", toml::to_string(&manifest)?))
        .with_context(|| format!("cannot write {}/Cargo.toml", dir.display()))
}

fn readme(
    catalogue: &Catalogue,
    regions: &[(PathBuf, regions::Region)],
    info: &StageInfo,
) -> String {
    let mut text = format!(
        "# Lab: stage {}\n\nEvery `todo!()` between `// LAB … BEGIN` and `// LAB END` is yours to \
         write; the rest is given. Keep the function signatures and the marker lines.\n\n",
        info.number
    );
    for task in catalogue.task.iter().filter(|t| regions::stage_of(&t.id) <= info.number) {
        let places: Vec<String> = regions
            .iter()
            .filter(|(_, r)| r.task == task.id)
            .map(|(f, r)| format!("{}:{}", f.display(), r.begin + 1))
            .collect();
        let stage = regions::stage_of(&task.id);
        text.push_str(&format!("- `{}`: {}\n", task.id, places.join(", ")));
        text.push_str(&format!("  (`isolab lab hint {stage} {}`)\n", task.id));
    }
    text.push_str(&format!(
        "\nBuild: `cargo build`. Grade: `sudo isolab grade {} --bin target/debug/{}`.\n",
        info.number, info.binary
    ));
    text
}

fn hint(
    catalogue: &Catalogue,
    stage: u8,
    word: &str,
    level: Option<usize>,
    dir: &Path,
) -> Result<ExitCode> {
    let task = catalogue.task(stage, word)?;
    let state_path = dir.join(STATE);
    let mut state: Option<State> =
        fs::read_to_string(&state_path).ok().and_then(|text| serde_json::from_str(&text).ok());
    let shown = state.as_ref().and_then(|s| s.shown.get(&task.id).copied()).unwrap_or(0);
    let rung = match level {
        Some(level) if level == 0 || level > task.hints.len() => {
            bail!("{} has hints 1 to {}", task.id, task.hints.len())
        }
        Some(level) => level,
        None => (shown + 1).min(task.hints.len()),
    };
    out(&format!("{} hint {rung} of {}: {}\n", task.id, task.hints.len(), task.hints[rung - 1]))?;
    if rung < task.hints.len() {
        out("(ask again for the next one)\n")?;
    }
    if let Some(state) = state.as_mut() {
        state.shown.insert(task.id.clone(), rung.max(shown));
        fs::write(&state_path, serde_json::to_string_pretty(state)?)
            .with_context(|| format!("cannot write {}", state_path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `lab check`: each stage's starter builds and fails every task of its stage; the reference
/// passes every task. Exit 0 only when all of that holds.
fn check(root: &Path, catalogue: &Catalogue, only: &[u8], target: &Path) -> Result<ExitCode> {
    let bin_dir = crate::compare::bin_dir()?;
    let stages: Vec<u8> = catalogue
        .stage
        .iter()
        .map(|s| s.number)
        .filter(|n| if only.is_empty() { grade::graded_stage(*n) } else { only.contains(n) })
        .collect();
    let work = tempfile::Builder::new().prefix("isolab-lab-check-").tempdir()?;
    let mut problems = Vec::new();
    for stage in stages {
        let info = catalogue.stage(stage)?;
        let starter = work.path().join(format!("stage{stage}"));
        new(root, catalogue, stage, &starter, None)?;
        let built = Command::new("cargo")
            .args(["build", "--offline", "--quiet", "--bin", &info.binary])
            .current_dir(&starter)
            .env("CARGO_TARGET_DIR", target)
            .status()
            .context("cannot run cargo")?;
        if !built.success() {
            problems.push(format!("stage {stage}: the starter does not build ({built})"));
            continue;
        }
        let stubbed = grade::grade(
            stage,
            &target.join("debug").join(&info.binary),
            None,
            &grade::Limits::default(),
        )?;
        for outcome in stubbed.outcomes.iter().filter(|o| regions::stage_of(&o.task) == stage) {
            let verdict = if outcome.passed { "PASSES (it must fail)" } else { "fails" };
            out(&format!("stage {stage} starter:   {:<26} {verdict}\n", outcome.task))?;
            if outcome.passed {
                problems.push(format!("stage {stage}: the starter passes {}", outcome.task));
            }
        }
        let reference =
            grade::grade(stage, &bin_dir.join(&info.binary), None, &grade::Limits::default())?;
        for outcome in &reference.outcomes {
            let verdict = if outcome.passed { "passes" } else { "FAILS (it must pass)" };
            out(&format!("stage {stage} reference: {:<26} {verdict}\n", outcome.task))?;
            if !outcome.passed {
                problems.push(format!(
                    "stage {stage}: the reference fails {}: {}",
                    outcome.task, outcome.happened
                ));
            }
        }
    }
    if problems.is_empty() {
        out("lab check: ok\n")?;
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        eprintln!("lab check: {problem}");
    }
    Ok(ExitCode::from(1))
}
