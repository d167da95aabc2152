//! Where a setting's value came from, as `warren config` shows it, and the
//! values the command line gives (a flag or its variable: clap reads both).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

/// Where a setting's value came from.
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

/// A value from a flag or a variable, as given: the setting's type parses
/// it (see `value::FromArg`), so that a bad one is an error that says where
/// it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Given<T = OsString> {
    pub value: T,
    /// [`Origin::Flag`] or [`Origin::Env`].
    pub origin: Origin,
}

/// What the command line gives: flags, or the variables clap reads for
/// them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    /// `--config` or `WARREN_CONFIG`: the file to read instead of the
    /// default one.
    pub config: Option<Given<PathBuf>>,
    /// Every other setting given, by its key in the file (`max-size`,
    /// `enabled`).
    pub settings: HashMap<&'static str, Given>,
}
