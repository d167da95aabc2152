//! Moving one body between a libp2p stream and the disk.
//!
//! Both directions keep file I/O and hashing off the async thread and keep
//! memory at a few pieces whatever the body's size:
//!
//! - **Small bodies** (up to [`SMALL_BODY`], most of a Go build) travel in
//!   one piece: the receiver reads the whole body, then stores it right on
//!   the async thread; the server read and hashed it before answering. That
//!   is a few file operations of tens of microseconds in all, where a
//!   round trip through the blocking pool cost about 0.25 ms on a busy
//!   2-core machine: most of a small fetch (docs/benchmarks.md).
//! - **Bigger bodies** stream in [`CHUNK_SIZE`] pieces through a small
//!   bounded queue to or from one blocking thread, which writes into the
//!   store's sink (receiving) or reads and hashes the file (serving). Piece
//!   buffers come from a small process-wide pool and go back to it when
//!   dropped: a buffer allocated per body was zeroed and page-faulted in
//!   anew each time (the allocator hands such sizes back to the kernel),
//!   a tenth of a serving daemon's CPU in a profile of a from-peer build.
//!
//! Verification: a received body is checked by the store's sink on
//! [`BodySink::commit`] (see [`crate::store`]). A served file is hashed as
//! it is read, and its last piece is sent only once the hash is known to
//! match: a damaged file makes the server reset the stream instead, so the
//! requester sees a failed transfer, never a whole corrupt body.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::compress::{self, Chunk};
use crate::store::{BodySink, CommitError};
use crate::wire::CHUNK_SIZE;

/// Bodies that fit in one piece are moved in one piece, held in memory
/// whole (at most one piece per stream, as for bigger bodies).
pub(crate) const SMALL_BODY: u64 = CHUNK_SIZE as u64;
/// Pieces queued between the stream and the blocking thread.
const QUEUE: usize = 4;
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

/// What became of a body that arrived whole.
#[derive(Debug)]
pub(crate) enum Received {
    /// Verified and stored.
    Committed,
    /// Not the announced body: nothing stored.
    Mismatch { actual: [u8; 32] },
    /// The store could not take it (the sender is not to blame).
    NotStored(io::Error),
}

/// Reads a body of `size` bytes from `io`, raw or (`compressed`) in
/// chunks ([`crate::compress`]), into the sink that `begin` opens, and
/// commits it. An `Err` is a failed stream (truncated, reset; an
/// `InvalidData` one for a chunk that is not its piece): nothing is
/// stored. Dropping the future part-way discards the body.
pub(crate) async fn receive<T, B>(
    io: &mut T,
    size: u64,
    compressed: bool,
    begin: B,
) -> io::Result<Received>
where
    T: AsyncRead + Unpin,
    B: FnOnce() -> io::Result<Box<dyn BodySink>> + Send + 'static,
{
    if size <= SMALL_BODY {
        let body = read_piece(io, size as usize, compressed).await?;
        return Ok(store_whole(begin, &body));
    }
    let (full, mut queue) = mpsc::channel::<Piece>(QUEUE);
    let writer = tokio::task::spawn_blocking(move || {
        let mut sink = match begin() {
            Ok(sink) => sink,
            Err(error) => return Some(Received::NotStored(error)),
        };
        let mut written = 0;
        while let Some(piece) = queue.blocking_recv() {
            if let Err(error) = sink.write_all(&piece) {
                return Some(Received::NotStored(error));
            }
            written += piece.len() as u64;
        }
        // The stream side stopped early (failed or was cancelled): the
        // sink is dropped, which discards the partial body.
        (written == size).then(|| commit(sink))
    });
    let mut remaining = size;
    let mut read_error = None;
    while remaining > 0 {
        let want = remaining.min(CHUNK_SIZE as u64) as usize;
        let piece = match read_piece(io, want, compressed).await {
            Ok(piece) => piece,
            Err(error) => {
                read_error = Some(error);
                break;
            }
        };
        remaining -= want as u64;
        if full.send(piece).await.is_err() {
            break; // The writer stopped; it says why.
        }
    }
    drop(full);
    let received = writer.await.map_err(io::Error::other)?;
    match (read_error, received) {
        (Some(error), _) => Err(error),
        (None, Some(received)) => Ok(received),
        (None, None) => Err(io::Error::other("body writer stopped early")),
    }
}

/// The next `len` bytes of a body.
async fn read_piece<T>(io: &mut T, len: usize, compressed: bool) -> io::Result<Piece>
where
    T: AsyncRead + Unpin,
{
    if compressed {
        return compress::read_chunk(io, len).await;
    }
    let mut piece = Piece::new(len);
    io.read_exact(&mut piece).await?;
    Ok(piece)
}

fn store_whole<B>(begin: B, body: &[u8]) -> Received
where
    B: FnOnce() -> io::Result<Box<dyn BodySink>>,
{
    let stored = begin().and_then(|mut sink| {
        sink.write_all(body)?;
        Ok(sink)
    });
    match stored {
        Ok(sink) => commit(sink),
        Err(error) => Received::NotStored(error),
    }
}

