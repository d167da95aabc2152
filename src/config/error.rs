//! What can go wrong while settings are read: every error names the file,
//! or the setting and where its value came from.

use std::path::PathBuf;

use super::origin::Origin;
use crate::fsutil::private::NotPrivate;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("reading config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that is not TOML, has an unknown key, or a bad value (toml's
    /// message shows the line, so the setting).
    #[error("parsing config file {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A bad value from a flag or a variable.
    #[error("invalid {setting} {value:?} ({origin}): {reason}")]
    Value {
        /// The setting as the file names it (`max-size`, `[share] enabled`).
        setting: String,
        value: String,
        origin: Origin,
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
