//! Floods from strangers and from slow readers: what they can hold of a
//! node (its handshake slots, its serve permits), and that a coworker
//! still connects and is still served. In-process nodes on loopback TCP;
//! the strangers bind other loopback addresses to play other machines.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{DirStore, action, connect, id, keypairs, node, start, test_config, within};
use warren_p2p::Event;
use warren_p2p::hostile::{IdleHolder, slow_reader, socket_address};

/// How many handshakes one source may have in progress at once (IPv4: one
/// address), as `node::admission` allows.
const PER_SOURCE: usize = 4;
/// How many handshakes may be in progress at once in all.
const TOTAL: usize = 32;

/// Strangers on two LAN addresses open TCP connections and never send a
/// byte, each address four times a second (twice what it may start), to
/// fill the handshake slots that a daemon which restarts or a coworker
/// who joins needs. Each address holds at most its few handshakes at once
/// (SECURITY.md, "What others on the network can see, and do"), and a
/// coworker connects at once while the flood goes on.
#[tokio::test]
async fn idle_connections_from_two_addresses_hold_few_handshakes() {
    let [ka, kb] = keypairs();
    let mut a = node(&ka, &[id(&kb)]).await;
    let victim = socket_address(&a.address);
    let sources = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
    let mut holder = IdleHolder::default();
    // 5 s: at two a second after a burst of 8, two addresses could fill
    // 32 slots in 4.
    for _ in 0..20 {
        for source in sources {
            holder.open(source, victim).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = holder.still_open();
    assert!(
        held <= 2 * PER_SOURCE,
        "two addresses held {held} handshakes open at once"
    );

    // A handshake takes well under a second even on a loaded machine.
    let mut b = node(&kb, &[id(&ka)]).await;
    let keep_flooding = async {
        loop {
            for source in sources {
                holder.open(source, victim).await.unwrap();
            }
            holder.still_open();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        () = within(Duration::from_secs(10), connect(&mut b, &mut a)) => {}
        () = keep_flooding => unreachable!(),
    }
}

/// The same with 4,097 addresses, one idle connection each, and then a
/// fresh address every 60 ms (enough to keep every slot filled against the
/// handshake deadline): past 4,096 addresses a node used to forget every
/// per-address limit, and in any case the strangers fill all the slots a
/// node has. The oldest idle handshake gives way to a newcomer, so a
/// coworker still connects.
#[tokio::test]
async fn idle_connections_from_4097_addresses_cannot_lock_out_a_coworker() {
    let [ka, kb] = keypairs();
    let mut a = node(&ka, &[id(&kb)]).await;
    let victim = socket_address(&a.address);
    // 127.1.0.0, 127.1.0.1, …: every one a different machine to the node.
    let source = |n: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + n);
    let mut holder = IdleHolder::default();
    let flood_started = tokio::time::Instant::now();
    for n in 0..4097 {
        holder.open(source(n), victim).await.unwrap();
        if n % 64 == 63 {
            // Keeps the test's own descriptors few: what the node closed
            // is gone.
            holder.still_open();
        }
    }
    let flooded_in = flood_started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = holder.still_open();
    assert!(held <= TOTAL, "{held} handshakes open at once");

    let mut b = node(&kb, &[id(&ka)]).await;
    let mut next = 4097;
    let keep_flooding = async {
        loop {
            holder.open(source(next), victim).await.unwrap();
            next += 1;
            if next % 16 == 0 {
                holder.still_open();
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    };
    // Before the first idle connections would time out anyway (10 s
    // once): the coworker must get in while the strangers hold the slots.
    let deadline = flood_started + Duration::from_secs(9);
    tokio::select! {
        connected = tokio::time::timeout_at(deadline, connect(&mut b, &mut a)) => {
            assert!(
                connected.is_ok(),
                "no connection within 9 s of the flood's start (the flood took {flooded_in:?})"
            );
        }
        () = keep_flooding => unreachable!(),
    }
}

/// Two allowlisted peers ask for many big bodies and do not read them (as
/// a reader at the minimum rate would, for minutes with big bodies): each
/// holds what serve permits it can get. A third peer is still served.
#[tokio::test]
async fn two_slow_readers_leave_serve_permits_for_a_third_peer() {
    let [ka, kb, ks, kt] = keypairs();
    let server = start(
        test_config(kb.clone(), &[id(&ka), id(&ks), id(&kt)]),
        DirStore::new(),
    )
    .await;
    // Bodies bigger than a stream's window, so that serving one blocks
    // until it is read.
    let actions: Vec<_> = (1..=40).map(action).collect();
    for action in &actions {
        server.store.put_generated(*action, 2 << 20);
    }
    let mut a = node(&ka, &[id(&kb)]).await;
    a.client.dial(server.address.clone()).await.unwrap();
    let server_peer = server.peer;
    a.wait_for(|e| *e == Event::PeerConnected(server_peer))
        .await;

    let _first = slow_reader(&ks, &server.address, &actions[..32]).await;
    let _second = slow_reader(&kt, &server.address, &actions[..32]).await;
    // Their requests arrive; well within the 5 s before a reader that
    // does not read is cut off.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let fetched = within(Duration::from_secs(3), a.client.fetch(actions[39])).await;
    assert!(
        fetched.is_some(),
        "two slow readers held every serve permit"
    );
}
