//! Static peers given by name (`/dns/…`, `/dns4/…`, `/dns6/…`): an office
//! host name or a VPN's (Tailscale MagicDNS), where mDNS does not pass.
//!
//! Names are resolved by libp2p's `dns` transport, wrapped around TCP,
//! with the system's resolver configuration (`/etc/resolv.conf`, and
//! `/etc/hosts` first). Nothing here resolves anything itself. A name
//! is resolved anew at each dial, so a peer whose name moves to another
//! IP is found there at the next redial.
//!
//! A name proves nothing: whoever answers at the resolved address must
//! still complete the Noise handshake as the peer ID the address names
//! (or, without one, be on the allowlist), exactly as at an IP address.
//! Incoming connections always come from an IP, so admission's address
//! rules (`node::admission`) see no names; mDNS announces IPs only.
//!
//! `/dnsaddr` (TXT records that list further addresses, of any kind) is
//! not a static peer's form: it would let whoever controls the record
//! choose what the daemon dials. warren's daemon refuses it in `static-peers`.

use libp2p::dns::{ResolverConfig, ResolverOpts};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Where the resolver's configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Resolver {
    /// `/etc/resolv.conf` and `/etc/hosts`.
    #[default]
    System,
    /// No name server at all, and `/etc/hosts` only (what the system's
    /// way falls back to when its configuration cannot be read): for
    /// tests, where an unknown name must fail without a query leaving the
    /// machine.

    #[cfg(test)]
    HostsOnly,
}

/// The `dns` transport around the transport `inner` makes, resolving as
/// `resolver` says. (`inner` is called again when the system's
/// configuration cannot be read: the first one went with the error.)
pub(crate) fn transport<T>(
    mut inner: impl FnMut() -> T,
    resolver: Resolver,
) -> libp2p::dns::tokio::Transport<T> {
    if resolver == Resolver::System {
        match libp2p::dns::tokio::Transport::system(inner()) {
            Ok(transport) => return transport,
            Err(error) => tracing::debug!(
                "cannot read the system's DNS configuration ({error}); \
                 static peers' names resolve from /etc/hosts only"
            ),
        }
    }
    let config = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
    libp2p::dns::tokio::Transport::custom(inner(), config, ResolverOpts::default())
}

/// The host name in `address`, if it names one (`/dns`, `/dns4`, `/dns6`
/// or `/dnsaddr`).
pub(crate) fn host_name(address: &Multiaddr) -> Option<String> {
    address.iter().find_map(|protocol| match protocol {
        Protocol::Dns(name)
        | Protocol::Dns4(name)
        | Protocol::Dns6(name)
        | Protocol::Dnsaddr(name) => Some(name.into_owned()),
        _ => None,
    })
}

/// Splits a trailing `/p2p/<peer id>` off an address.
pub(crate) fn split_peer_id(mut address: Multiaddr) -> (Multiaddr, Option<PeerId>) {
    match address.iter().last() {
        Some(Protocol::P2p(peer)) => {
            address.pop();
            (address, Some(peer))
        }
        _ => (address, None),
    }
}
