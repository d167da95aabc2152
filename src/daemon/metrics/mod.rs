//! The daemon's counters in the Prometheus text format, for teams that run
//! an always-on daemon (a build server, an office machine) and watch it.
//!
//! Off unless `metrics-listen` is set (a bare port means loopback). Each
//! scrape takes a fresh snapshot, the same figures `warren stats --json`
//! prints: the store's lifetime totals from `stats.json` and each peer's
//! counters from the node, and encodes it with `prometheus-client`.
//!
//! The endpoint is open to anything that can reach the port, browsers
//! included, so it is served apart from the rest of the daemon and within
//! bounds: [`http`] (hyper, on a thread of its own, a cap on connections,
//! timeouts) and [`host`] (only requests that name this listener, against
//! DNS rebinding).

pub(crate) mod host;
mod http;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use warren_p2p::Client;

use crate::daemon::put_order::PutOrder;
use crate::daemon::quiet::Quiet;
use crate::daemon::replicate;
use crate::ipc::status::{PeerReplication, PeerStatus};
use crate::store::stats::{self, Totals};

/// What a scrape shows.
#[derive(Debug)]
struct Snapshot {
    lifetime: Totals,
    /// Entries our summary names; `None` until the store's first scan.
    offered: Option<u64>,
    peers: Vec<PeerStatus>,
    started_unix_ms: u64,
}

/// Listens on `address` and serves `GET /metrics` there, from a thread of
/// its own, until `shutdown`. Off the node's thread: a flood of
/// connections to this port, which anyone who reaches it can send, then
/// costs the node and the helpers' socket nothing. Returns once the
/// listener is bound (or could not be), so the daemon says at once if it
/// cannot listen; the thread's runtime lives and ends on that thread.
pub(crate) async fn start(
    address: SocketAddr,
    source: Source,
    quiet: Arc<Quiet>,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (bound, bind_result) = tokio::sync::oneshot::channel();
    let thread =
        std::thread::Builder::new()
            .name("warren-metrics".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = bound.send(Err(anyhow::Error::new(error)
                            .context("starting the metrics thread's runtime")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match listen(address) {
                        Ok(listener) => listener,
                        Err(error) => {
                            let _ = bound.send(Err(anyhow::Error::new(error)
                                .context(format!("listening on {address}"))));
                            return;
                        }
                    };
                    let _ = bound.send(Ok(()));
                    http::serve(listener, Arc::new(source), quiet, shutdown).await;
                });
            })
            .context("starting the metrics thread")?;
    bind_result
        .await
        .context("the metrics thread ended at start")??;
    Ok(thread)
}

/// A listener on `address`, as `TcpListener::bind` makes one (there is no
/// address to resolve).
fn listen(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// Where a scrape's figures come from.
pub(crate) struct Source {
    pub client: Client,
    pub replication: Arc<replicate::State>,
    /// The store's index: what our summary offers peers.
    pub put_order: Arc<PutOrder>,
    pub store: PathBuf,
    pub started_unix_ms: u64,
}

impl http::Scrape for Source {
    fn scrape(&self) -> futures::future::BoxFuture<'_, String> {
        Box::pin(async { encode(self.snapshot().await) })
    }
}

impl Source {
    async fn snapshot(&self) -> Snapshot {
        let store = self.store.clone();
        let lifetime = tokio::task::spawn_blocking(move || stats::load(&store))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let peers = self.client.peers().await;
        Snapshot {
            lifetime,
            offered: self.put_order.offered(),
            peers: self.replication.statuses(&peers),
            started_unix_ms: self.started_unix_ms,
        }
    }
}

