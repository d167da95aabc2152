//! Fetching, as the event loop carries it out: it feeds the books
//! ([`crate::fetch::books`]) what happened and does what they ask, in order:
//! sending requests (with the peer's link meter, traffic counter and
//! compression choice), setting timers, and keeping the peers' counters.
//!
//! Who may hold what the books ask [`Holders`](crate::fetch::holders::Holders),
//! which the event loop keeps up to date (see `publish_asked`); the rest
//! they see through [`View`]: whether peers answer batches, and whether
//! the local store has an entry already.

use std::collections::HashMap;
use std::pin::Pin;

use libp2p::PeerId;
use libp2p::request_response::OutboundRequestId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::EventLoop;
use super::peers::PeerState;
use crate::catalog::CatalogEntry;
use crate::fetch::Fetched;
use crate::fetch::books::{Deadline, Output, Peers, Reply};
use crate::fetch::exchange::{Answer, Failure, Report, Request, RequestKey};
use crate::fetch::receive::Outgoing;
use crate::ids::ActionId;
use crate::node::client::Event;
use crate::node::codec;
use crate::protocol::wire::BATCH_VERSION;
use crate::store::Store;

/// A timer of the event loop's.
#[derive(Debug, Clone, Copy)]
pub(super) enum Due {
    /// One the books asked for.
    Fetch(Deadline),
    /// Time to ask this peer for the rest of its summary.
    Summary(PeerId),
}

pub(super) type Timer = Pin<Box<dyn Future<Output = Due> + Send>>;

pub(super) fn timer(at: Instant, due: Due) -> Timer {
    Box::pin(async move {
        tokio::time::sleep_until(at).await;
        due
    })
}

/// The books' view of peers and the store, borrowed from the event loop.
pub(super) struct View<'a> {
    pub(super) peers: &'a HashMap<PeerId, PeerState>,
    pub(super) store: &'a dyn Store,
}

impl Peers for View<'_> {
    fn batches(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|state| state.batches)
    }

    fn stored(&self, action: &ActionId) -> bool {
        self.store.contains(action)
    }
}

/// The books' view, from the event loop's own fields (so that the books
/// can be borrowed mutably beside it).
macro_rules! view {
    ($event_loop:expr) => {
        crate::node::fetching::View {
            peers: &$event_loop.peers,
            store: &*$event_loop.store,
        }
    };
}

impl EventLoop {
    pub(super) fn start_fetch(&mut self, action: ActionId, reply: Reply) {
        self.books
            .lookup(action, reply, Instant::now(), &view!(self));
        self.carry_out();
    }

    /// Replicates `entries` of `peer`'s catalog; one answer per entry on
    /// `reply` once all have ended.
    pub(super) fn start_replication(
        &mut self,
        peer: PeerId,
        entries: Vec<CatalogEntry>,
        reply: oneshot::Sender<Vec<Option<Fetched>>>,
    ) {
        let (entries, answers): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .map(|entry| {
                let (sender, answer) = oneshot::channel();
                ((entry.action, entry.size, sender), answer)
            })
            .unzip();
        self.books
            .replicate(peer, entries, Instant::now(), &view!(self));
        self.carry_out();
        tokio::spawn(async move {
            let results = futures::future::join_all(answers).await;
            let fetched = results.into_iter().map(|result| result.ok()?.ok());
            let _ = reply.send(fetched.collect());
        });
    }

    /// A single request's answer, or the end of a batch.
    pub(super) fn on_answer(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        answer: Answer,
    ) {
        let Some(key) = self.sent.remove(&request_id) else {
            return;
        };
        let state = self.peer(peer);
        state.seen();
        if answer.outcome.is_none() {
            state.batches = answer.version >= BATCH_VERSION;
        }
        self.books
            .on_answer(key, peer, answer, Instant::now(), &view!(self));
        self.carry_out();
    }

    /// What the requesting side reported of a request still running:
    /// what its peer has promised, or one entry of a batch, as soon as it
    /// landed (or did not).
    pub(super) fn on_report(&mut self, report: Report) {
        match report {
            Report::Promise { request, promise } => self.books.on_promise(request, promise),
            Report::Entry { fetch, outcome } => {
                if let Some(peer) =
                    self.books
                        .on_report(fetch, outcome, Instant::now(), &view!(self))
                {
                    self.peer(peer).seen();
                }
                self.carry_out();
            }
        }
    }

    pub(super) fn on_request_failed(&mut self, request_id: OutboundRequestId, why: Failure) {
        if let Some(key) = self.sent.remove(&request_id) {
            self.books.on_failed(key, why, Instant::now(), &view!(self));
            self.carry_out();
        }
    }

    pub(super) fn on_fetch_deadline(&mut self, deadline: Deadline) {
        self.books
            .on_deadline(deadline, Instant::now(), &view!(self));
        self.carry_out();
    }

    /// Does what the books decided, in order.
    fn carry_out(&mut self) {
        while let Some(output) = self.books.poll_output() {
            match output {
                Output::Send(send) => self.send(send),
                Output::Timer { at, deadline } => {
                    self.timers.push(timer(at, Due::Fetch(deadline)));
                }
                Output::Committed {
                    peer,
                    size,
                    read_ahead,
                } => {
                    let counters = &mut self.peer(peer).counters;
                    counters.hits_received += 1;
                    counters.bytes_in += size;
                    if read_ahead {
                        counters.read_ahead += 1;
                    }
                }
                Output::Rejected {
                    peer,
                    action,
                    reason,
                    bytes,
                } => {
                    let counters = &mut self.peer(peer).counters;
                    counters.rejected_bodies += 1;
                    counters.bytes_in += bytes;
                    self.emit(Event::BodyRejected {
                        peer,
                        action,
                        reason,
                    });
                }
            }
        }
    }

    /// Sends one request the books booked, asking for compressed bodies if
    /// the peer's link says that pays.
    fn send(&mut self, request: Request) {
        let (key, peer) = (request.key, request.peer);
        let state = self.peer(peer);
        let link = state.link.clone();
        let traffic = state.traffic.clone();
        if let Some(choice) = link.take_choice() {
            tracing::info!(
                %peer,
                "bodies came at {:.0} MB/s raw and {:.0} MB/s compressed: asking for {} bodies",
                choice.raw / 1e6,
                choice.zstd / 1e6,
                if choice.compress { "compressed" } else { "raw" }
            );
        }
        let compressed = link.compress(self.config.compression);
        let outgoing = Outgoing {
            request,
            link,
            traffic,
            compressed,
        };
        let request_id = self
            .swarm
            .behaviour_mut()
            .fetch
            .send_request(&peer, codec::Request::Outgoing(Box::new(outgoing)));
        self.sent.insert(request_id, key);
    }
}

/// The books' key of each request in flight, by libp2p's ID. An entry
/// lasts until libp2p reports the request's end (an answer or a failure),
/// which every request reaches by its deadline or cancellation.
pub(super) type Sent = HashMap<OutboundRequestId, RequestKey>;
