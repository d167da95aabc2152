//! Checks of the daemon and what it offers the LAN: running (and of which
//! version, against the warren `go` runs), listening, mDNS (and the route
//! its packets take).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use warren_p2p::Multiaddr;

use super::local::Prog;
use super::peers::{is_link_local, multiaddr_ip_port};
use super::route;
use super::{Report, restart_daemon};
use crate::config::Config;
use crate::config::trust::Allowlist;
use crate::ipc;
use crate::ipc::status::{DaemonStatus, PeerStatus};

/// Longest wait for the daemon's probe (it waits at most 6 s for dials).
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a connection to one of our own addresses may take.
const SELF_CONNECT: Duration = Duration::from_secs(1);

// --- The daemon ---

pub(super) fn check_daemon(config: &Config, report: &mut Report) -> Option<DaemonStatus> {
    report.section("Daemon");
    let answer = crate::cli::ask_daemon(config, &ipc::Request::Probe, PROBE_TIMEOUT);
    let status = match answer {
        Ok(ipc::Response::Status(status)) => status,
        Ok(other) => {
            report.problem(
                "the daemon gave an unexpected answer",
                Some(format!("{other:?}")),
                Some(restart_daemon(None)),
            );
            return None;
        }
        Err(e) => {
            let absent = e
                .downcast_ref::<ipc::Error>()
                .is_some_and(ipc::Error::is_absent);
            if absent && config.share.autostart {
                report.warning(
                    "the daemon is not running; the next build through warren starts it",
                    None,
                    Some("warren daemon (to start it now)".into()),
                );
            } else if absent {
                report.problem(
                    "the daemon is not running: builds do not ask peers",
                    None,
                    Some(
                        "warren daemon (or set `autostart = true` under [share] and the next build starts it)"
                            .into(),
                    ),
                );
            } else {
                report.problem(
                    "the daemon does not answer",
                    Some(crate::logging::chain(&*e)),
                    Some(restart_daemon(None)),
                );
            }
            return None;
        }
    };
    let up = humantime::format_duration(Duration::from_secs(status.up_for().as_secs()));
    let mine = env!("CARGO_PKG_VERSION");
    if status.version != mine {
        let theirs = if status.version.is_empty() {
            "an older warren"
        } else {
            &status.version
        };
        report.warning(
            format!("the daemon runs {theirs}, this is warren {mine}"),
            None,
            Some(restart_daemon(Some(status.pid))),
        );
    } else {
        report.ok(format!(
            "running as you (pid {}, warren {}), started {up} ago",
            status.pid, status.version
        ));
    }
    Some(status)
}

/// The warren that `go` starts (`GOCACHEPROG`) against the daemon it
/// asks: another release may not know the daemon's requests or answers.
/// This warren's own version is checked against the daemon's above.
pub(super) fn check_helper_version(
    prog: Option<&Prog>,
    status: &DaemonStatus,
    report: &mut Report,
) {
    let Some(prog) = prog else { return };
    if prog.is_me || status.version.is_empty() || prog.version == status.version {
        return;
    }
    report.warning(
        format!(
            "GOCACHEPROG runs warren {}, the daemon warren {}",
            prog.version, status.version
        ),
        Some("helpers and the daemon of different releases may not understand each other; lookups then stay local".into()),
        Some(format!(
            "point GOCACHEPROG at the daemon's warren, or restart the daemon with the warren that GOCACHEPROG runs ({})",
            restart_daemon(Some(status.pid))
        )),
    );
}

// --- Listening ---

pub(super) fn check_listening(status: &DaemonStatus, report: &mut Report) {
    report.section("Listening");
    let addresses: Vec<(String, SocketAddr)> = status
        .listen
        .iter()
        .filter_map(|a| {
            let addr: Multiaddr = a.parse().ok()?;
            multiaddr_ip_port(&addr).map(|socket| (a.clone(), socket))
        })
        .collect();
    if addresses.is_empty() {
        report.problem(
            "the daemon listens on no address: coworkers cannot reach you",
            Some("the port may be taken, or `listen` under [share] names no usable address".into()),
            Some("warren config (see `listen`), and the daemon's log (warren -v daemon)".into()),
        );
        return;
    }
    let lan: Vec<_> = addresses
        .iter()
        // Link-local IPv6 needs a scope to connect to; mDNS peers use the
        // other addresses.
        .filter(|(_, socket)| !socket.ip().is_loopback() && !is_link_local(socket.ip()))
        .collect();
    if lan.is_empty() {
        report.warning(
            format!(
                "listening only on loopback ({}): coworkers cannot reach you",
                status.listen.join(", ")
            ),
            None,
            Some("listen on the LAN: `listen = [\"/ip4/0.0.0.0/tcp/7311\"]` under [share]".into()),
        );
        return;
    }
    for (shown, socket) in lan {
        match TcpStream::connect_timeout(socket, SELF_CONNECT) {
            Ok(_) => report.ok(format!("{shown}: reachable from this machine")),
            Err(e) => report.problem(
                format!("{shown}: not reachable from this machine ({e})"),
                Some("a local firewall may block the port".into()),
                Some(format!(
                    "allow TCP port {} in your firewall (for example `sudo ufw allow {}/tcp`)",
                    socket.port(),
                    socket.port()
                )),
            ),
        }
    }
}

