//! The fetch protocol's request-response codec: an adapter between
//! `libp2p-request-response` and the two sides of an exchange.
//!
//! `libp2p-request-response` runs one codec clone per stream. On the
//! requesting side it calls `write_request` and then `read_response` on the
//! same clone, which is how `read_response` learns what was asked: the
//! outgoing [`Request`] is the books' request as it is, with the peer's
//! link beside it ([`Outgoing`]); only its header goes on the wire, and the
//! codec keeps the rest to read the answer by. The bytes themselves are
//! read by [`Requester`] and written by [`Server`].
//!
//! One type of request and one of response serve both directions because
//! the behaviour has one of each: the serving side reads a peer's header
//! and writes a [`Reply`], the requesting side writes our request and reads
//! an [`Answer`]. (A fetch as a plain `async fn` over a raw stream, with
//! the `libp2p-stream` crate, would drop these wrappers; see
//! `docs/architecture.md`.)

use std::io;
use std::sync::Arc;

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;

use crate::fetch::exchange::Answer;
use crate::fetch::in_flight::InFlight;
use crate::fetch::promise::Promise;
use crate::fetch::receive::reports::Reports;
use crate::fetch::receive::{Outgoing, Requester, cancelled};
use crate::protocol::metered::Metered;
use crate::protocol::wire::{self, RequestHeader};
use crate::serve::paced::MinRate;
use crate::serve::reply::{Reply, Server};
use crate::store::Store;

/// A request: one read from a peer, or one of ours to send.
#[derive(Debug)]
pub(crate) enum Request {
    /// A peer's, as its header said.
    Incoming(RequestHeader),
    /// Ours: what to send, and how to read its answer.
    Outgoing(Box<Outgoing>),
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
    pending: Option<Box<Outgoing>>,
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
    /// `transfer_rate` or better, within the bytes in flight of
    /// `in_flight`, and tells the books how each request goes on `reports`.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        max_body_size: u64,
        transfer_rate: u64,
        in_flight: Arc<InFlight>,
        reports: Reports,
    ) -> Self {
        Self {
            requester: Requester {
                store: store.clone(),
                max_body_size,
                transfer_rate,
                in_flight,
                agreement: None,
                reports,
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
        Ok(Request::Incoming(wire::read_frame(io).await?))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let outgoing = self
            .pending
            .take()
            .ok_or_else(|| io::Error::other("a response without a request"))?;
        self.requester
            .read_response(io, &outgoing)
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
        let Request::Outgoing(outgoing) = request else {
            return Err(io::Error::other("only our own requests are written"));
        };
        if outgoing.request.cancel.is_cancelled() {
            return Err(cancelled());
        }
        let header = outgoing.header()?;
        let key = outgoing.request.key;
        self.pending = Some(outgoing);
        wire::write_frame(io, &header).await?;
        self.requester.reports.promise(key, Promise::Asked).await;
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
