//! Recovery after a crash: nothing a crashed writer's marker covers
//! reaches `go` or a peer unverified, and nothing older is hashed again.
//!
//! A crash's marker (`dirty`: another boot's, another mount's, or one
//! whose sync failed) says what to distrust: files changed since its time,
//! less [`SLACK`] for a wall clock stepped back meanwhile. A file's mtime
//! or ctime tells when it changed: a rename sets the ctime, and a rename
//! that survived the crash took that ctime with it, in the same journal
//! transaction. Such an object must hash to its name; such an entry must
//! carry its check, bound to its action (`entry`), and name an object of
//! its size.
//!
//! It is done two ways, so that the first build after a crash need not
//! wait for a walk of the store:
//!
//! - lazily: a lookup that finds an entry or object changed since then
//!   verifies it before answering ([`Recovery::since`] says whether, and
//!   from when); an object that passed is not hashed again by the same
//!   process;
//! - by one sweep ([`DiskStore::recover`]), one process at a time under
//!   `recovery.lock`: a helper that finds a crash's marker starts
//!   `warren recover` in the background, the daemon a thread, and `warren
//!   verify` runs it first. It verifies every such file, removes those that
//!   fail or cannot be read, syncs the filesystem, and only then removes
//!   the markers it covered (each the very file it found, and only while
//!   no writer holds it). A sync that fails leaves a failed sync's marker
//!   behind (`dirty`).
//!
//! Markers of killed writers of this page cache need no check: the sweep
//! (or the next group commit) syncs and removes them.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::dirty::{self, Found, State};
use super::entry::{Binding, MAX_ENTRY_LEN, parse_entry};
use super::layout;
use super::trim::walk_files;
use super::{DiskStore, Error, io_error, remove_seen};
use crate::fsutil::{self, lock::FileLock};
use crate::ids::{ActionId, OutputId};

/// How far a file's times may lie before its marker's and still be
/// verified: a wall clock stepped back while a writer was at work.
pub(crate) const SLACK: Duration = Duration::from_secs(10 * 60);
/// How often a process that verifies lazily looks whether the recovery
/// is over (the markers gone).
const RECHECK: Duration = Duration::from_secs(1);
/// How long a sweep started in the background waits for the lock that a
/// probe (`warren doctor`) may hold for a moment; a sweep running holds it
/// longer, and then this one is not needed.
const PROBE_WAIT: Duration = Duration::from_secs(2);
/// How long `warren verify` waits for a recovery another process runs.
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// A recovery this process knows of; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Whether files changed since `since` must be verified: the fast
    /// path of every lookup.
    pending: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    since: SystemTime,
    /// The crashes' markers; the recovery is over when all are gone.
    markers: Vec<PathBuf>,
    checked: Instant,
    /// Objects (device, inode) verified by this process.
    verified: HashSet<(u64, u64)>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            since: UNIX_EPOCH,
            markers: Vec::new(),
            checked: Instant::now(),
            verified: HashSet::new(),
        }
    }
}

impl Recovery {
    /// The recovery that the markers `found` call for, if any.
    pub(crate) fn of(found: &[Found]) -> Self {
        let crashed: Vec<&Found> = found.iter().filter(|f| f.state == State::Crashed).collect();
        let Some(since) = distrusted_since(&crashed) else {
            return Self::default();
        };
        Self {
            pending: AtomicBool::new(true),
            inner: Mutex::new(Inner {
                since,
                markers: crashed.iter().map(|f| f.path.clone()).collect(),
                ..Inner::default()
            }),
        }
    }

