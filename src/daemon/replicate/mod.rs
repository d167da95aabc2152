//! Replication: fetching what coworkers' builds store, in the background,
//! so that the next build here finds it local (`[share] replicate`).
//!
//! On demand, a build from a warm peer still waits on the network for
//! every entry read-ahead has not brought yet; fetching all of a peer's
//! `go build std` with no build running takes longer than a warm local
//! build. Only having the entries before the build starts beats that.
//!
//! For each replicated peer that is connected, the daemon reads the peer's
//! catalog (`warren_p2p::catalog`: what it built itself, in the order it
//! stored it, within `replicate-window` by the peer's clock) from a
//! position on (the peer's own numbering, so that a peer clock set back
//! loses nothing), and fetches the entries it lacks with
//! `Client::replicate`: from that peer, in batches, through the same
//! verified sink as any fetched body, with the same provenance (so removing
//! the peer purges them), and none bigger than its catalog listed. It
//! learns of new entries when the peer's summary grows, and looks anyway
//! every [`REVISIT`].
//!
//! Budgets, checked before each fetch with the sizes the catalog listed
//! (see [`budget`]):
//! - live lookups come first: while a helper asked the daemon within
//!   [`YIELD_FOR`], replication waits (that build's lookups and read-ahead
//!   have the link), and a lookup for an entry being replicated joins it;
//! - bytes on disk: replication stops adding once peers' entries in the
//!   store take `replicate-max-size`, or once the store would come within
//!   [`budget::HEADROOM_PERCENT`] of `max-size` (so it never makes a trim
//!   for room remove this machine's own entries). An entry that would pass
//!   either is skipped, and counted as such. Once a count of the store
//!   finds room for the smallest of them (a trim, an entry removed), the
//!   catalog is read again from the first one skipped;
//! - bandwidth: at most `replicate-rate` bytes a second, counted as they
//!   cross the link (headers and refused bodies too; what landed, if that
//!   is more, as compressed bodies are), paced after each batch, and each
//!   batch at most a quarter second's worth by the sizes listed (which no
//!   body may exceed).
//!
//! Linked executables (test binaries, `go run` binaries) that the catalog
//! marks, bigger than `read-ahead-executables-max`, are passed over: they
//! are big and seldom what the next build asks for, and a lookup still
//! fetches one on demand. An older peer marks none, and its catalog is
//! replicated whole, as before.
//!
//! With agreement on, replication is off ([`off_because`]): it takes one
//! peer's word for every entry, which agreement never stores, so every
//! body would be fetched only to be thrown away.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warren_p2p::catalog::{CatalogEntry, CatalogRequest, Cursor, Position};
use warren_p2p::{Client, PeerId};

use crate::config::{Replicate, Share};
use crate::ipc::status::{PeerReplication, PeerStatus};
use crate::store::{DiskStore, Source};

pub(crate) mod budget;

use self::budget::{Budget, Full};

/// Replication waits while a helper asked the daemon this recently.
pub(crate) const YIELD_FOR: Duration = Duration::from_millis(300);
/// How often an idle replicator looks at its peers.
const TICK: Duration = Duration::from_millis(250);
/// A peer's catalog is read again at least this often.
const REVISIT: Duration = Duration::from_secs(10);
/// After a catalog request failed, wait this long before asking again.
const RETRY: Duration = Duration::from_secs(30);
/// Entries asked for per catalog request.
const CATALOG_PAGE: u32 = 1024;
/// Most entries queued per peer; the catalog is read on when it drains.
const MAX_QUEUED: usize = 50_000;
/// Most entries in one `Client::replicate` call.
const BATCH: usize = 32;
/// How often the store is counted again (lookups, `go`'s puts and trims
/// change it too).
const RECOUNT: Duration = Duration::from_secs(60);

/// The settings, from `[share]` (and the store's `max-size`).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `replicate-max-size`.
    pub max_size: u64,
    pub rate: u64,
    pub window: Duration,
    /// The store's `max-size`, less whose headroom replication fills.
    pub store_max_size: u64,
    /// `read-ahead-executables-max`: linked executables the catalog lists
    /// bigger than this are not replicated.
    pub executables_max: u64,
}

/// Why replication is off although `replicate` names peers, if it is:
/// with agreement on, a replicated body (one peer's word) would never be
/// stored, so none is fetched.
pub(crate) fn off_because(share: &Share) -> Option<&'static str> {
    (share.agreement && share.replicate != Replicate::None).then_some("agreement is on")
}

