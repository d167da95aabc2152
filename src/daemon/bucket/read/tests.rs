//! Reading the bucket over OpenDAL's memory service: what is used, what is
//! never used, and what a failing bucket costs.

use std::collections::HashSet;
use std::time::Duration;

use libp2p_identity::Keypair;

use super::*;
use crate::config::trust::SharingState;
use crate::daemon::bucket::faulty::Faulty;
use crate::daemon::bucket::manifest::Entry;
use crate::store::{Lookup, Source, TrimPolicy};

const SETTINGS: Settings = Settings {
    deadline: Duration::from_secs(2),
    cooldown: Duration::from_secs(60),
    refresh: Duration::from_secs(30),
    read_ahead_size: 1 << 30,
    max_rate: None,
};

struct World {
    _dir: tempfile::TempDir,
    store: Arc<DiskStore>,
    bucket: Arc<Faulty>,
    sharing: Arc<Sharing>,
    reader: Arc<Reader>,
}

fn world(pulled: &[PeerId]) -> World {
    world_with(pulled, SETTINGS)
}

fn world_with(pulled: &[PeerId], settings: Settings) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    let sharing = Sharing::new(SharingState {
        pull: pulled.iter().copied().collect(),
        reshare: HashSet::new(),
    });
    let policy = TrimPolicy {
        max_size: 8 << 30,
        max_unused: Duration::from_secs(3600),
    };
    let adapter = StoreAdapter::new(
        store.clone(),
        sharing.clone(),
        policy,
        false,
        Arc::default(),
    )
    .unwrap()
    .with_floor(crate::daemon::node_store::tests::roomy_disk());
    let bucket = Arc::new(Faulty::new());
    let reader = Reader::new(
        bucket.clone(),
        settings,
        sharing.clone(),
        Arc::new(adapter),
        store.clone(),
        Arc::default(),
    );
    World {
        _dir: dir,
        store,
        bucket,
        sharing,
        reader,
    }
}

fn key(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).unwrap()
}

fn body(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(n) ^ n).collect()
}

/// Puts bodies and a manifest of them as a writer would; their actions.
async fn publish(world: &World, signer: &Keypair, bodies: &[Vec<u8>], first: u8) -> Vec<ActionId> {
    let mut entries = Vec::new();
    for (n, bytes) in bodies.iter().enumerate() {
        let output = OutputId::of(bytes);
        let (name, stored) = stored_body(&output, bytes);
        world.bucket.put_if_absent(&name, stored).await.unwrap();
        entries.push(Entry {
            action: ActionId::from_bytes([first + n as u8; 32]),
            output,
            size: bytes.len() as u64,
            time_ms: 1_700_000_000_000,
        });
    }
    let manifest = Manifest {
        signer: signer.public().to_peer_id(),
        time_ms: 1_700_000_000_000 + u64::from(first),
        entries: entries.clone(),
    };
    let name = keys::manifest(manifest.time_ms, &manifest.signer, u64::from(first));
    let bytes = manifest.sign(signer).unwrap();
    world.bucket.put_if_absent(&name, bytes).await.unwrap();
    entries.iter().map(|e| e.action).collect()
}

/// A manifest signed by a trusted builder is used: the body lands,
/// verified, with the signer as its source.
#[tokio::test]
async fn a_trusted_manifest_is_used_and_its_signer_is_the_source() {
    let writer = key(1);
    let world = world(&[writer.public().to_peer_id()]);
    let bodies = [body(1, 100), body(2, 50_000)];
    let actions = publish(&world, &writer, &bodies, 10).await;
    world.reader.refresh(true).await.unwrap();
    for (action, bytes) in actions.iter().zip(&bodies) {
        let fetched = world.reader.lookup(*action).await.unwrap().unwrap();
        assert_eq!(fetched.signer, writer.public().to_peer_id());
        let Ok(Lookup::Hit(entry)) = world.store.get(action) else {
            panic!("not stored");
        };
        assert_eq!(entry.source, Source::Peer(writer.public().to_peer_id()));
        assert_eq!(&std::fs::read(&entry.path).unwrap(), bytes);
    }
    let counters = &world.reader.counters;
    assert_eq!(
        counters.hits.load(Ordering::Relaxed) + counters.read_ahead.load(Ordering::Relaxed),
        2,
        "each body fetched once, for the lookup or ahead of it"
    );
}

