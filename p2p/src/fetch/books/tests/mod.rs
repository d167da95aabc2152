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
use crate::store::Hint;

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
    held.map_or_else(SharedSummary::default, SharedSummary::naming)
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
        read_ahead_executables_max: 4 << 20,
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

/// Hints at `actions`, none of them known to be an executable.
fn plain(actions: Vec<ActionId>) -> Vec<Hint> {
    actions.into_iter().map(Hint::new).collect()
}

fn answered(outcome: Outcome, next: Vec<ActionId>) -> Answer {
    answered_with(outcome, plain(next))
}

fn answered_with(outcome: Outcome, next: Vec<Hint>) -> Answer {
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
        next: plain(next),
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

fn answer_of(outcome: Outcome) -> Answer {
    answered(outcome, Vec::new())
}

mod deadlines;
mod lookups;
mod read_ahead;
mod replicate;
