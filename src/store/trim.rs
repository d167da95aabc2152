//! Use tracking and trimming, and the other whole-store walks: `clean`,
//! `verify` and `usage`.
//!
//! Trimming removes files unused for longer than the policy's
//! `max_unused`, then the least recently used files until the store fits
//! `max_size`, but never a file used within [`USE_GRACE`]: a running `go`
//! command may still hold its DiskPath. Since use is recorded at most
//! hourly, that means an mtime within [`TRIM_GRACE`] (3 hours). It runs under the trim lock, at
//! most once per [`TRIM_INTERVAL`] when automatic.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::layout;
use super::trim_clock::{self, Anchor};
use super::{DiskStore, Error, USE_GRACE, io_error};
use crate::fsutil::lock::FileLock;
use crate::fsutil::{TEMP_PREFIX, write_atomic_unsynced};
use crate::ids::OutputId;

/// What trim compares a file's mtime with: [`USE_GRACE`] plus
/// [`TOUCH_INTERVAL`](super::TOUCH_INTERVAL). Use is recorded at most once
/// per touch interval, so a file in use may carry an mtime up to that much
/// older than its last use; a grace of 2 hours on the mtime alone was 1
/// hour of real use.
pub(crate) const TRIM_GRACE: Duration =
    Duration::from_secs(USE_GRACE.as_secs() + super::TOUCH_INTERVAL.as_secs());
/// Automatic trims run at most this often.
pub(crate) const TRIM_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// How long `trim`/`clean` wait for another process's trim to finish.
const TRIM_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits for trimming; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TrimPolicy {
    /// Trim least recently used files until the store is at most this big.
    pub max_size: u64,
    /// Remove files unused for longer than this.
    pub max_unused: Duration,
}

/// What a trim, clean or verify did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct TrimReport {
    pub removed_files: u64,
    pub removed_bytes: u64,
    pub kept_files: u64,
    pub kept_bytes: u64,
}

/// Size of the store, for `warren stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Usage {
    pub entries: u64,
    pub objects: u64,
    pub bytes: u64,
    /// Objects that are linked executables (marked so when stored; see
    /// `executable`), and their bytes (part of `objects` and `bytes`).
    pub executables: u64,
    pub executable_bytes: u64,
}

impl DiskStore {
    /// True when an automatic trim is due (the last one is older than
    /// [`TRIM_INTERVAL`]). Costs one `stat`.
    pub(crate) fn trim_due(&self) -> bool {
        let marker = fs::metadata(layout::last_trim(&self.root)).and_then(|m| m.modified());
        match marker {
            Ok(last) => self.now().duration_since(last).unwrap_or_default() >= TRIM_INTERVAL,
            Err(_) => true,
        }
    }

    /// Trims the store by `policy`. With `wait` false, returns `Ok(None)` if
    /// another process is already trimming.
    pub(crate) fn trim(&self, policy: TrimPolicy, wait: bool) -> Result<Option<TrimReport>, Error> {
        self.trim_to(policy, wait, false)
    }

    /// For a disk that is full: trims the store to at most half its size
    /// (and `policy`), least recently used first, never a file used within
    /// the grace; `Ok(None)` if another process is trimming. One walk of
    /// the store.
    pub(crate) fn make_room(&self, policy: TrimPolicy) -> Result<Option<TrimReport>, Error> {
        self.trim_to(policy, false, true)
    }

