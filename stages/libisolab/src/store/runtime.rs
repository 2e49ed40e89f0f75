//! A runtime's side of the store, from the command line to the plan: what stage 4 (and every
//! later stage) does with a container of the store, written once, as `container::cgroup` is
//! for the cgroup.
//!
//! A new container is recorded from its command line ([`Spec`]); a stopped one runs again on
//! what its first run *resolved*, as its `config.json` recorded it ([`request`]): the
//! canonical path of its base (and, from chapter 5 on, the digest of its image). `start`
//! reads the saved command line again for its options (limits, network, command), never to
//! resolve anything again: a base whose path now leads elsewhere is refused, not silently
//! swapped. Nothing here prints: what to tell the user comes back as lines.

use std::ffi::OsString;
use std::path::PathBuf;

use nix::unistd::Uid;

use super::{check_name, Container, ImageRef, New, Storage, Store};
use crate::chroot;
use crate::container::{CommandArgs, ContainerArgs, Plan, Request};
use crate::error::Error;
use crate::idrange::Wanted;
use crate::process::Failure;

/// The command-line options of a container of the store, shared by every stage from 4 on.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The container's name, unique in the store, also the name of its cgroup [default:
    /// c-<6 hex digits of its id>]
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,
    /// Remove the container when its command ends
    #[arg(long)]
    pub rm: bool,
    /// How the container's root is made from the base: overlay (its own upper over the
    /// read-only base) or copy (a full copy of the base)
    #[arg(long, value_name = "DRIVER", default_value = "overlay", value_parser = parse_storage)]
    pub storage: Storage,
}

fn parse_name(text: &str) -> Result<String, String> {
    check_name(text).map_err(|error| error.to_string())
}

fn parse_storage(text: &str) -> Result<Storage, String> {
    text.parse().map_err(|error: Error| error.to_string())
}

/// What the store keeps of a new container: its name, `--storage`, `--rm`, and the command
/// line, which `start` will read again for its options.
#[derive(Debug, Clone)]
pub struct Spec {
    store: StoreArgs,
    argv: Vec<String>,
    command: Vec<String>,
}

impl Spec {
    /// The spec of a container made by the command line `argv` (without the program's name),
    /// whose options are `store` and `command`. The store's files are JSON: every argument
    /// must be UTF-8 text.
    pub fn new(
        store: &StoreArgs,
        command: &CommandArgs,
        argv: impl IntoIterator<Item = OsString>,
    ) -> Result<Spec, Failure> {
        let text = |arg: OsString| {
            arg.into_string().map_err(|arg| {
                Failure::from(Error::Invalid(format!(
                    "argument {arg:?} is not UTF-8 text, which the store's JSON files must be"
                )))
            })
        };
        let argv = argv.into_iter().map(text).collect::<Result<_, _>>()?;
        let command = command.command.iter().cloned().map(text).collect::<Result<_, _>>()?;
        Ok(Spec { store: store.clone(), argv, command })
    }

    /// The container over the base the plan checked (and resolved: its canonical path is what
    /// the store records, and what a `start` runs on). In a user namespace, overlayfs is
    /// mounted by root of that namespace, who must own the upper (and `userxattr` keeps its
    /// marks in `user.*` xattrs, which that root may write).
    pub fn over(self, plan: &Plan) -> New {
        let map = plan.id_map();
        let root_outside = map.map(|map| (map.root_outside(), map.gid.outside));
        New {
            name: self.store.name,
            storage: self.store.storage,
            lowers: vec![plan.rootfs.clone()],
            image: None,
            userxattr: map.is_some(),
            // Rootless, that root is the caller, who owns what it makes anyway.
            owner: root_outside.filter(|&(uid, _)| uid != Uid::effective().as_raw()),
            remove: self.store.rm,
            argv: self.argv,
            command: self.command,
        }
    }
}

impl New {
    /// The same container over an image's layers (chapter 5): `lowers` topmost first, as
    /// `images` unpacked them, and the image they are, recorded for `start`, `rmi` and `gc`.
    pub fn over_image(self, image: ImageRef, lowers: Vec<PathBuf>) -> New {
        New { lowers, image: Some(image), ..self }
    }
}

// ANCHOR: request
/// The request for a container of the store: a new one's from its options; a `stopped` one's
/// on what its first run resolved and recorded. Its base is the canonical path in its config
/// (whatever `--rootfs` said then, and wherever that path leads now), checked to resolve to
/// itself still; its user namespace gets the slot its files are owned by.
pub fn request(
    container: ContainerArgs,
    command: CommandArgs,
    stopped: Option<&Container>,
) -> Result<Request, Failure> {
    let mut request = Request::new(container, Some(command))?;
    if let Some(stopped) = stopped {
        request.rootfs = recorded_base(stopped)?;
        if let Some(owner) = stopped.config.owner {
            // Its upper is owned by the ids it ran on: it runs on those again.
            request.ids = Wanted::kept(owner, &stopped.dir);
        }
    }
    Ok(request)
}
// ANCHOR_END: request

