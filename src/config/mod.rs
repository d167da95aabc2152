//! Settings: defaults, then the config file, then `WARREN_*` variables, then
//! flags, each overriding the one before (flags and variables are merged by
//! clap, see [`Overrides`]).
//!
//! The file lives at the platform's config location
//! (`$XDG_CONFIG_HOME/warren/config.toml` on Linux,
//! `~/Library/Application Support/warren/config.toml` on macOS). A missing
//! file is fine; a file that does not parse is an error that names it,
//! because silently ignoring a typo in a limit is worse than stopping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use warren_p2p::Compression;
use warren_p2p::config::defaults;

use crate::fsutil::private::{self, NotPrivate};
use crate::store::TrimPolicy;

/// Default store size limit: room for dozens of `go build std`-sized
/// workloads (each ~180 MB) without filling a laptop disk.
pub(crate) const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024 * 1024;
/// Default unused-time limit. Go's own cache uses 5 days; a week keeps what
/// was built before a weekend or a short holiday.
pub(crate) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
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
    #[error("refusing the {what}")]
    NotPrivate {
        what: &'static str,
        #[source]
        source: NotPrivate,
    },
    #[error("no cache directory known for this platform; set --dir or WARREN_DIR")]
    NoCacheDir,
    #[error("no config directory known for this platform; set --config or WARREN_CONFIG")]
    NoConfigDir,
}

/// The config file's contents. Keys are kebab-case.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FileConfig {
    pub dir: Option<PathBuf>,
    pub max_size: Option<String>,
    pub max_age: Option<String>,
    #[serde(default)]
    pub share: FileShare,
}

/// The `[share]` table: sharing with coworkers (off unless enabled).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FileShare {
    pub enabled: Option<bool>,
    pub autostart: Option<bool>,
    pub listen: Option<Vec<String>>,
    pub mdns: Option<bool>,
    pub inbound_from_anywhere: Option<bool>,
    pub interfaces: Option<Vec<String>>,
    pub static_peers: Option<Vec<String>>,
    pub lookup_deadline: Option<String>,
    pub max_body_size: Option<String>,
    pub read_ahead: Option<usize>,
    pub compression: Option<Compression>,
    pub agreement: Option<bool>,
    pub metrics_listen: Option<String>,
    pub replicate: Option<Replicate>,
    pub replicate_max_size: Option<String>,
    pub replicate_rate: Option<String>,
    pub replicate_window: Option<String>,
}

/// Whose new entries the daemon fetches in the background (`replicate`):
/// `"none"`, `"all"` allowlisted peers it pulls from, or a list of peers by
/// name (or peer ID) in the allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Replicate {
    #[default]
    None,
    All,
    Peers(Vec<String>),
}

impl<'de> Deserialize<'de> for Replicate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Names(Vec<String>),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Word(word) if word == "none" => Ok(Self::None),
            Raw::Word(word) if word == "all" => Ok(Self::All),
            Raw::Word(word) => Err(serde::de::Error::custom(format!(
                "replicate = {word:?}: write \"none\", \"all\" or a list of peer names, \
                 like [\"alice\", \"bob\"]"
            ))),
            Raw::Names(names) => Ok(Self::Peers(names)),
        }
    }
}

impl std::fmt::Display for Replicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::All => f.write_str("all"),
            Self::Peers(names) => f.write_str(&names.join(" ")),
        }
    }
}

/// Default of `replicate-max-size`.
pub(crate) const DEFAULT_REPLICATE_MAX_SIZE: u64 = 2 << 30;
/// Default of `replicate-rate`: a third of gigabit Ethernet, so that
/// replication leaves the link to builds and everyone else.
pub(crate) const DEFAULT_REPLICATE_RATE: u64 = 40 << 20;
/// Default of `replicate-window`.
pub(crate) const DEFAULT_REPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Default libp2p listen addresses: a fixed port, so coworkers behind
/// networks without multicast can list this machine as a static peer.
pub(crate) const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/7311", "/ip6/::/tcp/7311"];

