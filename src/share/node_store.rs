//! The store as the peer-to-peer node sees it ([`warren_p2p::Store`]).
//!
//! Serving opens an entry's body through [`DiskStore::get`]; a fetched body
//! goes through [`DiskStore::begin_object`] and [`ObjectWriter::finish`],
//! which compare its size and SHA-256 with what the peer announced, so
//! nothing a peer sends lands unverified. Read-ahead hints and summaries
//! come from the store's [`PutOrder`] index.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use warren_p2p::{BodySink, CommitError, Served, SummaryChunk};

use crate::ids::{ActionId, OutputId};
use crate::store::index::PutOrder;
use crate::store::{self, DiskStore, Lookup, ObjectWriter};

/// The store as the p2p node sees it.
pub(crate) struct StoreAdapter {
    store: Arc<DiskStore>,
    order: Arc<PutOrder>,
}

impl StoreAdapter {
    /// Starts indexing `store` for hints and summaries.
    pub(crate) fn new(store: Arc<DiskStore>) -> io::Result<Self> {
        let order = PutOrder::start(store.actions_dir().to_path_buf())?;
        Ok(Self { store, order })
    }
}

impl warren_p2p::Bodies for StoreAdapter {
    fn contains(&self, action: &ActionId) -> bool {
        matches!(self.store.get(action), Ok(Lookup::Hit(_)))
    }

    fn open(&self, action: &ActionId) -> io::Result<Option<Served>> {
        let entry = match self.store.get(action) {
            Ok(Lookup::Hit(entry)) => entry,
            Ok(Lookup::Miss) => return Ok(None),
            Err(e) => return Err(io::Error::other(e)),
        };
        let body = match File::open(&entry.path) {
            Ok(body) => body,
            // Trimmed between the lookup and the open: a miss.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Served {
            output: entry.output,
            size: entry.size,
            time_unix_nanos: entry
                .time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64,
            body,
        }))
    }

    fn begin(
        &self,
        action: &ActionId,
        output: &OutputId,
        size: u64,
    ) -> io::Result<Box<dyn BodySink>> {
        let writer = self
            .store
            .begin_object(*output, size)
            .map_err(io::Error::other)?;
        Ok(Box::new(Sink {
            store: self.store.clone(),
            action: *action,
            writer,
        }))
    }
}

impl warren_p2p::Hints for StoreAdapter {
    fn following(&self, action: &ActionId, limit: usize) -> Vec<ActionId> {
        self.order.following(action, limit)
    }
}

impl warren_p2p::Summaries for StoreAdapter {
    fn summary(&self, epoch: u64, since: u64, limit: usize) -> Option<SummaryChunk> {
        self.order.summary(epoch, since, limit)
    }

    fn summary_updates(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        Some(self.order.updates())
    }
}

/// A body on its way from a peer into the store.
struct Sink {
    store: Arc<DiskStore>,
    action: ActionId,
    writer: ObjectWriter,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl BodySink for Sink {
    /// The node's only check of a fetched body: [`ObjectWriter::finish`]
    /// compares size and SHA-256 with what the peer announced.
    fn commit(self: Box<Self>) -> Result<(), CommitError> {
        let verified = self.writer.finish().map_err(|error| match error {
            store::Error::Mismatch {
                actual,
                actual_size,
                ..
            } => CommitError::Mismatch {
                actual,
                actual_size,
            },
            other => CommitError::Io(io::Error::other(other)),
        })?;
        self.store
            .commit_fetched(&self.action, verified)
            .map(drop)
            .map_err(|error| CommitError::Io(io::Error::other(error)))
    }
}

#[cfg(test)]
mod tests {
    use warren_p2p::Bodies as _;

    use super::*;

    /// The sink is the node's only check of a fetched body.
    #[test]
    fn sinks_store_only_the_announced_body_and_name_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path()).unwrap());
        let adapter = StoreAdapter::new(store.clone()).unwrap();
        let body = b"the real body";
        let output = OutputId::of(body);

        let mut sink = adapter
            .begin(&ActionId::from_bytes([1; 32]), &output, body.len() as u64)
            .unwrap();
        sink.write_all(b"a fake body!!").unwrap();
        match sink.commit() {
            Err(CommitError::Mismatch {
                actual,
                actual_size,
            }) => {
                assert_eq!(actual, OutputId::of(b"a fake body!!"));
                assert_eq!(actual_size, 13);
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert_eq!(
            store.get(&ActionId::from_bytes([1; 32])).unwrap(),
            Lookup::Miss
        );

        let mut sink = adapter
            .begin(&ActionId::from_bytes([1; 32]), &output, body.len() as u64)
            .unwrap();
        sink.write_all(body).unwrap();
        sink.commit().unwrap();
        let Lookup::Hit(entry) = store.get(&ActionId::from_bytes([1; 32])).unwrap() else {
            panic!("a verified body is stored");
        };
        assert_eq!(std::fs::read(entry.path).unwrap(), body);
    }
}
