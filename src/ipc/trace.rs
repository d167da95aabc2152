//! What each lookup of a build did, for `warren trace`.
//!
//! "Why did this build not use Bob's outputs?" has its answer in lookups
//! that happen in two processes: local hits and misses with sharing off
//! are answered by the helper alone, peer lookups by the daemon. So the
//! helper notes every `get`'s [`Outcome`] as it answers it (a push under a
//! mutex, next to a file read), with the daemon's reason for each miss as
//! the node decided it ([`warren_p2p::Miss`], carried typed, never worked
//! out again), and at the end of the `go` command sends the lot to the daemon in one
//! message ([`Recorder::report`]). The daemon keeps the last [`CAPACITY`]
//! lookups of its builds in memory ([`Ring`]); nothing is written to disk.
//! With no daemon running there is nobody to keep them, and nothing is sent.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use warren_p2p::PeerId;

use crate::ids::ActionId;
use crate::share::ipc;
use crate::share::status::unix_ms;

/// Lookups the daemon keeps, over all builds.
pub(crate) const CAPACITY: usize = 10_000;
/// Longest the helper spends reporting, after `go` has its last answer.
const REPORT_TIMEOUT: Duration = Duration::from_millis(250);

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
        }
    }

    /// The peer it involves, if any.
    pub(crate) fn peer(self) -> Option<PeerId> {
        match self {
            Self::Hit(Hit::ReadAhead(peer))
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
}

impl Kind {
    pub(crate) const ALL: [Kind; 10] = [
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
    ];

    pub(crate) fn is_hit(self) -> bool {
        matches!(self, Self::LocalHit | Self::ReadAheadHit | Self::PeerHit)
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

/// The helper's notes of one `go` command.
pub(crate) struct Recorder {
    started: SystemTime,
    /// Off when no daemon runs (nobody would keep the notes): a plain
    /// local cache pays nothing for traces.
    enabled: bool,
    notes: Mutex<Notes>,
    gets: AtomicU64,
}

/// Compact: a lookup is ~40 bytes, so [`CAPACITY`] of them ~400 KB.
#[derive(Default)]
struct Notes {
    lookups: VecDeque<Noted>,
    /// The peers named, each once; lookups hold an index.
    peers: Vec<PeerId>,
}

struct Noted {
    action: ActionId,
    outcome: Kind,
    /// The peer its outcome involves, by its index in `Notes::peers`.
    peer: Option<u16>,
    /// Microseconds `go` waited on the daemon, if it was asked.
    waited_us: Option<u32>,
}

impl Recorder {
    /// A recorder that notes lookups only if `enabled`.
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            started: SystemTime::now(),
            enabled,
            notes: Mutex::default(),
            gets: AtomicU64::new(0),
        }
    }

    /// When the `go` command started: a peer's entry stored since then,
    /// and found locally, was read ahead for this build.
    pub(crate) fn started(&self) -> SystemTime {
        self.started
    }

    /// Notes one `get`'s outcome.
    pub(crate) fn note(
        &self,
        action: ActionId,
        outcome: impl Into<Outcome>,
        waited: Option<Duration>,
    ) {
        if !self.enabled {
            return;
        }
        let outcome = outcome.into();
        self.gets.fetch_add(1, Ordering::Relaxed);
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        let peer = outcome.peer().and_then(|peer| {
            let index = match notes.peers.iter().position(|known| *known == peer) {
                Some(index) => index,
                None => {
                    notes.peers.push(peer);
                    notes.peers.len() - 1
                }
            };
            u16::try_from(index).ok()
        });
        if notes.lookups.len() == CAPACITY {
            notes.lookups.pop_front();
        }
        notes.lookups.push_back(Noted {
            action,
            outcome: outcome.kind(),
            peer,
            waited_us: waited.map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX)),
        });
    }

    /// The build as noted so far.
    pub(crate) fn build(&self) -> Build {
        let notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        Build {
            number: 0,
            command: go_command(),
            pid: std::process::id(),
            started_unix_ms: unix_ms(self.started),
            ended_unix_ms: unix_ms(SystemTime::now()),
            gets: self.gets.load(Ordering::Relaxed),
            // A note whose peer could not be kept (past the index's room)
            // is left out.
            lookups: (notes.lookups.iter())
                .filter_map(|noted| {
                    let peer = (noted.peer)
                        .and_then(|index| notes.peers.get(usize::from(index)))
                        .copied();
                    Some(Lookup {
                        action: noted.action,
                        outcome: Outcome::of(noted.outcome, peer)?,
                        ms: noted
                            .waited_us
                            .map(|us| (f64::from(us) / 100.0).round() / 10.0),
                    })
                })
                .collect(),
        }
    }

    /// Sends the build to the daemon behind `socket`, if one is there.
    /// Best effort and bounded: a trace is not worth a slower build.
    pub(crate) async fn report(&self, socket: &Path) {
        if self.gets.load(Ordering::Relaxed) == 0 || !socket.exists() {
            return;
        }
        let request = ipc::Request::Report(Box::new(self.build()));
        match ipc::call(socket, &request, REPORT_TIMEOUT, REPORT_TIMEOUT).await {
            Ok(_) => {}
            Err(e) => tracing::debug!("reporting lookups to the daemon: {e}"),
        }
    }
}

