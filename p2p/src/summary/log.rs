//! A store's summary log, as a node serves it to peers: the prefixes of
//! the actions it holds, in the order the store learned of them, under an
//! epoch that names this log. A store keeps one and appends to it; the
//! node reads chunks of it through [`Summaries`](crate::Summaries).

use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{SummaryChunk, prefix};
use crate::ids::ActionId;

/// An append-only log of action prefixes; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    epoch: u64,
    prefixes: Vec<u64>,
}

impl Default for Log {
    fn default() -> Self {
        Self::new()
    }
}

impl Log {
    /// An empty log under a fresh random epoch (never 0), so that a peer
    /// holding a chunk of an older log of this store starts over.
    pub fn new() -> Self {
        // The hasher of a fresh `RandomState` is keyed from the OS's
        // random source.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        Self {
            epoch: hasher.finish().max(1),
            prefixes: Vec::new(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Entries in the log (its generation).
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// Appends `action`. Call it once per action the store learns of.
    pub fn push(&mut self, action: &ActionId) {
        self.prefixes.push(prefix(action));
    }

    /// The log from entry `since` on, or from its start if `epoch` is not
    /// this log's; at most `limit` prefixes.
    pub fn chunk(&self, epoch: u64, since: u64, limit: usize) -> SummaryChunk {
        let len = self.prefixes.len();
        let from = if epoch == self.epoch {
            usize::try_from(since).unwrap_or(usize::MAX).min(len)
        } else {
            0
        };
        SummaryChunk {
            epoch: self.epoch,
            from: from as u64,
            prefixes: self.prefixes[from..].iter().take(limit).copied().collect(),
            generation: len as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_since_within_an_epoch_and_start_over_outside_it() {
        let mut log = Log::new();
        assert_ne!(log.epoch(), 0);
        assert_ne!(Log::new().epoch(), log.epoch());
        for n in 1..=3 {
            log.push(&ActionId::from_bytes([n; 32]));
        }
        let own = log.epoch();
        let chunk = log.chunk(own, 1, 10);
        assert_eq!(
            (chunk.from, chunk.generation, chunk.prefixes.len()),
            (1, 3, 2)
        );
        assert_eq!(chunk.prefixes[0], prefix(&ActionId::from_bytes([2; 32])));
        assert!(log.chunk(own, 3, 10).prefixes.is_empty());
        assert_eq!(log.chunk(own, 99, 10).from, 3, "past the end: nothing");
        let other = log.chunk(own + 1, 2, 2);
        assert_eq!(
            (other.from, other.prefixes.len()),
            (0, 2),
            "another epoch: from 0, limited"
        );
    }
}
