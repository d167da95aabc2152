//! The serving side of one exchange: writing the answer for each action a
//! peer asked for, and the bodies that go with them.
//!
//! The event loop checks the allowlist and the serving cap and hands the
//! node's codec a [`Reply`]; [`Server::send_reply`] then looks each action
//! up in turn ([`crate::serve::answer`]) and writes its answer:
//!
//! - **Small bodies** (up to [`SMALL_BODY`](crate::protocol::piece::SMALL_BODY), most of a Go build) were read
//!   and hashed whole before the answer; they go out with their header.
//! - **Bigger bodies** stream from their file in pieces through one
//!   blocking thread that reads and hashes them ([`send_file`]); the last
//!   piece is sent only once the hash is known to match, so a damaged file
//!   makes the server reset the stream and the requester sees a failed
//!   transfer, never a whole corrupt body.
//! - **Writes are gathered** ([`Outbox`]): headers and small bodies go to
//!   the stream in as few writes as fit in a yamux frame, since every write
//!   becomes a frame, a Noise message and a TCP send of its own (a batch of
//!   small entries written apart took 3 sends each).

use std::fs::File;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use futures::{AsyncWrite, AsyncWriteExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::ids::{ActionId, OutputId};
use crate::protocol::compress::Chunk;
use crate::protocol::metered::Traffic;
use crate::protocol::piece::{Piece, QUEUE};
use crate::protocol::wire::{
    self, CHUNK_SIZE, Encoding, FoundHeader, ResponseHeader, WIRE_VERSION,
};
use crate::serve::answer::{self, Outgoing, Prepared};
use crate::store::Store;

/// What a server sends: an answer for each of `actions`, in order.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) actions: Vec<ActionId>,
    pub(crate) max_inline: u64,
    /// Read-ahead hints asked for.
    pub(crate) hints: u32,
    /// Send bodies compressed (the requester accepts zstd).
    pub(crate) compress: bool,
    /// Answer "not found" to every action without looking (the node is
    /// serving all it may).
    pub(crate) refuse: bool,
    /// The bodies sent so far, for the node's counters.
    pub(crate) sent: SentLog,
    /// The answer's bytes are counted there as they are written.
    pub(crate) traffic: Arc<Traffic>,
}

/// Bodies a server sent in one exchange, `(action, bytes)` each, in order.
pub(crate) type SentLog = Arc<Mutex<Vec<(ActionId, u64)>>>;

/// Writes replies from the local store.
#[derive(Clone)]
pub(crate) struct Server {
    pub(crate) store: Arc<dyn Store>,
}

impl Server {
    /// Writes the answer for each action of `reply` in turn: headers and
    /// small bodies gathered into as few writes as they fit in (see
    /// [`Outbox`]), each big body streamed after what came before it.
    pub(crate) async fn send_reply<T>(&self, io: &mut T, reply: Reply) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let last = reply.actions.len().saturating_sub(1);
        let mut last_held = None;
        let mut outbox = Outbox::default();
        // Bodies gathered, counted as sent once they are written.
        let mut gathered = Vec::new();
        for (index, action) in reply.actions.iter().enumerate() {
            let Prepared { found, body } = if reply.refuse {
                Prepared::not_found()
            } else {
                answer::prepare(&*self.store, action, reply.max_inline)
            };
            if found.is_some() {
                last_held = Some(action);
            }
            let hints = match (index == last, last_held) {
                (true, Some(held)) if reply.hints > 0 => self
                    .store
                    .following(held, reply.hints.min(wire::MAX_HINTS) as usize),
                _ => Vec::new(),
            };
            let (next, next_executables) = wire::split_hints(&hints);
            let compress = reply.compress && body.is_some();
            let header = ResponseHeader {
                version: WIRE_VERSION,
                found: found.map(|found| FoundHeader {
                    encoding: if compress {
                        Encoding::Zstd
                    } else {
                        Encoding::Raw
                    },
                    ..found
                }),
                next,
                next_executables,
            };
            outbox.header(&header)?;
            match (header.found, body) {
                (Some(found), Some(Outgoing::Bytes(piece))) => {
                    outbox.body(io, piece, compress).await?;
                    gathered.push((*action, found.size));
                }
                (Some(found), Some(Outgoing::File(file))) => {
                    outbox.write(io).await?;
                    record_sent(&reply, &mut gathered);
                    let (store, action_id, output) = (self.store.clone(), *action, found.output);
                    let damaged = move |file: &File| store.damaged(&action_id, &output, file);
                    let sent =
                        send_file(io, file, found.output, found.size, compress, damaged).await;
                    if let Err(error) = &sent {
                        // The store tells its user of a damaged body.
                        tracing::debug!(
                            action = action.to_hex(),
                            "stopped serving a body: {error}"
                        );
                    }
                    sent?;
                    gathered.push((*action, found.size));
                    record_sent(&reply, &mut gathered);
                }
                _ => {}
            }
            // What is gathered goes out when a frame's worth has come
            // together, and at the end; the entries of a batch are read
            // from the page cache one after another, tens of microseconds
            // apart, so a small entry waits little for the ones after it.
            if outbox.len() >= Outbox::LIMIT || index == last {
                outbox.flush(io).await?;
                record_sent(&reply, &mut gathered);
            }
        }
        Ok(())
    }
}

/// Moves bodies written to the stream into the reply's log of bodies sent.
fn record_sent(reply: &Reply, written: &mut Vec<(ActionId, u64)>) {
    if !written.is_empty() {
        reply
            .sent
            .lock()
            .expect("lock not poisoned")
            .append(written);
    }
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
        crate::protocol::wire::encode_frame(&mut self.buffer, header)
    }

    /// Gathers a small body (read whole and verified already) after its
    /// header, raw or (`compress`) as one chunk ([`crate::protocol::compress`]). One
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
/// or (`compress`) in chunks ([`crate::protocol::compress`]), and flushes. A file
/// that is shorter, unreadable or does not hash to `output` is an error
/// before its last piece is sent (an [`is_damaged`] one for a hash
/// mismatch, after `damaged` was called with the file on the reading
/// thread), and the caller's error resets the stream.
pub(crate) async fn send_file<T>(
    io: &mut T,
    mut file: File,
    output: OutputId,
    size: u64,
    compress: bool,
    damaged: impl FnOnce(&File) + Send + 'static,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
{
    let (full, mut queue) = mpsc::channel::<Chunk>(QUEUE);
    let reader = tokio::task::spawn_blocking(move || {
        let read = read_verified(&mut file, size, output, compress, &full);
        if read.as_ref().is_err_and(is_damaged) {
            damaged(&file);
        }
        read
    });
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
    file: &mut File,
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

#[cfg(test)]
mod tests;
