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
    let configured = at.as_ref().and_then(multiaddr_ip_port).is_some_and(|at| {
        (config.share.static_peers.iter())
            .filter_map(|text| text.parse::<Multiaddr>().ok())
            .any(|listed| multiaddr_ip_port(&listed) == Some(at))
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

fn blocked(name: &str, address: &str) -> (String, String, String) {
    let port = address
        .parse::<Multiaddr>()
        .ok()
        .and_then(|a| multiaddr_ip_port(&a))
        .map_or(7311, |s| s.port());
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
    for text in &config.share.static_peers {
        let Ok(address) = text.parse::<Multiaddr>() else {
            report.problem(
                format!("{text}: not a multiaddr"),
                None,
                Some("write it as /ip4/<IP>/tcp/7311/p2p/<peer ID>".into()),
            );
            continue;
        };
        if multiaddr_ip_port(&address).is_none() {
            report.problem(
                format!("{text}: not an IP address and TCP port"),
                Some("warren does not resolve host names".into()),
                Some("write it as /ip4/<IP>/tcp/7311/p2p/<peer ID>".into()),
            );
            continue;
        }
        let id = address.iter().find_map(|p| match p {
            Protocol::P2p(id) => Some(id.to_string()),
            _ => None,
        });
        match id {
            Some(id) => {
                let name = names.name_or_id(&id);
                let allowlisted = names.peers.iter().any(|peer| peer.id == id);
                let connected = (status.peers.iter()).any(|peer| peer.id == id && peer.connected);
                if !allowlisted {
                    report.problem(
                        format!("{text}: {name} is not allowlisted, so it is never dialed"),
                        None,
                        Some(format!("warren peers add {id} --name NAME")),
                    );
                } else if connected {
                    report.ok(format!("{text}: connected to {name}"));
                } else {
                    report.ok(format!("{text}: not connected (see {name} under Peers)"));
                }
            }
            None => {
                let bare = text.trim_end_matches('/');
                let answered = status
                    .peers
                    .iter()
                    .find(|p| p.connected && p.addresses.iter().any(|a| a == bare));
                match answered {
                    Some(peer) => report.ok(format!(
                        "{text}: connected to {}",
                        names.name_or_id(&peer.id)
                    )),
                    None => report.warning(
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
mod tests {
    use warren_p2p::{PeerId, Role};

    use super::*;
    use crate::config::tests::with_config;
    use crate::config::trust::Peer as Listed;
    use crate::ipc::status::{PeerReplication, PeerStatus};

    /// Each replicated peer gets a line that says how far along it is, a
    /// warning with the fix when its catalog cannot be read or the budget
    /// is full, and a name in `replicate` that matches no peer one too.
    #[test]
    fn replication_is_checked_per_peer_with_its_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        crate::fsutil::write_atomic(
            &file,
            b"[share]\nreplicate = [\"alice\", \"bob\", \"carol\", \"nobody\"]\n\
              replicate-max-size = \"1 MiB\"\n",
        )
        .unwrap();
        let config = Config::load(&with_config(file)).unwrap();
        let ids: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let names = Allowlist {
            peers: ["alice", "bob", "carol"]
                .iter()
                .zip(&ids)
                .map(|(name, id)| Listed {
                    id: id.to_string(),
                    name: Some((*name).into()),
                    role: Role::PullAndServe,
                    reshare: false,
                })
                .collect(),
        };
        let peer = |id: &PeerId, replication: PeerReplication| PeerStatus {
            id: id.to_string(),
            replication: Some(replication),
            ..PeerStatus::default()
        };
        let status = DaemonStatus {
            peers: vec![
                peer(
                    &ids[0],
                    PeerReplication {
                        entries: 10,
                        ..PeerReplication::default()
                    },
                ),
                peer(
                    &ids[1],
                    PeerReplication {
                        skipped_for_budget: 4,
                        skipped_bytes: 4096,
                        ..PeerReplication::default()
                    },
                ),
                peer(
                    &ids[2],
                    PeerReplication {
                        note: Some("no catalog: the peer refused".into()),
                        ..PeerReplication::default()
                    },
                ),
            ],
            ..DaemonStatus::default()
        };
        let me = Me {
            id: "12D3KooWme".into(),
            name: "dave".into(),
        };
        let mut report = Report::default();
        check_replication(&config, &status, &names, &me, &mut report);
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            "  warning  `replicate` names nobody, which no peer you pull from is called",
            "  ok       alice: up to date; replicated 10 entries (0 B)",
            "  warning  bob: up to date; replicated 0 entries (0 B); 4 entries (4.0 KiB) \
             skipped: replicate-max-size reached",
            "           cause: entries from peers take all of `replicate-max-size` (1.0 MiB)",
            "  warning  carol: up to date; replicated 0 entries (0 B); no catalog: the peer refused",
            "           fix: ask carol to run the same warren release, and to serve you: \
             `warren peers add 12D3KooWme --name dave`",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        assert!(text.ends_with("0 problems, 3 warnings.\n"), "{text}");

        // A store near max-size: its own cause and fix.
        let near = DaemonStatus {
            peers: vec![peer(
                &ids[0],
                PeerReplication {
                    skipped_for_room: 2,
                    skipped_room_bytes: 2048,
                    ..PeerReplication::default()
                },
            )],
            ..DaemonStatus::default()
        };
        let mut report = Report::default();
        check_replication(&config, &near, &names, &me, &mut report);
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.lines().any(|l| l
                == "           cause: the store is within 10% of `max-size` (10.0 GiB): \
                    replication leaves that room to builds"),
            "{text}"
        );

        // With agreement on, replication is off, and says why.
        let mut agreeing = config.clone();
        agreeing.share.agreement = true;
        let mut report = Report::default();
        check_replication(&agreeing, &status, &names, &me, &mut report);
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.lines()
                .any(|l| l
                    == "  warning  `replicate = alice bob carol nobody` is off: agreement is on"),
            "{text}"
        );
        assert!(!text.contains("alice:"), "no peer is replicated: {text}");

        // Off: no section at all.
        let mut report = Report::default();
        let mut quiet = config.clone();
        quiet.share.replicate = Replicate::None;
        check_replication(&quiet, &status, &names, &me, &mut report);
        assert_eq!(report.count(super::super::Status::Warning), 0);
        assert!(report.checks.is_empty());
    }

    /// A stranger that announces an offline peer's ID at its own host
    /// (anyone on the LAN can) made the doctor advise correcting
    /// `static-peers`, which named no such address. Only an address that
    /// is there is blamed on the configuration.
    #[test]
    fn another_peer_at_an_address_is_the_configurations_fault_only_if_configured() {
        let ids: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let stranger = ids[3].to_string();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        crate::fsutil::write_atomic(
            &file,
            format!(
                "[share]\nstatic-peers = [\"/ip4/10.0.0.2/tcp/7311/p2p/{}\"]\n",
                ids[0]
            )
            .as_bytes(),
        )
        .unwrap();
        let config = Config::load(&with_config(file.clone())).unwrap();
        let names = Allowlist {
            peers: ["alice", "bob", "carol"]
                .iter()
                .zip(&ids)
                .map(|(name, id)| Listed {
                    id: id.to_string(),
                    name: Some((*name).into()),
                    role: Role::PullAndServe,
                    reshare: false,
                })
                .collect(),
        };
        let failed = |id: &PeerId, address: &str, announced: bool| PeerStatus {
            id: id.to_string(),
            allowlisted: true,
            addresses: vec![address.into()],
            last_failure: Some(ConnectFailure::WrongPeerId {
                address: address.into(),
                obtained: stranger.clone(),
                announced,
            }),
            last_failure_unix_ms: Some(2),
            ..PeerStatus::default()
        };
        let status = DaemonStatus {
            probed_unix_ms: Some(1),
            peers: vec![
                failed(&ids[0], "/ip4/10.0.0.2/tcp/7311", false),
                failed(&ids[1], "/ip4/10.0.0.66/tcp/7311", true),
                failed(&ids[2], "/ip4/10.0.0.3/tcp/7311", false),
            ],
            ..DaemonStatus::default()
        };
        let me = Me {
            id: "12D3KooWme".into(),
            name: "dave".into(),
        };
        let mut report = Report::default();
        check_peers(&config, &status, &names, &me, &mut report);
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let fixes: Vec<&str> = (text.lines())
            .filter_map(|line| line.trim_start().strip_prefix("fix: "))
            .collect();
        assert_eq!(fixes.len(), 3, "{text}");
        let correct = format!(
            "correct alice's address in `static-peers` under [share] in {}",
            file.display()
        );
        assert_eq!(fixes[0], correct, "{text}");
        for (fix, name) in fixes[1..].iter().zip(["bob", "carol"]) {
            assert!(!fix.starts_with("correct"), "{name}: {text}");
            assert!(
                fix.starts_with(&format!("ask {name} to run `warren doctor`")),
                "{name}: {text}"
            );
        }
        assert!(
            text.contains(&format!(
                "bob: an mDNS announcement put it at /ip4/10.0.0.66/tcp/7311, where another \
                 peer, {stranger}, answered"
            )),
            "{text}"
        );
        assert!(
            text.contains("nothing in your configuration is wrong"),
            "{text}"
        );
    }
}
