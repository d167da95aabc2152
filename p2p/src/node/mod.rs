//! The one task that owns the swarm: it dials, answers, fetches and keeps
//! the books.
//!
//! Shaped like rust-libp2p's `examples/file-sharing/src/network.rs`:
//! [`EventLoop::run`] `select!`s over batch reports, swarm events, client
//! commands, fetch timers, the redial tick and mDNS. Its only file I/O is
//! checking whether hinted entries are stored already. Requests are
//! answered and bodies streamed in the codec, on the connections' own
//! tasks (small lookups and reads in place, which is cheaper than a thread
//! hand-over; big bodies' file I/O and hashing on the blocking pool).
//!
//! The loop's work is split by job, each an `impl EventLoop` of its own:
//! `fetching` (asking peers, deadlines), `read_ahead` (fetching what peers
//! hint a build will want next), `serving` (answering them), `summaries`
//! and `peers` (bookkeeping, allowlist, dialing). Beside them: `behaviour`
//! (the libp2p stack), `admission` (the transport's gate: which incoming
//! connections may start a handshake, how many at once, for how long),
//! `interfaces` (this machine's subnets, read now and then), `codec` (the
//! request-response adapter), `discovery` (mDNS) and `client` (the
//! handle).
//!
//! # Trust
//!
//! The allowlist lives in the `allow_block_list` behaviour, which closes
//! connections to peers that are not on it, and is checked again here
//! before answering a request (the list may have changed since the
//! connection was accepted) and before dialing anyone whose peer ID we know.
//! A peer whose body fails verification, or that does not deliver a body
//! it announced in time, is counted, reported and left out of lookups for
//! the cooldown.

mod admission;
pub(crate) mod behaviour;
mod catalogs;
pub(crate) mod client;
pub(crate) mod codec;
pub(crate) mod discovery;
pub(crate) mod failure;
mod fetching;
pub(crate) mod interfaces;
mod peers;
mod serving;
mod summaries;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, InboundRequestId};
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{PeerId, Swarm, ping};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use self::discovery::{Discovery, Found};
use self::fetching::{Due, Sent, Timer};
use self::peers::{AnonymousAddress, PeerState, split_peer_id};
use self::serving::Serving;
use self::summaries::{PARK_CHECK, Parked};
use crate::allowlist::Allowlist;
use crate::config::NodeConfig;
use crate::fetch::books::{Books, Limits};
use crate::fetch::exchange::{Failure, Report};
use crate::node::behaviour::{Behaviour, BehaviourEvent};
use crate::node::client::{Command, Event};
use crate::node::codec::{Request, Response};
use crate::node::failure::ConnectFailure;
use crate::store::Store;

/// A connection that lasted this long counts as good: its peer's redial
/// backoff starts over. Shorter ones (say, the remote drops us because we
/// are not on its allowlist) keep backing off.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);
/// Peers remembered that are neither allowlisted nor connected (seen on
/// mDNS, so users can find IDs to allow). Bounded, so that spoofed
/// announcements cannot grow memory.
const MAX_STRANGERS: usize = 256;

