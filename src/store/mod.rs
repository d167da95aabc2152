//! The local disk store: Go build outputs by OutputID, action entries by ActionID.
//!
//! # Layout
//!
//! ```text
//! <root>/                      default: $XDG_CACHE_HOME/warren (~/Library/Caches/warren on macOS)
//! ├── CACHEDIR.TAG             tells backup tools to skip the store
//! ├── stats.json               lifetime counters (see [`stats`])
//! ├── stats.lock
//! ├── trim.lock                held while trimming or cleaning
//! ├── last-trim                its mtime is when the store was last trimmed; its
//! │                            text, where trim's clock stood (see `trim_clock`)
//! ├── daemon.lock              held by the running `warren daemon`
//! ├── daemon.sock              its socket for helpers (see `ipc`)
//! └── v1/                      layout version; a new layout gets a new directory
//!     ├── actions/00/ … ff/    one entry file per ActionID, named by its hex
//!     │                        "v1 <output hex> <size> <put time, unix ns> <source>\n"
//!     └── objects/00/ … ff/    one body per OutputID, named by its hex (no extension)
//!                              (all 512 shard directories are made with the store)
//! ```
//!
//! # Writes
//!
//! Every file is written to a temp file (`.tmp*`) in its final directory and
//! renamed into place, so a reader sees a complete file or none. A put writes
//! the object first and the entry second, so an entry never points at a body
//! that is not there yet. Identical outputs are stored once: a put renames
//! its verified bytes over the object of the same OutputID (so a damaged one
//! of the right size is repaired, not kept). A body fetched from a peer
//! never replaces a whole object (one of the right size): it is not synced
//! (below), and the object there may be what `go` put and synced. Several
//! warren processes may write one store at once without locks: they only
//! ever rename complete, verified files over identical ones.
//!
//! What `go` puts is synced (`fdatasync`) before its rename, the object
//! before the entry is written: a killed process loses nothing that was
//! answered, and after a power loss every entry of a put that is there
//! names a complete object (a put of the last moments may be missing: a
//! miss). Directories are not synced. Go's own cache syncs nothing; what
//! the sync costs a build is in docs/benchmarks.md. Bodies fetched from
//! peers are not synced: the daemon commits small ones on its one async
//! thread, where a sync per body would hold up every other fetch, and they
//! are only a copy of what the peer holds.
//! After a power loss such an entry may name an object that lost its
//! data; on ext4, XFS and APFS that object comes back shorter than its
//! entry says (their on-disk size follows the data written), and the read
//! check below makes it a miss.
//!
//! # Reads
//!
//! A read checks that the entry is well formed and the object has the
//! recorded size; anything else is a miss, and the broken file is removed so
//! it is never handed to `go` again. Reads do not re-hash bodies (that would
//! read every body a warm build uses, on its critical path); `warren
//! verify` does, on demand.
//! Bodies from outside the process (protocol puts, and peers later) are always
//! hashed before they land, by [`ObjectWriter`].
//!
//! # Modules
//!
//! [`layout`] names every path above; `entry` reads and writes the entry
//! line with its provenance ([`Source`]); `writer` verifies bodies on their
//! way in; `trim` walks the store (trim, clean, verify, usage), by the
//! clock of `trim_clock` (the wall clock, held back after a forward jump);
//! `provenance` counts and purges entries by source; [`stats`] keeps the
//! lifetime counters in `stats.json`. The daemon's index of put order
//! (`daemon::put_order`, kept current by inotify) reads entries too, for
//! peers' hints and summaries.
//!
//! # Use tracking and trimming
//!
//! A file's mtime records its last use, refreshed at most once per
//! [`TOUCH_INTERVAL`] as Go does. Trimming removes files unused for longer than
//! the policy's `max_unused`, then the least recently used files until the
//! store fits `max_size`, but never a file used within
//! [`USE_GRACE`] (an mtime within
//! [`TRIM_GRACE`](trim::TRIM_GRACE), which allows for the touch interval): a
//! running `go` command may still hold its DiskPath; a file whose mtime
//! lies in the future counts as just used, and a forward jump of the wall
//! clock is held back by the boot clock (`trim_clock`). It runs under
//! `trim.lock`, at most once per [`TRIM_INTERVAL`](trim::TRIM_INTERVAL) when automatic.

