//! The bucket's bandwidth cap (`[bucket] max-rate`): downloads, lookups
//! and read-ahead together, take at most so many bytes a second.
//!
//! Each chunk that arrives books the link for as long as its bytes take at
//! the rate, after what was booked before; its fetch goes on reading when
//! the booking starts. So the bytes read average the rate however many
//! fetches run, without a burst beyond one chunk per fetch, and TCP's
//! own flow control slows the server down while a fetch waits.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Paces chunks to at most `rate` bytes a second; see the module docs.
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: u64,
    /// When the link is free again.
    free_at: Mutex<Option<Instant>>,
}

impl Pacer {
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        Self {
            rate: bytes_per_second.max(1),
            free_at: Mutex::new(None),
        }
    }

    /// Books `bytes` and waits until its booking starts.
    pub(crate) async fn take(&self, bytes: u64) {
        let start = self.book(bytes, Instant::now());
        tokio::time::sleep_until(start).await;
    }

    /// Books `bytes` at `now` or after what is booked; when it starts.
    fn book(&self, bytes: u64, now: Instant) -> Instant {
        let mut free_at = self.free_at.lock().unwrap_or_else(|p| p.into_inner());
        let start = free_at.map_or(now, |free| free.max(now));
        *free_at = Some(start + Duration::from_secs_f64(bytes as f64 / self.rate as f64));
        start
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
                    pacer.take(64 << 10).await;
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
        assert_eq!(pacer.book(1 << 20, now), now);
        let later = now + Duration::from_secs(10);
        assert_eq!(pacer.book(1 << 20, later), later);
        assert_eq!(pacer.book(1, later), later + Duration::from_secs(1));
    }
}
