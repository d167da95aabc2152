//! Finding coworkers' nodes on the LAN with mDNS (DNS-SD), via `mdns-sd`.
//!
//! Each node advertises a service instance named after its peer ID, with TXT
//! records `peer=<peer id>`, `v=<wire version>` and `proto=<protocol name>`,
//! and browses for others. A resolved instance only yields an address hint:
//! the event loop dials `/ip4/<address>/tcp/<port>/p2p/<peer id>` if, and
//! only if, that peer ID is allowlisted, and Noise then proves the peer ID
//! during the handshake, so a spoofed announcement cannot impersonate
//! anyone; at worst it makes us dial an address that fails the handshake.
//!
//! Anyone on the LAN can announce an allowlisted peer's ID (it is in its
//! advert) with any addresses. So an announced address is taken only if it
//! lies in the subnet of the interface the announcement came in on, and
//! never a loopback one unless configured ([`MdnsConfig::with_loopback`]);
//! the event loop keeps at most [`MAX_ANNOUNCED`] of them per peer, drops
//! them after [`ANNOUNCED_TTL`] without a new announcement, and dials a
//! peer on discovery no sooner than its redial backoff allows.
//!
//! Announcements can come as fast as anyone on the LAN sends them, so what
//! each costs is bounded: on the node's thread, a look at the cached
//! interfaces (`node::interfaces`) and at most [`MAX_INSTANCES`] names
//! remembered; in `mdns-sd`, whose record cache has no cap of its own, the
//! cache is measured every [`CACHE_CHECK`] and, past
//! [`MAX_CACHED_RECORDS`], the mDNS daemon is started afresh (which drops
//! the cache; coworkers are found again by the next browse).
//!
//! Nothing here runs unless [`NodeConfig::with_mdns`](crate::NodeConfig::with_mdns)
//! asked for it: creating the daemon already opens multicast sockets. The
//! daemon runs on its own thread; the event loop awaits its browse channel
//! with `recv_async`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{IfKind, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};

use tokio::time::Instant;

use crate::PROTOCOL_NAME;
use crate::config::MdnsConfig;
use crate::node::interfaces::{Interfaces, in_subnet};
use crate::protocol::wire::WIRE_VERSION;

/// TXT key carrying the advertised peer ID.
const PEER_KEY: &str = "peer";
/// Most announced addresses kept per peer; the oldest go first.
pub(crate) const MAX_ANNOUNCED: usize = 8;
/// An announced address not announced again for this long is forgotten
/// (unless a connection to it proved it; mDNS refreshes records well
/// within this).
pub(crate) const ANNOUNCED_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// What browsing turned up.
#[derive(Debug)]
pub(crate) enum Found {
    Peer {
        peer: PeerId,
        addresses: Vec<Multiaddr>,
    },
    Gone(PeerId),
    /// Nothing the event loop needs to act on.
    Nothing,
    /// The daemon stopped; discovery is over.
    Stopped,
}

pub(crate) struct Discovery {
    daemon: ServiceDaemon,
    browse: mdns_sd::Receiver<ServiceEvent>,
    config: MdnsConfig,
    local_peer: PeerId,
    announcements: Announcements,
    /// The port advertised, once the swarm listens.
    advertised_port: Option<u16>,
    /// When to measure the daemon's cache, and the measure asked for.
    cache_check: tokio::time::Interval,
    metrics: Option<mdns_sd::Receiver<mdns_sd::Metrics>>,
    /// Times the daemon was started afresh (the first is logged louder).
    restarts: u64,
}

/// Records the mDNS daemon may cache before it is started afresh: far
/// more than a LAN's devices announce (each warren node, a handful).
pub(crate) const MAX_CACHED_RECORDS: i64 = 16_384;
/// How often the mDNS daemon's cache is measured.
pub(crate) const CACHE_CHECK: Duration = Duration::from_secs(5);

