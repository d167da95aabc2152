//! A peer that speaks the fetch protocol but misbehaves: it lies about a
//! body, sends compressed chunks that do not decode, dies halfway through
//! a body, drips a huge one, or never answers; or an honest peer of wire
//! version 1, which answers one action per request.
//!
//! It is built from libp2p directly and [`warren_p2p::wire`], not from a
//! node, because a node refuses to serve a body that does not match its
//! OutputID. It accepts every connection (no allowlist of its own).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use tokio::task::JoinHandle;
use warren_p2p::identity::Keypair;
use warren_p2p::wire::{self, Encoding, FoundHeader, RequestHeader, ResponseHeader};
use warren_p2p::{ActionId, Multiaddr, OutputId, PROTOCOL_NAME, PeerId, summary};

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
    };
    wire::write_frame(io, &header).await?;
    if header.found.is_some_and(|found| found.body_included) {
        io.write_all(body).await?;
    }
    io.flush().await
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
    let address = listen(&mut swarm).await;
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
    Hostile {
        peer,
        address: address.with_p2p(peer).unwrap(),
        requests,
        accepting_zstd,
        bytes_sent,
        task,
    }
}

/// A peer that answers every summary request at once with an empty
/// summary of one epoch, instead of holding it until it has news: what a
/// buggy or hostile peer does to make its requester ask again and again.
/// Counts the requests it gets.
pub struct SummarySpammer {
    pub peer: PeerId,
    /// Ends in `/p2p/<peer id>`.
    pub address: Multiaddr,
    pub requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for SummarySpammer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Default)]
struct EmptySummaries;

impl request_response::Codec for EmptySummaries {
    type Protocol = StreamProtocol;
    type Request = summary::SummaryRequest;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        wire::read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("the spammer only answers"))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Self::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("the spammer only answers"))
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, (): ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let header = summary::SummaryHeader {
            epoch: 7,
            from: 0,
            count: 0,
            generation: 0,
        };
        wire::write_frame(io, &header).await
    }
}

pub async fn summary_spammer(keypair: &Keypair) -> SummarySpammer {
    let requests = Arc::new(AtomicU64::new(0));
    let mut swarm = swarm(
        keypair,
        request_response::Behaviour::with_codec(
            EmptySummaries,
            [(
                StreamProtocol::new(summary::PROTOCOL_NAME),
                ProtocolSupport::Full,
            )],
            request_response::Config::default(),
        ),
    );
    let address = listen(&mut swarm).await;
    let peer = *swarm.local_peer_id();
    let counter = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = swarm.select_next_some().await
            {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = swarm.behaviour_mut().send_response(channel, ());
            }
        }
    });
    SummarySpammer {
        peer,
        address: address.with_p2p(peer).unwrap(),
        requests,
        task,
    }
}

/// A requester that asks and never reads the answers: each of its
/// requests holds a stream (and, on the serving side, whatever serves it)
/// until the server gives up. Dropped, it disconnects.
pub struct SlowReader {
    task: JoinHandle<()>,
}

impl Drop for SlowReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Default)]
struct NeverReads;

impl request_response::Codec for NeverReads {
    type Protocol = StreamProtocol;
    type Request = RequestHeader;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<RequestHeader>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("the slow reader serves nothing"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        std::future::pending().await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: RequestHeader,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        wire::write_frame(io, &request).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _: &mut T, (): ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("the slow reader serves nothing"))
    }
}

/// Connects to `server` and asks it for each of `actions` (whole bodies,
/// one request each), never reading an answer.
pub async fn slow_reader(
    keypair: &Keypair,
    server: &Multiaddr,
    actions: &[ActionId],
) -> SlowReader {
    let mut swarm = swarm(
        keypair,
        request_response::Behaviour::with_codec(
            NeverReads,
            [(
                StreamProtocol::new(PROTOCOL_NAME),
                ProtocolSupport::Outbound,
            )],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(600))
                .with_max_concurrent_streams(1024),
        ),
    );
    swarm.dial(server.clone()).unwrap();
    let server_peer = loop {
        let event = tokio::time::timeout(super::WAIT, swarm.select_next_some())
            .await
            .expect("the slow reader to connect");
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = event {
            break peer_id;
        }
    };
    for action in actions {
        let request = RequestHeader {
            version: wire::WIRE_VERSION,
            action: *action,
            max_inline: u64::MAX,
            hints: 0,
            also: Vec::new(),
            accept: Vec::new(),
        };
        swarm.behaviour_mut().send_request(&server_peer, request);
    }
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    SlowReader { task }
}

/// A swarm over TCP, Noise and Yamux with one behaviour, as a hostile peer
/// needs (no allowlist, connections kept for a minute at least).
fn swarm<B: libp2p::swarm::NetworkBehaviour>(keypair: &Keypair, behaviour: B) -> libp2p::Swarm<B> {
    SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build()
}