mod entry;
pub(crate) mod layout;
mod provenance;
pub(crate) mod stats;
pub(crate) mod trim;
mod trim_clock;
mod writer;

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use self::entry::MAX_ENTRY_LEN;
pub(crate) use self::entry::{Line, Source, entry_line, parse_entry, read_entry};
use self::layout::{CACHEDIR_TAG, CACHEDIR_TAG_CONTENTS, shard_path};
pub(crate) use self::provenance::SourceUsage;
pub(crate) use self::trim::{TrimPolicy, TrimReport};
use self::trim_clock::BootClock;
pub(crate) use self::writer::{ObjectWriter, VerifiedObject};
use crate::fsutil::TEMP_PREFIX;
use crate::fsutil::lock::LockError;
use crate::fsutil::private::{self, NotPrivate};
use crate::fsutil::{self, write_atomic};
use crate::ids::{ActionId, OutputId};
use libp2p_identity::PeerId;

/// Names of files moved aside to be discarded, unique in this process.
static DISCARDS: AtomicU64 = AtomicU64::new(0);

/// Whether a commit replaces an entry already there.
#[derive(Debug, Clone, Copy)]
enum Replace {
    Yes,
    No,
}

/// A file's mtime is refreshed on use at most this often.
pub(crate) const TOUCH_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Files used within this long are never trimmed: a running `go` command
/// may still hold their DiskPath. Trim compares mtimes with it
/// ([`trim::TRIM_GRACE`]), and its clock holds back for it after a jump
/// (`trim_clock`).
pub(crate) const USE_GRACE: Duration = Duration::from_secs(2 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A file operation failed (it names the operation and the path).
    #[error(transparent)]
    File(#[from] fsutil::Error),
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
    NotPrivate(#[from] NotPrivate),
    #[error(
        "the store {} is no longer the directory warren opened: it was moved or replaced",
        .0.display()
    )]
    Replaced(PathBuf),
}

/// [`fsutil::io_error`], as a store error.
fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::File(fsutil::io_error(op, path)(source))
}

/// A stored action: what `go` gets back on a hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub output: OutputId,
    pub size: u64,
    /// When the entry was put.
    pub time: SystemTime,
    /// Built here or fetched from a peer.
    pub source: Source,
    /// Absolute path of the body.
    pub path: PathBuf,
}

/// The result of a lookup; a miss is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Hit(Entry),
    Miss,
}

/// Source of "now", injectable so tests can age files.
pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The local store. Cheap to share behind an `Arc`; all methods do blocking
/// file I/O, so async callers run them in `spawn_blocking`.
pub(crate) struct DiskStore {
    root: PathBuf,
    actions: PathBuf,
    objects: PathBuf,
    clock: Clock,
    /// Holds trim's clock back after the wall clock jumps ahead
    /// ([`trim_clock`]).
    boot_clock: BootClock,
    /// Corrupt or dangling files removed by reads since open.
    repaired: AtomicU64,
    /// The root directory as opened (device, inode): warren works by path,
    /// so [`DiskStore::check_unchanged`] tells if another took its place.
    identity: (u64, u64),
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
    pub(crate) fn open(root: &Path) -> Result<Self, Error> {
        Self::open_with_clocks(
            root,
            Arc::new(SystemTime::now),
            Arc::new(trim_clock::system_boot_clock),
        )
    }

    /// With an injected wall clock, and no boot clock (tests move the wall
    /// clock by hand).
    #[cfg(test)]
    pub(crate) fn open_with_clock(root: &Path, clock: Clock) -> Result<Self, Error> {
        Self::open_with_clocks(root, clock, Arc::new(|| None))
    }

    pub(crate) fn open_with_clocks(
        root: &Path,
        clock: Clock,
        boot_clock: BootClock,
    ) -> Result<Self, Error> {
        private::create_dir_all(root).map_err(io_error("creating store directory", root))?;
        // DiskPath must be absolute; resolve once here.
        let root = fs::canonicalize(root).map_err(io_error("resolving store directory", root))?;
        if root.to_str().is_none() {
            return Err(Error::NotUtf8(root));
        }
        let (actions, objects) = layout::data_dirs(&root);
        // Ours alone, or not used at all: whoever can write here can plant
        // entries in our builds, and whoever can write above can swap it
        // (see `fsutil::private`). The shards below are made owner-only
        // inside these.
        let identity = check_private(&root, &actions, &objects)?;
        let store = Self {
            actions,
            objects,
            root,
            clock,
            boot_clock,
            repaired: AtomicU64::new(0),
            identity,
        };
        let tag = store.root.join(CACHEDIR_TAG);
        if !tag.exists() {
            // A new store: make its shard directories up front, as Go's
            // cache does, rather than one by one on the first writes of a
            // build; tag it, and start the trim clock now so the first
            // automatic trim waits a full interval.
            store.make_shards()?;
            write_atomic(&tag, CACHEDIR_TAG_CONTENTS.as_bytes())?;
            store.mark_trimmed(store.trim_now().1)?;
        }
        Ok(store)
    }

