//! Fetches between in-process nodes on loopback TCP: hits, misses, several
//! peers, compressed bodies, and peers that are slow, silent or die
//! mid-transfer.

mod common;

use std::time::Duration;

use common::{DirStore, Usage, action, connect, id, keypairs, node, start, test_config};
use common::{until, until_summary, within};
use warren_p2p::hostile::{Mode, hostile};
use warren_p2p::{Compression, Event, Miss, RejectReason};

#[tokio::test]
async fn hits_and_misses_between_two_nodes() {
    let [ka, kb] = keypairs();
    let mut a = node(&ka, &[id(&kb)]).await;
    let mut b = node(&kb, &[id(&ka)]).await;
    let body = b"a compiled package".repeat(1000);
    let output = b.store.put(action(1), &body);
    connect(&mut a, &mut b).await;

    let fetched = within(Duration::from_secs(5), a.client.fetch(action(1)))
        .await
        .expect("a hit");
    assert_eq!(fetched.peer, b.peer);
    assert_eq!(fetched.output, output);
    assert_eq!(fetched.size, body.len() as u64);
    assert_eq!(fetched.time_unix_nanos, 1_700_000_000_000_000_000);
    assert_eq!(a.store.body(&action(1)).unwrap(), body);
    let a_peer = a.peer;
    b.wait_for(|e| matches!(e, Event::Served { peer, bytes, .. } if *peer == a_peer && *bytes == body.len() as u64))
        .await;

    // A miss is quick and stores nothing.
    let missed = within(Duration::from_secs(2), a.client.fetch(action(2))).await;
    assert_eq!(missed, None);
    assert!(!a.store.has(&action(2)));

    let seen_by_a = a.client.peers().await;
    let b_info = seen_by_a.iter().find(|p| p.peer == b.peer).unwrap();
    assert!(b_info.allowlisted && b_info.connected && !b_info.in_cooldown);
    assert_eq!(b_info.counters.hits_received, 1);
    assert_eq!(b_info.counters.bytes_in, body.len() as u64);
    assert!(b_info.last_seen.is_some());
    let seen_by_b = b.client.peers().await;
    let a_info = seen_by_b.iter().find(|p| p.peer == a.peer).unwrap();
    assert_eq!(a_info.counters.hits_served, 1);
    assert_eq!(a_info.counters.bytes_out, body.len() as u64);
    // On the link: the raw body and the answers' headers, counted alike
    // on both sides.
    let wire = b_info.counters.wire_in;
    assert!(
        wire > body.len() as u64 && wire < body.len() as u64 + 4096,
        "{wire}"
    );
    assert_eq!(a_info.counters.wire_out, wire);
}

#[tokio::test]
async fn with_no_peers_a_fetch_misses_at_once() {
    let [ka] = keypairs();
    let a = node(&ka, &[]).await;
    assert_eq!(
        within(Duration::from_millis(200), a.client.fetch(action(1))).await,
        None
    );
}

#[tokio::test]
async fn of_three_nodes_one_sends_a_big_body_and_the_first_wins() {
    let [ka, kb, kc] = keypairs();
    let all = [id(&ka), id(&kb), id(&kc)];
    let mut a = node(&ka, &all).await;
    let mut b = node(&kb, &all).await;
    let mut c = node(&kc, &all).await;
    // Over the 1 MiB inline limit: both announce it, only one sends it.
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    b.store.put(action(7), &body);
    c.store.put(action(7), &body);
    connect(&mut a, &mut b).await;
    connect(&mut a, &mut c).await;

    let fetched = within(Duration::from_secs(10), a.client.fetch(action(7)))
        .await
        .expect("a hit");
    assert!(fetched.peer == b.peer || fetched.peer == c.peer);
    assert_eq!(a.store.body(&action(7)).unwrap(), body);
    assert_eq!(Usage::get(&a.store.usage().commits), 1);

    // Exactly one body crossed the network.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = |node: &mut common::TestNode| {
        let mut count = 0;
        while let Ok(event) = node.events.try_recv() {
            if matches!(event, Event::Served { .. }) {
                count += 1;
            }
        }
        count
    };
    assert_eq!(served(&mut b) + served(&mut c), 1);
}

