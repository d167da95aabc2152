//! What each lookup of a build came to, as it crosses the helper socket.
//!
//! "Why did this build not use Bob's outputs?" has its answer in lookups
//! that happen in two processes: local hits and misses with sharing off
//! are answered by the helper alone, peer lookups by the daemon. So the
//! helper notes every `get`'s [`Outcome`] as it answers it
//! (`helper::trace`), with the daemon's reason for each miss as the node
//! decided it ([`warren_p2p::Miss`], carried typed, never worked out
//! again), and at the end of the `go` command sends the lot to the daemon
//! in one message, a [`Build`]. The daemon keeps the last [`CAPACITY`]
//! lookups of its builds in memory (`daemon::trace`); nothing is written
//! to disk. These are the types both sides, and `warren trace`, read and
//! write.

use serde::{Deserialize, Serialize};

use warren_p2p::PeerId;

use crate::ids::ActionId;

/// Lookups the daemon keeps, over all builds (and a helper notes, at most).
pub(crate) const CAPACITY: usize = 10_000;

/// What one `get` came to: the one type for it, from the daemon's answer
/// (or the helper's own lookup) through the helper's notes and the
/// daemon's ring to `warren trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit(Hit),
    Miss(Miss),
}

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    /// In the local store before the build asked.
    Local,
    /// Fetched from this peer by the daemon's read-ahead during this
    /// build, before the build asked.
    ReadAhead(PeerId),
    /// Fetched from a peer when the build asked: the one the store says
    /// it came from (`None` if its entry no longer says).
    Peer(Option<PeerId>),
    /// Fetched from the team bucket when the build asked, by a manifest
    /// this peer signed.
    Bucket(PeerId),
}

/// Why a `get` missed beyond the local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// The peers did not send it, and why, as the daemon's node said (or
    /// [`warren_p2p::Miss::Deadline`] when the daemon did not answer in
    /// time).
    Peers(warren_p2p::Miss),
    /// The daemon did not answer (not running, or stuck).
    NoDaemon,
    /// Sharing is off for this `go` command.
    SharingOff,
    /// The team bucket's index named it, and the bucket failed or was in
    /// cooldown.
    Bucket(crate::ipc::BucketMiss),
}

impl From<Miss> for Outcome {
    fn from(miss: Miss) -> Self {
        Self::Miss(miss)
    }
}

impl From<Hit> for Outcome {
    fn from(hit: Hit) -> Self {
        Self::Hit(hit)
    }
}

impl Outcome {
    pub(crate) fn kind(self) -> Kind {
        use warren_p2p::Miss as Peers;
        match self {
            Self::Hit(Hit::Local) => Kind::LocalHit,
            Self::Hit(Hit::ReadAhead(_)) => Kind::ReadAheadHit,
            Self::Hit(Hit::Peer(_)) => Kind::PeerHit,
            Self::Miss(Miss::Peers(Peers::NoPeers)) => Kind::NoPeers,
            Self::Miss(Miss::Peers(Peers::NotInSummaries)) => Kind::NotInSummaries,
            Self::Miss(Miss::Peers(Peers::Cooldown { .. })) => Kind::Cooldown,
            Self::Miss(Miss::Peers(Peers::Deadline)) => Kind::Deadline,
            Self::Miss(Miss::Peers(Peers::NotFound)) => Kind::NotFound,
            Self::Miss(Miss::NoDaemon) => Kind::NoDaemon,
            Self::Miss(Miss::SharingOff) => Kind::SharingOff,
            Self::Hit(Hit::Bucket(_)) => Kind::BucketHit,
            Self::Miss(Miss::Bucket(crate::ipc::BucketMiss::Failed)) => Kind::BucketFailed,
            Self::Miss(Miss::Bucket(crate::ipc::BucketMiss::Cooldown)) => Kind::BucketCooldown,
        }
    }

    /// The peer it involves, if any.
    pub(crate) fn peer(self) -> Option<PeerId> {
        match self {
            Self::Hit(Hit::ReadAhead(peer) | Hit::Bucket(peer))
            | Self::Miss(Miss::Peers(warren_p2p::Miss::Cooldown { peer })) => Some(peer),
            Self::Hit(Hit::Peer(peer)) => peer,
            _ => None,
        }
    }

