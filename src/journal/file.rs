//! The journal's files and directory: segment and snapshot names, a segment file that can be
//! made to fail on purpose (every journal test runs against both), and directory fsync.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Injected disk faults, the way tests see what a failing or a full disk does. `set` fails
/// every write, sync and truncation (a disk that errors); `set_full` fails only what needs new
/// space — writes and preallocation — while truncation and syncs of written data succeed, as
/// on a file system that ran out of room (ENOSPC).
#[derive(Debug, Default)]
pub struct FaultSwitch {
    failing: AtomicBool,
    full: AtomicBool,
    syncs_failing: AtomicBool,
}

impl FaultSwitch {
    pub fn set(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    /// Fails only `fdatasync` (writes succeed), as a device that reports an I/O error on
    /// writeback does: what was written since the last good sync may not be on disk.
    pub fn set_syncs_failing(&self, failing: bool) {
        self.syncs_failing.store(failing, Ordering::SeqCst);
    }

    fn check_sync(&self) -> io::Result<()> {
        self.check()?;
        if self.syncs_failing.load(Ordering::SeqCst) {
            Err(io::Error::other("injected disk fault: fdatasync failed (EIO)"))
        } else {
            Ok(())
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) { Err(io::Error::other("injected disk fault")) } else { Ok(()) }
    }

    fn check_space(&self) -> io::Result<()> {
        self.check()?;
        if self.full.load(Ordering::SeqCst) { Err(io::Error::other("injected disk fault: no space left on device")) } else { Ok(()) }
    }
}

/// One open segment, written by the writer thread only.
///
/// The segment is zero-filled ahead of the records ([`SegmentFile::preallocate`]), so that a
/// group commit overwrites blocks that already exist: `fdatasync` then writes the data block
/// and nothing else, where an append must also write the inode for the new file size.
/// Recovery reads the zeros after the last record as padding (see [`super::frame::scan`]).
pub struct SegmentFile {
    file: File,
    pub path: PathBuf,
    faults: Option<Arc<FaultSwitch>>,
    /// Bytes of the file that exist (records or zeros); writes below it change no metadata.
    allocated: u64,
}

/// Zeros written at a time while preallocating.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl SegmentFile {
    pub fn create(path: PathBuf, faults: Option<Arc<FaultSwitch>>) -> io::Result<SegmentFile> {
        let file = OpenOptions::new().create_new(true).write(true).open(&path)?;
        Ok(SegmentFile { file, path, faults, allocated: 0 })
    }

    fn check(&self) -> io::Result<()> {
        self.faults.as_ref().map_or(Ok(()), |f| f.check())
    }

    fn check_space(&self) -> io::Result<()> {
        self.faults.as_ref().map_or(Ok(()), |f| f.check_space())
    }

    /// Writes `buf` at `offset`. An injected fault writes half of it first, as a full disk would.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Err(e) = self.check_space() {
            let _ = self.file.write_all_at(&buf[..buf.len() / 2], offset);
            return Err(e);
        }
        self.file.write_all_at(buf, offset)?;
        self.allocated = self.allocated.max(offset + buf.len() as u64);
        Ok(())
    }

    /// Bytes of the file that already exist.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Fills the file with zeros up to `len` bytes (and syncs that, with `sync`), so later
    /// writes below `len` are overwrites.
    pub fn preallocate(&mut self, len: u64, sync: bool) -> io::Result<()> {
        self.check_space()?;
        while self.allocated < len {
            let n = (len - self.allocated).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], self.allocated)?;
            self.allocated += n as u64;
        }
        if sync { self.file.sync_data() } else { Ok(()) }
    }

    pub fn sync_data(&mut self) -> io::Result<()> {
        self.faults.as_ref().map_or(Ok(()), |f| f.check_sync())?;
        self.file.sync_data()
    }

    /// Cuts the file back to `len` bytes and makes that durable.
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.check()?;
        self.file.set_len(len)?;
        self.allocated = len;
        self.file.sync_all()
    }
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("journal-{seq:016}.log"))
}

pub fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("snapshot-{seq:016}.snap"))
}

/// Segments and snapshots in `dir`, each sorted by sequence number.
#[derive(Debug, Default)]
pub struct Listing {
    pub segments: Vec<(u64, PathBuf)>,
    pub snapshots: Vec<(u64, PathBuf)>,
    /// Leftovers of an interrupted snapshot write.
    pub temporaries: Vec<PathBuf>,
}

pub fn list(dir: &Path) -> io::Result<Listing> {
    let mut l = Listing::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let seq = |prefix: &str, suffix: &str| name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse::<u64>().ok();
        if let Some(s) = seq("journal-", ".log") {
            l.segments.push((s, path));
        } else if let Some(s) = seq("snapshot-", ".snap") {
            l.snapshots.push((s, path));
        } else if name.ends_with(".tmp") {
            l.temporaries.push(path);
        }
    }
    l.segments.sort();
    l.snapshots.sort();
    Ok(l)
}

/// Makes file creations, renames and deletions in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
