//! `/etc/ld.so.cache`: the loader's index of libraries, read the way `ld.so` reads it.
//!
//! Searching a dozen directories for every library of every program start would be slow, so
//! `ldconfig(8)` walks the directories listed in `/etc/ld.so.conf` once and writes a table from
//! library name (`libc.so.6`) to file (`/lib/x86_64-linux-gnu/libc.so.6`). The loader consults
//! it after `DT_RPATH` and `DT_RUNPATH` and before its default directories (`man 8 ld.so`).
//! It is also how the loader finds libraries in directories it would never search by itself,
//! such as `/usr/local/lib` or `/usr/lib/x86_64-linux-gnu/libfakeroot`.
//!
//! The format (glibc's `sysdeps/generic/dl-cache.h`, "new format", version 1.1) is small:
//!
//! ```text
//! offset  size  field
//!      0    17  magic "glibc-ld.so.cache"
//!     17     3  version "1.1"
//!     20     4  nlibs: number of entries
//!     24     4  len_strings: size of the string table
//!     28     1  flags: byte order (2 little endian, 3 big endian, 0 unknown)
//!     29     3  padding
//!     32     4  extension_offset (hwcaps names; we do not need them)
//!     36    12  unused
//!     48        nlibs entries of 24 bytes each:
//!                 i32 flags   (FLAG_ELF_LIBC6 | the ABI's "required" byte, e.g. 0x0303)
//!                 u32 key     (offset of the library's name, e.g. "libc.so.6")
//!                 u32 value   (offset of its path)
//!                 u32 osversion (unused)
//!                 u64 hwcap   (non-zero for a glibc-hwcaps variant, e.g. x86-64-v3)
//!           then the strings, NUL-terminated
//! ```
//!
//! String offsets count from the start of this header. Caches written before glibc 2.32 begin
//! with an older table (magic `ld.so-1.7.0`) and put the new header after it; we skip it.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoResultExt, Result};

/// Where the loader looks for its cache.
pub const PATH: &str = "/etc/ld.so.cache";

const MAGIC_NEW: &[u8] = b"glibc-ld.so.cache1.1";
const MAGIC_OLD: &[u8] = b"ld.so-1.7.0";
const HEADER_LEN: usize = 48;
const ENTRY_LEN: usize = 24;
const OLD_HEADER_LEN: usize = 16;
const OLD_ENTRY_LEN: usize = 12;

/// One line of the cache: `name (flags) => path`, as `ldconfig -p` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// `FLAG_ELF_LIBC6` plus the ABI's required byte (see [`crate::elf::Abi::ld_cache_flags`]).
    pub flags: i32,
    /// The name a `DT_NEEDED` entry asks for, e.g. `libc.so.6`.
    pub name: String,
    /// The file, e.g. `/lib/x86_64-linux-gnu/libc.so.6`.
    pub path: PathBuf,
    /// Non-zero for a library built for a particular CPU level (a glibc-hwcaps subdirectory).
    pub hwcap: u64,
}

/// A parsed loader cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LdCache {
    entries: Vec<CacheEntry>,
}

impl LdCache {
    /// Reads the cache at `path`. `Ok(None)` if there is none: the loader then simply goes on
    /// to its default directories, and so do we.
    pub fn load(path: &Path) -> Result<Option<LdCache>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).io("read", path),
        };
        LdCache::parse(&bytes)
            .map(Some)
            .map_err(|reason| Error::BadCache { path: path.to_path_buf(), reason })
    }

    /// Parses a cache image; the error says what is wrong, in words.
    pub fn parse(bytes: &[u8]) -> std::result::Result<LdCache, String> {
        let start = if bytes.starts_with(MAGIC_OLD) {
            // The old table: magic (11 bytes, padded to 12), u32 count, 12-byte entries. The
            // new header follows, aligned to 8 bytes (glibc's ALIGN_CACHE).
            let old_count = read_u32(bytes, 12, true)? as usize;
            let end = OLD_HEADER_LEN + old_count * OLD_ENTRY_LEN;
            let aligned = end.next_multiple_of(8);
            if !bytes.get(aligned..).is_some_and(|rest| rest.starts_with(MAGIC_NEW)) {
                return Err("only the old libc5-era format is present, which ld.so no longer \
                            reads"
                    .into());
            }
            aligned
        } else if bytes.starts_with(MAGIC_NEW) {
            0
        } else {
            return Err("it does not start with \"glibc-ld.so.cache1.1\"".into());
        };
        let header = &bytes[start..];
        if header.len() < HEADER_LEN {
            return Err("the header is cut short".into());
        }
        // The byte-order flag was added in glibc 2.33; 0 means "written by an older ldconfig",
        // which always wrote the machine's own order.
        let little = match header[28] {
            0 => cfg!(target_endian = "little"),
            2 => true,
            3 => false,
            other => return Err(format!("unknown byte-order flag {other}")),
        };
        let count = read_u32(header, 20, little)? as usize;
        let table_end = count
            .checked_mul(ENTRY_LEN)
            .and_then(|len| len.checked_add(HEADER_LEN))
            .filter(|&end| end <= header.len())
            .ok_or_else(|| format!("{count} entries do not fit in the file"))?;
        let mut entries = Vec::with_capacity(count);
        for entry in header[HEADER_LEN..table_end].chunks_exact(ENTRY_LEN) {
            let flags = read_u32(entry, 0, little)? as i32;
            let key = read_u32(entry, 4, little)? as usize;
            let value = read_u32(entry, 8, little)? as usize;
            let hwcap = read_u64(entry, 16, little)?;
            entries.push(CacheEntry {
                flags,
                name: c_string(header, key)?,
                path: PathBuf::from(c_string(header, value)?),
                hwcap,
            });
        }
        Ok(LdCache { entries })
    }

    /// Every entry, in the file's order.
    pub fn entries(&self) -> &[CacheEntry] {
        &self.entries
    }

    /// The entries for `name`, in the file's order (which is the order the loader prefers).
    pub fn lookup<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a CacheEntry> + 'a {
        self.entries.iter().filter(move |entry| entry.name == name)
    }
}

