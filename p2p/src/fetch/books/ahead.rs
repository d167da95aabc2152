//! Read-ahead in the books: queueing a peer's hints and starting their
//! fetches in batches (see [`crate::fetch::read_ahead`]).

use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Books;
use super::io::{Deadline, Peers, Phase};
use super::requests::Terms;
use crate::fetch::exchange::FetchId;
use crate::fetch::read_ahead::{HINTS, batch_size};
use crate::ids::ActionId;
use crate::store::Hint;

impl Books {
    /// Queues a peer's hints and starts what read-ahead allows. Linked
    /// executables bigger than the limit for them are passed over: a
    /// lookup fetches one if a build asks for it.
    pub(super) fn offer_hints(
        &mut self,
        peer: PeerId,
        next: Vec<Hint>,
        now: Instant,
        peers: &impl Peers,
    ) {
        if self.limits.read_ahead == 0 {
            return;
        }
        let max = self.limits.read_ahead_executables_max;
        for hint in next {
            if hint.executable.is_some_and(|size| size > max) {
                tracing::trace!(
                    action = hint.action.to_hex(),
                    "not reading ahead a big executable"
                );
                continue;
            }
            if !self.active.contains_key(&hint.action) {
                self.read_ahead.offer(peer, hint.action);
            }
        }
        self.pump_read_ahead(now, peers);
    }

    /// Puts `actions` back at the front of the queue, to be fetched again:
    /// a version-1 peer answered only the first action of their batch.
    pub(super) fn requeue(
        &mut self,
        peer: PeerId,
        actions: Vec<ActionId>,
        now: Instant,
        peers: &impl Peers,
    ) {
        self.read_ahead.requeue(peer, actions);
        self.pump_read_ahead(now, peers);
    }

    /// Starts queued read-ahead fetches, in batches, up to the configured
    /// number of entries in flight, while a build is using peers and
    /// within the budget (see [`crate::fetch::budget`]): the hints of a
    /// peer whose budget is spent are dropped.
    pub(super) fn pump_read_ahead(&mut self, now: Instant, peers: &impl Peers) {
        while let Some(want) = batch_size(
            self.read_ahead.in_flight,
            self.limits.read_ahead,
            self.read_ahead.queued(),
        ) {
            let Some((next_peer, _)) = self.read_ahead.peek() else {
                return;
            };
            let body_limit = self
                .limits
                .read_ahead_max_body
                .min(self.limits.max_body_size);
            let Some(max_inline) =
                self.budget
                    .max_inline(&next_peer, self.limits.read_ahead, body_limit, now)
            else {
                if self.budget.is_live(now) {
                    tracing::debug!(peer = %next_peer, "read-ahead budget spent; dropping its hints");
                    self.read_ahead.drop_peer(&next_peer);
                    continue;
                }
                return; // No build is using peers: hints wait.
            };
            let Some((peer, fetches)) = self.next_batch(want, now, peers) else {
                return;
            };
            self.read_ahead.in_flight += fetches.len();
            for id in &fetches {
                if let Some(fetch) = self.fetches.get_mut(id) {
                    fetch.reserved = Some((peer, max_inline));
                    self.budget.reserve(peer, max_inline);
                }
            }
            // The codec bounds each entry; this only catches a request
            // that never got as far as the codec.
            let per_entry = self.limits.lookup_deadline + self.limits.longest_body(max_inline);
            let backstop = now + per_entry * fetches.len() as u32 + Duration::from_secs(1);
            let terms = Terms {
                max_inline,
                hints: HINTS,
                header_deadline: now + self.limits.lookup_deadline,
                cancel: CancellationToken::new(),
            };
            if let Some(key) = self.send(fetches, peer, Phase::ReadAhead, terms) {
                self.timer(backstop, Deadline::Request(key));
            }
        }
    }

    /// Books fetches for the next run of queued actions of one peer: those
    /// not fetched or stored already, at most `room`, one only if the peer
    /// does not answer batches.
    fn next_batch(
        &mut self,
        room: usize,
        now: Instant,
        peers: &impl Peers,
    ) -> Option<(PeerId, Vec<FetchId>)> {
        let mut peer_of_batch = None;
        let mut fetches = Vec::new();
        while fetches.len() < room {
            let Some((peer, action)) = self.read_ahead.peek() else {
                break;
            };
            if peer_of_batch.is_some_and(|batch_peer| batch_peer != peer) {
                break;
            }
            self.read_ahead.pop();
            if self.active.contains_key(&action)
                || !self.eligible(&peer, now)
                || peers.stored(&action)
            {
                continue;
            }
            peer_of_batch = Some(peer);
            fetches.push(self.new_fetch(action, None));
            if !peers.batches(&peer) {
                break;
            }
        }
        Some((peer_of_batch?, fetches))
    }
}
