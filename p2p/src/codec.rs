//! The request-response codec that streams bodies instead of buffering them.
//!
//! `libp2p-request-response` runs one codec clone per stream: on the
//! requesting side it calls `write_request` and then `read_response` on the
//! same clone, which is how `read_response` learns what was asked
//! ([`FetchCodec::pending`]). Reading a response does the real work of a
//! fetch on the connection's own task, off the event loop, for each action
//! asked for (one, or a batch of them; see [`crate::wire`]):
//!
//! 1. read the header by its deadline (the lookup's for the first; for each
//!    later one of a batch, a fresh one after the previous entry); "not
//!    found" and "found, not included" end there;
//! 2. refuse a body bigger than `max_body_size` or than the `max_inline` we
//!    asked for, before reading a byte of it;
//! 3. move the body into a sink from [`Store::begin`] ([`crate::body`]:
//!    memory stays at a few pieces whatever the body's size), within the
//!    transfer timeout for its size;
//! 4. commit it: the sink stores it only if exactly `size` bytes arrived
//!    and their SHA-256 is the announced OutputID.
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
//! [`Outcome::Rejected`] so the node can put that peer in cooldown.
//!
//! On the serving side the event loop hands the codec a [`Reply`]: the
//! actions to answer, which the codec looks up one at a time as it writes
//! ([`crate::answer`]), streaming big bodies with [`crate::body::send_file`].

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::answer::{self, Prepared};
use crate::body::{self, Outgoing, Received};
use crate::config::transfer_timeout;
use crate::ids::{ActionId, OutputId};
use crate::link::LinkMeter;
use crate::metered::{Metered, Traffic};
use crate::store::Store;
use crate::wire::{
    self, BATCH_VERSION, Encoding, FoundHeader, RequestHeader, ResponseHeader, WIRE_VERSION,
};

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
    /// The peer sent a compressed body whose chunks do not decode to it.
    Undecodable(String),
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
            Self::Undecodable(detail) => write!(f, "compressed body does not decode: {detail}"),
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

/// A request: the header that goes on the wire and, on the requesting side,
/// how its response is to be handled.
pub(crate) struct Request {
    pub(crate) header: RequestHeader,
    /// `None` for requests read from a peer.
    pub(crate) local: Option<Local>,
}

/// The requesting side's context for one outbound request; never sent.
pub(crate) struct Local {
    /// The (first) response header must arrive before this.
    pub(crate) header_deadline: Instant,
    /// Cancelled when the fetch no longer needs this request.
    pub(crate) cancel: CancellationToken,
    /// Set once the peer answered "found": the lookup then waits for the
    /// transfer instead of giving up at its deadline.
    pub(crate) positive: Arc<AtomicBool>,
    /// For a batch (a header with `also`): where entries' outcomes go.
    pub(crate) batch: Option<BatchReports>,
    /// The peer's link: raw bodies' rates are recorded there.
    pub(crate) link: Arc<LinkMeter>,
    /// The answer's bytes are counted there as they arrive.
    pub(crate) traffic: Arc<Traffic>,
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

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("action", &self.header.action.to_hex())
            .field("also", &self.header.also.len())
            .field("max_inline", &self.header.max_inline)
            .finish_non_exhaustive()
    }
}

/// A response: what the serving side writes, or what the requesting side
/// made of what it read.
#[derive(Debug)]
pub(crate) enum Response {
    Reply(Reply),
    Answer(Answer),
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
struct Pending {
    actions: Vec<ActionId>,
    max_inline: u64,
    hints: u32,
    /// Whether we accepted compressed bodies.
    compressed_ok: bool,
    local: Local,
}

/// The fetch protocol's codec; see the module docs.
pub(crate) struct FetchCodec {
    store: Arc<dyn Store>,
    max_body_size: u64,
    transfer_rate: u64,
    /// Set by `write_request`, taken by `read_response` (same clone).
    pending: Option<Pending>,
}

impl Clone for FetchCodec {
    /// A fresh codec for a new stream: nothing pending.
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            max_body_size: self.max_body_size,
            transfer_rate: self.transfer_rate,
            pending: None,
        }
    }
}

