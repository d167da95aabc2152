//! The put-order index against a real store: hints, catalogs, the summary
//! log, slots, and (on Linux) entries learned of as they land.

use std::sync::atomic::{AtomicU64, Ordering};

use super::index::{CATALOG_SCAN, COMPACT_MIN};
use super::*;
use crate::store::DiskStore;

fn only_local() -> Servable {
    Arc::new(|_: &ActionId, line: &store::Line| {
        (line.source == store::Source::Local).then_some(Body::default())
    })
}

/// The actions of `hints`, in order.
fn actions_hinted(hints: Vec<Hint>) -> Vec<ActionId> {
    hints.into_iter().map(|hint| hint.action).collect()
}

/// A request as an older peer sends it: by put time, after `after`.
fn by_time(after: &catalog::Cursor, max_age: Duration, limit: u32) -> catalog::CatalogRequest {
    catalog::CatalogRequest {
        after: *after,
        max_age_secs: max_age.as_secs(),
        limit,
        since: None,
    }
}

/// A request by position, from `since` on.
fn by_position(since: catalog::Position, max_age: Duration, limit: u32) -> catalog::CatalogRequest {
    catalog::CatalogRequest {
        after: catalog::Cursor::default(),
        max_age_secs: max_age.as_secs(),
        limit,
        since: Some(since),
    }
}

fn actions_of(catalog: &catalog::Catalog) -> Vec<ActionId> {
    catalog.entries.iter().map(|entry| entry.action).collect()
}

fn action(n: u8) -> ActionId {
    let mut bytes = [n; 32];
    bytes[0] = n.wrapping_mul(37); // spread over shards
    ActionId::from_bytes(bytes)
}

/// A store whose clock the test sets, in seconds.
fn store() -> (tempfile::TempDir, Arc<DiskStore>, Arc<AtomicU64>) {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1_000));
    let clock = now.clone();
    let store = DiskStore::open_with_clock(
        dir.path(),
        Arc::new(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::SeqCst))),
    )
    .unwrap();
    (dir, Arc::new(store), now)
}

#[test]
fn hints_follow_put_order_and_stop_at_a_pause() {
    let (_dir, store, now) = store();
    for n in 1..=5 {
        now.fetch_add(1, Ordering::SeqCst);
        store.put_bytes(&action(n), &[n]).unwrap();
    }
    // A pause, then other work.
    now.fetch_add(BURST_GAP.as_secs() + 1, Ordering::SeqCst);
    store.put_bytes(&action(6), b"later").unwrap();

    let order = PutOrder::new(only_local());
    order.refresh(store.actions_dir());
    assert_eq!(
        actions_hinted(order.following(&action(1), 2)),
        [action(2), action(3)]
    );
    assert_eq!(
        actions_hinted(order.following(&action(3), 10)),
        [action(4), action(5)]
    );
    assert!(actions_hinted(order.following(&action(5), 10)).is_empty());
    assert!(actions_hinted(order.following(&action(6), 10)).is_empty());
    assert!(actions_hinted(order.following(&action(9), 10)).is_empty());
}

/// Trust is not transitive: an entry a peer sent is neither hinted at
/// nor named in the summary, so no peer asks for what it would be
/// refused.
#[test]
fn entries_fetched_from_peers_are_not_indexed() {
    use std::io::Write as _;

    let (_dir, store, now) = store();
    for n in 1..=4 {
        now.fetch_add(1, Ordering::SeqCst);
        if n % 2 == 0 {
            let body = [n; 3];
            let mut writer = store
                .begin_object(crate::ids::OutputId::of(&body), 3)
                .unwrap();
            writer.write_all(&body).unwrap();
            store
                .commit_fetched(
                    &action(n),
                    writer.finish().unwrap(),
                    libp2p_identity::PeerId::random(),
                )
                .unwrap();
        } else {
            store.put_bytes(&action(n), &[n]).unwrap();
        }
    }
    let order = PutOrder::new(only_local());
    order.refresh(store.actions_dir());
    assert_eq!(actions_hinted(order.following(&action(1), 10)), [action(3)]);
    assert!(actions_hinted(order.following(&action(2), 10)).is_empty());
    let summary = order.summary(0, 0, 100).unwrap();
    assert_eq!(summary.prefixes.len(), 2, "{summary:?}");
    // A rescan does not read the kept entries again, nor index them.
    order.refresh(store.actions_dir());
    assert_eq!(order.summary(0, 0, 100).unwrap().prefixes.len(), 2);
}

