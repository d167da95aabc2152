//! The allowlist: which coworkers' peer IDs may connect and be asked.
//!
//! It lives in `peers.toml` beside the config file, apart from the
//! hand-edited `config.toml`, so `warren peers add/remove` can rewrite it
//! without touching anyone's comments. The daemon re-reads it when its
//! mtime changes, so allowlist edits take effect without a restart.
//!
//! ```toml
//! [[peer]]
//! id = "12D3KooW…"      # the coworker's `warren id`
//! name = "alice"         # optional, for humans
//! role = "pull-only"     # optional: "pull-and-serve" (default),
//!                        # "serve-only" or "pull-only"
//! reshare = true         # optional: serve on what we fetched from it
//! ```
//!
//! Trust is not transitive: by default the daemon serves only entries built
//! on this machine, never one a peer sent it. `reshare` widens that for
//! one peer, for example the team's CI machine whose entries everyone
//! should get, through whoever fetched them.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use warren_p2p::Role;

use crate::fsutil::private::{self, NotPrivate};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("reading allowlist {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing allowlist {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{id:?} in {} is not a peer ID", path.display())]
    BadPeer { path: PathBuf, id: String },
    #[error("{0:?} is not a peer ID (it looks like 12D3KooW…; `warren id` prints it)")]
    BadArgument(String),
    #[error("writing allowlist")]
    Write(#[source] crate::fsutil::Error),
    #[error("refusing the allowlist")]
    NotPrivate(#[source] NotPrivate),
}

/// One allowlisted coworker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Peer {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which way entries flow.
    #[serde(default, skip_serializing_if = "is_default")]
    pub role: Role,
    /// Entries fetched from this peer are served on, as if built here.
    #[serde(default, skip_serializing_if = "is_default")]
    pub reshare: bool,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The contents of `peers.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Allowlist {
    #[serde(default, rename = "peer")]
    pub peers: Vec<Peer>,
}

impl Allowlist {
    /// Reads `path`; a missing file is an empty allowlist.
    pub(crate) fn load(path: &Path) -> Result<Self, Error> {
        match private::check_file(path) {
            Err(NotPrivate::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            checked => checked.map_err(Error::NotPrivate)?,
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let list: Self = toml::from_str(&text).map_err(|source| Error::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        for peer in &list.peers {
            if PeerId::from_str(&peer.id).is_err() {
                return Err(Error::BadPeer {
                    path: path.to_path_buf(),
                    id: peer.id.clone(),
                });
            }
        }
        Ok(list)
    }

    pub(crate) fn save(&self, path: &Path) -> Result<(), Error> {
        let mut text = String::from(
            "# Coworkers whose warren may connect to this one. Managed by\n\
             # `warren peers add/remove`; edits by hand are picked up too.\n\n",
        );
        text += &toml::to_string(self).expect("the allowlist to serialize");
        // Makes a missing directory, owner-only, like every directory of ours.
        crate::fsutil::write_atomic(path, text.as_bytes()).map_err(Error::Write)
    }

    fn parsed(&self) -> impl Iterator<Item = (PeerId, &Peer)> {
        (self.peers.iter()).filter_map(|peer| Some((PeerId::from_str(&peer.id).ok()?, peer)))
    }

    /// The allowlist as the node enforces it: who may connect, and which
    /// way entries flow with each.
    pub(crate) fn roles(&self) -> warren_p2p::Allowlist {
        self.parsed().map(|(id, peer)| (id, peer.role)).collect()
    }

    /// What the store takes and serves on.
    pub(crate) fn sharing(&self) -> SharingState {
        SharingState {
            pull: (self.parsed())
                .filter(|(_, peer)| peer.role.pulls())
                .map(|(id, _)| id)
                .collect(),
            reshare: (self.parsed())
                .filter(|(_, peer)| peer.reshare && peer.role.pulls())
                .map(|(id, _)| id)
                .collect(),
        }
    }

    /// The name of `id`, if it has one here.
    pub(crate) fn name_of(&self, id: &PeerId) -> Option<&str> {
        (self.parsed())
            .find(|(parsed, _)| parsed == id)
            .and_then(|(_, peer)| peer.name.as_deref())
    }

    /// What to call the peer `id` (as text): its name here, else the ID.
    pub(crate) fn name_or_id(&self, id: &str) -> String {
        id.parse()
            .ok()
            .and_then(|peer| self.name_of(&peer).map(str::to_owned))
            .unwrap_or_else(|| id.to_owned())
    }

    /// Adds `id`, or updates the fields given. Returns false if nothing
    /// changed.
    pub(crate) fn add(&mut self, id: &str, update: Update) -> Result<bool, Error> {
        let id = parse_peer_id(id)?.to_string();
        let peer = match self.peers.iter_mut().position(|peer| peer.id == id) {
            Some(at) => &mut self.peers[at],
            None => {
                self.peers.push(Peer {
                    id,
                    name: None,
                    role: Role::default(),
                    reshare: false,
                });
                let peer = self.peers.last_mut().expect("just pushed");
                update.apply(peer);
                return Ok(true);
            }
        };
        let before = peer.clone();
        update.apply(peer);
        Ok(*peer != before)
    }

    /// Removes the peer with this ID or name. Returns the removed entries.
    pub(crate) fn remove(&mut self, id_or_name: &str) -> Vec<Peer> {
        let (removed, kept) = std::mem::take(&mut self.peers)
            .into_iter()
            .partition(|peer| peer.id == id_or_name || peer.name.as_deref() == Some(id_or_name));
        self.peers = kept;
        removed
    }
}

/// What the allowlist says the store takes from peers and serves on
/// (`daemon::node_store` applies it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SharingState {
    /// Peers we take entries from.
    pub pull: HashSet<PeerId>,
    /// Peers whose entries we serve on as if built here.
    pub reshare: HashSet<PeerId>,
}

/// The fields `warren peers add` sets; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub(crate) struct Update {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub reshare: Option<bool>,
}

impl Update {
    fn apply(self, peer: &mut Peer) {
        if let Some(name) = self.name {
            peer.name = Some(name);
        }
        if let Some(role) = self.role {
            peer.role = role;
        }
        if let Some(reshare) = self.reshare {
            peer.reshare = reshare;
        }
    }
}

pub(crate) fn parse_peer_id(text: &str) -> Result<PeerId, Error> {
    PeerId::from_str(text.trim()).map_err(|_| Error::BadArgument(text.into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A new peer ID, as text.
    pub(crate) fn some_id() -> String {
        libp2p_identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_string()
    }

    #[test]
    fn add_save_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren/peers.toml");
        let mut list = Allowlist::load(&path).unwrap();
        assert!(list.peers.is_empty());
        let alice = some_id();
        let named = |name: &str| Update {
            name: Some(name.into()),
            ..Update::default()
        };
        assert!(list.add(&alice, named("alice")).unwrap());
        assert!(!list.add(&alice, Update::default()).unwrap());
        assert!(!list.add(&alice, named("alice")).unwrap());
        list.save(&path).unwrap();
        let loaded = Allowlist::load(&path).unwrap();
        assert_eq!(loaded, list);
        assert_eq!(loaded.roles().len(), 1);
        let mut list = loaded;
        assert_eq!(list.remove("alice").len(), 1);
        assert!(list.peers.is_empty());
    }

    /// A directory made with the umask (group-writable under 002) would be
    /// refused by the next load.
    #[test]
    fn a_new_allowlist_directory_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/warren/peers.toml");
        Allowlist::default().save(&path).unwrap();
        for made in [dir.path().join("new"), dir.path().join("new/warren")] {
            let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", made.display());
        }
        Allowlist::load(&path).unwrap();
    }

    #[test]
    fn roles_and_resharing_are_saved_and_given_to_the_node_and_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.toml");
        let (laptop, ci, alice) = (some_id(), some_id(), some_id());
        let mut list = Allowlist::default();
        let role = |role| Update {
            role: Some(role),
            ..Update::default()
        };
        list.add(&laptop, role(Role::ServeOnly)).unwrap();
        list.add(
            &ci,
            Update {
                reshare: Some(true),
                ..role(Role::PullOnly)
            },
        )
        .unwrap();
        list.add(&alice, Update::default()).unwrap();
        list.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("role = \"serve-only\""), "{text}");
        assert!(text.contains("reshare = true"), "{text}");
        let loaded = Allowlist::load(&path).unwrap();
        assert_eq!(loaded, list);

        let id = |text: &str| PeerId::from_str(text).unwrap();
        let roles = loaded.roles();
        assert!(roles.serves(&id(&laptop)) && !roles.pulls_from(&id(&laptop)));
        assert!(roles.pulls_from(&id(&ci)) && !roles.serves(&id(&ci)));
        assert!(roles.pulls_from(&id(&alice)) && roles.serves(&id(&alice)));
        let sharing = loaded.sharing();
        assert_eq!(
            sharing.pull,
            std::collections::HashSet::from([id(&ci), id(&alice)])
        );
        assert_eq!(sharing.reshare, std::collections::HashSet::from([id(&ci)]));
    }

    #[test]
    fn rejects_bad_ids() {
        let mut list = Allowlist::default();
        assert!(matches!(
            list.add("not-a-peer", Update::default()),
            Err(Error::BadArgument(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.toml");
        crate::fsutil::write_atomic(&path, b"[[peer]]\nid = \"nope\"\n").unwrap();
        assert!(matches!(Allowlist::load(&path), Err(Error::BadPeer { .. })));
    }

    /// Someone else who can edit the allowlist decides whom we trust:
    /// one writable by others is refused (SECURITY.md, "Files and
    /// permissions").
    #[test]
    fn an_allowlist_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.toml");
        let mut list = Allowlist::default();
        list.add(&some_id(), Update::default()).unwrap();
        list.save(&path).unwrap();
        assert_eq!(Allowlist::load(&path).unwrap(), list);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o646)).unwrap();
        let err = Allowlist::load(&path).unwrap_err();
        assert!(
            matches!(err, Error::NotPrivate(NotPrivate::Writable { .. })),
            "{err}"
        );
    }
}
