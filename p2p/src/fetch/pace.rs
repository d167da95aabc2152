//! How long a peer may take over a body it announced, and how long we may.
//!
//! A peer that answered "found" owes us the body at the slowest rate we
//! tolerate (`transfer_rate`, 50 MB/s by default). [`Pace`] holds it to
//! that piece by piece, so that a peer that stops, or drips a big body it
//! claimed, is cut off within seconds whatever size it claimed:
//!
//! - each piece (at most 256 KiB) must come within [`STALL`];
//! - the peer may never fall more than [`STALL`] behind the rate: once
//!   `received` bytes are in, the time spent waiting for them is at most
//!   `STALL + received / rate`;
//! - the whole body must be in after at most `1 s + size / rate` of waiting
//!   (the transfer timeout, [`transfer_timeout`]).
//!
//! Breaking any of them is the peer's fault: the read fails with an error
//! that [`Lateness::of`] reads as [`Lateness::Body`], and the books put the
//! peer in cooldown, like one that sent a bad body.
//!
//! Only the time spent waiting for the peer's bytes counts against it. The
//! time we spend on our side (a full queue to a disk that is slow) has a
//! budget of its own, the same transfer timeout; running out of it is
//! ours: the body is given up and nobody is blamed. So a whole body takes
//! at most twice its transfer timeout ([`Pace::longest`]), which the books'
//! backstops allow for.

use std::io;
use std::time::Duration;

use tokio::time::Instant;

/// A piece of a body (at most 256 KiB) that takes longer than this to
/// arrive is given up, and so is a peer that falls this far behind the
/// transfer rate: it is cut off after this much silence, whatever size it
/// claimed.
pub(crate) const STALL: Duration = Duration::from_secs(2);

/// The time budgets of one body; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    rate: u64,
    /// The transfer timeout of the body's size: the peer's budget, and ours.
    budget: Duration,
    /// Body bytes received so far.
    received: u64,
    /// Time spent waiting for the peer's bytes so far.
    waited_on_peer: Duration,
    /// Time spent waiting for our own side (the queue to the writer).
    waited_on_us: Duration,
}

impl Pace {
    /// The budgets of a body of `size` bytes at `rate` bytes a second.
    pub(crate) fn new(size: u64, rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            budget: transfer_timeout(size, rate),
            received: 0,
            waited_on_peer: Duration::ZERO,
            waited_on_us: Duration::ZERO,
        }
    }

    /// The longest a body of `size` bytes may take at `rate` with both
    /// sides within their budgets (the final commit aside).
    pub(crate) fn longest(size: u64, rate: u64) -> Duration {
        transfer_timeout(size, rate) * 2
    }

    /// How long the peer may take to send the next `len` bytes.
    pub(crate) fn peer_allowance(&self, len: u64) -> Duration {
        let on_pace = STALL + at_rate(self.received.saturating_add(len), self.rate);
        STALL
            .min(on_pace.saturating_sub(self.waited_on_peer))
            .min(self.budget.saturating_sub(self.waited_on_peer))
    }

    /// Waits for `len` more bytes from the peer (`read`), within its
    /// allowance; a read that takes longer is the peer's stall.
    pub(crate) async fn wait_on_peer<T>(
        &mut self,
        len: u64,
        read: impl Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        let started = Instant::now();
        let read = tokio::time::timeout(self.peer_allowance(len), read).await;
        self.waited_on_peer += started.elapsed();
        let value = read.map_err(|_| Lateness::Body.error())??;
        self.received = self.received.saturating_add(len);
        Ok(value)
    }

    /// Waits for our own side (`work`), within our budget; `None` if it
    /// took too long, which is not the peer's fault.
    pub(crate) async fn wait_on_us<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let started = Instant::now();
        let allowance = self.budget.saturating_sub(self.waited_on_us);
        let done = tokio::time::timeout(allowance, work).await;
        self.waited_on_us += started.elapsed();
        done.ok()
    }
}

/// The time allowed for a body of `size` bytes once its header is in,
/// waiting for the peer at `rate` bytes a second: `1 s + size / rate`.
pub(crate) fn transfer_timeout(size: u64, rate: u64) -> Duration {
    Duration::from_secs(1) + at_rate(size, rate)
}

