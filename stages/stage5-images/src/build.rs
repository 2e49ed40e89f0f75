//! `build`: an image from a Dockerfile, one step at a time.
//!
//! Each instruction makes a new image over the last one: RUN runs its command in a container
//! of this stage over the last image's layers (stage 4's `run`, the user namespace and all)
//! and its upper becomes the next layer; COPY makes a layer of the context's files; the other
//! instructions change only the config. A step whose key (the last image, the instruction,
//! and for COPY the sources' content) was built before is taken from the build cache: an
//! unchanged rebuild runs nothing and gives the same digests.

use std::path::{Path, PathBuf};

use clap::Args;
use libisolab::container::cgroup::CgroupsWhen;
use libisolab::digest::Digest;
use libisolab::image::config;
use libisolab::image::dockerfile::{self, Instruction, Kind};
use libisolab::image::images::{self as store_images, Image, Images};
use libisolab::image::layer::{self, Compression};
use libisolab::process::Failure;
use libisolab::store::Store;
use libisolab::Error;
use libisolab::{changes, copy};

use crate::{parse, run, Verb};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The image's name: NAME[:TAG]
    #[arg(long, short, value_name = "NAME[:TAG]")]
    tag: String,
    /// The Dockerfile [default: CONTEXT/Dockerfile]
    #[arg(long, short, value_name = "FILE")]
    file: Option<PathBuf>,
    /// A build argument for ARG (repeatable)
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_pair)]
    build_args: Vec<(String, String)>,
    /// Run every step, even those the build cache has
    #[arg(long)]
    no_cache: bool,
    /// The RUN steps' cgroups, as `run --cgroups` (optional: without limits where you
    /// cannot have them, e.g. rootless on cgroup v1)
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = CgroupsWhen::Required)]
    cgroups: CgroupsWhen,
    /// The directory COPY takes its files from
    #[arg(value_name = "CONTEXT")]
    context: PathBuf,
}

/// The largest Dockerfile read (docker has no limit; a megabyte is thousands of steps).
const DOCKERFILE_MAX: u64 = 1 << 20;

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("invalid --build-arg '{text}': expected NAME=VALUE")),
    }
}

fn say(line: &str) {
    println!("{line}");
}

