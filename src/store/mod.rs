//! The local disk store: Go build outputs by OutputID, action entries by ActionID.
//!
//! # Layout
//!
//! ```text
//! <root>/                      default: $XDG_CACHE_HOME/warren (~/Library/Caches/warren on macOS)
//! ├── CACHEDIR.TAG             tells backup tools to skip the store
//! ├── stats.json               lifetime counters (see `stats`)
//! ├── stats.lock
//! ├── trim.lock                held while trimming or cleaning
//! ├── last-trim                its mtime is when the store was last trimmed
//! └── v1/                      layout version; a new layout gets a new directory
//!     ├── actions/00/ … ff/    one entry file per ActionID, named by its hex
//!     │                        "v1 <output hex> <size> <put time, unix ns>\n"
//!     └── objects/00/ … ff/    one body per OutputID, named by its hex (no extension)
//!                              (all 512 shard directories are made with the store)
//! ```
//!
//! # Writes
//!
//! Every file is written to a temp file (`.tmp*`) in its final directory and
//! renamed into place, so a reader sees a complete file or none. A put writes
//! the object first and the entry second, so an entry never points at a body
//! that is not there yet. Identical outputs are stored once: a body whose
//! object already exists (and was used recently enough not to be trimmed
//! underneath us) is hashed but not written again. Several warren processes
//! may write one store at once without locks: they only ever rename complete,
//! verified files over identical ones. Nothing is fsynced, like Go's own
//! cache: a killed process loses nothing that was answered, and after a power
//! loss a damaged file is caught by the read checks below.
//!
//! # Reads
//!
//! A read checks that the entry is well formed and the object has the
//! recorded size; anything else is a miss, and the broken file is removed so
//! it is never handed to `go` again. Reads do not re-hash bodies (that would
//! read ~180 MB on a warm `go build std`); `warren verify` does, on demand.
//! Bodies from outside the process (protocol puts, and peers later) are always
//! hashed before they land, by [`ObjectWriter`].
//!
//! # Use tracking and trimming
//!
//! A file's mtime records its last use, refreshed at most once per
//! [`TOUCH_INTERVAL`] as Go does. Trimming removes files unused for longer than
//! the policy's `max_unused`, then the least recently used files until the
//! store fits `max_size`, but never a file used within [`TRIM_GRACE`]: a
//! running `go` command may still hold its DiskPath. It runs under
//! `trim.lock`, at most once per [`TRIM_INTERVAL`] when automatic.

pub mod index;
#[cfg(target_os = "linux")]
mod watch;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::fsutil::lock::{FileLock, LockError};
use crate::fsutil::{self, TEMP_PREFIX, temp_file_in, write_atomic};
use crate::ids::{ActionId, OutputId};

/// Name of the current layout's directory under the root.
pub const LAYOUT_VERSION: &str = "v1";
/// A file's mtime is refreshed on use at most this often.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Files used more recently than this are never trimmed. It must exceed
/// [`TOUCH_INTERVAL`], since a file in use may look that much older.
pub const TRIM_GRACE: Duration = Duration::from_secs(2 * 60 * 60);
/// Automatic trims run at most this often.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// How long `trim`/`clean` wait for another process's trim to finish.
const TRIM_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries are one short line; anything longer is corrupt.
const MAX_ENTRY_LEN: u64 = 256;

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by warren.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "body does not match its OutputID: expected {expected_size} bytes with SHA-256 {expected}, got {actual_size} bytes with SHA-256 {actual}"
    )]
    Mismatch {
        expected: OutputId,
        expected_size: u64,
        actual: OutputId,
        actual_size: u64,
    },
    #[error("store path {} is not valid UTF-8", .0.display())]
    NotUtf8(PathBuf),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    File(#[from] fsutil::Error),
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A stored action: what `go` gets back on a hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub output: OutputId,
    pub size: u64,
    /// When the entry was put.
    pub time: SystemTime,
    /// Absolute path of the body.
    pub path: PathBuf,
}

/// The result of a lookup; a miss is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(Entry),
    Miss,
}

