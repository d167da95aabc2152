//! Why the last connection to a peer failed, in the terms a user can act
//! on (for `warren doctor`).
//!
//! libp2p reports a failed dial as a chain of transport errors, and a peer
//! that does not trust us as a connection that closes right after the
//! handshake (it checks its allowlist once it knows our ID). This module
//! turns both into a [`ConnectFailure`]: a host name that does not resolve
//! (a typo, a VPN down), refused (nothing listens: the daemon is down),
//! timed out or unreachable (a firewall, a link down), closed after the
//! handshake (not on its allowlist), the wrong peer at the address, or a
//! protocol it does not speak.

use std::io;
use std::time::Duration;

use libp2p::dns::ResolveError;
use libp2p::swarm::{ConnectionError, DialError};
use libp2p::{Multiaddr, TransportError};

use super::names;
use super::names::split_peer_id;

/// A connection that the peer closes within this long of the handshake,
/// before anything was exchanged, was refused by its allowlist.
pub(super) const REFUSED_AFTER_HANDSHAKE: Duration = Duration::from_secs(5);

/// Why the last connection attempt to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConnectFailure {
    /// The host name in the address does not resolve: a typo, or the DNS
    /// that knows it (a VPN's, the office's) is not reachable.
    Unresolved {
        address: String,
        name: String,
        /// What the resolver said.
        message: String,
    },
    /// Nothing listens at the address: the peer's daemon is not running.
    Refused { address: String },
    /// No answer in time: a firewall drops the port, or the link is down.
    TimedOut { address: String },
    /// No route to the address (link down, another subnet, a blackhole).
    Unreachable { address: String },
    /// The handshake completed and the peer closed the connection at once:
    /// it does not have us on its allowlist.
    ClosedAfterHandshake,
    /// Another peer answered at the address.
    WrongPeerId {
        address: String,
        obtained: String,
        /// The address was only announced on mDNS for the peer (neither
        /// configured nor proved by a connection). Anyone can announce any
        /// peer's ID at any address, so this says nothing about the
        /// user's configuration. `false` from a daemon too old to tell.
        #[serde(default)]
        announced: bool,
    },
    /// The peer speaks none of our protocol versions.
    Protocol,
    /// Anything else, as libp2p put it.
    Other { message: String },
}

impl ConnectFailure {
    /// What a failed dial of `peer` says.
    pub(super) fn of_dial(error: &DialError) -> Option<Self> {
        match error {
            // Whether the address was only announced, the caller knows.
            DialError::WrongPeerId { obtained, address } => Some(Self::WrongPeerId {
                address: split_peer_id(address.clone()).0.to_string(),
                obtained: obtained.to_string(),
                announced: false,
            }),
            DialError::Transport(attempts) => {
                // The most telling of the addresses tried: any address that
                // got as far as a wrong peer or a handshake says more than
                // one that was refused.
                attempts
                    .iter()
                    .map(|(address, error)| of_transport(address, error))
                    .min_by_key(Self::rank)
            }
            // Our own admission, a dial already under way, or no address.
            DialError::Denied { .. }
            | DialError::Aborted
            | DialError::DialPeerConditionFalse(_)
            | DialError::NoAddresses
            | DialError::LocalPeerId { .. } => None,
        }
    }

    /// A connection closed by `cause`, `lasted` after it was established.
    pub(super) fn of_close(cause: Option<&ConnectionError>, lasted: Duration) -> Option<Self> {
        match cause {
            // The remote side ended it (our own closes have no cause) before
            // anything could come of it.
            Some(ConnectionError::IO(_)) if lasted < REFUSED_AFTER_HANDSHAKE => {
                Some(Self::ClosedAfterHandshake)
            }
            _ => None,
        }
    }

    /// The address it is about, without `/p2p`, if it names one.
    pub fn address(&self) -> Option<&str> {
        match self {
            Self::Unresolved { address, .. }
            | Self::Refused { address }
            | Self::TimedOut { address }
            | Self::Unreachable { address }
            | Self::WrongPeerId { address, .. } => Some(address),
            Self::ClosedAfterHandshake | Self::Protocol | Self::Other { .. } => None,
        }
    }