#[tokio::test]
async fn the_first_verified_body_wins_over_a_lying_peer() {
    let [ka, kb, kh] = keypairs();
    let mut a = node(&ka, &[id(&kb), id(&kh)]).await;
    let mut b = node(&kb, &[id(&ka)]).await;
    let body = b"the honest body".repeat(100);
    let output = b.store.put(action(3), &body);
    let liar = hostile(
        &kh,
        Mode::WrongBody {
            claimed: body.clone(),
            sent: vec![b'x'; body.len()],
        },
    )
    .await;
    connect(&mut a, &mut b).await;
    a.client.dial(liar.address.clone()).await.unwrap();
    let liar_peer = liar.peer;
    a.wait_for(|e| *e == Event::PeerConnected(liar_peer)).await;

    let fetched = within(Duration::from_secs(5), a.client.fetch(action(3)))
        .await
        .expect("the honest peer's body");
    assert_eq!(fetched.peer, b.peer);
    assert_eq!(fetched.output, output);
    assert_eq!(a.store.body(&action(3)).unwrap(), body);
    assert_eq!(Usage::get(&a.store.usage().commits), 1);
}

#[tokio::test]
async fn a_silent_peer_costs_no_more_than_the_lookup_deadline() {
    let [ka, kh] = keypairs();
    let deadline = Duration::from_millis(300);
    let mut a = start(
        test_config(ka.clone(), &[id(&kh)]).with_lookup_deadline(deadline),
        DirStore::new(),
    )
    .await;
    let silent = hostile(&kh, Mode::Silent).await;
    a.client.dial(silent.address.clone()).await.unwrap();
    let silent_peer = silent.peer;
    a.wait_for(|e| *e == Event::PeerConnected(silent_peer))
        .await;

    let started = tokio::time::Instant::now();
    let fetched = within(Duration::from_secs(3), a.client.fetch(action(1))).await;
    let took = started.elapsed();
    assert_eq!(fetched, None);
    assert_eq!(silent.requests(), 1, "the silent peer was asked");
    assert!(took >= deadline - Duration::from_millis(50), "{took:?}");
    assert!(took < deadline + Duration::from_millis(500), "{took:?}");
    // The connection survives; the peer is not blamed for being slow.
    let peers = a.client.peers().await;
    let info = peers.iter().find(|p| p.peer == silent_peer).unwrap();
    assert!(info.connected && !info.in_cooldown);
}

#[tokio::test]
async fn a_silent_peer_does_not_delay_a_hit_from_another() {
    let [ka, kb, kh] = keypairs();
    let mut a = start(
        test_config(ka.clone(), &[id(&kb), id(&kh)]).with_lookup_deadline(Duration::from_secs(5)),
        DirStore::new(),
    )
    .await;
    let mut b = node(&kb, &[id(&ka)]).await;
    b.store.put(action(4), b"quick");
    let silent = hostile(&kh, Mode::Silent).await;
    connect(&mut a, &mut b).await;
    a.client.dial(silent.address.clone()).await.unwrap();
    let silent_peer = silent.peer;
    a.wait_for(|e| *e == Event::PeerConnected(silent_peer))
        .await;

    // Well under the 5 s deadline the silent peer could have cost.
    let fetched = within(Duration::from_secs(2), a.client.fetch(action(4)))
        .await
        .expect("a hit");
    assert_eq!(fetched.peer, b.peer);
    until("the silent peer was asked", || silent.requests() == 1).await;
}

