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
//! An office of peers each holding a few hundred thousand entries must fit
//! in a daemon of tens of MiB, so each entry the index knows of is kept
//! once, in a 56-byte slot ([`Slot`]); the action table, the put order, the
//! catalog's listing and the shards refer to it by its 4-byte number, and a
//! shard's entries are the slots whose action it is named for.
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

#[cfg(target_os = "linux")]
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hashbrown::HashTable;
use tokio::sync::watch as notify;
use warren_p2p::SummaryChunk;
use warren_p2p::{catalog, summary};

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
/// A summary log shorter than this is never compacted (see
/// `Index::compact`): starting over costs every peer a full summary.
const COMPACT_MIN: usize = 4096;
/// With inotify: how often the index rescans anyway.
pub(crate) const SAFETY_SCAN: Duration = Duration::from_secs(10);
/// Most entries one catalog answer looks at, listed or passed over as
/// older than the window asked for: the index stays locked that long.
const CATALOG_SCAN: usize = 65_536;

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

/// A slot's number: its place in [`Index::slots`].
type SlotId = u32;

/// The index proper. Every entry of the store it has read is in one slot,
/// served or not (so that a rescan does not read it again).
#[derive(Default)]
struct Index {
    slots: Vec<Slot>,
    /// Slots given back by removed entries, taken first.
    free: Vec<SlotId>,
    /// Each slot in use, found by its action (hashed with [`Index::keys`]).
    by_action: HashTable<SlotId>,
    /// A per-process key, so that peers who pick the actions we replicate
    /// cannot pick the table's collisions.
    keys: RandomState,
    /// (put time in ns since the epoch, slot) of each served entry, in put
    /// order. Entries put in the same nanosecond are in slot order.
    order: BTreeSet<(u64, SlotId)>,
    /// Served entries (those in `order`).
    served: usize,
    /// Shard directory name → its mtime when last read.
    shards: HashMap<String, SystemTime>,
    /// The summary log: action prefixes, in the order first indexed.
    log: summary::Log,
    /// Entries built here, numbered, for catalogs.
    listing: Listing,
}

/// Served entries built here, each under a number given as the index
/// learned of it (see the module docs): what catalogs page through.
struct Listing {
    /// Drawn when the index is made, never 0 (which asks for the start).
    epoch: u64,
    /// The number the next entry gets; numbers start at 1.
    next: u64,
    by_seq: BTreeMap<u64, SlotId>,
}

impl Default for Listing {
    fn default() -> Self {
        // Keyed from the OS's random source, like the summary log's epoch.
        let epoch = RandomState::new().hash_one(SystemTime::now()).max(1);
        Self {
            epoch,
            next: 1,
            by_seq: BTreeMap::new(),
        }
    }
}

impl Listing {
    /// Numbers `slot` as the latest entry.
    fn push(&mut self, slot: SlotId) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.by_seq.insert(seq, slot);
        seq
    }
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

/// One entry the index knows of, in 56 bytes: its action, its [`Meta`] if
/// it is served (with the flags in the top bits of its size), and its
/// number in the [`Listing`] if it is listed (0 if not).
#[derive(Clone, Copy)]
struct Slot {
    action: ActionId,
    time: u64,
    bits: u64,
    seq: u64,
}

const SERVED: u64 = 1 << 63;
const BUILT_HERE: u64 = 1 << 62;
/// A free slot (see [`Index::free`]).
const FREE: u64 = 1 << 61;
const SIZE: u64 = FREE - 1;

impl Slot {
    fn new(action: ActionId, meta: Option<Meta>, seq: u64) -> Self {
        let Some(meta) = meta else {
            return Self {
                action,
                time: 0,
                bits: 0,
                seq: 0,
            };
        };
        let built_here = if meta.built_here { BUILT_HERE } else { 0 };
        Self {
            action,
            time: meta.time,
            bits: SERVED | built_here | meta.size.min(SIZE),
            seq,
        }
    }

