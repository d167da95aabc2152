//! The store as the peer-to-peer node sees it ([`warren_p2p::Store`]).
//!
//! Serving opens an entry's body through [`DiskStore::get`]; a fetched body
//! goes through [`DiskStore::begin_object`] and [`ObjectWriter::finish`],
//! which compare its size and SHA-256 with what the peer announced, so
//! nothing a peer sends lands unverified, and records the peer as the
//! entry's source. Read-ahead hints and summaries come from the store's
//! [`PutOrder`] index.
//!
//! The node bounds the bytes of bodies on their way, counted as they
//! arrive (`warren_p2p`'s `NodeConfig::with_max_in_flight`, 1 GiB), so a
//! peer's claim of a huge body it never sends holds no room here.
//! Fetched bodies must leave the store's disk its floor of free space,
//! with the sizes of every body on its way counted: refused otherwise
//! (for the peer, not its fault), and told once in a while ([`Quiet`]).
//! Fetched bytes count against the store's `max-size`: a body that would
//! take the store past it is refused (for the peer, not its fault) and a
//! trim is started, which frees what was not used within the trim grace.
//! The daemon keeps its own count of the store's size, from a walk at
//! start and after each trim, plus what it stored since; `go`'s own puts
//! are counted at the next walk (at most [`RECOUNT`] apart while bodies
//! arrive).
//!
//! Trust is not transitive: only entries built here are served, hinted or
//! named in our summary, never one a peer sent us, unless [`Sharing`]
//! says that peer's entries are re-shared (a team's CI machine, say). A
//! peer that is no longer pulled from (removed, or made serve-only) gets
//! no more bodies into the store: its sinks refuse to commit. The check
//! and the commit hold [`Sharing`]'s state, so a reload that changes it
//! waits for a commit past its check, and the purge after it sees that
//! entry.
//!
//! With agreement on, the adapter also remembers what was built here
//! ([`Ledger`]), so that one peer's answer can be confirmed by an earlier
//! build of our own.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use warren_p2p::{BodySink, CommitError, PeerId, Served, SummaryChunk};

use crate::config::trust::SharingState;
use crate::daemon::consistency;
use crate::daemon::disk_floor::{BelowFloor, DiskFloor};
use crate::daemon::ledger::Ledger;
use crate::daemon::put_order::PutOrder;
use crate::daemon::quiet::Quiet;
use crate::ids::{ActionId, OutputId};
use crate::store::{self, DiskStore, Lookup, ObjectWriter, Source, TrimPolicy};

/// Whose entries are taken and whose are served on; replaced when the
/// allowlist changes.
#[derive(Debug, Default)]
pub(crate) struct Sharing {
    state: RwLock<SharingState>,
}

impl Sharing {
    pub(crate) fn new(state: SharingState) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::new(state),
        })
    }

    /// Replaces the state once no commit holds it ([`Sharing::while_pulled_from`]).
    pub(crate) fn set(&self, state: SharingState) {
        *self.state.write().expect("lock not poisoned") = state;
    }

    /// Whether an entry from `source` may be served to peers.
    pub(crate) fn serves(&self, source: &Source) -> bool {
        match source {
            Source::Local => true,
            Source::Peer(peer) => self
                .state
                .read()
                .expect("lock not poisoned")
                .reshare
                .contains(peer),
            Source::Unknown => false,
        }
    }

    /// Runs `commit` if `peer` is pulled from, holding the state while it
    /// runs: [`Sharing::set`] waits for a commit that passed this check,
    /// so a purge after `set` sees what it stored. `None` if not pulled
    /// from.
    fn while_pulled_from<T>(&self, peer: &PeerId, commit: impl FnOnce() -> T) -> Option<T> {
        let state = self.state.read().expect("lock not poisoned");
        state.pull.contains(peer).then(commit)
    }
}