/// An attacker with the bucket's credentials writes manifests: signed by
/// a key the reader does not trust, unsigned, or a trusted one's with a
/// mapping changed. None is ever used.
#[tokio::test]
async fn untrusted_unsigned_and_tampered_manifests_are_never_used() {
    let (trusted, attacker) = (key(1), key(2));
    let world = world(&[trusted.public().to_peer_id()]);
    let untrusted = publish(&world, &attacker, &[body(3, 10)], 20).await;

    // A trusted builder's manifest, its OutputID changed to the attacker's.
    let honest = body(4, 10);
    let evil = body(5, 10);
    let (name, stored) = stored_body(&OutputId::of(&evil), &evil);
    world.bucket.put_if_absent(&name, stored).await.unwrap();
    let action = ActionId::from_bytes([30; 32]);
    let manifest = Manifest {
        signer: trusted.public().to_peer_id(),
        time_ms: 1_700_000_000_100,
        entries: vec![Entry {
            action,
            output: OutputId::of(&honest),
            size: 10,
            time_ms: 1,
        }],
    };
    let mut bytes = manifest.sign(&trusted).unwrap();
    let at = bytes.len() - 64 - 16 - 32;
    bytes[at..at + 32].copy_from_slice(OutputId::of(&evil).as_bytes());
    let tampered_name = keys::manifest(manifest.time_ms, &manifest.signer, 1);
    world
        .bucket
        .put_if_absent(&tampered_name, bytes.clone())
        .await
        .unwrap();
    // The same without its signature.
    let unsigned_name = keys::manifest(manifest.time_ms, &manifest.signer, 2);
    let unsigned = bytes[..bytes.len() - 64].to_vec();
    world
        .bucket
        .put_if_absent(&unsigned_name, unsigned)
        .await
        .unwrap();
    // A trusted builder's manifest under a name that claims the attacker.
    let renamed = keys::manifest(manifest.time_ms, &attacker.public().to_peer_id(), 3);
    let signed = manifest.sign(&trusted).unwrap();
    world.bucket.put_if_absent(&renamed, signed).await.unwrap();

    world.reader.refresh(true).await.unwrap();
    for action in untrusted.iter().chain([&action]) {
        assert!(!world.reader.names(action), "{action} is named");
        assert_eq!(world.reader.lookup(*action).await.unwrap(), None);
        assert!(matches!(world.store.get(action), Ok(Lookup::Miss)));
    }
    let (manifests, mappings, _, untrusted_signers) = world.reader.census();
    assert_eq!((manifests, mappings), (0, 0));
    assert_eq!(untrusted_signers, vec![attacker.public().to_peer_id()]);
    assert_eq!(
        world
            .reader
            .counters
            .manifests_refused
            .load(Ordering::Relaxed),
        2,
        "the tampered and the unsigned manifests are refused"
    );
}

/// `warren peers remove`: the signer's mappings leave the index at once
/// (the daemon's allowlist reload purges its entries from the store).
#[tokio::test]
async fn a_removed_signer_s_mappings_go_at_once() {
    let writer = key(1);
    let world = world(&[writer.public().to_peer_id()]);
    let actions = publish(&world, &writer, &[body(1, 10)], 40).await;
    world.reader.refresh(true).await.unwrap();
    assert!(world.reader.names(&actions[0]));
    world.sharing.set(SharingState::default());
    world.reader.allowlist_changed();
    assert!(!world.reader.names(&actions[0]));
    assert_eq!(world.reader.lookup(actions[0]).await.unwrap(), None);
}

/// A body that does not match its OutputID is refused, nothing lands, and
/// the bucket is left out of lookups (cooldown) without a request.
#[tokio::test]
async fn a_bad_body_is_refused_and_cools_the_bucket_down() {
    let writer = key(1);
    let world = world(&[writer.public().to_peer_id()]);
    let actions = publish(&world, &writer, &[body(1, 10), body(2, 10)], 50).await;
    let name = keys::object(&OutputId::of(&body(1, 10)), false);
    world.bucket.delete(&name).await.unwrap();
    world
        .bucket
        .put_if_absent(&name, body(9, 10))
        .await
        .unwrap();
    world.reader.refresh(true).await.unwrap();
    assert_eq!(
        world.reader.lookup(actions[0]).await,
        Err(BucketMiss::Failed)
    );
    assert!(matches!(world.store.get(&actions[0]), Ok(Lookup::Miss)));
    let gets = world.bucket.gets.load(Ordering::Relaxed);
    assert_eq!(
        world.reader.lookup(actions[1]).await,
        Err(BucketMiss::Cooldown)
    );
    assert_eq!(
        world.bucket.gets.load(Ordering::Relaxed),
        gets,
        "asked in cooldown"
    );
}

/// A zstd object that decodes past the size its manifest signed is cut
/// off there and refused.
#[tokio::test]
async fn a_body_that_decodes_past_its_size_is_refused() {
    let writer = key(1);
    let world = world(&[writer.public().to_peer_id()]);
    let real = body(1, 5000);
    let actions = publish(&world, &writer, std::slice::from_ref(&real), 60).await;
    let name = keys::object(&OutputId::of(&real), true);
    world.bucket.delete(&name).await.unwrap();
    let bomb = zstd::encode_all(&vec![0u8; 64 << 20][..], 3).unwrap();
    world.bucket.put_if_absent(&name, bomb).await.unwrap();
    world.reader.refresh(true).await.unwrap();
    assert_eq!(
        world.reader.lookup(actions[0]).await,
        Err(BucketMiss::Failed)
    );
    assert!(matches!(world.store.get(&actions[0]), Ok(Lookup::Miss)));
}

