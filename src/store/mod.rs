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
//! ├── recovery.lock            held while a recovery sweeps the store (`recovery`)
//! ├── last-trim                its mtime is when the store was last trimmed; its
//! │                            text, where trim's clock stood (see `trim_clock`)
//! ├── daemon.lock              held by the running `warren daemon`
//! ├── daemon.sock              its socket for helpers (see `ipc`)
//! └── v1/                      layout version; a new layout gets a new directory
//!     ├── actions/00/ … ff/    one entry file per ActionID, named by its hex
//!     │                        "v1 <output hex> <size> <put time, unix ns> <source> <check>\n"
//!     ├── objects/00/ … ff/    one body per OutputID, named by its hex (no extension),
//!     │                        mode 0600, or 0700 if a linked executable (`executable`)
//!     │                        (all 512 shard directories are made with the store)
//!     └── dirty/               a marker per process (or daemon epoch) whose writes
//!                              may not be on disk yet: <boot>_<mount>_<pid>_<n>_<nonce>
//!                              (`dirty`)
//! ```
//!
//! # Writes
//!
//! Every file is written to a temp file (`.tmp*`) in its final directory and
//! renamed into place, so a reader sees a complete file or none. A put writes
//! the object first and the entry second, so an entry never points at a body
//! that is not there yet. Identical outputs are stored once: a put or a
//! fetch whose object is there already, whole (the right size, and its
//! bytes hash to its name), leaves it in place; only a damaged one is
//! replaced by the new, verified bytes. An object on disk since a sync
//! that completed is so never swapped for a copy that is not. Several
//! warren processes may write one store at once without locks: they only
//! ever rename complete, verified files into place.
//!
//! # What a power loss may take
//!
//! Nothing is synced between `go`'s put and its answer. On Linux, a
//! writing process (a helper for its `go` command, the daemon for fetched
//! bodies) first leaves a dirty marker, synced (`dirty`); its writes then
//! go unsynced, and one `syncfs(2)` later (the helper's after `go` has its
//! last answer, the daemon's within a second of a body landing) makes them
//! all durable at once, and the marker goes (`group_commit`). A marker
//! found on the next start tells what happened:
//!
//! - its writer was killed, with the machine up and the disk mounted
//!   all along (told by a unique mount ID, Linux 6.8 on): the kernel holds
//!   all it wrote, every file complete before its rename. A sync, and the
//!   marker goes; nothing is checked.
//! - the machine lost power or crashed (another boot), or the disk was cut
//!   off (another mount, or no unique mount ID to tell), or the sync failed: every object and entry
//!   changed since the marker was made is verified before it reaches `go`
//!   or a peer, lazily by lookups and by one sweep in the background
//!   (`recovery`). An object must hash to its name; an entry must carry
//!   the check that binds its line to its action (`entry`; on ext4's
//!   `data=writeback` a file renamed into place can come back holding
//!   another file's blocks), and name an object of its size. What fails
//!   is removed: a miss.
//!
//! So after a power loss an entry is either gone or names a complete,
//! matching body, and nothing acknowledged before the last completed sync
//! is lost. A put of the same output keeps the object and the entry there;
//! one that maps an action to another output syncs its entry first.
//!
//! Group commit is used only where one `syncfs(2)` of the store's
//! directory makes every file of it durable and tells write-back errors
//! (`group_commit::fits`: ext2/3/4, XFS, Btrfs, F2FS or tmpfs, every
//! directory of the store on that one filesystem, Linux 5.8 or later) and
//! a boot ID tells a reboot. Elsewhere (macOS, FUSE, NFS, eCryptfs,
//! overlayfs, older kernels) what `go` puts is synced file by file before
//! its rename (`F_FULLFSYNC` on macOS), its synced copy of an object
//! replaces one that is there, and bodies fetched from peers are not
//! synced.
//!
//! # Reads
//!
//! A read checks that the entry is well formed and bound to its action,
//! and the object has the recorded size; anything else is a miss, and the
//! broken file is removed so it is never handed to `go` again. Reads do
//! not re-hash bodies (that would read every body a warm build uses, on
//! its critical path), except those changed since a crash; `warren
//! verify` does, on demand.
//! Bodies from outside the process (protocol puts, and peers later) are always
//! hashed before they land, by [`ObjectWriter`].
//!
//! # Modules
//!
//! [`layout`] names every path above; `entry` reads and writes the entry
//! line with its provenance ([`Source`]) and check; `writer` verifies
//! bodies on their way in, and marks linked executables (`executable`);
//! `dirty`, `group_commit` and `recovery` are the markers, the sync and
//! what follows a crash; `trim` walks the store
//! (trim, clean, verify, usage), by the clock of `trim_clock` (the wall
//! clock, held back after a forward jump); `provenance` counts and purges
//! entries by source; [`stats`] keeps the lifetime counters in
//! `stats.json`. The daemon's index of put order (`daemon::put_order`,
//! kept current by inotify) reads entries too, for peers' hints and
//! summaries.
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

