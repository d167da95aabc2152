//! What replication may still add to the store, and how fast.
//!
//! Two limits, both checked before an entry is fetched, with the size its
//! catalog listed (a body bigger than that is refused on arrival, see
//! `warren_p2p::catalog`, so what lands never exceeds what was reserved):
//!
//! - peers' entries in the store against `replicate-max-size`;
//! - the whole store against `max-size` less [`HEADROOM_PERCENT`]: a fetched
//!   body that would take the store past `max-size` starts a trim, which
//!   removes the least recently used entries, this machine's own among
//!   them. Replication stops short of that, so that trimming for room is
//!   never its doing; the headroom is left to builds and lookups.
//!
//! Both are counted from the store (on start and every `RECOUNT`), plus
//! what replication fetched since: `go`'s puts in between are seen at the
//! next count, which the headroom absorbs.
//!
//! The rate is kept by the bytes that arrived (crossed the link, or
//! landed if more), not by the sizes listed ([`pause`]).

use std::time::Duration;

use tokio::time::Instant;

use super::RECOUNT;

/// Share of `max-size` replication leaves free (see the module docs).
pub(crate) const HEADROOM_PERCENT: u64 = 10;

/// Which limit an entry did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    /// Peers' entries take `replicate-max-size`.
    Peers,
    /// The store is within [`HEADROOM_PERCENT`] of `max-size`.
    Store,
}

/// Bytes counted against one limit.
#[derive(Debug, Clone, Copy)]
struct Limit {
    max: u64,
    /// As last counted, plus what was taken since.
    used: u64,
}

impl Limit {
    fn fits(&self, size: u64) -> bool {
        self.used.saturating_add(size) <= self.max
    }
}

/// See the module docs.
#[derive(Debug)]
pub(super) struct Budget {
    peers: Limit,
    store: Limit,
    pub(super) counted: Option<Instant>,
}

impl Budget {
    /// `max_size` for peers' entries (`replicate-max-size`), and the
    /// store's `max-size`.
    pub(super) fn new(max_size: u64, store_max_size: u64) -> Self {
        let headroom =
            store_max_size / 100 * HEADROOM_PERCENT + store_max_size % 100 * HEADROOM_PERCENT / 100;
        Self {
            peers: Limit {
                max: max_size,
                used: 0,
            },
            store: Limit {
                max: store_max_size - headroom,
                used: 0,
            },
            counted: None,
        }
    }

    pub(super) fn due(&self) -> bool {
        self.counted.is_none_or(|at| at.elapsed() >= RECOUNT)
    }

    /// The store was counted: `peers` bytes of peers' entries, `store`
    /// bytes in all.
    pub(super) fn recounted(&mut self, peers: u64, store: u64) {
        self.peers.used = peers;
        self.store.used = store;
        self.counted = Some(Instant::now());
    }

    /// Whether `size` more bytes fit both limits.
    pub(super) fn fits(&self, size: u64) -> bool {
        self.peers.fits(size) && self.store.fits(size)
    }

    /// Takes `size` bytes if they fit; otherwise says which limit is
    /// reached (the store's first: it is the one that protects entries
    /// built here).
    pub(super) fn take(&mut self, size: u64) -> Result<(), Full> {
        if !self.store.fits(size) {
            return Err(Full::Store);
        }
        if !self.peers.fits(size) {
            return Err(Full::Peers);
        }
        self.peers.used += size;
        self.store.used += size;
        Ok(())
    }

    /// An entry that took `taken` bytes brought `landed` (never more: a
    /// body bigger than listed is refused).
    pub(super) fn correct(&mut self, taken: u64, landed: u64) {
        for limit in [&mut self.peers, &mut self.store] {
            limit.used = limit.used.saturating_sub(taken).saturating_add(landed);
        }
    }

    pub(super) fn release(&mut self, size: u64) {
        self.correct(size, 0);
    }
}

/// How long to wait after a batch that moved `arrived` bytes over the link
/// in `took`, so that replication averages at most `rate` bytes a second.
pub(super) fn pause(arrived: u64, rate: u64, took: Duration) -> Duration {
    let due = Duration::from_secs_f64(arrived as f64 / rate.max(1) as f64);
    due.saturating_sub(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_never_lets_peers_entries_pass_it() {
        let mut budget = Budget::new(100, u64::MAX / 2);
        assert!(budget.due(), "counted first");
        budget.recounted(60, 60);
        assert!(!budget.due());
        assert_eq!(budget.take(30), Ok(()));
        assert_eq!(budget.take(11), Err(Full::Peers), "60 + 30 + 11 > 100");
        assert_eq!(budget.take(10), Ok(()));
        budget.release(30);
        assert_eq!(budget.take(30), Ok(()));
        assert_eq!(budget.take(1), Err(Full::Peers));
        // A catalog that said 20 bytes for a body of 10: the 10 count.
        budget.recounted(0, 0);
        assert_eq!(budget.take(20), Ok(()));
        budget.correct(20, 10);
        assert_eq!(budget.take(90), Ok(()));
        assert_eq!(budget.take(1), Err(Full::Peers));
    }

    /// Replication leaves the store's last tenth of `max-size` free, and
    /// says so rather than blaming `replicate-max-size`.
    #[test]
    fn the_store_keeps_its_headroom() {
        let mut budget = Budget::new(u64::MAX / 2, 1000);
        budget.recounted(0, 850);
        assert!(budget.fits(50));
        assert!(!budget.fits(51), "900 is 90% of 1000");
        assert_eq!(budget.take(51), Err(Full::Store));
        assert_eq!(budget.take(50), Ok(()));
        assert_eq!(budget.take(1), Err(Full::Store));
        // Both full: the store is named.
        let mut both = Budget::new(10, 1000);
        both.recounted(10, 900);
        assert_eq!(both.take(1), Err(Full::Store));
        // A huge max-size does not overflow.
        let huge = Budget::new(1, u64::MAX);
        assert_eq!(huge.store.max, u64::MAX - u64::MAX / 10);
    }

    #[test]
    fn the_pause_spreads_what_arrived_at_the_rate() {
        let rate = 1 << 20;
        assert_eq!(
            pause(1 << 20, rate, Duration::from_millis(200)),
            Duration::from_millis(800)
        );
        assert_eq!(pause(1 << 20, rate, Duration::from_secs(2)), Duration::ZERO);
        assert_eq!(pause(0, rate, Duration::ZERO), Duration::ZERO);
    }
}
