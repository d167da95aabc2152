//! Entries by where they came from: counted for `warren stats` and
//! `warren peers`, purged when their peer is no longer pulled from.
//!
//! Removing a peer from the allowlist must stop its entries from reaching
//! `go` at once, including those its read-ahead placed before any build
//! asked for them. Purging (rather than quarantining) keeps every read
//! path as it is: a purged entry is a miss like any other, and its object,
//! unreferenced unless another entry shares it, goes with the next trim.
//! A purge removes the entries of every peer not pulled from, whoever
//! removed it and when: the daemon purges at start and on each change of
//! the allowlist, `warren peers` when it changes it. (Helpers also check
//! an entry's source on each hit: see `helper::trusted::TrustedSources`.)

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use libp2p_identity::PeerId;

use super::entry::{MAX_ENTRY_LEN, Source, parse_entry};
use super::trim::walk_files;
use super::{DiskStore, Error, remove_seen};

/// Entries held from one source, and the bytes of their bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct SourceUsage {
    pub entries: u64,
    pub bytes: u64,
}

/// What a purge removed.
pub(crate) type Purged = SourceUsage;

impl DiskStore {
    /// Entries held per source. Malformed entries are left for reads to
    /// repair and not counted.
    pub(crate) fn sources(&self) -> Result<BTreeMap<Source, SourceUsage>, Error> {
        let mut sources: BTreeMap<Source, SourceUsage> = BTreeMap::new();
        self.each_entry(&mut |_, _, source, size| {
            let usage = sources.entry(source).or_default();
            usage.entries += 1;
            usage.bytes += size;
        })?;
        Ok(sources)
    }

    /// Removes every entry fetched from a peer that is not in `pulled`
    /// (the peers still pulled from): removed from the allowlist, made
    /// serve-only, or never there. Entries built here, or of unknown
    /// source, stay; so does an entry that `go` put in a purged one's
    /// place meanwhile.
    pub(crate) fn purge_except(&self, pulled: &HashSet<PeerId>) -> Result<Purged, Error> {
        let mut purged = Purged::default();
        self.each_entry(&mut |path, seen, source, size| {
            if source.peer().is_some_and(|peer| !pulled.contains(peer)) && remove_seen(path, seen) {
                purged.entries += 1;
                purged.bytes += size;
            }
        })?;
        if purged.entries > 0 {
            tracing::info!(
                "purged {} entries ({} bytes) from peers no longer pulled from",
                purged.entries,
                purged.bytes
            );
        }
        Ok(purged)
    }

    /// Calls `visit` with each well-formed entry's action and the first
    /// `head` bytes of its body (entries whose body is gone are skipped).
    pub(crate) fn each_entry_head(
        &self,
        head: usize,
        visit: &mut dyn FnMut(&crate::ids::ActionId, &[u8]),
    ) -> Result<(), Error> {
        let mut bytes = vec![0; head];
        let objects = self.objects.clone();
        self.each_entry_line(&mut |path, line| {
            let Some(action) = (path.file_name())
                .and_then(|name| name.to_str())
                .and_then(|name| crate::ids::ActionId::from_hex(name).ok())
            else {
                return;
            };
            let object = super::layout::shard_path(&objects, &line.output.to_hex());
            let Ok(file) = fs::File::open(object) else {
                return;
            };
            use std::os::unix::fs::FileExt as _;
            if let Ok(n) = file.read_at(&mut bytes, 0) {
                visit(&action, &bytes[..n]);
            }
        })
    }

    /// Calls `visit` with each well-formed entry: its path, its metadata as
    /// read (for [`remove_seen`]), its source and its body's size.
    fn each_entry(
        &self,
        visit: &mut dyn FnMut(&std::path::Path, &fs::Metadata, Source, u64),
    ) -> Result<(), Error> {
        self.each_entry_full(&mut |path, meta, line| visit(path, meta, line.source, line.size))
    }

    fn each_entry_line(
        &self,
        visit: &mut dyn FnMut(&std::path::Path, &super::entry::Line),
    ) -> Result<(), Error> {
        self.each_entry_full(&mut |path, _, line| visit(path, line))
    }

    fn each_entry_full(
        &self,
        visit: &mut dyn FnMut(&std::path::Path, &fs::Metadata, &super::entry::Line),
    ) -> Result<(), Error> {
        walk_files(&self.actions, &mut |file| {
            if file.temp {
                return;
            }
            // The metadata and the text must be of one file: open it
            // (never through a link), then read both from the open file.
            let Ok(mut opened) = fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&file.path)
            else {
                return;
            };
            let Ok(meta) = opened.metadata() else { return };
            let mut text = Vec::with_capacity(MAX_ENTRY_LEN as usize);
            if (&mut opened)
                .take(MAX_ENTRY_LEN + 1)
                .read_to_end(&mut text)
                .is_err()
            {
                return;
            }
            if let Some(line) = parse_entry(&text) {
                visit(&file.path, &meta, &line);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::ids::{ActionId, OutputId};
    use crate::store::Lookup;

    fn peer() -> PeerId {
        libp2p_identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn fetch(store: &DiskStore, n: u8, body: &[u8], from: PeerId) {
        let mut writer = store
            .begin_object(OutputId::of(body), body.len() as u64)
            .unwrap();
        writer.write_all(body).unwrap();
        store
            .commit_fetched(
                &ActionId::from_bytes([n; 32]),
                writer.finish().unwrap(),
                from,
            )
            .unwrap();
    }

    #[test]
    fn entries_are_counted_and_purged_by_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let (alice, bob) = (peer(), peer());
        store
            .put_bytes(&ActionId::from_bytes([1; 32]), b"built here")
            .unwrap();
        fetch(&store, 2, b"from alice", alice);
        fetch(&store, 3, b"alice again", alice);
        fetch(&store, 4, b"from bob", bob);

        let sources = store.sources().unwrap();
        assert_eq!(
            sources[&Source::Local],
            SourceUsage {
                entries: 1,
                bytes: 10
            }
        );
        assert_eq!(
            sources[&Source::Peer(alice)],
            SourceUsage {
                entries: 2,
                bytes: 21
            }
        );
        assert_eq!(sources[&Source::Peer(bob)].entries, 1);

        let purged = store.purge_except(&HashSet::from([bob])).unwrap();
        assert_eq!(
            purged,
            Purged {
                entries: 2,
                bytes: 21
            }
        );
        for (n, hit) in [(1, true), (2, false), (3, false), (4, true)] {
            let lookup = store.get(&ActionId::from_bytes([n; 32])).unwrap();
            assert_eq!(matches!(lookup, Lookup::Hit(_)), hit, "entry {n}");
        }
        assert!(!store.sources().unwrap().contains_key(&Source::Peer(alice)));
        assert_eq!(
            store.purge_except(&HashSet::from([bob])).unwrap().entries,
            0
        );
    }

    /// `go` built and put the entry itself after it was fetched: it is
    /// ours now, and a purge of the peer keeps it.
    #[test]
    fn a_purge_keeps_what_go_put_over_a_fetched_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let alice = peer();
        fetch(&store, 1, b"same body", alice);
        store
            .put_bytes(&ActionId::from_bytes([1; 32]), b"same body")
            .unwrap();
        assert_eq!(store.purge_except(&HashSet::new()).unwrap().entries, 0);
        let Lookup::Hit(entry) = store.get(&ActionId::from_bytes([1; 32])).unwrap() else {
            panic!("what go put stays");
        };
        assert_eq!(entry.source, Source::Local);
    }
}
