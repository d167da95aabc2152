//! What a peer has promised on one request, so that a deadline that passes
//! is held against the right side.
//!
//! The requesting side reports each step as the answer comes in
//! ([`Report::Promise`](crate::fetch::exchange::Report::Promise)); the
//! books keep the latest and judge by it when a deadline of theirs passes
//! (the lookup deadline, a request's backstop) or libp2p's request timeout
//! ends the request:
//!
//! - a request that has not reached the peer yet, or that the peer has not
//!   answered, breaks no promise: a slow or silent peer is only left
//!   behind at the lookup deadline;
//! - once the peer said "found" and sends a body, it owes that body: a
//!   deadline that passes now is its fault (cooldown), whichever passes
//!   first;
//! - a peer asked for a body it announced in a lookup owes at least an
//!   answer: a body request it leaves unanswered is its fault too;
//! - once every byte of the body is in, the rest (verifying, committing)
//!   is ours.

/// See the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Promise {
    /// Not written to the peer yet.
    #[default]
    Unsent,
    /// Written; no answer yet.
    Asked,
    /// The peer said "found" and a body is on its way.
    Owed,
    /// The peer said "found", and nothing more is owed on this request
    /// (yet, in a batch): the body is all in, or was only announced.
    Kept,
}

impl Promise {
    /// Whether the peer said "found": a lookup waits for it.
    pub(crate) fn positive(self) -> bool {
        matches!(self, Self::Owed | Self::Kept)
    }

    /// Whether a deadline passing now is the peer's fault. `announced`: the
    /// request asks for a body the peer announced before.
    pub(crate) fn broken(self, announced: bool) -> bool {
        match self {
            Self::Owed => true,
            Self::Asked => announced,
            Self::Unsent | Self::Kept => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_peer_that_owes_something_breaks_a_promise() {
        let promise = Promise::default();
        assert!(!promise.broken(true), "never reached the peer");
        let promise = Promise::Asked;
        assert!(!promise.broken(false), "a lookup nobody answered");
        assert!(promise.broken(true), "a body request left unanswered");
        assert!(!promise.positive());
        let promise = Promise::Owed;
        assert!(promise.broken(false) && promise.positive());
        let promise = Promise::Kept;
        assert!(!promise.broken(true), "the rest is ours");
        assert!(promise.positive());
    }
}
