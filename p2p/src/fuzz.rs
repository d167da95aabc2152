//! Entry points for the fuzz targets in `fuzz/` (feature `fuzz`): each
//! feeds arbitrary bytes, as a peer would send them, to one peer-facing
//! parser. None may panic, allocate without bound or hang; anything
//! malformed must come back as an error.
//!
//! Not part of the crate's API: the feature exists only so that the fuzz
//! crate can reach these internals.

use std::fs::File;
use std::io::{self, Cursor, Write};
use std::sync::Arc;
use std::time::Duration;

use futures::io::AllowStdIo;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec as _;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fetch::exchange::{Request, RequestKey};
use crate::fetch::in_flight::InFlight;
use crate::fetch::receive::Outgoing;
use crate::fetch::receive::reports::Reports;
use crate::ids::{ActionId, OutputId};
use crate::node::codec::{self, FetchCodec, Response};
use crate::protocol::wire::{self, Encoding, RequestHeader, ResponseHeader, WIRE_VERSION};
use crate::store::{Bodies, BodySink, CommitError, Hints, Served, Summaries};
use crate::summary::{PeerSummary, SummaryCodec};

thread_local! {
    /// One runtime per fuzzing thread: the codec's deadlines need tokio's
    /// clock, and building a runtime per input would dominate.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
}

fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| runtime.block_on(future))
}

fn protocol() -> StreamProtocol {
    StreamProtocol::new(crate::PROTOCOL_NAME)
}

/// Wire frames: request and response headers, one after another.
pub fn wire_frames(data: &[u8]) {
    block_on(async {
        let mut io = AllowStdIo::new(Cursor::new(data));
        while wire::read_frame::<_, RequestHeader>(&mut io).await.is_ok() {}
        let mut io = AllowStdIo::new(Cursor::new(data));
        while wire::read_frame::<_, ResponseHeader>(&mut io).await.is_ok() {}
    });
}

/// The fetch codec, requesting side: our request is fixed, `data` is
/// the peer's whole answer (headers, hints, raw or compressed bodies).
/// The first byte chooses what was asked: body inline or not, hints,
/// compression accepted.
pub fn fetch_response(data: &[u8]) {
    let Some((&choice, answer)) = data.split_first() else {
        return;
    };
    let store = Arc::new(MemStore);
    // What the requesting side reports is not read here; a full channel
    // would hold the codec up, a closed one does not.
    let reports = Reports::new(tokio::sync::mpsc::channel(1).0);
    let mut codec = FetchCodec::new(
        store,
        1 << 20,
        1_000_000_000,
        InFlight::new(1 << 30),
        reports,
    );
    let request = Request {
        key: RequestKey(0),
        peer: libp2p::PeerId::random(),
        actions: vec![ActionId::from_bytes([1; 32])],
        batch: None,
        max_inline: if choice & 2 != 0 { 1 << 20 } else { 0 },
        listed: None,
        hints: u32::from(choice >> 4),
        header_deadline: Instant::now() + Duration::from_secs(60),
        header_timeout: Duration::from_secs(60),
        cancel: CancellationToken::new(),
    };
    let outgoing = Outgoing {
        request,
        link: Arc::default(),
        traffic: Arc::default(),
        compressed: choice & 1 != 0,
    };
    block_on(async {
        let mut sent = AllowStdIo::new(Vec::new());
        if codec
            .write_request(
                &protocol(),
                &mut sent,
                codec::Request::Outgoing(Box::new(outgoing)),
            )
            .await
            .is_err()
        {
            return;
        }
        let mut io = AllowStdIo::new(Cursor::new(answer));
        if let Ok(Response::Answer(answer)) = codec.read_response(&protocol(), &mut io).await {
            assert!(answer.next.len() <= usize::from(choice >> 4));
        }
    });
}

/// The fetch codec, serving side: `data` is a peer's request; each action
/// it names is looked up in a store that holds one entry.
pub fn fetch_request(data: &[u8]) {
    let store = MemStore;
    let reports = Reports::new(tokio::sync::mpsc::channel(1).0);
    let mut codec = FetchCodec::new(
        Arc::new(MemStore),
        1 << 20,
        1_000_000_000,
        InFlight::new(1 << 30),
        reports,
    );
    block_on(async {
        let mut io = AllowStdIo::new(Cursor::new(data));
        let Ok(codec::Request::Incoming(header)) = codec.read_request(&protocol(), &mut io).await
        else {
            return;
        };
        for action in header.actions().take(1024) {
            let _ = crate::serve::answer::prepare(&store, action, header.max_inline);
        }
    });
}

/// zstd pieces: `data` is a piece's length (2 bytes) and then what a peer
/// sent for it.
pub fn zstd_piece(data: &[u8]) {
    let Some((len, chunk)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_be_bytes(*len));
    block_on(async {
        let mut io = AllowStdIo::new(Cursor::new(chunk));
        if let Ok(piece) = crate::protocol::compress::read_chunk(&mut io, len).await {
            assert_eq!(piece.len(), len);
        }
    });
}

