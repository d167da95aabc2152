//! The free space that bodies fetched from peers must leave on the store's
//! disk.
//!
//! `max-size` bounds the store, not the disk it is on: with 10 GiB
//! allowed and 3 GiB free, read-ahead, replication and big lookups filled
//! the disk, and then every `go` command's puts failed or trimmed the
//! store to make room. So a fetched body is refused, a clean miss, unless
//! the disk keeps at least [`floor`] free after it: checked when its sink
//! opens and reserves its size ([`DiskFloor::check_reservation`], beside
//! every body still on its way), and again right before it is committed
//! ([`DiskFloor::check_commit`]: its bytes are on disk by then, and other
//! programs may have written meanwhile). `go`'s own puts are never refused
//! for it: the floor is kept for them.
//!
//! Free space is read with `statvfs` (what an unprivileged user may still
//! write). An opening sink uses a reading at most [`SAMPLE_LIFE`] old, so a
//! flood of announced bodies costs no syscall per body; each commit takes
//! a fresh one (its body is written by then) and leaves it for the next
//! openings. Bytes of bodies on their way that were written before the
//! reading count twice, which only makes the check stricter.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::fsutil::{self, Space};

/// The least free space fetched bodies leave: room for `go`'s own puts (a
/// cold `go build std` puts 183 MB, a big module's build several times
/// that) and for the compiler's and linker's temp files, which are often
/// on the same disk.
pub(crate) const FLOOR_MIN: u64 = 1 << 30;
/// Between the two bounds, one part in this many of the filesystem (5%):
/// a disk of tens of gigabytes has other work than builds, and filesystems
/// slow down as they fill.
pub(crate) const FLOOR_PART: u64 = 20;
/// The most free space fetched bodies leave: more than builds put at once,
/// so that a big disk that its owner keeps nearly full (what ext4 keeps for
/// root is already left out of what `statvfs` calls free) still takes
/// bodies from peers.
pub(crate) const FLOOR_MAX: u64 = 2 << 30;
/// How long an opening sink may use a reading of free space.
pub(crate) const SAMPLE_LIFE: Duration = Duration::from_secs(1);

/// The floor on a filesystem of `total` bytes: 1/[`FLOOR_PART`] of it,
/// within [`FLOOR_MIN`] and [`FLOOR_MAX`], but at most half of it, so that
/// a small filesystem (a cache partition, a tmpfs under 2 GiB) can still
/// take fetched bodies.
pub(crate) fn floor(total: u64) -> u64 {
    (total / FLOOR_PART)
        .clamp(FLOOR_MIN, FLOOR_MAX)
        .min(total / 2)
}

/// Why a fetched body was refused: what was free, against the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BelowFloor {
    /// Free bytes, less the bodies on their way (at a sink's opening).
    pub free: u64,
    pub floor: u64,
}

impl fmt::Display for BelowFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = |bytes| bytesize::ByteSize(bytes).display().iec().to_string();
        write!(
            f,
            "the store's disk would have {} free, under the {} kept free for builds",
            size(self.free),
            size(self.floor)
        )
    }
}

impl std::error::Error for BelowFloor {}

/// Reads the store's filesystem for fetched bodies; see the module docs.
pub(crate) struct DiskFloor {
    read: Box<dyn Fn() -> Option<Space> + Send + Sync>,
    sample: Mutex<Option<(Instant, Space)>>,
}

impl DiskFloor {
    /// For the filesystem that holds `dir`.
    pub(crate) fn of(dir: PathBuf) -> Self {
        Self::with_reader(move || fsutil::space(&dir))
    }

    /// With `read` for `statvfs` (tests fake a disk).
    pub(crate) fn with_reader(read: impl Fn() -> Option<Space> + Send + Sync + 'static) -> Self {
        Self {
            read: Box::new(read),
            sample: Mutex::new(None),
        }
    }

