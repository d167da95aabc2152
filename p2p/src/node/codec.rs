//! The fetch protocol's request-response codec: an adapter between
//! `libp2p-request-response` and the two sides of an exchange.
//!
//! `libp2p-request-response` runs one codec clone per stream. On the
//! requesting side it calls `write_request` and then `read_response` on the
//! same clone, which is how `read_response` learns what was asked: the
//! [`Request`] carries, besides its wire header, the requester's context
//! ([`Local`]: deadline, cancellation, where batch entries are reported,
//! the peer's meters), which never goes on the wire. The bytes themselves
//! are read by [`Requester`] and written by [`Server`].
//!
//! One type of response serves both directions because the behaviour has
//! one: the serving side writes a [`Reply`], the requesting side reads an
//! [`Answer`]. (A fetch as a plain `async fn` over a raw stream, with the
//! `libp2p-stream` crate, would drop both of these wrappers; see
//! `docs/architecture.md`.)

use std::io;
use std::sync::Arc;

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;

use crate::fetch::in_flight::InFlight;
use crate::fetch::receive::{Answer, Local, Pending, Requester, cancelled};
use crate::ids::ActionId;
use crate::protocol::metered::Metered;
use crate::protocol::wire::{self, Encoding, RequestHeader};
use crate::serve::paced::MinRate;
use crate::serve::reply::{Reply, Server};
use crate::store::Store;

/// A request: the header that goes on the wire and, on the requesting side,
/// how its response is to be handled.
pub(crate) struct Request {
    pub(crate) header: RequestHeader,
    /// `None` for requests read from a peer.
    pub(crate) local: Option<Local>,
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

/// The fetch protocol's codec; see the module docs.
pub(crate) struct FetchCodec {
    requester: Requester,
    server: Server,
    /// Set by `write_request`, taken by `read_response` (same clone).
    pending: Option<Pending>,
}

impl Clone for FetchCodec {
    /// A fresh codec for a new stream: nothing pending.
    fn clone(&self) -> Self {
        Self {
            requester: self.requester.clone(),
            server: self.server.clone(),
            pending: None,
        }
    }
}

impl FetchCodec {
    /// Reads bodies of at most `max_body_size` bytes into `store`, each at
    /// `transfer_rate` or better, within the bytes in flight of `in_flight`.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        max_body_size: u64,
        transfer_rate: u64,
        in_flight: Arc<InFlight>,
    ) -> Self {
        Self {
            requester: Requester {
                store: store.clone(),
                max_body_size,
                transfer_rate,
                in_flight,
                agreement: None,
            },
            server: Server { store },
            pending: None,
        }
    }

    /// Commits a fetched body only when its mapping is agreed (see
    /// [`crate::fetch::agreement`]).
    pub(crate) fn agreeing(mut self) -> Self {
        self.requester.agreement = Some(Arc::default());
        self
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
        self.requester
            .read_response(io, pending)
            .await
            .map(Response::Answer)
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
        if (local.listed.as_ref()).is_some_and(|listed| listed.len() != actions.len()) {
            return Err(io::Error::other("one listed size per action, or none"));
        }
        let promise = local.promise.clone();
        self.pending = Some(Pending {
            actions,
            max_inline: header.max_inline,
            hints: header.hints,
            compressed_ok: header.accept.contains(&Encoding::Zstd),
            local,
        });
        wire::write_frame(io, &header).await?;
        promise.asked();
        Ok(())
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
        self.server
            .send_reply(&mut MinRate::new(Metered::new(io, &traffic.sent)), reply)
            .await
    }
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
    use crate::fetch::link::LinkMeter;
    use crate::fetch::receive::{BatchReports, Outcome, RejectReason, Report};
    use crate::ids::OutputId;
    use crate::protocol::compress;
    use crate::protocol::piece::Piece;
    use crate::protocol::wire::CHUNK_SIZE;
    use crate::protocol::wire::{FoundHeader, ResponseHeader, WIRE_VERSION};
    use crate::store::{Bodies, BodySink, CommitError, Hints, Summaries};
    use tokio::sync::mpsc;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

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

