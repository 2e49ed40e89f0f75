//! Union mounts: one read-only base, many writable containers (overlayfs; the kernel's
//! `Documentation/filesystems/overlayfs.rst`).
//!
//! overlayfs shows a stack of directories as one tree:
//!
//! ```text
//!   merged   what the container sees (its /): each name from the topmost layer that has it
//!   ───────────────────────────────────────────────────────────────────────────────────────
//!   upper    the container's own, writable: every change it makes lands here
//!   lowers   read-only, never written: the base rootfs (in chapter 5, an image's layers)
//!   work     overlayfs's scratch space, on upper's filesystem (copy-ups are prepared here,
//!            then renamed into upper, so a crash never leaves half a file)
//! ```
//!
//! Reading reads from the topmost layer that has the name. The first write to a lower file
//! copies it up into upper whole (*copy-up*), and the write goes to the copy. Deleting a lower
//! name puts a *whiteout* in upper, a character device 0/0 that hides it; a directory that is
//! removed and made again is marked *opaque* (the xattr `trusted.overlay.opaque=y`, or
//! `user.overlay.opaque` when mounted with `userxattr`), which hides everything the lowers
//! have below it. [`crate::changes`] reads an upper back as a list of changes.
//!
//! This module builds the mount, as a [`Step`] for the container plan, and checks before
//! anything runs the rules the kernel will apply, so that a refusal comes with a reason
//! instead of mount(2)'s bare `EINVAL`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::statfs::{statfs, FsType, OVERLAYFS_SUPER_MAGIC};

use crate::error::{Error, Result, SysResultExt};
use crate::mountinfo::{self, unescape};
use crate::mounts::{self, Step};

/// The xattr that marks an opaque directory when overlayfs runs as the host's root.
pub const OPAQUE_TRUSTED: &str = "trusted.overlay.opaque";

/// The same, when mounted with `userxattr` (inside a user namespace: `trusted.*` xattrs are
/// reserved to the host's root, so overlayfs uses the `user.*` namespace instead).
pub const OPAQUE_USER: &str = "user.overlay.opaque";

/// The first kernel that lets a user namespace mount overlayfs (Linux 5.11: `FS_USERNS_MOUNT`
/// and the `userxattr` option).
pub const USERNS_MINIMUM: (u32, u32) = (5, 11);

/// The first Linux whose overlayfs has the `volatile` option.
pub const VOLATILE_MINIMUM: (u32, u32) = (5, 10);

/// The longest options string mount(2) takes: one page, its last byte the terminating NUL.
const MAX_OPTIONS: usize = 4095;

// ANCHOR: layers
/// The directories of one overlay mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    /// The read-only layers, topmost first (as `lowerdir=top:…:bottom` lists them).
    pub lowers: Vec<PathBuf>,
    /// The writable layer.
    pub upper: PathBuf,
    /// Scratch space on upper's filesystem; must be empty when mounted the first time.
    pub work: PathBuf,
    /// Mount in a user namespace: keep overlayfs's own xattrs in `user.*` (`userxattr`).
    pub userxattr: bool,
    /// The upper is thrown away when the container ends (`--rm`): mount it `volatile`, so
    /// that unmounting it does not sync the upper's filesystem (see [`Layers::mount_step`]).
    pub volatile: bool,
}

