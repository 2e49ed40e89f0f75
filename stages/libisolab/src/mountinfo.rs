//! The mount table as the kernel shows it: `/proc/self/mountinfo` (`man 5 proc_pid_mountinfo`).
//!
//! Every process sees the mounts of its own mount namespace there, one line per mount:
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2) (3)   (4)   (5)    (6)      (7)    (8) (9)    (10)       (11)
//! ```
//!
//! mount id, parent id, major:minor, the root of the mount within its filesystem, the mount
//! point, the per-mount options, optional fields (`shared:N`, `master:N`) ended by `-`, then
//! the filesystem type, its source and the filesystem's own ("super") options. Paths escape
//! space, tab, newline and backslash as three octal digits (`\040`), so that a field never
//! contains a space: [`unescape`] turns them back.
//!
//! Several modules read this table (cgroups finds its hierarchies in it, overlay the layers of
//! a mount, the store what is mounted in a container's directory, the probe its cgroups), so
//! the parsing is written once, here. So is [`statx`], which tells of one path which mount it
//! is on and whether it is a mount's root, without reading the table.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// `statx(2)` of `path` with `flags` (`AT_SYMLINK_NOFOLLOW` for the path itself) and `mask`,
/// or `None` if it fails. Besides what `stat` gives, it names the mount the path is on
/// (`STATX_MNT_ID`, Linux 5.8; `STATX_MNT_ID_UNIQUE`, 6.8) and says whether the path is a
/// mount's root (`STATX_ATTR_MOUNT_ROOT`, 5.8).
pub fn statx(path: &std::path::Path, flags: i32, mask: u32) -> Option<libc::statx> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx fills the struct it is given, which outlives the call.
    let done =
        unsafe { libc::statx(libc::AT_FDCWD, path.as_ptr(), flags, mask, stat.as_mut_ptr()) };
    // SAFETY: zeroed, then filled by a successful statx.
    (done == 0).then(|| unsafe { stat.assume_init() })
}

/// Where a process reads its own mount table.
pub const SELF: &str = "/proc/self/mountinfo";

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Field 4: the directory of the filesystem that appears at the mount point (`/`, unless
    /// a subdirectory was bind-mounted), unescaped.
    pub root: PathBuf,
    /// Field 5: where it is mounted, unescaped.
    pub mount_point: PathBuf,
    /// Field 6: the options of this mount (`rw,nosuid,relatime`).
    pub mount_options: String,
    /// The filesystem type (`ext4`, `overlay`, `cgroup`, `cgroup2`).
    pub fstype: String,
    /// The source: a device, or whatever name the mounter gave (`isolab-<token>`), unescaped.
    pub source: String,
    /// The filesystem's own options (`rw,lowerdir=/a:/b,upperdir=…` for an overlay, the
    /// controllers for a cgroup v1 hierarchy), escaped as the kernel printed them: each
    /// filesystem quotes its option values its own way, so the caller unescapes the values it
    /// reads (with [`unescape`], and whatever else that filesystem needs).
    pub super_options: String,
}

/// Reads this process's mount table.
pub fn read() -> Result<String> {
    std::fs::read_to_string(SELF).map_err(|error| Error::io("read", SELF, &error))
}

/// The mounts of a mount table, in the order mounted; lines that do not parse are left out.
pub fn parse(text: &str) -> impl Iterator<Item = Mount> + '_ {
    text.lines().filter_map(parse_line)
}

/// One line of a mount table; `None` if it is not one.
pub fn parse_line(line: &str) -> Option<Mount> {
    // The optional fields before ` - ` vary in number; the fields around them do not, and no
    // field contains a space (the kernel escapes them), so ` - ` is where the second half
    // starts.
    let (before, after) = line.split_once(" - ")?;
    let mut before = before.split(' ');
    let (_id, _parent, _device) = (before.next()?, before.next()?, before.next()?);
    let (root, mount_point, mount_options) = (before.next()?, before.next()?, before.next()?);
    let mut after = after.split(' ');
    let (fstype, source) = (after.next()?, after.next()?);
    Some(Mount {
        root: unescape(root),
        mount_point: unescape(mount_point),
        mount_options: mount_options.to_string(),
        fstype: fstype.to_string(),
        source: unescape(source).to_string_lossy().into_owned(),
        super_options: after.next().unwrap_or_default().to_string(),
    })
}

/// The mount point of one line of a mount table (field 5).
pub fn mount_point(line: &str) -> Option<PathBuf> {
    parse_line(line).map(|mount| mount.mount_point)
}

/// Decodes a field of the mount table: the kernel writes space, tab, newline and backslash as
/// `\` and three octal digits (`\040`, `\011`, `\012`, `\134`). A backslash that starts no
/// such escape is kept as it is. Bytes, not text: a path need not be UTF-8.
pub fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal {
            Some(digits) => {
                // Three octal digits may say up to 511; the kernel only writes bytes (≤ 0o377).
                let value =
                    digits.iter().fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                out.push(value as u8);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_line_with_optional_fields() {
        let line = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root \
                    rw,errors=continue";
        let mount = parse_line(line).unwrap();
        assert_eq!(mount.root, Path::new("/mnt1"));
        assert_eq!(mount.mount_point, Path::new("/mnt2"));
        assert_eq!(mount.mount_options, "rw,noatime");
        assert_eq!(mount.fstype, "ext3");
        assert_eq!(mount.source, "/dev/root");
        assert_eq!(mount.super_options, "rw,errors=continue");
    }

    #[test]
    fn paths_and_sources_are_unescaped() {
        let line =
            "36 27 0:40 /a\\134b /tmp/x\\040y rw,relatime - tmpfs isolab\\011t0k rw,size=16k";
        let mount = parse_line(line).unwrap();
        assert_eq!(mount.root, Path::new("/a\\b"));
        assert_eq!(mount.mount_point, Path::new("/tmp/x y"));
        assert_eq!(mount.source, "isolab\tt0k");
        assert_eq!(mount_point(line).unwrap(), Path::new("/tmp/x y"));
    }

    #[test]
    fn super_options_stay_escaped() {
        // An overlay's options are its own business: `\040` in a lowerdir stays for overlay.
        let line = "36 35 0:50 / /m rw - overlay overlay rw,lowerdir=/a\\040b:/c,upperdir=/u";
        assert_eq!(parse_line(line).unwrap().super_options, "rw,lowerdir=/a\\040b:/c,upperdir=/u");
    }

    #[test]
    fn unescape_decodes_octal_only() {
        assert_eq!(unescape("/a\\040b\\011c\\012d\\134e"), Path::new("/a b\tc\nd\\e"));
        // A backslash that starts no escape, and one at the end, are kept.
        assert_eq!(unescape("/plain\\"), Path::new("/plain\\"));
        assert_eq!(unescape("/x\\09y\\8"), Path::new("/x\\09y\\8"));
        // Not UTF-8: the bytes as they are.
        assert_eq!(unescape("/\\377").as_os_str().as_encoded_bytes(), b"/\xff");
    }

    #[test]
    fn lines_that_are_not_mounts_are_left_out() {
        let text = "garbage\n\n1 2 0:3 / /ok rw - tmpfs none rw\n1 2 0:3 / - tmpfs\n";
        let points: Vec<PathBuf> = parse(text).map(|mount| mount.mount_point).collect();
        assert_eq!(points, [PathBuf::from("/ok")]);
    }

    #[test]
    fn no_super_options_is_empty() {
        assert_eq!(parse_line("1 2 0:3 / /x rw - tmpfs none").unwrap().super_options, "");
    }
}
