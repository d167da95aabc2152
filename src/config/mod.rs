//! Settings: defaults, then the config file, then `WARREN_*` variables, then
//! flags, each overriding the one before (clap reads a flag or, without
//! it, its variable).
//!
//! Each setting is declared once, in [`settings`]: its key, type, default,
//! doc, and the flag and variable that may give it. The file's tables, the
//! effective values, where each came from (worked out from the parsed file
//! and what clap says gave the flag), the global options and
//! `warren config` are all made from those rows ([`declare`]).
//!
//! The file lives at the platform's config location
//! (`$XDG_CONFIG_HOME/warren/config.toml` on Linux,
//! `~/Library/Application Support/warren/config.toml` on macOS). A missing
//! file is fine; a file that does not parse is an error that names it,
//! because silently ignoring a typo in a limit is worse than stopping.
//!
//! - [`settings`]: every setting, and the defaults of the store and CLI;
//! - [`value`]: the types of settings, how each is written and shown;
//! - [`origin`]: where a value came from, and what the command line gave;
//! - [`declare`]: the macro that makes the rest from the declarations;
//! - [`env`](mod@env): the names of the `WARREN_*` variables.
//!
//! Beside the config file, in the same directory, live the files the CLI
//! and the daemon share: [`identity`], this machine's key, and [`trust`],
//! the allowlist of coworkers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::fsutil::private::{self, NotPrivate};

mod declare;
pub(crate) mod env;
mod error;
pub(crate) mod identity;
mod origin;
mod settings;
pub(crate) mod trust;
pub(crate) mod value;

pub(crate) use self::declare::{Flagged, Setting};
pub(crate) use self::error::Error;
pub(crate) use self::origin::{Given, Origin, Overrides};
pub(crate) use self::settings::{Bucket, FileConfig, Share, Store};
pub(crate) use self::value::{BucketUrl, Replicate};

/// Effective settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// The top of the file: the store directory and its trim limits.
    pub store: Store,
    /// The `[share]` table.
    pub share: Share,
    /// The `[bucket]` table.
    pub bucket: Bucket,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    /// Directory of the identity key and the allowlist: the config file's
    /// directory.
    pub config_dir: PathBuf,
    /// Where each setting came from, by its config-file key (`max-size`,
    /// `lookup-deadline`, `config` for the file itself); unlisted ones are
    /// defaults.
    pub origins: HashMap<&'static str, Origin>,
}

impl Config {
    /// Resolves settings from `overrides` and the config file.
    pub(crate) fn load(overrides: &Overrides) -> Result<Self, Error> {
        let (file, path) = match &overrides.config {
            // Absolute at once: the key and the allowlist are found beside
            // it, and a daemon started from a build runs in go's directory.
            Some(Given { value: path, .. }) => {
                let path = std::path::absolute(path).map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?;
                (read_file(&path)?, Some(path))
            }
            None => match default_config_path() {
                Some(path) if path.exists() => (read_file(&path)?, Some(path)),
                _ => (FileConfig::default(), None),
            },
        };
        Self::resolve(overrides, file, path)
    }

    fn resolve(
        overrides: &Overrides,
        mut file: FileConfig,
        path: Option<PathBuf>,
    ) -> Result<Self, Error> {
        let mut origins = HashMap::new();
        if let Some(config) = &overrides.config {
            origins.insert("config", config.origin);
        }
        let store = Store::resolve(&mut file, overrides, &mut origins)?;
        let share = Share::resolve(&mut file.share, overrides, &mut origins)?;
        let bucket = Bucket::resolve(&mut file.bucket, overrides, &mut origins)?;
        let config_dir = match &path {
            Some(path) => path.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => default_config_path()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .ok_or(Error::NoConfigDir)?,
        };
        Ok(Self {
            store,
            share,
            bucket,
            file: path,
            config_dir,
            origins,
        })
    }

    /// Where the setting of config-file key `key` came from.
    pub(crate) fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).copied().unwrap_or(Origin::Default)
    }

    /// This machine's identity key (`warren init`).
    pub(crate) fn identity_path(&self) -> PathBuf {
        self.config_dir.join("identity.key")
    }

    /// The identity this process uses, and where it came from:
    /// `WARREN_IDENTITY`, `WARREN_IDENTITY_FILE`, else [`Self::identity_path`].
    pub(crate) fn identity(
        &self,
    ) -> Result<(libp2p_identity::Keypair, identity::Origin), identity::Error> {
        identity::effective(&self.identity_path(), |name| std::env::var(name).ok())
    }

    /// The allowlist (`warren peers`).
    pub(crate) fn allowlist_path(&self) -> PathBuf {
        self.config_dir.join("peers.toml")
    }

    /// The daemon's socket: in the store, so one daemon serves one store.
    pub(crate) fn socket_path(&self) -> PathBuf {
        crate::store::layout::daemon_socket(&self.store.dir)
    }
}

/// Every setting a global option gives, in the order of the tables.
pub(crate) fn flags() -> impl Iterator<Item = Flagged> {
    let store = Store::SETTINGS.iter().filter_map(Setting::flagged);
    store.chain(Share::SETTINGS.iter().filter_map(Setting::flagged))
}

/// What `warren init` writes when there is no config file yet.
const INITIAL_CONFIG: &str = "\
# warren configuration (see `warren config` and the annotated example in
# warren's examples/config.toml).

[share]
# Ask the daemon (`warren daemon`) on a local miss, and let it serve this
# machine's store to allowlisted coworkers (`warren peers add`).
enabled = true
# Start the daemon from a build when it is not running.
autostart = true
";

/// Writes the config `warren init` starts with (sharing on) to `path`.
pub(crate) fn create_file(path: &Path) -> Result<(), crate::fsutil::Error> {
    crate::fsutil::write_atomic(path, INITIAL_CONFIG.as_bytes())
}

/// `$XDG_CONFIG_HOME/warren/config.toml` or the platform's equivalent.
pub(crate) fn default_config_path() -> Option<PathBuf> {
    Some(dirs::config_dir()?.join("warren").join("config.toml"))
}

fn read_file(path: &Path) -> Result<FileConfig, Error> {
    match private::check_file(path) {
        // Missing: reading it says so, naming the file.
        Err(NotPrivate::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        checked => checked.map_err(|source| Error::NotPrivate {
            what: "config file",
            source,
        })?,
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests;
