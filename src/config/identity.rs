//! This machine's peer identity: an ed25519 key, created by `warren init`.
//!
//! The key is the only secret warren has. Coworkers allowlist its public
//! half (the peer ID) and the libp2p handshake proves possession of the
//! private half, so an address found by mDNS is only ever a hint. The file
//! holds libp2p's protobuf encoding of the keypair and is created owner-only
//! (0600) with `create_new`, so an existing key is never overwritten and no
//! other local user can read it.
//!
//! A machine that lives for one job (CI) has no config directory to keep a
//! key in: `warren keygen` prints a new key's secret for a CI secret store,
//! and a process takes its identity, strongest first, from
//! `WARREN_IDENTITY` (that secret), `WARREN_IDENTITY_FILE` (a key file,
//! checked owner-only like the default one), or the config directory's
//! `identity.key` ([`effective`]). The secret is never printed back, not
//! even in an error.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use libp2p_identity::{Keypair, PeerId};

use crate::config::env;

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
    #[error(
        "{} is not a warren identity secret (as `warren keygen` prints it)",
        env::WARREN_IDENTITY
    )]
    Secret {
        #[source]
        source: Option<libp2p_identity::DecodingError>,
    },
}

/// Where the identity in use came from (see [`effective`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The `WARREN_IDENTITY` variable.
    Secret,
    /// A key file: `WARREN_IDENTITY_FILE`'s, or the config directory's.
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret => f.write_str(env::WARREN_IDENTITY),
            Self::File(path) => write!(f, "key {}", path.display()),
        }
    }
}

/// The identity this process uses: `WARREN_IDENTITY`, else the file
/// `WARREN_IDENTITY_FILE` names, else `default_path` (the config
/// directory's key). `var` reads a variable (the process environment
/// outside tests); an empty variable counts as unset.
pub(crate) fn effective(
    default_path: &Path,
    var: impl Fn(&str) -> Option<String>,
) -> Result<(Keypair, Origin), Error> {
    let var = |name| var(name).filter(|value: &String| !value.trim().is_empty());
    if let Some(secret) = var(env::WARREN_IDENTITY) {
        return Ok((decode_secret(&secret)?, Origin::Secret));
    }
    let path =
        var(env::WARREN_IDENTITY_FILE).map_or_else(|| default_path.to_path_buf(), PathBuf::from);
    Ok((load(&path)?, Origin::File(path)))
}

/// A new key and its secret, as `warren keygen` prints it.
pub(crate) fn generate() -> (Keypair, String) {
    let key = Keypair::generate_ed25519();
    let secret = encode_secret(&key);
    (key, secret)
}

/// The base64 of `key`'s protobuf encoding (the key file's bytes).
pub(crate) fn encode_secret(key: &Keypair) -> String {
    let bytes = key.to_protobuf_encoding().expect("ed25519 keys to encode");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The key of a secret [`encode_secret`] made; only ed25519 keys pass
/// (manifests are signed with them).
pub(crate) fn decode_secret(secret: &str) -> Result<Keypair, Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret.trim())
        .map_err(|_| Error::Secret { source: None })?;
    let key = Keypair::from_protobuf_encoding(&bytes).map_err(|source| Error::Secret {
        source: Some(source),
    })?;
    if key.clone().try_into_ed25519().is_err() {
        return Err(Error::Secret { source: None });
    }
    Ok(key)
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

    /// The variable is stronger than the file variable, which is stronger
    /// than the config directory's key; each names where it came from.
    #[test]
    fn identity_comes_from_the_secret_then_the_file_then_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("identity.key");
        let (default_key, _) = load_or_create(&default).unwrap();
        let other = dir.path().join("ci.key");
        let (file_key, _) = load_or_create(&other).unwrap();
        let (secret_key, secret) = generate();
        let vars = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone())
            }
        };

        let (key, origin) = effective(&default, vars(vec![])).unwrap();
        assert_eq!(peer_id(&key), peer_id(&default_key));
        assert_eq!(origin, Origin::File(default.clone()));

        let file_var = (env::WARREN_IDENTITY_FILE, other.display().to_string());
        let (key, origin) = effective(&default, vars(vec![file_var.clone()])).unwrap();
        assert_eq!(peer_id(&key), peer_id(&file_key));
        assert_eq!(origin, Origin::File(other.clone()));

        let both = vec![file_var, (env::WARREN_IDENTITY, secret.clone())];
        let (key, origin) = effective(&default, vars(both)).unwrap();
        assert_eq!(peer_id(&key), peer_id(&secret_key));
        assert_eq!(origin, Origin::Secret);

        // Empty is unset.
        let empty = vec![(env::WARREN_IDENTITY, " ".to_owned())];
        let (key, _) = effective(&default, vars(empty)).unwrap();
        assert_eq!(peer_id(&key), peer_id(&default_key));
    }

    /// A bad secret is an error that does not repeat the secret; a key
    /// file named by the variable is held to the same owner-only rule.
    #[test]
    fn refuses_a_bad_secret_without_echoing_it_and_a_shared_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("identity.key");
        for secret in ["not base64 at all!", "aGVsbG8gd29ybGQ="] {
            let err = effective(&default, |name: &str| {
                (name == env::WARREN_IDENTITY).then(|| secret.to_owned())
            })
            .unwrap_err();
            assert!(matches!(err, Error::Secret { .. }), "{err:?}");
            let shown = crate::logging::chain(&err);
            assert!(!shown.contains(secret), "{shown}");
        }
        let shared = dir.path().join("shared.key");
        load_or_create(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o644)).unwrap();
        let err = effective(&default, |name: &str| {
            (name == env::WARREN_IDENTITY_FILE).then(|| shared.display().to_string())
        })
        .unwrap_err();
        assert!(matches!(err, Error::Permissions { .. }), "{err:?}");
    }

    /// The secret is the key file's bytes in base64: a key moves between
    /// the two forms unchanged.
    #[test]
    fn a_secret_round_trips_to_the_same_peer_id() {
        let (key, secret) = generate();
        assert_eq!(peer_id(&decode_secret(&secret).unwrap()), peer_id(&key));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let (file_key, _) = load_or_create(&path).unwrap();
        let from_file = base64::engine::general_purpose::STANDARD.encode(fs::read(&path).unwrap());
        assert_eq!(
            peer_id(&decode_secret(&from_file).unwrap()),
            peer_id(&file_key)
        );
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
