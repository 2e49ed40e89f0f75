//! The image commands: `import`, `commit`, `images`, `history`, `tag`, `rmi`, `inspect`,
//! `save`, `load`, `df`, `gc`; and what `run` takes from an image. Each reads or changes the
//! store's images (`libisolab::image`) and prints what it did.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::Args;
use libisolab::cgroups::format_size;
use libisolab::image::images::{Image, Images};
use libisolab::image::{archive, config};
use libisolab::process::Failure;
use libisolab::store::{self, Container, ImageRef, Status, Store};
use libisolab::user::User;
use libisolab::{cli, Error};

use crate::commands::print_table;
use crate::RunArgs;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A directory (a root filesystem, e.g. from rootfs-builder) or a tar (gzip or not)
    #[arg(value_name = "DIR|TAR")]
    source: PathBuf,
    /// The image's name: NAME[:TAG]
    #[arg(value_name = "NAME[:TAG]")]
    name: String,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The stopped container's name or id
    #[arg(value_name = "CONTAINER")]
    container: String,
    /// The new image's name: NAME[:TAG]
    #[arg(value_name = "NAME[:TAG]")]
    name: String,
    /// What the history says made this layer [default: the container's command]
    #[arg(long, short, value_name = "TEXT")]
    message: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Show each image's manifest digest
    #[arg(long)]
    digests: bool,
}

#[derive(Debug, Args)]
pub struct ImageArg {
    /// The image: NAME[:TAG], an id, or sha256:DIGEST
    #[arg(value_name = "IMAGE")]
    image: String,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The image to name
    #[arg(value_name = "IMAGE")]
    source: String,
    /// Its new name: NAME[:TAG]
    #[arg(value_name = "NAME[:TAG]")]
    target: String,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// The images: tags, ids or digests
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<String>,
    /// Remove every tag of an id, and a tag even if containers use the image (they keep
    /// its layers)
    #[arg(long, short)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image
    #[arg(value_name = "IMAGE")]
    image: String,
    /// The manifest and config as JSON, for scripts
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// The images to save (tags)
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<String>,
    /// The tar to write
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The tar to read: an OCI image layout, or a `docker save` tar
    #[arg(long, short, value_name = "FILE")]
    input: PathBuf,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Also drop the build cache (the next build runs every step again)
    #[arg(long)]
    build_cache: bool,
}

fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

// ANCHOR: for_run
/// What `run` takes from an image. A new container: the image IMAGE names, its layers
/// unpacked (once) and stacked topmost first; a stopped one: the layers its first run
/// recorded and the image by its digest, never by what its name means now. Fills in, from the
/// image's config, what the command line leaves out: the command (Entrypoint + Cmd), the
/// environment, the working directory, the user. `None` for stage 4's `--rootfs` base.
pub fn for_run(
    args: &mut RunArgs,
    store: &Store,
    stopped: Option<&Container>,
) -> Result<Option<(ImageRef, Vec<PathBuf>)>, Failure> {
    let (image, reference, lowers) = match (stopped, &args.image, &args.container.rootfs) {
        (Some(container), _, _) => match &container.config.image {
            None => return Ok(None),
            Some(recorded) => {
                let image = Images::open(store)?.find(&recorded.manifest)?;
                (image, recorded.clone(), container.config.lowers.clone())
            }
        },
        (None, Some(_), Some(_)) => {
            return Err(invalid("give an image or --rootfs, not both"));
        }
        (None, None, None) => {
            let first = args.command.command.first().map(|arg| arg.to_string_lossy());
            if let Some(first) = first.filter(|first| !first.starts_with('/')) {
                return Err(invalid(&format!(
                    "no image before --: `run {first} -- CMD` runs the image {first} (what \
                     follows -- is the command)"
                )));
            }
            return Err(invalid(
                "give an image to run (`images` lists them; import, build or load one), or \
                 --rootfs DIR",
            ));
        }
        (None, None, Some(_)) => {
            if args.command.command.is_empty() {
                return Err(invalid("give the command to run after --"));
            }
            return Ok(None);
        }
        (None, Some(_), None) if args.store.storage == store::Storage::Copy => {
            return Err(invalid(
                "an image's layers are stacked by overlayfs: --storage copy takes a directory \
                 (--rootfs DIR), not an image",
            ));
        }
        (None, Some(word), None) => {
            let images = Images::open(store)?;
            let image = images.find(word)?;
            // Unpacked once, the first time any container needs them (a dry run too: its plan
            // is checked on the real layers, and a USER name read in their /etc/passwd). A dry
            // run promises to write nothing of the plan it prints, so it says what it unpacked.
            let missing = if args.dry_run { images.missing_layers(&image)? } else { 0 };
            let lowers = images.lowers(&image)?;
            if missing > 0 {
                let (layers, them) =
                    if missing == 1 { ("layer", "it") } else { ("layers", "them") };
                libisolab::cli::say(
                    crate::PROGRAM,
                    &[format!(
                        "the dry run unpacked {missing} {layers} of {word} into the store's \
                         layers/: its plan is checked on {them} (a run unpacks {them} once, the \
                         same way)"
                    )],
                );
            }
            let reference = image.reference(word)?;
            (image, reference, lowers)
        }
    };
    let given: Vec<String> =
        args.command.command.iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
    let user_env: Vec<(String, String)> = args
        .command
        .env
        .iter()
        .map(|(key, value)| {
            (key.to_string_lossy().into_owned(), value.to_string_lossy().into_owned())
        })
        .collect();
    let workdir = args.command.workdir.to_string_lossy().into_owned();
    let workdir = args.workdir_given.then_some(workdir.as_str());
    let launch = config::launch(&image.config, &given, &user_env, workdir)?;
    args.command.command = launch.argv.into_iter().map(OsString::from).collect();
    args.command.env =
        launch.env.into_iter().map(|(key, value)| (key.into(), value.into())).collect();
    args.command.workdir = PathBuf::from(launch.workdir);
    if let (None, Some(user)) = (&args.container.user, &launch.user) {
        let (uid, gid) = config::resolve_user(user, &lowers)?;
        args.container.user = Some(User { uid, gid });
    }
    // HOME is the user's from the image's /etc/passwd, unless the image or --env set it.
    let has_home = args.command.env.iter().any(|(key, _)| key == "HOME");
    if let (false, Some(user)) = (has_home, &args.container.user) {
        // Only a default: an /etc/passwd the lookup will not read (a link) leaves HOME as is.
        if let Ok(Some(home)) = config::home_of(user.uid, &lowers) {
            args.command.env.push(("HOME".into(), home.into()));
        }
    }
    // The plan checks its base as stage 4 checked --rootfs: the topmost layer stands for it.
    args.container.rootfs = lowers.first().cloned();
    Ok(Some((reference, lowers)))
}
// ANCHOR_END: for_run

