//! Deadlines: who is given up on, and whose fault a missed one is.

use super::*;

#[test]
fn the_lookup_deadline_gives_up_on_silent_peers_but_not_on_sending_ones() {
    let now = Instant::now();
    let peers = peers(2);
    let mut books = Books::new(limits());
    let mut answer = lookup(&mut books, action(1), now, &peers);
    let (sends, others) = drain(&mut books);
    let [Output::Timer { at, deadline }] = others[..] else {
        panic!("a lookup deadline: {others:?}");
    };
    // One peer said "found" and is sending; the other said nothing.
    books.on_promise(sends[0].key, Promise::Asked);
    books.on_promise(sends[1].key, Promise::Asked);
    books.on_promise(sends[0].key, Promise::Owed);
    books.on_deadline(deadline, at, &peers);
    assert!(sends[1].cancel.is_cancelled());
    assert!(!sends[0].cancel.is_cancelled());
    let (_, others) = drain(&mut books);
    assert!(matches!(
        others[..],
        [Output::Timer { deadline: Deadline::Request(key), .. }] if key == sends[0].key
    ));
    assert!(answer.try_recv().is_err(), "still waiting for the transfer");
    books.on_answer(
        sends[0].key,
        sends[0].peer,
        answer_of(Outcome::Committed(meta(3))),
        at,
        &peers,
    );
    assert!(answer.try_recv().unwrap().is_ok());
    drain(&mut books);

    // Nobody answered: a miss at the deadline.
    let mut answer = lookup(&mut books, action(2), now, &peers);
    let (sends, others) = drain(&mut books);
    let [Output::Timer { at, deadline }] = others[..] else {
        panic!("a lookup deadline: {others:?}");
    };
    books.on_deadline(deadline, at, &peers);
    assert_eq!(answer.try_recv(), Ok(Err(Miss::Deadline)));
    assert!(sends.iter().all(|send| send.cancel.is_cancelled()));
}

/// A lookup sent to one peer, and that peer's request.
fn one_lookup(now: Instant) -> (Books, FakePeers, Request) {
    let peers = peers(1);
    let mut books = Books::new(limits());
    let _answer = lookup(&mut books, action(1), now, &peers);
    let send = drain(&mut books).0.remove(0);
    books.on_promise(send.key, Promise::Asked);
    (books, peers, send)
}

/// A peer that said "found" and then did not deliver its body is
/// cooled down whichever deadline passes first: the codec's, libp2p's
/// request timeout, or the backstop here. One that never answered a
/// lookup is only slow, and one whose body is all in is not to blame
/// for our commit.
#[test]
fn a_missed_deadline_cools_down_only_a_peer_that_owed_a_body() {
    let now = Instant::now();
    let later = now + Duration::from_secs(100);

    // Silent on a lookup: not its fault, whatever ends the request.
    let (mut books, peers, send) = one_lookup(now);
    books.on_failed(send.key, Failure::TimedOut, now, &peers);
    assert!(!books.in_cooldown(&send.peer, now));

    // Said "found", and the body stopped: the backstop, or libp2p's
    // request timeout, cools it down like a stall does.
    let (mut books, peers, send) = one_lookup(now);
    books.on_promise(send.key, Promise::Owed);
    books.on_deadline(Deadline::Lookup(0), now, &peers);
    books.on_deadline(Deadline::Request(send.key), later, &peers);
    assert!(books.in_cooldown(&send.peer, later), "at the backstop");
    let (mut books, peers, send) = one_lookup(now);
    books.on_promise(send.key, Promise::Owed);
    books.on_failed(send.key, Failure::TimedOut, later, &peers);
    assert!(books.in_cooldown(&send.peer, later), "at libp2p's timeout");

    // Every byte in, and our commit is slow: not the peer's fault.
    let (mut books, peers, send) = one_lookup(now);
    books.on_promise(send.key, Promise::Kept);
    books.on_deadline(Deadline::Request(send.key), later, &peers);
    assert!(!books.in_cooldown(&send.peer, later));
}

/// A peer that announced a big body and then leaves the request for it
/// unanswered is cooled down at the header deadline or the backstop.
#[test]
fn a_body_request_left_unanswered_cools_its_peer_down() {
    let now = Instant::now();
    let later = now + Duration::from_secs(100);
    for backstop in [false, true] {
        let peers = peers(2);
        let mut books = Books::new(limits());
        let mut answer = lookup(&mut books, action(1), now, &peers);
        let (sends, _) = drain(&mut books);
        for send in &sends {
            books.on_answer(
                send.key,
                send.peer,
                answered(Outcome::Announced(meta(100 << 20)), vec![]),
                now,
                &peers,
            );
        }
        let (bodies, _) = drain(&mut books);
        let body = &bodies[0];
        books.on_promise(body.key, Promise::Asked);
        if backstop {
            books.on_deadline(Deadline::Request(body.key), later, &peers);
        } else {
            books.on_failed(body.key, Failure::TimedOut, later, &peers);
        }
        assert!(books.in_cooldown(&body.peer, later), "backstop: {backstop}");
        // The other candidate is asked next.
        let (next, _) = drain(&mut books);
        assert_eq!(next.len(), 1);
        assert_ne!(next[0].peer, body.peer);
        assert!(answer.try_recv().is_err(), "still fetching");
    }
}