    /// Joins the recovery that the crashes' markers among `found` call
    /// for, if any: one that a process learned of after it opened the
    /// store (a sync of its own failed).
    fn join(&self, found: &[Found]) {
        let crashed: Vec<&Found> = found.iter().filter(|f| f.state == State::Crashed).collect();
        let Some(since) = distrusted_since(&crashed) else {
            return;
        };
        let mut inner = self.lock();
        let was = self.pending.load(Ordering::Relaxed);
        inner.since = if was { inner.since.min(since) } else { since };
        for found in crashed {
            if !inner.markers.contains(&found.path) {
                inner.markers.push(found.path.clone());
            }
        }
        self.pending.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// While a recovery is pending: files changed at or after this time
    /// must be verified before use. Looks at most once per [`RECHECK`]
    /// whether the recovery is over.
    pub(crate) fn since(&self) -> Option<SystemTime> {
        if !self.pending.load(Ordering::Relaxed) {
            return None;
        }
        let mut inner = self.lock();
        if inner.checked.elapsed() >= RECHECK {
            self.recheck(&mut inner);
        }
        self.pending.load(Ordering::Relaxed).then_some(inner.since)
    }

    /// Whether the crashes' markers are gone: then the recovery is over.
    fn recheck(&self, inner: &mut Inner) {
        inner.checked = Instant::now();
        inner
            .markers
            .retain(|marker| fs::symlink_metadata(marker).is_ok());
        if inner.markers.is_empty() {
            self.pending.store(false, Ordering::Relaxed);
            inner.verified = HashSet::new();
        }
    }

    fn was_verified(&self, object: &fs::Metadata) -> bool {
        self.lock().verified.contains(&(object.dev(), object.ino()))
    }

    fn passed(&self, object: &fs::Metadata) {
        self.lock().verified.insert((object.dev(), object.ino()));
    }
}

/// The sweep's lock at `path`, if no other sweep holds it: one held only
/// for a moment (`warren doctor`'s probe) is waited for, silently, up to
/// [`PROBE_WAIT`].
fn try_lock_briefly(path: &Path) -> Result<Option<FileLock>, Error> {
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        if let Some(lock) = FileLock::try_acquire(path)? {
            return Ok(Some(lock));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// From when the crashes' markers `crashed` make files suspect.
fn distrusted_since(crashed: &[&Found]) -> Option<SystemTime> {
    let made = crashed.iter().map(|found| found.time).min()?;
    Some(made.checked_sub(SLACK).unwrap_or(UNIX_EPOCH))
}

/// Whether the file `meta` changed at or after `since`.
fn changed_since(meta: &fs::Metadata, since: SystemTime) -> bool {
    fsutil::changed_at(meta) >= since
}

/// What a lookup makes of a suspect entry or object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Suspect {
    /// Fine as it is (not suspect, or verified).
    Trusted,
    /// Fails; remove it, for this reason.
    Damaged(&'static str),
}

/// A sweep's findings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Recovered {
    /// Markers of crashes and of killed writers it cleared.
    pub markers: u64,
    /// Files changed since the crash that it verified.
    pub checked: u64,
    /// Of those, objects and entries that failed and were removed.
    pub removed_objects: u64,
    pub removed_entries: u64,
}

/// Markers as `warren doctor` tells them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MarkerCounts {
    pub live: usize,
    pub killed: usize,
    pub crashed: usize,
    /// A sweep is running now.
    pub sweeping: bool,
}

impl DiskStore {
    /// What a lookup makes of the entry `line` of `action`, read from a
    /// file `meta`.
    pub(super) fn check_entry(
        &self,
        action: &ActionId,
        line: &super::Line,
        meta: &fs::Metadata,
        since: Option<SystemTime>,
    ) -> Suspect {
        match line.binding(action) {
            Binding::Bound => Suspect::Trusted,
            Binding::Wrong => Suspect::Damaged("entry bound to another action"),
            Binding::Unchecked if since.is_some_and(|since| changed_since(meta, since)) => {
                Suspect::Damaged("entry without a check, changed since a crash")
            }
            Binding::Unchecked => Suspect::Trusted,
        }
    }