fn invalid(text: &str) -> Failure {
    Error::Invalid(text.to_string()).into()
}

/// `import DIR|TAR NAME[:TAG]`
pub fn import(store: &Store, args: &ImportArgs) -> Result<u8, Failure> {
    let images = Images::open(store)?;
    let image = images.import(&args.source, &args.name, &libisolab::image::images::created()?)?;
    describe(&image);
    Ok(0)
}

/// `commit CONTAINER NAME[:TAG]`
pub fn commit(store: &Store, args: &CommitArgs) -> Result<u8, Failure> {
    let container = store.find(&args.container)?;
    if container.state()?.status == Status::Running && !container.state()?.runtime_died {
        return Err(invalid(&format!(
            "container {} is running: its upper may change while it is read; commit it once \
             its command has ended",
            container.config.name
        )));
    }
    let created_by = match &args.message {
        Some(message) => message.clone(),
        None => {
            let words: Vec<String> =
                container.config.command.iter().map(|arg| cli::shell_quote(arg)).collect();
            words.join(" ")
        }
    };
    let images = Images::open(store)?;
    let image = images.commit(
        &container,
        &args.name,
        &libisolab::image::images::created()?,
        &created_by,
    )?;
    describe(&image);
    Ok(0)
}

/// One line for a new image: its name, its id, its digest, its layers.
fn describe(image: &Image) {
    let layers = image.body.layers().len();
    say(&format!(
        "{} {}: {} layer{}, {}, {}",
        image.shown(),
        image.id(),
        layers,
        if layers == 1 { "" } else { "s" },
        format_size(image.size()),
        image.manifest.digest()
    ));
}

