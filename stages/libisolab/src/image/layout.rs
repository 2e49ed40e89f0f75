//! The OCI image layout: blobs named by their digest, and the tags in `index.json`.
//!
//! OCI image-spec, `image-layout.md`, asks for three things in a directory, which is also the
//! root of isolab's store:
//!
//! ```text
//! oci-layout              {"imageLayoutVersion":"1.0.0"}: "this is a layout, of this version"
//! index.json              an image index (`image-index.md`): one descriptor per tag
//! blobs/sha256/<hex>      every manifest, config and layer, named by the SHA-256 of its bytes
//! ```
//!
//! A blob's name *is* its checksum, so the layout can always tell a good blob from a corrupt
//! one: [`Layout::put_blob`] hashes what it writes and refuses bytes that are not what the
//! caller expected, and [`Layout::open_blob`] hashes what it reads and fails at the end if the
//! file changed on disk since. Nothing ever sees half a blob: it is written to a `.partial-`
//! file and renamed into place (`man 2 rename`: atomic). The tags are the descriptors of
//! `index.json` that carry the annotation `org.opencontainers.image.ref.name`
//! (`annotations.md`); umoci and skopeo name images the same way, so both read this store.
//!
//! Nothing under the root is followed through a symlink (`O_NOFOLLOW`), and a blob's file name
//! comes only from a parsed [`Digest`] (64 hex digits), never from a string someone handed us.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{Descriptor, DigestAlgorithm, ImageIndex, MediaType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestReader, DigestWriter};
use crate::error::{Error, Result};
use crate::store::write_atomic;

/// The annotation that names a tag in `index.json` (OCI image-spec, `annotations.md`).
/// The largest JSON blob read whole (registries cap manifests at 4 MiB too).
pub const JSON_MAX: u64 = 4 << 20;

/// How deep image indexes may nest (an index of indexes of …): real ones are one or two
/// levels; a hostile archive must not make a walk of its own size.
pub const INDEX_DEPTH_MAX: usize = 8;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The layout version this code writes and reads (`image-layout.md`, "oci-layout file").
const LAYOUT_VERSION: &str = "1.0.0";

/// Temporary blobs start with this; [`Layout::blobs`] never lists them.
const PARTIAL: &str = ".partial-";

/// How old an unlocked `.partial-` file must be before [`Layout::remove_partials`] takes it
/// for a dead writer's (see there why both tests).
const PARTIAL_GRACE: Duration = Duration::from_secs(60);