    fn meta(&self) -> Option<Meta> {
        (self.bits & SERVED != 0).then_some(Meta {
            time: self.time,
            size: self.bits & SIZE,
            built_here: self.bits & BUILT_HERE != 0,
        })
    }

    fn is_free(&self) -> bool {
        self.bits & FREE != 0
    }
}

/// The shard directory an action's entry belongs in.
fn shard_of(action: &ActionId) -> u8 {
    layout::shard_of(action.as_bytes())
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
    /// without crossing a pause of more than [`BURST_GAP`].
    pub(crate) fn following(&self, action: &ActionId, limit: usize) -> Vec<ActionId> {
        let index = self.index.lock().expect("lock not poisoned");
        let Some((slot, meta)) = index.served(action) else {
            return Vec::new();
        };
        let gap = BURST_GAP.as_nanos() as u64;
        let mut last = meta.time;
        let mut next = Vec::new();
        for &(put, following) in index
            .order
            .range((Bound::Excluded((meta.time, slot)), Bound::Unbounded))
        {
            if next.len() == limit || put.saturating_sub(last) > gap {
                break;
            }
            next.push(index.slots[following as usize].action);
            last = put;
        }
        next
    }

    /// A replicating peer's catalog (`warren_p2p::catalog`): up to
    /// `request.limit` entries built here and put at most
    /// `request.max_age_secs` ago, from `request.since` on in the
    /// [`Listing`]'s order (or, for an older peer that sends no position,
    /// after `request.after` in put order), and whether more follow.
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

impl Index {
    /// Entries of the listing after `since` (from its start if `since` is
    /// of another epoch), passing over those put before `oldest`; the
    /// position to continue from says how far it looked.
    fn listed_since(
        &self,
        since: catalog::Position,
        oldest: u64,
        limit: usize,
    ) -> catalog::Catalog {
        let epoch = self.listing.epoch;
        let from = if since.epoch == epoch { since.seq } else { 0 };
        let mut listed = catalog::Catalog {
            next: Some(catalog::Position { epoch, seq: from }),
            ..catalog::Catalog::default()
        };
        let after = self
            .listing
            .by_seq
            .range((Bound::Excluded(from), Bound::Unbounded));
        for (looked, (&seq, &slot)) in after.enumerate() {
            if listed.entries.len() == limit || looked == CATALOG_SCAN {
                listed.more = true;
                break;
            }
            listed.next = Some(catalog::Position { epoch, seq });
            let Slot { action, .. } = self.slots[slot as usize];
            let Some(meta) = self.slots[slot as usize].meta() else {
                continue;
            };
            if meta.time < oldest {
                continue;
            }
            listed.entries.push(catalog::CatalogEntry {
                action,
                size: meta.size,
                time_unix_nanos: meta.time,
            });
        }
        listed
    }

    /// Entries built here in put order after `after` (as older peers
    /// page), from `oldest` on.
    fn listed_after(&self, after: &catalog::Cursor, oldest: u64, limit: usize) -> catalog::Catalog {
        let start = match after.action {
            Some(action) if after.time_unix_nanos >= oldest => {
                // Right after the cursor's entry; if that is gone, after
                // every entry put in the same nanosecond.
                let slot = self
                    .served(&action)
                    .filter(|(_, meta)| meta.time == after.time_unix_nanos)
                    .map_or(SlotId::MAX, |(slot, _)| slot);
                Bound::Excluded((after.time_unix_nanos, slot))
            }
            _ => Bound::Included((oldest.max(after.time_unix_nanos), 0)),
        };
        let mut listed = catalog::Catalog::default();
        for &(time, slot) in self.order.range((start, Bound::Unbounded)) {
            let Slot { action, .. } = self.slots[slot as usize];
            let Some(meta) = self.slots[slot as usize].meta() else {
                continue;
            };
            if !meta.built_here {
                continue;
            }
            if listed.entries.len() == limit {
                listed.more = true;
                break;
            }
            listed.entries.push(catalog::CatalogEntry {
                action,
                size: meta.size,
                time_unix_nanos: time,
            });
        }
        listed
    }

    /// Numbers the listed entries again, in put order (after the first
    /// full scan, which reads them shard by shard).
    fn renumber(&mut self) {
        self.listing.by_seq.clear();
        let in_order: Vec<SlotId> = self.order.iter().map(|&(_, slot)| slot).collect();
        for slot in in_order {
            let listed = self.slots[slot as usize]
                .meta()
                .is_some_and(|meta| meta.built_here);
            self.slots[slot as usize].seq = if listed { self.listing.push(slot) } else { 0 };
        }
    }

    fn slot_of(&self, action: &ActionId) -> Option<SlotId> {
        let hash = self.keys.hash_one(action);
        let slots = &self.slots;
        self.by_action
            .find(hash, |&slot| slots[slot as usize].action == *action)
            .copied()
    }

    /// The slot and what is kept of `action`, if it is served.
    fn served(&self, action: &ActionId) -> Option<(SlotId, Meta)> {
        let slot = self.slot_of(action)?;
        Some((slot, self.slots[slot as usize].meta()?))
    }

    /// Indexes `action` as served (`Some`, put at its time) or only known
    /// to be in the store (`None`), whatever it was before. An action
    /// newly served goes into the log.
    fn set(&mut self, action: ActionId, meta: Option<Meta>) {
        let slot = match self.slot_of(&action) {
            Some(slot) => slot,
            None => self.take_slot(action),
        };
        let before = self.slots[slot as usize];
        if let Some(previous) = before.meta() {
            self.order.remove(&(previous.time, slot));
            self.served -= 1;
        } else if meta.is_some() {
            self.log.push(&action);
        }
        if let Some(meta) = meta {
            self.order.insert((meta.time, slot));
            self.served += 1;
        }
        // Listed under a new number, unless it is the same entry seen
        // again (an entry inotify reported and a scan read too).
        let seq = match meta {
            Some(meta) if meta.built_here && before.seq != 0 && before.meta() == Some(meta) => {
                before.seq
            }
            _ => {
                if before.seq != 0 {
                    self.listing.by_seq.remove(&before.seq);
                }
                match meta {
                    Some(meta) if meta.built_here => self.listing.push(slot),
                    _ => 0,
                }
            }
        };
        self.slots[slot as usize] = Slot::new(action, meta, seq);
    }

    /// A slot for a new `action`, in the table; not served yet.
    fn take_slot(&mut self, action: ActionId) -> SlotId {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Slot::new(action, None, 0);
                slot
            }
            None => {
                self.slots.push(Slot::new(action, None, 0));
                SlotId::try_from(self.slots.len() - 1).expect("fewer than 2^32 entries")
            }
        };
        let (keys, slots) = (&self.keys, &self.slots);
        self.by_action
            .insert_unique(keys.hash_one(action), slot, |&slot| {
                keys.hash_one(slots[slot as usize].action)
            });
        slot
    }

    /// Forgets `action`: it left the store.
    fn remove(&mut self, action: &ActionId) {
        let hash = self.keys.hash_one(action);
        let slots = &self.slots;
        let Ok(found) = self
            .by_action
            .find_entry(hash, |&slot| slots[slot as usize].action == *action)
        else {
            return;
        };
        let (slot, _) = found.remove();
        if let Some(meta) = self.slots[slot as usize].meta() {
            self.order.remove(&(meta.time, slot));
            self.served -= 1;
        }
        let seq = self.slots[slot as usize].seq;
        if seq != 0 {
            self.listing.by_seq.remove(&seq);
        }
        self.slots[slot as usize] = Slot {
            action: ActionId::from_bytes([0; 32]),
            time: 0,
            bits: FREE,
            seq: 0,
        };
        self.free.push(slot);
    }

    /// Starts the summary log over, under a new epoch, with only the
    /// entries indexed now, once more than half of a log of at least
    /// [`COMPACT_MIN`] names entries that are gone (trimmed or cleaned):
    /// the log only grows otherwise. Peers that held the old epoch's log
    /// take the new one from its start. Whether it did.
    fn compact(&mut self) -> bool {
        if self.log.len() < COMPACT_MIN || self.served * 2 >= self.log.len() {
            return false;
        }
        let mut log = summary::Log::new();
        for &(_, slot) in &self.order {
            log.push(&self.slots[slot as usize].action);
        }
        self.log = log;
        true
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
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::store::DiskStore;

    fn only_local() -> Servable {
        Arc::new(|_: &ActionId, line: &store::Line| line.source == store::Source::Local)
    }

    /// A request as an older peer sends it: by put time, after `after`.
    fn by_time(after: &catalog::Cursor, max_age: Duration, limit: u32) -> catalog::CatalogRequest {
        catalog::CatalogRequest {
            after: *after,
            max_age_secs: max_age.as_secs(),
            limit,
            since: None,
        }
    }

    /// A request by position, from `since` on.
    fn by_position(
        since: catalog::Position,
        max_age: Duration,
        limit: u32,
    ) -> catalog::CatalogRequest {
        catalog::CatalogRequest {
            after: catalog::Cursor::default(),
            max_age_secs: max_age.as_secs(),
            limit,
            since: Some(since),
        }
    }

    fn actions_of(catalog: &catalog::Catalog) -> Vec<ActionId> {
        catalog.entries.iter().map(|entry| entry.action).collect()
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
        let first = order.catalog_at(&by_time(&start, day, 2), at).unwrap();
        let listed: Vec<ActionId> = first.entries.iter().map(|entry| entry.action).collect();
        assert_eq!(listed, [action(1), action(2)]);
        assert_eq!(first.entries[1].size, 2);
        assert!(first.more);
        let rest = order
            .catalog_at(&by_time(&first.entries[1].cursor(), day, 10), at)
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
            .catalog_at(&by_time(&start, Duration::from_secs(25), 10), at)
            .unwrap();
        let listed: Vec<ActionId> = young.entries.iter().map(|entry| entry.action).collect();
        assert_eq!(listed, [action(5), action(6)]);
        // A cursor older than the window starts at the window.
        let old_cursor = order
            .catalog_at(
                &by_time(&first.entries[0].cursor(), Duration::from_secs(25), 10),
                at,
            )
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
            .for_each(|mtime| *mtime = UNIX_EPOCH);
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

    /// Removed entries give their slots to new ones, and every view of the
    /// index (the table, the put order, hints, catalogs, the shards'
    /// listings) agrees with what is left.
    #[test]
    fn slots_are_reused_and_every_view_agrees() {
        let order = PutOrder::new(only_local());
        let action = |n: u32| {
            let mut bytes = [n as u8; 32];
            bytes[1..5].copy_from_slice(&n.to_be_bytes());
            ActionId::from_bytes(bytes)
        };
        let meta = |n: u32| Meta {
            time: 1_000 + u64::from(n),
            size: u64::from(n),
            built_here: !n.is_multiple_of(3),
        };
        {
            let mut index = order.index.lock().unwrap();
            for n in 0..100 {
                index.set(action(n), Some(meta(n)));
            }
            index.set(action(100), None); // in the store, not served
            for n in (0..100).step_by(2) {
                index.remove(&action(n));
            }
            for n in 200..250 {
                index.set(action(n), Some(meta(n)));
            }
            assert_eq!(index.slots.len(), 101, "freed slots were taken first");
            assert_eq!(index.served, 100);
            assert_eq!(index.order.len(), 100);
            assert!(index.slot_of(&action(4)).is_none());
            assert_eq!(index.served(&action(5)).unwrap().1, meta(5));
            assert!(index.slot_of(&action(100)).is_some());
            assert!(index.served(&action(100)).is_none());
        }
        order.ready.store(true, Ordering::Release);
        let odd: Vec<ActionId> = (1..100).step_by(2).map(action).collect();
        assert_eq!(order.following(&action(1), 3), odd[1..4]);
        let forever = Duration::from_secs(u64::MAX / 4);
        let at = UNIX_EPOCH + Duration::from_secs(10);
        let catalog = order
            .catalog_at(&by_time(&catalog::Cursor::default(), forever, 1000), at)
            .unwrap();
        let built_here: Vec<ActionId> = (1..100)
            .step_by(2)
            .chain(200..250)
            .filter(|n: &u32| !n.is_multiple_of(3))
            .map(action)
            .collect();
        assert_eq!(actions_of(&catalog), built_here);
        let catalog = order
            .catalog_at(&by_position(catalog::Position::START, forever, 1000), at)
            .unwrap();
        assert_eq!(actions_of(&catalog), built_here);
        assert_eq!(
            order.index.lock().unwrap().listing.by_seq.len(),
            built_here.len()
        );
        let known = order.known_in(&["01".to_owned(), "64".to_owned(), "zz".to_owned()]);
        assert_eq!(known.len(), 2, "{:?}", known.keys());
        assert_eq!(known["01"], HashSet::from([action(1)]));
        assert_eq!(known["64"], HashSet::from([action(100)]));
    }

    /// A catalog cursor whose entry was trimmed since goes on after its
    /// put time.
    #[test]
    fn a_cursor_whose_entry_is_gone_goes_on_after_its_time() {
        let order = PutOrder::new(only_local());
        let meta = |time| Meta {
            time,
            size: 1,
            built_here: true,
        };
        {
            let mut index = order.index.lock().unwrap();
            for n in 1..=3 {
                index.set(action(n), Some(meta(u64::from(n) * 10)));
            }
            index.remove(&action(2));
        }
        order.ready.store(true, Ordering::Release);
        let cursor = catalog::Cursor {
            time_unix_nanos: 20,
            action: Some(action(2)),
        };
        let next = order
            .catalog_at(
                &by_time(&cursor, Duration::from_secs(60), 10),
                UNIX_EPOCH + Duration::from_secs(1),
            )
            .unwrap();
        let listed: Vec<ActionId> = next.entries.iter().map(|e| e.action).collect();
        assert_eq!(listed, [action(3)]);
    }

    /// A peer whose clock jumped a day ahead and was set right again puts
    /// its next entries before those of the jump. A catalog paged by put
    /// time never lists them to a requester that saw the jump's; paged by
    /// position, it lists each entry once, whatever its put time.
    #[test]
    fn positions_survive_a_clock_that_jumped_ahead_and_back() {
        let (_dir, store, now) = store();
        let day = Duration::from_secs(86_400);
        let put = |n: u8| store.put_bytes(&action(n), &[n; 4]).unwrap();
        now.store(100_000, Ordering::SeqCst);
        put(1);
        now.store(100_000 + day.as_secs(), Ordering::SeqCst);
        put(2);
        now.fetch_add(1, Ordering::SeqCst);
        put(3);
        let order = PutOrder::new(only_local());
        order.refresh(store.actions_dir());
        // The clock is set right: the next puts come before the jump's.
        now.store(100_010, Ordering::SeqCst);
        for n in [4, 5] {
            now.fetch_add(1, Ordering::SeqCst);
            put(n);
            order.index.lock().unwrap().shards.clear();
            order.refresh(store.actions_dir());
        }

        let at = UNIX_EPOCH + Duration::from_secs(100_020);
        let first = order
            .catalog_at(&by_position(catalog::Position::START, day, 3), at)
            .unwrap();
        assert_eq!(actions_of(&first), [action(1), action(2), action(3)]);
        let next = first.next.expect("a position to go on from");
        let rest = order.catalog_at(&by_position(next, day, 10), at).unwrap();
        assert_eq!(actions_of(&rest), [action(4), action(5)]);
        assert!(!rest.more);
        let end = rest.next.unwrap();
        assert!(
            order
                .catalog_at(&by_position(end, day, 10), at)
                .unwrap()
                .entries
                .is_empty(),
            "each entry once"
        );
        // By put time (what an older peer asks), 4 and 5 sort before the
        // last entry seen, and are never listed after it.
        let after_jump = first.entries[2].cursor();
        let by_time = order
            .catalog_at(&by_time(&after_jump, day, 10), at)
            .unwrap();
        assert!(by_time.entries.is_empty(), "{by_time:?}");
        assert_eq!(by_time.next, None, "no position for an older peer");

        // A position of another run (the peer restarted) starts over.
        let stale = catalog::Position {
            epoch: end.epoch.wrapping_add(1).max(1),
            seq: end.seq,
        };
        let again = order.catalog_at(&by_position(stale, day, 10), at).unwrap();
        assert_eq!(again.entries.len(), 5);
    }

    /// Entries older than the window are passed over, and the position
    /// still moves past them; one answer looks at no more than
    /// [`CATALOG_SCAN`] of them.
    #[test]
    fn positions_move_past_entries_older_than_the_window() {
        let order = PutOrder::new(only_local());
        let meta = |time| Meta {
            time,
            size: 1,
            built_here: true,
        };
        let action = |n: u32| {
            let mut bytes = [9; 32];
            bytes[..4].copy_from_slice(&n.to_be_bytes());
            ActionId::from_bytes(bytes)
        };
        let old = CATALOG_SCAN as u32 + 5;
        {
            let mut index = order.index.lock().unwrap();
            for n in 0..old {
                index.set(action(n), Some(meta(1)));
            }
            index.set(action(old), Some(meta(50_000_000_000)));
        }
        order.ready.store(true, Ordering::Release);
        let at = UNIX_EPOCH + Duration::from_secs(60);
        let window = Duration::from_secs(30);
        let first = order
            .catalog_at(&by_position(catalog::Position::START, window, 10), at)
            .unwrap();
        assert!(first.entries.is_empty());
        assert!(first.more, "looked at as many as it may");
        assert_eq!(first.next.unwrap().seq, CATALOG_SCAN as u64);
        let rest = order
            .catalog_at(&by_position(first.next.unwrap(), window, 10), at)
            .unwrap();
        assert_eq!(actions_of(&rest), [action(old)]);
        assert!(!rest.more);
    }

    /// An entry file in another action's shard directory is not an entry:
    /// lookups would never find it, so it is neither hinted nor listed.
    #[test]
    fn entries_in_the_wrong_shard_are_not_indexed() {
        let (_dir, store, _) = store();
        store.put_bytes(&action(1), b"one").unwrap();
        let right = store.entry_path(&action(1));
        let wrong_shard = store.actions_dir().join("zz");
        fs::create_dir_all(&wrong_shard).unwrap();
        fs::copy(&right, wrong_shard.join(action(2).to_hex())).unwrap();
        // action(3)'s name in action(1)'s shard.
        assert_ne!(shard_of(&action(1)), shard_of(&action(3)));
        fs::copy(&right, right.with_file_name(action(3).to_hex())).unwrap();
        let order = PutOrder::new(only_local());
        order.refresh(store.actions_dir());
        let index = order.index.lock().unwrap();
        assert_eq!((index.served, index.slots.len()), (1, 1));
        assert!(index.served(&action(1)).is_some());
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
            index.set(action(n), Some(meta));
        }
        let epoch = index.log.epoch();
        // Half gone: kept as it is.
        for n in 0..total / 2 {
            index.remove(&action(n));
        }
        assert!(!index.compact());
        assert_eq!(index.log.len(), total as usize);
        // Most gone: a new log of what is left, in put order.
        for n in total / 2..total - 10 {
            index.remove(&action(n));
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
