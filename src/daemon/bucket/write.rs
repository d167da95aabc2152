//! Writing the bucket (`write = true`): what this machine built, signed.
//!
//! At `close` a helper reports the ActionIDs its `go` command put, in put
//! order (`ipc::Request::Built`, at most [`MAX_REPORTED`]); the daemon
//! queues the report (at most [`QUEUE`] reports wait; past that one is
//! dropped and counted as failed) and uploads in the background, so the
//! build that made them never waits. For each action, only an entry built
//! here (source local) is uploaded, never one fetched from a peer or the
//! bucket, and never a module index (the same consistency checks as
//! serving); its body is read and hashed again (a damaged body is not
//! uploaded), then put by OutputID if absent (a body already there is not
//! sent again), [`UPLOADS`] at a time ([`PREPARING`] of them read and
//! compressed at once), zstd-compressed from [`COMPRESS_FROM`](super::read::COMPRESS_FROM)
//! bytes on. Then the signed manifest of those entries (several if they
//! are more than a manifest holds).
//!
//! Pending uploads survive nothing: a daemon that stops drops them (the
//! next build of the same actions is a local hit, and uploads nothing).
//! `warren bucket sync` waits for the queue to drain.
//!
//! Credentials that cannot write (403) are told once per daemon, with what
//! to do; reading goes on.

use std::io::Read as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use libp2p_identity::Keypair;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};

use super::client::{Bucket, Error as BucketError};
use super::keys;
use super::manifest::{Entry, MAX_ENTRIES, Manifest};
use super::read::stored_body;
use crate::daemon::consistency;
use crate::ids::{ActionId, OutputId};
use crate::store::{DiskStore, Lookup, Source};

/// Most ActionIDs one report names (a `go` command that puts more has
/// the rest left out).
pub(crate) const MAX_REPORTED: usize = 50_000;
/// Reports waiting to be uploaded.
pub(crate) const QUEUE: usize = 64;
/// Bodies uploaded at once.
pub(crate) const UPLOADS: usize = 16;
/// Bodies read, hashed and compressed at once, for those uploads.
const PREPARING: usize = 2;

/// What the writing side counts, for `warren bucket status` and `sync`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub bodies_uploaded: AtomicU64,
    pub bodies_present: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub manifests_written: AtomicU64,
    pub skipped: AtomicU64,
    pub failed: AtomicU64,
}

/// The writing side of the bucket tier; see the module docs.
pub(crate) struct Writer {
    queue: mpsc::Sender<Vec<ActionId>>,
    /// Reports queued or being uploaded.
    pending: watch::Sender<u64>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) last_error: Arc<Mutex<Option<String>>>,
}

struct Uploader {
    bucket: Arc<dyn Bucket>,
    store: Arc<DiskStore>,
    key: Keypair,
    counters: Arc<Counters>,
    last_error: Arc<Mutex<Option<String>>>,
    /// Told already that these credentials cannot write.
    denied_told: AtomicBool,
    /// Bodies being read, hashed and compressed at once.
    preparing: tokio::sync::Semaphore,
}

impl Writer {
    /// Starts the uploader, which runs until the daemon stops.
    pub(crate) fn start(bucket: Arc<dyn Bucket>, store: Arc<DiskStore>, key: Keypair) -> Self {
        let (queue, mut reports) = mpsc::channel::<Vec<ActionId>>(QUEUE);
        let (pending, _) = watch::channel(0u64);
        let counters = Arc::new(Counters::default());
        let last_error = Arc::new(Mutex::new(None));
        let uploader = Uploader {
            bucket,
            store,
            key,
            counters: counters.clone(),
            last_error: last_error.clone(),
            denied_told: AtomicBool::new(false),
            preparing: tokio::sync::Semaphore::new(PREPARING),
        };
        let done = pending.clone();
        tokio::spawn(async move {
            while let Some(actions) = reports.recv().await {
                uploader.upload(actions).await;
                done.send_modify(|n| *n = n.saturating_sub(1));
            }
        });
        Self {
            queue,
            pending,
            counters,
            last_error,
        }
    }

    /// Queues a helper's report of what its `go` command put.
    pub(crate) fn built(&self, mut actions: Vec<ActionId>) {
        if actions.is_empty() {
            return;
        }
        actions.truncate(MAX_REPORTED);
        self.pending.send_modify(|n| *n += 1);
        if self.queue.try_send(actions).is_err() {
            self.pending.send_modify(|n| *n = n.saturating_sub(1));
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("bucket upload queue full: a build's report was dropped");
        }
    }

    /// Reports queued or being uploaded.
    pub(crate) fn pending(&self) -> u64 {
        *self.pending.borrow()
    }

    /// Waits until nothing is pending.
    pub(crate) async fn drained(&self) {
        let mut pending = self.pending.subscribe();
        let _ = pending.wait_for(|n| *n == 0).await;
    }
}