/// Sharing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Share {
    /// Helpers ask the daemon on a local miss. Default: false.
    pub enabled: bool,
    /// Helpers start the daemon when it is not running. Default: false.
    pub autostart: bool,
    /// libp2p listen multiaddrs. Default: [`DEFAULT_LISTEN`].
    pub listen: Vec<String>,
    /// Advertise and browse with mDNS. Default: true.
    pub mdns: bool,
    /// Let connections from non-LAN addresses reach the handshake (a VPN
    /// with global addresses). Default: false.
    pub inbound_from_anywhere: bool,
    /// Interfaces mDNS may use (names); empty means all. Default: all.
    pub interfaces: Vec<String>,
    /// Peers to dial without mDNS (multiaddrs ending in `/p2p/<peer id>`).
    pub static_peers: Vec<String>,
    /// Default: [`defaults::LOOKUP_DEADLINE`].
    pub lookup_deadline: Duration,
    /// Default: [`defaults::MAX_BODY_SIZE`].
    pub max_body_size: u64,
    /// Entries read ahead at once; 0 turns read-ahead off. Default:
    /// [`defaults::READ_AHEAD`].
    pub read_ahead: usize,
    /// Whether to ask peers for compressed bodies. Default: only over
    /// links measured slow ([`Compression::Auto`]).
    pub compression: Compression,
    /// Store a peer's entry only when a second source agrees on it (two
    /// peers that built it, or a peer and an earlier build here); turns
    /// read-ahead and replication off. Default: false.
    pub agreement: bool,
    /// Where the daemon serves its counters in the Prometheus text format
    /// (`metrics-listen`: an address and port, or a port on loopback).
    /// Default: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Whose entries to replicate; off while `agreement` is on (see
    /// `share::replicate::off_because`). Default: none.
    pub replicate: Replicate,
    /// Most bytes of peers' entries in the store that replication fills up
    /// to (and it leaves the last tenth of `max-size` free). Default:
    /// [`DEFAULT_REPLICATE_MAX_SIZE`].
    pub replicate_max_size: u64,
    /// Most bytes a second replication fetches, as they cross the link.
    /// Default: [`DEFAULT_REPLICATE_RATE`].
    pub replicate_rate: u64,
    /// Only entries a peer stored this recently are replicated. Default:
    /// [`DEFAULT_REPLICATE_WINDOW`].
    pub replicate_window: Duration,
}

/// Values from flags or the environment (already merged by clap).
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    pub config: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub max_size: Option<String>,
    pub max_age: Option<String>,
    /// `WARREN_SHARE`: turns sharing on or off over the config file.
    pub share: Option<bool>,
    /// Which of these a flag gave and which the environment.
    pub origins: OverrideOrigins,
}

/// Where a setting's value came from, as `warren config` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `--<name>` on the command line.
    Flag(&'static str),
    /// The environment variable of that name.
    Env(&'static str),
    File,
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag(name) => write!(f, "flag --{name}"),
            Self::Env(var) => write!(f, "env {var}"),
            Self::File => f.write_str("config file"),
            Self::Default => f.write_str("default"),
        }
    }
}

/// For each field of [`Overrides`] that is set: a flag or the environment.
/// Unknown (`None`) counts as a flag.
#[derive(Debug, Default, Clone)]
pub(crate) struct OverrideOrigins {
    pub config: Option<Origin>,
    pub dir: Option<Origin>,
    pub max_size: Option<Origin>,
    pub max_age: Option<Origin>,
    pub share: Option<Origin>,
}

