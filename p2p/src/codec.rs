//! The request-response codec that streams bodies instead of buffering them.
//!
//! `libp2p-request-response` runs one codec clone per stream: on the
//! requesting side it calls `write_request` and then `read_response` on the
//! same clone, which is how `read_response` learns what was asked
//! ([`FetchCodec::pending`]). Reading a response does the real work of a
//! fetch on the connection's own task, off the event loop:
//!
//! 1. read the header by the lookup's deadline; "not found" and "found, not
//!    included" end there;
//! 2. refuse a body bigger than `max_body_size` or than the `max_inline` we
//!    asked for, before reading a byte of it;
//! 3. move the body into a sink from [`Store::begin`] ([`crate::body`]:
//!    memory stays at a few pieces whatever the body's size), within the
//!    transfer timeout for its size;
//! 4. commit it: the sink stores it only if exactly `size` bytes arrived
//!    and their SHA-256 is the announced OutputID.
//!
//! A cancelled fetch (another peer won, or the lookup gave up) drops the
//! sink, which discards what it held. Failures of the stream are `io`
//! errors (a miss); a body that arrived but did not verify is an
//! [`Outcome::Rejected`] so the node can put that peer in cooldown.
//!
//! On the serving side the event loop hands the codec a [`Reply`] with the
//! body read and verified (small bodies) or an open file, which
//! [`crate::body::send`] verifies as it streams it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::{self, Outgoing, Received};
use crate::config::transfer_timeout;
use crate::store::Store;
use crate::wire::{self, FoundHeader, RequestHeader, ResponseHeader, WIRE_VERSION};

/// Why a received body was refused. A peer that causes one is put in cooldown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The body's SHA-256 is not the OutputID it was announced with.
    HashMismatch {
        expected: [u8; 32],
        actual: [u8; 32],
    },
    /// The peer sent a body bigger than this node's `max_body_size`.
    TooLarge { size: u64, limit: u64 },
    /// The peer sent a body bigger than the `max_inline` it was asked for.
    Unrequested { size: u64, max_inline: u64 },
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HashMismatch { expected, actual } => write!(
                f,
                "body hashes to {}, not its OutputID {}",
                hex::encode(actual),
                hex::encode(expected)
            ),
            Self::TooLarge { size, limit } => {
                write!(f, "body of {size} bytes is over the {limit} byte limit")
            }
            Self::Unrequested { size, max_inline } => write!(
                f,
                "body of {size} bytes sent although at most {max_inline} were asked for"
            ),
        }
    }
}

/// An entry as a peer described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) output: [u8; 32],
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
    /// The response header must arrive before this.
    pub(crate) header_deadline: Instant,
    /// Cancelled when the fetch no longer needs this request.
    pub(crate) cancel: CancellationToken,
    /// Set once the peer answered "found": the lookup then waits for the
    /// transfer instead of giving up at its deadline.
    pub(crate) positive: Arc<AtomicBool>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("action", &hex::encode(self.header.action))
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
    pub(crate) outcome: Outcome,
    /// The server's read-ahead hints (at most as many as asked for).
    pub(crate) next: Vec<[u8; 32]>,
}

/// What a server sends. `body` is `Some` exactly when `found` says the body
/// is included.
#[derive(Debug)]
pub(crate) struct Reply {
    /// For the server's own logs.
    pub(crate) action: [u8; 32],
    pub(crate) found: Option<FoundHeader>,
    pub(crate) body: Option<Outgoing>,
    /// Read-ahead hints, sent in the header.
    pub(crate) next: Vec<[u8; 32]>,
}

impl Reply {
    pub(crate) fn not_found(action: [u8; 32]) -> Self {
        Self {
            action,
            found: None,
            body: None,
            next: Vec::new(),
        }
    }
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
struct Pending {
    action: [u8; 32],
    max_inline: u64,
    hints: u32,
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

    async fn receive<T>(&self, io: &mut T, pending: &Pending) -> io::Result<Answer>
    where
        T: AsyncRead + Unpin + Send,
    {
        let header: ResponseHeader =
            tokio::time::timeout_at(pending.local.header_deadline, wire::read_frame(io))
                .await
                .map_err(|_| timed_out("no answer by the lookup deadline"))??;
        let mut next = header.next;
        next.truncate(pending.hints.min(wire::MAX_HINTS) as usize);
        let Some(found) = header.found else {
            return Ok(Answer {
                outcome: Outcome::NotFound,
                next: Vec::new(),
            });
        };
        let outcome = self.receive_found(io, pending, found).await?;
        Ok(Answer { outcome, next })
    }

