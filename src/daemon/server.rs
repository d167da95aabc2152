//! The local socket between helpers and the daemon.
//!
//! `go` starts a helper per command and stops it on `close`, so the
//! long-lived work (the libp2p node, mDNS, serving peers) lives in one
//! daemon per user and store. A helper that misses locally asks the daemon
//! over a Unix socket in the store directory (`<store>/daemon.sock`, mode
//! 0600: only the owner can connect). Bodies never cross this socket: the
//! daemon writes what it fetched into the shared store, after verifying it,
//! and the helper then reads the store as for any local hit.
//!
//! Wire format: one JSON object per line each way, one request per
//! connection. Connecting costs tens of microseconds, and a connection per
//! lookup keeps slow lookups from queueing behind each other. A lookup
//! that takes the daemon longer than [`ACK_DELAY`] is first acknowledged
//! (`"accepted"`), so a helper can tell a busy lookup from a stuck daemon;
//! quicker ones (most peer hits) are just answered, which saves a write and
//! a wake-up of the helper on every lookup.
//!
//! The server follows mini-redis: a listener loop bounded by a semaphore, a
//! task per connection, and shutdown through a [`CancellationToken`].

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use warren_p2p::PeerId;

use crate::fsutil::private;
use crate::ids::ActionId;
use crate::share::accept::Backoff;
use crate::share::quiet::Quiet;
use crate::share::status::DaemonStatus;
use crate::tiered::BoxFuture;
use crate::trace::Build;

/// Connections served at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 512;
/// Longest request line accepted: a helper's report of its lookups
/// ([`crate::trace`]) is the longest, ~120 bytes per lookup.
const MAX_LINE: usize = 4 << 20;
/// Longest answer line accepted: the trace of every build held.
const MAX_ANSWER: u64 = 16 << 20;
/// A request not answered within this long is acknowledged first. Well
/// under any helper's acknowledgement timeout.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("connecting to the daemon at {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the daemon")]
    Io(#[source] io::Error),
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the daemon did not acknowledge a request within {0:?}")]
    Unresponsive(Duration),
    #[error("the daemon sent a malformed answer: {0}")]
    Malformed(String),
    #[error(
        "the daemon socket {} is served by uid {uid}, not by you: not using it",
        path.display()
    )]
    Impostor { path: PathBuf, uid: u32 },
    #[error("a daemon is already serving {}", .0.display())]
    AlreadyRunning(PathBuf),
    #[error("listening on {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True when no daemon is there at all (as opposed to a slow one).
    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, Error::Connect { source, .. }
            if matches!(source.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused))
    }
}

/// A helper's question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Find `action` (as hex on the socket) at a peer and store it locally.
    Get { action: ActionId },
    /// The daemon's view of its peers, for `warren peers` and `warren stats`.
    Status,
    /// Re-read the allowlist now (`warren peers add/remove` just wrote
    /// it), and purge what peers no longer pulled from sent.
    ReloadAllowlist,
    /// A helper's lookups of the `go` command it served, to keep.
    Report(Box<Build>),
    /// The builds kept, for `warren trace`.
    Trace,
    /// Dial every allowlisted peer not connected now, wait a little for
    /// what comes of it, and answer with the status (`warren doctor`).
    Probe,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Response {
    /// Sent before the answer when the answer takes longer than
    /// [`ACK_DELAY`], so a helper can tell a busy lookup from a stuck daemon.
    Accepted,
    /// The entry is now in the local store, fetched from `peer` (its ID
    /// as text on the socket).
    Hit {
        peer: PeerId,
        size: u64,
    },
    /// A miss, and why, as the node decided it: `{"reason": …}`, with the
    /// `peer` in cooldown where there is one.
    Missed(warren_p2p::Miss),
    Status(DaemonStatus),
    /// The allowlist was re-read; entries purged because of it.
    Reloaded {
        purged_entries: u64,
        purged_bytes: u64,
    },
    /// A report was kept.
    Reported,
    /// The builds kept, oldest first.
    Trace {
        builds: Vec<Build>,
    },
    Error {
        message: String,
    },
}

