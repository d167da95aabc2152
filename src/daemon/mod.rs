//! `warren daemon`: one long-lived process per user and store that shares
//! the store with allowlisted coworkers.
//!
//! It owns what a per-command helper cannot: the libp2p node (connections
//! kept open to allowlisted peers, mDNS), serving the local store to peers,
//! and answering helpers' lookups on the local socket ([`server`], speaking
//! [`crate::ipc`]). Fetched bodies go through [`DiskStore::begin_object`],
//! so they are verified (size and SHA-256 against the OutputID) before they
//! land.
//!
//! Shutdown follows sccache's server: on SIGINT/SIGTERM the socket stops
//! accepting, lookups in flight get a bounded drain, and the node stops.
//! Allowlist edits apply without a restart: `warren peers add/remove` asks
//! the daemon to re-read the file at once, and edits by hand are picked up
//! by polling its mtime ([`allowlist`]). Each time, and once at start
//! before anything is answered, the entries of every peer not pulled from
//! are purged.
//!
//! This module wires the daemon together and answers helpers; the rest:
//!
//! - [`server`]: the helper socket, on a thread of its own;
//! - [`node_store`]: the store as the node sees it (serving, verified
//!   fetched bodies, hints, summaries), with the [`consistency`] checks
//!   Go's own records allow, the [`ledger`] of what was built here that
//!   agreement consults, and the [`disk_floor`] of free space fetched
//!   bodies leave;
//! - [`put_order`]: the store's entries in the order they were put, for
//!   hints, summaries and catalogs (kept current by inotify on Linux);
//! - [`syncer`]: fetched bodies synced to disk in groups, a second after
//!   they land (the store's group commit);
//! - [`allowlist`]: the allowlist as the daemon applies it;
//! - [`replicate`]: fetching coworkers' new entries in the background, if
//!   configured;
//! - [`metrics`]: the daemon's counters for Prometheus, if configured;
//!   [`quiet`]: its warnings, each fault once in a while with a count;
//!   [`accept`]: what its listeners do when accepting fails;
//!   [`open_files`]: its limit on open files, raised at start;
//! - [`trace`]: the last builds' lookups, as helpers reported them;
//! - [`bucket`]: the team bucket, the tier after the LAN peers, if
//!   configured (with LAN sharing off, the node neither listens, nor
//!   dials, nor uses mDNS, and the daemon serves the bucket alone).

mod accept;
mod allowlist;
pub(crate) mod bucket;
pub(crate) mod consistency;
pub(crate) mod disk_floor;
mod ledger;
pub(crate) mod metrics;
mod node_store;
mod open_files;
mod put_order;
mod quiet;
pub(crate) mod replicate;
mod server;
mod syncer;
mod trace;

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use warren_p2p::multiaddr::Protocol;
use warren_p2p::{Client, Event, MdnsConfig, Multiaddr, NodeConfig, PeerId};

use self::allowlist::{Trust, warn_unknown_replicated, watch_allowlist};
use self::node_store::{Sharing, StoreAdapter};
use self::quiet::{Flaps, Quiet};
use self::server::serve_helpers;
use crate::config::trust::Allowlist;
use crate::config::{Config, Replicate, identity};
use crate::fsutil::lock::FileLock;
use crate::ids::ActionId;
use crate::ipc;
use crate::ipc::status::{DaemonStatus, StaticStatus, unix_ms};
use crate::ipc::trace::Build;
use crate::store::{DiskStore, layout};

/// How often the daemon checks that its store is still the directory it
/// opened, and still its user's alone, above it too (a few `lstat`s).
const STORE_CHECK: Duration = Duration::from_secs(1);
/// A probe's answer waits at least this long (a peer that does not trust
/// us closes the connection just after the handshake), at most
/// `PROBE_MAX` (a dial still going then counts as timed out), and checks
/// every `PROBE_POLL`.
const PROBE_MIN: Duration = Duration::from_millis(1500);
const PROBE_MAX: Duration = Duration::from_secs(6);
const PROBE_POLL: Duration = Duration::from_millis(250);