    /// Whether the store is still the directory this one opened, and still
    /// ours alone (it and every directory above it): the daemon runs for
    /// days, and the store is used by path. A few `lstat`s.
    pub(crate) fn check_unchanged(&self) -> Result<(), Error> {
        let identity = check_private(&self.root, &self.actions, &self.objects)?;
        if identity != self.identity {
            return Err(Error::Replaced(self.root.clone()));
        }
        Ok(())
    }

    fn make_shards(&self) -> Result<(), Error> {
        for dir in [&self.actions, &self.objects] {
            for shard in layout::shards() {
                let path = dir.join(shard);
                private::create_dir_all(&path).map_err(io_error("creating directory", &path))?;
            }
        }
        Ok(())
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of action entries (sharded by the first two hex digits).
    pub(crate) fn actions_dir(&self) -> &Path {
        &self.actions
    }

    /// Corrupt or dangling files that reads removed since this store was opened.
    pub(crate) fn repaired(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// Where the entry of `action` is (or would be).
    pub(crate) fn entry_path(&self, action: &ActionId) -> PathBuf {
        shard_path(&self.actions, &action.to_hex())
    }

    pub(crate) fn object_path(&self, output: &OutputId) -> PathBuf {
        shard_path(&self.objects, &output.to_hex())
    }

    /// Whether an entry for `action` is here (a [`get`](Self::get) that
    /// hits; an error counts as not here).
    pub(crate) fn holds(&self, action: &ActionId) -> bool {
        matches!(self.get(action), Ok(Lookup::Hit(_)))
    }

    /// Looks up an action. Corrupt or dangling entries are removed and
    /// reported as a miss.
    pub(crate) fn get(&self, action: &ActionId) -> Result<Lookup, Error> {
        let entry_path = self.entry_path(action);
        // Never through a symbolic link: the store's files are its own.
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&entry_path);
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Ok(match fs::symlink_metadata(&entry_path) {
                    Ok(seen) => self.discard(&entry_path, &seen, "entry is a symbolic link"),
                    Err(_) => Lookup::Miss,
                });
            }
            Err(e) => return Err(io_error("opening entry", &entry_path)(e)),
        };
        let meta = file
            .metadata()
            .map_err(io_error("reading entry", &entry_path))?;
        if meta.len() > MAX_ENTRY_LEN {
            return Ok(self.discard(&entry_path, &meta, "entry too long"));
        }
        let mut text = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut text)
            .map_err(io_error("reading entry", &entry_path))?;
        let Some(Line {
            output,
            size,
            time,
            source,
        }) = parse_entry(&text)
        else {
            return Ok(self.discard(&entry_path, &meta, "malformed entry"));
        };
        let object_path = self.object_path(&output);
        let object_meta = match fs::symlink_metadata(&object_path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(self.discard(&entry_path, &meta, "entry without object"));
            }
            Err(e) => return Err(io_error("reading object", &object_path)(e)),
        };
        if !object_meta.is_file() || object_meta.len() != size {
            self.discard(&object_path, &object_meta, "object has the wrong size");
            return Ok(self.discard(&entry_path, &meta, "entry for a damaged object"));
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
            source,
            path: object_path,
        }))
    }

    /// Removes the damaged file at `path`, which was `seen` so, with
    /// [`remove_seen`]: a good file committed in its place meanwhile stays.
    fn discard(&self, path: &Path, seen: &fs::Metadata, reason: &str) -> Lookup {
        tracing::debug!("removing {}: {reason}", path.display());
        if remove_seen(path, seen) {
            self.repaired.fetch_add(1, Ordering::Relaxed);
        }
        Lookup::Miss
    }

    /// Removes the object of `output`, found not to hash to its name when
    /// it was read as the file `seen` (to serve `action`), and the entry of
    /// `action` that named it. A good object committed in its place since
    /// stays, and so does the entry then. Whether the object was removed.
    pub(crate) fn discard_damaged(
        &self,
        action: &ActionId,
        output: &OutputId,
        seen: &fs::Metadata,
    ) -> bool {
        let path = self.object_path(output);
        tracing::debug!("removing {}: it does not hash to its name", path.display());
        let removed = remove_seen(&path, seen);
        if removed {
            self.repaired.fetch_add(1, Ordering::Relaxed);
        }
        // An entry whose object is gone is removed by the lookup, which
        // keeps one that names another object or a good one put since.
        let _ = self.get(action);
        removed
    }

    /// Stores a verified body (if not already present) and the entry that
    /// maps `action` to it. Returns the entry as a later `get` would.
    pub(crate) fn commit(&self, action: &ActionId, object: VerifiedObject) -> Result<Entry, Error> {
        self.store(action, object, Replace::Yes, Source::Local)
    }

    /// Like [`DiskStore::commit`], for a body fetched after a local miss:
    /// if an entry for `action` landed meanwhile (`go` built and put it
    /// while the fetch was on its way), that one stays, and is returned.
    /// The entry records `from` as its source.
    pub(crate) fn commit_fetched(
        &self,
        action: &ActionId,
        object: VerifiedObject,
        from: PeerId,
    ) -> Result<Entry, Error> {
        self.store(action, object, Replace::No, Source::Peer(from))
    }

    fn store(
        &self,
        action: &ActionId,
        object: VerifiedObject,
        replace: Replace,
        source: Source,
    ) -> Result<Entry, Error> {
        let VerifiedObject {
            output,
            size,
            final_path,
            temp,
        } = object;
        // On disk before any entry can name it; see the module docs for
        // why fetched bodies are not synced.
        if source.peer().is_none() {
            fsutil::sync_data(&temp)?;
            temp.persist(&final_path)
                .map_err(|e| io_error("storing object", &final_path)(e.error))?;
        } else {
            persist_fetched(temp, &final_path, size)?;
        }
        let time = self.now();
        let line = entry_line(&output, size, time, &source);
        let entry_path = self.entry_path(action);
        match replace {
            Replace::Yes => write_atomic(&entry_path, line.as_bytes())?,
            Replace::No => {
                // Only fetched bodies are committed so, and they are not
                // synced (see the module docs).
                if !fsutil::write_new_unsynced(&entry_path, line.as_bytes())? {
                    if let Lookup::Hit(existing) = self.get(action)? {
                        return Ok(existing);
                    }
                    // It was damaged, and is gone now: ours takes its place.
                    fsutil::write_atomic_unsynced(&entry_path, line.as_bytes())?;
                }
            }
        }
        Ok(Entry {
            output,
            size,
            time,
            source,
            path: final_path,
        })
    }

    /// Convenience for tests and tools: stores `body` under `action`.
    #[cfg(test)]
    pub(crate) fn put_bytes(&self, action: &ActionId, body: &[u8]) -> Result<Entry, Error> {
        use std::io::Write as _;
        let mut writer = self.begin_object(OutputId::of(body), body.len() as u64)?;
        writer
            .write_all(body)
            .map_err(io_error("writing object", &self.objects))?;
        let verified = writer.finish()?;
        self.commit(action, verified)
    }
}

