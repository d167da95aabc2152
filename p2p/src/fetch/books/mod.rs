//! The books of fetches in flight: whom to ask, whose body to take, when to
//! give up, what to read ahead, who is in cooldown, and why a lookup
//! missed. Free of I/O.
//!
//! A fetch asks every connected, allowlisted peer that is not in cooldown
//! (and whose summary may hold the action: [`Holders::may_hold`] decides)
//! at once, for bodies up to `inline_limit` (1 MiB) inline; peers with
//! bigger ones answer "found, not included" ([`Outcome::Announced`]).
//! Those become candidates, asked one at a time for the full body, so a big
//! body is pulled from one peer, not from all. The first committed body
//! answers the fetch and cancels the rest. With a single eligible peer
//! there is nobody to choose between, so it is asked for any body inline:
//! that saves the second round trip.
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
//! or a backstop here. What the peer said is what the requesting side
//! reported ([`Books::on_promise`], see [`crate::fetch::promise`]).
//!
//! A request normally serves one fetch. A read-ahead batch is one request
//! serving a fetch per action: each of those ends when the codec reports
//! its entry ([`Books::on_report`]), or when the request ends without
//! having reported it.
//!
//! A lookup that ends without a body says why ([`Miss`]): nobody to ask
//! or no summary names it ([`Holders::may_hold`]), every peer that may
//! hold it in cooldown, or, once peers were asked, what went wrong on the
//! way: a peer put in cooldown, a deadline that cut a request off, or else
//! the peers did not have it.
//!
//! # Sans-IO
//!
//! [`Books`] only keeps state. The event loop feeds it what happened
//! (a lookup, an answer, a report, a failure, a deadline) with the time and
//! a [`Peers`] view of the store and the peers' protocol versions, and
//! carries out what it asks for, in order ([`Books::poll_output`]):
//! requests to send, timers to set, and counts to keep. So every rule above
//! has unit tests of its own, with no network (`tests.rs`).
//!
//! [`Outcome::Announced`]: crate::fetch::exchange::Outcome::Announced
//! [`STALL`]: crate::fetch::pace::STALL
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use libp2p::PeerId;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod ahead;
mod io;
mod replicate;
mod requests;

pub(crate) use self::io::{Deadline, Limits, Output, Peers, Phase};
use crate::fetch::budget::ReadAheadBudget;
use crate::fetch::exchange::{FetchId, Meta, RequestKey};
use crate::fetch::holders::Holders;
use crate::fetch::promise::Promise;
use crate::fetch::read_ahead::ReadAhead;
use crate::fetch::{Fetched, Miss};
use crate::ids::ActionId;

/// Where a fetch's result goes: a lookup's, or a replicated entry's.
pub(crate) type Reply = oneshot::Sender<Result<Fetched, Miss>>;

struct PendingFetch {
    action: ActionId,
    /// Lookups waiting for this fetch: none for a read-ahead, until a
    /// lookup for the same action joins it.
    replies: Vec<Reply>,
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
    /// What went wrong on the way, for the reason of a miss.
    setbacks: Setbacks,
}

/// What went wrong in one fetch: why it missed, if it does.
#[derive(Debug, Default, Clone, Copy)]
struct Setbacks {
    /// A peer of this fetch put in cooldown (the last one).
    cooled: Option<PeerId>,
    /// A deadline cut one of its requests off.
    late: bool,
}

impl Setbacks {
    /// The reason of a miss: a peer cooled down, else a deadline, else
    /// `otherwise`.
    fn miss(self, otherwise: Miss) -> Miss {
        match self {
            Self {
                cooled: Some(peer), ..
            } => Miss::Cooldown { peer },
            Self { late: true, .. } => Miss::Deadline,
            _ => otherwise,
        }
    }
}

struct RequestInfo {
    /// The fetches this request serves, in the order of its actions: one,
    /// or a batch's that have not been reported yet.
    fetches: Vec<FetchId>,
    peer: PeerId,
    phase: Phase,
    max_inline: u64,
    cancel: CancellationToken,
    /// What the peer has promised so far, as the requesting side reported.
    promise: Promise,
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
    /// Who may hold what (published by the event loop), and `active`'s
    /// actions, as clients see them.
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

    /// Who may hold what: the event loop publishes the peers a lookup would
    /// ask there, and clients read it to answer a sure miss themselves.
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

    /// Whether `peer` may be asked now: a lookup would ask it, and it is
    /// not in cooldown.
    fn eligible(&self, peer: &PeerId, now: Instant) -> bool {
        self.holders.asks(peer) && !self.in_cooldown(peer, now)
    }

    /// A lookup of `action`, answered on `reply`.
    pub(crate) fn lookup(
        &mut self,
        action: ActionId,
        reply: Reply,
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
        if let Err(miss) = self.ask_everyone(id, now) {
            // Nobody to ask, no summary names it, or all who may hold it
            // are in cooldown: a miss at once.
            tracing::trace!(%action, "no peer may hold it: {miss:?}");
            self.finish(id, Err(miss), now, peers);
        }
    }

    /// Sends lookup requests for fetch `id` to every eligible peer that may
    /// hold its action, under the lookup deadline; or why there is nobody
    /// to ask.
    fn ask_everyone(&mut self, id: FetchId, now: Instant) -> Result<(), Miss> {
        let Some(action) = self.fetches.get(&id).map(|fetch| fetch.action) else {
            return Err(Miss::NotFound);
        };
        let mut asked = Vec::new();
        let mut cooling = None;
        self.holders.may_hold(&action, |peer| {
            if self.in_cooldown(&peer, now) {
                cooling.get_or_insert(peer);
            } else {
                asked.push(peer);
            }
            true
        })?;
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return Err(Miss::NotFound);
        };
        fetch.asked_everyone = true;
        if asked.is_empty() {
            return Err(cooling.map_or(Miss::NotFound, |peer| Miss::Cooldown { peer }));
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
        Ok(())
    }

    /// Books a new fetch of `action`: for a lookup (`reply`) or read-ahead.
    fn new_fetch(&mut self, action: ActionId, reply: Option<Reply>) -> FetchId {
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
                setbacks: Setbacks::default(),
            },
        );
        self.active.insert(action, id);
        self.holders.started(action);
        id
    }

    /// Ends fetch `id`: answers whoever waits for it, stops what still runs
    /// for it, and settles its read-ahead.
    fn finish(
        &mut self,
        id: FetchId,
        result: Result<Fetched, Miss>,
        now: Instant,
        peers: &impl Peers,
    ) {
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
        if let Err(miss) = &result
            && !fetch.replies.is_empty()
        {
            tracing::trace!(action = %fetch.action, "lookup: no peer sent it ({miss:?})");
        }
        let hit = result.is_ok() && !fetch.replies.is_empty() && !fetch.background;
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
}

#[cfg(test)]
mod tests;
