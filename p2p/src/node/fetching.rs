//! Fetching: asking peers, choosing whose body to take, and time limits.
//!
//! A fetch asks every connected, allowlisted peer that is not in cooldown at
//! once, for bodies up to `inline_limit` (1 MiB) inline; peers with bigger
//! ones answer "found, not included" ([`Outcome::Announced`]). Those become
//! candidates, asked one at a time for the full body, so a big body is
//! pulled from one peer, not from all. The first committed body answers the
//! fetch and cancels the rest. With a single eligible peer there is nobody
//! to choose between, so it is asked for any body inline: that saves the
//! second round trip.
//!
//! Time limits: a lookup request that has not answered "found" by the
//! lookup deadline is cancelled; a positive one then runs on its transfer
//! timeout (enforced by the codec, with a timer here as a backstop), as
//! does each body request. So a fetch ends when its last request does, and
//! no request outlives its limit.
//!
//! A request normally serves one fetch. A read-ahead batch (`read_ahead`)
//! is one request serving a fetch per action: each of those ends when the
//! codec reports its entry ([`EventLoop::on_report`]), or when the request
//! ends without having reported it.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::request_response::OutboundRequestId;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::EventLoop;
use super::read_ahead::HINTS;
use crate::fetch::receive::{Answer, BatchReports, Local, Meta, Outcome, RejectReason, Report};
use crate::ids::ActionId;
use crate::node::client::{Event, Fetched};
use crate::node::codec::Request;
use crate::protocol::wire::{BATCH_VERSION, Encoding, RequestHeader, WIRE_VERSION};

pub(super) type FetchId = u64;
pub(super) type Timer = Pin<Box<dyn Future<Output = Deadline> + Send>>;

pub(super) struct PendingFetch {
    pub(super) action: ActionId,
    /// Lookups waiting for this fetch: none for a read-ahead, until a
    /// lookup for the same action joins it.
    pub(super) replies: Vec<oneshot::Sender<Option<Fetched>>>,
    /// Started by read-ahead (and counted in its in-flight number).
    pub(super) read_ahead: bool,
    /// Parent of every request's token: cancelling it stops them all.
    pub(super) cancel: CancellationToken,
    pub(super) requests: HashSet<OutboundRequestId>,
    /// Peers that hold the body but did not send it, in answer order.
    pub(super) candidates: VecDeque<(PeerId, Meta)>,
    pub(super) body_request: Option<OutboundRequestId>,
    /// Lookup requests went to every eligible peer. A read-ahead fetch
    /// that a lookup joined does that once, should its batch end without
    /// the entry, so the lookup is not a miss because of read-ahead.
    pub(super) asked_everyone: bool,
}

pub(super) struct RequestInfo {
    /// The fetches this request serves, in the order of its actions: one,
    /// or a batch's that have not been reported yet.
    pub(super) fetches: Vec<FetchId>,
    pub(super) peer: PeerId,
    pub(super) phase: Phase,
    pub(super) max_inline: u64,
    pub(super) cancel: CancellationToken,
    pub(super) positive: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Asking everyone whether they hold the action.
    Lookup,
    /// Fetching an announced body from one peer.
    Body,
    /// Fetching a run of hinted entries from one peer, ahead of lookups.
    ReadAhead,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Deadline {
    Lookup(FetchId),
    Request(OutboundRequestId),
    /// Time to ask this peer for the rest of its summary.
    Summary(PeerId),
}

impl EventLoop {
    pub(super) fn eligible(&self, peer: &PeerId, now: Instant) -> bool {
        self.allowlist.contains(peer)
            && self.swarm.is_connected(peer)
            && !self.in_cooldown(peer, now)
    }

    /// Whether `peer` is left out for having sent a body that failed.
    fn in_cooldown(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers.get(peer).is_some_and(|s| s.in_cooldown(now))
    }

    pub(super) fn start_fetch(
        &mut self,
        action: ActionId,
        reply: oneshot::Sender<Option<Fetched>>,
    ) {
        // Already being fetched (read ahead, or asked by another helper).
        if let Some(fetch) = self
            .active
            .get(&action)
            .and_then(|id| self.fetches.get_mut(id))
        {
            fetch.replies.push(reply);
            return;
        }
        self.read_ahead.take(&action);
        let id = self.new_fetch(action, Some(reply));
        if !self.ask_everyone(id) {
            // Nobody to ask, or no summary names it: a miss at once.
            tracing::trace!(action = action.to_hex(), "no peer may hold it");
            self.finish(id, None);
        }
    }