/// The store as the p2p node sees it.
pub(crate) struct StoreAdapter {
    store: Arc<DiskStore>,
    order: Arc<PutOrder>,
    sharing: Arc<Sharing>,
    quota: Arc<Quota>,
    /// The sizes announced for the sinks open now: the disk floor counts
    /// them as already written (the node caps what actually arrives).
    claimed: Arc<AtomicU64>,
    /// Free space fetched bodies leave on the store's disk.
    floor: Arc<DiskFloor>,
    /// With agreement on: what was built here.
    ledger: Option<Arc<Ledger>>,
    /// The daemon's table of faults told once in a while: a store that
    /// cannot take fetched bodies or serve, damaged bodies served.
    quiet: Arc<Quiet>,
    /// Run by each sink between its checks and its commit, so tests can
    /// hold a commit there.
    #[cfg(test)]
    before_commit: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// How often the store's size is walked again while bodies arrive.
pub(crate) const RECOUNT: Duration = Duration::from_secs(10 * 60);
/// Trims started because fetched bodies hit `max-size` run at most this
/// often.
const QUOTA_TRIM_INTERVAL: Duration = Duration::from_secs(60);

/// The store's size as the daemon counts it, against `max-size`.
struct Quota {
    policy: TrimPolicy,
    used: AtomicU64,
    /// When the size was last walked or trimmed; `None` while a walk or
    /// trim runs.
    counted: Mutex<Option<Instant>>,
    /// When a trim for room was last started.
    trimmed: Mutex<Option<Instant>>,
    /// A trim that fails is told once in a while.
    quiet: Arc<Quiet>,
}

impl Quota {
    /// Whether `size` more bytes fit; if not, starts a trim (at most one
    /// per [`QUOTA_TRIM_INTERVAL`]) to make room for later ones.
    fn admit(self: &Arc<Self>, store: &Arc<DiskStore>, size: u64) -> bool {
        let now = Instant::now();
        self.recount_if_stale(store, now);
        let fits = self.used.load(Ordering::Relaxed).saturating_add(size) <= self.policy.max_size;
        if !fits {
            let mut trimmed = self.trimmed.lock().expect("lock not poisoned");
            if trimmed.is_none_or(|at| now.duration_since(at) >= QUOTA_TRIM_INTERVAL) {
                *trimmed = Some(now);
                self.spawn_count(store, true);
            }
        }
        fits
    }

    fn recount_if_stale(self: &Arc<Self>, store: &Arc<DiskStore>, now: Instant) {
        let stale = self
            .counted
            .lock()
            .expect("lock not poisoned")
            .is_some_and(|at| now.duration_since(at) >= RECOUNT);
        if stale {
            self.spawn_count(store, false);
        }
    }

    /// Walks (or, with `trim`, trims) the store on a thread of its own and
    /// takes the size it found.
    fn spawn_count(self: &Arc<Self>, store: &Arc<DiskStore>, trim: bool) {
        *self.counted.lock().expect("lock not poisoned") = None;
        let (quota, store) = (self.clone(), store.clone());
        let spawned = std::thread::Builder::new()
            .name("warren-quota".into())
            .spawn(move || {
                let bytes = if trim {
                    match store.trim(quota.policy, false) {
                        Ok(Some(report)) => Some(report.kept_bytes),
                        Ok(None) => None, // Another process trims.
                        Err(e) => {
                            let message = crate::logging::chain(&e);
                            match quota.quiet.occurred("trim", tokio::time::Instant::now()) {
                                Some(n) => tracing::warn!(
                                    "cannot trim the store ({n} times since the last warning): \
                                     {message}"
                                ),
                                None => tracing::debug!("cannot trim the store: {message}"),
                            }
                            None
                        }
                    }
                } else {
                    None
                };
                let bytes = bytes.or_else(|| store.usage().ok().map(|usage| usage.bytes));
                if let Some(bytes) = bytes {
                    quota.used.store(bytes, Ordering::Relaxed);
                }
                *quota.counted.lock().expect("lock not poisoned") = Some(Instant::now());
            });
        if spawned.is_err() {
            *self.counted.lock().expect("lock not poisoned") = Some(Instant::now());
        }
    }
}

impl StoreAdapter {
    /// With `floor` for the disk (tests fake one).
    #[cfg(test)]
    pub(crate) fn with_floor(mut self, floor: DiskFloor) -> Self {
        self.floor = Arc::new(floor);
        self
    }

    /// The put-order index behind hints, summaries and catalogs.
    pub(crate) fn put_order(&self) -> Arc<PutOrder> {
        self.order.clone()
    }