/// When a helper last asked the daemon for something.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// A helper asked now.
    pub(crate) fn lookup(&self) {
        let ms = self.start.elapsed().as_millis() as u64 + 1;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn recent(&self, within: Duration) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        last != 0
            && (self.start.elapsed().as_millis() as u64).saturating_sub(last)
                < within.as_millis() as u64
    }
}

/// Where to read a peer's catalog from again to see an entry once more:
/// the position its page was asked from (servers that number entries),
/// and its put time (older servers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resume {
    position: Position,
    cursor: Cursor,
}

/// An entry of a peer's catalog waiting to be fetched.
#[derive(Debug, Clone, Copy)]
struct Queued {
    entry: CatalogEntry,
    from: Resume,
}

/// What the replicator keeps per peer.
#[derive(Debug)]
struct Peer {
    /// Where its catalog continues: by its numbering, and, for an older
    /// peer that does not number, by put time.
    position: Position,
    cursor: Cursor,
    queue: VecDeque<Queued>,
    more: bool,
    /// The peer's summary size when its catalog was last read.
    summary_seen: Option<u64>,
    next_read: Option<Instant>,
    /// Entries skipped for a budget, to look at again once it has room.
    skipped: Option<Skipped>,
    shown: PeerReplication,
}

impl Default for Peer {
    fn default() -> Self {
        Self {
            position: Position::START,
            cursor: Cursor::default(),
            queue: VecDeque::new(),
            more: false,
            summary_seen: None,
            next_read: None,
            skipped: None,
            shown: PeerReplication::default(),
        }
    }
}

/// Where the first entry skipped for a budget is in a peer's catalog, and
/// the smallest size skipped.
#[derive(Debug, Clone, Copy)]
struct Skipped {
    from: Resume,
    smallest: u64,
}

impl Peer {
    /// Counts `queued` as left out because `full`.
    fn skip(&mut self, queued: &Queued, full: Full) {
        let size = queued.entry.size;
        self.skipped = Some(match self.skipped {
            // The first skipped comes first in the catalog's order.
            Some(skipped) => Skipped {
                from: skipped.from,
                smallest: skipped.smallest.min(size),
            },
            None => Skipped {
                from: queued.from,
                smallest: size,
            },
        });
        let (count, bytes) = match full {
            Full::Peers => (
                &mut self.shown.skipped_for_budget,
                &mut self.shown.skipped_bytes,
            ),
            Full::Store => (
                &mut self.shown.skipped_for_room,
                &mut self.shown.skipped_room_bytes,
            ),
        };
        *count += 1;
        *bytes += size;
    }

    /// Once the catalog read so far is done and `budget` has room for the
    /// smallest entry skipped, goes back to the first one skipped (those
    /// fetched meanwhile, or held, are passed over again); whether it did.
    fn rewind_if_room(&mut self, budget: &Budget) -> bool {
        let Some(skipped) = self.skipped else {
            return false;
        };
        if !self.queue.is_empty() || self.more || !budget.fits(skipped.smallest) {
            return false;
        }
        self.position = skipped.from.position;
        self.cursor = skipped.from.cursor;
        self.skipped = None;
        self.shown.skipped_for_budget = 0;
        self.shown.skipped_bytes = 0;
        self.shown.skipped_for_room = 0;
        self.shown.skipped_room_bytes = 0;
        self.next_read = None;
        true
    }
}

/// The replicator's state, shared with the daemon's status.
#[derive(Debug, Default)]
pub(crate) struct State {
    peers: Mutex<HashMap<PeerId, Peer>>,
}

impl State {
    /// Each peer's status, with its replication state if it is replicated.
    pub(crate) fn statuses(&self, infos: &[warren_p2p::PeerInfo]) -> Vec<PeerStatus> {
        let mut replication = self.snapshot();
        infos
            .iter()
            .map(|info| PeerStatus {
                replication: replication.remove(&info.peer),
                ..PeerStatus::from(info)
            })
            .collect()
    }

    /// Each replicated peer's state.
    pub(crate) fn snapshot(&self) -> HashMap<PeerId, PeerReplication> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .map(|(id, peer)| {
                let mut shown = peer.shown.clone();
                shown.behind = peer.queue.len() as u64;
                shown.more = peer.more;
                (*id, shown)
            })
            .collect()
    }
}

/// Which allowlisted peers `replicate` names: the peers pulled from,
/// all of them or those named (by name or peer ID).
pub(crate) fn chosen(
    replicate: &Replicate,
    allowlist: &crate::config::trust::Allowlist,
) -> HashSet<PeerId> {
    let pulled = allowlist.sharing().pull;
    match replicate {
        Replicate::None => HashSet::new(),
        Replicate::All => pulled,
        Replicate::Peers(names) => pulled
            .into_iter()
            .filter(|id| {
                let text = id.to_string();
                let name = allowlist.name_of(id);
                names
                    .iter()
                    .any(|wanted| *wanted == text || Some(wanted.as_str()) == name)
            })
            .collect(),
    }
}

