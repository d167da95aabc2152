//! Bytes as they cross the link, per peer.
//!
//! A peer's hit counters count bodies as stored. Compressed bodies
//! ([`crate::protocol::compress`]) take fewer bytes on the link, and answers carry
//! headers and hints too, so what the fetch protocol actually moved is
//! counted apart: each response stream is wrapped in a [`Metered`] that adds
//! what passes through it as it goes, so a stream that fails part-way still
//! counts what it carried. (Noise and yamux framing, a small fraction, are
//! below this layer and not counted.)

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};

/// Fetch-protocol response bytes exchanged with one peer since the node
/// started.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    /// Read from the peer's answers.
    pub(crate) received: AtomicU64,
    /// Written in answers to the peer.
    pub(crate) sent: AtomicU64,
}

/// A stream that adds every byte read or written to `count`.
pub(crate) struct Metered<'a, T> {
    inner: &'a mut T,
    count: &'a AtomicU64,
}

impl<'a, T> Metered<'a, T> {
    pub(crate) fn new(inner: &'a mut T, count: &'a AtomicU64) -> Self {
        Self { inner, count }
    }

    fn add<E>(&self, done: Poll<Result<usize, E>>) -> Poll<Result<usize, E>> {
        if let Poll::Ready(Ok(n)) = &done {
            self.count.fetch_add(*n as u64, Ordering::Relaxed);
        }
        done
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let done = Pin::new(&mut *this.inner).poll_read(cx, buf);
        this.add(done)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let done = Pin::new(&mut *this.inner).poll_write(cx, buf);
        this.add(done)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::io::{AsyncReadExt, AsyncWriteExt, Cursor};

    use super::*;

    #[test]
    fn counts_what_passes_even_when_cut_short() {
        let count = AtomicU64::new(0);
        let mut source = Cursor::new(vec![7u8; 10]);
        let mut buf = [0u8; 16];
        let error = block_on(Metered::new(&mut source, &count).read_exact(&mut buf)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(count.load(Ordering::Relaxed), 10);

        let mut sink = Vec::new();
        let mut metered = Metered::new(&mut sink, &count);
        block_on(metered.write_all(b"hello")).unwrap();
        block_on(metered.flush()).unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 15);
        assert_eq!(sink, b"hello");
    }
}
