//! Peers that hold a node's resources: the slow reader asks and never
//! reads its answers (holding serve permits), and the handshake holder
//! opens connections that never send a byte (holding handshake slots).

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use tokio::task::JoinHandle;

use super::{WAIT, swarm};
use crate::PROTOCOL_NAME;
use crate::ids::ActionId;
use crate::protocol::wire::{self, RequestHeader};

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
        let event = tokio::time::timeout(WAIT, swarm.select_next_some())
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
