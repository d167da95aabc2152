//! A floor under the rate at which a peer reads what we serve.
//!
//! Each answer holds a serve permit until it is written, and a peer that
//! reads slowly (or never) would hold its permits for as long as libp2p's
//! request timeout. [`MinRate`] fails the write once the bytes written fall
//! behind [`MIN_SEND_RATE`], counted from the start of the answer after a
//! grace of [`SEND_GRACE`]: the stream is reset and the permit is free
//! again. A real link, even slow Wi-Fi, is far faster than the floor.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::AsyncWrite;
use tokio::time::{Instant, Sleep};

/// The slowest a peer may read an answer, once [`SEND_GRACE`] is over.
pub(crate) const MIN_SEND_RATE: u64 = 64 * 1024;
/// How long an answer may stall before the rate is held against it.
pub(crate) const SEND_GRACE: Duration = Duration::from_secs(5);

pub(crate) struct MinRate<W> {
    inner: W,
    start: Instant,
    written: u64,
    timer: Pin<Box<Sleep>>,
}

impl<W> MinRate<W> {
    pub(crate) fn new(inner: W) -> Self {
        let start = Instant::now();
        Self {
            inner,
            start,
            written: 0,
            timer: Box::pin(tokio::time::sleep_until(start + SEND_GRACE)),
        }
    }

    /// When the next byte must have been written.
    fn due(&self) -> Instant {
        self.start
            + SEND_GRACE
            + Duration::from_secs_f64(self.written as f64 / MIN_SEND_RATE as f64)
    }

    /// On a write that is not ready: an error once it is overdue (the
    /// timer wakes the task then).
    fn check<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let due = self.due();
        if self.timer.deadline() != due {
            self.timer.as_mut().reset(due);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer reads too slowly",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for MinRate<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.written += n as u64;
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.check(cx),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.check(cx),
            other => other,
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_close(cx) {
            Poll::Pending => self.check(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::AsyncWriteExt as _;

    use super::*;

    /// A sink that takes nothing: a peer that never reads.
    struct Stuck;

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_is_cut_off_after_the_grace() {
        let started = Instant::now();
        let error = MinRate::new(Stuck).write_all(b"body").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), SEND_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_keeps_up_is_not() {
        let mut out = MinRate::new(Vec::new());
        for _ in 0..10 {
            out.write_all(&[0; 1024]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(out.inner.len(), 10 * 1024);
    }
}
