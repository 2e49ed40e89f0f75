//! Push and pull: images travel to and from a registry over the OCI distribution API v2.
//!
//! A registry stores what an image layout stores (blobs named by digest, manifests, tags), one
//! repository at a time, behind a handful of HTTP requests (OCI distribution-spec, `spec.md`):
//!
//! ```text
//! GET  /v2/                                       is this a registry? (and: who are you?)
//! HEAD /v2/<name>/blobs/<digest>                  200: it has the blob; 404: send it
//! POST /v2/<name>/blobs/uploads/                  202 + Location: an upload session
//! PUT  <Location>&digest=<digest>   (the bytes)   201: the blob is there, checked
//!   or, with --chunk-size, the bytes in pieces before that PUT (then without a body):
//!   PATCH <Location>  Content-Range: <start>-<end>  202 + Range: 0-<end> + the next Location
//! DELETE <Location>                               the session cancelled (a failed push)
//! POST /v2/<name>/blobs/uploads/?mount=<d>&from=<other>   201: taken from another repository
//! PUT  /v2/<name>/manifests/<tag>   (the JSON)    201: the tag points at it
//! GET  /v2/<name>/manifests/<tag|digest>          the manifest (Accept: which kinds we read)
//! GET  /v2/<name>/blobs/<digest>                  a config or a layer
//! ```
//!
//! Both ends name every blob by its digest, so "only changed layers travel" is one `HEAD`
//! per blob on a push and one [`Layout::has_blob`] per blob on a pull. Nothing is trusted on
//! the way in: each manifest is hashed and compared with the digest that named it (the
//! descriptor's, the reference's, the registry's `Docker-Content-Digest`), and each blob
//! enters the layout through [`Layout::put_blob`], which hashes it into a `.partial-` file
//! and renames it only if it is what its digest says. A pull tags nothing until every blob is
//! in; a failed pull leaves only whole, verified blobs behind.
//!
//! An interrupted push or pull ([`Options::interrupted`]) stops at its next read, cancels the
//! open upload session, and leaves the same: whole blobs only. Running it again resumes at
//! blob granularity: the blobs already across are skipped, and a blob cut mid-way travels
//! again whole (the distribution API can resume an upload session, but a new process does
//! not know the old one's Location, and a registry may expire sessions anyway).

mod client;

use std::io::{self, Read};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use ureq::http::Method;

use client::{expect, header, Client, Payload};
pub use client::{Credentials, Options, DEFAULT_TIMEOUT};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::layout::{descriptor, digest_of, Layout, INDEX_DEPTH_MAX, JSON_MAX};
use crate::image::reference::Reference;

/// Docker's manifest media types, which registries still serve for most images.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Docker's schema 1 manifests (`…manifest.v1+json`, `…v1+prettyjws`), refused by name.
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// What a pull accepts, in order of preference.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json";

/// What happened to one blob on its way, for the caller to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Sent to the registry (push) or fetched from it (pull).
    Sent,
    /// Already on the other side: not sent.
    Skipped,
    /// Taken by the registry from another of its repositories, not sent.
    Mounted,
}

/// One blob's journey: its digest, size and what happened.
#[derive(Debug, Clone)]
pub struct BlobEvent {
    pub digest: Digest,
    pub size: u64,
    pub moved: Moved,
}

