//! Where a peer is, and when to dial it: its addresses (proved, and only
//! announced), and its redial backoff.
//!
//! Only allowlisted peer IDs are ever dialed. Static addresses without a
//! peer ID are dialed blindly ([`AnonymousAddress`]: the allowlist closes
//! the connection after the handshake if the peer is not allowed) until a
//! connection tells us whose they are. Lost peers are redialed with
//! exponential backoff, which starts over only after a connection that
//! lasted (a peer that drops us at once, because we are not on its
//! allowlist, is not hammered). Announced addresses are bounded per peer
//! and expire (see `node::discovery`).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use libp2p::Multiaddr;
use tokio::time::Instant;

use crate::node::discovery::{ANNOUNCED_TTL, MAX_ANNOUNCED};
use crate::node::failure::ConnectFailure;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Dialing {
    /// Dialable addresses, without `/p2p`: configured, or proved by a
    /// connection we dialed.
    pub(crate) addresses: BTreeSet<Multiaddr>,
    /// Addresses only announced on mDNS, with when they last were; at most
    /// `MAX_ANNOUNCED`, each kept for `ANNOUNCED_TTL` (see `discovery`).
    pub(crate) announced: HashMap<Multiaddr, Instant>,
    /// Seen in mDNS announcements (and not said goodbye since).
    pub(crate) discovered: bool,
    pub(crate) backoff: Duration,
    /// `None`: dial as soon as the peer is allowlisted and disconnected.
    pub(crate) next_dial: Option<Instant>,
}

impl Dialing {
    pub(crate) fn new(backoff: Duration) -> Self {
        Self {
            addresses: BTreeSet::new(),
            announced: HashMap::new(),
            discovered: false,
            backoff,
            next_dial: None,
        }
    }

    /// Takes in announced addresses; how many are new.
    pub(crate) fn announce(&mut self, addresses: &[Multiaddr], now: Instant) -> usize {
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
    pub(crate) fn dial_addresses(&mut self, now: Instant) -> Vec<Multiaddr> {
        self.announced
            .retain(|_, at| now.saturating_duration_since(*at) < ANNOUNCED_TTL);
        (self.addresses.iter())
            .chain(self.announced.keys())
            .cloned()
            .collect()
    }

    pub(crate) fn has_addresses(&self) -> bool {
        !self.addresses.is_empty() || !self.announced.is_empty()
    }

    /// Every address known, proved or announced, each once.
    pub(crate) fn known_addresses(&self) -> Vec<Multiaddr> {
        (self.addresses.iter())
            .chain(self.announced.keys())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Schedules the next dial after the backoff, and doubles it (within
    /// `min..=max`).
    pub(crate) fn back_off(&mut self, now: Instant, min: Duration, max: Duration) {
        self.next_dial = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).clamp(min, max);
    }
}

/// A static address without a peer ID, dialed blindly until a connection
/// says whose it is.
#[derive(Debug)]
pub(crate) struct AnonymousAddress {
    pub(crate) address: Multiaddr,
    pub(crate) backoff: Duration,
    pub(crate) next_dial: Instant,
    /// Why its last dial failed, and when (a name that does not resolve,
    /// say): nobody's peer state can hold it.
    pub(crate) last_failure: Option<(SystemTime, ConnectFailure)>,
}

#[cfg(test)]
mod tests {
    use libp2p::PeerId;

    use super::*;
    use crate::node::names::split_peer_id;

    /// SECURITY.md, "What others on the network can see, and do": a
    /// stranger announces a peer at a flood of addresses; at most 8 are
    /// kept, announced ones expire, and proved ones stay.
    #[test]
    fn announced_addresses_are_capped_and_expire() {
        let now = Instant::now();
        let mut state = Dialing::new(Duration::from_secs(1));
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
