//! The books of fetches in flight: whom to ask, whose body to take, when to
//! give up, what to read ahead, and who is in cooldown. Free of I/O.
//!
//! A fetch asks every connected, allowlisted peer that is not in cooldown
//! (and whose summary may hold the action) at once, for bodies up to
//! `inline_limit` (1 MiB) inline; peers with bigger ones answer "found, not
//! included" ([`Outcome::Announced`]). Those become candidates, asked one at
//! a time for the full body, so a big body is pulled from one peer, not from
//! all. The first committed body answers the fetch and cancels the rest.
//! With a single eligible peer there is nobody to choose between, so it is
//! asked for any body inline: that saves the second round trip.
//!
//! Time limits: a lookup request that has not answered "found" by the
//! lookup deadline is cancelled; a positive one then runs on its body's
//! pace (enforced by the codec, see `fetch::pace`, with a timer here as a
//! backstop), as does each body request, whose header is due within
//! [`STALL`] of the lookup deadline. So a fetch ends when its last request
//! does, and no request outlives its limit.
//!
//! Whose fault a missed deadline is: a peer that never answered a lookup
//! in time is only slow, and is left behind. A peer that said "found" and
//! did not deliver the body in time, or did not answer the request for a
//! body it announced, is cooled down like one that sent a bad body,
//! whichever deadline passed first: the codec's, libp2p's request timeout
//! or a backstop here (see [`crate::fetch::promise`]).
//!
//! A request normally serves one fetch. A read-ahead batch is one request
//! serving a fetch per action: each of those ends when the codec reports
//! its entry ([`Books::on_report`]), or when the request ends without
//! having reported it.
//!
//! # Sans-IO
//!
//! [`Books`] only keeps state. The event loop feeds it what happened
//! (a lookup, an answer, a report, a failure, a deadline) with the time and
//! a [`Peers`] view of who is connected, and carries out what it asks for,
//! in order ([`Books::poll_output`]): requests to send, timers to set, and
//! counts to keep. So every rule above has unit tests of its own, with no
//! network, below.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod ahead;
mod io;
mod replicate;

pub(crate) use self::io::{
    Deadline, Failure, FetchId, Limits, Output, Peers, Phase, RequestKey, Send,
};
use crate::fetch::Fetched;
use crate::fetch::budget::ReadAheadBudget;
use crate::fetch::holders::Holders;
use crate::fetch::pace::STALL;
use crate::fetch::promise::Promise;
use crate::fetch::read_ahead::{HINTS, ReadAhead};
use crate::fetch::receive::{Answer, Meta, Outcome, RejectReason};
use crate::ids::ActionId;
use crate::protocol::wire::BATCH_VERSION;

struct PendingFetch {
    action: ActionId,
    /// Lookups waiting for this fetch: none for a read-ahead, until a
    /// lookup for the same action joins it.
    replies: Vec<oneshot::Sender<Option<Fetched>>>,
    /// Started by read-ahead (and counted in its in-flight number).
    read_ahead: bool,
    /// Started by replication, and no lookup has joined it: its body is
    /// not a sign that a build is using peers.
    background: bool,
    /// For read-ahead: the peer asked and the bytes reserved in the budget.
    reserved: Option<(PeerId, u64)>,
    /// For replication: the size the peer's catalog listed, the largest
    /// body taken (see `replicate`).
    listed: Option<u64>,
    /// Parent of every request's token: cancelling it stops them all.
    cancel: CancellationToken,
    requests: HashSet<RequestKey>,
    /// Peers that hold the body but did not send it, in answer order.
    candidates: VecDeque<(PeerId, Meta)>,
    body_request: Option<RequestKey>,
    /// Lookup requests went to every eligible peer. A read-ahead fetch
    /// that a lookup joined does that once, should its batch end without
    /// the entry, so the lookup is not a miss because of read-ahead.
    asked_everyone: bool,
}

struct RequestInfo {
    /// The fetches this request serves, in the order of its actions: one,
    /// or a batch's that have not been reported yet.
    fetches: Vec<FetchId>,
    peer: PeerId,
    phase: Phase,
    max_inline: u64,
    cancel: CancellationToken,
    promise: Arc<Promise>,
}

impl RequestInfo {
    /// Whether a deadline passing now is the peer's fault: it owes a body
    /// it said it would send, or an answer about one it announced.
    fn late_is_peers_fault(&self) -> bool {
        self.promise.broken(self.phase == Phase::Body)
    }
}

