//! Peer bookkeeping and dialing: who is allowed, where they are, and
//! when to redial them.
//!
//! Only allowlisted peer IDs are ever dialed. Static addresses without a
//! peer ID are dialed blindly (the allowlist closes the connection after
//! the handshake if the peer is not allowed) until a connection tells us
//! whose they are. Lost peers are redialed with exponential backoff, which
//! starts over only after a connection that lasted (a peer that drops us at
//! once, because we are not on its allowlist, is not hammered).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use libp2p::multiaddr::Protocol;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use super::EventLoop;
use crate::Error;
use crate::allowlist::Allowlist;
use crate::fetch::holders::SharedSummary;
use crate::fetch::link::LinkMeter;
use crate::node::client::{PeerCounters, PeerInfo};
use crate::node::discovery::{ANNOUNCED_TTL, MAX_ANNOUNCED};
use crate::node::failure::ConnectFailure;
use crate::protocol::metered::Traffic;

#[derive(Debug)]
pub(super) struct PeerState {
    /// Dialable addresses, without `/p2p`: configured, or proved by a
    /// connection we dialed.
    pub(super) addresses: BTreeSet<Multiaddr>,
    /// Addresses only announced on mDNS, with when they last were; at most
    /// `MAX_ANNOUNCED`, each kept for `ANNOUNCED_TTL` (see `discovery`).
    pub(super) announced: HashMap<Multiaddr, Instant>,
    pub(super) discovered: bool,
    pub(super) connections: u32,
    pub(super) connected_since: Option<Instant>,
    pub(super) last_seen: Option<SystemTime>,
    pub(super) counters: PeerCounters,
    pub(super) backoff: Duration,
    /// `None`: dial as soon as the peer is allowlisted and disconnected.
    pub(super) next_dial: Option<Instant>,
    /// Whether it answers batches (wire version 2); assumed until a batch
    /// answer says otherwise, and again after it reconnects.
    pub(super) batches: bool,
    /// What we know of its store; reset when it disconnects.
    pub(super) summary: SharedSummary,
    pub(super) summary_request: Option<OutboundRequestId>,
    /// When to ask for its summary again, after it had none to give.
    pub(super) summary_retry: Option<Instant>,
    /// Answers in a row that had no summary (see `summaries::retry_after`).
    pub(super) summary_misses: u32,
    /// How fast its raw bodies arrive; new with each connection.
    pub(super) link: Arc<LinkMeter>,
    /// Answer bytes on the link, both ways (counted by the codec).
    pub(super) traffic: Arc<Traffic>,
    /// Why the last connection attempt failed, and when.
    pub(super) last_failure: Option<(SystemTime, ConnectFailure)>,
}

impl PeerState {
    pub(super) fn new(backoff: Duration) -> Self {
        Self {
            addresses: BTreeSet::new(),
            announced: HashMap::new(),
            discovered: false,
            connections: 0,
            connected_since: None,
            last_seen: None,
            counters: PeerCounters::default(),
            backoff,
            next_dial: None,
            batches: true,
            summary: SharedSummary::default(),
            summary_request: None,
            summary_retry: None,
            summary_misses: 0,
            link: Arc::default(),
            traffic: Arc::default(),
            last_failure: None,
        }
    }

    pub(super) fn failed(&mut self, failure: ConnectFailure) {
        self.last_failure = Some((SystemTime::now(), failure));
    }

    /// Its counters, with the link's bytes as of now.
    fn counters(&self) -> PeerCounters {
        PeerCounters {
            wire_in: self.traffic.received.load(Ordering::Relaxed),
            wire_out: self.traffic.sent.load(Ordering::Relaxed),
            ..self.counters
        }
    }

    pub(super) fn seen(&mut self) {
        self.last_seen = Some(SystemTime::now());
    }

    /// Takes in announced addresses; how many are new.
    pub(super) fn announce(&mut self, addresses: &[Multiaddr], now: Instant) -> usize {
        let mut added = 0;
        for address in addresses {
            if self.addresses.contains(address) {
                continue;
            }
            if self.announced.insert(address.clone(), now).is_none() {
                added += 1;
            }
        }
        while self.announced.len() > MAX_ANNOUNCED {
            let oldest = (self.announced.iter())
                .min_by_key(|(_, at)| **at)
                .map(|(address, _)| address.clone());
            if let Some(oldest) = oldest {
                self.announced.remove(&oldest);
            }
        }
        added
    }

