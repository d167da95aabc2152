//! Fetching from peers: the requesting side of the fetch protocol.
//!
//! - [`receive`]: reading one exchange's answers and bodies into the store,
//!   verified, within deadlines; [`pace`]: how long a peer may take over a
//!   body it announced (a stall is its fault), [`promise`]: what it said
//!   on a request, for the books to judge a missed deadline, and
//!   [`in_flight`]: the bytes of bodies on their way, counted as they
//!   arrive;
//! - [`link`]: whether asking a peer for compressed bodies pays on its link.
//!
//! - [`books`]: the bookkeeping of fetches in flight (whom to ask, whose
//!   body to take, deadlines, cooldown), free of I/O: the node's event loop
//!   feeds it events and carries out what it returns;
//! - [`agreement`]: with agreement on, a body is stored only when two
//!   sources agree on its OutputID;
//! - [`holders`]: what a client may answer without the event loop (a
//!   lookup no peer can answer);
//! - [`read_ahead`]: the queue of entries a peer hinted a build will ask
//!   for next, and [`budget`]: how much read-ahead may bring, and when.

pub(crate) mod agreement;
pub(crate) mod books;
pub(crate) mod budget;
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

/// Why a lookup found nothing, as far as the node can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No allowlisted peer we pull from is connected.
    NoPeers,
    /// No connected peer's summary names the action.
    NotInSummaries,
    /// Peers were asked (or the lookup joined a fetch in flight) and no
    /// verified body came: they did not have it, were in cooldown, or did
    /// not answer in time.
    Unanswered,
}
