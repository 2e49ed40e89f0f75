//! `isolab gc`: removes what killed runtimes left behind.
//!
//! Stage 3 names a container's cgroup `isolab/<name>-<runtime pid>`; a runtime killed with
//! SIGKILL leaves it behind, and it is stale once no process with that pid runs. Stage 4 keeps
//! containers in a store whose state says `running` until the runtime records the exit; a
//! killed runtime never does. The work is the library's ([`libisolab::cgroups::gc`],
//! [`libisolab::store::gc`]); this verb only says what it did.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;

use anyhow::Context;
use anyhow::Result;
use libisolab::cgroups::{self, Kernel};
use libisolab::store;
use nix::unistd::Uid;

/// `isolab gc [--root DIR]`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The container store to clean [default: $ISOLAB_ROOT, else /var/lib/isolab as root,
    /// $XDG_DATA_HOME/isolab otherwise]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

/// Removes the stale cgroups this user may remove and cleans the container store, one line
/// each; or says there was nothing to do. Without root and a delegated cgroup subtree, the
/// host's cgroups are not the user's: one line says so, and their store is cleaned.
pub fn run(args: Args) -> Result<ExitCode> {
    // A --root that is not a directory is a mistake (a file named instead of its folder):
    // refuse it before anything is cleaned, rather than find "nothing stale" in it.
    if let Some(root) = &args.root {
        check_root(root)?;
    }
    let hierarchy = cgroups::detect(Path::new("/sys/fs/cgroup"), &Kernel)?;
    let collected = cgroups::gc::gc_for(&hierarchy, Uid::effective(), Rc::new(Kernel))?;
    if let Some(not_theirs) = collected.not_theirs {
        println!("{not_theirs}");
    } else if collected.removed.is_empty() {
        println!("no stale isolab cgroups");
    }
    for stale in collected.removed {
        println!("{stale}");
    }

    let root = match args.root {
        Some(root) => root,
        None => store::default_root()?,
    };
    let cleaned = store::gc(&root)
        .with_context(|| format!("cleaning the container store {}", root.display()))?;
    if cleaned.is_empty() {
        println!("no stale containers in {}", root.display());
    }
    for stale in cleaned {
        println!("{stale}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A store named with `--root` must be a directory, or not exist yet (then it holds nothing).
fn check_root(root: &Path) -> Result<()> {
    match std::fs::metadata(root) {
        Ok(meta) if !meta.is_dir() => anyhow::bail!(
            "--root {} is not a directory: a container store is the directory given to the \
             stages' --root",
            root.display()
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_that_is_a_file_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("store");
        std::fs::write(&file, "").unwrap();
        let error = check_root(&file).unwrap_err().to_string();
        assert!(error.starts_with(&format!("--root {} is not a directory", file.display())));
        assert!(check_root(tmp.path()).is_ok());
        assert!(check_root(&tmp.path().join("not-yet")).is_ok());
    }
}
