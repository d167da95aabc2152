//! Fetching from peers: the requesting side of the fetch protocol.
//!
//! - [`books`]: the bookkeeping of fetches in flight (whom to ask, whose
//!   body to take, deadlines, cooldown, and why a lookup missed), free of
//!   I/O: the node's event loop feeds it events and carries out what it
//!   returns;
//! - [`exchange`]: what the books ask for and what they are told back, the
//!   words they share with the reading side; [`promise`]: what a peer said
//!   on a request, for the books to judge a missed deadline;
//! - [`receive`]: reading one exchange's answers and bodies into the store,
//!   verified, within deadlines; [`pace`]: how long a peer may take over a
//!   body it announced (a stall is its fault), and [`in_flight`]: the bytes
//!   of bodies on their way, counted as they arrive;
//! - [`link`]: whether asking a peer for compressed bodies pays on its link;
//! - [`agreement`]: with agreement on, a body is stored only when two
//!   sources agree on its OutputID;
//! - [`holders`]: which connected peers may hold an action: what the books
//!   ask, and what a client answers a sure miss with, without the event
//!   loop;
//! - [`read_ahead`]: the queue of entries a peer hinted a build will ask
//!   for next, and [`budget`]: how much read-ahead may bring, and when.

pub(crate) mod agreement;
pub(crate) mod books;
pub(crate) mod budget;
pub(crate) mod exchange;
pub(crate) mod holders;
pub(crate) mod in_flight;
pub(crate) mod link;
pub(crate) mod pace;
pub(crate) mod promise;
pub(crate) mod read_ahead;
pub(crate) mod receive;

use libp2p::PeerId;

use crate::ids::OutputId;

/// A body fetched from a peer, verified and committed through
/// [`Bodies::begin`](crate::Bodies::begin) and [`BodySink::commit`](crate::BodySink::commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// The peer the body came from.
    pub peer: PeerId,
    /// SHA-256 of the body (Go's OutputID).
    pub output: OutputId,
    pub size: u64,
    /// When the peer's entry was put, in nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
}

/// Why a lookup found nothing: decided where it happened (the books, or
/// the client's shortcut) and carried, as it is, to whoever asked.
///
/// Serializes as `{"reason": "cooldown", "peer": "<peer id>"}`, the
/// reason in snake case and the peer only where there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Miss {
    /// No allowlisted peer we pull from is connected.
    NoPeers,
    /// No connected peer's summary names the action.
    NotInSummaries,
    /// `peer` is in cooldown (for a body that did not verify, or did not
    /// come): every peer whose summary may name the action is, or `peer`
    /// was put there by this lookup, and no other peer sent the body.
    Cooldown { peer: PeerId },
    /// A peer asked did not answer by the lookup deadline (or a transfer
    /// took too long on our side), and no other sent the body.
    Deadline,
    /// The peers asked answered, and none sent a verified body: they did
    /// not have it, or it could not be stored.
    NotFound,
}