// ANCHOR: build
/// `build -t NAME[:TAG] [-f FILE] CONTEXT`
pub fn build(store: &Store, args: &BuildArgs) -> Result<u8, Failure> {
    if !args.context.is_dir() {
        return Err(Error::Invalid(format!(
            "the build context {} is not a directory: give the directory whose files COPY \
             takes (often `.`)",
            args.context.display()
        ))
        .into());
    }
    // docker leaves out what .dockerignore names; isolab does not read it, and copying what
    // its author meant to keep out (a secret, say) would be worse than stopping.
    let ignore = args.context.join(".dockerignore");
    if ignore.exists() {
        return Err(Error::Invalid(format!(
            "{} exists, and isolab does not read it: COPY would take the files it names; move \
             them out of the context and remove it",
            ignore.display()
        ))
        .into());
    }
    let file = args.file.clone().unwrap_or_else(|| args.context.join("Dockerfile"));
    let metadata = std::fs::metadata(&file).map_err(|error| {
        Error::io("stat", &file, &error).hint("give the Dockerfile with -f FILE")
    })?;
    if !metadata.is_file() || metadata.len() > DOCKERFILE_MAX {
        return Err(Error::Invalid(format!(
            "{} is not a Dockerfile: not a regular file of at most {} bytes",
            file.display(),
            DOCKERFILE_MAX
        ))
        .into());
    }
    let text = std::fs::read_to_string(&file).map_err(|error| {
        Error::io("open", &file, &error).hint("give the Dockerfile with -f FILE")
    })?;
    let dockerfile = dockerfile::parse(&file, &text, &args.build_args)?;
    let images = Images::open(store)?;
    // Until the last step is tagged, the steps' images are reachable only through the build
    // cache: gc keeps away for the whole build.
    let _writing = images.writing()?;
    let steps = dockerfile.instructions.len();
    // The image so far: none before FROM.
    let mut current: Option<Image> = None;
    for unused in &dockerfile.unused_build_args {
        say(&format!("warning: --build-arg {unused} is not declared by any ARG"));
    }
    for (number, instruction) in dockerfile.instructions.iter().enumerate() {
        say(&format!("step {}/{steps}: {}", number + 1, instruction.text));
        let at = |what: String| {
            Error::Invalid(format!("{}:{}: {what}", file.display(), instruction.line))
        };
        if let Kind::From { image } = &instruction.kind {
            current = Some(match image.as_str() {
                "scratch" => images.write(Vec::new(), &config::scratch(), None)?,
                word => images.find(word).map_err(|error| at(error.to_string()))?,
            });
            say(&format!("  -> {}", current.as_ref().map(Image::id).unwrap_or_default()));
            continue;
        }
        if let Kind::Arg { .. } = &instruction.kind {
            // Substituted by the parser already; nothing to record.
            continue;
        }
        let Some(parent) = &current else {
            return Err(at("no FROM before this instruction".to_string()).into());
        };
        let sources = dockerfile.copy_sources_digest(instruction, &args.context)?;
        let parent_key = parent.body.config().digest().to_string();
        let key = dockerfile::cache_key(&parent_key, instruction, sources.as_ref());
        if !args.no_cache {
            if let Some(cached) = images.cached(&key) {
                say(&format!("  -> {} (cached)", cached.id()));
                current = Some(cached);
                continue;
            }
        }
        let next = step(store, &images, parent, instruction, args).map_err(|failure| Failure {
            message: format!("{}:{}: {}", file.display(), instruction.line, failure.message),
            ..failure
        })?;
        images.remember(&key, &next)?;
        say(&format!("  -> {}", next.id()));
        current = Some(next);
    }
    let Some(last) = current else {
        return Err(Error::Invalid(format!("{}: no FROM: nothing to build", file.display())).into());
    };
    let (tagged, _) = images.tag(&last.digest()?.to_string(), &args.tag)?;
    say(&format!("built {} {} ({})", tagged.shown(), tagged.id(), tagged.manifest.digest()));
    Ok(0)
}
// ANCHOR_END: build

/// One step that is not in the cache: a new image over `parent`.
fn step(
    store: &Store,
    images: &Images,
    parent: &Image,
    instruction: &Instruction,
    args: &BuildArgs,
) -> Result<Image, Failure> {
    let created = store_images::created()?;
    match &instruction.kind {
        Kind::Run { command } => {
            run_step(store, images, parent, instruction, &command.argv(), &created, args, None)
        }
        Kind::Copy { sources, dest, chown } => copy_step(
            images,
            parent,
            instruction,
            &args.context,
            sources,
            dest,
            chown.as_deref(),
            &created,
        ),
        Kind::Workdir { .. } => {
            // As docker does, WORKDIR makes its directory if the image lacks it: `mkdir -p` in
            // a container over the image, whose upper is the step's layer (what is on the way
            // keeps its owner and mode: overlayfs copies it up).
            let mut changed = parent.config.clone();
            config::apply(&mut changed, &instruction.kind);
            let workdir = changed.config().as_ref().and_then(|c| c.working_dir().clone());
            let workdir = inside_the_image(Path::new(&workdir.unwrap_or_default()));
            let lowers = images.lowers(parent)?;
            if workdir.as_os_str().is_empty() || exists_in(&lowers, &workdir) {
                config::add_history_only(&mut changed, &created, &instruction.text);
                return Ok(images.write(parent.body.layers().clone(), &changed, None)?);
            }
            if !exists_in(&lowers, Path::new("bin/mkdir")) {
                return Err(Error::Invalid(format!(
                    "WORKDIR /{} is not in the image, which has no /bin/mkdir to make it: \
                     COPY a directory there first",
                    workdir.display()
                ))
                .into());
            }
            let target = format!("/{}", workdir.display());
            let made = ["/bin/mkdir", "-p", &target].map(String::from);
            let root = Some("0:0");
            let with_dir =
                run_step(store, images, parent, instruction, &made, &created, args, root)?;
            let mut changed = with_dir.config.clone();
            config::apply(&mut changed, &instruction.kind);
            Ok(images.write(with_dir.body.layers().clone(), &changed, None)?)
        }
        kind => {
            let mut changed = parent.config.clone();
            config::apply(&mut changed, kind);
            config::add_history_only(&mut changed, &created, &instruction.text);
            Ok(images.write(parent.body.layers().clone(), &changed, None)?)
        }
    }
}

