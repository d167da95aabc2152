//! Replication in the books: a run of a peer's entries fetched in the
//! background, as batches to that peer (see `Client::replicate`).
//!
//! A replicated fetch is a fetch like any other (verified by the store's
//! sink, joined by a lookup for the same action), with four differences:
//! it asks only the peer whose catalog named it, it asks for no hints, its
//! body does not count as a build using peers (which would let read-ahead
//! run with no build), and it takes no body bigger than the size the
//! catalog listed. A big body comes back "found, not included" and is then
//! fetched alone, as a lookup's would be.
//!
//! The listed size bounds what replication moves: the requester plans its
//! budgets and its rate from the catalog, so a catalog that understated
//! sizes would bring more than planned. A body announced bigger than
//! listed is refused before a byte of it is read
//! ([`RejectReason::LargerThanListed`]), and counts against the peer like
//! a body that does not verify (cooldown). A batch asks for bodies inline
//! only up to the largest size it lists, so a peer whose catalog says
//! "1 byte" cannot push a bigger body down the stream unasked.
//!
//! With agreement on, nothing is replicated: a replicated body comes from
//! one peer, and agreement stores nothing on one peer's word, so every
//! body would be moved only to be thrown away.
//!
//! [`RejectReason::LargerThanListed`]: crate::fetch::exchange::RejectReason::LargerThanListed

use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::io::{Deadline, Peers, Phase};
use super::requests::Terms;
use super::{Books, Reply};
use crate::fetch::Miss;
use crate::fetch::read_ahead::BATCH;
use crate::ids::ActionId;

impl Books {
    /// Fetches `entries` (each with the size its catalog listed) from
    /// `peer`, answering each on its own sender: a miss at once for one
    /// stored already, with nobody to ask, or with agreement on.
    pub(crate) fn replicate(
        &mut self,
        peer: PeerId,
        entries: Vec<(ActionId, u64, Reply)>,
        now: Instant,
        peers: &impl Peers,
    ) {
        let unusable = if self.in_cooldown(&peer, now) {
            Some(Miss::Cooldown { peer })
        } else if !self.holders.asks(&peer) {
            Some(Miss::NoPeers)
        } else if self.limits.agreement {
            Some(Miss::NotFound)
        } else {
            None
        };
        let mut fetches = Vec::new();
        for (action, listed, reply) in entries {
            if let Some(fetch) = (self.active.get(&action)).and_then(|id| self.fetches.get_mut(id))
            {
                fetch.replies.push(reply);
                continue;
            }
            if let Some(miss) = unusable {
                let _ = reply.send(Err(miss));
                continue;
            }
            if peers.stored(&action) {
                let _ = reply.send(Err(Miss::NotFound));
                continue;
            }
            self.read_ahead.take(&action);
            let id = self.new_fetch(action, Some(reply));
            if let Some(fetch) = self.fetches.get_mut(&id) {
                fetch.background = true;
                // Only this peer is asked: should it not send the body,
                // the fetch ends as a miss rather than asking everyone.
                fetch.asked_everyone = true;
                fetch.listed = Some(listed);
            }
            fetches.push(id);
        }
        for batch in fetches.chunks(if peers.batches(&peer) { BATCH } else { 1 }) {
            let largest = (batch.iter())
                .filter_map(|id| self.fetches.get(id)?.listed)
                .max()
                .unwrap_or(0);
            let max_inline = (self.limits.inline_limit)
                .min(self.limits.max_body_size)
                .min(largest);
            let per_entry = self.limits.lookup_deadline + self.limits.longest_body(max_inline);
            let backstop = now + per_entry * batch.len() as u32 + Duration::from_secs(1);
            let terms = Terms {
                max_inline,
                hints: 0,
                header_deadline: now + self.limits.lookup_deadline,
                cancel: CancellationToken::new(),
            };
            if let Some(key) = self.send(batch.to_vec(), peer, Phase::ReadAhead, terms) {
                self.timer(backstop, Deadline::Request(key));
            }
        }
    }
}