/// `oci-layout`, the file that says a directory is a layout.
#[derive(Debug, Serialize, Deserialize)]
struct LayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    image_layout_version: String,
}

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens the layout at `root`, making `root`, `blobs/sha256`, `oci-layout` and an empty
    /// `index.json` (schemaVersion 2, mediaType index) if missing; refuses an `oci-layout` of
    /// another version, and a `blobs` directory that is a symlink.
    pub fn open(root: &Path) -> Result<Layout> {
        let layout = Layout { root: root.to_path_buf() };
        let blobs = layout.blob_dir();
        fs::create_dir_all(&blobs).map_err(|e| Error::io("mkdir", &blobs, &e))?;
        // `create_dir_all` is content with a symlink to a directory; the layout is not:
        // a link there would send every blob we write somewhere else.
        for dir in [root.join("blobs"), blobs] {
            let metadata = fs::symlink_metadata(&dir).map_err(|e| Error::io("lstat", &dir, &e))?;
            if !metadata.is_dir() {
                return Err(Error::Invalid(format!(
                    "{} is not a directory (a symlink?): an image layout follows no links; \
                     remove it and open the layout again",
                    dir.display()
                )));
            }
        }

        // Under the index lock, so that two runtimes opening a fresh store at once cannot
        // write an empty index over the other's first tag.
        let _lock = layout.lock_index()?;
        let version_path = root.join("oci-layout");
        match read_small(&version_path) {
            Ok(bytes) => {
                let file: LayoutFile = serde_json::from_slice(&bytes).map_err(|error| {
                    Error::Invalid(format!(
                        "{} is not an oci-layout file ({error}): is {} an image layout?",
                        version_path.display(),
                        root.display()
                    ))
                })?;
                if file.image_layout_version != LAYOUT_VERSION {
                    return Err(Error::Invalid(format!(
                        "{} says imageLayoutVersion {:?}; isolab reads version {LAYOUT_VERSION} \
                         only: use another directory",
                        version_path.display(),
                        file.image_layout_version
                    )));
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let file = LayoutFile { image_layout_version: LAYOUT_VERSION.into() };
                write_atomic(root, &[("oci-layout", to_json(&file)?)])?;
            }
            Err(error) => return Err(Error::io("open", &version_path, &error)),
        }
        match fs::symlink_metadata(layout.index_path()) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                layout.write_index(&empty_index())?;
            }
            Err(error) => return Err(Error::io("lstat", layout.index_path(), &error)),
        }
        Ok(layout)
    }

    /// The layout's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/blobs/sha256/<hex>`: where the blob named `digest` lives (or would).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// Is the blob there, as a regular file (a symlink does not count)?
    pub fn has_blob(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(digest)).is_ok_and(|metadata| metadata.is_file())
    }

    // ANCHOR: put_blob
    /// Streams `reader` into a new blob: a `.partial-` file under `blobs/sha256` (created with
    /// `O_EXCL`, locked with `flock` while written so that [`Layout::remove_partials`] knows
    /// it is alive), hashed on its way to the disk, flushed (`fsync`), checked against
    /// `expected` if given, then renamed to its digest. On a mismatch nothing stays: the
    /// partial file is removed and the error names both digests. A blob already there is kept
    /// (same name, same bytes). Returns the digest and the size.
    pub fn put_blob(&self, reader: impl Read, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let (digest, size, _) = self.put_new_blob(reader, expected)?;
        Ok((digest, size))
    }
    // ANCHOR_END: put_blob

    /// [`Layout::put_blob`], also saying whether the blob is new (`false`: it was there
    /// already and was kept), so that `load` and `pull` can say how much they added.
    pub fn put_new_blob(
        &self,
        reader: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64, bool)> {
        let (partial, file) = self.create_partial()?;
        // The partial file goes whatever happens, unless renamed into place.
        let (digest, size) = match self.fill_partial(&partial, file, reader, expected) {
            Ok(filled) => filled,
            Err(error) => {
                let _ = fs::remove_file(&partial);
                return Err(error);
            }
        };
        let path = self.blob_path(&digest);
        if self.has_blob(&digest) {
            fs::remove_file(&partial).map_err(|e| Error::io("unlink", &partial, &e))?;
            return Ok((digest, size, false));
        }
        // rename(2) replaces whatever is at the name, a symlink included (the link itself,
        // never its target), so nothing planted there survives either.
        if let Err(error) = fs::rename(&partial, &path) {
            let _ = fs::remove_file(&partial);
            return Err(Error::io("rename", &path, &error));
        }
        sync_dir(&self.blob_dir())?;
        Ok((digest, size, true))
    }

    /// Writes `reader` to the partial file through a hash; fsyncs; checks the digest.
    fn fill_partial(
        &self,
        partial: &Path,
        file: Flock<File>,
        mut reader: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64)> {
        let mut writer = DigestWriter::new(&*file);
        io::copy(&mut reader, &mut writer).map_err(|error| match error.kind() {
            // A verifying reader upstream (a blob of another layout) says what went wrong.
            io::ErrorKind::InvalidData => Error::Invalid(error.to_string()),
            _ => Error::io("write", partial, &error),
        })?;
        let size = writer.bytes_written();
        let (_, digest) = writer.finish();
        file.sync_all().map_err(|e| Error::io("fsync", partial, &e))?;
        // LAB stage5/verify-digest BEGIN: a blob is what its digest says, or it is refused
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(Error::Invalid(format!(
                    "blob {expected} does not match its content: the bytes received hash to \
                     {digest} ({size} bytes); the source is corrupt or was tampered with, get \
                     it again"
                )));
            }
        }
        // LAB END
        Ok((digest, size))
    }

    /// Creates `blobs/sha256/.partial-<pid>-<random>` afresh and takes its lock.
    fn create_partial(&self) -> Result<(PathBuf, Flock<File>)> {
        let name = format!("{PARTIAL}{}-{:016x}", std::process::id(), rand::random::<u64>());
        let path = self.blob_dir().join(name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io("open", &path, &e))?;
        // A new file nobody else has opened yet: the lock is ours at once.
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| Error::sys("flock", path.display(), errno))?;
        Ok((path, file))
    }

    /// Serialises `value` once, compactly, and stores those bytes: the digest is of exactly
    /// what is on disk. Keys come out sorted (through `serde_json::Value`, whose maps are
    /// ordered), so the same manifest always has the same digest even though oci-spec keeps
    /// annotations in a `HashMap`, whose order changes from run to run: a build cache keyed by
    /// digests depends on that. Returns a descriptor with the media type, digest and exact
    /// size, as every descriptor needs.
    pub fn put_json<T: Serialize>(&self, media_type: MediaType, value: &T) -> Result<Descriptor> {
        let bytes = to_json(value)?;
        let (digest, size) = self.put_blob(&bytes[..], None)?;
        Ok(descriptor(media_type, &digest, size))
    }

    // ANCHOR: open_blob
    /// Opens a blob for reading, never through a symlink (`O_NOFOLLOW`: `ELOOP` on a link).
    /// The reader hashes what passes, and at the end fails with `InvalidData`, naming the
    /// blob, if the bytes are not the ones its name promises: a corrupted blob never unpacks
    /// silently. Whoever reads must read to the end for the check to happen.
    pub fn open_blob(&self, digest: &Digest) -> Result<VerifiedReader<File>> {
        let path = self.blob_path(digest);
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|error| {
                let hint = match error.raw_os_error() {
                    Some(libc::ENOENT) => {
                        "the blob is missing from the store: remove the image (rmi) and load, \
                         build or pull it again"
                    }
                    Some(libc::ELOOP) => {
                        "a blob is never a symlink: remove it, then pull or load the image again"
                    }
                    _ => "check the store's permissions",
                };
                Error::io("open", &path, &error).hint(hint)
            })?;
        let metadata = file.metadata().map_err(|e| Error::io("fstat", &path, &e))?;
        if !metadata.is_file() {
            return Err(Error::Invalid(format!(
                "{} is not a regular file: remove it, then pull or load the image again",
                path.display()
            )));
        }
        Ok(VerifiedReader::new(file, *digest, path.display().to_string()))
    }
    // ANCHOR_END: open_blob

    /// Reads a blob whole, verifies it, then deserialises it.
    pub fn read_json<T: DeserializeOwned>(&self, digest: &Digest) -> Result<T> {
        let size = fs::symlink_metadata(self.blob_path(digest)).map_or(0, |m| m.len());
        if size > JSON_MAX {
            return Err(Error::Invalid(format!(
                "blob {digest} is {size} bytes, more than the {JSON_MAX} a manifest, index or \
                 config may be: it is not one (a layer named where a manifest belongs?)"
            )));
        }
        let mut reader = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|error| match error.kind() {
            io::ErrorKind::InvalidData => Error::Invalid(error.to_string()),
            _ => Error::io("read", self.blob_path(digest), &error),
        })?;
        serde_json::from_slice(&bytes).map_err(|error| {
            Error::Invalid(format!(
                "blob {digest} is not the JSON document expected ({error}): is the descriptor \
                 that names it the right one?"
            ))
        })
    }

    /// Every descriptor of `index.json`, named or not (another tool's untagged entries too):
    /// what gc must keep.
    pub fn entries(&self) -> Result<Vec<Descriptor>> {
        Ok(self.read_index()?.manifests().clone())
    }

    /// The tags: each descriptor of `index.json` with a ref name, as (ref name, manifest
    /// descriptor), in `index.json`'s order. Descriptors without a name (another tool's
    /// untagged entries) are not tags and are left out, and left alone by [`Layout::set_ref`]
    /// (and kept by gc: [`Layout::entries`]).
    pub fn refs(&self) -> Result<Vec<(String, Descriptor)>> {
        let index = self.read_index()?;
        Ok(index
            .manifests()
            .iter()
            .filter_map(|descriptor| Some((ref_name(descriptor)?.to_string(), descriptor.clone())))
            .collect())
    }

    // ANCHOR: set_ref
    /// Points tag `name` at `manifest` (its `ref.name` annotation set to `name`), replacing
    /// the old entry in place and returning it. The index is read, changed and written back
    /// (temporary file, `fsync`, `rename`) under an exclusive `flock` on `<root>/index.lock`:
    /// without it, two runtimes tagging at once would both read the old index and the second
    /// rename would drop the first one's tag.
    pub fn set_ref(&self, name: &str, manifest: Descriptor) -> Result<Option<Descriptor>> {
        check_ref_name(name)?;
        let mut manifest = manifest;
        let mut annotations = manifest.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME.to_string(), name.to_string());
        manifest.set_annotations(Some(annotations));

        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let mut entries = index.manifests().clone();
        let old = match entries.iter().position(|entry| ref_name(entry) == Some(name)) {
            Some(position) => Some(std::mem::replace(&mut entries[position], manifest)),
            None => {
                entries.push(manifest);
                None
            }
        };
        index.set_manifests(entries);
        self.write_index(&index)?;
        Ok(old)
    }
    // ANCHOR_END: set_ref

    /// Adds `manifest` to `index.json` without a name, unless an entry (tagged or not) has its
    /// digest already; true if added. An image pulled by its digest is kept so, as docker keeps
    /// one: the user named a manifest, not a tag, so no tag of theirs moves; the entry keeps
    /// its blobs from gc until `rmi` removes it.
    pub fn add_untagged(&self, manifest: Descriptor) -> Result<bool> {
        let mut manifest = manifest;
        let mut annotations = manifest.annotations().clone().unwrap_or_default();
        annotations.remove(REF_NAME);
        manifest.set_annotations((!annotations.is_empty()).then_some(annotations));

        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let mut entries = index.manifests().clone();
        if entries.iter().any(|entry| entry.digest() == manifest.digest()) {
            return Ok(false);
        }
        entries.push(manifest);
        index.set_manifests(entries);
        self.write_index(&index)?;
        Ok(true)
    }

    /// Removes the entries of `index.json` without a name that point at `digest`; how many.
    pub fn remove_untagged(&self, digest: &str) -> Result<usize> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let mut entries = index.manifests().clone();
        let before = entries.len();
        entries.retain(|entry| ref_name(entry).is_some() || entry.digest().to_string() != digest);
        let removed = before - entries.len();
        if removed > 0 {
            index.set_manifests(entries);
            self.write_index(&index)?;
        }
        Ok(removed)
    }

    /// Removes tag `name` (under the same lock as [`Layout::set_ref`]); returns what it
    /// pointed at, or `None` if there was no such tag. The blobs stay until gc.
    pub fn remove_ref(&self, name: &str) -> Result<Option<Descriptor>> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let mut entries = index.manifests().clone();
        let Some(position) = entries.iter().position(|entry| ref_name(entry) == Some(name)) else {
            return Ok(None);
        };
        let old = entries.remove(position);
        index.set_manifests(entries);
        self.write_index(&index)?;
        Ok(Some(old))
    }

    /// Every blob's digest, sorted. Files that are not named by a digest (a `.partial-` blob
    /// being written, another tool's temporary file) are not blobs and are left out.
    pub fn blobs(&self) -> Result<Vec<Digest>> {
        let dir = self.blob_dir();
        let mut digests = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("opendir", &dir, &e))? {
            let entry = entry.map_err(|e| Error::io("readdir", &dir, &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Ok(digest) = Digest::from_str(&format!("sha256:{name}")) {
                digests.push(digest);
            }
        }
        digests.sort_by_key(|digest| digest.0);
        Ok(digests)
    }

    /// Removes a blob (a symlink at its name is removed as a link, never followed) and
    /// returns its size, so gc can say how much it freed.
    pub fn remove_blob(&self, digest: &Digest) -> Result<u64> {
        let path = self.blob_path(digest);
        let metadata = fs::symlink_metadata(&path).map_err(|e| Error::io("lstat", &path, &e))?;
        fs::remove_file(&path).map_err(|e| Error::io("unlink", &path, &e))?;
        Ok(if metadata.is_file() { metadata.size() } else { 0 })
    }

    /// Removes the `.partial-` files whose writer is gone, and returns their paths so gc can
    /// say so. A writer holds a `flock` on its partial file until it renames or removes it,
    /// and the kernel drops the lock when the writer dies however it dies (`man 2 flock`): a
    /// partial file whose lock we can take has no writer. But between creating the file and
    /// locking it a writer holds no lock yet, so a partial file must also be older than a
    /// minute (by its mtime, which every write renews). One that fails either test is kept.
    pub fn remove_partials(&self) -> Result<Vec<PathBuf>> {
        let dir = self.blob_dir();
        let mut removed = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("opendir", &dir, &e))? {
            let entry = entry.map_err(|e| Error::io("readdir", &dir, &e))?;
            if !entry.file_name().to_string_lossy().starts_with(PARTIAL) {
                continue;
            }
            let path = entry.path();
            let file = match File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(&path)
            {
                Ok(file) => file,
                // Renamed or removed by its writer meanwhile; or a symlink, which we remove.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) if error.raw_os_error() == Some(libc::ELOOP) => {
                    fs::remove_file(&path).map_err(|e| Error::io("unlink", &path, &e))?;
                    removed.push(path);
                    continue;
                }
                Err(error) => return Err(Error::io("open", &path, &error)),
            };
            let modified = file.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::now());
            let age = SystemTime::now().duration_since(modified).unwrap_or_default();
            if age < PARTIAL_GRACE {
                continue;
            }
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(_locked) => match fs::remove_file(&path) {
                    Ok(()) => removed.push(path),
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(Error::io("unlink", &path, &error)),
                },
                Err((_, Errno::EWOULDBLOCK)) => {}
                Err((_, errno)) => return Err(Error::sys("flock", path.display(), errno)),
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// `<root>/blobs/sha256`.
    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// `<root>/index.json`.
    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Takes the exclusive `flock` on `<root>/index.lock`, waiting for it. A lock file is
    /// never opened through a symlink. Released when the returned value is dropped.
    fn lock_index(&self) -> Result<Flock<File>> {
        let path = self.root.join("index.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| Error::io("open", &path, &e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::sys("flock", path.display(), errno))
    }

    /// Reads and parses `index.json`.
    fn read_index(&self) -> Result<ImageIndex> {
        let path = self.index_path();
        let bytes = read_small(&path).map_err(|e| {
            Error::io("open", &path, &e).hint("is this an image layout? Layout::open makes one")
        })?;
        serde_json::from_slice(&bytes).map_err(|error| {
            Error::Invalid(format!(
                "{} is not an image index ({error}): restore it, or remove it and load the \
                 images again",
                path.display()
            ))
        })
    }

    /// Writes `index.json` atomically, always with schemaVersion 2 and the index media type
    /// (skopeo and umoci check both).
    fn write_index(&self, index: &ImageIndex) -> Result<()> {
        let mut index = index.clone();
        index.set_schema_version(2);
        index.set_media_type(Some(MediaType::ImageIndex));
        write_atomic(&self.root, &[("index.json", to_json(&index)?)])
    }
}

