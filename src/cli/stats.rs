//! `warren stats`: lifetime figures, the store's size and sources, and,
//! from a running daemon, each peer's counters.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use bytesize::ByteSize;

use super::{daemon_status, open_store};
use crate::config::Config;
use crate::config::trust::Allowlist;
use crate::ipc::status::PeerStatus;
use crate::store::{self, DiskStore, stats};

/// Entries held per source, for `warren stats`.
#[derive(Debug, serde::Serialize)]
struct Sources {
    local: store::SourceUsage,
    /// Written by a warren before provenance was recorded.
    unknown: store::SourceUsage,
    peers: Vec<PeerSource>,
}

#[derive(Debug, serde::Serialize)]
struct PeerSource {
    peer: String,
    name: Option<String>,
    #[serde(flatten)]
    usage: store::SourceUsage,
}

impl Sources {
    fn of(config: &Config, store: &DiskStore) -> anyhow::Result<Self> {
        // Names only; an unreadable allowlist leaves them out.
        let allowlist = Allowlist::load(&config.allowlist_path()).ok();
        let mut sources = Self {
            local: store::SourceUsage::default(),
            unknown: store::SourceUsage::default(),
            peers: Vec::new(),
        };
        for (source, usage) in store.sources().context("reading the store's entries")? {
            match source {
                store::Source::Local => sources.local = usage,
                store::Source::Unknown => sources.unknown = usage,
                store::Source::Peer(peer) => sources.peers.push(PeerSource {
                    name: (allowlist.as_ref())
                        .and_then(|list| list.name_of(&peer))
                        .map(str::to_owned),
                    peer: peer.to_string(),
                    usage,
                }),
            }
        }
        sources
            .peers
            .sort_by_key(|peer| std::cmp::Reverse(peer.usage.entries));
        Ok(sources)
    }

    /// "1200 built here, 300 from peers (alice 250, 12D3KooW… 50)".
    fn line(&self) -> String {
        let from_peers: u64 = self.peers.iter().map(|peer| peer.usage.entries).sum();
        let mut line = format!("{} built here, {from_peers} from peers", self.local.entries);
        if !self.peers.is_empty() {
            let each: Vec<String> = (self.peers.iter())
                .map(|peer| {
                    let who = peer.name.as_deref().unwrap_or(&peer.peer);
                    format!("{who} {}", peer.usage.entries)
                })
                .collect();
            line += &format!(" ({})", each.join(", "));
        }
        if self.unknown.entries > 0 {
            line += &format!(
                ", {} of unknown source (from an older warren; never served)",
                self.unknown.entries
            );
        }
        line
    }
}

pub(super) fn show_stats(
    config: &Config,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    let lifetime = stats::load(store.root()).context("reading statistics")?;
    let usage = store.usage().context("measuring the store")?;
    let sources = Sources::of(config, &store)?;
    let peers = daemon_peers(config);
    let bucket = daemon_bucket(config);
    if json {
        let value = serde_json::json!({
            "dir": store.root(),
            "lifetime": lifetime,
            "store": usage,
            "sources": sources,
            "peers": peers,
            "bucket": bucket,
            "limits": {
                "max_size": config.store.max_size.as_u64(),
                "max_age_seconds": config.store.max_age.as_secs(),
            },
        });
        serde_json::to_writer_pretty(&mut *out, &value)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let percent = |part: u64| {
        if lifetime.gets == 0 {
            0.0
        } else {
            part as f64 * 100.0 / lifetime.gets as f64
        }
    };
    writeln!(out, "store        {}", store.root().display())?;
    writeln!(
        out,
        "size         {} in {} entries and {} objects (limit {}, unused {})",
        ByteSize(usage.bytes).display().iec(),
        usage.entries,
        usage.objects,
        config.store.max_size.display().iec(),
        humantime::format_duration(config.store.max_age)
    )?;
    let share = if usage.bytes == 0 {
        0.0
    } else {
        usage.executable_bytes as f64 * 100.0 / usage.bytes as f64
    };
    writeln!(
        out,
        "executables  {} linked binaries, {} = {share:.1}% of the store",
        usage.executables,
        ByteSize(usage.executable_bytes).display().iec(),
    )?;
    writeln!(out, "entries      {}", sources.line())?;
    writeln!(
        out,
        "gets         {} ({} hits = {:.1}%, {} misses = {:.1}%)",
        lifetime.gets,
        lifetime.hits,
        percent(lifetime.hits),
        lifetime.misses,
        percent(lifetime.misses)
    )?;
    writeln!(
        out,
        "hit bytes    {}",
        ByteSize(lifetime.hit_bytes).display().iec()
    )?;
    writeln!(
        out,
        "from peers   {} hits = {:.1}% of gets ({})",
        lifetime.peer_hits,
        percent(lifetime.peer_hits),
        ByteSize(lifetime.peer_hit_bytes).display().iec()
    )?;
    if lifetime.remote_lookups > 0 {
        let waited = std::time::Duration::from_micros(lifetime.remote_wait_us);
        writeln!(
            out,
            "waited       {:.3} s on the daemon, over {} local misses asked of peers ({:.2} ms each)",
            waited.as_secs_f64(),
            lifetime.remote_lookups,
            waited.as_secs_f64() * 1e3 / lifetime.remote_lookups as f64
        )?;
    }
    writeln!(
        out,
        "puts         {} ({})",
        lifetime.puts,
        ByteSize(lifetime.put_bytes).display().iec()
    )?;
    writeln!(out, "errors       {}", lifetime.errors)?;
    writeln!(
        out,
        "repaired     {} damaged files removed",
        lifetime.repaired
    )?;
    if let Some(peers) = &peers {
        writeln!(out, "peers (from the running daemon):")?;
        for peer in peers {
            let bytes = |count: u64| ByteSize(count).display().iec();
            writeln!(out, "  {}", peer.id)?;
            writeln!(
                out,
                "    served    {} hits ({}, {} on the wire)",
                peer.hits_served,
                bytes(peer.bytes_served),
                bytes(peer.wire_bytes_served),
            )?;
            writeln!(
                out,
                "    received  {} hits ({}, {} on the wire), {} read ahead, {} rejected bodies",
                peer.hits_received,
                bytes(peer.bytes_received),
                bytes(peer.wire_bytes_received),
                peer.read_ahead,
                peer.rejected,
            )?;
            if let Some(replication) = &peer.replication {
                writeln!(out, "    replicate {}", replication.describe())?;
            }
        }
    }
    if let Some(bucket) = &bucket {
        writeln!(
            out,
            "bucket       {}: {} hits (+{} read ahead, {}), {} manifests held, {} failures",
            bucket.url,
            bucket.hits,
            bucket.read_ahead,
            ByteSize(bucket.bytes_fetched).display().iec(),
            bucket.manifests_held,
            bucket.failures
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The team bucket's figures from the daemon, if one runs with a bucket.
fn daemon_bucket(config: &Config) -> Option<crate::ipc::status::BucketStatus> {
    if !config.bucket.on() || !config.socket_path().exists() {
        return None;
    }
    match super::ask_daemon(
        config,
        &crate::ipc::Request::BucketStatus,
        super::STATUS_TIMEOUT,
    ) {
        Ok(crate::ipc::Response::Bucket(status)) => status.map(|status| *status),
        _ => None,
    }
}

/// Per-peer figures from the daemon, if one is running for this store.
fn daemon_peers(config: &Config) -> Option<Vec<PeerStatus>> {
    let socket = config.socket_path();
    if !socket.exists() {
        return None;
    }
    daemon_status(config).ok().map(|status| status.peers)
}