#[tokio::test]
async fn a_peer_dying_mid_transfer_is_a_prompt_miss_with_nothing_stored() {
    let [ka, kh] = keypairs();
    let mut a = node(&ka, &[id(&kh)]).await;
    // Under the 1 MiB inline limit, so it comes with the answer.
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    let dying = hostile(
        &kh,
        Mode::Stall {
            body,
            send: 700_000,
        },
    )
    .await;
    a.client.dial(dying.address.clone()).await.unwrap();
    let dying_peer = dying.peer;
    a.wait_for(|e| *e == Event::PeerConnected(dying_peer)).await;

    let client = a.client.clone();
    let fetch = tokio::spawn(async move { client.fetch(action(5)).await });
    let usage = a.store.usage();
    until("part of the body was written", || {
        Usage::get(&usage.bytes_written) >= 500_000
    })
    .await;
    dying.kill();
    let started = tokio::time::Instant::now();
    let fetched = within(Duration::from_secs(3), fetch).await.unwrap();
    assert_eq!(fetched, None);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!a.store.has(&action(5)));
    assert_eq!(Usage::get(&usage.commits), 0);
    until("the partial body was discarded", || {
        Usage::get(&usage.discarded) == 1
    })
    .await;
    a.wait_for(|e| *e == Event::PeerDisconnected(dying_peer))
        .await;
}

/// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon do":
/// a peer that says "found" and then stalls is cut
/// off after `STALL` (2 s) of silence, not after the time its claimed size
/// would take (41 s here), and is put in cooldown: the next lookup does not
/// ask it.
#[tokio::test]
async fn a_stalled_transfer_is_cut_off_and_its_peer_cooled_down() {
    let [ka, kh] = keypairs();
    let mut a = start(
        test_config(ka.clone(), &[id(&kh)]).with_transfer_rate(500_000),
        DirStore::new(),
    )
    .await;
    let body = vec![1u8; 20_000_000];
    let stalled = hostile(&kh, Mode::Stall { body, send: 10_000 }).await;
    a.client.dial(stalled.address.clone()).await.unwrap();
    let stalled_peer = stalled.peer;
    a.wait_for(|e| *e == Event::PeerConnected(stalled_peer))
        .await;

    let started = tokio::time::Instant::now();
    let fetched = within(Duration::from_secs(8), a.client.fetch(action(6))).await;
    let took = started.elapsed();
    assert_eq!(fetched, None);
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(Usage::get(&a.store.usage().commits), 0);
    until("the partial body was discarded", || {
        Usage::get(&a.store.usage().discarded) == 1
    })
    .await;
    a.wait_for(|e| {
        matches!(e, Event::BodyRejected { peer, reason: RejectReason::Stalled, .. } if *peer == stalled_peer)
    })
    .await;
    // In cooldown: not asked again, a miss at once.
    let requests = stalled.requests();
    let started = tokio::time::Instant::now();
    assert_eq!(
        within(Duration::from_secs(2), a.client.fetch(action(7))).await,
        None
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(stalled.requests(), requests);
}

/// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon
/// do": a peer with no summary is asked about every lookup. This one says
/// "found" with a 100 KB body and stops after 10 KB. At the default rate
/// (50 MB/s) the body's transfer timeout (1 s + 2 ms) passes before a
/// piece's 2 s stall would; that too is the peer's fault, so it is cooled
/// down after this one stall, and every lookup after it is answered
/// within the lookup deadline without asking it.
#[tokio::test]
async fn a_staller_at_the_default_rate_is_cooled_down_after_its_first_stall() {
    let [ka, kh] = keypairs();
    let deadline = Duration::from_millis(300);
    let mut a = start(
        test_config(ka.clone(), &[id(&kh)]).with_lookup_deadline(deadline),
        DirStore::new(),
    )
    .await;
    let body = vec![1u8; 100_000];
    let stalled = hostile(&kh, Mode::Stall { body, send: 10_000 }).await;
    a.client.dial(stalled.address.clone()).await.unwrap();
    let stalled_peer = stalled.peer;
    a.wait_for(|e| *e == Event::PeerConnected(stalled_peer))
        .await;

    assert_eq!(
        within(Duration::from_secs(5), a.client.fetch(action(1))).await,
        None
    );
    for n in 2..6 {
        let started = tokio::time::Instant::now();
        let fetched = within(Duration::from_secs(5), a.client.fetch(action(n))).await;
        let took = started.elapsed();
        assert_eq!(fetched, None);
        assert!(
            took < deadline + Duration::from_millis(200),
            "lookup {n} took {took:?}, over the lookup deadline of {deadline:?}"
        );
    }
    assert_eq!(stalled.requests(), 1, "the staller was asked again");
    a.wait_for(|e| {
        matches!(e, Event::BodyRejected { peer, reason: RejectReason::Stalled, .. } if *peer == stalled_peer)
    })
    .await;
    let peers = a.client.peers().await;
    let info = peers.iter().find(|p| p.peer == stalled_peer).unwrap();
    assert!(info.in_cooldown);
    assert_eq!(Usage::get(&a.store.usage().commits), 0);
}

/// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon
/// do": a peer announces a 2 GiB body (more than the 1 GiB of bodies in
/// flight) and then drips it, a piece a second, never slow enough for a
/// piece to stall. While that claim is pending, an honest peer's body is
/// still taken: bodies in flight are counted as they arrive, not as they
/// are claimed. The dripper falls behind the transfer rate within
/// seconds, not the 44 s its claimed size would allow, and is cooled down.
#[tokio::test]
async fn a_dripped_huge_claim_is_cut_off_and_locks_no_honest_body_out() {
    let [ka, kb, kh] = keypairs();
    let mut a = node(&ka, &[id(&kb), id(&kh)]).await;
    let mut b = node(&kb, &[id(&ka)]).await;
    let honest = b"an honest peer's body".repeat(10_000);
    b.store.put(action(2), &honest);
    let dripper = hostile(
        &kh,
        Mode::Drip {
            size: 2 << 30,
            piece: 64 * 1024,
            every: Duration::from_millis(250),
        },
    )
    .await;
    connect(&mut a, &mut b).await;
    a.client.dial(dripper.address.clone()).await.unwrap();
    let dripper_peer = dripper.peer;
    a.wait_for(|e| *e == Event::PeerConnected(dripper_peer))
        .await;

    // B misses; the dripper announces its body and is asked for it.
    let client = a.client.clone();
    let claim = tokio::spawn(async move { client.fetch(action(1)).await });
    until("the dripper is sending its body", || {
        dripper.bytes_sent() > 0
    })
    .await;
    let fetched = within(Duration::from_secs(5), a.client.fetch(action(2)))
        .await
        .expect("the honest body, beside the pending claim");
    assert_eq!(fetched.peer, b.peer);
    assert_eq!(a.store.body(&action(2)).unwrap(), honest);
    assert!(!claim.is_finished(), "the claim was still pending");

    let started = tokio::time::Instant::now();
    assert_eq!(within(Duration::from_secs(8), claim).await.unwrap(), None);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    a.wait_for(|e| {
        matches!(e, Event::BodyRejected { peer, reason: RejectReason::Stalled, .. } if *peer == dripper_peer)
    })
    .await;
    until("the partial body was discarded", || {
        Usage::get(&a.store.usage().discarded) == 1
    })
    .await;
    // In cooldown: the next lookup asks B alone, and misses at once.
    let requests = dripper.requests();
    let started = tokio::time::Instant::now();
    assert_eq!(
        within(Duration::from_secs(2), a.client.fetch(action(3))).await,
        None
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(dripper.requests(), requests);
}

/// Bytes that do not compress (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn compressed_bodies_cross_between_two_nodes() {
    let [ka, kb] = keypairs();
    // A asks for compressed bodies; B, on its defaults, serves them.
    let mut a = start(
        test_config(ka.clone(), &[id(&kb)]).with_compression(Compression::Always),
        DirStore::new(),
    )
    .await;
    let mut b = node(&kb, &[id(&ka)]).await;
    let small = b"package fmt; func Println() {}\n".repeat(40);
    // Over the 1 MiB inline limit: announced, then fetched from B alone.
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| {
            if i % 50 < 40 {
                b"go.o"[i as usize % 4]
            } else {
                (i / 50) as u8
            }
        })
        .collect();
    let outputs = [
        b.store.put(action(1), &small),
        b.store.put(action(2), &big),
        // Incompressible: its pieces travel stored.
        b.store.put(action(3), &noise(700_000)),
        b.store.put(action(4), b""),
    ];
    connect(&mut a, &mut b).await;
    for (n, output) in (1..).zip(outputs) {
        let fetched = within(Duration::from_secs(10), a.client.fetch(action(n)))
            .await
            .unwrap_or_else(|| panic!("entry {n} from B"));
        assert_eq!(fetched.output, output);
        assert_eq!(a.store.hash_of(&action(n)), Some(output));
    }
    assert_eq!(a.store.body(&action(1)).unwrap(), small);
    assert_eq!(a.store.body(&action(2)).unwrap(), big);
    assert_eq!(a.store.body(&action(3)).unwrap(), noise(700_000));
    let seen_by_a = a.client.peers().await;
    let b_info = seen_by_a.iter().find(|p| p.peer == b.peer).unwrap();
    let counters = b_info.counters;
    assert!(counters.wire_in * 2 < counters.bytes_in, "{counters:?}");
}