/// The snapshot in the Prometheus text format.
fn encode(snapshot: Snapshot) -> String {
    let mut registry = Registry::with_prefix("warren");
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
        let _ = writeln!(text, "# encoding the metrics failed");
    }
    text
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let lifetime = &self.lifetime;
        let totals: [(&str, &str, u64); 12] = [
            ("gets", "Lookups go sent", lifetime.gets),
            ("hits", "Lookups answered with an entry", lifetime.hits),
            ("misses", "Lookups answered with a miss", lifetime.misses),
            ("puts", "Entries go stored", lifetime.puts),
            ("put_bytes", "Body bytes go stored", lifetime.put_bytes),
            (
                "hit_bytes",
                "Body bytes of hits handed to go",
                lifetime.hit_bytes,
            ),
            ("errors", "Requests answered with an error", lifetime.errors),
            ("repaired", "Damaged store files removed", lifetime.repaired),
            ("peer_hits", "Hits fetched from a peer", lifetime.peer_hits),
            (
                "peer_hit_bytes",
                "Body bytes of hits fetched from a peer",
                lifetime.peer_hit_bytes,
            ),
            (
                "remote_lookups",
                "Local misses asked of the daemon",
                lifetime.remote_lookups,
            ),
            (
                "remote_wait_microseconds",
                "Time go waited on the daemon's answers",
                lifetime.remote_wait_us,
            ),
        ];
        for (name, help, value) in totals {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let started = ConstGauge::new(self.started_unix_ms as f64 / 1000.0);
        started.encode(encoder.encode_descriptor(
            "daemon_start_time_seconds",
            "When the daemon started, in seconds since the Unix epoch",
            None,
            started.metric_type(),
        )?)?;
        if let Some(offered) = self.offered {
            let gauge = ConstGauge::new(offered as i64);
            gauge.encode(encoder.encode_descriptor(
                "summary_entries",
                "Entries this daemon's summary for peers names, removed ones too until it is \
                 compacted (absent until the store is scanned)",
                None,
                gauge.metric_type(),
            )?)?;
        }
        type Field = fn(&PeerStatus) -> u64;
        let counters: [(&str, &str, Field); 8] = [
            ("peer_hits_served", "Bodies sent to the peer", |p| {
                p.hits_served
            }),
            ("peer_bytes_served", "Body bytes sent to the peer", |p| {
                p.bytes_served
            }),
            (
                "peer_wire_bytes_served",
                "Bytes of answers to the peer on the link",
                |p| p.wire_bytes_served,
            ),
            (
                "peer_hits_received",
                "Verified bodies fetched from the peer",
                |p| p.hits_received,
            ),
            (
                "peer_bytes_received",
                "Body bytes fetched from the peer",
                |p| p.bytes_received,
            ),
            (
                "peer_wire_bytes_received",
                "Bytes of the peer's answers on the link",
                |p| p.wire_bytes_received,
            ),
            (
                "peer_rejected_bodies",
                "Bodies from the peer that failed verification",
                |p| p.rejected,
            ),
            (
                "peer_read_ahead",
                "Bodies fetched from the peer ahead of any lookup",
                |p| p.read_ahead,
            ),
        ];
        let labels: Vec<[(&str, &str); 1]> = self
            .peers
            .iter()
            .map(|p| [("peer", p.id.as_str())])
            .collect();
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (peer, labels) in self.peers.iter().zip(&labels) {
                ConstCounter::new(field(peer)).encode(family.encode_family(labels)?)?;
            }
        }
        let gauges: [(&str, &str, Field); 3] = [
            (
                "peer_connected",
                "1 while a connection to the peer is up",
                |p| u64::from(p.connected),
            ),
            (
                "peer_allowlisted",
                "1 if the peer is on the allowlist",
                |p| u64::from(p.allowlisted),
            ),
            (
                "peer_summary_entries",
                "Entries the peer's summary names",
                |p| p.holds.unwrap_or(0),
            ),
        ];
        for (name, help, field) in gauges {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (peer, labels) in self.peers.iter().zip(&labels) {
                ConstGauge::new(field(peer) as i64).encode(family.encode_family(labels)?)?;
            }
        }
        self.encode_replication(&mut encoder, &labels)
    }
}

