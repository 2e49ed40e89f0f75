//! `push IMAGE REF` and `pull REF`: images to and from a registry (`libisolab::registry`),
//! one line per blob and a summary; on a terminal a progress bar per blob on its way; with
//! `--json`, one JSON object per line instead. Ctrl-C (or SIGTERM) stops either cleanly.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use libisolab::cgroups::format_size as bytes;
use libisolab::cli;
use libisolab::image::images::Images;
use libisolab::image::reference::Reference;
use libisolab::process::Failure;
use libisolab::registry::{self, BlobEvent, Credentials, Event, Moved, Options, DEFAULT_TIMEOUT};
use libisolab::store::Store;
use libisolab::Error;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use serde_json::json;

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
    /// Give up on a registry that sends or takes nothing for this long (each read or write;
    /// connecting at most 5 s of it)
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// One JSON object per line on stdout instead of the lines: one per blob
    /// ({"event":"blob",…}), then the summary ({"event":"pushed"|"pulled",…})
    #[arg(long)]
    json: bool,
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
    /// Send each blob larger than SIZE in pieces of SIZE bytes, one PATCH each (a suffix K, M
    /// or G counts in KiB, MiB, GiB; at most 256M, each is held in memory); smaller blobs go
    /// in one PUT. Between two pieces a push stops cleanly on Ctrl-C, cancelling its upload
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16M")]
    chunk_size: u64,
    /// Every blob in one PUT, however large (for a registry that refuses PATCH). Ctrl-C in
    /// the middle of one leaves an upload the registry keeps until it purges old ones
    #[arg(long, conflicts_with = "chunk_size")]
    monolithic: bool,
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

/// The options: --insecure, --timeout, credentials from --creds or docker's config.json, and
/// the flag our signal handler sets.
fn options(args: &RegistryArgs, reference: &Reference) -> Result<Options, Failure> {
    let credentials = match &args.creds {
        Some(text) => Some(Credentials::parse(text)?),
        None => docker_config_credentials(reference)?,
    };
    Ok(Options {
        insecure: args.insecure,
        credentials,
        timeout: Duration::from_secs(args.timeout),
        chunk_size: None,
        interrupted: Some(&INTERRUPTED),
    })
}

/// `8M`, `512K`, `1G`, `1048576`: bytes, the suffixes counting in powers of 1024 (`8MiB` and
/// `8MB` are read as `8M` too, as docker and skopeo read them).
/// The largest `--chunk-size`.
const CHUNK_MAX: u64 = 256 << 20;

fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let unit = trimmed.trim_end_matches("iB").trim_end_matches(['B', 'b']);
    let (number, shift) = match unit.char_indices().last() {
        Some((at, 'k' | 'K')) => (&unit[..at], 10),
        Some((at, 'm' | 'M')) => (&unit[..at], 20),
        Some((at, 'g' | 'G')) => (&unit[..at], 30),
        _ => (unit, 0),
    };
    let refuse = || format!("{text:?} is not a size: write bytes, or a number with K, M or G");
    let number: u64 = number.trim().parse().map_err(|_| refuse())?;
    let size = number.checked_mul(1 << shift).ok_or_else(refuse)?;
    if size == 0 {
        return Err("a chunk must hold at least one byte".into());
    }
    // Each chunk is held in memory while it is sent (a PATCH carries its Content-Length).
    if size > CHUNK_MAX {
        return Err(format!(
            "{text:?} is more than a chunk may be ({}M: each is held in \
                            memory): give a smaller size",
            CHUNK_MAX >> 20
        ));
    }
    Ok(size)
}

