//! Which connected peers may hold an action: the one place that decides
//! it, readable off the event loop's thread.
//!
//! The event loop publishes the peers a lookup would ask (connected, and
//! pulled from), each with its summary as it stands ([`SharedSummary`]),
//! and the books the actions they are fetching. The books ask
//! [`Holders::may_hold`] whom to send a lookup to, and a [`Client`]
//! asks [`Holders::sure_miss`] before it bothers the event loop at all.
//!
//! That shortcut is why this is shared: a build asks its daemon about
//! every action its local store misses, and most of those no peer holds
//! (module indexes, for one, are never shared). The event loop answers
//! such a lookup at once, but while a build reads ahead it is busy, and
//! each miss would wait its turn behind that work (docs/benchmarks.md,
//! "Sure misses answered off the event loop"). A lookup that no published
//! summary names, and that nobody is fetching, is a miss without a turn
//! through the loop; everything else (a peer with no summary yet, a name
//! in a summary, a fetch in flight) goes to the loop, which asks the same
//! question here. Peers in cooldown are published too: cooldown is the
//! books' to judge, so the shortcut never answers a lookup that the books
//! would have sent.
//!
//! [`Client`]: crate::Client

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use libp2p::PeerId;

use crate::fetch::Miss;
use crate::ids::ActionId;
use crate::summary::PeerSummary;

/// One peer's summary, written by the event loop and read by clients.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedSummary(Arc<RwLock<PeerSummary>>);

impl SharedSummary {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, PeerSummary> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, PeerSummary> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A summary that names `actions`, and nothing else.
    #[cfg(test)]
    pub(crate) fn naming<'a>(actions: impl IntoIterator<Item = &'a ActionId>) -> Self {
        use crate::summary::{SummaryAnswer, SummaryHeader, prefix};
        let summary = Self::default();
        let prefixes: Vec<u64> = actions.into_iter().map(prefix).collect();
        summary.write().apply(SummaryAnswer {
            header: SummaryHeader {
                epoch: 7,
                from: 0,
                count: prefixes.len() as u64,
                generation: prefixes.len() as u64,
            },
            prefixes,
        });
        summary
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Holders {
    /// The peers a lookup would ask: connected and pulled from.
    asked: RwLock<Vec<(PeerId, SharedSummary)>>,
    /// Actions with a fetch in flight, which a lookup joins.
    fetching: Mutex<HashSet<ActionId>>,
}

impl Holders {
    /// The peers a lookup of `action` may ask, each passed to `each` (until
    /// it returns `false`); or why there are none: nobody to ask, or no
    /// summary names it.
    pub(crate) fn may_hold(
        &self,
        action: &ActionId,
        mut each: impl FnMut(PeerId) -> bool,
    ) -> Result<(), Miss> {
        let asked = self.asked.read().unwrap_or_else(PoisonError::into_inner);
        if asked.is_empty() {
            return Err(Miss::NoPeers);
        }
        let mut any = false;
        for (peer, summary) in asked.iter() {
            if summary.read().may_hold(action) {
                any = true;
                if !each(*peer) {
                    break;
                }
            }
        }
        if any {
            Ok(())
        } else {
            Err(Miss::NotInSummaries)
        }
    }

    /// Whether a lookup would ask `peer` at all: connected and pulled from.
    pub(crate) fn asks(&self, peer: &PeerId) -> bool {
        let asked = self.asked.read().unwrap_or_else(PoisonError::into_inner);
        asked.iter().any(|(asked, _)| asked == peer)
    }

    /// Whether a lookup of `action` is surely a miss, and why: nobody to
    /// ask, or every summary says no, and nobody is fetching it.
    pub(crate) fn sure_miss(&self, action: &ActionId) -> Option<Miss> {
        if self
            .fetching
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(action)
        {
            return None;
        }
        self.may_hold(action, |_| false).err()
    }

    #[cfg(test)]
    fn surely_none(&self, action: &ActionId) -> bool {
        self.sure_miss(action).is_some()
    }

    /// Replaces the peers a lookup would ask.
    pub(crate) fn set_asked(&self, asked: Vec<(PeerId, SharedSummary)>) {
        *self.asked.write().unwrap_or_else(PoisonError::into_inner) = asked;
    }

    pub(crate) fn started(&self, action: ActionId) {
        self.fetching
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(action);
    }

    pub(crate) fn ended(&self, action: &ActionId) {
        self.fetching
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(action);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{SummaryAnswer, SummaryHeader, prefix};

    fn action(n: u8) -> ActionId {
        ActionId::from_bytes([n; 32])
    }

    fn known(actions: &[ActionId]) -> SharedSummary {
        SharedSummary::naming(actions)
    }

    fn asked(summaries: Vec<SharedSummary>) -> Vec<(PeerId, SharedSummary)> {
        summaries
            .into_iter()
            .map(|summary| (PeerId::random(), summary))
            .collect()
    }

    #[test]
    fn a_miss_is_sure_only_when_every_asked_summary_says_no() {
        let holders = Holders::default();
        // Nobody to ask.
        assert_eq!(holders.sure_miss(&action(1)), Some(Miss::NoPeers));
        let (a, b) = (known(&[action(1)]), known(&[action(2)]));
        holders.set_asked(asked(vec![a, b.clone()]));
        assert!(!holders.surely_none(&action(1)));
        assert!(!holders.surely_none(&action(2)));
        assert_eq!(holders.sure_miss(&action(3)), Some(Miss::NotInSummaries));
        // A summary that grows is read as it is now.
        b.write().apply(SummaryAnswer {
            header: SummaryHeader {
                epoch: 7,
                from: 1,
                count: 1,
                generation: 2,
            },
            prefixes: vec![prefix(&action(3))],
        });
        assert!(!holders.surely_none(&action(3)));
        // A peer with no summary yet may hold anything.
        holders.set_asked(asked(vec![b, SharedSummary::default()]));
        assert!(!holders.surely_none(&action(4)));
    }

    #[test]
    fn an_action_being_fetched_is_left_to_the_event_loop() {
        let holders = Holders::default();
        holders.set_asked(asked(vec![known(&[])]));
        holders.started(action(5));
        assert!(!holders.surely_none(&action(5)));
        holders.ended(&action(5));
        assert!(holders.surely_none(&action(5)));
    }
}
