//! `push IMAGE REF` and `pull REF`: images to and from a registry (`libisolab::registry`),
//! one line per blob and a summary.

use std::path::PathBuf;

use clap::Args;
use libisolab::cgroups::format_size as bytes;
use libisolab::image::images::Images;
use libisolab::image::reference::Reference;
use libisolab::process::Failure;
use libisolab::registry::{self, BlobEvent, Credentials, Moved, Options};
use libisolab::store::Store;
use libisolab::Error;

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Plain HTTP to a registry that is not on this machine (127.0.0.1 and localhost always
    /// speak plain HTTP)
    #[arg(long)]
    insecure: bool,
    /// USER:PASSWORD for the registry [default: ~/.docker/config.json's entry for its host,
    /// else anonymous]
    #[arg(long, value_name = "USER:PASS")]
    creds: Option<String>,
    /// How long the registry may stall (connect, each read or write) before giving up
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image to push: NAME[:TAG], an id, or sha256:DIGEST
    #[arg(value_name = "IMAGE")]
    image: String,
    /// Where: HOST[:PORT]/REPOSITORY[:TAG]
    #[arg(value_name = "REF")]
    reference: String,
    /// Another repository of the same registry that may hold the blobs: the registry links
    /// them in (a cross-repository mount) instead of receiving them
    #[arg(long, value_name = "REPOSITORY")]
    mount_from: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// What: HOST[:PORT]/REPOSITORY[:TAG] or …@sha256:DIGEST; tagged here under that name
    #[arg(value_name = "REF")]
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn say(line: &str) {
    println!("{line}");
}

/// The options: --insecure, and credentials from --creds or docker's config.json.
fn options(args: &RegistryArgs, reference: &Reference) -> Result<Options, Failure> {
    let credentials = match &args.creds {
        Some(text) => Some(Credentials::parse(text)?),
        None => docker_config_credentials(reference)?,
    };
    let timeout = Some(std::time::Duration::from_secs(args.timeout.max(1)));
    Ok(Options { insecure: args.insecure, credentials, timeout })
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: its `auths` entry for the
/// reference's registry, if the file and the entry exist.
fn docker_config_credentials(reference: &Reference) -> Result<Option<Credentials>, Failure> {
    let Some(host) = &reference.registry else { return Ok(None) };
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")));
    let Some(path) = dir.map(|dir| dir.join("config.json")) else { return Ok(None) };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Credentials::from_docker_config(&text, host)?),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(Error::io("read", &path, &error).into()),
    }
}

/// One blob's line: `sent sha256:… 2.1 MB`.
fn blob_line(event: &BlobEvent, sent: &str) -> String {
    let word = match event.moved {
        Moved::Sent => sent,
        Moved::Skipped => "skipped",
        Moved::Mounted => "mounted",
    };
    format!("{word:<8} {} {}", event.digest, bytes(event.size))
}

// ANCHOR: push
/// `push IMAGE REF`
pub fn push(store: &Store, args: &PushArgs) -> Result<u8, Failure> {
    let reference: Reference = args.reference.parse()?;
    let options = options(&args.registry, &reference)?;
    let images = Images::open(store)?;
    let image = images.find(&args.image)?;
    let pushed = registry::push(
        images.layout(),
        &image.manifest,
        &reference,
        &options,
        &args.mount_from,
        |event| say(&blob_line(event, "sent")),
    )?;
    let digest = pushed.digest.map(|digest| digest.to_string()).unwrap_or_default();
    say(&format!(
        "pushed {reference} {digest}: {} blobs sent ({}), {} skipped and {} mounted ({} not sent)",
        pushed.blobs_sent,
        bytes(pushed.bytes_sent),
        pushed.blobs_skipped,
        pushed.blobs_mounted,
        bytes(pushed.bytes_skipped),
    ));
    Ok(0)
}
// ANCHOR_END: push

// ANCHOR: pull
/// `pull REF`: the blobs the store lacks, then the tag (the reference's name).
pub fn pull(store: &Store, args: &PullArgs) -> Result<u8, Failure> {
    let reference: Reference = args.reference.parse()?;
    let options = options(&args.registry, &reference)?;
    let images = Images::open(store)?;
    // Held shared until tagged: gc (exclusive) cannot take the new blobs before a tag
    // reaches them.
    let _writing = images.writing()?;
    let pulled = registry::pull(images.layout(), &reference, &options, |event| {
        say(&blob_line(event, "fetched"))
    })?;
    let name = reference.name();
    images.layout().set_ref(&name, pulled.descriptor.clone())?;
    say(&format!(
        "pulled {name} {}: {} blobs fetched ({}), {} already here",
        pulled.descriptor.digest(),
        pulled.blobs_fetched,
        bytes(pulled.bytes_fetched),
        pulled.blobs_skipped,
    ));
    Ok(0)
}
// ANCHOR_END: pull