/// What push and pull tell their caller as they go.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Bytes of a blob on their way: `done` of `size` so far (a progress bar's food).
    Moving { digest: &'a Digest, done: u64, size: u64 },
    /// A blob's journey is over.
    Blob(&'a BlobEvent),
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushed {
    pub blobs_sent: usize,
    pub bytes_sent: u64,
    pub blobs_skipped: usize,
    pub bytes_skipped: u64,
    pub blobs_mounted: usize,
    pub bytes_mounted: u64,
    /// The manifest's digest, as the registry acknowledged it.
    pub digest: Option<Digest>,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image manifest now in the layout (not tagged: the caller tags it).
    pub descriptor: Descriptor,
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
    pub blobs_skipped: usize,
    pub bytes_skipped: u64,
}

// ANCHOR: push
/// Pushes the image whose manifest `manifest` names (a blob of `layout`) to `reference`'s
/// repository and tag: each blob the registry lacks (config and layers), then the manifest
/// with its own media type. `mount_from` names other repositories of the same registry that
/// may hold the blobs already (the registry then links them in, nothing travels). `on_event`
/// hears of each blob's bytes as they go and of each blob when it is done.
pub fn push(
    layout: &Layout,
    manifest: &Descriptor,
    reference: &Reference,
    options: &Options,
    mount_from: &[String],
    mut on_event: impl FnMut(Event),
) -> Result<Pushed> {
    let mut client = Client::new(reference, options)?;
    client.ping()?;
    let manifest_digest = digest_of(manifest)?;
    let manifest_bytes = read_blob(layout, &manifest_digest)?;
    let image: ImageManifest = parse_json(&manifest_bytes, &manifest_digest, "image manifest")?;

    let mut pushed = Pushed::default();
    // The config first, then the layers bottom up: the order docker pushes in.
    for blob in std::iter::once(image.config()).chain(image.layers()) {
        stop_if_interrupted(options)?;
        let digest = digest_of(blob)?;
        let size = blob.size();
        let mut on_bytes = |done| on_event(Event::Moving { digest: &digest, done, size });
        let moved = if blob_exists(&mut client, &digest)? {
            pushed.blobs_skipped += 1;
            pushed.bytes_skipped += size;
            Moved::Skipped
        } else if upload(&mut client, layout, (&digest, size), mount_from, options, &mut on_bytes)?
        {
            pushed.blobs_mounted += 1;
            pushed.bytes_mounted += size;
            Moved::Mounted
        } else {
            pushed.blobs_sent += 1;
            pushed.bytes_sent += size;
            Moved::Sent
        };
        on_event(Event::Blob(&BlobEvent { digest, size, moved }));
    }
    stop_if_interrupted(options)?;

    // The manifest, under the tag (or its digest), with its exact media type: the registry
    // keeps the Content-Type and serves the manifest back with it.
    let target = match &reference.digest {
        Some(digest) => digest.to_string(),
        None => reference.tag_or_latest().to_string(),
    };
    let url = client.url(&format!("manifests/{target}"));
    let media_type = manifest.media_type().to_string();
    let headers = [("Content-Type", media_type.as_str())];
    let response = client.send(Method::PUT, &url, &headers, Payload::Bytes(&manifest_bytes))?;
    let response = expect(
        &Method::PUT,
        &url,
        response,
        &[201],
        "the registry refused the manifest: is every blob there, and its media type one it takes?",
    )?;
    let acknowledged = header(&response, "docker-content-digest")
        .map(|text| Digest::from_str(&text))
        .transpose()?;
    if let Some(acknowledged) = acknowledged {
        if acknowledged != manifest_digest {
            return Err(Error::Invalid(format!(
                "PUT {url}: the registry stored the manifest as {acknowledged}, not \
                 {manifest_digest}: it changed the bytes; push to another registry"
            )));
        }
    }
    pushed.digest = Some(manifest_digest);
    Ok(pushed)
}
// ANCHOR_END: push

/// `HEAD /v2/<name>/blobs/<digest>`: 200 it is there, 404 it is not.
fn blob_exists(client: &mut Client, digest: &Digest) -> Result<bool> {
    let url = client.url(&format!("blobs/{digest}"));
    let response = client.send(Method::HEAD, &url, &[], Payload::Empty)?;
    let response = expect(&Method::HEAD, &url, response, &[200, 404], "check the repository")?;
    Ok(response.status() == 200)
}

// ANCHOR: upload
/// Uploads one blob: tries a cross-repository mount from each of `mount_from` (201: done,
/// true), else opens an upload session (202 + Location) and sends the whole blob in one
/// `PUT <Location>&digest=<digest>` (or, larger than [`Options::chunk_size`], in
/// [`send_chunks`] before that PUT), streamed from the layout's file and verified as it is
/// read. On any failure, an interrupt included, the session is cancelled (`DELETE`), which
/// distribution 2.8 honours unless a `PUT` broke off midway: that is why big blobs go in
/// chunks, and why a blob is checked whole before anything is sent.
fn upload(
    client: &mut Client,
    layout: &Layout,
    (digest, size): (&Digest, u64),
    mount_from: &[String],
    options: &Options,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<bool> {
    // Sent in one PUT, a blob is first read once, to its end, before any session opens: a
    // blob of our store that is not what its digest says fails here, with nothing started on
    // the registry. Found only while sending, the PUT would break off midway, and
    // distribution 2.8 then refuses the session's DELETE (its recorded offset no longer
    // matches what it received), so the session would stay until the registry purges old
    // uploads. Sent in chunks, no such pass is needed: the verifying reader fails as it reads
    // the last chunk, before that chunk is sent, while the session is still whole.
    let chunk_size = options.chunk_size.filter(|&chunk| size > chunk);
    if chunk_size.is_none() {
        io::copy(&mut layout.open_blob(digest)?, &mut io::sink()).map_err(|error| {
            match error.kind() {
                io::ErrorKind::InvalidData => Error::Invalid(error.to_string()),
                _ => Error::io("read", layout.blob_path(digest), &error),
            }
        })?;
    }
    let mut session = None;
    for (tried, from) in mount_from.iter().enumerate() {
        let url = client.url(&format!("blobs/uploads/?mount={digest}&from={from}"));
        let response = client.send(Method::POST, &url, &[], Payload::Empty)?;
        let response = expect(&Method::POST, &url, response, &[201, 202], "check the repository")?;
        if response.status() == 201 {
            return Ok(true);
        }
        // 202: the blob is not there, and the registry opened an ordinary session instead:
        // kept for the upload after the last try, cancelled (DELETE) before the next one, so
        // that no session is left open on the registry.
        if tried + 1 < mount_from.len() {
            if let Some(location) = header(&response, "location") {
                let location = client.absolute(&location)?;
                let _ = client.send(Method::DELETE, &location, &[], Payload::Empty);
            }
        } else {
            session = Some(response);
        }
    }
    let response = match session {
        Some(response) => response,
        None => {
            let url = client.url("blobs/uploads/");
            let response = client.send(Method::POST, &url, &[], Payload::Empty)?;
            expect(&Method::POST, &url, response, &[202], "does the registry take pushes?")?
        }
    };
    let Some(location) = header(&response, "location") else {
        return Err(Error::Invalid(format!(
            "POST {}: the registry opened an upload but gave no Location: it does not follow \
             the distribution API",
            client.url("blobs/uploads/")
        )));
    };
    let mut location = client.absolute(&location)?;
    let mut reader = Watched::new(layout.open_blob(digest)?, options.interrupted, on_bytes);
    let finished = match chunk_size {
        Some(chunk_size) => send_chunks(client, &mut location, &mut reader, chunk_size)
            .map_err(|error| reader.error_or(error, layout, digest))
            .and_then(|()| finish_upload(client, &location, digest, Payload::Empty)),
        None => finish_upload(client, &location, digest, Payload::Stream(&mut reader))
            .map_err(|error| reader.error_or(error, layout, digest)),
    };
    if let Err(error) = finished {
        // No session is left open on the registry: cancel the last Location it gave (the
        // session may be gone already).
        let _ = client.send(Method::DELETE, &location, &[], Payload::Empty);
        return Err(error);
    }
    Ok(false)
}

/// `PUT <location>&digest=<digest>`: closes the upload session with the last bytes (the whole
/// blob, in a monolithic upload) or none (after chunks); 201 once the registry has checked
/// that what it holds hashes to `digest`.
fn finish_upload(
    client: &mut Client,
    location: &str,
    digest: &Digest,
    payload: Payload<'_>,
) -> Result<()> {
    let separator = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{separator}digest={digest}");
    let headers = [("Content-Type", "application/octet-stream")];
    let response = client.send(Method::PUT, &url, &headers, payload)?;
    expect(&Method::PUT, without_query(location), response, &[201], "the registry refused the blob")
        .map(drop)
}
// ANCHOR_END: upload

// ANCHOR: chunked
/// Sends a blob's bytes as `PATCH`es of `chunk_size` bytes (distribution-spec, "Pushing a blob
/// in chunks"). Each says which bytes it carries (`Content-Range: <start>-<end>`, both
/// inclusive); the registry answers 202 with the range it now holds (`Range: 0-<end>`,
/// checked: a registry that lost a chunk must not get a PUT that claims the blob) and the
/// Location of the next request, which may differ from this one (`location` follows it). The
/// caller closes the session with a PUT without a body. A chunk is read whole into memory
/// first: a PATCH needs its Content-Length, and an authentication challenge may ask for it
/// twice.
fn send_chunks(
    client: &mut Client,
    location: &mut String,
    reader: &mut impl Read,
    chunk_size: u64,
) -> Result<()> {
    let mut chunk = Vec::with_capacity(chunk_size.min(64 << 20) as usize);
    let mut start = 0u64;
    loop {
        chunk.clear();
        // Read until the chunk is full or the blob ends; the verifying reader checks the
        // digest at the end, so the loop reads until a read finds nothing left.
        reader.by_ref().take(chunk_size).read_to_end(&mut chunk).map_err(|error| {
            Error::Invalid(format!("reading the blob for {}: {error}", without_query(location)))
        })?;
        if chunk.is_empty() {
            return Ok(());
        }
        let end = start + chunk.len() as u64 - 1;
        let range = format!("{start}-{end}");
        let headers =
            [("Content-Type", "application/octet-stream"), ("Content-Range", range.as_str())];
        let response = client.send(Method::PATCH, location, &headers, Payload::Bytes(&chunk))?;
        let shown = without_query(location).to_string();
        let response = expect(
            &Method::PATCH,
            &shown,
            response,
            &[202],
            "the registry refused a chunk: push again without --chunk-size",
        )?;
        let held = header(&response, "range").unwrap_or_default();
        if held != format!("0-{end}") {
            return Err(Error::Invalid(format!(
                "PATCH {shown}: the registry holds bytes {held:?} of the blob after bytes \
                 {range} were sent (expected 0-{end}): it lost a chunk; push again"
            )));
        }
        let Some(next) = header(&response, "location") else {
            return Err(Error::Invalid(format!(
                "PATCH {shown}: the registry took a chunk but gave no Location for the next: it \
                 does not follow the distribution API; push again without --chunk-size"
            )));
        };
        *location = client.absolute(&next)?;
        start = end + 1;
    }
}
// ANCHOR_END: chunked

/// A session's URL without its query (long, and saying nothing to a reader).
fn without_query(location: &str) -> &str {
    location.split('?').next().unwrap_or(location)
}

/// The error an interrupt turns into; the caller knows it asked for it (its flag is set) and
/// says so in its own words.
fn stop_if_interrupted(options: &Options) -> Result<()> {
    if options.is_interrupted() {
        return Err(Error::Invalid(INTERRUPTED.into()));
    }
    Ok(())
}

const INTERRUPTED: &str = "interrupted";

/// A reader that tells `on_bytes` how many bytes have passed so far, stops at the first read
/// after `interrupted` is set, and keeps the error of the reader it wraps (a network error
/// that a layout's writer would otherwise report as its own).
struct Watched<'a, R> {
    inner: R,
    done: u64,
    interrupted: Option<&'static AtomicBool>,
    on_bytes: &'a mut dyn FnMut(u64),
    failure: Option<io::Error>,
}

impl<'a, R: Read> Watched<'a, R> {
    fn new(
        inner: R,
        interrupted: Option<&'static AtomicBool>,
        on_bytes: &'a mut dyn FnMut(u64),
    ) -> Self {
        Watched { inner, done: 0, interrupted, on_bytes, failure: None }
    }

    /// The error of a read of this blob from the layout, in place of `error` (what the
    /// reading turned it into): a corrupted blob names itself, a failed read its file.
    fn error_or(&mut self, error: Error, layout: &Layout, digest: &Digest) -> Error {
        match self.failure.take() {
            Some(failure) if failure.kind() == io::ErrorKind::InvalidData => {
                Error::Invalid(failure.to_string())
            }
            Some(failure) => Error::io("read", layout.blob_path(digest), &failure),
            None => error,
        }
    }
}

impl<R: Read> Read for Watched<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        // `Other`, not `Interrupted`: readers retry on `Interrupted` (it means EINTR).
        if self.interrupted.is_some_and(|flag| flag.load(Ordering::SeqCst)) {
            return Err(io::Error::other(INTERRUPTED));
        }
        match self.inner.read(buffer) {
            Ok(read) => {
                self.done += read as u64;
                if read > 0 {
                    (self.on_bytes)(self.done);
                }
                Ok(read)
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Err(error),
            Err(error) => {
                let said = io::Error::new(error.kind(), error.to_string());
                self.failure = Some(error);
                Err(said)
            }
        }
    }
}

// ANCHOR: pull
/// Pulls `reference` into `layout`: its manifest (this platform's, from an index), then each
/// blob the layout lacks, verified; the manifest goes in last. Tags nothing: the caller does,
/// once everything is in. `on_event` hears of each blob's bytes as they come and of each blob
/// when it is done.
pub fn pull(
    layout: &Layout,
    reference: &Reference,
    options: &Options,
    mut on_event: impl FnMut(Event),
) -> Result<Pulled> {
    // What an earlier pull that was killed (SIGKILL, a power cut) left half-written: its
    // writer is gone, so its lock is free (see Layout::remove_partials).
    layout.remove_partials()?;
    let mut client = Client::new(reference, options)?;
    client.ping()?;
    let target = match &reference.digest {
        Some(digest) => digest.to_string(),
        None => reference.tag_or_latest().to_string(),
    };
    let (mut bytes, mut media_type, mut digest) =
        get_manifest(&mut client, &target, reference.digest.as_ref(), None)?;
    // An index (or docker's manifest list) names one manifest per platform: take ours.
    let mut depth = 0;
    while is_index(&media_type) {
        depth += 1;
        if depth > INDEX_DEPTH_MAX {
            return Err(Error::Invalid(format!(
                "{reference}: indexes nest more than {INDEX_DEPTH_MAX} deep: not an image"
            )));
        }
        let index: ImageIndex = parse_json(&bytes, &digest, "image index")?;
        let chosen = choose_platform(&index).ok_or_else(|| {
            Error::Invalid(format!(
                "{reference} has no image for linux/{}: pull one made for this machine",
                architecture()
            ))
        })?;
        let expected = digest_of(chosen)?;
        (bytes, media_type, digest) =
            get_manifest(&mut client, &expected.to_string(), Some(&expected), Some(chosen.size()))?;
    }
    let image: ImageManifest = parse_json(&bytes, &digest, "image manifest")?;
    check_room(layout, &image, reference)?;

    let mut pulled = Pulled {
        descriptor: descriptor(MediaType::from(media_type.as_str()), &digest, bytes.len() as u64),
        blobs_fetched: 0,
        bytes_fetched: 0,
        blobs_skipped: 0,
        bytes_skipped: 0,
    };
    for blob in std::iter::once(image.config()).chain(image.layers()) {
        stop_if_interrupted(options)?;
        let blob_digest = digest_of(blob)?;
        let size = blob.size();
        let moved = if layout.has_blob(&blob_digest) {
            pulled.blobs_skipped += 1;
            pulled.bytes_skipped += size;
            Moved::Skipped
        } else {
            let mut on_bytes = |done| on_event(Event::Moving { digest: &blob_digest, done, size });
            fetch_blob(&mut client, layout, &blob_digest, size, options, &mut on_bytes)?;
            pulled.blobs_fetched += 1;
            pulled.bytes_fetched += size;
            Moved::Sent
        };
        on_event(Event::Blob(&BlobEvent { digest: blob_digest, size, moved }));
    }
    stop_if_interrupted(options)?;
    layout.put_blob(&bytes[..], Some(&digest))?;
    Ok(pulled)
}
// ANCHOR_END: pull

/// Refuses a pull whose missing blobs, at the sizes the manifest declares, do not fit in the
/// store's filesystem (with 1% of it, at least 64 MiB, left over). Each blob is read up to its
/// declared size and no further, so this bounds what a registry can make us write: one that
/// declares a layer of a terabyte is refused here, before a byte of it arrives, instead of
/// filling the disk (statvfs(3)).
fn check_room(layout: &Layout, image: &ImageManifest, reference: &Reference) -> Result<()> {
    let missing: u64 = std::iter::once(image.config())
        .chain(image.layers())
        .filter(|blob| digest_of(blob).is_ok_and(|digest| !layout.has_blob(&digest)))
        .map(|blob| blob.size())
        .fold(0u64, u64::saturating_add);
    let stat = nix::sys::statvfs::statvfs(layout.root())
        .map_err(|errno| Error::sys("statvfs", layout.root().display(), errno))?;
    let block = stat.fragment_size().max(1);
    let free = (stat.blocks_available() as u64).saturating_mul(block);
    let total = (stat.blocks() as u64).saturating_mul(block);
    let spare = (total / 100).max(64 << 20);
    if missing.saturating_add(spare) > free {
        return Err(Error::Invalid(format!(
            "{reference}: its missing blobs are {} by its manifest, and {} has {} free: make \
             room (gc, rmi) or pull into a store on a larger filesystem (--root)",
            crate::cgroups::format_size(missing),
            layout.root().display(),
            crate::cgroups::format_size(free),
        )));
    }
    Ok(())
}

/// `GET /v2/<name>/manifests/<target>` with our Accept list: the bytes, their media type and
/// digest, checked against `expected` (a digest that named it), `Docker-Content-Digest`, and
/// `size` if the descriptor gave one.
fn get_manifest(
    client: &mut Client,
    target: &str,
    expected: Option<&Digest>,
    size: Option<u64>,
) -> Result<(Vec<u8>, String, Digest)> {
    let url = client.url(&format!("manifests/{target}"));
    let response = client.send(Method::GET, &url, &[("Accept", ACCEPT)], Payload::Empty)?;
    let mut response = expect(
        &Method::GET,
        &url,
        response,
        &[200],
        "no such repository or tag there: check the name, or push it first",
    )?;
    let media_type = header(&response, "content-type").unwrap_or_default();
    let announced = header(&response, "docker-content-digest");
    let mut bytes = Vec::new();
    response.body_mut().as_reader().take(JSON_MAX + 1).read_to_end(&mut bytes).map_err(
        |error| Error::Invalid(format!("GET {url}: reading the manifest failed: {error}")),
    )?;
    if bytes.len() as u64 > JSON_MAX {
        return Err(Error::Invalid(format!(
            "GET {url}: the manifest is larger than {JSON_MAX} bytes: not a manifest"
        )));
    }
    let digest = Digest::of(&bytes);
    let mismatch = |what: &str, named: &str| {
        Error::Invalid(format!(
            "GET {url}: the manifest's bytes hash to {digest}, but {what} says {named}: the \
             registry or something between is corrupt or tampered with; nothing was stored"
        ))
    };
    if let Some(expected) = expected {
        if *expected != digest {
            return Err(mismatch("the reference", &expected.to_string()));
        }
    }
    if let Some(announced) = announced {
        if announced != digest.to_string() {
            return Err(mismatch("Docker-Content-Digest", &announced));
        }
    }
    if let Some(size) = size {
        if size != bytes.len() as u64 {
            return Err(mismatch("the index's size", &format!("{size} bytes")));
        }
    }
    // Some registries say `application/json`: the document's own mediaType is then the word.
    let body: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let own = body.as_ref().and_then(|value| value.get("mediaType")?.as_str().map(str::to_string));
    let media_type = if media_type.starts_with("application/vnd.") {
        media_type.split(';').next().unwrap_or_default().trim().to_string()
    } else {
        own.clone().unwrap_or_else(|| MediaType::ImageManifest.to_string())
    };
    // Docker's schema 1 (before 2016): signed JSON without a config blob, which isolab does
    // not read; said as such rather than as a missing field.
    let schema = body.as_ref().and_then(|value| value.get("schemaVersion")?.as_u64());
    if schema == Some(1) || media_type.starts_with(DOCKER_SCHEMA1) {
        return Err(Error::Invalid(format!(
            "GET {url}: a docker schema 1 manifest, which isolab does not read: push the image \
             again with a current docker or skopeo (they write schema 2 or OCI)"
        )));
    }
    // Only the four kinds we asked for are stored, under the type the body itself claims
    // when it claims one: a manifest served as something else is refused, not recorded
    // under a made-up type.
    if !ACCEPT.split(", ").any(|accepted| accepted.trim() == media_type) {
        return Err(Error::Invalid(format!(
            "GET {url}: served as {media_type:?}, which is no image manifest or index isolab \
             asked for: the registry is misconfigured"
        )));
    }
    if let Some(own) = own.filter(|own| *own != media_type) {
        return Err(Error::Invalid(format!(
            "GET {url}: served as {media_type}, but the document says it is {own}: the \
             registry or something between is corrupt; nothing was stored"
        )));
    }
    Ok((bytes, media_type, digest))
}

/// `GET /v2/<name>/blobs/<digest>` streamed into the layout, verified against the digest and
/// the size the manifest promised (no more is read than that, plus one byte to notice). A
/// failed or interrupted read leaves nothing: `put_blob` removes its `.partial-` file.
fn fetch_blob(
    client: &mut Client,
    layout: &Layout,
    digest: &Digest,
    size: u64,
    options: &Options,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<()> {
    let url = client.url(&format!("blobs/{digest}"));
    let response = client.send(Method::GET, &url, &[], Payload::Empty)?;
    let mut response = expect(
        &Method::GET,
        &url,
        response,
        &[200],
        "the registry lost a blob its manifest names: push the image again",
    )?;
    let body = response.body_mut().as_reader().take(size + 1);
    let mut reader = Watched::new(body, options.interrupted, on_bytes);
    let put = layout.put_blob(&mut reader, Some(digest));
    let (_, received) = put.map_err(|error| match (reader.failure.take(), error) {
        // The network failed (a timeout, a reset), not the disk the layout writes to.
        (Some(failure), _) => client.failed(&Method::GET, &url, ureq::Error::from(failure)),
        (None, Error::Invalid(message)) => Error::Invalid(format!("GET {url}: {message}")),
        (None, other) => other,
    })?;
    if received != size {
        // The digest matched, so this is the manifest's size that lies.
        return Err(Error::Invalid(format!(
            "GET {url}: the blob is {received} bytes, the manifest says {size}: the manifest \
             is wrong; push the image again"
        )));
    }
    Ok(())
}

/// A blob of the layout, whole and verified.
fn read_blob(layout: &Layout, digest: &Digest) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    layout.open_blob(digest)?.take(JSON_MAX + 1).read_to_end(&mut bytes).map_err(|error| {
        match error.kind() {
            io::ErrorKind::InvalidData => Error::Invalid(error.to_string()),
            _ => Error::io("read", layout.blob_path(digest), &error),
        }
    })?;
    Ok(bytes)
}

/// `bytes` as JSON of type `T`, or an error naming the digest and what was expected.
fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    digest: &Digest,
    what: &str,
) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|error| Error::Invalid(format!("{digest} is not an {what} ({error})")))
}