/// Source of "now", injectable so tests can age files.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Limits for trimming; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimPolicy {
    /// Trim least recently used files until the store is at most this big.
    pub max_size: u64,
    /// Remove files unused for longer than this.
    pub max_unused: Duration,
}

/// What a trim, clean or verify did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrimReport {
    pub removed_files: u64,
    pub removed_bytes: u64,
    pub kept_files: u64,
    pub kept_bytes: u64,
}

/// Size of the store, for `warren stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub entries: u64,
    pub objects: u64,
    pub bytes: u64,
}

/// The local store. Cheap to share behind an `Arc`; all methods do blocking
/// file I/O, so async callers run them in `spawn_blocking`.
pub struct DiskStore {
    root: PathBuf,
    actions: PathBuf,
    objects: PathBuf,
    clock: Clock,
    /// Corrupt or dangling files removed by reads since open.
    repaired: AtomicU64,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("root", &self.root)
            .finish()
    }
}

impl DiskStore {
    /// Opens (creating if needed) the store at `root`, with the system clock.
    pub fn open(root: &Path) -> Result<Self, Error> {
        Self::open_with_clock(root, Arc::new(SystemTime::now))
    }

    pub fn open_with_clock(root: &Path, clock: Clock) -> Result<Self, Error> {
        fs::create_dir_all(root).map_err(io_error("creating store directory", root))?;
        // DiskPath must be absolute; resolve once here.
        let root = fs::canonicalize(root).map_err(io_error("resolving store directory", root))?;
        if root.to_str().is_none() {
            return Err(Error::NotUtf8(root));
        }
        let version = root.join(LAYOUT_VERSION);
        let store = Self {
            actions: version.join("actions"),
            objects: version.join("objects"),
            root,
            clock,
            repaired: AtomicU64::new(0),
        };
        let tag = store.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            // A new store: make its shard directories up front, as Go's
            // cache does, rather than one by one on the first writes of a
            // build; tag it, and start the trim clock now so the first
            // automatic trim waits a full interval.
            store.make_shards()?;
            write_atomic(&tag, CACHEDIR_TAG.as_bytes())?;
            store.mark_trimmed()?;
        }
        Ok(store)
    }

    fn make_shards(&self) -> Result<(), Error> {
        for dir in [&self.actions, &self.objects] {
            for shard in 0..=u8::MAX {
                let path = dir.join(format!("{shard:02x}"));
                fs::create_dir_all(&path).map_err(io_error("creating directory", &path))?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of action entries (sharded by the first two hex digits).
    pub fn actions_dir(&self) -> &Path {
        &self.actions
    }

    /// Corrupt or dangling files that reads removed since this store was opened.
    pub fn repaired(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    fn entry_path(&self, action: &ActionId) -> PathBuf {
        shard_path(&self.actions, &action.to_hex())
    }

    fn object_path(&self, output: &OutputId) -> PathBuf {
        shard_path(&self.objects, &output.to_hex())
    }

    /// Looks up an action. Corrupt or dangling entries are removed and
    /// reported as a miss.
    pub fn get(&self, action: &ActionId) -> Result<Lookup, Error> {
        let entry_path = self.entry_path(action);
        let mut file = match File::open(&entry_path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(e) => return Err(io_error("opening entry", &entry_path)(e)),
        };
        let meta = file
            .metadata()
            .map_err(io_error("reading entry", &entry_path))?;
        if meta.len() > MAX_ENTRY_LEN {
            return Ok(self.discard(&entry_path, "entry too long"));
        }
        let mut text = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut text)
            .map_err(io_error("reading entry", &entry_path))?;
        let Some((output, size, time)) = parse_entry(&text) else {
            return Ok(self.discard(&entry_path, "malformed entry"));
        };
        let object_path = self.object_path(&output);
        let object_meta = match fs::metadata(&object_path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(self.discard(&entry_path, "entry without object"));
            }
            Err(e) => return Err(io_error("reading object", &object_path)(e)),
        };
        if !object_meta.is_file() || object_meta.len() != size {
            self.discard(&object_path, "object has the wrong size");
            return Ok(self.discard(&entry_path, "entry for a damaged object"));
        }
        let now = self.now();
        if is_stale(meta.modified().ok(), now) {
            // Best effort: a failed touch only makes an early trim likelier.
            let _ = file.set_modified(now);
        }
        if is_stale(object_meta.modified().ok(), now) {
            let _ = File::open(&object_path).and_then(|object| object.set_modified(now));
        }
        Ok(Lookup::Hit(Entry {
            output,
            size,
            time,
            path: object_path,
        }))
    }

    fn discard(&self, path: &Path, reason: &str) -> Lookup {
        tracing::debug!("removing {}: {reason}", path.display());
        match fs::remove_file(path) {
            Ok(()) => {
                self.repaired.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove damaged cache file {}: {e}", path.display()),
        }
        Lookup::Miss
    }

    /// Starts receiving a body that must hash to `output` and be `size` bytes.
    /// Write the body into the returned writer, then [`ObjectWriter::finish`]
    /// verifies it and [`DiskStore::commit`] stores it under an action.
    pub fn begin_object(&self, output: OutputId, size: u64) -> Result<ObjectWriter, Error> {
        let final_path = self.object_path(&output);
        let temp = if self.object_is_fresh(&final_path, size) {
            None
        } else {
            Some(temp_file_in(parent(&final_path))?)
        };
        Ok(ObjectWriter {
            output,
            size,
            final_path,
            temp,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// True if the object exists with the right size and was used recently
    /// enough that no trim can remove it before the put that reuses it lands.
    fn object_is_fresh(&self, path: &Path, size: u64) -> bool {
        fs::metadata(path).is_ok_and(|meta| {
            meta.is_file()
                && meta.len() == size
                && meta.modified().is_ok_and(|used| {
                    self.now().duration_since(used).unwrap_or_default() < TOUCH_INTERVAL
                })
        })
    }

    /// Stores a verified body (if not already present) and the entry that
    /// maps `action` to it. Returns the entry as a later `get` would.
    pub fn commit(&self, action: &ActionId, object: VerifiedObject) -> Result<Entry, Error> {
        let VerifiedObject {
            output,
            size,
            final_path,
            temp,
        } = object;
        if let Some(temp) = temp {
            temp.persist(&final_path).map_err(|e| Error::Io {
                op: "storing object",
                path: final_path.clone(),
                source: e.error,
            })?;
        }
        let time = self.now();
        let nanos = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let line = format!("{LAYOUT_VERSION} {} {size} {nanos}\n", output.to_hex());
        write_atomic(&self.entry_path(action), line.as_bytes())?;
        Ok(Entry {
            output,
            size,
            time,
            path: final_path,
        })
    }

    /// Convenience for tests and tools: stores `body` under `action`.
    pub fn put_bytes(&self, action: &ActionId, body: &[u8]) -> Result<Entry, Error> {
        let mut writer = self.begin_object(OutputId::of(body), body.len() as u64)?;
        writer
            .write_all(body)
            .map_err(io_error("writing object", &self.objects))?;
        let verified = writer.finish()?;
        self.commit(action, verified)
    }

    /// True when an automatic trim is due (the last one is older than
    /// [`TRIM_INTERVAL`]). Costs one `stat`.
    pub fn trim_due(&self) -> bool {
        let marker = fs::metadata(self.root.join("last-trim")).and_then(|m| m.modified());
        match marker {
            Ok(last) => self.now().duration_since(last).unwrap_or_default() >= TRIM_INTERVAL,
            Err(_) => true,
        }
    }

    /// Trims the store by `policy`. With `wait` false, returns `Ok(None)` if
    /// another process is already trimming.
    pub fn trim(&self, policy: TrimPolicy, wait: bool) -> Result<Option<TrimReport>, Error> {
        let Some(_lock) = self.trim_lock(wait)? else {
            return Ok(None);
        };
        let now = self.now();
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
        let max_unused = policy.max_unused.max(TRIM_GRACE);
        files.retain(|file| {
            let unused = now.duration_since(file.modified).unwrap_or_default();
            if unused > max_unused {
                remove_counted(&file.path, file.size, &mut report);
                false
            } else {
                true
            }
        });
        let mut total: u64 = files.iter().map(|f| f.size).sum();
        let mut kept_files = files.len() as u64;
        if total > policy.max_size {
            files.sort_by_key(|f| f.modified);
            for file in &files {
                if total <= policy.max_size || recent(file.modified) {
                    break;
                }
                if remove_counted(&file.path, file.size, &mut report) {
                    total -= file.size;
                    kept_files -= 1;
                }
            }
            if total > policy.max_size {
                tracing::debug!(
                    "store is {total} bytes, over its {} byte limit, but the rest was used in the last {}",
                    policy.max_size,
                    humantime::format_duration(TRIM_GRACE)
                );
            }
        }
        report.kept_files = kept_files;
        report.kept_bytes = total;
        self.mark_trimmed()?;
        Ok(Some(report))
    }

    /// Records "trimmed now" (by this store's clock) in the marker's mtime.
    fn mark_trimmed(&self) -> Result<(), Error> {
        let marker = self.root.join("last-trim");
        write_atomic(&marker, b"")?;
        File::open(&marker)
            .and_then(|file| file.set_modified(self.now()))
            .map_err(io_error("updating", &marker))
    }

    fn trim_lock(&self, wait: bool) -> Result<Option<FileLock>, Error> {
        let path = self.root.join("trim.lock");
        Ok(if wait {
            Some(FileLock::acquire(&path, TRIM_LOCK_TIMEOUT)?)
        } else {
            FileLock::try_acquire(&path)?
        })
    }

    /// Removes every entry and object (`warren clean`). Running `go`
    /// commands that still hold a DiskPath lose it, as with `go clean -cache`.
    pub fn clean(&self) -> Result<TrimReport, Error> {
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
    pub fn verify(&self) -> Result<TrimReport, Error> {
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
    pub fn usage(&self) -> Result<Usage, Error> {
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
                }
                usage.bytes += file.size;
            })?;
        }
        Ok(usage)
    }
}

/// Receives a body, hashing as it goes; see [`DiskStore::begin_object`].
pub struct ObjectWriter {
    output: OutputId,
    size: u64,
    final_path: PathBuf,
    /// `None` when an identical object is already stored: hash only.
    temp: Option<NamedTempFile>,
    hasher: Sha256,
    written: u64,
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.temp {
            Some(temp) => temp.write(buf)?,
            None => buf.len(),
        };
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter {
    /// Checks size and SHA-256. On a mismatch the temp file is deleted and
    /// nothing reaches the store.
    pub fn finish(self) -> Result<VerifiedObject, Error> {
        let actual = OutputId::from_bytes(self.hasher.finalize().into());
        if actual != self.output || self.written != self.size {
            return Err(Error::Mismatch {
                expected: self.output,
                expected_size: self.size,
                actual,
                actual_size: self.written,
            });
        }
        Ok(VerifiedObject {
            output: self.output,
            size: self.size,
            final_path: self.final_path,
            temp: self.temp,
        })
    }
}

/// A body whose size and hash matched; dropping it uncommitted deletes it.
pub struct VerifiedObject {
    output: OutputId,
    size: u64,
    final_path: PathBuf,
    temp: Option<NamedTempFile>,
}

impl VerifiedObject {
    pub fn output(&self) -> OutputId {
        self.output
    }
}

fn shard_path(dir: &Path, hex: &str) -> PathBuf {
    let mut path = dir.join(&hex[..2]);
    path.push(hex);
    path
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .expect("store paths to have a shard directory")
}

fn is_stale(used: Option<SystemTime>, now: SystemTime) -> bool {
    used.is_none_or(|used| now.duration_since(used).unwrap_or_default() >= TOUCH_INTERVAL)
}

fn parse_entry(text: &[u8]) -> Option<(OutputId, u64, SystemTime)> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('\n')?;
    let mut fields = text.split(' ');
    let (version, output, size, nanos) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if version != LAYOUT_VERSION || fields.next().is_some() {
        return None;
    }
    let output = OutputId::from_hex(output).ok()?;
    let size = size.parse().ok()?;
    let nanos: u64 = nanos.parse().ok()?;
    Some((output, size, UNIX_EPOCH + Duration::from_nanos(nanos)))
}

/// When the entry in `path` was put, read without touching or repairing
/// anything; `None` if it is gone or malformed.
pub fn entry_put_time(path: &Path) -> Option<SystemTime> {
    let mut text = Vec::with_capacity(MAX_ENTRY_LEN as usize);
    File::open(path)
        .ok()?
        .take(MAX_ENTRY_LEN)
        .read_to_end(&mut text)
        .ok()?;
    parse_entry(&text).map(|(_, _, time)| time)
}

fn hash_file(path: &Path) -> io::Result<OutputId> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(OutputId::from_bytes(hasher.finalize().into()))
}

struct WalkedFile {
    path: PathBuf,
    size: u64,
    modified: SystemTime,
    temp: bool,
}

/// Calls `visit` for each regular file in the shard directories under `dir`.
/// Files that vanish during the walk (another process trimming or renaming)
/// are skipped.
fn walk_files(dir: &Path, visit: &mut dyn FnMut(WalkedFile)) -> Result<(), Error> {
    let shards = match fs::read_dir(dir) {
        Ok(shards) => shards,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("listing", dir)(e)),
    };
    for shard in shards {
        let shard = shard.map_err(io_error("listing", dir))?;
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
                temp: name.to_string_lossy().starts_with(TEMP_PREFIX),
                path: file.path(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(UNIX_EPOCH),
            });
        }
    }
    Ok(())
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
#[expect(
    clippy::disallowed_methods,
    reason = "tests damage store files in place, as a crash or bit rot would"
)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A store whose clock the test moves.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: DiskStore,
        now: Arc<Mutex<SystemTime>>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let now = Arc::new(Mutex::new(SystemTime::now()));
            let clock = {
                let now = now.clone();
                Arc::new(move || *now.lock().unwrap())
            };
            let store = DiskStore::open_with_clock(dir.path(), clock).unwrap();
            Self {
                _dir: dir,
                store,
                now,
            }
        }

        fn advance(&self, by: Duration) {
            *self.now.lock().unwrap() += by;
        }

        fn hit(&self, action: &ActionId) -> Entry {
            match self.store.get(action).unwrap() {
                Lookup::Hit(entry) => entry,
                Lookup::Miss => panic!("expected a hit for {action}"),
            }
        }
    }

    fn action(n: u8) -> ActionId {
        ActionId::from_bytes([n; 32])
    }

    fn set_mtime(path: &Path, time: SystemTime) {
        File::open(path).unwrap().set_modified(time).unwrap();
    }

    #[test]
    fn put_then_get_returns_the_body_path() {
        let f = Fixture::new();
        let stored = f.store.put_bytes(&action(1), b"hello").unwrap();
        let entry = f.hit(&action(1));
        assert_eq!(entry, stored);
        assert!(entry.path.is_absolute());
        assert!(entry.path.extension().is_none());
        assert_eq!(fs::read(&entry.path).unwrap(), b"hello");
        assert_eq!(entry.output, OutputId::of(b"hello"));
        assert_eq!(f.store.get(&action(2)).unwrap(), Lookup::Miss);
    }

    #[test]
    fn zero_size_bodies_are_stored() {
        let f = Fixture::new();
        f.store.put_bytes(&action(1), b"").unwrap();
        let entry = f.hit(&action(1));
        assert_eq!(entry.size, 0);
        assert_eq!(fs::read(&entry.path).unwrap(), b"");
    }

    #[test]
    fn identical_outputs_are_stored_once() {
        let f = Fixture::new();
        let a = f.store.put_bytes(&action(1), b"same").unwrap();
        let b = f.store.put_bytes(&action(2), b"same").unwrap();
        assert_eq!(a.path, b.path);
        assert_eq!(
            f.store.usage().unwrap(),
            Usage {
                entries: 2,
                objects: 1,
                bytes: 4 + 2 * fs::metadata(f.store.entry_path(&action(1))).unwrap().len()
            }
        );
    }

    #[test]
    fn mismatched_bodies_never_land() {
        let f = Fixture::new();
        let mut writer = f.store.begin_object(OutputId::of(b"good"), 4).unwrap();
        writer.write_all(b"evil").unwrap();
        assert!(matches!(writer.finish(), Err(Error::Mismatch { .. })));
        let mut writer = f.store.begin_object(OutputId::of(b"good"), 4).unwrap();
        writer.write_all(b"goo").unwrap();
        assert!(matches!(writer.finish(), Err(Error::Mismatch { .. })));
        assert_eq!(f.store.usage().unwrap(), Usage::default());
        // No temp files are left behind either.
        let mut leftovers = 0;
        walk_files(&f.store.objects, &mut |_| leftovers += 1).unwrap();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn corrupt_entries_are_misses_and_removed() {
        let f = Fixture::new();
        for (n, damage) in [
            (1_u8, b"".as_slice()),
            (2, b"v1 zz 5 0\n"),
            (3, b"v1 1234"),
            (
                4,
                b"v2 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 0\n",
            ),
            (5, &[0xff; 300]),
        ] {
            f.store.put_bytes(&action(n), b"body").unwrap();
            fs::write(f.store.entry_path(&action(n)), damage).unwrap();
            assert_eq!(f.store.get(&action(n)).unwrap(), Lookup::Miss, "case {n}");
            assert!(!f.store.entry_path(&action(n)).exists(), "case {n}");
        }
        assert_eq!(f.store.repaired(), 5);
    }

    #[test]
    fn truncated_or_missing_objects_are_misses_and_removed() {
        let f = Fixture::new();
        let entry = f
            .store
            .put_bytes(&action(1), b"a body of some length")
            .unwrap();
        fs::write(&entry.path, b"a body").unwrap();
        assert_eq!(f.store.get(&action(1)).unwrap(), Lookup::Miss);
        assert!(!entry.path.exists());
        assert!(!f.store.entry_path(&action(1)).exists());

        let entry = f.store.put_bytes(&action(2), b"other").unwrap();
        fs::remove_file(&entry.path).unwrap();
        assert_eq!(f.store.get(&action(2)).unwrap(), Lookup::Miss);
        assert!(!f.store.entry_path(&action(2)).exists());
    }

    #[test]
    fn a_put_repairs_a_damaged_object_of_the_same_output() {
        let f = Fixture::new();
        let entry = f.store.put_bytes(&action(1), b"payload").unwrap();
        fs::write(&entry.path, b"PAYLOAD").unwrap(); // same size, wrong bytes
        f.advance(TOUCH_INTERVAL * 2); // not fresh: the put rewrites it
        f.store.put_bytes(&action(2), b"payload").unwrap();
        assert_eq!(fs::read(&entry.path).unwrap(), b"payload");
    }

    #[test]
    fn verify_removes_bit_rot() {
        let f = Fixture::new();
        let good = f.store.put_bytes(&action(1), b"fine").unwrap();
        let bad = f.store.put_bytes(&action(2), b"rotten").unwrap();
        fs::write(&bad.path, b"ROTTEN").unwrap();
        let report = f.store.verify().unwrap();
        assert_eq!((report.removed_files, report.kept_files), (1, 1));
        assert!(good.path.exists() && !bad.path.exists());
        assert_eq!(f.store.get(&action(2)).unwrap(), Lookup::Miss);
    }

    #[test]
    fn use_is_recorded_at_most_hourly() {
        let f = Fixture::new();
        let entry = f.store.put_bytes(&action(1), b"x").unwrap();
        let entry_path = f.store.entry_path(&action(1));
        let old = SystemTime::now() - Duration::from_secs(30 * 60);
        set_mtime(&entry_path, old);
        set_mtime(&entry.path, old);
        f.hit(&action(1));
        assert_eq!(
            fs::metadata(&entry_path).unwrap().modified().unwrap(),
            old,
            "touched too soon"
        );
        f.advance(Duration::from_secs(31 * 60));
        f.hit(&action(1));
        let now = *f.now.lock().unwrap();
        assert_eq!(fs::metadata(&entry_path).unwrap().modified().unwrap(), now);
        assert_eq!(fs::metadata(&entry.path).unwrap().modified().unwrap(), now);
    }

    #[test]
    fn trim_removes_unused_then_least_recently_used_but_never_recent() {
        let f = Fixture::new();
        let now = *f.now.lock().unwrap();
        let age = |hours: u64| now - Duration::from_secs(hours * 3600);
        let body = |n: u8| vec![n; 1000];
        // Ages in hours: 1 (recent: must survive), 3, 5, 24*30 (unused).
        for (n, hours) in [(1_u8, 1_u64), (2, 3), (3, 5), (4, 24 * 30)] {
            let entry = f.store.put_bytes(&action(n), &body(n)).unwrap();
            set_mtime(&entry.path, age(hours));
            set_mtime(&f.store.entry_path(&action(n)), age(hours));
        }
        let policy = TrimPolicy {
            max_size: 2500,
            max_unused: Duration::from_secs(7 * 24 * 3600),
        };
        let report = f.store.trim(policy, true).unwrap().unwrap();
        // Action 4 is unused; then the oldest (3, then 2) go until under 2500 bytes.
        assert_eq!(f.store.get(&action(4)).unwrap(), Lookup::Miss);
        assert_eq!(f.store.get(&action(3)).unwrap(), Lookup::Miss);
        f.hit(&action(2));
        f.hit(&action(1));
        assert!(report.removed_files >= 4, "{report:?}");

        // Even a tiny limit never removes what was used in the grace period.
        let tiny = TrimPolicy {
            max_size: 0,
            ..policy
        };
        f.store.trim(tiny, true).unwrap().unwrap();
        f.hit(&action(1));
        f.hit(&action(2)); // just touched by the hit above
    }

    #[test]
    fn trim_removes_stale_temp_files_only() {
        let f = Fixture::new();
        let shard = f.store.objects.join("ab");
        fs::create_dir_all(&shard).unwrap();
        let stale = shard.join(".tmpSTALE");
        let live = shard.join(".tmpLIVE");
        fs::write(&stale, b"x").unwrap();
        fs::write(&live, b"x").unwrap();
        set_mtime(&stale, SystemTime::now() - TRIM_GRACE * 2);
        let policy = TrimPolicy {
            max_size: u64::MAX,
            max_unused: Duration::MAX,
        };
        f.store.trim(policy, true).unwrap().unwrap();
        assert!(!stale.exists());
        assert!(live.exists());
    }

    #[test]
    fn trim_is_due_hourly_and_skips_when_locked() {
        let f = Fixture::new();
        assert!(!f.store.trim_due(), "a new store starts its trim clock");
        f.advance(TRIM_INTERVAL);
        assert!(f.store.trim_due());
        let policy = TrimPolicy {
            max_size: u64::MAX,
            max_unused: Duration::MAX,
        };
        let held = f.store.trim_lock(true).unwrap();
        assert_eq!(f.store.trim(policy, false).unwrap(), None);
        drop(held);
        assert!(f.store.trim(policy, false).unwrap().is_some());
        assert!(!f.store.trim_due());
    }

    #[test]
    fn clean_empties_the_store() {
        let f = Fixture::new();
        f.store.put_bytes(&action(1), b"one").unwrap();
        f.store.put_bytes(&action(2), b"two").unwrap();
        let report = f.store.clean().unwrap();
        assert_eq!(report.removed_files, 4);
        assert_eq!(f.store.usage().unwrap(), Usage::default());
        assert_eq!(f.store.get(&action(1)).unwrap(), Lookup::Miss);
        f.store.put_bytes(&action(1), b"one").unwrap();
        f.hit(&action(1));
    }

    #[test]
    fn concurrent_writers_of_one_store_agree() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let root = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let store = DiskStore::open(&root).unwrap();
                    for n in 0..200_u32 {
                        let body = (n % 50).to_le_bytes().repeat(100 + t);
                        let action = ActionId::from_bytes(Sha256::digest(n.to_le_bytes()).into());
                        store.put_bytes(&action, &body).unwrap();
                        if let Lookup::Hit(entry) = store.get(&action).unwrap() {
                            let read = fs::read(&entry.path).unwrap();
                            assert_eq!(OutputId::of(&read), entry.output);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let store = DiskStore::open(dir.path()).unwrap();
        assert_eq!(store.usage().unwrap().entries, 200);
        assert_eq!(store.verify().unwrap().removed_files, 0);
    }
}