/// Owns the swarm; see the module docs. Run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    store: Arc<dyn Store>,
    config: NodeConfig,
    discovery: Option<Discovery>,
    /// Same set as the `allow_block_list` behaviour holds.
    allowlist: Allowlist,
    peers: HashMap<PeerId, PeerState>,
    /// Static addresses without a peer ID, until a dial tells us whose they are.
    anonymous: Vec<AnonymousAddress>,
    /// Fetches in flight, read-ahead and cooldowns (see `fetching`).
    books: Books,
    sent: Sent,
    /// What the requesting side reports of requests still running.
    reports: mpsc::Receiver<Report>,
    timers: FuturesUnordered<Timer>,
    /// Caps concurrent serves; a permit lives until its response is sent.
    serve_permits: Arc<Semaphore>,
    serving: HashMap<InboundRequestId, Serving>,
    /// Peers' summary requests waiting for our store to change.
    parked: Vec<Parked>,
    /// Marked when our store's summary log grows, if the store tells.
    summary_updates: Option<tokio::sync::watch::Receiver<()>>,
    /// Catalog requests out, for clients (see `catalogs`).
    catalogs: catalogs::Asked,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        store: Arc<dyn Store>,
        config: NodeConfig,
        discovery: Option<Discovery>,
        reports: mpsc::Receiver<Report>,
    ) -> Self {
        let summary_updates = store.summary_updates();
        let mut event_loop = Self {
            swarm,
            commands,
            events,
            store,
            discovery,
            allowlist: config.allowlist.clone(),
            peers: HashMap::new(),
            anonymous: Vec::new(),
            books: Books::new(Limits::of(&config)),
            sent: Sent::new(),
            reports,
            timers: FuturesUnordered::new(),
            serve_permits: Arc::new(Semaphore::new(config.max_concurrent_serves)),
            serving: HashMap::new(),
            parked: Vec::new(),
            summary_updates,
            catalogs: catalogs::Asked::new(),
            config,
        };
        for address in event_loop.config.static_peers.clone() {
            event_loop.remember(address);
        }
        event_loop
    }

    /// Runs the node until every [`Client`](crate::Client) is dropped.
    pub async fn run(mut self) {
        let tick = self
            .config
            .redial_min
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut redial = tokio::time::interval(tick);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut park_check = tokio::time::interval(PARK_CHECK);
        park_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Reports first: a batch's last report must be handled
                // before the end of its request, which comes as a swarm
                // event queued after it.
                biased;
                Some(report) = self.reports.recv() => self.on_report(report),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some(due) = self.timers.next(), if !self.timers.is_empty() => match due {
                    Due::Fetch(deadline) => self.on_fetch_deadline(deadline),
                    Due::Summary(peer) => {
                        if self.allowlist.contains(&peer) && self.swarm.is_connected(&peer) {
                            self.request_summary(peer);
                        }
                    }
                },
                _ = redial.tick() => {
                    self.redial_due();
                    self.retry_summaries();
                    self.check_parked(); // Requests whose wait is over.
                }
                Some(()) = summaries::updated(self.summary_updates.as_mut()), if !self.parked.is_empty() => {
                    self.check_parked();
                }
                _ = park_check.tick(), if !self.parked.is_empty() && self.summary_updates.is_none() => {
                    self.check_parked();
                }
                found = discovery::next(self.discovery.as_mut()) => self.on_discovery(found),
            }
        }
        tracing::debug!("every client dropped; stopping the p2p node");
    }

    /// What clients read to answer a sure miss themselves.
    pub(crate) fn holders(&self) -> Arc<crate::fetch::holders::Holders> {
        self.books.holders()
    }

    /// Tells clients whom a lookup would ask now: after connections and
    /// the allowlist change (see [`crate::fetch::holders`]).
    fn publish_asked(&self) {
        let asked = self
            .peers
            .iter()
            .filter(|(peer, _)| self.allowlist.pulls_from(peer) && self.swarm.is_connected(peer))
            .map(|(peer, state)| (*peer, state.summary.clone()))
            .collect();
        self.books.holders().set_asked(asked);
    }

    fn emit(&self, event: Event) {
        if let Err(error) = self.events.try_send(event) {
            tracing::trace!("p2p event not delivered: {error}");
        }
    }

    fn peer(&mut self, peer: PeerId) -> &mut PeerState {
        let backoff = self.config.redial_min;
        self.peers
            .entry(peer)
            .or_insert_with(|| PeerState::new(backoff))
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Fetch { action, reply } => self.start_fetch(action, reply),
            Command::Replicate {
                peer,
                entries,
                reply,
            } => self.start_replication(peer, entries, reply),
            Command::Catalog {
                peer,
                request,
                reply,
            } => self.ask_catalog(peer, request, reply),
            Command::SetAllowlist { peers, reply } => {
                self.set_allowlist(peers);
                let _ = reply.send(());
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_infos());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { address, reply } => {
                let _ = reply.send(self.dial_address(address));
            }
            Command::Probe { reply } => {
                self.probe();
                let _ = reply.send(());
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Fetch(event)) => self.on_fetch_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Summary(event)) => self.on_summary_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Catalog(event)) => self.on_catalog_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            })) => match result {
                Ok(_) => self.peer(peer).seen(),
                // A peer without ping (another version, another client) is
                // still a peer.
                Err(ping::Failure::Unsupported) => {}
                Err(error) => {
                    tracing::debug!(%peer, "ping failed ({error}); closing the connection");
                    self.swarm.close_connection(connection);
                }
            },
            SwarmEvent::Behaviour(
                BehaviourEvent::Allowed(never) | BehaviourEvent::Limits(never),
            ) => match never {},
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "listening");
                if let Some(discovery) = &mut self.discovery
                    && let Err(error) = discovery.advertise(&address)
                {
                    tracing::warn!("cannot advertise on mDNS: {error}");
                }
                self.emit(Event::Listening(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => self.on_connected(peer_id, endpoint, num_established.get()),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                let lasted = (self.peers.get(&peer_id))
                    .and_then(|state| state.connected_since)
                    .map(|since| since.elapsed());
                if num_established == 0
                    && let Some(lasted) = lasted
                    && let Some(failure) = ConnectFailure::of_close(cause.as_ref(), lasted)
                {
                    self.peer(peer_id).failed(failure);
                }
                self.on_disconnected(peer_id, num_established);
            }
            SwarmEvent::IncomingConnectionError {
                peer_id,
                error,
                send_back_addr,
                ..
            } => {
                tracing::debug!(peer = ?peer_id, %send_back_addr, "incoming connection refused: {error}");
                if matches!(error, libp2p::swarm::ListenError::Denied { .. }) {
                    self.emit(Event::ConnectionDenied { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, "dial failed: {error}");
                if let Some(peer) = peer_id
                    && let Some(failure) = ConnectFailure::of_dial(&error)
                {
                    self.dial_failed(peer, failure);
                }
                if matches!(error, DialError::Denied { .. }) {
                    self.emit(Event::ConnectionDenied { peer: peer_id });
                }
            }
            _ => {}
        }
    }

    fn on_connected(&mut self, peer: PeerId, endpoint: ConnectedPoint, connections: u32) {
        let dialed = match &endpoint {
            ConnectedPoint::Dialer { address, .. } => Some(split_peer_id(address.clone()).0),
            ConnectedPoint::Listener { .. } => None,
        };
        if let Some(address) = dialed {
            // An address we dialed is known to work: keep it for redials,
            // and stop dialing it blindly if it was anonymous.
            self.anonymous.retain(|a| a.address != address);
            self.peer(peer).addresses.insert(address);
        }
        let state = self.peer(peer);
        state.connections = connections;
        state.connected_since.get_or_insert_with(Instant::now);
        state.next_dial = None;
        state.seen();
        if connections == 1 {
            state.batches = true; // It may have been upgraded.
            state.link = Arc::default(); // It may be on another link.
            tracing::debug!(%peer, "connected");
            self.emit(Event::PeerConnected(peer));
            if self.allowlist.contains(&peer) {
                self.request_summary(peer);
            }
            self.publish_asked();
        }
    }

    fn on_disconnected(&mut self, peer: PeerId, connections: u32) {
        let (min, max) = (self.config.redial_min, self.config.redial_max);
        let state = self.peer(peer);
        state.connections = connections;
        state.seen();
        if connections > 0 {
            return;
        }
        *state.summary.write() = crate::summary::PeerSummary::Unknown;
        state.summary_request = None;
        state.summary_retry = None;
        state.summary_misses = 0;
        if state
            .connected_since
            .take()
            .is_some_and(|since| since.elapsed() >= STABLE_CONNECTION)
        {
            state.backoff = min;
        }
        state.next_dial = Some(Instant::now() + state.backoff);
        state.backoff = (state.backoff * 2).clamp(min, max);
        self.publish_asked();
        self.emit(Event::PeerDisconnected(peer));
    }

    fn on_discovery(&mut self, found: Found) {
        match found {
            Found::Peer { peer, addresses } => {
                if !self.peers.contains_key(&peer)
                    && !self.allowlist.contains(&peer)
                    && self.strangers() >= MAX_STRANGERS
                {
                    tracing::debug!(%peer, "too many unknown peers on mDNS; ignoring one more");
                    return;
                }
                let now = Instant::now();
                let state = self.peer(peer);
                state.discovered = true;
                state.seen();
                let added = state.announce(&addresses, now);
                // Dialed at once only when the announcement is news and the
                // redial backoff allows: anyone can announce an allowlisted
                // peer's ID, as often as they like.
                let due = state.next_dial.is_none_or(|at| at <= now);
                if added > 0 {
                    self.emit(Event::PeerDiscovered { peer, addresses });
                }
                // Only an address hint: dialed only if allowlisted, and Noise
                // checks that whoever answers holds the peer ID's key.
                if added > 0
                    && due
                    && self.allowlist.contains(&peer)
                    && !self.swarm.is_connected(&peer)
                    && let Err(error) = self.dial_peer(peer)
                {
                    tracing::debug!(%peer, "cannot dial a discovered peer: {error}");
                }
            }
            // Only a peer we keep state of: a goodbye is no reason to start.
            Found::Gone(peer) => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.discovered = false;
                    state.announced.clear();
                }
            }
            Found::Nothing => {}
            Found::Stopped => {
                tracing::warn!("mDNS discovery stopped");
                self.discovery = None;
            }
        }
    }

    fn strangers(&self) -> usize {
        self.peers
            .iter()
            .filter(|(peer, state)| !self.allowlist.contains(peer) && state.connections == 0)
            .count()
    }

    fn on_fetch_event(&mut self, event: request_response::Event<Request, Response>) {
        use request_response::{Event as E, Message};
        match event {
            E::Message {
                peer,
                message:
                    Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => match request {
                Request::Incoming(header) => self.on_request(peer, request_id, header, channel),
                Request::Outgoing(_) => {
                    tracing::error!("the codec read one of our own requests from a peer");
                }
            },
            E::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match response {
                Response::Answer(answer) => self.on_answer(peer, request_id, answer),
                Response::Reply(_) => {
                    tracing::error!("the codec produced a reply on the requesting side");
                    self.on_request_failed(request_id, Failure::Ended);
                }
            },
            E::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, "fetch request failed: {error}");
                if matches!(
                    error,
                    request_response::OutboundFailure::UnsupportedProtocols
                ) {
                    self.peer(peer).failed(ConnectFailure::Protocol);
                }
                let why = match &error {
                    request_response::OutboundFailure::Io(e) => {
                        crate::fetch::receive::failure_of(e)
                    }
                    request_response::OutboundFailure::Timeout => Failure::TimedOut,
                    _ => Failure::Ended,
                };
                self.on_request_failed(request_id, why);
            }
            E::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, "serving a request failed: {error}");
                self.served(request_id);
            }
            E::ResponseSent { request_id, .. } => self.served(request_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        event_loop.remember(configured.clone().with_p2p(peer).unwrap());
        event_loop
            .peer(peer)
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

    /// Part 4, finding 10: an mDNS goodbye created peer state for any ID,
    /// past the bound on strangers.
    #[tokio::test]
    async fn goodbyes_of_unknown_peers_leave_no_state() {
        let config = NodeConfig::new(libp2p::identity::Keypair::generate_ed25519())
            .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]);
        let (_client, _events, mut event_loop) = crate::new(config, Arc::new(Empty)).unwrap();
        for _ in 0..MAX_STRANGERS + 10 {
            event_loop.on_discovery(Found::Gone(PeerId::random()));
        }
        assert!(
            event_loop.peers.is_empty(),
            "{} peers",
            event_loop.peers.len()
        );
    }
}
