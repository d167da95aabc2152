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
//! - **Writes are gathered** ([`Outbox`]): a server's headers and small
//!   bodies go to the stream in as few writes as fit in a yamux frame,
//!   since every write becomes a frame, a Noise message and a TCP send of
//!   its own (a batch of small entries written apart took 3 sends each).
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
use crate::ids::OutputId;
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
    Mismatch { actual: OutputId },
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

/// A server's answers on their way to the stream, gathered into as few
/// writes as they allow. Each write on a yamux stream becomes a frame of
/// its own on the connection, and each frame a Noise message and a TCP
/// send: written apart, a small entry's header (its length, then its
/// JSON) and body cost three of each, and a batch of small entries (most
/// of a Go build's are a few bytes) three per entry.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    buffer: Vec<u8>,
}

impl Outbox {
    /// Most bytes gathered before they are written: yamux's frame size
    /// (its `split_send_size`), so one write is one frame.
    pub(crate) const LIMIT: usize = 16 * 1024;

    /// Bytes gathered and not written yet.
    pub(crate) fn len(&self) -> usize {
        self.buffer.len()
    }

    /// Gathers one header frame.
    pub(crate) fn header<H: serde::Serialize>(&mut self, header: &H) -> io::Result<()> {
        crate::wire::encode_frame(&mut self.buffer, header)
    }

    /// Gathers a small body (read whole and verified already) after its
    /// header, raw or (`compress`) as one chunk ([`crate::compress`]). One
    /// that does not fit is written at once, after what was gathered, so
    /// the buffer never grows past [`Self::LIMIT`] by more than a header.
    pub(crate) async fn body<T>(
        &mut self,
        io: &mut T,
        piece: Piece,
        compress: bool,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin,
    {
        let chunk = Chunk::encode(piece, compress);
        if self.buffer.len() + chunk.wire_len() <= Self::LIMIT {
            chunk.append_to(&mut self.buffer);
            return Ok(());
        }
        self.write(io).await?;
        chunk.write(io).await
    }

    /// Writes what is gathered, in one write.
    pub(crate) async fn write<T>(&mut self, io: &mut T) -> io::Result<()>
    where
        T: AsyncWrite + Unpin,
    {
        if !self.buffer.is_empty() {
            io.write_all(&self.buffer).await?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Writes what is gathered and flushes the stream.
    pub(crate) async fn flush<T>(&mut self, io: &mut T) -> io::Result<()>
    where
        T: AsyncWrite + Unpin,
    {
        self.write(io).await?;
        io.flush().await
    }
}

/// Sends `size` bytes of the open `file`, which must hash to `output`, raw
/// or (`compress`) in chunks ([`crate::compress`]), and flushes. A file
/// that is shorter, unreadable or does not hash to `output` is an error
/// before its last piece is sent (an [`is_damaged`] one for a hash
/// mismatch), and the caller's error resets the stream.
pub(crate) async fn send_file<T>(
    io: &mut T,
    file: File,
    output: OutputId,
    size: u64,
    compress: bool,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
{
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
    output: OutputId,
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
    let actual = OutputId::from_bytes(hasher.finalize().into());
    if actual != output {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "body hashes to {}, not its OutputID {}",
                actual.to_hex(),
                output.to_hex()
            ),
        ));
    }
    if let Some(last) = held {
        let _ = full.blocking_send(last);
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::testing::Writes;
    use super::*;

    fn piece(bytes: &[u8]) -> Piece {
        let mut piece = Piece::new(bytes.len());
        piece.copy_from_slice(bytes);
        piece
    }

    #[tokio::test]
    async fn small_answers_are_gathered_into_one_write() {
        let mut io = Writes::default();
        let mut outbox = Outbox::default();
        let mut expected = Vec::new();
        for n in 0..10u8 {
            let header = serde_json::json!({ "entry": n });
            outbox.header(&header).unwrap();
            crate::wire::encode_frame(&mut expected, &header).unwrap();
            outbox.body(&mut io, piece(&[n; 9]), false).await.unwrap();
            expected.extend_from_slice(&[n; 9]);
        }
        assert!(io.0.is_empty(), "nothing is written before it is asked for");
        outbox.flush(&mut io).await.unwrap();
        assert_eq!(io.0, [expected]);
        assert_eq!(outbox.len(), 0);
        // Nothing gathered, nothing written.
        outbox.flush(&mut io).await.unwrap();
        assert_eq!(io.0.len(), 1);
    }

    #[tokio::test]
    async fn a_body_that_does_not_fit_goes_out_after_what_came_before() {
        let mut io = Writes::default();
        let mut outbox = Outbox::default();
        outbox.header(&"first").unwrap();
        outbox.body(&mut io, piece(b"small"), false).await.unwrap();
        outbox.header(&"second").unwrap();
        let big = vec![3; Outbox::LIMIT];
        outbox.body(&mut io, piece(&big), false).await.unwrap();
        // The gathered bytes (both headers, the small body), then the big
        // body as it was: in order, never copied into the buffer.
        assert_eq!(io.0.len(), 2);
        assert!(io.0[0].ends_with(b"\"second\""), "{:?}", io.0[0]);
        assert_eq!(io.0[1], big);
        assert_eq!(outbox.len(), 0);
        // Compressed bodies are gathered as their chunks.
        outbox.header(&"third").unwrap();
        outbox.body(&mut io, piece(&[0; 4096]), true).await.unwrap();
        outbox.flush(&mut io).await.unwrap();
        let mut wire = Cursor::new(io.0[2][4 + "\"third\"".len()..].to_vec());
        let inflated = compress::read_chunk(&mut wire, 4096).await.unwrap();
        assert!(inflated.iter().all(|&b| b == 0));
        assert!(io.0[2].len() < 4096 / 4);
    }

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
    /// `send_file` returned, and what went out.
    async fn send_path(
        path: &std::path::Path,
        output: OutputId,
        size: usize,
        compress: bool,
    ) -> (io::Result<()>, Vec<u8>) {
        let mut sent = Cursor::new(Vec::new());
        let file = File::open(path).unwrap();
        let result = super::send_file(&mut sent, file, output, size as u64, compress).await;
        (result, sent.into_inner())
    }

    #[tokio::test]
    async fn damaged_files_are_cut_off_before_their_last_piece() {
        let (_dir, path, body) = body_file();
        let (result, sent) =
            send_path(&path, OutputId::from_bytes([0; 32]), body.len(), false).await;
        let error = result.unwrap_err();
        assert!(is_damaged(&error), "{error}");
        // Everything but the last piece went out; the body never arrives whole.
        assert_eq!(sent.len(), CHUNK_SIZE * 3);

        let (result, sent) = send_path(&path, OutputId::of(&body), body.len(), false).await;
        result.unwrap();
        assert_eq!(sent, body);
    }

    #[tokio::test]
    async fn damaged_files_are_cut_off_when_compressed_too() {
        let (_dir, path, body) = body_file();
        let (result, sent) =
            send_path(&path, OutputId::from_bytes([0; 32]), body.len(), true).await;
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
        let (result, sent) = send_path(&path, OutputId::of(b"short"), 50, false).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(sent.is_empty());
    }
}
