//! Requests in the books, from the moment one is decided until it ends:
//! sending it, what the peer promises on the way, its answer (or a batch's
//! entries one by one), its failure, and its deadlines; and what each of
//! those makes of the fetches it serves.

use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::io::{Deadline, Output, Peers, Phase};
use super::{Books, RequestInfo};
use crate::fetch::exchange::{
    Answer, Failure, FetchId, Outcome, RejectReason, Request, RequestKey,
};
use crate::fetch::pace::STALL;
use crate::fetch::promise::Promise;
use crate::fetch::read_ahead::HINTS;
use crate::fetch::{Fetched, Miss};
use crate::ids::ActionId;
use crate::protocol::wire::BATCH_VERSION;

/// What the caller of [`Books::send`] chooses about a request: what may
/// come inline, the hints asked for, when its first header is due, and the
/// token that stops it.
pub(super) struct Terms {
    pub(super) max_inline: u64,
    pub(super) hints: u32,
    pub(super) header_deadline: Instant,
    pub(super) cancel: CancellationToken,
}

impl Books {
    /// One request for one fetch.
    pub(super) fn send_one(
        &mut self,
        fetch: FetchId,
        peer: PeerId,
        phase: Phase,
        max_inline: u64,
        header_deadline: Instant,
    ) -> Option<RequestKey> {
        let hints = if phase == Phase::Lookup && self.limits.read_ahead > 0 {
            HINTS
        } else {
            0
        };
        let cancel = self.fetches.get(&fetch)?.cancel.child_token();
        let terms = Terms {
            max_inline,
            hints,
            header_deadline,
            cancel,
        };
        self.send(vec![fetch], peer, phase, terms)
    }

    /// Books one request for the actions of `fetches` (a batch if more
    /// than one) and asks for it to be sent.
    pub(super) fn send(
        &mut self,
        fetches: Vec<FetchId>,
        peer: PeerId,
        phase: Phase,
        terms: Terms,
    ) -> Option<RequestKey> {
        let actions: Vec<ActionId> = fetches
            .iter()
            .map(|id| self.fetches.get(id).map(|fetch| fetch.action))
            .collect::<Option<_>>()?;
        if actions.is_empty() {
            return None;
        }
        let listed: Vec<Option<u64>> = (fetches.iter())
            .map(|id| self.fetches.get(id).and_then(|fetch| fetch.listed))
            .collect();
        let listed = listed.iter().any(Option::is_some).then(|| {
            (listed.iter())
                .map(|size| size.unwrap_or(self.limits.max_body_size))
                .collect()
        });
        let key = RequestKey(self.next_request);
        self.next_request += 1;
        for id in &fetches {
            if let Some(fetch) = self.fetches.get_mut(id) {
                fetch.requests.insert(key);
            }
        }
        let batch = (fetches.len() > 1).then(|| fetches.clone());
        self.requests.insert(
            key,
            RequestInfo {
                fetches,
                peer,
                phase,
                max_inline: terms.max_inline,
                cancel: terms.cancel.clone(),
                promise: Promise::default(),
            },
        );
        self.out.push_back(Output::Send(Request {
            key,
            peer,
            actions,
            batch,
            max_inline: terms.max_inline,
            listed,
            hints: terms.hints,
            header_deadline: terms.header_deadline,
            header_timeout: self.limits.lookup_deadline,
            cancel: terms.cancel,
        }));
        Some(key)
    }

    pub(super) fn timer(&mut self, at: Instant, deadline: Deadline) {
        self.out.push_back(Output::Timer { at, deadline });
    }

    /// What the peer has promised on request `key` so far, as the
    /// requesting side reported it.
    pub(crate) fn on_promise(&mut self, key: RequestKey, promise: Promise) {
        if let Some(info) = self.requests.get_mut(&key) {
            info.promise = promise;
        }
    }

    /// A single request's answer, or the end of a batch, from `peer`. For
    /// a batch, the event loop has recorded whether `peer` answers batches
    /// (from `answer.version`) before calling this.
    pub(crate) fn on_answer(
        &mut self,
        key: RequestKey,
        peer: PeerId,
        answer: Answer,
        now: Instant,
        peers: &impl Peers,
    ) {
        let Some(outcome) = answer.outcome else {
            // A batch: its entries were reported one by one; whatever it
            // did not report ends with it. A version-1 peer answered the
            // first only: the rest are fetched again, one per request.
            let unanswered = if answer.version >= BATCH_VERSION {
                Vec::new()
            } else {
                self.unreported(key)
            };
            self.on_failed(key, Failure::Ended, now, peers);
            self.requeue(peer, unanswered, now, peers);
            if !self.in_cooldown(&peer, now) {
                self.offer_hints(peer, answer.next, now, peers);
            }
            return;
        };
        let Some(info) = self.forget_request(key) else {
            return; // Its fetch is over.
        };
        let committed = matches!(outcome, Outcome::Committed(_));
        for id in info.fetches {
            self.settle(id, peer, info.phase, outcome.clone(), now, peers);
        }
        if committed || !self.in_cooldown(&peer, now) {
            self.offer_hints(peer, answer.next, now, peers);
        }
    }

