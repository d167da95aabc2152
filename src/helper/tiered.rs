//! Where an entry comes from and where a put goes: the local store first,
//! then whatever lies beyond it (the daemon and its peers).
//!
//! This is the one place that decides the order of tiers, so peer sharing
//! plugs in as a [`RemoteTier`] without touching the GOCACHEPROG session,
//! which only decides which thread runs each step:
//!
//! - **get**: [`MultiLevelStorage::get`] asks the local tier, a few small
//!   file reads. It either answers ([`Step::Answered`]: a hit, or a miss no
//!   other tier can change) or says the remote tier may know
//!   ([`Step::AskRemote`]); [`MultiLevelStorage::get_remote`] then waits on
//!   the network. A local error is a miss, and asks the remote tier like
//!   one. Either way, an entry whose source is not trusted (a peer no
//!   longer pulled from: [`MultiLevelStorage::with_trusted`]) is a miss.
//! - **put**: bodies go to the local store only, hashed as they arrive
//!   ([`MultiLevelStorage::begin_put`]) and stored once verified
//!   ([`MultiLevelStorage::commit_put`]). Peers learn of new entries from
//!   the daemon's index of the store, not from the helper.
//!
//! A remote tier never hands bodies to `go` directly: it writes them
//! through [`DiskStore::begin_object`], which verifies size and SHA-256
//! before anything lands, and the local store then serves the verified copy
//! (backfilled, so the next lookup is local).

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::ids::{ActionId, OutputId};
use crate::ipc::trace::{Hit, Miss};
use crate::logging::chain;
use crate::store::{self, DiskStore, Entry, Lookup, ObjectWriter, Source, VerifiedObject};

/// A source of entries consulted after a local miss.
pub(crate) trait RemoteTier: Send + Sync {
    /// Looks up `action` beyond the local store. A found body must be
    /// committed to `store` (which verifies it) before it is returned,
    /// with where it came from.
    /// Trouble of any kind is a miss (`Err`, with the [`Miss`] that says
    /// why), and implementations bound their own latency: a slow remote
    /// must not slow the build.
    fn fetch<'a>(
        &'a self,
        action: ActionId,
        store: &'a Arc<DiskStore>,
    ) -> BoxFuture<'a, Result<(Entry, Hit), Miss>>;

    /// False for a tier that can never find anything, so callers skip it
    /// without the cost of a task.
    fn is_enabled(&self) -> bool {
        true
    }
}

impl<T: RemoteTier> RemoteTier for Arc<T> {
    fn fetch<'a>(
        &'a self,
        action: ActionId,
        store: &'a Arc<DiskStore>,
    ) -> BoxFuture<'a, Result<(Entry, Hit), Miss>> {
        self.as_ref().fetch(action, store)
    }

    fn is_enabled(&self) -> bool {
        self.as_ref().is_enabled()
    }
}

/// The remote tier when sharing is not configured: always a miss, at once.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NoRemote;

impl RemoteTier for NoRemote {
    fn fetch<'a>(
        &'a self,
        _: ActionId,
        _: &'a Arc<DiskStore>,
    ) -> BoxFuture<'a, Result<(Entry, Hit), Miss>> {
        Box::pin(std::future::ready(Err(Miss::SharingOff)))
    }

    fn is_enabled(&self) -> bool {
        false
    }
}

/// Whether an entry from a source may be handed to `go`.
pub(crate) type Trusted = Box<dyn Fn(&Source) -> bool + Send + Sync>;

/// The local store backed by a remote tier.
pub(crate) struct MultiLevelStorage {
    local: Arc<DiskStore>,
    remote: Box<dyn RemoteTier>,
    trusted: Trusted,
}

impl MultiLevelStorage {
    pub(crate) fn new(local: Arc<DiskStore>, remote: Box<dyn RemoteTier>) -> Self {
        Self {
            local,
            remote,
            trusted: Box::new(|_| true),
        }
    }

    /// Hands `go` only entries whose source `trusted` admits; others are a
    /// miss (and left for the daemon to purge: this helper's view of the
    /// allowlist may be older than the daemon's).
    pub(crate) fn with_trusted(mut self, trusted: Trusted) -> Self {
        self.trusted = trusted;
        self
    }

    /// A hit whose source is not trusted is a miss.
    fn admit(&self, found: Lookup) -> Lookup {
        match found {
            Lookup::Hit(entry) if !(self.trusted)(&entry.source) => {
                tracing::debug!(
                    "not using {}: its source {:?} is no longer pulled from",
                    entry.path.display(),
                    entry.source
                );
                Lookup::Miss
            }
            found => found,
        }
    }

    /// Only the local store.
    pub(crate) fn local_only(local: Arc<DiskStore>) -> Self {
        Self::new(local, Box::new(NoRemote))
    }

