//! The remote tier of a helper: ask the daemon after a local miss.
//!
//! A missing daemon must never slow a build: connecting to an absent socket
//! fails at once, and the helper then stops asking for a while
//! ([`ABSENT_BACKOFF`]) instead of paying for a failed connect on every
//! miss. A stuck daemon (one that leaves [`STUCK_AFTER`] lookups in a row
//! unacknowledged for [`ACK_TIMEOUT`]) is treated the same way; a single
//! late acknowledgement is only a miss, because a daemon on a machine busy
//! compiling is often a little late, and backing off for a second would
//! throw away hundreds of peer hits. A daemon that is working on a
//! lookup is cut off at the lookup deadline plus a transfer allowance; it
//! still finishes a transfer it started and stores the body, so the next
//! build hits it.
//!
//! With `autostart`, the first lookup that finds no daemon starts one
//! (`warren daemon`, detached). Several helpers may race to do this; the
//! daemon that binds the socket first wins and the others exit at once.
//! Without it, a daemon that is not running (never started, or gone
//! mid-build) costs the build its peers, which the helper says once, when
//! `go` is done ([`DaemonTier::summary`]): how many lookups, and the fix.
//! A late daemon is not worth a warning.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt as _;

use crate::helper::tiered::{BoxFuture, RemoteTier};
use crate::ids::ActionId;
use crate::ipc;
use crate::ipc::trace::Miss;
use crate::store::{DiskStore, Entry, Lookup};

/// How long a helper stops asking after finding no daemon.
pub(crate) const ABSENT_BACKOFF: Duration = Duration::from_secs(1);
/// How long a daemon may take to acknowledge a lookup before that lookup
/// is a miss.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_millis(50);
/// Unacknowledged lookups in a row after which the daemon counts as stuck
/// and is not asked for [`ABSENT_BACKOFF`]: a stuck daemon costs a build at
/// most `STUCK_AFTER` × [`ACK_TIMEOUT`] per second.
pub(crate) const STUCK_AFTER: u32 = 3;
/// Extra time a lookup may take once a peer is sending a body. Bodies of
/// std's size take milliseconds on a LAN, but a machine busy compiling can
/// delay the daemons. The p2p layer bounds dead peers on its own: a peer
/// that said "found" and then stalls or drips the body is cut off within
/// its transfer timeout or 2 s, and left out of lookups for its cooldown,
/// so a build waits this long once per such peer and cooldown, not on
/// every lookup.
pub(crate) const TRANSFER_ALLOWANCE: Duration = Duration::from_secs(1);

/// Asks the daemon behind `socket`.
pub(crate) struct DaemonTier {
    socket: PathBuf,
    wait: Duration,
    absent_until: Mutex<Option<Instant>>,
    /// Lookups in a row the daemon did not acknowledge in time.
    unacknowledged: AtomicU32,
    /// How to start the daemon, if the config asks for it.
    autostart: Option<Vec<String>>,
    started: AtomicBool,
    /// Warned already that the socket is another user's.
    warned: AtomicBool,
    /// Whether the last backoff was for a daemon that is not running
    /// (rather than one that was late: a busy machine's daemon is, now and
    /// then).
    gone: AtomicBool,
    /// Lookups that went without a daemon because none was running, and
    /// the first reason: told once, at the end.
    unanswered: AtomicU64,
    first_reason: Mutex<Option<String>>,
}

impl DaemonTier {
    pub(crate) fn new(socket: PathBuf, lookup_deadline: Duration) -> Self {
        Self {
            socket,
            wait: lookup_deadline + TRANSFER_ALLOWANCE,
            absent_until: Mutex::new(None),
            unacknowledged: AtomicU32::new(0),
            autostart: None,
            started: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            unanswered: AtomicU64::new(0),
            first_reason: Mutex::new(None),
        }
    }

    /// A lookup that went without the daemon, and why.
    fn unanswered(&self, why: impl FnOnce() -> String) -> Result<Entry, Miss> {
        self.unanswered.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_reason.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(why());
        }
        Err(Miss::NoDaemon)
    }

    /// The one warning for a `go` command whose lookups went without the
    /// daemon, if any did. None when this helper started the daemon
    /// (lookups before it is up are expected to miss).
    pub(crate) fn summary(&self) -> Option<String> {
        let n = self.unanswered.load(Ordering::Relaxed);
        if n == 0 || self.started.load(Ordering::Relaxed) {
            return None;
        }
        let first = self
            .first_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        let lookups = if n == 1 {
            "1 lookup"
        } else {
            &format!("{n} lookups")
        };
        Some(format!(
            "sharing is on, but no daemon answered, so {lookups} went without peers ({first}); \
             start it with `warren daemon` (or set `autostart = true` under [share]), \
             and see `warren doctor`"
        ))
    }

    /// Start `warren <args>` when no daemon answers.
    pub(crate) fn with_autostart(mut self, args: Vec<String>) -> Self {
        self.autostart = Some(args);
        self
    }

    fn absent(&self) -> bool {
        let until = *self.absent_until.lock().expect("lock not poisoned");
        until.is_some_and(|until| Instant::now() < until)
    }

    fn mark_absent(&self) {
        *self.absent_until.lock().expect("lock not poisoned") =
            Some(Instant::now() + ABSENT_BACKOFF);
    }

    /// Starts the daemon, once per helper, if configured to.
    fn autostart(&self) {
        if let Some(args) = &self.autostart
            && !self.started.swap(true, Ordering::Relaxed)
        {
            start_daemon(args);
        }
    }
}

