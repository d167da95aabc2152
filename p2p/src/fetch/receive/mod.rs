//! The requesting side of one exchange: reading a peer's answer, and the
//! body that comes with it, into the store.
//!
//! The node's codec ([`crate::node::codec`]) hands each response stream
//! here with what was asked ([`Pending`]). For each action asked for (one,
//! or a batch of them; see [`crate::protocol::wire`]):
//!
//! 1. read the header by its deadline (the lookup's for the first; for each
//!    later one of a batch, a fresh one after the previous entry); "not
//!    found" and "found, not included" end there;
//! 2. refuse a body bigger than `max_body_size`, than the `max_inline` we
//!    asked for, or (replication) than the size the peer's catalog listed,
//!    before reading a byte of it;
//! 3. move the body into a sink from [`Bodies::begin`](crate::Bodies::begin):
//!    a small one whole, a bigger one in pieces through a blocking thread
//!    ([`receive`]), each piece at the pace the peer owes
//!    ([`crate::fetch::pace`]) and charged to the bytes in flight as it
//!    arrives ([`crate::fetch::in_flight`]);
//! 4. commit it: the sink stores it only if exactly `size` bytes arrived and
//!    their SHA-256 is the announced OutputID.
//!
//! A single request's outcome is its [`Answer`]. A batch reports each
//! entry's outcome to the event loop as soon as it is known ([`Report`]), so
//! a lookup waiting for one entry of a batch is answered when that entry
//! lands, not when the batch ends; a batch stops at the first body that
//! does not verify.
//!
//! A cancelled fetch (another peer won, or the lookup gave up) drops the
//! sink, which discards what it held. Failures of the stream are `io`
//! errors (a miss); a body that arrived but did not verify is an
//! [`Outcome::Rejected`] so the node can put that peer in cooldown. A
//! peer that fell behind on a body it owes fails the stream with an error
//! that says so ([`failure_of`]): it is put in cooldown too. A body we give
//! up on our side (no room in flight, our disk too slow) ends the stream
//! as well, since the rest of it is left unread, and blames nobody.
//! What the peer has said so far is kept in the request's [`Promise`].

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt};
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fetch::agreement::{Agreeing, Claims};
use crate::fetch::books::Failure;
use crate::fetch::in_flight::{Holding, InFlight};
use crate::fetch::link::LinkMeter;
use crate::fetch::pace::{Lateness, Pace, STALL};
use crate::fetch::promise::Promise;
use crate::ids::{ActionId, OutputId};
use crate::protocol::compress;
use crate::protocol::metered::{Metered, Traffic};
use crate::protocol::piece::{Piece, QUEUE, SMALL_BODY};
use crate::protocol::wire::{
    self, BATCH_VERSION, CHUNK_SIZE, Encoding, FoundHeader, ResponseHeader, WIRE_VERSION,
};
use crate::store::{BodySink, CommitError, Store};

/// Why a received body was refused. A peer that causes one is put in cooldown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The body's SHA-256 is not the OutputID it was announced with.
    HashMismatch {
        expected: OutputId,
        actual: OutputId,
    },
    /// The peer sent a body bigger than this node's `max_body_size`.
    TooLarge { size: u64, limit: u64 },
    /// The peer sent a body bigger than the `max_inline` it was asked for.
    Unrequested { size: u64, max_inline: u64 },
    /// The peer announced a body bigger than the size its catalog listed
    /// for the entry (replication plans its budgets from those sizes).
    LargerThanListed { size: u64, listed: u64 },
    /// The peer sent a compressed body whose chunks do not decode to it.
    Undecodable(String),
    /// The peer announced a body and then fell behind on it: a piece took
    /// over 2 s, or the body fell behind the transfer rate (see
    /// `fetch::pace`), or the peer did not deliver it by a deadline.
    Stalled,
    /// The body verified, but the store found it wrong for its action.
    Refused(String),
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HashMismatch { expected, actual } => write!(
                f,
                "body hashes to {}, not its OutputID {}",
                actual.to_hex(),
                expected.to_hex()
            ),
            Self::TooLarge { size, limit } => {
                write!(f, "body of {size} bytes is over the {limit} byte limit")
            }
            Self::Unrequested { size, max_inline } => write!(
                f,
                "body of {size} bytes sent although at most {max_inline} were asked for"
            ),
            Self::LargerThanListed { size, listed } => write!(
                f,
                "body of {size} bytes although its catalog listed {listed}"
            ),
            Self::Undecodable(detail) => write!(f, "compressed body does not decode: {detail}"),
            Self::Stalled => write!(
                f,
                "the body fell behind: a piece took over {STALL:?}, or the transfer rate was not kept"
            ),
            Self::Refused(why) => write!(f, "the store refused it: {why}"),
        }
    }
}