    fn trim_to(
        &self,
        policy: TrimPolicy,
        wait: bool,
        halve: bool,
    ) -> Result<Option<TrimReport>, Error> {
        let Some(_lock) = self.trim_lock(wait)? else {
            return Ok(None);
        };
        let (now, anchor) = self.trim_now();
        let recent = |used: SystemTime| now.duration_since(used).unwrap_or_default() < TRIM_GRACE;
        let mut files = Vec::new();
        let mut report = TrimReport::default();
        for dir in [&self.actions, &self.objects] {
            walk_files(dir, &mut |file| {
                if file.temp {
                    // Leftovers of killed processes; live ones are recent.
                    if !recent(file.modified) {
                        remove_counted(&file.path, file.size, &mut report);
                    }
                } else {
                    files.push(file);
                }
            })?;
        }
        let max_size = if halve {
            let walked: u64 = files.iter().map(|f| f.size).sum();
            policy.max_size.min(walked / 2)
        } else {
            policy.max_size
        };
        let max_unused = policy.max_unused.max(TRIM_GRACE);
        files.retain(|file| {
            let unused = now.duration_since(file.modified).unwrap_or_default();
            if unused > max_unused {
                !remove_if_unchanged(file, &mut report)
            } else {
                true
            }
        });
        let mut total: u64 = files.iter().map(|f| f.size).sum();
        let mut kept_files = files.len() as u64;
        if total > max_size {
            files.sort_by_key(|f| f.modified);
            for file in &files {
                if total <= max_size || recent(file.modified) {
                    break;
                }
                if remove_if_unchanged(file, &mut report) {
                    total -= file.size;
                    kept_files -= 1;
                }
            }
            if total > max_size {
                tracing::debug!(
                    "store is {total} bytes, over its {max_size} byte limit, but the rest may have been used in the last {}",
                    humantime::format_duration(USE_GRACE)
                );
            }
        }
        report.kept_files = kept_files;
        report.kept_bytes = total;
        self.mark_trimmed(anchor)?;
        Ok(Some(report))
    }

    /// "Now" for a trim, and the anchor it leaves ([`trim_clock`]); reads
    /// the last one from the marker.
    pub(super) fn trim_now(&self) -> (SystemTime, Option<Anchor>) {
        let marker = layout::last_trim(&self.root);
        let last = read_small(&marker).and_then(|text| Anchor::parse(&text));
        trim_clock::trim_now(last.as_ref(), self.now(), (self.boot_clock)().as_ref())
    }

    /// Records "trimmed now" (by this store's wall clock) in the marker's
    /// mtime, and the trim clock's anchor in its text. Not synced: a sync
    /// commits the journal, which writes out every dirty page of the
    /// filesystem (a build's among them), and a `last-trim` that a power
    /// loss takes back only lets the next trim come early.
    pub(super) fn mark_trimmed(&self, anchor: Option<Anchor>) -> Result<(), Error> {
        let marker = layout::last_trim(&self.root);
        let text = anchor.map(|anchor| anchor.line()).unwrap_or_default();
        write_atomic_unsynced(&marker, text.as_bytes())?;
        File::open(&marker)
            .and_then(|file| file.set_modified(self.now()))
            .map_err(io_error("updating", &marker))
    }

    pub(super) fn trim_lock(&self, wait: bool) -> Result<Option<FileLock>, Error> {
        let path = layout::trim_lock(&self.root);
        Ok(if wait {
            Some(FileLock::acquire(&path, TRIM_LOCK_TIMEOUT)?)
        } else {
            FileLock::try_acquire(&path)?
        })
    }

    /// Removes every entry and object (`warren clean`). Running `go`
    /// commands that still hold a DiskPath lose it, as with `go clean -cache`.
    pub(crate) fn clean(&self) -> Result<TrimReport, Error> {
        let _lock = self.trim_lock(true)?;
        let mut report = TrimReport::default();
        for dir in [&self.actions, &self.objects] {
            walk_files(dir, &mut |file| {
                remove_counted(&file.path, file.size, &mut report);
            })?;
        }
        Ok(report)
    }

