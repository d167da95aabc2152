//! The order in which the store's entries were put, for read-ahead hints.
//!
//! A build asks for entries in much the order in which another build of
//! the same code stored them. The daemon therefore tells a peer that
//! fetched an entry which entries were put right after it
//! ([`PutOrder::following`]), and the peer fetches those ahead of its build
//! (see `warren_p2p`'s read-ahead). Hints stop at the first pause of more
//! than [`BURST_GAP`] between puts: what was put after a pause belongs to
//! other work, which the peer's build probably does not need.
//!
//! The index (put time and action, from each entry's line) is kept by a
//! thread of its own, so that answering a peer only reads memory: a full
//! scan at start, then (on Linux) each entry as inotify reports it landing
//! (`watch`), and a rescan of the shard directories whose mtime changed
//! every [`SAFETY_SCAN`] in case inotify missed something. Without inotify
//! the rescans come every [`REFRESH`], sooner ([`QUICK_REFRESH`]) while
//! entries keep coming. Entries land by a rename into their shard
//! directory, which changes its mtime, and a rescan reads only entries not
//! indexed yet. Memory is about 180 bytes an entry (18 MB for 100,000
//! entries).
//!
//! Only entries the daemon serves are indexed (built here, or from a
//! re-shared peer, and not a module index; see `share::node_store`), as
//! decided when each is
//! first read: so no peer is hinted at, or told of, an entry it would be
//! refused. Entries not served are remembered per shard all the same, so
//! a rescan does not read them again.
//!
//! The same index keeps the store's summary log for peers
//! ([`PutOrder::summary`], see `warren_p2p::summary`): the first 8 bytes of
//! each action, in the order the index learned of them, under an epoch
//! drawn when the daemon starts. With inotify a peer's summary names an
//! entry within milliseconds of its landing ([`PutOrder::updates`] wakes
//! the node); without, within [`REFRESH`]. None is given before the first
//! full scan is done, since it would leave most entries out.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch as notify;
use warren_p2p::SummaryChunk;
use warren_p2p::{catalog, summary};

use crate::ids::ActionId;
use crate::store;
#[cfg(target_os = "linux")]
use crate::store::watch;

/// A pause between puts longer than this ends a run of hints.
pub(crate) const BURST_GAP: Duration = Duration::from_secs(10);
/// Without inotify: how often the index looks for new entries when the
/// store is quiet.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);
/// Without inotify: how soon it looks again after finding some, while a
/// build is putting them.
pub(crate) const QUICK_REFRESH: Duration = Duration::from_millis(200);
/// A summary log shorter than this is never compacted (see
/// `Index::compact`): starting over costs every peer a full summary.
const COMPACT_MIN: usize = 4096;
/// With inotify: how often the index rescans anyway.
pub(crate) const SAFETY_SCAN: Duration = Duration::from_secs(10);

/// Which entries are indexed, by their action and line; called once for
/// each entry the index reads.
pub(crate) type Servable = Arc<dyn Fn(&ActionId, &store::Line) -> bool + Send + Sync>;

/// See the module docs.
pub(crate) struct PutOrder {
    index: Mutex<Index>,
    servable: Servable,
    /// Set by the first full scan.
    ready: AtomicBool,
    /// Told each time the summary log grows.
    updates: notify::Sender<()>,
    /// Set once entries are learned of as they land (inotify), not only by
    /// scans.
    live: AtomicBool,
}

impl PutOrder {
    fn new(servable: Servable) -> Self {
        Self {
            index: Mutex::default(),
            servable,
            ready: AtomicBool::new(false),
            updates: notify::Sender::new(()),
            live: AtomicBool::new(false),
        }
    }
}

#[derive(Default)]
struct Index {
    /// (put time in ns since the epoch, action), in put order.
    order: BTreeSet<(u64, ActionId)>,
    meta_of: HashMap<ActionId, Meta>,
    /// Shard directory name → its mtime when last read, and its entries
    /// (indexed or not served).
    shards: HashMap<String, (SystemTime, HashSet<ActionId>)>,
    /// The summary log: action prefixes, in the order first indexed.
    log: summary::Log,
}

