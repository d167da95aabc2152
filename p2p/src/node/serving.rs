//! Serving: answering peers' requests from the local store.
//!
//! The event loop checks the allowlist and the serving cap (in all, and
//! three quarters of it per peer, so that one slow reader cannot hold
//! every permit)
//! and hands the
//! request's actions (at most [`MAX_BATCH`]) to the codec, which looks each
//! up and streams its answer in turn ([`crate::serve::answer`]). Over the cap,
//! every action is answered "not found" at once, without a lookup. What
//! was sent is counted when the exchange ends, as it ended.

use std::sync::Arc;

use libp2p::PeerId;
use libp2p::request_response::{InboundRequestId, ResponseChannel};
use tokio::sync::OwnedSemaphorePermit;

use super::EventLoop;
use crate::node::client::Event;
use crate::node::codec::Response;
use crate::protocol::wire::{Encoding, MAX_BATCH, RequestHeader};
use crate::serve::reply::{Reply, SentLog};

pub(super) struct Serving {
    pub(super) peer: PeerId,
    /// Bodies sent so far; the codec appends.
    pub(super) sent: SentLog,
    pub(super) _permit: Option<OwnedSemaphorePermit>,
}

impl EventLoop {
    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        header: RequestHeader,
        channel: ResponseChannel<Response>,
    ) {
        if !self.allowlist.serves(&peer) {
            // Dropping the channel answers nothing; the stream is reset.
            tracing::debug!(%peer, "request from a peer we do not serve; ignored");
            return;
        }
        self.peer(peer).seen();
        // One peer gets at most three quarters of the permits, so a peer
        // that reads slowly (or not at all) cannot hold them all: a quarter
        // stays for the others, and one busy peer still gets most.
        let total = self.config.max_concurrent_serves;
        let share = (total - total / 4).max(1);
        let held = self
            .serving
            .values()
            .filter(|serving| serving.peer == peer)
            .count();
        let permit = if held < share {
            self.serve_permits.clone().try_acquire_owned().ok()
        } else {
            None
        };
        if permit.is_none() {
            tracing::debug!(%peer, held, "too many requests being served; answering not found");
        }
        let sent = Arc::default();
        let reply = Reply {
            actions: header.actions().take(MAX_BATCH).copied().collect(),
            max_inline: header.max_inline,
            hints: header.hints,
            compress: header.accept.contains(&Encoding::Zstd),
            refuse: permit.is_none(),
            sent: Arc::clone(&sent),
            traffic: self.peer(peer).traffic.clone(),
        };
        let accepted = self
            .swarm
            .behaviour_mut()
            .fetch
            .send_response(channel, Response::Reply(reply));
        if accepted.is_ok() {
            self.serving.insert(
                request_id,
                Serving {
                    peer,
                    sent,
                    _permit: permit,
                },
            );
        }
    }

    /// Counts what an exchange sent, however it ended.
    pub(super) fn served(&mut self, request_id: InboundRequestId) {
        let Some(serving) = self.serving.remove(&request_id) else {
            return;
        };
        let sent = std::mem::take(&mut *serving.sent.lock().expect("lock not poisoned"));
        let state = self.peer(serving.peer);
        state.seen();
        for (_, bytes) in &sent {
            state.counters.hits_served += 1;
            state.counters.bytes_out += bytes;
        }
        for (action, bytes) in sent {
            self.emit(Event::Served {
                peer: serving.peer,
                action,
                bytes,
            });
        }
    }
}
