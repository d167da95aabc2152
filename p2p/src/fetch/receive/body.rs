//! One body from the stream into a store sink: a small one read whole and
//! written on the spot, a bigger one in pieces through a blocking thread
//! that writes them, each piece within the pace the peer owes and charged
//! to the bytes in flight as it arrives. What the peer owes on the way is
//! told to the books ([`Promises`]): a body is owed once its header is in,
//! and once every byte is (or we stop reading), what follows is ours.

use std::io::{self, Write};
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::reports::Reports;
use crate::fetch::exchange::RequestKey;
use crate::fetch::in_flight::Holding;
use crate::fetch::pace::Pace;
use crate::fetch::promise::Promise;
use crate::ids::OutputId;
use crate::protocol::compress;
use crate::protocol::piece::{Piece, QUEUE, SMALL_BODY};
use crate::protocol::wire::CHUNK_SIZE;
use crate::store::{BodySink, CommitError};

/// What became of a body that arrived whole.
#[derive(Debug)]
pub(crate) enum Received {
    /// Verified and stored.
    Committed,
    /// Not the announced body: nothing stored.
    Mismatch { actual: OutputId },
    /// Refused by the store's own checks: nothing stored.
    Refused(String),
    /// The store could not take it (the sender is not to blame).
    NotStored(io::Error),
    /// Agreement is on and nothing confirmed its mapping: not stored.
    Unconfirmed,
}

/// A body to receive, and what governs it.
pub(crate) struct Body<'a> {
    pub(crate) size: u64,
    /// Sent in chunks ([`crate::protocol::compress`]), not raw.
    pub(crate) compressed: bool,
    /// How long the peer, and our side, may take over it.
    pub(crate) pace: Pace,
    /// Its share of the bytes in flight, charged as pieces arrive.
    pub(crate) holding: Holding,
    /// Told that the body is owed, and then that every byte is in, or
    /// that we stopped reading: what follows is ours.
    pub(crate) promises: Promises<'a>,
}

/// Tells the books what the peer owes on one request.
pub(crate) struct Promises<'a> {
    pub(crate) reports: &'a Reports,
    pub(crate) request: RequestKey,
}

impl Promises<'_> {
    async fn tell(&self, promise: Promise) {
        self.reports.promise(self.request, promise).await;
    }
}

/// Reads `body` from `io`, raw or in chunks, into the sink that `begin`
/// opens, and commits it. An `Err` is a failed stream (truncated, reset,
/// the peer late with it, or given up on our side with the rest unread;
/// an `InvalidData` one for a chunk that is not its piece): nothing is
/// stored. Dropping the future part-way discards the body.
pub(crate) async fn receive<T, B>(io: &mut T, body: Body<'_>, begin: B) -> io::Result<Received>
where
    T: AsyncRead + Unpin,
    B: FnOnce() -> io::Result<Box<dyn BodySink>> + Send + 'static,
{
    let Body {
        size,
        compressed,
        mut pace,
        holding,
        promises,
    } = body;
    // Told before the peer's time starts, and after it ends: a wait for
    // room in the reports counts against nobody.
    promises.tell(Promise::Owed).await;
    if size <= SMALL_BODY {
        let piece = pace
            .wait_on_peer(size, read_piece(io, size as usize, compressed))
            .await?;
        promises.tell(Promise::Kept).await;
        if !holding.take(size) {
            return Ok(Received::NotStored(no_room()));
        }
        return Ok(store_whole(begin, &piece));
    }
    let holding = Arc::new(holding);
    let (full, mut queue) = mpsc::channel::<Piece>(QUEUE);
    let held = holding.clone();
    let writer = tokio::task::spawn_blocking(move || {
        // The body's bytes count as in flight until its sink is gone.
        let _held = held;
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
    // Why reading stopped early: the stream failed, or we gave up.
    let mut stopped = None;
    let mut gave_up = false;
    while remaining > 0 {
        let want = remaining.min(CHUNK_SIZE as u64);
        let piece = match pace
            .wait_on_peer(want, read_piece(io, want as usize, compressed))
            .await
        {
            Ok(piece) => piece,
            Err(error) => {
                stopped = Some(error);
                break;
            }
        };
        remaining -= want;
        if !holding.take(want) {
            (stopped, gave_up) = (Some(no_room()), true);
            break;
        }
        match pace.wait_on_us(full.send(piece)).await {
            Some(Ok(())) => {}
            // The writer stopped; it says why.
            Some(Err(_)) => {
                gave_up = true;
                break;
            }
            None => {
                let slow = "the body could not be written as fast as the transfer rate";
                (stopped, gave_up) = (Some(io::Error::other(slow)), true);
                break;
            }
        }
    }
    drop(full);
    if remaining == 0 || gave_up {
        // Every byte is in, or we stopped reading: what follows is ours.
        promises.tell(Promise::Kept).await;
    }
    let received = writer.await.map_err(io::Error::other)?;
    match (stopped, received) {
        (Some(error), _) => Err(error),
        // Given up on our side with the rest of it unread: the stream
        // cannot go on.
        (None, Some(Received::NotStored(error))) if remaining > 0 => Err(io::Error::other(
            format!("body not stored, {remaining} bytes of it left unread: {error}"),
        )),
        (None, Some(received)) => Ok(received),
        (None, None) => Err(io::Error::other("body writer stopped early")),
    }
}

/// A body given up on our side because the bytes in flight are at their
/// limit; not the peer's fault.
fn no_room() -> io::Error {
    io::Error::new(
        io::ErrorKind::QuotaExceeded,
        "too many bytes of other bodies on their way",
    )
}

/// The next `len` bytes of a body (a piece, or a whole small body).
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
        Err(CommitError::Refused(why)) => Received::Refused(why),
        Err(CommitError::Io(error)) => Received::NotStored(error),
        Err(CommitError::Unconfirmed) => Received::Unconfirmed,
    }
}
