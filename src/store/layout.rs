//! Every name and path in the store, in one place: the root's files, the
//! layout version, the shard directories. Other modules ask for these
//! paths; none builds one itself. (The tree is drawn in the store's
//! module docs.)

use std::path::{Path, PathBuf};

/// Name of the current layout's directory under the root.
pub(crate) const LAYOUT_VERSION: &str = "v1";

/// Tells backup tools to skip the store (<https://bford.info/cachedir/>).
pub(super) const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
pub(super) const CACHEDIR_TAG_CONTENTS: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by warren.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";
/// Lifetime counters (see `crate::store::stats`), and the lock that merges them.
const STATS_FILE: &str = "stats.json";
const STATS_LOCK: &str = "stats.lock";
/// Held while trimming or cleaning.
const TRIM_LOCK: &str = "trim.lock";
/// Its mtime is when the store was last trimmed; its text, where trim's
/// clock stood then (`trim_clock::Anchor`).
const LAST_TRIM: &str = "last-trim";
/// Held while a recovery after a crash sweeps the store (`recovery`).
const RECOVERY_LOCK: &str = "recovery.lock";
/// Held by the running daemon (`warren daemon`).
const DAEMON_LOCK: &str = "daemon.lock";
/// The daemon's socket, in the store so that one daemon serves one store.
const DAEMON_SOCKET: &str = "daemon.sock";

pub(crate) fn stats_file(root: &Path) -> PathBuf {
    root.join(STATS_FILE)
}

pub(crate) fn stats_lock(root: &Path) -> PathBuf {
    root.join(STATS_LOCK)
}

pub(crate) fn trim_lock(root: &Path) -> PathBuf {
    root.join(TRIM_LOCK)
}

pub(super) fn last_trim(root: &Path) -> PathBuf {
    root.join(LAST_TRIM)
}

pub(crate) fn recovery_lock(root: &Path) -> PathBuf {
    root.join(RECOVERY_LOCK)
}

pub(crate) fn daemon_lock(root: &Path) -> PathBuf {
    root.join(DAEMON_LOCK)
}

pub(crate) fn daemon_socket(root: &Path) -> PathBuf {
    root.join(DAEMON_SOCKET)
}

/// The current layout's directory.
pub(super) fn version_dir(root: &Path) -> PathBuf {
    root.join(LAYOUT_VERSION)
}

/// The directory of dirty markers (`dirty`).
pub(crate) fn dirty_dir(root: &Path) -> PathBuf {
    version_dir(root).join("dirty")
}

/// The directories of action entries and of objects.
pub(super) fn data_dirs(root: &Path) -> (PathBuf, PathBuf) {
    let version = version_dir(root);
    (version.join("actions"), version.join("objects"))
}

/// The shard directory names, `00` to `ff`.
pub(super) fn shards() -> impl Iterator<Item = String> {
    (0..=u8::MAX).map(shard_name)
}

/// Shard `shard`'s directory name: two lowercase hex digits.
pub(crate) fn shard_name(shard: u8) -> String {
    format!("{shard:02x}")
}

/// The shard of an ID (an action or an output): its first byte, which
/// [`shard_path`] names by the first two hex digits.
pub(crate) fn shard_of(id: &[u8; 32]) -> u8 {
    id[0]
}

/// The shard a directory name is, if it is one of [`shards`].
pub(crate) fn shard_named(name: &str) -> Option<u8> {
    let shard = u8::from_str_radix(name, 16).ok()?;
    (name == shard_name(shard)).then_some(shard)
}

/// `<dir>/<first two hex digits>/<hex>`.
pub(super) fn shard_path(dir: &Path, hex: &str) -> PathBuf {
    let mut path = dir.join(&hex[..2]);
    path.push(hex);
    path
}

pub(super) fn parent(path: &Path) -> &Path {
    path.parent()
        .expect("store paths to have a shard directory")
}
