//! The fetch protocol as bytes: what peers of any version agree on, with no
//! I/O of its own beyond the stream it is given.
//!
//! - [`wire`]: versioned JSON header frames, batches, read-ahead hints;
//! - [`piece`]: body pieces and the pool their buffers come from;
//! - [`compress`]: a compressed body's pieces (zstd, one bounded frame per
//!   piece);
//! - [`metered`]: counting the bytes that cross the link.

pub(crate) mod compress;
pub(crate) mod metered;
pub(crate) mod piece;
pub mod wire;

/// Test helpers shared by the modules that write to streams.
#[cfg(test)]
pub(crate) mod testing {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::AsyncWrite;

    /// Keeps every write apart, as a yamux stream makes each one a frame.
    #[derive(Debug, Default)]
    pub(crate) struct Writes(pub(crate) Vec<Vec<u8>>);

    impl Writes {
        /// Everything written, in order.
        pub(crate) fn bytes(&self) -> Vec<u8> {
            self.0.concat()
        }
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(bytes.to_vec());
            Poll::Ready(Ok(bytes.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}
