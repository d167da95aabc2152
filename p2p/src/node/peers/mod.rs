//! The peer table: who is allowed, what we know of each peer, and dialing.
//!
//! [`PeerTable`] holds the allowlist (the same set the `allow_block_list`
//! behaviour holds), a [`PeerState`] per peer we know of, and the static
//! addresses without a peer ID. A peer's state is in parts by concern:
//! where it is and when to dial it ([`dialing`]), its connections, what
//! passes over its link ([`link`]), and our copy of its summary
//! (`summaries`). Peers we know of that are neither allowlisted nor
//! connected (seen on mDNS, so users can find IDs to allow) are bounded
//! ([`MAX_STRANGERS`]), so spoofed announcements cannot grow memory.
//!
//! The `impl EventLoop` here is what takes the swarm besides: connections
//! coming and going, mDNS findings, allowlist changes, dialing, and
//! publishing whom a lookup would ask ([`crate::fetch::holders`]).

pub(crate) mod dialing;
pub(crate) mod link;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use libp2p::core::ConnectedPoint;
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use self::dialing::{AnonymousAddress, Dialing};
use self::link::Link;
use super::EventLoop;
use super::summaries::TheirSummary;
use crate::Error;
use crate::allowlist::Allowlist;
use crate::config::NodeConfig;
use crate::node::client::{Event, PeerInfo, StaticAddress};
use crate::node::discovery::Found;
use crate::node::failure::ConnectFailure;
use crate::node::names::split_peer_id;

/// A connection that lasted this long counts as good: its peer's redial
/// backoff starts over. Shorter ones (say, the remote drops us because we
/// are not on its allowlist) keep backing off.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);
/// Peers remembered that are neither allowlisted nor connected (seen on
/// mDNS, so users can find IDs to allow). Bounded, so that spoofed
/// announcements cannot grow memory.
const MAX_STRANGERS: usize = 256;

/// What we know of one peer; see the module docs.
#[derive(Debug)]
pub(crate) struct PeerState {
    /// Where it is and when to dial it.
    pub(crate) dialing: Dialing,
    pub(crate) connections: u32,
    pub(crate) connected_since: Option<Instant>,
    /// Last connection, answer, ping or announcement.
    pub(crate) last_seen: Option<SystemTime>,
    /// Why the last connection attempt failed, and when.
    pub(crate) last_failure: Option<(SystemTime, ConnectFailure)>,
    /// What passes over its link.
    pub(crate) link: Link,
    /// Our copy of its summary, and asking for it.
    pub(crate) summary: TheirSummary,
}

impl PeerState {
    fn new(backoff: Duration) -> Self {
        Self {
            dialing: Dialing::new(backoff),
            connections: 0,
            connected_since: None,
            last_seen: None,
            last_failure: None,
            link: Link::default(),
            summary: TheirSummary::default(),
        }
    }

    pub(crate) fn failed(&mut self, failure: ConnectFailure) {
        self.last_failure = Some((SystemTime::now(), failure));
    }

    pub(crate) fn seen(&mut self) {
        self.last_seen = Some(SystemTime::now());
    }
}

/// See the module docs.
pub(crate) struct PeerTable {
    allowlist: Allowlist,
    states: HashMap<PeerId, PeerState>,
    /// Static addresses without a peer ID, until a dial tells us whose they are.
    anonymous: Vec<AnonymousAddress>,
    redial_min: Duration,
    redial_max: Duration,
}

impl PeerTable {
    pub(crate) fn new(config: &NodeConfig) -> Self {
        Self {
            allowlist: config.allowlist.clone(),
            states: HashMap::new(),
            anonymous: Vec::new(),
            redial_min: config.redial_min,
            redial_max: config.redial_max,
        }
    }

    pub(crate) fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    pub(crate) fn get(&self, peer: &PeerId) -> Option<&PeerState> {
        self.states.get(peer)
    }

    /// The state of `peer`, new if we knew nothing of it.
    pub(crate) fn state(&mut self, peer: PeerId) -> &mut PeerState {
        let backoff = self.redial_min;
        self.states
            .entry(peer)
            .or_insert_with(|| PeerState::new(backoff))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&PeerId, &PeerState)> {
        self.states.iter()
    }