/// `images`: one line per tag.
pub fn images(store: &Store, args: &ImagesArgs) -> Result<u8, Failure> {
    let images = Images::open(store)?;
    let mut header = vec!["REPOSITORY", "TAG", "IMAGE ID", "CREATED (UTC)", "LAYERS", "SIZE"];
    if args.digests {
        header.insert(2, "DIGEST");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for image in images.list()? {
        // An image without a tag (pulled by digest, another tool's): `<none>`, as docker.
        let name = image.name.clone().unwrap_or_else(|| "<none>:<none>".to_string());
        let (repository, tag) = name.rsplit_once(':').unwrap_or((&name, ""));
        let created = image.config.created().clone().unwrap_or_default();
        let mut row = vec![
            repository.to_string(),
            tag.to_string(),
            image.id(),
            store::show_time(&created),
            image.body.layers().len().to_string(),
            format_size(image.size()),
        ];
        if args.digests {
            row.insert(2, image.manifest.digest().to_string());
        }
        rows.push(row);
    }
    print_table(&rows);
    for (word, why) in images.broken()? {
        eprintln!(
            "{}: image {word} cannot be read ({why}): `rmi {word}` removes it",
            crate::PROGRAM
        );
    }
    Ok(0)
}

// ANCHOR: history
/// `history IMAGE`: newest first, as `docker history` and `git log` show it: each step, the
/// layer it made (or none, for a step that only changed the config) and its size.
pub fn history(store: &Store, args: &ImageArg) -> Result<u8, Failure> {
    let image = Images::open(store)?.find(&args.image)?;
    let mut layers = image.body.layers().iter();
    let mut rows = Vec::new();
    for step in image.config.history().iter().flatten() {
        let (layer, size) = if step.empty_layer().unwrap_or(false) {
            ("-".to_string(), "0 B".to_string())
        } else {
            match layers.next() {
                Some(layer) => (short(layer.digest().as_ref()), format_size(layer.size())),
                None => ("<missing>".to_string(), "?".to_string()),
            }
        };
        let created = step.created().clone().unwrap_or_default();
        rows.push(vec![
            layer,
            store::show_time(&created),
            size,
            step.created_by().clone().unwrap_or_default(),
        ]);
    }
    rows.reverse();
    rows.insert(0, ["LAYER", "CREATED (UTC)", "SIZE", "CREATED BY"].map(String::from).to_vec());
    print_table(&rows);
    Ok(0)
}
// ANCHOR_END: history

/// `sha256:` and 12 hex digits.
fn short(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// `tag IMAGE NAME[:TAG]`
pub fn tag(store: &Store, args: &TagArgs) -> Result<u8, Failure> {
    let (image, moved) = Images::open(store)?.tag(&args.source, &args.target)?;
    describe(&image);
    if let Some(old) = moved {
        say(&format!(
            "{} no longer names {} (gc removes it if no tag, container or build uses it)",
            image.shown(),
            old.digest()
        ));
    }
    Ok(0)
}

/// `rmi IMAGE…`: untags, then removes what nothing uses any more.
pub fn rmi(store: &Store, args: &RmiArgs) -> Result<u8, Failure> {
    let images = Images::open(store)?;
    let containers = Images::containers(store)?;
    for word in &args.images {
        for tag in images.remove(word, args.force, &containers)? {
            say(&format!("untagged {tag}"));
        }
    }
    let collected = images.gc(&containers, true)?;
    for line in &collected.lines {
        say(line);
    }
    Ok(0)
}

/// `inspect IMAGE [--json]`
pub fn inspect(store: &Store, args: &InspectArgs) -> Result<u8, Failure> {
    let image = Images::open(store)?.find(&args.image)?;
    let value = serde_json::json!({
        "name": image.name,
        "id": image.id(),
        "digest": image.manifest.digest().to_string(),
        "manifest": image.body,
        "config": image.config,
    });
    if args.json {
        say(&value.to_string());
        return Ok(0);
    }
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    say(&text);
    Ok(0)
}

/// `save IMAGE… -o FILE`
pub fn save(store: &Store, args: &SaveArgs) -> Result<u8, Failure> {
    let images = Images::open(store)?;
    let mut chosen = Vec::new();
    for word in &args.images {
        let image = images.find(word)?;
        let name = image.name.clone().ok_or_else(|| {
            invalid(&format!("{word} has no tag: tag it first, so that the tar names it"))
        })?;
        chosen.push((name, image.manifest));
    }
    if args.output.is_dir() || args.output.as_os_str().to_string_lossy().ends_with('/') {
        return Err(invalid(&format!(
            "{} is a directory: -o takes the tar file to write (e.g. -o app.tar)",
            args.output.display()
        )));
    }
    // Written beside the target under a new name of our own (O_EXCL: never a file or link
    // someone put there) and renamed: a failed save leaves no half tar under its name.
    let partial = partial_beside(&args.output)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc_nofollow())
        .open(&partial)
        .map_err(|error| Error::io("open", &partial, &error))?;
    let mut out = BufWriter::new(file);
    let written = archive::save(images.layout(), &chosen, &mut out)
        .and_then(|()| out.flush().map_err(|error| Error::io("write", &partial, &error)));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(error.into());
    }
    if let Err(error) = std::fs::rename(&partial, &args.output) {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::io("rename", &args.output, &error).into());
    }
    say(&format!("saved {} to {}", args.images.join(", "), args.output.display()));
    Ok(0)
}

/// A name beside `output` that nobody uses: `.<name>.partial-<pid>-<n>`.
fn partial_beside(output: &std::path::Path) -> Result<PathBuf, Failure> {
    let name = output.file_name().map(|name| name.to_string_lossy().into_owned());
    let name = name.ok_or_else(|| invalid(&format!("{} names no file", output.display())))?;
    let dir = output.parent().filter(|dir| !dir.as_os_str().is_empty());
    let dir = dir.map_or_else(|| PathBuf::from("."), PathBuf::from);
    for attempt in 0..1000u32 {
        let partial = dir.join(format!(".{name}.partial-{}-{attempt}", std::process::id()));
        if std::fs::symlink_metadata(&partial).is_err() {
            return Ok(partial);
        }
    }
    Err(invalid(&format!("no free temporary name beside {}", output.display())))
}

