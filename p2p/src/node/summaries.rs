//! Summaries of peers' stores: keeping ours of theirs up to date, and
//! answering theirs of ours (see [`crate::summary`]).
//!
//! Our copy of each peer's summary, and where asking for it stands, is in
//! its [`TheirSummary`]; the requests of peers that wait for our store to
//! change are in [`SummarySync`].
//!
//! Each connected peer gets one summary request at a time, sent again
//! shortly after the answer arrives, so its summary follows its store; we
//! hold at most one request of each peer's, and answer with at most
//! [`SERVE_CHUNK`] prefixes at a time, whatever epoch it names. A request
//! with nothing new to answer is parked here and answered when the store's
//! log grows (at once if the store says so, see
//! [`Summaries::summary_updates`](crate::Summaries::summary_updates); else looked
//! for every [`PARK_CHECK`]) or its wait is over.

use std::time::Duration;

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Due, EventLoop, timer};
use crate::fetch::holders::SharedSummary;
use crate::store::Store;
use crate::summary::{MAX_WAIT, PeerSummary, SERVE_CHUNK, SummaryAnswer, SummaryRequest};

/// How often parked requests look for news.
pub(super) const PARK_CHECK: Duration = Duration::from_millis(100);
/// How long to wait before asking again a peer whose request failed, and
/// at most before asking again one that had no summary.
const RETRY: Duration = Duration::from_secs(10);
/// How soon to ask again a peer that had no summary the first time: a
/// daemon has none until its first scan of its store is done, which with
/// 20,000 entries and 32 daemons starting on two cores took seconds. A
/// flat 10 s made a host that joined then wait 10 s for that peer's
/// summary; doubling from here to [`RETRY`] costs a peer that never keeps
/// one a handful of requests.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// When to ask again after `misses` answers in a row without a summary.
fn retry_after(misses: u32) -> Duration {
    RETRY.min(FIRST_RETRY * 2u32.saturating_pow(misses.saturating_sub(1)))
}
/// After an answer, how long to wait before asking again: a store filling
/// up (a build on the peer, or a build of ours fetching from it) then costs
/// a few exchanges a second, not one per entry, and a summary lags its
/// store by at most this (plus a round trip). Asking at once after every
/// answer would cost both daemons CPU on every entry a build stores, and
/// after an empty one let a peer that answers at once keep us asking in a
/// loop.
const COALESCE: Duration = Duration::from_millis(250);

/// Our copy of one peer's summary, and where asking for it stands.
#[derive(Debug, Default)]
pub(super) struct TheirSummary {
    /// What we know of its store, read by lookups (see
    /// [`crate::fetch::holders`]); reset when it disconnects.
    pub(super) shared: SharedSummary,
    request: Option<OutboundRequestId>,
    /// When to ask for its summary again, after it had none to give.
    retry: Option<Instant>,
    /// Answers in a row that had no summary (see [`retry_after`]).
    misses: u32,
}

impl TheirSummary {
    /// The peer is gone: what we knew of its store may be stale by the
    /// time it is back.
    pub(super) fn disconnected(&mut self) {
        *self.shared.write() = PeerSummary::Unknown;
        self.request = None;
        self.retry = None;
        self.misses = 0;
    }
}

/// Peers' requests for our summary that wait for our store to change.
pub(super) struct SummarySync {
    parked: Vec<Parked>,
    /// Marked when our store's summary log grows, if the store tells.
    updates: Option<watch::Receiver<()>>,
}

impl SummarySync {
    pub(super) fn new(store: &dyn Store) -> Self {
        Self {
            parked: Vec::new(),
            updates: store.summary_updates(),
        }
    }

    pub(super) fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Whether the store tells when its log grows (else parked requests
    /// look for news every [`PARK_CHECK`]).
    pub(super) fn tells_updates(&self) -> bool {
        self.updates.is_some()
    }

    /// Resolves when the store's summary log has grown; never if the store
    /// does not tell (or once it stops telling).
    pub(super) async fn updated(&mut self) -> Option<()> {
        match &mut self.updates {
            Some(updates) => updates.changed().await.ok(),
            None => std::future::pending().await,
        }
    }

    /// Lets go of the request of `peer` held, if any: one request is held
    /// per peer, and a newer one replaces it (dropping its channel resets
    /// that stream), so a peer cannot make us hold hundreds of them.
    fn release(&mut self, peer: PeerId) {
        self.parked.retain(|held| held.peer != peer);
    }
}

/// A summary request waiting for the store's log to grow.
pub(super) struct Parked {
    peer: PeerId,
    request: SummaryRequest,
    channel: ResponseChannel<SummaryAnswer>,
    until: Instant,
}

impl EventLoop {
    /// Asks `peer` for (the rest of) its summary, unless a request is out
    /// or we do not pull from it.
    pub(super) fn request_summary(&mut self, peer: PeerId) {
        if !self.peers.allowlist().pulls_from(&peer) {
            return;
        }
        let summary = &self.peers.state(peer).summary;
        if summary.request.is_some() || matches!(*summary.shared.read(), PeerSummary::Unavailable) {
            return;
        }
        let request = summary.shared.read().next_request();
        let request_id = self
            .swarm
            .behaviour_mut()
            .summary
            .send_request(&peer, request);
        let summary = &mut self.peers.state(peer).summary;
        summary.request = Some(request_id);
        summary.retry = None;
    }