    /// The actions of a batch request not reported yet that no lookup
    /// waits for.
    fn unreported(&self, key: RequestKey) -> Vec<ActionId> {
        let Some(info) = self.requests.get(&key) else {
            return Vec::new();
        };
        info.fetches
            .iter()
            .filter_map(|id| self.fetches.get(id))
            .filter(|fetch| fetch.replies.is_empty())
            .map(|fetch| fetch.action)
            .collect()
    }

    /// One entry of a batch, reported as soon as it landed (or did not);
    /// the peer it came from.
    pub(crate) fn on_report(
        &mut self,
        id: FetchId,
        outcome: Outcome,
        now: Instant,
        peers: &impl Peers,
    ) -> Option<PeerId> {
        let fetch = self.fetches.get_mut(&id)?;
        let key = fetch.requests.iter().copied().next()?;
        fetch.requests.remove(&key);
        let info = self.requests.get_mut(&key)?;
        info.fetches.retain(|fetch| *fetch != id);
        let (peer, phase) = (info.peer, info.phase);
        self.settle(id, peer, phase, outcome, now, peers);
        Some(peer)
    }

    /// What one fetch makes of what a peer answered for its action.
    fn settle(
        &mut self,
        id: FetchId,
        peer: PeerId,
        phase: Phase,
        outcome: Outcome,
        now: Instant,
        peers: &impl Peers,
    ) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let read_ahead = fetch.read_ahead || fetch.background;
        match outcome {
            Outcome::Committed(meta) => {
                tracing::debug!(%peer, size = meta.size, read_ahead, "fetched a verified body");
                self.out.push_back(Output::Committed {
                    peer,
                    size: meta.size,
                    read_ahead,
                });
                let fetched = Fetched {
                    peer,
                    output: meta.output,
                    size: meta.size,
                    time_unix_nanos: meta.time_unix_nanos,
                };
                self.finish(id, Ok(fetched), now, peers);
                return;
            }
            Outcome::Announced(meta) if phase != Phase::Body => {
                fetch.candidates.push_back((peer, meta));
            }
            Outcome::Announced(_) => {
                tracing::debug!(%peer, "peer did not send a body it was asked for");
            }
            Outcome::Rejected { reason, bytes } => self.reject(peer, &[id], reason, bytes, now),
            Outcome::NotFound | Outcome::NotStored(_) => {}
        }
        self.advance(id, now, peers);
    }

    /// A request that failed or ended: its fetches move on.
    pub(crate) fn on_failed(
        &mut self,
        key: RequestKey,
        why: Failure,
        now: Instant,
        peers: &impl Peers,
    ) {
        if let Some(info) = self.forget_request(key) {
            tracing::trace!(peer = %info.peer, "request ended: {why:?}");
            let peers_fault = match why {
                Failure::Ended => false,
                Failure::Stalled => true,
                Failure::TimedOut => info.late_is_peers_fault(),
            };
            if peers_fault {
                // It said "found" and then did not deliver in time: left
                // out like a peer that sent a bad body.
                self.reject_late(&info, now);
            } else if why == Failure::TimedOut {
                self.mark_late(&info.fetches);
            }
            for id in info.fetches {
                self.advance(id, now, peers);
            }
        }
    }

    /// Puts the peer of `info` in cooldown for a body it did not deliver.
    fn reject_late(&mut self, info: &RequestInfo, now: Instant) {
        self.reject(info.peer, &info.fetches, RejectReason::Stalled, 0, now);
    }

    /// Records that a deadline cut off a request of `fetches`.
    fn mark_late(&mut self, fetches: &[FetchId]) {
        for id in fetches {
            if let Some(fetch) = self.fetches.get_mut(id) {
                fetch.setbacks.late = true;
            }
        }
    }

    /// Removes a request from the books (and from its fetches).
    fn forget_request(&mut self, key: RequestKey) -> Option<RequestInfo> {
        let info = self.requests.remove(&key)?;
        for id in &info.fetches {
            if let Some(fetch) = self.fetches.get_mut(id) {
                fetch.requests.remove(&key);
                if fetch.body_request == Some(key) {
                    fetch.body_request = None;
                }
            }
        }
        Some(info)
    }

    /// Puts `peer` in cooldown for a body of `fetches` (the first one's
    /// action is told) that failed, or did not come.
    fn reject(
        &mut self,
        peer: PeerId,
        fetches: &[FetchId],
        reason: RejectReason,
        bytes: u64,
        now: Instant,
    ) {
        let action = (fetches.first())
            .and_then(|id| self.fetches.get(id))
            .map_or(ActionId::from_bytes([0; 32]), |fetch| fetch.action);
        let cooldown = self.limits.cooldown;
        // Told to the node's user as `Event::BodyRejected`.
        tracing::debug!(
            %peer,
            "peer sent a body that failed verification ({reason}); ignoring it for {cooldown:?}"
        );
        self.cooldowns.retain(|_, until| *until > now);
        self.cooldowns.insert(peer, now + cooldown);
        // No further bodies from it in any fetch, and none of those on
        // their way: its requests are cancelled (they end as failed, and
        // their fetches move on to other peers). Each fetch it leaves says
        // so, should it miss.
        let mut cooled: Vec<FetchId> = fetches.to_vec();
        for (id, fetch) in &mut self.fetches {
            let before = fetch.candidates.len();
            fetch.candidates.retain(|(candidate, _)| *candidate != peer);
            if fetch.candidates.len() != before {
                cooled.push(*id);
            }
        }
        for info in self.requests.values() {
            if info.peer == peer {
                info.cancel.cancel();
                cooled.extend_from_slice(&info.fetches);
            }
        }
        for id in cooled {
            if let Some(fetch) = self.fetches.get_mut(&id) {
                fetch.setbacks.cooled = Some(peer);
            }
        }
        self.out.push_back(Output::Rejected {
            peer,
            action,
            reason,
            bytes,
        });
    }

    /// Starts the next body request if none is running, and ends the fetch
    /// with a miss once nothing is left to wait for.
    pub(super) fn advance(&mut self, id: FetchId, now: Instant, peers: &impl Peers) {
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
            let listed = fetch.listed;
            if !self.eligible(&peer, now) {
                continue;
            }
            // The server has just said it holds the body: its header
            // comes at once (a big body streams behind it), so a busy
            // server gets the stall on top of the lookup deadline.
            let header_deadline = now + self.limits.lookup_deadline + STALL;
            // A replicated body no bigger than its catalog listed.
            let max_inline = (listed)
                .unwrap_or(self.limits.max_body_size)
                .min(self.limits.max_body_size);
            if let Some(key) = self.send_one(id, peer, Phase::Body, max_inline, header_deadline) {
                if let Some(fetch) = self.fetches.get_mut(&id) {
                    fetch.body_request = Some(key);
                }
                let backstop =
                    header_deadline + self.limits.longest_body(meta.size) + Duration::from_secs(1);
                self.timer(backstop, Deadline::Request(key));
            }
        }
        let Some(fetch) = self.fetches.get(&id) else {
            return;
        };
        if !fetch.requests.is_empty() {
            return;
        }
        let setbacks = fetch.setbacks;
        let miss = if !fetch.replies.is_empty() && !fetch.asked_everyone {
            match self.ask_everyone(id, now) {
                Ok(()) => return,
                Err(nobody) => setbacks.miss(nobody),
            }
        } else {
            setbacks.miss(Miss::NotFound)
        };
        self.finish(id, Err(miss), now, peers);
    }

    /// A timer the books asked for is due.
    pub(crate) fn on_deadline(&mut self, deadline: Deadline, now: Instant, peers: &impl Peers) {
        match deadline {
            Deadline::Lookup(id) => {
                let Some(fetch) = self.fetches.get(&id) else {
                    return;
                };
                let mut give_up = Vec::new();
                let mut backstops = Vec::new();
                for key in &fetch.requests {
                    let Some(info) = self.requests.get(key) else {
                        continue;
                    };
                    if info.phase != Phase::Lookup {
                        continue;
                    }
                    if info.promise.positive() {
                        let body = self.limits.longest_body(info.max_inline);
                        backstops.push((now + body + Duration::from_secs(1), *key));
                    } else {
                        give_up.push(*key);
                    }
                }
                for (at, key) in backstops {
                    self.timer(at, Deadline::Request(key));
                }
                for key in give_up {
                    if let Some(info) = self.forget_request(key) {
                        tracing::debug!(peer = %info.peer, "no answer by the lookup deadline");
                        info.cancel.cancel();
                        self.mark_late(&[id]);
                    }
                }
                self.advance(id, now, peers);
            }
            Deadline::Request(key) => {
                if let Some(info) = self.forget_request(key) {
                    tracing::debug!(peer = %info.peer, "transfer took too long; cancelled");
                    info.cancel.cancel();
                    if info.late_is_peers_fault() {
                        self.reject_late(&info, now);
                    } else {
                        self.mark_late(&info.fetches);
                    }
                    for id in info.fetches {
                        self.advance(id, now, peers);
                    }
                }
            }
        }
    }
}
