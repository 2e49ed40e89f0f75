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
/// each; or says there was nothing to do.
pub fn run(args: Args) -> Result<ExitCode> {
    let hierarchy = cgroups::detect(Path::new("/sys/fs/cgroup"), &Kernel)?;
    let removed = cgroups::gc::gc_for(&hierarchy, Uid::effective(), Rc::new(Kernel))?;
    if removed.is_empty() {
        println!("no stale isolab cgroups");
    }
    for stale in removed {
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
