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
//! writer's pid, a number and a random nonce
//! (`<boot>_<mount>_<pid>_<n>_<nonce>`): a pid is reused, and a name
//! never is. Its text is the wall time it was made, in unix nanoseconds.
//! Its writer holds an `flock` on it, taken before the marker had its
//! name, for as long as it lives.
//!
//! What a marker found by another process means ([`State`]):
//!
//! - locked: its writer is at work, whichever mount or namespace it is
//!   seen through (a bind mount shares the page cache; the mount ID
//!   differs);
//! - unlocked, and of our page cache (with a unique mount ID): its
//!   writer was killed. The kernel still holds all it wrote, every file
//!   complete before its rename, so one sync makes it durable and nothing
//!   needs checking;
//! - unlocked, of another boot or mount (or found by a process with no
//!   boot ID to tell): the machine lost power or crashed, or the disk was
//!   cut off, while the writer was at work. What it wrote may be lost in
//!   part, so every file changed since the marker's time is verified
//!   before it is used (`recovery`). A marker whose group commit failed
//!   (`EIO`: the kernel may have dropped data) is renamed to a boot of its
//!   own, [`FAILED`], for the same treatment, and a new one of that boot
//!   ([`leave_failed`]) covers what every other marker covered.
//!
//! The mount matters because a disk can lose its cache without a reboot:
//! a USB disk pulled, a network block device gone, or a test's lazy disk
//! cut and mounted again. Where the kernel gives no unique mount ID
//! (before Linux 6.8), such a cut cannot be told from a killed writer, so
//! every unlocked marker is taken for a crash's: a killed `go` command
//! costs a recovery of what changed since it began.
//!
//! A marker is only ever removed by a process that holds its lock, on the
//! very file (device and inode) it classified; anything in `dirty/` that
//! is not a regular file is no marker, and is left alone. This process's
//! own markers are never opened by its scans: on NFS, `flock` is emulated
//! with POSIX locks, and closing any descriptor of a file drops them all.

use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fsutil::{self, TEMP_PREFIX, io_error};

/// The boot of a marker whose group commit failed: no real boot is
/// named so, so every process verifies what it covers.
pub(crate) const FAILED: &str = "failed";

/// The paths of this process's markers while it holds them: its own scans
/// take them as live without opening them (see the module docs).
static OURS: Mutex<Vec<(PathBuf, SystemTime)>> = Mutex::new(Vec::new());

fn ours() -> MutexGuard<'static, Vec<(PathBuf, SystemTime)>> {
    OURS.lock().unwrap_or_else(|p| p.into_inner())
}

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

    /// The one no process writes through: its markers are a failed
    /// sync's.
    fn failed() -> Self {
        Self {
            boot: FAILED.to_owned(),
            mount: 0,
        }
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
    _held: File,
    /// When it says it was made.
    time: SystemTime,
}

impl Marker {
    /// Puts a marker made at `time` in `dir`, on disk with its name before
    /// this returns; `n` tells apart the markers of one process, and a
    /// random nonce those of processes given the same pid.
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
        // The temp file's random name is the nonce.
        let nonce = (temp.path().file_name().and_then(|name| name.to_str()))
            .and_then(|name| name.strip_prefix(TEMP_PREFIX))
            .unwrap_or_default()
            .to_owned();
        let path = dir.join(format!(
            "{}_{}_{}_{n}_{nonce}",
            cache.boot,
            cache.mount,
            std::process::id(),
        ));
        ours().push((path.clone(), time));
        let file = match temp.persist_noclobber(&path) {
            Ok(file) => file,
            Err(e) => {
                ours().retain(|(ours, _)| *ours != path);
                return Err(fsutil::Error {
                    op: "creating",
                    path,
                    source: e.error,
                });
            }
        };
        let marker = Self {
            path,
            _held: file,
            time,
        };
        if let Err(e) = fsutil::sync_dir(dir) {
            marker.remove();
            return Err(e);
        }
        Ok(marker)
    }

    /// When it says it was made.
    pub(crate) fn time(&self) -> SystemTime {
        self.time
    }

    /// Lets the marker go as a killed writer would: unlocked, left in
    /// place. Its path.
    #[cfg(test)]
    pub(crate) fn abandon(self) -> PathBuf {
        self.path.clone()
    }

    /// Removes the marker: what it covered is on disk.
    pub(crate) fn remove(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }

    /// Leaves the marker for a recovery: the sync of what it covered
    /// failed, and the kernel may have dropped some of it. Renamed to the
    /// boot [`FAILED`], so that every process verifies what it covers.
    pub(crate) fn keep_for_recovery(self) {
        if let Err(e) = rename_failed(&self.path) {
            tracing::warn!("cannot mark {} for a recovery: {e}", self.path.display());
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        ours().retain(|(ours, _)| *ours != self.path);
    }
}