/// A catalog lists what was built here, in put order, from a cursor
/// on, within an age; a re-shared peer's entry is served but not
/// listed.
#[test]
fn catalogs_list_entries_built_here_in_put_order_within_an_age() {
    use std::io::Write as _;

    let (_dir, store, now) = store();
    for n in 1..=6 {
        now.fetch_add(10, Ordering::SeqCst);
        if n == 4 {
            let body = [n; 3];
            let mut writer = store
                .begin_object(crate::ids::OutputId::of(&body), 3)
                .unwrap();
            writer.write_all(&body).unwrap();
            let peer = libp2p_identity::PeerId::random();
            store
                .commit_fetched(&action(n), writer.finish().unwrap(), peer)
                .unwrap();
        } else {
            store
                .put_bytes(&action(n), &vec![n; usize::from(n)])
                .unwrap();
        }
    }
    let serves_all: Servable = Arc::new(|_: &ActionId, _: &store::Line| Some(Body::default()));
    let order = PutOrder::new(serves_all);
    order.refresh(store.actions_dir());
    let at = UNIX_EPOCH + Duration::from_secs(now.load(Ordering::SeqCst));
    let day = Duration::from_secs(86_400);
    let start = catalog::Cursor::default();
    let first = order.catalog_at(&by_time(&start, day, 2), at).unwrap();
    let listed: Vec<ActionId> = first.entries.iter().map(|entry| entry.action).collect();
    assert_eq!(listed, [action(1), action(2)]);
    assert_eq!(first.entries[1].size, 2);
    assert!(first.more);
    let rest = order
        .catalog_at(&by_time(&first.entries[1].cursor(), day, 10), at)
        .unwrap();
    let listed: Vec<ActionId> = rest.entries.iter().map(|entry| entry.action).collect();
    assert_eq!(
        listed,
        [action(3), action(5), action(6)],
        "4 came from a peer"
    );
    assert!(!rest.more);
    // Only what was put in the last 25 s (the last two, 10 s apart).
    let young = order
        .catalog_at(&by_time(&start, Duration::from_secs(25), 10), at)
        .unwrap();
    let listed: Vec<ActionId> = young.entries.iter().map(|entry| entry.action).collect();
    assert_eq!(listed, [action(5), action(6)]);
    // A cursor older than the window starts at the window.
    let old_cursor = order
        .catalog_at(
            &by_time(&first.entries[0].cursor(), Duration::from_secs(25), 10),
            at,
        )
        .unwrap();
    assert_eq!(old_cursor.entries.len(), 2);
}

#[test]
fn refreshes_pick_up_new_entries_and_drop_removed_ones() {
    let (_dir, store, now) = store();
    store.put_bytes(&action(1), b"one").unwrap();
    let order = PutOrder::new(only_local());
    order.refresh(store.actions_dir());
    assert!(actions_hinted(order.following(&action(1), 10)).is_empty());

    now.fetch_add(1, Ordering::SeqCst);
    store.put_bytes(&action(2), b"two").unwrap();
    now.fetch_add(1, Ordering::SeqCst);
    store.put_bytes(&action(3), b"three").unwrap();
    // Directory mtimes have a coarse clock on some filesystems: make the
    // change visible regardless.
    order.index.lock().unwrap().shards.clear();
    order.refresh(store.actions_dir());
    assert_eq!(
        actions_hinted(order.following(&action(1), 10)),
        [action(2), action(3)]
    );

    store.clean().unwrap();
    order
        .index
        .lock()
        .unwrap()
        .shards
        .values_mut()
        .for_each(|mtime| *mtime = UNIX_EPOCH);
    order.refresh(store.actions_dir());
    assert!(actions_hinted(order.following(&action(1), 10)).is_empty());
    assert!(order.index.lock().unwrap().order.is_empty());
}

#[test]
fn the_summary_log_grows_with_new_entries_under_one_epoch() {
    let (_dir, store, now) = store();
    let order = PutOrder::new(only_local());
    assert_eq!(order.summary(0, 0, 10), None, "no summary before a scan");
    store.put_bytes(&action(1), b"one").unwrap();
    order.refresh(store.actions_dir());
    let prefix = |n| warren_p2p::summary::prefix(&action(n));
    let first = order.summary(0, 0, 10).unwrap();
    assert_ne!(first.epoch, 0);
    assert_eq!((first.from, first.generation), (0, 1));
    assert_eq!(first.prefixes, [prefix(1)]);

    now.fetch_add(1, Ordering::SeqCst);
    store.put_bytes(&action(2), b"two").unwrap();
    store.put_bytes(&action(1), b"one again").unwrap(); // not new
    order.index.lock().unwrap().shards.clear();
    order.refresh(store.actions_dir());
    let next = order.summary(first.epoch, 1, 10).unwrap();
    assert_eq!((next.from, next.generation), (1, 2));
    assert_eq!(next.prefixes, [prefix(2)]);
    assert!(
        order
            .summary(first.epoch, 2, 10)
            .unwrap()
            .prefixes
            .is_empty()
    );
    // Another epoch (the daemon restarted): the whole log, limited.
    let all = order.summary(first.epoch + 1, 2, 1).unwrap();
    assert_eq!((all.from, all.prefixes.len()), (0, 1));
    assert_ne!(PutOrder::new(only_local()).summary_epoch(), first.epoch);
}