/// Sends one request. The daemon must answer or acknowledge it within
/// `ack_timeout` (a daemon that is there but stuck costs no more than
/// that), and answer within `timeout` of the start.
pub(crate) async fn call(
    socket: &Path,
    request: &Request,
    ack_timeout: Duration,
    timeout: Duration,
) -> Result<Response, Error> {
    let started = tokio::time::Instant::now();
    let stream = tokio::time::timeout(ack_timeout, UnixStream::connect(socket))
        .await
        .map_err(|_| Error::Unresponsive(ack_timeout))?
        .map_err(|source| Error::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    // Only a daemon of our own: another user's could answer with anything.
    let uid = stream.peer_cred().map_err(Error::Io)?.uid();
    if uid != private::my_uid() {
        return Err(Error::Impostor {
            path: socket.to_path_buf(),
            uid,
        });
    }
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).expect("requests to serialize");
    line.push(b'\n');
    let mut read = BufReader::new(read).take(MAX_ANSWER);
    let acknowledged = async {
        write.write_all(&line).await.map_err(Error::Io)?;
        read_response(&mut read).await
    };
    match tokio::time::timeout_at(started + ack_timeout, acknowledged).await {
        Err(_) => return Err(Error::Unresponsive(ack_timeout)),
        Ok(Ok(Response::Accepted)) => {}
        // Answered without an acknowledgement: it was quick.
        Ok(answer) => return answer,
    }
    tokio::time::timeout_at(started + timeout, read_response(&mut read))
        .await
        .map_err(|_| Error::Timeout(timeout))?
}

async fn read_response(
    read: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> Result<Response, Error> {
    let mut answer = String::new();
    read.read_line(&mut answer).await.map_err(Error::Io)?;
    serde_json::from_str(&answer).map_err(|e| Error::Malformed(e.to_string()))
}

/// What the daemon does with requests.
pub(crate) trait Handler: Send + Sync + 'static {
    fn get(&self, action: ActionId) -> BoxFuture<'_, Response>;
    fn status(&self) -> BoxFuture<'_, DaemonStatus>;
    /// See [`Request::ReloadAllowlist`]; the answer is `Reloaded` or `Error`.
    fn reload_allowlist(&self) -> BoxFuture<'_, Response>;
    /// Keeps a helper's report of its lookups.
    fn report(&self, build: Build);
    /// The builds kept.
    fn trace(&self) -> Vec<Build>;
    /// See [`Request::Probe`].
    fn probe(&self) -> BoxFuture<'_, DaemonStatus>;
}

