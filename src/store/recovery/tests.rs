//! After a crash: what lookups and the sweep verify, what they remove,
//! what they leave alone, and which markers call for it.

#![expect(
    clippy::disallowed_methods,
    reason = "tests leave markers and damage store files in place, as a crash would"
)]

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::store::dirty::{Marker, PageCache};
use crate::store::{Lookup, Source, entry};

/// A boot that is not this one.
const OTHER_BOOT: &str = "00000000-0000-4000-8000-000000000000";

fn action(n: u8) -> ActionId {
    ActionId::from_bytes([n; 32])
}

fn hit(store: &DiskStore, n: u8) -> crate::store::Entry {
    match store.get(&action(n)).unwrap() {
        Lookup::Hit(entry) => entry,
        Lookup::Miss => panic!("entry {n}: a miss"),
    }
}

fn miss(store: &DiskStore, n: u8) {
    let found = store.get(&action(n)).unwrap();
    assert_eq!(found, Lookup::Miss, "entry {n}");
}

/// Leaves the marker a writer of another boot left when the power went,
/// dated so that files changed from `since` on are suspect (its time, less
/// the slack for a clock stepped back).
fn leave_crash_marker(store: &DiskStore, since: SystemTime) -> PathBuf {
    fs::create_dir_all(&store.dirty).unwrap();
    let path = store.dirty.join(format!("{OTHER_BOOT}_0_4242_0"));
    let made = (since + SLACK).duration_since(UNIX_EPOCH).unwrap();
    fs::write(&path, format!("{}\n", made.as_nanos())).unwrap();
    path
}

/// A moment between what came before and what comes after, by the
/// coarse clock the kernel stamps files with.
fn a_moment_between() -> SystemTime {
    std::thread::sleep(Duration::from_millis(50));
    let now = SystemTime::now();
    std::thread::sleep(Duration::from_millis(50));
    now
}

fn damage_in_place(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    for byte in &mut bytes {
        *byte ^= 0x20;
    }
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
}

/// The line of `output` in the file of `n`, as a warren before the check
/// wrote it.
fn unchecked_line(store: &DiskStore, n: u8) {
    let line = hit(store, n);
    fs::write(
        store.entry_path(&action(n)),
        format!(
            "v1 {} {} 1700000000000000000 local\n",
            line.output.to_hex(),
            line.size
        ),
    )
    .unwrap();
}

/// A power loss while a writer was at work (SECURITY.md, "A process
/// kill, and a power loss"): what changed since its marker may hold other
/// bytes than were written. A lookup hashes such an object before
/// handing it out, and refuses an entry that another action's check
/// binds or that has no check; what is older than the marker is taken
/// as it is, unhashed.
#[test]
fn after_a_crash_lookups_verify_what_changed_since_and_nothing_older() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    store.put_bytes(&action(1), b"old body one").unwrap();
    let old = store.put_bytes(&action(2), b"old body two").unwrap();
    // Damage no crash explains, older than the crash: found by `warren
    // verify`, never by a lookup's hash.
    damage_in_place(&old.path);
    store.put_bytes(&action(3), b"old body three").unwrap();
    unchecked_line(&store, 3);
    store.sync().unwrap();

    let crash = a_moment_between();
    let new = store.put_bytes(&action(11), b"new body eleven").unwrap();
    // The power went before these were on disk: an object came back with
    // other bytes, an entry holding another entry's blocks, an entry as a
    // warren before the check wrote it.
    damage_in_place(&new.path);
    store.put_bytes(&action(12), b"new body twelve").unwrap();
    store.put_bytes(&action(13), b"new body thirteen").unwrap();
    fs::copy(store.entry_path(&action(13)), store.entry_path(&action(12))).unwrap();
    store.put_bytes(&action(14), b"new body fourteen").unwrap();
    unchecked_line(&store, 14);
    leave_crash_marker(&store, crash);

    let store = DiskStore::open(dir.path()).unwrap();
    assert!(store.recovery_pending());
    miss(&store, 11);
    assert!(!new.path.exists(), "the damaged object stays");
    miss(&store, 12);
    miss(&store, 14);
    assert_eq!(
        fs::read(hit(&store, 13).path).unwrap(),
        b"new body thirteen"
    );
    assert_eq!(fs::read(hit(&store, 1).path).unwrap(), b"old body one");
    assert_eq!(hit(&store, 3).source, Source::Local);
    // Not hashed again: older than the crash.
    assert_eq!(fs::read(hit(&store, 2).path).unwrap(), b"OLD\0BODY\0TWO");
}

