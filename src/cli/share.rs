//! `warren init`, `warren id` and `warren peers`: identity and trust.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use super::PeersCommand;
use crate::config::Config;
use crate::share::identity;
use crate::share::ipc;
use crate::share::trust::Allowlist;

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
    let key = identity::load(&config.identity_path())?;
    print_id(&identity::peer_id(&key).to_string(), out)?;
    Ok(ExitCode::SUCCESS)
}

fn print_id(peer_id: &str, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "peer ID: {peer_id}")?;
    writeln!(out, "A coworker trusts this machine by running:")?;
    writeln!(out, "  warren peers add {peer_id} --name {}", hostname())
}

fn hostname() -> String {
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
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let path = config.allowlist_path();
    let mut allowlist = Allowlist::load(&path)?;
    match action.unwrap_or(PeersCommand::List) {
        PeersCommand::Add { peer_id, name } => {
            if allowlist.add(&peer_id, name)? {
                allowlist.save(&path)?;
                writeln!(out, "trusted {}", peer_id.trim())?;
            } else {
                writeln!(out, "{} was already trusted", peer_id.trim())?;
            }
        }
        PeersCommand::Remove { peer } => {
            let removed = allowlist.remove(&peer);
            if removed.is_empty() {
                anyhow::bail!("no allowlisted peer has the ID or name {peer:?}");
            }
            allowlist.save(&path)?;
            for peer in removed {
                writeln!(out, "removed {}", peer.id)?;
            }
        }
        PeersCommand::List => list(config, &allowlist, out)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn list(config: &Config, allowlist: &Allowlist, out: &mut impl Write) -> anyhow::Result<()> {
    let peers = match super::daemon_status(config) {
        Ok(status) => {
            writeln!(
                out,
                "daemon: running as {}, listening on {}",
                status.peer_id,
                status.listen.join(" ")
            )?;
            status.peers
        }
        Err(e) => match e.downcast::<ipc::Error>() {
            Ok(e) => {
                writeln!(out, "daemon: not running ({e})")?;
                Vec::new()
            }
            Err(e) => return Err(e),
        },
    };
    if allowlist.peers.is_empty() && peers.is_empty() {
        writeln!(
            out,
            "no peers: add one with `warren peers add <peer-id> --name NAME`"
        )?;
        return Ok(());
    }
    row(
        out,
        [
            "name",
            "peer ID",
            "state",
            "last seen",
            "holds",
            "bodies",
            "served",
            "received",
            "rejected",
        ],
    )?;
    let mut shown = std::collections::HashSet::new();
    for info in &peers {
        shown.insert(info.id.clone());
        let state = if info.connected {
            "connected"
        } else if info.discovered {
            "discovered"
        } else {
            "offline"
        };
        let name = match allowlist.peers.iter().find(|peer| peer.id == info.id) {
            Some(peer) => peer.name.clone().unwrap_or_default(),
            None => "(untrusted)".to_owned(),
        };
        row(
            out,
            [
                &name,
                &info.id,
                state,
                &last_seen(info.last_seen_unix_ms),
                &info.holds.map_or("?".to_owned(), |n| n.to_string()),
                bodies(state, info.compressed),
                &info.hits_served.to_string(),
                &info.hits_received.to_string(),
                &info.rejected.to_string(),
            ],
        )?;
    }
    for peer in allowlist
        .peers
        .iter()
        .filter(|peer| !shown.contains(&peer.id))
    {
        let name = peer.name.clone().unwrap_or_default();
        row(
            out,
            [&name, &peer.id, "offline", "never", "?", "-", "0", "0", "0"],
        )?;
    }
    Ok(())
}

/// One line of `warren peers`: "holds" is how many entries the peer's
/// summary names ("?" when there is none: it is asked about every lookup);
/// "bodies" how they are asked for (see [`bodies`]).
fn row(out: &mut impl Write, cells: [&str; 9]) -> std::io::Result<()> {
    let [
        name,
        id,
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
        "{name:<12} {id:<54} {state:<11} {seen:>10} {holds:>8} {bodies:>7} {served:>8} {received:>9} {rejected:>8}"
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
fn last_seen(unix_ms: Option<u64>) -> String {
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
    use crate::share::status::PeerStatus;

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
}
