//! A peer that speaks the fetch protocol but misbehaves: it lies about a
//! body, sends compressed chunks that do not decode, dies halfway through
//! a body, drips a huge one, floods read-ahead, never answers, or serves
//! a store's bodies with a byte flipped; or an honest peer of wire
//! version 1, which answers one action per request.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{listen, loopback, swarm};
use crate::PROTOCOL_NAME;
use crate::ids::{ActionId, OutputId};
use crate::protocol::wire::{self, Encoding, FoundHeader, RequestHeader, ResponseHeader};

/// How the hostile peer answers every request.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Announces `claimed` (its hash and size) but sends `sent`.
    WrongBody { claimed: Vec<u8>, sent: Vec<u8> },
    /// Announces `body` and sends only its first `send` bytes, then stalls
    /// (until the test kills it).
    Stall { body: Vec<u8>, send: usize },
    /// Claims to hold every action, with a made-up body of `size` bytes,
    /// and sends `piece` bytes of it every `every`, never all of it (the
    /// body is never held). A request that may not take the body inline
    /// is answered "found, not included", as an honest peer would.
    Drip {
        size: u64,
        piece: usize,
        every: Duration,
    },
    /// Reads requests and never answers them.
    Silent,
    /// Announces `claimed` compressed, to requests that accept zstd, and
    /// sends a chunk that is not zstd; "not found" to other requests.
    BadChunks { claimed: Vec<u8> },
    /// Serves these entries honestly, as a version-1 node did: one action
    /// per request (`also` is ignored), hints after it in this order.
    VersionOne { entries: Vec<(ActionId, Vec<u8>)> },
    /// The read-ahead flooder: "holds" every action asked for, with a
    /// fabricated body of `size` bytes (it verifies against its own hash),
    /// and hints as many fresh actions as it may after each answer.
    Flood { size: usize },
    /// The tamperer: serves the bodies `entries` finds, each announced
    /// with its true OutputID and size and sent with its first byte
    /// flipped, one action per request as version 1 did; tells `served`
    /// of each (if there is room).
    Tamper {
        entries: Entries,
        served: mpsc::Sender<ActionId>,
    },
}

/// Where the tamperer finds the bodies it serves: each action's body, if
/// it holds one.
#[derive(Clone)]
pub struct Entries(Arc<Find>);

/// Finds an action's body.
type Find = dyn Fn(&ActionId) -> Option<Vec<u8>> + Send + Sync;

impl Entries {
    pub fn new(find: impl Fn(&ActionId) -> Option<Vec<u8>> + Send + Sync + 'static) -> Self {
        Self(Arc::new(find))
    }
}

impl std::fmt::Debug for Entries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entries")
    }
}

pub struct Hostile {
    pub peer: PeerId,
    /// Ends in `/p2p/<peer id>`.
    pub address: Multiaddr,
    /// Requests received.
    pub requests: Arc<AtomicU64>,
    /// Requests received that accept zstd.
    pub accepting_zstd: Arc<AtomicU64>,
    /// Body bytes written to streams.
    pub bytes_sent: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Hostile {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn accepting_zstd(&self) -> u64 {
        self.accepting_zstd.load(Ordering::SeqCst)
    }

    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::SeqCst)
    }

    /// Dies: the task and its connections are dropped.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct HostileCodec {
    mode: Arc<Mode>,
    bytes_sent: Arc<AtomicU64>,
}

