//! The node's view of a cache store: what it serves and where fetched bodies go.
//!
//! The node never touches the disk layout itself. warren implements [`Store`]
//! over its `DiskStore`, so the rules that keep the store safe (temp file,
//! verify size and SHA-256, rename) stay in one place, and the node adds its
//! own checks on top:
//!
//! - serving: the node hashes every body it sends and never lets a body
//!   that does not match its OutputID arrive whole (a small one is checked
//!   before it is sent; of a big one, hashed as it streams, the last bytes
//!   are held back until the hash is known), so a damaged local store is
//!   never spread to peers; it hands such a body back to the store
//!   ([`Bodies::damaged`]) to drop. Store trouble while serving is the
//!   store's to tell: the node logs it at debug level, to a peer it is
//!   "not found";
//! - fetching: the store's sink verifies. [`BodySink::commit`] must check
//!   size and SHA-256 against what [`Bodies::begin`] was given and report a
//!   mismatch as [`CommitError::Mismatch`]; the node then discards the body
//!   and puts the peer in cooldown. The node does not hash received bodies
//!   itself: hashing every byte twice costs as much as receiving them
//!   (docs/benchmarks.md, "One hash per side"), and the store that writes
//!   the body is the one place that can check exactly what it stores.
//!
//! All methods do blocking file I/O. The node calls [`Bodies::open`], and
//! [`Bodies::begin`] with the sink's writes and commit for a body of one
//! piece, on its async thread: they must be quick (a few small file
//! operations, as on a local disk), because a thread hand-over for each
//! costs more than the work. Bigger bodies are written and read on the
//! blocking pool.

pub use crate::ids::Hint;
use std::fs::File;
use std::io;

use libp2p::PeerId;

use crate::catalog::{Catalog, CatalogRequest};
use crate::ids::{ActionId, OutputId};
use crate::summary::SummaryChunk;

/// Everything a node needs of a store: its bodies, the order they were
/// put in, and a summary log. Implemented for any type that has all three.
pub trait Store: Bodies + Hints + Summaries + Send + Sync + 'static {}

impl<T: Bodies + Hints + Summaries + Send + Sync + 'static> Store for T {}

/// Bodies: what the node serves to peers and where fetched bodies go.
pub trait Bodies {
    /// For serving: the entry for `action` and an open file of its body, or
    /// `None` if there is none. The file must hold `size` bytes from its
    /// current position.
    fn open(&self, action: &ActionId) -> io::Result<Option<Served>>;

    /// For fetching: a sink for a body of `size` bytes that must hash
    /// (SHA-256) to `output`, to be stored under `action` once committed.
    /// The sink enforces that; see [`BodySink::commit`]. `from` is the
    /// peer that sent it: the store records it, so that the entry is not
    /// served on as if built here and can be purged when that peer is
    /// removed.
    ///
    /// Several sinks for the same action or output may be open at once (two
    /// peers racing to answer one lookup); committing identical verified
    /// bodies twice must be harmless.
    fn begin(
        &self,
        action: &ActionId,
        output: &OutputId,
        size: u64,
        from: &PeerId,
    ) -> io::Result<Box<dyn BodySink>>;

    /// For read-ahead: whether an entry for `action` is stored already (then
    /// it is not fetched ahead). Quick, like [`Bodies::open`]. The default
    /// says no, so hinted entries are always fetched.
    fn contains(&self, action: &ActionId) -> bool {
        let _ = action;
        false
    }

    /// For serving: the body of `action`'s entry, opened by
    /// [`Bodies::open`] as `body`, does not hash to its OutputID `output`
    /// (changed on disk, its size kept). The node did not send it whole: a
    /// small body was answered "not found", a big one cut off before its
    /// last piece. The store should drop that very file (`body` tells it
    /// from a good one committed in its place since) and the entry, so that
    /// neither its own users nor peers are handed it again, and tell its
    /// user: the node logs it at debug level only, since only the store
    /// knows how often to say it. Called on the connection's task or a
    /// blocking thread; quick, like [`Bodies::open`]. The default does
    /// nothing, and the body is refused again at every request.
    fn damaged(&self, action: &ActionId, output: &OutputId, body: &File) {
        let _ = (action, output, body);
    }

