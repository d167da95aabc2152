//! Replication against real nodes on loopback: ours (a store, its adapter
//! and a replicator) and a peer whose store is a real one too, honest or
//! with a catalog that lies. No mDNS; every address is 127.0.0.1.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use warren_p2p::catalog::{Catalog, CatalogRequest};
use warren_p2p::identity::Keypair;
use warren_p2p::{
    Bodies, BodySink, Client, Event, Hints, Multiaddr, NodeConfig, OutputId, PeerId, Served,
    Summaries, SummaryChunk,
};

use super::{Activity, Replicator, Settings, State};
use crate::config::trust::SharingState;
use crate::daemon::node_store::{Sharing, StoreAdapter};
use crate::ids::ActionId;
use crate::ipc::status::PeerReplication;
use crate::store::{DiskStore, TrimPolicy};

const DAY: Duration = Duration::from_secs(24 * 3600);
/// How long a test waits for something before it fails.
const WAIT: Duration = Duration::from_secs(15);
/// Bodies of the big entries: under the 1 MiB asked for inline.
const MB: usize = 1_000_000;

/// A store whose clock the test sets (it starts at the real time).
struct Clocked {
    _dir: tempfile::TempDir,
    store: Arc<DiskStore>,
    now: Arc<Mutex<SystemTime>>,
}

impl Clocked {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(Mutex::new(SystemTime::now()));
        let clock = {
            let now = now.clone();
            Arc::new(move || *now.lock().unwrap())
        };
        let store = Arc::new(DiskStore::open_with_clock(dir.path(), clock).unwrap());
        Self {
            _dir: dir,
            store,
            now,
        }
    }

    fn set(&self, now: SystemTime) {
        *self.now.lock().unwrap() = now;
    }
}

fn action(set: u8, n: u16) -> ActionId {
    let mut bytes = [set; 32];
    bytes[..2].copy_from_slice(&n.to_be_bytes());
    ActionId::from_bytes(bytes)
}

/// A body of `len` bytes, different for each `seed`.
fn body(seed: u32, len: usize) -> Vec<u8> {
    let mut state = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sets every file of the store at `root` as last used `ago`.
fn age_files(root: &Path, ago: Duration) {
    let at = SystemTime::now() - ago;
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            age_files(&path, ago);
        } else if kind.is_file() {
            std::fs::File::open(&path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
    }
}

/// A peer's catalog that says every entry is 1 byte; everything else is
/// its store's, honest.
struct Understating(StoreAdapter);

impl Bodies for Understating {
    fn open(&self, action: &ActionId) -> std::io::Result<Option<Served>> {
        self.0.open(action)
    }

    fn begin(
        &self,
        action: &ActionId,
        output: &OutputId,
        size: u64,
        from: &PeerId,
    ) -> std::io::Result<Box<dyn BodySink>> {
        self.0.begin(action, output, size, from)
    }

    fn contains(&self, action: &ActionId) -> bool {
        self.0.contains(action)
    }
}

impl Hints for Understating {
    fn following(&self, action: &ActionId, limit: usize) -> Vec<warren_p2p::Hint> {
        self.0.following(action, limit)
    }

    fn catalog(&self, request: &CatalogRequest) -> Option<Catalog> {
        let mut catalog = self.0.catalog(request)?;
        for entry in &mut catalog.entries {
            entry.size = 1;
        }
        Some(catalog)
    }
}

impl Summaries for Understating {
    fn summary(&self, epoch: u64, since: u64, limit: usize) -> Option<SummaryChunk> {
        self.0.summary(epoch, since, limit)
    }

    fn summary_updates(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.0.summary_updates()
    }
}

/// The trim policy of a store of `max_size` bytes, whose entries are
/// never too old to keep.
fn policy(max_size: u64) -> TrimPolicy {
    TrimPolicy {
        max_size,
        max_unused: Duration::from_secs(30 * 24 * 3600),
    }
}

/// The adapter a daemon gives its node, pulling from `pull`, for a store
/// of `max_size` bytes.
fn adapter(store: &Arc<DiskStore>, pull: &[PeerId], max_size: u64) -> StoreAdapter {
    let sharing = Sharing::new(SharingState {
        pull: pull.iter().copied().collect(),
        ..SharingState::default()
    });
    StoreAdapter::new(
        store.clone(),
        sharing,
        policy(max_size),
        false,
        Arc::default(),
    )
    .unwrap()
    .with_floor(crate::daemon::node_store::tests::roomy_disk())
}

/// A node on loopback that allows `other`; its client and address.
async fn node(
    keypair: &Keypair,
    other: PeerId,
    store: Arc<dyn warren_p2p::Store>,
) -> (Client, Multiaddr) {
    let config = NodeConfig::new(keypair.clone())
        .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
        .with_allowlist(HashSet::from([other]))
        .with_mdns(None)
        .with_lookup_deadline(Duration::from_secs(1));
    let peer = config.peer_id();
    let (client, mut events, event_loop) = warren_p2p::new(config, store).unwrap();
    tokio::spawn(event_loop.run());
    let address = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(Event::Listening(address)) => return address,
                Some(_) => {}
                None => panic!("the node stopped"),
            }
        }
    })
    .await
    .expect("the node listens");
    // Events are not read from here on: the node drops them.
    drop(events);
    (client, address.with_p2p(peer).unwrap())
}

