//! Settings from defaults, the file, flags and variables, and where each
//! came from.

#![expect(
    clippy::disallowed_methods,
    reason = "tests write config files, not store files"
)]

use std::ffi::OsString;
use std::time::Duration;

use warren_p2p::Compression;
use warren_p2p::config::defaults;

use super::settings::{DEFAULT_MAX_AGE, DEFAULT_MAX_SIZE};
use super::value::{parse_age, parse_listen, parse_size};
use super::*;

/// `value` for setting `key` as the flag `--long` gives it.
fn flag(key: &'static str, long: &'static str, value: &str) -> (&'static str, Given) {
    let origin = Origin::Flag(long);
    (
        key,
        Given {
            value: value.into(),
            origin,
        },
    )
}

/// The config file at `path`, as `--config` names it.
pub(crate) fn with_config(path: PathBuf) -> Overrides {
    Overrides {
        config: Some(Given {
            value: path,
            origin: Origin::Flag("config"),
        }),
        ..Overrides::default()
    }
}

/// `[share]` as it is with no config file.
pub(crate) fn default_share() -> Share {
    Config::resolve(&Overrides::default(), FileConfig::default(), None)
        .expect("the defaults resolve")
        .share
}

#[test]
fn defaults_apply_without_file_or_overrides() {
    let config = Config::resolve(&Overrides::default(), FileConfig::default(), None).unwrap();
    assert_eq!(
        config.store.trim_policy().max_size,
        DEFAULT_MAX_SIZE.as_u64()
    );
    assert_eq!(config.store.trim_policy().max_unused, DEFAULT_MAX_AGE);
    assert!(config.store.dir.ends_with("warren"));
}

#[test]
fn overrides_beat_the_file() {
    let file: FileConfig =
        toml::from_str("dir = \"/from/file\"\nmax-size = \"1GiB\"\nmax-age = \"3days\"\n").unwrap();
    let overrides = Overrides {
        settings: [
            flag("dir", "dir", "/from/flag"),
            flag("max-size", "max-size", "500 MB"),
        ]
        .into(),
        ..Overrides::default()
    };
    let config = Config::resolve(&overrides, file, None).unwrap();
    assert_eq!(config.store.dir, PathBuf::from("/from/flag"));
    assert_eq!(config.store.trim_policy().max_size, 500_000_000);
    assert_eq!(
        config.store.trim_policy().max_unused,
        Duration::from_secs(3 * 24 * 3600)
    );
}

/// `warren config` says where each setting came from.
#[test]
fn each_setting_knows_where_it_came_from() {
    let file: FileConfig =
        toml::from_str("max-age = \"2days\"\n[share]\nenabled = true\nmdns = false\n").unwrap();
    let from_env = Given {
        value: OsString::from("/from/env"),
        origin: Origin::Env("WARREN_DIR"),
    };
    let overrides = Overrides {
        settings: [("dir", from_env), flag("enabled", "share", "false")].into(),
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
        settings: [flag("enabled", "share", "false")].into(),
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
    let overrides = with_config(path);
    let err = Config::load(&overrides).unwrap_err();
    assert!(err.to_string().contains("config.toml"), "{err}");
}

/// A config others can edit decides whom we trust; a relative one moved
/// with the working directory.
#[test]
fn configs_others_can_write_are_refused_and_relative_ones_made_absolute() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[share]\nenabled = true\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
    let overrides = with_config(path.clone());
    let err = Config::load(&overrides).unwrap_err();
    let chain = crate::logging::chain(&err);
    assert!(
        chain.contains("refusing the config file") && chain.contains("chmod go-w"),
        "{chain}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(Config::load(&overrides).unwrap().share.enabled);
    // A missing one is a missing one, not a refused one.
    let missing = with_config(dir.path().join("none.toml"));
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
    let relative = with_config(relative_dir.join("config.toml"));
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
    let text = include_str!("../../examples/config.toml");
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
    let metrics_listen = file.share.metrics_listen.flatten().map(|at| at.to_string());
    assert_eq!(metrics_listen.as_deref(), Some("127.0.0.1:9311"));
}

/// Origins and flags are found by a setting's key, whatever its table: no
/// two settings share one, nor two options a name.
#[test]
fn setting_keys_are_unique_across_tables() {
    let once = |names: Vec<&'static str>| {
        let mut seen = std::collections::HashSet::new();
        for name in names {
            assert!(seen.insert(name), "{name} twice");
        }
    };
    let keys = Store::SETTINGS.iter().map(|setting| setting.key);
    once(
        keys.chain(Share::SETTINGS.iter().map(|setting| setting.key))
            .chain(["config"])
            .collect(),
    );
    once(
        flags()
            .map(|flagged| flagged.flag.long)
            .chain(["config"])
            .collect(),
    );
}

/// A bad value from a flag or a variable names the setting (with its
/// table) and where it came from.
#[test]
fn a_bad_given_value_names_its_setting_and_origin() {
    let error = |given: (&'static str, Given)| {
        let overrides = Overrides {
            settings: [given].into(),
            ..Overrides::default()
        };
        let config = Config::resolve(&overrides, FileConfig::default(), None);
        config.unwrap_err().to_string()
    };
    let from_env = Given {
        value: OsString::from("soon"),
        origin: Origin::Env("WARREN_MAX_AGE"),
    };
    let err = error(("max-age", from_env));
    assert!(
        err.starts_with("invalid max-age \"soon\" (env WARREN_MAX_AGE): "),
        "{err}"
    );
    let err = error(flag("enabled", "share", "maybe"));
    assert!(
        err.starts_with("invalid [share] enabled \"maybe\" (flag --share): "),
        "{err}"
    );
}
