//! The index in memory, without IO: every entry the store's scans and
//! inotify told of, in put order, numbered for catalogs, and the summary
//! log; [`super::PutOrder`] feeds it and answers peers from it.
//!
//! An office of peers each holding a few hundred thousand entries must fit
//! in a daemon of tens of MiB, so each entry the index knows of is kept
//! once, in a 56-byte slot ([`Slot`]); the action table, the put order, the
//! catalog's listing and the shards refer to it by its 4-byte number, and a
//! shard's entries are the slots whose action it is named for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;
use std::time::SystemTime;

use hashbrown::HashTable;
use warren_p2p::{Hint, catalog, summary};

use crate::ids::ActionId;
use crate::store::layout;

use super::BURST_GAP;

/// A summary log shorter than this is never compacted (see
/// `Index::compact`): starting over costs every peer a full summary.
pub(super) const COMPACT_MIN: usize = 4096;
/// Most entries one catalog answer looks at, listed or passed over as
/// older than the window asked for: the index stays locked that long.
pub(super) const CATALOG_SCAN: usize = 65_536;

/// A slot's number: its place in [`Index::slots`].
pub(super) type SlotId = u32;

/// The index proper. Every entry of the store it has read is in one slot,
/// served or not (so that a rescan does not read it again).
#[derive(Default)]
pub(super) struct Index {
    pub(super) slots: Vec<Slot>,
    /// Slots given back by removed entries, taken first.
    free: Vec<SlotId>,
    /// Each slot in use, found by its action (hashed with [`Index::keys`]).
    by_action: HashTable<SlotId>,
    /// A per-process key, so that peers who pick the actions we replicate
    /// cannot pick the table's collisions.
    keys: RandomState,
    /// (put time in ns since the epoch, slot) of each served entry, in put
    /// order. Entries put in the same nanosecond are in slot order.
    pub(super) order: BTreeSet<(u64, SlotId)>,
    /// Served entries (those in `order`).
    pub(super) served: usize,
    /// Shard directory name → its mtime when last read.
    pub(super) shards: HashMap<String, SystemTime>,
    /// The summary log: action prefixes, in the order first indexed.
    pub(super) log: summary::Log,
    /// Entries built here, numbered, for catalogs.
    pub(super) listing: Listing,
}

/// Served entries built here, each under a number given as the index
/// learned of it (see the module docs): what catalogs page through.
pub(super) struct Listing {
    /// Drawn when the index is made, never 0 (which asks for the start).
    epoch: u64,
    /// The number the next entry gets; numbers start at 1.
    next: u64,
    pub(super) by_seq: BTreeMap<u64, SlotId>,
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
pub(super) struct Meta {
    /// Put time, in ns since the Unix epoch.
    pub(super) time: u64,
    pub(super) size: u64,
    /// Put by `go` here (not a re-shared peer's entry): what a catalog lists.
    pub(super) built_here: bool,
    /// Its body is a linked executable: hints and catalogs say so, for
    /// peers to leave big ones to a lookup.
    pub(super) executable: bool,
}

/// One entry the index knows of, in 56 bytes: its action, its [`Meta`] if
/// it is served (with the flags in the top bits of its size), and its
/// number in the [`Listing`] if it is listed (0 if not).
#[derive(Clone, Copy)]
pub(super) struct Slot {
    pub(super) action: ActionId,
    time: u64,
    bits: u64,
    seq: u64,
}

const SERVED: u64 = 1 << 63;
const BUILT_HERE: u64 = 1 << 62;
/// A free slot (see [`Index::free`]).
const FREE: u64 = 1 << 61;
const EXECUTABLE: u64 = 1 << 60;
/// Sizes up to 1 EiB.
const SIZE: u64 = EXECUTABLE - 1;

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
        let executable = if meta.executable { EXECUTABLE } else { 0 };
        Self {
            action,
            time: meta.time,
            bits: SERVED | built_here | executable | meta.size.min(SIZE),
            seq,
        }
    }

    pub(super) fn meta(&self) -> Option<Meta> {
        (self.bits & SERVED != 0).then_some(Meta {
            time: self.time,
            size: self.bits & SIZE,
            built_here: self.bits & BUILT_HERE != 0,
            executable: self.bits & EXECUTABLE != 0,
        })
    }

    pub(super) fn is_free(&self) -> bool {
        self.bits & FREE != 0
    }
}

/// The shard directory an action's entry belongs in.
pub(super) fn shard_of(action: &ActionId) -> u8 {
    layout::shard_of(action.as_bytes())
}

impl Index {
    /// Up to `limit` actions put right after `action`, in put order,
    /// without crossing a pause of more than [`BURST_GAP`], with the sizes
    /// of executables.
    pub(super) fn following(&self, action: &ActionId, limit: usize) -> Vec<Hint> {
        let Some((slot, meta)) = self.served(action) else {
            return Vec::new();
        };
        let gap = BURST_GAP.as_nanos() as u64;
        let mut last = meta.time;
        let mut next = Vec::new();
        for &(put, following) in self
            .order
            .range((Bound::Excluded((meta.time, slot)), Bound::Unbounded))
        {
            if next.len() == limit || put.saturating_sub(last) > gap {
                break;
            }
            let slot = &self.slots[following as usize];
            next.push(Hint {
                action: slot.action,
                executable: (slot.meta())
                    .filter(|meta| meta.executable)
                    .map(|meta| meta.size),
            });
            last = put;
        }
        next
    }

    /// Entries of the listing after `since` (from its start if `since` is
    /// of another epoch), passing over those put before `oldest`; the
    /// position to continue from says how far it looked.
    pub(super) fn listed_since(
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
                executable: meta.executable,
            });
        }
        listed
    }

    /// Entries built here in put order after `after` (as older peers
    /// page), from `oldest` on.
    pub(super) fn listed_after(
        &self,
        after: &catalog::Cursor,
        oldest: u64,
        limit: usize,
    ) -> catalog::Catalog {
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
                executable: meta.executable,
            });
        }
        listed
    }

    /// Numbers the listed entries again, in put order (after the first
    /// full scan, which reads them shard by shard).
    pub(super) fn renumber(&mut self) {
        self.listing.by_seq.clear();
        let in_order: Vec<SlotId> = self.order.iter().map(|&(_, slot)| slot).collect();
        for slot in in_order {
            let listed = self.slots[slot as usize]
                .meta()
                .is_some_and(|meta| meta.built_here);
            self.slots[slot as usize].seq = if listed { self.listing.push(slot) } else { 0 };
        }
    }

    pub(super) fn slot_of(&self, action: &ActionId) -> Option<SlotId> {
        let hash = self.keys.hash_one(action);
        let slots = &self.slots;
        self.by_action
            .find(hash, |&slot| slots[slot as usize].action == *action)
            .copied()
    }

    /// The slot and what is kept of `action`, if it is served.
    pub(super) fn served(&self, action: &ActionId) -> Option<(SlotId, Meta)> {
        let slot = self.slot_of(action)?;
        Some((slot, self.slots[slot as usize].meta()?))
    }

    /// Indexes `action` as served (`Some`, put at its time) or only known
    /// to be in the store (`None`), whatever it was before. An action
    /// newly served goes into the log.
    pub(super) fn set(&mut self, action: ActionId, meta: Option<Meta>) {
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
    pub(super) fn remove(&mut self, action: &ActionId) {
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
    pub(super) fn compact(&mut self) -> bool {
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
