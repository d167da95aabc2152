//! Dirty markers: what tells a power loss from a killed process, and what
//! must be verified after one.
//!
//! Objects and entries are written without a sync each (see the store's
//! module docs). Instead, each writing process (a helper for its `go`
//! command, the daemon for fetched bodies) first puts a marker in
//! `v1/dirty/`, synced with its directory before anything of the process
//! is renamed into the store; its writes then go unsynced, and a group
//! commit (`group_commit`) syncs the filesystem once and removes the
//! marker. A marker on disk therefore says: files changed since its time
//! may not be on disk whole.
//!
//! A marker's name says which page cache its writer's files sat in: the
//! boot (`/proc/sys/kernel/random/boot_id`) and the mount of the store's
//! filesystem (its unique mount ID, from Linux 6.8; `0` before), then the
//! writer's pid and a number (`<boot>_<mount>_<pid>_<n>`). Its text is the
//! wall time it was made, in unix nanoseconds. Its writer holds an `flock`
//! on it, taken before the marker had its name, for as long as it lives.
//!
//! What a marker found by another process means ([`State`]):
//!
//! - locked, and of our page cache: its writer is at work;
//! - unlocked, and of our page cache: its writer was killed. The kernel
//!   still holds all it wrote, every file complete before its rename, so
//!   one sync makes it durable and nothing needs checking;
//! - of another boot or mount: the machine lost power or crashed, or the
//!   disk was cut off, while the writer was at work. What it wrote may be
//!   lost in part, so every file changed since the marker's time is
//!   verified before it is used (`recovery`). A marker whose group commit
//!   failed (`EIO`: the kernel may have dropped data) is renamed to a boot
//!   of its own, [`FAILED`], for the same treatment.
//!
//! The mount matters because a disk can lose its cache without a reboot:
//! a USB disk pulled, a network block device gone, or a test's lazy disk
//! cut and mounted again. Where the kernel gives no unique mount ID, such
//! a cut is taken for a killed writer.

use std::fs::{self, File, TryLockError};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fsutil::{self, TEMP_PREFIX, io_error};

/// The boot of a marker whose group commit failed: no real boot is
/// named so, so every process verifies what it covers.
pub(crate) const FAILED: &str = "failed";

/// Which page cache a process's writes sit in until they are on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageCache {
    boot: String,
    /// The unique ID of the mount of the store's filesystem; 0 where the
    /// kernel gives none.
    mount: u64,
}

impl PageCache {
    /// The page cache of the filesystem that holds `dir`, as this process
    /// sees it; `None` where there is no boot ID to tell a reboot by.
    pub(crate) fn of(dir: &Path) -> Option<Self> {
        Some(Self {
            boot: super::trim_clock::boot_id()?.to_owned(),
            mount: unique_mount_id(dir).unwrap_or(0),
        })
    }

    #[cfg(test)]
    pub(crate) fn new(boot: &str, mount: u64) -> Self {
        Self {
            boot: boot.to_owned(),
            mount,
        }
    }
}

/// The mount's ID that is never reused within a boot (`STATX_MNT_ID_UNIQUE`,
/// Linux 6.8 and later).
fn unique_mount_id(dir: &Path) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
        const MNT_ID_UNIQUE: u32 = 0x4000;
        let found = statx(
            CWD,
            dir,
            AtFlags::empty(),
            StatxFlags::from_bits_retain(MNT_ID_UNIQUE),
        )
        .ok()?;
        (found.stx_mask & MNT_ID_UNIQUE != 0).then_some(found.stx_mnt_id)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        None
    }
}

/// A marker of this process, locked while it lives.
#[derive(Debug)]
pub(crate) struct Marker {
    path: PathBuf,
    /// Holds the `flock` that says the writer is alive.
    file: File,
}

