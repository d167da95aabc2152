//! Which incoming connections get as far as a handshake.
//!
//! A Noise handshake costs a few key agreements on the daemon's one async
//! thread, and it comes before we know who is calling, so the allowlist
//! cannot help. Two checks run first, on the remote address alone:
//!
//! - scope: by default only addresses that can be a coworker's on the LAN
//!   are let in: private (RFC 1918), shared (100.64/10), link-local,
//!   loopback, unique-local IPv6, or any address in the subnet of one of
//!   this machine's interfaces. A daemon that listens on `::` is thereby
//!   not open to the whole IPv6 internet. [`NodeConfig::with_inbound_from_anywhere`]
//!   lifts this (for peers reached over a routed VPN with global addresses).
//! - rate: each remote IP may start [`BURST`] handshakes at once and then
//!   one every [`REFILL`]; more are refused before any cryptography.
//!
//! [`NodeConfig::with_inbound_from_anywhere`]: crate::NodeConfig::with_inbound_from_anywhere

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use tokio::time::Instant;

/// Handshakes one IP may start at once.
pub(crate) const BURST: f64 = 8.0;
/// Then one more per this much time.
pub(crate) const REFILL: Duration = Duration::from_millis(500);
/// Remote IPs whose buckets are remembered; past this, full buckets are
/// forgotten first (they would allow a burst anyway), then all.
const MAX_TRACKED: usize = 4096;

/// Refused incoming connections, by why.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{0} is not a LAN address (see NodeConfig::with_inbound_from_anywhere)")]
    Scope(IpAddr),
    #[error("{0} is starting handshakes too fast")]
    Rate(IpAddr),
}

pub(crate) struct Behaviour {
    anywhere: bool,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// This machine's interfaces, read again every [`INTERFACES_FOR`].
    interfaces: Option<(Instant, Vec<if_addrs::Interface>)>,
}

/// How long a reading of the interfaces is used.
const INTERFACES_FOR: Duration = Duration::from_secs(10);

impl Behaviour {
    pub(crate) fn new(anywhere: bool) -> Self {
        Self {
            anywhere,
            buckets: HashMap::new(),
            interfaces: None,
        }
    }

    fn in_scope(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.anywhere || on_the_lan(ip) {
            return true;
        }
        let stale = (self.interfaces.as_ref())
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= INTERFACES_FOR);
        if stale {
            self.interfaces = Some((now, if_addrs::get_if_addrs().unwrap_or_default()));
        }
        let (_, interfaces) = self.interfaces.as_ref().expect("just read");
        (interfaces.iter()).any(|interface| crate::node::discovery::in_subnet(ip, &interface.addr))
    }

    fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        if !self.in_scope(ip, now) {
            return Err(Refused::Scope(ip));
        }
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&ip) {
            self.buckets
                .retain(|_, (tokens, at)| refill(*tokens, *at, now) < BURST);
            if self.buckets.len() >= MAX_TRACKED {
                self.buckets.clear();
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((BURST, now));
        let available = refill(*tokens, *at, now);
        if available < 1.0 {
            *tokens = available;
            *at = now;
            return Err(Refused::Rate(ip));
        }
        *tokens = available - 1.0;
        *at = now;
        Ok(())
    }
}

fn refill(tokens: f64, at: Instant, now: Instant) -> f64 {
    let earned = now.saturating_duration_since(at).as_secs_f64() / REFILL.as_secs_f64();
    (tokens + earned).min(BURST)
}

/// Whether `ip` is in a range that only a LAN (or a private VPN) can
/// reach (see the module docs); local subnets are checked apart.
pub(crate) fn on_the_lan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let shared = v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
            v4.is_private() || v4.is_link_local() || v4.is_loopback() || shared
        }
        IpAddr::V6(v6) => {
            let unique_local = (v6.segments()[0] & 0xfe00) == 0xfc00;
            let mapped = v6
                .to_ipv4_mapped()
                .is_some_and(|v4| on_the_lan(IpAddr::V4(v4)));
            v6.is_loopback() || v6.is_unicast_link_local() || unique_local || mapped
        }
    }
}

fn remote_ip(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|protocol| match protocol {
        Protocol::Ip4(v4) => Some(IpAddr::V4(v4)),
        Protocol::Ip6(v6) => Some(IpAddr::V6(v6)),
        _ => None,
    })
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = remote_ip(remote_addr) else {
            return Ok(());
        };
        self.admit(ip, Instant::now()).map_err(|refused| {
            tracing::debug!("refusing a connection: {refused}");
            ConnectionDenied::new(refused)
        })
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn only_lan_addresses_are_let_in_by_default() {
        for lan in [
            "10.1.2.3",
            "192.168.0.9",
            "172.16.5.5",
            "100.64.0.1",
            "169.254.1.1",
            "127.0.0.1",
            "fd00::1",
            "fe80::1",
            "::1",
        ] {
            assert!(on_the_lan(lan.parse().unwrap()), "{lan}");
        }
        for global in ["8.8.8.8", "2001:4860:4860::8888", "100.128.0.1"] {
            let ip: IpAddr = global.parse().unwrap();
            assert!(!on_the_lan(ip), "{global}");
            let mut admission = Behaviour::new(false);
            assert!(matches!(
                admission.admit(ip, Instant::now()),
                Err(Refused::Scope(_))
            ));
            assert!(Behaviour::new(true).admit(ip, Instant::now()).is_ok());
        }
    }

    #[test]
    fn each_ip_gets_a_burst_then_a_trickle() {
        let now = Instant::now();
        let mut admission = Behaviour::new(false);
        let flooder = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66));
        let other = IpAddr::V6(Ipv6Addr::LOCALHOST);
        for _ in 0..BURST as usize {
            admission.admit(flooder, now).unwrap();
        }
        assert!(matches!(
            admission.admit(flooder, now),
            Err(Refused::Rate(_))
        ));
        assert!(
            admission.admit(other, now).is_ok(),
            "other IPs are not held up"
        );
        assert!(matches!(
            admission.admit(flooder, now + REFILL / 2),
            Err(Refused::Rate(_))
        ));
        assert!(admission.admit(flooder, now + REFILL * 2).is_ok());
    }
}
