//! `warren daemon`: one long-lived process per user and store that shares
//! the store with allowlisted coworkers.
//!
//! It owns what a per-command helper cannot: the libp2p node (connections
//! kept open to allowlisted peers, mDNS), serving the local store to peers,
//! and answering helpers' lookups on the local socket ([`crate::ipc`]).
//! Fetched bodies go through [`DiskStore::begin_object`], so they are
//! verified (size and SHA-256 against the OutputID) before they land.
//!
//! Shutdown follows sccache's server: on SIGINT/SIGTERM the socket stops
//! accepting, lookups in flight get a bounded drain, and the node stops.
//! Allowlist edits (`warren peers add/remove`) are picked up by polling the
//! file's mtime, so they apply without a restart.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use warren_p2p::{
    BodySink, Client, CommitError, Event, MdnsConfig, Multiaddr, NodeConfig, PeerId, PeerInfo,
    Served, SummaryChunk,
};

use crate::config::Config;
use crate::identity;
use crate::ids::{ActionId, OutputId};
use crate::ipc;
use crate::lock::FileLock;
use crate::put_order::PutOrder;
use crate::store::{self, DiskStore, Lookup, ObjectWriter};
use crate::tiered::BoxFuture;
use crate::trust::Allowlist;

/// How often the allowlist file is checked for changes.
const ALLOWLIST_POLL: Duration = Duration::from_secs(1);
/// How long lookups in flight may finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(2);
/// Hinted bodies bigger than this are left for a lookup to fetch.
const READ_AHEAD_MAX_BODY: u64 = 64 << 20;

/// Runs the daemon until a signal.
pub fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let key = identity::load(&config.identity_path())?;
    let peer_id = identity::peer_id(&key);
    let store = Arc::new(
        DiskStore::open(&config.dir)
            .with_context(|| format!("opening the store at {}", config.dir.display()))?,
    );
    let Some(_running) = FileLock::try_acquire(&config.dir.join("daemon.lock"))? else {
        anyhow::bail!(
            "a warren daemon is already running for {}",
            config.dir.display()
        );
    };
    let allowlist_path = config.allowlist_path();
    let allowlist = Allowlist::load(&allowlist_path)?;
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
        let mut node = NodeConfig::new(key)
            .with_listen(parse_addrs(&config.share.listen)?)
            .with_allowlist(allowlist.ids())
            .with_static_peers(parse_addrs(&config.share.static_peers)?)
            .with_lookup_deadline(config.share.lookup_deadline)
            .with_max_body_size(config.share.max_body_size)
            .with_read_ahead(config.share.read_ahead, READ_AHEAD_MAX_BODY)
            .with_compression(config.share.compression);
        if config.share.mdns {
            node = node.with_mdns(Some(
                MdnsConfig::default().with_interfaces(config.share.interfaces.clone()),
            ));
        }
        let adapter = StoreAdapter::new(store.clone()).context("indexing the store")?;
        let (client, events, event_loop) =
            warren_p2p::new(node, Arc::new(adapter)).context("starting the peer-to-peer node")?;
        let node_task = tokio::spawn(event_loop.run());
        let shutdown = CancellationToken::new();
        let handler = Arc::new(Daemon {
            client: client.clone(),
            peer_id,
        });
        let helpers = serve_helpers(config.socket_path(), handler, shutdown.clone()).await?;
        tokio::spawn(log_events(events));
        tokio::spawn(watch_allowlist(
            client,
            allowlist_path,
            allowlist,
            shutdown.clone(),
        ));
        tokio::spawn(stop_on_signal(shutdown.clone()));
        tracing::info!("daemon {peer_id} serving {}", config.dir.display());
        shutdown.cancelled().await;
        // The helper thread drains lookups in flight (bounded), then ends.
        let _ = tokio::task::spawn_blocking(move || helpers.join()).await;
        let _ = std::fs::remove_file(config.socket_path());
        node_task.abort();
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Answers helpers on `socket` from a thread of its own, until `shutdown`.
///
/// A helper counts a daemon that does not acknowledge a lookup within
/// [`crate::remote::ACK_TIMEOUT`] as late, and one late three times in a
/// row as stuck. On the node's thread, a busy stretch of fetching (a build
/// reading ahead, more so in a debug build) delayed acknowledgements past
/// that and made helpers stop asking for a second, which cost builds their
/// peer hits. On its own thread the socket answers at once, however busy
/// the node is; a lookup crosses to the node over a channel.
async fn serve_helpers(
    socket: PathBuf,
    handler: Arc<Daemon>,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (bound, bind_result) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("warren-helpers".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = bound.send(Err(anyhow::Error::new(error)));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match ipc::bind(&socket).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        let _ = bound.send(Err(error.into()));
                        return;
                    }
                };
                let _ = bound.send(Ok(()));
                ipc::serve(listener, handler, shutdown, DRAIN).await;
            });
        })
        .context("starting the helper socket's thread")?;
    bind_result
        .await
        .context("the helper socket's thread ended at start")??;
    Ok(thread)
}

fn parse_addrs(addrs: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|addr| {
            Multiaddr::from_str(addr).with_context(|| format!("invalid multiaddr {addr:?}"))
        })
        .collect()
}

/// Answers helpers.
struct Daemon {
    client: Client,
    peer_id: PeerId,
}

