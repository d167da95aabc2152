//! The requesting side, exchange by exchange: canned server bytes (or a
//! real server's) read through the node's codec into a store that
//! verifies, as the event loop would have them read.
//!
//! The stores and exchanges here serve the serving side's tests too
//! (`serve::reply`).

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::io::Cursor;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fetch::exchange::{
    Answer, Failure, FetchId, Outcome, RejectReason, Report, Request, RequestKey,
};
use crate::fetch::in_flight::InFlight;
use crate::fetch::link::LinkMeter;
use crate::fetch::promise::Promise;
use crate::fetch::receive::reports::Reports;
use crate::fetch::receive::{Outgoing, failure_of};
use crate::ids::{ActionId, OutputId};
use crate::node::codec::{self, FetchCodec, Response};
use crate::protocol::compress;
use crate::protocol::piece::Piece;
use crate::protocol::wire::{
    self, CHUNK_SIZE, Encoding, FoundHeader, ResponseHeader, WIRE_VERSION,
};
use crate::serve::reply::Reply;
use crate::store::{Bodies, BodySink, CommitError, Hints, Store, Summaries};

/// Commits verified bodies to a map; records the size of every write.
#[derive(Default)]
pub(crate) struct MapStore {
    pub(crate) committed: Mutex<HashMap<ActionId, Vec<u8>>>,
    pub(crate) writes: Arc<Mutex<Vec<usize>>>,
}

