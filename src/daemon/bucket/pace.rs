//! The bucket's bandwidth cap (`[bucket] max-rate`): bodies downloaded,
//! for lookups and read-ahead together, take at most so many bytes a
//! second.
//!
//! Each chunk that arrives books the link for as long as its bytes take at
//! the rate, after what was booked before; its fetch goes on reading when
//! the booking starts. So the bytes read average the rate however many
//! fetches run (give or take what the sockets' buffers hold), and TCP's own
//! flow control slows the server down while a fetch waits. A build waits
//! on a lookup's chunks and not on read-ahead's, so they book in two lines:
//! a lookup's chunk books after earlier lookups' only, and pushes
//! read-ahead's line back by as much.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Paces chunks to at most `rate` bytes a second; see the module docs.
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: u64,
    booked: Mutex<Booked>,
}

/// When each line is free again.
#[derive(Debug, Default)]
struct Booked {
    /// After every booking, lookups' and read-ahead's.
    all: Option<Instant>,
    /// After lookups' bookings.
    urgent: Option<Instant>,
}

impl Pacer {
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        Self {
            rate: bytes_per_second.max(1),
            booked: Mutex::default(),
        }
    }

    /// Books `bytes` (a build waits on them if `urgent`) and waits until
    /// the booking starts.
    pub(crate) async fn take(&self, bytes: u64, urgent: bool) {
        let now = Instant::now();
        let start = self.book(bytes, urgent, now);
        // Timers fire on whole milliseconds: a shorter wait would cost a
        // millisecond a chunk on a free link. Bookings add up, so the
        // rate holds over the waits that come.
        if start.saturating_duration_since(now) >= Duration::from_millis(1) {
            tokio::time::sleep_until(start).await;
        }
    }

    /// Books `bytes` at `now` or after what is booked before it; when it
    /// starts.
    fn book(&self, bytes: u64, urgent: bool, now: Instant) -> Instant {
        let takes = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        let after = |start: Instant| start.checked_add(takes).unwrap_or(start);
        let mut booked = self.booked.lock().unwrap_or_else(|p| p.into_inner());
        let all = booked.all.map_or(now, |free| free.max(now));
        if urgent {
            let start = booked.urgent.map_or(now, |free| free.max(now));
            booked.urgent = Some(after(start));
            booked.all = Some(after(all));
            start
        } else {
            booked.all = Some(after(all));
            all
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks from several fetches share the rate: ten fetches of 1 MiB
    /// in 64 KiB chunks at 4 MiB/s take about 2.5 s, and the first chunk
    /// waits for nothing.
    #[tokio::test(start_paused = true)]
    async fn fetches_together_average_the_rate() {
        let pacer = std::sync::Arc::new(Pacer::new(4 << 20));
        let started = Instant::now();
        let fetches = (0..10).map(|_| {
            let pacer = pacer.clone();
            tokio::spawn(async move {
                for _ in 0..16 {
                    pacer.take(64 << 10, false).await;
                }
            })
        });
        for fetch in futures::future::join_all(fetches).await {
            fetch.unwrap();
        }
        // The last chunk starts at 2.5 s less its own 1/64 s.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(2_450) && took <= Duration::from_millis(2_500),
            "{took:?}"
        );
    }

    /// A link idle for a while does not save up a burst.
    #[test]
    fn an_idle_link_saves_nothing_up() {
        let pacer = Pacer::new(1 << 20);
        let now = Instant::now();
        assert_eq!(pacer.book(1 << 20, false, now), now);
        let later = now + Duration::from_secs(10);
        assert_eq!(pacer.book(1 << 20, false, later), later);
        assert_eq!(pacer.book(1, false, later), later + Duration::from_secs(1));
    }

    /// A lookup's chunk goes before read-ahead booked far ahead, and read-ahead
    /// books after it: the rate holds over both.
    #[test]
    fn a_lookup_books_before_read_ahead() {
        let pacer = Pacer::new(1 << 20);
        let now = Instant::now();
        for n in 0..10 {
            let start = pacer.book(1 << 20, false, now);
            assert_eq!(start, now + Duration::from_secs(n));
        }
        assert_eq!(
            pacer.book(1 << 20, true, now),
            now,
            "the lookup waits for nothing"
        );
        assert_eq!(
            pacer.book(1 << 20, true, now),
            now + Duration::from_secs(1),
            "after the lookup before it"
        );
        assert_eq!(
            pacer.book(1 << 20, false, now),
            now + Duration::from_secs(12),
            "read-ahead after all of it"
        );
    }

    /// A free link costs a chunk no sleep at all (a timer would round up
    /// to the next millisecond, a chunk at a time).
    #[tokio::test(start_paused = true)]
    async fn a_free_link_costs_nothing() {
        let pacer = Pacer::new(1 << 30);
        let started = Instant::now();
        pacer.take(1, true).await;
        pacer.take(1, false).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
