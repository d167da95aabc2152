//! Settings on the command line: the global options that give them (made
//! from the declared settings, so a setting with a flag gets its option
//! and its variable here), and `warren config`, which shows every setting
//! with where its value came from.
//!
//! clap reads each option or, without it, its variable, and says which
//! gave it; the text goes to the setting's type to parse (see
//! `config::value`), so that a bad value is an error that names the
//! setting and where it came from, and `warren doctor` can report it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches};

use super::GLOBAL;
use crate::config::env;
use crate::config::{self, Config, Flagged, Given, Origin, Overrides, Setting};

/// The id and option of the config file, and its key in `Config::origin`.
const CONFIG: &str = "config";

/// The global options that give settings, as parsed.
#[derive(Debug, Default, Clone)]
pub(super) struct Flags(pub(super) Overrides);

impl clap::Args for Flags {
    fn augment_args(command: clap::Command) -> clap::Command {
        let config = Arg::new(CONFIG)
            .long(CONFIG)
            .env(env::WARREN_CONFIG)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("Config file [default: warren/config.toml in the platform config dir]");
        let mut args: Vec<Arg> = config::flags()
            .map(|Flagged { key, help, flag }| {
                Arg::new(key)
                    .long(flag.long)
                    .env(flag.env)
                    .value_name(flag.value_name)
                    .value_parser((flag.value_parser)())
                    .help(help)
                    .hide_short_help(flag.long_help_only)
            })
            .collect();
        // Listed after the store directory: where the store is, then where
        // its settings are.
        args.insert(1.min(args.len()), config);
        args.into_iter().fold(command, |command, arg| {
            command.arg(arg.global(true).help_heading(GLOBAL))
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl clap::FromArgMatches for Flags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let config = given(matches, CONFIG, CONFIG, env::WARREN_CONFIG).map(|given| Given {
            value: PathBuf::from(given.value),
            origin: given.origin,
        });
        let settings = config::flags()
            .filter_map(|Flagged { key, flag, .. }| {
                Some((key, given(matches, key, flag.long, flag.env)?))
            })
            .collect();
        Ok(Self(Overrides { config, settings }))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// Global option `id` as given on the command line (at any subcommand's
/// level), or else by its environment variable.
fn given(matches: &ArgMatches, id: &str, long: &'static str, var: &'static str) -> Option<Given> {
    let mut found = None;
    let mut level = Some(matches);
    while let Some(matches) = level {
        level = matches.subcommand().map(|(_, sub)| sub);
        let origin = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => Origin::Flag(long),
            Some(ValueSource::EnvVariable) => Origin::Env(var),
            _ => continue,
        };
        let Some(value) = matches.get_raw(id).and_then(|mut values| values.next()) else {
            continue;
        };
        found = Some(Given {
            value: value.to_owned(),
            origin,
        });
        if let Origin::Flag(_) = origin {
            break;
        }
    }
    found
}

/// Every effective setting, `[share]` included, each with where it came
/// from (a flag, the environment, the config file, or the default).
pub(super) fn show_config(config: &Config, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let file = match &config.file {
        Some(path) => path.display().to_string(),
        None => match config::default_config_path() {
            Some(path) => format!("none ({} does not exist)", path.display()),
            None => "none".into(),
        },
    };
    writeln!(out, "config file: {file}  ({})", config.origin(CONFIG))?;
    table(out, config, &config.store, config::Store::SETTINGS, 12)?;
    writeln!(out, "[share]")?;
    table(out, config, &config.share, config::Share::SETTINGS, 16)?;
    writeln!(out, "[bucket]")?;
    table(out, config, &config.bucket, config::Bucket::SETTINGS, 16)?;
    writeln!(out, "identity key:    {}", config.identity_path().display())?;
    writeln!(
        out,
        "allowlist:       {}",
        config.allowlist_path().display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// One line per setting of a table: `key:` (padded to `width`), its value,
/// and where it came from.
fn table<T>(
    out: &mut impl Write,
    config: &Config,
    values: &T,
    settings: &[Setting<T>],
    width: usize,
) -> std::io::Result<()> {
    for setting in settings {
        let label = format!("{}:", setting.key);
        let value = off_by_another(setting.key, (setting.show)(values), &config.share);
        let origin = config.origin(setting.key);
        writeln!(out, "{label:<width$} {value}  ({origin})")?;
    }
    Ok(())
}

/// `shown`, or what the setting comes to when another turns it off.
fn off_by_another(key: &str, shown: String, share: &config::Share) -> String {
    match key {
        "read-ahead" if share.agreement => "0 (off: agreement is on)".to_owned(),
        "replicate" => match crate::daemon::replicate::off_because(share) {
            Some(why) => format!("{shown} (off: {why})"),
            None => shown,
        },
        _ => shown,
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;
    use crate::cli::Cli;

    /// Every setting declared with a flag is a global option, with its
    /// variable named in `--help`, and counts as given by the flag at any
    /// subcommand's level.
    #[test]
    fn every_declared_flag_is_a_global_option_with_its_variable() {
        let help = Cli::command().render_long_help().to_string();
        let flags: Vec<Flagged> = config::flags().collect();
        assert!(flags.len() >= 4, "{flags:?}");
        for Flagged { key, flag, .. } in flags {
            let option = format!("--{} <{}>", flag.long, flag.value_name);
            assert!(help.contains(&option), "{option} in\n{help}");
            assert!(help.contains(&format!("[env: {}=", flag.env)), "{help}");
            let value = if flag.value_name == "BOOL" { "on" } else { "1" };
            for args in [
                ["warren", &format!("--{}", flag.long), value, "config"],
                ["warren", "config", &format!("--{}", flag.long), value],
            ] {
                let cli = Cli::try_parse_from(args).unwrap();
                assert_eq!(
                    cli.settings.0.settings.get(key),
                    Some(&Given {
                        value: value.into(),
                        origin: Origin::Flag(flag.long),
                    }),
                    "{args:?}"
                );
            }
        }
        let cli = Cli::try_parse_from(["warren", "stats", "--config", "/etc/w.toml"]).unwrap();
        assert_eq!(
            cli.settings.0.config,
            Some(Given {
                value: PathBuf::from("/etc/w.toml"),
                origin: Origin::Flag("config"),
            })
        );
    }
}
