//! What goes into the books and what comes out: the names they give
//! fetches and requests, the limits they apply, their view of peers, and
//! what they ask the event loop to do.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::fetch::budget::ReadAheadLimits;
use crate::fetch::pace::Pace;
use crate::fetch::promise::Promise;
use crate::fetch::receive::RejectReason;
use crate::ids::ActionId;

/// Names one fetch (and, in a batch's reports, its entry).
pub(crate) type FetchId = u64;

/// Names one request of the books; the event loop maps it to libp2p's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RequestKey(pub(super) u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Asking everyone whether they hold the action.
    Lookup,
    /// Fetching an announced body from one peer.
    Body,
    /// Fetching a run of hinted entries from one peer, ahead of lookups.
    ReadAhead,
}

/// A timer the books asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// The lookup deadline of a fetch.
    Lookup(FetchId),
    /// The backstop of a request the codec should have ended by now.
    Request(RequestKey),
}

/// Why a request failed, as far as the books care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// It ended, failed or was cancelled: its fetches move on.
    Ended,
    /// The peer said "found" and then fell behind on the body: it is
    /// cooled down too, like a peer that sent a bad body.
    Stalled,
    /// A deadline passed before an answer (the codec's header deadline,
    /// or libp2p's request timeout): the peer is cooled down if it had
    /// promised something (see [`Promise::broken`]).
    TimedOut,
}

/// The limits the books apply, from the node's config.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) lookup_deadline: Duration,
    pub(crate) inline_limit: u64,
    pub(crate) max_body_size: u64,
    pub(crate) transfer_rate: u64,
    pub(crate) cooldown: Duration,
    /// Agreement is on: nothing is replicated (see `replicate`).
    pub(crate) agreement: bool,
    /// Entries read ahead at once; 0 turns read-ahead off.
    pub(crate) read_ahead: usize,
    pub(crate) read_ahead_max_body: u64,
    pub(crate) read_ahead_budget: ReadAheadLimits,
}

impl Limits {
    pub(crate) fn of(config: &NodeConfig) -> Self {
        Self {
            lookup_deadline: config.lookup_deadline,
            inline_limit: config.inline_limit,
            max_body_size: config.max_body_size,
            transfer_rate: config.transfer_rate,
            cooldown: config.cooldown,
            agreement: config.agreement,
            // Read-ahead takes one peer's word: not with agreement on.
            read_ahead: if config.agreement {
                0
            } else {
                config.read_ahead
            },
            read_ahead_max_body: config.read_ahead_max_body,
            read_ahead_budget: config.read_ahead_budget,
        }
    }

    /// The longest a body of `size` bytes may take once its header is in:
    /// the peer's transfer timeout and ours (see `fetch::pace`).
    pub(super) fn longest_body(&self, size: u64) -> Duration {
        Pace::longest(size, self.transfer_rate)
    }
}

/// What the books need to know about peers, from the event loop.
pub(crate) trait Peers {
    /// Connected peers (allowlisted or not).
    fn connected(&self) -> Vec<PeerId>;
    /// Allowlisted and connected: may be asked.
    fn usable(&self, peer: &PeerId) -> bool;
    /// Whether its summary may name `action` (yes, without a summary).
    fn may_hold(&self, peer: &PeerId, action: &ActionId) -> bool;
    /// Whether it answers batches (wire version 2).
    fn batches(&self, peer: &PeerId) -> bool;
    /// Whether the local store holds `action` already.
    fn stored(&self, action: &ActionId) -> bool;
}

/// A request the books want sent.
#[derive(Debug)]
pub(crate) struct Send {
    pub(crate) key: RequestKey,
    pub(crate) peer: PeerId,
    /// Every action asked for, in order; more than one is a batch.
    pub(crate) actions: Vec<ActionId>,
    /// For a batch: the fetch of each action, which its report names.
    pub(crate) batch: Option<Vec<FetchId>>,
    pub(crate) max_inline: u64,
    /// For replication: the largest body taken for each action (the size
    /// its catalog listed); a bigger one is refused and counts against the
    /// peer.
    pub(crate) listed: Option<Vec<u64>>,
    pub(crate) hints: u32,
    /// The (first) answer's header must arrive before this.
    pub(crate) header_deadline: Instant,
    /// Cancelled when the books no longer need the request.
    pub(crate) cancel: CancellationToken,
    /// Moved on by the codec as the peer answers.
    pub(crate) promise: Arc<Promise>,
}

/// What the event loop is to do, in order.
#[derive(Debug)]
pub(crate) enum Output {
    Send(Send),
    Timer {
        at: Instant,
        deadline: Deadline,
    },
    /// A verified body from `peer` was committed: count it.
    Committed {
        peer: PeerId,
        size: u64,
        read_ahead: bool,
    },
    /// A body from `peer` failed verification; it is in cooldown now.
    Rejected {
        peer: PeerId,
        action: ActionId,
        reason: RejectReason,
        bytes: u64,
    },
}
