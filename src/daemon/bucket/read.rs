//! Reading the bucket: the index kept current in the background, lookups
//! after the LAN peers, and read-ahead of a hit manifest's other entries.
//!
//! - A miss costs no round trip: a lookup the [`Index`] does not name is
//!   answered at once. The index is refreshed every `refresh`: manifests
//!   listed after the newest one held (minus [`CLOCK_SLACK`] for writers'
//!   clocks), each fetched (at most [`MAX_BYTES`]),
//!   verified, and added only if its signer is pulled from; every
//!   [`FULL_RELIST`], and after the allowlist changes, the whole listing
//!   is read again.
//! - A body is streamed into the node's sink (`daemon::node_store`): the
//!   same checks as a peer's body (size and SHA-256 against the OutputID,
//!   after zstd decoding; consistency; still pulled from; `max-size`; the
//!   disk floor), committed with the manifest's signer as the entry's
//!   source, so provenance and purges work as for peers. A body that
//!   decodes to more than its size is cut off there.
//! - Faults: a body must start arriving within `deadline` and keep
//!   arriving ([`STALL`]); a failure (down, slow, refusing, a bad body)
//!   puts the bucket in cooldown for `cooldown`, during which lookups
//!   are misses at once. The daemon tells faults through its quiet table;
//!   each helper tells its `go` command once.
//! - Read-ahead: the first hit of a manifest fetches the rest of its
//!   entries, in put order, [`READ_AHEAD_PARALLEL`] at a time, within
//!   `read-ahead-size` bytes, skipping what the store holds. A body is
//!   fetched once: a lookup of one being read ahead waits for it to land.
//! - Bandwidth: with `max-rate`, every body's chunks are paced
//!   ([`Pacer`]); the `max-size` of the store and its disk floor hold for
//!   them as for a peer's.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use libp2p_identity::PeerId;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use warren_p2p::Bodies as _;

use self::body::{WriteError, write_body};
use self::landing::{Claim, Fetching};
use super::client::{Bucket, read_at_most};
use super::index::{Index, MAX_MANIFESTS, Mapping};
use super::keys;
use super::manifest::{MAX_BYTES, Manifest};
use super::pace::Pacer;
use crate::daemon::node_store::{Sharing, StoreAdapter};
use crate::daemon::quiet::Quiet;
use crate::ids::{ActionId, OutputId};
use crate::ipc::BucketMiss;
use crate::store::DiskStore;

/// Manifests signed this long before the newest one held are listed
/// again: a writer whose clock is behind by up to this much is not
/// missed.
pub(crate) const CLOCK_SLACK: Duration = Duration::from_secs(10 * 60);
/// The whole listing is read again this often.
pub(crate) const FULL_RELIST: Duration = Duration::from_secs(30 * 60);
/// A body that stops arriving for this long is a failure.
pub(crate) const STALL: Duration = Duration::from_secs(10);
/// Bodies read ahead at once: a GET is a round trip to the bucket before
/// its first byte, so at tens of milliseconds only many in flight keep up
/// with a build that asks for several entries a millisecond.
pub(crate) const READ_AHEAD_PARALLEL: usize = 32;
/// Manifests fetched at once during a refresh.
const MANIFESTS_PARALLEL: usize = 4;
/// Names per listing request.
const LIST_PAGE: usize = 1000;
/// Bodies of at least this many bytes are stored zstd-compressed (Go's
/// archives and objects shrink two- to fourfold); smaller ones raw, where
/// a frame costs more than it saves. The size in the manifest thus names
/// the object.
pub(crate) const COMPRESS_FROM: u64 = 4096;
/// Untrusted signers remembered for `warren bucket status`.
const MAX_UNTRUSTED: usize = 256;

/// Whether a body of `size` bytes is stored compressed.
pub(crate) fn compressed(size: u64) -> bool {
    size >= COMPRESS_FROM
}

/// A body as the bucket stores it: its name, and its bytes (zstd at
/// level 3 if [`compressed`]).
pub(crate) fn stored_body(output: &OutputId, body: &[u8]) -> (String, Vec<u8>) {
    let compress = compressed(body.len() as u64);
    let bytes = if compress {
        zstd::encode_all(body, 3).expect("zstd to encode from memory")
    } else {
        body.to_vec()
    };
    (keys::object(output, compress), bytes)
}

/// The `[bucket]` settings reading uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub deadline: Duration,
    pub cooldown: Duration,
    pub refresh: Duration,
    pub read_ahead_size: u64,
    /// Bytes a second that downloads take at most; `None`: no cap.
    pub max_rate: Option<u64>,
}

