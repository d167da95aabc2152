//! The store as the node sees it: what is served, what a fetched body must
//! pass to land, and the budgets it counts against.

use std::collections::HashSet;

use warren_p2p::Bodies as _;

use super::*;

fn peer() -> PeerId {
    libp2p_identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
}

const POLICY: TrimPolicy = TrimPolicy {
    max_size: 8 << 30,
    max_unused: Duration::from_secs(3600),
};

fn adapter(dir: &std::path::Path, state: SharingState) -> (Arc<DiskStore>, StoreAdapter) {
    let store = Arc::new(DiskStore::open(dir).unwrap());
    let adapter = StoreAdapter::new(
        store.clone(),
        Sharing::new(state),
        POLICY,
        false,
        Arc::default(),
    )
    .unwrap()
    .with_floor(roomy_disk());
    (store, adapter)
}

/// A disk with room to spare, so that these tests do not depend on
/// this machine's free space (the floor has tests of its own).
pub(crate) fn roomy_disk() -> DiskFloor {
    DiskFloor::with_reader(|| {
        Some(crate::fsutil::Space {
            free: 1 << 50,
            total: 1 << 50,
        })
    })
}

fn fetch(adapter: &StoreAdapter, n: u8, body: &[u8], from: &PeerId) -> Result<(), CommitError> {
    let mut sink = adapter
        .begin(
            &ActionId::from_bytes([n; 32]),
            &OutputId::of(body),
            body.len() as u64,
            from,
        )
        .unwrap();
    sink.write_all(body).unwrap();
    sink.commit()
}

/// The sink is the node's only check of a fetched body.
#[test]
fn sinks_store_only_the_announced_body_and_name_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let alice = peer();
    let (store, adapter) = adapter(
        dir.path(),
        SharingState {
            pull: HashSet::from([alice]),
            ..SharingState::default()
        },
    );
    let body = b"the real body";
    let output = OutputId::of(body);

    let mut sink = adapter
        .begin(
            &ActionId::from_bytes([1; 32]),
            &output,
            body.len() as u64,
            &alice,
        )
        .unwrap();
    sink.write_all(b"a fake body!!").unwrap();
    match sink.commit() {
        Err(CommitError::Mismatch {
            actual,
            actual_size,
        }) => {
            assert_eq!(actual, OutputId::of(b"a fake body!!"));
            assert_eq!(actual_size, 13);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert_eq!(
        store.get(&ActionId::from_bytes([1; 32])).unwrap(),
        Lookup::Miss
    );

    fetch(&adapter, 1, body, &alice).unwrap();
    let Lookup::Hit(entry) = store.get(&ActionId::from_bytes([1; 32])).unwrap() else {
        panic!("a verified body is stored");
    };
    assert_eq!(std::fs::read(entry.path).unwrap(), body);
    assert_eq!(entry.source, Source::Peer(alice));
}

/// What a peer sent us is used here but not served on, unless that peer
/// is re-shared (SECURITY.md, "Provenance, and why trust is not
/// transitive").
#[test]
fn only_entries_built_here_are_served_unless_their_peer_is_reshared() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, ci) = (peer(), peer());
    let (store, adapter) = adapter(
        dir.path(),
        SharingState {
            pull: HashSet::from([alice, ci]),
            reshare: HashSet::from([ci]),
        },
    );
    store
        .put_bytes(&ActionId::from_bytes([1; 32]), b"built here")
        .unwrap();
    fetch(&adapter, 2, b"from alice", &alice).unwrap();
    fetch(&adapter, 3, b"from ci", &ci).unwrap();

    let served = |n: u8| {
        adapter
            .open(&ActionId::from_bytes([n; 32]))
            .unwrap()
            .is_some()
    };
    store
        .put_bytes(
            &ActionId::from_bytes([4; 32]),
            b"go index v2\n\0\0machine-specific",
        )
        .unwrap();
    assert!(served(1), "built here");
    assert!(!served(2), "fetched from alice: used here, never served on");
    assert!(served(3), "fetched from a re-shared peer");
    assert!(!served(4), "a module index is never served");
    assert!(matches!(
        store.get(&ActionId::from_bytes([2; 32])).unwrap(),
        Lookup::Hit(_)
    ));
}

