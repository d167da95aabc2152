//! Serving: answering peers' requests from the local store.
//!
//! The event loop checks the allowlist and takes a serve permit, then
//! hands the request's actions (at most [`MAX_BATCH`]) to the codec, which
//! looks each up and streams its answer in turn ([`crate::serve::answer`]).
//! Without a permit, every action is answered "not found" at once, without
//! a lookup. What was sent is counted when the exchange ends, as it ended.
//!
//! # Who gets a permit
//!
//! An answer holds its permit until it is written, and a peer may read at
//! the minimum rate (`serve::paced`): with big bodies, for minutes. So
//! permits are shared by [`may_take`]: a peer that holds none gets one
//! whenever one is free, and a peer that holds some gets another only
//! while more than a quarter of all (at least one) stay free. One busy peer thus gets
//! three quarters (12 of the default 16); the quarter left goes one at a
//! time to peers that hold none, so it takes five peers that never let go
//! to hold every permit, and two slow readers leave a third peer served.
//! Cutting readers off sooner would also cut honest ones on a slow link,
//! and taking a permit back mid-answer would count against an honest
//! server as a stall; a share of permits does neither.

use std::collections::HashMap;
use std::sync::Arc;

use libp2p::PeerId;
use libp2p::request_response::{InboundRequestId, ResponseChannel};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::EventLoop;
use crate::ids::ActionId;
use crate::node::client::Event;
use crate::node::codec::Response;
use crate::protocol::wire::{Encoding, MAX_BATCH, RequestHeader};
use crate::serve::reply::{Reply, SentLog};

/// The requests being answered, and the permits they hold.
pub(super) struct Serving {
    /// Caps concurrent serves; a permit lives until its response is sent.
    permits: Arc<Semaphore>,
    total: usize,
    answering: HashMap<InboundRequestId, Answering>,
}

/// One request being answered.
struct Answering {
    peer: PeerId,
    /// Bodies sent so far; the codec appends.
    sent: SentLog,
    permit: Option<OwnedSemaphorePermit>,
}

impl Serving {
    /// At most `total` requests answered at once.
    pub(super) fn new(total: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            answering: HashMap::new(),
        }
    }

    /// A permit to answer one more request of `peer`, if it may take one
    /// (see the module docs).
    fn permit(&self, peer: PeerId) -> Option<OwnedSemaphorePermit> {
        let held = (self.answering.values())
            .filter(|answering| answering.peer == peer && answering.permit.is_some())
            .count();
        let free = self.permits.available_permits();
        let permit = if may_take(self.total, free, held) {
            self.permits.clone().try_acquire_owned().ok()
        } else {
            None
        };
        if permit.is_none() {
            tracing::debug!(%peer, held, "too many requests being served; answering not found");
        }
        permit
    }

    /// The exchange of `request_id` ended: whom it was for and what it sent.
    fn ended(&mut self, request_id: InboundRequestId) -> Option<(PeerId, Vec<(ActionId, u64)>)> {
        let answering = self.answering.remove(&request_id)?;
        let sent = std::mem::take(&mut *answering.sent.lock().expect("lock not poisoned"));
        Some((answering.peer, sent))
    }
}

impl EventLoop {
    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        header: RequestHeader,
        channel: ResponseChannel<Response>,
    ) {
        if !self.peers.allowlist().serves(&peer) {
            // Dropping the channel answers nothing; the stream is reset.
            tracing::debug!(%peer, "request from a peer we do not serve; ignored");
            return;
        }
        self.peers.state(peer).seen();
        let permit = self.serving.permit(peer);
        let sent = Arc::default();
        let reply = Reply {
            actions: header.actions().take(MAX_BATCH).copied().collect(),
            max_inline: header.max_inline,
            hints: header.hints,
            compress: header.accept.contains(&Encoding::Zstd),
            refuse: permit.is_none(),
            sent: Arc::clone(&sent),
            traffic: self.peers.state(peer).link.traffic.clone(),
        };
        let accepted = self
            .swarm
            .behaviour_mut()
            .fetch
            .send_response(channel, Response::Reply(reply));
        if accepted.is_ok() {
            let answering = Answering { peer, sent, permit };
            self.serving.answering.insert(request_id, answering);
        }
    }

    /// Counts what an exchange sent, however it ended.
    pub(super) fn served(&mut self, request_id: InboundRequestId) {
        let Some((peer, sent)) = self.serving.ended(request_id) else {
            return;
        };
        let state = self.peers.state(peer);
        state.seen();
        for (_, bytes) in &sent {
            state.link.counters.hits_served += 1;
            state.link.counters.bytes_out += bytes;
        }
        for (action, bytes) in sent {
            self.emit(Event::Served {
                peer,
                action,
                bytes,
            });
        }
    }
}

/// Whether a peer holding `held` permits may take one more, with `free` of
/// `total` free (see the module docs).
fn may_take(total: usize, free: usize, held: usize) -> bool {
    free > 0 && (held == 0 || free > (total / 4).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peers that each take every permit they may, one after the other,
    /// never letting go: how many each ends up with.
    fn greedy(total: usize, peers: usize) -> Vec<usize> {
        let mut held = vec![0; peers];
        let mut free = total;
        for share in &mut held {
            while may_take(total, free, *share) {
                *share += 1;
                free -= 1;
            }
        }
        held
    }

    /// A peer that holds its permits for minutes (reading at the minimum
    /// rate) used to get three quarters of them, and a second one the
    /// rest: a third peer got none.
    #[test]
    fn two_peers_that_never_let_go_leave_permits_for_others() {
        assert_eq!(greedy(16, 3), [12, 1, 1]);
        assert_eq!(greedy(16, 6), [12, 1, 1, 1, 1, 0]);
    }

    #[test]
    fn a_lone_peer_gets_three_quarters_and_tiny_caps_still_serve() {
        assert_eq!(greedy(16, 1), [12]);
        assert_eq!(greedy(1, 2), [1, 0]);
        assert_eq!(greedy(2, 2), [1, 1]);
        assert_eq!(greedy(4, 2), [3, 1]);
    }
}