impl Marker {
    /// Puts a marker made at `time` in `dir`, on disk with its name before
    /// this returns; `n` tells apart the markers of one process.
    pub(crate) fn create(
        dir: &Path,
        cache: &PageCache,
        n: u64,
        time: SystemTime,
    ) -> Result<Self, fsutil::Error> {
        // Locked before it has its name: no one ever sees it unlocked
        // while its writer lives.
        let mut temp = fsutil::temp_file_in(dir)?;
        temp.as_file()
            .try_lock()
            .map_err(|e| io_error("locking", temp.path())(io::Error::from(e)))?;
        let nanos = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        temp.write_all(format!("{nanos}\n").as_bytes())
            .map_err(io_error("writing", temp.path()))?;
        fsutil::sync_data(&temp)?;
        let path = dir.join(format!(
            "{}_{}_{}_{n}",
            cache.boot,
            cache.mount,
            std::process::id()
        ));
        let file = temp.persist_noclobber(&path).map_err(|e| fsutil::Error {
            op: "creating",
            path: path.clone(),
            source: e.error,
        })?;
        fsutil::sync_dir(dir)?;
        Ok(Self { path, file })
    }

    /// Lets the marker go as a killed writer would: unlocked, left in
    /// place. Its path.
    #[cfg(test)]
    pub(crate) fn abandon(self) -> PathBuf {
        self.path
    }

    /// Removes the marker: what it covered is on disk.
    pub(crate) fn remove(self) {
        remove(&self.path);
    }

    /// Leaves the marker for a recovery: the sync of what it covered
    /// failed, and the kernel may have dropped some of it. Renamed to the
    /// boot [`FAILED`], so that every process verifies what it covers.
    pub(crate) fn keep_for_recovery(self) {
        let name = self.path.file_name().and_then(|name| name.to_str());
        let failed = name
            .and_then(|name| name.split_once('_'))
            .map(|(_, rest)| self.path.with_file_name(format!("{FAILED}_{rest}")));
        if let Some(failed) = failed
            && let Err(e) = fs::rename(&self.path, &failed)
        {
            tracing::warn!("cannot mark {} for a recovery: {e}", self.path.display());
        }
        drop(self.file);
    }
}

/// Removes the marker at `path`; gone already is fine.
pub(crate) fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    }
}

/// A marker found in the dirty directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub path: PathBuf,
    pub state: State,
    /// When it was made (for a marker of another page cache: from its
    /// text, or else its file's mtime).
    pub time: SystemTime,
}

/// What a marker means to the process that finds it; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Its writer is at work.
    Live,
    /// Its writer was killed; what it wrote is in our page cache.
    Killed,
    /// Of another boot or mount, or its sync failed: what it covers may be
    /// damaged.
    Crashed,
}

/// The markers in `dir`, as a process of page cache `ours` sees them
/// (without one, every marker is a crash's).
pub(crate) fn scan(dir: &Path, ours: Option<&PageCache>) -> Result<Vec<Found>, fsutil::Error> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("listing", dir)(e)),
    };
    let mut found = Vec::new();
    for file in listing {
        let file = file.map_err(io_error("listing", dir))?;
        let name = file.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = file.path();
        let mut parts = name.splitn(3, '_');
        let cache = match (parts.next(), parts.next().map(str::parse::<u64>)) {
            (Some(boot), Some(Ok(mount))) => Some((boot, mount)),
            _ => None,
        };
        let state = match cache {
            Some((boot, mount))
                if ours.is_some_and(|ours| boot == ours.boot && mount == ours.mount) =>
            {
                match lock_state(&path) {
                    Some(state) => state,
                    None => continue, // gone meanwhile
                }
            }
            // Another page cache's, or not a name of ours: verified.
            _ => State::Crashed,
        };
        let time = match state {
            State::Crashed => made_at(&path),
            State::Live | State::Killed => UNIX_EPOCH,
        };
        found.push(Found { path, state, time });
    }
    Ok(found)
}

