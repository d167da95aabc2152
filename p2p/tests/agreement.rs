//! Agreement (`NodeConfig::with_agreement`): a fetched entry is stored only
//! when two peers that built it, or one peer and an earlier build here,
//! name the same OutputID. In-process nodes on loopback TCP.

mod common;

use std::time::Duration;

use common::{DirStore, TestNode, action, connect, id, keypairs, start, test_config, within};
use warren_p2p::hostile::{Mode, hostile};
use warren_p2p::identity::Keypair;
use warren_p2p::{Event, OutputId, PeerId};

/// A node that asks with agreement on (or off), trusting `allowlist`.
async fn asker(keypair: &Keypair, allowlist: &[PeerId], agreement: bool) -> TestNode {
    let config = test_config(keypair.clone(), allowlist).with_agreement(agreement);
    start(config, DirStore::new()).await
}

async fn server(keypair: &Keypair, allowlist: &[PeerId]) -> TestNode {
    start(test_config(keypair.clone(), allowlist), DirStore::new()).await
}

async fn fetch(node: &TestNode, n: u8) -> Option<OutputId> {
    within(Duration::from_secs(5), node.client.fetch(action(n)))
        .await
        .map(|fetched| fetched.output)
}

#[tokio::test]
async fn two_peers_that_built_it_are_enough() {
    let [ka, kb, kc] = keypairs();
    let mut a = asker(&ka, &[id(&kb), id(&kc)], true).await;
    let mut b = server(&kb, &[id(&ka)]).await;
    let mut c = server(&kc, &[id(&ka)]).await;
    // A small body (sent with the answer) and one too big for that (each
    // peer announces it, one sends it).
    let small = b.store.put(action(1), b"built by both");
    c.store.put(action(1), b"built by both");
    let big = b.store.put_generated(action(2), 3 << 20);
    c.store.put_generated(action(2), 3 << 20);
    connect(&mut a, &mut b).await;
    connect(&mut a, &mut c).await;

    assert_eq!(fetch(&a, 1).await, Some(small));
    assert_eq!(a.store.hash_of(&action(1)), Some(small));
    assert_eq!(fetch(&a, 2).await, Some(big));
    assert_eq!(a.store.hash_of(&action(2)), Some(big));
}

#[tokio::test]
async fn one_peer_alone_is_not_enough_unless_an_earlier_build_here_agrees() {
    let [ka, kb, kc] = keypairs();
    let mut b = server(&kb, &[id(&ka), id(&kc)]).await;
    let output = b.store.put(action(1), b"only b built it");
    b.store.put(action(2), b"b built this too");
    // Without agreement one peer is enough: the same setup, as a control.
    let mut c = asker(&kc, &[id(&kb)], false).await;
    connect(&mut c, &mut b).await;
    assert_eq!(fetch(&c, 1).await, Some(output));

    let mut a = asker(&ka, &[id(&kb)], true).await;
    connect(&mut a, &mut b).await;
    assert_eq!(fetch(&a, 1).await, None);
    assert!(!a.store.has(&action(1)));

    // An earlier build here made the same output (its body since gone).
    a.store.remember_built(action(1), output);
    assert_eq!(fetch(&a, 1).await, Some(output));
    assert!(a.store.has(&action(1)));
    // An earlier build here that made something else confirms nothing.
    a.store
        .remember_built(action(2), OutputId::of(b"built otherwise here"));
    assert_eq!(fetch(&a, 2).await, None);
    assert!(!a.store.has(&action(2)));
}

#[tokio::test]
async fn peers_that_disagree_or_only_relay_confirm_nothing() {
    let [ka, kb, kc, kd] = keypairs();
    let mut a = asker(&ka, &[id(&kb), id(&kc), id(&kd)], true).await;
    let mut b = server(&kb, &[id(&ka), id(&kd)]).await;
    let mut c = server(&kc, &[id(&ka)]).await;
    // `d` fetched action 1 from `b` and serves it on: a relay, not a
    // second builder.
    let mut d = server(&kd, &[id(&ka), id(&kb)]).await;
    b.store.put(action(1), b"b's build");
    b.store.put(action(2), b"b's build of 2");
    c.store.put(action(2), b"c's other build of 2");
    connect(&mut d, &mut b).await;
    assert!(
        within(Duration::from_secs(5), d.client.fetch(action(1)))
            .await
            .is_some()
    );
    connect(&mut a, &mut b).await;
    connect(&mut a, &mut c).await;
    connect(&mut a, &mut d).await;

    assert_eq!(fetch(&a, 1).await, None, "b built it, d only relays it");
    assert_eq!(fetch(&a, 2).await, None, "b and c built different outputs");
    assert!(!a.store.has(&action(1)));
    assert!(!a.store.has(&action(2)));
}

/// A peer that fabricates an answer to every lookup (its body verifies
/// against its own hash) gets nothing stored, even next to an honest peer.
#[tokio::test]
async fn a_lying_peer_gets_nothing_stored() {
    let [ka, kb, kh] = keypairs();
    let liar = hostile(&kh, Mode::Flood { size: 100 }).await;
    let mut a = asker(&ka, &[id(&kb), liar.peer], true).await;
    let mut b = server(&kb, &[id(&ka)]).await;
    b.store.put(action(1), b"the honest build");
    connect(&mut a, &mut b).await;
    a.client.dial(liar.address.clone()).await.unwrap();
    let liar_peer = liar.peer;
    a.wait_for(|e| *e == Event::PeerConnected(liar_peer)).await;

    for _ in 0..3 {
        assert_eq!(fetch(&a, 1).await, None);
        assert_eq!(fetch(&a, 7).await, None);
    }
    assert!(liar.requests() > 0, "the liar was asked");
    assert_eq!(a.store.entry_count(), 0);
}
