//! The allowlist as a helper reads it: which entries it may hand to `go`
//! (applied by [`crate::helper::tiered::MultiLevelStorage::with_trusted`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use warren_p2p::PeerId;

use crate::config::trust::Allowlist;
use crate::store::Source;

/// Which entries a helper may hand to `go`, by their source: built here,
/// of unknown source (written before provenance), or fetched from a peer
/// that is still pulled from. The daemon purges the others, but it may not
/// run, or may not have run since the allowlist was edited; a helper reads
/// the allowlist itself, once (at its first entry from a peer: most lookups
/// never need it), since it lives for one `go` command.
pub(crate) struct TrustedSources {
    path: PathBuf,
    /// Peers pulled from, or why the allowlist could not be read (then no
    /// peer's entry is trusted).
    pulled: OnceLock<Result<HashSet<PeerId>, String>>,
}

impl TrustedSources {
    /// Trusts what the allowlist at `path` says (a missing one: no peer).
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            pulled: OnceLock::new(),
        }
    }

    pub(crate) fn admits(&self, source: &Source) -> bool {
        let Some(peer) = source.peer() else {
            return true;
        };
        let pulled = self.pulled.get_or_init(|| {
            Allowlist::load(&self.path)
                .map(|list| list.sharing().pull)
                .map_err(|e| crate::logging::chain(&e))
        });
        pulled.as_ref().is_ok_and(|pulled| pulled.contains(peer))
    }

    /// Why entries from peers were not used, if the allowlist could not be
    /// read when one was looked up: told once, when `go` is done.
    pub(crate) fn fault(&self) -> Option<String> {
        let error = self.pulled.get()?.as_ref().err()?;
        Some(format!(
            "entries fetched from peers were not used: {error}; fix the allowlist \
             (`warren peers`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use warren_p2p::Role;

    use super::*;
    use crate::config::trust::Update;
    use crate::config::trust::tests::some_id;

    /// A helper hands `go` entries built here, of unknown source, or from
    /// a peer still pulled from; never one from a peer removed or made
    /// serve-only, and none from peers when the allowlist cannot be read.
    #[test]
    fn helpers_trust_only_entries_from_peers_still_pulled_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.toml");
        let (alice, laptop, gone) = (some_id(), some_id(), some_id());
        let mut list = Allowlist::default();
        list.add(&alice, Update::default()).unwrap();
        list.add(
            &laptop,
            Update {
                role: Some(Role::ServeOnly),
                ..Update::default()
            },
        )
        .unwrap();
        list.save(&path).unwrap();
        let peer = |id: &str| Source::Peer(PeerId::from_str(id).unwrap());
        let trusted = TrustedSources::new(path.clone());
        for (source, admitted) in [
            (Source::Local, true),
            (Source::Unknown, true),
            (peer(&alice), true),
            (peer(&laptop), false),
            (peer(&gone), false),
        ] {
            assert_eq!(trusted.admits(&source), admitted, "{source:?}");
        }
        assert_eq!(trusted.fault(), None);

        crate::fsutil::write_atomic(&path, b"[[peer]]\nid = 1\n").unwrap();
        let broken = TrustedSources::new(path);
        assert!(broken.admits(&Source::Local));
        assert!(!broken.admits(&peer(&alice)));
        assert!(broken.fault().unwrap().contains("parsing allowlist"));
    }
}