// ANCHOR: interrupts
/// Set by [`on_interrupt`]; the library reads it at each read of a blob's bytes.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Which signal it was: the exit status is 128 + its number (130 after Ctrl-C, 143 after
/// `kill`), what a shell says of a command a signal stopped, though this one stopped cleanly.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_interrupt(signal: std::ffi::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C (SIGINT) and `kill` (SIGTERM) only set a flag: the library stops at its next read,
/// cancels the upload session it has open, removes its half-written blob, and returns; the
/// caller then tags nothing. Dying at once instead would leave a session on the registry and a
/// `.partial-` file in the store. No `SA_RESTART` (man 7 signal, "Interruption of system
/// calls"): a read that waits on the network returns `EINTR`, so the stop is not delayed by a
/// slow registry. Only push and pull catch these: they start no container, so there is
/// nothing to pass the signals on to (`run` forwards them to its container, `libisolab::init`).
fn catch_interrupts() -> Result<(), Failure> {
    let action =
        SigAction::new(SigHandler::Handler(on_interrupt), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe
        // (man 7 signal-safety).
        unsafe { sigaction(signal, &action) }
            .map_err(|errno| Error::sys("sigaction", signal.as_str(), errno))?;
    }
    Ok(())
}

/// The one line an interrupted push or pull ends with, and its exit status.
fn interrupted(shown: Shown, line: String) -> Result<u8, Failure> {
    drop(shown);
    cli::say(crate::PROGRAM, &[line]);
    // A signal number is below 65: the status fits a byte.
    Ok(128 + SIGNAL.load(Ordering::SeqCst).clamp(0, 127) as u8)
}
// ANCHOR_END: interrupts

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: its `auths` entry for the
/// reference's registry, if the file and the entry exist.
fn docker_config_credentials(reference: &Reference) -> Result<Option<Credentials>, Failure> {
    let Some(host) = &reference.registry else { return Ok(None) };
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")));
    let Some(path) = dir.map(|dir| dir.join("config.json")) else { return Ok(None) };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Credentials::from_docker_config(&text, host)
            .map_err(|error| Error::Invalid(format!("{}: {error}", path.display())))?),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(Error::io("read", &path, &error).into()),
    }
}

/// What happened to a blob, in one word: `sent` (`fetched` on a pull), `skipped`, `mounted`.
fn moved_word<'a>(moved: &Moved, sent: &'a str) -> &'a str {
    match moved {
        Moved::Sent => sent,
        Moved::Skipped => "skipped",
        Moved::Mounted => "mounted",
    }
}

/// One blob's line: `sent sha256:… 2.1 MB`.
fn blob_line(event: &BlobEvent, sent: &str) -> String {
    format!("{:<8} {} {}", moved_word(&event.moved, sent), event.digest, bytes(event.size))
}

/// How a push or pull shows its blobs: lines on stdout (not a terminal), JSON objects
/// (`--json`), or, when stderr is a terminal, a progress bar per blob on stderr that becomes
/// the blob's line when it is done (the line is also printed on stdout if stdout is not that
/// terminal, so a log gets every line).
struct Shown {
    /// `sent` or `fetched`.
    word: &'static str,
    json: bool,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    /// The bars of the blobs on their way, by digest.
    moving: HashMap<String, ProgressBar>,
    /// Is stdout somewhere else than the terminal (a file, a pipe)?
    lines_on_stdout: bool,
}

impl Shown {
    fn new(word: &'static str, json: bool) -> Shown {
        let bars = (!json && std::io::stderr().is_terminal()).then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            moving: HashMap::new(),
            lines_on_stdout: !std::io::stdout().is_terminal(),
        });
        Shown { word, json, bars }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Moving { digest, done, size } => {
                if let Some(bars) = &mut self.bars {
                    let word = if self.word == "sent" { "sending" } else { "fetching" };
                    let bar = bars.moving.entry(digest.to_string()).or_insert_with(|| {
                        // Hidden until the multi-bar takes it, so it is drawn once, complete.
                        let bar =
                            ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::hidden())
                                .with_style(bar_style())
                                .with_prefix(word)
                                .with_message(short(&digest.to_string()));
                        bars.multi.add(bar)
                    });
                    bar.set_position(done);
                }
            }
            Event::Blob(blob) if self.json => say(&json!({
                "event": "blob",
                "digest": blob.digest.to_string(),
                "size": blob.size,
                "moved": moved_word(&blob.moved, self.word),
            })
            .to_string()),
            Event::Blob(blob) => {
                let line = blob_line(blob, self.word);
                let Some(bars) = &mut self.bars else { return say(&line) };
                let bar = bars.moving.remove(&blob.digest.to_string());
                if bars.lines_on_stdout {
                    if let Some(bar) = bar {
                        bar.finish_and_clear();
                    }
                    say(&line);
                } else if let Some(bar) = bar {
                    bar.set_style(ProgressStyle::with_template("{msg}").expect("a template"));
                    bar.finish_with_message(line);
                } else {
                    let _ = bars.multi.println(line);
                }
            }
        }
    }
}