fn is_index(media_type: &str) -> bool {
    media_type == MediaType::ImageIndex.to_string() || media_type == DOCKER_MANIFEST_LIST
}

/// This machine's architecture in the OCI spelling (Go's `GOARCH`), as image configs say it.
fn architecture() -> &'static str {
    crate::image::config::oci_architecture(std::env::consts::ARCH)
}

/// The index entry for linux on this architecture, if any.
fn choose_platform(index: &ImageIndex) -> Option<&Descriptor> {
    index.manifests().iter().find(|entry| {
        let Some(platform) = entry.platform() else { return false };
        let platform = serde_json::to_value(platform).unwrap_or_default();
        platform["os"] == "linux" && platform["architecture"] == architecture()
    })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// One request as a fake registry saw it.
    #[derive(Debug)]
    struct Seen {
        line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            let found = self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name));
            found.map(|(_, value)| value.as_str())
        }
    }

    /// A registry on 127.0.0.1 that answers `count` requests, each on its own connection
    /// (`Connection: close`), with what `answer` makes of it; returns its address and, once it
    /// is done, what it saw.
    fn fake_registry(
        count: usize,
        answer: impl Fn(usize, &Seen) -> String + Send + 'static,
    ) -> (String, thread::JoinHandle<Vec<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = thread::spawn(move || {
            let mut seen = Vec::new();
            for number in 0..count {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut headers = Vec::new();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let Some((key, value)) = header.trim_end().split_once(": ") else { break };
                    headers.push((key.to_string(), value.to_string()));
                }
                let mut request = Seen { line: line.trim_end().into(), headers, body: vec![] };
                let length = request.header("content-length").map_or(0, |n| n.parse().unwrap());
                request.body = vec![0; length];
                reader.read_exact(&mut request.body).unwrap();
                let head = answer(number, &request);
                let mut stream = stream;
                write!(stream, "{head}Content-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
                seen.push(request);
            }
            seen
        });
        (addr, server)
    }

    fn client(addr: &str) -> Client {
        let reference: Reference = format!("{addr}/team/app:1").parse().unwrap();
        Client::new(&reference, &Options::default()).unwrap()
    }

    #[test]
    fn chunks_say_their_range_and_follow_each_new_location() {
        // 10 bytes in chunks of 4: 0-3, 4-7, 8-9; the registry moves the session each time.
        let (addr, server) = fake_registry(3, |number, seen| {
            let (start, end) = seen.header("content-range").unwrap().split_once('-').unwrap();
            let end: u64 = end.parse().unwrap();
            assert_eq!(start.parse::<u64>().unwrap(), number as u64 * 4);
            format!(
                "HTTP/1.1 202 Accepted\r\nRange: 0-{end}\r\nLocation: /v2/team/app/blobs/uploads/s{}?_state=x\r\n",
                number + 2
            )
        });
        let mut client = client(&addr);
        let mut location = client.absolute("/v2/team/app/blobs/uploads/s1?_state=x").unwrap();
        send_chunks(&mut client, &mut location, &mut &b"0123456789"[..], 4).unwrap();
        assert_eq!(location, format!("http://{addr}/v2/team/app/blobs/uploads/s4?_state=x"));

        let seen = server.join().unwrap();
        let lines: Vec<_> = seen.iter().map(|seen| seen.line.as_str()).collect();
        assert_eq!(
            lines,
            [
                "PATCH /v2/team/app/blobs/uploads/s1?_state=x HTTP/1.1",
                "PATCH /v2/team/app/blobs/uploads/s2?_state=x HTTP/1.1",
                "PATCH /v2/team/app/blobs/uploads/s3?_state=x HTTP/1.1",
            ]
        );
        let ranges: Vec<_> =
            seen.iter().map(|seen| seen.header("content-range").unwrap()).collect();
        assert_eq!(ranges, ["0-3", "4-7", "8-9"]);
        let body: Vec<u8> = seen.iter().flat_map(|seen| seen.body.clone()).collect();
        assert_eq!(body, b"0123456789");
        for seen in &seen {
            assert_eq!(seen.header("content-type"), Some("application/octet-stream"));
        }
    }

    #[test]
    fn a_registry_that_holds_other_bytes_than_were_sent_is_an_error() {
        // It answers the first chunk (0-3) as if it held 0-1 only.
        let (addr, server) = fake_registry(1, |_, _| {
            "HTTP/1.1 202 Accepted\r\nRange: 0-1\r\nLocation: /v2/team/app/blobs/uploads/s2\r\n"
                .into()
        });
        let mut client = client(&addr);
        let mut location = client.absolute("/v2/team/app/blobs/uploads/s1").unwrap();
        let error = send_chunks(&mut client, &mut location, &mut &b"0123456789"[..], 4)
            .unwrap_err()
            .to_string();
        server.join().unwrap();
        assert!(error.starts_with(&format!("PATCH http://{addr}/v2/team/app/blobs/uploads/s1")));
        assert!(error.contains("\"0-1\"") && error.contains("expected 0-3"), "{error}");
    }

    #[test]
    fn a_blob_that_stalls_mid_way_times_out_naming_its_url_and_leaves_no_partial() {
        // Headers and 10 of the 100 bytes promised, then nothing for longer than the timeout.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while reader.read_line(&mut head).unwrap() > 2 {}
            write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").unwrap();
            thread::sleep(std::time::Duration::from_secs(3));
        });
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let reference: Reference = format!("{addr}/team/app:1").parse().unwrap();
        let options = Options { timeout: std::time::Duration::from_secs(1), ..Options::default() };
        let mut client = Client::new(&reference, &options).unwrap();
        let digest = Digest::of(b"what it never sends");
        let error = fetch_blob(&mut client, &layout, &digest, 100, &options, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(error.starts_with(&format!("GET http://{addr}/v2/team/app/blobs/{digest} ")));
        assert!(error.contains("timed out") && error.contains("--timeout"), "{error}");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        server.join().unwrap();
    }

    #[test]
    fn an_interrupt_stops_a_reader_at_its_next_read_and_progress_counts_bytes() {
        static FLAG: AtomicBool = AtomicBool::new(false);
        let mut seen = Vec::new();
        let mut on_bytes = |done| seen.push(done);
        let mut reader = Watched::new(&b"0123456789"[..], Some(&FLAG), &mut on_bytes);
        let mut buffer = [0; 4];
        assert_eq!(reader.read(&mut buffer).unwrap(), 4);
        assert_eq!(reader.read(&mut buffer).unwrap(), 4);
        FLAG.store(true, Ordering::SeqCst);
        let error = reader.read(&mut buffer).unwrap_err();
        // Not `Interrupted`: `read_to_end` and `io::copy` would just read again.
        assert_ne!(error.kind(), io::ErrorKind::Interrupted);
        assert_eq!(seen, [4, 8]);
    }
}
