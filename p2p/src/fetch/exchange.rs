//! The words of one exchange with a peer, shared by the side that decides
//! what to ask ([`crate::fetch::books`]) and the side that reads the answer
//! ([`crate::fetch::receive`]); neither knows the other.
//!
//! A [`Request`] is made by the books and carried, as it is, to the wire:
//! the event loop adds only what the peer's link needs (its meters, and
//! whether to ask for compressed bodies), and the codec keeps it to read
//! the answer by. While it runs, the requesting side tells the books what
//! the peer has promised and what became of each entry of a batch
//! ([`Report`], in order, ahead of the request's end); at its end comes an
//! [`Answer`], or a [`Failure`].

use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fetch::pace::STALL;
use crate::fetch::promise::Promise;
use crate::ids::Hint;
use crate::ids::{ActionId, OutputId};
use crate::protocol::wire::FoundHeader;

/// Names one fetch (and, in a batch's reports, its entry).
pub(crate) type FetchId = u64;

/// Names one request of the books; the event loop maps libp2p's to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RequestKey(pub(crate) u64);

/// One request, as the books made it; see the module docs.
#[derive(Debug)]
pub(crate) struct Request {
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
    /// Read-ahead hints asked for.
    pub(crate) hints: u32,
    /// The (first) answer's header must arrive before this.
    pub(crate) header_deadline: Instant,
    /// In a batch, how long each header after the first may take, counted
    /// from the end of the entry before it.
    pub(crate) header_timeout: Duration,
    /// Cancelled when the books no longer need the request.
    pub(crate) cancel: CancellationToken,
}

/// What the requesting side tells the books while a request runs.
#[derive(Debug)]
pub(crate) enum Report {
    /// What the peer has promised on `request` so far.
    Promise {
        request: RequestKey,
        promise: Promise,
    },
    /// What became of one entry of a batch, as soon as it is known.
    Entry { fetch: FetchId, outcome: Outcome },
}

/// What the requesting side made of a response.
#[derive(Debug)]
pub(crate) struct Answer {
    /// A single request's outcome; `None` for a batch, whose entries were
    /// reported one by one.
    pub(crate) outcome: Option<Outcome>,
    /// The server's read-ahead hints (at most as many as asked for).
    pub(crate) next: Vec<Hint>,
    /// The wire version of the server's first header.
    pub(crate) version: u32,
}

/// What became of an answer for one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    NotFound,
    /// Found, body not included (bigger than the `max_inline` asked for).
    Announced(Meta),
    /// The body arrived, verified, and was committed to the store.
    Committed(Meta),
    /// The body (of `bytes` bytes) arrived but was refused.
    Rejected {
        reason: RejectReason,
        bytes: u64,
    },
    /// The body verified but the local store could not take it.
    NotStored(Meta),
}

/// An entry as a peer described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) output: OutputId,
    pub(crate) size: u64,
    pub(crate) time_unix_nanos: u64,
}

impl From<&FoundHeader> for Meta {
    fn from(found: &FoundHeader) -> Self {
        Self {
            output: found.output,
            size: found.size,
            time_unix_nanos: found.time_unix_nanos,
        }
    }
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

/// Why a received body was refused. A peer that causes one is put in cooldown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The body's SHA-256 is not the OutputID it was announced with.
    HashMismatch {
        expected: OutputId,
        actual: OutputId,
    },
    /// The peer sent a body bigger than this node's `max_body_size`.
    TooLarge { size: u64, limit: u64 },
    /// The peer sent a body bigger than the `max_inline` it was asked for.
    Unrequested { size: u64, max_inline: u64 },
    /// The peer announced a body bigger than the size its catalog listed
    /// for the entry (replication plans its budgets from those sizes).
    LargerThanListed { size: u64, listed: u64 },
    /// The peer sent a compressed body whose chunks do not decode to it.
    Undecodable(String),
    /// The peer announced a body and then fell behind on it: a piece took
    /// over 2 s, or the body fell behind the transfer rate (see
    /// `fetch::pace`), or the peer did not deliver it by a deadline.
    Stalled,
    /// The body verified, but the store found it wrong for its action.
    Refused(String),
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HashMismatch { expected, actual } => write!(
                f,
                "body hashes to {}, not its OutputID {}",
                actual.to_hex(),
                expected.to_hex()
            ),
            Self::TooLarge { size, limit } => {
                write!(f, "body of {size} bytes is over the {limit} byte limit")
            }
            Self::Unrequested { size, max_inline } => write!(
                f,
                "body of {size} bytes sent although at most {max_inline} were asked for"
            ),
            Self::LargerThanListed { size, listed } => write!(
                f,
                "body of {size} bytes although its catalog listed {listed}"
            ),
            Self::Undecodable(detail) => write!(f, "compressed body does not decode: {detail}"),
            Self::Stalled => write!(
                f,
                "the body fell behind: a piece took over {STALL:?}, or the transfer rate was not kept"
            ),
            Self::Refused(why) => write!(f, "the store refused it: {why}"),
        }
    }
}