/// Whether `relative` is in the image whose layers are `lowers` (topmost first): the first
/// layer that has it, or a whiteout of it, decides (opaque directories are not looked at: a
/// miss only costs a `mkdir -p` that finds the directory there).
fn exists_in(lowers: &[PathBuf], relative: &Path) -> bool {
    for lower in lowers {
        if let Ok(metadata) = std::fs::symlink_metadata(lower.join(relative)) {
            return !changes::is_whiteout(&metadata);
        }
    }
    false
}

// ANCHOR: run_step
/// RUN: the command runs in a new container over `parent` (a stage 5 `run`, so a user
/// namespace, an idmapped base and all); its upper becomes a layer, then it is removed.
/// `user`: whom it runs as, if not the image's USER (WORKDIR's `mkdir` runs as root).
#[allow(clippy::too_many_arguments)]
fn run_step(
    store: &Store,
    images: &Images,
    parent: &Image,
    instruction: &Instruction,
    command: &[String],
    created: &str,
    args: &BuildArgs,
    user: Option<&str>,
) -> Result<Image, Failure> {
    let name = format!(
        "build-{}",
        &Digest::of(format!("{}{created}", instruction.text).as_bytes()).hex()[..12]
    );
    // Every namespace, and only a loopback network: isolab never routes a container to the
    // outside, so a RUN that downloads fails here (give it the files with COPY).
    let mut argv: Vec<String> =
        ["stage5-images", "run", "--name", &name].map(String::from).to_vec();
    if args.cgroups == CgroupsWhen::Optional {
        argv.extend(["--cgroups", "optional"].map(String::from));
    }
    if let Some(user) = user {
        argv.extend(["--user".to_string(), user.to_string()]);
    }
    // The ARGs in scope reach the command as environment variables (an ENV of the image
    // with the same name wins, as in docker).
    let env =
        parent.config.config().as_ref().and_then(|config| config.env().clone()).unwrap_or_default();
    for (name, value) in &instruction.build_args {
        if !env.iter().any(|pair| pair.split_once('=').is_some_and(|(key, _)| key == name)) {
            argv.push("--env".to_string());
            argv.push(format!("{name}={value}"));
        }
    }
    argv.push(parent.digest()?.to_string());
    argv.push("--".to_string());
    argv.extend(command.iter().cloned());
    let Ok(crate::Cli { command: Verb::Run(run_args), .. }) = parse(argv) else {
        return Err(Error::Invalid(format!("RUN {command:?} could not be made a run")).into());
    };
    // The build's container goes whatever happens, unless the run failed before making it.
    let code = match run(*run_args, store, None) {
        Ok(code) => code,
        Err(failure) => {
            let _ = store.remove(&name, true);
            return Err(failure);
        }
    };
    let result = if code == 0 {
        let container = store.find(&name)?;
        images.commit_untagged(&container, created, &instruction.text).map_err(Failure::from)
    } else {
        Err(Error::Invalid(format!(
            "the command `{}` returned a non-zero code: {code}",
            instruction.text
        ))
        .into())
    };
    let _ = store.remove(&name, true);
    result
}
// ANCHOR_END: run_step