/// What the index keeps of a served entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    /// Put time, in ns since the Unix epoch.
    time: u64,
    size: u64,
    /// Put by `go` here (not a re-shared peer's entry): what a catalog lists.
    built_here: bool,
}

/// One shard directory as read from disk.
struct ShardScan {
    name: String,
    mtime: SystemTime,
    present: HashSet<ActionId>,
    /// Entries not indexed before, with their put times (served ones only).
    new: Vec<(ActionId, Meta)>,
}

/// What reading one entry for the index found.
enum Read {
    /// Gone, or malformed.
    Gone,
    /// Present but not served: remembered, not indexed.
    Kept,
    /// Served.
    Served(Meta),
}

impl PutOrder {
    /// Indexes the entries in `actions_dir` on a thread of its own, for as
    /// long as the returned index is in use.
    pub(crate) fn start(actions_dir: PathBuf, servable: Servable) -> std::io::Result<Arc<Self>> {
        let order = Arc::new(Self::new(servable));
        let weak = Arc::downgrade(&order);
        std::thread::Builder::new()
            .name("warren-put-order".into())
            .spawn(move || {
                // Watch first, then scan: an entry landing in between is
                // seen twice, which is harmless.
                #[cfg(target_os = "linux")]
                if let Some(mut watch) = watch::Watch::new(&actions_dir) {
                    tracing::debug!("indexing the store with inotify");
                    if let Some(order) = weak.upgrade() {
                        order.live.store(true, Ordering::Release);
                        order.refresh(&actions_dir);
                    }
                    while let Some(order) = weak.upgrade() {
                        drop(order); // Not held while waiting.
                        let changes = watch.wait(SAFETY_SCAN);
                        let Some(order) = weak.upgrade() else { break };
                        order.apply_changes(&actions_dir, changes);
                    }
                    return;
                }
                while let Some(order) = weak.upgrade() {
                    let grew = order.refresh(&actions_dir);
                    drop(order);
                    std::thread::sleep(if grew { QUICK_REFRESH } else { REFRESH });
                }
            })?;
        Ok(order)
    }

    /// Whether entries are learned of as they land, rather than by the
    /// next scan.
    #[cfg(test)]
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Woken each time the summary log grows.
    pub(crate) fn updates(&self) -> notify::Receiver<()> {
        self.updates.subscribe()
    }

    /// Takes in what inotify reported (or, when it came back empty, does a
    /// safety scan).
    #[cfg(target_os = "linux")]
    fn apply_changes(&self, actions_dir: &Path, changes: watch::Changes) {
        let watch::Changes {
            landed,
            removed,
            shards,
            rescan,
        } = changes;
        if rescan || (landed.is_empty() && removed.is_empty() && shards.is_empty()) {
            self.refresh(actions_dir);
            return;
        }
        let before = self.generation();
        for name in shards {
            let path = actions_dir.join(&name);
            let known = self.known_in(&name);
            // Its mtime is left unknown so that the next scan looks again.
            self.apply(self.scan_shard(&path, name, UNIX_EPOCH, &known));
        }
        let landed: Vec<(String, ActionId, Option<Meta>)> = landed
            .into_iter()
            .filter_map(|(shard, name)| {
                let action = ActionId::from_hex(&name).ok()?;
                match self.read(&action, &actions_dir.join(&shard).join(&name)) {
                    Read::Gone => None,
                    Read::Kept => Some((shard, action, None)),
                    Read::Served(meta) => Some((shard, action, Some(meta))),
                }
            })
            .collect();
        {
            let index = &mut *self.index.lock().expect("lock not poisoned");
            for (shard, action, time) in landed {
                index.add(&shard, action, time);
            }
            for (shard, name) in removed {
                if let Ok(action) = ActionId::from_hex(&name) {
                    index.remove(&shard, &action);
                }
            }
        }
        self.announce_growth(before);
        self.compact();
    }

