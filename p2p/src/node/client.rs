//! The handle the rest of warren holds: commands to the event loop, and what
//! comes back.
//!
//! A [`Client`] is cheap to clone; each call sends a [`Command`] on a bounded
//! channel and awaits its `oneshot` reply, as in rust-libp2p's file-sharing
//! example. The event loop stops once every client is dropped. If it has
//! already stopped, calls answer as if nothing were there (a miss, no
//! peers) instead of failing: peers are an optimisation, never a reason for a
//! build to fail.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::allowlist::Allowlist;
use crate::catalog::{Catalog, CatalogEntry, CatalogRequest};
use crate::fetch::books::Reply;
use crate::fetch::exchange::RejectReason;
use crate::fetch::holders::Holders;
use crate::fetch::{Fetched, Miss};
use crate::ids::ActionId;
use crate::node::failure::ConnectFailure;

/// What the node knows about one peer, for status displays.
/// Serializes to JSON with the peer ID and addresses as strings and
/// `last_seen` as `last_seen_unix_ms`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerInfo {
    #[serde(serialize_with = "as_string")]
    pub peer: PeerId,
    /// On the allowlist: may connect, be asked and be served.
    pub allowlisted: bool,
    /// Seen in mDNS announcements.
    pub discovered: bool,
    pub connected: bool,
    /// Last connection, answer, ping or announcement.
    #[serde(rename = "last_seen_unix_ms", serialize_with = "as_unix_ms")]
    pub last_seen: Option<SystemTime>,
    /// Dialable addresses (static, dialed or discovered), without `/p2p`.
    #[serde(serialize_with = "as_strings")]
    pub addresses: Vec<Multiaddr>,
    /// Left out of lookups after sending a body that did not verify.
    pub in_cooldown: bool,
    /// Entries its summary names (see [`crate::summary`]); `None` while we
    /// have no summary of it, and it is asked about every lookup.
    pub summary_entries: Option<u64>,
    /// Whether it is asked for compressed bodies: `None` while that is
    /// being measured (see [`Compression`](crate::Compression)), or while
    /// it is not connected.
    pub compressed: Option<bool>,
    pub counters: PeerCounters,
    /// Why the last connection attempt failed, and when (see
    /// [`ConnectFailure`]); kept after a later success.
    #[serde(serialize_with = "as_failure")]
    pub last_failure: Option<(SystemTime, ConnectFailure)>,
}

/// A static address without a peer ID that no connection has said whose
/// it is yet, for status displays: `warren peers` and `warren doctor`
/// show why it is not reached (a name that does not resolve, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAddress {
    pub address: Multiaddr,
    /// Why the last dial of it failed, and when.
    pub last_failure: Option<(SystemTime, ConnectFailure)>,
}

fn as_failure<S: serde::Serializer>(
    failure: &Option<(SystemTime, ConnectFailure)>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&failure.as_ref().map(|(_, failure)| failure), serializer)
}

/// Per-peer traffic counters since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerCounters {
    /// Bodies sent to the peer.
    pub hits_served: u64,
    /// Bodies fetched from the peer (verified and committed).
    pub hits_received: u64,
    /// Body bytes received from the peer, rejected ones included.
    pub bytes_in: u64,
    /// Body bytes sent to the peer.
    pub bytes_out: u64,
    /// Bytes of the peer's answers as they crossed the link: bodies
    /// compressed or not, and headers (whatever the outcome).
    pub wire_in: u64,
    /// Bytes of our answers to the peer as they crossed the link.
    pub wire_out: u64,
    /// Bodies from the peer that failed verification.
    pub rejected_bodies: u64,
    /// Of `hits_received`, bodies fetched ahead of any lookup, on the
    /// peer's read-ahead hints.
    pub read_ahead: u64,
}

fn as_string<S: serde::Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn as_strings<S: serde::Serializer>(
    values: &[Multiaddr],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(values.iter().map(ToString::to_string))
}

