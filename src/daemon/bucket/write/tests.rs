//! Uploads over OpenDAL's memory service: only what was built here, once,
//! under a manifest a reader accepts; a refusal (403) is a failure told
//! once.

use std::io::Write as _;
use std::time::Duration;

use super::*;
use crate::daemon::bucket::client::{OpendalBucket, read_at_most};
use crate::daemon::bucket::faulty::Faulty;

fn key(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).unwrap()
}

fn put(store: &DiskStore, n: u8, body: &[u8]) -> ActionId {
    let action = ActionId::from_bytes([n; 32]);
    let mut writer = store
        .begin_object(OutputId::of(body), body.len() as u64)
        .unwrap();
    writer.write_all(body).unwrap();
    store.commit(&action, writer.finish().unwrap()).unwrap();
    action
}

fn fetched(store: &DiskStore, n: u8, body: &[u8]) -> ActionId {
    let action = ActionId::from_bytes([n; 32]);
    let mut writer = store
        .begin_object(OutputId::of(body), body.len() as u64)
        .unwrap();
    writer.write_all(body).unwrap();
    store
        .commit_fetched(
            &action,
            writer.finish().unwrap(),
            key(9).public().to_peer_id(),
        )
        .unwrap();
    action
}

async fn sync(writer: &Writer) {
    tokio::time::timeout(Duration::from_secs(10), writer.drained())
        .await
        .expect("uploads to drain");
}

async fn manifests(bucket: &OpendalBucket) -> Vec<Manifest> {
    let mut found = Vec::new();
    for listed in bucket.list(keys::MANIFESTS, None, 100).await.unwrap() {
        let body = bucket.get(&listed.name).await.unwrap().unwrap();
        let bytes = read_at_most(body, super::super::manifest::MAX_BYTES)
            .await
            .unwrap();
        found.push(Manifest::verify(&bytes).unwrap());
    }
    found
}

/// A writer uploads only entries built here: never one fetched from a
/// peer (or the bucket), never a module index; bodies by OutputID, a body
/// already there not again; then one signed manifest in put order.
#[tokio::test]
async fn uploads_only_local_entries_once_under_a_signed_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    let bucket = Arc::new(OpendalBucket::memory());
    let writer = Writer::start(bucket.clone(), store.clone(), key(1));

    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 7) as u8).collect();
    let local = [put(&store, 1, b"small local body"), put(&store, 2, &big)];
    let index = put(&store, 3, b"go index v2\nsome directory listing");
    let peer = fetched(&store, 4, b"a peer built this");
    let missing = ActionId::from_bytes([5; 32]);
    writer.built(vec![local[1], peer, index, missing, local[0]]);
    sync(&writer).await;

    let written = manifests(&bucket).await;
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].signer, key(1).public().to_peer_id());
    let actions: Vec<_> = written[0].entries.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [local[1], local[0]],
        "put order, local entries only"
    );
    let objects = bucket.list(keys::OBJECTS, None, 100).await.unwrap();
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert!(
        objects
            .iter()
            .any(|o| o.name.ends_with(keys::OBJECT_ZSTD_SUFFIX))
    );
    assert!(
        objects.iter().all(|o| o.size < 20_000),
        "the big body is compressed"
    );
    assert_eq!(writer.counters.skipped.load(Ordering::Relaxed), 3);

    // The same build again: bodies are there, only a manifest is written.
    writer.built(vec![local[0]]);
    sync(&writer).await;
    assert_eq!(writer.counters.bodies_uploaded.load(Ordering::Relaxed), 2);
    assert_eq!(writer.counters.bodies_present.load(Ordering::Relaxed), 1);
    assert_eq!(manifests(&bucket).await.len(), 2);
}

/// Credentials that cannot write: each build's upload fails, is counted
/// with its reason for `warren bucket sync`, and the daemon tells it once.
#[tokio::test]
async fn refused_uploads_are_failures_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    let read_only = Faulty::new();
    read_only.deny_writes.store(true, Ordering::Relaxed);
    let writer = Writer::start(Arc::new(read_only), store.clone(), key(1));
    for n in 1..=3 {
        writer.built(vec![put(&store, n, &[n; 10])]);
    }
    sync(&writer).await;
    assert_eq!(writer.counters.failed.load(Ordering::Relaxed), 3);
    let error = writer.last_error.lock().unwrap().clone().unwrap();
    assert!(error.contains("refused"), "{error}");
}

/// A bucket tens of milliseconds away: a build's bodies go up several at a
/// time (one after the other, `go build std`'s thousand bodies took a
/// minute at 30 ms), at most [`UPLOADS`], and the manifest still lists
/// them in put order.
#[tokio::test]
async fn bodies_go_up_several_at_a_time_and_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    let bucket = Arc::new(Faulty::new());
    bucket.write_ms.store(30, Ordering::Relaxed);
    let writer = Writer::start(bucket.clone(), store.clone(), key(1));
    let actions: Vec<_> = (1..=48u8)
        .rev()
        .map(|n| put(&store, n, format!("body {n}").as_bytes()))
        .collect();
    writer.built(actions.clone());
    sync(&writer).await;

    let most = bucket.most_writing.load(Ordering::SeqCst);
    assert!((2..=UPLOADS).contains(&most), "{most} uploads at once");
    let written = manifests(&bucket.inner).await;
    assert_eq!(written.len(), 1);
    let listed: Vec<_> = written[0].entries.iter().map(|e| e.action).collect();
    assert_eq!(listed, actions, "put order");
    assert_eq!(writer.counters.bodies_uploaded.load(Ordering::Relaxed), 48);
}