impl Layers {
    /// The options string of the mount: `lowerdir=…,upperdir=…,workdir=…[,userxattr]`.
    ///
    /// `:` separates lower layers and `,` separates options, so both are escaped in paths
    /// with a backslash (as is the backslash itself), as overlayfs reads them.
    pub fn options(&self) -> String {
        // LAB stage4/overlay-options BEGIN: the overlay mount's options string
        let lowers: Vec<String> = self.lowers.iter().map(|lower| escape(lower)).collect();
        let mut options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            escape(&self.upper),
            escape(&self.work)
        );
        if self.userxattr {
            options.push_str(",userxattr");
        }
        options
        // LAB END
    }

    /// The mount, as a step of the container plan: `mount("overlay", merged, "overlay", 0,
    /// options)`.
    ///
    /// A `volatile` overlay (Linux 5.10; overlayfs.rst, "Volatile mount") skips every sync
    /// of its upper: without it, the unmount when the container's mount namespace dies runs
    /// `syncfs` on the *whole* filesystem the upper is on (`ovl_sync_fs`), writing back every
    /// dirty file of the host on it and flushing the disk's cache, inside the container's
    /// exit. For a `--rm` container, whose upper is removed a moment later, that is wasted
    /// (about 1 ms per start here, and more when the host has dirty data). The price: after a
    /// crash the kernel refuses to mount that upper again, which a `--rm` container never is.
    pub fn mount_step(&self, merged: &Path) -> Step {
        let mut data = self.options();
        if self.volatile && kernel_at_least(VOLATILE_MINIMUM).unwrap_or(false) {
            data.push_str(",volatile");
        }
        Step::Mount {
            source: Some(PathBuf::from("overlay")),
            target: merged.to_path_buf(),
            fstype: Some("overlay"),
            flags: MsFlags::empty(),
            data: Some(data),
            why: "the container's root: its own upper over the read-only base",
        }
    }
    // ANCHOR_END: layers

    // ANCHOR: check
    /// Checks, before anything runs, what the kernel would refuse. `mounter` is the host
    /// uid and gid that will mount (root of a user namespace is an ordinary user outside):
    /// it must be able to reach every layer.
    pub fn check(&self, mounter: Option<(u32, u32)>) -> Result<()> {
        if self.userxattr && !kernel_at_least(USERNS_MINIMUM)? {
            return Err(Error::Invalid(format!(
                "this kernel ({}) cannot mount overlayfs in a user namespace (Linux {}.{} \
                 can): use --storage copy, or run as root without a user namespace",
                kernel_release()?,
                USERNS_MINIMUM.0,
                USERNS_MINIMUM.1
            )));
        }
        for lower in &self.lowers {
            // An overlay may stack on an overlay, but no deeper: the kernel's limit
            // (FILESYSTEM_MAX_STACK_DEPTH) is two levels, so a lower that is an overlay
            // whose own layers are overlays is refused.
            if let Some(layer) = stacked_too_deep(lower)? {
                return Err(Error::Invalid(format!(
                    "base {} is on an overlay whose layer {} is an overlay itself: a third \
                     level of overlays exceeds the kernel's stacking depth of two; copy the \
                     base to a disk filesystem, or use --storage copy",
                    lower.display(),
                    layer.display()
                )));
            }
            for writable in [&self.upper, &self.work] {
                if writable.starts_with(lower) || lower.starts_with(writable) {
                    return Err(Error::Invalid(format!(
                        "base {} and the container's {} overlap, and overlayfs refuses \
                         overlapping layers: keep the store (--root) outside the base",
                        lower.display(),
                        writable.display()
                    )));
                }
            }
        }
        // upper holds whiteouts (device nodes) and overlayfs's xattrs, which an overlay
        // cannot store: a store inside a container's overlay (running isolab in docker) fails.
        if filesystem(&self.upper)? == OVERLAYFS_SUPER_MAGIC {
            return Err(Error::Invalid(format!(
                "the store's {} is on an overlayfs, which cannot be an overlay's upper layer: \
                 put --root on a disk filesystem (ext4, xfs, btrfs) or a tmpfs, or use \
                 --storage copy",
                self.upper.display()
            )));
        }
        let device = |path: &Path| fs::metadata(path).map(|m| m.dev()).ok();
        if device(&self.upper).is_some() && device(&self.upper) != device(&self.work) {
            return Err(Error::Invalid(format!(
                "{} and {} are on different filesystems: overlayfs renames from its work \
                 directory into upper, which works only within one filesystem",
                self.work.display(),
                self.upper.display()
            )));
        }
        if let Some((uid, gid)) = mounter {
            for layer in self.lowers.iter().chain([&self.upper, &self.work]) {
                mounts::check_reachable(layer, uid, gid)?;
            }
        }
        Ok(())
    }
    // ANCHOR_END: check

    /// Checks that the options string fits the page mount(2) copies: every lower's path is in
    /// it, so a long store path and many layers can exceed it (docker keeps short symlinks to
    /// its layers for this). Called on the paths that are mounted, which for an idmapped
    /// base are the short mount points in the container's directory.
    pub fn check_length(&self) -> Result<()> {
        let length = self.options().len();
        if length > MAX_OPTIONS {
            return Err(Error::Invalid(format!(
                "the overlay's options are {length} bytes with {} lower layers, and mount(2) \
                 takes at most {MAX_OPTIONS}: use a store with a shorter path (--root), or fewer \
                 layers (an image can be flattened: run it, then import its files)",
                self.lowers.len()
            )));
        }
        Ok(())
    }
}