mod dirty;
mod entry;
mod error;
pub(crate) mod executable;
mod group_commit;
pub(crate) mod layout;
mod open;
mod provenance;
mod recovery;
mod replace;
pub(crate) mod stats;
pub(crate) mod trim;
mod trim_clock;
mod writer;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use self::dirty::PageCache;
use self::entry::MAX_ENTRY_LEN;
#[cfg(feature = "fuzz")]
pub(crate) use self::entry::entry_line;
pub(crate) use self::entry::{Binding, Line, Source, parse_entry, read_entry};
pub(crate) use self::error::Error;
use self::error::io_error;
use self::group_commit::GroupCommit;
pub(crate) use self::group_commit::Synced;
use self::layout::shard_path;
#[cfg(test)]
use self::open::PER_FILE;
use self::open::check_private;
pub(crate) use self::provenance::SourceUsage;
pub(crate) use self::recovery::Recovered;
use self::recovery::{Recovery, Suspect};
pub(crate) use self::replace::remove_seen;
use self::replace::{mark_executable, persist_object};
pub(crate) use self::trim::{TrimPolicy, TrimReport};
use self::trim_clock::BootClock;
pub(crate) use self::writer::{ObjectWriter, VerifiedObject};
use crate::fsutil::{self, write_atomic, write_atomic_unsynced};
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
    /// The dirty markers' directory (`dirty`).
    dirty: PathBuf,
    /// Where this process's writes wait to be on disk; `None` without a
    /// boot ID (then every marker found counts as a crash's).
    cache: Option<PageCache>,
    /// How writes reach the disk.
    durability: Durability,
    /// A crash's markers found at open, and what this process verified.
    recovery: Recovery,
}

/// How writes of objects and entries reach the disk (see the module docs).
#[derive(Debug)]
enum Durability {
    /// Unsynced, under a dirty marker, then synced at once: Linux.
    Group(Box<GroupCommit>),
    /// What `go` puts is synced file by file before its rename (fetched
    /// bodies are not): where there is no `syncfs(2)` or no boot ID.
    PerFile,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("root", &self.root)
            .finish()
    }
}

