//! What goes into the books and what comes out, beside the words of an
//! exchange ([`crate::fetch::exchange`]): the limits they apply, what they
//! need to know from the event loop, and what they ask it to do.

use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::fetch::budget::ReadAheadLimits;
use crate::fetch::exchange::{FetchId, RejectReason, Request, RequestKey};
use crate::fetch::pace::Pace;
use crate::ids::ActionId;

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
    /// Hinted executables bigger than this are not read ahead.
    pub(crate) read_ahead_executables_max: u64,
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
            read_ahead_executables_max: config.read_ahead_executables_max,
            read_ahead_budget: config.read_ahead_budget,
        }
    }

    /// The longest a body of `size` bytes may take once its header is in:
    /// the peer's transfer timeout and ours (see `fetch::pace`).
    pub(super) fn longest_body(&self, size: u64) -> Duration {
        Pace::longest(size, self.transfer_rate)
    }
}

/// What the books need to know from the event loop beside who may hold
/// what (which [`Holders`](crate::fetch::holders::Holders) says).
pub(crate) trait Peers {
    /// Whether `peer` answers batches (wire version 2).
    fn batches(&self, peer: &PeerId) -> bool;
    /// Whether the local store holds `action` already.
    fn stored(&self, action: &ActionId) -> bool;
}

/// What the event loop is to do, in order.
#[derive(Debug)]
pub(crate) enum Output {
    Send(Request),
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