/// The summary codec and the state it updates: `data` is a stream of
/// summary answers, applied one after another to one peer's summary, then
/// read as a request.
pub fn summary(data: &[u8]) {
    block_on(async {
        let mut codec = SummaryCodec;
        let mut state = PeerSummary::default();
        let mut io = AllowStdIo::new(Cursor::new(data));
        while let Ok(answer) = codec.read_response(&protocol(), &mut io).await {
            state.apply(answer);
            let _ = state.next_request();
            let _ = state.may_hold(&ActionId::from_bytes([7; 32]));
            let _ = state.entries();
        }
        let mut io = AllowStdIo::new(Cursor::new(data));
        let _ = codec.read_request(&protocol(), &mut io).await;
    });
}

/// The catalog codec ([`crate::catalog`]), both ways: `data` is a stream
/// of catalog answers as a replicated peer sends them, read one after
/// another, then the same bytes read as a peer's request. What is read
/// must keep the codec's bounds and write back to bytes that read the same.
pub fn catalog(data: &[u8]) {
    use crate::catalog::{CatalogCodec, MAX_ENTRIES};
    block_on(async {
        let mut codec = CatalogCodec;
        let mut io = AllowStdIo::new(Cursor::new(data));
        while let Ok(catalog) = codec.read_response(&protocol(), &mut io).await {
            assert!(catalog.entries.len() <= MAX_ENTRIES);
            let mut written = AllowStdIo::new(Vec::new());
            codec
                .write_response(&protocol(), &mut written, catalog.clone())
                .await
                .expect("a catalog to write to memory");
            let mut again = AllowStdIo::new(Cursor::new(written.into_inner()));
            let read = codec.read_response(&protocol(), &mut again).await;
            assert_eq!(read.ok().as_ref(), Some(&catalog));
            // Where a requester continues from.
            let _ = catalog
                .entries
                .last()
                .map(crate::catalog::CatalogEntry::cursor);
        }
        let mut io = AllowStdIo::new(Cursor::new(data));
        if let Ok(request) = codec.read_request(&protocol(), &mut io).await {
            let mut written = AllowStdIo::new(Vec::new());
            codec
                .write_request(&protocol(), &mut written, request)
                .await
                .expect("a request to write to memory");
            let mut again = AllowStdIo::new(Cursor::new(written.into_inner()));
            let read = codec.read_request(&protocol(), &mut again).await;
            assert_eq!(read.ok(), Some(request));
            // What a server makes of it (`node/catalogs.rs`).
            let _ = (request.limit as usize).min(MAX_ENTRIES);
            let _ = Duration::from_secs(request.max_age_secs);
        }
    });
}

/// A store of one entry (action `[1; 32]`, a 3-byte body) whose sinks
/// verify like warren's do.
#[derive(Debug, Default)]
struct MemStore;

const BODY: &[u8] = b"abc";

impl Bodies for MemStore {
    fn open(&self, action: &ActionId) -> io::Result<Option<Served>> {
        if *action != ActionId::from_bytes([1; 32]) {
            return Ok(None);
        }
        let mut body = tempfile_in_memory()?;
        body.write_all(BODY)?;
        use std::io::Seek as _;
        body.rewind()?;
        Ok(Some(Served {
            output: OutputId::of(BODY),
            size: BODY.len() as u64,
            time_unix_nanos: 1,
            built_here: true,
            body,
        }))
    }

    fn begin(
        &self,
        _: &ActionId,
        output: &OutputId,
        size: u64,
        _: &libp2p::PeerId,
    ) -> io::Result<Box<dyn BodySink>> {
        Ok(Box::new(MemSink {
            output: *output,
            size,
            written: 0,
            hasher: Sha256::new(),
        }))
    }
}

impl Hints for MemStore {}
impl Summaries for MemStore {}

