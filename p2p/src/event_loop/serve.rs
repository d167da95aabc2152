//! Serving: answering peers' requests from the local store.
//!
//! The event loop checks the allowlist and the serving cap, looks the
//! entry up and, for a small body, reads and hashes it, all right here:
//! from the page cache that is a few tens of microseconds, while handing it
//! to the blocking pool and back cost a quarter of a millisecond per
//! request on a busy 2-core machine, most of a small fetch
//! (docs/benchmarks.md). A bigger body goes to the codec as an open file,
//! which [`crate::body::send`] reads and hashes on a blocking thread as it
//! streams it.
//!
//! A body that does not hash to its OutputID is never served whole, so a
//! damaged local store does not spread: a small one is answered "not
//! found", a big one is cut off before its last piece. Any other trouble is
//! "not found" too.

use std::io::Read;

use libp2p::PeerId;
use libp2p::request_response::{InboundRequestId, ResponseChannel};
use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;

use super::EventLoop;
use crate::body::{Outgoing, SMALL_BODY};
use crate::codec::{Reply, Response};
use crate::store::Store;
use crate::wire::{FoundHeader, MAX_HINTS, RequestHeader};

pub(super) struct Serving {
    pub(super) peer: PeerId,
    pub(super) action: [u8; 32],
    /// Body bytes being sent, if the body is included.
    pub(super) bytes: Option<u64>,
    pub(super) _permit: OwnedSemaphorePermit,
}

impl EventLoop {
    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        header: RequestHeader,
        channel: ResponseChannel<Response>,
    ) {
        if !self.allowlist.contains(&peer) {
            // Dropping the channel answers nothing; the stream is reset.
            tracing::debug!(%peer, "request from a peer not on the allowlist; ignored");
            return;
        }
        self.peer(peer).seen();
        let Ok(permit) = self.serve_permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many requests being served; answering not found");
            let _ = self
                .swarm
                .behaviour_mut()
                .fetch
                .send_response(channel, Response::Reply(Reply::not_found(header.action)));
            return;
        };
        let reply = prepare_reply(&*self.store, &header);
        let bytes = reply
            .found
            .as_ref()
            .filter(|found| found.body_included)
            .map(|found| found.size);
        let sent = self
            .swarm
            .behaviour_mut()
            .fetch
            .send_response(channel, Response::Reply(reply));
        if sent.is_ok() {
            self.serving.insert(
                request_id,
                Serving {
                    peer,
                    action: header.action,
                    bytes,
                    _permit: permit,
                },
            );
        }
    }
}

/// Decides what to answer a request with: a lookup and, for a small body,
/// one read. Any trouble is "not found": a peer asking is never told more
/// than that.
fn prepare_reply(store: &dyn Store, header: &RequestHeader) -> Reply {
    let action = header.action;
    let not_found = || Reply::not_found(action);
    let served = match store.open(&action) {
        Ok(Some(served)) => served,
        Ok(None) => return not_found(),
        Err(error) => {
            tracing::warn!(
                action = hex::encode(action),
                "cannot open an entry to serve it: {error}"
            );
            return not_found();
        }
    };
    let include = served.size <= header.max_inline;
    let body = if !include {
        None
    } else if served.size <= SMALL_BODY {
        match read_verified(served.body, served.size, &served.output) {
            Ok(bytes) => Some(Outgoing::Bytes(bytes)),
            Err(error) => {
                tracing::warn!(action = hex::encode(action), "not serving a body: {error}");
                return not_found();
            }
        }
    } else {
        Some(Outgoing::File(served.body))
    };
    let next = match header.hints.min(MAX_HINTS) {
        0 => Vec::new(),
        hints => store.following(&action, hints as usize),
    };
    Reply {
        action,
        found: Some(FoundHeader {
            output: served.output,
            size: served.size,
            time_unix_nanos: served.time_unix_nanos,
            body_included: include,
        }),
        body,
        next,
    }
}

/// Exactly `size` bytes of `file`, which must hash to `output`.
fn read_verified(
    mut file: std::fs::File,
    size: u64,
    output: &[u8; 32],
) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0; size as usize];
    file.read_exact(&mut bytes)
        .map_err(|error| std::io::Error::new(error.kind(), format!("cannot read it: {error}")))?;
    if <[u8; 32]>::from(Sha256::digest(&bytes)) != *output {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it does not match its OutputID (the local store is damaged; `warren verify` repairs it)",
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};
    use std::sync::Mutex;

    use super::*;
    use crate::store::{BodySink, Served};
    use crate::wire::WIRE_VERSION;

    /// Serves one file, claiming whatever output the test says.
    struct OneFile {
        path: std::path::PathBuf,
        output: [u8; 32],
        size: u64,
        opened: Mutex<u32>,
    }

    impl Store for OneFile {
        fn open(&self, _: &[u8; 32]) -> io::Result<Option<Served>> {
            *self.opened.lock().unwrap() += 1;
            Ok(Some(Served {
                output: self.output,
                size: self.size,
                time_unix_nanos: 1,
                body: std::fs::File::open(&self.path)?,
            }))
        }
        fn begin(&self, _: &[u8; 32], _: &[u8; 32], _: u64) -> io::Result<Box<dyn BodySink>> {
            Err(io::Error::other("read-only"))
        }
    }

    fn store_with(body: &[u8], claimed: [u8; 32]) -> (tempfile::TempDir, OneFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(body)
            .unwrap();
        let store = OneFile {
            path,
            output: claimed,
            size: body.len() as u64,
            opened: Mutex::new(0),
        };
        (dir, store)
    }

    fn header(max_inline: u64) -> RequestHeader {
        RequestHeader {
            version: WIRE_VERSION,
            action: [1; 32],
            max_inline,
            hints: 0,
        }
    }

    #[test]
    fn small_bodies_are_read_and_verified_before_answering() {
        let body = vec![9; 1000];
        let (_dir, store) = store_with(&body, Sha256::digest(&body).into());
        let reply = prepare_reply(&store, &header(u64::MAX));
        assert!(reply.found.unwrap().body_included);
        assert!(matches!(reply.body, Some(Outgoing::Bytes(bytes)) if bytes == body));
    }

    #[test]
    fn bigger_bodies_are_handed_over_open_from_their_start() {
        let body = vec![9; SMALL_BODY as usize + 1];
        let (_dir, store) = store_with(&body, Sha256::digest(&body).into());
        let reply = prepare_reply(&store, &header(u64::MAX));
        assert!(reply.found.unwrap().body_included);
        let Some(Outgoing::File(mut file)) = reply.body else {
            panic!("expected an open file");
        };
        let mut served = Vec::new();
        file.read_to_end(&mut served).unwrap();
        assert_eq!(served, body);
    }

    #[test]
    fn corrupt_small_bodies_are_never_served() {
        let (_dir, store) = store_with(b"corrupted", Sha256::digest(b"original").into());
        let reply = prepare_reply(&store, &header(u64::MAX));
        assert!(reply.found.is_none() && reply.body.is_none());
    }

    #[test]
    fn big_bodies_are_announced_without_reading_them() {
        let (_dir, store) = store_with(b"corrupted but not read", [0; 32]);
        let reply = prepare_reply(&store, &header(4));
        assert!(!reply.found.unwrap().body_included);
        assert!(reply.body.is_none());
    }

    #[test]
    fn short_files_are_not_served() {
        let (_dir, mut store) = store_with(b"short", Sha256::digest(b"short").into());
        store.size = 50;
        assert!(prepare_reply(&store, &header(u64::MAX)).found.is_none());
    }
}
