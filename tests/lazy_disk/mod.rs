//! A disk with a volatile write cache, for power-loss tests: what
//! dm-flakey does, on a kernel without device-mapper.
//!
//! [`LazyDisk`] is a FUSE filesystem that serves one file, [`IMAGE`]: a disk
//! image whose durable contents live in a real sparse file. A write to it is
//! held in memory; an `fsync` of it (`FUSE_FSYNC`) makes every write received
//! before it durable, that is, writes it to the sparse file. The loop driver
//! fsyncs its backing file whenever the filesystem above sends a flush or a
//! FUA write (ext4: at each journal commit, `fsync` and `syncfs`), so a loop
//! device on the image is a drive with a write cache whose flushes this
//! server sees. [`Power::cut`] plays a power loss: what the cache holds is
//! lost (all of it, or any subset of it: [`Cut`]), and from then on the disk
//! keeps nothing: writes and flushes are acknowledged and dropped, reads
//! fail.
//!
//! Why one level down from the store's files: `syncfs(2)` on a FUSE mount
//! never reaches the server (the kernel sends `FUSE_SYNCFS` only to
//! virtiofs), so a FUSE filesystem serving the store itself could not see
//! warren's syncs. Under a real ext4 every kind of sync becomes a flush of
//! the device, and the device is this file.
//!
//! The image is opened with `FOPEN_DIRECT_IO`: the kernel keeps no page cache
//! of it, so every read and write of the loop device reaches this server, and
//! what is read after a cut is what the disk kept.
//!
//! [`ext4`] puts a loop device and ext4 on the image, and takes them down.

#![allow(dead_code, unreachable_pub)] // not every test uses every helper

pub mod ext4;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    WriteFlags,
};

/// The name of the one file the filesystem serves.
pub const IMAGE: &str = "disk";

/// The unit in which writes reach the medium, or not: ext4's block size.
pub const BLOCK: u64 = 4096;

const IMAGE_INODE: INodeNo = INodeNo(2);

/// What a power cut does to the writes the cache holds.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Every write since the last flush is lost, as with dm-flakey's
    /// `drop_writes` from the moment of the cut.
    LoseAll,
    /// Each block written since the last flush reached the medium or not,
    /// chosen independently by an RNG seeded with `seed`: a drive may write
    /// its cache back in any order between flushes, so any subset of those
    /// writes may have landed, a part of one multi-block write included. Two
    /// writes of one block land in the order they were made: an older one
    /// may be all that landed, but never lands over a newer one.
    KeepAnySubset { seed: u64 },
}

/// What a cut dropped, for the test's log.
#[derive(Debug, Clone, Copy, Default)]
pub struct CutReport {
    /// Block writes since the last flush that reached the medium.
    pub kept: usize,
    /// Block writes since the last flush that were lost.
    pub lost: usize,
}

/// What the disk has been asked to do since it was mounted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Write requests.
    pub writes: u64,
    /// Flushes (`FUSE_FSYNC`).
    pub flushes: u64,
}

/// The image and its write cache.
struct Cache {
    image: File,
    size: u64,
    /// Blocks written since the last flush, oldest first, each as it was
    /// right after that write.
    pending: Vec<(u64, Box<[u8]>)>,
    /// The newest entry of `pending` for each block it holds: what a read of
    /// that block returns.
    newest: HashMap<u64, usize>,
    /// The power was cut: nothing reaches the image any more.
    cut: bool,
    counts: Counts,
}

impl Cache {
    fn new(image: File) -> std::io::Result<Self> {
        let size = image.metadata()?.len();
        Ok(Self {
            image,
            size,
            pending: Vec::new(),
            newest: HashMap::new(),
            cut: false,
            counts: Counts::default(),
        })
    }