fn commit(sink: Box<dyn BodySink>) -> Received {
    match sink.commit() {
        Ok(()) => Received::Committed,
        Err(CommitError::Mismatch { actual, .. }) => Received::Mismatch { actual },
        Err(CommitError::Io(error)) => Received::NotStored(error),
    }
}

/// A body a server is about to send.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Read whole and already verified.
    Bytes(Piece),
    /// An open file, to be verified as it is sent.
    File(File),
}

/// Why a served body was cut off.
pub(crate) fn is_damaged(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::InvalidData
}

/// Sends `size` bytes of `body`, which must hash to `output`, raw or
/// (`compress`) in chunks ([`crate::compress`]). A file that is shorter,
/// unreadable or does not hash to `output` is an error before its last
/// piece is sent (an [`is_damaged`] one for a hash mismatch), and the
/// caller's error resets the stream.
pub(crate) async fn send<T>(
    io: &mut T,
    body: Outgoing,
    output: [u8; 32],
    size: u64,
    compress: bool,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
{
    let file = match body {
        Outgoing::Bytes(bytes) => {
            Chunk::encode(bytes, compress).write(io).await?;
            return io.flush().await;
        }
        Outgoing::File(file) => file,
    };
    let (full, mut queue) = mpsc::channel::<Chunk>(QUEUE);
    let reader =
        tokio::task::spawn_blocking(move || read_verified(file, size, output, compress, &full));
    let mut sent = Ok(());
    while let Some(chunk) = queue.recv().await {
        if let Err(error) = chunk.write(io).await {
            sent = Err(error);
            break;
        }
    }
    // Stops the reader if the stream failed.
    drop(queue);
    let read = reader.await.map_err(io::Error::other)?;
    sent?;
    read?;
    io.flush().await
}

/// The serving side's blocking reader: pieces of `file` into `full`
/// (compressed if `compress`), holding the last one back until the whole
/// body has hashed to `output`.
fn read_verified(
    mut file: File,
    size: u64,
    output: [u8; 32],
    compress: bool,
    full: &mpsc::Sender<Chunk>,
) -> io::Result<()> {
    let mut hasher = Sha256::new();
    let mut remaining = size;
    let mut held: Option<Chunk> = None;
    while remaining > 0 {
        let want = remaining.min(CHUNK_SIZE as u64) as usize;
        let mut piece = Piece::new(want);
        file.read_exact(&mut piece).map_err(|error| {
            if error.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body file is shorter than its entry says",
                )
            } else {
                error
            }
        })?;
        hasher.update(&*piece);
        remaining -= want as u64;
        if let Some(previous) = held.replace(Chunk::encode(piece, compress))
            && full.blocking_send(previous).is_err()
        {
            return Ok(()); // The stream side stopped; it reports why.
        }
    }
    let actual: [u8; 32] = hasher.finalize().into();
    if actual != output {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "body hashes to {}, not its OutputID {}",
                hex::encode(actual),
                hex::encode(output)
            ),
        ));
    }
    if let Some(last) = held {
        let _ = full.blocking_send(last);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;

    /// A file of three pieces and a bit, in a directory kept alive by
    /// the returned guard.
    fn body_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        let body = vec![7u8; CHUNK_SIZE * 3 + 10];
        File::create(&path).unwrap().write_all(&body).unwrap();
        (dir, path, body)
    }

    /// Sends the file at `path` as a body hashing to `output`: what
    /// `send` returned, and what went out.
    async fn send_file(
        path: &std::path::Path,
        output: [u8; 32],
        size: usize,
        compress: bool,
    ) -> (io::Result<()>, Vec<u8>) {
        let mut sent = Cursor::new(Vec::new());
        let file = Outgoing::File(File::open(path).unwrap());
        let result = send(&mut sent, file, output, size as u64, compress).await;
        (result, sent.into_inner())
    }

    #[tokio::test]
    async fn damaged_files_are_cut_off_before_their_last_piece() {
        let (_dir, path, body) = body_file();
        let (result, sent) = send_file(&path, [0; 32], body.len(), false).await;
        let error = result.unwrap_err();
        assert!(is_damaged(&error), "{error}");
        // Everything but the last piece went out; the body never arrives whole.
        assert_eq!(sent.len(), CHUNK_SIZE * 3);

        let (result, sent) =
            send_file(&path, Sha256::digest(&body).into(), body.len(), false).await;
        result.unwrap();
        assert_eq!(sent, body);
    }

    #[tokio::test]
    async fn damaged_files_are_cut_off_when_compressed_too() {
        let (_dir, path, body) = body_file();
        let (result, sent) = send_file(&path, [0; 32], body.len(), true).await;
        let error = result.unwrap_err();
        assert!(is_damaged(&error), "{error}");
        // The first three pieces decode; the last never came.
        let mut sent = Cursor::new(sent);
        for _ in 0..3 {
            let piece = compress::read_chunk(&mut sent, CHUNK_SIZE).await.unwrap();
            assert!(piece.iter().all(|&b| b == 7));
        }
        let error = compress::read_chunk(&mut sent, 10).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn short_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        File::create(&path).unwrap().write_all(b"short").unwrap();
        let (result, sent) = send_file(&path, Sha256::digest(b"short").into(), 50, false).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(sent.is_empty());
    }
}
