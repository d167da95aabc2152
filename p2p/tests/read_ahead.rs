//! Read-ahead between in-process nodes on loopback TCP: after one fetch, the
//! entries the server hinted arrive without being asked for (in batches, or
//! one at a time from a version-1 peer), are verified like any other, are
//! not fetched twice, and stop where the hints do.

mod common;

use std::time::Duration;

use common::{DirStore, TestNode, Usage, action, connect, id, keypairs, start, test_config};
use common::{until, within};
use warren_p2p::hostile::{Mode, hostile};
use warren_p2p::{ActionId, Event, NodeConfig};

const ENTRIES: u8 = 40;

/// A (the requester, set up by `config`) connected to B, whose store gives
/// read-ahead hints.
async fn pair(config: impl FnOnce(NodeConfig) -> NodeConfig) -> (TestNode, TestNode) {
    let [ka, kb] = keypairs();
    let mut a = start(config(test_config(ka.clone(), &[id(&kb)])), DirStore::new()).await;
    let mut b = start(test_config(kb, &[id(&ka)]), DirStore::with_hints()).await;
    connect(&mut a, &mut b).await;
    (a, b)
}

/// `server` stores `ENTRIES` small bodies in order; returns their bodies.
fn fill(server: &DirStore) -> Vec<Vec<u8>> {
    (1..=ENTRIES)
        .map(|n| {
            let body = format!("package {n}")
                .repeat(usize::from(n) * 10)
                .into_bytes();
            server.put(action(n), &body);
            body
        })
        .collect()
}

#[tokio::test]
async fn one_fetch_brings_the_entries_stored_after_it() {
    let (a, b) = pair(|config| config).await;
    let bodies = fill(&b.store);

    within(Duration::from_secs(5), a.client.fetch(action(1)))
        .await
        .expect("a hit");
    // Hints come 32 at a time, and each fetched entry brings the next: the
    // whole run arrives, though only the first was asked for.
    until("every entry is read ahead", || {
        a.store.entry_count() == usize::from(ENTRIES)
    })
    .await;
    for n in 1..=ENTRIES {
        assert_eq!(
            a.store.body(&action(n)).unwrap(),
            bodies[usize::from(n) - 1]
        );
    }
    let info = a.client.peers().await;
    let counters = info.iter().find(|p| p.peer == b.peer).unwrap().counters;
    assert_eq!(counters.hits_received, u64::from(ENTRIES));
    assert_eq!(counters.read_ahead, u64::from(ENTRIES) - 1);
    // Each entry was served once: no entry was fetched twice.
    assert_eq!(Usage::get(&b.store.usage().opens), u64::from(ENTRIES));

    // A lookup now (the helper would have found the entry locally) is an
    // ordinary fetch, and brings nothing new.
    within(Duration::from_secs(5), a.client.fetch(action(7)))
        .await
        .expect("a hit");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(Usage::get(&b.store.usage().opens), u64::from(ENTRIES) + 1);
}

