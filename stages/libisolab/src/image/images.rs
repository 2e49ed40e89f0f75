//! The images of a store: the OCI layout at the store's root, and each layer unpacked once.
//!
//! Everything here is built of the other parts of this module: [`Layout`] keeps the blobs and
//! the tags, [`layer`] turns a directory or a container's upper into a layer and a layer back
//! into a directory, [`config`] says what the image runs. What this file adds is the store's
//! bookkeeping, the part that makes layers *shared*:
//!
//! - a layer is unpacked once, into `layers/<diff_id hex>/`, the first time a container needs
//!   it, and every image and container over it uses that one directory as an overlay lower;
//! - an image is a manifest (config + layers), written once; a tag is a line of `index.json`;
//! - nothing is removed while a tag or a container reaches it: `rmi` only untags, and
//!   [`Images::gc`] removes the blobs and unpacked layers nothing reaches any more.
//!
//! Writers (import, commit, build, load) hold a shared lock on `<root>/images.lock` while
//! their blobs are not yet reachable from a tag; `gc` holds it exclusively, so it never takes
//! a blob that is about to be tagged.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Uid;
use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType,
};

use super::config;
use super::layer::{self, Compression, Packed, Shift, UnpackOptions};
use super::layout::{digest_of, ref_name, Layout, INDEX_DEPTH_MAX};
use super::reference::Reference;
use crate::cgroups::format_size;
use crate::copy;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::{Container, ImageRef, Storage, Store};

/// The images of one store.
#[derive(Debug)]
pub struct Images {
    layout: Layout,
    layers: PathBuf,
}

/// An image: its manifest and its config, and the tag it was found by.
#[derive(Debug, Clone)]
pub struct Image {
    /// The tag it was found by (`app:1.0`), if any.
    pub name: Option<String>,
    /// The manifest's descriptor: its digest is the image's identity in the store.
    pub manifest: Descriptor,
    /// The manifest: the config and the layers, bottom first.
    pub body: ImageManifest,
    /// What it runs, and its layers' diff_ids and history.
    pub config: ImageConfiguration,
}

impl Image {
    /// The digest of its manifest (`sha256:…`).
    pub fn digest(&self) -> Result<Digest> {
        digest_of(&self.manifest)
    }

    /// docker's IMAGE ID: the first 12 hex digits of its config's digest.
    pub fn id(&self) -> String {
        let config = self.body.config().digest().to_string();
        let hex = config.strip_prefix("sha256:").unwrap_or(&config);
        hex.chars().take(12).collect()
    }

    /// The bytes of its blobs: config and layers (compressed, as stored).
    pub fn size(&self) -> u64 {
        self.body.config().size() + self.body.layers().iter().map(Descriptor::size).sum::<u64>()
    }

    /// Its layers' diff_ids (the digests of the uncompressed tars), bottom first.
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        let ids = self.config.rootfs().diff_ids();
        if ids.len() != self.body.layers().len() {
            return Err(Error::Invalid(format!(
                "image {}: its manifest lists {} layers and its config {} diff_ids: the image is \
                 corrupt; remove it (rmi) and load or build it again",
                self.shown(),
                self.body.layers().len(),
                ids.len()
            )));
        }
        ids.iter().map(|id| parse_digest(id)).collect()
    }

    /// What a container made from it records.
    pub fn reference(&self, given: &str) -> Result<ImageRef> {
        Ok(ImageRef { name: given.to_string(), manifest: self.digest()?.to_string() })
    }

    /// Its tag, or its id when it has none.
    pub fn shown(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.id())
    }
}

/// What [`Images::gc`] removed.
#[derive(Debug, Default)]
pub struct Collected {
    /// One line per removal: what it was, and its size.
    pub lines: Vec<String>,
    /// Bytes freed.
    pub bytes: u64,
}

/// What `df` shows of the images.
#[derive(Debug)]
pub struct Usage {
    /// Each tag: its image and the bytes of its blobs.
    pub images: Vec<(String, Image)>,
    /// Distinct layer blobs, and their bytes.
    pub layers: usize,
    /// Bytes of all blobs, each counted once.
    pub blob_bytes: u64,
    /// What the tags' images would take if nothing were shared.
    pub unshared_bytes: u64,
    /// Unpacked layers, and the disk they take.
    pub unpacked: usize,
    /// Bytes of the unpacked layers.
    pub unpacked_bytes: u64,
}

const LAYERS: &str = "layers";
const CACHE: &str = "build-cache";
const INIT: &str = "init";
/// Held shared by writers, exclusively by gc.
const IMAGES_LOCK: &str = "images.lock";