/// The sweep that ends a recovery: it verifies every file changed since
/// the crash (an object no entry names included), removes what fails,
/// and only then clears the marker; lookups then stop verifying.
#[test]
fn a_sweep_removes_what_a_crash_damaged_then_clears_its_marker() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let old = store.put_bytes(&action(1), b"old body").unwrap();
    damage_in_place(&old.path);
    store.sync().unwrap();
    let crash = a_moment_between();
    store.put_bytes(&action(11), b"new body").unwrap();
    let orphan = store.put_bytes(&action(12), b"an orphan").unwrap();
    fs::remove_file(store.entry_path(&action(12))).unwrap();
    damage_in_place(&orphan.path);
    let stale = store.put_bytes(&action(13), b"stale line").unwrap();
    fs::copy(store.entry_path(&action(11)), store.entry_path(&action(13))).unwrap();
    store.sync().unwrap();
    let marker = leave_crash_marker(&store, crash);

    let store = DiskStore::open(dir.path()).unwrap();
    assert!(store.recovery_pending());
    let recovered = store.recover(false).unwrap().expect("no other sweep");
    assert_eq!(
        recovered,
        Recovered {
            markers: 1,
            checked: 5,
            removed_objects: 1,
            removed_entries: 1,
        }
    );
    assert!(!marker.exists());
    assert!(!orphan.path.exists());
    assert!(!store.entry_path(&action(13)).exists());
    assert!(
        stale.path.exists(),
        "a whole object no entry names yet stays"
    );
    assert!(!store.recovery_pending());
    // Older than the crash: left for `warren verify`.
    assert!(old.path.exists());
    assert_eq!(store.recover(false).unwrap(), Some(Recovered::default()));
}

/// A writer killed with the machine up left its marker: the kernel still
/// holds what it wrote, so there is nothing to verify, and the next sync
/// clears it.
#[test]
fn a_killed_writers_marker_calls_for_a_sync_not_a_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let cache = PageCache::of(store.root()).expect("a boot ID");
    let killed = Marker::create(&store.dirty, &cache, u64::MAX, SystemTime::now())
        .unwrap()
        .abandon();
    store.put_bytes(&action(1), b"body").unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    assert!(!store.recovery_pending());
    hit(&store, 1);
    assert!(store.sync().unwrap().killed >= 1);
    assert!(!killed.exists());
}

/// A writer at work (another process, or another store of this one) holds
/// its marker: neither a sync nor a sweep of another takes it away.
#[test]
fn a_live_writers_marker_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let writer = DiskStore::open(dir.path()).unwrap();
    writer.put_bytes(&action(1), b"body").unwrap();
    let other = DiskStore::open(dir.path()).unwrap();
    assert!(!other.recovery_pending());
    assert_eq!(other.sync().unwrap(), crate::store::Synced::default());
    assert_eq!(other.recover(false).unwrap(), Some(Recovered::default()));
    let counts = other.marker_counts().unwrap();
    assert_eq!((counts.live, counts.killed, counts.crashed), (1, 0, 0));
    assert_eq!(writer.sync().unwrap().epochs, 1);
    assert_eq!(other.marker_counts().unwrap(), MarkerCounts::default());
}

/// A disk cut off and mounted again, with the machine up, lost its
/// cache as a power loss would: a marker of this boot but another mount
/// of the filesystem is a crash's.
#[test]
fn a_marker_of_another_mount_calls_for_a_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let boot = crate::store::trim_clock::boot_id().expect("a boot ID");
    let elsewhere = PageCache::new(boot, u64::MAX);
    Marker::create(&store.dirty, &elsewhere, 0, SystemTime::now())
        .unwrap()
        .abandon();
    assert!(DiskStore::open(dir.path()).unwrap().recovery_pending());
}

#[test]
fn an_entry_line_with_another_actions_check_is_a_miss_outside_a_recovery_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    store.put_bytes(&action(1), b"one").unwrap();
    store.put_bytes(&action(2), b"two").unwrap();
    let line = entry::entry_line(
        &action(2),
        &OutputId::of(b"two"),
        3,
        SystemTime::now(),
        &Source::Local,
    );
    fs::write(store.entry_path(&action(1)), line).unwrap();
    miss(&store, 1);
    hit(&store, 2);
}

/// A killed writer's marker, seen by a process when it opened the store,
/// was cleared by another's sync, and a new writer that was given the
/// killed one's pid made its own marker of the same name: the first
/// process's sync must not take the live writer's marker away (its writes
/// would then be covered by nothing when the power goes).
#[test]
fn a_sync_never_removes_a_live_marker_that_took_a_killed_ones_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let cache = PageCache::of(store.root()).expect("a boot ID");
    let killed = Marker::create(&store.dirty, &cache, u64::MAX - 1, SystemTime::now())
        .unwrap()
        .abandon();
    let observer = DiskStore::open(dir.path()).unwrap();
    fs::remove_file(&killed).unwrap();
    let live = fs::File::create(&killed).unwrap();
    live.try_lock().unwrap();
    observer.sync().unwrap();
    assert!(killed.exists(), "a live writer's marker was removed");
    drop(live);
}

