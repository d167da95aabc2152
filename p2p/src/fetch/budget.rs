//! The read-ahead budget: how much a peer's hints may make us download
//! before any build asked for it.
//!
//! Read-ahead trusts hints: a peer that lies can answer with fabricated
//! bodies (they verify against their own hashes), each naming fresh hints,
//! and without a bound this went on until the disk was full, with no
//! build running. So read-ahead runs only while builds are using peers (a
//! lookup got a body from one within [`ReadAheadLimits::live_for`]), and
//! within byte budgets per window: one per peer and one in all.
//!
//! Each read-ahead entry reserves the most it may bring, its `max_inline`,
//! when its request is sent; what it did bring is spent when it lands, and
//! the rest of the reservation is released. `max_inline` is chosen so that
//! the reservations of every entry that may be in flight fit in what is
//! left. So the bytes read ahead in a window never exceed the budget; near
//! its end only small bodies are read ahead, and big ones wait for a
//! lookup.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

/// See the module docs; the numbers are in [`crate::config::defaults`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAheadLimits {
    /// Read ahead only this long after a lookup got a body from a peer.
    pub live_for: Duration,
    /// The budgets below are per window of this length.
    pub window: Duration,
    /// Bytes read ahead from one peer per window.
    pub per_peer: u64,
    /// Bytes read ahead in all per window.
    pub total: u64,
}

#[derive(Debug)]
pub(crate) struct ReadAheadBudget {
    limits: ReadAheadLimits,
    last_hit: Option<Instant>,
    window_start: Option<Instant>,
    /// Spent (landed) and reserved (in flight), per peer and in all.
    spent: HashMap<PeerId, u64>,
    spent_total: u64,
    reserved: HashMap<PeerId, u64>,
    reserved_total: u64,
}

impl ReadAheadBudget {
    pub(crate) fn new(limits: ReadAheadLimits) -> Self {
        Self {
            limits,
            last_hit: None,
            window_start: None,
            spent: HashMap::new(),
            spent_total: 0,
            reserved: HashMap::new(),
            reserved_total: 0,
        }
    }

    /// A lookup got a body from a peer: a build is using peers.
    pub(crate) fn lookup_hit(&mut self, now: Instant) {
        self.last_hit = Some(now);
    }

    /// Whether a build is using peers now.
    pub(crate) fn is_live(&self, now: Instant) -> bool {
        self.last_hit
            .is_some_and(|hit| now.saturating_duration_since(hit) <= self.limits.live_for)
    }

    fn roll(&mut self, now: Instant) {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.limits.window);
        if fresh {
            self.window_start = Some(now);
            self.spent.clear();
            self.spent_total = 0;
        }
    }

    /// What may still be reserved for `peer` in this window.
    fn room(&mut self, peer: &PeerId, now: Instant) -> u64 {
        self.roll(now);
        let peer_used = self.spent.get(peer).copied().unwrap_or(0)
            + self.reserved.get(peer).copied().unwrap_or(0);
        let total_used = self.spent_total + self.reserved_total;
        self.limits
            .per_peer
            .saturating_sub(peer_used)
            .min(self.limits.total.saturating_sub(total_used))
    }

    /// The largest body each of `entries` may bring from `peer` now, if
    /// read-ahead may go on (`None`: not now). `in_flight_limit` is how
    /// many read-ahead entries may be in flight in all, `max_body` the
    /// configured limit per body.
    pub(crate) fn max_inline(
        &mut self,
        peer: &PeerId,
        in_flight_limit: usize,
        max_body: u64,
        now: Instant,
    ) -> Option<u64> {
        if !self.is_live(now) {
            return None;
        }
        let share = self.room(peer, now) / in_flight_limit.max(1) as u64;
        // A body of a few bytes is still worth a request; less is nothing.
        (share >= 1024).then(|| share.min(max_body))
    }

    /// Reserves `bytes` for an entry about to be read ahead from `peer`.
    pub(crate) fn reserve(&mut self, peer: PeerId, bytes: u64) {
        *self.reserved.entry(peer).or_default() += bytes;
        self.reserved_total += bytes;
    }

    /// An entry that reserved `reserved` brought `landed` bytes (0 if
    /// none landed).
    pub(crate) fn settle(&mut self, peer: PeerId, reserved: u64, landed: u64, now: Instant) {
        if let Some(held) = self.reserved.get_mut(&peer) {
            *held = held.saturating_sub(reserved);
            if *held == 0 {
                self.reserved.remove(&peer);
            }
        }
        self.reserved_total = self.reserved_total.saturating_sub(reserved);
        self.roll(now);
        *self.spent.entry(peer).or_default() += landed;
        self.spent_total += landed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReadAheadLimits = ReadAheadLimits {
        live_for: Duration::from_secs(30),
        window: Duration::from_secs(600),
        per_peer: 1 << 20,
        total: 3 << 19,
    };

    #[test]
    fn nothing_is_read_ahead_without_a_build_using_peers() {
        let now = Instant::now();
        let peer = PeerId::random();
        let mut budget = ReadAheadBudget::new(LIMITS);
        assert_eq!(budget.max_inline(&peer, 4, 1 << 30, now), None);
        budget.lookup_hit(now);
        assert!(budget.max_inline(&peer, 4, 1 << 30, now).is_some());
        let later = now + LIMITS.live_for + Duration::from_secs(1);
        assert_eq!(budget.max_inline(&peer, 4, 1 << 30, later), None);
    }

    #[test]
    fn what_may_be_in_flight_fits_in_what_is_left_per_peer_and_in_all() {
        let now = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut budget = ReadAheadBudget::new(LIMITS);
        budget.lookup_hit(now);
        // Four entries may be in flight: each may bring a quarter.
        let each = budget.max_inline(&a, 4, 1 << 30, now).unwrap();
        assert_eq!(each, (1 << 20) / 4);
        for _ in 0..4 {
            budget.reserve(a, each);
        }
        assert_eq!(budget.max_inline(&a, 4, 1 << 30, now), None, "a is spent");
        // b has its own budget, but shares the total with a.
        assert_eq!(budget.max_inline(&b, 4, 1 << 30, now), Some((1 << 19) / 4));
        // Small bodies landed: the rest of the reservations comes back.
        for _ in 0..4 {
            budget.settle(a, each, 100, now);
        }
        assert_eq!(budget.max_inline(&a, 4, 1 << 30, now), Some(each - 100));
        // Spend all of a's budget; the next window starts afresh.
        budget.reserve(a, 1 << 20);
        budget.settle(a, 1 << 20, (1 << 20) - 400, now);
        assert_eq!(budget.max_inline(&a, 4, 1 << 30, now), None);
        let next = now + LIMITS.window;
        budget.lookup_hit(next);
        assert_eq!(budget.max_inline(&a, 4, 1 << 30, next), Some((1 << 20) / 4));
        // The configured body limit still applies.
        assert_eq!(
            budget.max_inline(&a, 4, 1000 << 10, next),
            Some((1 << 20) / 4)
        );
        assert_eq!(budget.max_inline(&a, 4, 4096, next), Some(4096));
    }
}
