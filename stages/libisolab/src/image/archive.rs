//! `save` and `load`: images in and out of the store as one tar.
//!
//! What `save` writes is an OCI image layout in a tar (OCI image-spec, `image-layout.md`):
//! `oci-layout`, `index.json` with one descriptor per tag, and every blob those reach. Beside
//! them goes docker's `manifest.json` (the format of `docker save`, moby's
//! `image/tarexport`), whose paths point at the same blobs: so `docker load`, `podman load`,
//! `skopeo copy oci-archive:` and `umoci` (once untarred) all read the one file. The tar is
//! deterministic (entries sorted, mtime 0, owner 0:0, modes 0644/0755), so saving the same
//! images twice gives the same bytes.
//!
//! `load` reads either kind: an OCI layout tar, whose blobs are named by their digests and are
//! refused, whole load and all, if one does not match its name; or a `docker save` tar, whose
//! layers and config are files named by paths that `manifest.json` lists (possibly last), and
//! for which `load` writes the OCI manifest docker did not. The tar is read in one pass: every
//! file that may be a blob goes into the layout through [`Layout::put_blob`] as it comes, and
//! the tags are set only once every blob is in and checked. Entry names are never used as
//! paths on disk (a blob's name is its digest), and a name that climbs out (`..`, `/`) refuses
//! the archive: whoever made it meant harm.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType};
use serde::{Deserialize, Serialize};

use super::layout::{descriptor, digest_of, ref_name, to_json, Layout, INDEX_DEPTH_MAX, REF_NAME};
use super::reference::Reference;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Docker's media types for the same two documents as OCI's manifest and index
/// (distribution's `manifest/schema2` and `manifest/manifestlist`); a store that pulled from
/// a docker registry holds them, and their JSON is the same shape.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The annotation containerd and docker ≥ 25 put the full name in (their `ref.name` holds the
/// tag alone); `load` prefers it.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The most a metadata file of an archive (`index.json`, `manifest.json`, `oci-layout`) may
/// weigh: they list images, a few kilobytes; a larger one is not what it claims to be.
const METADATA_MAX: u64 = 16 << 20;

/// One image of docker's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
struct DockerManifest {
    /// The path of the config in the tar.
    #[serde(rename = "Config")]
    config: String,
    /// `name:tag` of each tag; `null` for an untagged image.
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    /// The paths of the layer tars in the tar, bottom first.
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// What [`load`] did.
#[derive(Debug)]
pub struct Loaded {
    /// Each image of the archive: its tag (`None`: untagged) and its manifest's descriptor.
    pub refs: Vec<(Option<String>, Descriptor)>,
    /// How many blobs were new to the layout.
    pub blobs_added: usize,
    /// How many bytes they weigh.
    pub bytes_added: u64,
}

// ANCHOR: save
/// The name a loaded image gets for `name` (see [`load_as`]).
/// A name that is no reference (a newline, an escape sequence, `../x`) is refused: it would
/// be printed by `images` as it is, and no command could name it.
fn normalised(name: &str, repository: &str) -> Result<String> {
    let bare_tag = !name.contains(['/', ':', '@'])
        && name.parse::<Reference>().is_ok_and(|reference| reference.tag.is_none());
    let full = if bare_tag { format!("{repository}:{name}") } else { name.to_string() };
    full.parse::<Reference>().map(|reference| reference.name()).map_err(|_| {
        Error::Invalid(format!(
            "the archive names an image {name:?}, which is not an image name: nothing was tagged"
        ))
    })
}

/// Writes an OCI image layout as a tar to `out`: `oci-layout`, `index.json` with the given
/// tags (each descriptor with its `ref.name` annotation), every blob they reach (manifests,
/// configs, layers; image indexes followed too), each read back verified, and docker's
/// `manifest.json` so `docker load` reads it as well. Deterministic: entries sorted, mtime 0,
/// uid/gid 0, modes 0644 and 0755.
pub fn save(layout: &Layout, images: &[(String, Descriptor)], out: impl Write) -> Result<()> {
    let mut blobs = BTreeMap::new();
    let mut docker: Vec<(Digest, DockerManifest)> = Vec::new();
    let mut index_entries = Vec::new();
    for (name, image) in images {
        collect_blobs(layout, image, &mut blobs)?;
        let mut entry = image.clone();
        let mut annotations = entry.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME.to_string(), name.clone());
        entry.set_annotations(Some(annotations));
        index_entries.push(entry);

        // Docker's manifest.json knows single-platform images only, and tags it can parse
        // (`docker load` refuses the archive over a tag like `latest` alone).
        if !is_manifest(image.media_type()) {
            continue;
        }
        let manifest_digest = digest_of(image)?;
        let parsed = name.parse::<Reference>();
        let tag = parsed.is_ok_and(|reference| reference.tag.is_some()).then(|| name.clone());
        if let Some((_, existing)) = docker.iter_mut().find(|(d, _)| *d == manifest_digest) {
            existing.repo_tags.get_or_insert_with(Vec::new).extend(tag);
            continue;
        }
        let manifest: ImageManifest = layout.read_json(&manifest_digest)?;
        let layers = manifest.layers().iter().map(blob_entry).collect::<Result<Vec<_>>>()?;
        docker.push((
            manifest_digest,
            DockerManifest {
                config: blob_entry(manifest.config())?,
                repo_tags: Some(tag.into_iter().collect()),
                layers,
            },
        ));
    }

