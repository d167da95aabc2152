//! Settings: defaults, then the config file, then `WARREN_*` variables, then
//! flags, each overriding the one before (flags and variables are merged by
//! clap, see [`Overrides`]).
//!
//! The file lives at the platform's config location
//! (`$XDG_CONFIG_HOME/warren/config.toml` on Linux,
//! `~/Library/Application Support/warren/config.toml` on macOS). A missing
//! file is fine; a file that does not parse is an error that names it,
//! because silently ignoring a typo in a limit is worse than stopping.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::TrimPolicy;

/// Default store size limit: room for dozens of `go build std`-sized
/// workloads (each ~180 MB) without filling a laptop disk.
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024 * 1024;
/// Default unused-time limit. Go's own cache uses 5 days; a week keeps what
/// was built before a weekend or a short holiday.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid {what} {value:?}: {reason}")]
    Value {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("no cache directory known for this platform; set --dir or WARREN_DIR")]
    NoCacheDir,
}

/// The config file's contents. Keys are kebab-case.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub dir: Option<PathBuf>,
    pub max_size: Option<String>,
    pub max_age: Option<String>,
}

/// Values from flags or the environment (already merged by clap).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub max_size: Option<String>,
    pub max_age: Option<String>,
}

/// Effective settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Store directory. Default: `<platform cache dir>/warren`.
    pub dir: PathBuf,
    /// Trim limits. Default: [`DEFAULT_MAX_SIZE`], [`DEFAULT_MAX_AGE`].
    pub trim: TrimPolicy,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Resolves settings from `overrides` and the config file.
    pub fn load(overrides: &Overrides) -> Result<Self, Error> {
        let (file, path) = match &overrides.config {
            Some(path) => (read_file(path)?, Some(path.clone())),
            None => match default_config_path() {
                Some(path) if path.exists() => (read_file(&path)?, Some(path)),
                _ => (FileConfig::default(), None),
            },
        };
        Self::resolve(overrides, file, path)
    }

    fn resolve(
        overrides: &Overrides,
        file: FileConfig,
        path: Option<PathBuf>,
    ) -> Result<Self, Error> {
        let dir = match overrides.dir.clone().or(file.dir) {
            Some(dir) => dir,
            None => dirs::cache_dir().ok_or(Error::NoCacheDir)?.join("warren"),
        };
        let max_size = match overrides.max_size.as_ref().or(file.max_size.as_ref()) {
            Some(text) => parse_size(text)?,
            None => DEFAULT_MAX_SIZE,
        };
        let max_unused = match overrides.max_age.as_ref().or(file.max_age.as_ref()) {
            Some(text) => parse_age(text)?,
            None => DEFAULT_MAX_AGE,
        };
        Ok(Self {
            dir,
            trim: TrimPolicy {
                max_size,
                max_unused,
            },
            file: path,
        })
    }
}

/// `$XDG_CONFIG_HOME/warren/config.toml` or the platform's equivalent.
pub fn default_config_path() -> Option<PathBuf> {
    Some(dirs::config_dir()?.join("warren").join("config.toml"))
}

fn read_file(path: &Path) -> Result<FileConfig, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses sizes such as `10GiB`, `500 MB` or `1048576`.
pub fn parse_size(text: &str) -> Result<u64, Error> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|reason| Error::Value {
            what: "size",
            value: text.into(),
            reason,
        })
}

/// Parses durations such as `7days`, `36h` or `1w`.
pub fn parse_age(text: &str) -> Result<Duration, Error> {
    humantime::parse_duration(text.trim()).map_err(|e| Error::Value {
        what: "age",
        value: text.into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
#[expect(
    clippy::disallowed_methods,
    reason = "tests write config files, not store files"
)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_without_file_or_overrides() {
        let config = Config::resolve(&Overrides::default(), FileConfig::default(), None).unwrap();
        assert_eq!(config.trim.max_size, DEFAULT_MAX_SIZE);
        assert_eq!(config.trim.max_unused, DEFAULT_MAX_AGE);
        assert!(config.dir.ends_with("warren"));
    }

    #[test]
    fn overrides_beat_the_file() {
        let file: FileConfig =
            toml::from_str("dir = \"/from/file\"\nmax-size = \"1GiB\"\nmax-age = \"3days\"\n")
                .unwrap();
        let overrides = Overrides {
            dir: Some("/from/flag".into()),
            max_size: Some("500 MB".into()),
            ..Overrides::default()
        };
        let config = Config::resolve(&overrides, file, None).unwrap();
        assert_eq!(config.dir, PathBuf::from("/from/flag"));
        assert_eq!(config.trim.max_size, 500_000_000);
        assert_eq!(config.trim.max_unused, Duration::from_secs(3 * 24 * 3600));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_errors() {
        assert!(parse_size("ten gigs").is_err());
        assert!(parse_age("soon").is_err());
        assert!(toml::from_str::<FileConfig>("max_size = \"1GiB\"").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "dir = 5").unwrap();
        let overrides = Overrides {
            config: Some(path),
            ..Overrides::default()
        };
        let err = Config::load(&overrides).unwrap_err();
        assert!(err.to_string().contains("config.toml"), "{err}");
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../examples/config.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        Config::resolve(&Overrides::default(), file, None).unwrap();
    }
}