    /// Starts indexing `store` for hints and summaries: only the entries
    /// that `sharing` serves (as it says at the time each is indexed).
    /// With `agreement`, it also remembers what was built here. Faults
    /// are told through the daemon's `quiet` table.
    pub(crate) fn new(
        store: Arc<DiskStore>,
        sharing: Arc<Sharing>,
        policy: TrimPolicy,
        agreement: bool,
        quiet: Arc<Quiet>,
    ) -> io::Result<Self> {
        let used = store.usage().map_err(io::Error::other)?.bytes;
        let quota = Arc::new(Quota {
            policy,
            used: AtomicU64::new(used),
            counted: Mutex::new(Some(Instant::now())),
            trimmed: Mutex::new(None),
            quiet: quiet.clone(),
        });
        let ledger = agreement.then(Arc::<Ledger>::default);
        let servable = {
            let (sharing, store, ledger) = (sharing.clone(), store.clone(), ledger.clone());
            Arc::new(move |action: &ActionId, line: &store::Line| {
                if let Some(ledger) = &ledger
                    && line.source == Source::Local
                {
                    ledger.record(action, line.output);
                }
                sharing.serves(&line.source) && !is_module_index(&store.object_path(&line.output))
            })
        };
        let order = PutOrder::start(store.actions_dir().to_path_buf(), servable)?;
        let floor = Arc::new(DiskFloor::of(store.root().to_path_buf()));
        Ok(Self {
            store,
            order,
            sharing,
            quota,
            claimed: Arc::default(),
            floor,
            ledger,
            quiet,
            #[cfg(test)]
            before_commit: None,
        })
    }
}

/// Says, at most once per [`crate::daemon::quiet::WINDOW`], that fetched bodies cannot be
/// stored (a full or read-only disk), and how many were lost.
fn warn_not_stored(quiet: &Quiet, error: &store::Error) {
    let message = crate::logging::chain(error);
    match quiet.occurred("store", tokio::time::Instant::now()) {
        Some(n) => tracing::warn!(
            "cannot store bodies fetched from peers ({n} since the last warning): {message}; \
             free space on the store's disk (see `warren doctor`)"
        ),
        None => tracing::debug!("cannot store a fetched body: {message}"),
    }
}

/// Says, at most once per [`crate::daemon::quiet::WINDOW`], that fetched
/// bodies were refused for the disk floor, and how many.
fn warn_below_floor(quiet: &Quiet, below: BelowFloor) -> io::Error {
    match quiet.occurred("disk floor", tokio::time::Instant::now()) {
        Some(n) => tracing::warn!(
            "refused {n} bod{} fetched from peers since the last warning: {below}; \
             free space on that disk to take them again",
            if n == 1 { "y" } else { "ies" }
        ),
        None => tracing::debug!("refused a fetched body: {below}"),
    }
    io::Error::new(io::ErrorKind::StorageFull, below)
}

impl StoreAdapter {
    /// [`warren_p2p::Bodies::open`], before its faults are told.
    fn open_entry(&self, action: &ActionId) -> io::Result<Option<Served>> {
        let entry = match self.store.get(action) {
            Ok(Lookup::Hit(entry)) if self.sharing.serves(&entry.source) => entry,
            // Not ours to pass on: for the asking peer, a miss.
            Ok(Lookup::Hit(_) | Lookup::Miss) => return Ok(None),
            Err(e) => return Err(io::Error::other(e)),
        };
        let body = match File::open(&entry.path) {
            Ok(body) => body,
            // Trimmed between the lookup and the open: a miss.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if starts_module_index(&body) {
            return Ok(None);
        }
        Ok(Some(Served {
            built_here: entry.source == Source::Local,
            output: entry.output,
            size: entry.size,
            time_unix_nanos: entry
                .time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64,
            body,
        }))
    }
}

impl warren_p2p::Bodies for StoreAdapter {
    fn contains(&self, action: &ActionId) -> bool {
        self.store.holds(action)
    }

    fn open(&self, action: &ActionId) -> io::Result<Option<Served>> {
        self.open_entry(action).inspect_err(|error| {
            match self.quiet.occurred("serve", tokio::time::Instant::now()) {
                Some(n) => tracing::warn!(
                    "cannot read entries to serve them to peers ({n} since the last warning): \
                     {error}"
                ),
                None => tracing::debug!("cannot read an entry to serve it: {error}"),
            }
        })
    }

