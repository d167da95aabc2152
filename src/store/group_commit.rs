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
//! - A failed sync keeps its markers, renamed for a recovery (`dirty`).
//! - Markers of killed writers of this page cache, found when the store
//!   was opened, are removed after the next sync: it made what they wrote
//!   durable.
//!
//! Each epoch keeps the store's directory open from before its first
//! write: `syncfs` reports write-back errors met since its descriptor was
//! opened, so one that struck during the epoch is not missed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::dirty::{self, Marker, PageCache};
use crate::fsutil::{self, io_error};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    root: PathBuf,
    /// Where the markers go.
    dirty: PathBuf,
    cache: PageCache,
    state: Mutex<State>,
    /// Told when a write begins or ends.
    changed: Condvar,
}

/// Numbers of epochs (and of their markers), unique in this process: it
/// may have several stores open, and their markers may share a directory.
static EPOCHS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Default)]
struct State {
    /// The epoch new writes join, if one is open.
    open: Option<Epoch>,
    /// Epochs a sync has sealed, waiting for their writes to end.
    sealed: Vec<Epoch>,
    /// Markers of killed writers, removed after the next sync.
    killed: Vec<PathBuf>,
}

#[derive(Debug)]
struct Epoch {
    number: u64,
    marker: Marker,
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
    /// Group commit for the store at `root`, with its markers in `dirty`;
    /// `killed` are markers of killed writers of this page cache, for the
    /// next sync to remove.
    pub(crate) fn new(root: &Path, dirty: PathBuf, cache: PageCache, killed: Vec<PathBuf>) -> Self {
        Self {
            root: root.to_path_buf(),
            dirty,
            cache,
            state: Mutex::new(State {
                killed,
                ..State::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Begins a write: joins the open epoch, or opens one with its marker
    /// on disk first (two small syncs, once per epoch). The write must be
    /// done when the returned [`Writing`] drops.
    pub(crate) fn begin_write(&self) -> Result<Writing<'_>, fsutil::Error> {
        let mut state = self.lock();
        let epoch = match &mut state.open {
            Some(epoch) => epoch,
            open @ None => {
                let root = File::open(&self.root).map_err(io_error("opening", &self.root))?;
                let number = EPOCHS.fetch_add(1, Ordering::Relaxed);
                let marker = Marker::create(&self.dirty, &self.cache, number, SystemTime::now())?;
                open.insert(Epoch {
                    number,
                    marker,
                    root,
                    writers: 0,
                    began: Instant::now(),
                })
            }
        };
        epoch.writers += 1;
        let epoch = epoch.number;
        drop(state);
        self.changed.notify_all();
        Ok(Writing {
            commit: self,
            epoch,
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
    /// filesystem, then removes its marker and those of killed writers.
    /// A failed sync leaves the markers for a recovery.
    pub(crate) fn sync(&self) -> Result<Synced, fsutil::Error> {
        let mut state = self.lock();
        let sealed: Vec<u64> = state.open.as_ref().map(|e| e.number).into_iter().collect();
        if let Some(epoch) = state.open.take() {
            state.sealed.push(epoch);
        }
        let killed = std::mem::take(&mut state.killed);
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
        if epochs.is_empty() && killed.is_empty() {
            return Ok(Synced::default());
        }
        let synced = match epochs.first() {
            Some(epoch) => fsutil::sync_filesystem(&epoch.root, &self.root),
            None => File::open(&self.root)
                .map_err(io_error("opening", &self.root))
                .and_then(|root| fsutil::sync_filesystem(&root, &self.root)),
        };
        let done = Synced {
            epochs: epochs.len(),
            killed: killed.len(),
        };
        match synced {
            Ok(()) => {
                for epoch in epochs {
                    epoch.marker.remove();
                }
                for marker in &killed {
                    dirty::remove(marker);
                }
                Ok(done)
            }
            Err(error) => {
                for epoch in epochs {
                    epoch.marker.keep_for_recovery();
                }
                // What the killed writers left may be lost as well; their
                // markers stay, for a recovery to find.
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::dirty::{State as MarkerState, scan};

    fn commit(dir: &Path) -> GroupCommit {
        GroupCommit::new(
            dir,
            dir.join("dirty"),
            PageCache::new("boot-a", 1),
            Vec::new(),
        )
    }

    fn markers(dir: &Path) -> Vec<MarkerState> {
        let found = scan(&dir.join("dirty"), Some(&PageCache::new("boot-a", 1))).unwrap();
        found.into_iter().map(|found| found.state).collect()
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
        let path = Marker::create(&dirty, &cache, 9, SystemTime::now())
            .unwrap()
            .abandon();
        let found = scan(&dirty, Some(&cache)).unwrap();
        assert_eq!(found[0].state, MarkerState::Killed);
        let commit = GroupCommit::new(dir.path(), dirty, cache, vec![path]);
        assert_eq!(
            commit.sync().unwrap(),
            Synced {
                epochs: 0,
                killed: 1
            }
        );
        assert!(markers(dir.path()).is_empty());
    }
}
