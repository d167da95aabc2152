//! Which incoming connections get as far as a handshake, how many at
//! once, and for how long.
//!
//! A Noise handshake costs a few key agreements, and it comes before we
//! know who is calling, so the allowlist cannot help; a caller need not
//! even complete one to hold a slot (an idle TCP connection does). So
//! [`Admission`] wraps the transport and looks at each incoming
//! connection's remote address before a byte of it is read:
//!
//! - scope: by default only addresses that can be a coworker's on the LAN
//!   are let in: private (RFC 1918), shared (100.64/10), link-local,
//!   loopback, unique-local IPv6, or any address in the subnet of one of
//!   this machine's interfaces (an interface without a netmask has none,
//!   see `node::interfaces`). A daemon that listens on `::` is thereby
//!   not open to the whole IPv6 internet.
//!   [`NodeConfig::with_inbound_from_anywhere`] lifts this (for peers
//!   reached over a routed VPN with global addresses).
//! - rate: each remote IP may start [`rate::BURST`] handshakes at once and
//!   then one every [`rate::REFILL`] (`rate`).
//! - slots: at most [`in_progress::PER_SOURCE`] handshakes in progress
//!   per source (an IPv4 address, an IPv6 /64) and
//!   [`in_progress::MAX_HANDSHAKES`] in all; a newcomer takes over the
//!   oldest slot rather than being refused (`in_progress`).
//! - time: an incoming handshake must be over within
//!   [`HANDSHAKE_DEADLINE`]; a coworker's takes a few round trips.
//!   (Outgoing ones keep libp2p's 10 s.)
//!
//! A refused connection is closed at once. This is a transport, not a
//! `NetworkBehaviour`, because a behaviour can refuse a pending connection
//! but never close one it let in (the swarm closes established ones
//! only), and because a slot must be given back however the handshake
//! ends: the handshake's future holds it. For the same reason the swarm's
//! own cap on pending connections stays unset (see
//! [`NodeConfig::with_connection_limits`]): it would refuse newcomers
//! while the slots they could take over are full.
//!
//! [`NodeConfig::with_inbound_from_anywhere`]: crate::NodeConfig::with_inbound_from_anywhere
//! [`NodeConfig::with_connection_limits`]: crate::NodeConfig::with_connection_limits

pub(crate) mod in_progress;
pub(crate) mod rate;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::TryFutureExt as _;
use futures::future::{AbortHandle, AbortRegistration, Abortable};
use libp2p::core::Multiaddr;
use libp2p::core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use tokio::time::Instant;

use self::in_progress::{InProgress, MAX_HANDSHAKES, PER_SOURCE, Source};
use self::rate::Buckets;
use crate::node::interfaces::{Interfaces, in_subnet};

/// How long an incoming connection has to complete its handshake.
pub(crate) const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(3);
/// Refusals handled in one poll before the transport yields to the rest
/// of the node (a flood must not hold its thread).
const REFUSALS_PER_POLL: usize = 64;

/// Refused incoming connections, by why.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{0} is not a LAN address (see NodeConfig::with_inbound_from_anywhere)")]
    Scope(IpAddr),
    #[error("{0} is starting handshakes too fast")]
    Rate(IpAddr),
    #[error("{0} is not an IP address")]
    NotIp(Multiaddr),
}

/// Why an incoming handshake did not finish, besides the transport's own
/// errors (passed through as they are).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError<E> {
    #[error(transparent)]
    Transport(E),
    #[error("the handshake took longer than {0:?}")]
    TimedOut(Duration),
    #[error("the handshake gave its slot to a newer one")]
    GaveWay,
}

/// The checks of the module docs, on the remote address alone.
pub(crate) struct Gate {
    anywhere: bool,
    interfaces: Interfaces,
    buckets: Buckets,
    /// Shared with each handshake's [`Slot`], which gives its slot back.
    slots: Arc<Mutex<InProgress>>,
}

impl Gate {
    pub(crate) fn new(anywhere: bool) -> Self {
        Self::with_interfaces(anywhere, Interfaces::of_this_machine())
    }

    fn with_interfaces(anywhere: bool, interfaces: Interfaces) -> Self {
        Self {
            anywhere,
            interfaces,
            buckets: Buckets::default(),
            slots: Arc::new(Mutex::new(InProgress::new(MAX_HANDSHAKES, PER_SOURCE))),
        }
    }

    fn in_scope(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.anywhere || on_the_lan(ip) {
            return true;
        }
        (self.interfaces.get(now).iter()).any(|interface| in_subnet(ip, &interface.addr))
    }