impl RemoteTier for DaemonTier {
    fn fetch<'a>(
        &'a self,
        action: ActionId,
        store: &'a Arc<DiskStore>,
    ) -> BoxFuture<'a, Result<Entry, Miss>> {
        Box::pin(async move {
            if self.absent() {
                return if self.gone.load(Ordering::Relaxed) {
                    self.unanswered(|| "it is not running".into())
                } else {
                    Err(Miss::NoDaemon)
                };
            }
            let request = ipc::Request::Get { action };
            let answer = ipc::call(&self.socket, &request, ACK_TIMEOUT, self.wait).await;
            if !matches!(answer, Err(ipc::Error::Unresponsive(_))) {
                self.unacknowledged.store(0, Ordering::Relaxed);
            }
            if answer.is_ok() {
                self.gone.store(false, Ordering::Relaxed);
            }
            match answer {
                Ok(ipc::Response::Hit { peer, .. }) => {
                    // A few small file reads, done right here: a hand-over
                    // to the blocking pool would cost more than the reads
                    // (the helper's runtime is single-threaded, and nothing
                    // else on it waits long for this).
                    match store.get(&action) {
                        Ok(Lookup::Hit(entry)) => {
                            tracing::debug!("get {action}: from peer {peer}");
                            Ok(entry)
                        }
                        other => {
                            tracing::debug!("get {action}: daemon said hit, store says {other:?}");
                            Err(Miss::Peers(warren_p2p::Miss::NotFound))
                        }
                    }
                }
                Ok(ipc::Response::Missed(miss)) => Err(Miss::Peers(miss)),
                Ok(other) => {
                    tracing::debug!("get {action}: unexpected daemon answer {other:?}");
                    Err(Miss::Peers(warren_p2p::Miss::NotFound))
                }
                Err(e) if e.is_absent() => {
                    tracing::debug!("no daemon: {e}");
                    self.gone.store(true, Ordering::Relaxed);
                    self.mark_absent();
                    self.autostart();
                    self.unanswered(|| "it is not running".into())
                }
                Err(e @ ipc::Error::Impostor { .. }) => {
                    // Someone else's socket where ours should be: say so
                    // once per go command, then leave it alone.
                    if !self.warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!("{e}");
                    }
                    self.mark_absent();
                    Err(Miss::NoDaemon)
                }
                Err(e @ ipc::Error::Unresponsive(_)) => {
                    if self.unacknowledged.fetch_add(1, Ordering::Relaxed) + 1 >= STUCK_AFTER {
                        tracing::debug!(
                            "{e}, {STUCK_AFTER} times in a row; not asking it for {ABSENT_BACKOFF:?}"
                        );
                        self.unacknowledged.store(0, Ordering::Relaxed);
                        self.gone.store(false, Ordering::Relaxed);
                        self.mark_absent();
                    } else {
                        tracing::debug!("get {action}: {e}");
                    }
                    // A busy machine delays a daemon now and then: quiet.
                    Err(Miss::NoDaemon)
                }
                Err(e @ ipc::Error::Timeout(_)) => {
                    tracing::debug!("get {action}: {e}");
                    Err(Miss::Peers(warren_p2p::Miss::Deadline))
                }
                Err(e) => {
                    tracing::debug!("get {action}: {}", crate::logging::chain(&e));
                    Err(Miss::NoDaemon)
                }
            }
        })
    }
}

/// Starts the daemon detached from this helper and from `go`'s terminal.
fn start_daemon(args: &[String]) {
    let started = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    });
    match started {
        Ok(_) => tracing::debug!("started the warren daemon"),
        Err(e) => tracing::warn!("could not start the warren daemon: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stuck_daemon_is_skipped_only_after_several_late_acknowledgements() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path()).unwrap());
        let socket = dir.path().join("daemon.sock");
        // Bound but never accepting: connections queue, nothing is read.
        let _listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let tier = DaemonTier::new(socket, Duration::from_millis(150));
        for n in 1..STUCK_AFTER {
            let started = Instant::now();
            assert!(
                tier.fetch(ActionId::from_bytes([n as u8; 32]), &store)
                    .await
                    .is_err()
            );
            assert!(
                started.elapsed() < ACK_TIMEOUT * 4,
                "{:?}",
                started.elapsed()
            );
            assert!(!tier.absent(), "backed off after {n} late acknowledgements");
        }
        assert!(
            tier.fetch(ActionId::from_bytes([9; 32]), &store)
                .await
                .is_err()
        );
        assert!(tier.absent());
    }

    #[tokio::test]
    async fn an_absent_daemon_is_a_quick_miss_and_is_not_asked_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path()).unwrap());
        let tier = DaemonTier::new(dir.path().join("daemon.sock"), Duration::from_millis(150));
        let started = Instant::now();
        assert!(
            tier.fetch(ActionId::from_bytes([1; 32]), &store)
                .await
                .is_err()
        );
        assert!(tier.absent());
        assert!(
            tier.fetch(ActionId::from_bytes([2; 32]), &store)
                .await
                .is_err()
        );
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        // Told once, at the end: how many lookups, why, and the fix.
        let summary = tier.summary().unwrap();
        assert!(
            summary.contains("2 lookups went without peers (it is not running)"),
            "{summary}"
        );
        assert!(summary.contains("warren daemon"), "{summary}");
    }
}