impl request_response::Codec for HostileCodec {
    type Protocol = StreamProtocol;
    type Request = RequestHeader;
    type Response = RequestHeader;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RequestHeader>
    where
        T: AsyncRead + Unpin + Send,
    {
        wire::read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<RequestHeader>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("the hostile peer never asks"))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: RequestHeader,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("the hostile peer never asks"))
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: RequestHeader,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let (announced, sent, stall) = match &*self.mode {
            Mode::WrongBody { claimed, sent } => (claimed, &sent[..], false),
            Mode::Stall { body, send } => (body, &body[..*send], true),
            Mode::Silent => unreachable!("a silent peer never answers"),
            Mode::VersionOne { entries } => return version_one(io, entries, &request).await,
            Mode::BadChunks { claimed } => return bad_chunks(io, claimed, &request).await,
            Mode::Flood { size } => return flood(io, *size, &request, &self.bytes_sent).await,
            Mode::Tamper { entries, served } => return tamper(io, entries, &request, served).await,
            Mode::Drip { size, piece, every } => {
                return drip(io, *size, *piece, *every, &request, &self.bytes_sent).await;
            }
        };
        // These answer one action per request, as version 1 did.
        let header = ResponseHeader {
            version: 1,
            found: Some(FoundHeader {
                output: OutputId::of(announced),
                size: announced.len() as u64,
                time_unix_nanos: 1,
                body_included: true,
                encoding: Encoding::Raw,
                built_here: true,
            }),
            next: Vec::new(),
            next_executables: Vec::new(),
        };
        wire::write_frame(io, &header).await?;
        for chunk in sent.chunks(16 * 1024) {
            io.write_all(chunk).await?;
            io.flush().await?;
            self.bytes_sent
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        if stall {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// A made-up body of `size` bytes that no other call returns.
fn fresh_body(size: usize) -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst).to_be_bytes();
    n.iter().copied().cycle().take(size.max(8)).collect()
}

fn fresh_action() -> ActionId {
    ActionId::from_bytes(*OutputId::of(&fresh_body(32)).as_bytes())
}

