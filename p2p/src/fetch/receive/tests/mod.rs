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
        next_executables: Vec::new(),
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
        next_executables: Vec::new(),
    };
    futures::executor::block_on(wire::write_frame(&mut bytes, &header)).unwrap();
    bytes
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
    fn following(&self, action: &ActionId, _: usize) -> Vec<crate::store::Hint> {
        vec![crate::store::Hint::new(ActionId::from_bytes(
            [action.as_bytes()[0] + 1; 32],
        ))]
    }
}

impl Summaries for Files {}

mod batches;
mod bodies;
mod compressed;
mod stalls;