/// A miss says why, as the lookup found it: nobody to ask; only a peer
/// whose summary does not name the action; peers that answered "not
/// found"; a liar whose bad body put it in cooldown during the lookup,
/// and then while it is in cooldown; a peer in cooldown beside an honest
/// one that was asked and did not have it (that lookup missed because
/// the peer asked did not have it, not because of the cooldown); and a
/// peer that never answered by the lookup deadline. Nothing later has to
/// guess the reason again from how long the lookup took or from who is in
/// cooldown by then.
#[tokio::test]
async fn a_miss_says_why_the_peers_could_not_answer() {
    let [ka, kb, kc, kl, ks] = keypairs();
    let allowed = [id(&kb), id(&kc), id(&kl), id(&ks)];
    let mut a = node(&ka, &allowed).await;
    let lookup = |n| within(Duration::from_secs(5), a.client.lookup(action(n)));
    assert_eq!(lookup(1).await, Err(Miss::NoPeers));

    // C keeps a summary, which names action 2 only.
    let mut c = start(test_config(kc, &[id(&ka)]), DirStore::with_summary()).await;
    c.store.put(action(2), b"held by C");
    connect(&mut a, &mut c).await;
    until_summary(&a, c.peer, 1).await;
    let lookup = |n| within(Duration::from_secs(5), a.client.lookup(action(n)));
    assert_eq!(lookup(1).await, Err(Miss::NotInSummaries));

    // B keeps none: it is asked about everything.
    let mut b = node(&kb, &[id(&ka)]).await;
    connect(&mut a, &mut b).await;
    let lookup = |n| within(Duration::from_secs(5), a.client.lookup(action(n)));
    assert_eq!(lookup(3).await, Err(Miss::NotFound));

    let liar = hostile(
        &kl,
        Mode::WrongBody {
            claimed: b"the real body".to_vec(),
            sent: b"a fake body!!".to_vec(),
        },
    )
    .await;
    a.client.dial(liar.address.clone()).await.unwrap();
    let liar_peer = liar.peer;
    a.wait_for(|e| *e == Event::PeerConnected(liar_peer)).await;
    let lookup = |n| within(Duration::from_secs(5), a.client.lookup(action(n)));
    let cooled = Err(Miss::Cooldown { peer: liar_peer });
    assert_eq!(lookup(4).await, cooled, "the lie cooled its peer down");
    assert_eq!(lookup(5).await, Err(Miss::NotFound), "B was asked");
    b.kill();
    let b_peer = b.peer;
    a.wait_for(|e| *e == Event::PeerDisconnected(b_peer)).await;
    let lookup = |n| within(Duration::from_secs(5), a.client.lookup(action(n)));
    assert_eq!(lookup(6).await, cooled, "only the liar may hold it");

    let silent = hostile(&ks, Mode::Silent).await;
    a.client.dial(silent.address.clone()).await.unwrap();
    let silent_peer = silent.peer;
    a.wait_for(|e| *e == Event::PeerConnected(silent_peer))
        .await;
    let lookup = |n| within(Duration::from_secs(5), a.client.lookup(action(n)));
    assert_eq!(lookup(7).await, Err(Miss::Deadline));
}