/// COPY: the sources, under `dest`, become a layer of their own (owned by root inside, or
/// by `--chown`).
#[allow(clippy::too_many_arguments)]
fn copy_step(
    images: &Images,
    parent: &Image,
    instruction: &Instruction,
    context: &Path,
    sources: &[String],
    dest: &str,
    chown: Option<&str>,
    created: &str,
) -> Result<Image, Failure> {
    let staging = tempdir_in(images.layout().root())?;
    let result = (|| {
        let workdir = parent
            .config
            .config()
            .as_ref()
            .and_then(|c| c.working_dir().clone())
            .unwrap_or_else(|| "/".into());
        let dest_path = if dest.starts_with('/') {
            PathBuf::from(dest)
        } else {
            Path::new(&workdir).join(dest)
        };
        let relative = inside_the_image(&dest_path);
        let target = staging.join(&relative);
        let into_dir = dest.ends_with('/') || sources.len() > 1;
        for from in dockerfile::resolve_copy_sources(context, sources)? {
            let metadata =
                std::fs::symlink_metadata(&from).map_err(|e| Error::io("stat", &from, &e))?;
            let to = if metadata.is_dir() {
                target.clone()
            } else if into_dir {
                target.join(from.file_name().unwrap_or_default())
            } else {
                target.clone()
            };
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io("mkdir", parent, &e))?;
            }
            if metadata.is_dir() {
                std::fs::create_dir_all(&to).map_err(|e| Error::io("mkdir", &to, &e))?;
                for entry in
                    std::fs::read_dir(&from).map_err(|e| Error::io("opendir", &from, &e))?
                {
                    let entry = entry.map_err(|e| Error::io("readdir", &from, &e))?;
                    copy::copy_tree(&entry.path(), &to.join(entry.file_name()))?;
                }
            } else {
                copy::copy_tree(&from, &to)?;
            }
        }
        let (uid, gid) = match chown {
            Some(owner) => {
                let lowers = images.lowers(parent)?;
                config::resolve_user(owner, &lowers)?
            }
            None => (0, 0),
        };
        // What COPY puts in the image is root's (or --chown's), whoever owns the context.
        own_tree(&target, uid, gid)?;
        // The directories on the way to dest are the image's: root's, 0755.
        let mut on_the_way = relative.parent().map(Path::to_path_buf);
        while let Some(dir) = on_the_way.filter(|dir| !dir.as_os_str().is_empty()) {
            let _ = std::os::unix::fs::chown(staging.join(&dir), Some(0), Some(0));
            on_the_way = dir.parent().map(Path::to_path_buf);
        }
        let (descriptor, packed) =
            images.add_layer(|out| layer::pack_dir(&staging, out, Compression::Gzip))?;
        let mut changed = parent.config.clone();
        config::add_layer(&mut changed, &packed.diff_id, created, &instruction.text);
        let mut layers = parent.body.layers().clone();
        layers.push(descriptor);
        images.write(layers, &changed, None)
    })();
    let _ = copy::remove_tree(&staging);
    Ok(result?)
}

/// `path` as a path inside the image, relative to its `/`: `..` stops at `/`, as a path
/// resolved inside a root filesystem does (docker cleans COPY's destination the same way), so
/// that `COPY f /../../etc/x` writes the image's `/etc/x`, never a host file outside the
/// staging directory.
fn inside_the_image(path: &Path) -> PathBuf {
    let mut inside = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(part) => inside.push(part),
            std::path::Component::ParentDir => {
                inside.pop();
            }
            _ => {}
        }
    }
    inside
}

/// Gives everything under `path` (our own staging copy: a symlink is changed, never followed)
/// the owner `uid`:`gid`.
fn own_tree(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    let metadata = std::fs::symlink_metadata(path).map_err(|e| Error::io("lstat", path, &e))?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|error| Error::io("lchown", path, &error))?;
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| Error::io("opendir", path, &e))? {
            let entry = entry.map_err(|error| Error::io("readdir", path, &error))?;
            own_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// A fresh directory for a COPY's files, in the store (the same filesystem as its blobs).
fn tempdir_in(root: &Path) -> Result<PathBuf, Failure> {
    for attempt in 0..100u32 {
        let dir = root.join(format!(".copying-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(Error::io("mkdir", &dir, &error).into()),
        }
    }
    Err(Error::Invalid(format!("no free temporary directory in {}", root.display())).into())
}
