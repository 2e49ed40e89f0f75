//! Images: a container's root made of read-only layers, each stored once by its digest.
//!
//! Until chapter 4 a container ran over one base directory. An image is a stack of layers: each
//! layer is a tar archive of the files one step added, changed or deleted (a deletion is a
//! *whiteout*, `.wh.<name>`), stored once as a blob named by its SHA-256 and shared by every
//! image and container over it. The store is an OCI image layout (OCI image-spec,
//! `image-layout.md`), so that other tools (umoci, skopeo) read and write it too:
//!
//! ```text
//! <root>/                       the container store of chapter 4, and now also:
//!   oci-layout                  {"imageLayoutVersion": "1.0.0"}
//!   index.json                  the tags: one manifest descriptor per name:tag
//!   blobs/sha256/<hex>          manifests, configs and layers, named by their digest
//!   layers/<hex>/               each layer unpacked once (by its diff_id), an overlay lower
//! ```
//!
//! - [`reference`]: `name:tag` and `name@sha256:…`, what the commands take.
//! - [`layout`]: the OCI layout: blobs in and out, verified; the tags in `index.json`.
//! - [`layer`]: a layer tar from a directory or a container's upper (whiteouts written as
//!   `.wh.` files), deterministic; and unpacked again into a directory an overlay can stack,
//!   never writing outside it.
//! - [`config`]: what an image's config says a container runs (Env, Entrypoint, Cmd,
//!   WorkingDir, User), and its history.
//! - [`dockerfile`]: the Dockerfile subset `build` reads, and the build cache's keys.
//! - [`archive`]: `save` and `load`: an OCI layout tar that docker's `load` reads too.
//! - [`images`]: the store of images: find, unpack once, import, commit, tag, rmi, gc, df.

pub mod archive;
pub mod config;
pub mod dockerfile;
pub mod images;
pub mod layer;
pub mod layout;
pub mod reference;