impl Drop for Bars {
    /// A bar still drawn (an error, an interrupt) goes before the message that says why.
    fn drop(&mut self) {
        for bar in self.moving.values() {
            bar.finish_and_clear();
        }
    }
}

/// `sending  sha256:0123456789ab [=====>    ] 12.0 MiB/64.0 MiB 310.2 MiB/s`
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:<8} {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
    )
    .expect("a valid template")
    .progress_chars("=> ")
}

/// A registry reference as push and pull take it: no scheme (`http://` is a mistake worth its
/// own sentence), and a registry host (checked by the client).
fn parse_reference(text: &str) -> Result<Reference, Failure> {
    let scheme = ["http://", "https://"].into_iter().find(|scheme| text.starts_with(scheme));
    if let Some(scheme) = scheme {
        return Err(Error::Invalid(format!(
            "{text}: leave out {scheme}: write HOST[:PORT]/REPOSITORY[:TAG] (127.0.0.1 and \
             localhost speak plain HTTP; another host does with --insecure)"
        ))
        .into());
    }
    Ok(text.parse()?)
}

/// `1 blob`, `2 blobs`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `sha256:0123456789ab`: a digest as docker shortens it.
fn short(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

// ANCHOR: push
/// `push IMAGE REF`
pub fn push(store: &Store, args: &PushArgs) -> Result<u8, Failure> {
    let reference = parse_reference(&args.reference)?;
    let chunk_size = (!args.monolithic).then_some(args.chunk_size);
    let options = Options { chunk_size, ..options(&args.registry, &reference)? };
    let images = Images::open(store)?;
    let image = images.find(&args.image)?;
    catch_interrupts()?;
    let mut shown = Shown::new("sent", args.registry.json);
    let mut there = 0;
    let result = registry::push(
        images.layout(),
        &image.manifest,
        &reference,
        &options,
        &args.mount_from,
        |event| {
            there += matches!(event, Event::Blob(_)) as usize;
            shown.event(event)
        },
    );
    let pushed = match result {
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            return interrupted(
                shown,
                format!(
                    "interrupted: {reference} is not tagged; run the same command again: {} \
                     already there {} not sent again",
                    count(there, "blob"),
                    if there == 1 { "is" } else { "are" }
                ),
            )
        }
        result => result?,
    };
    drop(shown);
    let digest = pushed.digest.map(|digest| digest.to_string()).unwrap_or_default();
    if args.registry.json {
        say(&json!({
            "event": "pushed",
            "reference": reference.to_string(),
            "digest": digest,
            "blobs_sent": pushed.blobs_sent,
            "bytes_sent": pushed.bytes_sent,
            "blobs_skipped": pushed.blobs_skipped,
            "bytes_skipped": pushed.bytes_skipped,
            "blobs_mounted": pushed.blobs_mounted,
            "bytes_mounted": pushed.bytes_mounted,
        })
        .to_string());
        return Ok(0);
    }
    // With its tag, `latest` when none was given, as the registry now has it.
    let target = if reference.digest.is_some() { reference.to_string() } else { reference.name() };
    say(&format!(
        "pushed {target} {digest}: {} sent ({}), {} skipped and {} mounted ({} not sent)",
        count(pushed.blobs_sent, "blob"),
        bytes(pushed.bytes_sent),
        pushed.blobs_skipped,
        pushed.blobs_mounted,
        bytes(pushed.bytes_skipped + pushed.bytes_mounted),
    ));
    Ok(0)
}
// ANCHOR_END: push

