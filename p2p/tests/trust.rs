//! Who may connect, who is asked and served, and what happens to a peer that
//! lies: in-process nodes on loopback TCP.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{DirStore, Usage, action, connect, id, keypairs, node, start, test_config};
use common::{until, within};
use warren_p2p::hostile::{Mode, hostile};
use warren_p2p::multiaddr::Protocol;
use warren_p2p::{
    Allowlist, Compression, ConnectFailure, Error, Event, Multiaddr, RejectReason, Role,
};

#[tokio::test]
async fn a_peer_off_the_allowlist_cannot_connect_or_fetch() {
    let [ka, kb] = keypairs();
    // `a` holds the entry and allows nobody; `b` trusts `a`.
    let mut a = node(&ka, &[]).await;
    let b = node(&kb, &[id(&ka)]).await;
    a.store.put(action(1), b"private");

    b.client.dial(a.address.clone()).await.unwrap();
    let b_peer = b.peer;
    a.wait_for(|e| *e == Event::ConnectionDenied { peer: Some(b_peer) })
        .await;
    assert_eq!(
        within(Duration::from_secs(3), b.client.fetch(action(1))).await,
        None
    );
    assert!(!b.store.has(&action(1)));
    // `a` never even looked in its store.
    assert_eq!(Usage::get(&a.store.usage().opens), 0);
    let a_peers = a.client.peers().await;
    assert!(a_peers.iter().all(|p| !p.connected));
    while let Ok(event) = a.events.try_recv() {
        assert!(
            !matches!(event, Event::Served { .. } | Event::PeerConnected(_)),
            "{event:?}"
        );
    }
}

