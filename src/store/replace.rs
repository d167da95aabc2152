//! Putting a file in place, and taking one away, without undoing what
//! another process did meanwhile: a whole object already there stays (it
//! may be on disk since a sync that completed), and a file is removed only
//! if it is still the one that was looked at.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt as _};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{DISCARDS, Error, executable, io_error, is_stale, layout, recovery};
use crate::fsutil::TEMP_PREFIX;
use crate::ids::OutputId;

/// Puts a verified body at `path`, unless an object is there already
/// that is whole: a regular file of the right size that hashes to its name
/// (read back to tell; one that cannot be read is not known to be damaged,
/// and stays). That one may be on disk since a sync that completed, and a
/// copy of the same bytes that is not must not take its place: a power
/// loss could then take away what was safe. A damaged one (the wrong size
/// or bytes, or not a file) is replaced, so a put or a fetch repairs it;
/// so is any one by a copy `synced` already (file by file, where the one
/// there may be a fetched body that never was). One kept counts as used
/// `now`: its path is handed out as a new one's would be, and trim must
/// see that. One kept that an older warren stored without the mark of an
/// `executable` gets it.
pub(super) fn persist_object(
    temp: tempfile::NamedTempFile,
    path: &Path,
    output: &OutputId,
    size: u64,
    executable: bool,
    now: SystemTime,
    synced: bool,
) -> Result<(), Error> {
    let temp = match temp.persist_noclobber(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => e.file,
        Err(e) => return Err(io_error("storing object", path)(e.error)),
    };
    let there = fs::symlink_metadata(path)
        .ok()
        .filter(|there| !synced && there.is_file() && there.len() == size);
    let whole = || match recovery::hashes_to(path, output) {
        Ok((good, _)) => good,
        Err(e) => {
            tracing::debug!("reading {} back: {e}; kept", path.display());
            true
        }
    };
    if let Some(there) = there
        && whole()
    {
        if is_stale(there.modified().ok(), now) {
            // Best effort, as a lookup's touch.
            let _ = File::open(path).and_then(|object| object.set_modified(now));
        }
        if executable && !executable::is_marked(&there) {
            // Best effort: unmarked, it only counts as another body.
            let _ = File::open(path).and_then(|object| {
                object.set_permissions(fs::Permissions::from_mode(executable::EXECUTABLE_MODE))
            });
        }
        // Dropping the temp file removes it.
        return Ok(());
    }
    temp.persist(path)
        .map_err(|e| io_error("storing object", path)(e.error))?;
    Ok(())
}

/// Marks the object file being stored a linked executable (see
/// `executable`).
pub(super) fn mark_executable(file: &File, path: &Path) -> Result<(), Error> {
    file.set_permissions(fs::Permissions::from_mode(executable::EXECUTABLE_MODE))
        .map_err(io_error("marking an executable", path))
}

/// Removes the file at `path`, which was `seen` so: moved aside first
/// (atomically), then removed only if it is that very file. A file another
/// process renamed into place meanwhile is put back, unless a newer one
/// took its place too. Whether `seen` was removed.
pub(crate) fn remove_seen(path: &Path, seen: &fs::Metadata) -> bool {
    let aside = layout::parent(path).join(format!(
        "{TEMP_PREFIX}discard-{}-{}",
        std::process::id(),
        DISCARDS.fetch_add(1, Ordering::Relaxed)
    ));
    match fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        Err(e) => {
            tracing::warn!("cannot remove cache file {}: {e}", path.display());
            return false;
        }
    }
    let same = fs::symlink_metadata(&aside)
        .is_ok_and(|moved| moved.dev() == seen.dev() && moved.ino() == seen.ino());
    if !same && fs::hard_link(&aside, path).is_ok() {
        tracing::debug!("{} was replaced meanwhile; kept", path.display());
    }
    if let Err(e) = fs::remove_file(&aside) {
        tracing::warn!("cannot remove {}: {e}", aside.display());
    }
    same
}