/// The daemon's recent builds, at most [`CAPACITY`] lookups in all.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    builds: VecDeque<Build>,
    held: usize,
    next: u64,
}

impl Ring {
    pub(crate) fn add(&mut self, mut build: Build) {
        self.next += 1;
        build.number = self.next;
        if build.lookups.len() > CAPACITY {
            build.lookups.drain(..build.lookups.len() - CAPACITY);
        }
        self.held += build.lookups.len();
        self.builds.push_back(build);
        while self.held > CAPACITY {
            let Some(oldest) = self.builds.front_mut() else {
                break;
            };
            let drop = (self.held - CAPACITY).min(oldest.lookups.len());
            oldest.lookups.drain(..drop);
            self.held -= drop;
            if oldest.lookups.is_empty() {
                self.builds.pop_front();
            }
        }
    }

    /// The builds held, oldest first.
    pub(crate) fn builds(&self) -> Vec<Build> {
        self.builds.iter().cloned().collect()
    }
}

/// The command line of the `go` command that started this helper.
fn go_command() -> String {
    let parent = std::os::unix::process::parent_id();
    std::fs::read(format!("/proc/{parent}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(lookups: usize) -> Build {
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
    fn the_ring_keeps_the_newest_lookups_and_numbers_builds() {
        let mut ring = Ring::default();
        ring.add(build(6_000));
        ring.add(build(6_000));
        let builds = ring.builds();
        assert_eq!(builds.iter().map(|b| b.number).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(builds[0].lookups.len(), 4_000);
        // The oldest lookups went: the first build keeps its last ones.
        assert_eq!(
            builds[0].lookups[0].action.to_hex(),
            format!("{:064x}", 2_000)
        );
        assert_eq!(builds[1].lookups.len(), 6_000);
        ring.add(build(CAPACITY + 5));
        let builds = ring.builds();
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].number, 3);
        assert_eq!(builds[0].lookups.len(), CAPACITY);
    }

    #[test]
    fn totals_add_up_to_the_lookups() {
        let build = build(25);
        let totals = build.totals();
        assert_eq!(totals.iter().map(|(_, n)| n).sum::<u64>(), 25);
        assert_eq!(totals[0], (Kind::LocalHit, 3));
    }

    #[test]
    fn the_recorder_keeps_its_last_lookups_and_counts_every_get() {
        let recorder = Recorder::new(true);
        let peer = PeerId::random();
        for n in 0..CAPACITY + 3 {
            let mut bytes = [0; 32];
            bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
            recorder.note(
                ActionId::from_bytes(bytes),
                Hit::Peer(Some(peer)),
                Some(Duration::from_micros(1_234)),
            );
        }
        let build = recorder.build();
        assert_eq!(build.gets, CAPACITY as u64 + 3);
        assert_eq!(build.lookups.len(), CAPACITY);
        assert_eq!(build.lookups[0].ms, Some(1.2));
        assert_eq!(build.lookups[0].outcome.peer(), Some(peer));
        assert_eq!(build.pid, std::process::id());
        // With no daemon to keep them, nothing is noted.
        let off = Recorder::new(false);
        off.note(ActionId::from_bytes([1; 32]), Hit::Local, None);
        assert_eq!(off.build().gets, 0);
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
