//! `warren init`, `warren id` and `warren peers`: identity and trust.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bytesize::ByteSize;
use warren_p2p::{ConnectFailure, PeerId};

use super::PeersCommand;
use crate::config::Config;
use crate::config::identity;
use crate::config::trust::{Allowlist, Update};
use crate::ipc;
use crate::ipc::status::{PeerStatus, StaticStatus};
use crate::store::{Source, SourceUsage};

pub(super) fn init(config: &Config, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let key_path = config.identity_path();
    let (key, created) =
        identity::load_or_create(&key_path).context("creating the identity key")?;
    if created {
        writeln!(out, "created identity key {}", key_path.display())?;
    } else {
        writeln!(out, "identity key {} already exists", key_path.display())?;
    }
    let config_path = config
        .file
        .clone()
        .unwrap_or_else(|| config.config_dir.join("config.toml"));
    if config_path.exists() {
        writeln!(
            out,
            "config {} already exists (left as is)",
            config_path.display()
        )?;
        if !config.share.enabled {
            writeln!(
                out,
                "hint: sharing is off there; add a [share] table with `enabled = true`"
            )?;
        }
    } else {
        crate::config::create_file(&config_path).context("writing the config file")?;
        writeln!(out, "created config {} (sharing on)", config_path.display())?;
    }
    writeln!(out)?;
    print_id(&identity::peer_id(&key).to_string(), out)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn id(config: &Config, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (key, _) = config.identity()?;
    print_id(&identity::peer_id(&key).to_string(), out)?;
    Ok(ExitCode::SUCCESS)
}

/// `warren keygen`: a new identity for a machine without a config
/// directory of its own (CI), printed and stored nowhere.
pub(super) fn keygen(out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (key, secret) = identity::generate();
    writeln!(out, "peer ID: {}", identity::peer_id(&key))?;
    writeln!(out, "secret: {secret}")?;
    Ok(ExitCode::SUCCESS)
}

fn print_id(peer_id: &str, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "peer ID: {peer_id}")?;
    writeln!(out, "A coworker trusts this machine by running:")?;
    writeln!(out, "  warren peers add {peer_id} --name {}", hostname())
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "NAME".to_owned())
}