/// Effective settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// Store directory. Default: `<platform cache dir>/warren`.
    pub dir: PathBuf,
    /// Trim limits. Default: [`DEFAULT_MAX_SIZE`], [`DEFAULT_MAX_AGE`].
    pub trim: TrimPolicy,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    /// Directory of the identity key and the allowlist: the config file's
    /// directory.
    pub config_dir: PathBuf,
    pub share: Share,
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
            Some(path) => {
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
        file: FileConfig,
        path: Option<PathBuf>,
    ) -> Result<Self, Error> {
        // Where each setting came from: a flag or the environment (what
        // `overrides.origins` says; a flag if it does not say), else the
        // file if it sets it, else the default (left out).
        let given = |set: bool, origin: Option<Origin>, flag: &'static str| {
            set.then(|| origin.unwrap_or(Origin::Flag(flag)))
        };
        let (over, share) = (&overrides.origins, &file.share);
        let mut origins = HashMap::new();
        for (key, given, in_file) in [
            (
                "config",
                given(overrides.config.is_some(), over.config, "config"),
                false,
            ),
            (
                "dir",
                given(overrides.dir.is_some(), over.dir, "dir"),
                file.dir.is_some(),
            ),
            (
                "max-size",
                given(overrides.max_size.is_some(), over.max_size, "max-size"),
                file.max_size.is_some(),
            ),
            (
                "max-age",
                given(overrides.max_age.is_some(), over.max_age, "max-age"),
                file.max_age.is_some(),
            ),
            (
                "enabled",
                given(overrides.share.is_some(), over.share, "share"),
                share.enabled.is_some(),
            ),
            ("autostart", None, share.autostart.is_some()),
            ("listen", None, share.listen.is_some()),
            ("mdns", None, share.mdns.is_some()),
            (
                "inbound-from-anywhere",
                None,
                share.inbound_from_anywhere.is_some(),
            ),
            ("interfaces", None, share.interfaces.is_some()),
            ("static-peers", None, share.static_peers.is_some()),
            ("lookup-deadline", None, share.lookup_deadline.is_some()),
            ("max-body-size", None, share.max_body_size.is_some()),
            ("read-ahead", None, share.read_ahead.is_some()),
            ("compression", None, share.compression.is_some()),
            ("agreement", None, share.agreement.is_some()),
            ("metrics-listen", None, share.metrics_listen.is_some()),
            ("replicate", None, share.replicate.is_some()),
            (
                "replicate-max-size",
                None,
                share.replicate_max_size.is_some(),
            ),
            ("replicate-rate", None, share.replicate_rate.is_some()),
            ("replicate-window", None, share.replicate_window.is_some()),
        ] {
            if let Some(origin) = given.or(in_file.then_some(Origin::File)) {
                origins.insert(key, origin);
            }
        }
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
        let config_dir = match &path {
            Some(path) => path.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => default_config_path()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .ok_or(Error::NoConfigDir)?,
        };
        let share = file.share;
        let share = Share {
            enabled: overrides.share.or(share.enabled).unwrap_or(false),
            autostart: share.autostart.unwrap_or(false),
            listen: share
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.iter().map(|s| s.to_string()).collect()),
            mdns: share.mdns.unwrap_or(true),
            inbound_from_anywhere: share.inbound_from_anywhere.unwrap_or(false),
            interfaces: share.interfaces.unwrap_or_default(),
            static_peers: share.static_peers.unwrap_or_default(),
            lookup_deadline: match share.lookup_deadline {
                Some(text) => parse_age(&text)?,
                None => defaults::LOOKUP_DEADLINE,
            },
            max_body_size: match share.max_body_size {
                Some(text) => parse_size(&text)?,
                None => defaults::MAX_BODY_SIZE,
            },
            read_ahead: share.read_ahead.unwrap_or(defaults::READ_AHEAD),
            compression: share.compression.unwrap_or_default(),
            agreement: share.agreement.unwrap_or(false),
            metrics_listen: share
                .metrics_listen
                .as_deref()
                .map(parse_listen)
                .transpose()?,
            replicate: share.replicate.unwrap_or_default(),
            replicate_max_size: match share.replicate_max_size {
                Some(text) => parse_size(&text)?,
                None => DEFAULT_REPLICATE_MAX_SIZE,
            },
            replicate_rate: match share.replicate_rate {
                Some(text) => parse_rate(&text)?,
                None => DEFAULT_REPLICATE_RATE,
            },
            replicate_window: match share.replicate_window {
                Some(text) => parse_age(&text)?,
                None => DEFAULT_REPLICATE_WINDOW,
            },
        };
        Ok(Self {
            dir,
            trim: TrimPolicy {
                max_size,
                max_unused,
            },
            file: path,
            config_dir,
            share,
            origins,
        })
    }

    /// Where the setting of config-file key `key` came from.
    pub(crate) fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).copied().unwrap_or(Origin::Default)
    }
}