/// Escapes `\`, `:` and `,` in a layer's path.
fn escape(path: &Path) -> String {
    let mut escaped = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The filesystem type (`statfs(2)`'s magic number) of the one `path` is on, or of its
/// nearest existing ancestor (in a dry run, the container's directories do not exist yet).
fn filesystem(path: &Path) -> Result<FsType> {
    let existing = path.ancestors().find(|dir| dir.exists()).unwrap_or(Path::new("/"));
    Ok(statfs(existing).sys("statfs", existing.display())?.filesystem_type())
}

/// If `path` is on an overlay mount one of whose layers is on an overlay too, that layer.
fn stacked_too_deep(path: &Path) -> Result<Option<PathBuf>> {
    if filesystem(path)? != OVERLAYFS_SUPER_MAGIC {
        return Ok(None);
    }
    for layer in overlay_layers(&mountinfo::read()?, path) {
        if layer.exists() && filesystem(&layer)? == OVERLAYFS_SUPER_MAGIC {
            return Ok(Some(layer));
        }
    }
    Ok(None)
}

/// The layers (lowers, upper) of the overlay mount that `path` is on, from a mount table:
/// the overlay whose mount point is the longest prefix of `path`.
fn overlay_layers(table: &str, path: &Path) -> Vec<PathBuf> {
    // `36 35 0:50 / /mnt rw,relatime - overlay overlay rw,lowerdir=/a:/b,upperdir=/u,…`
    let mut best: Option<(usize, Vec<PathBuf>)> = None;
    for mount in mountinfo::parse(table) {
        if mount.fstype != "overlay" || !path.starts_with(&mount.mount_point) {
            continue;
        }
        let mut layers = Vec::new();
        for option in mount.super_options.split(',') {
            if let Some(lowers) = option.strip_prefix("lowerdir=") {
                layers.extend(split_unescaped(lowers, ':').iter().map(|l| unescape(l)));
            } else if let Some(upper) = option.strip_prefix("upperdir=") {
                layers.push(unescape(upper));
            }
        }
        let depth = mount.mount_point.components().count();
        let deeper = match &best {
            Some((best_depth, _)) => depth >= *best_depth,
            None => true,
        };
        if deeper {
            best = Some((depth, layers));
        }
    }
    best.map(|(_, layers)| layers).unwrap_or_default()
}

/// Splits at `separator`s that no backslash escapes.
fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        let current = parts.last_mut().expect("one part at least");
        match c {
            _ if escaped => {
                current.push(c);
                escaped = false;
            }
            '\\' => escaped = true,
            _ if c == separator => parts.push(String::new()),
            _ => current.push(c),
        }
    }
    parts
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> Result<String> {
    let uts = nix::sys::utsname::uname().sys("uname", "")?;
    Ok(uts.release().to_string_lossy().into_owned())
}

/// Is the running kernel at least `major.minor`?
pub fn kernel_at_least(minimum: (u32, u32)) -> Result<bool> {
    Ok(parse_release(&kernel_release()?).is_some_and(|version| version >= minimum))
}

/// `6.1.0-18-amd64` → `(6, 1)`.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    let major = numbers.next()?.parse().ok()?;
    let minor = numbers.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Layers {
        Layers {
            lowers: vec![PathBuf::from("/img/top"), PathBuf::from("/img/bottom")],
            upper: PathBuf::from("/store/c1/upper"),
            work: PathBuf::from("/store/c1/work"),
            userxattr: false,
            volatile: false,
        }
    }

    #[test]
    fn options_list_lowers_topmost_first() {
        assert_eq!(
            layers().options(),
            "lowerdir=/img/top:/img/bottom,upperdir=/store/c1/upper,workdir=/store/c1/work"
        );
        let step = Layers { userxattr: true, ..layers() }.mount_step(Path::new("/store/m"));
        assert_eq!(
            step.to_string(),
            "mount(\"overlay\", \"/store/m\", \"overlay\", 0, \"lowerdir=/img/top:/img/bottom,\
             upperdir=/store/c1/upper,workdir=/store/c1/work,userxattr\")"
        );
    }

    #[test]
    fn a_container_removed_at_its_end_mounts_volatile() {
        let kept = layers().mount_step(Path::new("/store/m")).to_string();
        assert!(!kept.contains("volatile"), "{kept}");
        let removed = Layers { volatile: true, ..layers() }.mount_step(Path::new("/store/m"));
        let here = kernel_at_least(VOLATILE_MINIMUM).unwrap();
        assert_eq!(removed.to_string().ends_with(",volatile\")"), here, "{removed}");
        // The options alone (the lab's part) stay what overlayfs needs to mount at all.
        assert!(!Layers { volatile: true, ..layers() }.options().contains("volatile"));
    }

    #[test]
    fn separators_in_paths_are_escaped() {
        assert_eq!(escape(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
    }

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_release("5.10.0"), Some((5, 10)));
        assert_eq!(parse_release("6.18.44-fc-v782"), Some((6, 18)));
        assert!(Some((5, 10)) < Some(USERNS_MINIMUM) && (6, 1) > USERNS_MINIMUM);
        assert_eq!(parse_release("x"), None);
    }

    #[test]
    fn the_layers_of_the_overlay_a_path_is_on() {
        let mountinfo = "22 1 8:1 / / rw - ext4 /dev/vda rw\n\
                         90 22 0:50 / /mnt/b rw - overlay overlay rw,lowerdir=/mnt/a:/x\\:y,\
                         upperdir=/up\\040per,workdir=/w,redirect_dir=nofollow\n";
        assert_eq!(
            overlay_layers(mountinfo, Path::new("/mnt/b/rootfs")),
            [PathBuf::from("/mnt/a"), PathBuf::from("/x:y"), PathBuf::from("/up per")]
        );
        assert!(overlay_layers(mountinfo, Path::new("/srv")).is_empty());
    }

    #[test]
    fn overlapping_layers_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        fs::create_dir_all(base.join("store/c1/upper")).unwrap();
        fs::create_dir_all(base.join("store/c1/work")).unwrap();
        let layers = Layers {
            lowers: vec![base.clone()],
            upper: base.join("store/c1/upper"),
            work: base.join("store/c1/work"),
            userxattr: false,
            volatile: false,
        };
        let error = layers.check(None).unwrap_err().to_string();
        assert!(error.contains("overlap"), "{error}");
    }
}