    fn damaged(&self, action: &ActionId, output: &OutputId, body: &File) {
        let removed = body
            .metadata()
            .is_ok_and(|seen| self.store.discard_damaged(action, output, &seen));
        match self.quiet.occurred("damaged", tokio::time::Instant::now()) {
            Some(n) => tracing::warn!(
                "{n} damaged bod{} in the store since the last warning: read to serve a peer, \
                 {} did not match {} OutputID and {} not sent (latest: action {action}, {}); \
                 the store's disk may be failing: `warren verify` checks every body",
                if n == 1 { "y" } else { "ies" },
                if n == 1 { "it" } else { "they" },
                if n == 1 { "its" } else { "their" },
                if n == 1 { "was" } else { "were" },
                if removed {
                    "removed from the store, so `go` builds it again"
                } else {
                    "which could not be removed"
                }
            ),
            None => tracing::debug!(
                "served body of action {action} does not match its OutputID; removed: {removed}"
            ),
        }
    }

    fn built_here(&self, action: &ActionId) -> Option<OutputId> {
        self.ledger.as_ref()?.output(action)
    }

    fn begin(
        &self,
        action: &ActionId,
        output: &OutputId,
        size: u64,
        from: &PeerId,
    ) -> io::Result<Box<dyn BodySink>> {
        let reserved = self.claimed.fetch_add(size, Ordering::Relaxed);
        let claim = Claim {
            bytes: self.claimed.clone(),
            size,
        };
        self.floor
            .check_reservation(reserved.saturating_add(size), Instant::now())
            .map_err(|below| warn_below_floor(&self.quiet, below))?;
        if !self.quota.admit(&self.store, size) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the store is at its max-size ({} bytes); trimming",
                    self.quota.policy.max_size
                ),
            ));
        }
        let writer = self.store.begin_object(*output, size).map_err(|e| {
            warn_not_stored(&self.quiet, &e);
            io::Error::other(e)
        })?;
        Ok(Box::new(Sink {
            head: Vec::with_capacity(consistency::HEAD.min(size as usize)),
            store: self.store.clone(),
            quiet: self.quiet.clone(),
            sharing: self.sharing.clone(),
            quota: self.quota.clone(),
            floor: self.floor.clone(),
            size,
            _claim: claim,
            action: *action,
            from: *from,
            writer,
            #[cfg(test)]
            before_commit: self.before_commit.clone(),
        }))
    }
}

impl warren_p2p::Hints for StoreAdapter {
    fn following(&self, action: &ActionId, limit: usize) -> Vec<ActionId> {
        self.order.following(action, limit)
    }

    fn catalog(
        &self,
        request: &warren_p2p::catalog::CatalogRequest,
    ) -> Option<warren_p2p::catalog::Catalog> {
        self.order.catalog(request)
    }
}

impl warren_p2p::Summaries for StoreAdapter {
    fn summary(&self, epoch: u64, since: u64, limit: usize) -> Option<SummaryChunk> {
        self.order.summary(epoch, since, limit)
    }

    fn summary_updates(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        Some(self.order.updates())
    }
}

/// Whether the body at `path` is a module index (never served; see
/// [`consistency`]).
fn is_module_index(path: &std::path::Path) -> bool {
    File::open(path).is_ok_and(|file| starts_module_index(&file))
}

/// Whether the open `body` is a module index: one small read at its start
/// (the file's position stays where it is, for serving).
fn starts_module_index(body: &File) -> bool {
    use std::os::unix::fs::FileExt as _;
    let mut head = [0; 16];
    body.read_at(&mut head, 0)
        .is_ok_and(|n| !consistency::servable(&head[..n]))
}

/// A body on its way from a peer into the store.
/// A sink's announced size, counted in [`StoreAdapter::claimed`] while
/// the sink is open.
struct Claim {
    bytes: Arc<AtomicU64>,
    size: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.bytes.fetch_sub(self.size, Ordering::Relaxed);
    }
}