    /// Every address to dial now: the proved ones and the announced ones
    /// that have not expired (expired ones are dropped).
    pub(super) fn dial_addresses(&mut self, now: Instant) -> Vec<Multiaddr> {
        self.announced
            .retain(|_, at| now.saturating_duration_since(*at) < ANNOUNCED_TTL);
        (self.addresses.iter())
            .chain(self.announced.keys())
            .cloned()
            .collect()
    }

    pub(super) fn has_addresses(&self) -> bool {
        !self.addresses.is_empty() || !self.announced.is_empty()
    }
}

#[derive(Debug)]
pub(super) struct AnonymousAddress {
    pub(super) address: Multiaddr,
    pub(super) backoff: Duration,
    pub(super) next_dial: Instant,
}

impl EventLoop {
    pub(super) fn set_allowlist(&mut self, peers: Allowlist) {
        let removed: Vec<PeerId> = (self.allowlist.ids())
            .filter(|peer| !peers.contains(peer))
            .copied()
            .collect();
        let added: Vec<PeerId> = (peers.ids())
            .filter(|peer| !self.allowlist.contains(peer))
            .copied()
            .collect();
        for peer in removed {
            tracing::debug!(%peer, "removed from the allowlist; disconnecting");
            // Closes its connections at once.
            self.swarm.behaviour_mut().allowed.disallow_peer(peer);
        }
        let min = self.config.redial_min;
        for peer in added {
            self.swarm.behaviour_mut().allowed.allow_peer(peer);
            if let Some(state) = self.peers.get_mut(&peer) {
                state.next_dial = None;
                state.backoff = min;
            }
        }
        self.allowlist = peers;
        self.publish_asked();
        // A static address may now lead to an allowed peer.
        let now = Instant::now();
        for anonymous in &mut self.anonymous {
            anonymous.next_dial = now;
            anonymous.backoff = min;
        }
        self.redial_due();
    }

