//! What a server answers for one action: the entry it holds, and a small
//! body read and verified before anything is sent.
//!
//! The codec calls [`prepare`] on the connection's task for each action of
//! a request, in turn, right before writing its answer: a lookup and, for a
//! small body, one read and a hash. From the page cache that is cheaper
//! than handing it to the blocking pool and back, which on a busy machine
//! is most of a small fetch (docs/benchmarks.md, "The daemon on one
//! thread, small bodies on it"). A bigger body goes to the stream as an
//! open file, which [`crate::serve::reply::send_file`] reads and hashes on a blocking
//! thread as it streams it.
//!
//! A body that does not hash to its OutputID is never served whole, so a
//! damaged local store does not spread: a small one is answered "not
//! found", a big one is cut off before its last piece, and either goes
//! back to the store to be dropped ([`crate::store::Bodies::damaged`]).
//! Any other trouble is "not found" too: a peer asking is never told more
//! than that.

use std::fs::File;
use std::io::Read;

use crate::ids::{ActionId, OutputId};
use crate::protocol::piece::{Piece, SMALL_BODY};
use crate::protocol::wire::{Encoding, FoundHeader};
use crate::store::Store;

/// A body a server is about to send.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Read whole and already verified.
    Bytes(Piece),
    /// An open file, to be verified as it is sent.
    File(File),
}

/// The answer for one action: `body` is `Some` exactly when `found` says
/// the body is included.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) found: Option<FoundHeader>,
    pub(crate) body: Option<Outgoing>,
}

impl Prepared {
    pub(crate) fn not_found() -> Self {
        Self {
            found: None,
            body: None,
        }
    }
}

/// Looks `action` up and, if its body is at most `max_inline` bytes and
/// small, reads and verifies it. A small body that does not verify is
/// handed back to the store ([`crate::store::Bodies::damaged`]).
pub(crate) fn prepare(store: &dyn Store, action: &ActionId, max_inline: u64) -> Prepared {
    let mut served = match store.open(action) {
        Ok(Some(served)) => served,
        Ok(None) => return Prepared::not_found(),
        Err(error) => {
            // The store tells its user; to the peer it is "not found".
            tracing::debug!(
                action = action.to_hex(),
                "cannot open an entry to serve it: {error}"
            );
            return Prepared::not_found();
        }
    };
    let include = served.size <= max_inline;
    let body = if !include {
        None
    } else if served.size <= SMALL_BODY {
        match read_verified(&mut served.body, served.size, &served.output) {
            Ok(bytes) => Some(Outgoing::Bytes(bytes)),
            Err(error) => {
                tracing::debug!(action = action.to_hex(), "not serving a body: {error}");
                if let Unservable::Damaged = error {
                    store.damaged(action, &served.output, &served.body);
                }
                return Prepared::not_found();
            }
        }
    } else {
        Some(Outgoing::File(served.body))
    };
    Prepared {
        found: Some(FoundHeader {
            output: served.output,
            size: served.size,
            time_unix_nanos: served.time_unix_nanos,
            body_included: include,
            // The codec says how it sends the body.
            encoding: Encoding::Raw,
            built_here: served.built_here,
        }),
        body,
    }
}