/// Listens on loopback; the address it got.
async fn listen<B: libp2p::swarm::NetworkBehaviour>(swarm: &mut libp2p::Swarm<B>) -> Multiaddr {
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    loop {
        let event = tokio::time::timeout(super::WAIT, swarm.select_next_some())
            .await
            .expect("the hostile peer to listen");
        if let SwarmEvent::NewListenAddr { address, .. } = event {
            return address;
        }
    }
}

/// The summary bomber: asks a victim for its summary under a foreign
/// epoch, `requests` times at once, and records how many prefixes each
/// answer carried.
pub struct SummaryBomber {
    pub peer: PeerId,
    /// Prefix counts of the answers received.
    pub answers: Arc<std::sync::Mutex<Vec<u64>>>,
    task: JoinHandle<()>,
}

impl Drop for SummaryBomber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn summary_bomber(
    keypair: &Keypair,
    victim: Multiaddr,
    requests: usize,
) -> SummaryBomber {
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut swarm = swarm(
        keypair,
        request_response::Behaviour::with_codec(
            CountingSummaries,
            [(
                StreamProtocol::new(summary::PROTOCOL_NAME),
                ProtocolSupport::Full,
            )],
            request_response::Config::default()
                .with_request_timeout(std::time::Duration::from_secs(60)),
        ),
    );
    let peer = *swarm.local_peer_id();
    swarm.dial(victim).unwrap();
    let recorded = answers.clone();
    let task = tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    for n in 0..requests {
                        let request = summary::SummaryRequest {
                            epoch: 0xbad_0000 + n as u64,
                            since: 0,
                            wait_ms: 30_000,
                        };
                        swarm.behaviour_mut().send_request(&peer_id, request);
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => recorded.lock().unwrap().push(response),
                _ => {}
            }
        }
    });
    SummaryBomber {
        peer,
        answers,
        task,
    }
}

#[derive(Clone)]
struct CountingSummaries;

impl request_response::Codec for CountingSummaries {
    type Protocol = StreamProtocol;
    type Request = summary::SummaryRequest;
    type Response = u64;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("the bomber only asks"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<u64>
    where
        T: AsyncRead + Unpin + Send,
    {
        let header: summary::SummaryHeader = wire::read_frame(io).await?;
        let mut sink = futures::io::sink();
        futures::io::copy(futures::AsyncReadExt::take(io, header.count * 8), &mut sink).await?;
        Ok(header.count)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Self::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        wire::write_frame(io, &request).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _: &mut T, _: u64) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("the bomber only asks"))
    }
}

/// The handshake holder: strangers that open TCP connections to a victim
/// and never send a byte, each holding one of its handshake slots for as
/// long as the victim lets it. Sources are loopback addresses (any of
/// 127/8 binds on Linux), so one test can play many machines.
#[derive(Default)]
pub struct IdleHolder {
    streams: Vec<tokio::net::TcpStream>,
}

impl IdleHolder {
    /// Opens one idle connection from `source` to `victim`.
    pub async fn open(
        &mut self,
        source: std::net::Ipv4Addr,
        victim: std::net::SocketAddr,
    ) -> io::Result<()> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        // The kernel gives sources of different addresses the same ports,
        // and a node in this process that dials binds its listen port on
        // 0.0.0.0 (libp2p's port reuse): without SO_REUSEADDR here that
        // bind fails while a stranger's socket holds the port.
        socket.set_reuseaddr(true)?;
        socket.bind((source, 0).into())?;
        self.streams.push(socket.connect(victim).await?);
        Ok(())
    }

    /// Forgets the connections the victim closed (refused, or gave up on);
    /// how many it still holds open.
    pub fn still_open(&mut self) -> usize {
        self.streams.retain(|stream| {
            let mut byte = [0; 1];
            match stream.try_read(&mut byte) {
                Ok(0) => false,
                Ok(_) => true,
                Err(error) => error.kind() == io::ErrorKind::WouldBlock,
            }
        });
        self.streams.len()
    }
}

/// The TCP address of a node's listen address (`/ip4/…/tcp/…/…`).
pub fn socket_address(address: &Multiaddr) -> std::net::SocketAddr {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    for protocol in address.iter() {
        match protocol {
            Protocol::Ip4(v4) => ip = Some(std::net::IpAddr::V4(v4)),
            Protocol::Ip6(v6) => ip = Some(std::net::IpAddr::V6(v6)),
            Protocol::Tcp(port) => return (ip.expect("an IP before the port"), port).into(),
            _ => {}
        }
    }
    panic!("{address} has no TCP port")
}
