//! The peer table as the event loop keeps it: what a failed dial and an
//! mDNS goodbye leave behind.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::swarm::{DialError, SwarmEvent};
use tokio::time::Instant;

use super::MAX_STRANGERS;
use crate::config::NodeConfig;
use crate::node::discovery::Found;
use crate::node::failure::ConnectFailure;
use crate::store::{Bodies, BodySink, Hints, Served, Summaries};

struct Empty;

impl Bodies for Empty {
    fn open(&self, _: &crate::ActionId) -> std::io::Result<Option<Served>> {
        Ok(None)
    }
    fn begin(
        &self,
        _: &crate::ActionId,
        _: &crate::OutputId,
        _: u64,
        _: &libp2p::PeerId,
    ) -> std::io::Result<Box<dyn BodySink>> {
        Err(std::io::Error::other("read-only"))
    }
}
impl Hints for Empty {}
impl Summaries for Empty {}

/// A stranger announces an allowlisted peer's ID at its own host,
/// where another peer answers: that address is dropped, and the
/// failure says it was only announced, so that `warren doctor` does
/// not advise correcting the static peers.
#[tokio::test]
async fn an_announced_address_that_answers_as_another_peer_is_dropped() {
    use libp2p::swarm::ConnectionId;

    let peer = PeerId::random();
    let config = NodeConfig::new(libp2p::identity::Keypair::generate_ed25519())
        .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
        .with_allowlist(std::collections::HashSet::from([peer]));
    let (_client, _events, mut event_loop) = crate::new(config, Arc::new(Empty)).unwrap();
    let spoofed: libp2p::Multiaddr = "/ip4/10.0.0.66/tcp/7311".parse().unwrap();
    let configured: libp2p::Multiaddr = "/ip4/10.0.0.2/tcp/7311".parse().unwrap();
    event_loop
        .peers
        .remember(configured.clone().with_p2p(peer).unwrap());
    event_loop
        .peers
        .state(peer)
        .dialing
        .announce(std::slice::from_ref(&spoofed), Instant::now());
    let stranger = PeerId::random();
    let answered_as = |address: &libp2p::Multiaddr| SwarmEvent::OutgoingConnectionError {
        connection_id: ConnectionId::new_unchecked(1),
        peer_id: Some(peer),
        error: DialError::WrongPeerId {
            obtained: stranger,
            address: address.clone().with_p2p(peer).unwrap(),
        },
    };
    event_loop.on_swarm_event(answered_as(&spoofed));
    let info = (event_loop.peer_infos().into_iter())
        .find(|info| info.peer == peer)
        .unwrap();
    assert_eq!(info.addresses, std::slice::from_ref(&configured));
    assert_eq!(
        info.last_failure.map(|(_, failure)| failure),
        Some(ConnectFailure::WrongPeerId {
            address: spoofed.to_string(),
            obtained: stranger.to_string(),
            announced: true,
        })
    );
    // A configured address that answers as another peer is the
    // configuration's fault.
    event_loop.on_swarm_event(answered_as(&configured));
    let info = (event_loop.peer_infos().into_iter())
        .find(|info| info.peer == peer)
        .unwrap();
    assert!(matches!(
        info.last_failure,
        Some((
            _,
            ConnectFailure::WrongPeerId {
                announced: false,
                ..
            }
        ))
    ));
}

/// SECURITY.md, "What others on the network can see, and do": goodbyes
/// for made-up peer IDs leave no state behind, so they cannot get past
/// the bound on strangers.
#[tokio::test]
async fn goodbyes_of_unknown_peers_leave_no_state() {
    let config = NodeConfig::new(libp2p::identity::Keypair::generate_ed25519())
        .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]);
    let (_client, _events, mut event_loop) = crate::new(config, Arc::new(Empty)).unwrap();
    for _ in 0..MAX_STRANGERS + 10 {
        event_loop.on_discovery(Found::Gone(PeerId::random()));
    }
    assert!(
        event_loop.peers.states.is_empty(),
        "{} peers",
        event_loop.peers.states.len()
    );
}

/// A static peer's name that does not resolve is retried with the
/// redial backoff of any lost peer, never in a tight loop, and each
/// failure is recorded as the name's. (The resolver has no name server:
/// the lookups fail without a query leaving the machine.)
#[tokio::test(start_paused = true)]
async fn a_name_that_does_not_resolve_is_redialed_with_backoff() {
    use futures::StreamExt as _;

    let peer = PeerId::random();
    let named: libp2p::Multiaddr = format!("/dns4/nowhere.invalid/tcp/7311/p2p/{peer}")
        .parse()
        .unwrap();
    let mut config = NodeConfig::new(libp2p::identity::Keypair::generate_ed25519())
        .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
        .with_allowlist(std::collections::HashSet::from([peer]))
        .with_static_peers(vec![named])
        .with_redial_backoff(Duration::from_secs(1), Duration::from_secs(8));
    config.resolver = crate::node::names::Resolver::HostsOnly;
    let (_client, _events, mut event_loop) = crate::new(config, Arc::new(Empty)).unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    let mut failed_dials = 0;
    loop {
        tokio::select! {
            event = event_loop.swarm.select_next_some() => {
                if matches!(event, SwarmEvent::OutgoingConnectionError { .. }) {
                    failed_dials += 1;
                }
                event_loop.on_swarm_event(event);
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => event_loop.redial_due(),
            () = tokio::time::sleep_until(end) => break,
        }
    }
    // Dials at 0, 1, 3, 7, 15 s, then every 8 s: 10 in a minute.
    assert!((8..=12).contains(&failed_dials), "{failed_dials} dials");
    let failure = (event_loop.peers.get(&peer))
        .and_then(|state| state.last_failure.clone())
        .map(|(_, failure)| failure);
    assert!(
        matches!(
            &failure,
            Some(ConnectFailure::Unresolved { name, address, .. })
                if name == "nowhere.invalid" && address == "/dns4/nowhere.invalid/tcp/7311"
        ),
        "{failure:?}"
    );
}

/// A static address without a peer ID has no peer state to hold its
/// failure: it is kept with the address, so that `warren peers` and
/// `warren doctor` can say that its name does not resolve.
#[tokio::test(start_paused = true)]
async fn a_nameless_static_address_keeps_why_it_failed() {
    use futures::StreamExt as _;

    let named: libp2p::Multiaddr = "/dns4/nowhere.invalid/tcp/7311".parse().unwrap();
    let mut config = NodeConfig::new(libp2p::identity::Keypair::generate_ed25519())
        .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
        .with_static_peers(vec![named.clone()]);
    config.resolver = crate::node::names::Resolver::HostsOnly;
    let (_client, _events, mut event_loop) = crate::new(config, Arc::new(Empty)).unwrap();
    event_loop.redial_due();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statics = event_loop.peers.static_addresses();
        assert_eq!(statics.len(), 1);
        if let Some((_, failure)) = &statics[0].last_failure {
            assert_eq!(statics[0].address, named);
            assert!(
                matches!(failure, ConnectFailure::Unresolved { name, .. } if name == "nowhere.invalid"),
                "{failure:?}"
            );
            break;
        }
        tokio::select! {
            event = event_loop.swarm.select_next_some() => event_loop.on_swarm_event(event),
            () = tokio::time::sleep_until(deadline) => panic!("no dial failed"),
        }
    }
}