/// Removed entries give their slots to new ones, and every view of the
/// index (the table, the put order, hints, catalogs, the shards'
/// listings) agrees with what is left.
#[test]
fn slots_are_reused_and_every_view_agrees() {
    let order = PutOrder::new(only_local());
    let action = |n: u32| {
        let mut bytes = [n as u8; 32];
        bytes[1..5].copy_from_slice(&n.to_be_bytes());
        ActionId::from_bytes(bytes)
    };
    let meta = |n: u32| Meta {
        time: 1_000 + u64::from(n),
        size: u64::from(n),
        built_here: !n.is_multiple_of(3),
        executable: n.is_multiple_of(5),
    };
    {
        let mut index = order.index.lock().unwrap();
        for n in 0..100 {
            index.set(action(n), Some(meta(n)));
        }
        index.set(action(100), None); // in the store, not served
        for n in (0..100).step_by(2) {
            index.remove(&action(n));
        }
        for n in 200..250 {
            index.set(action(n), Some(meta(n)));
        }
        assert_eq!(index.slots.len(), 101, "freed slots were taken first");
        assert_eq!(index.served, 100);
        assert_eq!(index.order.len(), 100);
        assert!(index.slot_of(&action(4)).is_none());
        assert_eq!(index.served(&action(5)).unwrap().1, meta(5));
        assert!(index.slot_of(&action(100)).is_some());
        assert!(index.served(&action(100)).is_none());
    }
    order.ready.store(true, Ordering::Release);
    let odd: Vec<ActionId> = (1..100).step_by(2).map(action).collect();
    assert_eq!(actions_hinted(order.following(&action(1), 3)), odd[1..4]);
    let forever = Duration::from_secs(u64::MAX / 4);
    let at = UNIX_EPOCH + Duration::from_secs(10);
    let catalog = order
        .catalog_at(&by_time(&catalog::Cursor::default(), forever, 1000), at)
        .unwrap();
    let built_here: Vec<ActionId> = (1..100)
        .step_by(2)
        .chain(200..250)
        .filter(|n: &u32| !n.is_multiple_of(3))
        .map(action)
        .collect();
    assert_eq!(actions_of(&catalog), built_here);
    let catalog = order
        .catalog_at(&by_position(catalog::Position::START, forever, 1000), at)
        .unwrap();
    assert_eq!(actions_of(&catalog), built_here);
    assert_eq!(
        order.index.lock().unwrap().listing.by_seq.len(),
        built_here.len()
    );
    let known = order.known_in(&["01".to_owned(), "64".to_owned(), "zz".to_owned()]);
    assert_eq!(known.len(), 2, "{:?}", known.keys());
    assert_eq!(known["01"], HashSet::from([action(1)]));
    assert_eq!(known["64"], HashSet::from([action(100)]));
}

/// A catalog cursor whose entry was trimmed since goes on after its
/// put time.
#[test]
fn a_cursor_whose_entry_is_gone_goes_on_after_its_time() {
    let order = PutOrder::new(only_local());
    let meta = |time| Meta {
        time,
        size: 1,
        built_here: true,
        executable: false,
    };
    {
        let mut index = order.index.lock().unwrap();
        for n in 1..=3 {
            index.set(action(n), Some(meta(u64::from(n) * 10)));
        }
        index.remove(&action(2));
    }
    order.ready.store(true, Ordering::Release);
    let cursor = catalog::Cursor {
        time_unix_nanos: 20,
        action: Some(action(2)),
    };
    let next = order
        .catalog_at(
            &by_time(&cursor, Duration::from_secs(60), 10),
            UNIX_EPOCH + Duration::from_secs(1),
        )
        .unwrap();
    let listed: Vec<ActionId> = next.entries.iter().map(|e| e.action).collect();
    assert_eq!(listed, [action(3)]);
}

