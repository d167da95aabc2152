//! This machine's peer identity: an ed25519 key, created by `warren init`.
//!
//! The key is the only secret warren has. Coworkers allowlist its public
//! half (the peer ID) and the libp2p handshake proves possession of the
//! private half, so an address found by mDNS is only ever a hint. The file
//! holds libp2p's protobuf encoding of the keypair and is created owner-only
//! (0600) with `create_new`, so an existing key is never overwritten and no
//! other local user can read it.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p_identity::{Keypair, PeerId};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("no identity key at {} (create one with `warren init`)", .0.display())]
    Missing(PathBuf),
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a warren identity key", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: libp2p_identity::DecodingError,
    },
    #[error(
        "identity key {} is readable by other users (mode {mode:o}); run `chmod 600` on it",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
}

/// Loads the key at `path`.
pub(crate) fn load(path: &Path) -> Result<Keypair, Error> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::Missing(path.to_path_buf()));
        }
        Err(source) => {
            return Err(Error::Io {
                op: "reading",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mode = fs::metadata(path)
        .map_err(|source| Error::Io {
            op: "reading",
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::Permissions {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    Keypair::from_protobuf_encoding(&bytes).map_err(|source| Error::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the key at `path`, creating a new one if there is none. Returns
/// the key and whether it was created.
pub(crate) fn load_or_create(path: &Path) -> Result<(Keypair, bool), Error> {
    match load(path) {
        Err(Error::Missing(_)) => {}
        other => return other.map(|key| (key, false)),
    }
    let io_error = |op| {
        move |source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(dir) = path.parent() {
        crate::fsutil::private::create_dir_all(dir)
            .map_err(io_error("creating the directory of"))?;
    }
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().expect("ed25519 keys to encode");
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("creating"))?;
    file.write_all(&bytes).map_err(io_error("writing"))?;
    file.sync_all().map_err(io_error("writing"))?;
    Ok((key, true))
}

/// The peer ID of `key`, as coworkers allowlist it.
pub(crate) fn peer_id(key: &Keypair) -> PeerId {
    key.public().to_peer_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_loads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren/identity.key");
        let (first, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700,
            "the key's new directory is owner-only"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(peer_id(&first), peer_id(&again));
    }

    #[test]
    fn refuses_missing_garbage_and_shared_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        assert!(matches!(load(&path), Err(Error::Missing(_))));
        crate::fsutil::write_atomic(&path, b"not a key").unwrap();
        assert!(matches!(load(&path), Err(Error::Decode { .. })));
        fs::remove_file(&path).unwrap();
        load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(&path), Err(Error::Permissions { .. })));
    }
}
