//! Names of the environment variables warren reads, in one place.
//!
//! Each option can come from a flag, one of these variables, or the config
//! file, in that order of precedence; the declaration of each setting
//! (`config::settings`) names its flag and variable.

/// Store directory (`--dir`, config `dir`).
pub(crate) const WARREN_DIR: &str = "WARREN_DIR";
/// Config file path (`--config`).
pub(crate) const WARREN_CONFIG: &str = "WARREN_CONFIG";
/// Trim limit on store size (`--max-size`, config `max-size`), e.g. `10GiB`.
pub(crate) const WARREN_MAX_SIZE: &str = "WARREN_MAX_SIZE";
/// Trim limit on unused time (`--max-age`, config `max-age`), e.g. `7days`.
pub(crate) const WARREN_MAX_AGE: &str = "WARREN_MAX_AGE";
/// Log filter (`tracing` env-filter syntax, e.g. `debug`); `-v` overrides it.
pub(crate) const WARREN_LOG: &str = "WARREN_LOG";
/// Sharing with coworkers on (`1`, `true`) or off (`0`, `false`), over the
/// config file's `[share] enabled`.
pub(crate) const WARREN_SHARE: &str = "WARREN_SHARE";
/// This machine's identity as `warren keygen` prints its secret (base64 of
/// libp2p's protobuf encoding of the ed25519 keypair): for CI machines that
/// keep it as a secret, over `WARREN_IDENTITY_FILE` and the config
/// directory's `identity.key`.
pub(crate) const WARREN_IDENTITY: &str = "WARREN_IDENTITY";
/// A path to an identity key file as `warren init` writes it (owner-only),
/// over the config directory's `identity.key`.
pub(crate) const WARREN_IDENTITY_FILE: &str = "WARREN_IDENTITY_FILE";
