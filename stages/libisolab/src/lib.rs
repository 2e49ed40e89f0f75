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
pub mod error;
pub mod exit;
pub mod idmap;
pub mod idrange;
pub mod init;
pub mod mounts;
pub mod namespaces;
pub mod netlink;
pub mod network;
pub mod overlay;
pub mod process;
pub mod store;
pub mod user;
pub mod uts;

pub use error::{Error, Result};

/// Which chapter of the book introduces each module. Stage N may use a module only if its
/// chapter is ≤ N: the dependency graph is the curriculum.
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
    ("uts", 2),
    ("netlink", 2),
    ("network", 2),
    ("init", 2),
    ("container", 2),
    ("cgroups", 3),
    ("overlay", 4),
    ("changes", 4),
    ("copy", 4),
    ("store", 4),
];