    /// Lower is more telling.
    fn rank(&self) -> u8 {
        match self {
            Self::WrongPeerId { .. } => 0,
            Self::ClosedAfterHandshake | Self::Protocol => 1,
            // The one only the user can fix, in their own configuration.
            Self::Unresolved { .. } => 2,
            Self::Refused { .. } => 3,
            Self::TimedOut { .. } => 4,
            Self::Unreachable { .. } => 5,
            Self::Other { .. } => 6,
        }
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unresolved { name, message, .. } => {
                write!(f, "the name {name} does not resolve ({message})")
            }
            Self::Refused { address } => write!(f, "connection refused at {address}"),
            Self::TimedOut { address } => write!(f, "no answer from {address} (timed out)"),
            Self::Unreachable { address } => write!(f, "{address} is unreachable"),
            Self::ClosedAfterHandshake => {
                write!(f, "it closed the connection right after the handshake")
            }
            Self::WrongPeerId {
                address,
                obtained,
                announced,
            } => {
                let announced = if *announced {
                    " (announced on mDNS)"
                } else {
                    ""
                };
                write!(
                    f,
                    "{address}{announced} answered as another peer, {obtained}"
                )
            }
            Self::Protocol => write!(f, "it speaks none of this warren's protocol versions"),
            Self::Other { message } => write!(f, "{message}"),
        }
    }
}

fn of_transport(address: &Multiaddr, error: &TransportError<io::Error>) -> ConnectFailure {
    let (address, _) = split_peer_id(address.clone());
    let name = names::host_name(&address);
    let address = address.to_string();
    let TransportError::Other(error) = error else {
        return ConnectFailure::Other {
            message: error.to_string(),
        };
    };
    // First: the resolver's own error may carry a socket's (a name server
    // that refused the query), which is not the peer's.
    if let Some(name) = name
        && let Some(resolve) = resolve_error(error)
    {
        return ConnectFailure::Unresolved {
            address,
            name,
            message: resolve.to_string(),
        };
    }
    if is_timeout(error) {
        return ConnectFailure::TimedOut { address };
    }
    match io_kind(error) {
        Some(io::ErrorKind::ConnectionRefused) => ConnectFailure::Refused { address },
        Some(io::ErrorKind::TimedOut) => ConnectFailure::TimedOut { address },
        Some(
            io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::AddrNotAvailable,
        ) => ConnectFailure::Unreachable { address },
        // A blackhole route fails a connect with EINVAL.
        _ if raw_os_error(error) == Some(22) => ConnectFailure::Unreachable { address },
        // The peer hung up during the upgrade (Noise, Yamux).
        Some(io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => {
            ConnectFailure::ClosedAfterHandshake
        }
        _ => ConnectFailure::Other {
            message: error_chain(error),
        },
    }
}

/// The resolver's error in `error`'s chain, if a name did not resolve.
fn resolve_error(error: &io::Error) -> Option<&ResolveError> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = error.get_ref().map(|e| e as _);
    while let Some(inner) = next {
        if let Some(resolve) = inner.downcast_ref::<ResolveError>() {
            return Some(resolve);
        }
        next = inner.source();
    }
    None
}

/// `error: its cause: …`, as one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
}

/// The kind of the socket's error inside `error`. libp2p wraps it in
/// layers (`Either`s among them) whose `source` skips the error they hold,
/// so it cannot be reached by walking the chain; the OS error number
/// that every layer prints (`(os error 111)`) is read instead.
fn io_kind(error: &io::Error) -> Option<io::ErrorKind> {
    raw_os_error(error).map(|code| io::Error::from_raw_os_error(code).kind())
}

