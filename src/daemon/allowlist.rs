//! The allowlist as the daemon applies it, and keeps applying it as it
//! changes: to the node (who may connect, who is asked and served), to
//! the store (whose bodies land, whose entries are served on) and to
//! replication (whom `[share] replicate` names).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren_p2p::{Client, PeerId};

use crate::config::Replicate;
use crate::config::trust::{self, Allowlist};
use crate::daemon::node_store::Sharing;
use crate::daemon::replicate;
use crate::store::{DiskStore, SourceUsage as Purged};

/// How often the allowlist file is checked for changes.
const ALLOWLIST_POLL: Duration = Duration::from_secs(1);

/// The allowlist as the daemon applies it: to the node (who may connect,
/// who is asked and served) and to the store (whose bodies land, whose
/// entries are served on). Re-read when the file changes, or at once when
/// `warren peers add/remove` asks; either way the entries of peers no
/// longer pulled from are purged, bodies that were on their way included.
pub(super) struct Trust {
    pub client: Client,
    /// `[share] replicate`, and the peers it names as the allowlist stands.
    pub replicate: Replicate,
    pub replicated: Arc<std::sync::Mutex<HashSet<PeerId>>>,
    pub sharing: Arc<Sharing>,
    pub store: Arc<DiskStore>,
    pub path: PathBuf,
    pub current: tokio::sync::Mutex<Allowlist>,
    /// The team bucket, if one is configured: its index drops the
    /// mappings of signers no longer pulled from.
    pub bucket: Option<Arc<crate::daemon::bucket::Tier>>,
}

impl Trust {
    /// Re-reads the allowlist and applies any change; the entries purged.
    pub(super) async fn reload(&self) -> Result<Purged, trust::Error> {
        let list = Allowlist::load(&self.path)?;
        let mut current = self.current.lock().await;
        if list == *current {
            return Ok(Purged::default());
        }
        let roles = list.roles();
        tracing::info!("allowlist changed: {} peers", roles.len());
        let sharing = list.sharing();
        let pulled = sharing.pull.clone();
        // The store first: from now on no body of theirs lands, and none
        // that passed its check before is still on its way to the store
        // (`Sharing::set` waits for it), so the purge below sees it.
        self.sharing.set(sharing);
        if let Some(bucket) = &self.bucket {
            bucket.allowlist_changed();
        }
        self.client.set_allowlist(roles).await;
        *self.replicated.lock().unwrap_or_else(|p| p.into_inner()) =
            replicate::chosen(&self.replicate, &list);
        warn_unknown_replicated(&self.replicate, &list);
        *current = list;
        drop(current);
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.purge_except(&pulled)).await {
            Ok(Ok(purged)) => Ok(purged),
            Ok(Err(e)) => {
                tracing::warn!(
                    "cannot purge removed peers' entries: {}",
                    crate::logging::chain(&e)
                );
                Ok(Purged::default())
            }
            Err(_) => Ok(Purged::default()),
        }
    }
}

/// Says which names in `replicate` name no allowlisted peer pulled from.
pub(super) fn warn_unknown_replicated(replicate: &Replicate, allowlist: &Allowlist) {
    let unknown = replicate::unknown(replicate, allowlist);
    if !unknown.is_empty() {
        tracing::warn!(
            "replicate names {} but the allowlist has no such peer that is pulled from; \
             `warren peers` lists them",
            unknown.join(", ")
        );
    }
}

/// Applies allowlist edits made by hand (`warren peers` asks at once).
pub(super) async fn watch_allowlist(trust: Arc<Trust>, shutdown: CancellationToken) {
    let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = modified(&trust.path);
    loop {
        tokio::select! {
            () = tokio::time::sleep(ALLOWLIST_POLL) => {}
            () = shutdown.cancelled() => return,
        }
        let now = modified(&trust.path);
        if now == seen {
            continue;
        }
        seen = now;
        if let Err(e) = trust.reload().await {
            tracing::warn!(
                "keeping the previous allowlist: {}",
                crate::logging::chain(&e)
            );
        }
    }
}