/// Renames the marker at `path` to the boot [`FAILED`], never over
/// another file (names are unique by their nonce).
fn rename_failed(path: &Path) -> io::Result<()> {
    let name = path.file_name().and_then(|name| name.to_str());
    let Some((_, rest)) = name.and_then(|name| name.split_once('_')) else {
        return Err(io::ErrorKind::InvalidFilename.into());
    };
    let failed = path.with_file_name(format!("{FAILED}_{rest}"));
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        renameat_with(CWD, path, CWD, &failed, RenameFlags::NOREPLACE).map_err(io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        fs::hard_link(path, &failed)?;
        fs::remove_file(path)
    }
}

/// Leaves a marker of a failed sync, dated `time`, unlocked: every
/// process verifies what changed since then. For a sync that failed:
/// dated no later than any marker there was, it covers what each covered.
pub(crate) fn leave_failed(dir: &Path, time: SystemTime) -> Result<PathBuf, fsutil::Error> {
    let marker = Marker::create(dir, &PageCache::failed(), 0, time)?;
    Ok(marker.path.clone())
}

/// What follows a sync that failed, for the markers `found` before it
/// (and this process's own, made from `ours` on): a failed sync's marker
/// as old as the oldest of them, and the killed writers' markers renamed
/// to failed ones too (should that marker not reach the disk). Each
/// process's descriptor tells an error once: the next sync may well
/// succeed, and prove nothing.
pub(crate) fn after_failed_sync(dir: &Path, found: &[Found], ours: Option<SystemTime>) {
    let oldest = (found.iter())
        .filter(|found| !found.own)
        .map(|found| found.time)
        .chain(ours)
        .min()
        .unwrap_or_else(SystemTime::now);
    if let Err(e) = leave_failed(dir, oldest) {
        tracing::warn!(
            "cannot leave a marker for a recovery: {}",
            crate::logging::chain(&e)
        );
    }
    for found in found.iter().filter(|found| found.state == State::Killed) {
        if let Some(_lock) = take(found)
            && let Err(e) = rename_failed(&found.path)
        {
            tracing::warn!("cannot mark {} for a recovery: {e}", found.path.display());
        }
    }
}

/// A marker found in the dirty directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub path: PathBuf,
    pub state: State,
    /// When it was made: its text, or else its file's mtime (for this
    /// process's own, not read: the time it was made with).
    pub time: SystemTime,
    /// The file classified (device, inode): only that one is ever
    /// removed.
    id: (u64, u64),
    /// One of this process's.
    own: bool,
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
/// (without one, every unlocked marker is a crash's).
pub(crate) fn scan(dir: &Path, ours: Option<&PageCache>) -> Result<Vec<Found>, fsutil::Error> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("listing", dir)(e)),
    };
    let own = self::ours().clone();
    let mut found = Vec::new();
    for file in listing {
        let file = file.map_err(io_error("listing", dir))?;
        let name = file.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        // A temp file, or no marker file at all (a directory, a FIFO, a
        // link): nothing to open, or to clear.
        if name.starts_with(TEMP_PREFIX) || !file.file_type().is_ok_and(|kind| kind.is_file()) {
            continue;
        }
        let path = file.path();
        if let Some((_, time)) = own.iter().find(|(own, _)| *own == path) {
            found.push(Found {
                path,
                state: State::Live,
                time: *time,
                id: (0, 0),
                own: true,
            });
            continue;
        }
        let opened = match open(&path) {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // gone meanwhile
            // Cannot be opened: taken as held, nothing is done to it.
            Err(_) => {
                found.push(Found {
                    path,
                    state: State::Live,
                    time: SystemTime::now(),
                    id: (0, 0),
                    own: false,
                });
                continue;
            }
        };
        let Ok(meta) = opened.metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        // The lock first: a writer alive is alive whatever mount it is
        // seen through.
        let state = if opened.try_lock().is_err() {
            State::Live
        } else {
            let mut parts = name.splitn(3, '_');
            let cache = match (parts.next(), parts.next().map(str::parse::<u64>)) {
                (Some(boot), Some(Ok(mount))) => Some((boot, mount)),
                _ => None,
            };
            match (cache, ours) {
                // Without a unique mount ID (before Linux 6.8), a disk cut
                // and mounted again looks the same as a killed writer:
                // taken for the worse.
                (Some((boot, mount)), Some(ours))
                    if boot == ours.boot && mount == ours.mount && mount != 0 =>
                {
                    State::Killed
                }
                // Another page cache's, or not a name of ours: verified.
                _ => State::Crashed,
            }
        };
        let time = made_at(&opened, &meta);
        found.push(Found {
            path,
            state,
            time,
            id: (meta.dev(), meta.ino()),
            own: false,
        });
    }
    Ok(found)
}

