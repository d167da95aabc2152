//! File helpers for everything warren writes: the store's files, and the
//! config, allowlist and statistics beside it.
//!
//! Every file is written to a temp file in its own directory and renamed
//! into place ([`write_atomic`]), so a reader sees the old file or the new
//! one, never half of one. Syncs are here too: of one file's data, of a
//! directory, and of a whole filesystem at once ([`sync_filesystem`], the
//! store's group commit). Temp files start with [`TEMP_PREFIX`]: the
//! store's trim knows leftovers of killed processes by it. Directories are
//! created owner-only, and [`private`] checks that one is ours alone.
//! Cross-process locks live in [`lock`].

pub(crate) mod lock;
pub(crate) mod private;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// The size of a filesystem, and what is free on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Space {
    /// Bytes an unprivileged process may still write.
    pub free: u64,
    pub total: u64,
}

/// [`Space`] of the filesystem that holds `path`; `None` if that cannot be
/// told.
pub(crate) fn space(path: &Path) -> Option<Space> {
    let stats = rustix::fs::statvfs(path).ok()?;
    Some(Space {
        free: stats.f_bavail.saturating_mul(stats.f_frsize),
        total: stats.f_blocks.saturating_mul(stats.f_frsize),
    })
}

/// Bytes an unprivileged process may still write on the filesystem that
/// holds `path`; `None` if that cannot be told.
pub(crate) fn free_space(path: &Path) -> Option<u64> {
    space(path).map(|space| space.free)
}

/// When the file `meta` last changed: its data (mtime) or its inode, a
/// rename included (ctime), whichever is later.
pub(crate) fn changed_at(meta: &std::fs::Metadata) -> std::time::SystemTime {
    use std::os::unix::fs::MetadataExt as _;
    use std::time::{Duration, UNIX_EPOCH};
    let changed = u64::try_from(meta.ctime())
        .ok()
        .and_then(|secs| {
            let nanos = u32::try_from(meta.ctime_nsec()).ok()?;
            UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        })
        .unwrap_or(UNIX_EPOCH);
    changed.max(meta.modified().unwrap_or(UNIX_EPOCH))
}

/// Names of temp files start with this.
pub(crate) const TEMP_PREFIX: &str = ".tmp";

/// A file operation failed; the message names the operation and the path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub(crate) struct Error {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Wraps an `io::Error` of `op` on `path`.
pub(crate) fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a temp file in `dir`, creating the directory on first use.
pub(crate) fn temp_file_in(dir: &Path) -> Result<NamedTempFile, Error> {
    let create = || {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(dir)
    };
    match create() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            private::create_dir_all(dir).map_err(io_error("creating directory", dir))?;
            create()
        }
        other => other,
    }
    .map_err(io_error("creating temp file in", dir))
}

/// `fdatasync` of a temp file about to be renamed into place.
pub(crate) fn sync_data(temp: &NamedTempFile) -> Result<(), Error> {
    temp.as_file()
        .sync_data()
        .map_err(io_error("syncing", temp.path()))
}

/// `fsync` of the directory `dir`: a rename or a new name in it is on
/// disk once this returns.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("syncing directory", dir))
}

/// Writes out everything of the filesystem that holds `opened` (a file or
/// directory at `path`) that is not on disk yet: `syncfs(2)`, every dirty
/// file, then one journal commit. It reports a write-back error met on
/// that filesystem since `opened` was opened, so a caller opens it before
/// the writes it means to sync. Linux only: elsewhere `Unsupported`.
pub(crate) fn sync_filesystem(opened: &std::fs::File, path: &Path) -> Result<(), Error> {
    #[cfg(test)]
    if test_hooks::FAIL_SYNCS.get() {
        let eio = io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error());
        return Err(io_error("syncing the filesystem of", path)(eio));
    }
    #[cfg(target_os = "linux")]
    let synced = rustix::fs::syncfs(opened).map_err(io::Error::from);
    #[cfg(not(target_os = "linux"))]
    let synced = {
        let _ = opened;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    };
    synced.map_err(io_error("syncing the filesystem of", path))
}

/// Writes `contents` to `path` through a temp file, only if `path` does not
/// exist (then nothing is written and the answer is `false`). Not synced:
/// the store's writes reach the disk by its group commit (see `store`'s
/// module docs).
pub(crate) fn write_new_unsynced(path: &Path, contents: &[u8]) -> Result<bool, Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = temp_file_in(dir)?;
    temp.write_all(contents)
        .map_err(io_error("writing", temp.path()))?;
    match temp.persist_noclobber(path) {
        Ok(_) => Ok(true),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error {
            op: "creating",
            path: path.to_path_buf(),
            source: e.error,
        }),
    }
}

/// Writes `contents` to `path` through a temp file and a rename. The data
/// is synced to disk before the rename, so after a power loss `path` holds
/// the old contents or the new, never a part or a hole (the rename itself
/// may be lost: the directory is not synced).
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), Error> {
    write_atomic_with(path, contents, true)
}

/// [`write_atomic`] without the sync: a reader still sees the old file or
/// the new one whole, but a power loss may leave it empty or with other
/// bytes. For the store's files, which its group commit syncs and a
/// recovery checks, and for files whose loss costs nothing (statistics).
pub(crate) fn write_atomic_unsynced(path: &Path, contents: &[u8]) -> Result<(), Error> {
    write_atomic_with(path, contents, false)
}

fn write_atomic_with(path: &Path, contents: &[u8], sync: bool) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = temp_file_in(dir)?;
    temp.write_all(contents)
        .map_err(io_error("writing", temp.path()))?;
    if sync {
        sync_data(&temp)?;
    }
    temp.persist(path).map_err(|e| Error {
        op: "replacing",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Faults tests inject, on the thread that sets them.
#[cfg(test)]
pub(crate) mod test_hooks {
    use std::cell::Cell;

    thread_local! {
        /// [`super::sync_filesystem`] fails with `EIO`, as on a failing disk.
        pub(crate) static FAIL_SYNCS: Cell<bool> = const { Cell::new(false) };
        /// Reading a stored object back to hash it fails with `EIO`.
        pub(crate) static FAIL_HASHES: Cell<bool> = const { Cell::new(false) };
    }
}
