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
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::Error;

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

/// Parses `sha256:<64 lowercase hex digits>`, the only form isolab writes or accepts. The
/// OCI spec allows other algorithms (`sha512:`) and docker accepts uppercase hex nowhere, so
/// anything else is refused, saying what a good one looks like. Because a blob's file name is
/// made from a parsed digest only, this parser is also what keeps a name like `../x` out of
/// `blobs/sha256/`.
impl FromStr for Digest {
    type Err = Error;

    fn from_str(text: &str) -> Result<Digest, Error> {
        let refuse = |what: &str| {
            Error::Invalid(format!(
                "digest {text:?} {what} (a digest is sha256: and 64 lowercase hex digits, \
                 like {})",
                Digest::of(b"")
            ))
        };
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(refuse("has no algorithm"));
        };
        if algorithm != "sha256" {
            return Err(refuse("is not sha256, the only algorithm isolab supports"));
        }
        if hex.len() != 64 {
            return Err(refuse(&format!("has {} hex digits, not 64", hex.len())));
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let high = hex_value(pair[0]).ok_or_else(|| refuse("is not lowercase hex"))?;
            let low = hex_value(pair[1]).ok_or_else(|| refuse("is not lowercase hex"))?;
            *byte = high << 4 | low;
        }
        Ok(Digest(bytes))
    }
}

/// The value of one lowercase hex digit.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
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

/// A reader that hashes everything read through it: the reading side of [`DigestWriter`], for
/// checking a blob while it is being used rather than in a pass of its own.
#[derive(Debug)]
pub struct DigestReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> DigestReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        DigestReader { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// How many bytes went through so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// The digest of what went through so far (reading may go on).
    pub fn digest(&self) -> Digest {
        Digest(self.hasher.clone().finalize().into())
    }

    /// The inner reader, and the digest of everything read from it.
    pub fn finish(self) -> (R, Digest) {
        (self.inner, Digest(self.hasher.finalize().into()))
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        self.bytes += read as u64;
        Ok(read)
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

    #[test]
    fn reader_hashes_what_passes_through() {
        let mut reader = DigestReader::new(&b"abc"[..]);
        let mut read = Vec::new();
        reader.read_to_end(&mut read).unwrap();
        assert_eq!(reader.bytes_read(), 3);
        assert_eq!(reader.digest(), Digest::of(b"abc"));
    }

    #[test]
    fn parses_what_it_displays() {
        let digest = Digest::of(b"abc");
        assert_eq!(digest.to_string().parse::<Digest>().unwrap(), digest);
    }

    #[test]
    fn refuses_what_is_not_a_sha256_digest() {
        let upper = Digest::of(b"abc").to_string().to_uppercase().replace("SHA256", "sha256");
        // A blob's file name is made from the parsed digest: a path cannot pass for one.
        let traversal = format!("sha256:{}x", "../".repeat(21));
        for (text, says) in [
            ("sha256:abc", "has 3 hex digits, not 64"),
            ("sha512:abc", "not sha256"),
            ("abc", "has no algorithm"),
            (upper.as_str(), "not lowercase hex"),
            (traversal.as_str(), "not lowercase hex"),
        ] {
            let error = text.parse::<Digest>().unwrap_err().to_string();
            assert!(error.contains(says), "{text}: {error}");
            assert!(error.contains("64 lowercase hex digits"), "{error}");
        }
    }
}
