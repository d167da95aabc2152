//! The mappings of the bucket this daemon accepted, in memory: what a
//! lookup consults without a round trip.
//!
//! Only manifests whose signature verified, by a signer this machine
//! pulls from, are added. Bounded: at most [`MAX_MANIFESTS`] manifests and
//! [`MAX_MAPPINGS`] mappings (about 100 bytes each: some 25 MB at most);
//! past either, the oldest manifests are dropped first. When the
//! allowlist changes, [`Index::retain`] drops the manifests of signers no
//! longer pulled from at once. No IO here: the tier lists and fetches.

use std::collections::{BTreeSet, HashMap, HashSet};

use libp2p_identity::PeerId;

use super::manifest::Manifest;
use crate::ids::{ActionId, OutputId};

/// Most manifests held.
pub(crate) const MAX_MANIFESTS: usize = 16_384;
/// Most mappings held.
pub(crate) const MAX_MAPPINGS: usize = 250_000;
/// Most names of refused manifests remembered (so that a bad one is not
/// fetched again at every refresh); forgotten all at once past it.
const MAX_REFUSED: usize = 4_096;

/// A manifest's entries as read-ahead takes them: ActionID, OutputID, size.
pub(crate) type Entries = Vec<(ActionId, OutputId, u64)>;

/// One accepted mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub output: OutputId,
    pub size: u64,
    pub signer: PeerId,
    /// The manifest that named it (the index's own number).
    pub manifest: u64,
}

struct Held {
    name: String,
    signer: PeerId,
    time_ms: u64,
    /// Its entries in put order.
    entries: Entries,
    /// Whether its read-ahead was started.
    read_ahead: bool,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Index {
    mappings: HashMap<ActionId, Mapping>,
    manifests: HashMap<u64, Held>,
    /// `(time, number)` of every manifest held, oldest first.
    by_age: BTreeSet<(u64, u64)>,
    names: HashSet<String>,
    refused: HashSet<String>,
    next: u64,
}

impl Index {
    /// Whether the manifest `name` was added or refused already.
    pub(crate) fn knows(&self, name: &str) -> bool {
        self.names.contains(name) || self.refused.contains(name)
    }

    /// Remembers that `name` is no manifest to use (bad signature, say).
    pub(crate) fn refuse(&mut self, name: &str) {
        if self.refused.len() >= MAX_REFUSED {
            self.refused.clear();
        }
        self.refused.insert(name.to_owned());
    }

    /// Adds a verified manifest of a trusted signer, found as `name`.
    pub(crate) fn add(&mut self, name: &str, manifest: Manifest) {
        if self.names.contains(name) {
            return;
        }
        let number = self.next;
        self.next += 1;
        for entry in &manifest.entries {
            let newer = self
                .mappings
                .get(&entry.action)
                .and_then(|m| self.manifests.get(&m.manifest))
                .is_none_or(|held| held.time_ms <= manifest.time_ms);
            if newer {
                self.mappings.insert(
                    entry.action,
                    Mapping {
                        output: entry.output,
                        size: entry.size,
                        signer: manifest.signer,
                        manifest: number,
                    },
                );
            }
        }
        self.names.insert(name.to_owned());
        self.by_age.insert((manifest.time_ms, number));
        self.manifests.insert(
            number,
            Held {
                name: name.to_owned(),
                signer: manifest.signer,
                time_ms: manifest.time_ms,
                entries: (manifest.entries.iter())
                    .map(|e| (e.action, e.output, e.size))
                    .collect(),
                read_ahead: false,
            },
        );
        while self.manifests.len() > MAX_MANIFESTS || self.mappings.len() > MAX_MAPPINGS {
            let Some(&(_, oldest)) = self.by_age.first() else {
                break;
            };
            self.drop_manifest(oldest);
        }
    }

    fn drop_manifest(&mut self, number: u64) {
        let Some(held) = self.manifests.remove(&number) else {
            return;
        };
        self.by_age.remove(&(held.time_ms, number));
        self.names.remove(&held.name);
        for (action, ..) in held.entries {
            if self
                .mappings
                .get(&action)
                .is_some_and(|m| m.manifest == number)
            {
                self.mappings.remove(&action);
            }
        }
    }

