//! The node's view of a cache store: what it serves and where fetched bodies go.
//!
//! The node never touches the disk layout itself. warren implements [`Store`]
//! over its `DiskStore`, so the rules that keep the store safe (temp file,
//! verify size and SHA-256, rename) stay in one place, and the node adds its
//! own checks on top:
//!
//! - serving: the node hashes a body before sending it and refuses to serve
//!   one that does not match its OutputID, so a damaged local store is never
//!   spread to peers;
//! - fetching: the node hashes what it receives as well, and calls
//!   [`BodySink::commit`] only if size and hash match; the store verifies
//!   again on commit (defence in depth).
//!
//! All methods do blocking file I/O; the node calls them from
//! `spawn_blocking`, never on the event loop.

use std::fs::File;
use std::io;

/// What the node serves to peers and where fetched bodies go.
pub trait Store: Send + Sync + 'static {
    /// For serving: the entry for `action` and an open file of its body, or
    /// `None` if there is none. The file must hold `size` bytes from its
    /// current position.
    fn open(&self, action: &[u8; 32]) -> io::Result<Option<Served>>;

    /// For fetching: a sink for a body of `size` bytes that must hash
    /// (SHA-256) to `output`, to be stored under `action` once committed.
    ///
    /// Several sinks for the same action or output may be open at once (two
    /// peers racing to answer one lookup); committing identical verified
    /// bodies twice must be harmless.
    fn begin(
        &self,
        action: &[u8; 32],
        output: &[u8; 32],
        size: u64,
    ) -> io::Result<Box<dyn BodySink>>;
}

/// An entry being served: its metadata and its open body.
#[derive(Debug)]
pub struct Served {
    /// SHA-256 of the body (Go's OutputID).
    pub output: [u8; 32],
    pub size: u64,
    /// When the entry was put, in nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    pub body: File,
}

/// Receives one body. Dropping a sink without [`commit`](BodySink::commit)
/// must discard what was written: the node drops sinks whose transfer failed,
/// was cancelled or did not verify.
pub trait BodySink: io::Write + Send {
    /// Verifies and stores the body. An `Err` means it did not verify or
    /// could not be stored, and then nothing was stored.
    fn commit(self: Box<Self>) -> io::Result<()>;
}