/// Runs the daemon until a signal.
pub(crate) fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let open_files = open_files::raise();
    tracing::debug!(?open_files, "the soft limit on open files");
    let (key, _) = config.identity()?;
    let peer_id = identity::peer_id(&key);
    let store = Arc::new(
        DiskStore::open(&config.store.dir)
            .with_context(|| format!("opening the store at {}", config.store.dir.display()))?,
    );
    let Some(_running) = FileLock::try_acquire(&layout::daemon_lock(&config.store.dir))? else {
        anyhow::bail!(
            "a warren daemon is already running for {}",
            config.store.dir.display()
        );
    };
    // A crash left files that lookups (ours, and peers') verify until a
    // sweep has seen them all: one runs beside the daemon.
    if store.recovery_pending() {
        spawn_recovery(store.clone());
    }
    let allowlist_path = config.allowlist_path();
    let allowlist = Allowlist::load(&allowlist_path)?;
    // Purging is the store's, not a command's: the entries of peers that
    // were removed (or made serve-only) while no daemon ran, by hand or
    // by `warren peers`, go before anything is served or answered.
    store
        .purge_except(&allowlist.sharing().pull)
        .context("purging the entries of peers no longer pulled from")?;
    // One thread for the peer-to-peer node's async work: a fetch passes
    // through a dozen tasks (event loop, connection, codec), and on a
    // single thread handing over between them is a queue push, where on a
    // multi-threaded runtime each hand-over can be a cross-core wake-up
    // (measured: docs/benchmarks.md). File I/O and hashing of big bodies
    // run on the blocking pool, in parallel with it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // With LAN sharing off (a daemon for the team bucket alone), the
        // node neither listens, nor dials, nor uses mDNS.
        let lan = config.share.enabled;
        let (listen, static_peers) = if lan {
            (&config.share.listen[..], &config.share.static_peers[..])
        } else {
            (&[][..], &[][..])
        };
        let mut node = NodeConfig::new(key.clone())
            .with_listen(parse_addrs(listen)?)
            .with_allowlist(allowlist.roles())
            .with_static_peers(parse_static_peers(static_peers)?)
            .with_lookup_deadline(config.share.lookup_deadline)
            .with_max_body_size(config.share.max_body_size.as_u64())
            .with_read_ahead(
                config.share.read_ahead,
                warren_p2p::config::defaults::READ_AHEAD_MAX_BODY,
            )
            .with_read_ahead_executables_max(config.share.read_ahead_executables_max.as_u64())
            .with_compression(config.share.compression)
            .with_agreement(config.share.agreement)
            .with_inbound_from_anywhere(config.share.inbound_from_anywhere);
        if lan && config.share.mdns {
            node = node.with_mdns(Some(
                MdnsConfig::default().with_interfaces(config.share.interfaces.clone()),
            ));
        }
        let sharing = Sharing::new(allowlist.sharing());
        // One table for every fault the daemon tells: see `quiet`.
        let quiet = Arc::new(Quiet::default());
        // Fetched bodies reach the disk in groups, a second apart.
        let syncer = syncer::Syncer::start(store.clone(), quiet.clone())
            .context("starting the thread that syncs the store")?;
        let adapter = StoreAdapter::new(
            store.clone(),
            sharing.clone(),
            config.store.trim_policy(),
            config.share.agreement,
            quiet.clone(),
        )
        .context("indexing the store")?;
        let put_order = adapter.put_order();
        let adapter = Arc::new(adapter);
        let (client, events, event_loop) =
            warren_p2p::new(node, adapter.clone()).context("starting the peer-to-peer node")?;
        let node_task = tokio::spawn(event_loop.run());
        let shutdown = CancellationToken::new();
        let bucket = match &config.bucket.url {
            Some(url) => {
                let location = bucket::client::S3Location::from_config(&config.bucket)
                    .expect("a url to give a location");
                let client = bucket::client::OpendalBucket::s3(&location)
                    .context("opening the team bucket")?;
                let tier = bucket::Tier::new(
                    &config.bucket,
                    url.clone(),
                    Arc::new(client),
                    sharing.clone(),
                    adapter.clone(),
                    store.clone(),
                    quiet.clone(),
                    key.clone(),
                );
                tokio::spawn(tier.reader.clone().refresh_forever(shutdown.clone()));
                tracing::info!("team bucket {}", tier.url);
                Some(tier)
            }
            None => None,
        };
        let replicated = replicate::chosen(&config.share.replicate, &allowlist);
        warn_unknown_replicated(&config.share.replicate, &allowlist);
        let trust = Arc::new(Trust {
            client: client.clone(),
            replicate: config.share.replicate.clone(),
            replicated: Arc::new(std::sync::Mutex::new(replicated)),
            sharing,
            store: store.clone(),
            path: allowlist_path,
            current: tokio::sync::Mutex::new(allowlist),
            bucket: bucket.clone(),
        });
        let activity = Arc::new(replicate::Activity::default());
        let replication = Arc::new(replicate::State::default());
        if let Some(why) = replicate::off_because(&config.share) {
            tracing::warn!(
                "replicate = {} is off: {why} (`warren doctor` says more)",
                config.share.replicate
            );
        } else if trust.replicate != Replicate::None {
            let replicator = replicate::Replicator {
                client: client.clone(),
                store: store.clone(),
                settings: replicate::Settings {
                    max_size: config.share.replicate_max_size.as_u64(),
                    rate: config.share.replicate_rate.bytes_per_second(),
                    window: config.share.replicate_window,
                    store_max_size: config.store.max_size.as_u64(),
                    executables_max: config.share.read_ahead_executables_max.as_u64(),
                },
                targets: trust.replicated.clone(),
                activity: activity.clone(),
                state: replication.clone(),
            };
            tokio::spawn(replicator.run(shutdown.clone()));
        }
        let handler = Arc::new(Daemon {
            activity,
            replication,
            client: client.clone(),
            peer_id,
            trust: trust.clone(),
            builds: std::sync::Mutex::default(),
            started: SystemTime::now(),
            mdns: lan && config.share.mdns,
            interfaces: config.share.interfaces.clone(),
            bucket,
        });
        let started = unix_ms(handler.started);
        let replication = handler.replication.clone();
        let helpers = serve_helpers(
            config.socket_path(),
            handler,
            quiet.clone(),
            shutdown.clone(),
        )
        .await?;
        tokio::spawn(log_events(events, quiet.clone()));
        let metrics = match config.share.metrics_listen {
            Some(address) => {
                let source = metrics::Source {
                    client: client.clone(),
                    replication,
                    put_order,
                    store: config.store.dir.clone(),
                    started_unix_ms: started,
                };
                metrics::start(address, source, quiet.clone(), shutdown.clone())
                    .await
                    .inspect_err(|e| {
                        tracing::warn!("cannot serve metrics: {}", crate::logging::chain(&**e));
                    })
                    .ok()
            }
            None => None,
        };
        tokio::spawn(watch_allowlist(trust, shutdown.clone()));
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let store_watch = tokio::spawn(watch_store(store.clone(), shutdown.clone()));
        tracing::info!("daemon {peer_id} serving {}", config.store.dir.display());
        shutdown.cancelled().await;
        // The helper thread drains lookups in flight (bounded), then ends;
        // the metrics thread ends at once.
        let _ = tokio::task::spawn_blocking(move || {
            let _ = helpers.join();
            metrics.map(std::thread::JoinHandle::join)
        })
        .await;
        node_task.abort();
        if let Some(syncer) = syncer {
            // What landed last goes to disk before the daemon ends.
            let _ = tokio::task::spawn_blocking(move || syncer.stop()).await;
        }
        if let Ok(Some(error)) = store_watch.await {
            // The socket is left alone: it may be another's now.
            return Err(anyhow::Error::new(error).context("the daemon stopped"));
        }
        let _ = std::fs::remove_file(config.socket_path());
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Sweeps the store after a crash on a thread of its own (see
/// `store::recovery`); skips if another process sweeps it.
fn spawn_recovery(store: Arc<DiskStore>) {
    let spawned = std::thread::Builder::new()
        .name("warren-recovery".into())
        .spawn(move || {
            if let Err(e) = store.recover(false) {
                tracing::warn!(
                    "cannot finish the recovery after a crash: {}; `warren verify` retries it",
                    crate::logging::chain(&e)
                );
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("could not start the recovery: {e}");
    }
}

fn parse_addrs(addrs: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|addr| {
            Multiaddr::from_str(addr).with_context(|| format!("invalid multiaddr {addr:?}"))
        })
        .collect()
}

/// `static-peers`: multiaddrs at an IP or a host name (`/dns`, `/dns4`,
/// `/dns6`, resolved by the node at each dial). Not `/dnsaddr`, whose TXT
/// records would let whoever controls them choose what the daemon dials.
fn parse_static_peers(addrs: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    let addresses = parse_addrs(addrs)?;
    if let Some(address) = (addresses.iter())
        .find(|address| (address.iter()).any(|p| matches!(p, Protocol::Dnsaddr(_))))
    {
        anyhow::bail!(
            "static peer {address}: /dnsaddr is not supported; \
             give the host name as /dns4/<name>/tcp/<port>/p2p/<peer ID>"
        );
    }
    Ok(addresses)
}

/// Answers helpers.
struct Daemon {
    client: Client,
    /// When helpers last asked: replication yields to them.
    activity: Arc<replicate::Activity>,
    replication: Arc<replicate::State>,
    peer_id: PeerId,
    trust: Arc<Trust>,
    /// Recent builds' lookups, for `warren trace`.
    builds: std::sync::Mutex<trace::Ring>,
    started: SystemTime,
    mdns: bool,
    interfaces: Vec<String>,
    /// The team bucket, the tier after the LAN peers, if configured.
    bucket: Option<Arc<bucket::Tier>>,
}

impl server::Handler for Daemon {
    fn get(&self, action: ActionId) -> BoxFuture<'_, ipc::Response> {
        Box::pin(async move {
            self.activity.lookup();
            let miss = match self.client.lookup(action).await {
                Ok(fetched) => {
                    return ipc::Response::Hit {
                        peer: fetched.peer,
                        size: fetched.size,
                        bucket: false,
                    };
                }
                Err(miss) => miss,
            };
            // Then the bucket, if its index names the action (no round
            // trip otherwise); else the node's reason, as it decided it.
            let Some(bucket) = &self.bucket else {
                return ipc::Response::Missed(miss);
            };
            match bucket.reader.lookup(action).await {
                Ok(Some(fetched)) => ipc::Response::Hit {
                    peer: fetched.signer,
                    size: fetched.size,
                    bucket: true,
                },
                Ok(None) => ipc::Response::Missed(miss),
                Err(bucket_miss) => ipc::Response::BucketMissed(bucket_miss),
            }
        })
    }

    fn built(&self, actions: Vec<ActionId>) {
        if let Some(writer) = self.bucket.as_ref().and_then(|b| b.writer.as_ref()) {
            writer.built(actions);
        }
    }

    fn bucket(&self, sync: Option<Duration>) -> BoxFuture<'_, ipc::Response> {
        Box::pin(async move {
            let Some(bucket) = &self.bucket else {
                return ipc::Response::Bucket(None);
            };
            if let (Some(wait), Some(writer)) = (sync, &bucket.writer) {
                let _ = tokio::time::timeout(wait, writer.drained()).await;
            }
            ipc::Response::Bucket(Some(Box::new(bucket.status())))
        })
    }

    fn report(&self, build: Build) {
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(build);
    }

    fn trace(&self) -> Vec<Build> {
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .builds()
    }

    fn reload_allowlist(&self) -> BoxFuture<'_, ipc::Response> {
        Box::pin(async move {
            match self.trust.reload().await {
                Ok(purged) => ipc::Response::Reloaded {
                    purged_entries: purged.entries,
                    purged_bytes: purged.bytes,
                },
                Err(e) => ipc::Response::Error {
                    message: crate::logging::chain(&e),
                },
            }
        })
    }

    fn status(&self) -> BoxFuture<'_, DaemonStatus> {
        Box::pin(async move {
            let peers = self.client.peers().await;
            let listen = self.client.listen_addrs().await;
            let static_addresses = self.client.static_addresses().await;
            let peers = self.replication.statuses(&peers);
            DaemonStatus {
                peer_id: self.peer_id.to_string(),
                listen: listen.iter().map(ToString::to_string).collect(),
                peers,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                pid: std::process::id(),
                started_unix_ms: unix_ms(self.started),
                mdns: self.mdns,
                interfaces: self.interfaces.clone(),
                probed_unix_ms: None,
                static_addresses: static_addresses.iter().map(StaticStatus::from).collect(),
            }
        })
    }

    fn probe(&self) -> BoxFuture<'_, DaemonStatus> {
        Box::pin(async move {
            let start = SystemTime::now();
            let began = tokio::time::Instant::now();
            self.client.probe().await;
            // Every dial ends in a connection or a failure; a peer that
            // does not trust us closes its connection a moment after it
            // opened, so the answer waits that moment at least.
            loop {
                tokio::time::sleep(PROBE_POLL).await;
                let peers = self.client.peers().await;
                let settled = peers
                    .iter()
                    .filter(|peer| peer.allowlisted && !peer.addresses.is_empty())
                    .all(|peer| {
                        peer.connected
                            || peer
                                .last_failure
                                .as_ref()
                                .is_some_and(|(at, _)| *at >= start)
                    });
                let waited = began.elapsed();
                if (settled && waited >= PROBE_MIN) || waited >= PROBE_MAX {
                    break;
                }
            }
            let mut status = self.status().await;
            status.probed_unix_ms = Some(unix_ms(start));
            status
        })
    }
}