/// An entry as a peer described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) output: OutputId,
    pub(crate) size: u64,
    pub(crate) time_unix_nanos: u64,
}

impl From<&FoundHeader> for Meta {
    fn from(found: &FoundHeader) -> Self {
        Self {
            output: found.output,
            size: found.size,
            time_unix_nanos: found.time_unix_nanos,
        }
    }
}

/// The requesting side's context for one outbound request; never sent.
pub(crate) struct Local {
    /// The peer asked: fetched bodies are recorded as coming from it.
    pub(crate) peer: PeerId,
    /// The (first) response header must arrive before this.
    pub(crate) header_deadline: Instant,
    /// Cancelled when the fetch no longer needs this request.
    pub(crate) cancel: CancellationToken,
    /// What the peer has said so far: a lookup whose peer answered
    /// "found" waits for the transfer instead of giving up at its
    /// deadline, and a deadline is held against a peer that owes a body.
    pub(crate) promise: Arc<Promise>,
    /// For a batch (a header with `also`): where entries' outcomes go.
    pub(crate) batch: Option<BatchReports>,
    /// The peer's link: raw bodies' rates are recorded there.
    pub(crate) link: Arc<LinkMeter>,
    /// The answer's bytes are counted there as they arrive.
    pub(crate) traffic: Arc<Traffic>,
    /// For replication: the size each action's catalog listed, one per
    /// action asked for; a bigger body is refused.
    pub(crate) listed: Option<Vec<u64>>,
}

/// Where a batch's entries are reported, one [`Report`] each.
pub(crate) struct BatchReports {
    /// One per action asked for, `action` first; each report carries its
    /// entry's token.
    pub(crate) tokens: Vec<u64>,
    pub(crate) reports: mpsc::Sender<Report>,
    /// How long each header after the first may take, counted from the end
    /// of the entry before it.
    pub(crate) header_timeout: Duration,
}

/// What became of one entry of a batch.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) token: u64,
    pub(crate) outcome: Outcome,
}

/// What the requesting side made of a response.
#[derive(Debug)]
pub(crate) struct Answer {
    /// A single request's outcome; `None` for a batch, whose entries were
    /// reported one by one.
    pub(crate) outcome: Option<Outcome>,
    /// The server's read-ahead hints (at most as many as asked for).
    pub(crate) next: Vec<ActionId>,
    /// The wire version of the server's first header.
    pub(crate) version: u32,
}

/// What became of a response on the requesting side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    NotFound,
    /// Found, body not included (bigger than the `max_inline` asked for).
    Announced(Meta),
    /// The body arrived, verified, and was committed to the store.
    Committed(Meta),
    /// The body (of `bytes` bytes) arrived but was refused.
    Rejected {
        reason: RejectReason,
        bytes: u64,
    },
    /// The body verified but the local store could not take it.
    NotStored(Meta),
}

/// What `read_response` needs to know about the request it answers.
pub(crate) struct Pending {
    pub(crate) actions: Vec<ActionId>,
    pub(crate) max_inline: u64,
    pub(crate) hints: u32,
    /// Whether we accepted compressed bodies.
    pub(crate) compressed_ok: bool,
    pub(crate) local: Local,
}

/// Reads answers into the store, within this node's limits.
#[derive(Clone)]
pub(crate) struct Requester {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) max_body_size: u64,
    pub(crate) transfer_rate: u64,
    /// The bytes of bodies on their way, shared by every stream.
    pub(crate) in_flight: Arc<InFlight>,
    /// With agreement on: what peers that built an entry said of it, and a
    /// body is committed only if its mapping is agreed.
    pub(crate) agreement: Option<Arc<Claims>>,
}