struct Sink {
    _claim: Claim,
    /// The body's first bytes, for [`consistency`].
    head: Vec<u8>,
    store: Arc<DiskStore>,
    quiet: Arc<Quiet>,
    sharing: Arc<Sharing>,
    quota: Arc<Quota>,
    floor: Arc<DiskFloor>,
    size: u64,
    action: ActionId,
    from: PeerId,
    writer: ObjectWriter,
    #[cfg(test)]
    before_commit: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.writer.write(buf)?;
        let room = consistency::HEAD - self.head.len().min(consistency::HEAD);
        self.head.extend_from_slice(&buf[..written.min(room)]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl BodySink for Sink {
    /// The node's only check of a fetched body: [`ObjectWriter::finish`]
    /// compares size and SHA-256 with what the peer announced.
    fn commit(self: Box<Self>) -> Result<(), CommitError> {
        let verified = self.writer.finish().map_err(|error| match error {
            store::Error::Mismatch {
                actual,
                actual_size,
                ..
            } => CommitError::Mismatch {
                actual,
                actual_size,
            },
            other => CommitError::Io(io::Error::other(other)),
        })?;
        if let Some(why) = consistency::refuse_fetched(&self.action, &self.head) {
            return Err(match consistency::kind(&self.head) {
                // Not the peer's fault if it runs an older warren.
                consistency::Kind::ModuleIndex => CommitError::Io(io::Error::other(why)),
                _ => CommitError::Refused(why),
            });
        }
        // The disk may have filled while it was on its way.
        self.floor
            .check_commit(Instant::now())
            .map_err(|below| CommitError::Io(warn_below_floor(&self.quiet, below)))?;
        // Removed while its body was on its way (a `warren peers remove`
        // purges what it sent; this must not land after the purge): the
        // check and the commit are one step for a reload.
        let committed = self.sharing.while_pulled_from(&self.from, || {
            #[cfg(test)]
            if let Some(pause) = &self.before_commit {
                pause();
            }
            self.store.commit_fetched(&self.action, verified, self.from)
        });
        let Some(committed) = committed else {
            return Err(CommitError::Io(io::Error::other(format!(
                "peer {} is no longer pulled from",
                self.from
            ))));
        };
        committed.map_err(|error| {
            warn_not_stored(&self.quiet, &error);
            CommitError::Io(io::Error::other(error))
        })?;
        self.quota.used.fetch_add(self.size, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use warren_p2p::Bodies as _;

    use super::*;

    fn peer() -> PeerId {
        libp2p_identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    const POLICY: TrimPolicy = TrimPolicy {
        max_size: 8 << 30,
        max_unused: Duration::from_secs(3600),
    };

    fn adapter(dir: &std::path::Path, state: SharingState) -> (Arc<DiskStore>, StoreAdapter) {
        let store = Arc::new(DiskStore::open(dir).unwrap());
        let adapter = StoreAdapter::new(
            store.clone(),
            Sharing::new(state),
            POLICY,
            false,
            Arc::default(),
        )
        .unwrap()
        .with_floor(roomy_disk());
        (store, adapter)
    }

    /// A disk with room to spare, so that these tests do not depend on
    /// this machine's free space (the floor has tests of its own).
    pub(crate) fn roomy_disk() -> DiskFloor {
        DiskFloor::with_reader(|| {
            Some(crate::fsutil::Space {
                free: 1 << 50,
                total: 1 << 50,
            })
        })
    }

    fn fetch(adapter: &StoreAdapter, n: u8, body: &[u8], from: &PeerId) -> Result<(), CommitError> {
        let mut sink = adapter
            .begin(
                &ActionId::from_bytes([n; 32]),
                &OutputId::of(body),
                body.len() as u64,
                from,
            )
            .unwrap();
        sink.write_all(body).unwrap();
        sink.commit()
    }

    /// The sink is the node's only check of a fetched body.
    #[test]
    fn sinks_store_only_the_announced_body_and_name_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let alice = peer();
        let (store, adapter) = adapter(
            dir.path(),
            SharingState {
                pull: HashSet::from([alice]),
                ..SharingState::default()
            },
        );
        let body = b"the real body";
        let output = OutputId::of(body);

        let mut sink = adapter
            .begin(
                &ActionId::from_bytes([1; 32]),
                &output,
                body.len() as u64,
                &alice,
            )
            .unwrap();
        sink.write_all(b"a fake body!!").unwrap();
        match sink.commit() {
            Err(CommitError::Mismatch {
                actual,
                actual_size,
            }) => {
                assert_eq!(actual, OutputId::of(b"a fake body!!"));
                assert_eq!(actual_size, 13);
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert_eq!(
            store.get(&ActionId::from_bytes([1; 32])).unwrap(),
            Lookup::Miss
        );

        fetch(&adapter, 1, body, &alice).unwrap();
        let Lookup::Hit(entry) = store.get(&ActionId::from_bytes([1; 32])).unwrap() else {
            panic!("a verified body is stored");
        };
        assert_eq!(std::fs::read(entry.path).unwrap(), body);
        assert_eq!(entry.source, Source::Peer(alice));
    }

    /// Part 4, trust is not transitive: what a peer sent us is used here
    /// but not served on, unless that peer is re-shared.
    #[test]
    fn only_entries_built_here_are_served_unless_their_peer_is_reshared() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, ci) = (peer(), peer());
        let (store, adapter) = adapter(
            dir.path(),
            SharingState {
                pull: HashSet::from([alice, ci]),
                reshare: HashSet::from([ci]),
            },
        );
        store
            .put_bytes(&ActionId::from_bytes([1; 32]), b"built here")
            .unwrap();
        fetch(&adapter, 2, b"from alice", &alice).unwrap();
        fetch(&adapter, 3, b"from ci", &ci).unwrap();

        let served = |n: u8| {
            adapter
                .open(&ActionId::from_bytes([n; 32]))
                .unwrap()
                .is_some()
        };
        store
            .put_bytes(
                &ActionId::from_bytes([4; 32]),
                b"go index v2\n\0\0machine-specific",
            )
            .unwrap();
        assert!(served(1), "built here");
        assert!(!served(2), "fetched from alice: used here, never served on");
        assert!(served(3), "fetched from a re-shared peer");
        assert!(!served(4), "a module index is never served");
        assert!(matches!(
            store.get(&ActionId::from_bytes([2; 32])).unwrap(),
            Lookup::Hit(_)
        ));
    }

    /// Part 4, agreement: the adapter remembers what was built here (not
    /// what peers sent), past the entry's removal, and tells peers which
    /// entries it built.
    #[test]
    fn with_agreement_builds_here_are_remembered_after_their_entry_goes() {
        let dir = tempfile::tempdir().unwrap();
        let alice = peer();
        let store = Arc::new(DiskStore::open(dir.path()).unwrap());
        let built = ActionId::from_bytes([1; 32]);
        let output = store.put_bytes(&built, b"built here").unwrap().output;
        let sharing = Sharing::new(SharingState {
            pull: HashSet::from([alice]),
            reshare: HashSet::from([alice]),
        });
        let adapter = StoreAdapter::new(store.clone(), sharing, POLICY, true, Arc::default())
            .unwrap()
            .with_floor(roomy_disk());
        fetch(&adapter, 2, b"from alice", &alice).unwrap();
        let start = Instant::now();
        while adapter.built_here(&built).is_none() {
            assert!(start.elapsed() < Duration::from_secs(10), "never indexed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(adapter.built_here(&built), Some(output));
        assert!(adapter.open(&built).unwrap().unwrap().built_here);
        // Alice's entry is served on (she is re-shared), but not as ours.
        let relayed = adapter.open(&ActionId::from_bytes([2; 32])).unwrap();
        assert!(!relayed.unwrap().built_here);
        assert_eq!(adapter.built_here(&ActionId::from_bytes([2; 32])), None);

        let hex = built.to_hex();
        let entry = std::fs::read_dir(store.actions_dir())
            .unwrap()
            .map(|shard| shard.unwrap().path().join(&hex))
            .find(|path| path.exists())
            .unwrap();
        std::fs::remove_file(entry).unwrap();
        assert_eq!(store.get(&built).unwrap(), Lookup::Miss);
        assert_eq!(adapter.built_here(&built), Some(output));

        let other = tempfile::tempdir().unwrap();
        let without = StoreAdapter::new(
            Arc::new(DiskStore::open(other.path()).unwrap()),
            Sharing::new(SharingState::default()),
            POLICY,
            false,
            Arc::default(),
        )
        .unwrap();
        assert_eq!(without.built_here(&built), None, "agreement off: no ledger");
    }

    /// A body from a peer removed while it was on its way does not land
    /// after `warren peers remove` purged that peer's entries.
    #[test]
    fn a_body_from_a_peer_no_longer_pulled_from_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let alice = peer();
        let (store, adapter) = adapter(
            dir.path(),
            SharingState {
                pull: HashSet::from([alice]),
                ..SharingState::default()
            },
        );
        adapter.sharing.set(SharingState::default());
        assert!(matches!(
            fetch(&adapter, 1, b"late body", &alice),
            Err(CommitError::Io(_))
        ));
        assert_eq!(
            store.get(&ActionId::from_bytes([1; 32])).unwrap(),
            Lookup::Miss
        );
    }

    /// A peer removed while its body is between the "still pulled from"
    /// check and the commit: the reload that removed it must not finish
    /// (and purge) before that commit lands, or the entry stays after the
    /// purge and reaches `go`.
    #[test]
    fn a_reload_waits_for_a_commit_past_its_check_then_purges_it() {
        use std::sync::mpsc::sync_channel;

        let dir = tempfile::tempdir().unwrap();
        let alice = peer();
        let (store, mut adapter) = adapter(
            dir.path(),
            SharingState {
                pull: HashSet::from([alice]),
                ..SharingState::default()
            },
        );
        let (entered, in_commit) = sync_channel(1);
        let (release, released) = sync_channel::<()>(1);
        let released = Mutex::new(released);
        adapter.before_commit = Some(Arc::new(move || {
            entered.send(()).unwrap();
            let _ = released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10));
        }));
        let adapter = Arc::new(adapter);
        let committing = {
            let adapter = adapter.clone();
            std::thread::spawn(move || fetch(&adapter, 1, b"on its way", &alice))
        };
        in_commit.recv_timeout(Duration::from_secs(10)).unwrap();
        let (purged, purge_done) = sync_channel(1);
        let reloading = {
            let (sharing, store) = (adapter.sharing.clone(), store.clone());
            std::thread::spawn(move || {
                sharing.set(SharingState::default());
                store.purge_except(&HashSet::new()).unwrap();
                purged.send(()).unwrap();
            })
        };
        // Unfixed, the reload purges at once; fixed, it waits for the commit.
        let _ = purge_done.recv_timeout(Duration::from_millis(500));
        release.send(()).unwrap();
        let _ = committing.join().unwrap();
        reloading.join().unwrap();
        assert_eq!(
            store.get(&ActionId::from_bytes([1; 32])).unwrap(),
            Lookup::Miss,
            "the removed peer's entry landed after the purge"
        );
    }

    /// A disk with less free than `max-size` allows: fetched bodies are
    /// refused when their reservation would take the disk under its floor
    /// (bodies on their way counted), and at their commit when the disk
    /// filled meanwhile; `go`'s own puts are not (SECURITY.md, "Bounds on
    /// what an allowlisted peer can make your daemon do").
    #[test]
    fn fetched_bodies_leave_the_disk_its_floor() {
        use crate::fsutil::Space;
        use std::sync::atomic::AtomicU64;

        const GIB: u64 = 1 << 30;
        let dir = tempfile::tempdir().unwrap();
        let alice = peer();
        let free = Arc::new(AtomicU64::new(GIB + 300));
        let (store, adapter) = adapter(
            dir.path(),
            SharingState {
                pull: HashSet::from([alice]),
                ..SharingState::default()
            },
        );
        let adapter = adapter.with_floor({
            let free = free.clone();
            DiskFloor::with_reader(move || {
                Some(Space {
                    free: free.load(Ordering::Relaxed),
                    total: 10 * GIB,
                })
            })
        });
        let begin = |n: u8, body: &[u8]| {
            adapter.begin(
                &ActionId::from_bytes([n; 32]),
                &OutputId::of(body),
                body.len() as u64,
                &alice,
            )
        };
        let first = begin(1, &[1; 200]).unwrap();
        let refused = begin(2, &[2; 200]).map(drop).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::StorageFull, "{refused}");
        assert!(
            refused.to_string().contains("kept free for builds"),
            "{refused}"
        );
        drop(first);
        let mut sink = begin(3, &[3; 200]).unwrap();
        sink.write_all(&[3; 200]).unwrap();
        free.store(GIB - 1, Ordering::Relaxed);
        assert!(
            matches!(sink.commit(), Err(CommitError::Io(e)) if e.kind() == io::ErrorKind::StorageFull)
        );
        assert_eq!(
            store.get(&ActionId::from_bytes([3; 32])).unwrap(),
            Lookup::Miss
        );
        store
            .put_bytes(&ActionId::from_bytes([4; 32]), &[4; 200])
            .unwrap();
    }

    /// Part 4, budgets: fetched bytes count against `max-size`; past it
    /// bodies are refused (the build compiles instead), not stored.
    #[test]
    fn fetched_bodies_that_would_pass_max_size_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let alice = peer();
        let store = Arc::new(DiskStore::open(dir.path()).unwrap());
        store
            .put_bytes(&ActionId::from_bytes([1; 32]), &[1; 10_000])
            .unwrap();
        let policy = TrimPolicy {
            max_size: 25_000,
            ..POLICY
        };
        let sharing = Sharing::new(SharingState {
            pull: HashSet::from([alice]),
            ..SharingState::default()
        });
        let adapter = StoreAdapter::new(store.clone(), sharing, policy, false, Arc::default())
            .unwrap()
            .with_floor(roomy_disk());
        fetch(&adapter, 2, &[2; 10_000], &alice).unwrap();
        let refused = adapter.begin(
            &ActionId::from_bytes([3; 32]),
            &OutputId::of(&[3; 10_000]),
            10_000,
            &alice,
        );
        assert!(
            matches!(&refused, Err(e) if e.kind() == io::ErrorKind::StorageFull),
            "{:?}",
            refused.map(drop)
        );
        assert_eq!(
            store.get(&ActionId::from_bytes([3; 32])).unwrap(),
            Lookup::Miss
        );
        // Small bodies still fit.
        fetch(&adapter, 4, &[4; 100], &alice).unwrap();
    }

    /// Part 4: an archive whose build ID names another action is refused,
    /// and counted against its peer; a module index is not stored either.
    #[test]
    fn archives_fetched_under_another_action_and_module_indexes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let alice = peer();
        let (store, adapter) = adapter(
            dir.path(),
            SharingState {
                pull: HashSet::from([alice]),
                ..SharingState::default()
            },
        );
        let action = ActionId::from_bytes([7; 32]);
        let archive = |build_id: &str| {
            format!("!<arch>\n__.PKGDEF 0 0 0 644 10 `\ngo object linux amd64 go1.26 X:none\nbuild id \"{build_id}\"\n")
                .into_bytes()
        };
        let own = format!("{}/content", consistency::hash_to_string(&action));
        let foreign = format!(
            "{}/content",
            consistency::hash_to_string(&ActionId::from_bytes([8; 32]))
        );
        assert!(matches!(
            fetch(&adapter, 7, &archive(&foreign), &alice),
            Err(CommitError::Refused(_))
        ));
        assert_eq!(store.get(&action).unwrap(), Lookup::Miss);
        fetch(&adapter, 7, &archive(&own), &alice).unwrap();
        assert!(matches!(store.get(&action).unwrap(), Lookup::Hit(_)));
        assert!(matches!(
            fetch(&adapter, 9, b"go index v2\nfrom elsewhere", &alice),
            Err(CommitError::Io(_))
        ));
    }

    /// A peer's claim of a 2 GiB body that it then stalls or drips holds
    /// no room in the store: the node counts bodies in flight as their
    /// bytes arrive (`warren_p2p::NodeConfig::with_max_in_flight`), so an
    /// honest peer's body is stored while the claim is on its way.
    #[test]
    fn a_huge_claim_on_its_way_does_not_refuse_other_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, mallory) = (peer(), peer());
        let (store, adapter) = adapter(
            dir.path(),
            SharingState {
                pull: HashSet::from([alice, mallory]),
                ..SharingState::default()
            },
        );
        let mut claim = adapter
            .begin(
                &ActionId::from_bytes([1; 32]),
                &OutputId::of(b"never sent"),
                2 << 30,
                &mallory,
            )
            .unwrap();
        claim.write_all(&[0; 4096]).unwrap();
        fetch(&adapter, 2, b"an honest body", &alice).unwrap();
        assert!(matches!(
            store.get(&ActionId::from_bytes([2; 32])).unwrap(),
            Lookup::Hit(_)
        ));
        drop(claim);
    }
}
