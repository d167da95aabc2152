//! Read-ahead: when hints are followed, in batches, within budgets.

use super::*;

/// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon do":
/// a peer's hints are followed only while a build is using peers, and
/// within the peer's budget; past it they are dropped.
#[test]
fn read_ahead_needs_a_live_build_and_stays_within_its_budget() {
    let now = Instant::now();
    let peers = peers(1);
    let peer = peers.connected[0];
    let mut limits = limits();
    limits.read_ahead = 16;
    limits.read_ahead_budget.per_peer = 16 * 4096;
    let mut books = Books::new(limits);
    let hints = |from: u8| (from..from + 16).map(action).collect::<Vec<_>>();

    // A lookup that missed brings hints: no build is using peers.
    let _answer = lookup(&mut books, action(1), now, &peers);
    let (sends, _) = drain(&mut books);
    books.on_answer(
        sends[0].key,
        peer,
        answered(Outcome::NotFound, hints(10)),
        now,
        &peers,
    );
    let (sent, _) = drain(&mut books);
    assert!(
        sent.is_empty(),
        "read ahead with no build using peers: {sent:?}"
    );

    // A lookup that got a body: now they are followed, each entry
    // allowed a sixteenth of the budget.
    let _answer = lookup(&mut books, action(2), now, &peers);
    let (sends, _) = drain(&mut books);
    books.on_answer(
        sends[0].key,
        peer,
        answered(Outcome::Committed(meta(1)), hints(40)),
        now,
        &peers,
    );
    let (batches, _) = drain(&mut books);
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0].max_inline, 4096);
    // All of it lands: the budget is spent, and further hints are
    // dropped rather than fetched.
    for token in batches[0].batch.clone().unwrap() {
        books.on_report(token, Outcome::Committed(meta(4096)), now, &peers);
    }
    books.on_answer(batches[0].key, peer, answered_batch(hints(70)), now, &peers);
    let (sent, _) = drain(&mut books);
    assert!(sent.is_empty(), "read ahead past the budget: {sent:?}");
    assert_eq!(books.read_ahead.queued(), 0);

    // The live window passes with no lookup hit: nothing either, even
    // in a new budget window.
    let later = now + Duration::from_secs(601);
    books.offer_hints(peer, plain(hints(100)), later, &peers);
    assert!(drain(&mut books).0.is_empty());
}

#[test]
fn hints_are_read_ahead_in_batches_that_lookups_join() {
    let now = Instant::now();
    let mut peers = peers(1);
    let peer = peers.connected[0];
    peers.stored.insert(action(30));
    let mut books = Books::new(limits());
    let _answer = lookup(&mut books, action(1), now, &peers);
    let (sends, _) = drain(&mut books);
    let hints: Vec<ActionId> = (10..31).map(action).collect();
    books.on_answer(
        sends[0].key,
        peer,
        answered(Outcome::Committed(meta(1)), hints.clone()),
        now,
        &peers,
    );
    let (batches, _) = drain(&mut books);
    // 21 hints, one already stored: a batch of 16, then one of 4.
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].actions, hints[..BATCH]);
    assert_eq!(batches[1].actions, hints[BATCH..20]);
    // Each entry reserves what it may bring: the first batch took a
    // quarter of the budget, so the second may bring less per entry.
    assert_eq!(batches[0].max_inline, 64 << 20);
    assert_eq!(batches[1].max_inline, (3 << 30) / 64);
    for batch in &batches {
        assert_eq!(batch.peer, peer);
        assert_eq!(batch.hints, HINTS);
        assert_eq!(
            batch.batch.as_ref().map(Vec::len),
            Some(batch.actions.len())
        );
    }
    // A lookup of an entry being read ahead joins its fetch: nothing
    // new is sent, and the entry's report answers it.
    let mut joined = lookup(&mut books, hints[3], now, &peers);
    assert!(drain(&mut books).0.is_empty());
    let token = batches[0].batch.as_ref().unwrap()[3];
    assert_eq!(
        books.on_report(token, Outcome::Committed(meta(2)), now, &peers),
        Some(peer)
    );
    assert_eq!(joined.try_recv().unwrap().unwrap().size, 2);
    let (_, others) = drain(&mut books);
    assert!(matches!(
        others[..],
        [Output::Committed {
            read_ahead: true,
            ..
        }]
    ));
}

#[test]
fn a_version_one_peer_gets_the_rest_of_a_batch_one_per_request() {
    let now = Instant::now();
    let mut peers = peers(1);
    let peer = peers.connected[0];
    let mut books = Books::new(limits());
    let _answer = lookup(&mut books, action(1), now, &peers);
    let (sends, _) = drain(&mut books);
    let hints: Vec<ActionId> = (10..13).map(action).collect();
    books.on_answer(
        sends[0].key,
        peer,
        answered(Outcome::Committed(meta(1)), hints.clone()),
        now,
        &peers,
    );
    let (batches, _) = drain(&mut books);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].actions, hints);
    // It answered the first only, and said it is version 1.
    let token = batches[0].batch.as_ref().unwrap()[0];
    books.on_report(token, Outcome::Committed(meta(1)), now, &peers);
    peers.no_batches.insert(peer); // What the event loop records.
    let end = Answer {
        outcome: None,
        next: Vec::new(),
        version: 1,
    };
    books.on_answer(batches[0].key, peer, end, now, &peers);
    let (again, _) = drain(&mut books);
    let asked: Vec<Vec<ActionId>> = again.iter().map(|send| send.actions.clone()).collect();
    assert_eq!(asked, [vec![hints[1]], vec![hints[2]]]);
    assert!(again.iter().all(|send| send.batch.is_none()));
}

/// A coworker's build hints at its test binary between two packages: a
/// linked executable over the limit is not read ahead (a small one is, and
/// so is a hint from an older server, which marks none), and a lookup
/// for it is still sent.
#[test]
fn big_executables_are_left_to_a_lookup() {
    let now = Instant::now();
    let peers = peers(1);
    let peer = peers.connected[0];
    let mut books = Books::new(limits());
    let max = books.limits.read_ahead_executables_max;
    let _answer = lookup(&mut books, action(1), now, &peers);
    let (sends, _) = drain(&mut books);
    let hints = vec![
        Hint::new(action(10)),
        Hint {
            action: action(11),
            executable: Some(max + 1),
        },
        Hint {
            action: action(12),
            executable: Some(max),
        },
        Hint::new(action(13)),
    ];
    books.on_answer(
        sends[0].key,
        peer,
        answered_with(Outcome::Committed(meta(1)), hints),
        now,
        &peers,
    );
    let (batches, _) = drain(&mut books);
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(
        batches[0].actions,
        [action(10), action(12), action(13)],
        "the big executable was read ahead"
    );
    let _answer = lookup(&mut books, action(11), now, &peers);
    let (sends, _) = drain(&mut books);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].actions, [action(11)]);
}