/// See the module docs.
pub(crate) struct Books {
    limits: Limits,
    fetches: HashMap<FetchId, PendingFetch>,
    /// The fetch in flight for each action: a second lookup joins it.
    active: HashMap<ActionId, FetchId>,
    /// `active`'s actions, as clients see them.
    holders: Arc<Holders>,
    requests: HashMap<RequestKey, RequestInfo>,
    read_ahead: ReadAhead,
    budget: ReadAheadBudget,
    /// Peers left out of lookups, until when, for a body that failed.
    cooldowns: HashMap<PeerId, Instant>,
    next_fetch: FetchId,
    next_request: u64,
    out: VecDeque<Output>,
}

impl Books {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            budget: ReadAheadBudget::new(limits.read_ahead_budget),
            limits,
            fetches: HashMap::new(),
            active: HashMap::new(),
            holders: Arc::default(),
            requests: HashMap::new(),
            read_ahead: ReadAhead::default(),
            cooldowns: HashMap::new(),
            next_fetch: 0,
            next_request: 0,
            out: VecDeque::new(),
        }
    }

    /// What clients read to answer a sure miss themselves.
    pub(crate) fn holders(&self) -> Arc<Holders> {
        self.holders.clone()
    }

    /// The next thing to do, in the order it was decided.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether `peer` is left out for having sent a body that failed.
    pub(crate) fn in_cooldown(&self, peer: &PeerId, now: Instant) -> bool {
        self.cooldowns.get(peer).is_some_and(|until| *until > now)
    }

    fn eligible(&self, peer: &PeerId, now: Instant, peers: &impl Peers) -> bool {
        peers.usable(peer) && !self.in_cooldown(peer, now)
    }

    /// A lookup of `action`, answered on `reply`.
    pub(crate) fn lookup(
        &mut self,
        action: ActionId,
        reply: oneshot::Sender<Option<Fetched>>,
        now: Instant,
        peers: &impl Peers,
    ) {
        // Already being fetched (read ahead, or asked by another helper).
        if let Some(fetch) = self
            .active
            .get(&action)
            .and_then(|id| self.fetches.get_mut(id))
        {
            fetch.replies.push(reply);
            fetch.background = false;
            return;
        }
        self.read_ahead.take(&action);
        let id = self.new_fetch(action, Some(reply));
        if !self.ask_everyone(id, now, peers) {
            // Nobody to ask, or no summary names it: a miss at once.
            tracing::trace!(%action, "no peer may hold it");
            self.finish(id, None, now, peers);
        }
    }

    /// Sends lookup requests for fetch `id` to every eligible peer that may
    /// hold its action, under the lookup deadline; `false` if there is
    /// nobody to ask.
    fn ask_everyone(&mut self, id: FetchId, now: Instant, peers: &impl Peers) -> bool {
        let Some(action) = self.fetches.get(&id).map(|fetch| fetch.action) else {
            return false;
        };
        let asked: Vec<PeerId> = peers
            .connected()
            .into_iter()
            .filter(|peer| self.eligible(peer, now, peers) && peers.may_hold(peer, &action))
            .collect();
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return false;
        };
        fetch.asked_everyone = true;
        if asked.is_empty() {
            return false;
        }
        let max_inline = if asked.len() == 1 {
            self.limits.max_body_size
        } else {
            self.limits.inline_limit.min(self.limits.max_body_size)
        };
        let deadline = now + self.limits.lookup_deadline;
        for peer in asked {
            self.send_one(id, peer, Phase::Lookup, max_inline, deadline);
        }
        self.timer(deadline, Deadline::Lookup(id));
        true
    }

    /// Books a new fetch of `action`: for a lookup (`reply`) or read-ahead.
    fn new_fetch(
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
                background: false,
                reserved: None,
                listed: None,
                replies: reply.into_iter().collect(),
                cancel: CancellationToken::new(),
                requests: HashSet::new(),
                candidates: VecDeque::new(),
                body_request: None,
                asked_everyone: false,
            },
        );
        self.active.insert(action, id);
        self.holders.started(action);
        id
    }

    /// One request for one fetch.
    fn send_one(
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
        self.send(
            vec![fetch],
            peer,
            phase,
            Request {
                max_inline,
                hints,
                header_deadline,
                cancel,
            },
        )
    }

    /// Books one request for the actions of `fetches` (a batch if more
    /// than one) and asks for it to be sent.
    fn send(
        &mut self,
        fetches: Vec<FetchId>,
        peer: PeerId,
        phase: Phase,
        request: Request,
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
        let promise = Arc::new(Promise::default());
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
                max_inline: request.max_inline,
                cancel: request.cancel.clone(),
                promise: promise.clone(),
            },
        );
        self.out.push_back(Output::Send(Send {
            key,
            peer,
            actions,
            batch,
            max_inline: request.max_inline,
            listed,
            hints: request.hints,
            header_deadline: request.header_deadline,
            cancel: request.cancel,
            promise,
        }));
        Some(key)
    }

    fn timer(&mut self, at: Instant, deadline: Deadline) {
        self.out.push_back(Output::Timer { at, deadline });
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
        let (action, read_ahead) = (fetch.action, fetch.read_ahead || fetch.background);
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
                self.finish(id, Some(fetched), now, peers);
                return;
            }
            Outcome::Announced(meta) if phase != Phase::Body => {
                fetch.candidates.push_back((peer, meta));
            }
            Outcome::Announced(_) => {
                tracing::debug!(%peer, "peer did not send a body it was asked for");
            }
            Outcome::Rejected { reason, bytes } => self.reject(peer, action, reason, bytes, now),
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
            }
            for id in info.fetches {
                self.advance(id, now, peers);
            }
        }
    }

    /// Puts the peer of `info` in cooldown for a body it did not deliver.
    fn reject_late(&mut self, info: &RequestInfo, now: Instant) {
        let action = (info.fetches.first())
            .and_then(|id| self.fetches.get(id))
            .map_or(ActionId::from_bytes([0; 32]), |fetch| fetch.action);
        self.reject(info.peer, action, RejectReason::Stalled, 0, now);
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

    fn reject(
        &mut self,
        peer: PeerId,
        action: ActionId,
        reason: RejectReason,
        bytes: u64,
        now: Instant,
    ) {
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
        // their fetches move on to other peers).
        for fetch in self.fetches.values_mut() {
            fetch.candidates.retain(|(candidate, _)| *candidate != peer);
        }
        for info in self.requests.values() {
            if info.peer == peer {
                info.cancel.cancel();
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
    fn advance(&mut self, id: FetchId, now: Instant, peers: &impl Peers) {
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
            if !self.eligible(&peer, now, peers) {
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
        if !fetch.replies.is_empty() && !fetch.asked_everyone && self.ask_everyone(id, now, peers) {
            return;
        }
        self.finish(id, None, now, peers);
    }

    fn finish(&mut self, id: FetchId, result: Option<Fetched>, now: Instant, peers: &impl Peers) {
        let Some(fetch) = self.fetches.remove(&id) else {
            return;
        };
        // Stops every transfer still running for this fetch; their sinks
        // are dropped uncommitted. (A batch's request has a token of its
        // own: it goes on for the other entries.)
        fetch.cancel.cancel();
        for key in &fetch.requests {
            let done = self.requests.get_mut(key).is_none_or(|info| {
                info.fetches.retain(|other| *other != id);
                info.fetches.is_empty()
            });
            if done {
                self.requests.remove(key);
            }
        }
        if self.active.get(&fetch.action) == Some(&id) {
            self.active.remove(&fetch.action);
            self.holders.ended(&fetch.action);
        }
        if result.is_none() && !fetch.replies.is_empty() {
            tracing::trace!(action = %fetch.action, "lookup: no peer sent it");
        }
        let hit = result.is_some() && !fetch.replies.is_empty() && !fetch.background;
        for reply in fetch.replies {
            let _ = reply.send(result);
        }
        if let Some((peer, reserved)) = fetch.reserved {
            let landed = result.map_or(0, |fetched| fetched.size);
            self.budget.settle(peer, reserved, landed, now);
        }
        if hit {
            // A build is using peers: read-ahead may go on.
            self.budget.lookup_hit(now);
        }
        if fetch.read_ahead {
            self.read_ahead.in_flight -= 1;
        }
        if fetch.read_ahead || hit {
            self.pump_read_ahead(now, peers);
        }
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
                    }
                    for id in info.fetches {
                        self.advance(id, now, peers);
                    }
                }
            }
        }
    }
}

/// One request's parameters, as [`Send`] carries them.
struct Request {
    max_inline: u64,
    hints: u32,
    header_deadline: Instant,
    cancel: CancellationToken,
}

#[cfg(test)]
mod tests;