    let mut index = ImageIndex::default();
    index.set_schema_version(2);
    index.set_media_type(Some(MediaType::ImageIndex));
    index.set_manifests(index_entries);
    let docker: Vec<DockerManifest> = docker.into_iter().map(|(_, manifest)| manifest).collect();

    let mut tar = tar::Builder::new(out);
    let failed = |error: io::Error| match error.kind() {
        // A blob that changed on disk: the verifying reader's message names it.
        io::ErrorKind::InvalidData => Error::Invalid(error.to_string()),
        _ => Error::io("write", "the archive", &error),
    };
    // Sorted: "blobs/" < "blobs/sha256/" < "blobs/sha256/<hex>"… < "index.json" <
    // "manifest.json" < "oci-layout".
    append(&mut tar, "blobs/", 0, io::empty()).map_err(failed)?;
    append(&mut tar, "blobs/sha256/", 0, io::empty()).map_err(failed)?;
    for digest in blobs.values() {
        let path = layout.blob_path(digest);
        let size = std::fs::symlink_metadata(&path).map_err(|e| Error::io("lstat", &path, &e))?;
        let reader = Exactly { inner: layout.open_blob(digest)?, remaining: size.len() };
        append(&mut tar, &blob_path(digest), size.len(), reader).map_err(failed)?;
    }
    for (name, bytes) in [
        ("index.json", to_json(&index)?),
        ("manifest.json", to_json(&docker)?),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
    ] {
        append(&mut tar, name, bytes.len() as u64, &bytes[..]).map_err(failed)?;
    }
    let mut out = tar.into_inner().map_err(failed)?;
    out.flush().map_err(failed)
}
// ANCHOR_END: save

/// Appends one entry with the fixed owner, time and mode that make the tar deterministic; a
/// name ending in `/` is a directory.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    let directory = name.ends_with('/');
    header.set_entry_type(if directory {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    header.set_mode(if directory { 0o755 } else { 0o644 });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    tar.append_data(&mut header, name, data)
}

/// A reader that must give exactly `remaining` bytes, the size already written in the tar
/// header, and then reaches its inner reader's end, so that a verifying reader gets to check
/// (a plain `take` would stop short of the end, and the check would never run). A blob that
/// grew or shrank since its size was read fails, rather than leave a corrupt archive.
struct Exactly<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let changed =
            || io::Error::new(io::ErrorKind::InvalidData, "a blob changed size while saved");
        if self.remaining == 0 {
            return match self.inner.read(&mut [0u8; 1])? {
                0 => Ok(0),
                _ => Err(changed()),
            };
        }
        let wanted = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..wanted])?;
        if read == 0 && wanted > 0 {
            return Err(changed());
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// Adds the blob `descriptor` names to `blobs`, and for a manifest or an index every blob it
/// names, recursively.
/// Every blob `descriptor` reaches (itself, and for a manifest its config and layers, for an
/// index every manifest of every platform), each once, indexes nested at most
/// [`INDEX_DEPTH_MAX`] deep: what `save` writes, and what gc must keep.
pub(crate) fn collect_blobs(
    layout: &Layout,
    descriptor: &Descriptor,
    blobs: &mut BTreeMap<String, Digest>,
) -> Result<()> {
    collect_blobs_at(layout, descriptor, blobs, 0)
}

fn collect_blobs_at(
    layout: &Layout,
    descriptor: &Descriptor,
    blobs: &mut BTreeMap<String, Digest>,
    depth: usize,
) -> Result<()> {
    if depth > INDEX_DEPTH_MAX {
        return Err(Error::Invalid(format!(
            "image indexes nest deeper than {INDEX_DEPTH_MAX} levels under {}",
            descriptor.digest()
        )));
    }
    let digest = digest_of(descriptor)?;
    if blobs.insert(digest.hex(), digest).is_some() {
        return Ok(());
    }
    let media_type = descriptor.media_type();
    if is_manifest(media_type) {
        let manifest: ImageManifest = layout.read_json(&digest)?;
        collect_blobs_at(layout, manifest.config(), blobs, depth + 1)?;
        for layer in manifest.layers() {
            collect_blobs_at(layout, layer, blobs, depth + 1)?;
        }
    } else if is_index(media_type) {
        let index: ImageIndex = layout.read_json(&digest)?;
        for manifest in index.manifests() {
            collect_blobs_at(layout, manifest, blobs, depth + 1)?;
        }
    }
    Ok(())
}

fn is_manifest(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageManifest)
        || matches!(media_type, MediaType::Other(other) if other == DOCKER_MANIFEST)
}

fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex)
        || matches!(media_type, MediaType::Other(other) if other == DOCKER_MANIFEST_LIST)
}

/// `blobs/sha256/<hex>`: a blob's path in the archive (and in the layout, from its root).
fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The archive path of the blob a descriptor names.
fn blob_entry(descriptor: &Descriptor) -> Result<String> {
    Ok(blob_path(&digest_of(descriptor)?))
}

/// A file of the archive stored as a blob.
#[derive(Debug, Clone, Copy)]
struct Stored {
    digest: Digest,
    size: u64,
    /// Starts with gzip's magic number, `1f 8b` (RFC 1952, 2.3.1).
    gzip: bool,
}

/// What one pass over the archive found.
#[derive(Debug, Default)]
struct Found {
    oci_layout: Option<Vec<u8>>,
    index: Option<Vec<u8>>,
    docker_manifest: Option<Vec<u8>>,
    /// Files stored as blobs, by their (normalised) path in the archive.
    files: HashMap<String, Stored>,
    /// Links, by path, to the (normalised) path they point at.
    links: HashMap<String, String>,
    blobs_added: usize,
    bytes_added: u64,
}

// ANCHOR: load
/// Reads an image archive, an OCI layout tar or a `docker save` tar, into `layout`: every
/// blob through [`Layout::put_blob`] (checked against its name when it has one), then, once
/// all are in and every manifest's blobs are there, the tags. A blob that does not match its
/// digest refuses the whole load with the blob named, and leaves the tags as they were (the
/// blobs stored before it stay, untagged, until gc).
pub fn load(layout: &Layout, input: impl Read) -> Result<Loaded> {
    load_as(layout, input, "loaded")
}

/// [`load`], naming an image whose ref name is a tag alone (`v1`, as umoci and skopeo's
/// `oci:DIR:TAG` write it: the OCI layout's names are tags) `<repository>:<tag>`; every other
/// name is normalised as `run` reads it (`app` is `app:latest`, `docker.io/library/app:1` is
/// `app:1`), so that a name `images` shows is one `run` finds.
pub fn load_as(layout: &Layout, input: impl Read, repository: &str) -> Result<Loaded> {
    let found = read_archive(layout, input)?;
    let images = if let Some(index) = &found.index {
        oci_images(layout, &found, index)?
    } else if let Some(manifest) = &found.docker_manifest {
        docker_images(layout, &found, manifest)?
    } else {
        return Err(Error::Invalid(
            "the archive is not an image archive: it has neither index.json and oci-layout \
             (an OCI layout) nor manifest.json (docker save)"
                .into(),
        ));
    };

    // Every blob is in: now, and only now, the tags.
    let mut refs = Vec::new();
    let mut blobs_added = found.blobs_added;
    let mut bytes_added = found.bytes_added;
    // Every name is checked before the first is set: a bad one tags nothing.
    let all_names = images
        .iter()
        .map(|image| image.names.iter().map(|name| normalised(name, repository)).collect())
        .collect::<Result<Vec<Vec<String>>>>()?;
    for (image, names) in images.into_iter().zip(all_names) {
        if image.manifest_is_new {
            blobs_added += 1;
            bytes_added += image.descriptor.size();
        }
        for name in &names {
            layout.set_ref(name, image.descriptor.clone())?;
        }
        // What set_ref stored: the descriptor with its name.
        if image.names.is_empty() {
            refs.push((None, image.descriptor.clone()));
        }
        for name in names {
            let mut descriptor = image.descriptor.clone();
            let mut annotations = descriptor.annotations().clone().unwrap_or_default();
            annotations.insert(REF_NAME.to_string(), name.clone());
            descriptor.set_annotations(Some(annotations));
            refs.push((Some(name), descriptor));
        }
    }
    Ok(Loaded { refs, blobs_added, bytes_added })
}
// ANCHOR_END: load

/// An image found in an archive, its blobs all in the layout.
struct Image {
    descriptor: Descriptor,
    names: Vec<String>,
    /// `load` wrote its manifest (docker tars have none of their own).
    manifest_is_new: bool,
}

