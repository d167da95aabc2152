//! How fast each remote IP may start handshakes: a token bucket per IP,
//! [`BURST`] at once and then one every [`REFILL`].
//!
//! The table of buckets is bounded ([`MAX_TRACKED`] IPs), and a stranger
//! with more addresses than that must not be able to make it forget the
//! IPs that spent their tokens. So when it is full, the buckets that
//! forget least are dropped: those holding the most tokens (a full one
//! tells nothing a new one would not), an eighth of the table at a time.
//! A forgotten IP is granted at most what it has not yet spent. The rate
//! bounds the cryptography a source can make the node do; the number of
//! handshakes a source holds at once is bounded apart, exactly
//! (`in_progress`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Handshakes one IP may start at once.
pub(crate) const BURST: f64 = 8.0;
/// Then one more per this much time.
pub(crate) const REFILL: Duration = Duration::from_millis(500);
/// Remote IPs whose buckets are remembered.
pub(crate) const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn now(self, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        (self.tokens + earned).min(BURST)
    }
}

#[derive(Debug, Default)]
pub(super) struct Buckets {
    by_ip: HashMap<IpAddr, Bucket>,
}

impl Buckets {
    /// Takes a token of `ip`'s; whether it had one.
    pub(super) fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= MAX_TRACKED {
            self.forget_the_fullest(now);
        }
        let bucket = self.by_ip.entry(ip).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let available = bucket.now(now);
        let taken = available >= 1.0;
        *bucket = Bucket {
            tokens: if taken { available - 1.0 } else { available },
            at: now,
        };
        taken
    }

    /// Drops the eighth of the buckets that hold the most tokens.
    fn forget_the_fullest(&mut self, now: Instant) {
        let mut tokens: Vec<(f64, IpAddr)> = (self.by_ip.iter())
            .map(|(ip, bucket)| (bucket.now(now), *ip))
            .collect();
        let keep = tokens.len() - tokens.len().div_ceil(8);
        tokens.select_nth_unstable_by(keep, |a, b| a.0.total_cmp(&b.0));
        for (_, ip) in &tokens[keep..] {
            self.by_ip.remove(ip);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn each_ip_gets_a_burst_then_a_trickle() {
        let now = Instant::now();
        let mut buckets = Buckets::default();
        let flooder = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66));
        for _ in 0..BURST as usize {
            assert!(buckets.take(flooder, now));
        }
        assert!(!buckets.take(flooder, now));
        assert!(
            buckets.take(IpAddr::V6(Ipv6Addr::LOCALHOST), now),
            "other IPs are not held up"
        );
        assert!(!buckets.take(flooder, now + REFILL / 2));
        assert!(buckets.take(flooder, now + REFILL * 2));
    }

    /// A stranger spends an IP's burst, then calls from 4,097 other
    /// addresses to overflow the table: the table used to be cleared,
    /// and the first IP got a fresh burst.
    #[test]
    fn an_ip_that_spent_its_tokens_is_not_forgotten_in_a_flood_of_others() {
        let now = Instant::now();
        let mut buckets = Buckets::default();
        let flooder = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66));
        for _ in 0..BURST as usize {
            assert!(buckets.take(flooder, now));
        }
        for n in 0..=MAX_TRACKED as u32 {
            let other = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + n));
            assert!(buckets.take(other, now));
        }
        assert!(buckets.len() <= MAX_TRACKED, "{}", buckets.len());
        assert!(
            !buckets.take(flooder, now + REFILL / 2),
            "the drained IP got a fresh burst"
        );
    }
}
