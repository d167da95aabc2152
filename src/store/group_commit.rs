//! Group commit: a process's writes synced together, once, off the
//! build's path.
//!
//! A sync of one file on ext4's default `data=ordered` commits the
//! journal, which first writes out every dirty page of the filesystem: a
//! sync per put made a build flush its own outputs, and the bodies the
//! daemon stores meanwhile, in hundreds of small steps. So writes are
//! grouped in epochs. An epoch begins with the first write after the last
//! sync: a dirty marker (`dirty`) goes on disk first, then its writes go
//! unsynced. [`GroupCommit::sync`] seals the epochs open so far (writes
//! that begin later open a new one, with a marker of its own), waits for
//! the writes that began in them, syncs the whole filesystem at once
//! (`syncfs(2)`), and only then removes their markers.
//!
//! - The helper syncs once, at the end of its `go` command, after `go`
//!   has its last answer and has let go of it (see `helper`).
//! - The daemon syncs a second after a fetched body lands, however many
//!   follow (`daemon::syncer`), so a stream of bodies still lets each
//!   marker go within about a second.
//! - A marker's own syncs (its data, its directory: two journal commits)
//!   stay off a put's path: [`GroupCommit::prepare`] makes the next
//!   epoch's marker on a thread of its own (the helper when it starts,
//!   the daemon after each sync), and the first write takes it; one older
//!   than [`SPARE_MAX_AGE`] is made again, since it dates what a recovery
//!   would verify. A write that must make one does so without holding up
//!   writes of an epoch already open.
//! - A wall clock stepped back below the epoch's marker time gets a new
//!   marker, stamped with the new time, before the write goes on: a
//!   recovery verifies what changed since the oldest.
//! - A failed sync keeps its markers, renamed for a recovery, and leaves
//!   a failed sync's marker as old as every marker there was (`dirty`):
//!   the error is told once, and the next sync may succeed.
//! - Markers of killed writers of this page cache, found unlocked before
//!   a sync began, are removed after it: it made what they wrote durable.
//!
//! Each epoch keeps the store's directory open from before its first
//! write: `syncfs` reports write-back errors met since its descriptor was
//! opened (Linux 5.8 and later; the store uses group commit only there),
//! so one that struck during the epoch is not missed.
//!
//! Group commit is used only where one `syncfs(2)` of the store's
//! directory makes every file of the store durable ([`fits`]): a
//! filesystem known to implement it, every directory of the store on
//! that one filesystem, and a kernel that reports write-back errors
//! through it. Elsewhere the store syncs file by file (see the store's
//! module docs).

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::Clock;
use super::dirty::{self, Marker, PageCache};
use crate::fsutil::{self, io_error};

/// A marker made ahead of its epoch is made again if it is older than
/// this when the first write comes: a recovery verifies what changed
/// since its time.
pub(crate) const SPARE_MAX_AGE: Duration = Duration::from_secs(60);

/// See the module docs.
pub(crate) struct GroupCommit {
    root: PathBuf,
    /// Where the markers go.
    dirty: PathBuf,
    cache: PageCache,
    /// The wall clock that dates markers.
    clock: Clock,
    state: Mutex<State>,
    /// Told when a write begins or ends, or an epoch opens.
    changed: Condvar,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("dirty", &self.dirty)
            .finish()
    }
}

/// Numbers of epochs (and of their markers), unique in this process: it
/// may have several stores open, and their markers may share a directory.
static EPOCHS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Default)]
struct State {
    /// The epoch new writes join, if one is open.
    open: Option<Epoch>,
    /// A write is making the open epoch's marker (without the lock).
    opening: bool,
    /// The next epoch's marker, being made ahead of time.
    spare: Option<JoinHandle<Result<Marker, fsutil::Error>>>,
    /// Epochs a sync has sealed, waiting for their writes to end.
    sealed: Vec<Epoch>,
}

#[derive(Debug)]
struct Epoch {
    number: u64,
    /// Its marker, and one more for each step back of the wall clock.
    markers: Vec<Marker>,
    /// The oldest time of its markers.
    since: SystemTime,
    /// The store's directory, opened before the epoch's first write.
    root: File,
    /// Writes begun in it and not yet ended.
    writers: usize,
    /// When its first write began.
    began: Instant,
}

