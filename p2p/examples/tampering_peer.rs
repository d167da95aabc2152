//! A hostile peer for warren's end-to-end tests: it serves a real warren
//! store, announcing each entry's true OutputID and size, but flips one byte
//! of every body it sends. A correct requester must reject every body (the
//! SHA-256 does not match), put this peer in a cooldown, and build locally.
//!
//! It is built from libp2p and [`warren_p2p::wire`] directly, because a real
//! node refuses to serve a body that does not match its OutputID. It accepts
//! every connection (it has no allowlist of its own).
//!
//! ```text
//! tampering_peer <store dir> <listen multiaddr> <key file>
//! ```
//!
//! The key file holds a libp2p protobuf-encoded keypair (as `warren init`
//! writes). Prints `listening <multiaddr>/p2p/<peer id>` once ready, then
//! `served <n>` after each tampered body.

#![expect(clippy::print_stdout, reason = "a test tool reporting to its test")]

use std::io;
use std::path::{Path, PathBuf};

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use warren_p2p::identity::Keypair;
use warren_p2p::wire::{self, Encoding, FoundHeader, RequestHeader, ResponseHeader};

/// It answers one action per request (`also` is ignored), as wire version 1
/// did, and says so.
const VERSION: u32 = 1;
use warren_p2p::{ActionId, Multiaddr, OutputId, PROTOCOL_NAME};

#[derive(Clone)]
struct Tamper {
    store: PathBuf,
}

/// An entry of a warren v1 store: `v1 <output hex> <size> <time ns>\n`.
fn lookup(store: &Path, action: &ActionId) -> Option<(OutputId, u64, Vec<u8>)> {
    let hex = action.to_hex();
    let text = std::fs::read_to_string(store.join("v1/actions").join(&hex[..2]).join(&hex)).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    let output_hex = fields.get(1)?;
    let output = OutputId::from_hex(output_hex).ok()?;
    let size: u64 = fields.get(2)?.parse().ok()?;
    let body = std::fs::read(
        store
            .join("v1/objects")
            .join(&output_hex[..2])
            .join(output_hex),
    )
    .ok()?;
    Some((output, size, body))
}

impl request_response::Codec for Tamper {
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
        Err(io::Error::other("the tampering peer never asks"))
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
        Err(io::Error::other("the tampering peer never asks"))
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
        let Some((output, size, mut body)) =
            lookup(&self.store, &request.action).filter(|(_, size, _)| *size > 0)
        else {
            let header = ResponseHeader {
                version: VERSION,
                found: None,
                next: Vec::new(),
            };
            return wire::write_frame(io, &header).await;
        };
        body[0] ^= 0xff;
        let header = ResponseHeader {
            version: VERSION,
            found: Some(FoundHeader {
                output,
                size,
                time_unix_nanos: 1,
                body_included: true,
                // Raw, whatever was accepted: the damage is in the body.
                encoding: Encoding::Raw,
                built_here: true,
            }),
            next: Vec::new(),
        };
        wire::write_frame(io, &header).await?;
        io.write_all(&body).await?;
        io.flush().await?;
        println!("served {}", request.action.to_hex());
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, listen, key] = &args[..] else {
        return Err("usage: tampering_peer <store dir> <listen multiaddr> <key file>".into());
    };
    let keypair = Keypair::from_protobuf_encoding(&std::fs::read(key)?)?;
    let codec = Tamper {
        store: PathBuf::from(store),
    };
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                codec,
                [(StreamProtocol::new(PROTOCOL_NAME), ProtocolSupport::Full)],
                request_response::Config::default(),
            )
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(std::time::Duration::from_secs(3600)))
        .build();
    swarm.listen_on(listen.parse::<Multiaddr>()?)?;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                let peer = *swarm.local_peer_id();
                println!(
                    "listening {}",
                    address.with_p2p(peer).expect("a plain listen address")
                );
            }
            SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => {
                let _ = swarm.behaviour_mut().send_response(channel, request);
            }
            _ => {}
        }
    }
}
