//! Read-ahead: fetching what a build will ask for next, before it asks.
//!
//! `go` asks for one entry at a time per worker and waits for each, so a
//! build served by a peer waited on a LAN round trip per entry: about 1,100
//! of them for `go build std`. But a build asks for entries in much the
//! order in which the peer's own build stored them. So every answer from a
//! peer carries hints, the actions it stored right after the one asked for
//! ([`Hints::following`](crate::Hints::following)), and the node fetches
//! those it lacks in the background, a few at a time, from that peer. The
//! helper then finds them in the local store; each fetched entry brings the
//! next hints, so read-ahead follows the peer's build as far as it goes
//! (the server ends hints at a pause in its puts: the end of a build).
//!
//! This module is the queue of hinted actions; [`super::books`] starts
//! their fetches, in batches of up to [`BATCH`] per request. A lookup for an
//! action being read ahead joins that fetch instead of asking again; one
//! still queued is fetched at once as a normal lookup. Bodies fetched ahead
//! go through the same verified path as any other. What is queued or
//! remembered is bounded, and a hinted body bigger than the read-ahead
//! limit is left for a lookup to fetch.

use std::collections::{HashSet, VecDeque};

use libp2p::PeerId;

use crate::ids::ActionId;
use crate::protocol::wire::MAX_HINTS;

/// Hints asked for with every lookup and batch: as many as a server sends.
pub(crate) const HINTS: u32 = MAX_HINTS;
/// Most entries one read-ahead request asks for.
pub(crate) const BATCH: usize = 16;
/// Most actions waiting to be read ahead; further hints are dropped.
const MAX_QUEUED: usize = 512;
/// Actions remembered as read ahead already (fetched or not), so hints that
/// repeat them are skipped; forgotten all at once when it grows past this.
const MAX_SEEN: usize = 16_384;

/// The read-ahead queue and how many of its fetches are in flight.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    queue: VecDeque<(PeerId, ActionId)>,
    queued: HashSet<ActionId>,
    seen: HashSet<ActionId>,
    pub(crate) in_flight: usize,
}

impl ReadAhead {
    /// Removes `action` from the queue: a lookup is about to fetch it.
    pub(crate) fn take(&mut self, action: &ActionId) {
        if self.queued.remove(action) {
            self.queue.retain(|(_, queued)| queued != action);
        }
    }

    /// Queues `action`, hinted by `peer`, unless it is queued or was read
    /// ahead already, or the queue is full.
    pub(crate) fn offer(&mut self, peer: PeerId, action: ActionId) {
        if self.queue.len() >= MAX_QUEUED
            || self.seen.contains(&action)
            || !self.queued.insert(action)
        {
            return;
        }
        self.queue.push_back((peer, action));
    }

    /// Puts `actions`, read ahead already, back at the front, in order.
    pub(crate) fn requeue(&mut self, peer: PeerId, actions: Vec<ActionId>) {
        for action in actions.into_iter().rev() {
            self.seen.remove(&action);
            if self.queued.insert(action) {
                self.queue.push_front((peer, action));
            }
        }
    }

    /// Forgets every action queued from `peer`.
    pub(crate) fn drop_peer(&mut self, peer: &PeerId) {
        let queued = &mut self.queued;
        self.queue.retain(|(from, action)| {
            let keep = from != peer;
            if !keep {
                queued.remove(action);
            }
            keep
        });
    }

    pub(crate) fn peek(&self) -> Option<(PeerId, ActionId)> {
        self.queue.front().copied()
    }

    pub(crate) fn pop(&mut self) -> Option<(PeerId, ActionId)> {
        let (peer, action) = self.queue.pop_front()?;
        self.queued.remove(&action);
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        self.seen.insert(action);
        Some((peer, action))
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// How many queued actions to send as the next batch, if any now: a whole
/// batch, or all that is queued if less, once that many fit under the
/// limit of entries in flight. (Entries land one at a time; sending at
/// every free slot would make batches of one.)
pub(crate) fn batch_size(in_flight: usize, limit: usize, queued: usize) -> Option<usize> {
    let want = BATCH.min(limit).min(queued);
    (want > 0 && limit.saturating_sub(in_flight) >= want).then_some(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_wait_for_room_for_a_whole_batch() {
        assert_eq!(batch_size(0, 64, 100), Some(BATCH));
        assert_eq!(batch_size(64 - BATCH, 64, 100), Some(BATCH));
        assert_eq!(batch_size(60, 64, 100), None, "not a batch of four");
        assert_eq!(batch_size(60, 64, 3), Some(3), "what is left goes");
        assert_eq!(batch_size(0, 4, 100), Some(4), "a limit under a batch");
        assert_eq!(batch_size(0, 64, 0), None);
        assert_eq!(batch_size(70, 64, 5), None);
        assert_eq!(batch_size(0, 0, 5), None, "read-ahead off");
    }

    #[test]
    fn hints_are_queued_once_and_bounded() {
        let peer = PeerId::random();
        let mut read_ahead = ReadAhead::default();
        read_ahead.offer(peer, ActionId::from_bytes([1; 32]));
        read_ahead.offer(peer, ActionId::from_bytes([1; 32]));
        read_ahead.offer(peer, ActionId::from_bytes([2; 32]));
        read_ahead.take(&ActionId::from_bytes([2; 32]));
        assert_eq!(
            read_ahead.pop(),
            Some((peer, ActionId::from_bytes([1; 32])))
        );
        assert_eq!(read_ahead.pop(), None);
        // Once read ahead, not queued again.
        read_ahead.offer(peer, ActionId::from_bytes([1; 32]));
        assert_eq!(read_ahead.pop(), None);
        for n in 0..(MAX_QUEUED + 10) as u32 {
            let mut action = [0; 32];
            action[..4].copy_from_slice(&n.to_be_bytes());
            action[31] = 9;
            read_ahead.offer(peer, ActionId::from_bytes(action));
        }
        assert_eq!(read_ahead.queue.len(), MAX_QUEUED);
    }
}