    /// Peers we know of that are neither allowlisted nor connected.
    fn strangers(&self) -> usize {
        (self.states.iter())
            .filter(|(peer, state)| !self.allowlist.contains(peer) && state.connections == 0)
            .count()
    }

    /// Records a static or dialed address for redials; whose it is, if it
    /// says.
    pub(crate) fn remember(&mut self, address: Multiaddr) -> Option<PeerId> {
        let (address, peer) = split_peer_id(address);
        match peer {
            Some(peer) => {
                self.state(peer).dialing.addresses.insert(address);
            }
            None => {
                if !self.anonymous.iter().any(|a| a.address == address) {
                    self.anonymous.push(AnonymousAddress {
                        address,
                        backoff: self.redial_min,
                        next_dial: Instant::now(),
                        last_failure: None,
                    });
                }
            }
        }
        peer
    }

    /// Records why a dial of a static address without a peer ID failed.
    pub(crate) fn anonymous_failed(&mut self, failure: ConnectFailure) {
        let Some(address) = failure.address().and_then(|a| a.parse::<Multiaddr>().ok()) else {
            return;
        };
        if let Some(entry) = self.anonymous.iter_mut().find(|a| a.address == address) {
            entry.last_failure = Some((SystemTime::now(), failure));
        }
    }

    /// The static addresses without a peer ID not reached yet.
    pub(crate) fn static_addresses(&self) -> Vec<StaticAddress> {
        (self.anonymous.iter())
            .map(|a| StaticAddress {
                address: a.address.clone(),
                last_failure: a.last_failure.clone(),
            })
            .collect()
    }

    /// Allowlisted peers that are not connected, have addresses, and whose
    /// backoff is over; and static addresses due.
    fn due(&self, now: Instant) -> (Vec<PeerId>, Vec<Multiaddr>) {
        let peers = (self.states.iter())
            .filter(|(peer, state)| {
                self.allowlist.contains(peer)
                    && state.connections == 0
                    && state.dialing.has_addresses()
                    && state.dialing.next_dial.is_none_or(|at| at <= now)
            })
            .map(|(peer, _)| *peer)
            .collect();
        let anonymous = (self.anonymous.iter())
            .filter(|a| a.next_dial <= now)
            .map(|a| a.address.clone())
            .collect();
        (peers, anonymous)
    }
}

impl EventLoop {
    pub(super) fn on_connected(
        &mut self,
        peer: PeerId,
        endpoint: ConnectedPoint,
        connections: u32,
    ) {
        let dialed = match &endpoint {
            ConnectedPoint::Dialer { address, .. } => Some(split_peer_id(address.clone()).0),
            ConnectedPoint::Listener { .. } => None,
        };
        if let Some(address) = dialed {
            // An address we dialed is known to work: keep it for redials,
            // and stop dialing it blindly if it was anonymous.
            self.peers.anonymous.retain(|a| a.address != address);
            self.peers.state(peer).dialing.addresses.insert(address);
        }
        let state = self.peers.state(peer);
        state.connections = connections;
        state.connected_since.get_or_insert_with(Instant::now);
        state.dialing.next_dial = None;
        state.seen();
        if connections == 1 {
            state.link.reconnected();
            tracing::debug!(%peer, "connected");
            self.emit(Event::PeerConnected(peer));
            if self.peers.allowlist.contains(&peer) {
                self.request_summary(peer);
            }
            self.publish_asked();
        }
    }

    pub(super) fn on_disconnected(&mut self, peer: PeerId, connections: u32) {
        let (min, max) = (self.peers.redial_min, self.peers.redial_max);
        let state = self.peers.state(peer);
        state.connections = connections;
        state.seen();
        if connections > 0 {
            return;
        }
        state.summary.disconnected();
        if state
            .connected_since
            .take()
            .is_some_and(|since| since.elapsed() >= STABLE_CONNECTION)
        {
            state.dialing.backoff = min;
        }
        state.dialing.back_off(Instant::now(), min, max);
        self.publish_asked();
        self.emit(Event::PeerDisconnected(peer));
    }