fn raw_os_error(error: &io::Error) -> Option<i32> {
    if let Some(code) = error.raw_os_error() {
        return Some(code);
    }
    let text = error_chain(error);
    let at = text.rfind("(os error ")? + "(os error ".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// libp2p's own connection timeout, as it words it.
fn is_timeout(error: &io::Error) -> bool {
    error_chain(error).contains("Timeout has been reached")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(kind: io::ErrorKind) -> DialError {
        let address: Multiaddr = "/ip4/10.0.0.2/tcp/7311".parse().unwrap();
        DialError::Transport(vec![(
            address,
            // As libp2p wraps it: the socket's error inside layers whose
            // `source` skips it, so only its text says what it was.
            TransportError::Other(io::Error::other(
                io::Error::from_raw_os_error(raw(kind)).to_string(),
            )),
        )])
    }

    fn raw(kind: io::ErrorKind) -> i32 {
        match kind {
            io::ErrorKind::ConnectionRefused => 111,
            io::ErrorKind::TimedOut => 110,
            io::ErrorKind::HostUnreachable => 113,
            io::ErrorKind::ConnectionReset => 104,
            _ => 5,
        }
    }

    #[test]
    fn dial_errors_are_told_apart() {
        let address = "/ip4/10.0.0.2/tcp/7311".to_owned();
        assert_eq!(
            ConnectFailure::of_dial(&transport(io::ErrorKind::ConnectionRefused)),
            Some(ConnectFailure::Refused {
                address: address.clone()
            })
        );
        assert_eq!(
            ConnectFailure::of_dial(&transport(io::ErrorKind::TimedOut)),
            Some(ConnectFailure::TimedOut {
                address: address.clone()
            })
        );
        assert_eq!(
            ConnectFailure::of_dial(&transport(io::ErrorKind::HostUnreachable)),
            Some(ConnectFailure::Unreachable { address })
        );
        assert_eq!(
            ConnectFailure::of_dial(&transport(io::ErrorKind::ConnectionReset)),
            Some(ConnectFailure::ClosedAfterHandshake)
        );
        assert_eq!(ConnectFailure::of_dial(&DialError::Aborted), None);
    }

    /// A dial of `address` as the swarm reports it: the transport's error
    /// boxed into an `io::Error`, as `Transport::boxed` does.
    fn dial_error(
        address: &str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> DialError {
        DialError::Transport(vec![(
            address.parse().unwrap(),
            TransportError::Other(io::Error::other(error)),
        )])
    }

    /// A static peer's name that does not resolve is told as such, by
    /// name, from the error the `dns` transport really gives (a resolver
    /// with no name server: nothing leaves the machine).
    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_told_apart() {
        use libp2p::Transport as _;
        use libp2p::core::transport::{DialOpts, MemoryTransport, PortUse};

        let address = "/dns4/nowhere.invalid/tcp/7311";
        let mut transport = names::transport(MemoryTransport::default, names::Resolver::HostsOnly);
        let options = DialOpts {
            role: libp2p::core::Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        let Err(error) = transport
            .dial(address.parse().unwrap(), options)
            .unwrap()
            .await
        else {
            panic!("nowhere.invalid resolved");
        };
        let failure = ConnectFailure::of_dial(&dial_error(
            &format!("{address}/p2p/{}", libp2p::PeerId::random()),
            error,
        ));
        let Some(ConnectFailure::Unresolved {
            address: at,
            name,
            message,
        }) = failure
        else {
            panic!("{failure:?}");
        };
        assert_eq!((at.as_str(), name.as_str()), (address, "nowhere.invalid"));
        assert!(!message.is_empty());
    }

    /// A name server that refuses the query fails the lookup with a
    /// socket's "connection refused": that is the name's failure, not
    /// the peer's daemon being down.
    #[test]
    fn a_refused_lookup_is_not_a_refused_peer() {
        let refused = ResolveError::from(io::Error::from_raw_os_error(111));
        let failure = ConnectFailure::of_dial(&dial_error("/dns4/build.office/tcp/7311", refused));
        assert!(
            matches!(&failure, Some(ConnectFailure::Unresolved { name, .. }) if name == "build.office"),
            "{failure:?}"
        );
        // The same at an IP address is the peer's.
        let failure = ConnectFailure::of_dial(&dial_error(
            "/ip4/10.0.0.2/tcp/7311",
            io::Error::from_raw_os_error(111),
        ));
        assert!(
            matches!(failure, Some(ConnectFailure::Refused { .. })),
            "{failure:?}"
        );
    }

    #[test]
    fn only_a_quick_close_by_the_peer_is_a_refusal() {
        let closed = ConnectionError::IO(io::Error::from(io::ErrorKind::UnexpectedEof));
        assert_eq!(
            ConnectFailure::of_close(Some(&closed), Duration::from_millis(20)),
            Some(ConnectFailure::ClosedAfterHandshake)
        );
        assert_eq!(
            ConnectFailure::of_close(Some(&closed), Duration::from_secs(60)),
            None
        );
        assert_eq!(
            ConnectFailure::of_close(None, Duration::from_millis(20)),
            None
        );
    }
}
