//! What each lookup of a build did, for `warren trace`.
//!
//! "Why did this build not use Bob's outputs?" has its answer in lookups
//! that happen in two processes: local hits and misses with sharing off
//! are answered by the helper alone, peer lookups by the daemon. So the
//! helper notes every `get`'s [`Outcome`] as it answers it (a push under a
//! mutex, next to a file read), with the daemon's reason for each miss,
//! and at the end of the `go` command sends the lot to the daemon in one
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

/// What one `get` came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// In the local store before the build asked.
    LocalHit,
    /// Fetched from a peer by the daemon's read-ahead during this build,
    /// before the build asked.
    ReadAheadHit,
    /// Fetched from a peer when the build asked.
    PeerHit,
    /// A miss: no peer was connected to ask.
    NoPeers,
    /// A miss: no connected peer's summary holds it.
    NotInSummaries,
    /// A miss: the peer that may hold it is in cooldown for a bad body.
    Cooldown,
    /// A miss: no answer before the lookup deadline.
    Deadline,
    /// A miss: the peers asked did not have it.
    NotFound,
    /// A miss: the daemon did not answer (not running, or stuck).
    NoDaemon,
    /// A miss: sharing is off for this `go` command.
    SharingOff,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 10] = [
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

/// A miss beyond the local store, and why: the outcome, and the peer it
/// involves (the one in cooldown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Miss {
    pub outcome: Outcome,
    pub peer: Option<warren_p2p::PeerId>,
}

impl From<Outcome> for Miss {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            peer: None,
        }
    }
}

/// One lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Lookup {
    /// The ActionID, hex.
    pub action: String,
    pub outcome: Outcome,
    /// The peer's ID, for outcomes that involve one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// How long `go` waited on the daemon, for lookups that asked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
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
    /// Lookups per outcome, in [`Outcome::ALL`] order, zeros left out.
    pub(crate) fn totals(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL
            .iter()
            .map(|&outcome| {
                let n = self.lookups.iter().filter(|l| l.outcome == outcome).count();
                (outcome, n as u64)
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
    outcome: Outcome,
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
        outcome: Outcome,
        peer: Option<PeerId>,
        waited: Option<Duration>,
    ) {
        if !self.enabled {
            return;
        }
        self.gets.fetch_add(1, Ordering::Relaxed);
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        let peer = peer.and_then(|peer| {
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
            outcome,
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
            lookups: notes
                .lookups
                .iter()
                .map(|noted| Lookup {
                    action: noted.action.to_hex(),
                    outcome: noted.outcome,
                    peer: noted
                        .peer
                        .and_then(|index| notes.peers.get(usize::from(index)))
                        .map(ToString::to_string),
                    ms: noted
                        .waited_us
                        .map(|us| (f64::from(us) / 100.0).round() / 10.0),
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
        Build {
            gets: lookups as u64,
            lookups: (0..lookups)
                .map(|n| Lookup {
                    action: format!("{n:064x}"),
                    outcome: Outcome::ALL[n % Outcome::ALL.len()],
                    peer: None,
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
        assert_eq!(builds[0].lookups[0].action, format!("{:064x}", 2_000));
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
        assert_eq!(totals[0], (Outcome::LocalHit, 3));
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
                Outcome::PeerHit,
                Some(peer),
                Some(Duration::from_micros(1_234)),
            );
        }
        let build = recorder.build();
        assert_eq!(build.gets, CAPACITY as u64 + 3);
        assert_eq!(build.lookups.len(), CAPACITY);
        assert_eq!(build.lookups[0].ms, Some(1.2));
        assert_eq!(build.lookups[0].peer, Some(peer.to_string()));
        assert_eq!(build.pid, std::process::id());
        // With no daemon to keep them, nothing is noted.
        let off = Recorder::new(false);
        off.note(ActionId::from_bytes([1; 32]), Outcome::LocalHit, None, None);
        assert_eq!(off.build().gets, 0);
    }

    #[test]
    fn outcomes_read_as_a_sentence() {
        assert_eq!(Outcome::PeerHit.describe(Some("bob")), "peer hit from bob");
        assert_eq!(
            Outcome::NotInSummaries.describe(None),
            "miss: no peer's summary holds it"
        );
        assert_eq!(Outcome::SharingOff.describe(None), "miss: sharing off");
        assert!(Outcome::ReadAheadHit.is_hit() && !Outcome::Deadline.is_hit());
    }
}
