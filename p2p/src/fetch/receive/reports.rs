//! Where the requesting side tells the books how a request goes, ahead of
//! its answer: what the peer has promised ([`Promise`]) and what became of
//! each entry of a batch. Reports travel on one bounded channel, which the
//! event loop drains before it looks at a request's end, so the books see
//! them in order and before the answer.

use tokio::sync::mpsc;

use crate::fetch::exchange::{FetchId, Outcome, Report, RequestKey};
use crate::fetch::promise::Promise;

/// The sending end of the books' reports; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Reports(mpsc::Sender<Report>);

impl Reports {
    pub(crate) fn new(sender: mpsc::Sender<Report>) -> Self {
        Self(sender)
    }

    /// Tells the books what the peer has promised on `request` now. Lost
    /// only when the node is stopping.
    pub(crate) async fn promise(&self, request: RequestKey, promise: Promise) {
        let _ = self.0.send(Report::Promise { request, promise }).await;
    }

    /// Tells the books what became of a batch's entry for `fetch`; `false`
    /// if the node is stopping.
    pub(crate) async fn entry(&self, fetch: FetchId, outcome: Outcome) -> bool {
        self.0.send(Report::Entry { fetch, outcome }).await.is_ok()
    }
}
