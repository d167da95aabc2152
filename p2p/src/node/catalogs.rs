//! Catalogs on the event loop: answering peers' requests from the store's
//! put order, and asking peers for theirs on a client's behalf (see
//! [`crate::catalog`]).

use std::collections::HashMap;

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId};
use tokio::sync::oneshot;

use super::EventLoop;
use crate::Error;
use crate::catalog::{Catalog, CatalogRequest, MAX_ENTRIES};

/// Catalog requests we sent, by request, and whom to tell the answer.
#[derive(Default)]
pub(super) struct Catalogs {
    asked: HashMap<OutboundRequestId, oneshot::Sender<Result<Catalog, Error>>>,
}

impl Catalogs {
    fn asked(
        &mut self,
        request: OutboundRequestId,
        reply: oneshot::Sender<Result<Catalog, Error>>,
    ) {
        self.asked.insert(request, reply);
    }

    /// Whom to tell what came of `request`.
    fn answered(
        &mut self,
        request: &OutboundRequestId,
    ) -> Option<oneshot::Sender<Result<Catalog, Error>>> {
        self.asked.remove(request)
    }
}

impl EventLoop {
    /// Asks `peer` for its catalog; the answer goes to `reply`.
    pub(super) fn ask_catalog(
        &mut self,
        peer: PeerId,
        request: CatalogRequest,
        reply: oneshot::Sender<Result<Catalog, Error>>,
    ) {
        if !self.peers.allowlist().pulls_from(&peer) || !self.swarm.is_connected(&peer) {
            let _ = reply.send(Err(Error::NotConnected { peer }));
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .catalog
            .send_request(&peer, request);
        self.catalogs.asked(id, reply);
    }

    pub(super) fn on_catalog_event(
        &mut self,
        event: request_response::Event<CatalogRequest, Catalog>,
    ) {
        use request_response::{Event as E, Message};
        match event {
            E::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                if !self.peers.allowlist().serves(&peer) {
                    tracing::debug!(%peer, "catalog request from a peer we do not serve; ignored");
                    return;
                }
                self.peers.state(peer).seen();
                let request = CatalogRequest {
                    limit: request.limit.min(MAX_ENTRIES as u32),
                    ..request
                };
                let catalog = self.store.catalog(&request).unwrap_or_default();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .catalog
                    .send_response(channel, catalog);
            }
            E::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.peers.state(peer).seen();
                if let Some(reply) = self.catalogs.answered(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            E::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, "catalog request failed: {error}");
                if let Some(reply) = self.catalogs.answered(&request_id) {
                    let _ = reply.send(Err(Error::Catalog {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            E::InboundFailure { .. } | E::ResponseSent { .. } => {}
        }
    }
}