#[tokio::test]
async fn peers_off_the_allowlist_are_never_dialed() {
    let [ka, kb] = keypairs();
    let a = node(&ka, &[]).await;
    let mut b = node(&kb, &[id(&ka)]).await;
    let refused = a.client.dial(b.address.clone()).await;
    assert!(
        matches!(refused, Err(Error::NotAllowlisted { peer }) if peer == b.peer),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(event) = b.events.try_recv() {
        assert!(
            !matches!(
                event,
                Event::PeerConnected(_) | Event::ConnectionDenied { .. }
            ),
            "{event:?}"
        );
    }
}

#[tokio::test]
async fn removing_a_peer_from_the_allowlist_disconnects_it_at_once() {
    let [ka, kb] = keypairs();
    let mut a = node(&ka, &[id(&kb)]).await;
    let mut b = node(&kb, &[id(&ka)]).await;
    a.store.put(action(1), b"shared while trusted");
    a.store.put(action(2), b"not shared any more");
    // `b` dials, so it knows `a`'s address and redials it when lost.
    connect(&mut b, &mut a).await;
    assert!(
        within(Duration::from_secs(5), b.client.fetch(action(1)))
            .await
            .is_some()
    );
    let opens = Usage::get(&a.store.usage().opens);

    within(
        Duration::from_secs(2),
        a.client.set_allowlist(HashSet::new()),
    )
    .await;
    let (a_peer, b_peer) = (a.peer, b.peer);
    a.wait_for(|e| *e == Event::PeerDisconnected(b_peer)).await;
    b.wait_for(|e| *e == Event::PeerDisconnected(a_peer)).await;

    // `b` still trusts `a` and keeps redialing it, but is turned away.
    a.wait_for(|e| *e == Event::ConnectionDenied { peer: Some(b_peer) })
        .await;
    assert_eq!(
        within(Duration::from_secs(3), b.client.fetch(action(2))).await,
        None
    );
    assert_eq!(Usage::get(&a.store.usage().opens), opens);
    let info = a.client.peers().await;
    let b_info = info.iter().find(|p| p.peer == b_peer).unwrap();
    assert!(!b_info.allowlisted && !b_info.connected);

    // Allowing it again lets it back in (its redial backoff is short here).
    a.client.set_allowlist(HashSet::from([b_peer])).await;
    a.wait_for(|e| *e == Event::PeerConnected(b_peer)).await;
    // `b` may still be holding one of the connections `a` turned away.
    let mut fetched = None;
    for _ in 0..20 {
        fetched = within(Duration::from_secs(3), b.client.fetch(action(2))).await;
        if fetched.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fetched.map(|f| f.peer), Some(a_peer));
}

/// Roles: `a` only serves `b` (a laptop whose builds `a` does not want),
/// and `b` only pulls from `a`. Entries flow from `a` to `b`, never back.
#[tokio::test]
async fn roles_let_entries_flow_one_way_only() {
    let [ka, kb] = keypairs();
    let serve_only: Allowlist = [(id(&kb), Role::ServeOnly)].into_iter().collect();
    let pull_only: Allowlist = [(id(&ka), Role::PullOnly)].into_iter().collect();
    let mut a = start(
        test_config(ka.clone(), &[]).with_allowlist(serve_only),
        DirStore::new(),
    )
    .await;
    let mut b = start(
        test_config(kb.clone(), &[]).with_allowlist(pull_only),
        DirStore::new(),
    )
    .await;
    a.store.put(action(1), b"built on a");
    b.store.put(action(2), b"built on b");
    connect(&mut b, &mut a).await;

    let fetched = within(Duration::from_secs(5), b.client.fetch(action(1))).await;
    assert_eq!(fetched.map(|f| f.peer), Some(a.peer));
    assert_eq!(
        b.store.body(&action(1)).as_deref(),
        Some(&b"built on a"[..])
    );
    // `a` never asks `b`, and `b` would not answer it anyway.
    let opens = Usage::get(&b.store.usage().opens);
    assert_eq!(
        within(Duration::from_secs(3), a.client.fetch(action(2))).await,
        None
    );
    assert!(!a.store.has(&action(2)));
    assert_eq!(Usage::get(&b.store.usage().opens), opens);

    // Were `a` to ask, `b` serves it nothing: it only pulls from `a`.
    a.client.set_allowlist(HashSet::from([b.peer])).await;
    assert_eq!(
        within(Duration::from_secs(3), a.client.fetch(action(2))).await,
        None
    );
    assert!(!a.store.has(&action(2)));
    assert_eq!(Usage::get(&b.store.usage().opens), opens);
    // And `b` still pulls from `a`.
    a.store.put(action(3), b"also built on a");
    let fetched = within(Duration::from_secs(5), b.client.fetch(action(3))).await;
    assert_eq!(fetched.map(|f| f.peer), Some(a.peer));
}

#[tokio::test]
async fn a_lying_peer_is_rejected_counted_and_cooled_down() {
    let [ka, kh] = keypairs();
    let mut a = node(&ka, &[id(&kh)]).await;
    let claimed = b"what the build needs".repeat(500);
    let liar = hostile(
        &kh,
        Mode::WrongBody {
            sent: vec![0; claimed.len()],
            claimed,
        },
    )
    .await;
    a.client.dial(liar.address.clone()).await.unwrap();
    let liar_peer = liar.peer;
    a.wait_for(|e| *e == Event::PeerConnected(liar_peer)).await;

    assert_eq!(
        within(Duration::from_secs(5), a.client.fetch(action(1))).await,
        None
    );
    let rejected = a
        .wait_for(|e| matches!(e, Event::BodyRejected { .. }))
        .await;
    let Event::BodyRejected {
        peer,
        action: rejected_action,
        reason,
    } = rejected
    else {
        unreachable!()
    };
    assert_eq!((peer, rejected_action), (liar_peer, action(1)));
    assert!(
        matches!(reason, RejectReason::HashMismatch { .. }),
        "{reason:?}"
    );
    // Nothing was stored: the sink was opened, fed, and discarded.
    let usage = a.store.usage();
    assert_eq!(a.store.entry_count(), 0);
    assert_eq!(Usage::get(&usage.commits), 0);
    assert_eq!(Usage::get(&usage.sinks), 1);
    until("the sink was discarded", || {
        Usage::get(&usage.discarded) == 1
    })
    .await;

    let peers = a.client.peers().await;
    let info = peers.iter().find(|p| p.peer == liar_peer).unwrap();
    assert_eq!(info.counters.rejected_bodies, 1);
    assert!(info.in_cooldown);
    assert!(info.connected);

    // In cooldown it is not even asked.
    assert_eq!(
        within(Duration::from_millis(200), a.client.fetch(action(1))).await,
        None
    );
    assert_eq!(liar.requests(), 1);
}

#[tokio::test]
async fn cooldown_ends() {
    let [ka, kh] = keypairs();
    let mut a = start(
        test_config(ka.clone(), &[id(&kh)]).with_cooldown(Duration::from_millis(500)),
        DirStore::new(),
    )
    .await;
    let liar = hostile(
        &kh,
        Mode::WrongBody {
            claimed: b"real".to_vec(),
            sent: b"fake".to_vec(),
        },
    )
    .await;
    a.client.dial(liar.address.clone()).await.unwrap();
    let liar_peer = liar.peer;
    a.wait_for(|e| *e == Event::PeerConnected(liar_peer)).await;
    assert_eq!(
        within(Duration::from_secs(5), a.client.fetch(action(1))).await,
        None
    );
    assert_eq!(
        within(Duration::from_secs(5), a.client.fetch(action(1))).await,
        None
    );
    assert_eq!(liar.requests(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        within(Duration::from_secs(5), a.client.fetch(action(1))).await,
        None
    );
    assert_eq!(liar.requests(), 2);
    let peers = a.client.peers().await;
    let info = peers.iter().find(|p| p.peer == liar_peer).unwrap();
    assert_eq!(info.counters.rejected_bodies, 2);
}

#[tokio::test]
async fn static_peers_are_dialed_and_redialed_after_a_restart() {
    let [ka, kb] = keypairs();
    let b = node(&kb, &[id(&ka)]).await;
    b.store.put(action(1), b"from a static peer");
    let b_address = b.address.clone();
    let mut a = start(
        test_config(ka.clone(), &[id(&kb)]).with_static_peers(vec![b_address.clone()]),
        DirStore::new(),
    )
    .await;
    let b_peer = b.peer;
    a.wait_for(|e| *e == Event::PeerConnected(b_peer)).await;
    assert!(
        within(Duration::from_secs(5), a.client.fetch(action(1)))
            .await
            .is_some()
    );

    // `b` crashes and comes back on the same address.
    b.kill();
    a.wait_for(|e| *e == Event::PeerDisconnected(b_peer)).await;
    drop(b);
    let listen = {
        let mut bare = b_address.clone();
        bare.pop();
        bare
    };
    let store = DirStore::new();
    store.put(action(2), b"after the restart");
    let _b = start(
        test_config(kb.clone(), &[id(&ka)]).with_listen(vec![listen]),
        store,
    )
    .await;
    a.wait_for(|e| *e == Event::PeerConnected(b_peer)).await;
    assert!(
        within(Duration::from_secs(5), a.client.fetch(action(2)))
            .await
            .is_some()
    );
}

/// A static peer given by host name (`/dns4/localhost`, from
/// `/etc/hosts`: no DNS query leaves the machine) is dialed and fetched
/// from, and the name is what the peer table keeps: each redial resolves
/// it anew.
#[tokio::test]
async fn static_peers_given_by_name_are_dialed() {
    let [ka, kb] = keypairs();
    let b = node(&kb, &[id(&ka)]).await;
    b.store.put(action(1), b"from a named static peer");
    let named = by_name(&b.address);
    let mut a = start(
        test_config(ka.clone(), &[id(&kb)]).with_static_peers(vec![named.clone()]),
        DirStore::new(),
    )
    .await;
    let b_peer = b.peer;
    a.wait_for(|e| *e == Event::PeerConnected(b_peer)).await;
    assert!(
        within(Duration::from_secs(5), a.client.fetch(action(1)))
            .await
            .is_some()
    );
    let peers = a.client.peers().await;
    let info = peers.iter().find(|p| p.peer == b_peer).unwrap();
    let mut bare = named;
    bare.pop();
    assert_eq!(info.addresses, [bare]);
}

/// SECURITY.md, "Who can connect": a name proves nothing. A name that
/// leads to another node (a stale or hijacked DNS record) reaches it, but
/// the handshake shows it is not the peer the address names: no
/// connection, and the failure says who answered.
#[tokio::test]
async fn a_name_that_leads_to_another_peer_does_not_connect() {
    let [ka, kb, kc] = keypairs();
    let _b = node(&kb, &[id(&ka)]).await;
    let c = node(&kc, &[id(&ka)]).await;
    let b_peer = id(&kb);
    // `b`'s ID at `c`'s port, by name.
    let mut at_c = by_name(&c.address);
    at_c.pop();
    let a = start(
        test_config(ka.clone(), &[b_peer])
            .with_static_peers(vec![at_c.clone().with_p2p(b_peer).unwrap()]),
        DirStore::new(),
    )
    .await;
    let c_peer = c.peer;
    until_async("the dial of b by name fails", || async {
        let peers = a.client.peers().await;
        peers.iter().any(|p| {
            p.peer == b_peer
                && matches!(
                    &p.last_failure,
                    Some((_, ConnectFailure::WrongPeerId { address, obtained, announced: false }))
                        if *address == at_c.to_string() && *obtained == c_peer.to_string()
                )
        })
    })
    .await;
    let peers = a.client.peers().await;
    assert!(!peers.iter().any(|p| p.connected), "{peers:?}");
}

/// `/ip4/127.0.0.1/tcp/P/p2p/ID` as `/dns4/localhost/tcp/P/p2p/ID`.
fn by_name(address: &Multiaddr) -> Multiaddr {
    address
        .iter()
        .map(|protocol| match protocol {
            Protocol::Ip4(_) => Protocol::Dns4("localhost".into()),
            other => other,
        })
        .collect()
}

/// Waits until the async `condition` holds, polling; fails after 10 s.
async fn until_async<F: Future<Output = bool>>(what: &str, condition: impl Fn() -> F) {
    let start = tokio::time::Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn static_addresses_without_a_peer_id_reach_only_allowlisted_peers() {
    let [ka, kb, kc] = keypairs();
    let b = node(&kb, &[id(&ka)]).await;
    let c = node(&kc, &[id(&ka)]).await;
    let bare = |address: &warren_p2p::Multiaddr| {
        let mut bare = address.clone();
        bare.pop();
        bare
    };
    // `a` allows `b` only, but knows both addresses without peer IDs.
    let mut a = start(
        test_config(ka.clone(), &[id(&kb)])
            .with_static_peers(vec![bare(&b.address), bare(&c.address)]),
        DirStore::new(),
    )
    .await;
    let (b_peer, c_peer) = (b.peer, c.peer);
    a.wait_for(|e| *e == Event::PeerConnected(b_peer)).await;
    a.wait_for(|e| *e == Event::ConnectionDenied { peer: Some(c_peer) })
        .await;
    let peers = a.client.peers().await;
    assert!(peers.iter().any(|p| p.peer == b_peer && p.connected));
    assert!(!peers.iter().any(|p| p.peer == c_peer && p.connected));
}

#[tokio::test]
async fn compressed_chunks_that_do_not_decode_are_rejected_like_lies() {
    let [ka, kb, kh] = keypairs();
    let claimed = b"what the build needs".repeat(500);
    let liar = hostile(&kh, Mode::BadChunks { claimed }).await;
    let liar_peer = liar.peer;

    // By default a node asks for compressed bodies only once a link has
    // measured slow: a new one is asked for raw bodies (this peer then
    // has none).
    let mut plain = node(&kb, &[id(&kh)]).await;
    plain.client.dial(liar.address.clone()).await.unwrap();
    plain
        .wait_for(|e| *e == Event::PeerConnected(liar_peer))
        .await;
    assert_eq!(
        within(Duration::from_secs(5), plain.client.fetch(action(1))).await,
        None
    );
    assert_eq!((liar.requests(), liar.accepting_zstd()), (1, 0));

    let mut a = start(
        test_config(ka.clone(), &[id(&kh)]).with_compression(Compression::Always),
        DirStore::new(),
    )
    .await;
    a.client.dial(liar.address.clone()).await.unwrap();
    a.wait_for(|e| *e == Event::PeerConnected(liar_peer)).await;
    assert_eq!(
        within(Duration::from_secs(5), a.client.fetch(action(1))).await,
        None
    );
    assert_eq!((liar.requests(), liar.accepting_zstd()), (2, 1));
    let rejected = a
        .wait_for(|e| matches!(e, Event::BodyRejected { .. }))
        .await;
    let Event::BodyRejected { peer, reason, .. } = rejected else {
        unreachable!()
    };
    assert_eq!(peer, liar_peer);
    assert!(matches!(reason, RejectReason::Undecodable(_)), "{reason:?}");
    assert_eq!(a.store.entry_count(), 0);
    assert_eq!(Usage::get(&a.store.usage().commits), 0);
    let peers = a.client.peers().await;
    let info = peers.iter().find(|p| p.peer == liar_peer).unwrap();
    assert_eq!(info.counters.rejected_bodies, 1);
    assert!(info.in_cooldown);
}

/// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon do":
/// one peer asks and never reads its answers, to hold every serving slot
/// so that every other peer is answered "not found"; others are still
/// served.
#[tokio::test]
async fn a_slow_reader_does_not_starve_other_peers() {
    let [ka, kb, ks] = keypairs();
    let server = common::start(
        common::test_config(kb.clone(), &[id(&ka), id(&ks)]),
        common::DirStore::new(),
    )
    .await;
    // Bodies bigger than a stream's window, so that serving one blocks
    // until it is read.
    let actions: Vec<_> = (1..=40).map(action).collect();
    for action in &actions {
        server.store.put_generated(*action, 2 << 20);
    }
    let _slow = warren_p2p::hostile::slow_reader(&ks, &server.address, &actions[..32]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut a = node(&ka, &[id(&kb)]).await;
    a.client.dial(server.address.clone()).await.unwrap();
    let server_peer = server.peer;
    a.wait_for(|e| *e == Event::PeerConnected(server_peer))
        .await;
    let fetched = within(Duration::from_secs(10), a.client.fetch(actions[39])).await;
    assert!(fetched.is_some(), "the honest peer was starved");
}

/// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon do":
/// a peer that stops reading loses its serve permits
/// once it falls behind the minimum send rate (after a grace of 5 s), so
/// even a server with a single permit serves others again.
#[tokio::test]
async fn a_slow_reader_is_cut_off_at_the_minimum_send_rate() {
    let [ka, kb, ks] = keypairs();
    let server = common::start(
        common::test_config(kb.clone(), &[id(&ka), id(&ks)]).with_max_concurrent_serves(1),
        common::DirStore::new(),
    )
    .await;
    let actions: Vec<_> = (1..=2).map(action).collect();
    for action in &actions {
        server.store.put_generated(*action, 4 << 20);
    }
    let _slow = warren_p2p::hostile::slow_reader(&ks, &server.address, &actions[..1]).await;
    let slow_since = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut a = node(&ka, &[id(&kb)]).await;
    a.client.dial(server.address.clone()).await.unwrap();
    let server_peer = server.peer;
    a.wait_for(|e| *e == Event::PeerConnected(server_peer))
        .await;
    // The one permit is held: a miss at once.
    assert_eq!(
        within(Duration::from_secs(3), a.client.fetch(actions[1])).await,
        None
    );
    // Until the slow reader is cut off: 5 s of grace, then it falls behind
    // (what its buffers took counts at 64 KiB/s: a few seconds more).
    let mut fetched = None;
    while fetched.is_none() && slow_since.elapsed() < Duration::from_secs(12) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        fetched = within(Duration::from_secs(2), a.client.fetch(actions[1])).await;
    }
    assert!(
        fetched.is_some(),
        "the slow reader kept the permit for {:?}",
        slow_since.elapsed()
    );
}

/// SECURITY.md, "What others on the network can see, and do":
/// the handshake flooder opens connection after
/// connection from one address. Past a small burst they are closed before
/// any handshake (the victim never even sends its protocol header), the
/// address holds at most 4 handshakes at once (its newest), and a coworker
/// on another address still connects and fetches.
#[tokio::test]
async fn a_handshake_flooder_is_refused_and_others_still_get_in() {
    use tokio::io::AsyncReadExt as _;

    let [ka, kb] = keypairs();
    let mut a = node(&ka, &[id(&kb)]).await;
    a.store.put(action(1), b"for a coworker");
    let port = a
        .address
        .iter()
        .find_map(|protocol| match protocol {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    // Another loopback address, so the coworker below is not the same IP.
    let flooder: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
    let mut streams = Vec::new();
    for _ in 0..40 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // So that the coworker's dial can bind its port on 0.0.0.0 even if
        // the kernel gave one of these the same port (see IdleHolder).
        socket.set_reuseaddr(true).unwrap();
        socket.bind(flooder).unwrap();
        let address = format!("127.0.0.1:{port}").parse().unwrap();
        streams.push(socket.connect(address).await.unwrap());
    }
    // A refused connection is closed at once; an admitted one waits for
    // our side of the handshake.
    let reads = streams.into_iter().map(|mut stream| async move {
        let mut byte = [0; 1];
        let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await;
        !matches!(read, Ok(Ok(0) | Err(_)))
    });
    let answered = futures::future::join_all(reads)
        .await
        .into_iter()
        .filter(|admitted| *admitted)
        .count();
    assert!(
        answered <= 4,
        "{answered} of 40 connections from one IP are still in their handshake"
    );
    assert!(answered >= 1, "not even the first connection was let in");

    let mut b = node(&kb, &[id(&ka)]).await;
    connect(&mut b, &mut a).await;
    let fetched = within(Duration::from_secs(5), b.client.fetch(action(1))).await;
    assert_eq!(fetched.map(|f| f.peer), Some(a.peer));
}