/// An unnamed file for a served body (`O_TMPFILE` where there is one).
fn tempfile_in_memory() -> io::Result<File> {
    let path = std::env::temp_dir().join(format!("warren-fuzz-{}", std::process::id()));
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

struct MemSink {
    output: OutputId,
    size: u64,
    written: u64,
    hasher: Sha256,
}

impl Write for MemSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len() as u64;
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BodySink for MemSink {
    fn commit(self: Box<Self>) -> Result<(), CommitError> {
        let actual = OutputId::from_bytes(self.hasher.finalize().into());
        if actual != self.output || self.written != self.size {
            return Err(CommitError::Mismatch {
                actual,
                actual_size: self.written,
            });
        }
        Ok(())
    }
}

/// Seed inputs for each target above, made with the real encoders, so the
/// fuzzer starts from what peers actually send: `(target, input)`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let action = ActionId::from_bytes([1; 32]);
    let request = RequestHeader {
        version: WIRE_VERSION,
        action,
        max_inline: 1 << 16,
        hints: 4,
        also: vec![ActionId::from_bytes([2; 32]), ActionId::from_bytes([3; 32])],
        accept: vec![Encoding::Zstd],
    };
    let frame = |value: &dyn erased::Frame| {
        let mut out = Vec::new();
        value.encode(&mut out);
        out
    };
    let body: Vec<u8> = b"package main; func main() {} ".repeat(40);
    let found = |included, encoding| ResponseHeader {
        version: WIRE_VERSION,
        found: Some(wire::FoundHeader {
            output: OutputId::of(&body),
            size: body.len() as u64,
            time_unix_nanos: 5,
            body_included: included,
            encoding,
            built_here: true,
        }),
        next: vec![ActionId::from_bytes([4; 32]), ActionId::from_bytes([5; 32])],
        // The second hint is a test binary.
        next_executables: vec![wire::HintedExecutable {
            at: 1,
            size: 20 << 20,
        }],
    };
    let compressed = {
        let mut piece = crate::protocol::piece::Piece::new(body.len());
        piece.copy_from_slice(&body);
        let mut out = Vec::new();
        crate::protocol::compress::Chunk::encode(piece, true).append_to(&mut out);
        out
    };
    let not_found = ResponseHeader {
        version: WIRE_VERSION,
        found: None,
        next: Vec::new(),
        next_executables: Vec::new(),
    };
    let mut raw_answer = frame(&found(true, Encoding::Raw));
    raw_answer.extend_from_slice(&body);
    let mut zstd_answer = frame(&found(true, Encoding::Zstd));
    zstd_answer.extend_from_slice(&compressed);
    let with_choice = |choice: u8, answer: &[u8]| [&[choice][..], answer].concat();
    let mut piece = (body.len() as u16).to_be_bytes().to_vec();
    piece.extend_from_slice(&compressed);
    let summary_answer = {
        let header = crate::summary::SummaryHeader {
            epoch: 9,
            from: 0,
            count: 3,
            generation: 3,
        };
        let mut out = frame(&header);
        for prefix in [1u64, 2, u64::MAX] {
            out.extend_from_slice(&prefix.to_be_bytes());
        }
        let next = crate::summary::SummaryHeader {
            epoch: 9,
            from: 3,
            count: 1,
            generation: 4,
        };
        out.extend(frame(&next));
        out.extend_from_slice(&7u64.to_be_bytes());
        out
    };
    let summary_request = frame(&crate::summary::SummaryRequest {
        epoch: 9,
        since: 3,
        wait_ms: 1000,
    });
    let catalog = {
        use crate::catalog::{Catalog, CatalogCodec, CatalogEntry};
        let catalog = Catalog {
            entries: (1..=3u8)
                .map(|n| CatalogEntry {
                    action: ActionId::from_bytes([n; 32]),
                    size: u64::from(n) << 20,
                    time_unix_nanos: 1_700_000_000_000_000_000 + u64::from(n),
                    executable: n == 2,
                })
                .collect(),
            more: true,
            next: Some(crate::catalog::Position { epoch: 5, seq: 3 }),
        };
        let mut written = AllowStdIo::new(Vec::new());
        block_on(CatalogCodec.write_response(&protocol(), &mut written, catalog))
            .expect("a seed catalog to encode");
        let mut out = written.into_inner();
        // And an empty last answer after it.
        out.extend(frame(&crate::catalog::CatalogHeader {
            count: 0,
            more: false,
            next: None,
            executables: Vec::new(),
        }));
        out
    };
    let catalog_request = frame(&crate::catalog::CatalogRequest {
        after: crate::catalog::Cursor {
            time_unix_nanos: 1_700_000_000_000_000_003,
            action: Some(ActionId::from_bytes([3; 32])),
        },
        max_age_secs: 7 * 86_400,
        limit: 256,
        since: Some(crate::catalog::Position { epoch: 5, seq: 3 }),
    });
    vec![
        ("catalog", catalog),
        ("catalog", catalog_request),
        ("wire_frames", frame(&request)),
        ("wire_frames", frame(&found(false, Encoding::Raw))),
        ("fetch_request", frame(&request)),
        ("fetch_response", with_choice(0b0100_0011, &raw_answer)),
        ("fetch_response", with_choice(0b0100_0011, &zstd_answer)),
        (
            "fetch_response",
            with_choice(0, &frame(&found(false, Encoding::Raw))),
        ),
        ("fetch_response", with_choice(0, &frame(&not_found))),
        ("zstd_piece", piece),
        ("summary", summary_answer),
        ("summary", summary_request),
    ]
}

/// Frames of any header type, for [`seeds`].
mod erased {
    pub(super) trait Frame {
        fn encode(&self, out: &mut Vec<u8>);
    }

    impl<T: serde::Serialize> Frame for T {
        fn encode(&self, out: &mut Vec<u8>) {
            super::wire::encode_frame(out, self).expect("a seed header to encode");
        }
    }
}