/// Logs the node's events: faults that repeat (a peer's bad bodies, a
/// peer that keeps dropping) once in a while, with a count ([`quiet`]).
async fn log_events(mut events: tokio::sync::mpsc::Receiver<Event>, quiet: Arc<Quiet>) {
    let mut flaps = Flaps::default();
    while let Some(event) = events.recv().await {
        let now = tokio::time::Instant::now();
        match event {
            Event::BodyRejected {
                peer,
                action,
                reason,
            } => match quiet.occurred(&format!("rejected {peer}"), now) {
                Some(n) => tracing::warn!(
                    "rejected {n} bod{} from peer {peer} since the last warning \
                     (latest for action {action}: {reason}); it is left out of lookups for a while",
                    if n == 1 { "y" } else { "ies" }
                ),
                None => tracing::debug!("rejected a body from peer {peer}: {reason}"),
            },
            Event::PeerDisconnected(peer) => {
                tracing::debug!("peer {peer} disconnected");
                if let Some(n) = flaps.disconnected(peer, now)
                    && quiet.occurred(&format!("flapping {peer}"), now).is_some()
                {
                    tracing::warn!(
                        "peer {peer} lost its connection {n} times in {} minutes: its network \
                         or its daemon is unstable, and lookups waiting on it missed; \
                         `warren doctor` shows the last failure",
                        quiet::WINDOW.as_secs() / 60
                    );
                }
            }
            other => tracing::debug!("{other:?}"),
        }
    }
}