impl ipc::Handler for Daemon {
    fn get(&self, action: ActionId) -> BoxFuture<'_, ipc::Response> {
        Box::pin(async move {
            match self.client.fetch(action).await {
                Some(fetched) => ipc::Response::Hit {
                    peer: fetched.peer.to_string(),
                    size: fetched.size,
                },
                None => ipc::Response::Miss,
            }
        })
    }

    fn status(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async move {
            let peers = self.client.peers().await;
            let listen: Vec<String> = self
                .client
                .listen_addrs()
                .await
                .iter()
                .map(ToString::to_string)
                .collect();
            let peers: Vec<serde_json::Value> = peers.iter().map(peer_status).collect();
            serde_json::json!({
                "peer_id": self.peer_id.to_string(),
                "listen": listen,
                "peers": peers,
            })
        })
    }
}

/// One peer in `warren peers` / `warren stats` terms.
fn peer_status(info: &PeerInfo) -> serde_json::Value {
    let counters = &info.counters;
    serde_json::json!({
        "id": info.peer.to_string(),
        "allowlisted": info.allowlisted,
        "discovered": info.discovered,
        "connected": info.connected,
        "in_cooldown": info.in_cooldown,
        "last_seen_unix_ms": info.last_seen.map(|time| {
            time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
        }),
        "addresses": info.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "hits_served": counters.hits_served,
        "hits_received": counters.hits_received,
        "bytes_served": counters.bytes_out,
        "bytes_received": counters.bytes_in,
        "wire_bytes_served": counters.wire_out,
        "wire_bytes_received": counters.wire_in,
        "rejected": counters.rejected_bodies,
        "read_ahead": counters.read_ahead,
        "holds": info.summary_entries,
        "compressed": info.compressed,
    })
}

async fn log_events(mut events: tokio::sync::mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        match event {
            Event::BodyRejected {
                peer,
                action,
                reason,
            } => {
                tracing::warn!("rejected a body from peer {peer} for action {action}: {reason}");
            }
            other => tracing::debug!("{other:?}"),
        }
    }
}

/// Pushes allowlist edits to the node.
async fn watch_allowlist(
    client: Client,
    path: PathBuf,
    mut current: Allowlist,
    shutdown: CancellationToken,
) {
    let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    loop {
        tokio::select! {
            () = tokio::time::sleep(ALLOWLIST_POLL) => {}
            () = shutdown.cancelled() => return,
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match Allowlist::load(&path) {
            Ok(list) if list != current => {
                let ids: HashSet<PeerId> = list.ids();
                tracing::info!("allowlist changed: {} peers", ids.len());
                client.set_allowlist(ids).await;
                current = list;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "keeping the previous allowlist: {}",
                crate::server::chain(&e)
            ),
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

/// The store as the p2p node sees it.
struct StoreAdapter {
    store: Arc<DiskStore>,
    order: Arc<PutOrder>,
}

impl StoreAdapter {
    fn new(store: Arc<DiskStore>) -> io::Result<Self> {
        let order = PutOrder::start(store.actions_dir().to_path_buf())?;
        Ok(Self { store, order })
    }
}

impl warren_p2p::Store for StoreAdapter {
    fn following(&self, action: &ActionId, limit: usize) -> Vec<ActionId> {
        self.order.following(action, limit)
    }

    fn contains(&self, action: &ActionId) -> bool {
        matches!(self.store.get(action), Ok(Lookup::Hit(_)))
    }

    fn summary(&self, epoch: u64, since: u64, limit: usize) -> Option<SummaryChunk> {
        self.order.summary(epoch, since, limit)
    }

    fn summary_updates(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        Some(self.order.updates())
    }

    fn open(&self, action: &ActionId) -> io::Result<Option<Served>> {
        let entry = match self.store.get(action) {
            Ok(Lookup::Hit(entry)) => entry,
            Ok(Lookup::Miss) => return Ok(None),
            Err(e) => return Err(io::Error::other(e)),
        };
        let body = match File::open(&entry.path) {
            Ok(body) => body,
            // Trimmed between the lookup and the open: a miss.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Served {
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

    fn begin(
        &self,
        action: &ActionId,
        output: &OutputId,
        size: u64,
    ) -> io::Result<Box<dyn BodySink>> {
        let writer = self
            .store
            .begin_object(*output, size)
            .map_err(io::Error::other)?;
        Ok(Box::new(Sink {
            store: self.store.clone(),
            action: *action,
            writer,
        }))
    }
}

/// A body on its way from a peer into the store.
struct Sink {
    store: Arc<DiskStore>,
    action: ActionId,
    writer: ObjectWriter,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
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
        self.store
            .commit(&self.action, verified)
            .map(drop)
            .map_err(|error| CommitError::Io(io::Error::other(error)))
    }
}

#[cfg(test)]
mod tests {
    use warren_p2p::Store as _;

    use super::*;

    /// The sink is the node's only check of a fetched body.
    #[test]
    fn sinks_store_only_the_announced_body_and_name_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path()).unwrap());
        let adapter = StoreAdapter::new(store.clone()).unwrap();
        let body = b"the real body";
        let output = OutputId::of(body);

        let mut sink = adapter
            .begin(&ActionId::from_bytes([1; 32]), &output, body.len() as u64)
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

        let mut sink = adapter
            .begin(&ActionId::from_bytes([1; 32]), &output, body.len() as u64)
            .unwrap();
        sink.write_all(body).unwrap();
        sink.commit().unwrap();
        let Lookup::Hit(entry) = store.get(&ActionId::from_bytes([1; 32])).unwrap() else {
            panic!("a verified body is stored");
        };
        assert_eq!(std::fs::read(entry.path).unwrap(), body);
    }
}
