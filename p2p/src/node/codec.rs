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
