//! Serving peers: the answering side of the fetch protocol.
//!
//! - [`answer`]: what the local store holds for one action, a small body
//!   read and verified before anything is sent;
//! - [`reply`]: writing one exchange's answers and bodies to the stream,
//!   through [`paced`], which cuts off a peer that reads too slowly.
//!
//! A damaged local store never spreads: a body that does not hash to its
//! OutputID is answered "not found" (small) or cut off before its last
//! piece (big).

pub(crate) mod answer;
pub(crate) mod paced;
pub(crate) mod reply;