/// The marker `found`, opened and locked, if it is still that very file
/// and no one holds it.
fn take(found: &Found) -> Option<File> {
    if found.own {
        return None;
    }
    let file = open(&found.path).ok()?;
    let meta = file.metadata().ok()?;
    ((meta.dev(), meta.ino()) == found.id && file.try_lock().is_ok()).then_some(file)
}

/// Removes the marker `found`, if it is still the very file found and
/// unlocked (its lock held meanwhile); whether it is gone now.
pub(crate) fn remove_found(found: &Found) -> bool {
    let Some(_lock) = take(found) else {
        return false;
    };
    match fs::remove_file(&found.path) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot remove {}: {e}", found.path.display());
            false
        }
    }
}

/// When the marker `file` was made: its text, or its file's mtime if the
/// text is not a time.
fn made_at(mut file: &File, meta: &fs::Metadata) -> SystemTime {
    let mut text = String::new();
    let from_text = (|| {
        (&mut file).take(64).read_to_string(&mut text).ok()?;
        let nanos: u64 = text.strip_suffix('\n')?.parse().ok()?;
        Some(UNIX_EPOCH + Duration::from_nanos(nanos))
    })();
    from_text
        .or_else(|| meta.modified().ok())
        .unwrap_or(UNIX_EPOCH)
}

/// Opens `path` for reading, never through a link, and never waiting on
/// a FIFO.
fn open(path: &Path) -> io::Result<File> {
    use rustix::fs::OFlags;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
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
        assert!(!remove_found(&found[0]), "a live marker was removed");
        // The writer dies (its lock goes with it); the marker stays.
        let path = marker.abandon();
        let found = scan(dir.path(), Some(&ours)).unwrap();
        assert_eq!(found[0].state, State::Killed);
        assert!(remove_found(&found[0]));
        assert!(!path.exists());
    }

    /// A marker of another boot, or of another mount of the filesystem
    /// (a disk cut off and mounted again), or whose sync failed, is a
    /// crash once no one holds it, with the time it was made.
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
        let path = dir.path().join("boot-b_0_1_0_0");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"garbage").unwrap();
        let then = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        file.set_modified(then).unwrap();
        let found = scan(dir.path(), Some(&PageCache::new("boot-a", 0))).unwrap();
        assert_eq!(found[0].state, State::Crashed);
        assert_eq!(found[0].time, then);
    }

    /// A marker left by a killed process of the same pid and number (a
    /// pid is reused) must not make a new writer's marker fail: names are
    /// unique beyond the pid.
    #[test]
    fn a_leftover_marker_of_the_same_pid_and_number_is_no_obstacle() {
        let dir = tempfile::tempdir().unwrap();
        let ours = PageCache::new("boot-a", 7);
        let left = Marker::create(dir.path(), &ours, 5, SystemTime::now())
            .unwrap()
            .abandon();
        let new = Marker::create(dir.path(), &ours, 5, SystemTime::now()).unwrap();
        assert_ne!(new.path, left);
    }

    /// A writer alive is alive whichever mount it is seen through (a bind
    /// mount, another namespace) and whether or not the finder knows its
    /// boot: its held marker is never a crash's, which no sweep could
    /// clear while it lives.
    #[test]
    fn a_held_marker_is_live_through_any_mount_and_without_a_boot_id() {
        let dir = tempfile::tempdir().unwrap();
        let made = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let _held = Marker::create(dir.path(), &PageCache::new("boot-a", 8), 0, made).unwrap();
        let found = scan(dir.path(), Some(&PageCache::new("boot-a", 7))).unwrap();
        assert_eq!(found[0].state, State::Live);
        let found = scan(dir.path(), None).unwrap();
        assert_eq!(found[0].state, State::Live);
    }

    /// Before Linux 6.8 there is no unique mount ID (0): a disk cut off
    /// and mounted again without a reboot would pass for a killed writer,
    /// and what it lost would be synced, never verified. Such a marker is
    /// a crash's.
    #[test]
    fn without_a_unique_mount_id_an_unlocked_marker_is_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let ours = PageCache::new("boot-a", 0);
        Marker::create(dir.path(), &ours, 0, SystemTime::now())
            .unwrap()
            .abandon();
        let found = scan(dir.path(), Some(&ours)).unwrap();
        assert_eq!(found[0].state, State::Crashed);
    }
}