    /// The outcome of `kind` involving `peer`; `None` if `kind` needs a
    /// peer and there is none.
    pub(crate) fn of(kind: Kind, peer: Option<PeerId>) -> Option<Self> {
        use warren_p2p::Miss as Peers;
        let peers = |miss| Some(Self::Miss(Miss::Peers(miss)));
        match kind {
            Kind::LocalHit => Some(Self::Hit(Hit::Local)),
            Kind::ReadAheadHit => Some(Self::Hit(Hit::ReadAhead(peer?))),
            Kind::PeerHit => Some(Self::Hit(Hit::Peer(peer))),
            Kind::NoPeers => peers(Peers::NoPeers),
            Kind::NotInSummaries => peers(Peers::NotInSummaries),
            Kind::Cooldown => peers(Peers::Cooldown { peer: peer? }),
            Kind::Deadline => peers(Peers::Deadline),
            Kind::NotFound => peers(Peers::NotFound),
            Kind::NoDaemon => Some(Self::Miss(Miss::NoDaemon)),
            Kind::SharingOff => Some(Self::Miss(Miss::SharingOff)),
            Kind::BucketHit => Some(Self::Hit(Hit::Bucket(peer?))),
            Kind::BucketFailed => Some(Self::Miss(Miss::Bucket(crate::ipc::BucketMiss::Failed))),
            Kind::BucketCooldown => {
                Some(Self::Miss(Miss::Bucket(crate::ipc::BucketMiss::Cooldown)))
            }
        }
    }

    pub(crate) fn is_hit(self) -> bool {
        self.kind().is_hit()
    }
}

/// An outcome without its peer: its name in reports and in `warren trace
/// --json`, what totals count, and (in this order) how they list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    LocalHit,
    ReadAheadHit,
    PeerHit,
    NoPeers,
    NotInSummaries,
    Cooldown,
    Deadline,
    NotFound,
    NoDaemon,
    SharingOff,
    BucketHit,
    BucketFailed,
    BucketCooldown,
}

impl Kind {
    pub(crate) const ALL: [Kind; 13] = [
        Self::LocalHit,
        Self::ReadAheadHit,
        Self::PeerHit,
        Self::NoPeers,
        Self::NotInSummaries,
        Self::Cooldown,
        Self::Deadline,
        Self::NotFound,
        Self::NoDaemon,
        Self::SharingOff,
        Self::BucketHit,
        Self::BucketFailed,
        Self::BucketCooldown,
    ];

    pub(crate) fn is_hit(self) -> bool {
        matches!(
            self,
            Self::LocalHit | Self::ReadAheadHit | Self::PeerHit | Self::BucketHit
        )
    }

    /// The outcome in words, for totals: peers are named apart.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::LocalHit => "local hit",
            Self::ReadAheadHit => "read-ahead hit",
            Self::PeerHit => "peer hit",
            Self::NoPeers => "miss: no peer connected",
            Self::NotInSummaries => "miss: no peer's summary holds it",
            Self::Cooldown => "miss: peer in cooldown",
            Self::Deadline => "miss: deadline passed",
            Self::NotFound => "miss: the peers asked did not have it",
            Self::NoDaemon => "miss: no daemon answered",
            Self::SharingOff => "miss: sharing off",
            Self::BucketHit => "bucket hit",
            Self::BucketFailed => "miss: the bucket failed",
            Self::BucketCooldown => "miss: bucket in cooldown",
        }
    }

    /// The outcome in words; `peer` names the peer it involves, if any.
    pub(crate) fn describe(self, peer: Option<&str>) -> String {
        let Some(peer) = peer else {
            return self.label().to_owned();
        };
        match self {
            Self::ReadAheadHit => format!("read-ahead hit from {peer}"),
            Self::PeerHit => format!("peer hit from {peer}"),
            Self::BucketHit => format!("bucket hit (signed by {peer})"),
            Self::Cooldown => format!("miss: {peer} in cooldown"),
            other => other.label().to_owned(),
        }
    }
}

/// One lookup. In reports and `warren trace --json`: its ActionID (hex),
/// the [`Kind`] of its outcome as `outcome`, the peer involved (if any)
/// as `peer`, and `ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "LookupJson", try_from = "LookupJson")]
pub(crate) struct Lookup {
    pub action: ActionId,
    pub outcome: Outcome,
    /// How long `go` waited on the daemon, for lookups that asked it.
    pub ms: Option<f64>,
}

/// A [`Lookup`] as its JSON has it.
#[derive(Serialize, Deserialize)]
struct LookupJson {
    action: ActionId,
    outcome: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<PeerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ms: Option<f64>,
}