/// A reader that hashes what passes and, at the end of the data, fails with
/// `io::ErrorKind::InvalidData` if the bytes were not the ones `expected` names.
#[derive(Debug)]
pub struct VerifiedReader<R> {
    inner: DigestReader<R>,
    expected: Digest,
    /// What to call the data in an error: a blob's path.
    name: String,
    verified: bool,
}

impl<R: Read> VerifiedReader<R> {
    /// Wraps `inner`, which should yield the bytes named `expected`; `name` says what they
    /// are in the error (a path, a tar entry).
    pub fn new(inner: R, expected: Digest, name: String) -> Self {
        VerifiedReader { inner: DigestReader::new(inner), expected, name, verified: false }
    }

    /// How many bytes passed so far.
    pub fn bytes_read(&self) -> u64 {
        self.inner.bytes_read()
    }
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        // End of data (a read of 0 into a non-empty buffer): the moment to check, once.
        if read == 0 && !buf.is_empty() && !self.verified {
            let actual = self.inner.digest();
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "blob {} is corrupt: its {} bytes hash to {actual}, not {}; remove it \
                         and pull or load the image again",
                        self.name,
                        self.inner.bytes_read(),
                        self.expected
                    ),
                ));
            }
            self.verified = true;
        }
        Ok(read)
    }
}

