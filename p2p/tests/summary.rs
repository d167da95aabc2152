//! Summaries between in-process nodes on loopback TCP: a node asks a peer
//! only about actions the peer's summary names, the summary follows the
//! peer's store as it grows, and peers without summaries are asked about
//! everything, as before.

mod common;

use std::time::Duration;

use common::{DirStore, TestNode, action, connect, id, keypairs, start, test_config};
use common::{until_summary, within};
use warren_p2p::{ActionId, Event};

/// A (the requester) connected to B, whose store is `b_store` with
/// `entries` put before they connect.
async fn pair(b_store: DirStore, entries: &[u8]) -> (TestNode, TestNode) {
    let [ka, kb] = keypairs();
    for n in entries {
        b_store.put(action(*n), format!("entry {n}").as_bytes());
    }
    let mut a = start(test_config(ka.clone(), &[id(&kb)]), DirStore::new()).await;
    let mut b = start(test_config(kb, &[id(&ka)]), b_store).await;
    connect(&mut a, &mut b).await;
    (a, b)
}

#[tokio::test]
async fn misses_a_peer_cannot_answer_cost_no_request() {
    let (a, b) = pair(DirStore::with_summary(), &[1]).await;
    until_summary(&a, b.peer, 1).await;

    // Not in B's summary: answered at once, B never asked.
    let started = tokio::time::Instant::now();
    for n in 2..=50 {
        assert_eq!(a.client.fetch(action(n)).await, None);
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        b.store
            .usage()
            .opens
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // In it: asked, and found.
    within(Duration::from_secs(5), a.client.fetch(action(1)))
        .await
        .expect("a hit");
}

#[tokio::test]
async fn a_summary_follows_the_peers_store() {
    let (a, b) = pair(DirStore::with_summary(), &[]).await;
    until_summary(&a, b.peer, 0).await;
    assert_eq!(a.client.fetch(action(7)).await, None);

    // Stored after A's summary of B was made: the held request brings it.
    b.store.put(action(7), b"new");
    until_summary(&a, b.peer, 1).await;
    within(Duration::from_secs(5), a.client.fetch(action(7)))
        .await
        .expect("a hit");
}

#[tokio::test]
async fn peers_without_a_summary_are_asked_about_everything() {
    let (a, b) = pair(DirStore::new(), &[]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.client.fetch(action(3)).await, None);
    b.store.put(action(3), b"late");
    within(Duration::from_secs(5), a.client.fetch(action(3)))
        .await
        .expect("a hit without any summary");
    let info = a.client.peers().await;
    assert_eq!(
        info.iter()
            .find(|p| p.peer == b.peer)
            .unwrap()
            .summary_entries,
        None
    );
}

/// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon do":
/// a peer answers summary requests at once with nothing new, to make its
/// requester ask again at once, in a loop on the node's one thread.
/// Asking again waits a quarter of a second at least.
#[tokio::test]
async fn a_peer_answering_summaries_at_once_is_not_asked_in_a_loop() {
    let [ka, ks] = keypairs();
    let spammer = warren_p2p::hostile::summary_spammer(&ks).await;
    let mut a = common::node(&ka, &[id(&ks)]).await;
    a.client.dial(spammer.address.clone()).await.unwrap();
    let peer = spammer.peer;
    a.wait_for(|e| *e == warren_p2p::Event::PeerConnected(peer))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = spammer.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=12).contains(&asked), "asked {asked} times in 2 s");
}

/// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon do":
/// the summary bomber asks for a victim's summary under foreign epochs,
/// many times at once. Each answer is at most `SERVE_CHUNK` prefixes, not
/// the whole log, only a few streams per connection are taken, and the
/// victim goes on serving.
#[tokio::test]
async fn a_summary_bomber_gets_small_answers_and_few_of_them() {
    use warren_p2p::summary::SERVE_CHUNK;

    let [ka, kb, kh] = keypairs();
    let bomber_id = id(&kh);
    let mut a = common::start(
        common::test_config(ka.clone(), &[bomber_id, id(&kb)]),
        DirStore::with_summary(),
    )
    .await;
    a.store.log_only((0..200_000u32).map(|n| {
        let mut bytes = [7; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        ActionId::from_bytes(bytes)
    }));
    a.store.put(action(1), b"still served");
    let bomber = warren_p2p::hostile::summary_bomber(&kh, a.address.clone(), 100).await;
    a.wait_for(|e| *e == Event::PeerConnected(bomber_id)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = bomber.answers.lock().unwrap().clone();
    assert!(!answers.is_empty(), "the victim answered nothing");
    assert!(
        answers.iter().all(|count| *count <= SERVE_CHUNK as u64),
        "{answers:?}"
    );
    assert!(
        answers.len() <= 16,
        "{} answers to one peer at once",
        answers.len()
    );
    // Others are still served.
    let mut b = common::node(&kb, &[id(&ka)]).await;
    common::connect(&mut b, &mut a).await;
    let fetched = common::within(Duration::from_secs(5), b.client.fetch(action(1))).await;
    assert_eq!(fetched.map(|f| f.peer), Some(a.peer));
}