fn as_unix_ms<S: serde::Serializer>(
    time: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let millis = time.map(|time| {
        time.duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64
    });
    serde::Serialize::serialize(&millis, serializer)
}

/// Things that happened, for logs and status. Sent with `try_send`: if the
/// receiver is not read (or dropped), events are dropped, and the node
/// carries on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The node listens on a new address.
    Listening(Multiaddr),
    /// mDNS announced a peer at these addresses.
    PeerDiscovered {
        peer: PeerId,
        addresses: Vec<Multiaddr>,
    },
    /// The first connection to an allowlisted peer is up.
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// A connection was refused: the peer is not allowlisted, or a limit was
    /// reached. `peer` is `None` when the handshake did not get that far.
    /// Incoming connections that admission turns away before any handshake
    /// (by address, rate or handshake slots) are closed without an event:
    /// strangers can open them as fast as they like.
    ConnectionDenied { peer: Option<PeerId> },
    /// A peer sent a body that failed verification, or did not deliver one
    /// it announced in time ([`RejectReason::Stalled`]). Nothing was
    /// stored, and the peer is in cooldown.
    BodyRejected {
        peer: PeerId,
        action: ActionId,
        reason: RejectReason,
    },
    /// A body was sent to a peer.
    Served {
        peer: PeerId,
        action: ActionId,
        bytes: u64,
    },
}

/// What a [`Client`] asks of the event loop.
#[derive(Debug)]
pub(crate) enum Command {
    Fetch {
        action: ActionId,
        reply: Reply,
    },
    Replicate {
        peer: PeerId,
        entries: Vec<CatalogEntry>,
        reply: oneshot::Sender<Vec<Option<Fetched>>>,
    },
    Catalog {
        peer: PeerId,
        request: CatalogRequest,
        reply: oneshot::Sender<Result<Catalog, Error>>,
    },
    SetAllowlist {
        peers: Allowlist,
        reply: oneshot::Sender<()>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    StaticAddresses {
        reply: oneshot::Sender<Vec<StaticAddress>>,
    },
    Dial {
        address: Multiaddr,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Probe {
        reply: oneshot::Sender<()>,
    },
}

/// A handle on a node; see the module docs.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    /// Answers a lookup that no peer can, without the event loop.
    holders: Arc<Holders>,
    /// Longest a fetch can take (the event loop enforces tighter limits;
    /// this only guards against a stuck loop).
    backstop: Duration,
}

impl Client {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        local_peer_id: PeerId,
        holders: Arc<Holders>,
        backstop: Duration,
    ) -> Self {
        Self {
            commands,
            local_peer_id,
            holders,
            backstop,
        }
    }

    /// This node's peer ID.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Looks `action` up at the connected, allowlisted peers and, on a hit,
    /// streams the body into the store. `None` for a miss and for every kind
    /// of trouble; bounded by the node's lookup deadline and transfer
    /// timeouts (see [`NodeConfig`](crate::NodeConfig)). A lookup that no
    /// connected peer's summary names is a miss at once, without waiting
    /// for a busy event loop (see `fetch::holders`).
    pub async fn fetch(&self, action: ActionId) -> Option<Fetched> {
        self.lookup(action).await.ok()
    }

