//! The kernel mechanisms that isolab teaches, one module per concept.
//!
//! Every stage binary under `stages/` is a short orchestration of these modules, and the
//! book's chapters include their code by `ANCHOR`. The library never prints and never exits
//! (but for [`cli`], which the binaries call to speak): it returns errors ([`Error`]) that name
//! the system call, the path and what to do about it, and the binaries decide how to report
//! them.
//!
//! The modules are ordered by the chapter that introduces them ([`CHAPTERS`]); a stage may
//! only use modules of its own chapter or earlier ones (a test in `tests/` checks this).

pub mod cgroups;
pub mod changes;
pub mod chroot;
pub mod cli;
pub mod container;
pub mod copy;
pub mod digest;
pub mod error;
pub mod exit;
pub mod idmap;
pub mod idmapped;
pub mod idrange;
pub mod image;
pub mod init;
pub mod mountinfo;
pub mod mounts;
pub mod namespaces;
pub mod netlink;
pub mod network;
pub mod overlay;
pub mod process;
pub mod registry;
pub mod store;
pub mod user;
pub mod uts;

pub use error::{Error, Result};

/// For the unit tests that need something of the machine (root, mostly): says that `test` did
/// not run, and `why`. Under CI (`CI=true`, as root) a test must run, so there this fails
/// instead. (The end-to-end tests have the same in `isolab_tests::skip`.)
#[cfg(test)]
pub(crate) fn skip(test: &str, why: &str) {
    let in_ci = std::env::var("CI").as_deref() == Ok("true");
    assert!(!in_ci, "{test} cannot run here ({why}), and under CI a test must run");
    eprintln!("skipping {test}: {why}");
}

/// Which chapter of the book introduces each module. Stage N may use a module only if its
/// chapter is ≤ N, and a module only modules of its own chapter or earlier ones: the dependency
/// graph is the curriculum. A part of a module may have a later chapter than the module
/// (`container::cgroup`): the longest listed prefix of a path says its chapter.
pub const CHAPTERS: &[(&str, u8)] = &[
    ("error", 1),
    ("cli", 1),
    ("exit", 1),
    ("process", 1),
    ("user", 1),
    ("chroot", 1),
    ("namespaces", 2),
    ("idmap", 2),
    ("idrange", 2),
    ("mounts", 2),
    ("mountinfo", 2),
    ("uts", 2),
    ("netlink", 2),
    ("network", 2),
    ("init", 2),
    ("container", 2),
    ("cgroups", 3),
    // Chapter 3's part of the container: its cgroup, from the options to the report.
    ("container::cgroup", 3),
    ("overlay", 4),
    // An idmapped mount of the base, so that root of a user namespace owns its files; and
    // the container's part: the runtime makes it for the child, the child attaches it.
    ("idmapped", 4),
    ("container::idmapped", 4),
    ("changes", 4),
    ("copy", 4),
    ("store", 4),
    // Stage 5's images name and verify every blob by its digest; rootfs-builder (not a stage)
    // writes layer tars with it already.
    ("digest", 5),
    ("image", 5),
    // Images travel to and from a registry (the OCI distribution API): the second half of
    // chapter 5, since stage 5 pushes and pulls (the curriculum test holds a stage to its
    // chapter; a stage 6 of its own would add nothing to the kernel).
    ("registry", 5),
];