impl Discovery {
    /// Starts the mDNS daemon on the configured interfaces and browses.
    pub(crate) fn start(config: MdnsConfig, local_peer: PeerId) -> Result<Self, mdns_sd::Error> {
        let (daemon, browse) = open(&config)?;
        let mut cache_check = tokio::time::interval(CACHE_CHECK);
        cache_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            daemon,
            browse,
            announcements: Announcements::new(&config, local_peer, Interfaces::of_this_machine()),
            config,
            local_peer,
            advertised_port: None,
            cache_check,
            metrics: None,
            restarts: 0,
        })
    }

    /// Advertises this node with the TCP port of `listen` (a listen address
    /// the swarm reported), at every address of the enabled interfaces.
    /// Only the first port is advertised: a node has one TCP listener in
    /// practice, and when it listens on `0.0.0.0` the swarm reports the
    /// same port once per interface address.
    pub(crate) fn advertise(&mut self, listen: &Multiaddr) -> Result<(), mdns_sd::Error> {
        let Some((_, port)) = ip_and_tcp_port(listen) else {
            return Ok(());
        };
        if self.advertised_port.is_some() {
            return Ok(());
        }
        self.register(port)?;
        self.advertised_port = Some(port);
        tracing::debug!(port, "advertising on mDNS");
        Ok(())
    }

    fn register(&self, port: u16) -> Result<(), mdns_sd::Error> {
        let peer = self.local_peer.to_base58();
        let version = WIRE_VERSION.to_string();
        let properties = [
            (PEER_KEY, peer.as_str()),
            ("v", version.as_str()),
            ("proto", PROTOCOL_NAME),
        ];
        let host = format!("{peer}.local.");
        let service = ServiceInfo::new(
            &self.config.service_type,
            &peer,
            &host,
            (),
            port,
            &properties[..],
        )?
        .enable_addr_auto();
        self.daemon.register(service)
    }

    /// Waits for the next browse event and interprets it; measures the
    /// daemon's cache now and then.
    pub(crate) async fn next(&mut self) -> Found {
        tokio::select! {
            event = self.browse.recv_async() => match event {
                Ok(event) => self.announcements.interpret(event, Instant::now()),
                Err(_) => Found::Stopped,
            },
            metrics = measured(self.metrics.as_ref()) => {
                self.metrics = None;
                match metrics {
                    Some(metrics) => self.check_cache(cached_records(&metrics)),
                    None => Found::Nothing,
                }
            }
            _ = self.cache_check.tick() => {
                self.metrics = self.daemon.get_metrics().ok();
                Found::Nothing
            }
        }
    }

    /// Starts the daemon afresh if its cache holds more than
    /// [`MAX_CACHED_RECORDS`].
    fn check_cache(&mut self, cached: i64) -> Found {
        if cached <= MAX_CACHED_RECORDS {
            return Found::Nothing;
        }
        if self.restarts == 0 {
            tracing::warn!(
                cached,
                "mDNS is caching more records than a LAN announces (a flood?); \
                 starting it afresh"
            );
        } else {
            tracing::debug!(
                cached,
                "mDNS cache over its bound again; starting it afresh"
            );
        }
        self.restarts += 1;
        match self.restart() {
            Ok(()) => Found::Nothing,
            Err(error) => {
                tracing::warn!("cannot start mDNS afresh: {error}");
                Found::Stopped
            }
        }
    }

    /// Replaces the daemon (and with it, its cache) by a new one that
    /// browses and advertises as the old one did.
    fn restart(&mut self) -> Result<(), mdns_sd::Error> {
        let (daemon, browse) = open(&self.config)?;
        let old = std::mem::replace(&mut self.daemon, daemon);
        let _ = old.shutdown();
        self.browse = browse;
        if let Some(port) = self.advertised_port {
            self.register(port)?;
        }
        Ok(())
    }
}

/// An mDNS daemon on the configured interfaces, browsing.
fn open(
    config: &MdnsConfig,
) -> Result<(ServiceDaemon, mdns_sd::Receiver<ServiceEvent>), mdns_sd::Error> {
    let daemon = ServiceDaemon::new()?;
    // Selections apply in order, the last match winning.
    if !config.interfaces.is_empty() {
        daemon.disable_interface(IfKind::All)?;
        for interface in &config.interfaces {
            let kind = match interface.parse::<IpAddr>() {
                Ok(address) => IfKind::Addr(address),
                Err(_) => IfKind::Name(interface.clone()),
            };
            daemon.enable_interface(kind)?;
        }
    }
    if !config.ipv6 {
        daemon.disable_interface(IfKind::IPv6)?;
    }
    let browse = daemon.browse(&config.service_type)?;
    Ok((daemon, browse))
}