// --- mDNS ---

pub(super) fn check_mdns(
    config: &Config,
    status: &DaemonStatus,
    names: &Allowlist,
    report: &mut Report,
) {
    report.section("mDNS");
    if !status.mdns {
        if config.share.static_peers.is_empty() {
            report.warning(
                "mDNS is off and there are no static peers: the daemon finds no one",
                None,
                Some("turn `mdns` on under [share], or list `static-peers`".into()),
            );
        } else {
            report.ok("off: static peers only");
        }
        return;
    }
    let mut usable = 0;
    for interface in interfaces(&status.interfaces) {
        let Interface {
            name,
            addresses,
            up,
            multicast,
        } = interface;
        let shown = format!("{name} ({})", addresses.join(", "));
        if up && multicast {
            usable += 1;
            report.ok(format!("{shown}: up, multicast"));
        } else {
            report.warning(
                format!(
                    "{shown}: {}: mDNS cannot work there",
                    if up { "no multicast" } else { "down" }
                ),
                None,
                None,
            );
        }
    }
    if usable == 0 {
        report.problem(
            "no interface can carry mDNS",
            Some(if status.interfaces.is_empty() {
                "no interface with an IPv4 address is up with multicast".into()
            } else {
                format!("`interfaces` under [share] is {:?}", status.interfaces)
            }),
            Some("connect to the office LAN, or list coworkers as `static-peers`".into()),
        );
    }
    check_route(&status.interfaces, report);
    let discovered: Vec<&PeerStatus> = status.peers.iter().filter(|p| p.discovered).collect();
    let (known, strangers): (Vec<&PeerStatus>, Vec<&PeerStatus>) =
        discovered.iter().copied().partition(|p| p.allowlisted);
    if !known.is_empty() {
        let list: Vec<String> = known.iter().map(|p| names.name_or_id(&p.id)).collect();
        report.ok(format!("discovered: {}", list.join(", ")));
    }
    if !strangers.is_empty() {
        let list: Vec<&str> = strangers.iter().map(|p| p.id.as_str()).collect();
        report.ok(format!(
            "discovered, not allowlisted (ignored): {}",
            list.join(", ")
        ));
    }
    if discovered.is_empty() && usable > 0 && status.up_for() > Duration::from_secs(10) {
        report.warning(
            "mDNS has found no one",
            Some(
                "no coworker's daemon runs on this LAN, or Wi-Fi client isolation, a VPN or \
                 another subnet drops multicast"
                    .into(),
            ),
            Some(
                "add a coworker by address: `static-peers = [\"/ip4/<their IP>/tcp/7311/p2p/<their peer ID>\"]` under [share]"
                    .into(),
            ),
        );
    }
}

/// mDNS routed into a VPN's tunnel (see [`route`]), unless `interfaces`
/// (`only`) already names a LAN interface.
fn check_route(only: &[String], report: &mut Report) {
    if only.iter().any(|name| route::tunnel_kind(name).is_none()) {
        return;
    }
    let Some(device) = route::mdns_interface() else {
        return;
    };
    let Some(kind) = route::tunnel_kind(&device) else {
        return;
    };
    let lan = interfaces(&[])
        .into_iter()
        .find(|i| i.up && i.multicast && route::tunnel_kind(&i.name).is_none());
    let pin = match lan {
        Some(lan) => format!("name the LAN interface: `interfaces = [\"{}\"]`", lan.name),
        None => "name the LAN interface in `interfaces`".to_owned(),
    };
    report.warning(
        format!(
            "the route to mDNS's group {} leaves by {device}, a {kind} interface (a VPN's?)",
            route::MDNS_GROUP
        ),
        Some(
            "announcements sent that way carry the tunnel's address, and coworkers' \
             machines drop them"
                .into(),
        ),
        Some(format!(
            "{pin} under [share], or list coworkers as `static-peers`"
        )),
    );
}

struct Interface {
    name: String,
    addresses: Vec<String>,
    up: bool,
    multicast: bool,
}

/// This machine's interfaces with an IPv4 address, loopback left out;
/// only those in `only`, unless it is empty.
fn interfaces(only: &[String]) -> Vec<Interface> {
    let mut found: Vec<Interface> = Vec::new();
    for interface in if_addrs::get_if_addrs().unwrap_or_default() {
        if interface.is_loopback() || !interface.ip().is_ipv4() {
            continue;
        }
        if !only.is_empty() && !only.contains(&interface.name) {
            continue;
        }
        let address = interface.ip().to_string();
        if let Some(known) = found.iter_mut().find(|i| i.name == interface.name) {
            known.addresses.push(address);
            continue;
        }
        // IFF_UP and IFF_MULTICAST, from the kernel's flags.
        let flags = std::fs::read_to_string(format!("/sys/class/net/{}/flags", interface.name))
            .ok()
            .and_then(|text| u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok())
            .unwrap_or(0x1 | 0x1000);
        found.push(Interface {
            name: interface.name.clone(),
            addresses: vec![address],
            up: flags & 0x1 != 0,
            multicast: flags & 0x1000 != 0,
        });
    }
    found
}
