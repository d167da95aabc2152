//! The team bucket: a third tier after the local store and the LAN peers,
//! an S3-compatible bucket in which every ActionID→OutputID mapping is
//! signed by the builder that made it and read only through this
//! machine's allowlist.
//!
//! - [`manifest`]: the signed batch of one `go` command's mappings, its
//!   format and bounds;
//! - [`keys`]: the names of bodies and manifests under the url's prefix.
//! - [`client`]: what the tier needs of an object store, OpenDAL behind it;
//! - [`index`]: the accepted mappings, in memory and bounded;
//! - [`read`]: lookups, read-ahead and the index's refresh;
//! - [`pace`]: the downloads' bandwidth cap;
//! - [`mod@write`]: uploads of what is built here (`write = true`);
//! - [`gc`]: `warren bucket gc`, and how it combines with lifecycle rules.
//!
//! The tier lives in the daemon: a helper asks the daemon on a local miss
//! (with `[bucket] url` set, even when LAN sharing is off), the daemon
//! asks its LAN peers, then, if its index names the action, the bucket.

use std::sync::Arc;

pub(crate) mod client;
#[cfg(test)]
pub(crate) mod faulty;
pub(crate) mod gc;
pub(crate) mod index;
pub(crate) mod keys;
pub(crate) mod manifest;
pub(crate) mod pace;
pub(crate) mod read;
pub(crate) mod write;

use crate::config::BucketUrl;
use crate::daemon::node_store::{Sharing, StoreAdapter};
use crate::daemon::quiet::Quiet;
use crate::store::DiskStore;

/// The bucket tier of a daemon.
pub(crate) struct Tier {
    pub url: BucketUrl,
    pub reader: Arc<read::Reader>,
    /// With `write = true`.
    pub writer: Option<write::Writer>,
}

impl Tier {
    /// The tier over `bucket` with the `[bucket]` settings `config`;
    /// with `write`, uploads are signed with `key`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the daemon's parts the tier uses"
    )]
    pub(crate) fn new(
        config: &crate::config::Bucket,
        url: BucketUrl,
        bucket: Arc<dyn client::Bucket>,
        sharing: Arc<Sharing>,
        adapter: Arc<StoreAdapter>,
        store: Arc<DiskStore>,
        quiet: Arc<Quiet>,
        key: libp2p_identity::Keypair,
    ) -> Arc<Self> {
        let settings = read::Settings {
            deadline: config.deadline,
            cooldown: config.cooldown,
            refresh: config.refresh,
            read_ahead_size: config.read_ahead_size.as_u64(),
            max_rate: config.max_rate.map(|rate| rate.bytes_per_second()),
        };
        let writer = config
            .write
            .then(|| write::Writer::start(bucket.clone(), store.clone(), key));
        let reader = read::Reader::new(bucket, settings, sharing, adapter, store, quiet);
        Arc::new(Self {
            url,
            reader,
            writer,
        })
    }

    /// What `warren bucket status` shows.
    pub(crate) fn status(&self) -> crate::ipc::status::BucketStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let (manifests, mappings, trusted, untrusted) = self.reader.census();
        let read = &self.reader.counters;
        let mut status = crate::ipc::status::BucketStatus {
            url: self.url.to_string(),
            write: self.writer.is_some(),
            manifests_read: read.manifests_read.load(Relaxed),
            manifests_refused: read.manifests_refused.load(Relaxed),
            manifests_held: manifests as u64,
            mappings_held: mappings as u64,
            trusted: (trusted.into_iter())
                .map(|(peer, n)| (peer.to_string(), n as u64))
                .collect(),
            untrusted: untrusted.iter().map(ToString::to_string).collect(),
            hits: read.hits.load(Relaxed),
            read_ahead: read.read_ahead.load(Relaxed),
            bytes_fetched: read.bytes.load(Relaxed),
            failures: read.failures.load(Relaxed),
            ..Default::default()
        };
        if let Some(writer) = &self.writer {
            let written = &writer.counters;
            status.uploads_pending = writer.pending();
            status.bodies_uploaded = written.bodies_uploaded.load(Relaxed);
            status.bodies_present = written.bodies_present.load(Relaxed);
            status.bytes_uploaded = written.bytes_uploaded.load(Relaxed);
            status.manifests_written = written.manifests_written.load(Relaxed);
            status.upload_failures = written.failed.load(Relaxed);
            status.last_upload_error = writer
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
        }
        status
    }

    /// The allowlist changed: see [`read::Reader::allowlist_changed`].
    pub(crate) fn allowlist_changed(&self) {
        self.reader.allowlist_changed();
    }
}
