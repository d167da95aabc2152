//! Checks of each allowlisted peer and each static address, from the
//! daemon's probe: connected, or why not, with the fix.

use std::net::SocketAddr;

use warren_p2p::multiaddr::Protocol;
use warren_p2p::{ConnectFailure, Multiaddr};

use super::Report;
use super::local::Me;
use crate::config::trust::Allowlist;
use crate::config::{Config, Replicate};
use crate::daemon::replicate;
use crate::ipc::status::DaemonStatus;

// --- Peers ---

pub(super) fn check_peers(
    config: &Config,
    status: &DaemonStatus,
    names: &Allowlist,
    me: &Me,
    report: &mut Report,
) {
    report.section("Peers");
    if names.peers.is_empty() {
        report.ok("none allowlisted");
        return;
    }
    let probed = status.probed_unix_ms.unwrap_or(u64::MAX);
    for entry in &names.peers {
        let name = entry.name.clone().unwrap_or_else(|| entry.id.clone());
        let daemon = status.peers.iter().find(|p| p.id == entry.id);
        let Some(peer) = daemon.filter(|p| p.allowlisted) else {
            report.warning(
                format!("{name}: the daemon does not know it yet"),
                Some("the allowlist changed a moment ago".into()),
                Some("run `warren doctor` again".into()),
            );
            continue;
        };
        if peer.connected {
            if let Some(ConnectFailure::Protocol) = &peer.last_failure {
                report.problem(
                    format!("{name}: connected, but it speaks another protocol version"),
                    None,
                    Some(format!("run the same warren release as {name}")),
                );
                continue;
            }
            let summary = match peer.holds {
                Some(n) => format!("its summary names {n} entries"),
                None => "no summary of it yet".into(),
            };
            report.ok(format!(
                "{name}: connected at {}, last seen {}; {summary}",
                peer.addresses.join(", "),
                crate::cli::share::last_seen(peer.last_seen_unix_ms)
            ));
            continue;
        }
        let fresh = peer
            .last_failure_unix_ms
            .is_some_and(|at| at >= probed)
            .then_some(peer.last_failure.as_ref())
            .flatten();
        if peer.addresses.is_empty() {
            report.problem(
                format!("{name}: not found: no mDNS announcement and no static address"),
                Some(format!(
                    "{name}'s daemon is not running, or {name} is on another network or \
                     subnet, or multicast is dropped between you"
                )),
                Some(format!(
                    "ask {name} to run `warren doctor`; or add {name}'s address: \
                     `static-peers = [\"/ip4/<IP>/tcp/7311/p2p/{}\"]` under [share] in {}",
                    entry.id,
                    config_file(config)
                )),
            );
            continue;
        }
        let at = peer.addresses.join(", ");
        let (what, cause, fix) = match fresh {
            Some(ConnectFailure::Unresolved {
                address,
                name: host,
                message,
            }) => unresolved(
                config,
                status,
                &name,
                host,
                address,
                Some(&entry.id),
                message,
            ),
            Some(ConnectFailure::Refused { address }) => (
                format!("{name}: connection refused at {address}"),
                format!("{name}'s machine is up, but its warren daemon is not running"),
                format!("ask {name} to start it: `warren daemon`"),
            ),
            Some(
                ConnectFailure::TimedOut { address } | ConnectFailure::Unreachable { address },
            ) => blocked(&name, address),
            None => blocked(&name, &at),
            Some(ConnectFailure::ClosedAfterHandshake) => (
                format!("{name}: closed the connection right after the handshake"),
                format!("{name} has not allowlisted you yet"),
                format!(
                    "ask {name} to run `warren peers add {} --name {}`",
                    me.id, me.name
                ),
            ),
            Some(ConnectFailure::WrongPeerId {
                address,
                obtained,
                announced,
            }) => wrong_peer(
                config,
                &name,
                &entry.id,
                address,
                &names.name_or_id(obtained),
                *announced,
            ),
            Some(ConnectFailure::Protocol) => (
                format!("{name}: speaks another protocol version"),
                "one of you runs an older warren".into(),
                format!("run the same warren release as {name}"),
            ),
            Some(ConnectFailure::Other { message }) => (
                format!("{name}: cannot connect at {at}"),
                message.clone(),
                "see the daemon's log: warren -vv daemon".into(),
            ),
        };
        report.problem(what, Some(cause), Some(fix));
    }
}

