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
use crate::daemon::put_order::{Body, PutOrder};
use crate::daemon::quiet::Quiet;
use crate::ids::{ActionId, OutputId};
use crate::store::{self, DiskStore, Lookup, ObjectWriter, Source, TrimPolicy, executable};

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

    /// Whether entries from `peer` are taken (its role pulls from it).
    pub(crate) fn pulls_from(&self, peer: &PeerId) -> bool {
        self.state
            .read()
            .expect("lock not poisoned")
            .pull
            .contains(peer)
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
                if !sharing.serves(&line.source) {
                    return None;
                }
                body_of(&store.object_path(&line.output))
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
    fn following(&self, action: &ActionId, limit: usize) -> Vec<warren_p2p::Hint> {
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

/// What the index keeps of the body at `path`, from one read of its
/// first bytes: whether it is a linked executable (`store::executable`);
/// `None` if it is a module index (never served; see [`consistency`]). A
/// body that cannot be read is indexed as another body: a lookup finds
/// what is wrong with it.
pub(crate) fn body_of(path: &std::path::Path) -> Option<Body> {
    use std::os::unix::fs::FileExt as _;
    let mut head = [0; executable::HEAD_LEN];
    let Ok(file) = File::open(path) else {
        return Some(Body::default());
    };
    let Ok(n) = file.read_at(&mut head, 0) else {
        return Some(Body::default());
    };
    let head = &head[..n];
    consistency::servable(head).then(|| Body {
        executable: executable::is_executable(head),
    })
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
pub(crate) mod tests;