/// A peer whose clock jumped a day ahead and was set right again puts
/// its next entries before those of the jump. A catalog paged by put
/// time never lists them to a requester that saw the jump's; paged by
/// position, it lists each entry once, whatever its put time.
#[test]
fn positions_survive_a_clock_that_jumped_ahead_and_back() {
    let (_dir, store, now) = store();
    let day = Duration::from_secs(86_400);
    let put = |n: u8| store.put_bytes(&action(n), &[n; 4]).unwrap();
    now.store(100_000, Ordering::SeqCst);
    put(1);
    now.store(100_000 + day.as_secs(), Ordering::SeqCst);
    put(2);
    now.fetch_add(1, Ordering::SeqCst);
    put(3);
    let order = PutOrder::new(only_local());
    order.refresh(store.actions_dir());
    // The clock is set right: the next puts come before the jump's.
    now.store(100_010, Ordering::SeqCst);
    for n in [4, 5] {
        now.fetch_add(1, Ordering::SeqCst);
        put(n);
        order.index.lock().unwrap().shards.clear();
        order.refresh(store.actions_dir());
    }

    let at = UNIX_EPOCH + Duration::from_secs(100_020);
    let first = order
        .catalog_at(&by_position(catalog::Position::START, day, 3), at)
        .unwrap();
    assert_eq!(actions_of(&first), [action(1), action(2), action(3)]);
    let next = first.next.expect("a position to go on from");
    let rest = order.catalog_at(&by_position(next, day, 10), at).unwrap();
    assert_eq!(actions_of(&rest), [action(4), action(5)]);
    assert!(!rest.more);
    let end = rest.next.unwrap();
    assert!(
        order
            .catalog_at(&by_position(end, day, 10), at)
            .unwrap()
            .entries
            .is_empty(),
        "each entry once"
    );
    // By put time (what an older peer asks), 4 and 5 sort before the
    // last entry seen, and are never listed after it.
    let after_jump = first.entries[2].cursor();
    let by_time = order
        .catalog_at(&by_time(&after_jump, day, 10), at)
        .unwrap();
    assert!(by_time.entries.is_empty(), "{by_time:?}");
    assert_eq!(by_time.next, None, "no position for an older peer");

    // A position of another run (the peer restarted) starts over.
    let stale = catalog::Position {
        epoch: end.epoch.wrapping_add(1).max(1),
        seq: end.seq,
    };
    let again = order.catalog_at(&by_position(stale, day, 10), at).unwrap();
    assert_eq!(again.entries.len(), 5);
}