    /// Sends lookup requests for fetch `id` to every eligible peer that may
    /// hold its action, under the lookup deadline; `false` if there is
    /// nobody to ask.
    fn ask_everyone(&mut self, id: FetchId) -> bool {
        let now = Instant::now();
        let Some(action) = self.fetches.get(&id).map(|fetch| fetch.action) else {
            return false;
        };
        let peers: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|peer| self.eligible(peer, now) && self.may_hold(peer, &action))
            .copied()
            .collect();
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return false;
        };
        fetch.asked_everyone = true;
        if peers.is_empty() {
            return false;
        }
        let max_inline = if peers.len() == 1 {
            self.config.max_body_size
        } else {
            self.config.inline_limit.min(self.config.max_body_size)
        };
        let deadline = now + self.config.lookup_deadline;
        for peer in peers {
            self.send_request(id, peer, Phase::Lookup, max_inline, deadline);
        }
        self.timers.push(timer(deadline, Deadline::Lookup(id)));
        true
    }

    /// Books a new fetch of `action`: for a lookup (`reply`) or read-ahead.
    pub(super) fn new_fetch(
        &mut self,
        action: ActionId,
        reply: Option<oneshot::Sender<Option<Fetched>>>,
    ) -> FetchId {
        let id = self.next_fetch;
        self.next_fetch += 1;
        self.fetches.insert(
            id,
            PendingFetch {
                action,
                read_ahead: reply.is_none(),
                replies: reply.into_iter().collect(),
                cancel: CancellationToken::new(),
                requests: HashSet::new(),
                candidates: VecDeque::new(),
                body_request: None,
                asked_everyone: false,
            },
        );
        self.active.insert(action, id);
        id
    }

    pub(super) fn send_request(
        &mut self,
        fetch: FetchId,
        peer: PeerId,
        phase: Phase,
        max_inline: u64,
        header_deadline: Instant,
    ) -> Option<OutboundRequestId> {
        let hints = if phase == Phase::Lookup && self.config.read_ahead > 0 {
            HINTS
        } else {
            0
        };
        let cancel = self.fetches.get(&fetch)?.cancel.child_token();
        self.send(
            vec![fetch],
            peer,
            phase,
            max_inline,
            hints,
            header_deadline,
            cancel,
        )
    }

    /// Sends one request for the actions of `fetches` (a batch if more
    /// than one) and books it.
    #[expect(clippy::too_many_arguments, reason = "one request's parameters, named")]
    pub(super) fn send(
        &mut self,
        fetches: Vec<FetchId>,
        peer: PeerId,
        phase: Phase,
        max_inline: u64,
        hints: u32,
        header_deadline: Instant,
        cancel: CancellationToken,
    ) -> Option<OutboundRequestId> {
        let actions: Vec<ActionId> = fetches
            .iter()
            .map(|id| self.fetches.get(id).map(|fetch| fetch.action))
            .collect::<Option<_>>()?;
        let (&action, also) = actions.split_first()?;
        let positive = Arc::new(AtomicBool::new(false));
        let batch = (fetches.len() > 1).then(|| BatchReports {
            tokens: fetches.clone(),
            reports: self.report_sender.clone(),
            header_timeout: self.config.lookup_deadline,
        });
        let link = self.peer(peer).link.clone();
        if let Some(choice) = link.take_choice() {
            tracing::info!(
                %peer,
                "bodies came at {:.0} MB/s raw and {:.0} MB/s compressed: asking for {} bodies",
                choice.raw / 1e6,
                choice.zstd / 1e6,
                if choice.compress { "compressed" } else { "raw" }
            );
        }
        let accept = if link.compress(self.config.compression) {
            vec![Encoding::Zstd]
        } else {
            Vec::new()
        };
        let request = Request {
            header: RequestHeader {
                version: WIRE_VERSION,
                action,
                max_inline,
                hints,
                also: also.to_vec(),
                accept,
            },
            local: Some(Local {
                header_deadline,
                cancel: cancel.clone(),
                positive: positive.clone(),
                batch,
                link,
                traffic: self.peer(peer).traffic.clone(),
            }),
        };
        let request_id = self
            .swarm
            .behaviour_mut()
            .fetch
            .send_request(&peer, request);
        for id in &fetches {
            if let Some(fetch) = self.fetches.get_mut(id) {
                fetch.requests.insert(request_id);
            }
        }
        self.requests.insert(
            request_id,
            RequestInfo {
                fetches,
                peer,
                phase,
                max_inline,
                cancel,
                positive,
            },
        );
        Some(request_id)
    }

    /// A single request's answer, or the end of a batch.
    pub(super) fn on_answer(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        answer: Answer,
    ) {
        let Some(outcome) = answer.outcome else {
            // A batch: its entries were reported one by one; whatever it
            // did not report ends with it. A version-1 peer answered the
            // first only: the rest are fetched again, one per request.
            let batches = answer.version >= BATCH_VERSION;
            let unanswered = if batches {
                Vec::new()
            } else {
                self.unreported(request_id)
            };
            let state = self.peer(peer);
            state.seen();
            state.batches = batches;
            self.on_request_failed(request_id, "ended");
            self.requeue(peer, unanswered);
            if !self.in_cooldown(&peer, Instant::now()) {
                self.offer_hints(peer, answer.next);
            }
            return;
        };
        self.on_outcome(peer, request_id, outcome, answer.next);
    }

    /// The actions of a batch request not reported yet that no lookup
    /// waits for.
    fn unreported(&self, request_id: OutboundRequestId) -> Vec<ActionId> {
        let Some(info) = self.requests.get(&request_id) else {
            return Vec::new();
        };
        info.fetches
            .iter()
            .filter_map(|id| self.fetches.get(id))
            .filter(|fetch| fetch.replies.is_empty())
            .map(|fetch| fetch.action)
            .collect()
    }

    /// One entry of a batch, reported as soon as it landed (or did not).
    pub(super) fn on_report(&mut self, report: Report) {
        let Report { token: id, outcome } = report;
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let Some(request_id) = fetch.requests.iter().copied().next() else {
            return;
        };
        fetch.requests.remove(&request_id);
        let Some(info) = self.requests.get_mut(&request_id) else {
            return;
        };
        info.fetches.retain(|fetch| *fetch != id);
        let (peer, phase) = (info.peer, info.phase);
        self.peer(peer).seen();
        self.settle(id, peer, phase, outcome);
    }

    pub(super) fn on_outcome(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        outcome: Outcome,
        next: Vec<ActionId>,
    ) {
        let Some(info) = self.forget_request(request_id) else {
            return; // Its fetch is over.
        };
        self.peer(peer).seen();
        let committed = matches!(outcome, Outcome::Committed(_));
        for id in info.fetches {
            self.settle(id, peer, info.phase, outcome.clone());
        }
        if committed || !self.in_cooldown(&peer, Instant::now()) {
            self.offer_hints(peer, next);
        }
    }

    /// What one fetch makes of what a peer answered for its action.
    fn settle(&mut self, id: FetchId, peer: PeerId, phase: Phase, outcome: Outcome) {
        let Some(fetch) = self.fetches.get(&id) else {
            return;
        };
        let (action, read_ahead) = (fetch.action, fetch.read_ahead);
        match outcome {
            Outcome::Committed(meta) => {
                let counters = &mut self.peer(peer).counters;
                counters.hits_received += 1;
                counters.bytes_in += meta.size;
                if read_ahead {
                    counters.read_ahead += 1;
                }
                tracing::debug!(%peer, size = meta.size, read_ahead, "fetched a verified body");
                let fetched = Fetched {
                    peer,
                    output: meta.output,
                    size: meta.size,
                    time_unix_nanos: meta.time_unix_nanos,
                };
                self.finish(id, Some(fetched));
                return;
            }
            Outcome::Announced(meta) if phase != Phase::Body => {
                if let Some(fetch) = self.fetches.get_mut(&id) {
                    fetch.candidates.push_back((peer, meta));
                }
            }
            Outcome::Announced(_) => {
                tracing::debug!(%peer, "peer did not send a body it was asked for");
            }
            Outcome::Rejected { reason, bytes } => self.reject(peer, action, reason, bytes),
            Outcome::NotFound | Outcome::NotStored(_) => {}
        }
        self.advance(id);
    }

    pub(super) fn on_request_failed(&mut self, request_id: OutboundRequestId, why: &str) {
        if let Some(info) = self.forget_request(request_id) {
            tracing::trace!(peer = %info.peer, "request {why}");
            for id in info.fetches {
                self.advance(id);
            }
        }
    }

    /// Removes a request from the books (and from its fetches).
    pub(super) fn forget_request(&mut self, request_id: OutboundRequestId) -> Option<RequestInfo> {
        let info = self.requests.remove(&request_id)?;
        for id in &info.fetches {
            if let Some(fetch) = self.fetches.get_mut(id) {
                fetch.requests.remove(&request_id);
                if fetch.body_request == Some(request_id) {
                    fetch.body_request = None;
                }
            }
        }
        Some(info)
    }

    pub(super) fn reject(
        &mut self,
        peer: PeerId,
        action: ActionId,
        reason: RejectReason,
        bytes: u64,
    ) {
        let cooldown = self.config.cooldown;
        tracing::warn!(
            %peer,
            "peer sent a body that failed verification ({reason}); ignoring it for {cooldown:?}"
        );
        let state = self.peer(peer);
        state.counters.rejected_bodies += 1;
        state.counters.bytes_in += bytes;
        state.cooldown_until = Some(Instant::now() + cooldown);
        // No further bodies from it in any fetch.
        for fetch in self.fetches.values_mut() {
            fetch.candidates.retain(|(candidate, _)| *candidate != peer);
        }
        self.emit(Event::BodyRejected {
            peer,
            action,
            reason,
        });
    }

    /// Starts the next body request if none is running, and ends the fetch
    /// with a miss once nothing is left to wait for.
    pub(super) fn advance(&mut self, id: FetchId) {
        let now = Instant::now();
        loop {
            let Some(fetch) = self.fetches.get_mut(&id) else {
                return;
            };
            if fetch.body_request.is_some() {
                return;
            }
            if fetch.replies.is_empty() {
                // Nobody is waiting: read-ahead leaves big bodies to lookups.
                fetch.candidates.clear();
            }
            let Some((peer, meta)) = fetch.candidates.pop_front() else {
                break;
            };
            if !self.eligible(&peer, now) {
                continue;
            }
            // The server has just said it holds the body, but may be busy:
            // the header may take as long as the transfer.
            let transfer = self.config.transfer_timeout(meta.size);
            let header_deadline = now + self.config.lookup_deadline + transfer;
            let max_inline = self.config.max_body_size;
            if let Some(request_id) =
                self.send_request(id, peer, Phase::Body, max_inline, header_deadline)
            {
                if let Some(fetch) = self.fetches.get_mut(&id) {
                    fetch.body_request = Some(request_id);
                }
                let backstop = header_deadline + transfer + Duration::from_secs(1);
                self.timers
                    .push(timer(backstop, Deadline::Request(request_id)));
            }
        }
        let Some(fetch) = self.fetches.get(&id) else {
            return;
        };
        if !fetch.requests.is_empty() {
            return;
        }
        if !fetch.replies.is_empty() && !fetch.asked_everyone && self.ask_everyone(id) {
            return;
        }
        self.finish(id, None);
    }

    pub(super) fn finish(&mut self, id: FetchId, result: Option<Fetched>) {
        let Some(fetch) = self.fetches.remove(&id) else {
            return;
        };
        // Stops every transfer still running for this fetch; their sinks
        // are dropped uncommitted. (A batch's request has a token of its
        // own: it goes on for the other entries.)
        fetch.cancel.cancel();
        for request_id in &fetch.requests {
            let done = self.requests.get_mut(request_id).is_none_or(|info| {
                info.fetches.retain(|other| *other != id);
                info.fetches.is_empty()
            });
            if done {
                self.requests.remove(request_id);
            }
        }
        if self.active.get(&fetch.action) == Some(&id) {
            self.active.remove(&fetch.action);
        }
        if result.is_none() && !fetch.replies.is_empty() {
            tracing::trace!(action = fetch.action.to_hex(), "lookup: no peer sent it");
        }
        for reply in fetch.replies {
            let _ = reply.send(result);
        }
        if fetch.read_ahead {
            self.read_ahead.in_flight -= 1;
            self.pump_read_ahead();
        }
    }

    pub(super) fn on_deadline(&mut self, deadline: Deadline) {
        match deadline {
            Deadline::Summary(peer) => {
                if self.allowlist.contains(&peer) && self.swarm.is_connected(&peer) {
                    self.request_summary(peer);
                }
            }
            Deadline::Lookup(id) => {
                let Some(fetch) = self.fetches.get(&id) else {
                    return;
                };
                let now = Instant::now();
                let mut give_up = Vec::new();
                let mut backstops = Vec::new();
                for request_id in &fetch.requests {
                    let Some(info) = self.requests.get(request_id) else {
                        continue;
                    };
                    if info.phase != Phase::Lookup {
                        continue;
                    }
                    if info.positive.load(Ordering::Relaxed) {
                        let transfer = self.config.transfer_timeout(info.max_inline);
                        backstops.push(timer(
                            now + transfer + Duration::from_secs(1),
                            Deadline::Request(*request_id),
                        ));
                    } else {
                        give_up.push(*request_id);
                    }
                }
                self.timers.extend(backstops);
                for request_id in give_up {
                    if let Some(info) = self.forget_request(request_id) {
                        tracing::debug!(peer = %info.peer, "no answer by the lookup deadline");
                        info.cancel.cancel();
                    }
                }
                self.advance(id);
            }
            Deadline::Request(request_id) => {
                if let Some(info) = self.forget_request(request_id) {
                    tracing::debug!(peer = %info.peer, "transfer took too long; cancelled");
                    info.cancel.cancel();
                    for id in info.fetches {
                        self.advance(id);
                    }
                }
            }
        }
    }
}

pub(super) fn timer(at: Instant, deadline: Deadline) -> Timer {
    Box::pin(async move {
        tokio::time::sleep_until(at).await;
        deadline
    })
}