/// Parses a descriptor's digest into ours. Only `sha256` is supported (the OCI spec also
/// registers `sha512`, which no common tool writes); another algorithm is refused, saying so.
pub fn digest_of(descriptor: &Descriptor) -> Result<Digest> {
    let digest = descriptor.digest();
    if *digest.algorithm() != DigestAlgorithm::Sha256 {
        return Err(Error::Invalid(format!(
            "the {} descriptor names {digest}: isolab supports sha256 digests only",
            descriptor.media_type()
        )));
    }
    Digest::from_str(digest.as_ref())
}

/// A descriptor of `size` bytes named `digest`, of `media_type`: the three fields every
/// descriptor needs (`descriptor.md`).
pub fn descriptor(media_type: MediaType, digest: &Digest, size: u64) -> Descriptor {
    let digest = oci_spec::image::Digest::from_str(&digest.to_string())
        .expect("a Digest displays as a valid sha256 digest");
    Descriptor::new(media_type, size, digest)
}

/// The tag a descriptor of `index.json` carries, if any.
pub fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor.annotations().as_ref()?.get(REF_NAME).map(String::as_str)
}

/// `value` as compact JSON with sorted keys: the same value, the same bytes (see
/// [`Layout::put_json`]).
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_value(value)
        .and_then(|value| serde_json::to_vec(&value))
        .map_err(|error| Error::Invalid(format!("cannot write JSON: {error}")))
}