/// Another peer answered at `address`. Only an address in `static-peers`
/// is the user's to correct: one announced on mDNS may have been announced
/// by anyone (a stranger can announce an offline peer's ID at its own
/// host), and one the peer was reached at before has changed hands.
fn wrong_peer(
    config: &Config,
    name: &str,
    id: &str,
    address: &str,
    obtained: &str,
    announced: bool,
) -> (String, String, String) {
    let at = address.parse::<Multiaddr>().ok();
    let configured = at.as_ref().and_then(host_port).is_some_and(|at| {
        (config.share.static_peers.iter())
            .filter_map(|text| text.parse::<Multiaddr>().ok())
            .any(|listed| host_port(&listed).as_ref() == Some(&at))
    });
    if configured {
        return (
            format!("{name}: {address} answered as another peer, {obtained}"),
            format!("the address given for {name} is stale or wrong"),
            format!(
                "correct {name}'s address in `static-peers` under [share] in {}",
                config_file(config)
            ),
        );
    }
    let ask = format!("ask {name} to run `warren doctor`: its daemon may not be running");
    if announced {
        (
            format!(
                "{name}: an mDNS announcement put it at {address}, where another peer, \
                 {obtained}, answered"
            ),
            format!(
                "someone on your network announces {name}'s ID at another machine, or {name} \
                 moved and its old address is another machine's now; nothing in your \
                 configuration is wrong"
            ),
            ask,
        )
    } else {
        (
            format!(
                "{name}: {address}, where it was reached before, answered as another peer, \
                 {obtained}"
            ),
            format!("{name} moved, and its old address is another machine's now"),
            format!(
                "{ask}; or give its address: \
                 `static-peers = [\"/ip4/<IP>/tcp/7311/p2p/{id}\"]` under [share] in {}",
                config_file(config)
            ),
        )
    }
}

/// `host`, in `address` (of the peer `id`, if it says), does not resolve:
/// what `subject` failed at, why, and the fix.
fn unresolved(
    config: &Config,
    status: &DaemonStatus,
    subject: &str,
    host: &str,
    address: &str,
    id: Option<&str>,
    message: &str,
) -> (String, String, String) {
    let port = (address.parse::<Multiaddr>().ok())
        .and_then(|a| host_port(&a))
        .map_or(7311, |(_, port)| port);
    let by_ip = match id {
        Some(id) => format!("/ip4/<IP>/tcp/{port}/p2p/{id}"),
        None => format!("/ip4/<IP>/tcp/{port}"),
    };
    (
        format!("{subject}: the name {host} does not resolve"),
        format!(
            "neither /etc/hosts nor the DNS servers in /etc/resolv.conf know {host} \
             ({message}): a typo, or the VPN or office network whose DNS knows it is not \
             connected"
        ),
        format!(
            "check the name with `getent hosts {host}` and connect the VPN (the daemon reads \
             /etc/resolv.conf when it starts: if it changed since, restart it: {}); or give \
             the address as {by_ip} in `static-peers` under [share] in {}",
            super::restart_daemon(Some(status.pid)),
            config_file(config)
        ),
    )
}

fn blocked(name: &str, address: &str) -> (String, String, String) {
    let port = address
        .parse::<Multiaddr>()
        .ok()
        .and_then(|a| host_port(&a))
        .map_or(7311, |(_, port)| port);
    (
        format!("{name}: no answer from {address}"),
        "a firewall drops the port, or the link between you is down".into(),
        format!(
            "ask {name} to allow TCP port {port} (for example `sudo ufw allow {port}/tcp`), \
             and check that you are on the same network"
        ),
    )
}

pub(super) fn is_link_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(ip) => ip.is_link_local(),
        std::net::IpAddr::V6(ip) => ip.is_unicast_link_local(),
    }
}

