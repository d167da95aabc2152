//! The disk store: puts and gets, damage found and repaired, permissions,
//! links, and writers racing one another.

#![expect(
    clippy::disallowed_methods,
    reason = "tests damage store files in place, as a crash or bit rot would"
)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::trim::{Usage, walk_files};
use super::*;
use crate::fsutil::private::{self, NotPrivate};

/// A store whose clock the test moves.
pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) store: DiskStore,
    pub(super) now: Arc<Mutex<SystemTime>>,
}

impl Fixture {
    pub(super) fn new() -> Self {
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

    pub(super) fn advance(&self, by: Duration) {
        *self.now.lock().unwrap() += by;
    }

    pub(super) fn hit(&self, action: &ActionId) -> Entry {
        match self.store.get(action).unwrap() {
            Lookup::Hit(entry) => entry,
            Lookup::Miss => panic!("expected a hit for {action}"),
        }
    }
}

pub(super) fn action(n: u8) -> ActionId {
    ActionId::from_bytes([n; 32])
}

pub(super) fn set_mtime(path: &Path, time: SystemTime) {
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
            bytes: 4 + 2 * fs::metadata(f.store.entry_path(&action(1))).unwrap().len(),
            executables: 0,
            executable_bytes: 0,
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
    // Even a recently used object is rewritten by a put that carries the
    // verified bytes.
    f.store.put_bytes(&action(2), b"payload").unwrap();
    assert_eq!(fs::read(&entry.path).unwrap(), b"payload");
}

/// An object on disk since a sync that completed must never be swapped
/// for a copy that is not (SECURITY.md, "A process kill, and a power
/// loss"): a put of the same output finds it whole (its size, and its
/// bytes hash to its name) and keeps it, counting as a use.
#[test]
fn a_put_keeps_a_whole_object_it_finds() {
    use std::os::unix::fs::MetadataExt as _;

    let f = Fixture::new();
    let first = f.store.put_bytes(&action(1), b"shared output").unwrap();
    let inode = fs::metadata(&first.path).unwrap().ino();
    f.advance(2 * TOUCH_INTERVAL);
    let second = f.store.put_bytes(&action(2), b"shared output").unwrap();
    assert_eq!(second.path, first.path);
    let there = fs::metadata(&first.path).unwrap();
    assert_eq!(
        there.ino(),
        inode,
        "the put replaced the object on disk since the last sync"
    );
    assert_eq!(there.modified().unwrap(), *f.now.lock().unwrap(), "a use");
    let mut leftovers = 0;
    walk_files(&f.store.objects, &mut |file| {
        leftovers += u32::from(file.temp)
    })
    .unwrap();
    assert_eq!(leftovers, 0, "the new copy is not left behind");
}

/// A fetched body verifies as it arrives; an object of its size that
/// does not hash to its name is damaged, and the fetched body takes its
/// place.
#[test]
fn a_fetched_body_replaces_a_damaged_object_of_its_size() {
    let f = Fixture::new();
    let put = f.store.put_bytes(&action(1), b"payload").unwrap();
    fs::write(&put.path, b"PAYLOAD").unwrap();
    let mut writer = f.store.begin_object(OutputId::of(b"payload"), 7).unwrap();
    writer.write_all(b"payload").unwrap();
    f.store
        .commit_fetched(&action(2), writer.finish().unwrap(), PeerId::random())
        .unwrap();
    assert_eq!(fs::read(&put.path).unwrap(), b"payload");
}

/// Nothing is synced between a put and its answer: the put leaves a
/// dirty marker on disk first, and the group commit takes it away once
/// what it covers is on disk.
#[test]
#[cfg(target_os = "linux")]
fn a_put_is_covered_by_a_marker_until_the_group_commit() {
    let f = Fixture::new();
    let markers = || fs::read_dir(&f.store.dirty).map_or(0, Iterator::count);
    assert_eq!(markers(), 0);
    f.store.put_bytes(&action(1), b"one").unwrap();
    f.store.put_bytes(&action(2), b"two").unwrap();
    assert_eq!(markers(), 1, "one marker for the process's writes");
    let synced = f.store.sync().unwrap();
    assert_eq!(synced.epochs, 1);
    assert_eq!(markers(), 0);
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

/// A store directory others can write would let them plant entries in
/// our builds: it is refused, saying what to fix (SECURITY.md, "Files and
/// permissions").
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

/// A fetched body that lands after the helper gave up on it must not
/// rename its entry over the one `go` has just put.
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

/// A reader that finds a damaged file must not remove it by path after
/// its check: a good file another process renamed into place in between
/// would go instead.
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

/// An object whose bytes cannot be read back to hash them (a bad sector)
/// is not known to be damaged: a put of the same output keeps it rather
/// than swap a synced object for an unsynced copy.
#[test]
#[cfg(target_os = "linux")]
fn a_put_keeps_an_object_it_cannot_read_back() {
    use std::os::unix::fs::MetadataExt as _;

    let f = Fixture::new();
    let first = f.store.put_bytes(&action(1), b"shared output").unwrap();
    let inode = fs::metadata(&first.path).unwrap().ino();
    crate::fsutil::test_hooks::FAIL_HASHES.set(true);
    let second = f.store.put_bytes(&action(2), b"shared output");
    crate::fsutil::test_hooks::FAIL_HASHES.set(false);
    second.unwrap();
    assert_eq!(
        fs::metadata(&first.path).unwrap().ino(),
        inode,
        "a hash error was taken for damage"
    );
}

/// `go build -a` puts every action again, with the same output: the
/// entry on disk since the last sync stays (a use), rather than be
/// swapped for an unsynced copy that a power loss could leave holding
/// other blocks.
#[test]
#[cfg(target_os = "linux")]
fn a_put_of_the_same_output_keeps_the_entry_there() {
    use std::os::unix::fs::MetadataExt as _;

    let f = Fixture::new();
    f.store.put_bytes(&action(1), b"output").unwrap();
    f.store.sync().unwrap();
    let path = f.store.entry_path(&action(1));
    let inode = fs::metadata(&path).unwrap().ino();
    f.advance(2 * TOUCH_INTERVAL);
    f.store.put_bytes(&action(1), b"output").unwrap();
    let there = fs::metadata(&path).unwrap();
    assert_eq!(there.ino(), inode, "the synced entry was replaced");
    assert_eq!(there.modified().unwrap(), *f.now.lock().unwrap(), "a use");
    assert_eq!(fs::read(f.hit(&action(1)).path).unwrap(), b"output");
    // Another output replaces it.
    f.store.put_bytes(&action(1), b"other output").unwrap();
    assert_eq!(fs::read(f.hit(&action(1)).path).unwrap(), b"other output");
}

/// Where puts are synced file by file (no group commit), a body fetched
/// from a peer is not synced: a put of the same output must not leave it
/// in place under an entry that is, or a power loss could leave the entry
/// naming an object that lost its data. The put's synced copy takes its
/// place.
#[test]
fn a_put_synced_file_by_file_replaces_an_unsynced_fetched_object() {
    use std::os::unix::fs::MetadataExt as _;

    PER_FILE.set(true);
    let f = Fixture::new();
    PER_FILE.set(false);
    assert!(!f.store.groups_commits());
    let mut writer = f.store.begin_object(OutputId::of(b"payload"), 7).unwrap();
    writer.write_all(b"payload").unwrap();
    let fetched = f
        .store
        .commit_fetched(&action(1), writer.finish().unwrap(), PeerId::random())
        .unwrap();
    let inode = fs::metadata(&fetched.path).unwrap().ino();
    f.store.put_bytes(&action(2), b"payload").unwrap();
    assert_ne!(
        fs::metadata(&fetched.path).unwrap().ino(),
        inode,
        "the unsynced fetched object stays under a synced entry"
    );
    assert_eq!(fs::read(f.hit(&action(2)).path).unwrap(), b"payload");
}

/// A body that starts as a linked ELF executable, `len` bytes long.
fn elf_body(len: usize, seed: u8) -> Vec<u8> {
    let mut body = vec![0x7f, b'E', b'L', b'F', 2, 1, 1];
    body.resize(16, 0);
    body.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    body.resize(len, seed);
    body
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Linked executables are marked on their object file as they are stored,
/// whatever the pieces they arrive in (a few bytes at a time, or one big
/// write hashed beside it), and `warren stats` counts them; other bodies
/// are not marked.
#[test]
fn executables_are_marked_when_stored_and_counted() {
    let f = Fixture::new();
    let small = elf_body(3000, 1);
    let mut writer = f
        .store
        .begin_object(OutputId::of(&small), small.len() as u64)
        .unwrap();
    for piece in small.chunks(7) {
        writer.write_all(piece).unwrap();
    }
    let small = f
        .store
        .commit(&action(1), writer.finish().unwrap())
        .unwrap();
    let big = elf_body(2 * writer::PARALLEL_HASH, 2);
    let big = f.store.put_bytes(&action(2), &big).unwrap();
    let other = f.store.put_bytes(&action(3), b"!<arch>\n").unwrap();
    assert_eq!(mode(&small.path), 0o700);
    assert_eq!(mode(&big.path), 0o700);
    assert_eq!(mode(&other.path), 0o600);
    let usage = f.store.usage().unwrap();
    assert_eq!(
        (usage.objects, usage.executables, usage.executable_bytes),
        (3, 2, 3000 + 2 * writer::PARALLEL_HASH as u64)
    );
}

/// An older warren stored every object `0o600`: its executables load as
/// before and count as other bodies, until a put of the same body marks
/// the object it keeps.
#[test]
fn executables_an_older_warren_stored_still_load() {
    let f = Fixture::new();
    let body = elf_body(3000, 3);
    let stored = f.store.put_bytes(&action(1), &body).unwrap();
    fs::set_permissions(&stored.path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(f.hit(&action(1)).path, stored.path);
    assert_eq!(f.store.usage().unwrap().executables, 0);
    f.store.put_bytes(&action(2), &body).unwrap();
    assert_eq!(mode(&stored.path), 0o700);
    assert_eq!(f.store.usage().unwrap().executables, 1);
    assert_eq!(fs::read(f.hit(&action(1)).path).unwrap(), body);
}