impl Snapshot {
    /// Replication, for the peers that are replicated.
    fn encode_replication(
        &self,
        encoder: &mut DescriptorEncoder,
        labels: &[[(&str, &str); 1]],
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType::{self, Counter, Gauge};
        type Field = fn(&PeerReplication) -> u64;
        let families: [(&str, &str, MetricType, Field); 7] = [
            (
                "peer_replication_behind",
                "Entries of the peer's catalog not replicated or skipped yet",
                Gauge,
                |r| r.behind,
            ),
            (
                "peer_replicated_entries",
                "Entries replicated from the peer",
                Counter,
                |r| r.entries,
            ),
            (
                "peer_replicated_bytes",
                "Body bytes replicated from the peer",
                Counter,
                |r| r.bytes,
            ),
            (
                "peer_replication_skipped_entries",
                "Entries of the peer's left out for replicate-max-size",
                Gauge,
                |r| r.skipped_for_budget,
            ),
            (
                "peer_replication_skipped_bytes",
                "Bytes of the entries left out for replicate-max-size",
                Gauge,
                |r| r.skipped_bytes,
            ),
            (
                "peer_replication_skipped_for_room_entries",
                "Entries of the peer's left out because the store is near max-size",
                Gauge,
                |r| r.skipped_for_room,
            ),
            (
                "peer_replication_skipped_for_room_bytes",
                "Bytes of the entries left out because the store is near max-size",
                Gauge,
                |r| r.skipped_room_bytes,
            ),
        ];
        for (name, help, kind, field) in families {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (peer, labels) in self.peers.iter().zip(labels) {
                let Some(replication) = &peer.replication else {
                    continue;
                };
                let value = field(replication);
                match kind {
                    Counter => ConstCounter::new(value).encode(family.encode_family(labels)?)?,
                    _ => ConstGauge::new(value as i64).encode(family.encode_family(labels)?)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_as_prometheus_text() {
        let snapshot = Snapshot {
            lifetime: Totals {
                gets: 1135,
                peer_hits: 752,
                ..Totals::default()
            },
            peers: vec![
                PeerStatus {
                    id: "12D3KooWexample".into(),
                    connected: true,
                    hits_served: 7,
                    holds: Some(900),
                    ..PeerStatus::default()
                },
                PeerStatus {
                    id: "12D3KooWalice".into(),
                    replication: Some(PeerReplication {
                        behind: 12,
                        entries: 1162,
                        bytes: 182_000_000,
                        skipped_for_budget: 3,
                        skipped_bytes: 4096,
                        skipped_for_room: 2,
                        skipped_room_bytes: 512,
                        ..PeerReplication::default()
                    }),
                    ..PeerStatus::default()
                },
            ],
            started_unix_ms: 1_500,
            offered: Some(20_000),
        };
        let text = encode(snapshot);
        for line in [
            "warren_gets_total 1135",
            "warren_peer_hits_total 752",
            "warren_daemon_start_time_seconds 1.5",
            "warren_summary_entries 20000",
            "warren_peer_hits_served_total{peer=\"12D3KooWexample\"} 7",
            "warren_peer_connected{peer=\"12D3KooWexample\"} 1",
            "warren_peer_summary_entries{peer=\"12D3KooWexample\"} 900",
            "warren_peer_replication_behind{peer=\"12D3KooWalice\"} 12",
            "warren_peer_replicated_entries_total{peer=\"12D3KooWalice\"} 1162",
            "warren_peer_replicated_bytes_total{peer=\"12D3KooWalice\"} 182000000",
            "warren_peer_replication_skipped_entries{peer=\"12D3KooWalice\"} 3",
            "warren_peer_replication_skipped_bytes{peer=\"12D3KooWalice\"} 4096",
            "warren_peer_replication_skipped_for_room_entries{peer=\"12D3KooWalice\"} 2",
            "warren_peer_replication_skipped_for_room_bytes{peer=\"12D3KooWalice\"} 512",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        // A peer that is not replicated has no replication figures.
        assert!(
            !text
                .lines()
                .any(|l| l.contains("replicat") && l.contains("12D3KooWexample")),
            "{text}"
        );
        assert!(text.contains("# TYPE warren_gets counter"), "{text}");
    }
}