    /// What a lookup makes of the object `output` at `path`, found as
    /// `meta`, while a recovery is pending from `since`: one changed since
    /// then is hashed (once per process). A damaged one comes with the
    /// metadata of the very file found so.
    pub(super) fn check_object(
        &self,
        path: &Path,
        output: &OutputId,
        meta: &fs::Metadata,
        since: SystemTime,
    ) -> Result<(Suspect, fs::Metadata), Error> {
        if !changed_since(meta, since) || self.recovery.was_verified(meta) {
            return Ok((Suspect::Trusted, meta.clone()));
        }
        let (good, hashed) = match hashes_to(path, output) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((Suspect::Damaged("object gone"), meta.clone()));
            }
            Err(e) => return Err(io_error("verifying object", path)(e)),
        };
        if !good {
            return Ok((
                Suspect::Damaged("object changed since a crash does not hash to its name"),
                hashed,
            ));
        }
        self.recovery.passed(&hashed);
        Ok((Suspect::Trusted, hashed))
    }

    /// The store's markers, as `warren doctor` tells them.
    pub(crate) fn marker_counts(&self) -> Result<MarkerCounts, Error> {
        let mut counts = MarkerCounts::default();
        for found in dirty::scan(&self.dirty, self.cache.as_ref())? {
            match found.state {
                State::Live => counts.live += 1,
                State::Killed => counts.killed += 1,
                State::Crashed => counts.crashed += 1,
            }
        }
        // Probed only when it matters: a probe holds the lock for a
        // moment, and a sweep starting then waits a little for it.
        if counts.crashed > 0 {
            counts.sweeping = FileLock::try_acquire(&layout::recovery_lock(&self.root))?.is_none();
        }
        Ok(counts)
    }

    /// Looks at the markers again, and joins the recovery of any crash's
    /// among them (a process learns of one when it opens the store; the
    /// daemon, which runs for days, also after a sync of its own failed).
    pub(crate) fn rescan_markers(&self) {
        match dirty::scan(&self.dirty, self.cache.as_ref()) {
            Ok(found) => self.recovery.join(&found),
            Err(e) => tracing::debug!("reading the dirty markers: {}", crate::logging::chain(&e)),
        }
    }

    /// Whether a crash's marker was found when the store was opened, and
    /// is not cleared yet.
    pub(crate) fn recovery_pending(&self) -> bool {
        self.recovery.since().is_some()
    }

    /// The sweep of the module docs: verifies what every crash's marker
    /// covers, removes what fails, syncs, and clears the markers (those of
    /// killed writers too). With `wait` false, `Ok(None)` if another
    /// process sweeps now.
    pub(crate) fn recover(&self, wait: bool) -> Result<Option<Recovered>, Error> {
        let path = layout::recovery_lock(&self.root);
        let _lock = if wait {
            FileLock::acquire(&path, LOCK_TIMEOUT)?
        } else {
            match try_lock_briefly(&path)? {
                Some(lock) => lock,
                None => return Ok(None),
            }
        };
        let found = dirty::scan(&self.dirty, self.cache.as_ref())?;
        let crashed: Vec<&Found> = found.iter().filter(|f| f.state == State::Crashed).collect();
        let killed: Vec<&Found> = found.iter().filter(|f| f.state == State::Killed).collect();
        let mut report = Recovered::default();
        if crashed.is_empty() && killed.is_empty() {
            return Ok(Some(report));
        }
        // Opened before the sweep: the sync reports write-back errors
        // from then on.
        let root = File::open(&self.root).map_err(io_error("opening", &self.root))?;
        if let Some(since) = distrusted_since(&crashed) {
            self.sweep(since, &mut report)?;
        }
        // What the sweep removed, and what killed writers left, is on
        // disk before the markers that call for it go.
        if let Err(e) = fsutil::sync_filesystem(&root, &self.root) {
            dirty::after_failed_sync(&self.dirty, &found, None);
            return Err(e.into());
        }
        for found in crashed.iter().chain(&killed) {
            // Only the very file found, and only if no writer holds it
            // now.
            if dirty::remove_found(found) {
                report.markers += 1;
            }
        }
        let mut inner = self.recovery.lock();
        self.recovery.recheck(&mut inner);
        drop(inner);
        if report.removed_objects + report.removed_entries > 0 {
            tracing::info!(
                "recovered from a crash: {} of {} files changed since it were damaged and removed",
                report.removed_objects + report.removed_entries,
                report.checked
            );
        }
        Ok(Some(report))
    }

    /// Verifies every object, then every entry, changed at or after
    /// `since`, and removes those that fail. Objects first: an entry whose
    /// object went is removed with it.
    fn sweep(&self, since: SystemTime, report: &mut Recovered) -> Result<(), Error> {
        walk_files(&self.objects, &mut |file| {
            if file.temp || file.changed < since {
                return;
            }
            report.checked += 1;
            let name = file.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let verdict = match OutputId::from_hex(name) {
                Ok(output) => hashes_to(&file.path, &output),
                Err(_) => fs::symlink_metadata(&file.path).map(|meta| (false, meta)),
            };
            let seen = match verdict {
                Ok((true, _)) => return,
                Ok((false, seen)) => seen,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                // Unreadable (a bad sector): damaged like any other, and
                // the sweep goes on.
                Err(e) => {
                    tracing::debug!("reading {}: {e}", file.path.display());
                    match fs::symlink_metadata(&file.path) {
                        Ok(seen) => seen,
                        Err(_) => return,
                    }
                }
            };
            tracing::debug!("removing {}: damaged by a crash", file.path.display());
            if remove_seen(&file.path, &seen) {
                report.removed_objects += 1;
            }
        })?;
        walk_files(&self.actions, &mut |file| {
            if file.temp || file.changed < since {
                return;
            }
            report.checked += 1;
            let meta = match self.entry_is_whole(&file.path) {
                Ok((_, true)) => return,
                Ok((meta, false)) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) => {
                    tracing::debug!("reading {}: {e}", file.path.display());
                    match fs::symlink_metadata(&file.path) {
                        Ok(meta) => meta,
                        Err(_) => return,
                    }
                }
            };
            tracing::debug!("removing {}: damaged by a crash", file.path.display());
            if remove_seen(&file.path, &meta) {
                report.removed_entries += 1;
            }
        })
    }

    /// Whether the entry file at `path` is whole after a crash: a line
    /// with its check, bound to the action it is named for, naming an
    /// object of its size. With the metadata of the file read.
    fn entry_is_whole(&self, path: &Path) -> io::Result<(fs::Metadata, bool)> {
        let mut file = open_stored(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok((meta, false));
        }
        let mut text = Vec::with_capacity(MAX_ENTRY_LEN as usize);
        (&mut file).take(MAX_ENTRY_LEN + 1).read_to_end(&mut text)?;
        let action = (path.file_name().and_then(|name| name.to_str()))
            .and_then(|name| ActionId::from_hex(name).ok());
        let whole = match (parse_entry(&text), action) {
            (Some(line), Some(action)) if line.binding(&action) == Binding::Bound => {
                fs::symlink_metadata(self.object_path(&line.output))
                    .is_ok_and(|object| object.is_file() && object.len() == line.size)
            }
            _ => false,
        };
        Ok((meta, whole))
    }
}

/// Whether the file at `path` (not followed) hashes to `output`, with the
/// metadata of the very file hashed.
pub(super) fn hashes_to(path: &Path, output: &OutputId) -> io::Result<(bool, fs::Metadata)> {
    #[cfg(test)]
    if fsutil::test_hooks::FAIL_HASHES.get() {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::IO.raw_os_error(),
        ));
    }
    let mut file = open_stored(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok((false, meta));
    }
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok((
        OutputId::from_bytes(hasher.finalize().into()) == *output,
        meta,
    ))
}

/// Opens the store's file at `path` for reading: never through a link,
/// and never waiting on a FIFO put in its place.
pub(super) fn open_stored(path: &Path) -> io::Result<File> {
    use rustix::fs::OFlags;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(path)
}

#[cfg(test)]
mod tests;
