//! The bytes of bodies being received at once, counted as they arrive.
//!
//! Bodies on their way sit in temp files that the store's `max-size` does
//! not see until they are committed, so their bytes together are bounded
//! here ([`crate::config::defaults::MAX_IN_FLIGHT`], 1 GiB). A body is
//! charged for what has arrived of it, a piece (at most 256 KiB) at a time,
//! not for the size it claimed: a peer that claims a huge body and then
//! stalls or drips it holds only what it sent, and for only as long as
//! its pace lets it (`fetch::pace`), so it cannot lock other peers' bodies
//! out.
//!
//! The rule: all the bodies on their way but the biggest must fit within
//! the limit together. So one body may be as big as `max_body_size` (it
//! is the biggest), and while it arrives the others still share the whole
//! limit: an honest peer's small body is taken next to any big one. A
//! piece that does not fit ends its body as not stored (the peer is not
//! blamed) and frees what that body held. At most the limit plus one
//! body's size is on its way at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The bytes of all bodies on their way; see the module docs.
#[derive(Debug)]
pub(crate) struct InFlight {
    limit: u64,
    /// What each body on its way holds, by [`Holding::id`].
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    bytes: HashMap<u64, u64>,
    next: u64,
}

impl InFlight {
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::default(),
        })
    }

    /// A new body's share, empty; given back when dropped.
    pub(crate) fn open(self: &Arc<Self>) -> Holding {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let id = held.next;
        held.next += 1;
        held.bytes.insert(id, 0);
        Holding {
            in_flight: self.clone(),
            id,
        }
    }

    /// Bytes held by all bodies on their way.
    #[cfg(test)]
    fn total(&self) -> u64 {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.bytes.values().sum()
    }
}

/// One body's share of [`InFlight`].
#[derive(Debug)]
pub(crate) struct Holding {
    in_flight: Arc<InFlight>,
    id: u64,
}

impl Holding {
    /// Charges `bytes` more that arrived of this body; `false` (nothing
    /// charged) if all bodies on their way but the biggest would then hold
    /// more than the limit.
    pub(crate) fn take(&self, bytes: u64) -> bool {
        let mut held = (self.in_flight.held)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let own = held
            .bytes
            .get(&self.id)
            .copied()
            .unwrap_or_default()
            .saturating_add(bytes);
        let (mut total, mut biggest) = (own, own);
        for (id, other) in &held.bytes {
            if *id != self.id {
                total = total.saturating_add(*other);
                biggest = biggest.max(*other);
            }
        }
        if total - biggest > self.in_flight.limit {
            return false;
        }
        held.bytes.insert(self.id, own);
        true
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        (self.in_flight.held)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1 << 30;
    const PIECE: u64 = 256 * 1024;

    /// A claim of 2 GiB that stalled after a few pieces holds those pieces
    /// only: other bodies share the whole limit beside it.
    #[test]
    fn a_big_claim_holds_what_arrived_not_what_it_claimed() {
        let in_flight = InFlight::new(LIMIT);
        let claim = in_flight.open();
        assert!((0..4).all(|_| claim.take(PIECE)));
        let honest = in_flight.open();
        assert!(honest.take(PIECE));
        let big_honest = in_flight.open();
        assert!((0..(LIMIT / PIECE) - 8).all(|_| big_honest.take(PIECE)));
        drop(claim);
        assert_eq!(in_flight.total(), LIMIT - 7 * PIECE);
    }

    /// One body may go past the limit, up to any size, and the others
    /// still fit beside it; a second body that would make the others
    /// together pass the limit is refused, and frees what it held.
    #[test]
    fn one_body_may_pass_the_limit_and_the_rest_share_it() {
        let in_flight = InFlight::new(LIMIT);
        let big = in_flight.open();
        assert!(big.take(LIMIT + (LIMIT / 2)), "alone, any size");
        let small = in_flight.open();
        assert!(small.take(PIECE), "beside the big one");
        let second = in_flight.open();
        assert!(second.take(LIMIT - PIECE));
        assert!(!second.take(1), "the others would hold over the limit");
        assert!(small.take(0));
        drop(second);
        assert_eq!(in_flight.total(), LIMIT + LIMIT / 2 + PIECE);
        drop((big, small));
        assert_eq!(in_flight.total(), 0);
    }
}