    /// Sends summary requests that were waiting to be retried.
    pub(super) fn retry_summaries(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(peer, state)| {
                state.summary.retry.is_some_and(|at| at <= now)
                    && self.peers.allowlist().pulls_from(peer)
                    && self.swarm.is_connected(peer)
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            self.request_summary(peer);
        }
    }

    pub(super) fn on_summary_event(
        &mut self,
        event: request_response::Event<SummaryRequest, SummaryAnswer>,
    ) {
        use request_response::{Event as E, Message};
        match event {
            E::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_summary_request(peer, request, channel),
            E::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.on_summary(peer, request_id, response),
            E::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => self.on_summary_failed(peer, request_id, &error),
            E::InboundFailure { peer, error, .. } => {
                tracing::trace!(%peer, "answering a summary request failed: {error}");
            }
            E::ResponseSent { .. } => {}
        }
    }

    fn on_summary(&mut self, peer: PeerId, request_id: OutboundRequestId, answer: SummaryAnswer) {
        let state = self.peers.state(peer);
        if state.summary.request != Some(request_id) {
            return; // From before a reconnection.
        }
        state.summary.request = None;
        state.seen();
        let summary = &mut state.summary;
        let (from, count) = (answer.header.from, answer.prefixes.len());
        let (again, unavailable) = {
            let mut shared = summary.shared.write();
            let again = shared.apply(answer);
            tracing::trace!(%peer, from, count, entries = ?shared.entries(), "summary");
            (again, matches!(*shared, PeerSummary::Unavailable))
        };
        if again {
            summary.misses = 0;
        }
        match (unavailable, again) {
            (true, _) => {
                tracing::debug!(%peer, "peer's summary is too big to keep; asking it about every lookup");
            }
            // Never at once, even after an answer with nothing new: an
            // honest peer holds such a request until it has news, and one
            // that answers at once would have us ask in a loop.
            (_, true) => {
                self.timers
                    .push(timer(Instant::now() + COALESCE, Due::Summary(peer)));
            }
            (_, false) => {
                summary.misses += 1;
                summary.retry = Some(Instant::now() + retry_after(summary.misses));
            }
        }
    }

    fn on_summary_failed(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        error: &OutboundFailure,
    ) {
        let connected = self.swarm.is_connected(&peer);
        let summary = &mut self.peers.state(peer).summary;
        if summary.request != Some(request_id) {
            return;
        }
        summary.request = None;
        if matches!(error, OutboundFailure::UnsupportedProtocols) {
            // An older peer: asked about every lookup, as before.
            *summary.shared.write() = PeerSummary::Unavailable;
        } else if connected {
            tracing::debug!(%peer, "summary request failed ({error}); asking it about every lookup for now");
            *summary.shared.write() = PeerSummary::Unknown;
            summary.retry = Some(Instant::now() + RETRY);
        }
    }

    fn on_summary_request(
        &mut self,
        peer: PeerId,
        request: SummaryRequest,
        channel: ResponseChannel<SummaryAnswer>,
    ) {
        if !self.peers.allowlist().serves(&peer) {
            return; // Dropping the channel resets the stream.
        }
        self.summaries.release(peer);
        let wait = Duration::from_millis(request.wait_ms).min(MAX_WAIT);
        let parked = Parked {
            peer,
            request,
            channel,
            until: Instant::now() + wait,
        };
        if let Some(parked) = self.answer_summary(parked, false) {
            self.summaries.parked.push(parked);
        }
    }

    /// Answers a request if there is news, or its wait is over (`expired`);
    /// otherwise hands it back to be parked.
    fn answer_summary(&mut self, parked: Parked, expired: bool) -> Option<Parked> {
        let chunk = self
            .store
            .summary(parked.request.epoch, parked.request.since, SERVE_CHUNK);
        let news = chunk
            .as_ref()
            .is_none_or(|chunk| chunk.epoch != parked.request.epoch || !chunk.prefixes.is_empty());
        if !news && !expired {
            return Some(parked);
        }
        let _ = self
            .swarm
            .behaviour_mut()
            .summary
            .send_response(parked.channel, SummaryAnswer::of(chunk));
        None
    }

    /// Answers the parked requests that have news or waited long enough.
    pub(super) fn check_parked(&mut self) {
        if !self.summaries.has_parked() {
            return;
        }
        let now = Instant::now();
        for parked in std::mem::take(&mut self.summaries.parked) {
            if !parked.channel.is_open() {
                continue; // Its peer is gone.
            }
            let expired = parked.until <= now;
            if let Some(parked) = self.answer_summary(parked, expired) {
                self.summaries.parked.push(parked);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_without_a_summary_is_asked_again_soon_then_less_often() {
        let waits: Vec<u64> = (1..=7).map(|n| retry_after(n).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(retry_after(u32::MAX), RETRY);
    }
}