fn read_u32(bytes: &[u8], offset: usize, little: bool) -> std::result::Result<u32, String> {
    let raw: [u8; 4] = bytes
        .get(offset..offset + 4)
        .and_then(|raw| raw.try_into().ok())
        .ok_or_else(|| format!("a field at offset {offset} is past the end"))?;
    Ok(if little { u32::from_le_bytes(raw) } else { u32::from_be_bytes(raw) })
}

fn read_u64(bytes: &[u8], offset: usize, little: bool) -> std::result::Result<u64, String> {
    let raw: [u8; 8] = bytes
        .get(offset..offset + 8)
        .and_then(|raw| raw.try_into().ok())
        .ok_or_else(|| format!("a field at offset {offset} is past the end"))?;
    Ok(if little { u64::from_le_bytes(raw) } else { u64::from_be_bytes(raw) })
}

fn c_string(bytes: &[u8], offset: usize) -> std::result::Result<String, String> {
    let rest =
        bytes.get(offset..).ok_or_else(|| format!("string offset {offset} is past the end"))?;
    let len = rest
        .iter()
        .position(|&byte| byte == 0)
        .ok_or_else(|| format!("string at offset {offset} is not NUL-terminated"))?;
    String::from_utf8(rest[..len].to_vec())
        .map_err(|_| format!("string at offset {offset} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a cache image by hand, the way `ldconfig` lays it out.
    fn image(entries: &[(i32, &str, &str)]) -> Vec<u8> {
        let mut strings = Vec::new();
        let strings_start = HEADER_LEN + entries.len() * ENTRY_LEN;
        let mut table = Vec::new();
        for (flags, name, path) in entries {
            let key = strings_start + strings.len();
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            let value = strings_start + strings.len();
            strings.extend_from_slice(path.as_bytes());
            strings.push(0);
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&(key as u32).to_le_bytes());
            table.extend_from_slice(&(value as u32).to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
            table.extend_from_slice(&0u64.to_le_bytes());
        }
        let mut out = MAGIC_NEW.to_vec();
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&[2, 0, 0, 0]);
        out.extend_from_slice(&[0; 16]);
        assert_eq!(out.len(), HEADER_LEN);
        out.extend(table);
        out.extend(strings);
        out
    }

    #[test]
    fn parses_the_hosts_real_cache_and_finds_libc() {
        let Some(cache) = LdCache::load(Path::new(PATH)).unwrap() else {
            panic!("this host has no {PATH}: the loader would fall back to its default dirs");
        };
        assert!(cache.entries().len() > 10, "{} entries", cache.entries().len());
        let libc = cache.lookup("libc.so.6").next().expect("libc.so.6 in the cache");
        assert!(libc.path.ends_with("libc.so.6"), "{libc:?}");
        assert!(libc.path.exists(), "{libc:?}");
        // On x86-64, ldconfig marks 64-bit glibc libraries FLAG_ELF_LIBC6 | FLAG_X8664_LIB64.
        if cfg!(target_arch = "x86_64") {
            assert_eq!(libc.flags, 0x0303);
        }
    }

    #[test]
    fn lookup_keeps_the_files_order() {
        let cache = LdCache::parse(&image(&[
            (0x0303, "libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"),
            (0x0003, "libz.so.1", "/lib/i386-linux-gnu/libz.so.1"),
            (0x0303, "libm.so.6", "/lib/x86_64-linux-gnu/libm.so.6"),
        ]))
        .unwrap();
        let found: Vec<_> = cache.lookup("libz.so.1").map(|entry| entry.flags).collect();
        assert_eq!(found, [0x0303, 0x0003]);
        assert_eq!(cache.lookup("libnope.so").count(), 0);
    }

    #[test]
    fn old_format_prefix_is_skipped() {
        let mut old = MAGIC_OLD.to_vec();
        old.push(0);
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(&[0; OLD_ENTRY_LEN]);
        // 16 + 12 = 28 bytes: padded to 32 before the new header.
        old.resize(32, 0);
        let new = image(&[(0x0303, "libc.so.6", "/lib/libc.so.6")]);
        // In the combined format, string offsets count from the new header.
        old.extend(new);
        let cache = LdCache::parse(&old).unwrap();
        assert_eq!(cache.lookup("libc.so.6").next().unwrap().path, Path::new("/lib/libc.so.6"));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert_eq!(
            LdCache::parse(b"hello").unwrap_err(),
            "it does not start with \"glibc-ld.so.cache1.1\""
        );
        let mut cut = image(&[(0x0303, "libc.so.6", "/lib/libc.so.6")]);
        cut.truncate(HEADER_LEN + 10);
        assert_eq!(LdCache::parse(&cut).unwrap_err(), "1 entries do not fit in the file");
    }

    #[test]
    fn a_missing_cache_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LdCache::load(&dir.path().join("ld.so.cache")).unwrap(), None);
    }
}
