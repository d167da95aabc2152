//! The one task that owns the swarm: it dials, answers, fetches and keeps
//! the books.
//!
//! Shaped like rust-libp2p's `examples/file-sharing/src/network.rs`:
//! [`EventLoop::run`] `select!`s over reports from the requesting side,
//! swarm events, client commands, timers, the redial tick and mDNS. Its
//! only file I/O is checking whether hinted entries are stored already.
//! Requests are answered and bodies streamed in the codec, on the
//! connections' own tasks (small lookups and reads in place, which is
//! cheaper than a thread hand-over; big bodies' file I/O and hashing on
//! the blocking pool).
//!
//! The loop's state is in parts, one per job, each a struct of its own
//! with its own methods, and an `impl EventLoop` beside it for what takes
//! the swarm or another part:
//!
//! - `peers`: the peer table (who is allowed, where each peer is and when
//!   to dial it, its link and counters) and dialing;
//! - `fetching`: the books ([`crate::fetch::books`]) and the requests they
//!   sent, carried out;
//! - `serving`: answering peers' requests, within a share of permits;
//! - `summaries`: keeping our copies of peers' summaries, and answering
//!   theirs of ours;
//! - `catalogs`: catalog requests, both ways.
//!
//! Beside them: `behaviour` (the libp2p stack), `admission` (the
//! transport's gate: which incoming connections may start a handshake,
//! how many at once, for how long), `interfaces` (this machine's subnets,
//! read now and then), `codec` (the request-response adapter), `discovery`
//! (mDNS), `names` (static peers given by host name), `failure` (why a
//! connection failed) and `client` (the handle).
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
pub(crate) mod names;
mod peers;
mod serving;
mod summaries;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{PeerId, Swarm, ping};
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::catalogs::Catalogs;
use self::discovery::Discovery;
use self::fetching::Fetching;
use self::peers::PeerTable;
use self::serving::Serving;
use self::summaries::{PARK_CHECK, SummarySync};
use crate::config::NodeConfig;
use crate::fetch::books::Deadline;
use crate::fetch::exchange::Report;
use crate::node::behaviour::{Behaviour, BehaviourEvent};
use crate::node::client::{Command, Event};
use crate::node::failure::ConnectFailure;
use crate::store::Store;

/// Owns the swarm; see the module docs. Run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    store: Arc<dyn Store>,
    config: NodeConfig,
    discovery: Option<Discovery>,
    /// Who is allowed, what we know of each peer, whom to dial.
    peers: PeerTable,
    /// The books, and their requests out.
    fetching: Fetching,
    /// Peers' requests being answered.
    serving: Serving,
    /// Peers' summaries, and their requests for ours.
    summaries: SummarySync,
    /// Catalog requests out, for clients.
    catalogs: Catalogs,
    /// Every job's timers, each saying whose it is.
    timers: FuturesUnordered<Timer>,
}

/// A timer of the event loop's.
#[derive(Debug, Clone, Copy)]
enum Due {
    /// One the books asked for.
    Fetch(Deadline),
    /// Time to ask this peer for the rest of its summary.
    Summary(PeerId),
}

type Timer = Pin<Box<dyn Future<Output = Due> + Send>>;

fn timer(at: Instant, due: Due) -> Timer {
    Box::pin(async move {
        tokio::time::sleep_until(at).await;
        due
    })
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
        let mut peers = PeerTable::new(&config);
        for address in &config.static_peers {
            peers.remember(address.clone());
        }
        Self {
            swarm,
            commands,
            events,
            discovery,
            peers,
            fetching: Fetching::new(&config, reports),
            serving: Serving::new(config.max_concurrent_serves),
            summaries: SummarySync::new(&*store),
            catalogs: Catalogs::default(),
            timers: FuturesUnordered::new(),
            store,
            config,
        }
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
                // event queued after it (and, should `recv` not see a
                // report yet, `Fetching` drains them when that end comes).
                biased;
                Some(report) = self.fetching.next_report() => self.on_report(report),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some(due) = self.timers.next(), if !self.timers.is_empty() => match due {
                    Due::Fetch(deadline) => self.on_fetch_deadline(deadline),
                    Due::Summary(peer) => {
                        if self.peers.allowlist().contains(&peer) && self.swarm.is_connected(&peer) {
                            self.request_summary(peer);
                        }
                    }
                },
                _ = redial.tick() => {
                    self.redial_due();
                    self.retry_summaries();
                    self.check_parked(); // Requests whose wait is over.
                }
                Some(()) = self.summaries.updated(), if self.summaries.has_parked() => {
                    self.check_parked();
                }
                _ = park_check.tick(), if self.summaries.has_parked() && !self.summaries.tells_updates() => {
                    self.check_parked();
                }
                found = discovery::next(self.discovery.as_mut()) => self.on_discovery(found),
            }
        }
        tracing::debug!("every client dropped; stopping the p2p node");
    }

    /// Who may hold what: clients read it to answer a sure miss
    /// themselves (see [`crate::fetch::holders`]).
    pub(crate) fn holders(&self) -> Arc<crate::fetch::holders::Holders> {
        self.fetching.holders()
    }

    fn emit(&self, event: Event) {
        if let Err(error) = self.events.try_send(event) {
            tracing::trace!("p2p event not delivered: {error}");
        }
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
            Command::StaticAddresses { reply } => {
                let _ = reply.send(self.peers.static_addresses());
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
                Ok(_) => self.peers.state(peer).seen(),
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
                    self.peers.state(peer_id).failed(failure);
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
                match (peer_id, ConnectFailure::of_dial(&error)) {
                    (Some(peer), Some(failure)) => self.dial_failed(peer, failure),
                    (None, Some(failure)) => self.peers.anonymous_failed(failure),
                    _ => {}
                }
                if matches!(error, DialError::Denied { .. }) {
                    self.emit(Event::ConnectionDenied { peer: peer_id });
                }
            }
            _ => {}
        }
    }
}