impl DiskStore {
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
        let opened = recovery::open_stored(&entry_path);
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
        if !meta.is_file() {
            return Ok(self.discard(&entry_path, &meta, "entry is not a file"));
        }
        if meta.len() > MAX_ENTRY_LEN {
            return Ok(self.discard(&entry_path, &meta, "entry too long"));
        }
        let mut text = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut text)
            .map_err(io_error("reading entry", &entry_path))?;
        let Some(line) = parse_entry(&text) else {
            return Ok(self.discard(&entry_path, &meta, "malformed entry"));
        };
        // While a crash's files are suspect (`recovery`), those changed
        // since are verified before anyone gets them.
        let since = self.recovery.since();
        if let Suspect::Damaged(why) = self.check_entry(action, &line, &meta, since) {
            return Ok(self.discard(&entry_path, &meta, why));
        }
        let Line {
            output,
            size,
            time,
            source,
            check: _,
        } = line;
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
        if let Some(since) = since {
            let (verdict, seen) = self.check_object(&object_path, &output, &object_meta, since)?;
            if let Suspect::Damaged(why) = verdict {
                self.discard(&object_path, &seen, why);
                return Ok(self.discard(&entry_path, &meta, "entry for a damaged object"));
            }
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
            executable,
            final_path,
            temp,
        } = object;
        if executable {
            mark_executable(temp.as_file(), temp.path())?;
        }
        // Under a dirty marker, unsynced, until the group commit; or, with
        // no group commit, what `go` puts is synced file by file, the
        // object on disk before an entry names it. (Fetched bodies are not
        // synced then: see the module docs.)
        let writing = match &self.durability {
            Durability::Group(commit) => Some(commit.begin_write()?),
            Durability::PerFile => None,
        };
        let per_file = writing.is_none() && source.peer().is_none();
        if per_file {
            fsutil::sync_data(&temp)?;
        }
        let time = self.now();
        persist_object(temp, &final_path, &output, size, executable, time, per_file)?;
        let line = entry::entry_line(action, &output, size, time, &source);
        let entry_path = self.entry_path(action);
        match replace {
            Replace::Yes if per_file => write_atomic(&entry_path, line.as_bytes())?,
            Replace::Yes => match self.entry_there(action, &entry_path) {
                // The same mapping, on disk maybe since a sync that
                // completed (`go build -a` puts every action again): it
                // stays, and counts as a use.
                Some((file, meta, there))
                    if there.output == output && there.size == size && there.source == source =>
                {
                    let now = self.now();
                    if is_stale(meta.modified().ok(), now) {
                        // Best effort, as a lookup's touch.
                        let _ = file.set_modified(now);
                    }
                    drop(writing);
                    return Ok(Entry {
                        output,
                        size,
                        time: there.time,
                        source,
                        path: final_path,
                    });
                }
                // Another mapping replaces it: synced first, so that a
                // power loss leaves the old one or the new one whole,
                // never neither.
                Some(_) => write_atomic(&entry_path, line.as_bytes())?,
                None => write_atomic_unsynced(&entry_path, line.as_bytes())?,
            },
            Replace::No => {
                // Only fetched bodies are committed so, and they are not
                // synced one by one (see the module docs).
                if !fsutil::write_new_unsynced(&entry_path, line.as_bytes())? {
                    if let Lookup::Hit(existing) = self.get(action)? {
                        return Ok(existing);
                    }
                    // It was damaged, and is gone now: ours takes its place.
                    fsutil::write_atomic_unsynced(&entry_path, line.as_bytes())?;
                }
            }
        }
        drop(writing);
        Ok(Entry {
            output,
            size,
            time,
            source,
            path: final_path,
        })
    }

    /// The entry of `action` at `path`, if it is there, whole and bound
    /// to its action (what a lookup would take), with its open file;
    /// unlike a lookup, this removes nothing.
    fn entry_there(&self, action: &ActionId, path: &Path) -> Option<(File, fs::Metadata, Line)> {
        let mut file = recovery::open_stored(path).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() > MAX_ENTRY_LEN {
            return None;
        }
        let mut text = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut text).ok()?;
        let line = parse_entry(&text)?;
        let verdict = self.check_entry(action, &line, &meta, self.recovery.since());
        (verdict == Suspect::Trusted).then_some((file, meta, line))
    }

    /// Syncs what this process wrote and has not synced yet, at once
    /// (`group_commit`), and clears the markers of killed writers found
    /// before the sync. Nothing to do where each put is synced on its own.
    pub(crate) fn sync(&self) -> Result<Synced, Error> {
        match &self.durability {
            Durability::Group(commit) => Ok(commit.sync()?),
            Durability::PerFile => Ok(Synced::default()),
        }
    }

    /// Makes the dirty marker of the next writes ahead of time, off their
    /// path (`group_commit`); nothing to do where each put is synced on
    /// its own.
    pub(crate) fn prepare_write(&self) {
        if let Durability::Group(commit) = &self.durability {
            commit.prepare();
        }
    }

    /// Whether writes wait for [`DiskStore::sync`] to be on disk.
    pub(crate) fn groups_commits(&self) -> bool {
        matches!(self.durability, Durability::Group(_))
    }

    /// When the oldest write not synced yet began, waiting up to
    /// `timeout` for one to begin (`None` if none did; at once where
    /// writes are not grouped).
    pub(crate) fn wait_for_write(&self, timeout: Duration) -> Option<Instant> {
        match &self.durability {
            Durability::Group(commit) => commit.wait_for_write(timeout),
            Durability::PerFile => None,
        }
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

fn is_stale(used: Option<SystemTime>, now: SystemTime) -> bool {
    used.is_none_or(|used| now.duration_since(used).unwrap_or_default() >= TOUCH_INTERVAL)
}

#[cfg(test)]
mod tests;