    /// For agreement ([`crate::NodeConfig::with_agreement`]): the OutputID
    /// an earlier build on this machine recorded for `action`, if the
    /// store remembers one (even with its body gone). Quick, like
    /// [`Bodies::open`]. The default remembers none.
    fn built_here(&self, action: &ActionId) -> Option<OutputId> {
        let _ = action;
        None
    }
}

/// Read-ahead hints for peers: the order entries were put in.
pub trait Hints {
    /// Up to `limit` actions stored right after `action`, in the order they
    /// were stored, and from the same burst of work (a build): what a build
    /// that asked for `action` is likely to ask for next, each with its size
    /// if it is a linked executable. Quick, like [`Bodies::open`]. The
    /// default knows no order and gives no hints.
    fn following(&self, action: &ActionId, limit: usize) -> Vec<Hint> {
        let _ = (action, limit);
        Vec::new()
    }

    /// For replicating peers ([`crate::catalog`]): up to `request.limit`
    /// entries built on this machine and served, put at most
    /// `request.max_age_secs` ago, in the store's order from
    /// `request.since` on (with [`Catalog::next`] saying where the next
    /// request continues), or, without `since`, by put time after
    /// `request.after`. The node caps `limit` at
    /// [`crate::catalog::MAX_ENTRIES`]. `None` if the store keeps no order
    /// (now). Quick, like [`Bodies::open`]. The default keeps none.
    fn catalog(&self, request: &CatalogRequest) -> Option<Catalog> {
        let _ = request;
        None
    }
}

/// The store's summary log, for peers' summaries of it ([`crate::summary`];
/// [`crate::summary::Log`] keeps one).
pub trait Summaries {
    /// The log from entry `since` on, or from its start if `epoch` is not
    /// the log's, at most `limit` prefixes; `None` if the store keeps no
    /// summary (now), and peers then ask it about every lookup. An entry
    /// must be in the log by the time the store serves it in answer to a
    /// lookup, or soon after: until then peers do not ask for it. Quick,
    /// like [`Bodies::open`]. The default keeps none.
    fn summary(&self, epoch: u64, since: u64, limit: usize) -> Option<SummaryChunk> {
        let _ = (epoch, since, limit);
        None
    }

    /// Marked changed whenever the summary log grows, so that peers'
    /// summary requests held for news are answered at once. The default,
    /// `None`, makes the node look every 100 ms while it holds any.
    fn summary_updates(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        None
    }
}

/// An entry being served: its metadata and its open body.
#[derive(Debug)]
pub struct Served {
    /// SHA-256 of the body (Go's OutputID).
    pub output: OutputId,
    pub size: u64,
    /// When the entry was put, in nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// Whether it was built on this machine (not fetched from a peer); a
    /// requester with agreement on counts only such answers.
    pub built_here: bool,
    pub body: File,
}

/// Receives one body. Dropping a sink without [`commit`](BodySink::commit)
/// must discard what was written: the node drops sinks whose transfer failed
/// or was cancelled.
pub trait BodySink: io::Write + Send {
    /// Verifies the body and, only if it matches, stores it. It matches if
    /// exactly the `size` given to [`Bodies::begin`] was written and its
    /// SHA-256 is the `output` given there. The node relies on this check:
    /// it is the only one a fetched body gets. On an `Err` nothing was
    /// stored.
    fn commit(self: Box<Self>) -> Result<(), CommitError>;
}

/// Why [`BodySink::commit`] stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The body is not the one announced: `actual` is the SHA-256 of the
    /// `actual_size` bytes written. The sender is put in cooldown.
    #[error("body of {actual_size} bytes hashes to {}", .actual)]
    Mismatch { actual: OutputId, actual_size: u64 },
    /// The body is the one announced, but the store's own checks found it
    /// wrong for its action (say, an archive built by another action).
    /// The sender is put in cooldown.
    #[error("body refused: {0}")]
    Refused(String),
    /// Agreement is on and no second source confirmed the mapping
    /// (`crate::fetch::agreement`): nothing stored, nobody to blame.
    #[error("no second source agrees on its OutputID")]
    Unconfirmed,
    /// The body could not be stored (disk full, permissions, ...). Not the
    /// sender's fault.
    #[error(transparent)]
    Io(#[from] io::Error),
}
