//! Who may connect, and what each allowlisted peer is for.
//!
//! Being allowlisted lets a peer connect; its [`Role`] says which way
//! entries flow. The default role both pulls from the peer (asks it on a
//! local miss, takes its summaries) and serves it. A laptop whose builds
//! we do not want is only served; a build server that should not see our
//! entries is only pulled from. The node enforces both sides: it never
//! asks a peer it does not pull from, and answers a peer it does not
//! serve as it answers a stranger, with nothing.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Which way entries flow between us and one allowlisted peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// We ask the peer on a miss and serve it.
    #[default]
    PullAndServe,
    /// We serve the peer but never ask it (nor take its summaries).
    ServeOnly,
    /// We ask the peer but never serve it.
    PullOnly,
}

impl Role {
    pub fn pulls(self) -> bool {
        matches!(self, Self::PullAndServe | Self::PullOnly)
    }

    pub fn serves(self) -> bool {
        matches!(self, Self::PullAndServe | Self::ServeOnly)
    }
}

/// The allowlisted peers with their roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    peers: HashMap<PeerId, Role>,
}

impl Allowlist {
    /// On the allowlist at all: may connect.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// We may ask this peer for entries and take its summaries.
    pub fn pulls_from(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|role| role.pulls())
    }

    /// We may answer this peer's requests.
    pub fn serves(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|role| role.serves())
    }

    pub fn role(&self, peer: &PeerId) -> Option<Role> {
        self.peers.get(peer).copied()
    }

    pub fn ids(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// Every peer with the default role.
impl From<HashSet<PeerId>> for Allowlist {
    fn from(peers: HashSet<PeerId>) -> Self {
        peers
            .into_iter()
            .map(|peer| (peer, Role::default()))
            .collect()
    }
}

impl FromIterator<(PeerId, Role)> for Allowlist {
    fn from_iter<I: IntoIterator<Item = (PeerId, Role)>>(peers: I) -> Self {
        Self {
            peers: peers.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_say_which_way_entries_flow() {
        let (both, serve, pull, stranger) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let list: Allowlist = [
            (both, Role::PullAndServe),
            (serve, Role::ServeOnly),
            (pull, Role::PullOnly),
        ]
        .into_iter()
        .collect();
        assert!(list.pulls_from(&both) && list.serves(&both));
        assert!(!list.pulls_from(&serve) && list.serves(&serve));
        assert!(list.pulls_from(&pull) && !list.serves(&pull));
        assert!(!list.contains(&stranger));
        assert!(!list.pulls_from(&stranger) && !list.serves(&stranger));
        assert_eq!(
            serde_json::to_string(&Role::ServeOnly).unwrap(),
            "\"serve-only\""
        );
    }
}