/// The time `bytes` take at `rate` bytes a second.
fn at_rate(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64)
}

/// A deadline that passed in an exchange, as the error that ends it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Lateness {
    /// No header by its deadline: whether the peer is to blame depends on
    /// what it had said before (the books judge; see `fetch::books`).
    #[error("no answer by its deadline")]
    Header,
    /// The peer said "found" and fell behind on the body: its fault.
    #[error("the peer stalled in the middle of a body")]
    Body,
}

impl Lateness {
    /// The error that ends an exchange for this reason.
    pub(crate) fn error(self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, self)
    }

    /// The deadline that `error` (a failed fetch request's) reports, if any.
    pub(crate) fn of(error: &io::Error) -> Option<Self> {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Self>())
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u64 = 50_000_000;
    const PIECE: u64 = 256 * 1024;

    #[test]
    fn transfer_timeouts_scale_with_size() {
        assert_eq!(transfer_timeout(0, 50_000_000), Duration::from_secs(1));
        assert_eq!(
            transfer_timeout(100_000_000, 50_000_000),
            Duration::from_secs(3)
        );
        assert_eq!(transfer_timeout(10, 0), Duration::from_secs(11));
    }

    #[test]
    fn a_small_body_has_its_transfer_timeout_and_each_piece_at_most_the_stall() {
        // 100 KB: one piece, due within 1 s + 2 ms.
        let pace = Pace::new(100_000, RATE);
        assert_eq!(pace.peer_allowance(100_000), Duration::from_millis(1002));
        // 2 GiB: the first piece may take the stall, not the 44 s claimed.
        let pace = Pace::new(2 << 30, RATE);
        assert_eq!(pace.peer_allowance(PIECE), STALL);
    }

    /// A peer that sends a piece of a 2 GiB body every second, just under
    /// the stall, is cut off once it is the stall behind the rate (in its
    /// third piece), not when its 44 s are over.
    #[test]
    fn a_dripping_peer_falls_behind_the_rate_within_seconds() {
        let mut pace = Pace::new(2 << 30, RATE);
        let mut pieces = 0;
        while pace.peer_allowance(PIECE) >= Duration::from_secs(1) {
            pace.waited_on_peer += Duration::from_secs(1);
            pace.received += PIECE;
            pieces += 1;
        }
        assert_eq!(pieces, 2);
        assert!(pace.peer_allowance(PIECE) < Duration::from_millis(20));
    }

    /// A peer at twice the rate gains slack, but a piece still may not take
    /// over the stall; and the whole body is due within its budget.
    #[test]
    fn slack_never_excuses_a_stall_or_the_budget() {
        let mut pace = Pace::new(100 << 20, RATE);
        pace.received = 50 << 20;
        pace.waited_on_peer = Duration::from_millis(500);
        assert_eq!(pace.peer_allowance(PIECE), STALL);
        pace.received = 99 << 20;
        pace.waited_on_peer = pace.budget - Duration::from_millis(100);
        assert_eq!(pace.peer_allowance(PIECE), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn only_time_waiting_for_the_peer_counts_against_it() {
        let mut pace = Pace::new(100_000, RATE);
        // Our side took most of the budget: no fault of the peer's, which
        // still has its whole allowance.
        let slow_disk = tokio::time::sleep(Duration::from_millis(900));
        assert_eq!(pace.wait_on_us(slow_disk).await, Some(()));
        let sent = pace
            .wait_on_peer(100_000, async {
                tokio::time::sleep(Duration::from_millis(950)).await;
                Ok(())
            })
            .await;
        assert!(sent.is_ok());
        // Our side ran out: given up, not blamed on the peer.
        let stuck = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(pace.wait_on_us(stuck).await, None);

        // A peer that sends nothing is late with the body.
        let mut pace = Pace::new(100_000, RATE);
        let silent = pace.wait_on_peer(100_000, std::future::pending::<io::Result<()>>());
        let error = silent.await.unwrap_err();
        assert_eq!(Lateness::of(&error), Some(Lateness::Body));
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Lateness::of(&io::Error::other("reset")), None);
    }
}