/// The metrics asked for, once they come (`None` if the daemon went
/// away); never, if none were asked for.
async fn measured(
    metrics: Option<&mdns_sd::Receiver<mdns_sd::Metrics>>,
) -> Option<mdns_sd::Metrics> {
    match metrics {
        Some(metrics) => metrics.recv_async().await.ok(),
        None => std::future::pending().await,
    }
}

/// Records in an mDNS daemon's cache, by its metrics (`cached-ptr`,
/// `cached-addr`, …).
fn cached_records(metrics: &mdns_sd::Metrics) -> i64 {
    (metrics.iter())
        .filter(|(name, _)| name.starts_with("cached-"))
        .map(|(_, count)| *count)
        .sum()
}

/// What browse events mean to the node: the checks of the module docs,
/// without the daemon (so they can be tested without multicast).
struct Announcements {
    ipv6: bool,
    loopback: bool,
    local_peer: PeerId,
    /// Full instance names seen, to recognise removals.
    instances: Instances,
    /// This machine's interfaces: an announcement may come in many times
    /// a second, and reading them is a netlink dump.
    interfaces: Interfaces,
}

impl Announcements {
    fn new(config: &MdnsConfig, local_peer: PeerId, interfaces: Interfaces) -> Self {
        Self {
            ipv6: config.ipv6,
            loopback: config.loopback,
            local_peer,
            instances: Instances::default(),
            interfaces,
        }
    }

    fn interpret(&mut self, event: ServiceEvent, now: Instant) -> Found {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let Some(peer) = service
                    .get_property_val_str(PEER_KEY)
                    .and_then(|text| text.parse::<PeerId>().ok())
                else {
                    tracing::debug!(name = service.fullname, "mDNS instance without a peer ID");
                    return Found::Nothing;
                };
                if peer == self.local_peer {
                    return Found::Nothing;
                }
                let received_on: Vec<&str> = (service.get_addresses().iter())
                    .flat_map(received_on)
                    .collect();
                let interfaces = self.interfaces.knowing(&received_on, now);
                let addresses = service
                    .get_addresses()
                    .iter()
                    .filter(|address| {
                        let ip = address.to_ip_addr();
                        let local = on_link(address, interfaces);
                        if !local {
                            tracing::debug!(%peer, %ip, "announced address outside the receiving interface's subnet; ignored");
                        }
                        dialable(&ip, self.ipv6, self.loopback) && local
                    })
                    .map(|address| tcp_address(address.to_ip_addr(), service.port))
                    .take(MAX_ANNOUNCED)
                    .collect::<Vec<_>>();
                self.instances.resolved(&service.fullname, peer);
                if addresses.is_empty() {
                    return Found::Nothing;
                }
                Found::Peer { peer, addresses }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => match self.instances.removed(&fullname) {
                Some(peer) => Found::Gone(peer),
                None => Found::Nothing,
            },
            _ => Found::Nothing,
        }
    }
}

/// Most mDNS instances remembered (to recognise their goodbyes): anyone on
/// the LAN can announce any number of them, so their memory is bounded.
const MAX_INSTANCES: usize = 1024;

/// Instance names resolved to peer IDs, at most [`MAX_INSTANCES`]; beyond
/// that, new ones are not remembered (their goodbyes are then ignored, and
/// they expire with the peer's other state).
#[derive(Debug, Default)]
struct Instances(HashMap<String, PeerId>);

impl Instances {
    fn resolved(&mut self, fullname: &str, peer: PeerId) {
        if self.0.len() < MAX_INSTANCES || self.0.contains_key(fullname) {
            self.0.insert(fullname.to_owned(), peer);
        }
    }

    fn removed(&mut self, fullname: &str) -> Option<PeerId> {
        self.0.remove(fullname)
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        // Unregisters our instance (with a goodbye packet) and ends the thread.
        let _ = self.daemon.shutdown();
    }
}

