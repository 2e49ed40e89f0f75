//! Layers: a directory tree as a tar archive, and a tar archive as a directory an overlay can
//! stack.
//!
//! An image layer is a tar archive, optionally gzipped (OCI image-spec, `layer.md`): the files
//! one step of a build added or changed, and, as empty files named `.wh.<name>`, the ones it
//! deleted (*whiteouts*; `.wh..wh..opq` in a directory says "nothing below here from the
//! layers under this one"). An image names each layer twice, by the SHA-256 of the blob as
//! stored (`digest`, compressed) and of the tar inside it (`diff_id`), so this module computes
//! both while it writes or reads ([`crate::digest`]).
//!
//! Two ways in, one way out:
//!
//! - [`pack_dir`]: a whole tree (a rootfs) as one deterministic layer: the same tree gives the
//!   same bytes, hence the same digest, whenever and wherever it is packed (the table in
//!   [`pack`] says what is fixed and why). `rootfs-builder tar` is this function.
//! - [`pack_upper`]: a container's overlay upper directory as a layer (`commit`): overlayfs
//!   writes deletions in its own format (a character device 0/0, an `overlay.opaque` xattr,
//!   `Documentation/filesystems/overlayfs.rst`, "whiteouts and opaque directories"), and the
//!   layer must say them in the OCI format (`.wh.` files).
//! - [`unpack`]: a layer blob into an empty directory, once per layer, which then serves as an
//!   overlay *lowerdir* as it is. So the OCI whiteouts are turned back into overlayfs's, and
//!   an image's layers stack in the kernel with no copying. A layer is input from anyone: the
//!   unpacker never writes outside its directory (no absolute paths, no `..`, no symlink on
//!   the way, hard links only inside), which its tests check with a corpus of hostile tars.
//!
//! Why a folder: packing and unpacking share only the format; the hostile corpus and the round
//! trips are longer than both ([`tests`]).

use std::path::PathBuf;

use crate::digest::Digest;

mod pack;
#[cfg(test)]
mod tests;
mod unpack;

pub use pack::{pack_dir, pack_dir_shifted, pack_dir_to_file, pack_upper, Shift, GZIP_LEVEL};
pub use unpack::unpack;

/// The name prefix of a whiteout in a layer: `.wh.motd` says "`motd` is deleted"
/// (OCI image-spec, `layer.md`, "Whiteouts").
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// The name of an opaque whiteout: inside directory `d`, it says "hide everything the layers
/// below have in `d`".
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// How a layer's tar is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain `.tar` (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// gzip with a fixed header and level [`GZIP_LEVEL`] (`.tar.gz`, an OCI `tar+gzip` layer).
    Gzip,
}

/// What went into a layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Entries written (not counting GNU long-name and PAX extension headers).
    pub entries: usize,
    /// Regular files with their content.
    pub files: usize,
    /// Directories.
    pub dirs: usize,
    /// Symbolic links.
    pub symlinks: usize,
    /// Hard-link entries (files already archived under another name).
    pub hard_links: usize,
    /// Character and block devices.
    pub devices: usize,
    /// Named pipes.
    pub fifos: usize,
    /// Whiteouts (`.wh.<name>`): deletions, from an overlay upper.
    pub whiteouts: usize,
    /// Opaque directories (`.wh..wh..opq` entries), from an overlay upper.
    pub opaques: usize,
    /// Bytes of file content.
    pub content_bytes: u64,
    /// Paths that cannot be archived (sockets), relative to the top directory.
    pub skipped: Vec<PathBuf>,
}

/// A layer written by [`pack_dir`] or [`pack_upper`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// SHA-256 of the blob as written (the compressed bytes, if compressed): its name in an
    /// image's `blobs/sha256/`.
    pub digest: Digest,
    /// SHA-256 of the uncompressed tar: the layer's "diff ID", in the image's config. Equal to
    /// `digest` without compression.
    pub diff_id: Digest,
    /// Bytes of the blob.
    pub size: u64,
    /// What went in.
    pub summary: Summary,
}

/// What [`unpack`] may do, which depends on who unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Where opaque directories are marked: `trusted.overlay.` for an overlay the host's
    /// root mounts, `user.overlay.` for one mounted with `userxattr` (in a user namespace:
    /// rootless, and root's default containers too). Root's layers get both, since the same
    /// layer is a lower of both kinds of overlay; each overlay reads only its own.
    pub xattr_prefixes: &'static [&'static str],
    /// May create device nodes (root); otherwise device entries are skipped and listed.
    pub devices: bool,
    /// Sets owners from the tar (root); otherwise every file stays the caller's.
    pub owners: bool,
}

impl Default for UnpackOptions {
    /// As the host's root: both kinds of xattrs, devices and owners.
    fn default() -> Self {
        UnpackOptions {
            xattr_prefixes: &["trusted.overlay.", "user.overlay."],
            devices: true,
            owners: true,
        }
    }
}

impl UnpackOptions {
    /// As a user without privileges: user xattrs (`userxattr`), no devices, no owners.
    pub fn rootless() -> Self {
        UnpackOptions { xattr_prefixes: &["user.overlay."], devices: false, owners: false }
    }
}

/// A layer [`unpack`] made into a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// SHA-256 of the whole uncompressed tar, end blocks included: check it against the
    /// image config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// Entries of the tar made (files, directories, links, nodes, whiteouts).
    pub entries: usize,
    /// Bytes of file content written.
    pub bytes: u64,
    /// What could not be made, and why (`dev/null: character device 1/3 not made: devices
    /// are not allowed`).
    pub skipped: Vec<String>,
}

/// Whether an xattr is overlayfs's own bookkeeping (`trusted.overlay.*`, or `user.overlay.*`
/// with `userxattr`): never written into a layer, never taken from one.
pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}
