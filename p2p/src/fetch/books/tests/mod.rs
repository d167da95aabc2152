//! The books' rules, one by one, with peers, time and answers made up:
//! no network, no codec.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::fetch::exchange::{Answer, Failure, Outcome, RejectReason, Request};
use crate::fetch::holders::SharedSummary;
use crate::fetch::pace::STALL;
use crate::fetch::read_ahead::{BATCH, HINTS};
use crate::ids::OutputId;
use crate::protocol::wire::WIRE_VERSION;
use crate::summary::{SummaryAnswer, SummaryHeader, prefix};

/// Peers as a test sets them: connected and allowlisted, summaries
/// (none: may hold anything), batches, and the local store.
#[derive(Default)]
struct FakePeers {
    connected: Vec<PeerId>,
    holds: HashMap<PeerId, HashSet<ActionId>>,
    no_batches: HashSet<PeerId>,
    stored: HashSet<ActionId>,
}

impl FakePeers {
    /// Publishes the connected peers, each with a summary of what it
    /// holds, as those a lookup would ask (as the event loop does).
    fn publish(&self, books: &Books) {
        let asked = (self.connected.iter())
            .map(|peer| (*peer, summary_of(self.holds.get(peer))))
            .collect();
        books.holders().set_asked(asked);
    }
}

/// A summary naming `held`; none (it may hold anything) without.
fn summary_of(held: Option<&HashSet<ActionId>>) -> SharedSummary {
    let summary = SharedSummary::default();
    if let Some(held) = held {
        let prefixes: Vec<u64> = held.iter().map(prefix).collect();
        summary.write().apply(SummaryAnswer {
            header: SummaryHeader {
                epoch: 7,
                from: 0,
                count: prefixes.len() as u64,
                generation: prefixes.len() as u64,
            },
            prefixes,
        });
    }
    summary
}

impl Peers for FakePeers {
    fn batches(&self, peer: &PeerId) -> bool {
        !self.no_batches.contains(peer)
    }
    fn stored(&self, action: &ActionId) -> bool {
        self.stored.contains(action)
    }
}

fn peers(n: usize) -> FakePeers {
    FakePeers {
        connected: (0..n).map(|_| PeerId::random()).collect(),
        ..FakePeers::default()
    }
}

fn limits() -> Limits {
    Limits {
        lookup_deadline: Duration::from_millis(150),
        inline_limit: 1 << 20,
        max_body_size: 4 << 30,
        transfer_rate: 50_000_000,
        cooldown: Duration::from_secs(60),
        agreement: false,
        read_ahead: 64,
        read_ahead_max_body: 64 << 20,
        read_ahead_budget: crate::config::ReadAheadLimits {
            live_for: Duration::from_secs(30),
            window: Duration::from_secs(600),
            // 64 entries in flight may bring 64 MiB each.
            per_peer: 4 << 30,
            total: 8 << 30,
        },
    }
}

fn action(n: u8) -> ActionId {
    ActionId::from_bytes([n; 32])
}

fn meta(size: u64) -> Meta {
    Meta {
        output: OutputId::of(b"body"),
        size,
        time_unix_nanos: 1,
    }
}

fn answered(outcome: Outcome, next: Vec<ActionId>) -> Answer {
    Answer {
        outcome: Some(outcome),
        next,
        version: WIRE_VERSION,
    }
}

/// The end of a batch whose entries were reported.
fn answered_batch(next: Vec<ActionId>) -> Answer {
    Answer {
        outcome: None,
        next,
        version: WIRE_VERSION,
    }
}

fn drain(books: &mut Books) -> (Vec<Request>, Vec<Output>) {
    let mut sends = Vec::new();
    let mut others = Vec::new();
    while let Some(output) = books.poll_output() {
        match output {
            Output::Send(send) => sends.push(send),
            other => others.push(other),
        }
    }
    (sends, others)
}

/// A lookup of `action`, with `peers` as they are now.
fn lookup(
    books: &mut Books,
    action: ActionId,
    now: Instant,
    peers: &FakePeers,
) -> oneshot::Receiver<Result<Fetched, Miss>> {
    peers.publish(books);
    let (reply, answer) = oneshot::channel();
    books.lookup(action, reply, now, peers);
    answer
}

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

/// Part 4, finding 7: a peer that sent a bad body gets to finish no
/// other transfer either, and one that stalled is put in cooldown.
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

fn answer_of(outcome: Outcome) -> Answer {
    answered(outcome, Vec::new())
}

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

/// Part 4, finding 3: hints are followed only while a build is using
/// peers, and within the peer's budget; past it they are dropped.
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
    books.offer_hints(peer, hints(100), later, &peers);
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