    /// Lets a connection from `ip` start its handshake: the slot it holds
    /// until the handshake ends, and what aborts the handshake if a newer
    /// one takes the slot over.
    fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(Slot, AbortRegistration), Refused> {
        let ip = ip.to_canonical();
        if !self.in_scope(ip, now) {
            return Err(Refused::Scope(ip));
        }
        if !self.buckets.take(ip, now) {
            return Err(Refused::Rate(ip));
        }
        let source = Source::of(ip);
        let (abort, registration) = AbortHandle::new_pair();
        let id = (self.slots.lock().expect("slots not poisoned")).start(source, abort);
        let slot = Slot {
            slots: Arc::clone(&self.slots),
            source,
            id,
        };
        Ok((slot, registration))
    }
}

/// A handshake's slot, given back when dropped.
struct Slot {
    slots: Arc<Mutex<InProgress>>,
    source: Source,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        (self.slots.lock().expect("slots not poisoned")).end(self.source, self.id);
    }
}

/// An incoming handshake: ends by its deadline, or when it gives its slot
/// away, and holds the slot until then.
pub(crate) struct Handshake<F> {
    inner: Pin<Box<Abortable<tokio::time::Timeout<F>>>>,
    _slot: Slot,
}

impl<F, O, E> Future for Handshake<F>
where
    F: Future<Output = Result<O, E>>,
{
    type Output = Result<O, HandshakeError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.inner.as_mut().poll(cx)) {
            Ok(Ok(result)) => result.map_err(HandshakeError::Transport),
            Ok(Err(_elapsed)) => Err(HandshakeError::TimedOut(HANDSHAKE_DEADLINE)),
            Err(_aborted) => Err(HandshakeError::GaveWay),
        })
    }
}

/// A transport whose incoming connections pass the [`Gate`] first.
pub(crate) struct Admission<T> {
    inner: T,
    gate: Gate,
}

impl<T> Admission<T> {
    pub(crate) fn new(inner: T, anywhere: bool) -> Self {
        Self {
            inner,
            gate: Gate::new(anywhere),
        }
    }
}

type DialFuture<T> = futures::future::MapErr<
    <T as Transport>::Dial,
    fn(<T as Transport>::Error) -> HandshakeError<<T as Transport>::Error>,
>;

