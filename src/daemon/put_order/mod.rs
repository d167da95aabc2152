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
//! indexed yet.
//!
//! The index itself ([`index`]) keeps each entry once, in a slot of 56
//! bytes, so that an office of peers' entries fits in a small daemon. A
//! served entry's slot says whether its body is a linked executable (as
//! [`Servable`] found from the body's first bytes): hints and catalogs
//! tell peers so, and each peer leaves those above its own limit to a
//! lookup (`[share] read-ahead-executables-max`).
//!
//! Catalogs for replicating peers ([`PutOrder::catalog`]) list entries
//! built here by a number the index gives each as it learns of it (in put
//! order for the first full scan, then as they land), under an epoch drawn
//! when the daemon starts: a peer that continues from a number never misses
//! an entry, even one whose put time lies before entries it has seen (a
//! clock that jumped forward and was set right again; see
//! `warren_p2p::catalog`).
//!
//! Only entries the daemon serves are indexed (built here, or from a
//! re-shared peer, and not a module index; see `daemon::node_store`), as
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

mod index;
#[cfg(target_os = "linux")]
mod watch;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch as notify;
use warren_p2p::catalog;
use warren_p2p::{Hint, SummaryChunk};

use self::index::{Index, Meta, shard_of};
use crate::ids::ActionId;
use crate::store;
use crate::store::layout::{self, shard_named};

/// A pause between puts longer than this ends a run of hints.
pub(crate) const BURST_GAP: Duration = Duration::from_secs(10);
/// Without inotify: how often the index looks for new entries when the
/// store is quiet.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);
/// Without inotify: how soon it looks again after finding some, while a
/// build is putting them.
pub(crate) const QUICK_REFRESH: Duration = Duration::from_millis(200);
/// With inotify: how often the index rescans anyway.
pub(crate) const SAFETY_SCAN: Duration = Duration::from_secs(10);

/// Which entries are indexed, by their action and line, and what their
/// bodies are (`None`: not served); called once for each entry the index
/// reads.
pub(crate) type Servable = Arc<dyn Fn(&ActionId, &store::Line) -> Option<Body> + Send + Sync>;

/// What the index keeps of a served entry's body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Body {
    /// A linked executable (`store::executable`).
    pub(crate) executable: bool,
}

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

/// One shard directory as read from disk.
struct ShardScan {
    name: String,
    mtime: SystemTime,
    /// Entries the index knew of that are gone.
    gone: Vec<ActionId>,
    /// Entries the index did not know of, with what it keeps of the
    /// served ones.
    new: Vec<(ActionId, Option<Meta>)>,
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
        let mut known = self.known_in(&shards);
        for name in shards {
            let path = actions_dir.join(&name);
            let known = known.remove(&name).unwrap_or_default();
            // Its mtime is left unknown so that the next scan looks again.
            self.apply(self.scan_shard(&path, name, UNIX_EPOCH, &known));
        }
        let landed: Vec<(String, ActionId, Option<Meta>)> = landed
            .into_iter()
            .filter_map(|(shard, name)| {
                let action = entry_named(&shard, &name)?;
                match self.read(&action, &actions_dir.join(&shard).join(&name)) {
                    Read::Gone => None,
                    Read::Kept => Some((shard, action, None)),
                    Read::Served(meta) => Some((shard, action, Some(meta))),
                }
            })
            .collect();
        {
            let index = &mut *self.index.lock().expect("lock not poisoned");
            for (shard, action, meta) in landed {
                index.shards.entry(shard).or_insert(UNIX_EPOCH);
                // A new entry, or one that replaced another (served or not).
                index.set(action, meta);
            }
            for (shard, name) in removed {
                if let Some(action) = entry_named(&shard, &name) {
                    index.remove(&action);
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

    /// The entries indexed in each of the shards `names`, in one pass over
    /// the slots.
    fn known_in(&self, names: &[String]) -> HashMap<String, HashSet<ActionId>> {
        let mut wanted: [Option<HashSet<ActionId>>; 256] = std::array::from_fn(|_| None);
        for shard in names.iter().filter_map(|name| shard_named(name)) {
            wanted[usize::from(shard)] = Some(HashSet::new());
        }
        let index = self.index.lock().expect("lock not poisoned");
        for slot in index.slots.iter().filter(|slot| !slot.is_free()) {
            if let Some(known) = &mut wanted[usize::from(shard_of(&slot.action))] {
                known.insert(slot.action);
            }
        }
        (0..=u8::MAX)
            .zip(wanted)
            .filter_map(|(shard, known)| Some((layout::shard_name(shard), known?)))
            .collect()
    }

    /// Up to `limit` actions put right after `action`, in put order,
    /// without crossing a pause of more than [`BURST_GAP`], with the sizes
    /// of linked executables.
    pub(crate) fn following(&self, action: &ActionId, limit: usize) -> Vec<Hint> {
        (self.index.lock().expect("lock not poisoned")).following(action, limit)
    }

    /// A replicating peer's catalog (`warren_p2p::catalog`): up to
    /// `request.limit` entries built here and put at most
    /// `request.max_age_secs` ago, from `request.since` on in the
    /// [`index::Listing`]'s order (or, for an older peer that sends no
    /// position, after `request.after` in put order), and whether more
    /// follow.
    /// `None` before the first full scan.
    pub(crate) fn catalog(&self, request: &catalog::CatalogRequest) -> Option<catalog::Catalog> {
        self.catalog_at(request, SystemTime::now())
    }

    fn catalog_at(
        &self,
        request: &catalog::CatalogRequest,
        now: SystemTime,
    ) -> Option<catalog::Catalog> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let oldest = now
            .checked_sub(Duration::from_secs(request.max_age_secs))
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |age| age.as_nanos() as u64);
        let limit = request.limit as usize;
        let index = self.index.lock().expect("lock not poisoned");
        Some(match request.since {
            Some(since) => index.listed_since(since, oldest, limit),
            None => index.listed_after(&request.after, oldest, limit),
        })
    }

    /// How many entries the summary log names (removed ones too, until it
    /// is compacted); `None` before the first full scan.
    pub(crate) fn offered(&self) -> Option<u64> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        Some(self.generation() as u64)
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
        let first = !self.ready.load(Ordering::Acquire);
        self.scan(actions_dir);
        if first {
            // Read shard by shard; listed oldest first from now on.
            self.index.lock().expect("lock not poisoned").renumber();
        }
        self.ready.store(true, Ordering::Release);
        let grew = self.announce_growth(before);
        self.compact();
        grew
    }

