//! Workloads for `isolab bench`: the disk kernels that must be the *same binary* on the host
//! and inside a container, so that a difference in speed can only come from where it runs.
//!
//! The probe is already in every rootfs that `rootfs-builder` makes (`/isolab/probe`), and the
//! host runs the very same file (`target/*/isolab-probe`), so its kernels are a fair yardstick.
//! CPU and memory use Debian's `sysbench`, copied into the rootfs the same way.
//!
//! Both kernels go around the page cache with `O_DIRECT` (`man 2 open`, "O_DIRECT"): without
//! it a "disk" benchmark measures memory copies into the cache, and the container's overlay
//! and the host's directory would look alike for the wrong reason. `O_DIRECT` wants the buffer,
//! the offset and the length aligned to the device's logical block size; 4 KiB covers every
//! common device.

use std::alloc::{self, Layout};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The alignment `O_DIRECT` needs (see the module's comment).
const ALIGN: usize = 4096;

/// One block of every write and read: large enough that the syscall's own cost disappears.
pub const BLOCK: usize = 1 << 20;

/// What [`disk`] measured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct DiskSpeed {
    /// Bytes written per second, `O_DIRECT`, the final `fsync` included.
    pub write_bytes_per_second: f64,
    /// Bytes read back per second, `O_DIRECT`.
    pub read_bytes_per_second: f64,
}

/// What [`first_write`] measured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct FirstWrite {
    /// Seconds from `open(O_WRONLY)` to the end of `fsync` of one 4 KiB write.
    pub seconds: f64,
    /// The file's size.
    pub file_bytes: u64,
}

/// A heap buffer aligned for `O_DIRECT`, freed when dropped.
struct AlignedBuffer {
    pointer: *mut u8,
    layout: Layout,
}

impl AlignedBuffer {
    fn new(length: usize, fill: u8) -> AlignedBuffer {
        let layout = Layout::from_size_align(length, ALIGN).expect("a valid layout");
        // SAFETY: the layout has a non-zero size (every caller asks for at least ALIGN).
        let pointer = unsafe { alloc::alloc(layout) };
        if pointer.is_null() {
            alloc::handle_alloc_error(layout);
        }
        // SAFETY: `pointer` is valid for `length` bytes, just allocated.
        unsafe { std::ptr::write_bytes(pointer, fill, length) };
        AlignedBuffer { pointer, layout }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: allocated and initialised for `layout.size()` bytes in `new`.
        unsafe { std::slice::from_raw_parts(self.pointer, self.layout.size()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.pointer, self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.pointer, self.layout) };
    }
}

/// Removes the benchmark's file however the measurement ends.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

fn direct(options: &mut OpenOptions) -> &mut OpenOptions {
    options.custom_flags(libc::O_DIRECT)
}

/// Writes `bytes` (rounded down to [`BLOCK`]) to a new file in `dir` with `O_DIRECT`, `fsync`s
/// it, reads it back with `O_DIRECT`, and removes it.
pub fn disk(dir: &Path, bytes: u64) -> io::Result<DiskSpeed> {
    let blocks = (bytes / BLOCK as u64).max(1);
    let path = dir.join(format!(".isolab-bench-disk-{}", std::process::id()));
    let _remove = RemoveOnDrop(&path);
    let mut buffer = AlignedBuffer::new(BLOCK, 0x5a);

    let started = Instant::now();
    let file = direct(OpenOptions::new().write(true).create_new(true)).open(&path)?;
    for block in 0..blocks {
        file.write_all_at(buffer.bytes(), block * BLOCK as u64)?;
    }
    // O_DIRECT skips the page cache, not the device's own cache or the file's metadata:
    // fsync makes both durable, as a database's commit would (`man 2 fsync`).
    file.sync_all()?;
    let write = started.elapsed();
    drop(file);

    let started = Instant::now();
    let file = direct(OpenOptions::new().read(true)).open(&path)?;
    for block in 0..blocks {
        file.read_exact_at(buffer.bytes_mut(), block * BLOCK as u64)?;
    }
    let read = started.elapsed();
    let total = (blocks * BLOCK as u64) as f64;
    Ok(DiskSpeed {
        write_bytes_per_second: total / seconds(write),
        read_bytes_per_second: total / seconds(read),
    })
}

/// The first write to an existing file: in a container whose file is in a lower layer, the
/// kernel copies the whole file up to the upper layer before this write can land
/// (overlayfs's "copy up", Documentation/filesystems/overlayfs.rst); on the host, or in the
/// upper already, it is one block.
pub fn first_write(file: &Path) -> io::Result<FirstWrite> {
    let buffer = AlignedBuffer::new(ALIGN, 0xa5);
    let started = Instant::now();
    let opened: File = OpenOptions::new().write(true).open(file)?;
    opened.write_all_at(buffer.bytes(), 0)?;
    opened.sync_all()?;
    let elapsed = started.elapsed();
    Ok(FirstWrite { seconds: seconds(elapsed), file_bytes: opened.metadata()?.len() })
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_writes_reads_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        // tmpfs refuses O_DIRECT on older kernels: the tempdir may be one. Only where the
        // call succeeds is its result checked; the error must name the cause otherwise.
        match disk(dir.path(), 2 * BLOCK as u64) {
            Ok(speed) => {
                assert!(speed.write_bytes_per_second > 0.0 && speed.read_bytes_per_second > 0.0)
            }
            Err(error) => assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}"),
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "the file is removed");
    }

    #[test]
    fn first_write_changes_one_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![0u8; 3 * ALIGN]).unwrap();
        let measured = first_write(&path).unwrap();
        assert_eq!(measured.file_bytes, 3 * ALIGN as u64);
        let content = fs::read(&path).unwrap();
        assert!(content[..ALIGN].iter().all(|&b| b == 0xa5));
        assert!(content[ALIGN..].iter().all(|&b| b == 0));
    }
}