    /// The epoch of the summary log.
    #[cfg(test)]
    fn summary_epoch(&self) -> u64 {
        self.index.lock().expect("lock not poisoned").log.epoch()
    }

    /// Compacts the summary log if it is mostly gone, and wakes the node
    /// (held summary requests of the old epoch are answered at once).
    fn compact(&self) {
        let compacted = self.index.lock().expect("lock not poisoned").compact();
        if compacted {
            tracing::debug!("summary log compacted under a new epoch");
            self.updates.send_replace(());
        }
    }

    fn generation(&self) -> usize {
        self.index.lock().expect("lock not poisoned").log.len()
    }

    /// Wakes the node if the summary log grew since it was `before` long;
    /// whether it grew.
    fn announce_growth(&self, before: usize) -> bool {
        let grew = self.generation() > before;
        if grew {
            self.updates.send_replace(());
        }
        grew
    }

    /// The entries indexed in shard `name`.
    fn known_in(&self, name: &str) -> HashSet<ActionId> {
        let index = self.index.lock().expect("lock not poisoned");
        index
            .shards
            .get(name)
            .map(|(_, entries)| entries.clone())
            .unwrap_or_default()
    }

    /// Up to `limit` actions put right after `action`, in put order,
    /// without crossing a pause of more than [`BURST_GAP`].
    pub(crate) fn following(&self, action: &ActionId, limit: usize) -> Vec<ActionId> {
        let index = self.index.lock().expect("lock not poisoned");
        let Some(time) = index.meta_of.get(action).map(|meta| meta.time) else {
            return Vec::new();
        };
        let gap = BURST_GAP.as_nanos() as u64;
        let mut last = time;
        let mut next = Vec::new();
        for &(put, following) in index
            .order
            .range((Bound::Excluded((time, *action)), Bound::Unbounded))
        {
            if next.len() == limit || put.saturating_sub(last) > gap {
                break;
            }
            next.push(following);
            last = put;
        }
        next
    }

    /// Up to `limit` entries built here and put after `after` (and at
    /// most `max_age` ago), in put order, and whether more follow: a
    /// replicating peer's catalog (`warren_p2p::catalog`). `None` before
    /// the first full scan.
    pub(crate) fn catalog(
        &self,
        after: &catalog::Cursor,
        max_age: Duration,
        limit: usize,
    ) -> Option<catalog::Catalog> {
        self.catalog_at(after, max_age, limit, SystemTime::now())
    }