    /// `len` bytes at `offset` as the drive would return them: cached
    /// blocks first, the image below them.
    fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        if self.cut {
            return Err(Errno::EIO);
        }
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        let mut data = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let take = (BLOCK as usize - within).min((end - at) as usize);
            let contents = self.block(block)?;
            data.extend_from_slice(&contents[within..within + take]);
            at += take as u64;
        }
        Ok(data)
    }

    /// Caches `data` at `offset`, a block at a time.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.counts.writes += 1;
        if self.cut {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= self.size)
            .ok_or(Errno::ENOSPC)?;
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let take = (BLOCK as usize - within).min((end - at) as usize);
            let mut contents = if take == BLOCK as usize {
                vec![0; BLOCK as usize].into_boxed_slice()
            } else {
                self.block(block)?
            };
            let from = (at - offset) as usize;
            contents[within..within + take].copy_from_slice(&data[from..from + take]);
            self.newest.insert(block, self.pending.len());
            self.pending.push((block, contents));
            at += take as u64;
        }
        Ok(())
    }

    /// Makes every cached write durable.
    fn flush(&mut self) -> Result<(), Errno> {
        self.counts.flushes += 1;
        if self.cut {
            return Ok(());
        }
        for (&block, &index) in &self.newest {
            self.image
                .write_all_at(&self.pending[index].1, block * BLOCK)?;
        }
        self.pending.clear();
        self.newest.clear();
        Ok(())
    }

    /// Loses the cache as `how` says; nothing reaches the image after this.
    fn cut(&mut self, how: Cut) -> std::io::Result<CutReport> {
        let mut report = CutReport::default();
        if self.cut {
            return Ok(report);
        }
        self.cut = true;
        let pending = std::mem::take(&mut self.pending);
        self.newest.clear();
        match how {
            Cut::LoseAll => report.lost = pending.len(),
            Cut::KeepAnySubset { seed } => {
                let mut rng = fastrand::Rng::with_seed(seed);
                for (block, contents) in pending {
                    if rng.bool() {
                        self.image.write_all_at(&contents, block * BLOCK)?;
                        report.kept += 1;
                    } else {
                        report.lost += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// One block as a read sees it.
    fn block(&self, block: u64) -> Result<Box<[u8]>, Errno> {
        if let Some(&index) = self.newest.get(&block) {
            return Ok(self.pending[index].1.clone());
        }
        let mut contents = vec![0; BLOCK as usize].into_boxed_slice();
        // The image's size is a multiple of the block: a block is whole.
        self.image.read_exact_at(&mut contents, block * BLOCK)?;
        Ok(contents)
    }
}

/// The test's handle on the disk's power: cut it, and count what the disk
/// was asked to do.
#[derive(Clone)]
pub struct Power(Arc<Mutex<Cache>>);

impl Power {
    /// Cuts the power: the cache is lost as `how` says, and nothing reaches
    /// the image afterwards.
    pub fn cut(&self, how: Cut) -> CutReport {
        self.lock()
            .cut(how)
            .expect("the image to take the blocks that survive the cut")
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves a cache that is still whole.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The FUSE filesystem: a root directory holding [`IMAGE`].
pub struct LazyDisk {
    power: Power,
    size: u64,
}

impl LazyDisk {
    /// A disk over the image at `path` (its size is the disk's: a multiple
    /// of [`BLOCK`]), and the handle on its power.
    pub fn open(path: &Path) -> (Self, Power) {
        let image = File::options()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("opening the disk image {}: {e}", path.display()));
        let cache = Cache::new(image).expect("the disk image's size");
        assert_eq!(cache.size % BLOCK, 0, "the disk image is not whole blocks");
        let size = cache.size;
        let power = Power(Arc::new(Mutex::new(cache)));
        (
            Self {
                power: power.clone(),
                size,
            },
            power,
        )
    }

    fn attr(&self, inode: INodeNo) -> Option<FileAttr> {
        let (kind, perm, size) = match inode {
            INodeNo::ROOT => (FileType::Directory, 0o700, 0),
            IMAGE_INODE => (FileType::RegularFile, 0o600, self.size),
            _ => return None,
        };
        Some(FileAttr {
            ino: inode,
            size,
            blocks: size / 512,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }
}

/// Attributes never change: the kernel may keep them.
const TTL: Duration = Duration::from_secs(3600);

impl Filesystem for LazyDisk {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(IMAGE_INODE) {
            Some(attr) if parent == INodeNo::ROOT && name == IMAGE => {
                reply.entry(&TTL, &attr, Generation(0));
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == IMAGE_INODE {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.power.lock().read(offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.power.lock().write(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    /// A `close`: no promise of durability.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.power.lock().flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Refused: the loop driver then declines discards and write-zeroes,
    /// and the filesystem above writes zeroes instead, through the cache
    /// like any write.
    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EOPNOTSUPP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(blocks: u64) -> (tempfile::NamedTempFile, Cache) {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(blocks * BLOCK).unwrap();
        let cache = Cache::new(image.reopen().unwrap()).unwrap();
        (image, cache)
    }

    fn on_image(image: &tempfile::NamedTempFile, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        image.as_file().read_exact_at(&mut data, offset).unwrap();
        data
    }

    /// Reads see every write at once; the image, only flushed ones.
    #[test]
    fn writes_reach_the_image_only_when_flushed() {
        let (image, mut cache) = disk(4);
        // Unaligned, across a block boundary.
        cache.write(BLOCK - 3, b"abcdef").unwrap();
        assert_eq!(cache.read(BLOCK - 4, 8).unwrap(), b"\0abcdef\0");
        assert_eq!(on_image(&image, BLOCK - 3, 6), [0; 6]);
        cache.flush().unwrap();
        assert_eq!(on_image(&image, BLOCK - 3, 6), b"abcdef");
        // A partial write keeps the rest of its block, flushed or cached.
        cache.write(BLOCK - 1, b"X").unwrap();
        assert_eq!(cache.read(BLOCK - 3, 4).unwrap(), b"abXd");
        assert_eq!(cache.write(4 * BLOCK - 1, b"no"), Err(Errno::ENOSPC));
    }

    /// A cut loses what was not flushed, and the disk keeps nothing after
    /// it.
    #[test]
    fn a_cut_loses_all_unflushed_writes_and_everything_after_it() {
        let (image, mut cache) = disk(4);
        cache.write(0, b"durable").unwrap();
        cache.flush().unwrap();
        cache.write(0, b"DURABLE").unwrap();
        cache.write(2 * BLOCK, b"volatile").unwrap();
        let report = cache.cut(Cut::LoseAll).unwrap();
        assert_eq!((report.kept, report.lost), (0, 2));
        cache.write(3 * BLOCK, b"too late").unwrap();
        cache.flush().unwrap();
        assert_eq!(cache.read(0, 8), Err(Errno::EIO));
        assert_eq!(on_image(&image, 0, 7), b"durable");
        assert_eq!(on_image(&image, 2 * BLOCK, 8), [0; 8]);
        assert_eq!(on_image(&image, 3 * BLOCK, 8), [0; 8]);
    }

    /// Any subset of unflushed block writes lands: across seeds, each block
    /// ends up with one of the values it held (a part of a multi-block
    /// write included), and both "some kept" and "some lost" occur.
    #[test]
    fn a_cut_keeps_any_subset_of_unflushed_blocks() {
        let (mut kept, mut lost) = (0, 0);
        for seed in 0..32 {
            let (image, mut cache) = disk(8);
            // Block 0 is written three times: old, newer, newest.
            for value in [b'a', b'b', b'c'] {
                cache.write(0, &[value; 4]).unwrap();
            }
            // One write of four blocks may land in part.
            cache.write(4 * BLOCK, &[b'z'; 4 * BLOCK as usize]).unwrap();
            let report = cache.cut(Cut::KeepAnySubset { seed }).unwrap();
            assert_eq!(report.kept + report.lost, 7);
            kept += report.kept;
            lost += report.lost;
            let first = on_image(&image, 0, 4);
            assert!(
                [[0; 4], [b'a'; 4], [b'b'; 4], [b'c'; 4]].contains(&first.try_into().unwrap()),
                "seed {seed}"
            );
            for block in 4..8 {
                let byte = on_image(&image, block * BLOCK, 1)[0];
                assert!(byte == 0 || byte == b'z', "seed {seed}");
            }
        }
        assert!(kept > 0 && lost > 0, "kept {kept}, lost {lost}");
    }
}