    pub(super) fn on_discovery(&mut self, found: Found) {
        match found {
            Found::Peer { peer, addresses } => {
                if !self.peers.states.contains_key(&peer)
                    && !self.peers.allowlist.contains(&peer)
                    && self.peers.strangers() >= MAX_STRANGERS
                {
                    tracing::debug!(%peer, "too many unknown peers on mDNS; ignoring one more");
                    return;
                }
                let now = Instant::now();
                let state = self.peers.state(peer);
                state.dialing.discovered = true;
                state.seen();
                let added = state.dialing.announce(&addresses, now);
                // Dialed at once only when the announcement is news and the
                // redial backoff allows: anyone can announce an allowlisted
                // peer's ID, as often as they like.
                let due = state.dialing.next_dial.is_none_or(|at| at <= now);
                if added > 0 {
                    self.emit(Event::PeerDiscovered { peer, addresses });
                }
                // Only an address hint: dialed only if allowlisted, and Noise
                // checks that whoever answers holds the peer ID's key.
                if added > 0
                    && due
                    && self.peers.allowlist.contains(&peer)
                    && !self.swarm.is_connected(&peer)
                    && let Err(error) = self.dial_peer(peer)
                {
                    tracing::debug!(%peer, "cannot dial a discovered peer: {error}");
                }
            }
            // Only a peer we keep state of: a goodbye is no reason to start.
            Found::Gone(peer) => {
                if let Some(state) = self.peers.states.get_mut(&peer) {
                    state.dialing.discovered = false;
                    state.dialing.announced.clear();
                }
            }
            Found::Nothing => {}
            Found::Stopped => {
                tracing::warn!("mDNS discovery stopped");
                self.discovery = None;
            }
        }
    }

    /// Tells the books and clients whom a lookup would ask now: after
    /// connections and the allowlist change (see [`crate::fetch::holders`]).
    fn publish_asked(&self) {
        let asked = (self.peers.states.iter())
            .filter(|(peer, _)| {
                self.peers.allowlist.pulls_from(peer) && self.swarm.is_connected(peer)
            })
            .map(|(peer, state)| (*peer, state.summary.shared.clone()))
            .collect();
        self.fetching.holders().set_asked(asked);
    }

    pub(super) fn set_allowlist(&mut self, peers: Allowlist) {
        let removed: Vec<PeerId> = (self.peers.allowlist.ids())
            .filter(|peer| !peers.contains(peer))
            .copied()
            .collect();
        let added: Vec<PeerId> = (peers.ids())
            .filter(|peer| !self.peers.allowlist.contains(peer))
            .copied()
            .collect();
        for peer in removed {
            tracing::debug!(%peer, "removed from the allowlist; disconnecting");
            // Closes its connections at once.
            self.swarm.behaviour_mut().allowed.disallow_peer(peer);
        }
        let min = self.peers.redial_min;
        for peer in added {
            self.swarm.behaviour_mut().allowed.allow_peer(peer);
            if let Some(state) = self.peers.states.get_mut(&peer) {
                state.dialing.next_dial = None;
                state.dialing.backoff = min;
            }
        }
        self.peers.allowlist = peers;
        self.publish_asked();
        // A static address may now lead to an allowed peer.
        let now = Instant::now();
        for anonymous in &mut self.peers.anonymous {
            anonymous.next_dial = now;
            anonymous.backoff = min;
        }
        self.redial_due();
    }

    pub(super) fn peer_infos(&self) -> Vec<PeerInfo> {
        let now = Instant::now();
        let mut known: BTreeSet<PeerId> = self.peers.states.keys().copied().collect();
        known.extend(self.peers.allowlist.ids().copied());
        known
            .into_iter()
            .map(|peer| {
                let state = self.peers.get(&peer);
                PeerInfo {
                    peer,
                    allowlisted: self.peers.allowlist.contains(&peer),
                    discovered: state.is_some_and(|s| s.dialing.discovered),
                    connected: self.swarm.is_connected(&peer),
                    last_seen: state.and_then(|s| s.last_seen),
                    // Proved and announced addresses overlap: each once.
                    addresses: state
                        .map(|s| s.dialing.known_addresses())
                        .unwrap_or_default(),
                    in_cooldown: self.fetching.in_cooldown(&peer, now),
                    summary_entries: state.and_then(|s| s.summary.shared.read().entries()),
                    compressed: state
                        .filter(|_| self.swarm.is_connected(&peer))
                        .and_then(|s| s.link.meter.settled(self.config.compression)),
                    counters: state.map(|s| s.link.counters()).unwrap_or_default(),
                    last_failure: state.and_then(|s| s.last_failure.clone()),
                }
            })
            .collect()
    }