/// Whether the marker at `path` is held by its writer; `None` if it is
/// gone. One that cannot be opened or locked for another reason counts as
/// held: nothing is done to it.
fn lock_state(path: &Path) -> Option<State> {
    let file = match open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(_) => return Some(State::Live),
    };
    Some(match file.try_lock() {
        Ok(()) => State::Killed,
        Err(TryLockError::WouldBlock | TryLockError::Error(_)) => State::Live,
    })
}

/// Whether a process holds the marker at `path` (a writer alive, in this
/// mount or another's view of the same filesystem).
pub(crate) fn is_held(path: &Path) -> bool {
    matches!(lock_state(path), Some(State::Live))
}

/// When the marker at `path` was made: its text, or its file's mtime if
/// the text is not a time; the epoch if neither can be read, so that
/// everything is verified.
fn made_at(path: &Path) -> SystemTime {
    let mut text = String::new();
    let from_text = open(path).ok().and_then(|file| {
        file.take(64).read_to_string(&mut text).ok()?;
        let nanos: u64 = text.strip_suffix('\n')?.parse().ok()?;
        Some(UNIX_EPOCH + Duration::from_nanos(nanos))
    });
    from_text
        .or_else(|| fs::symlink_metadata(path).and_then(|m| m.modified()).ok())
        .unwrap_or(UNIX_EPOCH)
}

fn open(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A marker of a process that is gone, left in `dir` as it would be.
    fn leave(dir: &Path, boot: &str, mount: u64, time: SystemTime) -> PathBuf {
        Marker::create(dir, &PageCache::new(boot, mount), 0, time)
            .unwrap()
            .abandon()
    }

    #[test]
    fn a_marker_is_live_while_its_writer_holds_it_then_killed() {
        let dir = tempfile::tempdir().unwrap();
        let ours = PageCache::new("boot-a", 7);
        let made = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let marker = Marker::create(dir.path(), &ours, 1, made).unwrap();
        let found = scan(dir.path(), Some(&ours)).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].state, State::Live);
        assert!(is_held(&found[0].path));
        // The writer dies (its lock goes with it); the marker stays.
        marker.abandon();
        let found = scan(dir.path(), Some(&ours)).unwrap();
        assert_eq!(found[0].state, State::Killed);
        assert!(!is_held(&found[0].path));
    }

    /// A marker of another boot, or of another mount of the filesystem
    /// (a disk cut off and mounted again), or whose sync failed, is a
    /// crash: held or not, with the time it was made.
    #[test]
    fn a_marker_of_another_boot_or_mount_or_a_failed_sync_is_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let ours = PageCache::new("boot-a", 7);
        let made = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        leave(dir.path(), "boot-b", 7, made);
        leave(dir.path(), "boot-a", 8, made + Duration::from_secs(1));
        let held = Marker::create(dir.path(), &ours, 3, made + Duration::from_secs(2)).unwrap();
        held.keep_for_recovery();
        let mut found = scan(dir.path(), Some(&ours)).unwrap();
        found.sort_by_key(|found| found.time);
        let states: Vec<_> = found.iter().map(|f| (f.state, f.time)).collect();
        assert_eq!(
            states,
            [
                (State::Crashed, made),
                (State::Crashed, made + Duration::from_secs(1)),
                (State::Crashed, made + Duration::from_secs(2)),
            ]
        );
        assert!(found[2].path.to_str().unwrap().contains("/failed_"));
    }

    /// A marker whose text is not a time is a crash as old as its file:
    /// verified from then on, never skipped.
    #[test]
    fn a_marker_that_cannot_be_read_counts_from_its_file_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot-b_0_1_0");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"garbage").unwrap();
        let then = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        file.set_modified(then).unwrap();
        let found = scan(dir.path(), Some(&PageCache::new("boot-a", 0))).unwrap();
        assert_eq!(found[0].state, State::Crashed);
        assert_eq!(found[0].time, then);
    }
}
