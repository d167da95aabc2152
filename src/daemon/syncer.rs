//! The daemon's group commit: fetched bodies reach the disk together, at
//! most [`FLUSH_DELAY`] after the first of them landed.
//!
//! A helper syncs once, when its `go` command is done. The daemon never
//! is: it stores bodies whenever peers send them, a build's worth in
//! seconds, or a stream of them for minutes while it replicates. A sync
//! per body was a journal commit per body (on ext4's `data=ordered`, each
//! writing out every dirty page of the filesystem, a build's outputs
//! among them), on the node's thread. So the store's writes are grouped
//! (`store::group_commit`), and this thread syncs them: a second after the
//! first write of an epoch, whatever came since goes in one `syncfs(2)`.
//! Writes that land meanwhile open the next epoch, with a marker of their
//! own, so a marker lives about a second however long the stream lasts.
//! A failed sync is told once in a while ([`Quiet`]); its marker is left
//! for a recovery, which this daemon then joins (its lookups verify).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::daemon::quiet::Quiet;
use crate::store::DiskStore;

/// How long after the first write of an epoch the daemon syncs it.
pub(crate) const FLUSH_DELAY: Duration = Duration::from_secs(1);
/// How often the thread looks whether the daemon is stopping.
const POLL: Duration = Duration::from_millis(250);

/// The thread that syncs; [`Syncer::stop`] syncs a last time and ends it.
pub(crate) struct Syncer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Syncer {
    /// Starts syncing `store`'s writes, if they wait for a sync (not
    /// where each is synced on its own).
    pub(crate) fn start(store: Arc<DiskStore>, quiet: Arc<Quiet>) -> std::io::Result<Option<Self>> {
        if !store.groups_commits() {
            return Ok(None);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("warren-sync".into())
            .spawn({
                let stop = stop.clone();
                move || run(&store, &quiet, &stop)
            })?;
        Ok(Some(Self { stop, thread }))
    }

    /// Syncs what is left and ends the thread.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn run(store: &DiskStore, quiet: &Quiet, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Some(began) = store.wait_for_write(POLL) else {
            continue;
        };
        // Let the epoch gather what lands within the delay.
        let due = began + FLUSH_DELAY;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(POLL));
        }
        sync(store, quiet);
        // The next epoch's marker, made now, off the next fetch's path.
        store.prepare_write();
    }
    sync(store, quiet);
}

fn sync(store: &DiskStore, quiet: &Quiet) {
    let Err(error) = store.sync() else {
        return;
    };
    // The marker stays, renamed for a recovery: lookups here verify what
    // it covers from now on.
    store.rescan_markers();
    let message = crate::logging::chain(&error);
    match quiet.occurred("sync", tokio::time::Instant::now()) {
        Some(n) => tracing::warn!(
            "cannot sync bodies fetched from peers to disk ({n} times since the last warning): \
             {message}; the store's disk may be failing: `warren doctor` tells the recovery"
        ),
        None => tracing::debug!("cannot sync the store: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write as _;

    use super::*;
    use crate::ids::{ActionId, OutputId};
    use crate::store::layout;

    /// Bodies that land without a pause for seconds (a replication, a
    /// from-peer build) still let each marker go about a second after it
    /// was made: new writes take a new marker while the old one's sync
    /// runs. Nothing is left once the daemon stops.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_stream_of_fetched_bodies_lets_each_marker_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path()).unwrap());
        let syncer = Syncer::start(store.clone(), Arc::new(Quiet::default()))
            .unwrap()
            .expect("writes grouped on Linux");
        let dirty = layout::dirty_dir(store.root());
        let markers = || -> Vec<std::ffi::OsString> {
            std::fs::read_dir(&dirty).map_or(Vec::new(), |listing| {
                listing.flatten().map(|file| file.file_name()).collect()
            })
        };
        let started = Instant::now();
        let mut seen = HashMap::new();
        let mut n: u32 = 0;
        while started.elapsed() < Duration::from_secs(8) {
            let body = n.to_le_bytes();
            let mut writer = store
                .begin_object(OutputId::of(&body), body.len() as u64)
                .unwrap();
            writer.write_all(&body).unwrap();
            let mut action = [0; 32];
            action[..4].copy_from_slice(&body);
            store
                .commit_fetched(
                    &ActionId::from_bytes(action),
                    writer.finish().unwrap(),
                    libp2p_identity::PeerId::random(),
                )
                .unwrap();
            n += 1;
            for marker in markers() {
                seen.entry(marker).or_insert_with(|| started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = markers();
        let early: Vec<_> = (seen.iter())
            .filter(|(_, at)| **at < Duration::from_secs(2))
            .map(|(marker, _)| marker)
            .collect();
        assert!(!early.is_empty(), "no marker for {n} bodies");
        for marker in early {
            assert!(
                !left.contains(marker),
                "{marker:?} outlived 6 s of writes after it was made"
            );
        }
        assert!(seen.len() >= 3, "one marker for 8 s of writes: {seen:?}");
        syncer.stop();
        assert_eq!(markers(), Vec::<std::ffi::OsString>::new());
    }
}