impl Requester {
    /// Reads the answer to `pending` from `io`, counting its bytes on the
    /// peer's link, until it ends or the request is cancelled.
    pub(crate) async fn read_response<T>(&self, io: &mut T, pending: Pending) -> io::Result<Answer>
    where
        T: AsyncRead + Unpin + Send,
    {
        let cancel = pending.local.cancel.clone();
        let traffic = pending.local.traffic.clone();
        let io = &mut Metered::new(io, &traffic.received);
        let receive = async {
            match &pending.local.batch {
                None => self.receive(io, &pending).await,
                Some(batch) => self.receive_batch(io, &pending, batch).await,
            }
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(cancelled()),
            answer = receive => answer,
        }
    }

    /// Reads one header by `deadline`; keeps its hints (as many as asked).
    async fn read_header<T>(
        io: &mut T,
        pending: &Pending,
        deadline: Instant,
        next: &mut Vec<ActionId>,
    ) -> io::Result<ResponseHeader>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut header: ResponseHeader = tokio::time::timeout_at(deadline, wire::read_frame(io))
            .await
            .map_err(|_| Lateness::Header.error())??;
        if !header.next.is_empty() {
            *next = std::mem::take(&mut header.next);
            next.truncate(pending.hints.min(wire::MAX_HINTS) as usize);
        }
        Ok(header)
    }

    /// A single request's response.
    async fn receive<T>(&self, io: &mut T, pending: &Pending) -> io::Result<Answer>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut next = Vec::new();
        let header =
            Self::read_header(io, pending, pending.local.header_deadline, &mut next).await?;
        let version = header.version;
        let outcome = match header.found {
            None => {
                next.clear(); // Hints only come with a hit.
                Outcome::NotFound
            }
            Some(found) => self.receive_found(io, pending, 0, found).await?,
        };
        Ok(Answer {
            outcome: Some(outcome),
            next,
            version,
        })
    }

    /// A batch's response: each entry in turn, each reported at once.
    async fn receive_batch<T>(
        &self,
        io: &mut T,
        pending: &Pending,
        batch: &BatchReports,
    ) -> io::Result<Answer>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut next = Vec::new();
        let mut version = WIRE_VERSION;
        let mut deadline = pending.local.header_deadline;
        for (index, &token) in batch.tokens.iter().enumerate() {
            let header = Self::read_header(io, pending, deadline, &mut next).await?;
            if index == 0 {
                version = header.version;
            }
            let outcome = match header.found {
                None => Outcome::NotFound,
                Some(found) => self.receive_found(io, pending, index, found).await?,
            };
            let rejected = matches!(outcome, Outcome::Rejected { .. });
            if batch.reports.send(Report { token, outcome }).await.is_err() {
                return Err(cancelled()); // The node is stopping.
            }
            // A version-1 server answers the first action only; a peer that
            // sent a bad body is not read from any further.
            if rejected || version < BATCH_VERSION {
                break;
            }
            deadline = Instant::now() + batch.header_timeout;
            // With the next entry already buffered, nothing here would wait,
            // and on the daemon's one thread a batch would hold up helpers'
            // lookups until it ended: let them in between entries.
            tokio::task::yield_now().await;
        }
        Ok(Answer {
            outcome: None,
            next,
            version,
        })
    }

    /// The rest of a "found" answer for the action at `index` of those
    /// asked for.
    async fn receive_found<T>(
        &self,
        io: &mut T,
        pending: &Pending,
        index: usize,
        found: FoundHeader,
    ) -> io::Result<Outcome>
    where
        T: AsyncRead + Unpin + Send,
    {
        let Some(&action) = pending.actions.get(index) else {
            return Err(io::Error::other("an answer for an action not asked for"));
        };
        let meta = Meta::from(&found);
        // Before a claim counts or a byte of the body is read: the peer's
        // own catalog said it is no bigger.
        let listed = (pending.local.listed.as_ref()).and_then(|listed| listed.get(index));
        if let Some(&listed) = listed
            && found.size > listed
        {
            return Ok(Outcome::Rejected {
                reason: RejectReason::LargerThanListed {
                    size: found.size,
                    listed,
                },
                bytes: 0,
            });
        }
        if let Some(claims) = &self.agreement
            && found.built_here
        {
            claims.claim(
                action,
                pending.local.peer,
                found.output,
                std::time::Instant::now(),
            );
        }
        if !found.body_included {
            if found.size > self.max_body_size {
                tracing::debug!(size = found.size, "peer holds a body over our size limit");
                return Ok(Outcome::NotFound);
            }
            pending.local.promise.kept();
            return Ok(Outcome::Announced(meta));
        }
        if found.size > self.max_body_size {
            return Ok(Outcome::Rejected {
                reason: RejectReason::TooLarge {
                    size: found.size,
                    limit: self.max_body_size,
                },
                bytes: 0,
            });
        }
        if found.size > pending.max_inline {
            return Ok(Outcome::Rejected {
                reason: RejectReason::Unrequested {
                    size: found.size,
                    max_inline: pending.max_inline,
                },
                bytes: 0,
            });
        }
        let compressed = match found.encoding {
            Encoding::Raw => false,
            Encoding::Zstd if pending.compressed_ok => true,
            // Nothing of it can be read: the stream is out of step.
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("body sent as {other:?}, which was not asked for"),
                ));
            }
        };
        pending.local.promise.owed();
        let receiving = pending.local.link.receiving(compressed);
        let outcome = self
            .receive_body(io, &pending.local, action, meta, compressed)
            .await?;
        if let Outcome::Committed(_) = outcome {
            receiving.arrived(found.size);
        }
        Ok(outcome)
    }

    /// Streams `meta.size` body bytes into a store sink; see [`receive`].
    async fn receive_body<T>(
        &self,
        io: &mut T,
        local: &Local,
        action: ActionId,
        meta: Meta,
        compressed: bool,
    ) -> io::Result<Outcome>
    where
        T: AsyncRead + Unpin + Send,
    {
        let peer = local.peer;
        let store = self.store.clone();
        let from = peer;
        let agreement = self.agreement.clone();
        let begin = move || {
            let sink = store.begin(&action, &meta.output, meta.size, &from)?;
            Ok(match agreement {
                None => sink,
                Some(claims) => Box::new(Agreeing {
                    sink,
                    claims,
                    store,
                    action,
                    output: meta.output,
                }),
            })
        };
        let body = Body {
            size: meta.size,
            compressed,
            pace: Pace::new(meta.size, self.transfer_rate),
            holding: self.in_flight.open(),
            promise: &local.promise,
        };
        let received = match receive(io, body, begin).await {
            // A chunk that is not its piece: a bad body, like one that
            // does not hash to its OutputID.
            Err(error) if compressed && error.kind() == io::ErrorKind::InvalidData => {
                return Ok(Outcome::Rejected {
                    reason: RejectReason::Undecodable(error.to_string()),
                    bytes: meta.size,
                });
            }
            received => received?,
        };
        Ok(match received {
            Received::Committed => Outcome::Committed(meta),
            Received::Refused(why) => Outcome::Rejected {
                reason: RejectReason::Refused(why),
                bytes: meta.size,
            },
            Received::Mismatch { actual } => Outcome::Rejected {
                reason: RejectReason::HashMismatch {
                    expected: meta.output,
                    actual,
                },
                bytes: meta.size,
            },
            Received::NotStored(error) => {
                // The store reports its own faults (warren's: once in a
                // while, with a count); a full store fails every body.
                tracing::debug!("cannot store a fetched body: {error}");
                Outcome::NotStored(meta)
            }
            Received::Unconfirmed => {
                tracing::debug!(%peer, %action, "fetched body not stored: no second source agrees");
                Outcome::NotStored(meta)
            }
        })
    }
}

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
    /// Told once every byte is in, or we stop reading: what follows is
    /// ours.
    pub(crate) promise: &'a Promise,
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
        promise,
    } = body;
    if size <= SMALL_BODY {
        let piece = pace
            .wait_on_peer(size, read_piece(io, size as usize, compressed))
            .await?;
        promise.kept();
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
        promise.kept();
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

/// What a failed fetch request's `error` means for the books.
pub(crate) fn failure_of(error: &io::Error) -> Failure {
    match Lateness::of(error) {
        Some(Lateness::Body) => Failure::Stalled,
        Some(Lateness::Header) => Failure::TimedOut,
        None => Failure::Ended,
    }
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

pub(crate) fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "fetch cancelled")
}

#[cfg(test)]
pub(crate) mod tests;