/// An index with no manifests.
fn empty_index() -> ImageIndex {
    let mut index = ImageIndex::default();
    index.set_media_type(Some(MediaType::ImageIndex));
    index
}

/// A ref name must be something: the spec's grammar (`annotations.md`) is looser than a
/// reference's, so only an empty one is refused here (the commands parse a
/// [`Reference`](super::reference::Reference) first).
fn check_ref_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Invalid("a tag cannot be empty: name it like app:v1".into()));
    }
    Ok(())
}

/// Reads a small file of the layout (oci-layout, index.json), never through a symlink.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// `fsync` on a directory: makes its renames durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|e| Error::io("fsync", dir, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn layout() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(&dir.path().join("store")).unwrap();
        (dir, layout)
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn open_writes_what_the_spec_asks_for() {
        let (_dir, layout) = layout();
        let version = fs::read_to_string(layout.root().join("oci-layout")).unwrap();
        assert_eq!(version, r#"{"imageLayoutVersion":"1.0.0"}"#);
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.root().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
        assert_eq!(index["manifests"], serde_json::json!([]));
        assert!(layout.root().join("blobs/sha256").is_dir());
        // Opening again keeps what is there.
        let manifest = layout.put_json(MediaType::ImageManifest, &"m").unwrap();
        layout.set_ref("app:v1", manifest).unwrap();
        let again = Layout::open(layout.root()).unwrap();
        assert_eq!(again.refs().unwrap().len(), 1);
    }

    #[test]
    fn an_untagged_entry_is_added_once_kept_apart_from_tags_and_removed_alone() {
        let (_dir, layout) = layout();
        let one = layout.put_json(MediaType::ImageManifest, &"one").unwrap();
        let two = layout.put_json(MediaType::ImageManifest, &"two").unwrap();
        layout.set_ref("app:v1", one.clone()).unwrap();
        // A digest a tag already shows gets no second entry; a new one does, once.
        assert!(!layout.add_untagged(one.clone()).unwrap());
        assert!(layout.add_untagged(two.clone()).unwrap());
        assert!(!layout.add_untagged(two.clone()).unwrap());
        assert_eq!(layout.entries().unwrap().len(), 2);
        assert_eq!(layout.refs().unwrap().len(), 1, "an untagged entry is no tag");
        // Removing untagged entries leaves the tags, even of the same digest.
        layout.set_ref("app:v2", two.clone()).unwrap();
        assert_eq!(layout.remove_untagged(two.digest().as_ref()).unwrap(), 1);
        assert_eq!(layout.remove_untagged(one.digest().as_ref()).unwrap(), 0);
        let names: Vec<String> = layout.refs().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["app:v1", "app:v2"]);
        assert_eq!(layout.entries().unwrap().len(), 2);
    }

    #[test]
    fn open_refuses_another_layout_version() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
        let error = Layout::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("imageLayoutVersion \"2.0.0\""), "{error}");
    }

    #[test]
    fn open_refuses_a_symlinked_blobs_directory() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir_all(elsewhere.join("sha256")).unwrap();
        let root = dir.path().join("store");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("blobs")).unwrap();
        let error = Layout::open(&root).unwrap_err().to_string();
        assert!(error.contains("not a directory (a symlink?)"), "{error}");
    }

    #[test]
    fn put_blob_stores_by_digest_and_reads_back() {
        let (_dir, layout) = layout();
        let (digest, size) = layout.put_blob(&b"hello"[..], Some(&Digest::of(b"hello"))).unwrap();
        assert_eq!((digest, size), (Digest::of(b"hello"), 5));
        assert_eq!(fs::read(layout.blob_path(&digest)).unwrap(), b"hello");
        assert!(layout.has_blob(&digest));
        // The same bytes again: the blob is kept, nothing else is left.
        layout.put_blob(&b"hello"[..], None).unwrap();
        assert_eq!(names_in(&layout.root().join("blobs/sha256")), vec![digest.hex()]);
        let mut read = Vec::new();
        layout.open_blob(&digest).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, b"hello");
        assert_eq!(layout.blobs().unwrap(), vec![digest]);
        assert_eq!(layout.remove_blob(&digest).unwrap(), 5);
        assert!(!layout.has_blob(&digest));
    }

    #[test]
    fn put_blob_with_wrong_expected_digest_leaves_nothing() {
        let (_dir, layout) = layout();
        let expected = Digest::of(b"what we asked for");
        let error = layout.put_blob(&b"what we got"[..], Some(&expected)).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&expected.to_string()), "{message}");
        assert!(message.contains(&Digest::of(b"what we got").to_string()), "{message}");
        assert!(names_in(&layout.root().join("blobs/sha256")).is_empty(), "no blob, no partial");
    }

    #[test]
    fn verified_reader_catches_a_corrupted_blob() {
        let (_dir, layout) = layout();
        let (digest, _) = layout.put_blob(&b"{\"layer\":\"bytes\"}"[..], None).unwrap();
        let path = layout.blob_path(&digest);
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 0x01;
        fs::write(&path, &bytes).unwrap();

        let mut read = Vec::new();
        let error = layout.open_blob(&digest).unwrap().read_to_end(&mut read).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        assert!(error.to_string().contains("is corrupt"), "{error}");
        let error = layout.read_json::<serde_json::Value>(&digest).unwrap_err().to_string();
        assert!(error.contains("is corrupt"), "{error}");
    }

    #[test]
    fn a_missing_blob_says_what_to_do() {
        let (_dir, layout) = layout();
        let digest = Digest::of(b"never stored");
        let error = layout.open_blob(&digest).unwrap_err().to_string();
        assert!(error.contains(&layout.blob_path(&digest).display().to_string()), "{error}");
        assert!(
            error.contains("remove the image (rmi) and load, build or pull it again"),
            "{error}"
        );
    }

    #[test]
    fn a_blob_that_is_a_symlink_is_refused() {
        let (dir, layout) = layout();
        let target = dir.path().join("secret");
        fs::write(&target, b"secret").unwrap();
        let digest = Digest::of(b"secret");
        std::os::unix::fs::symlink(&target, layout.blob_path(&digest)).unwrap();
        assert!(!layout.has_blob(&digest));
        let error = layout.open_blob(&digest).unwrap_err();
        assert_eq!(error.errno(), Some(Errno::ELOOP), "{error}");
        // Storing the real bytes replaces the link, never writes through it.
        layout.put_blob(&b"secret"[..], None).unwrap();
        assert!(layout.has_blob(&digest));
        assert_eq!(fs::read(&target).unwrap(), b"secret");
    }

    #[test]
    fn put_json_returns_an_exact_descriptor_and_reads_back() {
        let (_dir, layout) = layout();
        let value = serde_json::json!({"b": 1, "a": [true]});
        let descriptor = layout.put_json(MediaType::ImageConfig, &value).unwrap();
        let digest = digest_of(&descriptor).unwrap();
        let on_disk = fs::read(layout.blob_path(&digest)).unwrap();
        assert_eq!(on_disk, br#"{"a":[true],"b":1}"#, "compact, keys sorted");
        assert_eq!(descriptor.size(), on_disk.len() as u64);
        assert_eq!(descriptor.media_type(), &MediaType::ImageConfig);
        assert_eq!(layout.read_json::<serde_json::Value>(&digest).unwrap(), value);
    }

    #[test]
    fn digest_of_refuses_other_algorithms() {
        let descriptor = Descriptor::new(
            MediaType::ImageManifest,
            1,
            oci_spec::image::Digest::from_str(&format!("sha512:{}", "a".repeat(128))).unwrap(),
        );
        let error = digest_of(&descriptor).unwrap_err().to_string();
        assert!(error.contains("sha256 digests only"), "{error}");
    }

    #[test]
    fn refs_round_trip_in_order() {
        let (_dir, layout) = layout();
        let one = layout.put_json(MediaType::ImageManifest, &"one").unwrap();
        let two = layout.put_json(MediaType::ImageManifest, &"two").unwrap();
        assert_eq!(layout.set_ref("app:v1", one.clone()).unwrap(), None);
        assert_eq!(layout.set_ref("app:v2", two.clone()).unwrap(), None);
        let replaced = layout.set_ref("app:v1", two.clone()).unwrap().unwrap();
        assert_eq!(replaced.digest(), one.digest());

        let refs = Layout::open(layout.root()).unwrap().refs().unwrap();
        let names: Vec<&str> = refs.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["app:v1", "app:v2"], "a replaced tag keeps its place");
        assert_eq!(refs[0].1.digest(), two.digest());
        assert_eq!(refs[0].1.size(), two.size());
        assert_eq!(ref_name(&refs[0].1), Some("app:v1"));

        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.root().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(
            index["manifests"][0]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "app:v1");

        assert_eq!(layout.remove_ref("app:v2").unwrap().unwrap().digest(), two.digest());
        assert_eq!(layout.remove_ref("app:v2").unwrap(), None);
        assert_eq!(layout.refs().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_set_ref_keeps_every_entry() {
        let (_dir, layout) = layout();
        let layout = Arc::new(layout);
        let manifest = layout.put_json(MediaType::ImageManifest, &"m").unwrap();
        let threads: Vec<_> = (0..16)
            .map(|thread| {
                let layout = Arc::clone(&layout);
                let manifest = manifest.clone();
                std::thread::spawn(move || {
                    for tag in 0..5 {
                        // Each its own layout value, as separate runtimes would have.
                        let layout = Layout::open(layout.root()).unwrap();
                        layout.set_ref(&format!("app:t{thread}-{tag}"), manifest.clone()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(layout.refs().unwrap().len(), 16 * 5);
    }

    #[test]
    fn remove_partials_removes_only_abandoned_ones() {
        let (_dir, layout) = layout();
        let dir = layout.root().join("blobs/sha256");
        let abandoned = dir.join(".partial-1-dead");
        let fresh = dir.join(".partial-2-fresh");
        let busy = dir.join(".partial-3-busy");
        for path in [&abandoned, &fresh, &busy] {
            fs::write(path, b"half").unwrap();
        }
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for path in [&abandoned, &busy] {
            File::options().write(true).open(path).unwrap().set_modified(an_hour_ago).unwrap();
        }
        let _writer = Flock::lock(File::open(&busy).unwrap(), FlockArg::LockExclusive).unwrap();

        assert_eq!(layout.remove_partials().unwrap(), vec![abandoned.clone()]);
        assert!(!abandoned.exists());
        assert!(fresh.exists(), "too young: its writer may not have locked it yet");
        assert!(busy.exists(), "locked: its writer is alive");
        assert!(layout.blobs().unwrap().is_empty(), "partial files are not blobs");
    }
}