    /// The mapping of `action`, if an accepted manifest names it.
    pub(crate) fn get(&self, action: &ActionId) -> Option<Mapping> {
        self.mappings.get(action).copied()
    }

    /// Drops every manifest whose signer `pulls` no longer admits.
    pub(crate) fn retain(&mut self, pulls: impl Fn(&PeerId) -> bool) {
        let gone: Vec<u64> = (self.manifests.iter())
            .filter(|(_, held)| !pulls(&held.signer))
            .map(|(&number, _)| number)
            .collect();
        for number in gone {
            self.drop_manifest(number);
        }
    }

    /// The entries of manifest `number` in put order, the first time it
    /// is asked for (its read-ahead); `None` after.
    pub(crate) fn start_read_ahead(&mut self, number: u64) -> Option<(PeerId, Entries)> {
        let held = self.manifests.get_mut(&number)?;
        if held.read_ahead {
            return None;
        }
        held.read_ahead = true;
        Some((held.signer, held.entries.clone()))
    }

    /// Manifests and mappings held, and the manifests held per signer.
    pub(crate) fn counts(&self) -> (usize, usize, HashMap<PeerId, usize>) {
        let mut signers = HashMap::new();
        for held in self.manifests.values() {
            *signers.entry(held.signer).or_default() += 1;
        }
        (self.manifests.len(), self.mappings.len(), signers)
    }

    /// The newest time of a manifest held, unix ms.
    pub(crate) fn newest(&self) -> Option<u64> {
        self.by_age.last().map(|&(time, _)| time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::bucket::manifest::Entry;

    fn manifest(signer: PeerId, time_ms: u64, actions: std::ops::Range<u8>) -> Manifest {
        Manifest {
            signer,
            time_ms,
            entries: actions
                .map(|n| Entry {
                    action: ActionId::from_bytes([n; 32]),
                    output: OutputId::from_bytes([n; 32]),
                    size: u64::from(n),
                    time_ms,
                })
                .collect(),
        }
    }

    #[test]
    fn a_removed_signer_s_mappings_go_at_once() {
        let (alice, bob) = (PeerId::random(), PeerId::random());
        let mut index = Index::default();
        index.add("a", manifest(alice, 1, 0..3));
        index.add("b", manifest(bob, 2, 3..5));
        assert_eq!(
            index.get(&ActionId::from_bytes([1; 32])).unwrap().signer,
            alice
        );
        index.retain(|peer| *peer == bob);
        assert_eq!(index.get(&ActionId::from_bytes([1; 32])), None);
        assert_eq!(
            index.get(&ActionId::from_bytes([4; 32])).unwrap().signer,
            bob
        );
        assert!(
            !index.knows("a"),
            "a re-added signer's manifest is read again"
        );
        assert_eq!(index.counts().0, 1);
    }

    #[test]
    fn the_newest_manifest_s_mapping_wins_and_read_ahead_starts_once() {
        let signer = PeerId::random();
        let mut index = Index::default();
        index.add("new", manifest(signer, 5, 0..2));
        index.add("old", manifest(signer, 1, 1..3));
        let one = index.get(&ActionId::from_bytes([1; 32])).unwrap();
        let (_, entries) = index.start_read_ahead(one.manifest).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(index.start_read_ahead(one.manifest).is_none());
        assert_eq!(index.newest(), Some(5));
        index.add("old", manifest(signer, 1, 1..3));
        assert_eq!(index.counts().0, 2, "a name is added once");
    }

    /// The index is bounded: past the manifests' bound the oldest go first.
    #[test]
    fn the_oldest_manifests_go_past_the_bound() {
        let signer = PeerId::random();
        let mut index = Index::default();
        for n in 0..MAX_MANIFESTS as u64 + 10 {
            index.add(&n.to_string(), manifest(signer, n, 0..1));
        }
        assert_eq!(index.counts().0, MAX_MANIFESTS);
        assert!(!index.knows("0") && !index.knows("9") && index.knows("10"));
        assert_eq!(
            index.get(&ActionId::from_bytes([0; 32])).unwrap().manifest,
            MAX_MANIFESTS as u64 + 9
        );
    }
}
