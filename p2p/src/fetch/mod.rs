//! Fetching from peers: the requesting side of the fetch protocol.
//!
//! - [`receive`]: reading one exchange's answers and bodies into the store,
//!   verified, within deadlines;
//! - [`link`]: whether asking a peer for compressed bodies pays on its link.
//!
//! The bookkeeping of lookups in flight (whom to ask, deadlines, cooldown,
//! read-ahead) is the node's: see [`crate::node`].

pub(crate) mod link;
pub(crate) mod receive;