/// `O_NOFOLLOW`, for files we create where others may write.
fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// `load -i FILE`
pub fn load(store: &Store, args: &LoadArgs) -> Result<u8, Failure> {
    let images = Images::open(store)?;
    let _writing = images.writing()?;
    if args.input.is_dir() {
        return Err(invalid(&format!(
            "{} is a directory: -i takes a tar (an OCI layout or `docker save` archive); tar a \
             layout directory first (tar -C DIR -cf FILE.tar .)",
            args.input.display()
        )));
    }
    let file = File::open(&args.input).map_err(|error| Error::io("open", &args.input, &error))?;
    // An OCI layout names its images by tag alone (`v1`): they are loaded as `<file>:v1`.
    let stem = args.input.file_stem().map(|stem| stem.to_string_lossy().to_lowercase());
    let repository: String = stem
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .to_string();
    let repository = if repository.is_empty() { "loaded".to_string() } else { repository };
    let loaded =
        archive::load_as(images.layout(), BufReader::new(file), &repository).map_err(|error| {
            match error {
                // The tar reader's own words for bytes that are no tar at all.
                Error::Sys { call: "read", ref subject, .. } if subject == "the archive" => {
                    Error::Invalid(format!(
                "{} is not a tar archive (an OCI image layout or what `docker save` writes): \
                 {error}",
                    args.input.display()
                ))
                }
                other => other,
            }
        })?;
    for (name, descriptor) in &loaded.refs {
        let name = name.clone().unwrap_or_else(|| "(untagged)".to_string());
        say(&format!("loaded {name} {}", descriptor.digest()));
    }
    say(&format!("{} new blobs, {}", loaded.blobs_added, format_size(loaded.bytes_added)));
    Ok(0)
}

// ANCHOR: df
/// `df`: the images and what they share, then stage 4's containers.
pub fn df(store: &Store) -> Result<u8, Failure> {
    let usage = Images::open(store)?.usage()?;
    let mut rows = vec![["IMAGE", "IMAGE ID", "LAYERS", "SIZE"].map(String::from).to_vec()];
    for (name, image) in &usage.images {
        rows.push(vec![
            name.clone(),
            image.id(),
            image.body.layers().len().to_string(),
            format_size(image.size()),
        ]);
    }
    print_table(&rows);
    say(&format!(
        "{} image{}: {} distinct layer{}, {} of blobs ({} if nothing were shared); {} layer{} \
         unpacked, {} on disk",
        usage.images.len(),
        if usage.images.len() == 1 { "" } else { "s" },
        usage.layers,
        if usage.layers == 1 { "" } else { "s" },
        format_size(usage.blob_bytes),
        format_size(usage.unshared_bytes),
        usage.unpacked,
        if usage.unpacked == 1 { "" } else { "s" },
        format_size(usage.unpacked_bytes),
    ));
    say("");
    // The containers, each with the disk it takes of its own (its upper): what an image
    // costs one more container.
    let mut table =
        vec![["CONTAINER ID", "NAME", "IMAGE", "OWN DISK USE"].map(String::from).to_vec()];
    let (mut own_total, mut count) = (0, 0);
    for listed in store.list()? {
        let store::Listed::Found(container, _) = listed else { continue };
        let own = container.disk_usage()?;
        own_total += own;
        count += 1;
        let image = match &container.config.image {
            Some(image) => image.name.clone(),
            None => format!(
                "--rootfs {}",
                container
                    .config
                    .lowers
                    .first()
                    .map(|base| base.display().to_string())
                    .unwrap_or_default()
            ),
        };
        table.push(vec![
            container.config.id.clone(),
            container.config.name.clone(),
            image,
            format_size(own),
        ]);
    }
    print_table(&table);
    say(&format!(
        "{count} container{}: {} of {}, over the layers above",
        if count == 1 { "" } else { "s" },
        format_size(own_total),
        if count == 1 { "its own" } else { "their own" }
    ));
    Ok(0)
}
// ANCHOR_END: df

/// The image part of `gc`.
pub fn gc(store: &Store, args: &GcArgs) -> Result<u8, Failure> {
    let images = Images::open(store)?;
    let containers = Images::containers(store)?;
    let collected = images.gc(&containers, !args.build_cache)?;
    if collected.lines.is_empty() {
        say("no unused blobs or layers");
    }
    for line in &collected.lines {
        say(line);
    }
    Ok(0)
}