/// Why a small body is not served.
#[derive(Debug, thiserror::Error)]
enum Unservable {
    #[error("cannot read it: {0}")]
    Unreadable(#[source] std::io::Error),
    #[error("it does not match its OutputID (the local store is damaged)")]
    Damaged,
}

/// Exactly `size` (at most [`SMALL_BODY`]) bytes of `file`, which must
/// hash to `output`.
fn read_verified(file: &mut File, size: u64, output: &OutputId) -> Result<Piece, Unservable> {
    let mut bytes = Piece::new(size as usize);
    file.read_exact(&mut bytes)
        .map_err(Unservable::Unreadable)?;
    if OutputId::of(&bytes) != *output {
        return Err(Unservable::Damaged);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};
    use std::os::unix::fs::MetadataExt as _;
    use std::sync::Mutex;

    use super::*;
    use crate::store::{Bodies, BodySink, Hints, Served, Summaries};

    /// Serves one file, claiming whatever output the test says.
    struct OneFile {
        path: std::path::PathBuf,
        output: OutputId,
        size: u64,
        opened: Mutex<u32>,
        /// What was handed back as damaged.
        damaged: Mutex<Vec<(ActionId, OutputId)>>,
    }

    impl Bodies for OneFile {
        fn open(&self, _: &ActionId) -> io::Result<Option<Served>> {
            *self.opened.lock().unwrap() += 1;
            Ok(Some(Served {
                output: self.output,
                size: self.size,
                time_unix_nanos: 1,
                built_here: true,
                body: std::fs::File::open(&self.path)?,
            }))
        }

        fn begin(
            &self,
            _: &ActionId,
            _: &OutputId,
            _: u64,
            _: &libp2p::PeerId,
        ) -> io::Result<Box<dyn BodySink>> {
            Err(io::Error::other("read-only"))
        }

        fn damaged(&self, action: &ActionId, output: &OutputId, body: &std::fs::File) {
            // The very file that was opened.
            let opened = std::fs::metadata(&self.path).unwrap();
            let handed = body.metadata().unwrap();
            assert_eq!(opened.ino(), handed.ino());
            self.damaged.lock().unwrap().push((*action, *output));
        }
    }

    impl Hints for OneFile {}

    impl Summaries for OneFile {}

    fn store_with(body: &[u8], claimed: OutputId) -> (tempfile::TempDir, OneFile) {
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
            damaged: Mutex::default(),
        };
        (dir, store)
    }

    #[test]
    fn small_bodies_are_read_and_verified_before_answering() {
        let body = vec![9; 1000];
        let (_dir, store) = store_with(&body, OutputId::of(&body));
        let prepared = prepare(&store, &ActionId::from_bytes([1; 32]), u64::MAX);
        assert!(prepared.found.unwrap().body_included);
        assert!(matches!(prepared.body, Some(Outgoing::Bytes(bytes)) if *bytes == body[..]));
    }

    #[test]
    fn bigger_bodies_are_handed_over_open_from_their_start() {
        let body = vec![9; SMALL_BODY as usize + 1];
        let (_dir, store) = store_with(&body, OutputId::of(&body));
        let prepared = prepare(&store, &ActionId::from_bytes([1; 32]), u64::MAX);
        assert!(prepared.found.unwrap().body_included);
        let Some(Outgoing::File(mut file)) = prepared.body else {
            panic!("expected an open file");
        };
        let mut served = Vec::new();
        file.read_to_end(&mut served).unwrap();
        assert_eq!(served, body);
    }

    #[test]
    fn corrupt_small_bodies_are_never_served_and_go_back_to_the_store() {
        let (_dir, store) = store_with(b"corrupted", OutputId::of(b"original"));
        let action = ActionId::from_bytes([1; 32]);
        let prepared = prepare(&store, &action, u64::MAX);
        assert!(prepared.found.is_none() && prepared.body.is_none());
        assert_eq!(
            *store.damaged.lock().unwrap(),
            [(action, OutputId::of(b"original"))]
        );
    }

    #[test]
    fn big_bodies_are_announced_without_reading_them() {
        let (_dir, store) = store_with(b"corrupted but not read", OutputId::from_bytes([0; 32]));
        let prepared = prepare(&store, &ActionId::from_bytes([1; 32]), 4);
        assert!(!prepared.found.unwrap().body_included);
        assert!(prepared.body.is_none());
    }

    #[test]
    fn short_files_are_not_served() {
        let (_dir, mut store) = store_with(b"short", OutputId::of(b"short"));
        store.size = 50;
        assert!(
            prepare(&store, &ActionId::from_bytes([1; 32]), u64::MAX)
                .found
                .is_none()
        );
        // Short is not damaged: the store's own read check drops it.
        assert!(store.damaged.lock().unwrap().is_empty());
    }
}