impl<T> Transport for Admission<T>
where
    T: Transport + Unpin,
    T::Error: 'static,
{
    type Output = T::Output;
    type Error = HandshakeError<T::Error>;
    type ListenerUpgrade = Handshake<T::ListenerUpgrade>;
    type Dial = DialFuture<T>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        address: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        (self.inner.listen_on(id, address)).map_err(|error| error.map(HandshakeError::Transport))
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        address: Multiaddr,
        options: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let dial = (self.inner.dial(address, options))
            .map_err(|error| error.map(HandshakeError::Transport))?;
        Ok(dial.map_err(HandshakeError::Transport as fn(_) -> _))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = &mut *self;
        for _ in 0..REFUSALS_PER_POLL {
            let event = match ready!(Pin::new(&mut this.inner).poll(cx)) {
                TransportEvent::Incoming {
                    listener_id,
                    upgrade,
                    local_addr,
                    send_back_addr,
                } => {
                    let admitted = match remote_ip(&send_back_addr) {
                        Some(ip) => this.gate.admit(ip, Instant::now()),
                        None => Err(Refused::NotIp(send_back_addr.clone())),
                    };
                    let (slot, registration) = match admitted {
                        Ok(admitted) => admitted,
                        Err(refused) => {
                            // Dropping the upgrade closes the socket.
                            tracing::debug!("refusing a connection: {refused}");
                            continue;
                        }
                    };
                    let deadline = tokio::time::timeout(HANDSHAKE_DEADLINE, upgrade);
                    TransportEvent::Incoming {
                        listener_id,
                        upgrade: Handshake {
                            inner: Box::pin(Abortable::new(deadline, registration)),
                            _slot: slot,
                        },
                        local_addr,
                        send_back_addr,
                    }
                }
                TransportEvent::NewAddress {
                    listener_id,
                    listen_addr,
                } => TransportEvent::NewAddress {
                    listener_id,
                    listen_addr,
                },
                TransportEvent::AddressExpired {
                    listener_id,
                    listen_addr,
                } => TransportEvent::AddressExpired {
                    listener_id,
                    listen_addr,
                },
                TransportEvent::ListenerClosed {
                    listener_id,
                    reason,
                } => TransportEvent::ListenerClosed {
                    listener_id,
                    reason: reason.map_err(HandshakeError::Transport),
                },
                TransportEvent::ListenerError { listener_id, error } => {
                    TransportEvent::ListenerError {
                        listener_id,
                        error: HandshakeError::Transport(error),
                    }
                }
            };
            return Poll::Ready(event);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::node::interfaces::tests::{counted, v4};

    fn gate(anywhere: bool, interfaces: Vec<if_addrs::Interface>) -> Gate {
        Gate::with_interfaces(anywhere, counted(interfaces).0)
    }

    fn handshake<F: Future>(gate: &mut Gate, ip: &str, inner: F) -> Handshake<F> {
        let (slot, registration) = gate.admit(ip.parse().unwrap(), Instant::now()).unwrap();
        Handshake {
            inner: Box::pin(Abortable::new(
                tokio::time::timeout(HANDSHAKE_DEADLINE, inner),
                registration,
            )),
            _slot: slot,
        }
    }

    fn held(gate: &Gate, ip: &str) -> (usize, usize) {
        let source = Source::of(ip.parse().unwrap());
        gate.slots.lock().unwrap().held(source)
    }

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
            assert!(matches!(
                gate(false, Vec::new()).admit(ip, Instant::now()),
                Err(Refused::Scope(_))
            ));
            assert!(gate(true, Vec::new()).admit(ip, Instant::now()).is_ok());
        }
    }

    /// A VPN interface that reports no netmask made every address "in its
    /// subnet", and so let the whole internet reach the handshake.
    #[test]
    fn an_interface_without_a_netmask_does_not_let_the_internet_in() {
        let now = Instant::now();
        let interfaces = vec![
            v4("tun0", [203, 0, 113, 7], [0, 0, 0, 0]),
            v4("eth1", [198, 51, 100, 7], [255, 255, 255, 0]),
        ];
        let mut gate = gate(false, interfaces);
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        assert!(matches!(gate.admit(stranger, now), Err(Refused::Scope(_))));
        // A real subnet of ours is still local, global or not.
        assert!(gate.admit("198.51.100.9".parse().unwrap(), now).is_ok());
    }

    #[test]
    fn a_burst_holds_at_most_its_share_of_the_slots() {
        let now = Instant::now();
        let mut gate = gate(false, Vec::new());
        let flooder = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66));
        let mut slots = Vec::new();
        for _ in 0..rate::BURST as usize {
            slots.push(gate.admit(flooder, now).unwrap());
        }
        assert!(matches!(gate.admit(flooder, now), Err(Refused::Rate(_))));
        let other = gate.admit("::1".parse().unwrap(), now);
        assert!(other.is_ok(), "other IPs are not held up");
        // Of the burst, only its share still holds slots.
        assert_eq!(held(&gate, "10.0.0.66"), (PER_SOURCE + 1, PER_SOURCE));
        drop(other);
        assert_eq!(held(&gate, "10.0.0.66"), (PER_SOURCE, PER_SOURCE));
    }

    /// An idle connection is cut off at the deadline, and its slot is
    /// free again.
    #[tokio::test(start_paused = true)]
    async fn an_idle_handshake_ends_at_the_deadline() {
        let mut gate = gate(false, Vec::new());
        let started = Instant::now();
        let idle = handshake(
            &mut gate,
            "10.0.0.5",
            std::future::pending::<Result<(), ()>>(),
        );
        assert_eq!(held(&gate, "10.0.0.5"), (1, 1));
        let ended = idle.await;
        assert!(
            matches!(ended, Err(HandshakeError::TimedOut(_))),
            "{ended:?}"
        );
        assert_eq!(started.elapsed(), HANDSHAKE_DEADLINE);
        assert_eq!(held(&gate, "10.0.0.5"), (0, 0));
    }

    /// A handshake whose slot a newer one took over ends at once.
    #[tokio::test(start_paused = true)]
    async fn a_handshake_that_gave_way_ends_at_once() {
        let mut gate = gate(false, Vec::new());
        let oldest = handshake(
            &mut gate,
            "10.0.0.5",
            std::future::pending::<Result<(), ()>>(),
        );
        let _newer: Vec<_> = (0..PER_SOURCE)
            .map(|_| {
                handshake(
                    &mut gate,
                    "10.0.0.5",
                    std::future::pending::<Result<(), ()>>(),
                )
            })
            .collect();
        let started = Instant::now();
        let ended = oldest.await;
        assert!(matches!(ended, Err(HandshakeError::GaveWay)), "{ended:?}");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(held(&gate, "10.0.0.5"), (PER_SOURCE, PER_SOURCE));
        drop(_newer);
        assert_eq!(held(&gate, "10.0.0.5"), (0, 0));
    }
}