impl Images {
    /// The images of `store` (its root becomes an OCI layout if it is not one yet).
    pub fn open(store: &Store) -> Result<Images> {
        store.check_owner()?;
        let root = store.root();
        if !root.is_dir() {
            make_dir(root, 0o711)?;
        }
        let layout = Layout::open(root)?;
        let layers = root.join(LAYERS);
        // The unpacked layers are the image's files with the image's owners, modes and
        // devices: a setuid-root program, a file capability, a device node, a world-writable
        // directory. Reachable by a host user, any of them would be theirs to use, so only the
        // store's owner may enter (0700). Root's containers get them as idmapped mounts opened
        // by root; a user's store is theirs alone anyway.
        make_dir(&layers, 0o700)?;
        // The blobs are the same files, packed: an image's /etc/shadow is in one of its
        // layers' tars. The store's owner alone reads them.
        make_dir(&root.join("blobs"), 0o700)?;
        let images = Images { layout, layers };
        images.init_layer()?;
        Ok(images)
    }

    /// The OCI layout underneath.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    // ANCHOR: find
    /// The image `word` names: a tag (`app`, meaning `app:latest`, or `app:1.0`), a manifest
    /// digest (`sha256:…`), or a unique prefix of an image id (as `images` shows it).
    pub fn find(&self, word: &str) -> Result<Image> {
        if let Some(hex) = word.strip_prefix("sha256:") {
            let digest = parse_digest(word)?;
            if !self.layout.has_blob(&digest) {
                return Err(Error::Invalid(format!(
                    "no manifest {word} in {}: `images --digests` lists them",
                    self.layout.root().display()
                )));
            }
            let _ = hex;
            let descriptor = Descriptor::new(
                MediaType::ImageManifest,
                fs::metadata(self.layout.blob_path(&digest)).map(|m| m.len()).unwrap_or(0),
                to_oci(&digest),
            );
            return self.image(None, descriptor);
        }
        let refs = self.layout.refs()?;
        // A name as index.json keeps it: ours are `repo:tag`; another tool may have written a
        // tag alone (`skopeo copy … oci:STORE:app` names it `app`), found as it is written.
        let normalised = word.parse::<Reference>().map(|reference| reference.name());
        let named = refs.iter().find(|(tag, _)| tag == word).or_else(|| {
            normalised.as_ref().ok().and_then(|name| refs.iter().find(|(tag, _)| tag == name))
        });
        if let Some((name, descriptor)) = named {
            return self.image(Some(name.clone()), descriptor.clone());
        }
        // An id prefix, as docker takes one: hex digits only, unique among the tagged images.
        if word.len() >= 3 && word.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            let mut found: BTreeMap<String, Image> = BTreeMap::new();
            for image in self.list()? {
                let manifest = image.digest()?.hex();
                if image.id().starts_with(word) || manifest.starts_with(word) {
                    found.entry(image.digest()?.hex()).or_insert(image);
                }
            }
            match found.len() {
                1 => return Ok(found.into_values().next().expect("one image")),
                0 => {}
                _ => {
                    let names: Vec<String> = found.values().map(Image::shown).collect();
                    return Err(Error::Invalid(format!(
                        "{word} is the beginning of several images' ids ({}): give more digits",
                        names.join(", ")
                    )));
                }
            }
        }
        word.parse::<Reference>()?;
        Err(Error::Invalid(format!(
            "no image {word} in {}: `images` lists them; import, build or load one",
            self.layout.root().display()
        )))
    }
    // ANCHOR_END: find

    /// Reads the image a manifest descriptor points at (an index: the manifest for this
    /// machine's platform), verifying every blob it reads.
    fn image(&self, name: Option<String>, descriptor: Descriptor) -> Result<Image> {
        self.image_at(name, descriptor, 0)
    }

    fn image_at(
        &self,
        name: Option<String>,
        descriptor: Descriptor,
        depth: usize,
    ) -> Result<Image> {
        if depth > INDEX_DEPTH_MAX {
            return Err(Error::Invalid(format!(
                "image indexes nest deeper than {INDEX_DEPTH_MAX} levels under {}",
                descriptor.digest()
            )));
        }
        let digest = digest_of(&descriptor)?;
        let value: serde_json::Value = self.layout.read_json(&digest)?;
        let is_index = value.get("manifests").is_some();
        if is_index {
            let index: ImageIndex = serde_json::from_value(value).map_err(|error| {
                Error::Invalid(format!("blob {digest} is not an OCI image index: {error}"))
            })?;
            let arch = config::scratch().architecture().to_string();
            let chosen = index.manifests().iter().find(|manifest| {
                manifest.platform().as_ref().is_none_or(|platform| {
                    platform.os().to_string() == "linux"
                        && platform.architecture().to_string() == arch
                })
            });
            let Some(chosen) = chosen else {
                return Err(Error::Invalid(format!(
                    "image {}: its index has no manifest for linux/{arch}",
                    name.as_deref().unwrap_or(&digest.to_string())
                )));
            };
            return self.image_at(name, chosen.clone(), depth + 1);
        }
        let body: ImageManifest = serde_json::from_value(value).map_err(|error| {
            Error::Invalid(format!("blob {digest} is not an OCI image manifest: {error}"))
        })?;
        let config: ImageConfiguration = self.layout.read_json(&digest_of(body.config())?)?;
        Ok(Image { name, manifest: descriptor, body, config })
    }

    /// Every tag and its image, in `index.json`'s order, then the untagged ones; an entry
    /// whose image cannot be read is left out ([`Images::broken`] says which).
    pub fn list(&self) -> Result<Vec<Image>> {
        Ok(self.read_all()?.into_iter().filter_map(|(_, read)| read.ok()).collect())
    }

    /// The entries of `index.json` whose image cannot be read (a config that is no image
    /// config, a blob gone): each as the word `rmi` takes to remove it, and why. One broken
    /// image does not stop `images`, `df` or `rmi` from working on the others.
    pub fn broken(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .read_all()?
            .into_iter()
            .filter_map(|(word, read)| read.err().map(|error| (word, error.to_string())))
            .collect())
    }

    /// Each entry (tags first, then the untagged ones no tag shows, as docker lists `<none>`):
    /// the word that names it (its tag or its digest) and its image, or why it cannot be read.
    fn read_all(&self) -> Result<Vec<(String, Result<Image>)>> {
        let refs = self.layout.refs()?;
        let tagged: Vec<String> =
            refs.iter().map(|(_, descriptor)| descriptor.digest().to_string()).collect();
        let untagged = self.layout.entries()?.into_iter().filter(|entry| {
            ref_name(entry).is_none() && !tagged.contains(&entry.digest().to_string())
        });
        let mut all: Vec<(String, Result<Image>)> = refs
            .into_iter()
            .map(|(name, descriptor)| (name.clone(), self.image(Some(name), descriptor)))
            .collect();
        let mut seen = Vec::new();
        for entry in untagged {
            let digest = entry.digest().to_string();
            if !seen.contains(&digest) {
                seen.push(digest.clone());
                all.push((digest, self.image(None, entry)));
            }
        }
        Ok(all)
    }

    /// How many of `image`'s layers are not unpacked yet: what [`Images::lowers`] would unpack.
    /// A layer an image lists twice (the same diff_id) is one directory, counted once.
    pub fn missing_layers(&self, image: &Image) -> Result<usize> {
        let diff_ids: BTreeSet<String> =
            image.diff_ids()?.iter().map(|diff_id| diff_id.hex().to_string()).collect();
        Ok(diff_ids.iter().filter(|hex| !self.layers.join(hex).is_dir()).count())
    }

    // ANCHOR: lowers
    /// The directories of `image`'s layers for an overlay, topmost first: each unpacked once,
    /// the first time a container needs it, into `layers/<diff_id hex>/` (into a temporary
    /// directory first, renamed when whole, so a directory there is always a whole layer).
    /// The blob is verified as it is read, and what it unpacks to must be the diff_id its
    /// config promises.
    pub fn lowers(&self, image: &Image) -> Result<Vec<PathBuf>> {
        let diff_ids = image.diff_ids()?;
        let mut dirs = Vec::with_capacity(diff_ids.len());
        // Most runs find every layer unpacked already: only one that must unpack takes the
        // lock (and looks again under it), so runs do not queue behind each other.
        let all_there = diff_ids.iter().all(|diff_id| self.layers.join(diff_id.hex()).is_dir());
        let _lock = if all_there {
            None
        } else {
            Some(lock(&self.layers.join(".lock"), FlockArg::LockExclusive)?)
        };
        for (descriptor, diff_id) in image.body.layers().iter().zip(&diff_ids) {
            let dir = self.layers.join(diff_id.hex());
            if !dir.is_dir() {
                self.unpack(descriptor, diff_id, &dir)?;
            }
            dirs.push(dir);
        }
        // On top, the mount points every container needs (/proc, /sys, /dev, /tmp), which an image
        // need not have (FROM scratch and a COPY of one program, say): in a layer of their
        // own, shared by every container, so that they never show in a `diff` or a commit
        // (docker's "init layer").
        dirs.push(self.layout.root().join(INIT));
        dirs.reverse();
        Ok(dirs)
    }
    // ANCHOR_END: lowers

    /// The init layer: empty mount points only, so it lives beside `layers/`, where root
    /// of a user namespace may reach it (the plan checks its base is reachable).
    fn init_layer(&self) -> Result<PathBuf> {
        let init = self.layout.root().join(INIT);
        // `init` itself first: make_dir refuses a link only as the last component.
        make_dir(&init, 0o755)?;
        for dir in crate::mounts::MOUNT_POINTS {
            // Each is a mount point: the container mounts proc, sysfs, its /dev and a tmpfs
            // over them. 0755, so that no host user can put anything in a live lower layer.
            make_dir(&init.join(dir), 0o755)?;
        }
        Ok(init)
    }

    fn unpack(&self, descriptor: &Descriptor, diff_id: &Digest, dir: &Path) -> Result<()> {
        check_layer_type(descriptor)?;
        let blob = self.layout.open_blob(&digest_of(descriptor)?)?;
        let temporary = self.layers.join(format!(".unpacking-{}", diff_id.hex()));
        if temporary.exists() {
            copy::remove_tree(&temporary)?;
        }
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&temporary)
            .map_err(|error| Error::io("mkdir", &temporary, &error))?;
        // Root's layers keep their owners and devices; a user's are all theirs (the user
        // namespace maps their uid to root inside).
        let options = if Uid::effective().is_root() {
            UnpackOptions::default()
        } else {
            UnpackOptions::rootless()
        };
        let unpacked = match layer::unpack(BufReader::new(blob), &temporary, &options) {
            Ok(unpacked) => unpacked,
            Err(error) => {
                let _ = copy::remove_tree(&temporary);
                // A blob that is not what its digest says fails the tar reader long before
                // its end, where the digest is checked: check it now, and say that instead.
                let mut whole = self.layout.open_blob(&digest_of(descriptor)?)?;
                if let Err(corrupt) = io::copy(&mut whole, &mut io::sink()) {
                    return Err(Error::Invalid(corrupt.to_string()));
                }
                return Err(one_line(error));
            }
        };
        if unpacked.diff_id != *diff_id {
            let _ = copy::remove_tree(&temporary);
            return Err(Error::Invalid(format!(
                "layer {} unpacks to diff_id {}, but the image's config says {diff_id}: the \
                 image is corrupt; remove it (rmi) and load or build it again",
                descriptor.digest(),
                unpacked.diff_id
            )));
        }
        fs::rename(&temporary, dir).map_err(|error| Error::io("rename", &temporary, &error))
    }

    /// A shared lock that keeps `gc` away while a writer's blobs are not yet tagged.
    pub fn writing(&self) -> Result<Flock<File>> {
        // Shared locks never wait on each other; only a running gc (exclusive) is waited for.
        lock(&self.layout.root().join(IMAGES_LOCK), FlockArg::LockShared)
    }

    /// Stores a layer blob from a temporary file `packed` was written to, verified.
    pub fn put_layer(&self, file: &Path, packed: &Packed) -> Result<Descriptor> {
        let reader = File::open(file).map_err(|error| Error::io("open", file, &error))?;
        let (digest, size) = self.layout.put_blob(BufReader::new(reader), Some(&packed.digest))?;
        Ok(Descriptor::new(MediaType::ImageLayerGzip, size, to_oci(&digest)))
    }

    /// Writes a new image: `config`'s blob, then a manifest over `layers` (bottom first), and
    /// tags it `name` if given. Returns the image.
    pub fn write(
        &self,
        layers: Vec<Descriptor>,
        config: &ImageConfiguration,
        name: Option<&str>,
    ) -> Result<Image> {
        let config_descriptor = self.layout.put_json(MediaType::ImageConfig, config)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_descriptor)
            .layers(layers)
            .build()
            .map_err(|error| Error::Invalid(format!("a manifest could not be made: {error}")))?;
        let descriptor = self.layout.put_json(MediaType::ImageManifest, &manifest)?;
        let name =
            name.map(|name| Ok::<_, Error>(name.parse::<Reference>()?.name())).transpose()?;
        if let Some(name) = &name {
            self.layout.set_ref(name, descriptor.clone())?;
        }
        Ok(Image { name, manifest: descriptor, body: manifest, config: config.clone() })
    }

    /// Packs `source` with `pack` into a temporary file of the store, then stores it as a
    /// verified layer blob.
    pub fn add_layer(
        &self,
        pack: impl FnOnce(&mut dyn Write) -> Result<Packed>,
    ) -> Result<(Descriptor, Packed)> {
        let temporary = self.layout.root().join(format!(".packing-{}", std::process::id()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|error| Error::io("open", &temporary, &error))?;
        let mut out = BufWriter::new(file);
        let result = pack(&mut out).and_then(|packed| {
            out.flush().map_err(|error| Error::io("write", &temporary, &error))?;
            let descriptor = self.put_layer(&temporary, &packed)?;
            Ok((descriptor, packed))
        });
        let _ = fs::remove_file(&temporary);
        result
    }

    // ANCHOR: import
    /// `import`: a directory (a root filesystem) or a tar becomes a one-layer image tagged
    /// `name`.
    pub fn import(&self, source: &Path, name: &str, created: &str) -> Result<Image> {
        let _writing = self.writing()?;
        let metadata = fs::metadata(source).map_err(|error| Error::io("stat", source, &error))?;
        let (descriptor, diff_id) = if metadata.is_dir() {
            // A user's files are root's in their containers: the layer says root.
            let shift = shift_for(None, true);
            let (descriptor, packed) = self
                .add_layer(|out| layer::pack_dir_shifted(source, shift, out, Compression::Gzip))?;
            (descriptor, packed.diff_id)
        } else {
            self.import_tar(source)?
        };
        let mut config = config::scratch();
        config.set_created(Some(created.to_string()));
        let shown = source.display().to_string();
        config::add_layer(&mut config, &diff_id, created, &format!("import {shown}"));
        self.write(vec![descriptor], &config, Some(name))
    }
    // ANCHOR_END: import

    /// A tar file as a layer blob, as it is (gzip or not): its diff_id is the digest of the
    /// tar once decompressed.
    fn import_tar(&self, source: &Path) -> Result<(Descriptor, Digest)> {
        let open = || File::open(source).map_err(|error| Error::io("open", source, &error));
        let mut file = open()?;
        let mut magic = [0u8; 2];
        let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
        file.rewind().map_err(|error| Error::io("lseek", source, &error))?;
        // Read as a tar to its end first (its diff_id on the way): a file that is no tar is
        // refused now, naming it, not when a container first unpacks it.
        let not_a_tar = |error: io::Error| {
            Error::Invalid(format!(
                "{} is neither a directory nor a tar (gzip or not): {error}",
                source.display()
            ))
        };
        let plain: Box<dyn Read> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        let mut hashing = crate::digest::DigestReader::new(plain);
        let mut entries = 0;
        {
            let mut archive = tar::Archive::new(&mut hashing);
            for entry in archive.entries().map_err(not_a_tar)? {
                io::copy(&mut entry.map_err(not_a_tar)?, &mut io::sink()).map_err(not_a_tar)?;
                entries += 1;
            }
        }
        io::copy(&mut hashing, &mut io::sink()).map_err(not_a_tar)?;
        if entries == 0 {
            return Err(not_a_tar(io::Error::other("it holds no entry")));
        }
        let diff_id = hashing.finish().1;
        let (digest, size) = self.layout.put_blob(BufReader::new(open()?), None)?;
        let media = if gzip { MediaType::ImageLayerGzip } else { MediaType::ImageLayer };
        Ok((Descriptor::new(media, size, to_oci(&digest)), diff_id))
    }

    // ANCHOR: commit
    /// `commit`: the container's upper becomes a new layer over its image's layers, and the
    /// image its config plus that layer, tagged `name`. Its owners are recorded as they are
    /// inside: a container whose root is host uid 100000 wrote files as uid 0 inside, and the
    /// layer says 0.
    pub fn commit(
        &self,
        container: &Container,
        name: &str,
        created: &str,
        created_by: &str,
    ) -> Result<Image> {
        self.commit_as(container, Some(name), created, created_by)
    }
    // ANCHOR_END: commit

    /// [`Images::commit`] without a tag: a build's step, which the next step runs on.
    pub fn commit_untagged(
        &self,
        container: &Container,
        created: &str,
        created_by: &str,
    ) -> Result<Image> {
        self.commit_as(container, None, created, created_by)
    }

    fn commit_as(
        &self,
        container: &Container,
        name: Option<&str>,
        created: &str,
        created_by: &str,
    ) -> Result<Image> {
        let Some(layers) = container.layers() else {
            return Err(Error::Invalid(format!(
                "container {} is a copy (--storage copy): it has no upper layer to commit",
                container.config.name
            )));
        };
        let Some(parent) = &container.config.image else {
            return Err(Error::Invalid(format!(
                "container {} was made over a directory (--rootfs), not an image: import the \
                 directory first (import DIR NAME:TAG) and run the image",
                container.config.name
            )));
        };
        // LAB stage5/commit BEGIN: the container's upper becomes a layer over its image's
        let _writing = self.writing()?;
        let parent = self.find(&parent.manifest)?;
        let shift = shift_for(container.config.owner, container.config.userxattr);
        let (descriptor, packed) =
            self.add_layer(|out| layer::pack_upper(&layers.upper, shift, out, Compression::Gzip))?;
        let mut config = parent.config.clone();
        config.set_created(Some(created.to_string()));
        config::add_layer(&mut config, &packed.diff_id, created, created_by);
        let mut all = parent.body.layers().clone();
        all.push(descriptor);
        self.write(all, &config, name)
        // LAB END
    }

    /// `tag`: `target` names the image `source` names. Returns the image, and the manifest
    /// `target` named before if it was another image's (that image keeps its other tags; with
    /// none left, `gc` removes what nothing else uses).
    pub fn tag(&self, source: &str, target: &str) -> Result<(Image, Option<Descriptor>)> {
        let image = self.find(source)?;
        let reference = target.parse::<Reference>()?;
        if reference.digest.is_some() {
            return Err(Error::Invalid(format!(
                "{target} names a digest, and a tag is a name: give NAME[:TAG] (the digest is \
                 the image's own, see `images --digests`)"
            )));
        }
        let name = reference.name();
        let old = self.layout.set_ref(&name, image.manifest.clone())?;
        let moved = old.filter(|old| old.digest() != image.manifest.digest());
        Ok((Image { name: Some(name), ..image }, moved))
    }

    // ANCHOR: rmi
    /// `rmi`: removes the tag `word` names (every tag of the image, if `word` is an id or a
    /// digest and `force`). An image a container was made from keeps its blobs and layers
    /// (refused without `force`, as docker refuses); what nothing reaches any more goes with
    /// [`Images::gc`]. Returns the tags removed.
    pub fn remove(&self, word: &str, force: bool, containers: &[Container]) -> Result<Vec<String>> {
        let image = match self.find(word) {
            Ok(image) => image,
            // A tag whose image cannot be read (see [`Images::broken`]) still goes.
            Err(error) => {
                let normalised = word.parse::<Reference>().map(|reference| reference.name()).ok();
                let refs = self.layout.refs()?;
                let Some((name, _)) =
                    refs.iter().find(|(tag, _)| tag == word || Some(tag) == normalised.as_ref())
                else {
                    return Err(error);
                };
                self.layout.remove_ref(name)?;
                return Ok(vec![name.clone()]);
            }
        };
        let digest = image.manifest.digest().to_string();
        let refs = self.layout.refs()?;
        let tags: Vec<String> = refs
            .iter()
            .filter(|(_, descriptor)| descriptor.digest().to_string() == digest)
            .map(|(name, _)| name.clone())
            .collect();
        let by_tag = image.name.as_deref().is_some_and(|name| {
            name == word
                || word.parse::<Reference>().is_ok_and(|reference| reference.name() == name)
        });
        let removing: Vec<String> = match (&image.name, by_tag) {
            (Some(name), true) => vec![name.clone()],
            _ if tags.len() > 1 && !force => {
                return Err(Error::Invalid(format!(
                    "image {word} has {} tags ({}): remove each tag, or all with --force",
                    tags.len(),
                    tags.join(", ")
                )))
            }
            _ => tags.clone(),
        };
        let last = removing.len() == tags.len();
        let users: Vec<&str> = containers
            .iter()
            .filter(|container| {
                container.config.image.as_ref().is_some_and(|image| image.manifest == digest)
            })
            .map(|container| container.config.name.as_str())
            .collect();
        if last && !users.is_empty() && !force {
            return Err(Error::Invalid(format!(
                "image {word} is used by container{} {}: remove {} first (rm), or untag it with \
                 --force (the containers keep its layers)",
                if users.len() > 1 { "s" } else { "" },
                users.join(", "),
                if users.len() > 1 { "them" } else { "it" }
            )));
        }
        for name in &removing {
            self.layout.remove_ref(name)?;
        }
        // Named by its digest or id, every tag gone (or none there): its entries without a
        // name go too, else an image pulled by digest could never be removed. Removing a tag
        // leaves them (another tool's untagged entry keeps its image).
        let mut removing = removing;
        if last && !by_tag && self.layout.remove_untagged(&digest)? > 0 {
            removing.push(digest);
        }
        Ok(removing)
    }
    // ANCHOR_END: rmi

    /// The build cache's entry for `key`: the image a step made last time.
    pub fn cached(&self, key: &Digest) -> Option<Image> {
        let path = self.layout.root().join(CACHE).join(key.hex());
        let manifest = fs::read_to_string(path).ok()?;
        let image = self.find(manifest.trim()).ok()?;
        // Its layers must still be there (gc may have taken them).
        image
            .body
            .layers()
            .iter()
            .all(|layer| digest_of(layer).is_ok_and(|digest| self.layout.has_blob(&digest)))
            .then_some(image)
    }

    /// Records that the step `key` made `image`.
    pub fn remember(&self, key: &Digest, image: &Image) -> Result<()> {
        let dir = self.layout.root().join(CACHE);
        make_dir(&dir, 0o700)?;
        let text = format!("{}\n", image.digest()?);
        crate::store::write_atomic(&dir, &[(&key.hex(), text.into_bytes())])
    }

    // ANCHOR: gc
    /// Removes what no tag, no container and no build-cache entry reaches: blobs, unpacked
    /// layers, half-written blobs and half-unpacked layers. Says what it removed.
    pub fn gc(&self, containers: &[Container], keep_cache: bool) -> Result<Collected> {
        let _exclusive =
            lock(&self.layout.root().join(IMAGES_LOCK), FlockArg::LockExclusiveNonblock).map_err(
                |_| {
                    Error::Invalid(
                        "an import, build, commit, load or pull is writing images: gc later".into(),
                    )
                },
            )?;
        let _unpacking = lock(&self.layers.join(".lock"), FlockArg::LockExclusive)?;
        // Every entry of index.json, tagged or not: another tool's untagged ones are kept.
        let mut roots: Vec<Descriptor> = self.layout.entries()?;
        let mut lowers_in_use: BTreeSet<PathBuf> = BTreeSet::new();
        let mut diff_ids: BTreeSet<String> = BTreeSet::new();
        for container in containers {
            lowers_in_use.extend(container.config.lowers.iter().cloned());
            // By name too: the same layer however the store's path was spelled.
            let names = container.config.lowers.iter().filter_map(|lower| lower.file_name());
            diff_ids.extend(names.map(|name| name.to_string_lossy().into_owned()));
            if let Some(image) = &container.config.image {
                if let Ok(image) = self.find(&image.manifest) {
                    roots.push(image.manifest);
                }
            }
        }
        let mut collected = Collected::default();
        let cache = self.layout.root().join(CACHE);
        let cache_is_dir = fs::symlink_metadata(&cache).is_ok_and(|metadata| metadata.is_dir());
        if let Some(entries) = cache_is_dir.then(|| fs::read_dir(&cache).ok()).flatten() {
            for entry in entries.flatten() {
                let path = entry.path();
                let manifest = fs::read_to_string(&path).unwrap_or_default();
                match self.find(manifest.trim()) {
                    Ok(image) if keep_cache => roots.push(image.manifest),
                    _ => {
                        let _ = fs::remove_file(&path);
                        collected.lines.push(format!(
                            "removed build cache entry {}",
                            entry.file_name().to_string_lossy()
                        ));
                    }
                }
            }
        }
        // Mark: every blob a root reaches, on every platform (save's own walk). A root whose
        // blob is gone marks nothing; one that cannot be read stops gc before it removes
        // anything, rather than take the blobs below it.
        let mut blobs = BTreeMap::new();
        for root in roots {
            if !self.layout.has_blob(&digest_of(&root)?) {
                continue;
            }
            super::archive::collect_blobs(&self.layout, &root, &mut blobs)
                .map_err(|error| Error::Invalid(format!("gc removed nothing: {error}")))?;
            // Only this machine's platform is ever unpacked.
            if let Ok(image) = self.image(None, root) {
                for id in image.config.rootfs().diff_ids() {
                    diff_ids.insert(id.trim_start_matches("sha256:").to_string());
                }
            }
        }
        for digest in self.layout.blobs()? {
            if !blobs.contains_key(&digest.hex()) {
                let size = self.layout.remove_blob(&digest)?;
                collected.bytes += size;
                collected.lines.push(format!("removed blob {digest} ({})", format_size(size)));
            }
        }
        // What a killed import, commit or build left in the store's root: `.packing-<pid>`
        // (a layer being written) and `.copying-<pid>-<n>` (a COPY's files), whose writer
        // is gone.
        let root = self.layout.root();
        for entry in fs::read_dir(root).map_err(|error| Error::io("opendir", root, &error))? {
            let entry = entry.map_err(|error| Error::io("readdir", root, &error))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".packing-").or(name.strip_prefix(".copying-"))
            else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|pid| pid.parse::<i32>().ok());
            // Gone only when the kernel says there is no such process (EPERM: there is).
            let alive = pid.is_some_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                    != Err(nix::errno::Errno::ESRCH)
            });
            if pid.is_none() || alive {
                continue;
            }
            let path = entry.path();
            let size = copy::disk_usage(&path).unwrap_or(0);
            copy::remove_tree(&path)?;
            collected.bytes += size;
            collected.lines.push(format!("removed what a killed writer left: {}", path.display()));
        }
        for partial in self.layout.remove_partials()? {
            collected.lines.push(format!("removed half-written blob {}", partial.display()));
        }
        for entry in
            fs::read_dir(&self.layers).map_err(|e| Error::io("opendir", &self.layers, &e))?
        {
            let entry = entry.map_err(|error| Error::io("readdir", &self.layers, &error))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name == ".lock"
                || name == INIT
                || lowers_in_use.contains(&path)
                || diff_ids.contains(&name)
            {
                continue;
            }
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let size = copy::disk_usage(&path).unwrap_or(0);
            copy::remove_tree(&path)?;
            collected.bytes += size;
            let what = if name.starts_with(".unpacking-") {
                "half-unpacked layer"
            } else {
                "unpacked layer"
            };
            collected.lines.push(format!(
                "removed {what} {} ({})",
                path.display(),
                format_size(size)
            ));
        }
        Ok(collected)
    }
    // ANCHOR_END: gc

    /// `df`: the images, and how much their layers share.
    pub fn usage(&self) -> Result<Usage> {
        let images = self.list()?;
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut layers: BTreeSet<String> = BTreeSet::new();
        let mut unshared = 0;
        for image in &images {
            unshared += image.size();
            seen.insert(image.body.config().digest().to_string(), image.body.config().size());
            for layer in image.body.layers() {
                seen.insert(layer.digest().to_string(), layer.size());
                layers.insert(layer.digest().to_string());
            }
        }
        let mut unpacked = 0;
        let mut unpacked_bytes = 0;
        for entry in
            fs::read_dir(&self.layers).map_err(|e| Error::io("opendir", &self.layers, &e))?
        {
            let entry = entry.map_err(|error| Error::io("readdir", &self.layers, &error))?;
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) && entry.file_name() != INIT {
                unpacked += 1;
                unpacked_bytes += copy::disk_usage(&entry.path()).unwrap_or(0);
            }
        }
        Ok(Usage {
            images: images.into_iter().map(|image| (image.shown(), image)).collect(),
            layers: layers.len(),
            blob_bytes: seen.values().sum(),
            unshared_bytes: unshared,
            unpacked,
            unpacked_bytes,
        })
    }

    /// The containers of `store` made from an image, for `rmi` and `gc`.
    pub fn containers(store: &Store) -> Result<Vec<Container>> {
        Ok(store
            .list()?
            .into_iter()
            .filter_map(|listed| match listed {
                crate::store::Listed::Found(container, _) => Some(container),
                crate::store::Listed::Broken { .. } => None,
            })
            .filter(|container| container.config.storage == Storage::Overlay)
            .collect())
    }
}