/// The base `container` was made over, as its first run resolved it; refused if that path no
/// longer resolves to itself (a directory on the way replaced by a symlink, say).
fn recorded_base(container: &Container) -> Result<PathBuf, Error> {
    let config = &container.config;
    let Some(base) = config.lowers.first() else {
        return Err(Error::Invalid(format!(
            "{}/config.json records no base to start on",
            container.dir.display()
        )));
    };
    let now = chroot::check_rootfs(base)?;
    if &now != base {
        return Err(Error::Invalid(format!(
            "container {} was made over {}, which now resolves to {}: a start runs on what its \
             first run resolved, never on something else; `rm` it and `run` it again",
            config.name,
            base.display(),
            now.display()
        )));
    }
    Ok(now)
}

/// Cleans up what killed runtimes left in the store (the journal's gc): what it did, one line
/// each, for the user. A failure is only a warning: someone else's mess must not stop this
/// container.
pub fn collect_garbage(store: &Store) -> Vec<String> {
    // A store that is not the caller's: nothing to collect, and the create that follows
    // refuses it in one line of its own.
    if store.check_owner().is_err() {
        return Vec::new();
    }
    match store.settle_journal() {
        Ok(cleaned) => cleaned.iter().map(|cleaned| format!("gc: {cleaned}")).collect(),
        Err(error) => vec![format!("warning: gc of the store failed: {error}")],
    }
}

/// `--dry-run`'s text: the store's steps first and last, the container's plan between them
/// (see [`Plan::dry_run_between`]).
pub fn dry_run(plan: &Plan, container: &Container) -> String {
    let config = &container.config;
    let mut before = "# the store: nothing below is written (--dry-run)\n".to_string();
    before.push_str(&format!(
        "# container {} ({}), storage {}\n",
        config.name, config.id, config.storage
    ));
    before.push_str("runtime, first:\n");
    for step in container.create_steps() {
        before.push_str(&format!("  {step}\n"));
    }
    let mut after = "runtime, last:\n".to_string();
    for step in container.finish_steps() {
        after.push_str(&format!("  {step}\n"));
    }
    plan.dry_run_between(&before, &after)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::store::Config;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        container: ContainerArgs,
        #[command(flatten)]
        command: CommandArgs,
    }

    fn stopped(lowers: Vec<PathBuf>, owner: Option<(u32, u32)>) -> Container {
        let config = Config {
            id: "0123456789ab".into(),
            name: "web".into(),
            created: "2025-01-31T09:15:02.123456789Z".into(),
            storage: Storage::Overlay,
            lowers,
            image: None,
            userxattr: owner.is_some(),
            owner,
            remove: false,
            argv: Vec::new(),
            command: vec!["/bin/true".into()],
        };
        Container { config, dir: PathBuf::from("/store/containers/0123456789ab") }
    }

    fn parsed(rootfs: &std::path::Path) -> Cli {
        let rootfs = rootfs.to_str().unwrap();
        Cli::parse_from(["run", "--rootfs", rootfs, "--", "/bin/true"])
    }

    #[test]
    fn a_start_runs_on_the_recorded_base_not_on_what_the_command_line_now_names() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap().join("base");
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        // The saved command line said `--rootfs link`; the link now leads elsewhere.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&other, &link).unwrap();
        let cli = parsed(&link);
        let container = stopped(vec![base.clone()], Some((1_000_000, 1_000_000)));
        let request = request(cli.container, cli.command, Some(&container)).unwrap();
        assert_eq!(request.rootfs, base);
        assert_eq!(request.ids, Wanted::kept((1_000_000, 1_000_000), &container.dir));
    }

    #[test]
    fn a_recorded_base_that_resolves_elsewhere_now_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(real.join("elsewhere")).unwrap();
        // Recorded as a plain directory; replaced by a symlink since.
        std::os::unix::fs::symlink(real.join("elsewhere"), real.join("base")).unwrap();
        let cli = parsed(&real.join("base"));
        let container = stopped(vec![real.join("base")], None);
        let error = request(cli.container, cli.command, Some(&container)).unwrap_err();
        let error = error.to_string();
        assert!(error.contains("which now resolves to"), "{error}");
        assert!(error.contains(&real.join("elsewhere").display().to_string()), "{error}");
    }

    #[test]
    fn a_new_container_takes_its_options_as_given() {
        let tmp = tempfile::tempdir().unwrap();
        let cli = parsed(tmp.path());
        let request = request(cli.container, cli.command, None).unwrap();
        assert_eq!(request.rootfs, tmp.path());
        assert_eq!(request.ids, Wanted::Free);
    }
}