/// A write in progress, in an epoch; its end is told when this drops.
#[derive(Debug)]
pub(crate) struct Writing<'a> {
    commit: &'a GroupCommit,
    epoch: u64,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut state = self.commit.lock();
        let State { open, sealed, .. } = &mut *state;
        let epoch = (open.iter_mut())
            .chain(sealed.iter_mut())
            .find(|epoch| epoch.number == self.epoch);
        if let Some(epoch) = epoch {
            epoch.writers -= 1;
        }
        drop(state);
        self.commit.changed.notify_all();
    }
}

/// What a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Synced {
    /// Epochs synced (their markers removed).
    pub epochs: usize,
    /// Markers of killed writers removed.
    pub killed: usize,
}

impl GroupCommit {
    /// Group commit for the store at `root`, with its markers in `dirty`,
    /// dated by `clock`.
    pub(crate) fn new(root: &Path, dirty: PathBuf, cache: PageCache, clock: Clock) -> Self {
        Self {
            root: root.to_path_buf(),
            dirty,
            cache,
            clock,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_marker(&self, time: SystemTime) -> Result<Marker, fsutil::Error> {
        let number = EPOCHS.fetch_add(1, Ordering::Relaxed);
        Marker::create(&self.dirty, &self.cache, number, time)
    }

    /// Makes the next epoch's marker ahead of time, on a thread of its
    /// own, unless there is one (or an open epoch) already.
    pub(crate) fn prepare(&self) {
        let mut state = self.lock();
        if state.open.is_some() || state.opening || state.spare.is_some() {
            return;
        }
        let (dirty, cache, clock) = (self.dirty.clone(), self.cache.clone(), self.clock.clone());
        let number = EPOCHS.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("warren-marker".into())
            .spawn(move || Marker::create(&dirty, &cache, number, clock()));
        match spawned {
            Ok(making) => state.spare = Some(making),
            Err(e) => tracing::debug!("making a dirty marker ahead of time: {e}"),
        }
    }

    /// Begins a write: joins the open epoch, or opens one with its marker
    /// on disk first (the spare one, or one made now). The write must be
    /// done when the returned [`Writing`] drops.
    pub(crate) fn begin_write(&self) -> Result<Writing<'_>, fsutil::Error> {
        let mut state = self.lock();
        while state.open.is_none() && state.opening {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.open.is_none() {
            state.opening = true;
            let spare = state.spare.take();
            drop(state);
            let opened = self.open_epoch(spare);
            state = self.lock();
            state.opening = false;
            match opened {
                Ok(epoch) => state.open = Some(epoch),
                Err(e) => {
                    drop(state);
                    self.changed.notify_all();
                    return Err(e);
                }
            }
        }
        let now = (self.clock)();
        let epoch = state
            .open
            .as_mut()
            .expect("an epoch open after opening one");
        if now < epoch.since {
            // The wall clock stepped back: what this write changes would
            // be dated before the epoch's marker.
            let marker = self.new_marker(now)?;
            epoch.since = now;
            epoch.markers.push(marker);
        }
        epoch.writers += 1;
        let epoch = epoch.number;
        drop(state);
        self.changed.notify_all();
        Ok(Writing {
            commit: self,
            epoch,
        })
    }

    /// A new epoch, with `spare` for its marker if it is made and young
    /// enough.
    fn open_epoch(
        &self,
        spare: Option<JoinHandle<Result<Marker, fsutil::Error>>>,
    ) -> Result<Epoch, fsutil::Error> {
        let root = File::open(&self.root).map_err(io_error("opening", &self.root))?;
        let spare = spare
            .and_then(|making| making.join().ok())
            .and_then(|made| {
                made.map_err(|e| {
                    tracing::debug!(
                        "making a dirty marker ahead of time: {}",
                        crate::logging::chain(&e)
                    );
                })
                .ok()
            });
        let now = (self.clock)();
        let marker = match spare {
            Some(spare)
                if now
                    .duration_since(spare.time())
                    .is_ok_and(|age| age < SPARE_MAX_AGE) =>
            {
                spare
            }
            Some(stale) => {
                stale.remove();
                self.new_marker(now)?
            }
            None => self.new_marker(now)?,
        };
        Ok(Epoch {
            number: EPOCHS.fetch_add(1, Ordering::Relaxed),
            since: marker.time(),
            markers: vec![marker],
            root,
            writers: 0,
            began: Instant::now(),
        })
    }

    /// When the oldest write not yet synced began, if there is one,
    /// waiting up to `timeout` for one to begin.
    pub(crate) fn wait_for_write(&self, timeout: Duration) -> Option<Instant> {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |state| state.open.is_none())
            .unwrap_or_else(|p| p.into_inner());
        state.open.as_ref().map(|epoch| epoch.began)
    }

    /// Seals the open epoch, waits for the writes begun in it, syncs the
    /// filesystem, then removes its marker and those of killed writers
    /// found unlocked before the sync (and a marker made ahead of time
    /// that no write took). A failed sync leaves markers for a recovery.
    pub(crate) fn sync(&self) -> Result<Synced, fsutil::Error> {
        let mut state = self.lock();
        let sealed: Vec<u64> = state.open.as_ref().map(|e| e.number).into_iter().collect();
        if let Some(epoch) = state.open.take() {
            state.sealed.push(epoch);
        }
        let spare = state.spare.take();
        let mut state = self
            .changed
            .wait_while(state, |state| {
                (state.sealed.iter()).any(|e| sealed.contains(&e.number) && e.writers > 0)
            })
            .unwrap_or_else(|p| p.into_inner());
        let (epochs, others) = std::mem::take(&mut state.sealed)
            .into_iter()
            .partition::<Vec<_>, _>(|e| sealed.contains(&e.number));
        state.sealed = others;
        drop(state);
        if let Some(Ok(Ok(spare))) = spare.map(JoinHandle::join) {
            spare.remove();
        }
        // Killed writers wrote all they will before their lock went: a
        // sync that begins after this scan makes it durable.
        let found = dirty::scan(&self.dirty, Some(&self.cache)).unwrap_or_else(|e| {
            tracing::debug!("reading the dirty markers: {}", crate::logging::chain(&e));
            Vec::new()
        });
        let killed: Vec<_> = (found.iter())
            .filter(|found| found.state == dirty::State::Killed)
            .collect();
        if epochs.is_empty() && killed.is_empty() {
            return Ok(Synced::default());
        }
        let synced = match epochs.first() {
            Some(epoch) => fsutil::sync_filesystem(&epoch.root, &self.root),
            None => File::open(&self.root)
                .map_err(io_error("opening", &self.root))
                .and_then(|root| fsutil::sync_filesystem(&root, &self.root)),
        };
        match synced {
            Ok(()) => {
                let done = Synced {
                    epochs: epochs.len(),
                    killed: killed
                        .iter()
                        .filter(|found| dirty::remove_found(found))
                        .count(),
                };
                for marker in epochs.into_iter().flat_map(|epoch| epoch.markers) {
                    marker.remove();
                }
                Ok(done)
            }
            Err(error) => {
                let ours = epochs.iter().map(|epoch| epoch.since).min();
                dirty::after_failed_sync(&self.dirty, &found, ours);
                for marker in epochs.into_iter().flat_map(|epoch| epoch.markers) {
                    marker.keep_for_recovery();
                }
                Err(error)
            }
        }
    }
}

/// Filesystems whose `syncfs(2)` writes out every file's data and
/// reports write-back errors (their `statfs` magic): ext2/3/4, XFS,
/// Btrfs, F2FS, and tmpfs (where nothing survives a power loss anyway).
/// Not FUSE (a server that does not implement `FUSE_SYNCFS` is sent
/// nothing), not eCryptfs (no `sync_fs`), not NFS or SMB, and not
/// overlayfs: its `syncfs` reaches the upper filesystem, but whether a
/// write-back error there is told through it depends on the kernel, and a
/// container's upper layer is seldom worth a per-file sync less.
const SYNCFS_FILESYSTEMS: [i64; 5] = [
    0xEF53,      // ext2, ext3, ext4
    0x5846_5342, // XFS
    0x9123_683E, // Btrfs
    0xF2F5_2010, // F2FS
    0x0102_1994, // tmpfs
];

/// The first kernel whose `syncfs(2)` reports write-back errors.
const SYNCFS_REPORTS_ERRORS: (u32, u32) = (5, 8);

/// Why a store's writes are synced file by file, not by group commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unfit {
    #[error("its filesystem (statfs type {0:#x}) may not sync file data through syncfs(2)")]
    Filesystem(i64),
    #[error("its directories are not all on one filesystem")]
    Devices,
    #[error("Linux {0}.{1} does not report write-back errors through syncfs(2)")]
    Kernel(u32, u32),
    #[error("cannot tell its filesystem: {0}")]
    Unknown(String),
    #[cfg(not(target_os = "linux"))]
    #[error("there is no syncfs(2) here")]
    System,
}