    impl Bodies for Shared {
        fn open(&self, _: &ActionId) -> io::Result<Option<crate::Served>> {
            Ok(None)
        }

        fn begin(
            &self,
            action: &ActionId,
            output: &OutputId,
            _: u64,
            _: &libp2p::PeerId,
        ) -> io::Result<Box<dyn BodySink>> {
            Ok(Box::new(MapSink {
                action: *action,
                output: *output,
                body: Vec::new(),
                store: self.0.clone(),
            }))
        }
    }

    impl Hints for Shared {}

    impl Summaries for Shared {}

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
        let mut codec = FetchCodec::new(
            Arc::new(Shared(store.clone())),
            1 << 30,
            50_000_000,
            InFlight::new(1 << 30),
        );
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
                peer: libp2p::PeerId::random(),
                header_deadline: Instant::now() + Duration::from_secs(5),
                cancel: CancellationToken::new(),
                promise: Arc::default(),
                batch: None,
                link: link.clone(),
                traffic: Arc::default(),
                listed: None,
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
            built_here: true,
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

    /// Server bytes that end without closing the stream: what a peer that
    /// stops sending looks like.
    struct ThenSilent(Cursor<Vec<u8>>);

    impl futures::AsyncRead for ThenSilent {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
                std::task::Poll::Ready(Ok(0)) if !buf.is_empty() => std::task::Poll::Pending,
                other => other,
            }
        }
    }

    /// One single-action exchange at 50 MB/s against `server`, with the
    /// bytes in flight of `in_flight`; the request's promise as it ended.
    async fn exchange_on(
        store: &Arc<MapStore>,
        in_flight: Arc<InFlight>,
        server: impl futures::AsyncRead + Unpin + Send,
    ) -> (io::Result<Answer>, Arc<crate::fetch::promise::Promise>) {
        let mut codec = FetchCodec::new(
            Arc::new(Shared(store.clone())),
            1 << 30,
            50_000_000,
            in_flight,
        );
        let promise = Arc::<crate::fetch::promise::Promise>::default();
        let request = Request {
            header: RequestHeader {
                version: WIRE_VERSION,
                action: ActionId::from_bytes([1; 32]),
                max_inline: 1 << 30,
                hints: 0,
                also: Vec::new(),
                accept: Vec::new(),
            },
            local: Some(Local {
                peer: libp2p::PeerId::random(),
                header_deadline: Instant::now() + Duration::from_secs(5),
                cancel: CancellationToken::new(),
                promise: promise.clone(),
                batch: None,
                listed: None,
                link: Arc::default(),
                traffic: Arc::default(),
            }),
        };
        codec
            .write_request(&protocol(), &mut Vec::new(), request)
            .await
            .unwrap();
        let mut server = server;
        let answer = codec
            .read_response(&protocol(), &mut server)
            .await
            .map(|response| match response {
                Response::Answer(answer) => answer,
                Response::Reply(_) => unreachable!("the requesting side reads outcomes"),
            });
        (answer, promise)
    }

    /// A peer that says "found" and stops sending fails the exchange as
    /// late with the body, which the books hold against it: here the
    /// body's transfer timeout (1 s + 2 ms for 100 KB at 50 MB/s) passes
    /// before a piece's stall would. One that sends no header at all is
    /// only late with an answer.
    #[tokio::test(start_paused = true)]
    async fn a_small_body_the_peer_stops_sending_is_its_stall() {
        use crate::fetch::books::Failure;
        use crate::fetch::receive::failure_of;

        let store = Arc::new(MapStore::default());
        let body = vec![6; 100_000];
        let sent = answer(Some(found(&body, true)), &body[..10_000]);
        let started = Instant::now();
        let (got, promise) = exchange_on(
            &store,
            InFlight::new(1 << 30),
            ThenSilent(Cursor::new(sent)),
        )
        .await;
        let error = got.unwrap_err();
        assert_eq!(failure_of(&error), Failure::Stalled, "{error}");
        assert!(promise.broken(false), "it owes the body");
        assert_eq!(started.elapsed(), Duration::from_millis(1002));
        assert!(store.committed.lock().unwrap().is_empty());

        let (got, promise) = exchange_on(
            &store,
            InFlight::new(1 << 30),
            ThenSilent(Cursor::new(Vec::new())),
        )
        .await;
        assert_eq!(failure_of(&got.unwrap_err()), Failure::TimedOut);
        assert!(!promise.broken(false), "a silent lookup is only slow");
    }

    /// A big body the peer stops sending is cut off after a piece's stall
    /// (2 s), not after its transfer timeout, and held against the peer.
    #[tokio::test]
    async fn a_big_body_the_peer_stops_sending_is_its_stall() {
        use crate::fetch::books::Failure;
        use crate::fetch::receive::failure_of;

        let store = Arc::new(MapStore::default());
        let body = vec![6; CHUNK_SIZE * 400];
        let sent = answer(Some(found(&body, true)), &body[..CHUNK_SIZE + 10]);
        let started = Instant::now();
        let (got, promise) = exchange_on(
            &store,
            InFlight::new(1 << 30),
            ThenSilent(Cursor::new(sent)),
        )
        .await;
        let took = started.elapsed();
        let error = got.unwrap_err();
        assert_eq!(failure_of(&error), Failure::Stalled, "{error}");
        assert!(promise.broken(false));
        let stall = crate::fetch::pace::STALL;
        assert!(took >= stall && took < stall * 2, "{took:?}");
        assert!(store.committed.lock().unwrap().is_empty());
    }

    /// With no room in flight, a small body (read whole) is not stored and
    /// a big one is given up part-way, ending the stream; neither is held
    /// against the peer, and the body's share is given back.
    #[tokio::test]
    async fn a_body_with_no_room_in_flight_is_given_up_and_nobody_blamed() {
        use crate::fetch::books::Failure;
        use crate::fetch::receive::failure_of;

        let in_flight = InFlight::new(1000);
        let others = [in_flight.open(), in_flight.open()];
        assert!(others.iter().all(|other| other.take(1000)));
        let store = Arc::new(MapStore::default());

        let small = vec![7; 5000];
        let (got, promise) = exchange_on(
            &store,
            in_flight.clone(),
            Cursor::new(answer(Some(found(&small, true)), &small)),
        )
        .await;
        assert!(matches!(got.unwrap().outcome, Some(Outcome::NotStored(_))));
        assert!(!promise.broken(false));

        let big = vec![8; CHUNK_SIZE * 3];
        let (got, promise) = exchange_on(
            &store,
            in_flight.clone(),
            Cursor::new(answer(Some(found(&big, true)), &big)),
        )
        .await;
        let error = got.unwrap_err();
        assert_eq!(failure_of(&error), Failure::Ended, "{error}");
        assert!(!promise.broken(false), "we stopped reading, not the peer");
        assert!(store.committed.lock().unwrap().is_empty());
        drop(others);
        let fresh = in_flight.open();
        assert!(fresh.take(1000), "the given-up body's share came back");
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
        let mut server = FetchCodec::new(
            Arc::new(Files(Arc::new(Mutex::new(entries)))),
            1 << 30,
            1,
            InFlight::new(1 << 30),
        );
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
        let mut server = FetchCodec::new(
            Arc::new(Files(Arc::new(Mutex::new(entries)))),
            1 << 30,
            1,
            InFlight::new(1 << 30),
        );
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
        for size in [2000, CHUNK_SIZE * 2 + 1000] {
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
            let mut buffer = Piece::new(piece.len());
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
        let mut server =
            FetchCodec::new(Arc::new(Files(entries)), 1 << 30, 1, InFlight::new(1 << 30));
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
        exchange_listed(store, actions, None, server_bytes).await
    }

    /// [`exchange_batch`] with the sizes a catalog listed (replication).
    async fn exchange_listed(
        store: &Arc<MapStore>,
        actions: &[ActionId],
        listed: Option<Vec<u64>>,
        server_bytes: Vec<u8>,
    ) -> (io::Result<Answer>, Vec<Report>) {
        let mut codec = FetchCodec::new(
            Arc::new(Shared(store.clone())),
            1 << 30,
            50_000_000,
            InFlight::new(1 << 30),
        );
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
                peer: libp2p::PeerId::random(),
                header_deadline: Instant::now() + Duration::from_secs(5),
                cancel: CancellationToken::new(),
                promise: Arc::default(),
                batch: Some(BatchReports {
                    tokens: (0..actions.len() as u64).collect(),
                    reports,
                    header_timeout: Duration::from_secs(5),
                }),
                link: Arc::default(),
                traffic: Arc::default(),
                listed,
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

    /// A replicated entry announced bigger than its catalog listed is
    /// refused before a byte of its body is read (no sink is opened), and
    /// the batch stops there, as at a body that does not verify.
    #[tokio::test]
    async fn a_body_bigger_than_listed_is_refused_unread() {
        let store = Arc::new(MapStore::default());
        let bodies: [&[u8]; 3] = [b"first", b"third body", b"more"];
        let mut bytes = Vec::new();
        for body in bodies {
            bytes.extend(header_bytes(
                WIRE_VERSION,
                Some(found(body, true)),
                Vec::new(),
            ));
            bytes.extend_from_slice(body);
        }
        let actions: Vec<ActionId> = (1..=3).map(|n| ActionId::from_bytes([n; 32])).collect();
        let (answer, reports) =
            exchange_listed(&store, &actions, Some(vec![5, 3, 100]), bytes).await;
        answer.unwrap();
        assert_eq!(reports.len(), 2, "stopped at the refused one: {reports:?}");
        assert!(matches!(reports[0].outcome, Outcome::Committed(_)));
        assert_eq!(
            reports[1].outcome,
            Outcome::Rejected {
                reason: RejectReason::LargerThanListed {
                    size: 10,
                    listed: 3
                },
                bytes: 0,
            }
        );
        assert_eq!(store.committed.lock().unwrap().len(), 1);
        assert_eq!(
            store.writes.lock().unwrap().iter().sum::<usize>(),
            5,
            "only the first body was written"
        );
        // An announcement says the same.
        let mut bytes = header_bytes(WIRE_VERSION, Some(found(bodies[1], false)), Vec::new());
        bytes.extend(header_bytes(WIRE_VERSION, None, Vec::new()));
        let (_, reports) = exchange_listed(&store, &actions[1..], Some(vec![3, 3]), bytes).await;
        assert!(matches!(
            reports[0].outcome,
            Outcome::Rejected {
                reason: RejectReason::LargerThanListed { .. },
                ..
            }
        ));
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
        let mut server = FetchCodec::new(server_store, 1 << 30, 1, InFlight::new(1 << 30));
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
        let mut writes = crate::protocol::testing::Writes::default();
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

    impl Bodies for Files {
        fn open(&self, action: &ActionId) -> io::Result<Option<crate::Served>> {
            let Some((path, output, size)) = self.0.lock().unwrap().get(action).cloned() else {
                return Ok(None);
            };
            Ok(Some(crate::Served {
                output,
                size: size as u64,
                time_unix_nanos: 1,
                built_here: true,
                body: std::fs::File::open(path)?,
            }))
        }

        fn begin(
            &self,
            _: &ActionId,
            _: &OutputId,
            _: u64,
            _: &libp2p::PeerId,
        ) -> io::Result<Box<dyn BodySink>> {
            Err(io::Error::other("read-only"))
        }
    }

    impl Hints for Files {
        fn following(&self, action: &ActionId, _: usize) -> Vec<ActionId> {
            vec![ActionId::from_bytes([action.as_bytes()[0] + 1; 32])]
        }
    }

    impl Summaries for Files {}
}