/// With agreement on, the adapter remembers what was built here (not
/// what peers sent), past the entry's removal, and tells peers which
/// entries it built (SECURITY.md, "What verification proves, and what it
/// cannot").
#[test]
fn with_agreement_builds_here_are_remembered_after_their_entry_goes() {
    let dir = tempfile::tempdir().unwrap();
    let alice = peer();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    let built = ActionId::from_bytes([1; 32]);
    let output = store.put_bytes(&built, b"built here").unwrap().output;
    let sharing = Sharing::new(SharingState {
        pull: HashSet::from([alice]),
        reshare: HashSet::from([alice]),
    });
    let adapter = StoreAdapter::new(store.clone(), sharing, POLICY, true, Arc::default())
        .unwrap()
        .with_floor(roomy_disk());
    fetch(&adapter, 2, b"from alice", &alice).unwrap();
    let start = Instant::now();
    while adapter.built_here(&built).is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "never indexed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(adapter.built_here(&built), Some(output));
    assert!(adapter.open(&built).unwrap().unwrap().built_here);
    // Alice's entry is served on (she is re-shared), but not as ours.
    let relayed = adapter.open(&ActionId::from_bytes([2; 32])).unwrap();
    assert!(!relayed.unwrap().built_here);
    assert_eq!(adapter.built_here(&ActionId::from_bytes([2; 32])), None);

    let hex = built.to_hex();
    let entry = std::fs::read_dir(store.actions_dir())
        .unwrap()
        .map(|shard| shard.unwrap().path().join(&hex))
        .find(|path| path.exists())
        .unwrap();
    std::fs::remove_file(entry).unwrap();
    assert_eq!(store.get(&built).unwrap(), Lookup::Miss);
    assert_eq!(adapter.built_here(&built), Some(output));

    let other = tempfile::tempdir().unwrap();
    let without = StoreAdapter::new(
        Arc::new(DiskStore::open(other.path()).unwrap()),
        Sharing::new(SharingState::default()),
        POLICY,
        false,
        Arc::default(),
    )
    .unwrap();
    assert_eq!(without.built_here(&built), None, "agreement off: no ledger");
}

/// A body from a peer removed while it was on its way does not land
/// after `warren peers remove` purged that peer's entries.
#[test]
fn a_body_from_a_peer_no_longer_pulled_from_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let alice = peer();
    let (store, adapter) = adapter(
        dir.path(),
        SharingState {
            pull: HashSet::from([alice]),
            ..SharingState::default()
        },
    );
    adapter.sharing.set(SharingState::default());
    assert!(matches!(
        fetch(&adapter, 1, b"late body", &alice),
        Err(CommitError::Io(_))
    ));
    assert_eq!(
        store.get(&ActionId::from_bytes([1; 32])).unwrap(),
        Lookup::Miss
    );
}

/// A peer removed while its body is between the "still pulled from"
/// check and the commit: the reload that removed it must not finish
/// (and purge) before that commit lands, or the entry stays after the
/// purge and reaches `go`.
#[test]
fn a_reload_waits_for_a_commit_past_its_check_then_purges_it() {
    use std::sync::mpsc::sync_channel;

    let dir = tempfile::tempdir().unwrap();
    let alice = peer();
    let (store, mut adapter) = adapter(
        dir.path(),
        SharingState {
            pull: HashSet::from([alice]),
            ..SharingState::default()
        },
    );
    let (entered, in_commit) = sync_channel(1);
    let (release, released) = sync_channel::<()>(1);
    let released = Mutex::new(released);
    adapter.before_commit = Some(Arc::new(move || {
        entered.send(()).unwrap();
        let _ = released
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10));
    }));
    let adapter = Arc::new(adapter);
    let committing = {
        let adapter = adapter.clone();
        std::thread::spawn(move || fetch(&adapter, 1, b"on its way", &alice))
    };
    in_commit.recv_timeout(Duration::from_secs(10)).unwrap();
    let (purged, purge_done) = sync_channel(1);
    let reloading = {
        let (sharing, store) = (adapter.sharing.clone(), store.clone());
        std::thread::spawn(move || {
            sharing.set(SharingState::default());
            store.purge_except(&HashSet::new()).unwrap();
            purged.send(()).unwrap();
        })
    };
    // Unfixed, the reload purges at once; fixed, it waits for the commit.
    let _ = purge_done.recv_timeout(Duration::from_millis(500));
    release.send(()).unwrap();
    let _ = committing.join().unwrap();
    reloading.join().unwrap();
    assert_eq!(
        store.get(&ActionId::from_bytes([1; 32])).unwrap(),
        Lookup::Miss,
        "the removed peer's entry landed after the purge"
    );
}

/// A disk with less free than `max-size` allows: fetched bodies are
/// refused when their reservation would take the disk under its floor
/// (bodies on their way counted), and at their commit when the disk
/// filled meanwhile; `go`'s own puts are not (SECURITY.md, "Bounds on
/// what an allowlisted peer can make your daemon do").
#[test]
fn fetched_bodies_leave_the_disk_its_floor() {
    use crate::fsutil::Space;
    use std::sync::atomic::AtomicU64;

    const GIB: u64 = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let alice = peer();
    let free = Arc::new(AtomicU64::new(GIB + 300));
    let (store, adapter) = adapter(
        dir.path(),
        SharingState {
            pull: HashSet::from([alice]),
            ..SharingState::default()
        },
    );
    let adapter = adapter.with_floor({
        let free = free.clone();
        DiskFloor::with_reader(move || {
            Some(Space {
                free: free.load(Ordering::Relaxed),
                total: 10 * GIB,
            })
        })
    });
    let begin = |n: u8, body: &[u8]| {
        adapter.begin(
            &ActionId::from_bytes([n; 32]),
            &OutputId::of(body),
            body.len() as u64,
            &alice,
        )
    };
    let first = begin(1, &[1; 200]).unwrap();
    let refused = begin(2, &[2; 200]).map(drop).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::StorageFull, "{refused}");
    assert!(
        refused.to_string().contains("kept free for builds"),
        "{refused}"
    );
    drop(first);
    let mut sink = begin(3, &[3; 200]).unwrap();
    sink.write_all(&[3; 200]).unwrap();
    free.store(GIB - 1, Ordering::Relaxed);
    assert!(
        matches!(sink.commit(), Err(CommitError::Io(e)) if e.kind() == io::ErrorKind::StorageFull)
    );
    assert_eq!(
        store.get(&ActionId::from_bytes([3; 32])).unwrap(),
        Lookup::Miss
    );
    store
        .put_bytes(&ActionId::from_bytes([4; 32]), &[4; 200])
        .unwrap();
}