/// The names in `replicate` that name no peer pulled from, for a warning.
pub(crate) fn unknown(
    replicate: &Replicate,
    allowlist: &crate::config::trust::Allowlist,
) -> Vec<String> {
    let Replicate::Peers(names) = replicate else {
        return Vec::new();
    };
    let found = chosen(replicate, allowlist);
    names
        .iter()
        .filter(|name| {
            !found
                .iter()
                .any(|id| id.to_string() == **name || allowlist.name_of(id) == Some(name.as_str()))
        })
        .cloned()
        .collect()
}

/// The replicator; [`run`](Replicator::run) it as a task.
pub(crate) struct Replicator {
    pub client: Client,
    pub store: Arc<DiskStore>,
    pub settings: Settings,
    /// The peers `replicate` names, as the allowlist stands.
    pub targets: Arc<Mutex<HashSet<PeerId>>>,
    pub activity: Arc<Activity>,
    pub state: Arc<State>,
}

impl Replicator {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut budget = Budget::new(self.settings.max_size, self.settings.store_max_size);
        let mut turn = 0usize;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            // Counting walks the store: only when replication has work.
            if budget.due() && (budget.counted.is_none() || self.has_work()) {
                let store = self.store.clone();
                if let Ok(Ok((peers, all))) =
                    tokio::task::spawn_blocking(move || count(&store)).await
                {
                    budget.recounted(peers, all);
                }
            }
            let worked = self.step(&mut budget, &mut turn).await;
            if !worked {
                tokio::select! {
                    () = tokio::time::sleep(TICK) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Reads catalogs that are due and fetches one batch; whether there
    /// was anything to do.
    async fn step(&self, budget: &mut Budget, turn: &mut usize) -> bool {
        let targets = self
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let infos = self.client.peers().await;
        let connected: Vec<(PeerId, Option<u64>)> = infos
            .iter()
            .filter(|info| info.connected && targets.contains(&info.peer))
            .map(|info| (info.peer, info.summary_entries))
            .collect();
        {
            let mut peers = self.lock();
            peers.retain(|id, _| targets.contains(id));
            for id in &targets {
                let peer = peers.entry(*id).or_default();
                if peer.rewind_if_room(budget) {
                    tracing::debug!(%id, "the replication budget has room: skipped entries again");
                }
            }
        }
        for (peer, summary) in &connected {
            if self.catalog_due(peer, *summary) {
                self.read_catalog(*peer, *summary).await;
            }
        }
        // One batch, from the connected peers in turn.
        let busy: Vec<PeerId> = {
            let peers = self.lock();
            connected
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| peers.get(id).is_some_and(|peer| !peer.queue.is_empty()))
                .collect()
        };
        if busy.is_empty() {
            return false;
        }
        *turn = turn.wrapping_add(1);
        let peer = busy[*turn % busy.len()];
        while self.activity.recent(YIELD_FOR) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.fetch_batch(peer, budget).await;
        true
    }

    /// Whether any peer has entries queued, or skipped for a budget
    /// (which only a count can find room for).
    fn has_work(&self) -> bool {
        self.lock()
            .values()
            .any(|peer| !peer.queue.is_empty() || peer.skipped.is_some())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Peer>> {
        self.state.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn catalog_due(&self, peer: &PeerId, summary: Option<u64>) -> bool {
        let peers = self.lock();
        let Some(state) = peers.get(peer) else {
            return false;
        };
        if state.queue.len() >= MAX_QUEUED {
            return false;
        }
        let now = Instant::now();
        match state.next_read {
            None => true,
            Some(at) if at <= now => true,
            // Retrying after a failure: not before its time.
            Some(_) if state.shown.note.is_some() => false,
            Some(_) => state.more || (summary.is_some() && summary != state.summary_seen),
        }
    }

    async fn read_catalog(&self, peer: PeerId, summary: Option<u64>) {
        let from = self.lock().get(&peer).map(|state| Resume {
            position: state.position,
            cursor: state.cursor,
        });
        let Some(from) = from else { return };
        let request = CatalogRequest {
            after: from.cursor,
            max_age_secs: self.settings.window.as_secs(),
            limit: CATALOG_PAGE,
            since: Some(from.position),
        };
        let answer = self.client.catalog(peer, request).await;
        let mut peers = self.lock();
        let Some(state) = peers.get_mut(&peer) else {
            return;
        };
        match answer {
            Ok(catalog) => {
                tracing::debug!(%peer, entries = catalog.entries.len(), more = catalog.more, "catalog");
                if let Some(last) = catalog.entries.last() {
                    state.cursor = last.cursor();
                }
                if let Some(next) = catalog.next {
                    state.position = next;
                }
                state
                    .queue
                    .extend(catalog.entries.into_iter().map(|entry| Queued {
                        entry,
                        from: Resume {
                            position: from.position,
                            // From its put time on, itself included (a cursor
                            // without an action starts at its time).
                            cursor: Cursor {
                                time_unix_nanos: entry.time_unix_nanos,
                                action: None,
                            },
                        },
                    }));
                state.more = catalog.more;
                state.summary_seen = summary;
                state.shown.note = None;
                state.next_read = Some(Instant::now() + REVISIT);
            }
            Err(error) => {
                tracing::debug!(%peer, "cannot read its catalog: {error}");
                state.shown.note = Some(format!("no catalog: {error}"));
                state.next_read = Some(Instant::now() + RETRY);
            }
        }
    }

    /// Fetches the next entries of `peer`'s queue that are missing here and
    /// within the budget, at most [`BATCH`] and a quarter second's worth of
    /// the rate by the sizes listed, then waits out the rest of the rate's
    /// time for what crossed the link.
    async fn fetch_batch(&self, peer: PeerId, budget: &mut Budget) {
        let quarter = (self.settings.rate / 4).max(1);
        let mut batch: Vec<CatalogEntry> = Vec::new();
        let mut listed = 0u64;
        let mut skipped = (0u64, 0u64);
        let mut executables = (0u64, 0u64);
        {
            let mut peers = self.lock();
            let Some(state) = peers.get_mut(&peer) else {
                return;
            };
            while batch.len() < BATCH && (batch.is_empty() || listed < quarter) {
                let Some(queued) = state.queue.pop_front() else {
                    break;
                };
                let entry = queued.entry;
                if self.store.holds(&entry.action) {
                    continue;
                }
                if entry.executable && entry.size > self.settings.executables_max {
                    executables.0 += 1;
                    executables.1 += entry.size;
                    continue;
                }
                if let Err(full) = budget.take(entry.size) {
                    state.skip(&queued, full);
                    skipped.0 += 1;
                    skipped.1 += entry.size;
                    continue;
                }
                listed += entry.size;
                batch.push(entry);
            }
        }
        if skipped.0 > 0 {
            tracing::debug!(%peer, entries = skipped.0, bytes = skipped.1, "skipped for the replication budgets");
        }
        if executables.0 > 0 {
            tracing::debug!(%peer, entries = executables.0, bytes = executables.1, "passed over big executables");
        }
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let before = self.wire_in(&peer).await;
        let results = self.client.replicate(peer, batch.clone()).await;
        let (mut entries, mut landed) = (0u64, 0u64);
        for (entry, result) in batch.iter().zip(&results) {
            match result {
                Some(fetched) => {
                    entries += 1;
                    landed += fetched.size;
                    // What landed counts, not what the catalog said.
                    budget.correct(entry.size, fetched.size);
                }
                // Not fetched (stored meanwhile, gone, refused, or
                // unanswered): its reservation goes back.
                None => budget.release(entry.size),
            }
        }
        if let Some(state) = self.lock().get_mut(&peer) {
            state.shown.entries += entries;
            state.shown.bytes += landed;
        }
        // What crossed the link from the peer meanwhile (a lookup's answer
        // too, at worst slowing replication), or what landed if that is
        // more (compressed bodies) or the peer is gone, with its counters.
        let arrived = match (before, self.wire_in(&peer).await) {
            (Some(before), Some(after)) => after.saturating_sub(before).max(landed),
            _ => landed,
        };
        tokio::time::sleep(budget::pause(
            arrived,
            self.settings.rate,
            started.elapsed(),
        ))
        .await;
    }

    /// Bytes of `peer`'s answers that have crossed the link so far.
    async fn wire_in(&self, peer: &PeerId) -> Option<u64> {
        let infos = self.client.peers().await;
        let info = infos.iter().find(|info| info.peer == *peer)?;
        Some(info.counters.wire_in)
    }
}

/// Bytes of entries in the store that came from peers, and of the whole
/// store as a trim counts it.
fn count(store: &DiskStore) -> Result<(u64, u64), crate::store::Error> {
    let peers = store
        .sources()?
        .iter()
        .filter(|(source, _)| matches!(source, Source::Peer(_)))
        .map(|(_, usage)| usage.bytes)
        .sum();
    Ok((peers, store.usage()?.bytes))
}

#[cfg(test)]
mod peer_tests;
#[cfg(test)]
mod tests;