    fn scan(&self, actions_dir: &Path) {
        let Ok(dirs) = fs::read_dir(actions_dir) else {
            return; // No entries yet.
        };
        let mut listed = HashSet::new();
        let mut changed = Vec::new();
        for shard in dirs.flatten() {
            let name = shard.file_name().to_string_lossy().into_owned();
            listed.insert(name.clone());
            let Some(mtime) = shard.metadata().ok().and_then(|m| m.modified().ok()) else {
                continue;
            };
            changed.push((name, shard.path(), mtime));
        }
        {
            let index = self.index.lock().expect("lock not poisoned");
            changed.retain(|(name, _, mtime)| index.shards.get(name) != Some(mtime));
        }
        let names: Vec<String> = changed.iter().map(|(name, ..)| name.clone()).collect();
        let mut known = self.known_in(&names);
        for (name, path, mtime) in changed {
            let known = known.remove(&name).unwrap_or_default();
            // Read outside the lock: answering peers must not wait on disk.
            let scan = self.scan_shard(&path, name, mtime, &known);
            self.apply(scan);
        }
        // Shard directories that are gone (a `warren clean`).
        let mut present = [false; 256];
        for shard in listed.iter().filter_map(|name| shard_named(name)) {
            present[usize::from(shard)] = true;
        }
        let index = &mut *self.index.lock().expect("lock not poisoned");
        index.shards.retain(|name, _| listed.contains(name));
        let gone: Vec<ActionId> = index
            .slots
            .iter()
            .filter(|slot| !slot.is_free() && !present[usize::from(shard_of(&slot.action))])
            .map(|slot| slot.action)
            .collect();
        for action in gone {
            index.remove(&action);
        }
    }

    fn apply(&self, scan: ShardScan) {
        let mut index = self.index.lock().expect("lock not poisoned");
        for gone in &scan.gone {
            index.remove(gone);
        }
        for (action, meta) in scan.new {
            index.set(action, meta);
        }
        index.shards.insert(scan.name, scan.mtime);
    }
}

/// The action of the entry file `name` in shard directory `shard`, if it
/// is one: a file whose name is not an action, or that is in another
/// action's shard, is not an entry (lookups would never find it).
fn entry_named(shard: &str, name: &str) -> Option<ActionId> {
    let action = ActionId::from_hex(name).ok()?;
    (shard_named(shard) == Some(shard_of(&action))).then_some(action)
}

impl PutOrder {
    /// Reads the entry at `path` for the index.
    fn read(&self, action: &ActionId, path: &Path) -> Read {
        // A line another action's check binds is damage a lookup removes.
        let Some(line) =
            store::read_entry(path).filter(|line| line.binding(action) != store::Binding::Wrong)
        else {
            return Read::Gone;
        };
        let Some(body) = (self.servable)(action, &line) else {
            return Read::Kept;
        };
        Read::Served(Meta {
            time: line
                .time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64,
            size: line.size,
            built_here: line.source == store::Source::Local,
            executable: body.executable,
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
            gone: Vec::new(),
            new: Vec::new(),
        };
        let mut present = HashSet::new();
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(action) = file_name.to_str().and_then(|n| entry_named(&scan.name, n))
                else {
                    continue; // Temp files and strangers.
                };
                if known.contains(&action) {
                    present.insert(action);
                    continue;
                }
                match self.read(&action, &entry.path()) {
                    Read::Gone => {}
                    Read::Kept => scan.new.push((action, None)),
                    Read::Served(meta) => scan.new.push((action, Some(meta))),
                }
            }
        }
        scan.gone = known.difference(&present).copied().collect();
        scan
    }
}

#[cfg(test)]
mod tests;