impl From<Lookup> for LookupJson {
    fn from(lookup: Lookup) -> Self {
        Self {
            action: lookup.action,
            outcome: lookup.outcome.kind(),
            peer: lookup.outcome.peer(),
            ms: lookup.ms,
        }
    }
}

impl TryFrom<LookupJson> for Lookup {
    type Error = String;

    fn try_from(json: LookupJson) -> Result<Self, String> {
        let outcome = Outcome::of(json.outcome, json.peer)
            .ok_or_else(|| format!("a lookup of outcome {:?} without its peer", json.outcome))?;
        Ok(Self {
            action: json.action,
            outcome,
            ms: json.ms,
        })
    }
}

/// One `go` command's lookups, as its helper reported them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Build {
    /// Numbered by the daemon, from 1 since it started.
    pub number: u64,
    /// The `go` command, as far as the helper could tell (its parent's
    /// command line).
    pub command: String,
    pub pid: u32,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
    /// The `get`s `go` sent; `lookups` holds the last of them if there
    /// were more than [`CAPACITY`], or after the ring dropped old ones.
    pub gets: u64,
    pub lookups: Vec<Lookup>,
}

impl Build {
    /// Lookups per outcome, in [`Kind::ALL`] order, zeros left out.
    pub(crate) fn totals(&self) -> Vec<(Kind, u64)> {
        Kind::ALL
            .iter()
            .map(|&kind| {
                let n = (self.lookups.iter())
                    .filter(|lookup| lookup.outcome.kind() == kind)
                    .count();
                (kind, n as u64)
            })
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A build of `lookups` lookups, of every outcome in turn, naming one
    /// peer.
    pub(crate) fn build(lookups: usize) -> Build {
        let peer = PeerId::random();
        Build {
            gets: lookups as u64,
            lookups: (0..lookups)
                .map(|n| Lookup {
                    action: ActionId::from_hex(&format!("{n:064x}")).unwrap(),
                    outcome: Outcome::of(Kind::ALL[n % Kind::ALL.len()], Some(peer)).unwrap(),
                    ms: None,
                })
                .collect(),
            ..Build::default()
        }
    }

    #[test]
    fn totals_add_up_to_the_lookups() {
        let lookups = 2 * Kind::ALL.len() + 1;
        let build = build(lookups);
        let totals = build.totals();
        assert_eq!(totals.iter().map(|(_, n)| n).sum::<u64>(), lookups as u64);
        assert_eq!(totals[0], (Kind::LocalHit, 3));
    }

    #[test]
    fn outcomes_read_as_a_sentence() {
        assert_eq!(Kind::PeerHit.describe(Some("bob")), "peer hit from bob");
        assert_eq!(
            Kind::NotInSummaries.describe(None),
            "miss: no peer's summary holds it"
        );
        assert_eq!(Kind::SharingOff.describe(None), "miss: sharing off");
        assert!(Kind::ReadAheadHit.is_hit() && !Kind::Deadline.is_hit());
    }

    /// Reports cross the helper socket, and `warren trace --json` prints
    /// lookups, in one JSON shape: the outcome by name and its peer beside
    /// it. A lookup that names an outcome which needs a peer, without
    /// one, is refused rather than read as some other outcome.
    #[test]
    fn lookups_keep_their_json() {
        let peer = PeerId::random();
        let action = ActionId::from_bytes([0xab; 32]);
        let cooldown = Lookup {
            action,
            outcome: Miss::Peers(warren_p2p::Miss::Cooldown { peer }).into(),
            ms: Some(1.5),
        };
        let json = format!(
            r#"{{"action":"{}","outcome":"cooldown","peer":"{peer}","ms":1.5}}"#,
            action.to_hex()
        );
        assert_eq!(serde_json::to_string(&cooldown).unwrap(), json);
        assert_eq!(serde_json::from_str::<Lookup>(&json).unwrap(), cooldown);
        let local = Lookup {
            action,
            outcome: Hit::Local.into(),
            ms: None,
        };
        let json = format!(
            r#"{{"action":"{}","outcome":"local_hit"}}"#,
            action.to_hex()
        );
        assert_eq!(serde_json::to_string(&local).unwrap(), json);
        assert_eq!(serde_json::from_str::<Lookup>(&json).unwrap(), local);
        let no_peer = format!(r#"{{"action":"{}","outcome":"cooldown"}}"#, action.to_hex());
        assert!(serde_json::from_str::<Lookup>(&no_peer).is_err());
    }
}
