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

mod client;

use std::io::{self, Read};
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use ureq::http::Method;

use client::{expect, header, Client, Payload};
pub use client::{Credentials, Options};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::layout::{descriptor, digest_of, Layout, INDEX_DEPTH_MAX, JSON_MAX};
use crate::image::reference::Reference;

/// Docker's manifest media types, which registries still serve for most images.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

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

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushed {
    pub blobs_sent: usize,
    pub bytes_sent: u64,
    pub blobs_skipped: usize,
    pub bytes_skipped: u64,
    pub blobs_mounted: usize,
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
}

// ANCHOR: push
/// Pushes the image whose manifest `manifest` names (a blob of `layout`) to `reference`'s
/// repository and tag: each blob the registry lacks (config and layers), then the manifest
/// with its own media type. `mount_from` names other repositories of the same registry that
/// may hold the blobs already (the registry then links them in, nothing travels).
pub fn push(
    layout: &Layout,
    manifest: &Descriptor,
    reference: &Reference,
    options: &Options,
    mount_from: &[String],
    mut on_blob: impl FnMut(&BlobEvent),
) -> Result<Pushed> {
    let mut client = Client::new(reference, options)?;
    client.ping()?;
    let manifest_digest = digest_of(manifest)?;
    let manifest_bytes = read_blob(layout, &manifest_digest)?;
    let image: ImageManifest = parse_json(&manifest_bytes, &manifest_digest, "image manifest")?;

    let mut pushed = Pushed::default();
    // The config first, then the layers bottom up: the order docker pushes in.
    for blob in std::iter::once(image.config()).chain(image.layers()) {
        let digest = digest_of(blob)?;
        let size = blob.size();
        let moved = if blob_exists(&mut client, &digest)? {
            pushed.blobs_skipped += 1;
            pushed.bytes_skipped += size;
            Moved::Skipped
        } else if upload(&mut client, layout, &digest, mount_from)? {
            pushed.blobs_mounted += 1;
            pushed.bytes_skipped += size;
            Moved::Mounted
        } else {
            pushed.blobs_sent += 1;
            pushed.bytes_sent += size;
            Moved::Sent
        };
        on_blob(&BlobEvent { digest, size, moved });
    }

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
/// `PUT <Location>&digest=<digest>`, streamed from the layout's file and verified as it is
/// read (a blob corrupted on our disk fails the upload rather than travelling).
fn upload(
    client: &mut Client,
    layout: &Layout,
    digest: &Digest,
    mount_from: &[String],
) -> Result<bool> {
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
                let location = client.absolute(&location);
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
    let location = client.absolute(&location);
    let separator = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{separator}digest={digest}");
    let mut reader = layout.open_blob(digest)?;
    let headers = [("Content-Type", "application/octet-stream")];
    let response = client.send(Method::PUT, &url, &headers, Payload::Stream(&mut reader));
    // Shown without the session's query: it is long and says nothing to a reader.
    let shown = location.split('?').next().unwrap_or(&location).to_string();
    let finished = response.and_then(|response| {
        expect(&Method::PUT, &shown, response, &[201], "the registry refused the blob")
    });
    if let Err(error) = finished {
        // No session is left open on the registry: cancel it (it may be gone already).
        let _ = client.send(Method::DELETE, &location, &[], Payload::Empty);
        return Err(error);
    }
    Ok(false)
}
// ANCHOR_END: upload

// ANCHOR: pull
/// Pulls `reference` into `layout`: its manifest (this platform's, from an index), then each
/// blob the layout lacks, verified; the manifest goes in last. Tags nothing: the caller does,
/// once everything is in.
pub fn pull(
    layout: &Layout,
    reference: &Reference,
    options: &Options,
    mut on_blob: impl FnMut(&BlobEvent),
) -> Result<Pulled> {
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

    let mut pulled = Pulled {
        descriptor: descriptor(MediaType::from(media_type.as_str()), &digest, bytes.len() as u64),
        blobs_fetched: 0,
        bytes_fetched: 0,
        blobs_skipped: 0,
    };
    for blob in std::iter::once(image.config()).chain(image.layers()) {
        let blob_digest = digest_of(blob)?;
        let moved = if layout.has_blob(&blob_digest) {
            pulled.blobs_skipped += 1;
            Moved::Skipped
        } else {
            fetch_blob(&mut client, layout, &blob_digest, blob.size())?;
            pulled.blobs_fetched += 1;
            pulled.bytes_fetched += blob.size();
            Moved::Sent
        };
        on_blob(&BlobEvent { digest: blob_digest, size: blob.size(), moved });
    }
    layout.put_blob(&bytes[..], Some(&digest))?;
    Ok(pulled)
}
// ANCHOR_END: pull

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
    let media_type = if media_type.starts_with("application/vnd.") {
        media_type.split(';').next().unwrap_or_default().trim().to_string()
    } else {
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|value| value.get("mediaType")?.as_str().map(str::to_string))
            .unwrap_or_else(|| MediaType::ImageManifest.to_string())
    };
    Ok((bytes, media_type, digest))
}

/// `GET /v2/<name>/blobs/<digest>` streamed into the layout, verified against the digest and
/// the size the manifest promised (no more is read than that, plus one byte to notice).
fn fetch_blob(client: &mut Client, layout: &Layout, digest: &Digest, size: u64) -> Result<()> {
    let url = client.url(&format!("blobs/{digest}"));
    let response = client.send(Method::GET, &url, &[], Payload::Empty)?;
    let mut response = expect(
        &Method::GET,
        &url,
        response,
        &[200],
        "the registry lost a blob its manifest names: push the image again",
    )?;
    let reader = response.body_mut().as_reader().take(size + 1);
    let (_, received) = layout.put_blob(reader, Some(digest)).map_err(|error| match error {
        Error::Invalid(message) => Error::Invalid(format!("GET {url}: {message}")),
        other => other,
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

/// This machine's architecture in the OCI spelling (Go's `GOARCH`).
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The index entry for linux on this architecture, if any.
fn choose_platform(index: &ImageIndex) -> Option<&Descriptor> {
    index.manifests().iter().find(|entry| {
        let Some(platform) = entry.platform() else { return false };
        let platform = serde_json::to_value(platform).unwrap_or_default();
        platform["os"] == "linux" && platform["architecture"] == architecture()
    })
}