/// Waits for discovery's next event, or forever when there is no discovery.
pub(crate) async fn next(discovery: Option<&mut Discovery>) -> Found {
    match discovery {
        Some(discovery) => discovery.next().await,
        None => std::future::pending().await,
    }
}

fn dialable(ip: &IpAddr, ipv6: bool, loopback: bool) -> bool {
    if ip.is_loopback() && !loopback {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_multicast() && !v4.is_broadcast(),
        // Link-local addresses need a scope that a multiaddr cannot carry.
        IpAddr::V6(v6) => {
            ipv6 && !v6.is_unspecified() && !v6.is_multicast() && !v6.is_unicast_link_local()
        }
    }
}

/// The names of the interfaces `address` was announced on.
fn received_on(address: &ScopedIp) -> Vec<&str> {
    match address {
        ScopedIp::V4(v4) => (v4.interface_ids().iter())
            .map(|id| id.name.as_str())
            .collect(),
        ScopedIp::V6(v6) => vec![v6.scope_id().name.as_str()],
        _ => Vec::new(),
    }
}

/// Whether `address` lies in the subnet of (one of) the interfaces it was
/// announced on, as `interfaces` (this machine's) says.
fn on_link(address: &ScopedIp, interfaces: &[if_addrs::Interface]) -> bool {
    let ip = address.to_ip_addr();
    let names = received_on(address);
    interfaces
        .iter()
        .filter(|interface| names.contains(&interface.name.as_str()))
        .any(|interface| in_subnet(ip, &interface.addr))
}

pub(crate) fn tcp_address(ip: IpAddr, port: u16) -> Multiaddr {
    let mut address = Multiaddr::empty();
    address.push(match ip {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    });
    address.push(Protocol::Tcp(port));
    address
}