// ANCHOR: pull
/// `pull REF`: the blobs the store lacks, then the tag (the reference's name).
pub fn pull(store: &Store, args: &PullArgs) -> Result<u8, Failure> {
    let reference = parse_reference(&args.reference)?;
    let options = options(&args.registry, &reference)?;
    let images = Images::open(store)?;
    // Held shared until tagged: gc (exclusive) cannot take the new blobs before a tag
    // reaches them.
    let _writing = images.writing()?;
    catch_interrupts()?;
    let mut shown = Shown::new("fetched", args.registry.json);
    let mut here = 0;
    let result = registry::pull(images.layout(), &reference, &options, |event| {
        here += matches!(event, Event::Blob(_)) as usize;
        shown.event(event)
    });
    let pulled = match result {
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            return interrupted(
                shown,
                format!(
                    "interrupted: nothing was tagged; run the same command again: {} \
                     already here {} not fetched again",
                    count(here, "blob"),
                    if here == 1 { "is" } else { "are" }
                ),
            )
        }
        result => result?,
    };
    drop(shown);
    // By digest alone (`REPO@sha256:…`): the user named a manifest, not a tag, so no tag
    // moves (docker's way): the image is kept untagged, run or tagged by its digest.
    // Every blob is whole and verified; is it an image isolab can run? (A config that is no
    // image config, one diff_id per layer, layers that unpack.) Else nothing is tagged: a
    // broken tag would only fail later, in `run`.
    let digest = pulled.descriptor.digest().to_string();
    if let Err(error) = images.find(&digest).and_then(|image| image.check()) {
        return Err(Error::Invalid(format!(
            "{reference}: {error}; nothing was tagged (gc removes what was fetched)"
        ))
        .into());
    }
    // A tag beside the digest (`REPO:TAG@sha256:…`) is ignored, as docker ignores it: the
    // digest says which image, and the registry's tag may name another one by now.
    let name = match (&reference.tag, &reference.digest) {
        (_, Some(_)) => {
            images.layout().add_untagged(pulled.descriptor.clone())?;
            reference.to_string()
        }
        _ => {
            let name = reference.name();
            images.layout().set_ref(&name, pulled.descriptor.clone())?;
            name
        }
    };
    if args.registry.json {
        say(&json!({
            "event": "pulled",
            "reference": name.to_string(),
            "digest": pulled.descriptor.digest().to_string(),
            "blobs_fetched": pulled.blobs_fetched,
            "bytes_fetched": pulled.bytes_fetched,
            "blobs_skipped": pulled.blobs_skipped,
            "bytes_skipped": pulled.bytes_skipped,
        })
        .to_string());
        return Ok(0);
    }
    let untagged = reference.digest.is_some();
    // `REF sha256:…`; a reference by digest already shows it.
    let shown =
        if untagged { name.clone() } else { format!("{name} {}", pulled.descriptor.digest()) };
    say(&format!(
        "pulled {shown}: {} fetched ({}), {} already here ({})",
        count(pulled.blobs_fetched, "blob"),
        bytes(pulled.bytes_fetched),
        pulled.blobs_skipped,
        bytes(pulled.bytes_skipped),
    ));
    if untagged {
        say("kept untagged, as pulled by digest: run it, or tag it, by that digest");
    }
    Ok(0)
}
// ANCHOR_END: pull

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_with_a_scheme_is_told_to_leave_it_out() {
        let error = parse_reference("http://127.0.0.1:5000/team/app:1").unwrap_err();
        assert!(format!("{error:?}").contains("leave out http://"), "{error:?}");
        assert!(parse_reference("127.0.0.1:5000/team/app:1").is_ok());
    }

    #[test]
    fn sizes_are_bytes_or_a_number_with_k_m_or_g() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8MB"), Ok(8 << 20));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert!(parse_size("1G").unwrap_err().contains("held in memory"));
        for refused in ["", "M", "-1M", "1.5M", "8T", "0", "0K", "99999999999999999999G"] {
            assert!(parse_size(refused).is_err(), "{refused:?} was taken");
        }
    }

    #[test]
    fn a_digest_is_shortened_as_docker_does() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(short(&digest), "sha256:0123456789ab");
    }
}