/// A bucket that does not answer costs a lookup the deadline, then
/// nothing while it cools down; a lookup it does not name costs nothing.
#[tokio::test(start_paused = true)]
async fn a_hanging_bucket_costs_the_deadline_once_then_nothing() {
    let writer = key(1);
    let world = world(&[writer.public().to_peer_id()]);
    let actions = publish(&world, &writer, &[body(1, 10), body(2, 10)], 70).await;
    world.reader.refresh(true).await.unwrap();
    world.bucket.hang.store(true, Ordering::Relaxed);
    let gets = world.bucket.gets.load(Ordering::Relaxed);

    let started = Instant::now();
    assert_eq!(
        world.reader.lookup(actions[0]).await,
        Err(BucketMiss::Failed)
    );
    assert_eq!(started.elapsed(), SETTINGS.deadline);
    let started = Instant::now();
    assert_eq!(
        world.reader.lookup(actions[1]).await,
        Err(BucketMiss::Cooldown)
    );
    assert_eq!(
        world.reader.lookup(ActionId::from_bytes([99; 32])).await,
        Ok(None)
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(world.bucket.gets.load(Ordering::Relaxed), gets + 1);
    assert_eq!(world.reader.counters.failures.load(Ordering::Relaxed), 1);

    tokio::time::advance(SETTINGS.cooldown).await;
    world.bucket.hang.store(false, Ordering::Relaxed);
    assert!(world.reader.lookup(actions[1]).await.unwrap().is_some());
}

/// The first hit of a manifest fetches the rest of it, so the build finds
/// it locally.
#[tokio::test]
async fn a_hit_reads_the_rest_of_its_manifest_ahead() {
    let writer = key(1);
    let world = world(&[writer.public().to_peer_id()]);
    let bodies: Vec<_> = (1..=5).map(|n| body(n, 3000 + usize::from(n))).collect();
    let actions = publish(&world, &writer, &bodies, 80).await;
    world.reader.refresh(true).await.unwrap();
    world.reader.lookup(actions[0]).await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !actions.iter().all(|a| world.store.holds(a)) {
        assert!(Instant::now() < deadline, "read-ahead did not land");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(world.reader.counters.read_ahead.load(Ordering::Relaxed), 4);
}

/// A build asks for an entry while it is being read ahead: the lookup
/// waits for that fetch instead of sending its bytes a second time.
#[tokio::test]
async fn a_lookup_of_a_body_being_read_ahead_waits_for_it() {
    let writer = key(1);
    let world = world(&[writer.public().to_peer_id()]);
    let bodies: Vec<_> = (1..=3).map(|n| body(n, 5000)).collect();
    let actions = publish(&world, &writer, &bodies, 90).await;
    world.reader.refresh(true).await.unwrap();
    world.bucket.late_ms.store(300, Ordering::Relaxed);
    let gets = world.bucket.gets.load(Ordering::Relaxed);

    world.reader.lookup(actions[0]).await.unwrap().unwrap();
    // The read-ahead of the other two is under way (each get answers
    // 300 ms late) when the build asks for the second.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!world.store.holds(&actions[1]));
    let fetched = world.reader.lookup(actions[1]).await.unwrap();
    assert!(fetched.is_some(), "the lookup is a hit");
    assert!(world.store.holds(&actions[1]));
    assert_eq!(
        world.bucket.gets.load(Ordering::Relaxed) - gets,
        3,
        "each body fetched once"
    );
    // Counted once, as read ahead: hits and read-ahead add up to the
    // bodies fetched.
    assert_eq!(world.reader.counters.hits.load(Ordering::Relaxed), 1);
}

/// With `max-rate`, downloads together take no more than the rate: after
/// a first body of 512 KiB at 1 MiB/s, the next waits about half a second.
#[tokio::test]
async fn a_capped_bucket_paces_its_downloads() {
    let writer = key(1);
    let settings = Settings {
        max_rate: Some(1 << 20),
        read_ahead_size: 0,
        ..SETTINGS
    };
    let world = world_with(&[writer.public().to_peer_id()], settings);
    // Incompressible, so that what crosses the link is the body's size.
    let noise = |seed: u64| -> Vec<u8> {
        let mut x = seed;
        (0..512 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let actions = publish(&world, &writer, &[noise(1), noise(2)], 100).await;
    world.reader.refresh(true).await.unwrap();
    let started = std::time::Instant::now();
    world.reader.lookup(actions[0]).await.unwrap().unwrap();
    world.reader.lookup(actions[1]).await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
}
