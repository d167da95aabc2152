//! The remote tier of a helper: ask the daemon after a local miss.
//!
//! A missing daemon must never slow a build: connecting to an absent socket
//! fails at once, and the helper then stops asking for a while
//! ([`ABSENT_BACKOFF`]) instead of paying for a failed connect on every
//! miss. A stuck daemon (one that does not acknowledge a lookup within
//! [`ACK_TIMEOUT`]) is treated the same way. A daemon that is working on a
//! lookup is cut off at the lookup deadline plus a transfer allowance; it
//! still finishes a transfer it started and stores the body, so the next
//! build hits it.
//!
//! With `autostart`, the first lookup that finds no daemon starts one
//! (`warren daemon`, detached). Several helpers may race to do this; the
//! daemon that binds the socket first wins and the others exit at once.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt as _;

use crate::ids::ActionId;
use crate::ipc;
use crate::store::{DiskStore, Entry, Lookup};
use crate::tiered::{BoxFuture, RemoteTier};

/// How long a helper stops asking after finding no daemon.
pub const ABSENT_BACKOFF: Duration = Duration::from_secs(1);
/// How long a daemon may take to acknowledge a lookup. Past it, the
/// daemon counts as stuck: the lookup is a miss and the helper stops asking
/// for [`ABSENT_BACKOFF`], so a stuck daemon costs a build at most this much
/// per second.
pub const ACK_TIMEOUT: Duration = Duration::from_millis(20);
/// Extra time a lookup may take once a peer is sending a body (LAN bodies
/// of std's size take milliseconds; this covers tens of MB).
pub const TRANSFER_ALLOWANCE: Duration = Duration::from_millis(250);

/// Asks the daemon behind `socket`.
pub struct DaemonTier {
    socket: PathBuf,
    wait: Duration,
    absent_until: Mutex<Option<Instant>>,
    /// How to start the daemon, if the config asks for it.
    autostart: Option<Vec<String>>,
    started: AtomicBool,
}

impl DaemonTier {
    pub fn new(socket: PathBuf, lookup_deadline: Duration) -> Self {
        Self {
            socket,
            wait: lookup_deadline + TRANSFER_ALLOWANCE,
            absent_until: Mutex::new(None),
            autostart: None,
            started: AtomicBool::new(false),
        }
    }

    /// Start `warren <args>` when no daemon answers.
    pub fn with_autostart(mut self, args: Vec<String>) -> Self {
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
    ) -> BoxFuture<'a, Option<Entry>> {
        Box::pin(async move {
            if self.absent() {
                return None;
            }
            let request = ipc::Request::Get {
                action: action.to_hex(),
            };
            match ipc::call(&self.socket, &request, ACK_TIMEOUT, self.wait).await {
                Ok(ipc::Response::Hit { peer, .. }) => {
                    let store = store.clone();
                    let found = tokio::task::spawn_blocking(move || store.get(&action))
                        .await
                        .expect("store lookups not to panic");
                    match found {
                        Ok(Lookup::Hit(entry)) => {
                            tracing::debug!("get {action}: from peer {peer}");
                            Some(entry)
                        }
                        other => {
                            tracing::debug!("get {action}: daemon said hit, store says {other:?}");
                            None
                        }
                    }
                }
                Ok(ipc::Response::Miss) => None,
                Ok(other) => {
                    tracing::debug!("get {action}: unexpected daemon answer {other:?}");
                    None
                }
                Err(e) if e.is_absent() => {
                    tracing::debug!("no daemon: {e}");
                    self.mark_absent();
                    self.autostart();
                    None
                }
                Err(e @ ipc::Error::Unresponsive(_)) => {
                    tracing::debug!("{e}; not asking it for {ABSENT_BACKOFF:?}");
                    self.mark_absent();
                    None
                }
                Err(e) => {
                    tracing::debug!("get {action}: {}", crate::server::chain(&e));
                    None
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
    async fn an_absent_daemon_is_a_quick_miss_and_is_not_asked_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path()).unwrap());
        let tier = DaemonTier::new(dir.path().join("daemon.sock"), Duration::from_millis(150));
        let started = Instant::now();
        assert!(
            tier.fetch(ActionId::from_bytes([1; 32]), &store)
                .await
                .is_none()
        );
        assert!(tier.absent());
        assert!(
            tier.fetch(ActionId::from_bytes([2; 32]), &store)
                .await
                .is_none()
        );
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    }
}
