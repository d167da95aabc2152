//! warren's networking crate: coworkers' nodes sharing Go build caches on
//! one LAN, peer to peer.
//!
//! A node serves entries of its local store to allowlisted peers and fetches
//! entries it lacks from them, verifying every body (size and SHA-256
//! against the OutputID) before it lands. warren runs one node per user in
//! its daemon, behind the remote tier consulted after each local miss
//! (`warren::helper::tiered::RemoteTier`).
//!
//! # Layout
//!
//! - [`ids`]: [`ActionId`] and [`OutputId`], used end to end (warren uses
//!   them too);
//! - [`config`]: [`NodeConfig`] and [`MdnsConfig`], every limit with its
//!   default;
//! - `store`: the [`Store`] trait warren implements over its disk store;
//! - `protocol`: the fetch protocol as bytes: [`wire`] (versioned JSON
//!   headers, batches, hints), body pieces, compressed chunks, metering;
//! - `fetch`: the requesting side of an exchange (reading answers and
//!   bodies into the store, verified) and the link meter that decides on
//!   compression ([`Compression`]);
//! - `serve`: the answering side (what the store holds for an action,
//!   small bodies verified before they are sent, big ones streamed);
//! - [`summary`]: peers' summaries of their stores, so misses they cannot
//!   answer cost no round trip;
//! - `node`: [`EventLoop`], the one task that owns the swarm, its state in
//!   a part per job (the peer table, fetching, serving, summaries,
//!   catalogs), the libp2p behaviour and codec, mDNS discovery, and
//!   [`Client`], the cloneable handle, with the [`Event`]s it sees;
//! - `hostile` (with the `hostile` feature, which only the crate's tests
//!   and examples turn on): peers that misbehave, to test against.
//!
//! # Usage
//!
//! As in rust-libp2p's file-sharing example, [`new`] returns a client, a
//! stream of events and the event loop, which the caller spawns:
//!
//! ```no_run
//! # async fn example(store: std::sync::Arc<dyn warren_p2p::Store>) -> Result<(), warren_p2p::Error> {
//! use warren_p2p::{NodeConfig, identity::Keypair};
//!
//! let config = NodeConfig::new(Keypair::generate_ed25519())
//!     .with_listen(vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()]);
//! let (client, mut events, event_loop) = warren_p2p::new(config, store)?;
//! tokio::spawn(event_loop.run());
//! if let Some(fetched) = client.fetch(warren_p2p::ActionId::from_bytes([0; 32])).await {
//!     // The body is in the store, verified.
//! }
//! # Ok(()) }
//! ```
//!
//! # Trust
//!
//! Only peers on the allowlist can connect, are asked or are served; Noise
//! proves each peer's ID. mDNS is only a hint of where a peer might be.
//! Whatever an allowlisted peer sends is still verified, by the store's
//! sink ([`BodySink::commit`]): a body that does not hash to its OutputID
//! (or, compressed, does not decode to exactly its size) is discarded,
//! counted against the peer, and puts it in cooldown. Bad data
//! from peers is a miss, never a panic.

mod allowlist;
pub mod catalog;
pub mod config;
mod fetch;
#[cfg(feature = "fuzz")]
#[doc(hidden)]
pub mod fuzz;
#[cfg(feature = "hostile")]
#[doc(hidden)]
pub mod hostile;
pub mod ids;
mod node;
mod protocol;
mod serve;
mod store;
pub mod summary;

pub use crate::protocol::wire;

use std::sync::Arc;

pub use libp2p::{Multiaddr, PeerId, identity, multiaddr};
use tokio::sync::mpsc;

pub use crate::allowlist::{Allowlist, Role};
pub use crate::config::{Compression, MdnsConfig, NodeConfig};
pub use crate::fetch::exchange::RejectReason;
pub use crate::fetch::{Fetched, Miss};
pub use crate::ids::{ActionId, OutputId};
pub use crate::node::EventLoop;
pub use crate::node::client::{Client, Event, PeerCounters, PeerInfo, StaticAddress};
pub use crate::node::failure::ConnectFailure;
pub use crate::store::{Bodies, BodySink, CommitError, Hint, Hints, Served, Store, Summaries};
pub use crate::summary::SummaryChunk;

/// The libp2p protocol name of fetches; versioned so that a later protocol
/// can be offered alongside without breaking old peers (as summaries are,
/// under [`summary::PROTOCOL_NAME`]).
pub const PROTOCOL_NAME: &str = "/warren/fetch/1";

/// Commands waiting for the event loop.
const COMMAND_QUEUE: usize = 64;
/// What the requesting side reports of requests still running, not yet
/// handled; a codec with a report to make waits for room.
const REPORT_QUEUE: usize = 256;

/// Why a node could not be set up, or a dial not started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the TCP/Noise transport")]
    Transport(#[source] libp2p::noise::Error),
    #[error("cannot listen on {address}")]
    Listen {
        address: Multiaddr,
        #[source]
        source: Box<libp2p::TransportError<std::io::Error>>,
    },
    #[error("cannot start mDNS discovery")]
    Mdns(#[source] mdns_sd::Error),
    #[error("peer {peer} is not on the allowlist; not dialing it")]
    NotAllowlisted { peer: PeerId },
    #[error("cannot dial {address}")]
    Dial {
        address: Multiaddr,
        #[source]
        source: Box<libp2p::swarm::DialError>,
    },
    #[error("the p2p event loop has stopped")]
    Stopped,
    #[error("peer {peer} is not connected")]
    NotConnected { peer: PeerId },
    #[error("peer {peer} did not give its catalog: {reason}")]
    Catalog { peer: PeerId, reason: String },
}

/// Sets up a node: builds the swarm, starts listening (and mDNS, if
/// configured), and returns a client, the node's events and its event loop.
/// Nothing happens on the network until the event loop runs, and it runs
/// until every client is dropped. Must be called within a Tokio runtime.
pub fn new(
    config: NodeConfig,
    store: Arc<dyn Store>,
) -> Result<(Client, mpsc::Receiver<Event>, EventLoop), Error> {
    let local_peer_id = config.peer_id();
    let (report_sender, reports) = mpsc::channel(REPORT_QUEUE);
    let reporter = fetch::receive::reports::Reports::new(report_sender);
    let mut swarm = node::behaviour::build_swarm(&config, store.clone(), reporter)?;
    for address in &config.listen {
        swarm
            .listen_on(address.clone())
            .map_err(|source| Error::Listen {
                address: address.clone(),
                source: Box::new(source),
            })?;
    }
    let discovery = match &config.mdns {
        Some(mdns) => Some(
            node::discovery::Discovery::start(mdns.clone(), local_peer_id).map_err(Error::Mdns)?,
        ),
        None => None,
    };
    let (commands, command_receiver) = mpsc::channel(COMMAND_QUEUE);
    let (events, event_receiver) = mpsc::channel(config.event_capacity);
    let backstop = config.longest_fetch() + std::time::Duration::from_secs(1);
    let event_loop = node::EventLoop::new(
        swarm,
        command_receiver,
        events,
        store,
        config,
        discovery,
        reports,
    );
    let client = Client::new(commands, local_peer_id, event_loop.holders(), backstop);
    Ok((client, event_receiver, event_loop))
}

#[cfg(test)]
mod tests {
    #[test]
    fn protocol_name_is_versioned() {
        assert!(super::PROTOCOL_NAME.starts_with("/warren/"));
        assert!(super::PROTOCOL_NAME.ends_with("/1"));
    }
}
