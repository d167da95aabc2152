//! Peers that abuse summaries: the spammer answers every summary request
//! at once, so that its requester would ask in a loop; the bomber asks a
//! victim for its summary under foreign epochs, many times at once.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::task::JoinHandle;

use super::{listen, loopback, swarm};
use crate::protocol::wire;
use crate::summary;

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

/// Starts a summary spammer on loopback.
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
    let address = listen(&mut swarm, loopback())
        .await
        .expect("the spammer to listen on loopback");
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

/// Starts a summary bomber that dials `victim` and sends its `requests`
/// once connected.
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
