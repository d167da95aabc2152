//! Fetching, as the event loop carries it out: it feeds the books
//! ([`crate::fetch::books`]) what happened and does what they ask, in order:
//! sending requests (with the peer's link meter, traffic counter and
//! compression choice), setting timers, and keeping the peers' counters.
//!
//! [`Fetching`] holds the books, the libp2p ID of each request they sent,
//! and the channel on which the requesting side reports how requests go.
//! Who may hold what the books ask [`Holders`], which the peer table keeps
//! up to date (`publish_asked`); the rest they see through [`View`]:
//! whether peers answer batches, and whether the local store has an entry
//! already.

use std::collections::HashMap;
use std::sync::Arc;

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::EventLoop;
use super::peers::PeerTable;
use super::{Due, timer};
use crate::catalog::CatalogEntry;
use crate::config::NodeConfig;
use crate::fetch::Fetched;
use crate::fetch::books::{Books, Deadline, Limits, Output, Peers, Reply};
use crate::fetch::exchange::{Answer, Failure, Report, Request, RequestKey};
use crate::fetch::holders::Holders;
use crate::fetch::receive::{Outgoing, failure_of};
use crate::ids::ActionId;
use crate::node::client::Event;
use crate::node::codec::{self, Response};
use crate::node::failure::ConnectFailure;
use crate::protocol::wire::BATCH_VERSION;
use crate::store::Store;

/// See the module docs.
pub(super) struct Fetching {
    /// Fetches in flight, read-ahead and cooldowns.
    books: Books,
    /// The books' key of each request in flight, by libp2p's ID. An entry
    /// lasts until libp2p reports the request's end (an answer or a
    /// failure), which every request reaches by its deadline or
    /// cancellation.
    sent: HashMap<OutboundRequestId, RequestKey>,
    /// What the requesting side reports of requests still running.
    reports: mpsc::Receiver<Report>,
}

impl Fetching {
    pub(super) fn new(config: &NodeConfig, reports: mpsc::Receiver<Report>) -> Self {
        Self {
            books: Books::new(Limits::of(config)),
            sent: HashMap::new(),
            reports,
        }
    }

    pub(super) fn holders(&self) -> Arc<Holders> {
        self.books.holders()
    }

    pub(super) fn in_cooldown(&self, peer: &PeerId, now: Instant) -> bool {
        self.books.in_cooldown(peer, now)
    }

    /// The requesting side's next report.
    pub(super) async fn next_report(&mut self) -> Option<Report> {
        self.reports.recv().await
    }

    /// How many reports are queued.
    fn queued_reports(&self) -> usize {
        self.reports.len()
    }

    /// A report already queued. `recv` can say "nothing yet" while a
    /// report is queued: when another thread's sender took the slot
    /// before it and is still writing (tokio's channel hands out reports
    /// in order). `try_recv` waits out that write. A node on a
    /// single-threaded runtime, as the daemon's is, has no such sender.
    fn queued_report(&mut self) -> Option<Report> {
        self.reports.try_recv().ok()
    }
}

/// The books' view of peers and the store, borrowed from the event loop.
pub(super) struct View<'a> {
    pub(super) peers: &'a PeerTable,
    pub(super) store: &'a dyn Store,
}

impl Peers for View<'_> {
    fn batches(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|state| state.link.batches)
    }

    fn stored(&self, action: &ActionId) -> bool {
        self.store.contains(action)
    }
}

/// The books' view, from the event loop's own fields (so that the books
/// can be borrowed mutably beside it).
macro_rules! view {
    ($event_loop:expr) => {
        View {
            peers: &$event_loop.peers,
            store: &*$event_loop.store,
        }
    };
}

impl EventLoop {
    pub(super) fn start_fetch(&mut self, action: ActionId, reply: Reply) {
        (self.fetching.books).lookup(action, reply, Instant::now(), &view!(self));
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
        (self.fetching.books).replicate(peer, entries, Instant::now(), &view!(self));
        self.carry_out();
        tokio::spawn(async move {
            let results = futures::future::join_all(answers).await;
            let fetched = results.into_iter().map(|result| result.ok()?.ok());
            let _ = reply.send(fetched.collect());
        });
    }

