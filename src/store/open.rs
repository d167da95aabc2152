//! Opening the store: its directories made and checked (ours alone, and
//! safe from others above), crash markers scanned, and how its writes will
//! be made durable chosen once, for the life of the `DiskStore`.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use super::dirty::{self, PageCache};
use super::group_commit::{self, GroupCommit};
use super::layout::{self, CACHEDIR_TAG, CACHEDIR_TAG_CONTENTS};
use super::recovery::Recovery;
use super::trim_clock::{self, BootClock};
use super::{Clock, DiskStore, Durability, Error, io_error};
use crate::fsutil::private::{self, NotPrivate};
use crate::fsutil::write_atomic;

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
        let dirty = layout::dirty_dir(&root);
        let cache = PageCache::of(&root);
        // Markers of crashes call for a recovery; those of killed writers
        // of this page cache go after the next group commit.
        let found = dirty::scan(&dirty, cache.as_ref())?;
        let recovery = Recovery::of(&found);
        let new = !root.join(CACHEDIR_TAG).exists();
        if new {
            make_shards(&actions, &objects)?;
        }
        let durability = durability(&root, &actions, &objects, &dirty, cache.clone());
        let store = Self {
            actions,
            objects,
            root,
            clock,
            boot_clock,
            repaired: AtomicU64::new(0),
            identity,
            dirty,
            cache,
            durability,
            recovery,
        };
        if new {
            // A new store: its shard directories were made up front, as
            // Go's cache does, rather than one by one on the first writes
            // of a build; tag it, and start the trim clock now so the
            // first automatic trim waits a full interval.
            let tag = store.root.join(CACHEDIR_TAG);
            write_atomic(&tag, CACHEDIR_TAG_CONTENTS.as_bytes())?;
            store.mark_trimmed(store.trim_now().1)?;
        }
        Ok(store)
    }
}

fn make_shards(actions: &Path, objects: &Path) -> Result<(), Error> {
    for dir in [actions, objects] {
        for shard in layout::shards() {
            let path = dir.join(shard);
            private::create_dir_all(&path).map_err(io_error("creating directory", &path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// Stores opened on this thread sync file by file, as on a system
    /// where group commit does not fit.
    pub(crate) static PER_FILE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How the store at `root` makes its writes durable: by group commit
/// where one `syncfs(2)` covers every directory of it and tells its errors
/// (`group_commit::fits`), and a boot ID tells a reboot; file by file
/// elsewhere.
fn durability(
    root: &Path,
    actions: &Path,
    objects: &Path,
    dirty: &Path,
    cache: Option<PageCache>,
) -> Durability {
    #[cfg(test)]
    if PER_FILE.get() {
        return Durability::PerFile;
    }
    let Some(cache) = cache else {
        return Durability::PerFile;
    };
    if let Err(e) = private::create_dir_all(dirty) {
        tracing::debug!("syncing file by file: creating {}: {e}", dirty.display());
        return Durability::PerFile;
    }
    let version = layout::version_dir(root);
    match group_commit::fits(&[root, &version, actions, objects, dirty]) {
        Ok(()) => Durability::Group(Box::new(GroupCommit::new(
            root,
            dirty.to_path_buf(),
            cache,
            Arc::new(SystemTime::now),
        ))),
        Err(why) => {
            tracing::debug!("syncing file by file: {why}");
            Durability::PerFile
        }
    }
}

/// Checks that the store at `root` (canonical) is its user's alone, and
/// everything above it safe from others ([`private`]); the root's
/// (device, inode).
pub(super) fn check_private(
    root: &Path,
    actions: &Path,
    objects: &Path,
) -> Result<(u64, u64), Error> {
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
