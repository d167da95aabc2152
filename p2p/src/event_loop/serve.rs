//! Serving: answering peers' requests from the local store.
//!
//! The event loop checks the allowlist, then a task opens and hashes the
//! body off the loop (`spawn_blocking`) and hands the reply back to be sent.
//! A body that does not hash to its OutputID is never served, so a damaged
//! local store does not spread; any trouble is answered "not found".

use std::io::{Read, Seek};

use libp2p::PeerId;
use libp2p::request_response::{InboundRequestId, ResponseChannel};
use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;

use super::EventLoop;
use crate::codec::{Reply, Response};
use crate::store::Store;
use crate::wire::{CHUNK_SIZE, FoundHeader, RequestHeader};

pub(super) struct ReadyReply {
    pub(super) peer: PeerId,
    pub(super) request_id: InboundRequestId,
    pub(super) action: [u8; 32],
    pub(super) channel: ResponseChannel<Response>,
    pub(super) reply: Reply,
    pub(super) permit: OwnedSemaphorePermit,
}

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
                .send_response(channel, Response::Reply(Reply::not_found()));
            return;
        };
        let store = self.store.clone();
        let ready = self.ready_sender.clone();
        tokio::spawn(async move {
            let action = header.action;
            let reply = tokio::task::spawn_blocking(move || prepare_reply(&*store, &header))
                .await
                .unwrap_or_else(|_| Reply::not_found());
            let ready_reply = ReadyReply {
                peer,
                request_id,
                action,
                channel,
                reply,
                permit,
            };
            // Fails only if the event loop has stopped.
            let _ = ready.send(ready_reply).await;
        });
    }

    pub(super) fn on_reply_ready(&mut self, ready: ReadyReply) {
        let ReadyReply {
            peer,
            request_id,
            action,
            channel,
            reply,
            permit,
        } = ready;
        if !self.allowlist.contains(&peer) {
            tracing::debug!(%peer, "removed from the allowlist while its answer was prepared");
            return;
        }
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
                    action,
                    bytes,
                    _permit: permit,
                },
            );
        }
    }
}

/// Decides what to answer a request with; blocking (file I/O). Any trouble
/// is "not found": a peer asking is never told more than that.
fn prepare_reply(store: &dyn Store, header: &RequestHeader) -> Reply {
    let action = hex::encode(header.action);
    let served = match store.open(&header.action) {
        Ok(Some(served)) => served,
        Ok(None) => return Reply::not_found(),
        Err(error) => {
            tracing::warn!(action, "cannot open an entry to serve it: {error}");
            return Reply::not_found();
        }
    };
    let include = served.size <= header.max_inline;
    let mut body = served.body;
    if include {
        match hash_prefix(&mut body, served.size) {
            Ok(actual) if actual == served.output => {}
            Ok(_) => {
                tracing::warn!(
                    action,
                    "not serving a body that does not match its OutputID (the local store is damaged; `warren verify` repairs it)"
                );
                return Reply::not_found();
            }
            Err(error) => {
                tracing::warn!(action, "cannot read a body to serve it: {error}");
                return Reply::not_found();
            }
        }
        if let Err(error) = body.rewind() {
            tracing::warn!(action, "cannot rewind a body to serve it: {error}");
            return Reply::not_found();
        }
    }
    Reply {
        found: Some(FoundHeader {
            output: served.output,
            size: served.size,
            time_unix_nanos: served.time_unix_nanos,
            body_included: include,
        }),
        body: include.then_some(body),
    }
}

/// SHA-256 of exactly `size` bytes of `file`; a shorter file is an error.
fn hash_prefix(file: &mut std::fs::File, size: u64) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; CHUNK_SIZE];
    let mut remaining = size;
    while remaining > 0 {
        let want = remaining.min(CHUNK_SIZE as u64) as usize;
        file.read_exact(&mut buffer[..want])?;
        hasher.update(&buffer[..want]);
        remaining -= want as u64;
    }
    Ok(hasher.finalize().into())
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
        }
    }

    #[test]
    fn verified_bodies_are_served_from_the_start() {
        let body = vec![9; 100_000];
        let (_dir, store) = store_with(&body, Sha256::digest(&body).into());
        let reply = prepare_reply(&store, &header(u64::MAX));
        let found = reply.found.unwrap();
        assert!(found.body_included);
        let mut served = Vec::new();
        reply.body.unwrap().read_to_end(&mut served).unwrap();
        assert_eq!(served, body);
    }

    #[test]
    fn corrupt_bodies_are_never_served() {
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