    /// Whether the disk keeps the floor free once `reserved` bytes (every
    /// body on its way, the new one included) are written. A reading that
    /// fails admits: `max-size` still bounds the store.
    pub(crate) fn check_reservation(&self, reserved: u64, now: Instant) -> Result<(), BelowFloor> {
        let space = {
            let mut sample = self.sample.lock().unwrap_or_else(|p| p.into_inner());
            match *sample {
                Some((at, space)) if now.saturating_duration_since(at) < SAMPLE_LIFE => Some(space),
                _ => {
                    let space = (self.read)();
                    *sample = space.map(|space| (now, space));
                    space
                }
            }
        };
        let Some(space) = space else { return Ok(()) };
        check(space.free.saturating_sub(reserved), space.total)
    }

    /// Whether the disk still has the floor free, right before a body
    /// (written by now) is committed: a fresh reading, kept for openings.
    pub(crate) fn check_commit(&self, now: Instant) -> Result<(), BelowFloor> {
        let Some(space) = (self.read)() else {
            return Ok(());
        };
        *self.sample.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, space));
        check(space.free, space.total)
    }
}

fn check(free: u64, total: u64) -> Result<(), BelowFloor> {
    let floor = floor(total);
    if free >= floor {
        Ok(())
    } else {
        Err(BelowFloor { free, floor })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn the_floor_is_5_percent_within_1_and_10_gib_and_at_most_half_the_disk() {
        assert_eq!(floor(10 * GIB), GIB);
        assert_eq!(floor(30 * GIB), GIB + GIB / 2);
        assert_eq!(floor(100 * GIB), 2 * GIB);
        assert_eq!(floor(1000 * GIB), 2 * GIB);
        assert_eq!(floor(64 * MIB), 32 * MIB, "a small tmpfs");
        assert_eq!(floor(0), 0);
    }

    /// A disk of 100 GiB with 10 GiB free (floor 2 GiB).
    fn disk(free: &Arc<AtomicU64>, reads: &Arc<AtomicU64>) -> DiskFloor {
        let (free, reads) = (free.clone(), reads.clone());
        DiskFloor::with_reader(move || {
            reads.fetch_add(1, Ordering::Relaxed);
            Some(Space {
                free: free.load(Ordering::Relaxed),
                total: 100 * GIB,
            })
        })
    }

    #[test]
    fn openings_reserve_against_a_brief_reading_and_commits_read_afresh() {
        let free = Arc::new(AtomicU64::new(10 * GIB));
        let reads = Arc::new(AtomicU64::new(0));
        let floor = disk(&free, &reads);
        let start = Instant::now();
        // A flood of openings: one reading per SAMPLE_LIFE.
        for n in 0..1000 {
            floor
                .check_reservation(MIB, start + Duration::from_micros(n))
                .unwrap();
        }
        assert_eq!(reads.load(Ordering::Relaxed), 1);
        // Bodies on their way count against the floor.
        assert_eq!(
            floor.check_reservation(8 * GIB + 1, start),
            Err(BelowFloor {
                free: 2 * GIB - 1,
                floor: 2 * GIB
            })
        );
        floor.check_reservation(8 * GIB, start).unwrap();
        // Another program filled the disk: the next reading tells.
        free.store(GIB, Ordering::Relaxed);
        floor.check_reservation(0, start + SAMPLE_LIFE / 2).unwrap();
        assert!(floor.check_reservation(0, start + SAMPLE_LIFE).is_err());
        assert_eq!(reads.load(Ordering::Relaxed), 2);
        // A commit reads afresh, and its reading serves the next openings.
        free.store(6 * GIB, Ordering::Relaxed);
        floor.check_commit(start + SAMPLE_LIFE).unwrap();
        floor.check_reservation(GIB, start + SAMPLE_LIFE).unwrap();
        assert_eq!(reads.load(Ordering::Relaxed), 3);
        free.store(GIB, Ordering::Relaxed);
        let refused = floor.check_commit(start + SAMPLE_LIFE).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("1.0 GiB free, under the 2.0 GiB"),
            "{refused}"
        );
        // Free space that cannot be read does not stop anything.
        DiskFloor::with_reader(|| None)
            .check_reservation(u64::MAX, start)
            .unwrap();
    }
}