impl FetchCodec {
    pub(crate) fn new(store: Arc<dyn Store>, max_body_size: u64, transfer_rate: u64) -> Self {
        Self {
            store,
            max_body_size,
            transfer_rate,
            pending: None,
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
            .map_err(|_| timed_out("no answer by its deadline"))??;
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
            Some(found) => {
                self.receive_found(io, pending, pending.actions[0], found)
                    .await?
            }
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
        for (index, (&action, &token)) in pending.actions.iter().zip(&batch.tokens).enumerate() {
            let header = Self::read_header(io, pending, deadline, &mut next).await?;
            if index == 0 {
                version = header.version;
                pending.local.positive.store(true, Ordering::Relaxed);
            }
            let outcome = match header.found {
                None => Outcome::NotFound,
                Some(found) => self.receive_found(io, pending, action, found).await?,
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

    /// The rest of a "found" answer for `action`.
    async fn receive_found<T>(
        &self,
        io: &mut T,
        pending: &Pending,
        action: ActionId,
        found: FoundHeader,
    ) -> io::Result<Outcome>
    where
        T: AsyncRead + Unpin + Send,
    {
        let meta = Meta::from(&found);
        if !found.body_included {
            if found.size > self.max_body_size {
                tracing::debug!(size = found.size, "peer holds a body over our size limit");
                return Ok(Outcome::NotFound);
            }
            pending.local.positive.store(true, Ordering::Relaxed);
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
        pending.local.positive.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + transfer_timeout(found.size, self.transfer_rate);
        let receiving = pending.local.link.receiving(compressed);
        let outcome =
            tokio::time::timeout_at(deadline, self.receive_body(io, action, meta, compressed))
                .await
                .map_err(|_| timed_out("body not received within its transfer timeout"))??;
        if let Outcome::Committed(_) = outcome {
            receiving.arrived(found.size);
        }
        Ok(outcome)
    }

    /// Streams `meta.size` body bytes into a store sink; see [`crate::body`].
    async fn receive_body<T>(
        &self,
        io: &mut T,
        action: ActionId,
        meta: Meta,
        compressed: bool,
    ) -> io::Result<Outcome>
    where
        T: AsyncRead + Unpin + Send,
    {
        let store = self.store.clone();
        let begin = move || store.begin(&action, &meta.output, meta.size);
        let received = match body::receive(io, meta.size, compressed, begin).await {
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
            Received::Mismatch { actual } => Outcome::Rejected {
                reason: RejectReason::HashMismatch {
                    expected: meta.output,
                    actual,
                },
                bytes: meta.size,
            },
            Received::NotStored(error) => {
                tracing::warn!("cannot store a fetched body: {error}");
                Outcome::NotStored(meta)
            }
        })
    }

    /// Writes the answer for each action of `reply` in turn: headers and
    /// small bodies gathered into as few writes as they fit in (see
    /// [`body::Outbox`]), each big body streamed after what came before it.
    async fn send_reply<T>(&self, io: &mut T, reply: Reply) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let last = reply.actions.len().saturating_sub(1);
        let mut last_held = None;
        let mut outbox = body::Outbox::default();
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
            let next = match (index == last, last_held) {
                (true, Some(held)) if reply.hints > 0 => self
                    .store
                    .following(held, reply.hints.min(wire::MAX_HINTS) as usize),
                _ => Vec::new(),
            };
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
                    let sent = body::send_file(io, file, found.output, found.size, compress).await;
                    if let Err(error) = &sent
                        && body::is_damaged(error)
                    {
                        tracing::warn!(
                            action = action.to_hex(),
                            "stopped serving a body that does not match its OutputID ({error}); the local store is damaged, `warren verify` repairs it"
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
            if outbox.len() >= body::Outbox::LIMIT || index == last {
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

impl libp2p::request_response::Codec for FetchCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(Request {
            header: wire::read_frame(io).await?,
            local: None,
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| io::Error::other("a response without a request"))?;
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
            answer = receive => answer.map(Response::Answer),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let Request { header, local } = request;
        let local = local.ok_or_else(|| io::Error::other("an outbound request without context"))?;
        if local.cancel.is_cancelled() {
            return Err(cancelled());
        }
        let actions: Vec<ActionId> = header.actions().copied().collect();
        if local
            .batch
            .as_ref()
            .is_some_and(|batch| batch.tokens.len() != actions.len())
        {
            return Err(io::Error::other("a batch needs one token per action"));
        }
        self.pending = Some(Pending {
            actions,
            max_inline: header.max_inline,
            hints: header.hints,
            compressed_ok: header.accept.contains(&Encoding::Zstd),
            local,
        });
        wire::write_frame(io, &header).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let Response::Reply(reply) = response else {
            return Err(io::Error::other("only replies are written"));
        };
        let traffic = reply.traffic.clone();
        self.send_reply(&mut Metered::new(io, &traffic.sent), reply)
            .await
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "fetch cancelled")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::Mutex;
    use std::time::Duration;

    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    use super::*;
    use crate::compress;
    use crate::store::{BodySink, CommitError};
    use crate::wire::CHUNK_SIZE;

    /// Commits verified bodies to a map; records the size of every write.
    #[derive(Default)]
    struct MapStore {
        committed: Mutex<HashMap<ActionId, Vec<u8>>>,
        writes: Arc<Mutex<Vec<usize>>>,
    }

    struct MapSink {
        action: ActionId,
        output: OutputId,
        body: Vec<u8>,
        store: Arc<MapStore>,
    }

    impl Write for MapSink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.store.writes.lock().unwrap().push(bytes.len());
            self.body.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl BodySink for MapSink {
        fn commit(self: Box<Self>) -> Result<(), CommitError> {
            let actual = OutputId::of(&self.body);
            if actual != self.output {
                return Err(CommitError::Mismatch {
                    actual,
                    actual_size: self.body.len() as u64,
                });
            }
            self.store
                .committed
                .lock()
                .unwrap()
                .insert(self.action, self.body);
            Ok(())
        }
    }

    struct Shared(Arc<MapStore>);

    impl Store for Shared {
        fn open(&self, _: &ActionId) -> io::Result<Option<crate::Served>> {
            Ok(None)
        }
        fn begin(
            &self,
            action: &ActionId,
            output: &OutputId,
            _: u64,
        ) -> io::Result<Box<dyn BodySink>> {
            Ok(Box::new(MapSink {
                action: *action,
                output: *output,
                body: Vec::new(),
                store: self.0.clone(),
            }))
        }
    }

    fn protocol() -> StreamProtocol {
        StreamProtocol::new(crate::PROTOCOL_NAME)
    }

    /// Runs the requesting side of one exchange against canned server bytes.
    async fn exchange(
        store: &Arc<MapStore>,
        max_inline: u64,
        server_bytes: Vec<u8>,
    ) -> io::Result<Outcome> {
        Ok(exchange_with_hints(store, max_inline, 0, server_bytes)
            .await?
            .outcome
            .expect("a single request's outcome"))
    }

    async fn exchange_with_hints(
        store: &Arc<MapStore>,
        max_inline: u64,
        hints: u32,
        server_bytes: Vec<u8>,
    ) -> io::Result<Answer> {
        exchange_accepting(
            store,
            max_inline,
            hints,
            Vec::new(),
            &Arc::default(),
            server_bytes,
        )
        .await
    }

    /// One exchange whose request accepts `accept`, recording into `link`.
    async fn exchange_accepting(
        store: &Arc<MapStore>,
        max_inline: u64,
        hints: u32,
        accept: Vec<Encoding>,
        link: &Arc<LinkMeter>,
        server_bytes: Vec<u8>,
    ) -> io::Result<Answer> {
        let mut codec = FetchCodec::new(Arc::new(Shared(store.clone())), 1 << 30, 50_000_000);
        let request = Request {
            header: RequestHeader {
                version: WIRE_VERSION,
                action: ActionId::from_bytes([1; 32]),
                max_inline,
                hints,
                also: Vec::new(),
                accept,
            },
            local: Some(Local {
                header_deadline: Instant::now() + Duration::from_secs(5),
                cancel: CancellationToken::new(),
                positive: Arc::default(),
                batch: None,
                link: link.clone(),
                traffic: Arc::default(),
            }),
        };
        let mut sent = Vec::new();
        codec.write_request(&protocol(), &mut sent, request).await?;
        let mut cursor = Cursor::new(server_bytes);
        match codec.read_response(&protocol(), &mut cursor).await? {
            Response::Answer(answer) => Ok(answer),
            Response::Reply(_) => unreachable!("the requesting side reads outcomes"),
        }
    }

    fn answer(found: Option<FoundHeader>, body: &[u8]) -> Vec<u8> {
        answer_with_next(found, Vec::new(), body)
    }

    fn answer_with_next(found: Option<FoundHeader>, next: Vec<ActionId>, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let header = ResponseHeader {
            version: WIRE_VERSION,
            found,
            next,
        };
        futures::executor::block_on(wire::write_frame(&mut bytes, &header)).unwrap();
        bytes.extend_from_slice(body);
        bytes
    }

    fn found(body: &[u8], included: bool) -> FoundHeader {
        FoundHeader {
            output: OutputId::of(body),
            size: body.len() as u64,
            time_unix_nanos: 5,
            body_included: included,
            encoding: Encoding::Raw,
        }
    }

    #[tokio::test]
    async fn verified_bodies_are_streamed_in_chunks_and_committed() {
        let store = Arc::new(MapStore::default());
        let body: Vec<u8> = (0..(CHUNK_SIZE * 4 + 7) as u32).map(|i| i as u8).collect();
        let outcome = exchange(&store, 1 << 30, answer(Some(found(&body, true)), &body))
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Committed(meta) if meta.size == body.len() as u64));
        assert_eq!(
            store.committed.lock().unwrap()[&ActionId::from_bytes([1; 32])],
            body
        );
        let writes = store.writes.lock().unwrap();
        assert!(writes.len() >= 5, "{writes:?}");
        assert!(writes.iter().all(|len| *len <= CHUNK_SIZE));
    }

    #[tokio::test]
    async fn tampered_bodies_are_rejected_and_not_committed() {
        let store = Arc::new(MapStore::default());
        let header = found(b"the real body", true);
        let outcome = exchange(&store, 1 << 20, answer(Some(header), b"a fake body!!"))
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            Outcome::Rejected {
                reason: RejectReason::HashMismatch { .. },
                bytes: 13
            }
        ));
        assert!(store.committed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn unrequested_or_oversized_bodies_are_refused_unread() {
        let store = Arc::new(MapStore::default());
        let body = vec![3; 100];
        let outcome = exchange(&store, 10, answer(Some(found(&body, true)), &body))
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            Outcome::Rejected {
                reason: RejectReason::Unrequested { .. },
                ..
            }
        ));
        let mut huge = found(&body, true);
        huge.size = 2 << 30;
        let outcome = exchange(&store, u64::MAX, answer(Some(huge), &body))
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            Outcome::Rejected {
                reason: RejectReason::TooLarge { .. },
                ..
            }
        ));
        assert!(store.writes.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn truncated_bodies_are_errors_and_not_committed() {
        let store = Arc::new(MapStore::default());
        for size in [1000, CHUNK_SIZE * 3] {
            let body = vec![4; size];
            let error = exchange(
                &store,
                1 << 30,
                answer(Some(found(&body, true)), &body[..size - 10]),
            )
            .await
            .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
            assert!(store.committed.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn misses_and_announcements_carry_no_body() {
        let store = Arc::new(MapStore::default());
        assert_eq!(
            exchange(&store, 0, answer(None, b"")).await.unwrap(),
            Outcome::NotFound
        );
        let body = vec![5; 10];
        let outcome = exchange(&store, 0, answer(Some(found(&body, false)), b""))
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Announced(meta) if meta.size == 10));
        // Garbage instead of a header is an error, not a panic.
        let error = exchange(&store, 0, b"\0\0\0\x02{]".to_vec())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn served_bodies_round_trip_through_the_codec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        // Over SMALL_BODY: streamed from the open file, hashed as it goes.
        let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&body)
            .unwrap();
        let entries = HashMap::from([(
            ActionId::from_bytes([1; 32]),
            (path, OutputId::of(&body), body.len()),
        )]);
        let mut server =
            FetchCodec::new(Arc::new(Files(Arc::new(Mutex::new(entries)))), 1 << 30, 1);
        let mut bytes = Vec::new();
        let reply = Reply {
            actions: vec![ActionId::from_bytes([1; 32])],
            max_inline: 1 << 20,
            hints: 8,
            compress: false,
            refuse: false,
            sent: Arc::default(),
            traffic: Arc::default(),
        };
        server
            .write_response(&protocol(), &mut bytes, Response::Reply(reply))
            .await
            .unwrap();
        let store = Arc::new(MapStore::default());
        let answer = exchange_with_hints(&store, 1 << 20, 8, bytes)
            .await
            .unwrap();
        assert!(matches!(answer.outcome, Some(Outcome::Committed(_))));
        assert_eq!(answer.next, vec![ActionId::from_bytes([2; 32])]);
        assert_eq!(
            store.committed.lock().unwrap()[&ActionId::from_bytes([1; 32])],
            body
        );
    }

    /// What a server writes for action `ActionId::from_bytes([1; 32])` holding `body` (from a
    /// file), compressed or not.
    async fn served_bytes(body: &[u8], compress: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(body)
            .unwrap();
        let entries = HashMap::from([(
            ActionId::from_bytes([1; 32]),
            (path, OutputId::of(body), body.len()),
        )]);
        let mut server =
            FetchCodec::new(Arc::new(Files(Arc::new(Mutex::new(entries)))), 1 << 30, 1);
        let reply = Reply {
            actions: vec![ActionId::from_bytes([1; 32])],
            max_inline: 1 << 30,
            hints: 0,
            compress,
            refuse: false,
            sent: Arc::default(),
            traffic: Arc::default(),
        };
        let mut bytes = Vec::new();
        server
            .write_response(&protocol(), &mut bytes, Response::Reply(reply))
            .await
            .unwrap();
        bytes
    }

    /// Go-output-like bytes: compressible, but not trivially.
    fn compressible(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| {
                if i % 64 < 48 {
                    b"go.buildid"[i as usize % 10]
                } else {
                    (i / 64) as u8
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn compressed_bodies_round_trip_and_only_raw_ones_are_timed() {
        let zstd = || vec![Encoding::Zstd];
        // One piece (decoded on the async side) and several (streamed).
        for size in [1000, CHUNK_SIZE * 2 + 1000] {
            let body = compressible(size);
            let bytes = served_bytes(&body, true).await;
            assert!(bytes.len() < size / 3, "{} bytes for {size}", bytes.len());
            let store = Arc::new(MapStore::default());
            let link = Arc::new(LinkMeter::default());
            let answer = exchange_accepting(&store, 1 << 30, 0, zstd(), &link, bytes.clone())
                .await
                .unwrap();
            assert!(matches!(answer.outcome, Some(Outcome::Committed(_))));
            assert_eq!(
                store.committed.lock().unwrap()[&ActionId::from_bytes([1; 32])],
                body
            );
            assert_eq!(link.measured(), (0, size as u64));

            // A requester that did not ask cannot read it: refused, not stored.
            let store = Arc::new(MapStore::default());
            let error = exchange_with_hints(&store, 1 << 30, 0, bytes)
                .await
                .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
            assert!(store.writes.lock().unwrap().is_empty());

            // A server that does not compress (older, or not asked) is fine.
            // Each body is measured as what it was sent as.
            let store = Arc::new(MapStore::default());
            let raw = served_bytes(&body, false).await;
            let answer = exchange_accepting(&store, 1 << 30, 0, zstd(), &link, raw)
                .await
                .unwrap();
            assert!(matches!(answer.outcome, Some(Outcome::Committed(_))));
            assert_eq!(
                store.committed.lock().unwrap()[&ActionId::from_bytes([1; 32])],
                body
            );
            assert_eq!(link.measured(), (size as u64, size as u64));
        }
    }

    #[tokio::test]
    async fn compressed_bodies_that_do_not_decode_or_verify_are_rejected() {
        let body = compressible(CHUNK_SIZE + 500);
        let header = FoundHeader {
            encoding: Encoding::Zstd,
            ..found(&body, true)
        };
        let accept = || vec![Encoding::Zstd];
        let link = Arc::new(LinkMeter::default());
        let store = Arc::new(MapStore::default());

        // Chunks that decode, to the wrong bytes: a hash mismatch.
        let mut other = body.clone();
        other[CHUNK_SIZE + 7] ^= 1;
        let mut wrong = Vec::new();
        for piece in other.chunks(CHUNK_SIZE) {
            let mut buffer = body::Piece::new(piece.len());
            buffer.copy_from_slice(piece);
            compress::Chunk::encode(buffer, true)
                .write(&mut wrong)
                .await
                .unwrap();
        }
        let got = exchange_accepting(
            &store,
            1 << 30,
            0,
            accept(),
            &link,
            answer(Some(header.clone()), &wrong),
        )
        .await
        .unwrap();
        assert!(matches!(
            got.outcome,
            Some(Outcome::Rejected {
                reason: RejectReason::HashMismatch { .. },
                ..
            })
        ));

        // A chunk that is not zstd at all.
        let mut garbage = 100u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0x55; 100]);
        let got = exchange_accepting(
            &store,
            1 << 30,
            0,
            accept(),
            &link,
            answer(Some(header.clone()), &garbage),
        )
        .await
        .unwrap();
        assert!(
            matches!(
                &got.outcome,
                Some(Outcome::Rejected {
                    reason: RejectReason::Undecodable(_),
                    ..
                })
            ),
            "{got:?}"
        );

        // An encoding nobody asked for, from a newer peer: unreadable.
        let unknown = FoundHeader {
            encoding: Encoding::Unknown,
            ..header
        };
        let error = exchange_accepting(
            &store,
            1 << 30,
            0,
            accept(),
            &link,
            answer(Some(unknown), &body),
        )
        .await
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(store.committed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn refused_replies_say_not_found_without_looking() {
        let entries = Arc::new(Mutex::new(HashMap::new()));
        let mut server = FetchCodec::new(Arc::new(Files(entries)), 1 << 30, 1);
        let mut bytes = Vec::new();
        let reply = Reply {
            actions: vec![ActionId::from_bytes([1; 32]), ActionId::from_bytes([2; 32])],
            max_inline: 1 << 20,
            hints: 8,
            compress: false,
            refuse: true,
            sent: Arc::default(),
            traffic: Arc::default(),
        };
        server
            .write_response(&protocol(), &mut bytes, Response::Reply(reply))
            .await
            .unwrap();
        let store = Arc::new(MapStore::default());
        let (answer, reports) = exchange_batch(
            &store,
            &[ActionId::from_bytes([1; 32]), ActionId::from_bytes([2; 32])],
            bytes,
        )
        .await;
        assert!(answer.unwrap().next.is_empty());
        assert!(reports.iter().all(|r| r.outcome == Outcome::NotFound));
        assert_eq!(reports.len(), 2);
    }

    #[tokio::test]
    async fn hints_are_kept_only_as_many_as_asked_and_only_with_a_hit() {
        let store = Arc::new(MapStore::default());
        let body = b"body";
        let next: Vec<ActionId> = (0..10).map(|n| ActionId::from_bytes([n; 32])).collect();
        let bytes = answer_with_next(Some(found(body, true)), next.clone(), body);
        let answer = exchange_with_hints(&store, 1 << 20, 3, bytes)
            .await
            .unwrap();
        assert_eq!(answer.next, next[..3]);
        let bytes = answer_with_next(Some(found(body, true)), next.clone(), body);
        let answer = exchange_with_hints(&store, 1 << 20, 0, bytes)
            .await
            .unwrap();
        assert!(answer.next.is_empty());
        let bytes = answer_with_next(None, next, b"");
        let answer = exchange_with_hints(&store, 1 << 20, 3, bytes)
            .await
            .unwrap();
        assert_eq!(answer.outcome, Some(Outcome::NotFound));
        assert!(answer.next.is_empty());
    }

    /// Runs the requesting side of a batch for `actions` against canned
    /// server bytes; returns the reports (token = index) and the answer.
    async fn exchange_batch(
        store: &Arc<MapStore>,
        actions: &[ActionId],
        server_bytes: Vec<u8>,
    ) -> (io::Result<Answer>, Vec<Report>) {
        let mut codec = FetchCodec::new(Arc::new(Shared(store.clone())), 1 << 30, 50_000_000);
        let (reports, mut received) = mpsc::channel(64);
        let request = Request {
            header: RequestHeader {
                version: WIRE_VERSION,
                action: actions[0],
                max_inline: 1 << 20,
                hints: 8,
                also: actions[1..].to_vec(),
                accept: Vec::new(),
            },
            local: Some(Local {
                header_deadline: Instant::now() + Duration::from_secs(5),
                cancel: CancellationToken::new(),
                positive: Arc::default(),
                batch: Some(BatchReports {
                    tokens: (0..actions.len() as u64).collect(),
                    reports,
                    header_timeout: Duration::from_secs(5),
                }),
                link: Arc::default(),
                traffic: Arc::default(),
            }),
        };
        codec
            .write_request(&protocol(), &mut Vec::new(), request)
            .await
            .unwrap();
        let answer = codec
            .read_response(&protocol(), &mut Cursor::new(server_bytes))
            .await
            .map(|response| match response {
                Response::Answer(answer) => answer,
                Response::Reply(_) => unreachable!("the requesting side reads outcomes"),
            });
        drop(codec);
        let mut reports = Vec::new();
        while let Ok(report) = received.try_recv() {
            reports.push(report);
        }
        (answer, reports)
    }

    fn header_bytes(version: u32, found: Option<FoundHeader>, next: Vec<ActionId>) -> Vec<u8> {
        let mut bytes = Vec::new();
        let header = ResponseHeader {
            version,
            found,
            next,
        };
        futures::executor::block_on(wire::write_frame(&mut bytes, &header)).unwrap();
        bytes
    }

    #[tokio::test]
    async fn batches_report_each_entry_in_order() {
        let store = Arc::new(MapStore::default());
        let bodies: [&[u8]; 3] = [b"first", b"", b"third body"];
        let mut bytes = Vec::new();
        bytes.extend(header_bytes(2, Some(found(bodies[0], true)), Vec::new()));
        bytes.extend_from_slice(bodies[0]);
        bytes.extend(header_bytes(2, None, Vec::new()));
        bytes.extend(header_bytes(
            2,
            Some(found(bodies[2], true)),
            vec![ActionId::from_bytes([9; 32])],
        ));
        bytes.extend_from_slice(bodies[2]);
        let (answer, reports) = exchange_batch(
            &store,
            &[
                ActionId::from_bytes([1; 32]),
                ActionId::from_bytes([2; 32]),
                ActionId::from_bytes([3; 32]),
            ],
            bytes,
        )
        .await;
        let answer = answer.unwrap();
        assert_eq!(answer.outcome, None);
        assert_eq!(answer.next, vec![ActionId::from_bytes([9; 32])]);
        assert_eq!(answer.version, 2);
        let tokens: Vec<u64> = reports.iter().map(|r| r.token).collect();
        assert_eq!(tokens, [0, 1, 2]);
        assert!(matches!(reports[0].outcome, Outcome::Committed(_)));
        assert_eq!(reports[1].outcome, Outcome::NotFound);
        assert!(matches!(reports[2].outcome, Outcome::Committed(_)));
        let committed = store.committed.lock().unwrap();
        assert_eq!(committed[&ActionId::from_bytes([1; 32])], bodies[0]);
        assert_eq!(committed[&ActionId::from_bytes([3; 32])], bodies[2]);
    }

    #[tokio::test]
    async fn a_version_one_server_answers_the_first_entry_only() {
        let store = Arc::new(MapStore::default());
        let mut bytes = header_bytes(1, Some(found(b"only", true)), Vec::new());
        bytes.extend_from_slice(b"only");
        let (answer, reports) = exchange_batch(
            &store,
            &[ActionId::from_bytes([1; 32]), ActionId::from_bytes([2; 32])],
            bytes,
        )
        .await;
        assert_eq!(answer.unwrap().version, 1);
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(matches!(reports[0].outcome, Outcome::Committed(_)));
    }

    #[tokio::test]
    async fn a_batch_stops_at_a_body_that_does_not_verify() {
        let store = Arc::new(MapStore::default());
        let mut bytes = header_bytes(2, Some(found(b"real", true)), Vec::new());
        bytes.extend_from_slice(b"fake");
        bytes.extend(header_bytes(2, Some(found(b"next", true)), Vec::new()));
        bytes.extend_from_slice(b"next");
        let (answer, reports) = exchange_batch(
            &store,
            &[ActionId::from_bytes([1; 32]), ActionId::from_bytes([2; 32])],
            bytes,
        )
        .await;
        answer.unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(matches!(
            reports[0].outcome,
            Outcome::Rejected {
                reason: RejectReason::HashMismatch { .. },
                ..
            }
        ));
        assert!(store.committed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_batch_cut_short_reports_what_arrived_and_fails() {
        let store = Arc::new(MapStore::default());
        let mut bytes = header_bytes(2, Some(found(b"whole", true)), Vec::new());
        bytes.extend_from_slice(b"whole");
        bytes.extend(header_bytes(2, Some(found(b"partial", true)), Vec::new()));
        bytes.extend_from_slice(b"par");
        let (answer, reports) = exchange_batch(
            &store,
            &[
                ActionId::from_bytes([1; 32]),
                ActionId::from_bytes([2; 32]),
                ActionId::from_bytes([3; 32]),
            ],
            bytes,
        )
        .await;
        assert_eq!(answer.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(reports.len(), 1);
        assert_eq!(store.committed.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn servers_answer_every_action_of_a_batch_and_hint_after_the_last_held() {
        let dir = tempfile::tempdir().unwrap();
        let entries = Arc::new(Mutex::new(HashMap::new()));
        for (n, body) in [(1u8, b"one".as_slice()), (3, b"three")] {
            let path = dir.path().join(n.to_string());
            std::fs::File::create(&path)
                .unwrap()
                .write_all(body)
                .unwrap();
            entries.lock().unwrap().insert(
                ActionId::from_bytes([n; 32]),
                (path, OutputId::of(body), body.len()),
            );
        }
        let server_store = Arc::new(Files(entries));
        let mut server = FetchCodec::new(server_store, 1 << 30, 1);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let reply = Reply {
            actions: vec![
                ActionId::from_bytes([1; 32]),
                ActionId::from_bytes([2; 32]),
                ActionId::from_bytes([3; 32]),
            ],
            max_inline: 1 << 20,
            hints: 4,
            compress: false,
            refuse: false,
            sent: sent.clone(),
            traffic: Arc::default(),
        };
        let mut writes = crate::body::testing::Writes::default();
        server
            .write_response(&protocol(), &mut writes, Response::Reply(reply))
            .await
            .unwrap();
        // Three small answers (two with a body, one "not found") are one
        // write: one frame on the connection, not one or two per entry.
        assert_eq!(writes.0.len(), 1, "{} writes", writes.0.len());
        let bytes = writes.bytes();
        assert_eq!(
            *sent.lock().unwrap(),
            [
                (ActionId::from_bytes([1; 32]), 3),
                (ActionId::from_bytes([3; 32]), 5)
            ]
        );

        let store = Arc::new(MapStore::default());
        let (answer, reports) = exchange_batch(
            &store,
            &[
                ActionId::from_bytes([1; 32]),
                ActionId::from_bytes([2; 32]),
                ActionId::from_bytes([3; 32]),
            ],
            bytes,
        )
        .await;
        // The hints follow the last action the server holds: ActionId::from_bytes([3; 32]).
        assert_eq!(answer.unwrap().next, vec![ActionId::from_bytes([4; 32])]);
        assert_eq!(reports.len(), 3);
        assert_eq!(reports[1].outcome, Outcome::NotFound);
        assert_eq!(
            store.committed.lock().unwrap()[&ActionId::from_bytes([3; 32])],
            b"three"
        );
    }

    /// Path, OutputID and size of each entry of a [`Files`] store.
    type FileEntries = HashMap<ActionId, (std::path::PathBuf, OutputId, usize)>;

    /// A read-only store of files that hints `n + 1` after `n`.
    struct Files(Arc<Mutex<FileEntries>>);

    impl Store for Files {
        fn open(&self, action: &ActionId) -> io::Result<Option<crate::Served>> {
            let Some((path, output, size)) = self.0.lock().unwrap().get(action).cloned() else {
                return Ok(None);
            };
            Ok(Some(crate::Served {
                output,
                size: size as u64,
                time_unix_nanos: 1,
                body: std::fs::File::open(path)?,
            }))
        }
        fn begin(&self, _: &ActionId, _: &OutputId, _: u64) -> io::Result<Box<dyn BodySink>> {
            Err(io::Error::other("read-only"))
        }
        fn following(&self, action: &ActionId, _: usize) -> Vec<ActionId> {
            vec![ActionId::from_bytes([action.as_bytes()[0] + 1; 32])]
        }
    }
}
