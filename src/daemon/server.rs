//! The daemon's server for helpers: it answers the requests of
//! [`crate::ipc`] on the helper socket.
//!
//! It follows mini-redis: a listener loop bounded by a semaphore, a task
//! per connection, and shutdown through a [`CancellationToken`]. It runs on
//! a thread of its own ([`serve_helpers`]), so helpers are acknowledged
//! however busy the node is.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::daemon::accept::Backoff;
use crate::daemon::quiet::Quiet;
use crate::fsutil::private;
use crate::ids::ActionId;
use crate::ipc::status::DaemonStatus;
use crate::ipc::trace::Build;
use crate::ipc::{ACK_DELAY, Request, Response};

/// Connections served at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 512;
/// Longest request line accepted: a helper's report of its lookups
/// ([`crate::ipc::trace`]) is the longest, ~120 bytes per lookup.
const MAX_LINE: usize = 4 << 20;
/// How long lookups in flight may finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(2);

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("a daemon is already serving {}", .0.display())]
    AlreadyRunning(PathBuf),
    #[error("listening on {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    /// See [`Request::Built`]: queued, never waited for.
    fn built(&self, _actions: Vec<ActionId>) {}
    /// See [`Request::BucketStatus`] and [`Request::BucketSync`] (`sync`:
    /// how long to wait for pending uploads first).
    fn bucket(&self, _sync: Option<std::time::Duration>) -> BoxFuture<'_, Response> {
        Box::pin(std::future::ready(Response::Bucket(None)))
    }
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
/// ([`crate::daemon::accept`]).
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
        let Some((stream, _)) = backoff.next(&shutdown, || listener.accept()).await else {
            break;
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
        Ok(Request::Built { actions }) => {
            handler.built(actions);
            Response::Reported
        }
        Ok(Request::BucketStatus) => {
            answer_or_acknowledge(&mut write, handler.bucket(None)).await?
        }
        Ok(Request::BucketSync { timeout_ms }) => {
            let wait = std::time::Duration::from_millis(timeout_ms);
            answer_or_acknowledge(&mut write, handler.bucket(Some(wait))).await?
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

/// Answers helpers on `socket` from a thread of its own, until `shutdown`.
///
/// A helper counts a daemon that does not acknowledge a lookup within
/// `ACK_TIMEOUT` (`helper::daemon_tier`) as late, and one late three times
/// in a row as stuck. On the node's thread, a busy stretch of fetching (a build
/// reading ahead, more so in a debug build) delayed acknowledgements past
/// that and made helpers stop asking for a second, which cost builds their
/// peer hits. On its own thread the socket answers at once, however busy
/// the node is; a lookup crosses to the node over a channel.
pub(super) async fn serve_helpers(
    socket: PathBuf,
    handler: Arc<dyn Handler>,
    quiet: Arc<Quiet>,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (bound, bind_result) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("warren-helpers".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = bound.send(Err(anyhow::Error::new(error)));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match bind(&socket).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        let _ = bound.send(Err(error.into()));
                        return;
                    }
                };
                let _ = bound.send(Ok(()));
                serve(listener, handler, quiet, shutdown, DRAIN).await;
            });
        })
        .context("starting the helper socket's thread")?;
    bind_result
        .await
        .context("the helper socket's thread ended at start")??;
    Ok(thread)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use warren_p2p::PeerId;

    use super::*;
    use crate::ipc::tests::as_another_user;
    use crate::ipc::{self, call};

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
        ring: std::sync::Mutex<crate::daemon::trace::Ring>,
    }

    impl Handler for Echo {
        fn get(&self, action: ActionId) -> BoxFuture<'_, Response> {
            Box::pin(async move {
                self.gets.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(self.delay).await;
                Response::Hit {
                    peer: echo(&action),
                    size: 1,
                    bucket: false,
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
                size: 1,
                bucket: false,
            }
        );
        let status = call(&path, &Request::Status, ACK, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(status, Response::Status(_)));
        let permissions = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(permissions & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_full_report_crosses_the_socket_and_comes_back_in_the_trace() {
        let (_dir, path, _shutdown) = server(Duration::ZERO).await;
        let recorder = crate::helper::trace::Recorder::new(true);
        for n in 0..crate::ipc::trace::CAPACITY {
            let mut bytes = [0xab; 32];
            bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
            let peer = PeerId::random();
            recorder.note(
                ActionId::from_bytes(bytes),
                crate::ipc::trace::Hit::Peer(Some(peer)),
                Some(Duration::from_millis(3)),
            );
        }
        // What crosses is the point here, not how fast: a loaded machine
        // may take longer than a helper waits.
        recorder.report_within(&path, Duration::from_secs(10)).await;
        let answer = call(&path, &Request::Trace, ACK, Duration::from_secs(5))
            .await
            .unwrap();
        let Response::Trace { builds } = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].lookups.len(), crate::ipc::trace::CAPACITY);
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
        assert!(matches!(slow, ipc::Error::Timeout(_)), "{slow}");
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
        assert!(matches!(err, ipc::Error::Unresponsive(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    /// Another user reaches the socket in the moment between `bind` and
    /// its chmod (held open here): it is not served (SECURITY.md, "Files
    /// and permissions").
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
}
