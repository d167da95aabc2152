//! Trim, clean, verify and usage: what goes, what stays whatever the clock
//! says, and what a walk never follows.

#![expect(
    clippy::disallowed_methods,
    reason = "tests damage store files in place, as a crash or bit rot would"
)]

use std::sync::{Arc, Mutex};

use super::*;
use crate::ids::ActionId;
use crate::store::tests::{Fixture, action, set_mtime};
use crate::store::{Lookup, USE_GRACE};

/// An object handed to `go` after trim's walk read its mtime (refreshed
/// since) must not be removed on the mtime the walk read.
#[test]
fn a_file_used_after_the_walk_saw_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let entry = store
        .put_bytes(&ActionId::from_bytes([1; 32]), b"body")
        .unwrap();
    let long_ago = SystemTime::now() - Duration::from_secs(30 * 86400);
    File::open(&entry.path)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let walk = || {
        let mut walked = Vec::new();
        walk_files(&store.objects, &mut |file| walked.push(file)).unwrap();
        walked.pop().expect("the one object")
    };
    let seen = walk();
    // A lookup hands the object to go now, refreshing its mtime.
    File::open(&entry.path)
        .unwrap()
        .set_modified(SystemTime::now())
        .unwrap();
    let mut report = TrimReport::default();
    assert!(!remove_if_unchanged(&seen, &mut report));
    assert!(entry.path.exists());
    // Put again since the walk (its path handed to go as the put's): kept
    // too.
    File::open(&entry.path)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let seen = walk();
    store
        .put_bytes(&ActionId::from_bytes([2; 32]), b"body")
        .unwrap();
    assert!(
        fs::symlink_metadata(&entry.path)
            .unwrap()
            .modified()
            .unwrap()
            > long_ago,
        "the put did not count as a use of the object it kept"
    );
    assert!(!remove_if_unchanged(&seen, &mut report));
    // Replaced since the walk: kept too.
    File::open(&entry.path)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let seen = walk();
    fs::write(&entry.path, b"BODY").unwrap();
    store
        .put_bytes(&ActionId::from_bytes([3; 32]), b"body")
        .unwrap();
    assert_ne!(
        fs::symlink_metadata(&entry.path).unwrap().ino(),
        seen.ino,
        "the put did not repair the damaged object"
    );
    assert!(!remove_if_unchanged(&seen, &mut report));
    // Unchanged since the walk: removed.
    File::open(&entry.path)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let seen = walk();
    assert!(remove_if_unchanged(&seen, &mut report));
    assert!(!entry.path.exists());
    assert_eq!(report.removed_files, 1);
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

/// A shard replaced by a symbolic link must not lead trim and clean to
/// delete the files of whatever directory it points at (SECURITY.md,
/// "Files and permissions").
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