#[tokio::test]
async fn lookups_racing_read_ahead_fetch_each_entry_once() {
    let (a, b) = pair(|config| config).await;
    fill(&b.store);

    // As a parallel build would: the first lookup, then the next ones at
    // once, while read-ahead is starting on the same entries.
    within(Duration::from_secs(5), a.client.fetch(action(1)))
        .await
        .expect("a hit");
    let lookups = (2..=12).map(|n| a.client.fetch(action(n)));
    let found = within(Duration::from_secs(10), futures::future::join_all(lookups)).await;
    assert!(found.iter().all(Option::is_some), "{found:?}");
    until("every entry is read ahead", || {
        a.store.entry_count() == usize::from(ENTRIES)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A lookup joined the read-ahead fetch of its entry, or took it from
    // the queue: nothing was served twice.
    assert_eq!(Usage::get(&b.store.usage().opens), u64::from(ENTRIES));
}

#[tokio::test]
async fn without_read_ahead_only_what_is_asked_for_comes() {
    let (a, b) = pair(|config| config.with_read_ahead(0, 0)).await;
    fill(&b.store);

    within(Duration::from_secs(5), a.client.fetch(action(1)))
        .await
        .expect("a hit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.store.entry_count(), 1);
}

#[tokio::test]
async fn read_ahead_leaves_bodies_over_its_limit_to_lookups() {
    let (a, b) = pair(|config| config.with_read_ahead(4, 1000)).await;
    b.store.put(action(1), b"first");
    b.store.put(action(2), &vec![2; 5000]);
    b.store.put(action(3), b"third");

    within(Duration::from_secs(5), a.client.fetch(action(1)))
        .await
        .expect("a hit");
    until("the small hinted entry is read ahead", || {
        a.store.has(&action(3))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !a.store.has(&action(2)),
        "a body over the limit was read ahead"
    );
    // A lookup still gets it.
    within(Duration::from_secs(5), a.client.fetch(action(2)))
        .await
        .expect("a hit");
    assert_eq!(a.store.body(&action(2)).unwrap(), vec![2; 5000]);
}

#[tokio::test]
async fn a_version_one_peer_is_read_ahead_one_entry_per_request() {
    let [ka, kh] = keypairs();
    let entries: Vec<(ActionId, Vec<u8>)> = (1..=20)
        .map(|n| {
            (
                action(n),
                format!("entry {n}").repeat(usize::from(n)).into_bytes(),
            )
        })
        .collect();
    let old = hostile(
        &kh,
        Mode::VersionOne {
            entries: entries.clone(),
        },
    )
    .await;
    let mut a = start(test_config(ka, &[old.peer]), DirStore::new()).await;
    a.client.dial(old.address.clone()).await.unwrap();
    let old_peer = old.peer;
    a.wait_for(|e| *e == Event::PeerConnected(old_peer)).await;

    within(Duration::from_secs(5), a.client.fetch(action(1)))
        .await
        .expect("a hit");
    // The first batch is answered for its first action only; the rest are
    // asked for again, one per request.
    until("every entry is read ahead", || a.store.entry_count() == 20).await;
    for (action, body) in &entries {
        assert_eq!(a.store.body(action).as_ref(), Some(body));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(old.requests(), 20, "each entry asked for once");
}

/// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon do":
/// the read-ahead flooder answers every request with
/// fabricated bodies that verify, each naming fresh hints. Read-ahead
/// stops at the peer's budget instead of filling the disk, and without a
/// build using peers it does not start again.
#[tokio::test]
async fn a_read_ahead_flooder_gets_no_more_than_its_budget() {
    use warren_p2p::config::ReadAheadLimits;

    const BODY: usize = 4096;
    const BUDGET: u64 = 256 << 10;
    let [ka, kh] = keypairs();
    let flooder = hostile(&kh, Mode::Flood { size: BODY }).await;
    let config = test_config(ka, &[flooder.peer]).with_read_ahead_budget(ReadAheadLimits {
        live_for: Duration::from_secs(2),
        window: Duration::from_secs(600),
        per_peer: BUDGET,
        total: 2 * BUDGET,
    });
    let a = start(config, DirStore::new()).await;
    a.client.dial(flooder.address.clone()).await.unwrap();
    let mut fetched = None;
    for _ in 0..50 {
        fetched = within(Duration::from_secs(2), a.client.fetch(action(1))).await;
        if fetched.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fetched.is_some(), "the flooder answers lookups");
    // Give read-ahead all the time it wants.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = a.store.entry_count() as u64;
    assert!(
        stored * BODY as u64 <= BUDGET + BODY as u64,
        "{stored} entries of {BODY} bytes read ahead, over the {BUDGET}-byte budget"
    );
    assert!(
        stored > 8,
        "read-ahead did not run at all ({stored} entries)"
    );
    // Budget spent and no build using peers: nothing more arrives.
    let requests = flooder.requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.store.entry_count() as u64, stored);
    assert_eq!(flooder.requests(), requests);
}