    /// [`fetch`](Self::fetch), saying why a miss was one: the reason
    /// decided where the lookup ended ([`Miss`]). A node that has stopped
    /// has no peers; one that does not answer within the longest a fetch
    /// may take missed its deadline.
    pub async fn lookup(&self, action: ActionId) -> Result<Fetched, Miss> {
        if let Some(miss) = self.holders.sure_miss(&action) {
            return Err(miss);
        }
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Fetch { action, reply })
            .await
            .map_err(|_| Miss::NoPeers)?;
        match tokio::time::timeout(self.backstop, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Miss::NoPeers),
            Err(_) => Err(Miss::Deadline),
        }
    }

    /// Asks `peer` for a piece of its catalog: what it built, in put order
    /// ([`crate::catalog`]). An error if it is not connected, or does not
    /// answer (an older warren, or one that does not serve us).
    pub async fn catalog(&self, peer: PeerId, request: CatalogRequest) -> Result<Catalog, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Catalog {
                peer,
                request,
                reply,
            })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Fetches `entries` of `peer`'s catalog in the background, for
    /// replication: in batches, with no read-ahead, and without making
    /// read-ahead think a build is using peers. Bodies are verified and
    /// stored like any other, and none bigger than the size its entry
    /// lists is taken (one is refused, and the peer cooled down). A
    /// lookup for one of them joins its fetch. One answer per entry, in
    /// order: `None` for one not fetched (already stored, gone, refused,
    /// or the peer did not answer). With agreement on, nothing is fetched
    /// (see `fetch::books::replicate`).
    pub async fn replicate(
        &self,
        peer: PeerId,
        entries: Vec<CatalogEntry>,
    ) -> Vec<Option<Fetched>> {
        let count = entries.len();
        let (reply, answer) = oneshot::channel();
        let sent = self
            .commands
            .send(Command::Replicate {
                peer,
                entries,
                reply,
            })
            .await;
        let answers = match sent {
            Ok(()) => tokio::time::timeout(self.backstop * 2, answer)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        answers.unwrap_or_else(|| vec![None; count])
    }

    /// Replaces the allowlist. Takes effect at once: connections to peers no
    /// longer on it are closed, and newly allowed peers with known addresses
    /// are dialed.
    pub async fn set_allowlist(&self, peers: impl Into<Allowlist>) {
        let peers = peers.into();
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::SetAllowlist { peers, reply })
            .await
            .is_ok()
        {
            let _ = answer.await;
        }
    }

    /// Every peer the node knows of: allowlisted, discovered or connected.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// The static addresses without a peer ID not reached yet, with why.
    pub async fn static_addresses(&self) -> Vec<StaticAddress> {
        self.ask(|reply| Command::StaticAddresses { reply }).await
    }

    /// The addresses the node listens on (empty until the first listener is up).
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Dials `address` now and keeps redialing it when lost, like a static
    /// peer. An address ending in `/p2p/<peer id>` of a peer that is not
    /// allowlisted is refused without dialing. Returns once the dial has
    /// started; [`Event::PeerConnected`] tells when it succeeded.
    pub async fn dial(&self, address: Multiaddr) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Dial { address, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Dials every allowlisted peer that is not connected, and every
    /// static address, at once, ignoring redial backoff. What comes of it
    /// shows in [`peers`](Self::peers): connected, or a
    /// [`PeerInfo::last_failure`] newer than the call.
    pub async fn probe(&self) {
        self.ask(|reply| Command::Probe { reply }).await
    }

    async fn ask<T: Default>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(command(reply)).await.is_err() {
            return T::default();
        }
        answer.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_info_serializes_to_plain_json() {
        let peer = PeerId::random();
        let info = PeerInfo {
            peer,
            allowlisted: true,
            discovered: false,
            connected: true,
            last_seen: Some(std::time::UNIX_EPOCH + Duration::from_millis(1500)),
            addresses: vec!["/ip4/10.0.0.2/tcp/4001".parse().unwrap()],
            in_cooldown: false,
            summary_entries: Some(3),
            compressed: None,
            counters: PeerCounters {
                hits_served: 2,
                ..PeerCounters::default()
            },
            last_failure: Some((SystemTime::now(), ConnectFailure::ClosedAfterHandshake)),
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["peer"], peer.to_string());
        assert_eq!(json["last_seen_unix_ms"], 1500);
        assert_eq!(json["addresses"][0], "/ip4/10.0.0.2/tcp/4001");
        assert_eq!(json["counters"]["hits_served"], 2);
        assert_eq!(json["summary_entries"], 3);
        assert_eq!(json["compressed"], serde_json::Value::Null);
        assert_eq!(json["last_failure"]["kind"], "closed_after_handshake");
    }
}
