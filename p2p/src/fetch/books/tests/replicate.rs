//! Replication: a peer's catalog fetched in the background, within what
//! it listed.

use super::*;

type Replies = Vec<oneshot::Receiver<Result<Fetched, Miss>>>;
type Entries = Vec<(ActionId, u64, Reply)>;

/// Entries to replicate, `listed` bytes each (action 3: 5 MiB).
fn replicated(range: std::ops::RangeInclusive<u8>, listed: u64) -> (Entries, Replies) {
    range
        .map(|n| {
            let (reply, answer) = oneshot::channel();
            let size = if n == 3 { 5 << 20 } else { listed };
            ((action(n), size, reply), answer)
        })
        .unzip()
}

#[test]
fn replication_asks_one_peer_in_batches_and_does_not_wake_read_ahead() {
    let now = Instant::now();
    let mut peers = peers(2);
    let (peer, other) = (peers.connected[0], peers.connected[1]);
    peers.stored.insert(action(5));
    let mut books = Books::new(limits());
    peers.publish(&books);
    let (entries, mut answers) = replicated(1..=20, 1000);
    books.replicate(peer, entries, now, &peers);
    // Stored already: answered at once, not asked for.
    assert_eq!(answers[4].try_recv(), Ok(Err(Miss::NotFound)));
    let (batches, _) = drain(&mut books);
    assert_eq!(batches.len(), 2, "19 entries: a batch of 16 and one of 3");
    assert!(batches.iter().all(|batch| batch.peer == peer));
    assert!(batches.iter().all(|batch| batch.hints == 0));
    assert_eq!(batches[0].max_inline, 1 << 20, "big bodies come alone");
    assert_eq!(
        batches[1].max_inline, 1000,
        "nothing bigger than the catalog listed comes inline"
    );
    let listed = batches[0].listed.as_ref().expect("sizes listed");
    assert_eq!((listed.len(), listed[0], listed[2]), (16, 1000, 5 << 20));
    // A lookup of a replicated entry joins it: nothing is sent.
    let mut joined = lookup(&mut books, action(2), now, &peers);
    assert!(drain(&mut books).0.is_empty());
    let token = |n: usize| batches[0].batch.as_ref().unwrap()[n];
    books.on_report(token(0), Outcome::Committed(meta(7)), now, &peers);
    assert_eq!(answers[0].try_recv().unwrap().unwrap().size, 7);
    // A replicated body alone does not make read-ahead think a build
    // is using peers; one a lookup waited for does.
    assert!(!books.budget.is_live(now));
    books.on_report(token(1), Outcome::Committed(meta(8)), now, &peers);
    assert_eq!(joined.try_recv().unwrap().unwrap().size, 8);
    assert!(books.budget.is_live(now));
    // A big one is announced, then fetched alone from the same peer,
    // no bigger than listed.
    books.on_report(token(2), Outcome::Announced(meta(5 << 20)), now, &peers);
    let (body, _) = drain(&mut books);
    assert_eq!(body.len(), 1);
    assert_eq!(
        (body[0].peer, body[0].actions.clone()),
        (peer, vec![action(3)])
    );
    assert_eq!(body[0].max_inline, 5 << 20);
    assert_eq!(body[0].listed, Some(vec![5 << 20]));
    // One the peer no longer has is a miss: the other peer is not asked.
    books.on_report(token(3), Outcome::NotFound, now, &peers);
    assert_eq!(answers[3].try_recv(), Ok(Err(Miss::NotFound)));
    assert!(drain(&mut books).0.iter().all(|send| send.peer != other));
    // A lookup's requests take any size.
    let _answer = lookup(&mut books, action(30), now, &peers);
    assert!(drain(&mut books).0.iter().all(|send| send.listed.is_none()));
}

/// A body bigger than its catalog listed counts against the peer as a
/// body that does not verify: its other transfers end, and it is not
/// asked again during its cooldown.
#[test]
fn a_body_bigger_than_listed_cools_its_peer_down() {
    let now = Instant::now();
    let peers = peers(1);
    let peer = peers.connected[0];
    let mut books = Books::new(limits());
    peers.publish(&books);
    let (entries, mut answers) = replicated(1..=2, 1);
    books.replicate(peer, entries, now, &peers);
    let (batches, _) = drain(&mut books);
    let token = batches[0].batch.as_ref().unwrap()[0];
    let rejected = Outcome::Rejected {
        reason: RejectReason::LargerThanListed {
            size: 1 << 20,
            listed: 1,
        },
        bytes: 0,
    };
    books.on_report(token, rejected, now, &peers);
    assert_eq!(answers[0].try_recv(), Ok(Err(Miss::Cooldown { peer })));
    assert!(books.in_cooldown(&peer, now));
    assert!(batches[0].cancel.is_cancelled(), "its batch is cut off");
    let (entries, mut later) = replicated(10..=11, 1);
    books.replicate(peer, entries, now, &peers);
    assert!(
        drain(&mut books).0.is_empty(),
        "not asked while cooled down"
    );
    assert_eq!(later[0].try_recv(), Ok(Err(Miss::Cooldown { peer })));
}

/// With agreement on, one peer's word is never enough to store a
/// body: replicating would move bodies only to throw them away.
#[test]
fn nothing_is_replicated_with_agreement_on() {
    let now = Instant::now();
    let peers = peers(1);
    let mut books = Books::new(Limits {
        agreement: true,
        ..limits()
    });
    peers.publish(&books);
    let (entries, mut answers) = replicated(1..=4, 10);
    books.replicate(peers.connected[0], entries, now, &peers);
    assert!(drain(&mut books).0.is_empty(), "nothing asked for");
    assert!(
        answers
            .iter_mut()
            .all(|answer| answer.try_recv() == Ok(Err(Miss::NotFound)))
    );
}