impl Config {
    /// This machine's identity key (`warren init`).
    pub(crate) fn identity_path(&self) -> PathBuf {
        self.config_dir.join("identity.key")
    }

    /// The allowlist (`warren peers`).
    pub(crate) fn allowlist_path(&self) -> PathBuf {
        self.config_dir.join("peers.toml")
    }

    /// The daemon's socket: in the store, so one daemon serves one store.
    pub(crate) fn socket_path(&self) -> PathBuf {
        crate::store::layout::daemon_socket(&self.dir)
    }
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

/// Parses sizes such as `10GiB`, `500 MB` or `1048576`.
/// `127.0.0.1:9311`, `[::1]:9311`, or a bare port, which means loopback.
pub(crate) fn parse_listen(text: &str) -> Result<std::net::SocketAddr, Error> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    text.parse()
        .map_err(|e: std::net::AddrParseError| Error::Value {
            what: "metrics-listen",
            value: text.to_owned(),
            reason: format!("{e} (write an address and port, like 127.0.0.1:9311, or a port)"),
        })
}

/// A rate such as `40 MiB/s` or `40MiB` (per second), at least 1 KiB/s.
pub(crate) fn parse_rate(text: &str) -> Result<u64, Error> {
    let size = text.trim().trim_end_matches("/s");
    let rate = parse_size(size)?;
    if rate < 1024 {
        return Err(Error::Value {
            what: "replicate-rate",
            value: text.to_owned(),
            reason: "at least 1 KiB/s".into(),
        });
    }
    Ok(rate)
}

