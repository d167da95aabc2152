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
//! ├── last-trim                its mtime is when the store was last trimmed; its
//! │                            text, where trim's clock stood (see `trim_clock`)
//! ├── daemon.lock              held by the running `warren daemon`
//! ├── daemon.sock              its socket for helpers (see `share::ipc`)
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
//! miss). Directories are not synced. Measured: about 0.6 ms a file on
//! this project's VM (docs/benchmarks.md); Go's own cache syncs nothing.
//! Bodies fetched from peers are not synced: the daemon commits small
//! ones on its one async thread, where two syncs a body slowed a from-peer
//! build severalfold, and they are only a copy of what the peer holds.
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
//! read ~180 MB on a warm `go build std`); `warren verify` does, on demand.
//! Bodies from outside the process (protocol puts, and peers later) are always
//! hashed before they land, by [`ObjectWriter`].
//!
//! # Modules
//!
//! [`layout`] names every path above; `entry` reads and writes the entry
//! line with its provenance ([`Source`]); `writer` verifies bodies on their
//! way in; `trim` walks the store (trim, clean, verify, usage), by the
//! clock of `trim_clock` (the wall clock, held back after a forward jump);
//! `provenance` counts and purges entries by source. The daemon's [`index`] of put order (and
//! its inotify `watch`) reads entries too, for peers' hints and summaries.
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
#[expect(
    clippy::disallowed_methods,
    reason = "tests damage store files in place, as a crash or bit rot would"
)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    use sha2::{Digest, Sha256};

    use super::trim::{TRIM_GRACE, TRIM_INTERVAL, Usage, walk_files};
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
    fn big_writes_are_hashed_like_small_ones() {
        let f = Fixture::new();
        let body: Vec<u8> = (0..3 * writer::PARALLEL_HASH + 7)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let output = OutputId::of(&body);
        // Big writes (hashed beside the write) mixed with small ones.
        let write = |body: &[u8]| {
            let mut writer = f.store.begin_object(output, body.len() as u64).unwrap();
            let (big, rest) = body.split_at(2 * writer::PARALLEL_HASH);
            writer.write_all(big).unwrap();
            writer.write_all(&rest[..5]).unwrap();
            writer.write_all(&rest[5..]).unwrap();
            writer.finish()
        };
        let mut damaged = body.clone();
        damaged[writer::PARALLEL_HASH + 1] ^= 1;
        assert!(matches!(write(&damaged), Err(Error::Mismatch { .. })));
        let entry = f.store.commit(&action(1), write(&body).unwrap()).unwrap();
        assert_eq!(entry.output, output);
        assert_eq!(fs::read(f.store.object_path(&output)).unwrap(), body);
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
        // Part 4, finding 16: even a recently used object is rewritten by a
        // put that carries the verified bytes.
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

    /// Use is recorded at most hourly, so an entry in use may carry an
    /// mtime up to an hour older than its last use. Used 90 minutes ago
    /// when its mtime was 59 minutes old (so not touched), it must still
    /// survive a trim down to nothing: a `go` command may hold its DiskPath.
    #[test]
    fn an_entry_used_90_minutes_ago_survives_a_trim() {
        let f = Fixture::new();
        let entry = f.store.put_bytes(&action(1), b"in use").unwrap();
        let then = *f.now.lock().unwrap() - Duration::from_secs(59 * 60);
        set_mtime(&entry.path, then);
        set_mtime(&f.store.entry_path(&action(1)), then);
        f.hit(&action(1));
        assert_eq!(fs::metadata(&entry.path).unwrap().modified().unwrap(), then);
        f.advance(Duration::from_secs(90 * 60));
        let nothing = TrimPolicy {
            max_size: 0,
            max_unused: Duration::ZERO,
        };
        f.store.trim(nothing, true).unwrap();
        assert!(
            entry.path.exists(),
            "the object used 90 minutes ago was trimmed"
        );
        f.hit(&action(1));
    }

    /// The wall clock jumps a day ahead a minute after `go` got an entry:
    /// by the wall clock the entry is a day old, but trim keeps it, by the
    /// boot clock, for the grace. A file whose mtime lies in the future
    /// (the clock was set back) counts as just used.
    #[test]
    fn a_forward_clock_jump_does_not_trim_files_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let wall = Arc::new(Mutex::new(SystemTime::now()));
        let boot = Arc::new(Mutex::new(Duration::from_secs(3600)));
        let store = {
            let (wall, boot) = (wall.clone(), boot.clone());
            DiskStore::open_with_clocks(
                dir.path(),
                Arc::new(move || *wall.lock().unwrap()),
                Arc::new(move || {
                    Some(trim_clock::Boot {
                        id: "boot".into(),
                        elapsed: *boot.lock().unwrap(),
                    })
                }),
            )
            .unwrap()
        };
        let pass = |by: Duration, jump: Duration| {
            *wall.lock().unwrap() += by + jump;
            *boot.lock().unwrap() += by;
        };
        let nothing = TrimPolicy {
            max_size: 0,
            max_unused: Duration::ZERO,
        };
        let entry = store.put_bytes(&action(1), b"in use").unwrap();
        let ahead = store.put_bytes(&action(2), b"from the future").unwrap();
        let future = *wall.lock().unwrap() + Duration::from_secs(30 * 86400);
        set_mtime(&ahead.path, future);
        set_mtime(&store.entry_path(&action(2)), future);
        pass(Duration::from_secs(60), Duration::from_secs(86400));
        store.trim(nothing, true).unwrap();
        assert!(entry.path.exists(), "trimmed after a forward clock jump");
        assert!(ahead.path.exists(), "a future mtime was trimmed");
        // Another trim soon after still knows of the jump.
        pass(Duration::from_secs(60), Duration::ZERO);
        store.trim(nothing, true).unwrap();
        assert!(entry.path.exists(), "the second trim forgot the jump");
        // Once the grace has passed on the boot clock, it goes.
        pass(USE_GRACE, Duration::ZERO);
        store.trim(nothing, true).unwrap();
        assert!(!entry.path.exists(), "never trimmed");
    }

    /// For a full disk: half the store goes, least recently used first,
    /// never what was used within the grace.
    #[test]
    fn making_room_halves_the_store_but_keeps_recent_use() {
        let f = Fixture::new();
        let now = *f.now.lock().unwrap();
        for n in 1..=4_u8 {
            let entry = f.store.put_bytes(&action(n), &[n; 1000]).unwrap();
            let used = now - Duration::from_secs(u64::from(5 - n) * 4 * 3600);
            set_mtime(&entry.path, used);
            set_mtime(&f.store.entry_path(&action(n)), used);
        }
        let before = f.store.usage().unwrap().bytes;
        let policy = TrimPolicy {
            max_size: u64::MAX,
            max_unused: Duration::MAX,
        };
        let report = f.store.make_room(policy).unwrap().unwrap();
        assert!(report.kept_bytes <= before / 2, "{report:?} of {before}");
        assert_eq!(
            f.store.get(&action(1)).unwrap(),
            Lookup::Miss,
            "the oldest goes"
        );
        f.hit(&action(4));
        // With everything in use, nothing goes.
        f.store.put_bytes(&action(5), &[5; 1000]).unwrap();
        f.store.make_room(policy).unwrap().unwrap();
        f.hit(&action(5));
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
    fn a_new_store_is_its_owners_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("new/store");
        let store = DiskStore::open(&root).unwrap();
        for path in [&root, &store.actions, &store.actions.join("ab")] {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", path.display());
        }
    }

    /// Part 4, finding 1: a store directory others can write lets them
    /// plant entries in our builds; it is refused, saying what to fix.
    #[test]
    #[expect(clippy::print_stderr, reason = "a skipped part says why")]
    fn a_store_others_can_write_is_refused_with_the_fix() {
        let f = Fixture::new();
        let root = f.store.root().to_path_buf();
        for dir in [root.clone(), f.store.actions.clone()] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
            let error = DiskStore::open(&root).unwrap_err().to_string();
            assert!(
                error.contains(&format!("`chmod go-w {}`", dir.display())),
                "{error}"
            );
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        DiskStore::open(&root).unwrap();
        if private::my_uid() == 0 {
            std::os::unix::fs::chown(&root, Some(65534), None).unwrap();
            let error = DiskStore::open(&root).unwrap_err().to_string();
            assert!(error.contains("belongs to uid 65534"), "{error}");
            std::os::unix::fs::chown(&root, Some(0), None).unwrap();
        } else {
            eprintln!("skipped the other owner's store: only root can make one");
        }
        // A link where the layout's directory should be.
        let objects = f.store.objects.clone();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::rename(&objects, elsewhere.path().join("objects")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("objects"), &objects).unwrap();
        let error = DiskStore::open(&root).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
    }

    /// Whoever can write the directory above the store can swap the store
    /// for their own: refused, saying what to fix, unless it is sticky.
    #[test]
    fn a_store_under_a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().canonicalize().unwrap().join("shared");
        let root = parent.join("store");
        DiskStore::open(&root).unwrap();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
        let error = DiskStore::open(&root).unwrap_err().to_string();
        assert!(
            error.contains(&format!("`chmod go-w {}`", parent.display())),
            "{error}"
        );
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o1777)).unwrap();
        DiskStore::open(&root).unwrap();
    }

    /// The daemon holds its store for days, by path: a store moved away
    /// and another put in its place, or one made writable by others
    /// meanwhile, is told by `check_unchanged`.
    #[test]
    fn a_store_swapped_or_opened_up_after_open_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = DiskStore::open(&root).unwrap();
        store.check_unchanged().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let error = store.check_unchanged().unwrap_err();
        assert!(
            matches!(error, Error::NotPrivate(NotPrivate::AboveWritable { .. })),
            "{error}"
        );
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        fs::rename(&root, dir.path().join("elsewhere")).unwrap();
        DiskStore::open(&root).unwrap();
        let error = store.check_unchanged().unwrap_err();
        assert!(matches!(error, Error::Replaced(_)), "{error}");
    }

    /// Part 4, finding 1: trim and clean followed a symlinked shard and
    /// deleted the files of whatever directory it pointed at.
    #[test]
    fn walks_do_not_follow_a_linked_shard() {
        let f = Fixture::new();
        f.store.put_bytes(&action(1), b"one").unwrap();
        let outside = tempfile::tempdir().unwrap();
        let precious = outside.path().join("precious");
        fs::write(&precious, b"not the store's").unwrap();
        set_mtime(
            &precious,
            SystemTime::now() - Duration::from_secs(365 * 86400),
        );
        let shard = f.store.objects.join("ab");
        fs::remove_dir(&shard).unwrap();
        std::os::unix::fs::symlink(outside.path(), &shard).unwrap();
        let policy = TrimPolicy {
            max_size: 0,
            max_unused: Duration::ZERO,
        };
        f.advance(Duration::from_secs(365 * 86400));
        f.store.trim(policy, true).unwrap();
        f.store.clean().unwrap();
        assert!(f.store.verify().is_ok());
        assert_eq!(fs::read(&precious).unwrap(), b"not the store's");
    }

    #[test]
    fn entries_and_objects_behind_links_are_misses() {
        let f = Fixture::new();
        let elsewhere = tempfile::tempdir().unwrap();
        // An entry that is a link to a well-formed entry elsewhere.
        let entry = f.store.put_bytes(&action(1), b"one").unwrap();
        let entry_path = f.store.entry_path(&action(1));
        let copy = elsewhere.path().join("entry");
        fs::copy(&entry_path, &copy).unwrap();
        fs::remove_file(&entry_path).unwrap();
        std::os::unix::fs::symlink(&copy, &entry_path).unwrap();
        assert_eq!(f.store.get(&action(1)).unwrap(), Lookup::Miss);
        assert!(
            fs::symlink_metadata(&entry_path).is_err(),
            "the link is removed"
        );
        // An object that is a link to a body of the right size elsewhere.
        f.store.put_bytes(&action(2), b"one").unwrap();
        let body = elsewhere.path().join("body");
        fs::write(&body, b"one").unwrap();
        fs::remove_file(&entry.path).unwrap();
        std::os::unix::fs::symlink(&body, &entry.path).unwrap();
        assert_eq!(f.store.get(&action(2)).unwrap(), Lookup::Miss);
    }

    /// Part 4, finding 11: a fetched body that landed after the helper
    /// gave up on it renamed its entry over the one `go` had just put.
    #[test]
    fn a_late_fetched_body_does_not_replace_what_go_put() {
        let f = Fixture::new();
        let put = f.store.put_bytes(&action(1), b"go's own").unwrap();
        let mut writer = f
            .store
            .begin_object(OutputId::of(b"the peer's"), 10)
            .unwrap();
        writer.write_all(b"the peer's").unwrap();
        let kept = f
            .store
            .commit_fetched(&action(1), writer.finish().unwrap(), PeerId::random())
            .unwrap();
        assert_eq!(kept.output, put.output);
        assert_eq!(f.hit(&action(1)).output, OutputId::of(b"go's own"));
        // With no entry there, the fetched one lands as any other.
        let mut writer = f
            .store
            .begin_object(OutputId::of(b"the peer's"), 10)
            .unwrap();
        writer.write_all(b"the peer's").unwrap();
        f.store
            .commit_fetched(&action(2), writer.finish().unwrap(), PeerId::random())
            .unwrap();
        assert_eq!(f.hit(&action(2)).output, OutputId::of(b"the peer's"));
    }

    /// A fetched body is not synced (see the module docs); renamed over
    /// the object `go` put and synced, it would make that object one a
    /// power loss can take away. A whole object (its name is the OutputID,
    /// and it has the right size) stays; a damaged one is replaced.
    #[test]
    fn a_fetched_body_never_replaces_a_whole_object() {
        use std::os::unix::fs::MetadataExt as _;

        let f = Fixture::new();
        let fetched = |n: u8, body: &[u8]| {
            let mut writer = f
                .store
                .begin_object(OutputId::of(body), body.len() as u64)
                .unwrap();
            writer.write_all(body).unwrap();
            f.store
                .commit_fetched(&action(n), writer.finish().unwrap(), PeerId::random())
                .unwrap()
        };
        let put = f.store.put_bytes(&action(1), b"shared output").unwrap();
        let inode = fs::metadata(&put.path).unwrap().ino();
        let entry = fetched(2, b"shared output");
        assert_eq!(entry.path, put.path);
        assert_eq!(
            fs::metadata(&put.path).unwrap().ino(),
            inode,
            "the fetched copy replaced the object go put"
        );
        assert_eq!(f.hit(&action(2)).output, OutputId::of(b"shared output"));
        let mut leftovers = 0;
        walk_files(&f.store.objects, &mut |file| {
            leftovers += u32::from(file.temp)
        })
        .unwrap();
        assert_eq!(leftovers, 0, "the fetched copy is not left behind");
        // An object of the wrong size is damaged: the fetched body repairs it.
        fs::write(&put.path, b"short").unwrap();
        fetched(3, b"shared output");
        assert_eq!(fs::read(&put.path).unwrap(), b"shared output");
    }

    /// Part 4, finding 12: a reader that found a damaged file removed it by
    /// path, after a check, so a good file another process renamed into
    /// place in between was removed instead.
    #[test]
    fn a_discard_keeps_a_file_committed_in_its_place_meanwhile() {
        let f = Fixture::new();
        f.store.put_bytes(&action(1), b"one").unwrap();
        let path = f.store.entry_path(&action(1));
        fs::write(&path, b"garbage").unwrap();
        let seen = fs::symlink_metadata(&path).unwrap();
        // Another process commits a good entry (temp file and rename).
        f.store.put_bytes(&action(1), b"one").unwrap();
        assert_eq!(f.store.discard(&path, &seen, "test"), Lookup::Miss);
        f.hit(&action(1));
        assert_eq!(f.store.repaired(), 0);
        // The damaged file itself goes, and nothing is left aside.
        fs::write(&path, b"garbage").unwrap();
        let seen = fs::symlink_metadata(&path).unwrap();
        f.store.discard(&path, &seen, "test");
        assert!(!path.exists());
        assert_eq!(f.store.repaired(), 1);
        let shard = layout::parent(&path);
        assert_eq!(fs::read_dir(shard).unwrap().count(), 0, "no leftovers");
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