/// Binds the socket at `path`, owner-only. A stale socket left by a dead
/// daemon is replaced; a live one is an error.
pub(crate) async fn bind(path: &Path) -> Result<UnixListener, Error> {
    if path.exists() {
        match UnixStream::connect(path).await {
            Ok(_) => return Err(Error::AlreadyRunning(path.to_path_buf())),
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let bind_error = |source| Error::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

/// Serves connections until `shutdown` fires, then waits (at most
/// `drain`) for the ones in progress. Faults (a failed accept, another
/// user's connection) are told through `quiet`; a failed accept backs off
/// ([`crate::share::accept`]).
pub(crate) async fn serve(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    quiet: Arc<Quiet>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tasks = TaskTracker::new();
    let mut backoff = Backoff::new("helper", quiet.clone());
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("the semaphore not to close"),
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.accepted();
                stream
            }
            Err(e) => {
                tokio::select! {
                    () = backoff.failed(&e) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        // Only helpers of our own user: the socket's mode is set just
        // after it is made, and the store may be readable.
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == private::my_uid() => {}
            Ok(cred) => {
                match quiet.occurred("foreign uid", tokio::time::Instant::now()) {
                    Some(n) => tracing::warn!(
                        "refused {n} connection(s) to the daemon socket from other users \
                         since the last warning (latest: uid {})",
                        cred.uid()
                    ),
                    None => tracing::debug!("refused a connection from uid {}", cred.uid()),
                }
                continue;
            }
            Err(e) => {
                tracing::debug!("no credentials for a helper connection: {e}");
                continue;
            }
        }
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                result = handle(stream, handler.as_ref()) => {
                    if let Err(e) = result {
                        tracing::debug!("helper connection: {e}");
                    }
                }
                () = shutdown.cancelled() => {}
            }
            drop(permit);
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(drain, tasks.wait()).await;
}

async fn handle(stream: UnixStream, handler: &dyn Handler) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read)
        .take(MAX_LINE as u64)
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Get { action }) => {
            answer_or_acknowledge(&mut write, handler.get(action)).await?
        }
        Ok(Request::Status) => {
            let status = async { Response::Status(handler.status().await) };
            answer_or_acknowledge(&mut write, status).await?
        }
        Ok(Request::ReloadAllowlist) => {
            answer_or_acknowledge(&mut write, handler.reload_allowlist()).await?
        }
        Ok(Request::Report(build)) => {
            handler.report(*build);
            Response::Reported
        }
        Ok(Request::Trace) => Response::Trace {
            builds: handler.trace(),
        },
        Ok(Request::Probe) => {
            let status = async { Response::Status(handler.probe().await) };
            answer_or_acknowledge(&mut write, status).await?
        }
        Err(e) => Response::Error {
            message: format!("malformed request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&response).expect("responses to serialize");
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Waits for `answer`; if it takes longer than [`ACK_DELAY`], acknowledges
/// the request first.
async fn answer_or_acknowledge(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    answer: impl Future<Output = Response>,
) -> io::Result<Response> {
    let mut answer = std::pin::pin!(answer);
    if let Ok(response) = tokio::time::timeout(ACK_DELAY, &mut answer).await {
        return Ok(response);
    }
    write.write_all(b"\"accepted\"\n").await?;
    Ok(answer.await)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const ACK: Duration = Duration::from_secs(2);

    /// The peer ID the test daemon answers with: the action it was asked
    /// for, as an identity multihash, so that an answer shows what was
    /// asked.
    fn echo(action: &ActionId) -> PeerId {
        let mut bytes = vec![0, 32];
        bytes.extend_from_slice(action.as_bytes());
        PeerId::from_bytes(&bytes).unwrap()
    }

    struct Echo {
        gets: AtomicUsize,
        delay: Duration,
        ring: std::sync::Mutex<crate::trace::Ring>,
    }

    impl Handler for Echo {
        fn get(&self, action: ActionId) -> BoxFuture<'_, Response> {
            Box::pin(async move {
                self.gets.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(self.delay).await;
                Response::Hit {
                    peer: echo(&action),
                    size: 1,
                }
            })
        }

        fn status(&self) -> BoxFuture<'_, DaemonStatus> {
            Box::pin(async { DaemonStatus::default() })
        }

        fn reload_allowlist(&self) -> BoxFuture<'_, Response> {
            Box::pin(async {
                Response::Reloaded {
                    purged_entries: 0,
                    purged_bytes: 0,
                }
            })
        }

        fn report(&self, build: Build) {
            self.ring.lock().unwrap().add(build);
        }

        fn trace(&self) -> Vec<Build> {
            self.ring.lock().unwrap().builds()
        }

        fn probe(&self) -> BoxFuture<'_, DaemonStatus> {
            Box::pin(async { DaemonStatus::default() })
        }
    }

    async fn server(delay: Duration) -> (tempfile::TempDir, PathBuf, CancellationToken) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.sock");
        let listener = bind(&path).await.unwrap();
        let shutdown = CancellationToken::new();
        let handler = Arc::new(Echo {
            gets: AtomicUsize::new(0),
            delay,
            ring: Default::default(),
        });
        tokio::spawn(serve(
            listener,
            handler,
            Arc::default(),
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        (dir, path, shutdown)
    }

    #[tokio::test]
    async fn get_and_status_round_trip() {
        let (_dir, path, _shutdown) = server(Duration::ZERO).await;
        let action = ActionId::from_bytes([9; 32]);
        let get = Request::Get { action };
        let answer = call(&path, &get, ACK, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            answer,
            Response::Hit {
                peer: echo(&action),
                size: 1
            }
        );
        let status = call(&path, &Request::Status, ACK, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(status, Response::Status(_)));
        let permissions = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(permissions & 0o777, 0o600);
    }

    /// IDs travel typed, and the socket's JSON stays what helpers and
    /// daemons of other versions read and write: a get names its action in
    /// hex, a hit its peer as text, and a miss its reason (with the peer
    /// in cooldown where there is one).
    #[test]
    fn gets_and_their_answers_keep_their_json() {
        let action = ActionId::from_bytes([7; 32]);
        let peer = PeerId::random();
        let cases = [
            (
                serde_json::to_string(&Request::Get { action }).unwrap(),
                format!(r#"{{"op":"get","action":"{}"}}"#, action.to_hex()),
            ),
            (
                serde_json::to_string(&Response::Hit { peer, size: 5 }).unwrap(),
                format!(r#"{{"hit":{{"peer":"{peer}","size":5}}}}"#),
            ),
            (
                serde_json::to_string(&Response::Missed(warren_p2p::Miss::NotFound)).unwrap(),
                r#"{"missed":{"reason":"not_found"}}"#.to_owned(),
            ),
            (
                serde_json::to_string(&Response::Missed(warren_p2p::Miss::Cooldown { peer }))
                    .unwrap(),
                format!(r#"{{"missed":{{"reason":"cooldown","peer":"{peer}"}}}}"#),
            ),
        ];
        for (written, expected) in cases {
            assert_eq!(written, expected);
        }
        let read: Response = serde_json::from_str(&format!(
            r#"{{"missed":{{"reason":"cooldown","peer":"{peer}"}}}}"#
        ))
        .unwrap();
        assert_eq!(read, Response::Missed(warren_p2p::Miss::Cooldown { peer }));
        // An ID that is not one is a malformed line, not a panic.
        assert!(serde_json::from_str::<Response>(r#"{"hit":{"peer":"nope","size":5}}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"get","action":"zz"}"#).is_err());
    }

    #[tokio::test]
    async fn a_full_report_crosses_the_socket_and_comes_back_in_the_trace() {
        let (_dir, path, _shutdown) = server(Duration::ZERO).await;
        let recorder = crate::trace::Recorder::new(true);
        for n in 0..crate::trace::CAPACITY {
            let mut bytes = [0xab; 32];
            bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
            let peer = PeerId::random();
            recorder.note(
                ActionId::from_bytes(bytes),
                crate::trace::Hit::Peer(Some(peer)),
                Some(Duration::from_millis(3)),
            );
        }
        recorder.report(&path).await;
        let answer = call(&path, &Request::Trace, ACK, Duration::from_secs(5))
            .await
            .unwrap();
        let Response::Trace { builds } = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].lookups.len(), crate::trace::CAPACITY);
        let sent = recorder.build();
        assert_eq!((builds[0].number, builds[0].gets), (1, sent.gets));
        assert_eq!(builds[0].lookups, sent.lookups);
    }

    #[tokio::test]
    async fn absent_and_slow_daemons_are_distinguished() {
        let dir = tempfile::tempdir().unwrap();
        let missing = call(
            &dir.path().join("none.sock"),
            &Request::Status,
            ACK,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(missing.is_absent(), "{missing}");

        let (_dir, path, _shutdown) = server(Duration::from_secs(10)).await;
        let get = Request::Get {
            action: ActionId::from_bytes([1; 32]),
        };
        let slow = call(&path, &get, ACK, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(slow, Error::Timeout(_)), "{slow}");
        assert!(!slow.is_absent());
    }

    #[tokio::test]
    async fn second_daemon_on_one_socket_is_refused_and_stale_sockets_replaced() {
        let (_dir, path, shutdown) = server(Duration::ZERO).await;
        assert!(matches!(bind(&path).await, Err(Error::AlreadyRunning(_))));
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The listener is gone but the file remains: a stale socket.
        bind(&path).await.unwrap();
    }

    #[tokio::test]
    async fn malformed_requests_get_an_error() {
        let (_dir, path, _shutdown) = server(Duration::ZERO).await;
        let mut stream = UnixStream::connect(&path).await.unwrap();
        stream
            .write_all(b"{\"op\":\"get\",\"action\":\"zz\"}\n")
            .await
            .unwrap();
        let mut answer = String::new();
        BufReader::new(stream)
            .read_to_string(&mut answer)
            .await
            .unwrap();
        assert!(answer.contains("error"), "{answer}");
    }

    #[tokio::test]
    async fn a_stuck_daemon_costs_only_the_acknowledgement_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.sock");
        // Bound but never accepting: connections queue, nothing is read.
        let _listener = bind(&path).await.unwrap();
        let started = std::time::Instant::now();
        let ack = Duration::from_millis(20);
        let err = call(&path, &Request::Status, ack, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unresponsive(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    /// Runs `python3 -c <code> <args>` as uid 65534 (another user), if this
    /// process is root; `None` (after saying why) elsewhere. Under
    /// `CI=true` it must be able to.
    #[expect(clippy::print_stderr, reason = "a skipped test says why")]
    fn as_another_user(code: &str, args: &[&Path]) -> Option<std::process::Child> {
        use std::os::unix::process::CommandExt;
        if private::my_uid() != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("skipped: only root can run a process as another user");
            return None;
        }
        let child = std::process::Command::new("python3")
            .arg("-c")
            .arg(code)
            .args(args)
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 to run (the test suite installs Go with it)");
        Some(child)
    }

    /// Part 4, finding 14: the socket's mode was set only after `bind`, and
    /// anyone who reached it then was served.
    #[tokio::test]
    async fn the_daemon_serves_no_other_user() {
        let (dir, path, _shutdown) = server(Duration::ZERO).await;
        // The window between bind and chmod, held open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let client = "import socket, sys\n\
s = socket.socket(socket.AF_UNIX)\n\
s.connect(sys.argv[1])\n\
s.sendall(b'{\"op\":\"status\"}\\n')\n\
print(s.recv(4096).decode())";
        let Some(child) = as_another_user(client, &[&path]) else {
            return;
        };
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&output.stdout);
        assert!(
            !answer.contains("status"),
            "another user was served: {answer}"
        );
        // Our own helpers still are.
        let status = call(&path, &Request::Status, ACK, Duration::from_secs(5)).await;
        assert!(matches!(status, Ok(Response::Status(_))), "{status:?}");
    }

    /// Part 4, finding 14: a helper asked whatever daemon answered on the
    /// socket, another user's too.
    #[tokio::test]
    async fn helpers_ask_no_daemon_of_another_user() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).ok();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("daemon.sock");
        let impostor = "import os, socket, sys\n\
s = socket.socket(socket.AF_UNIX)\n\
s.bind(sys.argv[1])\n\
os.chmod(sys.argv[1], 0o666)\n\
s.listen(1)\n\
c, _ = s.accept()\n\
c.sendall(b'\"miss\"\\n')\n\
c.recv(4096)";
        let Some(mut child) = as_another_user(impostor, &[&path]) else {
            return;
        };
        let started = std::time::Instant::now();
        while !path.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the impostor never bound"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let answer = call(&path, &Request::Status, ACK, Duration::from_secs(5)).await;
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            matches!(answer, Err(Error::Impostor { uid: 65534, .. })),
            "{answer:?}"
        );
    }
}
