//! Lookups: whom they ask, whose body wins, and what a bad body costs
//! its peer.

use super::*;

#[test]
fn a_lookup_nobody_may_answer_is_a_miss_at_once() {
    let now = Instant::now();
    let mut books = Books::new(limits());
    let mut answer = lookup(&mut books, action(1), now, &FakePeers::default());
    assert_eq!(answer.try_recv(), Ok(Err(Miss::NoPeers)));
    assert!(books.poll_output().is_none(), "nothing sent");

    // A peer whose summary does not name the action is not asked.
    let mut peers = peers(1);
    peers
        .holds
        .insert(peers.connected[0], HashSet::from([action(2)]));
    let mut answer = lookup(&mut books, action(1), now, &peers);
    assert_eq!(answer.try_recv(), Ok(Err(Miss::NotInSummaries)));
    let mut answer = lookup(&mut books, action(2), now, &peers);
    assert!(answer.try_recv().is_err(), "asked, waiting");
    assert_eq!(drain(&mut books).0.len(), 1);
}

#[test]
fn a_lookup_asks_every_peer_at_once_and_the_first_body_wins() {
    let now = Instant::now();
    let peers = peers(2);
    let mut books = Books::new(limits());
    let mut answer = lookup(&mut books, action(1), now, &peers);
    let (sends, others) = drain(&mut books);
    assert_eq!(sends.len(), 2);
    for send in &sends {
        assert_eq!(send.actions, [action(1)]);
        assert_eq!(
            send.max_inline,
            1 << 20,
            "several asked: small bodies inline"
        );
        assert_eq!(send.hints, HINTS);
        assert_eq!(send.header_deadline, now + Duration::from_millis(150));
    }
    assert!(matches!(
        others[..],
        [Output::Timer {
            deadline: Deadline::Lookup(_),
            ..
        }]
    ));
    let (first, second) = (&sends[0], &sends[1]);
    books.on_answer(
        first.key,
        first.peer,
        answered(Outcome::Committed(meta(4)), vec![]),
        now,
        &peers,
    );
    let (more, others) = drain(&mut books);
    assert!(more.is_empty());
    assert!(matches!(
        others[..],
        [Output::Committed { peer, size: 4, read_ahead: false }] if peer == first.peer
    ));
    let fetched = answer.try_recv().unwrap().unwrap();
    assert_eq!((fetched.peer, fetched.size), (first.peer, 4));
    assert!(
        second.cancel.is_cancelled(),
        "the other peer's request stops"
    );
}

#[test]
fn a_single_peer_is_asked_for_any_body_inline() {
    let peers = peers(1);
    let mut books = Books::new(limits());
    let _answer = lookup(&mut books, action(1), Instant::now(), &peers);
    let (sends, _) = drain(&mut books);
    assert_eq!(sends[0].max_inline, 4 << 30);
}

#[test]
fn a_big_body_is_fetched_from_one_candidate_at_a_time() {
    let now = Instant::now();
    let peers = peers(2);
    let mut books = Books::new(limits());
    let mut answer = lookup(&mut books, action(1), now, &peers);
    let (sends, _) = drain(&mut books);
    let big = meta(100 << 20);
    books.on_answer(
        sends[0].key,
        sends[0].peer,
        answered(Outcome::Announced(big), vec![]),
        now,
        &peers,
    );
    books.on_answer(
        sends[1].key,
        sends[1].peer,
        answered(Outcome::Announced(big), vec![]),
        now,
        &peers,
    );
    let (bodies, others) = drain(&mut books);
    assert_eq!(bodies.len(), 1, "one body request at a time");
    assert_eq!(bodies[0].peer, sends[0].peer, "in answer order");
    assert_eq!(bodies[0].max_inline, 4 << 30);
    assert_eq!(bodies[0].hints, 0);
    assert_eq!(
        bodies[0].header_deadline,
        now + Duration::from_millis(150) + STALL
    );
    assert!(matches!(
        others[..],
        [Output::Timer { deadline: Deadline::Request(key), .. }] if key == bodies[0].key
    ));
    // The first candidate's transfer fails: the second is asked.
    books.on_failed(bodies[0].key, Failure::Ended, now, &peers);
    let (bodies, _) = drain(&mut books);
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].peer, sends[1].peer);
    books.on_answer(
        bodies[0].key,
        bodies[0].peer,
        answered(Outcome::Committed(big), vec![]),
        now,
        &peers,
    );
    assert_eq!(answer.try_recv().unwrap().unwrap().peer, sends[1].peer);
}

/// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon do":
/// a peer that sent a bad body gets to finish no other transfer either,
/// and one that stalled is put in cooldown.
#[test]
fn a_bad_or_stalled_body_stops_every_transfer_from_its_peer() {
    let now = Instant::now();
    let peers = peers(1);
    let peer = peers.connected[0];
    let mut books = Books::new(limits());
    let _first = lookup(&mut books, action(1), now, &peers);
    let _second = lookup(&mut books, action(2), now, &peers);
    let (sends, _) = drain(&mut books);
    assert_eq!(sends.len(), 2);
    books.on_answer(
        sends[0].key,
        peer,
        answer_of(Outcome::Rejected {
            reason: RejectReason::TooLarge { size: 9, limit: 1 },
            bytes: 9,
        }),
        now,
        &peers,
    );
    assert!(sends[1].cancel.is_cancelled(), "its other transfer goes on");

    let later = now + Duration::from_secs(61);
    assert!(!books.in_cooldown(&peer, later));
    let _third = lookup(&mut books, action(3), later, &peers);
    let (sends, _) = drain(&mut books);
    books.on_failed(sends[0].key, Failure::Stalled, later, &peers);
    let (_, others) = drain(&mut books);
    assert!(
        others.iter().any(|output| matches!(
            output,
            Output::Rejected {
                reason: RejectReason::Stalled,
                ..
            }
        )),
        "{others:?}"
    );
    assert!(books.in_cooldown(&peer, later));
}

#[test]
fn a_body_that_fails_verification_puts_its_peer_in_cooldown() {
    let now = Instant::now();
    let peers = peers(1);
    let peer = peers.connected[0];
    let mut books = Books::new(limits());
    let mut answer = lookup(&mut books, action(1), now, &peers);
    let (sends, _) = drain(&mut books);
    let reason = RejectReason::TooLarge { size: 9, limit: 1 };
    books.on_answer(
        sends[0].key,
        peer,
        answer_of(Outcome::Rejected {
            reason: reason.clone(),
            bytes: 9,
        }),
        now,
        &peers,
    );
    let (_, others) = drain(&mut books);
    assert!(matches!(
        &others[..],
        [Output::Rejected { peer: p, bytes: 9, reason: r, .. }] if *p == peer && *r == reason
    ));
    assert_eq!(answer.try_recv(), Ok(Err(Miss::Cooldown { peer })));
    assert!(books.in_cooldown(&peer, now));
    // Not asked while in cooldown; asked again after it.
    let mut answer = lookup(&mut books, action(2), now + Duration::from_secs(59), &peers);
    assert_eq!(answer.try_recv(), Ok(Err(Miss::Cooldown { peer })));
    let later = now + Duration::from_secs(61);
    assert!(!books.in_cooldown(&peer, later));
    let _answer = lookup(&mut books, action(2), later, &peers);
    assert_eq!(drain(&mut books).0.len(), 1);
}