/// Ours, replicating `theirs`: a store with the adapter a daemon gives its
/// node, and the replicator, started once connected.
struct Replicating {
    client: Client,
    state: Arc<State>,
    theirs: PeerId,
    shutdown: CancellationToken,
}

impl Replicating {
    async fn start(
        store: &Arc<DiskStore>,
        theirs: (&Keypair, Arc<dyn warren_p2p::Store>),
        settings: Settings,
    ) -> (Self, Client) {
        let ours = Keypair::generate_ed25519();
        let (their_id, our_id) = (theirs.0.public().to_peer_id(), ours.public().to_peer_id());
        let (their_client, their_address) = node(theirs.0, our_id, theirs.1).await;
        let ours_adapter: Arc<dyn warren_p2p::Store> =
            Arc::new(adapter(store, &[their_id], settings.store_max_size));
        let (client, _) = node(&ours, their_id, ours_adapter).await;
        client.dial(their_address).await.unwrap();
        until("connected", || async {
            (client.peers().await.iter()).any(|info| info.peer == their_id && info.connected)
        })
        .await;
        let state = Arc::new(State::default());
        let shutdown = CancellationToken::new();
        let replicator = Replicator {
            client: client.clone(),
            store: store.clone(),
            settings,
            targets: Arc::new(Mutex::new(HashSet::from([their_id]))),
            activity: Arc::new(Activity::default()),
            state: state.clone(),
        };
        tokio::spawn(replicator.run(shutdown.clone()));
        let replicating = Self {
            client,
            state,
            theirs: their_id,
            shutdown,
        };
        (replicating, their_client)
    }

    fn shown(&self) -> PeerReplication {
        self.state
            .snapshot()
            .remove(&self.theirs)
            .unwrap_or_default()
    }

    /// Bytes of the peer's answers that crossed the link.
    async fn wire_in(&self) -> u64 {
        (self.client.peers().await.iter())
            .find(|info| info.peer == self.theirs)
            .map_or(0, |info| info.counters.wire_in)
    }
}

