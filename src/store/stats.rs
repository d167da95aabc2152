//! Lifetime counters of the cache, for `warren stats`.
//!
//! Each helper process counts in memory ([`Counters`], lock-free atomics on
//! the request path) and merges its totals into `<root>/stats.json` once, at
//! exit, under `stats.lock`. Many concurrent `go` commands therefore cost one
//! small locked read-modify-write each, never a write per request. Fields
//! added later default to zero, so old files stay readable.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::fsutil::lock::{FileLock, LockError};
use crate::store::layout;

const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    File(#[from] fsutil::Error),
}

/// Totals, as stored in `stats.json` and printed by `warren stats --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Totals {
    pub gets: u64,
    pub hits: u64,
    pub misses: u64,
    pub puts: u64,
    /// Body bytes received in puts.
    pub put_bytes: u64,
    /// Body bytes of the hits handed to `go`.
    pub hit_bytes: u64,
    /// Requests answered with `Err` (malformed input, failed stores).
    pub errors: u64,
    /// Corrupt or dangling store files found and removed by reads.
    pub repaired: u64,
    /// Hits that came from a peer (through the daemon), and their bytes.
    pub peer_hits: u64,
    pub peer_hit_bytes: u64,
    /// Local misses asked of the daemon (hits and misses), and how long
    /// `go` waited on those answers in all, in microseconds: what sharing
    /// cost the builds beyond the local store.
    pub remote_lookups: u64,
    pub remote_wait_us: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.gets += other.gets;
        self.hits += other.hits;
        self.misses += other.misses;
        self.puts += other.puts;
        self.put_bytes += other.put_bytes;
        self.hit_bytes += other.hit_bytes;
        self.errors += other.errors;
        self.repaired += other.repaired;
        self.peer_hits += other.peer_hits;
        self.peer_hit_bytes += other.peer_hit_bytes;
        self.remote_lookups += other.remote_lookups;
        self.remote_wait_us += other.remote_wait_us;
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Totals::default()
    }
}

/// In-memory counters of one process.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    gets: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    puts: AtomicU64,
    put_bytes: AtomicU64,
    hit_bytes: AtomicU64,
    errors: AtomicU64,
    peer_hits: AtomicU64,
    peer_hit_bytes: AtomicU64,
    remote_lookups: AtomicU64,
    remote_wait_us: AtomicU64,
}

impl Counters {
    /// A lookup asked of the daemon after a local miss, answered after
    /// `waited` (counted besides [`Self::hit`] or [`Self::miss`]).
    pub(crate) fn remote_lookup(&self, waited: Duration) {
        self.remote_lookups.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.remote_wait_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// A hit that a peer supplied (also counted by [`Self::hit`]).
    pub(crate) fn peer_hit(&self, bytes: u64) {
        self.peer_hits.fetch_add(1, Ordering::Relaxed);
        self.peer_hit_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn hit(&self, bytes: u64) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.hit_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn miss(&self) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn put(&self, bytes: u64) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.put_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The totals so far; `repaired` comes from the store.
    pub(crate) fn snapshot(&self, repaired: u64) -> Totals {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Totals {
            gets: get(&self.gets),
            hits: get(&self.hits),
            misses: get(&self.misses),
            puts: get(&self.puts),
            put_bytes: get(&self.put_bytes),
            hit_bytes: get(&self.hit_bytes),
            errors: get(&self.errors),
            repaired,
            peer_hits: get(&self.peer_hits),
            peer_hit_bytes: get(&self.peer_hit_bytes),
            remote_lookups: get(&self.remote_lookups),
            remote_wait_us: get(&self.remote_wait_us),
        }
    }
}

/// Adds `totals` to the lifetime figures in the store at `root`.
pub(crate) fn record(root: &Path, totals: &Totals) -> Result<(), Error> {
    if totals.is_empty() {
        return Ok(());
    }
    let _lock = FileLock::acquire(&layout::stats_lock(root), LOCK_TIMEOUT)?;
    let mut lifetime = load(root)?;
    lifetime.add(totals);
    let json = serde_json::to_vec_pretty(&lifetime).expect("totals to serialize");
    // Not synced: a sync commits the journal, which writes out every dirty
    // page of the filesystem, and these are statistics. The helper's group
    // commit, right after, takes them to disk with its writes.
    fsutil::write_atomic_unsynced(&layout::stats_file(root), &json)?;
    Ok(())
}

/// The lifetime figures of the store at `root` (zero if none yet). A
/// damaged file is reported and counted from zero, not fatal: these are
/// statistics, and the cache must keep working.
pub(crate) fn load(root: &Path) -> Result<Totals, Error> {
    let path = layout::stats_file(root);
    match fs::read(&path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!("ignoring damaged {}: {e}", path.display());
            Totals::default()
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Totals::default()),
        Err(source) => Err(Error::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_accumulate_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Counters::default();
        counters.hit(10);
        counters.miss();
        counters.put(7);
        counters.remote_lookup(Duration::from_micros(1500));
        record(dir.path(), &counters.snapshot(1)).unwrap();
        record(dir.path(), &counters.snapshot(0)).unwrap();
        let totals = load(dir.path()).unwrap();
        assert_eq!(
            totals,
            Totals {
                gets: 4,
                hits: 2,
                misses: 2,
                puts: 2,
                put_bytes: 14,
                hit_bytes: 20,
                errors: 0,
                repaired: 1,
                peer_hits: 0,
                peer_hit_bytes: 0,
                remote_lookups: 2,
                remote_wait_us: 3000,
            }
        );
    }

    #[test]
    fn damaged_or_old_files_do_not_break_stats() {
        let dir = tempfile::tempdir().unwrap();
        fsutil::write_atomic(&layout::stats_file(dir.path()), b"{\"gets\": 3}").unwrap();
        assert_eq!(load(dir.path()).unwrap().gets, 3);
        fsutil::write_atomic(&layout::stats_file(dir.path()), b"\0garbage").unwrap();
        assert_eq!(load(dir.path()).unwrap(), Totals::default());
        let totals = Totals {
            puts: 1,
            ..Totals::default()
        };
        record(dir.path(), &totals).unwrap();
        assert_eq!(load(dir.path()).unwrap(), totals);
    }
}