    pub(super) fn peer_infos(&self) -> Vec<PeerInfo> {
        let now = Instant::now();
        let mut known: BTreeSet<PeerId> = self.peers.keys().copied().collect();
        known.extend(self.allowlist.ids().copied());
        known
            .into_iter()
            .map(|peer| {
                let state = self.peers.get(&peer);
                PeerInfo {
                    peer,
                    allowlisted: self.allowlist.contains(&peer),
                    discovered: state.is_some_and(|s| s.discovered),
                    connected: self.swarm.is_connected(&peer),
                    last_seen: state.and_then(|s| s.last_seen),
                    // Proved and announced addresses overlap: each once.
                    addresses: state
                        .map(|s| {
                            (s.addresses.iter())
                                .chain(s.announced.keys())
                                .cloned()
                                .collect::<BTreeSet<_>>()
                                .into_iter()
                                .collect()
                        })
                        .unwrap_or_default(),
                    in_cooldown: self.books.in_cooldown(&peer, now),
                    summary_entries: state.and_then(|s| s.summary.read().entries()),
                    compressed: state
                        .filter(|_| self.swarm.is_connected(&peer))
                        .and_then(|s| s.link.settled(self.config.compression)),
                    counters: state.map(PeerState::counters).unwrap_or_default(),
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
        let state = self.peer(peer);
        if let ConnectFailure::WrongPeerId {
            address, announced, ..
        } = &mut failure
            && let Ok(address) = address.parse::<Multiaddr>()
        {
            *announced = !state.addresses.contains(&address);
            state.announced.remove(&address);
        }
        state.failed(failure);
    }

    /// Records a static or dialed address for redials.
    pub(super) fn remember(&mut self, address: Multiaddr) -> Option<PeerId> {
        let (address, peer) = split_peer_id(address);
        match peer {
            Some(peer) => {
                self.peer(peer).addresses.insert(address);
            }
            None => {
                if !self.anonymous.iter().any(|a| a.address == address) {
                    self.anonymous.push(AnonymousAddress {
                        address,
                        backoff: self.config.redial_min,
                        next_dial: Instant::now(),
                    });
                }
            }
        }
        peer
    }

    pub(super) fn dial_address(&mut self, address: Multiaddr) -> Result<(), Error> {
        if let (_, Some(peer)) = split_peer_id(address.clone())
            && !self.allowlist.contains(&peer)
        {
            return Err(Error::NotAllowlisted { peer });
        }
        match self.remember(address.clone()) {
            Some(peer) => {
                self.peer(peer).next_dial = None;
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
    pub(super) fn dial_peer(&mut self, peer: PeerId) -> Result<(), DialError> {
        if !self.allowlist.contains(&peer) {
            return Ok(());
        }
        let (min, max) = (self.config.redial_min, self.config.redial_max);
        let state = self.peer(peer);
        let addresses = state.dial_addresses(Instant::now());
        if addresses.is_empty() {
            return Ok(());
        }
        state.next_dial = Some(Instant::now() + state.backoff);
        state.backoff = (state.backoff * 2).clamp(min, max);
        let options = DialOpts::peer_id(peer).addresses(addresses).build();
        match self.swarm.dial(options) {
            Err(DialError::DialPeerConditionFalse(_)) => Ok(()),
            result => result,
        }
    }

    pub(super) fn dial_anonymous(&mut self, address: Multiaddr) -> Result<(), DialError> {
        let (min, max) = (self.config.redial_min, self.config.redial_max);
        if let Some(entry) = self.anonymous.iter_mut().find(|a| a.address == address) {
            entry.next_dial = Instant::now() + entry.backoff;
            entry.backoff = (entry.backoff * 2).clamp(min, max);
        }
        self.swarm.dial(address)
    }

    /// Dials every allowlisted peer that is not connected, and every
    /// static address, now, whatever their backoff (for `warren doctor`).
    pub(super) fn probe(&mut self) {
        let now = Instant::now();
        for (peer, state) in &mut self.peers {
            if self.allowlist.contains(peer) && state.connections == 0 {
                state.next_dial = None;
            }
        }
        for anonymous in &mut self.anonymous {
            anonymous.next_dial = now;
        }
        self.redial_due();
    }

    /// Redials allowlisted peers and static addresses whose backoff is over.
    pub(super) fn redial_due(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(peer, state)| {
                self.allowlist.contains(peer)
                    && state.connections == 0
                    && state.has_addresses()
                    && state.next_dial.is_none_or(|at| at <= now)
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if let Err(error) = self.dial_peer(peer) {
                tracing::debug!(%peer, "cannot dial: {error}");
            }
        }
        let due: Vec<Multiaddr> = self
            .anonymous
            .iter()
            .filter(|a| a.next_dial <= now)
            .map(|a| a.address.clone())
            .collect();
        for address in due {
            if let Err(error) = self.dial_anonymous(address.clone()) {
                tracing::debug!(%address, "cannot dial: {error}");
            }
        }
    }
}

/// Splits a trailing `/p2p/<peer id>` off an address.
pub(super) fn split_peer_id(mut address: Multiaddr) -> (Multiaddr, Option<PeerId>) {
    match address.iter().last() {
        Some(Protocol::P2p(peer)) => {
            address.pop();
            (address, Some(peer))
        }
        _ => (address, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Part 4, finding 2: announced addresses are capped per peer and
    /// expire; proved ones stay.
    #[test]
    fn announced_addresses_are_capped_and_expire() {
        let now = Instant::now();
        let mut state = PeerState::new(Duration::from_secs(1));
        let address = |n: u16| -> Multiaddr { format!("/ip4/10.0.0.1/tcp/{n}").parse().unwrap() };
        state.addresses.insert(address(1));
        let flood: Vec<Multiaddr> = (2..100).map(address).collect();
        assert_eq!(state.announce(&flood, now), 98);
        assert_eq!(state.announced.len(), MAX_ANNOUNCED);
        assert_eq!(state.announce(&[address(1)], now), 0, "proved already");
        assert_eq!(state.dial_addresses(now).len(), MAX_ANNOUNCED + 1);
        let later = now + ANNOUNCED_TTL;
        assert_eq!(state.dial_addresses(later), [address(1)]);
        assert!(state.has_addresses());
    }

    #[test]
    fn peer_ids_are_split_off_addresses() {
        let peer = PeerId::random();
        let address: Multiaddr = format!("/ip4/127.0.0.1/tcp/5/p2p/{peer}").parse().unwrap();
        let (bare, found) = split_peer_id(address);
        assert_eq!(bare, "/ip4/127.0.0.1/tcp/5".parse::<Multiaddr>().unwrap());
        assert_eq!(found, Some(peer));
        let (same, none) = split_peer_id(bare.clone());
        assert_eq!((same, none), (bare, None));
    }
}
