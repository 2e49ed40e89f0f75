//! SHA-256 digests, computed while writing.
//!
//! Container images name every blob (layer, config, manifest) by the SHA-256 of its bytes,
//! written `sha256:<64 hex digits>` (OCI image-spec, `descriptor.md`, "Digests"). Two builds
//! of the same layer are the same layer exactly when their digests are equal, which is why
//! [`crate::image::layer`] works so hard to be deterministic; and a runtime that pulls
//! an image checks every blob it receives against the digest it asked for (stage 5).
//! [`DigestWriter`] sits between a producer and a file and hashes every byte on its way
//! through, so the file is never read back; stacking two of them around a compressor gives
//! both digests an image needs: the compressed blob's and the uncompressed tar's (the "diff
//! ID").

use std::fmt;
use std::io::{self, Write};

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest; displays as `sha256:<hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// A writer that passes everything on to `inner` and hashes it on the way.
#[derive(Debug)]
pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        DigestWriter { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// How many bytes went through so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// The inner writer, and the digest of everything written to it.
    pub fn finish(self) -> (W, Digest) {
        (self.inner, Digest(self.hasher.finalize().into()))
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Hash only what the inner writer accepted: a short write is retried by the caller.
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_input() {
        // `printf abc | sha256sum`
        assert_eq!(
            Digest::of(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn writer_hashes_what_passes_through() {
        let mut writer = DigestWriter::new(Vec::new());
        writer.write_all(b"ab").unwrap();
        writer.write_all(b"c").unwrap();
        assert_eq!(writer.bytes_written(), 3);
        let (inner, digest) = writer.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(digest, Digest::of(b"abc"));
    }
}