/// What the reading side counts, for `warren bucket status`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Bodies fetched for a lookup (one that waited on a body read ahead
    /// counts as read ahead): hits and `read_ahead` add up to the bodies
    /// fetched.
    pub hits: AtomicU64,
    pub read_ahead: AtomicU64,
    pub bytes: AtomicU64,
    pub manifests_read: AtomicU64,
    pub manifests_refused: AtomicU64,
    pub failures: AtomicU64,
}

/// A body fetched from the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fetched {
    pub signer: PeerId,
    pub size: u64,
}

/// Why a fetch of a named body failed.
#[derive(Debug)]
enum FetchError {
    /// The bucket's fault: down, refusing, a bad body, or a body that
    /// stalled on its way.
    Bucket(String),
    /// No first bytes within the deadline.
    Slow(String),
    /// The bucket has no such body (a writer between bodies and
    /// manifests, or gc): a miss, not a fault.
    Absent,
    /// Ours: the store cannot take it, or its signer is no longer
    /// pulled from.
    Store(String),
}

/// The reading side of the bucket tier; see the module docs.
pub(crate) struct Reader {
    bucket: Arc<dyn Bucket>,
    index: Mutex<Index>,
    settings: Settings,
    sharing: Arc<Sharing>,
    adapter: Arc<StoreAdapter>,
    store: Arc<DiskStore>,
    quiet: Arc<Quiet>,
    cooldown_until: Mutex<Option<Instant>>,
    untrusted: Mutex<HashSet<PeerId>>,
    /// Bodies being fetched, by lookups and read-ahead: a second fetch of
    /// one waits for the first instead of sending its bytes again.
    fetching: Arc<Fetching>,
    /// Read-ahead fetches under way, across manifests.
    ahead: Arc<Semaphore>,
    /// The daemon's runtime, where read-ahead runs (a lookup may come on
    /// the helpers' socket thread, which must stay free to answer).
    runtime: tokio::runtime::Handle,
    /// Set when the whole listing must be read again (allowlist changed).
    relist: tokio::sync::Notify,
    pub(crate) counters: Counters,
    pacer: Option<Pacer>,
}

