//! The daemon's warnings, each kind at most once per [`WINDOW`], with how
//! many times it happened.
//!
//! A fault repeats: a full disk fails every fetched body, a peer with a bad
//! disk sends bad body after bad body, a peer on flaky Wi-Fi drops and
//! comes back all day, a process out of file descriptors fails every
//! accept, a damaged body is asked for again. A line per occurrence buries
//! the daemon's log (and a terminal that runs `warren daemon`); one line
//! per fault and window says the same, with the count. [`Flaps`] turns a
//! peer's disconnects into one such fault once they are frequent.
//!
//! The daemon keeps one table, shared by everything in it that warns of a
//! fault that can repeat: the node's events, the store as the node sees it
//! (`node_store`), the helpers' socket (`ipc`), the metrics endpoint and
//! their listeners (`accept`). Warnings that happen at most once per cause
//! (the daemon cannot listen, an edit of the allowlist it cannot read)
//! are told directly.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use warren_p2p::PeerId;

/// At most one warning per kind in this long.
pub(crate) const WINDOW: Duration = Duration::from_secs(600);
/// Disconnects of one peer within [`WINDOW`] that make it flapping.
pub(crate) const FLAPS: usize = 5;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Quiet(Mutex<HashMap<String, Seen>>);

#[derive(Debug)]
struct Seen {
    warned: Instant,
    /// Occurrences since the last warning.
    since: u64,
}

impl Quiet {
    /// Counts one occurrence of `kind`. Returns how many there were since
    /// the last warning of it, this one included, when it is time to warn.
    pub(crate) fn occurred(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(kind) {
            Some(seen) if now.duration_since(seen.warned) < WINDOW => {
                seen.since += 1;
                None
            }
            Some(seen) => {
                let count = seen.since + 1;
                *seen = Seen {
                    warned: now,
                    since: 0,
                };
                Some(count)
            }
            None => {
                // Bounded: kinds are a fixed few, or one of those per
                // allowlisted peer.
                if seen.len() >= 1024 {
                    seen.retain(|_, s| now.duration_since(s.warned) < WINDOW);
                }
                seen.insert(
                    kind.to_owned(),
                    Seen {
                        warned: now,
                        since: 0,
                    },
                );
                Some(1)
            }
        }
    }
}

/// Recent disconnects per peer.
#[derive(Debug, Default)]
pub(crate) struct Flaps(HashMap<PeerId, VecDeque<Instant>>);

impl Flaps {
    /// Notes that `peer` disconnected; how many times it did within
    /// [`WINDOW`], once that is [`FLAPS`] or more.
    pub(crate) fn disconnected(&mut self, peer: PeerId, now: Instant) -> Option<usize> {
        let times = self.0.entry(peer).or_default();
        times.push_back(now);
        while times
            .front()
            .is_some_and(|at| now.duration_since(*at) > WINDOW)
        {
            times.pop_front();
        }
        (times.len() >= FLAPS).then_some(times.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_fault_is_told_once_per_window_with_its_count() {
        let quiet = Quiet::default();
        let start = Instant::now();
        assert_eq!(quiet.occurred("disk full", start), Some(1));
        for n in 1..=786 {
            let at = start + Duration::from_millis(n);
            assert_eq!(quiet.occurred("disk full", at), None);
        }
        // Another kind is its own.
        assert_eq!(quiet.occurred("rejected peer X", start), Some(1));
        assert_eq!(quiet.occurred("disk full", start + WINDOW), Some(787));
        assert_eq!(
            quiet.occurred("disk full", start + WINDOW + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn a_peer_flaps_after_several_disconnects_within_the_window() {
        let mut flaps = Flaps::default();
        let peer = PeerId::random();
        let start = Instant::now();
        for n in 0..FLAPS - 1 {
            assert_eq!(
                flaps.disconnected(peer, start + Duration::from_secs(n as u64)),
                None
            );
        }
        assert_eq!(
            flaps.disconnected(peer, start + Duration::from_secs(10)),
            Some(FLAPS)
        );
        // Spread over hours, disconnects are not flapping.
        let mut slow = Flaps::default();
        for n in 0..10 {
            assert_eq!(slow.disconnected(peer, start + WINDOW * n), None);
        }
    }
}