/// Whether one `syncfs(2)` of `dirs[0]` makes every file in `dirs` (the
/// store's root, its version directory, actions, objects and dirty
/// markers) durable, with errors told; see the module docs.
pub(crate) fn fits(dirs: &[&Path]) -> Result<(), Unfit> {
    #[cfg(target_os = "linux")]
    {
        let unknown = |e: &dyn std::fmt::Display| Unfit::Unknown(e.to_string());
        let first = dirs.first().ok_or(Unfit::Devices)?;
        let stats = rustix::fs::statfs(*first).map_err(|e| unknown(&e))?;
        let mut devices = Vec::with_capacity(dirs.len());
        for dir in dirs {
            devices.push(
                std::fs::symlink_metadata(dir)
                    .map_err(|e| unknown(&e))?
                    .dev(),
            );
        }
        let release =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|e| unknown(&e))?;
        #[allow(clippy::unnecessary_cast, reason = "f_type's type differs by target")]
        fits_facts(stats.f_type as i64, &devices, kernel_version(&release))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dirs;
        Err(Unfit::System)
    }
}

/// [`fits`], from what it found: the filesystem's type, the device of
/// each directory, and the kernel's version.
fn fits_facts(kind: i64, devices: &[u64], kernel: Option<(u32, u32)>) -> Result<(), Unfit> {
    if !SYNCFS_FILESYSTEMS.contains(&kind) {
        return Err(Unfit::Filesystem(kind));
    }
    if devices.windows(2).any(|pair| pair[0] != pair[1]) {
        return Err(Unfit::Devices);
    }
    match kernel {
        Some(version) if version >= SYNCFS_REPORTS_ERRORS => Ok(()),
        Some((major, minor)) => Err(Unfit::Kernel(major, minor)),
        None => Err(Unfit::Unknown("the kernel's version".into())),
    }
}