/// The host and TCP port of `/ip4/A/tcp/P`, `/ip6/…`, or of a host name
/// `/dns4/N/tcp/P` (also `/dns`, `/dns6`), as written.
pub(super) fn host_port(address: &Multiaddr) -> Option<(String, u16)> {
    let mut parts = address.iter();
    let host = match parts.next()? {
        Protocol::Ip4(ip) => ip.to_string(),
        Protocol::Ip6(ip) => ip.to_string(),
        Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name) => name.into_owned(),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Tcp(port) => Some((host, port)),
        _ => None,
    }
}

/// The IP address and TCP port of `/ip4/A/tcp/P` (or `/ip6/…`).
pub(super) fn multiaddr_ip_port(address: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = address.iter();
    let ip: std::net::IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Tcp(port) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

fn config_file(config: &Config) -> String {
    config
        .file
        .clone()
        .or_else(crate::config::default_config_path)
        .map_or_else(|| "your config file".into(), |p| p.display().to_string())
}

// --- Replication ---

/// What `[share] replicate` does: names that match no peer pulled from,
/// and for each replicated peer how far along it is, or why it cannot be.
pub(super) fn check_replication(
    config: &Config,
    status: &DaemonStatus,
    names: &Allowlist,
    me: &Me,
    report: &mut Report,
) {
    let replicate = &config.share.replicate;
    if *replicate == Replicate::None {
        return;
    }
    report.section("Replication");
    if let Some(why) = replicate::off_because(&config.share) {
        report.warning(
            format!("`replicate = {replicate}` is off: {why}"),
            Some(
                "with agreement, an entry is stored only when two sources agree on it, and \
                 replication fetches each entry from one peer: every body would be fetched \
                 and thrown away"
                    .into(),
            ),
            Some(format!(
                "choose one under [share] in {}: `agreement = false` to replicate, or \
                 `replicate = \"none\"` to say so",
                config_file(config)
            )),
        );
        return;
    }
    let unknown = replicate::unknown(replicate, names);
    if !unknown.is_empty() {
        report.warning(
            format!(
                "`replicate` names {}, which no peer you pull from is called",
                unknown.join(", ")
            ),
            Some("a typo, a peer not on the allowlist, or one you only serve".into()),
            Some(format!(
                "`warren peers` lists the names; correct `replicate` under [share] in {}",
                config_file(config)
            )),
        );
    }
    let replicated: Vec<_> = status
        .peers
        .iter()
        .filter_map(|peer| Some((peer, peer.replication.as_ref()?)))
        .collect();
    if replicated.is_empty() {
        if unknown.is_empty() {
            report.warning(
                format!("`replicate = {replicate}`, but no peer you pull from is replicated yet"),
                Some(
                    "no allowlisted peer is pulled from, or the allowlist changed a moment ago"
                        .into(),
                ),
                Some("`warren peers` lists them; run `warren doctor` again".into()),
            );
        }
        return;
    }
    for (peer, replication) in replicated {
        let name = names.name_or_id(&peer.id);
        let line = format!("{name}: {}", replication.describe());
        if replication.note.is_some() {
            report.warning(
                line,
                Some(format!(
                    "{name}'s daemon does not list its builds to you: it runs an older \
                     warren, or does not serve you"
                )),
                Some(format!(
                    "ask {name} to run the same warren release, and to serve you: \
                     `warren peers add {} --name {}`",
                    me.id, me.name
                )),
            );
        } else if replication.skipped_for_room > 0 {
            report.warning(
                line,
                Some(format!(
                    "the store is within {}% of `max-size` ({}): replication leaves that \
                     room to builds",
                    replicate::budget::HEADROOM_PERCENT,
                    config.store.max_size.display().iec()
                )),
                Some(format!(
                    "raise `max-size` in {}, or make room with `warren trim`; what was \
                     skipped comes once there is room",
                    config_file(config)
                )),
            );
        } else if replication.skipped_for_budget > 0 {
            report.warning(
                line,
                Some(format!(
                    "entries from peers take all of `replicate-max-size` ({})",
                    config.share.replicate_max_size.display().iec()
                )),
                Some(format!(
                    "raise `replicate-max-size` under [share] in {}, or make room with \
                     `warren trim`; what was skipped comes once there is room",
                    config_file(config)
                )),
            );
        } else {
            report.ok(line);
        }
    }
}

// --- Static peers ---

pub(super) fn check_static_peers(
    config: &Config,
    status: &DaemonStatus,
    names: &Allowlist,
    report: &mut Report,
) {
    if config.share.static_peers.is_empty() {
        return;
    }
    report.section("Static peers");
    let probed = status.probed_unix_ms.unwrap_or(u64::MAX);
    for text in &config.share.static_peers {
        let Ok(address) = text.parse::<Multiaddr>() else {
            report.problem(
                format!("{text}: not a multiaddr"),
                None,
                Some("write it as /ip4/<IP>/tcp/7311/p2p/<peer ID>".into()),
            );
            continue;
        };
        if host_port(&address).is_none() {
            report.problem(
                format!("{text}: not an IP address or host name and a TCP port"),
                None,
                Some(
                    "write it as /ip4/<IP>/tcp/7311/p2p/<peer ID>, or by name as \
                     /dns4/<host name>/tcp/7311/p2p/<peer ID>"
                        .into(),
                ),
            );
            continue;
        }
        let bare = text.trim_end_matches('/');
        let bare_address: String = (address.iter())
            .filter(|protocol| !matches!(protocol, Protocol::P2p(_)))
            .collect::<Multiaddr>()
            .to_string();
        // Whether the probe's dial of this address found that its name
        // does not resolve.
        let fresh = |failure: Option<&ConnectFailure>, at: Option<u64>| {
            failure
                .filter(|_| at.is_some_and(|at| at >= probed))
                .and_then(|failure| match failure {
                    ConnectFailure::Unresolved {
                        address,
                        name,
                        message,
                    } if *address == bare_address => Some((name.clone(), message.clone())),
                    _ => None,
                })
        };
        let id = address.iter().find_map(|p| match p {
            Protocol::P2p(id) => Some(id.to_string()),
            _ => None,
        });
        match id {
            Some(id) => {
                let name = names.name_or_id(&id);
                let allowlisted = names.peers.iter().any(|peer| peer.id == id);
                let known = status.peers.iter().find(|peer| peer.id == id);
                let connected = known.is_some_and(|peer| peer.connected);
                let unresolved_name = known
                    .filter(|peer| !peer.connected)
                    .and_then(|peer| fresh(peer.last_failure.as_ref(), peer.last_failure_unix_ms));
                if !allowlisted {
                    report.problem(
                        format!("{text}: {name} is not allowlisted, so it is never dialed"),
                        None,
                        Some(format!("warren peers add {id} --name NAME")),
                    );
                } else if connected {
                    report.ok(format!("{text}: connected to {name}"));
                } else if let Some((host, message)) = unresolved_name {
                    let (what, cause, fix) = unresolved(
                        config,
                        status,
                        text,
                        &host,
                        &bare_address,
                        Some(&id),
                        &message,
                    );
                    report.problem(what, Some(cause), Some(fix));
                } else {
                    report.ok(format!("{text}: not connected (see {name} under Peers)"));
                }
            }
            None => {
                let unresolved_name = (status.static_addresses.iter())
                    .find(|listed| listed.address == bare_address)
                    .and_then(|listed| {
                        fresh(listed.last_failure.as_ref(), listed.last_failure_unix_ms)
                    });
                let answered = status
                    .peers
                    .iter()
                    .find(|p| p.connected && p.addresses.iter().any(|a| a == bare));
                match (answered, unresolved_name) {
                    (Some(peer), _) => report.ok(format!(
                        "{text}: connected to {}",
                        names.name_or_id(&peer.id)
                    )),
                    (None, Some((host, message))) => {
                        let (what, cause, fix) =
                            unresolved(config, status, text, &host, &bare_address, None, &message);
                        report.problem(what, Some(cause), Some(fix));
                    }
                    (None, None) => report.warning(
                        format!("{text}: not connected"),
                        Some("without a peer ID the address cannot be told from its owner".into()),
                        Some(format!(
                            "end the address with the peer's ID, /p2p/<peer ID>, in {}",
                            config_file(config)
                        )),
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