/// An error on one line: what a tar reader says may quote the bytes it choked on.
fn one_line(error: Error) -> Error {
    match error {
        Error::Invalid(text) => {
            Error::Invalid(text.split_whitespace().collect::<Vec<_>>().join(" "))
        }
        other => other,
    }
}

/// What a user namespace of the caller's makes of host ids: root's containers record what
/// their upper holds as the slot's ids (`owner`); a user's, whose namespace maps their own
/// uid to root, record their files as root's. `None`: the host's ids are the image's.
fn shift_for(owner: Option<(u32, u32)>, userns: bool) -> Option<Shift> {
    match owner {
        Some((uid, gid)) => Some(Shift::slot(uid, gid)),
        None if userns && !Uid::effective().is_root() => Some(Shift {
            uid: Uid::effective().as_raw(),
            gid: nix::unistd::Gid::effective().as_raw(),
            count: 1,
        }),
        None => None,
    }
}

/// When a new image is made, as its config records it: now, or `$SOURCE_DATE_EPOCH` (seconds)
/// when set, the reproducible-builds convention: the same inputs then give the same config
/// and manifest, hence the same image digest, on any machine at any time.
pub fn created() -> Result<String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(crate::store::timestamp()),
        Ok(text) => {
            (text.trim().parse::<i64>().ok())
                // RFC 3339's years, 0000 to 9999: what other tools read back.
                .filter(|seconds| (-62_167_219_200..=253_402_300_799).contains(seconds))
                .and_then(crate::store::timestamp_at)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "SOURCE_DATE_EPOCH={text:?} is not a number of seconds since 1970 (up to \
                     year 9999): unset it, \
                     or give e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)"
                    ))
                })
        }
    }
}

