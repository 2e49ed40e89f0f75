//! Root filesystems for isolab, built so that you can see how.
//!
//! A chroot (chapter 1) and every sandbox after it needs a directory that looks like a whole
//! system: a shell, the programs the chapter runs, and every file those programs open before
//! `main`: the loader and the shared libraries. This crate builds such directories, and each
//! module is one idea a learner can read on its own:
//!
//! | module        | idea                                                                  |
//! |---------------|-----------------------------------------------------------------------|
//! | [`busybox`]   | the smallest rootfs: one static binary, a symlink per applet          |
//! | [`elf`]       | what the loader reads from an ELF file (`man 5 elf`)                  |
//! | [`ld_cache`]  | `/etc/ld.so.cache`, the loader's index of libraries                   |
//! | [`elf_deps`]  | the loader's search for libraries, step by step (`man 8 ld.so`)      |
//! | [`install`]   | copying a path so that it opens the same file inside the rootfs       |
//! | [`copy`]      | a program, its libraries and a report of why each file is there       |
//!
//! Its `tar` command writes a deterministic layer of a directory with stage 5's own code,
//! `libisolab::image::layer::pack_dir`, named by its `sha256:` digest: the layers
//! rootfs-builder makes and the ones stage 5 commits and unpacks are one format.
//!
//! Like `libisolab`, the library never prints and never exits: it returns [`Error`]s whose
//! messages name the call, the path and what to do, and reports ([`copy::Report`],
//! [`busybox::Built`]) that the binary turns into text.

pub mod busybox;
pub mod copy;
pub mod elf;
pub mod elf_deps;
pub mod error;
pub mod install;
pub mod ld_cache;

pub use error::{Error, Result};

/// For the unit tests that need something of the machine (root, a static busybox, a C
/// compiler): says that `test` did not run, and `why`. Under CI (`CI=true`: as root, on a
/// machine `scripts/setup` prepared) a test must run, so there this fails instead. (The
/// end-to-end tests have the same in `isolab_tests::skip`.)
#[cfg(test)]
pub(crate) fn skip(test: &str, why: &str) {
    let in_ci = std::env::var("CI").as_deref() == Ok("true");
    assert!(!in_ci, "{test} cannot run here ({why}), and under CI a test must run");
    eprintln!("skipping {test}: {why}");
}

/// `1 file`, `2 files`: a number and the noun that agrees with it.
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// A size for people: `512 B`, `3.4 KiB`, `14.2 MiB`, `1.1 GiB` (powers of 1024).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts_read_naturally() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(14_889_779), "14.2 MiB");
        assert_eq!(count(1, "library", "libraries"), "1 library");
        assert_eq!(count(0, "library", "libraries"), "0 libraries");
    }
}
