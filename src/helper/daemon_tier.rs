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

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::helper::tiered::RemoteTier;
use crate::ids::ActionId;
use crate::ipc;
use crate::ipc::trace::{Hit, Miss};
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

/// Why lookups went without the daemon, for [`DaemonTier::summary`].
const NOT_RUNNING: &str = "it is not running";

/// Asks the daemon behind `socket`.
pub(crate) struct DaemonTier {
    socket: PathBuf,
    wait: Duration,
    /// How to start the daemon, if the config asks for it.
    autostart: Option<Vec<String>>,
    /// What the answers so far say of the daemon. One lock for all of it,
    /// so that each answer moves it as a whole; taken before a call and
    /// after it, never across one.
    state: Mutex<State>,
}

/// What a helper knows of its daemon from the answers so far, and what
/// each answer makes of it (no IO here: [`DaemonTier`] logs and starts).
#[derive(Debug, Default)]
struct State {
    /// Not asked until then: no daemon was there, or it was stuck.
    absent_until: Option<Instant>,
    /// Whether that backoff is for a daemon that is not running (rather
    /// than one that was late: a busy machine's daemon is, now and then).
    gone: bool,
    /// Lookups in a row the daemon did not acknowledge in time.
    unacknowledged: u32,
    /// This helper started the daemon (it does so once at most).
    started: bool,
    /// Warned already that the socket is another user's.
    warned: bool,
    /// Lookups that went without a daemon because none was running, and
    /// the first reason: told once, at the end.
    unanswered: u64,
    first_reason: Option<&'static str>,
    /// Lookups the team bucket failed or skipped in its cooldown: told
    /// once, at the end.
    bucket_misses: u64,
}

impl State {
    fn bucket_failed(&mut self, _: ipc::BucketMiss) {
        self.bucket_misses += 1;
    }

    fn absent(&self, now: Instant) -> bool {
        self.absent_until.is_some_and(|until| now < until)
    }

    fn back_off(&mut self, now: Instant) {
        self.absent_until = Some(now + ABSENT_BACKOFF);
    }

    /// A lookup that went without the daemon, and why.
    fn unanswered(&mut self, why: &'static str) -> Miss {
        self.unanswered += 1;
        self.first_reason.get_or_insert(why);
        Miss::NoDaemon
    }

    /// Before a lookup: ask the daemon, or (while backing off) the miss.
    fn ask(&mut self, now: Instant) -> Result<(), Miss> {
        if !self.absent(now) {
            return Ok(());
        }
        Err(if self.gone {
            self.unanswered(NOT_RUNNING)
        } else {
            Miss::NoDaemon
        })
    }

    /// The daemon answered: it runs, and it acknowledged in time.
    fn answered(&mut self) {
        self.unacknowledged = 0;
        self.gone = false;
    }

    /// No daemon is there: back off. Whether to start one, if `autostart`
    /// (once per helper).
    fn not_running(&mut self, now: Instant, autostart: bool) -> bool {
        self.unacknowledged = 0;
        self.gone = true;
        self.back_off(now);
        self.unanswered(NOT_RUNNING);
        autostart && !std::mem::replace(&mut self.started, true)
    }

    /// Another user's socket where ours should be: leave it alone for a
    /// while. Whether to say so (once per `go` command).
    fn impostor(&mut self, now: Instant) -> bool {
        self.unacknowledged = 0;
        self.back_off(now);
        !std::mem::replace(&mut self.warned, true)
    }

    /// The daemon did not acknowledge in time. Whether that makes it
    /// stuck ([`STUCK_AFTER`] in a row), and backed off from.
    fn late(&mut self, now: Instant) -> bool {
        self.unacknowledged += 1;
        if self.unacknowledged < STUCK_AFTER {
            return false;
        }
        self.unacknowledged = 0;
        self.gone = false;
        self.back_off(now);
        true
    }

    /// Any other failure: the daemon was there, and not late.
    fn failed(&mut self) {
        self.unacknowledged = 0;
    }
}