pub(super) fn peers(
    config: &Config,
    action: Option<PeersCommand>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let path = config.allowlist_path();
    let mut allowlist = Allowlist::load(&path)?;
    match action.unwrap_or(PeersCommand::List { json: false }) {
        PeersCommand::Add {
            peer_id,
            name,
            role,
            reshare,
        } => {
            let update = Update {
                name,
                role: role.map(Into::into),
                reshare,
            };
            if allowlist.add(&peer_id, update)? {
                allowlist.save(&path)?;
                writeln!(out, "trusted {}", peer_id.trim())?;
                // Made serve-only: what it sent is no longer wanted.
                apply_allowlist(config, &allowlist, out)?;
            } else {
                writeln!(
                    out,
                    "{} was already trusted so; nothing changed",
                    peer_id.trim()
                )?;
            }
        }
        PeersCommand::Remove { peer } => {
            let removed = allowlist.remove(&peer);
            if removed.is_empty() {
                anyhow::bail!("no allowlisted peer has the ID or name {peer:?}");
            }
            allowlist.save(&path)?;
            for peer in &removed {
                writeln!(out, "removed {}", peer.id)?;
            }
            apply_allowlist(config, &allowlist, out)?;
        }
        PeersCommand::List { json: list_json } => list(config, &allowlist, json || list_json, out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Applies a changed allowlist: the running daemon re-reads it at once
/// (so no more bodies from a removed peer land, nor is it asked again),
/// and the entries of every peer not pulled from (removed, or made
/// serve-only, now or before) are purged. Says how many.
fn apply_allowlist(
    config: &Config,
    allowlist: &Allowlist,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut purged = SourceUsage::default();
    match super::ask_daemon(config, &ipc::Request::ReloadAllowlist, RELOAD_TIMEOUT) {
        Ok(ipc::Response::Reloaded {
            purged_entries,
            purged_bytes,
        }) => {
            purged.entries += purged_entries;
            purged.bytes += purged_bytes;
        }
        Ok(other) => warn_daemon(&format!("{other:?}")),
        // No daemon: the store alone is purged.
        Err(e)
            if e.downcast_ref::<ipc::Error>()
                .is_some_and(ipc::Error::is_absent) => {}
        Err(e) => warn_daemon(&crate::logging::chain(&*e)),
    }
    let store = super::open_store(config)?;
    let here = store
        .purge_except(&allowlist.sharing().pull)
        .context("purging entries")?;
    purged.entries += here.entries;
    purged.bytes += here.bytes;
    writeln!(
        out,
        "purged {} entries ({}) that peers no longer pulled from had sent",
        purged.entries,
        ByteSize(purged.bytes).display().iec()
    )?;
    Ok(())
}

/// How long the daemon may take to re-read the allowlist and purge.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

#[expect(
    clippy::print_stderr,
    reason = "a warning for the user at the terminal"
)]
fn warn_daemon(what: &str) {
    eprintln!(
        "warren: warning: the running daemon did not take the new allowlist ({what}); it re-reads the file within a second"
    );
}

/// One peer as `warren peers` shows it, and `--json` prints it.
#[derive(Debug, serde::Serialize)]
struct PeerRow {
    id: String,
    /// From the allowlist; empty if none was given.
    name: String,
    allowlisted: bool,
    /// Which way entries flow ([`role_name`]); `None` if not allowlisted.
    role: Option<&'static str>,
    /// Entries it sent us that are held here.
    entries: u64,
    /// "connected", "discovered", "unresolved" (its static address's host
    /// name does not resolve) or "offline".
    state: &'static str,
    /// What the daemon knows of it; `None` if the daemon does not run or
    /// never heard of it.
    daemon: Option<PeerStatus>,
}

/// The daemon, as `warren peers --json` reports it.
#[derive(Debug, serde::Serialize)]
struct DaemonRow {
    running: bool,
    /// Why it could not be asked, if it could not.
    error: Option<String>,
    peer_id: Option<String>,
    listen: Vec<String>,
}

fn list(
    config: &Config,
    allowlist: &Allowlist,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (daemon, peers, statics) = match super::daemon_status(config) {
        Ok(status) => (
            DaemonRow {
                running: true,
                error: None,
                peer_id: Some(status.peer_id),
                listen: status.listen,
            },
            status.peers,
            status.static_addresses,
        ),
        Err(e) => match e.downcast::<ipc::Error>() {
            Ok(e) => (
                DaemonRow {
                    running: false,
                    error: Some(e.to_string()),
                    peer_id: None,
                    listen: Vec::new(),
                },
                Vec::new(),
                Vec::new(),
            ),
            Err(e) => return Err(e),
        },
    };
    // Entries held per source; a store that cannot be read counts none.
    let held: BTreeMap<Source, SourceUsage> = super::open_store(config)
        .and_then(|store| Ok(store.sources()?))
        .unwrap_or_default();
    let rows = rows(allowlist, peers, &held);
    let built_here = held.get(&Source::Local).copied().unwrap_or_default();
    let bucket = daemon
        .running
        .then(|| super::bucket::for_peers(config))
        .flatten();
    if json {
        let report = serde_json::json!({
            "daemon": daemon,
            "peers": rows,
            "static_addresses": statics,
            "built_here": built_here.entries,
            "bucket": bucket,
        });
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    match (&daemon.peer_id, &daemon.error) {
        (Some(id), _) => writeln!(
            out,
            "daemon: running as {id}, listening on {}",
            daemon.listen.join(" ")
        )?,
        (None, error) => writeln!(
            out,
            "daemon: not running ({})",
            error.as_deref().unwrap_or("?")
        )?,
    }
    if let Some(bucket) = &bucket {
        writeln!(out, "{}", super::bucket::peers_line(bucket))?;
    }
    if rows.is_empty() {
        writeln!(
            out,
            "no peers: add one with `warren peers add <peer-id> --name NAME`"
        )?;
        for line in static_lines(&rows, &statics) {
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    row(
        out,
        [
            "name",
            "peer ID",
            "role",
            "entries",
            "state",
            "last seen",
            "holds",
            "bodies",
            "served",
            "received",
            "rejected",
        ],
    )?;
    for peer in &rows {
        let name = if peer.allowlisted {
            peer.name.clone()
        } else {
            "(untrusted)".to_owned()
        };
        let status = peer.daemon.clone().unwrap_or_default();
        row(
            out,
            [
                &name,
                &peer.id,
                peer.role.unwrap_or("-"),
                &peer.entries.to_string(),
                peer.state,
                &last_seen(status.last_seen_unix_ms),
                &status.holds.map_or("?".to_owned(), |n| n.to_string()),
                bodies(peer.state, status.compressed),
                &status.hits_served.to_string(),
                &status.hits_received.to_string(),
                &status.rejected.to_string(),
            ],
        )?;
    }
    for peer in &rows {
        if let Some(replication) = peer.daemon.as_ref().and_then(|d| d.replication.as_ref()) {
            writeln!(out, "replicating {}: {}", peer.name, replication.describe())?;
        }
    }
    for line in static_lines(&rows, &statics) {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "built here: {} entries", built_here.entries)?;
    Ok(())
}

/// A line for each static address that is not reached and says why
/// plainly: a peer's whose host name does not resolve, and each static
/// address without a peer ID not reached yet.
fn static_lines(rows: &[PeerRow], statics: &[StaticStatus]) -> Vec<String> {
    let mut lines = Vec::new();
    for peer in rows.iter().filter(|peer| peer.state == "unresolved") {
        if let Some(ConnectFailure::Unresolved {
            address,
            name,
            message,
        }) = peer.daemon.as_ref().and_then(|d| d.last_failure.as_ref())
        {
            let who = if peer.name.is_empty() {
                &peer.id
            } else {
                &peer.name
            };
            lines.push(format!(
                "{who}: static address {address}: name {name} does not resolve ({message})"
            ));
        }
    }
    for listed in statics {
        let why = match &listed.last_failure {
            Some(ConnectFailure::Unresolved { name, message, .. }) => {
                format!("name {name} does not resolve ({message})")
            }
            Some(failure) => format!("not reached: {failure}"),
            None => "not reached yet".to_owned(),
        };
        lines.push(format!("static address {}: {why}", listed.address));
    }
    lines
}

/// The peers the daemon knows of, then the allowlisted ones it does not.
fn rows(
    allowlist: &Allowlist,
    peers: Vec<PeerStatus>,
    held: &BTreeMap<Source, SourceUsage>,
) -> Vec<PeerRow> {
    let entries_from = |id: &str| {
        id.parse::<PeerId>()
            .ok()
            .and_then(|id| held.get(&Source::Peer(id)))
            .map_or(0, |usage| usage.entries)
    };
    let trusted = |id: &str| allowlist.peers.iter().find(|peer| peer.id == id);
    let mut rows: Vec<PeerRow> = peers
        .into_iter()
        .map(|info| {
            let state = if info.connected {
                "connected"
            } else if info.discovered {
                "discovered"
            } else if matches!(info.last_failure, Some(ConnectFailure::Unresolved { .. })) {
                "unresolved"
            } else {
                "offline"
            };
            let peer = trusted(&info.id);
            PeerRow {
                id: info.id.clone(),
                name: peer.and_then(|peer| peer.name.clone()).unwrap_or_default(),
                allowlisted: peer.is_some(),
                role: peer.map(|peer| role_name(peer.role)),
                entries: entries_from(&info.id),
                state,
                daemon: Some(info),
            }
        })
        .collect();
    let shown: HashSet<String> = rows.iter().map(|row| row.id.clone()).collect();
    for peer in (allowlist.peers.iter()).filter(|peer| !shown.contains(&peer.id)) {
        rows.push(PeerRow {
            id: peer.id.clone(),
            name: peer.name.clone().unwrap_or_default(),
            allowlisted: true,
            role: Some(role_name(peer.role)),
            entries: entries_from(&peer.id),
            state: "offline",
            daemon: None,
        });
    }
    rows
}

/// A role as `warren peers` shows it: which way entries flow.
fn role_name(role: warren_p2p::Role) -> &'static str {
    match role {
        warren_p2p::Role::PullAndServe => "both",
        warren_p2p::Role::ServeOnly => "serve",
        warren_p2p::Role::PullOnly => "pull",
    }
}

/// One line of `warren peers`: "role" which way entries flow ("both",
/// "serve": we only serve it, "pull": we only ask it); "entries" how many
/// entries it sent us are held here; "holds" is how many entries the
/// peer's summary names ("?" when there is none: it is asked about every
/// lookup); "bodies" how they are asked for (see [`bodies`]).
fn row(out: &mut impl Write, cells: [&str; 11]) -> std::io::Result<()> {
    let [
        name,
        id,
        role,
        entries,
        state,
        seen,
        holds,
        bodies,
        served,
        received,
        rejected,
    ] = cells;
    writeln!(
        out,
        "{name:<12} {id:<54} {role:<5} {entries:>7} {state:<11} {seen:>10} {holds:>8} {bodies:>7} {served:>8} {received:>9} {rejected:>8}"
    )
}

/// "zstd" or "raw" as a connected peer is asked for bodies, "testing"
/// while compression = "auto" measures which is faster; "-" otherwise
/// (and from a daemon too old to say).
fn bodies(state: &str, compressed: Option<Option<bool>>) -> &'static str {
    match (state, compressed) {
        ("connected", Some(Some(true))) => "zstd",
        ("connected", Some(Some(false))) => "raw",
        ("connected", Some(None)) => "testing",
        _ => "-",
    }
}

/// "12s ago" from a Unix time in milliseconds.
pub(super) fn last_seen(unix_ms: Option<u64>) -> String {
    let Some(ms) = unix_ms else {
        return "never".to_owned();
    };
    let seen = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    let ago = std::time::SystemTime::now()
        .duration_since(seen)
        .unwrap_or_default();
    format!("{}s ago", ago.as_secs())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::ipc::status::PeerStatus;

    #[test]
    fn the_bodies_column_says_how_a_connected_peer_is_asked() {
        let info = |compressed: Value| json!({ "compressed": compressed });
        let column = |state, info: &Value| {
            let peer: PeerStatus = serde_json::from_value(info.clone()).unwrap();
            bodies(state, peer.compressed)
        };
        assert_eq!(column("connected", &info(json!(true))), "zstd");
        assert_eq!(column("connected", &info(json!(false))), "raw");
        assert_eq!(column("connected", &info(Value::Null)), "testing");
        assert_eq!(column("offline", &info(json!(true))), "-");
        // An older daemon's answer has no such field.
        assert_eq!(column("connected", &json!({})), "-");
    }

    /// A static peer whose host name does not resolve is shown as such,
    /// by name, with the address and the resolver's words; so is a static
    /// address without a peer ID.
    #[test]
    fn a_name_that_does_not_resolve_is_shown() {
        let id = PeerId::random().to_string();
        let unresolved = |address: &str, name: &str| ConnectFailure::Unresolved {
            address: address.into(),
            name: name.into(),
            message: "no records found".into(),
        };
        let allowlist = Allowlist {
            peers: vec![crate::config::trust::Peer {
                id: id.clone(),
                name: Some("alice".into()),
                role: warren_p2p::Role::PullAndServe,
                reshare: false,
            }],
        };
        let peers = vec![PeerStatus {
            id: id.clone(),
            allowlisted: true,
            addresses: vec!["/dns4/build.office.invalid/tcp/7311".into()],
            last_failure: Some(unresolved(
                "/dns4/build.office.invalid/tcp/7311",
                "build.office.invalid",
            )),
            ..PeerStatus::default()
        }];
        let statics = vec![
            StaticStatus {
                address: "/dns4/laptop.invalid/tcp/7311".into(),
                last_failure: Some(unresolved(
                    "/dns4/laptop.invalid/tcp/7311",
                    "laptop.invalid",
                )),
                last_failure_unix_ms: Some(1),
            },
            StaticStatus {
                address: "/ip4/10.0.0.9/tcp/7311".into(),
                ..StaticStatus::default()
            },
        ];
        let rows = rows(&allowlist, peers, &BTreeMap::new());
        assert_eq!(rows[0].state, "unresolved");
        assert_eq!(
            static_lines(&rows, &statics),
            [
                "alice: static address /dns4/build.office.invalid/tcp/7311: name \
                 build.office.invalid does not resolve (no records found)",
                "static address /dns4/laptop.invalid/tcp/7311: name laptop.invalid does not \
                 resolve (no records found)",
                "static address /ip4/10.0.0.9/tcp/7311: not reached yet",
            ]
        );
    }
}