    pub(super) fn on_fetch_event(
        &mut self,
        event: request_response::Event<codec::Request, Response>,
    ) {
        use request_response::{Event as E, Message};
        match event {
            E::Message {
                peer,
                message:
                    Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => match request {
                codec::Request::Incoming(header) => {
                    self.on_request(peer, request_id, header, channel);
                }
                codec::Request::Outgoing(_) => {
                    tracing::error!("the codec read one of our own requests from a peer");
                }
            },
            E::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match response {
                Response::Answer(answer) => self.on_answer(peer, request_id, answer),
                Response::Reply(_) => {
                    tracing::error!("the codec produced a reply on the requesting side");
                    self.on_request_failed(request_id, Failure::Ended);
                }
            },
            E::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, "fetch request failed: {error}");
                if matches!(
                    error,
                    request_response::OutboundFailure::UnsupportedProtocols
                ) {
                    self.peers.state(peer).failed(ConnectFailure::Protocol);
                }
                let why = match &error {
                    request_response::OutboundFailure::Io(e) => failure_of(e),
                    request_response::OutboundFailure::Timeout => Failure::TimedOut,
                    _ => Failure::Ended,
                };
                self.on_request_failed(request_id, why);
            }
            E::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, "serving a request failed: {error}");
                self.served(request_id);
            }
            E::ResponseSent { request_id, .. } => self.served(request_id),
        }
    }

    /// Handles the reports queued now. A request's reports are sent before
    /// libp2p hands over its end, or its deadline passes, and must be
    /// handled first: a batch that ended with entries unreported would
    /// count them missed though they landed, and a deadline would judge a
    /// peer by a promise already superseded. The count is taken first, so
    /// senders refilling the queue cannot keep the loop here.
    fn drain_reports(&mut self) {
        for _ in 0..self.fetching.queued_reports() {
            match self.fetching.queued_report() {
                Some(report) => self.on_report(report),
                None => break,
            }
        }
    }

    /// A single request's answer, or the end of a batch.
    fn on_answer(&mut self, peer: PeerId, request_id: OutboundRequestId, answer: Answer) {
        self.drain_reports();
        let Some(key) = self.fetching.sent.remove(&request_id) else {
            return;
        };
        let state = self.peers.state(peer);
        state.seen();
        if answer.outcome.is_none() {
            state.link.batches = answer.version >= BATCH_VERSION;
        }
        (self.fetching.books).on_answer(key, peer, answer, Instant::now(), &view!(self));
        self.carry_out();
    }

    /// What the requesting side reported of a request still running:
    /// what its peer has promised, or one entry of a batch, as soon as it
    /// landed (or did not).
    pub(super) fn on_report(&mut self, report: Report) {
        match report {
            Report::Promise { request, promise } => {
                self.fetching.books.on_promise(request, promise);
            }
            Report::Entry { fetch, outcome } => {
                let now = Instant::now();
                if let Some(peer) =
                    (self.fetching.books).on_report(fetch, outcome, now, &view!(self))
                {
                    self.peers.state(peer).seen();
                }
                self.carry_out();
            }
        }
    }

    fn on_request_failed(&mut self, request_id: OutboundRequestId, why: Failure) {
        self.drain_reports();
        if let Some(key) = self.fetching.sent.remove(&request_id) {
            (self.fetching.books).on_failed(key, why, Instant::now(), &view!(self));
            self.carry_out();
        }
    }

    pub(super) fn on_fetch_deadline(&mut self, deadline: Deadline) {
        self.drain_reports();
        (self.fetching.books).on_deadline(deadline, Instant::now(), &view!(self));
        self.carry_out();
    }

    /// Does what the books decided, in order.
    fn carry_out(&mut self) {
        while let Some(output) = self.fetching.books.poll_output() {
            match output {
                Output::Send(request) => self.send(request),
                Output::Timer { at, deadline } => {
                    self.timers.push(timer(at, Due::Fetch(deadline)));
                }
                Output::Committed {
                    peer,
                    size,
                    read_ahead,
                } => {
                    let counters = &mut self.peers.state(peer).link.counters;
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
                    let counters = &mut self.peers.state(peer).link.counters;
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
        let link = &self.peers.state(peer).link;
        let (meter, traffic) = (link.meter.clone(), link.traffic.clone());
        if let Some(choice) = meter.take_choice() {
            tracing::info!(
                %peer,
                "bodies came at {:.0} MB/s raw and {:.0} MB/s compressed: asking for {} bodies",
                choice.raw / 1e6,
                choice.zstd / 1e6,
                if choice.compress { "compressed" } else { "raw" }
            );
        }
        let compressed = meter.compress(self.config.compression);
        let outgoing = Outgoing {
            request,
            link: meter,
            traffic,
            compressed,
        };
        let request_id = self
            .swarm
            .behaviour_mut()
            .fetch
            .send_request(&peer, codec::Request::Outgoing(Box::new(outgoing)));
        self.fetching.sent.insert(request_id, key);
    }
}