/// The one pass over the tar: metadata kept in memory, everything that may be a blob stored.
fn read_archive(layout: &Layout, input: impl Read) -> Result<Found> {
    let mut archive = tar::Archive::new(input);
    let mut found = Found::default();
    let unreadable = |error: io::Error| match error.kind() {
        io::ErrorKind::InvalidData => Error::Invalid(format!("the archive is corrupt: {error}")),
        _ => Error::io("read", "the archive", &error),
    };
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = normalise(&raw_name, false)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            // `docker save` (before 25) links a layer shared by two images to its first copy.
            let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
            let Some(target) = target else { continue };
            let target = if kind.is_symlink() {
                let parent = name.rsplit_once('/').map_or("", |(parent, _)| parent);
                normalise(&format!("{parent}/{target}"), true)?
            } else {
                normalise(&target, true)?
            };
            found.links.insert(name, target);
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        match name.as_str() {
            "oci-layout" => found.oci_layout = Some(read_metadata(&mut entry, &name)?),
            "index.json" => found.index = Some(read_metadata(&mut entry, &name)?),
            "manifest.json" => found.docker_manifest = Some(read_metadata(&mut entry, &name)?),
            _ if may_be_blob(&name) => {
                let stored = store_entry(layout, &mut entry, &name, &mut found)?;
                found.files.insert(name, stored);
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Files that may be blobs: everything under `blobs/` (OCI, and docker ≥ 25), layer tars
/// (`<id>/layer.tar`) and top-level JSON configs (`<hex>.json`) of older `docker save`.
fn may_be_blob(name: &str) -> bool {
    name.starts_with("blobs/")
        || name.ends_with(".tar")
        || (name.ends_with(".json") && !name.contains('/'))
}

/// Stores one entry as a blob (named by its path's digest under `blobs/sha256/`, checked),
/// unless the layout has it already, and says what it is.
fn store_entry<R: Read>(
    layout: &Layout,
    entry: &mut tar::Entry<'_, R>,
    name: &str,
    found: &mut Found,
) -> Result<Stored> {
    let expected = match name.strip_prefix("blobs/sha256/") {
        Some(hex) => Some(Digest::from_str(&format!("sha256:{hex}")).map_err(|error| {
            Error::Invalid(format!("archive entry {name} is not named by a digest: {error}"))
        })?),
        None => None,
    };
    let mut magic = Vec::with_capacity(2);
    if let Some(digest) = expected.filter(|digest| layout.has_blob(digest)) {
        // Ours is verified already; the tar reader skips the entry's bytes.
        let mut ours = layout.open_blob(&digest)?;
        ours.by_ref().take(2).read_to_end(&mut magic).map_err(|e| Error::io("read", name, &e))?;
        let size = std::fs::metadata(layout.blob_path(&digest))
            .map_err(|e| Error::io("stat", layout.blob_path(&digest), &e))?
            .len();
        return Ok(Stored { digest, size, gzip: magic == [0x1f, 0x8b] });
    }
    // Sniff the first two bytes, then hand them back in front of the rest.
    entry.by_ref().take(2).read_to_end(&mut magic).map_err(|e| Error::io("read", name, &e))?;
    let gzip = magic == [0x1f, 0x8b];
    let (digest, size, new) = layout
        .put_new_blob(magic.as_slice().chain(entry), expected.as_ref())
        .map_err(|error| match error {
            Error::Invalid(message) => {
                Error::Invalid(format!("archive entry {name}: {message}; nothing was tagged"))
            }
            other => other,
        })?;
    if new {
        found.blobs_added += 1;
        found.bytes_added += size;
    }
    Ok(Stored { digest, size, gzip })
}

/// Reads a small metadata file of the archive.
fn read_metadata(entry: &mut impl Read, name: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    entry
        .take(METADATA_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", format!("archive entry {name}"), &e))?;
    if bytes.len() as u64 > METADATA_MAX {
        return Err(Error::Invalid(format!(
            "archive entry {name} is larger than {METADATA_MAX} bytes: not an image's {name}"
        )));
    }
    Ok(bytes)
}

/// An entry's path as a plain relative path (`./a//b/` is `a/b`). An absolute one is
/// refused, naming it, and so is one with `..`, unless `parent` allows it (a link's target,
/// `../abc/layer.tar`), and then only while it stays inside the archive.
fn normalise(name: &str, parent: bool) -> Result<String> {
    let climbs = || {
        Error::Invalid(format!(
            "archive entry {name:?} climbs out of the archive (an absolute path or '..'): \
             refusing the whole archive, whoever made it did it on purpose"
        ))
    };
    if name.starts_with('/') {
        return Err(climbs());
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." if parent => {
                parts.pop().ok_or_else(climbs)?;
            }
            ".." => return Err(climbs()),
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// The images of an OCI layout tar: every descriptor of its `index.json`, checked to reach
/// only blobs that are now in the layout, with the sizes the descriptors say.
fn oci_images(layout: &Layout, found: &Found, index: &[u8]) -> Result<Vec<Image>> {
    let Some(version) = &found.oci_layout else {
        return Err(Error::Invalid(
            "the archive has index.json but no oci-layout: not an OCI image layout".into(),
        ));
    };
    let version: serde_json::Value = serde_json::from_slice(version).map_err(|error| {
        Error::Invalid(format!("the archive's oci-layout is not JSON: {error}"))
    })?;
    if version["imageLayoutVersion"] != "1.0.0" {
        return Err(Error::Invalid(format!(
            "the archive's oci-layout says imageLayoutVersion {}; isolab reads 1.0.0 only",
            version["imageLayoutVersion"]
        )));
    }
    let index: ImageIndex = serde_json::from_slice(index).map_err(|error| {
        Error::Invalid(format!("the archive's index.json is not an image index: {error}"))
    })?;
    let mut images = Vec::new();
    // One set for the whole archive: each blob is walked once, however many entries list it.
    let mut seen = BTreeSet::new();
    for descriptor in index.manifests() {
        check_present(layout, descriptor, &mut seen, 0)?;
        let annotations = descriptor.annotations().as_ref();
        let name = annotations
            .and_then(|annotations| annotations.get(CONTAINERD_NAME))
            .map(String::as_str)
            .or_else(|| ref_name(descriptor));
        images.push(Image {
            descriptor: descriptor.clone(),
            names: name.map(str::to_string).into_iter().collect(),
            manifest_is_new: false,
        });
    }
    Ok(images)
}

/// Is the blob `descriptor` names in the layout with its size, and for a manifest or an index
/// every blob it names?
fn check_present(
    layout: &Layout,
    descriptor: &Descriptor,
    seen: &mut BTreeSet<String>,
    depth: usize,
) -> Result<()> {
    let digest = digest_of(descriptor)?;
    if depth > INDEX_DEPTH_MAX {
        return Err(Error::Invalid(format!(
            "the archive nests image indexes deeper than {INDEX_DEPTH_MAX} levels: nothing was \
             tagged"
        )));
    }
    // Each blob is checked once, however many indexes list it.
    if !seen.insert(digest.hex()) {
        return Ok(());
    }
    let path = layout.blob_path(&digest);
    let size = match std::fs::symlink_metadata(&path) {
        Ok(metadata) if metadata.is_file() => metadata.len(),
        _ => {
            return Err(Error::Invalid(format!(
                "the archive lacks blob {digest} ({}): nothing was tagged",
                descriptor.media_type()
            )))
        }
    };
    if size != descriptor.size() {
        return Err(Error::Invalid(format!(
            "blob {digest} has {size} bytes, but its descriptor says {}: nothing was tagged",
            descriptor.size()
        )));
    }
    if is_manifest(descriptor.media_type()) {
        let manifest: ImageManifest = layout.read_json(&digest)?;
        check_present(layout, manifest.config(), seen, depth + 1)?;
        for layer in manifest.layers() {
            check_present(layout, layer, seen, depth + 1)?;
        }
    } else if is_index(descriptor.media_type()) {
        let index: ImageIndex = layout.read_json(&digest)?;
        for manifest in index.manifests() {
            check_present(layout, manifest, seen, depth + 1)?;
        }
    }
    Ok(())
}

/// The images of a `docker save` tar: for each entry of `manifest.json`, an OCI manifest
/// written over its config and layers (stored by their own digests), tagged by its RepoTags.
fn docker_images(layout: &Layout, found: &Found, manifest: &[u8]) -> Result<Vec<Image>> {
    let entries: Vec<DockerManifest> = serde_json::from_slice(manifest).map_err(|error| {
        Error::Invalid(format!("the archive's manifest.json is not docker's: {error}"))
    })?;
    let mut images = Vec::new();
    for entry in entries {
        let config = lookup(found, &entry.config)?;
        let config_json: serde_json::Value = layout.read_json(&config.digest)?;
        let diff_ids = config_json["rootfs"]["diff_ids"].as_array().cloned().unwrap_or_default();
        if diff_ids.len() != entry.layers.len() {
            return Err(Error::Invalid(format!(
                "config {} lists {} layers (rootfs.diff_ids), manifest.json {}: the archive is \
                 inconsistent, nothing was tagged",
                entry.config,
                diff_ids.len(),
                entry.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for (path, diff_id) in entry.layers.iter().zip(&diff_ids) {
            let layer = lookup(found, path)?;
            // An uncompressed layer's digest is its diff_id: docker's only checksum of it.
            if !layer.gzip && diff_id.as_str() != Some(layer.digest.to_string().as_str()) {
                return Err(Error::Invalid(format!(
                    "layer {path} hashes to {}, but the config says {diff_id}: the archive is \
                     corrupt or was tampered with, nothing was tagged",
                    layer.digest
                )));
            }
            let media_type =
                if layer.gzip { MediaType::ImageLayerGzip } else { MediaType::ImageLayer };
            layers.push(descriptor(media_type, &layer.digest, layer.size));
        }
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(MediaType::ImageConfig, &config.digest, config.size))
            .layers(layers)
            .build()
            .map_err(|error| Error::Invalid(format!("cannot build a manifest: {error}")))?;
        let bytes = to_json(&manifest)?;
        let manifest_is_new = !layout.has_blob(&Digest::of(&bytes));
        let descriptor = layout.put_json(MediaType::ImageManifest, &manifest)?;
        images.push(Image {
            descriptor,
            names: entry.repo_tags.unwrap_or_default(),
            manifest_is_new,
        });
    }
    Ok(images)
}

/// The blob stored from archive path `path`, through links (a few, never a loop).
fn lookup(found: &Found, path: &str) -> Result<Stored> {
    let mut path = normalise(path, false)?;
    for _ in 0..8 {
        if let Some(stored) = found.files.get(&path) {
            return Ok(*stored);
        }
        match found.links.get(&path) {
            Some(target) => path = target.clone(),
            None => break,
        }
    }
    Err(Error::Invalid(format!(
        "manifest.json names {path}, which the archive lacks: nothing was tagged"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;
    use std::process::Command;

    /// The OCI name of the machine's architecture (image-spec `config.md` uses Go's GOARCH).
    fn oci_arch() -> &'static str {
        match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        }
    }

    /// A layer tar holding `hello.txt`, deterministic.
    fn layer_tar(content: &[u8]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(content.len() as u64);
        tar.append_data(&mut header, "hello.txt", content).unwrap();
        tar.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn config_json(diff_id: &Digest) -> serde_json::Value {
        serde_json::json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        })
    }

    /// A minimal image in `layout`, tagged `name`: one gzip layer, a config, a manifest.
    fn make_image(layout: &Layout, name: &str, content: &[u8]) -> Descriptor {
        let tar = layer_tar(content);
        let compressed = gzip(&tar);
        let (layer, size) = layout.put_blob(&compressed[..], None).unwrap();
        let config = layout.put_json(MediaType::ImageConfig, &config_json(&Digest::of(&tar)));
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config.unwrap())
            .layers(vec![descriptor(MediaType::ImageLayerGzip, &layer, size)])
            .build()
            .unwrap();
        let manifest = layout.put_json(MediaType::ImageManifest, &manifest).unwrap();
        layout.set_ref(name, manifest.clone()).unwrap();
        manifest
    }

    fn fresh_layout(dir: &Path, name: &str) -> Layout {
        Layout::open(&dir.join(name)).unwrap()
    }

    fn saved(layout: &Layout) -> Vec<u8> {
        let mut out = Vec::new();
        save(layout, &layout.refs().unwrap(), &mut out).unwrap();
        out
    }

    /// The archive's entries: name, mode, mtime, uid, gid.
    fn entries(tar_bytes: &[u8]) -> Vec<(String, u32, u64, u64, u64)> {
        let mut archive = tar::Archive::new(tar_bytes);
        let entries = archive.entries().unwrap();
        entries
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    header.mode().unwrap(),
                    header.mtime().unwrap(),
                    header.uid().unwrap(),
                    header.gid().unwrap(),
                )
            })
            .collect()
    }

    fn entry_bytes(tar_bytes: &[u8], name: &str) -> Vec<u8> {
        let mut archive = tar::Archive::new(tar_bytes);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some(name) {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                return bytes;
            }
        }
        panic!("no {name} in the archive")
    }

    /// A tar of `files`, in this order.
    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(bytes.len() as u64);
            // set_path would refuse `..`; an attacker's tar has whatever bytes it likes.
            let field = &mut header.as_old_mut().name;
            field[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            tar.append(&header, *bytes).unwrap();
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn save_writes_a_deterministic_oci_layout_with_docker_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let layout = fresh_layout(dir.path(), "store");
        let manifest = make_image(&layout, "app:v1", b"hello\n");
        let tar_bytes = saved(&layout);
        assert_eq!(saved(&layout), tar_bytes, "the same images give the same bytes");

        let entries = entries(&tar_bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names.len(), 2 + 3 + 3, "two directories, three blobs, three files");
        assert_eq!(names[..2], ["blobs/", "blobs/sha256/"]);
        assert_eq!(names[5..], ["index.json", "manifest.json", "oci-layout"]);
        for (name, mode, mtime, uid, gid) in &entries {
            let want = if name.ends_with('/') { 0o755 } else { 0o644 };
            assert_eq!((*mode, *mtime, *uid, *gid), (want, 0, 0, 0), "{name}");
        }

        let index: serde_json::Value =
            serde_json::from_slice(&entry_bytes(&tar_bytes, "index.json")).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"][0]["digest"], manifest.digest().to_string());
        assert_eq!(
            index["manifests"][0]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "app:v1");

        let docker: serde_json::Value =
            serde_json::from_slice(&entry_bytes(&tar_bytes, "manifest.json")).unwrap();
        let stored: ImageManifest = layout.read_json(&digest_of(&manifest).unwrap()).unwrap();
        assert_eq!(docker[0]["RepoTags"], serde_json::json!(["app:v1"]));
        assert_eq!(docker[0]["Config"], blob_entry(stored.config()).unwrap());
        assert_eq!(docker[0]["Layers"][0], blob_entry(&stored.layers()[0]).unwrap());
    }

    #[test]
    fn save_refuses_a_corrupted_blob_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let layout = fresh_layout(dir.path(), "store");
        let manifest = make_image(&layout, "app:v1", b"hello\n");
        let stored: ImageManifest = layout.read_json(&digest_of(&manifest).unwrap()).unwrap();
        let layer = digest_of(&stored.layers()[0]).unwrap();
        let mut bytes = fs::read(layout.blob_path(&layer)).unwrap();
        bytes[12] ^= 0x01;
        fs::write(layout.blob_path(&layer), &bytes).unwrap();

        let mut out = Vec::new();
        let error = save(&layout, &layout.refs().unwrap(), &mut out).unwrap_err().to_string();
        assert!(error.contains(&layer.hex()), "names the blob: {error}");
        assert!(error.contains("is corrupt"), "{error}");
    }

    #[test]
    fn save_then_load_into_a_fresh_layout_gives_the_same_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let source = fresh_layout(dir.path(), "source");
        let manifest = make_image(&source, "app:v1", b"hello\n");
        make_image(&source, "localhost:5000/team/other:v2", b"other\n");
        let tar_bytes = saved(&source);

        let target = fresh_layout(dir.path(), "target");
        let loaded = load(&target, &tar_bytes[..]).unwrap();
        assert_eq!(loaded.blobs_added, 6);
        let names: Vec<Option<&str>> = loaded.refs.iter().map(|(n, _)| n.as_deref()).collect();
        assert_eq!(names, [Some("app:v1"), Some("localhost:5000/team/other:v2")]);
        let refs = target.refs().unwrap();
        assert_eq!(refs[0].0, "app:v1");
        assert_eq!(refs[0].1.digest(), manifest.digest());
        assert_eq!(target.blobs().unwrap(), source.blobs().unwrap());
        let bytes: u64 = source
            .blobs()
            .unwrap()
            .iter()
            .map(|d| fs::metadata(source.blob_path(d)).unwrap().len())
            .sum();
        assert_eq!(loaded.bytes_added, bytes);

        // Loading again adds nothing and changes nothing.
        let again = load(&target, &tar_bytes[..]).unwrap();
        assert_eq!((again.blobs_added, again.bytes_added), (0, 0));
        assert_eq!(target.refs().unwrap().len(), 2);
    }

    #[test]
    fn load_reads_a_docker_save_tar() {
        let dir = tempfile::tempdir().unwrap();
        let layout = fresh_layout(dir.path(), "store");
        let layer = layer_tar(b"from docker\n");
        let config = serde_json::to_vec(&config_json(&Digest::of(&layer))).unwrap();
        let config_name = format!("{}.json", Digest::of(&config).hex());
        let docker_manifest = serde_json::to_vec(&serde_json::json!([
            {"Config": config_name, "RepoTags": ["busybox:latest"], "Layers": ["abc/layer.tar"]},
            {"Config": config_name, "RepoTags": null, "Layers": ["./def/layer.tar"]},
        ]))
        .unwrap();
        // Docker before 25 writes manifest.json last, and links a layer shared by two images.
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in [
            ("abc/layer.tar", &layer[..]),
            ("abc/VERSION", b"1.0"),
            (config_name.as_str(), &config[..]),
            ("repositories", b"{}"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, name, bytes).unwrap();
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        tar.append_link(&mut link, "def/layer.tar", "../abc/layer.tar").unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(docker_manifest.len() as u64);
        tar.append_data(&mut header, "manifest.json", &docker_manifest[..]).unwrap();
        let tar_bytes = tar.into_inner().unwrap();

        let loaded = load(&layout, &tar_bytes[..]).unwrap();
        assert_eq!(loaded.blobs_added, 3, "layer, config and the manifest load wrote");
        assert_eq!(loaded.refs.len(), 2);
        assert_eq!(loaded.refs[0].0.as_deref(), Some("busybox:latest"));
        assert_eq!(loaded.refs[1].0, None, "untagged");
        assert_eq!(loaded.refs[0].1.digest(), loaded.refs[1].1.digest());

        let (name, descriptor) = &layout.refs().unwrap()[0];
        assert_eq!(name, "busybox:latest");
        assert_eq!(descriptor.media_type(), &MediaType::ImageManifest);
        let manifest: ImageManifest = layout.read_json(&digest_of(descriptor).unwrap()).unwrap();
        assert_eq!(manifest.schema_version(), 2);
        assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
        assert_eq!(digest_of(manifest.config()).unwrap(), Digest::of(&config));
        assert_eq!(manifest.config().size(), config.len() as u64);
        assert_eq!(manifest.layers()[0].media_type(), &MediaType::ImageLayer, "not gzip");
        assert_eq!(digest_of(&manifest.layers()[0]).unwrap(), Digest::of(&layer));
    }

    #[test]
    fn load_sniffs_gzip_layers_of_docker_tars() {
        let dir = tempfile::tempdir().unwrap();
        let layout = fresh_layout(dir.path(), "store");
        let layer = layer_tar(b"zipped\n");
        let config = serde_json::to_vec(&config_json(&Digest::of(&layer))).unwrap();
        let docker_manifest = serde_json::to_vec(&serde_json::json!([
            {"Config": "config.json", "RepoTags": ["app:gz"], "Layers": ["l/layer.tar"]},
        ]))
        .unwrap();
        let tar_bytes = tar_of(&[
            ("manifest.json", &docker_manifest),
            ("config.json", &config),
            ("l/layer.tar", &gzip(&layer)),
        ]);
        let loaded = load(&layout, &tar_bytes[..]).unwrap();
        let manifest: ImageManifest =
            layout.read_json(&digest_of(&loaded.refs[0].1).unwrap()).unwrap();
        assert_eq!(manifest.layers()[0].media_type(), &MediaType::ImageLayerGzip);
    }

    #[test]
    fn a_tampered_blob_refuses_the_load_and_keeps_the_tags() {
        let dir = tempfile::tempdir().unwrap();
        let source = fresh_layout(dir.path(), "source");
        let manifest = make_image(&source, "app:v1", b"original\n");
        let stored: ImageManifest = source.read_json(&digest_of(&manifest).unwrap()).unwrap();
        let layer = digest_of(&stored.layers()[0]).unwrap();
        let tar_bytes = saved(&source);

        // Flip one byte of the layer inside the archive.
        let mut tampered = tar_bytes.clone();
        let offset = {
            let mut archive = tar::Archive::new(&tar_bytes[..]);
            let entries = archive.entries().unwrap();
            entries
                .map(Result::unwrap)
                .find(|entry| entry.path().unwrap().ends_with(layer.hex()))
                .unwrap()
                .raw_file_position() as usize
        };
        tampered[offset + 20] ^= 0xff;

        let target = fresh_layout(dir.path(), "target");
        make_image(&target, "app:v1", b"what target had\n");
        let before = target.refs().unwrap();
        let error = load(&target, &tampered[..]).unwrap_err().to_string();
        assert!(error.contains(&layer.to_string()), "names the blob: {error}");
        assert!(error.contains("nothing was tagged"), "{error}");
        assert_eq!(target.refs().unwrap(), before);
        assert!(!target.has_blob(&layer));
    }

    #[test]
    fn load_refuses_entries_that_climb_out() {
        let dir = tempfile::tempdir().unwrap();
        let layout = fresh_layout(dir.path(), "store");
        for name in ["../evil.json", "blobs/../../evil", "/etc/evil.json"] {
            let tar_bytes = tar_of(&[(name, b"{}")]);
            let error = load(&layout, &tar_bytes[..]).unwrap_err().to_string();
            assert!(error.contains("climbs out of the archive"), "{name}: {error}");
        }
        assert!(!dir.path().join("evil.json").exists());
        let error = load(&layout, &tar_of(&[("hello", b"x")])[..]).unwrap_err().to_string();
        assert!(error.contains("not an image archive"), "{error}");
    }

    /// Saves a one-image layout tagged `app:v1` and untars it into `<dir>/untarred`.
    fn saved_and_untarred(dir: &Path) -> std::path::PathBuf {
        let layout = fresh_layout(dir, "store");
        make_image(&layout, "app:v1", b"hello from isolab\n");
        let untarred = dir.join("untarred");
        tar::Archive::new(&saved(&layout)[..]).unpack(&untarred).unwrap();
        untarred
    }

    fn installed(tool: &str) -> bool {
        Command::new("which").arg(tool).output().is_ok_and(|output| output.status.success())
    }

    #[test]
    fn umoci_unpacks_a_saved_layout() {
        if !installed("umoci") {
            return crate::skip("umoci_unpacks_a_saved_layout", "umoci is not installed");
        }
        let dir = tempfile::tempdir().unwrap();
        let untarred = saved_and_untarred(dir.path());
        let bundle = dir.path().join("bundle");
        let output = Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:app:v1", untarred.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(output.status.success(), "umoci: {}", String::from_utf8_lossy(&output.stderr));
        let hello = fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap();
        assert_eq!(hello, "hello from isolab\n");
        assert!(bundle.join("config.json").is_file(), "umoci wrote the runtime spec");
    }

    #[test]
    fn skopeo_copies_a_saved_layout() {
        if !installed("skopeo") {
            return crate::skip("skopeo_copies_a_saved_layout", "skopeo is not installed");
        }
        let dir = tempfile::tempdir().unwrap();
        let untarred = saved_and_untarred(dir.path());
        let out = dir.path().join("copied");
        let output = Command::new("skopeo")
            .args(["--insecure-policy", "copy"])
            .arg(format!("oci:{}:app:v1", untarred.display()))
            .arg(format!("dir:{}", out.display()))
            .output()
            .unwrap();
        assert!(output.status.success(), "skopeo: {}", String::from_utf8_lossy(&output.stderr));
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    }
}