/// Entries older than the window are passed over, and the position
/// still moves past them; one answer looks at no more than
/// [`CATALOG_SCAN`] of them.
#[test]
fn positions_move_past_entries_older_than_the_window() {
    let order = PutOrder::new(only_local());
    let meta = |time| Meta {
        time,
        size: 1,
        built_here: true,
        executable: false,
    };
    let action = |n: u32| {
        let mut bytes = [9; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        ActionId::from_bytes(bytes)
    };
    let old = CATALOG_SCAN as u32 + 5;
    {
        let mut index = order.index.lock().unwrap();
        for n in 0..old {
            index.set(action(n), Some(meta(1)));
        }
        index.set(action(old), Some(meta(50_000_000_000)));
    }
    order.ready.store(true, Ordering::Release);
    let at = UNIX_EPOCH + Duration::from_secs(60);
    let window = Duration::from_secs(30);
    let first = order
        .catalog_at(&by_position(catalog::Position::START, window, 10), at)
        .unwrap();
    assert!(first.entries.is_empty());
    assert!(first.more, "looked at as many as it may");
    assert_eq!(first.next.unwrap().seq, CATALOG_SCAN as u64);
    let rest = order
        .catalog_at(&by_position(first.next.unwrap(), window, 10), at)
        .unwrap();
    assert_eq!(actions_of(&rest), [action(old)]);
    assert!(!rest.more);
}

/// An entry file in another action's shard directory is not an entry:
/// lookups would never find it, so it is neither hinted nor listed.
#[test]
fn entries_in_the_wrong_shard_are_not_indexed() {
    let (_dir, store, _) = store();
    store.put_bytes(&action(1), b"one").unwrap();
    let right = store.entry_path(&action(1));
    let wrong_shard = store.actions_dir().join("zz");
    fs::create_dir_all(&wrong_shard).unwrap();
    fs::copy(&right, wrong_shard.join(action(2).to_hex())).unwrap();
    // action(3)'s name in action(1)'s shard.
    assert_ne!(shard_of(&action(1)), shard_of(&action(3)));
    fs::copy(&right, right.with_file_name(action(3).to_hex())).unwrap();
    let order = PutOrder::new(only_local());
    order.refresh(store.actions_dir());
    let index = order.index.lock().unwrap();
    assert_eq!((index.served, index.slots.len()), (1, 1));
    assert!(index.served(&action(1)).is_some());
}

/// A summary log that only grew, whatever was removed, would name what is
/// gone to every peer for ever: once mostly removed, it starts over.
#[test]
fn a_mostly_removed_log_starts_over_with_what_is_left() {
    let mut index = Index::default();
    let action = |n: u32| {
        let mut bytes = [7; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        ActionId::from_bytes(bytes)
    };
    let total = COMPACT_MIN as u32 + 100;
    for n in 0..total {
        let meta = Meta {
            time: u64::from(n),
            size: 1,
            built_here: true,
            executable: false,
        };
        index.set(action(n), Some(meta));
    }
    let epoch = index.log.epoch();
    // Half gone: kept as it is.
    for n in 0..total / 2 {
        index.remove(&action(n));
    }
    assert!(!index.compact());
    assert_eq!(index.log.len(), total as usize);
    // Most gone: a new log of what is left, in put order.
    for n in total / 2..total - 10 {
        index.remove(&action(n));
    }
    assert!(index.compact());
    assert_ne!(index.log.epoch(), epoch);
    let chunk = index.log.chunk(index.log.epoch(), 0, 100);
    let left: Vec<u64> = (total - 10..total)
        .map(|n| warren_p2p::summary::prefix(&action(n)))
        .collect();
    assert_eq!(chunk.prefixes, left);
    assert!(!index.compact(), "once");
}

#[cfg(target_os = "linux")]
async fn wait_for_generation(
    order: &PutOrder,
    updates: &mut notify::Receiver<()>,
    generation: u64,
) {
    tokio::time::timeout(SAFETY_SCAN / 2, async {
        while order
            .summary(0, 0, 100)
            .is_none_or(|summary| summary.generation != generation)
        {
            let _ = tokio::time::timeout(Duration::from_millis(50), updates.changed()).await;
        }
    })
    .await
    .expect("the entry indexed well before a safety scan");
}

/// With inotify, an entry is in the summary log moments after it lands
/// (not at the next scan), and the update is announced.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_started_index_learns_of_entries_as_they_land() {
    let (_dir, store, _) = store();
    store.put_bytes(&action(1), b"before").unwrap();
    let order = PutOrder::start(store.actions_dir().to_path_buf(), only_local()).unwrap();
    let mut updates = order.updates();
    wait_for_generation(&order, &mut updates, 1).await;
    assert!(order.is_live(), "inotify is not in use");
    let started = std::time::Instant::now();
    store.put_bytes(&action(2), b"after").unwrap();
    wait_for_generation(&order, &mut updates, 2).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let log = order.summary(0, 0, 100).unwrap().prefixes;
    assert!(log.contains(&warren_p2p::summary::prefix(&action(2))));
}

/// A coworker's test binary, put in the middle of a build: the hints and
/// the catalog name it as an executable with its size, from the body's
/// first bytes as the daemon reads them (`node_store::body_of`), so that
/// each peer can leave it out of read-ahead and replication by its own
/// limit; the entries around it are named as any other.
#[test]
fn hints_and_catalogs_name_executables_with_their_sizes() {
    let (_dir, store, now) = store();
    let mut binary = b"\x7fELF\x02\x01\x01".to_vec();
    binary.resize(16, 0);
    binary.extend_from_slice(&2u16.to_le_bytes());
    binary.resize(100_000, 7);
    for (n, body) in [(1, &b"before"[..]), (2, &binary[..]), (3, &b"after"[..])] {
        now.fetch_add(1, Ordering::SeqCst);
        store.put_bytes(&action(n), body).unwrap();
    }
    let servable: Servable = {
        let store = store.clone();
        Arc::new(move |_: &ActionId, line: &store::Line| {
            crate::daemon::node_store::body_of(&store.object_path(&line.output))
        })
    };
    let order = PutOrder::new(servable);
    order.refresh(store.actions_dir());
    assert_eq!(
        order.following(&action(1), 10),
        [
            Hint {
                action: action(2),
                executable: Some(100_000)
            },
            Hint::new(action(3))
        ]
    );
    let catalog = order
        .catalog_at(
            &by_position(catalog::Position::START, Duration::from_secs(3600), 10),
            UNIX_EPOCH + Duration::from_secs(1_010),
        )
        .unwrap();
    let executables: Vec<(ActionId, bool)> = (catalog.entries.iter())
        .map(|entry| (entry.action, entry.executable))
        .collect();
    assert_eq!(
        executables,
        [(action(1), false), (action(2), true), (action(3), false)]
    );
}
