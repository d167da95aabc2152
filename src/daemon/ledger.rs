//! What this machine built, remembered after trim removes it: the "earlier
//! local build" that can confirm one peer's answer under agreement
//! (`[share] agreement`, see `warren_p2p`'s `fetch::agreement`).
//!
//! An entry still in the store is a local hit and never asked of peers, so
//! what counts is an entry built here whose body has since gone. The
//! daemon's put-order index reads every entry line once; each built here
//! is recorded as the first 8 bytes of its ActionID and its OutputID, kept
//! for as long as the daemon runs, and at most [`MAX_BUILT`] of them (the
//! oldest go first): about 10 MiB. Only with agreement on.
//!
//! Eight bytes of the ActionID are enough: a wrong match needs a peer to
//! name, for another action with the same prefix, exactly the OutputID we
//! built, which confirms a body that hashes to what we built ourselves.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use crate::ids::{ActionId, OutputId};

/// Most entries remembered.
pub(crate) const MAX_BUILT: usize = 1 << 18;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    outputs: HashMap<u64, OutputId>,
    order: VecDeque<u64>,
}

fn key(action: &ActionId) -> u64 {
    u64::from_be_bytes(action.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl Ledger {
    /// Remembers that `action` was built here with `output`.
    pub(crate) fn record(&self, action: &ActionId, output: OutputId) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let key = key(action);
        if inner.outputs.insert(key, output).is_none() {
            inner.order.push_back(key);
        }
        while inner.order.len() > MAX_BUILT {
            if let Some(oldest) = inner.order.pop_front() {
                inner.outputs.remove(&oldest);
            }
        }
    }

    /// The OutputID a build here made for `action`, if remembered.
    pub(crate) fn output(&self, action: &ActionId) -> Option<OutputId> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.outputs.get(&key(action)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(n: u32) -> ActionId {
        let mut bytes = [7; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        ActionId::from_bytes(bytes)
    }

    #[test]
    fn remembers_the_latest_output_and_forgets_the_oldest() {
        let ledger = Ledger::default();
        let (one, two) = (OutputId::of(b"one"), OutputId::of(b"two"));
        assert_eq!(ledger.output(&action(1)), None);
        ledger.record(&action(1), one);
        assert_eq!(ledger.output(&action(1)), Some(one));
        ledger.record(&action(1), two);
        assert_eq!(ledger.output(&action(1)), Some(two));
        for n in 2..=MAX_BUILT as u32 {
            ledger.record(&action(n), one);
        }
        assert_eq!(ledger.output(&action(1)), Some(two), "exactly full");
        ledger.record(&action(0), one);
        assert_eq!(ledger.output(&action(1)), None, "the oldest went");
        assert_eq!(ledger.output(&action(0)), Some(one));
    }
}
