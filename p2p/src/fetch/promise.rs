//! What a peer has promised on one request, so that a deadline that passes
//! is held against the right side.
//!
//! The codec moves a request through these stages as its answer comes in;
//! the books read them when a deadline of theirs passes (the lookup
//! deadline, a request's backstop) or libp2p's request timeout ends it:
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

use std::sync::atomic::{AtomicU8, Ordering};

/// Shared by the codec, which moves it on, and the books, which read it.
#[derive(Debug)]
pub(crate) struct Promise(AtomicU8);

impl Default for Promise {
    fn default() -> Self {
        Self(AtomicU8::new(UNSENT))
    }
}

/// Not written to the peer yet.
const UNSENT: u8 = 0;
/// Written; no answer yet.
const ASKED: u8 = 1;
/// The peer said "found" and a body is on its way.
const OWED: u8 = 2;
/// The peer said "found", and nothing more is owed on this request: the
/// body is all in, or was only announced.
const KEPT: u8 = 3;

impl Promise {
    /// The request was written to the peer.
    pub(crate) fn asked(&self) {
        self.0.store(ASKED, Ordering::Relaxed);
    }

    /// The peer said "found" and its body follows.
    pub(crate) fn owed(&self) {
        self.0.store(OWED, Ordering::Relaxed);
    }

    /// The peer said "found" and owes nothing more (yet, in a batch).
    pub(crate) fn kept(&self) {
        self.0.store(KEPT, Ordering::Relaxed);
    }

    /// Whether the peer said "found": a lookup waits for it.
    pub(crate) fn positive(&self) -> bool {
        matches!(self.0.load(Ordering::Relaxed), OWED | KEPT)
    }

    /// Whether a deadline passing now is the peer's fault. `announced`: the
    /// request asks for a body the peer announced before.
    pub(crate) fn broken(&self, announced: bool) -> bool {
        match self.0.load(Ordering::Relaxed) {
            OWED => true,
            ASKED => announced,
            _ => false,
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
        promise.asked();
        assert!(!promise.broken(false), "a lookup nobody answered");
        assert!(promise.broken(true), "a body request left unanswered");
        assert!(!promise.positive());
        promise.owed();
        assert!(promise.broken(false) && promise.positive());
        promise.kept();
        assert!(!promise.broken(true), "the rest is ours");
        assert!(promise.positive());
    }
}