pub(crate) struct MapSink {
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

pub(crate) struct Shared(Arc<MapStore>);

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

pub(crate) fn protocol() -> StreamProtocol {
    StreamProtocol::new(crate::PROTOCOL_NAME)
}

/// A codec over `store`, reading bodies at `rate` or better within
/// `in_flight`, and what it reports to the books.
pub(crate) fn codec_over(
    store: Arc<dyn Store>,
    rate: u64,
    in_flight: Arc<InFlight>,
) -> (FetchCodec, mpsc::Receiver<Report>) {
    let (sender, reports) = mpsc::channel(1024);
    let codec = FetchCodec::new(store, 1 << 30, rate, in_flight, Reports::new(sender));
    (codec, reports)
}

/// Our request for `actions` (a batch if more than one, each entry
/// reported with its index as its fetch), due within 5 s.
pub(crate) fn request(actions: &[ActionId], max_inline: u64, hints: u32) -> Request {
    Request {
        key: RequestKey(0),
        peer: libp2p::PeerId::random(),
        actions: actions.to_vec(),
        batch: (actions.len() > 1).then(|| (0..actions.len() as FetchId).collect()),
        max_inline,
        listed: None,
        hints,
        header_deadline: Instant::now() + Duration::from_secs(5),
        header_timeout: Duration::from_secs(5),
        cancel: CancellationToken::new(),
    }
}

/// `request` on its way, on the link `link`, asking for compressed bodies
/// if `accept` names zstd.
pub(crate) fn outgoing(
    request: Request,
    accept: &[Encoding],
    link: &Arc<LinkMeter>,
) -> codec::Request {
    codec::Request::Outgoing(Box::new(Outgoing {
        request,
        link: link.clone(),
        traffic: Arc::default(),
        compressed: accept.contains(&Encoding::Zstd),
    }))
}

/// What the peer had promised when the request ended, as reported.
fn promise_of(reports: &mut mpsc::Receiver<Report>) -> Promise {
    let mut promise = Promise::default();
    while let Ok(report) = reports.try_recv() {
        if let Report::Promise { promise: said, .. } = report {
            promise = said;
        }
    }
    promise
}

/// A batch's entry, as reported: its fetch (the index of its action).
#[derive(Debug)]
pub(crate) struct Reported {
    pub(crate) token: FetchId,
    pub(crate) outcome: Outcome,
}

/// Runs the requesting side of one exchange against canned server bytes.
pub(crate) async fn exchange(
    store: &Arc<MapStore>,
    max_inline: u64,
    server_bytes: Vec<u8>,
) -> io::Result<Outcome> {
    Ok(exchange_with_hints(store, max_inline, 0, server_bytes)
        .await?
        .outcome
        .expect("a single request's outcome"))
}

pub(crate) async fn exchange_with_hints(
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
pub(crate) async fn exchange_accepting(
    store: &Arc<MapStore>,
    max_inline: u64,
    hints: u32,
    accept: Vec<Encoding>,
    link: &Arc<LinkMeter>,
    server_bytes: Vec<u8>,
) -> io::Result<Answer> {
    let (mut codec, _reports) = codec_over(
        Arc::new(Shared(store.clone())),
        50_000_000,
        InFlight::new(1 << 30),
    );
    let action = ActionId::from_bytes([1; 32]);
    let request = outgoing(request(&[action], max_inline, hints), &accept, link);
    let mut sent = Vec::new();
    codec.write_request(&protocol(), &mut sent, request).await?;
    let mut cursor = Cursor::new(server_bytes);
    match codec.read_response(&protocol(), &mut cursor).await? {
        Response::Answer(answer) => Ok(answer),
        Response::Reply(_) => unreachable!("the requesting side reads outcomes"),
    }
}

pub(crate) fn answer(found: Option<FoundHeader>, body: &[u8]) -> Vec<u8> {
    answer_with_next(found, Vec::new(), body)
}

pub(crate) fn answer_with_next(
    found: Option<FoundHeader>,
    next: Vec<ActionId>,
    body: &[u8],
) -> Vec<u8> {
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

pub(crate) fn found(body: &[u8], included: bool) -> FoundHeader {
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
/// bytes in flight of `in_flight`; what the request's peer had promised
/// when it ended, as the books were told.
async fn exchange_on(
    store: &Arc<MapStore>,
    in_flight: Arc<InFlight>,
    server: impl futures::AsyncRead + Unpin + Send,
) -> (io::Result<Answer>, Promise) {
    let (mut codec, mut reports) =
        codec_over(Arc::new(Shared(store.clone())), 50_000_000, in_flight);
    let action = ActionId::from_bytes([1; 32]);
    let request = outgoing(request(&[action], 1 << 30, 0), &[], &Arc::default());
    codec
        .write_request(&protocol(), &mut Vec::new(), request)
        .await
        .unwrap();
    let mut server = server;
    let answer =
        codec
            .read_response(&protocol(), &mut server)
            .await
            .map(|response| match response {
                Response::Answer(answer) => answer,
                Response::Reply(_) => unreachable!("the requesting side reads outcomes"),
            });
    (answer, promise_of(&mut reports))
}

/// A peer that says "found" and stops sending fails the exchange as
/// late with the body, which the books hold against it: here the
/// body's transfer timeout (1 s + 2 ms for 100 KB at 50 MB/s) passes
/// before a piece's stall would. One that sends no header at all is
/// only late with an answer.
#[tokio::test(start_paused = true)]
async fn a_small_body_the_peer_stops_sending_is_its_stall() {
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

/// What a server writes for action `ActionId::from_bytes([1; 32])` holding `body` (from a
/// file), compressed or not.
pub(crate) async fn served_bytes(body: &[u8], compress: bool) -> Vec<u8> {
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
    let (mut server, _) = codec_over(
        Arc::new(Files(Arc::new(Mutex::new(entries)))),
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
/// server bytes; returns the entries reported (token = index) and the
/// answer.
pub(crate) async fn exchange_batch(
    store: &Arc<MapStore>,
    actions: &[ActionId],
    server_bytes: Vec<u8>,
) -> (io::Result<Answer>, Vec<Reported>) {
    exchange_listed(store, actions, None, server_bytes).await
}

/// [`exchange_batch`] with the sizes a catalog listed (replication).
pub(crate) async fn exchange_listed(
    store: &Arc<MapStore>,
    actions: &[ActionId],
    listed: Option<Vec<u64>>,
    server_bytes: Vec<u8>,
) -> (io::Result<Answer>, Vec<Reported>) {
    let (mut codec, mut received) = codec_over(
        Arc::new(Shared(store.clone())),
        50_000_000,
        InFlight::new(1 << 30),
    );
    let mut batch = request(actions, 1 << 20, 8);
    batch.batch = Some((0..actions.len() as FetchId).collect());
    batch.listed = listed;
    codec
        .write_request(
            &protocol(),
            &mut Vec::new(),
            outgoing(batch, &[], &Arc::default()),
        )
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
        if let Report::Entry { fetch, outcome } = report {
            reports.push(Reported {
                token: fetch,
                outcome,
            });
        }
    }
    (answer, reports)
}

pub(crate) fn header_bytes(
    version: u32,
    found: Option<FoundHeader>,
    next: Vec<ActionId>,
) -> Vec<u8> {
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
    let (answer, reports) = exchange_listed(&store, &actions, Some(vec![5, 3, 100]), bytes).await;
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

/// Path, OutputID and size of each entry of a [`Files`] store.
pub(crate) type FileEntries = HashMap<ActionId, (std::path::PathBuf, OutputId, usize)>;

/// A read-only store of files that hints `n + 1` after `n`.
pub(crate) struct Files(pub(crate) Arc<Mutex<FileEntries>>);

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