/// A sync that fails (`EIO`: the kernel may have dropped pages) when all
/// there was to sync is what killed writers left, or when a sweep syncs,
/// must leave a crash's marker for the next process: the error is told
/// once per open descriptor, so the next sync succeeds and proves nothing.
#[test]
fn a_failed_sync_of_killed_writers_pages_calls_for_a_recovery() {
    use crate::fsutil::test_hooks::FAIL_SYNCS;

    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let cache = PageCache::of(store.root()).expect("a boot ID");
    let made = SystemTime::now() - Duration::from_secs(60);
    Marker::create(&store.dirty, &cache, u64::MAX - 2, made)
        .unwrap()
        .abandon();
    let store = DiskStore::open(dir.path()).unwrap();
    assert!(!store.recovery_pending());
    FAIL_SYNCS.set(true);
    let synced = store.sync();
    FAIL_SYNCS.set(false);
    assert!(synced.is_err());
    let next = DiskStore::open(dir.path()).unwrap();
    next.sync().unwrap();
    assert!(
        next.recovery_pending(),
        "the failed sync left no crash marker"
    );
    assert!(
        next.recovery.since().unwrap() <= made - SLACK,
        "the recovery starts after the killed writer's marker"
    );

    // The same when a sweep's sync fails.
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    Marker::create(&store.dirty, &cache, u64::MAX - 3, made)
        .unwrap()
        .abandon();
    FAIL_SYNCS.set(true);
    let recovered = store.recover(false);
    FAIL_SYNCS.set(false);
    assert!(recovered.is_err());
    assert!(DiskStore::open(dir.path()).unwrap().recovery_pending());
}

/// One object the sweep cannot read (a bad sector: `EIO`) is damage like
/// any other: it goes, and the sweep goes on and ends, rather than fail
/// on every command from then on.
#[test]
fn a_sweep_removes_an_object_it_cannot_read_and_goes_on() {
    use crate::fsutil::test_hooks::FAIL_HASHES;

    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let crash = a_moment_between();
    let put = store.put_bytes(&action(1), b"body").unwrap();
    store.sync().unwrap();
    let marker = leave_crash_marker(&store, crash);
    let store = DiskStore::open(dir.path()).unwrap();
    FAIL_HASHES.set(true);
    let recovered = store.recover(false);
    FAIL_HASHES.set(false);
    let recovered = recovered.unwrap().expect("no other sweep");
    assert_eq!((recovered.markers, recovered.removed_objects), (1, 1));
    assert!(!marker.exists());
    assert!(!put.path.exists(), "the unreadable object stays");
    assert!(!store.recovery_pending());
    miss(&store, 1);
}

/// Something in the dirty directory that is not a marker file (here a
/// directory named like a crash's marker) can never be cleared as one:
/// it must not call for a recovery on every command.
#[test]
fn a_directory_named_like_a_marker_calls_for_no_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    fs::create_dir_all(store.dirty.join(format!("{OTHER_BOOT}_0_4242_0"))).unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    assert!(!store.recovery_pending());
    assert_eq!(store.recover(false).unwrap().unwrap().markers, 0);
}

/// Runs `f` on a thread, and fails if it has not returned within 10 s.
fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    result
        .recv_timeout(Duration::from_secs(10))
        .expect("hung on a FIFO")
}

#[cfg(target_os = "linux")]
fn mkfifo(path: &Path) {
    use rustix::fs::{CWD, FileType, Mode, mknodat};
    mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
}

/// A FIFO named like a marker, where opening it for reading blocks until
/// a writer comes: every process that opens the store would hang there.
#[test]
#[cfg(target_os = "linux")]
fn a_fifo_named_like_a_marker_hangs_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let store = DiskStore::open(&root).unwrap();
    fs::create_dir_all(&store.dirty).unwrap();
    mkfifo(&store.dirty.join(format!("{OTHER_BOOT}_0_4242_0")));
    let pending = within_seconds(move || DiskStore::open(&root).unwrap().recovery_pending());
    assert!(!pending);
}

/// A FIFO where an entry belongs is damage to remove, not a file to wait
/// on, for a lookup and for a sweep alike.
#[test]
#[cfg(target_os = "linux")]
fn a_fifo_named_like_an_entry_hangs_no_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let store = DiskStore::open(&root).unwrap();
    let entry = store.entry_path(&action(9));
    mkfifo(&entry);
    let found = within_seconds(move || DiskStore::open(&root).unwrap().get(&action(9)).unwrap());
    assert_eq!(found, Lookup::Miss);
    assert!(fs::symlink_metadata(&entry).is_err());
}

/// `warren doctor` probes the sweep's lock by taking it for a moment: a
/// sweep started in the background at that moment must not give up, or
/// the recovery waits for the next command.
#[test]
fn a_sweep_is_not_skipped_for_a_moments_probe_of_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let crash = a_moment_between();
    store.put_bytes(&action(1), b"body").unwrap();
    store.sync().unwrap();
    leave_crash_marker(&store, crash);
    let store = DiskStore::open(dir.path()).unwrap();
    let probe = FileLock::try_acquire(&layout::recovery_lock(store.root()))
        .unwrap()
        .expect("the lock is free");
    let released = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(probe);
    });
    let recovered = store.recover(false).unwrap();
    released.join().unwrap();
    assert_eq!(recovered.map(|r| r.markers), Some(1), "the sweep gave up");
}