/// Puts a fetched (unsynced) body at `path`, unless a whole object is
/// there already (a regular file of the right size: its name is its
/// OutputID): that one may be what `go` put and synced, and a copy that a
/// power loss can take away must not replace it. A damaged one (the wrong
/// size, or not a file) is replaced.
fn persist_fetched(temp: tempfile::NamedTempFile, path: &Path, size: u64) -> Result<(), Error> {
    let temp = match temp.persist_noclobber(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => e.file,
        Err(e) => return Err(io_error("storing object", path)(e.error)),
    };
    let whole =
        fs::symlink_metadata(path).is_ok_and(|there| there.is_file() && there.len() == size);
    if whole {
        // Dropping the temp file removes it.
        return Ok(());
    }
    temp.persist(path)
        .map_err(|e| io_error("storing object", path)(e.error))?;
    Ok(())
}

/// Checks that the store at `root` (canonical) is its user's alone, and
/// everything above it safe from others ([`private`]); the root's
/// (device, inode).
fn check_private(root: &Path, actions: &Path, objects: &Path) -> Result<(u64, u64), Error> {
    private::check_dir(root)?;
    private::check_above(root)?;
    for dir in [&layout::version_dir(root), actions, objects] {
        match private::check_dir(dir) {
            Err(NotPrivate::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            checked => checked?,
        }
    }
    let meta = fs::symlink_metadata(root).map_err(io_error("checking", root))?;
    Ok((meta.dev(), meta.ino()))
}

/// Removes the file at `path`, which was `seen` so: moved aside first
/// (atomically), then removed only if it is that very file. A file another
/// process renamed into place meanwhile is put back, unless a newer one
/// took its place too. Whether `seen` was removed.
fn remove_seen(path: &Path, seen: &fs::Metadata) -> bool {
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

fn is_stale(used: Option<SystemTime>, now: SystemTime) -> bool {
    used.is_none_or(|used| now.duration_since(used).unwrap_or_default() >= TOUCH_INTERVAL)
}

#[cfg(test)]
mod tests;