/// A peer's bodies would fill the store past `max-size`: fetched bytes
/// count against it, and past it bodies are refused (the build compiles
/// instead), not stored (SECURITY.md, "Bounds on what an allowlisted peer
/// can make your daemon do").
#[test]
fn fetched_bodies_that_would_pass_max_size_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let alice = peer();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    store
        .put_bytes(&ActionId::from_bytes([1; 32]), &[1; 10_000])
        .unwrap();
    let policy = TrimPolicy {
        max_size: 25_000,
        ..POLICY
    };
    let sharing = Sharing::new(SharingState {
        pull: HashSet::from([alice]),
        ..SharingState::default()
    });
    let adapter = StoreAdapter::new(store.clone(), sharing, policy, false, Arc::default())
        .unwrap()
        .with_floor(roomy_disk());
    fetch(&adapter, 2, &[2; 10_000], &alice).unwrap();
    let refused = adapter.begin(
        &ActionId::from_bytes([3; 32]),
        &OutputId::of(&[3; 10_000]),
        10_000,
        &alice,
    );
    assert!(
        matches!(&refused, Err(e) if e.kind() == io::ErrorKind::StorageFull),
        "{:?}",
        refused.map(drop)
    );
    assert_eq!(
        store.get(&ActionId::from_bytes([3; 32])).unwrap(),
        Lookup::Miss
    );
    // Small bodies still fit.
    fetch(&adapter, 4, &[4; 100], &alice).unwrap();
}

/// A peer sends an archive whose build ID names another action: it is
/// refused, and counted against the peer; a module index is not stored
/// either (SECURITY.md, "What verification proves, and what it cannot").
#[test]
fn archives_fetched_under_another_action_and_module_indexes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let alice = peer();
    let (store, adapter) = adapter(
        dir.path(),
        SharingState {
            pull: HashSet::from([alice]),
            ..SharingState::default()
        },
    );
    let action = ActionId::from_bytes([7; 32]);
    let archive = |build_id: &str| {
        format!("!<arch>\n__.PKGDEF 0 0 0 644 10 `\ngo object linux amd64 go1.26 X:none\nbuild id \"{build_id}\"\n")
            .into_bytes()
    };
    let own = format!("{}/content", consistency::hash_to_string(&action));
    let foreign = format!(
        "{}/content",
        consistency::hash_to_string(&ActionId::from_bytes([8; 32]))
    );
    assert!(matches!(
        fetch(&adapter, 7, &archive(&foreign), &alice),
        Err(CommitError::Refused(_))
    ));
    assert_eq!(store.get(&action).unwrap(), Lookup::Miss);
    fetch(&adapter, 7, &archive(&own), &alice).unwrap();
    assert!(matches!(store.get(&action).unwrap(), Lookup::Hit(_)));
    assert!(matches!(
        fetch(&adapter, 9, b"go index v2\nfrom elsewhere", &alice),
        Err(CommitError::Io(_))
    ));
}

/// A peer's claim of a 2 GiB body that it then stalls or drips holds
/// no room in the store: the node counts bodies in flight as their
/// bytes arrive (`warren_p2p::NodeConfig::with_max_in_flight`), so an
/// honest peer's body is stored while the claim is on its way.
#[test]
fn a_huge_claim_on_its_way_does_not_refuse_other_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, mallory) = (peer(), peer());
    let (store, adapter) = adapter(
        dir.path(),
        SharingState {
            pull: HashSet::from([alice, mallory]),
            ..SharingState::default()
        },
    );
    let mut claim = adapter
        .begin(
            &ActionId::from_bytes([1; 32]),
            &OutputId::of(b"never sent"),
            2 << 30,
            &mallory,
        )
        .unwrap();
    claim.write_all(&[0; 4096]).unwrap();
    fetch(&adapter, 2, b"an honest body", &alice).unwrap();
    assert!(matches!(
        store.get(&ActionId::from_bytes([2; 32])).unwrap(),
        Lookup::Hit(_)
    ));
    drop(claim);
}