    /// Records why a dial of `peer` failed. An address that answered as
    /// another peer is one no dial of this peer should try again if it
    /// was only announced: anyone on the LAN can announce any peer's ID at
    /// their own host, and the failure must say so (`warren doctor` would
    /// otherwise advise correcting a configuration that is right).
    pub(super) fn dial_failed(&mut self, peer: PeerId, mut failure: ConnectFailure) {
        let state = self.peers.state(peer);
        if let ConnectFailure::WrongPeerId {
            address, announced, ..
        } = &mut failure
            && let Ok(address) = address.parse::<Multiaddr>()
        {
            *announced = !state.dialing.addresses.contains(&address);
            state.dialing.announced.remove(&address);
        }
        state.failed(failure);
    }

    pub(super) fn dial_address(&mut self, address: Multiaddr) -> Result<(), Error> {
        if let (_, Some(peer)) = split_peer_id(address.clone())
            && !self.peers.allowlist.contains(&peer)
        {
            return Err(Error::NotAllowlisted { peer });
        }
        match self.peers.remember(address.clone()) {
            Some(peer) => {
                self.peers.state(peer).dialing.next_dial = None;
                self.dial_peer(peer)
            }
            None => {
                let (bare, _) = split_peer_id(address.clone());
                self.dial_anonymous(bare)
            }
        }
        .map_err(|source| Error::Dial {
            address,
            source: Box::new(source),
        })
    }

    /// Dials an allowlisted peer at its known addresses, unless connected or
    /// already dialing.
    fn dial_peer(&mut self, peer: PeerId) -> Result<(), DialError> {
        if !self.peers.allowlist.contains(&peer) {
            return Ok(());
        }
        let (min, max) = (self.peers.redial_min, self.peers.redial_max);
        let state = self.peers.state(peer);
        let now = Instant::now();
        let addresses = state.dialing.dial_addresses(now);
        if addresses.is_empty() {
            return Ok(());
        }
        state.dialing.back_off(now, min, max);
        let options = DialOpts::peer_id(peer).addresses(addresses).build();
        match self.swarm.dial(options) {
            Err(DialError::DialPeerConditionFalse(_)) => Ok(()),
            result => result,
        }
    }

    fn dial_anonymous(&mut self, address: Multiaddr) -> Result<(), DialError> {
        let (min, max) = (self.peers.redial_min, self.peers.redial_max);
        if let Some(entry) = (self.peers.anonymous.iter_mut()).find(|a| a.address == address) {
            entry.next_dial = Instant::now() + entry.backoff;
            entry.backoff = (entry.backoff * 2).clamp(min, max);
        }
        self.swarm.dial(address)
    }

    /// Dials every allowlisted peer that is not connected, and every
    /// static address, now, whatever their backoff (for `warren doctor`).
    pub(super) fn probe(&mut self) {
        let now = Instant::now();
        let table = &mut self.peers;
        for (peer, state) in &mut table.states {
            if table.allowlist.contains(peer) && state.connections == 0 {
                state.dialing.next_dial = None;
            }
        }
        for anonymous in &mut table.anonymous {
            anonymous.next_dial = now;
        }
        self.redial_due();
    }

    /// Redials allowlisted peers and static addresses whose backoff is over.
    pub(super) fn redial_due(&mut self) {
        let (peers, anonymous) = self.peers.due(Instant::now());
        for peer in peers {
            if let Err(error) = self.dial_peer(peer) {
                tracing::debug!(%peer, "cannot dial: {error}");
            }
        }
        for address in anonymous {
            if let Err(error) = self.dial_anonymous(address.clone()) {
                tracing::debug!(%address, "cannot dial: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