impl Image {
    /// Can isolab run it? Its config lists one diff_id per layer, and every layer is a tar or
    /// a gzip tar. A pull checks this before it tags anything: an image that fails here would
    /// be tagged only to fail at `run`.
    pub fn check(&self) -> Result<()> {
        self.diff_ids()?;
        self.body.layers().iter().try_for_each(check_layer_type)
    }
}

/// Layers we can unpack: tar, gzip tar (OCI's and docker's names).
fn check_layer_type(descriptor: &Descriptor) -> Result<()> {
    match descriptor.media_type() {
        MediaType::ImageLayer | MediaType::ImageLayerGzip => Ok(()),
        MediaType::Other(other)
            if other == "application/vnd.docker.image.rootfs.diff.tar.gzip"
                || other == "application/vnd.docker.image.rootfs.diff.tar" =>
        {
            Ok(())
        }
        other => Err(Error::Invalid(format!(
            "layer {} is {other}, which isolab cannot unpack (it takes tar and gzip tar layers)",
            descriptor.digest()
        ))),
    }
}

/// `sha256:<hex>` as our digest.
pub fn parse_digest(text: &str) -> Result<Digest> {
    text.parse::<Digest>()
}

/// Our digest as oci-spec's.
pub fn to_oci(digest: &Digest) -> oci_spec::image::Digest {
    digest.to_string().parse().expect("a sha256 digest is a valid OCI digest")
}

/// Makes `dir` with `mode`, or gives an existing one that mode; one that is not a real
/// directory (a symlink planted where the store keeps its layers, say) is refused: gc removes
/// what it finds under these, and must never follow a link out of the store.
fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => {
            return Err(Error::Invalid(format!(
                "{} is not a directory (a symlink?): the store follows no link; remove it",
                dir.display()
            )))
        }
        Err(_) => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(|error| Error::io("mkdir", dir, &error))?;
        }
    }
    let now = fs::symlink_metadata(dir).map_err(|error| Error::io("lstat", dir, &error))?;
    if now.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|error| Error::io("chmod", dir, &error))
}

/// Takes an flock on `path` (made if missing, never followed through a symlink).
fn lock(path: &Path, how: FlockArg) -> Result<Flock<File>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|error| Error::io("open", path, &error))?;
    Flock::lock(file, how).map_err(|(_, errno)| Error::sys("flock", path.display(), errno))
}
