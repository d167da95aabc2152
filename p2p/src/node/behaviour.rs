//! The libp2p stack of a node: transport, and the behaviours that guard and
//! use its connections.
//!
//! Transport: TCP, authenticated and encrypted with Noise (which proves the
//! remote's peer ID), multiplexed with Yamux, dialing names through
//! libp2p's `dns` transport ([`names`]), behind [`admission`]: before
//! any handshake, an incoming connection must come from a LAN address,
//! within its IP's handshake rate, and it gets one of a bounded number of
//! handshake slots and a short deadline. The behaviours, in the order the
//! swarm consults them:
//!
//! 1. `allowed`: the allowlist. A connection to or from a peer ID that is not
//!    on it is denied as soon as the handshake has told us who it is, before
//!    any protocol runs on it, and removing a peer closes its connections.
//! 2. `limits`: connection limits, so nobody can exhaust our sockets.
//! 3. `ping`: keeps a check on long-lived connections; a failed ping closes
//!    the connection and the event loop redials.
//! 4. `fetch`: the fetch protocol over [`FetchCodec`].
//! 5. `summary`: peers' summaries of their stores ([`crate::summary`]).
//! 6. `catalog`: what a peer built, for replication ([`crate::catalog`]).

use std::sync::Arc;

use libp2p::allow_block_list::{self, AllowedPeers};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, SwarmBuilder, connection_limits, noise, ping};
use libp2p::{request_response, tcp, yamux};

use crate::catalog::{self, CatalogCodec};
use crate::config::NodeConfig;
use crate::fetch::in_flight::InFlight;
use crate::fetch::receive::reports::Reports;
use crate::node::codec::FetchCodec;
use crate::node::{admission, names};
use crate::store::Store;
use crate::summary::{self, SummaryCodec};
use crate::{Error, PROTOCOL_NAME};

const MAX_STREAMS_PER_CONNECTION: usize = 256;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) allowed: allow_block_list::Behaviour<AllowedPeers>,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) fetch: request_response::Behaviour<FetchCodec>,
    pub(crate) summary: request_response::Behaviour<SummaryCodec>,
    pub(crate) catalog: request_response::Behaviour<CatalogCodec>,
}

/// Catalog streams per connection, both ways: a replicating peer asks one
/// at a time.
const CATALOG_STREAMS_PER_CONNECTION: usize = 2;
/// Longest a catalog exchange may take (it is answered from memory).
const CATALOG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Summary streams per connection, both ways.
const SUMMARY_STREAMS_PER_CONNECTION: usize = 4;

/// Builds the swarm (not yet listening or dialing). Needs a Tokio runtime.
pub(crate) fn build_swarm(
    config: &NodeConfig,
    store: Arc<dyn Store>,
    reports: Reports,
) -> Result<Swarm<Behaviour>, Error> {
    let mut allowed = allow_block_list::Behaviour::<AllowedPeers>::default();
    for peer in config.allowlist.ids() {
        allowed.allow_peer(*peer);
    }
    let mut codec = FetchCodec::new(
        store,
        config.max_body_size,
        config.transfer_rate,
        InFlight::new(config.max_in_flight),
        reports,
    );
    if config.agreement {
        codec = codec.agreeing();
    }
    // libp2p's request timeout bounds a whole exchange, body included, on
    // both sides; our own deadlines (lookup, transfer) are tighter and are
    // enforced by the codec and the event loop.
    // Streams per connection, both ways: a parallel `go build` may look up
    // many actions at once. Serving is capped separately (a request over
    // that cap is answered "not found" at once), so this only bounds
    // bookkeeping.
    let fetch_config = request_response::Config::default()
        .with_request_timeout(config.longest_fetch())
        .with_max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let fetch = request_response::Behaviour::with_codec(
        codec,
        [(
            StreamProtocol::new(PROTOCOL_NAME),
            request_response::ProtocolSupport::Full,
        )],
        fetch_config,
    );
    // A summary request is held open by its server for up to MAX_WAIT.
    // Each side sends one at a time; a few more streams cover a
    // reconnection, and bound what a peer that sends many can make us
    // hold (each answer is at most SERVE_CHUNK prefixes, 512 KiB).
    let summary = request_response::Behaviour::with_codec(
        SummaryCodec,
        [(
            StreamProtocol::new(summary::PROTOCOL_NAME),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(summary::MAX_WAIT + std::time::Duration::from_secs(10))
            .with_max_concurrent_streams(SUMMARY_STREAMS_PER_CONNECTION),
    );
    let catalog = request_response::Behaviour::with_codec(
        CatalogCodec,
        [(
            StreamProtocol::new(catalog::PROTOCOL_NAME),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(CATALOG_TIMEOUT)
            .with_max_concurrent_streams(CATALOG_STREAMS_PER_CONNECTION),
    );
    let behaviour = Behaviour {
        allowed,
        limits: connection_limits::Behaviour::new(config.connection_limits.clone()),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(config.ping_interval)),
        fetch,
        summary,
        catalog,
    };
    let idle = config.idle_connection_timeout;
    let noise = noise::Config::new(&config.keypair).map_err(Error::Transport)?;
    let anywhere = config.inbound_from_anywhere;
    let resolver = config.resolver;
    // What `SwarmBuilder::with_tcp` and `with_dns` build, behind admission.
    let Ok(builder) = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_other_transport(|_| {
            use libp2p::Transport as _;
            let tcp = || {
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise.clone())
                    .multiplex(yamux::Config::default())
            };
            admission::Admission::new(names::transport(tcp, resolver), anywhere)
        });
    let swarm = builder
        .with_behaviour(|_| behaviour)
        .expect("a ready-made behaviour cannot fail")
        .with_swarm_config(|swarm| {
            swarm
                .with_idle_connection_timeout(idle)
                // A fetch proposes exactly one protocol, so the requester
                // can send its request with the protocol proposal instead of
                // waiting a round trip for the server to confirm it (a
                // server without the protocol resets the stream either way).
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}