/// Every action asked for, "found" with a fabricated body, and fresh hints.
async fn flood<T>(
    io: &mut T,
    size: usize,
    request: &RequestHeader,
    bytes_sent: &AtomicU64,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let actions: Vec<ActionId> = request.actions().copied().collect();
    for (index, _) in actions.iter().enumerate() {
        let body = fresh_body(size);
        let inline = body.len() as u64 <= request.max_inline;
        let last = index + 1 == actions.len();
        let header = ResponseHeader {
            version: wire::WIRE_VERSION,
            found: Some(FoundHeader {
                output: OutputId::of(&body),
                size: body.len() as u64,
                time_unix_nanos: 1,
                body_included: inline,
                encoding: Encoding::Raw,
                built_here: true,
            }),
            next: if last {
                (0..request.hints).map(|_| fresh_action()).collect()
            } else {
                Vec::new()
            },
            next_executables: Vec::new(),
        };
        wire::write_frame(io, &header).await?;
        if inline {
            io.write_all(&body).await?;
            io.flush().await?;
            bytes_sent.fetch_add(body.len() as u64, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// "Found" with a made-up body of `size` bytes, then `piece` bytes of it
/// every `every` (if it may go inline), never the whole.
async fn drip<T>(
    io: &mut T,
    size: u64,
    piece: usize,
    every: Duration,
    request: &RequestHeader,
    bytes_sent: &AtomicU64,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let inline = size <= request.max_inline;
    let header = ResponseHeader {
        version: wire::WIRE_VERSION,
        found: Some(FoundHeader {
            output: OutputId::of(b"a body too big to send"),
            size,
            time_unix_nanos: 1,
            body_included: inline,
            encoding: Encoding::Raw,
            built_here: true,
        }),
        next: Vec::new(),
        next_executables: Vec::new(),
    };
    wire::write_frame(io, &header).await?;
    io.flush().await?;
    if !inline {
        return Ok(());
    }
    let bytes = vec![7u8; piece];
    let mut sent = 0u64;
    while sent + (piece as u64) < size {
        io.write_all(&bytes).await?;
        io.flush().await?;
        sent += piece as u64;
        bytes_sent.fetch_add(piece as u64, Ordering::SeqCst);
        tokio::time::sleep(every).await;
    }
    std::future::pending().await
}

/// A version-1 server's answer: `request.action` alone, hints after it.
async fn version_one<T>(
    io: &mut T,
    entries: &[(ActionId, Vec<u8>)],
    request: &RequestHeader,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let Some(at) = entries
        .iter()
        .position(|(action, _)| *action == request.action)
    else {
        let header = ResponseHeader {
            version: 1,
            found: None,
            next: Vec::new(),
            next_executables: Vec::new(),
        };
        return wire::write_frame(io, &header).await;
    };
    let body = &entries[at].1;
    let header = ResponseHeader {
        version: 1,
        found: Some(FoundHeader {
            output: OutputId::of(body),
            size: body.len() as u64,
            time_unix_nanos: 1,
            body_included: body.len() as u64 <= request.max_inline,
            encoding: Encoding::Raw,
            built_here: true,
        }),
        next: entries[at + 1..]
            .iter()
            .take(request.hints as usize)
            .map(|(action, _)| *action)
            .collect(),
        next_executables: Vec::new(),
    };
    wire::write_frame(io, &header).await?;
    if header.found.is_some_and(|found| found.body_included) {
        io.write_all(body).await?;
    }
    io.flush().await
}

/// The tamperer's answer: `request.action`'s body with its first byte
/// flipped, raw whatever was accepted (the damage is in the body); "not
/// found" for an action it does not hold, or holds empty.
async fn tamper<T>(
    io: &mut T,
    entries: &Entries,
    request: &RequestHeader,
    served: &mpsc::Sender<ActionId>,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let Some(mut body) = (entries.0)(&request.action).filter(|body| !body.is_empty()) else {
        let header = ResponseHeader {
            version: 1,
            found: None,
            next: Vec::new(),
            next_executables: Vec::new(),
        };
        return wire::write_frame(io, &header).await;
    };
    let header = ResponseHeader {
        version: 1,
        found: Some(FoundHeader {
            output: OutputId::of(&body),
            size: body.len() as u64,
            time_unix_nanos: 1,
            body_included: true,
            encoding: Encoding::Raw,
            built_here: true,
        }),
        next: Vec::new(),
        next_executables: Vec::new(),
    };
    body[0] ^= 0xff;
    wire::write_frame(io, &header).await?;
    io.write_all(&body).await?;
    io.flush().await?;
    let _ = served.try_send(request.action);
    Ok(())
}

/// A compressed answer whose one chunk is not zstd; or "not found".
async fn bad_chunks<T>(io: &mut T, claimed: &[u8], request: &RequestHeader) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let accepted = request.accept.contains(&Encoding::Zstd);
    let header = ResponseHeader {
        version: wire::WIRE_VERSION,
        found: accepted.then(|| FoundHeader {
            output: OutputId::of(claimed),
            size: claimed.len() as u64,
            time_unix_nanos: 1,
            body_included: true,
            encoding: Encoding::Zstd,
            built_here: true,
        }),
        next: Vec::new(),
        next_executables: Vec::new(),
    };
    wire::write_frame(io, &header).await?;
    if accepted {
        io.write_all(&8u32.to_be_bytes()).await?;
        io.write_all(b"not zstd").await?;
    }
    io.flush().await
}

/// Starts a hostile peer on loopback.
pub async fn hostile(keypair: &Keypair, mode: Mode) -> Hostile {
    hostile_at(keypair, mode, loopback())
        .await
        .expect("the hostile peer to listen on loopback")
}

/// Starts a hostile peer listening on `address`.
pub async fn hostile_at(
    keypair: &Keypair,
    mode: Mode,
    address: Multiaddr,
) -> Result<Hostile, super::Error> {
    let requests = Arc::new(AtomicU64::new(0));
    let accepting_zstd = Arc::new(AtomicU64::new(0));
    let bytes_sent = Arc::new(AtomicU64::new(0));
    let silent = matches!(mode, Mode::Silent);
    let codec = HostileCodec {
        mode: Arc::new(mode),
        bytes_sent: bytes_sent.clone(),
    };
    let mut swarm = swarm(
        keypair,
        request_response::Behaviour::with_codec(
            codec,
            [(StreamProtocol::new(PROTOCOL_NAME), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
        ),
    );
    let address = listen(&mut swarm, address).await?;
    let peer = *swarm.local_peer_id();
    let counter = requests.clone();
    let accepting = accepting_zstd.clone();
    let task = tokio::spawn(async move {
        // A silent peer keeps the channels, so its streams stay open
        // without an answer (dropping them would tell the requester).
        let mut held = Vec::new();
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) = swarm.select_next_some().await
            {
                counter.fetch_add(1, Ordering::SeqCst);
                if request.accept.contains(&Encoding::Zstd) {
                    accepting.fetch_add(1, Ordering::SeqCst);
                }
                if silent {
                    held.push(channel);
                } else {
                    let _ = swarm.behaviour_mut().send_response(channel, request);
                }
            }
        }
    });
    Ok(Hostile {
        peer,
        address: address.with_p2p(peer).unwrap_or_else(|address| address),
        requests,
        accepting_zstd,
        bytes_sent,
        task,
    })
}