pub(crate) fn parse_size(text: &str) -> Result<u64, Error> {
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
pub(crate) fn parse_age(text: &str) -> Result<Duration, Error> {
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
pub(crate) mod tests {
    use super::*;

    /// `[share]` as it is with no config file.
    pub(crate) fn default_share() -> Share {
        Config::resolve(&Overrides::default(), FileConfig::default(), None)
            .expect("the defaults resolve")
            .share
    }

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

    /// Part 5: `warren config` says where each setting came from.
    #[test]
    fn each_setting_knows_where_it_came_from() {
        let file: FileConfig =
            toml::from_str("max-age = \"2days\"\n[share]\nenabled = true\nmdns = false\n").unwrap();
        let overrides = Overrides {
            dir: Some("/from/env".into()),
            share: Some(false),
            origins: OverrideOrigins {
                dir: Some(Origin::Env("WARREN_DIR")),
                share: Some(Origin::Flag("share")),
                ..OverrideOrigins::default()
            },
            ..Overrides::default()
        };
        let config = Config::resolve(&overrides, file, Some("/etc/w/config.toml".into())).unwrap();
        assert_eq!(config.origin("dir"), Origin::Env("WARREN_DIR"));
        assert_eq!(config.origin("enabled"), Origin::Flag("share"));
        assert!(!config.share.enabled, "the flag wins over the file");
        assert_eq!(config.origin("max-age"), Origin::File);
        assert_eq!(config.origin("mdns"), Origin::File);
        assert_eq!(config.origin("max-size"), Origin::Default);
        assert_eq!(config.origin("compression"), Origin::Default);
        assert_eq!(Origin::Env("WARREN_DIR").to_string(), "env WARREN_DIR");
        assert_eq!(Origin::Flag("max-size").to_string(), "flag --max-size");
    }

    #[test]
    fn sharing_is_off_by_default_and_configurable() {
        let config = Config::resolve(&Overrides::default(), FileConfig::default(), None).unwrap();
        assert!(!config.share.enabled);
        assert!(!config.share.agreement);
        assert!(config.share.mdns);
        assert_eq!(config.share.lookup_deadline, defaults::LOOKUP_DEADLINE);
        let file: FileConfig = toml::from_str(
            "[share]\nenabled = true\nmdns = false\nlookup-deadline = \"80ms\"\nread-ahead = 0\ncompression = \"never\"\nagreement = true\nstatic-peers = [\"/ip4/192.0.2.1/tcp/7311\"]\n",
        )
        .unwrap();
        let config = Config::resolve(
            &Overrides::default(),
            file,
            Some("/etc/w/config.toml".into()),
        )
        .unwrap();
        assert!(config.share.enabled && !config.share.mdns);
        assert_eq!(config.share.lookup_deadline, Duration::from_millis(80));
        assert_eq!(config.share.read_ahead, 0);
        assert_eq!(config.share.compression, Compression::Never);
        assert!(config.share.agreement);
        assert_eq!(config.share.static_peers.len(), 1);
        assert_eq!(config.allowlist_path(), PathBuf::from("/etc/w/peers.toml"));
        let off = Overrides {
            share: Some(false),
            ..Overrides::default()
        };
        let file: FileConfig = toml::from_str("[share]\nenabled = true\n").unwrap();
        assert!(!Config::resolve(&off, file, None).unwrap().share.enabled);
    }

    #[test]
    fn metrics_listen_takes_an_address_or_a_port_on_loopback() {
        assert_eq!(parse_listen("9311").unwrap().to_string(), "127.0.0.1:9311");
        assert_eq!(
            parse_listen("0.0.0.0:9311").unwrap().to_string(),
            "0.0.0.0:9311"
        );
        assert_eq!(
            parse_listen("[::1]:9311").unwrap().to_string(),
            "[::1]:9311"
        );
        assert!(parse_listen("localhost:9311").is_err());
    }

    #[test]
    fn bad_values_and_unknown_keys_are_errors() {
        assert!(parse_size("ten gigs").is_err());
        assert!(parse_age("soon").is_err());
        assert!(toml::from_str::<FileConfig>("max_size = \"1GiB\"").is_err());
        let err = toml::from_str::<FileConfig>("[share]\ncompression = \"gzip\"").unwrap_err();
        assert!(err.to_string().contains("always"), "{err}");
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

    /// Part 4, finding 15: a config others can edit decides whom we
    /// trust; a relative one moved with the working directory.
    #[test]
    fn configs_others_can_write_are_refused_and_relative_ones_made_absolute() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[share]\nenabled = true\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let overrides = Overrides {
            config: Some(path.clone()),
            ..Overrides::default()
        };
        let err = Config::load(&overrides).unwrap_err();
        let chain = crate::logging::chain(&err);
        assert!(
            chain.contains("refusing the config file") && chain.contains("chmod go-w"),
            "{chain}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Config::load(&overrides).unwrap().share.enabled);
        // A missing one is a missing one, not a refused one.
        let missing = Overrides {
            config: Some(dir.path().join("none.toml")),
            ..Overrides::default()
        };
        let chain = crate::logging::chain(&Config::load(&missing).unwrap_err());
        assert!(
            chain.starts_with("reading config file") && chain.contains("none.toml"),
            "{chain}"
        );

        // Relative to the directory it was given in, once and for all.
        // Unit tests run in the crate's directory.
        let under = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/config-tests");
        std::fs::create_dir_all(&under).unwrap();
        let here = tempfile::tempdir_in(&under).unwrap();
        let relative_dir = here
            .path()
            .strip_prefix(std::env::current_dir().unwrap())
            .unwrap()
            .to_path_buf();
        std::fs::write(here.path().join("config.toml"), "").unwrap();
        let relative = Overrides {
            config: Some(relative_dir.join("config.toml")),
            ..Overrides::default()
        };
        let config = Config::load(&relative).unwrap();
        assert!(
            config.config_dir.is_absolute(),
            "{}",
            config.config_dir.display()
        );
        assert_eq!(config.config_dir, here.path());
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../examples/config.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        Config::resolve(&Overrides::default(), file, None).unwrap();
        // Every setting it comments out is one the file may hold.
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(key, _)| !key.contains(' ')) =>
                {
                    format!("{rest}\n")
                }
                _ => format!("{line}\n"),
            })
            .collect();
        let file: FileConfig =
            toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(file.share.metrics_listen.as_deref(), Some("127.0.0.1:9311"));
    }
}