    fn catalog_at(
        &self,
        after: &catalog::Cursor,
        max_age: Duration,
        limit: usize,
        now: SystemTime,
    ) -> Option<catalog::Catalog> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let oldest = now
            .checked_sub(max_age)
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |age| age.as_nanos() as u64);
        let start = match after.action {
            Some(action) if after.time_unix_nanos >= oldest => {
                Bound::Excluded((after.time_unix_nanos, action))
            }
            _ => Bound::Included((
                oldest.max(after.time_unix_nanos),
                ActionId::from_bytes([0; 32]),
            )),
        };
        let index = self.index.lock().expect("lock not poisoned");
        let mut catalog = catalog::Catalog::default();
        for &(time, action) in index.order.range((start, Bound::Unbounded)) {
            let Some(meta) = index.meta_of.get(&action) else {
                continue;
            };
            if !meta.built_here {
                continue;
            }
            if catalog.entries.len() == limit {
                catalog.more = true;
                break;
            }
            catalog.entries.push(catalog::CatalogEntry {
                action,
                size: meta.size,
                time_unix_nanos: time,
            });
        }
        Some(catalog)
    }

    /// The summary log from entry `since` on (from its start if `epoch` is
    /// not this index's), at most `limit` prefixes; `None` before the
    /// first full scan.
    pub(crate) fn summary(&self, epoch: u64, since: u64, limit: usize) -> Option<SummaryChunk> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let index = self.index.lock().expect("lock not poisoned");
        Some(index.log.chunk(epoch, since, limit))
    }

    /// Brings the index up to date with the directory; whether it found
    /// new entries.
    pub(crate) fn refresh(&self, actions_dir: &Path) -> bool {
        let before = self.generation();
        self.scan(actions_dir);
        self.ready.store(true, Ordering::Release);
        let grew = self.announce_growth(before);
        self.compact();
        grew
    }

    fn scan(&self, actions_dir: &Path) {
        let Ok(shards) = fs::read_dir(actions_dir) else {
            return; // No entries yet.
        };
        let mut listed = HashSet::new();
        for shard in shards.flatten() {
            let name = shard.file_name().to_string_lossy().into_owned();
            listed.insert(name.clone());
            let Some(mtime) = shard.metadata().ok().and_then(|m| m.modified().ok()) else {
                continue;
            };
            let unchanged = {
                let index = self.index.lock().expect("lock not poisoned");
                index
                    .shards
                    .get(&name)
                    .is_some_and(|(seen, _)| *seen == mtime)
            };
            if unchanged {
                continue;
            }
            let known = self.known_in(&name);
            // Read outside the lock: answering peers must not wait on disk.
            let scan = self.scan_shard(&shard.path(), name, mtime, &known);
            self.apply(scan);
        }
        // Shard directories that are gone (a `warren clean`).
        let index = &mut *self.index.lock().expect("lock not poisoned");
        let gone: Vec<String> = index
            .shards
            .keys()
            .filter(|name| !listed.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some((_, entries)) = index.shards.remove(&name) {
                for action in entries {
                    index.forget(&action);
                }
            }
        }
    }

    fn apply(&self, scan: ShardScan) {
        let mut index = self.index.lock().expect("lock not poisoned");
        let index = &mut *index;
        let old = index
            .shards
            .remove(&scan.name)
            .map(|(_, entries)| entries)
            .unwrap_or_default();
        for gone in old.difference(&scan.present) {
            index.forget(gone);
        }
        for (action, meta) in scan.new {
            index.insert(action, meta);
        }
        index.shards.insert(scan.name, (scan.mtime, scan.present));
    }
}

impl Index {
    /// Indexes `action`, put at `time`; a new action goes into the log.
    fn insert(&mut self, action: ActionId, meta: Meta) {
        let time = meta.time;
        match self.meta_of.insert(action, meta) {
            Some(previous) => {
                self.order.remove(&(previous.time, action));
            }
            None => self.log.push(&action),
        }
        self.order.insert((time, action));
    }

    fn forget(&mut self, action: &ActionId) {
        if let Some(meta) = self.meta_of.remove(action) {
            self.order.remove(&(meta.time, *action));
        }
    }

    /// Starts the summary log over, under a new epoch, with only the
    /// entries indexed now, once more than half of a log of at least
    /// [`COMPACT_MIN`] names entries that are gone (trimmed or cleaned):
    /// the log only grows otherwise. Peers that held the old epoch's log
    /// take the new one from its start. Whether it did.
    fn compact(&mut self) -> bool {
        if self.log.len() < COMPACT_MIN || self.meta_of.len() * 2 >= self.log.len() {
            return false;
        }
        let mut log = summary::Log::new();
        for (_, action) in &self.order {
            log.push(action);
        }
        self.log = log;
        true
    }

    /// An entry that landed in `shard` (seen by inotify), put at `time`
    /// if it is served.
    #[cfg(target_os = "linux")]
    fn add(&mut self, shard: &str, action: ActionId, meta: Option<Meta>) {
        self.shards
            .entry(shard.to_owned())
            .or_insert_with(|| (UNIX_EPOCH, HashSet::new()))
            .1
            .insert(action);
        match meta {
            Some(meta) => self.insert(action, meta),
            // It replaced a served entry with one that is not.
            None => self.forget(&action),
        }
    }

    /// An entry that left `shard` (seen by inotify).
    #[cfg(target_os = "linux")]
    fn remove(&mut self, shard: &str, action: &ActionId) {
        if let Some((_, entries)) = self.shards.get_mut(shard) {
            entries.remove(action);
        }
        self.forget(action);
    }
}

