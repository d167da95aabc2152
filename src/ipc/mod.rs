//! The contract between helpers and the daemon: what goes over the local
//! socket, and the one way to ask it ([`call`]). Both processes compile
//! against it: helpers and `warren` subcommands ask, the daemon's server
//! (`daemon::server`) answers.
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
//! - [`status`]: the daemon's typed answer to `status`;
//! - [`trace`]: what each lookup of a build came to, as a helper reports
//!   it and `warren trace` reads it back.

pub(crate) mod status;
pub(crate) mod trace;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use warren_p2p::PeerId;

use crate::fsutil::private;
use crate::ids::ActionId;

use self::status::DaemonStatus;
use self::trace::Build;

/// Longest answer line accepted: the trace of every build held.
const MAX_ANSWER: u64 = 16 << 20;
/// A request not answered within this long is acknowledged first (by the
/// daemon's server). Well under any helper's acknowledgement timeout.
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
    /// What a helper's `go` command put, in put order (ActionIDs as hex),
    /// for the team bucket's uploads (`[bucket] write = true`).
    Built { actions: Vec<ActionId> },
    /// The team bucket's status (`warren bucket status`).
    BucketStatus,
    /// Wait up to `timeout_ms` for every pending upload, then answer with
    /// the bucket's status (`warren bucket sync`).
    BucketSync { timeout_ms: u64 },
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
        /// From the team bucket, by a manifest `peer` signed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        bucket: bool,
    },
    /// A miss, and why, as the node decided it: `{"reason": …}`, with the
    /// `peer` in cooldown where there is one.
    Missed(warren_p2p::Miss),
    /// The team bucket's index named the entry, and the bucket did not
    /// deliver it.
    BucketMissed(BucketMiss),
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
    /// The team bucket's status; `None` if the daemon has no bucket.
    Bucket(Option<Box<status::BucketStatus>>),
    Error {
        message: String,
    },
}

/// Why the team bucket did not deliver an entry its index named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BucketMiss {
    /// It failed this lookup (down, slow, refusing, a bad body): in
    /// cooldown from now on.
    Failed,
    /// It failed recently and is left out of lookups for a while.
    Cooldown,
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

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const ACK: Duration = Duration::from_secs(2);

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
                serde_json::to_string(&Response::Hit {
                    peer,
                    size: 5,
                    bucket: false,
                })
                .unwrap(),
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

    /// Runs `python3 -c <code> <args>` as uid 65534 (another user), if this
    /// process is root; `None` (after saying why) elsewhere. Under
    /// `CI=true` it must be able to.
    #[expect(clippy::print_stderr, reason = "a skipped test says why")]
    pub(crate) fn as_another_user(code: &str, args: &[&Path]) -> Option<std::process::Child> {
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

    /// Another user's process binds the socket where our daemon's should
    /// be, and answers: a helper does not ask it (SECURITY.md, "Files and
    /// permissions").
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