/// The major and minor version in a kernel release such as `6.8.0-1-generic`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::dirty::{State as MarkerState, scan};

    fn commit(dir: &Path) -> GroupCommit {
        commit_with_clock(dir, Arc::new(SystemTime::now))
    }

    fn commit_with_clock(dir: &Path, clock: Clock) -> GroupCommit {
        GroupCommit::new(dir, dir.join("dirty"), PageCache::new("boot-a", 1), clock)
    }

    fn found(dir: &Path) -> Vec<dirty::Found> {
        scan(&dir.join("dirty"), Some(&PageCache::new("boot-a", 1))).unwrap()
    }

    fn markers(dir: &Path) -> Vec<MarkerState> {
        found(dir).into_iter().map(|found| found.state).collect()
    }

    /// A marker is on disk from the first write of an epoch until the
    /// sync after its last one; a process that wrote nothing leaves none.
    #[test]
    fn a_marker_lives_from_the_first_write_to_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let commit = commit(dir.path());
        assert_eq!(commit.sync().unwrap(), Synced::default());
        assert!(markers(dir.path()).is_empty());
        let first = commit.begin_write().unwrap();
        let second = commit.begin_write().unwrap();
        assert_eq!(markers(dir.path()), [MarkerState::Live], "one per epoch");
        drop((first, second));
        assert_eq!(markers(dir.path()), [MarkerState::Live]);
        assert_eq!(
            commit.sync().unwrap(),
            Synced {
                epochs: 1,
                killed: 0
            }
        );
        assert!(markers(dir.path()).is_empty());
    }

    /// Writes that go on while a sync runs take a new marker; the sync
    /// waits for the writes of the epoch it sealed, and removes only its
    /// marker. The daemon's stream of bodies lets old markers go so.
    #[test]
    fn a_sync_waits_for_its_epochs_writes_while_new_ones_take_a_new_marker() {
        let dir = tempfile::tempdir().unwrap();
        let commit = Arc::new(self::commit(dir.path()));
        let slow = commit.begin_write().unwrap();
        let syncing = std::thread::scope(|scope| {
            let syncing = scope.spawn(|| commit.sync().unwrap());
            // The sync sealed the first epoch, and waits on its write.
            while commit.lock().open.is_some() {
                std::thread::yield_now();
            }
            let later = commit.begin_write().unwrap();
            assert_eq!(markers(dir.path()).len(), 2, "a new epoch, a new marker");
            assert!(
                !syncing.is_finished(),
                "the sync did not wait for its write"
            );
            drop(slow);
            let synced = syncing.join().unwrap();
            drop(later);
            synced
        });
        assert_eq!(syncing.epochs, 1);
        assert_eq!(
            markers(dir.path()),
            [MarkerState::Live],
            "the new one stays"
        );
        assert_eq!(commit.sync().unwrap().epochs, 1);
        assert!(markers(dir.path()).is_empty());
    }

    /// The markers of killed writers of this page cache go after the
    /// next sync, even with nothing of ours to sync.
    #[test]
    fn markers_of_killed_writers_go_after_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PageCache::new("boot-a", 1);
        let dirty = dir.path().join("dirty");
        Marker::create(&dirty, &cache, 9, SystemTime::now())
            .unwrap()
            .abandon();
        assert_eq!(markers(dir.path()), [MarkerState::Killed]);
        let commit = commit(dir.path());
        assert_eq!(
            commit.sync().unwrap(),
            Synced {
                epochs: 0,
                killed: 1
            }
        );
        assert!(markers(dir.path()).is_empty());
    }

    /// The marker's syncs stay off a put's path: made ahead of time, it
    /// is the one the first write takes; a sync removes one no write
    /// took.
    #[test]
    fn a_marker_made_ahead_of_time_is_taken_by_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let commit = commit(dir.path());
        commit.prepare();
        let deadline = Instant::now() + Duration::from_secs(10);
        while found(dir.path()).is_empty() {
            assert!(Instant::now() < deadline, "no marker made ahead of time");
            std::thread::sleep(Duration::from_millis(10));
        }
        let spare = found(dir.path());
        let writing = commit.begin_write().unwrap();
        assert_eq!(found(dir.path()), spare, "the write made another marker");
        drop(writing);
        assert_eq!(commit.sync().unwrap().epochs, 1);
        assert!(markers(dir.path()).is_empty());
        commit.prepare();
        assert_eq!(commit.sync().unwrap(), Synced::default());
        assert!(markers(dir.path()).is_empty(), "an unused one stays");
    }

    /// A marker made ahead of time dates what a recovery verifies: one
    /// older than [`SPARE_MAX_AGE`] when the first write comes is made
    /// again.
    #[test]
    fn a_stale_marker_made_ahead_of_time_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(Mutex::new(SystemTime::now()));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || *now.lock().unwrap())
        };
        let commit = commit_with_clock(dir.path(), clock);
        commit.prepare();
        let made = *now.lock().unwrap();
        *now.lock().unwrap() += 2 * SPARE_MAX_AGE;
        let _writing = commit.begin_write().unwrap();
        let found = found(dir.path());
        assert_eq!(found.len(), 1);
        assert!(found[0].time > made, "the stale marker was taken");
    }

    /// A wall clock stepped back while an epoch is open would date what
    /// its writes change before its marker, out of a recovery's reach: a
    /// new marker, stamped with the new time, goes on disk first.
    #[test]
    fn a_clock_stepped_back_gets_a_marker_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(Mutex::new(SystemTime::now()));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || *now.lock().unwrap())
        };
        let commit = commit_with_clock(dir.path(), clock);
        drop(commit.begin_write().unwrap());
        let back = *now.lock().unwrap() - Duration::from_secs(3600);
        *now.lock().unwrap() = back;
        drop(commit.begin_write().unwrap());
        let times: Vec<_> = found(dir.path()).iter().map(|found| found.time).collect();
        assert_eq!(times.len(), 2, "no marker for the clock stepped back");
        assert!(times.contains(&back));
        assert_eq!(commit.sync().unwrap().epochs, 1);
        assert!(markers(dir.path()).is_empty());
    }

    /// Group commit only where one syncfs makes every file durable and
    /// tells its errors: a known filesystem, one device, Linux 5.8 on.
    #[test]
    fn group_commit_only_on_known_filesystems_one_device_and_a_recent_kernel() {
        const EXT4: i64 = 0xEF53;
        const FUSE: i64 = 0x6573_5546;
        const ECRYPTFS: i64 = 0xF15F;
        const OVERLAYFS: i64 = 0x794C_7630;
        let recent = Some((6, 8));
        assert_eq!(fits_facts(EXT4, &[3, 3, 3], recent), Ok(()));
        assert_eq!(fits_facts(0x0102_1994, &[3], Some((5, 8))), Ok(()));
        for other in [FUSE, ECRYPTFS, OVERLAYFS, 0x6969] {
            assert_eq!(
                fits_facts(other, &[3, 3], recent),
                Err(Unfit::Filesystem(other))
            );
        }
        assert_eq!(fits_facts(EXT4, &[3, 4, 3], recent), Err(Unfit::Devices));
        assert_eq!(
            fits_facts(EXT4, &[3], Some((5, 4))),
            Err(Unfit::Kernel(5, 4))
        );
        assert_eq!(kernel_version("6.18.44-fc-v1252"), Some((6, 18)));
        assert_eq!(kernel_version("5.8.0\n"), Some((5, 8)));
    }
}