/// Stops the daemon when its store is no longer the one it opened, or no
/// longer its user's alone: warren works by path, so a store swapped under
/// it (by whoever could write a directory above, or the store itself,
/// once that became possible) would have the daemon serve and fill
/// another's store. Holding the store by an open directory handle was
/// weighed: it would protect the daemon's own reads and writes, but `go`
/// gets a DiskPath, so the path is what must stay ours; this check tells
/// the user within [`STORE_CHECK`].
async fn watch_store(
    store: Arc<DiskStore>,
    shutdown: CancellationToken,
) -> Option<crate::store::Error> {
    loop {
        tokio::select! {
            () = tokio::time::sleep(STORE_CHECK) => {}
            () = shutdown.cancelled() => return None,
        }
        if let Err(error) = store.check_unchanged() {
            shutdown.cancel();
            return Some(error);
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for signals; stop the daemon with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `static-peers` takes IPs and host names alike; `/dnsaddr`, whose
    /// TXT records would choose what the daemon dials, is a clear error.
    #[test]
    fn static_peers_may_be_names_but_not_dnsaddr() {
        let peer = PeerId::random();
        let listed = [
            format!("/ip4/10.0.0.2/tcp/7311/p2p/{peer}"),
            format!("/dns4/build-server.office/tcp/7311/p2p/{peer}"),
            "/dns/laptop.tail1234.ts.net/tcp/7311".to_owned(),
            "/dns6/build6.office/tcp/7311".to_owned(),
        ];
        let parsed = parse_static_peers(&listed).unwrap();
        assert_eq!(parsed.len(), 4);
        let error = parse_static_peers(&[format!("/dnsaddr/office.example/p2p/{peer}")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("/dnsaddr is not supported"), "{error}");
    }
}