impl DaemonTier {
    pub(crate) fn new(socket: PathBuf, lookup_deadline: Duration) -> Self {
        Self {
            socket,
            wait: lookup_deadline + TRANSFER_ALLOWANCE,
            autostart: None,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The one warning for a `go` command whose lookups went without the
    /// daemon, if any did. None when this helper started the daemon
    /// (lookups before it is up are expected to miss).
    pub(crate) fn summary(&self) -> Option<String> {
        let state = self.state();
        let n = state.unanswered;
        if n == 0 || state.started {
            return None;
        }
        let first = state.first_reason.unwrap_or_default();
        let lookups = lookups(n);
        Some(format!(
            "sharing is on, but no daemon answered, so {lookups} went without peers ({first}); \
             start it with `warren daemon` (or set `autostart = true` under [share]), \
             and see `warren doctor`"
        ))
    }

    /// The one warning for a `go` command some of whose lookups the team
    /// bucket failed (or skipped, in its cooldown after failing), if any.
    pub(crate) fn bucket_summary(&self) -> Option<String> {
        let n = self.state().bucket_misses;
        (n > 0).then(|| {
            format!(
                "the team bucket failed, so {} went without it (it is left out of lookups \
                 for a while, and builds go on); see `warren doctor` and `warren bucket`",
                lookups(n)
            )
        })
    }

    /// Start `warren <args>` when no daemon answers.
    pub(crate) fn with_autostart(mut self, args: Vec<String>) -> Self {
        self.autostart = Some(args);
        self
    }

    #[cfg(test)]
    fn absent(&self) -> bool {
        self.state().absent(Instant::now())
    }

    /// What a failed call to the daemon comes to.
    fn failed(&self, action: ActionId, error: ipc::Error) -> Miss {
        let now = Instant::now();
        let mut state = self.state();
        match error {
            e if e.is_absent() => {
                tracing::debug!("no daemon: {e}");
                let start = state.not_running(now, self.autostart.is_some());
                drop(state);
                if start && let Some(args) = &self.autostart {
                    start_daemon(args);
                }
                Miss::NoDaemon
            }
            e @ ipc::Error::Impostor { .. } => {
                if state.impostor(now) {
                    tracing::warn!("{e}");
                }
                Miss::NoDaemon
            }
            e @ ipc::Error::Unresponsive(_) => {
                if state.late(now) {
                    tracing::debug!(
                        "{e}, {STUCK_AFTER} times in a row; not asking it for {ABSENT_BACKOFF:?}"
                    );
                } else {
                    tracing::debug!("get {action}: {e}");
                }
                // A busy machine delays a daemon now and then: quiet.
                Miss::NoDaemon
            }
            e @ ipc::Error::Timeout(_) => {
                state.failed();
                tracing::debug!("get {action}: {e}");
                Miss::Peers(warren_p2p::Miss::Deadline)
            }
            e => {
                state.failed();
                tracing::debug!("get {action}: {}", crate::logging::chain(&e));
                Miss::NoDaemon
            }
        }
    }
}

impl RemoteTier for DaemonTier {
    fn fetch<'a>(
        &'a self,
        action: ActionId,
        store: &'a Arc<DiskStore>,
    ) -> BoxFuture<'a, Result<(Entry, Hit), Miss>> {
        Box::pin(async move {
            self.state().ask(Instant::now())?;
            let request = ipc::Request::Get { action };
            let answer = match ipc::call(&self.socket, &request, ACK_TIMEOUT, self.wait).await {
                Ok(answer) => answer,
                Err(error) => return Err(self.failed(action, error)),
            };
            self.state().answered();
            match answer {
                ipc::Response::Hit { peer, bucket, .. } => {
                    // A few small file reads, done right here: a hand-over
                    // to the blocking pool would cost more than the reads
                    // (the helper's runtime is single-threaded, and nothing
                    // else on it waits long for this).
                    match store.get(&action) {
                        Ok(Lookup::Hit(entry)) if bucket => {
                            tracing::debug!("get {action}: from the bucket, signed by {peer}");
                            Ok((entry, Hit::Bucket(peer)))
                        }
                        Ok(Lookup::Hit(entry)) => {
                            tracing::debug!("get {action}: from peer {peer}");
                            Ok((entry, Hit::Peer(Some(peer))))
                        }
                        other => {
                            tracing::debug!("get {action}: daemon said hit, store says {other:?}");
                            Err(Miss::Peers(warren_p2p::Miss::NotFound))
                        }
                    }
                }
                ipc::Response::Missed(miss) => Err(Miss::Peers(miss)),
                ipc::Response::BucketMissed(miss) => {
                    self.state().bucket_failed(miss);
                    Err(Miss::Bucket(miss))
                }
                other => {
                    tracing::debug!("get {action}: unexpected daemon answer {other:?}");
                    Err(Miss::Peers(warren_p2p::Miss::NotFound))
                }
            }
        })
    }
}

fn lookups(n: u64) -> String {
    if n == 1 {
        "1 lookup".to_owned()
    } else {
        format!("{n} lookups")
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

    /// Only late acknowledgements in a row make a daemon stuck: an answer,
    /// or a failure of another kind, between them starts the count over.
    /// A stuck daemon is backed off from, but it is not one that is not
    /// running: its lookups are not worth the warning at the end.
    #[test]
    fn only_late_acknowledgements_in_a_row_make_a_daemon_stuck() {
        let now = Instant::now();
        let mut state = State::default();
        for n in 1..STUCK_AFTER {
            assert!(!state.late(now), "stuck after {n}");
        }
        state.answered();
        for _ in 1..STUCK_AFTER {
            assert!(!state.late(now));
        }
        state.failed();
        for _ in 1..STUCK_AFTER {
            assert!(!state.late(now));
        }
        assert_eq!(state.ask(now), Ok(()));
        assert!(state.late(now));
        assert_eq!(state.ask(now), Err(Miss::NoDaemon));
        assert_eq!(state.ask(now + ABSENT_BACKOFF), Ok(()));
        assert_eq!(state.unanswered, 0);
    }

    /// A daemon that is not running is started once (with autostart), and
    /// every lookup that goes without it meanwhile is counted for the
    /// warning at the end; another user's socket is told of once.
    #[test]
    fn a_missing_daemon_is_started_once_and_an_impostor_told_once() {
        let now = Instant::now();
        let mut state = State::default();
        assert!(state.not_running(now, true));
        assert_eq!(state.ask(now), Err(Miss::NoDaemon));
        assert!(!state.not_running(now + ABSENT_BACKOFF, true));
        assert_eq!(state.unanswered, 3);
        assert_eq!(state.first_reason, Some(NOT_RUNNING));

        let mut state = State::default();
        assert!(!state.not_running(now, false));
        assert!(!state.started, "nothing was started");
        assert!(state.impostor(now));
        assert!(!state.impostor(now + ABSENT_BACKOFF));
    }
}
