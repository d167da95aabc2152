//! Body pieces: the unit in which bodies are read, hashed, compressed and
//! written, and the pool their buffers come from.
//!
//! A body of up to [`SMALL_BODY`] (most of a Go build) travels in one
//! piece, held whole; a bigger one moves in pieces of [`CHUNK_SIZE`]
//! through a small bounded queue ([`QUEUE`]) to or from one blocking
//! thread, so memory stays at a few pieces whatever the body's size. Piece
//! buffers come from a small process-wide pool and go back to it when
//! dropped: a buffer allocated per body is zeroed and page-faulted in anew
//! each time (the allocator hands such sizes back to the kernel), which
//! shows in a serving daemon's profile (docs/benchmarks.md, "Batches,
//! pooled piece buffers, summaries, the helpers' own thread").

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use crate::protocol::wire::CHUNK_SIZE;

/// Bodies that fit in one piece are moved in one piece, held in memory
/// whole (at most one piece per stream, as for bigger bodies).
pub(crate) const SMALL_BODY: u64 = CHUNK_SIZE as u64;
/// Pieces queued between the stream and the blocking thread.
pub(crate) const QUEUE: usize = 4;
/// Piece buffers kept for reuse (4 MiB); more are freed.
const POOLED: usize = 16;

/// Free piece buffers, each [`CHUNK_SIZE`] bytes long.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The first `len` bytes of a pooled buffer; the buffer goes back to the
/// pool when the piece is dropped. Small bodies travel as one piece.
#[derive(Debug)]
pub(crate) struct Piece {
    buffer: Vec<u8>,
    len: usize,
}

impl Piece {
    /// A piece of `len` (at most [`CHUNK_SIZE`]) bytes, contents unspecified.
    pub(crate) fn new(len: usize) -> Self {
        debug_assert!(len <= CHUNK_SIZE);
        let buffer = POOL
            .lock()
            .expect("lock not poisoned")
            .pop()
            .unwrap_or_else(|| vec![0; CHUNK_SIZE]);
        Self { buffer, len }
    }

    /// Keeps the first `len` bytes.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Deref for Piece {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl DerefMut for Piece {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[..self.len]
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        let mut pool = POOL.lock().expect("lock not poisoned");
        if pool.len() < POOLED {
            pool.push(std::mem::take(&mut self.buffer));
        }
    }
}
