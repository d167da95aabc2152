//! Read-ahead: fetching what a build will ask for next, before it asks.
//!
//! `go` asks for one entry at a time per worker and waits for each, so a
//! build served by a peer waited on a LAN round trip per entry: about 1,100
//! of them for `go build std`. But a build asks for entries in much the
//! order in which the peer's own build stored them. So every answer from a
//! peer carries hints, the actions it stored right after the one asked for
//! ([`Store::following`](crate::Store::following)), and the node fetches
//! those it lacks in the background, a few at a time, from that peer. The
//! helper then finds them in the local store; each fetched entry brings the
//! next hints, so read-ahead follows the peer's build as far as it goes
//! (the server ends hints at a pause in its puts: the end of a build).
//!
//! A lookup for an action being read ahead joins that fetch instead of
//! asking again; one still queued is fetched at once as a normal lookup.
//! Bodies fetched ahead go through the same verified path as any other.
//! What is queued or remembered is bounded, and a hinted body bigger than
//! the read-ahead limit is left for a lookup to fetch.

use std::collections::{HashSet, VecDeque};

use libp2p::PeerId;
use tokio::time::Instant;

use super::EventLoop;
use super::fetch::{Deadline, Phase, timer};

/// Hints asked for with every lookup.
pub(super) const HINTS: u32 = 32;
/// Most actions waiting to be read ahead; further hints are dropped.
const MAX_QUEUED: usize = 512;
/// Actions remembered as read ahead already (fetched or not), so hints that
/// repeat them are skipped; forgotten all at once when it grows past this.
const MAX_SEEN: usize = 16_384;

/// The read-ahead queue and what is in flight.
#[derive(Default)]
pub(super) struct ReadAhead {
    queue: VecDeque<(PeerId, [u8; 32])>,
    queued: HashSet<[u8; 32]>,
    seen: HashSet<[u8; 32]>,
    pub(super) in_flight: usize,
}

impl ReadAhead {
    /// Removes `action` from the queue: a lookup is about to fetch it.
    pub(super) fn take(&mut self, action: &[u8; 32]) {
        if self.queued.remove(action) {
            self.queue.retain(|(_, queued)| queued != action);
        }
    }

    fn offer(&mut self, peer: PeerId, action: [u8; 32]) {
        if self.queue.len() >= MAX_QUEUED
            || self.seen.contains(&action)
            || !self.queued.insert(action)
        {
            return;
        }
        self.queue.push_back((peer, action));
    }

    fn pop(&mut self) -> Option<(PeerId, [u8; 32])> {
        let (peer, action) = self.queue.pop_front()?;
        self.queued.remove(&action);
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        self.seen.insert(action);
        Some((peer, action))
    }
}

impl EventLoop {
    /// Queues a peer's hints and starts what read-ahead allows.
    pub(super) fn offer_hints(&mut self, peer: PeerId, next: Vec<[u8; 32]>) {
        if self.config.read_ahead == 0 {
            return;
        }
        for action in next {
            if !self.active.contains_key(&action) {
                self.read_ahead.offer(peer, action);
            }
        }
        self.pump_read_ahead();
    }

    /// Starts queued read-ahead fetches up to the configured number.
    pub(super) fn pump_read_ahead(&mut self) {
        let now = Instant::now();
        while self.read_ahead.in_flight < self.config.read_ahead {
            let Some((peer, action)) = self.read_ahead.pop() else {
                return;
            };
            if self.active.contains_key(&action)
                || !self.eligible(&peer, now)
                || self.store.contains(&action)
            {
                continue;
            }
            let id = self.new_fetch(action, None);
            self.read_ahead.in_flight += 1;
            let deadline = now + self.config.lookup_deadline;
            let max_inline = self
                .config
                .read_ahead_max_body
                .min(self.config.max_body_size);
            self.send_request(id, peer, Phase::Lookup, max_inline, deadline);
            self.timers.push(timer(deadline, Deadline::Lookup(id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_queued_once_and_bounded() {
        let peer = PeerId::random();
        let mut read_ahead = ReadAhead::default();
        read_ahead.offer(peer, [1; 32]);
        read_ahead.offer(peer, [1; 32]);
        read_ahead.offer(peer, [2; 32]);
        read_ahead.take(&[2; 32]);
        assert_eq!(read_ahead.pop(), Some((peer, [1; 32])));
        assert_eq!(read_ahead.pop(), None);
        // Once read ahead, not queued again.
        read_ahead.offer(peer, [1; 32]);
        assert_eq!(read_ahead.pop(), None);
        for n in 0..(MAX_QUEUED + 10) as u32 {
            let mut action = [0; 32];
            action[..4].copy_from_slice(&n.to_be_bytes());
            action[31] = 9;
            read_ahead.offer(peer, action);
        }
        assert_eq!(read_ahead.queue.len(), MAX_QUEUED);
    }
}