/// An entry ready to upload: its manifest entry and its body's bytes as
/// stored (compressed or not) under `name`.
struct Ready {
    entry: Entry,
    name: String,
    bytes: Vec<u8>,
}

impl Uploader {
    async fn upload(&self, actions: Vec<ActionId>) {
        // UPLOADS at a time, in any order (a slow body holds one slot, not
        // all): a body's HEAD and PUT are a round trip each, and at tens of
        // milliseconds to the bucket one after the other they would take
        // minutes for `go build std`. Only the bodies in flight are in
        // memory. The manifest lists them in put order.
        let mut uploads = futures::stream::iter(actions.into_iter().enumerate())
            .map(|(n, action)| async move { (n, self.upload_body(action).await) })
            .buffer_unordered(UPLOADS);
        let mut entries = Vec::new();
        while let Some((n, uploaded)) = uploads.next().await {
            match uploaded {
                Ok(Some(entry)) => entries.push((n, entry)),
                Ok(None) => {}
                Err(e) => return self.failed(&e),
            }
        }
        drop(uploads);
        entries.sort_unstable_by_key(|(n, _)| *n);
        let entries: Vec<Entry> = entries.into_iter().map(|(_, entry)| entry).collect();
        if entries.is_empty() {
            return;
        }
        let signer = self.key.public().to_peer_id();
        for chunk in entries.chunks(MAX_ENTRIES) {
            let time_ms = unix_ms(SystemTime::now());
            let manifest = Manifest {
                signer,
                time_ms,
                entries: chunk.to_vec(),
            };
            let bytes = match manifest.sign(&self.key) {
                Ok(bytes) => bytes,
                Err(e) => {
                    self.note(format!("signing a manifest: {e}"));
                    return;
                }
            };
            let name = keys::manifest(time_ms, &signer, rand_u64());
            match self.bucket.put_if_absent(&name, bytes).await {
                Ok(_) => {
                    self.counters
                        .manifests_written
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return self.failed(&e),
            }
        }
    }

    /// Uploads the body of `action` unless the bucket has it: its manifest
    /// entry, or `None` when the entry may not be uploaded.
    async fn upload_body(&self, action: ActionId) -> Result<Option<Entry>, BucketError> {
        let store = self.store.clone();
        // Reading, hashing and compressing a body takes a core: a few at a
        // time, so that uploads leave the next build its CPU.
        let Ok(preparing) = self.preparing.acquire().await else {
            return Ok(None);
        };
        let ready = tokio::task::spawn_blocking(move || prepare(&store, action))
            .await
            .ok()
            .flatten();
        drop(preparing);
        let Some(Ready { entry, name, bytes }) = ready else {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        let size = bytes.len() as u64;
        match self.bucket.put_if_absent(&name, bytes).await? {
            super::client::Put::Created => {
                self.counters
                    .bodies_uploaded
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_uploaded
                    .fetch_add(size, Ordering::Relaxed);
            }
            super::client::Put::Existed => {
                self.counters.bodies_present.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(Some(entry))
    }

    fn note(&self, message: String) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    fn failed(&self, error: &BucketError) {
        let message = crate::logging::chain(error);
        if matches!(error, BucketError::Denied { .. }) {
            if !self.denied_told.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the team bucket refused an upload (403): these credentials cannot \
                     write; set `write = false` under [bucket], or give them write access \
                     to the bucket's prefix. Reading goes on."
                );
            }
        } else {
            tracing::debug!("uploading to the bucket: {message}");
        }
        self.note(message);
    }
}

/// The entry of `action` if it may be uploaded: built here, not a module
/// index, and its body still matching its OutputID.
fn prepare(store: &DiskStore, action: ActionId) -> Option<Ready> {
    let Ok(Lookup::Hit(entry)) = store.get(&action) else {
        return None;
    };
    if entry.source != Source::Local {
        return None;
    }
    let mut body = Vec::new();
    std::fs::File::open(&entry.path)
        .ok()?
        .read_to_end(&mut body)
        .ok()?;
    let head = &body[..body.len().min(consistency::HEAD)];
    if !consistency::servable(head) {
        return None;
    }
    if body.len() as u64 != entry.size
        || OutputId::from_bytes(Sha256::digest(&body).into()) != entry.output
    {
        return None;
    }
    let (name, bytes) = stored_body(&entry.output, &body);
    Some(Ready {
        entry: Entry {
            action,
            output: entry.output,
            size: entry.size,
            time_ms: unix_ms(entry.time),
        },
        name,
        bytes,
    })
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A random suffix for a manifest's name: two of one signer and
/// millisecond stay apart (std's hasher keys are random per process and
/// per call), as `daemon::put_order` draws its epoch.
fn rand_u64() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(SystemTime::now())
}

#[cfg(test)]
mod tests;