impl Drop for Replicating {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn until<F: Future<Output = bool>>(what: &str, condition: impl Fn() -> F) {
    let start = tokio::time::Instant::now();
    while !condition().await {
        assert!(start.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No `replicate-max-size` to speak of, a store of `max_size` bytes.
fn settings(rate: u64, max_size: u64) -> Settings {
    Settings {
        max_size: 1 << 30,
        rate,
        window: DAY,
        store_max_size: max_size,
        executables_max: 4 << 20,
    }
}

/// Six entries built here, 1 MB each, last used three hours ago (past
/// the trim grace). Their actions.
fn own_entries(store: &Arc<DiskStore>) -> Vec<ActionId> {
    let own: Vec<ActionId> = (0..6).map(|n| action(1, n)).collect();
    for (n, own) in own.iter().enumerate() {
        store.put_bytes(own, &body(1000 + n as u32, MB)).unwrap();
    }
    age_files(store.root(), Duration::from_secs(3 * 3600));
    own
}

/// A build here puts one more entry and the store is trimmed to its
/// `max_size`, as a trim for room, or the hourly one, does; the entries
/// of `own` still held.
fn after_a_build_and_a_trim(store: &Arc<DiskStore>, own: &[ActionId], max_size: u64) -> usize {
    store.put_bytes(&action(1, 99), &body(1099, MB)).unwrap();
    store.trim(policy(max_size), true).unwrap();
    own.iter().filter(|own| store.holds(own)).count()
}

/// The attack: a peer's catalog lists every entry as 1 byte while its
/// bodies are 1 MB each, so that budgets and pacing planned from the
/// catalog let everything through at once (SECURITY.md, "Bounds on what an
/// allowlisted peer can make your daemon do", Replication). What crosses
/// the link stays within `replicate-rate` over a window, with a margin,
/// and the store, a fifth full of this machine's own entries, is not
/// filled up so that a trim must evict them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_that_understates_sizes_gets_no_more_than_the_rate() {
    let ours = Clocked::new();
    let own = own_entries(&ours.store);
    let theirs = Clocked::new();
    for n in 0..40 {
        theirs
            .store
            .put_bytes(&action(2, n), &body(u32::from(n), MB))
            .unwrap();
    }
    let their_key = Keypair::generate_ed25519();
    let max_size = 30 * MB as u64;
    let lying: Arc<dyn warren_p2p::Store> =
        Arc::new(Understating(adapter(&theirs.store, &[], max_size)));
    let rate = 1 << 20;
    let (replicating, _their_client) =
        Replicating::start(&ours.store, (&their_key, lying), settings(rate, max_size)).await;

    let window = Duration::from_secs(4);
    let started = tokio::time::Instant::now();
    until("the catalog is read", || async {
        let shown = replicating.shown();
        shown.behind + shown.entries > 0 || replicating.wire_in().await > 0
    })
    .await;
    tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
    let seconds = started.elapsed().as_secs_f64();
    let arrived = replicating.wire_in().await;
    let allowed = (rate as f64 * seconds * 1.25) as u64;
    let kept = after_a_build_and_a_trim(&ours.store, &own, max_size);
    let shown = replicating.shown();
    assert!(
        arrived <= allowed,
        "{arrived} bytes arrived in {seconds:.1} s, over {rate} bytes/s ({allowed} with the \
         margin); {kept} of {} entries built here kept: {shown:?}",
        own.len()
    );
    assert_eq!(
        kept,
        own.len(),
        "entries built here were trimmed to make room: {shown:?}"
    );
}

/// Replication fills the store only up to 90% of `max-size`, and says
/// what it left out: a build here then fits, and trimming for room never
/// has to remove entries built here to make way for a peer's. (The store
/// is half full of entries built here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_stops_short_of_max_size() {
    let ours = Clocked::new();
    let own = own_entries(&ours.store);
    let theirs = Clocked::new();
    for n in 0..10 {
        theirs
            .store
            .put_bytes(&action(3, n), &body(100 + u32::from(n), MB))
            .unwrap();
    }
    let their_key = Keypair::generate_ed25519();
    let max_size = 12 * MB as u64;
    let honest: Arc<dyn warren_p2p::Store> = Arc::new(adapter(&theirs.store, &[], max_size));
    let (replicating, _their_client) = Replicating::start(
        &ours.store,
        (&their_key, honest),
        settings(64 << 20, max_size),
    )
    .await;
    until(
        "every entry of the catalog is fetched or skipped",
        || async {
            let shown = replicating.shown();
            shown.behind == 0 && !shown.more && shown.entries + shown.skipped_for_room == 10
        },
    )
    .await;
    let shown = replicating.shown();
    assert!(shown.entries > 0, "{shown:?}");
    let used = ours.store.usage().unwrap().bytes;
    assert!(
        used <= max_size / 10 * 9,
        "the store holds {used} bytes of its {max_size} max-size: {shown:?}"
    );
    assert!(
        shown
            .describe()
            .contains("skipped: the store is near max-size"),
        "{}",
        shown.describe()
    );
    assert_eq!(
        after_a_build_and_a_trim(&ours.store, &own, max_size),
        own.len(),
        "entries built here were trimmed to make room: {shown:?}"
    );
}

/// A peer whose clock jumped a day ahead, and was set right again, puts
/// its next entries at times before those it put in the meantime. They
/// are replicated all the same (a catalog continues from the peer's own
/// numbering of its entries, not from a put time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_put_after_a_peer_clock_is_set_back_still_replicate() {
    let ours = Clocked::new();
    let theirs = Clocked::new();
    let now = SystemTime::now();
    let put = |n: u16| {
        theirs
            .store
            .put_bytes(&action(4, n), &body(200 + u32::from(n), 100))
            .unwrap();
    };
    (0..3).for_each(put);
    theirs.set(now + DAY);
    (3..6).for_each(put);
    let their_key = Keypair::generate_ed25519();
    let max_size = 1 << 30;
    let honest: Arc<dyn warren_p2p::Store> = Arc::new(adapter(&theirs.store, &[], max_size));
    let (replicating, _their_client) = Replicating::start(
        &ours.store,
        (&their_key, honest),
        settings(64 << 20, max_size),
    )
    .await;
    let holds =
        |range: std::ops::Range<u16>| range.map(|n| action(4, n)).all(|a| ours.store.holds(&a));
    until(
        "the entries before and during the jump are here",
        || async { holds(0..6) },
    )
    .await;

    // The clock is set right: the next entries are put before the jump's.
    theirs.set(SystemTime::now());
    (6..9).for_each(put);
    until(
        "the entries put after the clock was set back are here",
        || async { holds(6..9) },
    )
    .await;
    until("replication counts all nine", || async {
        replicating.shown().entries == 9
    })
    .await;
}