    /// Re-hashes every object and removes those that do not match their name.
    pub(crate) fn verify(&self) -> Result<TrimReport, Error> {
        let mut report = TrimReport::default();
        let mut failure = None;
        walk_files(&self.objects, &mut |file| {
            if file.temp || failure.is_some() {
                return;
            }
            let name = file.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let good = match (OutputId::from_hex(name), hash_file(&file.path)) {
                (Ok(expected), Ok(actual)) => expected == actual,
                (Err(_), _) => false,
                (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => return,
                (_, Err(e)) => {
                    failure = Some(io_error("reading object", &file.path)(e));
                    return;
                }
            };
            if good {
                report.kept_files += 1;
                report.kept_bytes += file.size;
            } else {
                tracing::warn!("removing corrupt object {}", file.path.display());
                remove_counted(&file.path, file.size, &mut report);
            }
        })?;
        failure.map_or(Ok(report), Err)
    }

    /// Counts entries, objects and bytes.
    pub(crate) fn usage(&self) -> Result<Usage, Error> {
        let mut usage = Usage::default();
        for (dir, is_entry) in [(&self.actions, true), (&self.objects, false)] {
            walk_files(dir, &mut |file| {
                if file.temp {
                    return;
                }
                if is_entry {
                    usage.entries += 1;
                } else {
                    usage.objects += 1;
                    if file.executable {
                        usage.executables += 1;
                        usage.executable_bytes += file.size;
                    }
                }
                usage.bytes += file.size;
            })?;
        }
        Ok(usage)
    }
}

/// The text of a small file of ours (never through a link); `None` if it
/// is gone, too long or not text.
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut text = String::new();
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .ok()?
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn hash_file(path: &Path) -> io::Result<OutputId> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(OutputId::from_bytes(hasher.finalize().into()))
}

pub(super) struct WalkedFile {
    ino: u64,
    pub(super) path: PathBuf,
    size: u64,
    modified: SystemTime,
    /// Its mtime or its ctime (a rename, a touch), whichever is later:
    /// when it last changed, for a recovery.
    pub(super) changed: SystemTime,
    pub(super) temp: bool,
    /// Marked a linked executable (objects only; see `executable`).
    pub(super) executable: bool,
}

/// Calls `visit` for each regular file in the shard directories under `dir`.
/// Files that vanish during the walk (another process trimming or renaming)
/// are skipped.
pub(super) fn walk_files(dir: &Path, visit: &mut dyn FnMut(WalkedFile)) -> Result<(), Error> {
    let shards = match fs::read_dir(dir) {
        Ok(shards) => shards,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("listing", dir)(e)),
    };
    for shard in shards {
        let shard = shard.map_err(io_error("listing", dir))?;
        // Only real shard directories: a symbolic link here would make a
        // trim or clean delete files wherever it points.
        if !shard.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let shard_path = shard.path();
        let files = match fs::read_dir(&shard_path) {
            Ok(files) => files,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            // A stray file where a shard directory should be.
            Err(e) if e.raw_os_error() == Some(20) => continue,
            Err(e) => return Err(io_error("listing", &shard_path)(e)),
        };
        for file in files {
            let Ok(file) = file else { continue };
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let name = file.file_name();
            visit(WalkedFile {
                ino: meta.ino(),
                temp: name.to_string_lossy().starts_with(TEMP_PREFIX),
                path: file.path(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(UNIX_EPOCH),
                changed: crate::fsutil::changed_at(&meta),
                executable: super::executable::is_marked(&meta),
            });
        }
    }
    Ok(())
}

/// Removes a file the walk chose, unless it was used (its mtime moved) or
/// replaced since the walk looked at it: a walk of a big store takes a
/// while, and an object handed to `go` meanwhile must stay. Returns whether
/// it was removed.
fn remove_if_unchanged(file: &WalkedFile, report: &mut TrimReport) -> bool {
    let unchanged = fs::symlink_metadata(&file.path).is_ok_and(|now| {
        now.ino() == file.ino && now.modified().unwrap_or(UNIX_EPOCH) == file.modified
    });
    unchanged && remove_counted(&file.path, file.size, report)
}

/// Removes a file for trim/clean; returns whether it was removed.
fn remove_counted(path: &Path, size: u64, report: &mut TrimReport) -> bool {
    match fs::remove_file(path) {
        Ok(()) => {
            report.removed_files += 1;
            report.removed_bytes += size;
            true
        }
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
            false
        }
    }
}

#[cfg(test)]
mod tests;