impl PutOrder {
    /// Reads the entry at `path` for the index.
    fn read(&self, action: &ActionId, path: &Path) -> Read {
        let Some(line) = store::read_entry(path) else {
            return Read::Gone;
        };
        if !(self.servable)(action, &line) {
            return Read::Kept;
        }
        Read::Served(Meta {
            time: line
                .time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64,
            size: line.size,
            built_here: line.source == store::Source::Local,
        })
    }

    fn scan_shard(
        &self,
        dir: &Path,
        name: String,
        mtime: SystemTime,
        known: &HashSet<ActionId>,
    ) -> ShardScan {
        let mut scan = ShardScan {
            name,
            mtime,
            present: HashSet::new(),
            new: Vec::new(),
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return scan;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(action) = file_name.to_str().and_then(|n| ActionId::from_hex(n).ok()) else {
                continue; // Temp files and strangers.
            };
            if known.contains(&action) {
                scan.present.insert(action);
                continue;
            }
            match self.read(&action, &entry.path()) {
                Read::Gone => {}
                Read::Kept => {
                    scan.present.insert(action);
                }
                Read::Served(meta) => {
                    scan.present.insert(action);
                    scan.new.push((action, meta));
                }
            }
        }
        scan
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::store::DiskStore;

    fn only_local() -> Servable {
        Arc::new(|_: &ActionId, line: &store::Line| line.source == store::Source::Local)
    }

    fn action(n: u8) -> ActionId {
        let mut bytes = [n; 32];
        bytes[0] = n.wrapping_mul(37); // spread over shards
        ActionId::from_bytes(bytes)
    }

    /// A store whose clock the test sets, in seconds.
    fn store() -> (tempfile::TempDir, Arc<DiskStore>, Arc<AtomicU64>) {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(1_000));
        let clock = now.clone();
        let store = DiskStore::open_with_clock(
            dir.path(),
            Arc::new(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::SeqCst))),
        )
        .unwrap();
        (dir, Arc::new(store), now)
    }

    #[test]
    fn hints_follow_put_order_and_stop_at_a_pause() {
        let (_dir, store, now) = store();
        for n in 1..=5 {
            now.fetch_add(1, Ordering::SeqCst);
            store.put_bytes(&action(n), &[n]).unwrap();
        }
        // A pause, then other work.
        now.fetch_add(BURST_GAP.as_secs() + 1, Ordering::SeqCst);
        store.put_bytes(&action(6), b"later").unwrap();

        let order = PutOrder::new(only_local());
        order.refresh(store.actions_dir());
        assert_eq!(order.following(&action(1), 2), [action(2), action(3)]);
        assert_eq!(order.following(&action(3), 10), [action(4), action(5)]);
        assert!(order.following(&action(5), 10).is_empty());
        assert!(order.following(&action(6), 10).is_empty());
        assert!(order.following(&action(9), 10).is_empty());
    }

    /// Trust is not transitive: an entry a peer sent is neither hinted at
    /// nor named in the summary, so no peer asks for what it would be
    /// refused.
    #[test]
    fn entries_fetched_from_peers_are_not_indexed() {
        use std::io::Write as _;

        let (_dir, store, now) = store();
        for n in 1..=4 {
            now.fetch_add(1, Ordering::SeqCst);
            if n % 2 == 0 {
                let body = [n; 3];
                let mut writer = store
                    .begin_object(crate::ids::OutputId::of(&body), 3)
                    .unwrap();
                writer.write_all(&body).unwrap();
                store
                    .commit_fetched(
                        &action(n),
                        writer.finish().unwrap(),
                        libp2p_identity::PeerId::random(),
                    )
                    .unwrap();
            } else {
                store.put_bytes(&action(n), &[n]).unwrap();
            }
        }
        let order = PutOrder::new(only_local());
        order.refresh(store.actions_dir());
        assert_eq!(order.following(&action(1), 10), [action(3)]);
        assert!(order.following(&action(2), 10).is_empty());
        let summary = order.summary(0, 0, 100).unwrap();
        assert_eq!(summary.prefixes.len(), 2, "{summary:?}");
        // A rescan does not read the kept entries again, nor index them.
        order.refresh(store.actions_dir());
        assert_eq!(order.summary(0, 0, 100).unwrap().prefixes.len(), 2);
    }

    /// A catalog lists what was built here, in put order, from a cursor
    /// on, within an age; a re-shared peer's entry is served but not
    /// listed.
    #[test]
    fn catalogs_list_entries_built_here_in_put_order_within_an_age() {
        use std::io::Write as _;

        let (_dir, store, now) = store();
        for n in 1..=6 {
            now.fetch_add(10, Ordering::SeqCst);
            if n == 4 {
                let body = [n; 3];
                let mut writer = store
                    .begin_object(crate::ids::OutputId::of(&body), 3)
                    .unwrap();
                writer.write_all(&body).unwrap();
                let peer = libp2p_identity::PeerId::random();
                store
                    .commit_fetched(&action(n), writer.finish().unwrap(), peer)
                    .unwrap();
            } else {
                store
                    .put_bytes(&action(n), &vec![n; usize::from(n)])
                    .unwrap();
            }
        }
        let serves_all: Servable = Arc::new(|_: &ActionId, _: &store::Line| true);
        let order = PutOrder::new(serves_all);
        order.refresh(store.actions_dir());
        let at = UNIX_EPOCH + Duration::from_secs(now.load(Ordering::SeqCst));
        let day = Duration::from_secs(86_400);
        let start = catalog::Cursor::default();
        let first = order.catalog_at(&start, day, 2, at).unwrap();
        let listed: Vec<ActionId> = first.entries.iter().map(|entry| entry.action).collect();
        assert_eq!(listed, [action(1), action(2)]);
        assert_eq!(first.entries[1].size, 2);
        assert!(first.more);
        let rest = order
            .catalog_at(&first.entries[1].cursor(), day, 10, at)
            .unwrap();
        let listed: Vec<ActionId> = rest.entries.iter().map(|entry| entry.action).collect();
        assert_eq!(
            listed,
            [action(3), action(5), action(6)],
            "4 came from a peer"
        );
        assert!(!rest.more);
        // Only what was put in the last 25 s (the last two, 10 s apart).
        let young = order
            .catalog_at(&start, Duration::from_secs(25), 10, at)
            .unwrap();
        let listed: Vec<ActionId> = young.entries.iter().map(|entry| entry.action).collect();
        assert_eq!(listed, [action(5), action(6)]);
        // A cursor older than the window starts at the window.
        let old_cursor = order
            .catalog_at(&first.entries[0].cursor(), Duration::from_secs(25), 10, at)
            .unwrap();
        assert_eq!(old_cursor.entries.len(), 2);
    }

    #[test]
    fn refreshes_pick_up_new_entries_and_drop_removed_ones() {
        let (_dir, store, now) = store();
        store.put_bytes(&action(1), b"one").unwrap();
        let order = PutOrder::new(only_local());
        order.refresh(store.actions_dir());
        assert!(order.following(&action(1), 10).is_empty());

        now.fetch_add(1, Ordering::SeqCst);
        store.put_bytes(&action(2), b"two").unwrap();
        now.fetch_add(1, Ordering::SeqCst);
        store.put_bytes(&action(3), b"three").unwrap();
        // Directory mtimes have a coarse clock on some filesystems: make the
        // change visible regardless.
        order.index.lock().unwrap().shards.clear();
        order.refresh(store.actions_dir());
        assert_eq!(order.following(&action(1), 10), [action(2), action(3)]);

        store.clean().unwrap();
        order
            .index
            .lock()
            .unwrap()
            .shards
            .values_mut()
            .for_each(|shard| {
                shard.0 = UNIX_EPOCH;
            });
        order.refresh(store.actions_dir());
        assert!(order.following(&action(1), 10).is_empty());
        assert!(order.index.lock().unwrap().order.is_empty());
    }

    #[test]
    fn the_summary_log_grows_with_new_entries_under_one_epoch() {
        let (_dir, store, now) = store();
        let order = PutOrder::new(only_local());
        assert_eq!(order.summary(0, 0, 10), None, "no summary before a scan");
        store.put_bytes(&action(1), b"one").unwrap();
        order.refresh(store.actions_dir());
        let prefix = |n| warren_p2p::summary::prefix(&action(n));
        let first = order.summary(0, 0, 10).unwrap();
        assert_ne!(first.epoch, 0);
        assert_eq!((first.from, first.generation), (0, 1));
        assert_eq!(first.prefixes, [prefix(1)]);

        now.fetch_add(1, Ordering::SeqCst);
        store.put_bytes(&action(2), b"two").unwrap();
        store.put_bytes(&action(1), b"one again").unwrap(); // not new
        order.index.lock().unwrap().shards.clear();
        order.refresh(store.actions_dir());
        let next = order.summary(first.epoch, 1, 10).unwrap();
        assert_eq!((next.from, next.generation), (1, 2));
        assert_eq!(next.prefixes, [prefix(2)]);
        assert!(
            order
                .summary(first.epoch, 2, 10)
                .unwrap()
                .prefixes
                .is_empty()
        );
        // Another epoch (the daemon restarted): the whole log, limited.
        let all = order.summary(first.epoch + 1, 2, 1).unwrap();
        assert_eq!((all.from, all.prefixes.len()), (0, 1));
        assert_ne!(PutOrder::new(only_local()).summary_epoch(), first.epoch);
    }

    /// Part 4, finding 17: the summary log only grew, whatever was removed.
    #[test]
    fn a_mostly_removed_log_starts_over_with_what_is_left() {
        let mut index = Index::default();
        let action = |n: u32| {
            let mut bytes = [7; 32];
            bytes[..4].copy_from_slice(&n.to_be_bytes());
            ActionId::from_bytes(bytes)
        };
        let total = COMPACT_MIN as u32 + 100;
        for n in 0..total {
            let meta = Meta {
                time: u64::from(n),
                size: 1,
                built_here: true,
            };
            index.insert(action(n), meta);
        }
        let epoch = index.log.epoch();
        // Half gone: kept as it is.
        for n in 0..total / 2 {
            index.forget(&action(n));
        }
        assert!(!index.compact());
        assert_eq!(index.log.len(), total as usize);
        // Most gone: a new log of what is left, in put order.
        for n in total / 2..total - 10 {
            index.forget(&action(n));
        }
        assert!(index.compact());
        assert_ne!(index.log.epoch(), epoch);
        let chunk = index.log.chunk(index.log.epoch(), 0, 100);
        let left: Vec<u64> = (total - 10..total)
            .map(|n| warren_p2p::summary::prefix(&action(n)))
            .collect();
        assert_eq!(chunk.prefixes, left);
        assert!(!index.compact(), "once");
    }

    #[cfg(target_os = "linux")]
    async fn wait_for_generation(
        order: &PutOrder,
        updates: &mut notify::Receiver<()>,
        generation: u64,
    ) {
        tokio::time::timeout(SAFETY_SCAN / 2, async {
            while order
                .summary(0, 0, 100)
                .is_none_or(|summary| summary.generation != generation)
            {
                let _ = tokio::time::timeout(Duration::from_millis(50), updates.changed()).await;
            }
        })
        .await
        .expect("the entry indexed well before a safety scan");
    }

    /// With inotify, an entry is in the summary log moments after it lands
    /// (not at the next scan), and the update is announced.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_started_index_learns_of_entries_as_they_land() {
        let (_dir, store, _) = store();
        store.put_bytes(&action(1), b"before").unwrap();
        let order = PutOrder::start(store.actions_dir().to_path_buf(), only_local()).unwrap();
        let mut updates = order.updates();
        wait_for_generation(&order, &mut updates, 1).await;
        assert!(order.is_live(), "inotify is not in use");
        let started = std::time::Instant::now();
        store.put_bytes(&action(2), b"after").unwrap();
        wait_for_generation(&order, &mut updates, 2).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let log = order.summary(0, 0, 100).unwrap().prefixes;
        assert!(log.contains(&warren_p2p::summary::prefix(&action(2))));
    }
}