    #[cfg(test)]
    pub(crate) fn local(&self) -> &Arc<DiskStore> {
        &self.local
    }

    /// The first step of a lookup: the local tier alone, a few small file
    /// reads and no waiting on anyone.
    pub(crate) fn get(&self, action: &ActionId) -> Step {
        let found = self.local.get(action).unwrap_or_else(|e| {
            tracing::warn!("cache lookup failed, treating it as a miss: {}", chain(&e));
            Lookup::Miss
        });
        if matches!(found, Lookup::Miss) {
            // A put (or a fetch) is likely to follow: its dirty marker is
            // made now, off its path (`store::group_commit`).
            self.local.prepare_write();
        }
        match self.admit(found) {
            Lookup::Miss if self.remote.is_enabled() => Step::AskRemote,
            found => Step::Answered(found),
        }
    }

    /// The second step of a lookup the local tier missed: the tiers beyond
    /// it. Waits on the network (bounded by the tier). A miss says why.
    pub(crate) async fn get_remote(&self, action: ActionId) -> Result<(Entry, Hit), Miss> {
        let (entry, hit) = self.remote.fetch(action, &self.local).await?;
        match self.admit(Lookup::Hit(entry)) {
            Lookup::Hit(entry) => Ok((entry, hit)),
            Lookup::Miss => Err(Miss::Peers(warren_p2p::Miss::NotFound)),
        }
    }

    /// Starts a put of a body of `size` bytes that must hash to `output`.
    pub(crate) fn begin_put(
        &self,
        output: OutputId,
        size: u64,
    ) -> Result<ObjectWriter, store::Error> {
        self.local.begin_object(output, size)
    }

    /// Stores a verified put body under `action`.
    pub(crate) fn commit_put(
        &self,
        action: &ActionId,
        body: VerifiedObject,
    ) -> Result<Entry, store::Error> {
        self.local.commit(action, body)
    }
}

/// What the local tier made of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A hit, or a miss that no other tier can change.
    Answered(Lookup),
    /// A miss the remote tier may answer: finish with
    /// [`MultiLevelStorage::get_remote`].
    AskRemote,
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ids::OutputId;

    /// A remote that serves one body, honestly or not.
    struct FakeRemote {
        body: Vec<u8>,
        claimed: OutputId,
        calls: AtomicUsize,
    }

    impl RemoteTier for FakeRemote {
        fn fetch<'a>(
            &'a self,
            action: ActionId,
            store: &'a Arc<DiskStore>,
        ) -> BoxFuture<'a, Result<(Entry, Hit), Miss>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::Relaxed);
                let stored = (|| {
                    let mut writer = store
                        .begin_object(self.claimed, self.body.len() as u64)
                        .ok()?;
                    writer.write_all(&self.body).ok()?;
                    let verified = writer.finish().ok()?;
                    store.commit(&action, verified).ok()
                })();
                stored
                    .map(|entry| (entry, Hit::Peer(None)))
                    .ok_or(Miss::Peers(warren_p2p::Miss::NotFound))
            })
        }
    }

    fn storage(body: &[u8], claimed: OutputId) -> (tempfile::TempDir, MultiLevelStorage) {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(DiskStore::open(dir.path()).unwrap());
        let remote = FakeRemote {
            body: body.to_vec(),
            claimed,
            calls: AtomicUsize::new(0),
        };
        (dir, MultiLevelStorage::new(local, Box::new(remote)))
    }

    #[tokio::test]
    async fn remote_hits_are_verified_and_backfilled() {
        let (_dir, storage) = storage(b"remote body", OutputId::of(b"remote body"));
        let action = ActionId::from_bytes([1; 32]);
        assert_eq!(storage.get(&action), Step::AskRemote);
        let (entry, _) = storage.get_remote(action).await.expect("a hit");
        assert_eq!(std::fs::read(&entry.path).unwrap(), b"remote body");
        // The second lookup is served locally.
        assert!(matches!(
            storage.get(&action),
            Step::Answered(Lookup::Hit(_))
        ));
    }

    #[tokio::test]
    async fn lying_remotes_are_a_miss() {
        let (_dir, storage) = storage(b"tampered", OutputId::of(b"original"));
        let action = ActionId::from_bytes([1; 32]);
        assert_eq!(
            storage.get_remote(action).await,
            Err(Miss::Peers(warren_p2p::Miss::NotFound))
        );
        assert_eq!(
            storage.local().usage().unwrap(),
            store::trim::Usage::default()
        );
    }

    #[tokio::test]
    async fn local_only_misses_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MultiLevelStorage::local_only(Arc::new(DiskStore::open(dir.path()).unwrap()));
        let action = ActionId::from_bytes([2; 32]);
        assert_eq!(storage.get(&action), Step::Answered(Lookup::Miss));
        assert_eq!(storage.get_remote(action).await, Err(Miss::SharingOff));
    }
}