impl Reader {
    pub(crate) fn new(
        bucket: Arc<dyn Bucket>,
        settings: Settings,
        sharing: Arc<Sharing>,
        adapter: Arc<StoreAdapter>,
        store: Arc<DiskStore>,
        quiet: Arc<Quiet>,
    ) -> Arc<Self> {
        Arc::new(Self {
            bucket,
            index: Mutex::default(),
            settings,
            sharing,
            adapter,
            store,
            quiet,
            cooldown_until: Mutex::new(None),
            untrusted: Mutex::default(),
            fetching: Arc::default(),
            ahead: Arc::new(Semaphore::new(READ_AHEAD_PARALLEL)),
            runtime: tokio::runtime::Handle::current(),
            relist: tokio::sync::Notify::new(),
            counters: Counters::default(),
            pacer: settings.max_rate.map(Pacer::new),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the index names `action` (no round trip).
    #[cfg(test)]
    pub(crate) fn names(&self, action: &ActionId) -> bool {
        self.index().get(action).is_some()
    }

    /// Fetches `action` from the bucket if the index names it: `Ok(None)`
    /// when it does not, `Err` when the bucket failed or is in cooldown.
    pub(crate) async fn lookup(
        self: &Arc<Self>,
        action: ActionId,
    ) -> Result<Option<Fetched>, BucketMiss> {
        let Some(mapping) = self.index().get(&action) else {
            return Ok(None);
        };
        if self.cooling(Instant::now()) {
            return Err(BucketMiss::Cooldown);
        }
        let landed = Fetched {
            signer: mapping.signer,
            size: mapping.size,
        };
        let fetched = match self.fetching.claim(action) {
            // Landed since the helper missed (read ahead, most likely).
            Ok(_) if self.store.holds(&action) => return Ok(Some(landed)),
            Ok(claim) => {
                self.fetch(action, mapping, &claim, self.settings.deadline)
                    .await
            }
            // Read ahead (or asked by another build) already: wait for it
            // as long as a fetch of our own would take.
            Err(landing) => {
                landing.wait(self.settings.deadline).await;
                if self.store.holds(&action) {
                    return Ok(Some(landed));
                }
                if self.cooling(Instant::now()) {
                    return Err(BucketMiss::Failed);
                }
                return Ok(None);
            }
        };
        match fetched {
            Ok(()) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.start_read_ahead(mapping.manifest);
                Ok(Some(landed))
            }
            Err(FetchError::Absent) => Ok(None),
            Err(FetchError::Store(why)) => {
                tracing::debug!("bucket body of {action} not stored: {why}");
                Ok(None)
            }
            Err(FetchError::Bucket(why) | FetchError::Slow(why)) => {
                self.failed(&why);
                Err(BucketMiss::Failed)
            }
        }
    }

    fn cooling(&self, now: Instant) -> bool {
        let until = self
            .cooldown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|until| now < until)
    }

    /// Puts the bucket in cooldown and tells it (once in a while).
    fn failed(&self, why: &str) {
        let now = Instant::now();
        *self
            .cooldown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(now + self.settings.cooldown);
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        match self.quiet.occurred("bucket", now) {
            Some(n) => tracing::warn!(
                "the team bucket failed {n} time{} since the last warning (latest: {why}); \
                 left out of lookups for {:?} each time, builds go on without it",
                if n == 1 { "" } else { "s" },
                self.settings.cooldown
            ),
            None => tracing::debug!("bucket failed: {why}"),
        }
    }

    /// Streams one body into the store under `claim`; its first bytes
    /// must come within `first_bytes`, then no chunk may take longer than
    /// [`STALL`].
    async fn fetch(
        &self,
        action: ActionId,
        mapping: Mapping,
        claim: &Claim,
        first_bytes: Duration,
    ) -> Result<(), FetchError> {
        let name = keys::object(&mapping.output, compressed(mapping.size));
        let body = match tokio::time::timeout(first_bytes, self.bucket.get(&name)).await {
            Err(_) => {
                return Err(FetchError::Slow(format!(
                    "no answer within {first_bytes:?}"
                )));
            }
            Ok(Err(e)) => return Err(FetchError::Bucket(crate::logging::chain(&e))),
            Ok(Ok(None)) => return Err(FetchError::Absent),
            Ok(Ok(Some(body))) => body,
        };
        claim.started();
        let sink = self
            .adapter
            .begin(&action, &mapping.output, mapping.size, &mapping.signer)
            .map_err(|e| FetchError::Store(e.to_string()))?;
        let (chunks, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let size = mapping.size;
        let writing = tokio::task::spawn_blocking(move || write_body(sink, receiver, size));
        let mut body = body;
        let mut arrived = 0u64;
        let outcome = loop {
            match tokio::time::timeout(STALL, body.next()).await {
                Err(_) => break Err(format!("the body stalled for {STALL:?}")),
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => break Err(format!("reading the body: {e}")),
                Ok(Some(Ok(chunk))) => {
                    arrived += chunk.len() as u64;
                    if let Some(pacer) = &self.pacer {
                        pacer.take(chunk.len() as u64, claim.urgent()).await;
                    }
                    if chunks.send(chunk).await.is_err() {
                        break Ok(()); // The writer stopped: it says why.
                    }
                }
            }
        };
        // The writer ends once its chunks do: it commits the body if every
        // byte came (the checks decide), so the claim ends after that.
        drop(chunks);
        let written = writing.await;
        self.counters.bytes.fetch_add(arrived, Ordering::Relaxed);
        match (written, outcome) {
            (Ok(Ok(())), _) => Ok(()),
            (_, Err(why)) => Err(FetchError::Bucket(why)),
            (Ok(Err(WriteError::Bad(why))), Ok(())) => Err(FetchError::Bucket(format!(
                "the body of {} was refused: {why}",
                mapping.output
            ))),
            (Ok(Err(WriteError::Store(why))), Ok(())) => Err(FetchError::Store(why)),
            (Err(e), Ok(())) => Err(FetchError::Store(e.to_string())),
        }
    }

    fn start_read_ahead(self: &Arc<Self>, manifest: u64) {
        if self.settings.read_ahead_size == 0 {
            return;
        }
        let Some((signer, entries)) = self.index().start_read_ahead(manifest) else {
            return;
        };
        let reader = self.clone();
        self.runtime
            .spawn(async move { reader.read_ahead(signer, entries).await });
    }

    async fn read_ahead(self: Arc<Self>, signer: PeerId, entries: super::index::Entries) {
        let mut budget = self.settings.read_ahead_size;
        let wanted: Vec<_> = entries
            .into_iter()
            .filter(|(action, ..)| !self.store.holds(action))
            .take_while(|(.., size)| {
                let fits = *size <= budget;
                budget = budget.saturating_sub(*size);
                fits
            })
            .collect();
        let fetches = futures::stream::iter(wanted).map(|(action, output, size)| {
            let reader = self.clone();
            async move {
                // At most READ_AHEAD_PARALLEL across every manifest read ahead.
                let Ok(_permit) = reader.ahead.clone().acquire_owned().await else {
                    return;
                };
                if reader.cooling(Instant::now()) {
                    return;
                }
                let Ok(claim) = reader.fetching.claim(action) else {
                    return; // A lookup fetches it.
                };
                if reader.store.holds(&action) {
                    return; // A lookup fetched it meanwhile.
                }
                let mapping = Mapping {
                    output,
                    size,
                    signer,
                    manifest: u64::MAX,
                };
                match reader.fetch(action, mapping, &claim, STALL).await {
                    Ok(()) => {
                        reader.counters.read_ahead.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(FetchError::Bucket(why)) => reader.failed(&why),
                    // A slow start of one of many fetches is the link's
                    // queue, not a failing bucket: lookups go on.
                    Err(e) => tracing::debug!("read-ahead of {action}: {e:?}"),
                }
            }
        });
        fetches
            .buffer_unordered(READ_AHEAD_PARALLEL)
            .collect::<()>()
            .await;
    }

    /// Drops the mappings of signers no longer pulled from, and has the
    /// next refresh read the whole listing (a signer added since may have
    /// manifests there).
    pub(crate) fn allowlist_changed(&self) {
        self.index().retain(|peer| self.sharing.pulls_from(peer));
        self.untrusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.relist.notify_one();
    }

    /// Keeps the index current until `shutdown`.
    pub(crate) async fn refresh_forever(
        self: Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut full_at = Instant::now();
        let mut full = true;
        loop {
            if let Err(e) = self.refresh(full).await {
                self.failed(&crate::logging::chain(&e));
            } else if full {
                full_at = Instant::now();
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.refresh) => {
                    full = full_at.elapsed() >= FULL_RELIST;
                }
                () = self.relist.notified() => full = true,
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Lists manifests (all of them, or those after the newest held minus
    /// the slack), then fetches, verifies and adds the new ones, newest
    /// first, at most [`MAX_MANIFESTS`].
    pub(crate) async fn refresh(&self, full: bool) -> Result<(), super::client::Error> {
        let start = match (full, self.index().newest()) {
            (false, Some(newest)) => Some(keys::manifests_from(
                newest.saturating_sub(CLOCK_SLACK.as_millis() as u64),
            )),
            _ => None,
        };
        let mut after = start;
        let mut new = Vec::new();
        loop {
            let page = self
                .bucket
                .list(keys::MANIFESTS, after.as_deref(), LIST_PAGE)
                .await?;
            let done = page.len() < LIST_PAGE;
            after = page.last().map(|listed| listed.name.clone());
            for listed in page {
                if self.index().knows(&listed.name) {
                    continue;
                }
                let Some((_, signer)) = keys::parse_manifest(&listed.name) else {
                    continue;
                };
                if listed.size > MAX_BYTES as u64 {
                    self.refuse(&listed.name, "too big");
                    continue;
                }
                if !self.sharing.pulls_from(&signer) {
                    let mut untrusted = self.untrusted.lock().unwrap_or_else(|p| p.into_inner());
                    if untrusted.len() < MAX_UNTRUSTED {
                        untrusted.insert(signer);
                    }
                    continue;
                }
                new.push(listed.name);
            }
            if done || after.is_none() {
                break;
            }
        }
        // Newest first: past the index's bound the oldest would go anyway.
        new.sort_unstable_by(|a, b| b.cmp(a));
        new.truncate(MAX_MANIFESTS);
        futures::stream::iter(new)
            .map(|name| self.read_manifest(name))
            .buffer_unordered(MANIFESTS_PARALLEL)
            .collect::<()>()
            .await;
        Ok(())
    }

    fn refuse(&self, name: &str, why: &str) {
        tracing::debug!("bucket manifest {name} refused: {why}");
        self.counters
            .manifests_refused
            .fetch_add(1, Ordering::Relaxed);
        self.index().refuse(name);
    }

    async fn read_manifest(&self, name: String) {
        let bytes = match self.bucket.get(&name).await {
            Ok(Some(body)) => match read_at_most(body, MAX_BYTES).await {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return self.refuse(&name, "too big");
                }
                Err(e) => return tracing::debug!("reading bucket manifest {name}: {e}"),
            },
            Ok(None) => return, // Removed since the listing (gc).
            Err(e) => return tracing::debug!("{}", crate::logging::chain(&e)),
        };
        let manifest = match Manifest::verify(&bytes) {
            Ok(manifest) => manifest,
            Err(e) => return self.refuse(&name, &e.to_string()),
        };
        let named = keys::parse_manifest(&name).map(|(_, signer)| signer);
        if named != Some(manifest.signer) {
            return self.refuse(&name, "its name and its signature disagree on the signer");
        }
        // Checked again here: the allowlist may have changed meanwhile.
        if !self.sharing.pulls_from(&manifest.signer) {
            return;
        }
        self.counters.manifests_read.fetch_add(1, Ordering::Relaxed);
        self.index().add(&name, manifest);
    }

    /// Manifests and mappings held, trusted signers with their manifests,
    /// and signers seen that are not trusted.
    pub(crate) fn census(&self) -> (usize, usize, Vec<(PeerId, usize)>, Vec<PeerId>) {
        let (manifests, mappings, signers) = self.index().counts();
        let untrusted = self
            .untrusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        (
            manifests,
            mappings,
            signers.into_iter().collect(),
            untrusted,
        )
    }
}

mod body;
mod landing;

#[cfg(test)]
mod tests;
