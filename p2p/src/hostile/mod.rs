//! Hostile peers, for tests and for the end-to-end fixtures in
//! `examples/`; built only with the `hostile` feature, and not an API.
//!
//! Each is built from libp2p directly and the crate's wire format, not
//! from a node, because a node refuses to misbehave: it will not serve a
//! body that does not match its OutputID, answer a summary request it has
//! no news for, or leave an answer unread. None has an allowlist of its
//! own: it accepts every connection.
//!
//! - [`fetch`]: a peer that answers fetches wrongly ([`Mode`]): lies,
//!   stalls, drips, floods read-ahead, tampers with a store's bodies, or
//!   speaks wire version 1;
//! - [`summary`]: the summary spammer and the summary bomber;
//! - [`floods`]: the slow reader (holds serve permits) and the handshake
//!   holder (holds handshake slots);
//! - [`mdns`]: the address spoofer's forged mDNS answers.
//!
//! Tests run them on loopback; the examples that wrap them run only in
//! network namespaces of a test's own.

pub mod fetch;
pub mod floods;
pub mod mdns;
pub mod summary;

use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm, SwarmBuilder, noise, tcp, yamux};

pub use self::fetch::{Entries, Hostile, Mode, hostile, hostile_at};
pub use self::floods::{IdleHolder, SlowReader, slow_reader, socket_address};
pub use self::summary::{SummaryBomber, SummarySpammer, summary_bomber, summary_spammer};

/// How long a hostile peer waits to listen, or to connect.
const WAIT: Duration = Duration::from_secs(10);

/// Why a hostile peer could not start.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Any port on loopback.
fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")
}

/// A swarm over TCP, Noise and Yamux with one behaviour, as a hostile peer
/// needs (no allowlist, connections kept for a minute at least).
fn swarm<B: NetworkBehaviour>(keypair: &Keypair, behaviour: B) -> Swarm<B> {
    SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("TCP with Noise from a valid keypair")
        .with_behaviour(|_| behaviour)
        .expect("a ready-made behaviour cannot fail")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build()
}

/// Listens on `address`; the address it got.
async fn listen<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    address: Multiaddr,
) -> Result<Multiaddr, Error> {
    swarm.listen_on(address)?;
    loop {
        let event = tokio::time::timeout(WAIT, swarm.select_next_some()).await?;
        if let SwarmEvent::NewListenAddr { address, .. } = event {
            return Ok(address);
        }
    }
}