    /// The rest of a "found" answer.
    async fn receive_found<T>(
        &self,
        io: &mut T,
        pending: &Pending,
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
        pending.local.positive.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + transfer_timeout(found.size, self.transfer_rate);
        tokio::time::timeout_at(deadline, self.receive_body(io, pending.action, meta))
            .await
            .map_err(|_| timed_out("body not received within its transfer timeout"))?
    }

    /// Streams `meta.size` body bytes into a store sink; see [`crate::body`].
    async fn receive_body<T>(&self, io: &mut T, action: [u8; 32], meta: Meta) -> io::Result<Outcome>
    where
        T: AsyncRead + Unpin + Send,
    {
        let store = self.store.clone();
        let begin = move || store.begin(&action, &meta.output, meta.size);
        Ok(match body::receive(io, meta.size, begin).await? {
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
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(cancelled()),
            answer = self.receive(io, &pending) => answer.map(Response::Answer),
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
        self.pending = Some(Pending {
            action: header.action,
            max_inline: header.max_inline,
            hints: header.hints,
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
        let Response::Reply(Reply {
            action,
            found,
            body,
            next,
        }) = response
        else {
            return Err(io::Error::other("only replies are written"));
        };
        let header = ResponseHeader {
            version: WIRE_VERSION,
            found,
            next,
        };
        wire::write_frame(io, &header).await?;
        let (Some(found), Some(body)) = (header.found, body) else {
            return Ok(());
        };
        if !found.body_included {
            return Ok(());
        }
        let sent = body::send(io, body, found.output, found.size).await;
        if let Err(error) = &sent
            && body::is_damaged(error)
        {
            tracing::warn!(
                action = hex::encode(action),
                "stopped serving a body that does not match its OutputID ({error}); the local store is damaged, `warren verify` repairs it"
            );
        }
        sent
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
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::store::{BodySink, CommitError};
    use crate::wire::CHUNK_SIZE;

    /// Commits verified bodies to a map; records the size of every write.
    #[derive(Default)]
    struct MapStore {
        committed: Mutex<HashMap<[u8; 32], Vec<u8>>>,
        writes: Arc<Mutex<Vec<usize>>>,
    }

    struct MapSink {
        action: [u8; 32],
        output: [u8; 32],
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
            let actual = <[u8; 32]>::from(Sha256::digest(&self.body));
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
        fn open(&self, _: &[u8; 32]) -> io::Result<Option<crate::Served>> {
            Ok(None)
        }
        fn begin(
            &self,
            action: &[u8; 32],
            output: &[u8; 32],
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
            .outcome)
    }

    async fn exchange_with_hints(
        store: &Arc<MapStore>,
        max_inline: u64,
        hints: u32,
        server_bytes: Vec<u8>,
    ) -> io::Result<Answer> {
        let mut codec = FetchCodec::new(Arc::new(Shared(store.clone())), 1 << 30, 50_000_000);
        let request = Request {
            header: RequestHeader {
                version: WIRE_VERSION,
                action: [1; 32],
                max_inline,
                hints,
            },
            local: Some(Local {
                header_deadline: Instant::now() + Duration::from_secs(5),
                cancel: CancellationToken::new(),
                positive: Arc::default(),
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

    fn answer_with_next(found: Option<FoundHeader>, next: Vec<[u8; 32]>, body: &[u8]) -> Vec<u8> {
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
            output: Sha256::digest(body).into(),
            size: body.len() as u64,
            time_unix_nanos: 5,
            body_included: included,
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
        assert_eq!(store.committed.lock().unwrap()[&[1; 32]], body);
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
        let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&body)
            .unwrap();
        let store = Arc::new(MapStore::default());
        let mut server = FetchCodec::new(Arc::new(Shared(store.clone())), 1 << 30, 1);
        let mut bytes = Vec::new();
        let reply = Reply {
            action: [1; 32],
            found: Some(found(&body, true)),
            body: Some(Outgoing::File(std::fs::File::open(&path).unwrap())),
            next: vec![[2; 32], [3; 32]],
        };
        server
            .write_response(&protocol(), &mut bytes, Response::Reply(reply))
            .await
            .unwrap();
        let answer = exchange_with_hints(&store, 1 << 20, 8, bytes)
            .await
            .unwrap();
        assert!(matches!(answer.outcome, Outcome::Committed(_)));
        assert_eq!(answer.next, vec![[2; 32], [3; 32]]);
        assert_eq!(store.committed.lock().unwrap()[&[1; 32]], body);
    }

    #[tokio::test]
    async fn hints_are_kept_only_as_many_as_asked_and_only_with_a_hit() {
        let store = Arc::new(MapStore::default());
        let body = b"body";
        let next: Vec<[u8; 32]> = (0..10).map(|n| [n; 32]).collect();
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
        assert_eq!(answer.outcome, Outcome::NotFound);
        assert!(answer.next.is_empty());
    }
}