fn ip_and_tcp_port(address: &Multiaddr) -> Option<(IpAddr, u16)> {
    let mut ip = None;
    for protocol in address.iter() {
        match protocol {
            Protocol::Ip4(v4) => ip = Some(IpAddr::V4(v4)),
            Protocol::Ip6(v6) => ip = Some(IpAddr::V6(v6)),
            Protocol::Tcp(port) => return ip.map(|ip| (ip, port)),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn listen_addresses_give_ip_and_port() {
        let address: Multiaddr = "/ip4/0.0.0.0/tcp/4001".parse().unwrap();
        assert_eq!(
            ip_and_tcp_port(&address),
            Some((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 4001))
        );
        let memory: Multiaddr = "/memory/5".parse().unwrap();
        assert_eq!(ip_and_tcp_port(&memory), None);
        assert_eq!(
            tcp_address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 7),
            "/ip4/10.0.0.2/tcp/7".parse::<Multiaddr>().unwrap()
        );
    }

    /// SECURITY.md, "What others on the network can see, and do":
    /// anyone can announce instance after instance; at most
    /// `MAX_INSTANCES` are remembered.
    #[test]
    fn instances_are_remembered_up_to_a_bound() {
        let mut instances = Instances::default();
        let peer = PeerId::random();
        for n in 0..MAX_INSTANCES + 100 {
            instances.resolved(&format!("{n}._warren._tcp.local."), peer);
        }
        assert_eq!(instances.0.len(), MAX_INSTANCES);
        let known = "5._warren._tcp.local.";
        let other = PeerId::random();
        instances.resolved(known, other);
        assert_eq!(
            instances.removed(known),
            Some(other),
            "known ones are updated"
        );
        assert_eq!(instances.removed(known), None);
    }

    #[test]
    fn only_usable_addresses_are_dialed() {
        assert!(dialable(
            &IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            false,
            false
        ));
        assert!(!dialable(&IpAddr::V4(Ipv4Addr::UNSPECIFIED), false, false));
        let global = IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert!(!dialable(&global, false, false));
        assert!(dialable(&global, true, false));
        let link_local = IpAddr::V6("fe80::1".parse::<Ipv6Addr>().unwrap());
        assert!(!dialable(&link_local, true, false));
        // Loopback only where configured: an announcement that names one
        // points us at ourselves.
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(!dialable(&loopback, false, false));
        assert!(dialable(&loopback, false, true));
        assert!(!dialable(&IpAddr::V6(Ipv6Addr::LOCALHOST), true, false));
    }

    /// An announcement for `peer`, at `addresses`, each received on the
    /// interface named beside it.
    fn announcement(peer: PeerId, addresses: &[([u8; 4], &str)]) -> ServiceEvent {
        let name = peer.to_base58();
        let txt = [(PEER_KEY, name.as_str())];
        let mut service = ServiceInfo::new(
            crate::config::DEFAULT_SERVICE_TYPE,
            &name,
            "spoofer.local.",
            (),
            7311,
            &txt[..],
        )
        .unwrap()
        .as_resolved_service();
        service.addresses = (addresses.iter())
            .map(|(ip, interface)| {
                let id = mdns_sd::InterfaceId {
                    name: (*interface).to_owned(),
                    index: 2,
                };
                ScopedIp::V4(mdns_sd::ScopedIpV4::new(Ipv4Addr::from(*ip), id))
            })
            .collect();
        ServiceEvent::ServiceResolved(Box::new(service))
    }

    fn announcements(interfaces: Vec<if_addrs::Interface>) -> (Announcements, Arc<AtomicUsize>) {
        let (interfaces, reads) = crate::node::interfaces::tests::counted(interfaces);
        let config = MdnsConfig::default();
        (
            Announcements::new(&config, PeerId::random(), interfaces),
            reads,
        )
    }

    /// An announced address counts only inside the subnet of the
    /// interface it came in on, and never one without a netmask (a VPN
    /// that reports none would make the whole internet "on the link").
    #[test]
    fn announced_addresses_must_be_on_the_receiving_link() {
        use crate::node::interfaces::tests::v4;
        let (mut announcements, _) = announcements(vec![
            v4("eth0", [10, 0, 0, 5], [255, 255, 255, 0]),
            v4("tun0", [203, 0, 113, 7], [0, 0, 0, 0]),
        ]);
        let peer = PeerId::random();
        let event = announcement(
            peer,
            &[
                ([10, 0, 0, 9], "eth0"),
                ([10, 0, 1, 9], "eth0"),
                ([192, 0, 2, 1], "eth0"),
                ([198, 51, 100, 1], "tun0"),
                ([10, 0, 0, 10], "tun0"),
            ],
        );
        let Found::Peer { addresses, .. } = announcements.interpret(event, Instant::now()) else {
            panic!("the address on the link was not taken");
        };
        assert_eq!(
            addresses,
            ["/ip4/10.0.0.9/tcp/7311".parse::<Multiaddr>().unwrap()]
        );
    }

    /// A flood of announcements (anyone on the LAN can send them as fast
    /// as they like) used to read the interfaces once each, on the node's
    /// thread.
    #[test]
    fn a_flood_of_announcements_reads_the_interfaces_once() {
        use crate::node::interfaces::tests::v4;
        let (mut announcements, reads) =
            announcements(vec![v4("eth0", [10, 0, 0, 5], [255, 255, 255, 0])]);
        let now = Instant::now();
        for n in 0..1000u32 {
            let event = announcement(
                PeerId::random(),
                &[([10, 0, 0, (n % 200) as u8 + 1], "eth0")],
            );
            let at = now + std::time::Duration::from_millis(u64::from(n));
            assert!(matches!(
                announcements.interpret(event, at),
                Found::Peer { .. }
            ));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    /// The bound on `mdns-sd`'s cache reads its metrics: every kind of
    /// cached record counts, and nothing else.
    #[test]
    fn the_mdns_cache_is_measured_by_its_cached_records() {
        let metrics: mdns_sd::Metrics = [
            ("cached-ptr", 3),
            ("cached-srv", 3),
            ("cached-txt", 3),
            ("cached-addr", 20_000),
            ("cached-nsec", 1),
            ("cached-subtype", 0),
            ("respond", 500),
            ("browse", 1),
        ]
        .into_iter()
        .map(|(name, count)| (name.to_owned(), count))
        .collect();
        assert_eq!(cached_records(&metrics), 20_010);
        assert!(cached_records(&metrics) > MAX_CACHED_RECORDS);
    }
}
