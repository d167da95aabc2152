//! The helper's notes of its `go` command's lookups, for `warren trace`.
//!
//! The helper notes every `get`'s outcome as it answers it (a push under a
//! mutex, next to a file read), and when `go` is done sends the lot to the
//! daemon in one message ([`Recorder::report`]; the types are
//! [`crate::ipc::trace`]'s). With no daemon running there is nobody to
//! keep them, and nothing is noted or sent.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use warren_p2p::PeerId;

use crate::ids::ActionId;
use crate::ipc;
use crate::ipc::status::unix_ms;
use crate::ipc::trace::{Build, CAPACITY, Kind, Lookup, Outcome};

/// Longest the helper spends reporting, after `go` has its last answer.
const REPORT_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest it spends reporting its puts for the team bucket's uploads (a
/// line of up to some 3 MB the daemon parses before it acknowledges).
const PUTS_TIMEOUT: Duration = Duration::from_secs(1);

/// The helper's notes of one `go` command.
pub(crate) struct Recorder {
    started: SystemTime,
    /// Off when no daemon runs (nobody would keep the notes): a plain
    /// local cache pays nothing for traces.
    enabled: bool,
    notes: Mutex<Notes>,
    gets: AtomicU64,
    /// With `[bucket] write = true`: the ActionIDs put, in put order, for
    /// the daemon to upload (at most `MAX_REPORTED`).
    puts: Option<Mutex<Vec<ActionId>>>,
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
            puts: None,
        }
    }

    /// Also notes the ActionIDs put, for the team bucket's uploads.
    pub(crate) fn with_puts(mut self) -> Self {
        self.puts = Some(Mutex::default());
        self
    }

    /// Notes a put, in the order `go` sent them.
    pub(crate) fn note_put(&self, action: ActionId) {
        if let Some(puts) = &self.puts {
            let mut puts = puts.lock().unwrap_or_else(|p| p.into_inner());
            if puts.len() < crate::daemon::bucket::write::MAX_REPORTED {
                puts.push(action);
            }
        }
    }

    /// Sends the puts noted to the daemon, which uploads them in the
    /// background (the build does not wait for that).
    pub(crate) async fn report_puts(&self, socket: &Path) {
        let actions = match &self.puts {
            Some(puts) => std::mem::take(&mut *puts.lock().unwrap_or_else(|p| p.into_inner())),
            None => return,
        };
        if actions.is_empty() {
            return;
        }
        let request = ipc::Request::Built { actions };
        if let Err(e) = ipc::call(socket, &request, PUTS_TIMEOUT, PUTS_TIMEOUT).await {
            tracing::debug!("reporting puts to the daemon: {e}");
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
        self.report_within(socket, REPORT_TIMEOUT).await;
    }

    /// [`Self::report`], waiting at most `timeout` to connect and as long
    /// for the answer.
    pub(crate) async fn report_within(&self, socket: &Path, timeout: Duration) {
        if self.gets.load(Ordering::Relaxed) == 0 || !socket.exists() {
            return;
        }
        let request = ipc::Request::Report(Box::new(self.build()));
        match ipc::call(socket, &request, timeout, timeout).await {
            Ok(_) => {}
            Err(e) => tracing::debug!("reporting lookups to the daemon: {e}"),
        }
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
    use crate::ipc::trace::Hit;

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
}
