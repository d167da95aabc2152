//! Agreement: a fetched mapping is taken only when two sources agree.
//!
//! Every body a peer sends is checked against the OutputID it announced,
//! so a peer cannot send a body other than the one it names. It can still
//! name the wrong one: a compromised allowlisted peer can answer an
//! ActionID with any OutputID it likes, and its body will verify. With
//! agreement on ([`NodeConfig::with_agreement`](crate::NodeConfig::with_agreement)),
//! a mapping ActionID → OutputID is stored only when
//!
//! - two different peers that say they built the entry themselves
//!   ([`FoundHeader::built_here`](crate::wire::FoundHeader::built_here))
//!   announced the same OutputID for it, or
//! - the store recorded the same OutputID for an earlier build of its own
//!   ([`Bodies::built_here`](crate::Bodies::built_here)).
//!
//! A lookup asks every peer whose summary names the action, so the second
//! claim usually arrives with the first; a body that lands before any
//! second claim is not stored (an [`Outcome::NotStored`]), and the fetch
//! waits for the other peers' answers, whose bodies then are. Read-ahead
//! asks one peer and is off while agreement is on.
//!
//! Claims are what peers said, kept for [`KEEP`] and for at most
//! [`MAX_ACTIONS`] actions, [`MAX_CLAIMS`] each: bounded memory whatever
//! peers send. It guards against one lying peer, not several that collude.
//!
//! [`Outcome::NotStored`]: crate::fetch::exchange::Outcome::NotStored

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::ids::{ActionId, OutputId};
use crate::store::{BodySink, CommitError, Store};

/// How long a peer's claim counts.
pub(crate) const KEEP: Duration = Duration::from_secs(10 * 60);
/// Most actions with claims kept; the oldest go first.
pub(crate) const MAX_ACTIONS: usize = 16_384;
/// Most claims kept per action (one per peer).
pub(crate) const MAX_CLAIMS: usize = 8;

/// What peers that built an entry themselves said its OutputID is.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_action: HashMap<ActionId, Vec<(PeerId, OutputId)>>,
    /// When each action's first claim came, oldest first.
    order: VecDeque<(Instant, ActionId)>,
}

impl Claims {
    /// Records that `peer`, which says it built it, announced `output` for
    /// `action`. A peer's later claim replaces its earlier one.
    pub(crate) fn claim(&self, action: ActionId, peer: PeerId, output: OutputId, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.prune(now);
        let claims = inner.by_action.entry(action).or_default();
        let new_action = claims.is_empty();
        if let Some(claim) = claims.iter_mut().find(|(who, _)| *who == peer) {
            claim.1 = output;
        } else if claims.len() < MAX_CLAIMS {
            claims.push((peer, output));
        }
        if new_action {
            inner.order.push_back((now, action));
        }
    }

    /// How many different peers that built it announced `output` for
    /// `action`.
    pub(crate) fn builders(&self, action: &ActionId, output: &OutputId) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.by_action.get(action).map_or(0, |claims| {
            claims.iter().filter(|(_, said)| said == output).count()
        })
    }

    #[cfg(test)]
    fn actions(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.by_action.len()
    }
}

impl Inner {
    fn prune(&mut self, now: Instant) {
        while let Some(&(at, action)) = self.order.front() {
            let full = self.order.len() >= MAX_ACTIONS;
            if !full && now.saturating_duration_since(at) < KEEP {
                break;
            }
            self.order.pop_front();
            self.by_action.remove(&action);
        }
    }
}

/// Whether the mapping `action` → `output` is agreed: see the module docs.
pub(crate) fn agreed(
    claims: &Claims,
    store: &dyn Store,
    action: &ActionId,
    output: &OutputId,
) -> bool {
    claims.builders(action, output) >= 2 || store.built_here(action).as_ref() == Some(output)
}

/// A sink that commits only an agreed mapping (and then verifies as any
/// sink does); otherwise it stores nothing and says so with
/// [`CommitError::Unconfirmed`].
pub(crate) struct Agreeing {
    pub(crate) sink: Box<dyn BodySink>,
    pub(crate) claims: Arc<Claims>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) action: ActionId,
    pub(crate) output: OutputId,
}

impl io::Write for Agreeing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

impl BodySink for Agreeing {
    fn commit(self: Box<Self>) -> Result<(), CommitError> {
        if !agreed(&self.claims, &*self.store, &self.action, &self.output) {
            // Dropping the inner sink discards the body.
            return Err(CommitError::Unconfirmed);
        }
        self.sink.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn action(n: u8) -> ActionId {
        ActionId::from_bytes([n; 32])
    }

    fn output(n: u8) -> OutputId {
        OutputId::from_bytes([n; 32])
    }

    #[test]
    fn two_different_peers_must_name_the_same_output() {
        let claims = Claims::default();
        let (alice, bob, carol) = (peer(), peer(), peer());
        let now = Instant::now();
        claims.claim(action(1), alice, output(1), now);
        assert_eq!(claims.builders(&action(1), &output(1)), 1);
        // The same peer twice is one source.
        claims.claim(action(1), alice, output(1), now);
        assert_eq!(claims.builders(&action(1), &output(1)), 1);
        // A peer that disagrees does not confirm.
        claims.claim(action(1), bob, output(2), now);
        assert_eq!(claims.builders(&action(1), &output(1)), 1);
        assert_eq!(claims.builders(&action(1), &output(2)), 1);
        claims.claim(action(1), carol, output(1), now);
        assert_eq!(claims.builders(&action(1), &output(1)), 2);
        // Claims are per action.
        assert_eq!(claims.builders(&action(2), &output(1)), 0);
    }

    #[test]
    fn claims_expire_and_are_bounded() {
        let claims = Claims::default();
        let start = Instant::now();
        let (alice, bob) = (peer(), peer());
        claims.claim(action(1), alice, output(1), start);
        claims.claim(action(1), bob, output(1), start + KEEP / 2);
        assert_eq!(claims.builders(&action(1), &output(1)), 2);
        // Pruned on the next claim after KEEP.
        claims.claim(action(2), alice, output(2), start + KEEP);
        assert_eq!(claims.builders(&action(1), &output(1)), 0);

        for n in 0..MAX_ACTIONS as u32 + 10 {
            let mut bytes = [0; 32];
            bytes[..4].copy_from_slice(&n.to_be_bytes());
            claims.claim(ActionId::from_bytes(bytes), alice, output(1), start + KEEP);
        }
        assert!(claims.actions() <= MAX_ACTIONS);

        let many: Vec<PeerId> = (0..MAX_CLAIMS + 4).map(|_| peer()).collect();
        for who in &many {
            claims.claim(action(3), *who, output(3), start + KEEP);
        }
        assert_eq!(claims.builders(&action(3), &output(3)), MAX_CLAIMS);
    }
}
