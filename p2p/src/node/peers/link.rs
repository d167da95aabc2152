//! What passes over a peer's link: the counters `warren peers` and `warren
//! stats` show, the link meter that decides on compression, the bytes on
//! the wire both ways, and whether the peer answers batches.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fetch::link::LinkMeter;
use crate::node::client::PeerCounters;
use crate::protocol::metered::Traffic;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) counters: PeerCounters,
    /// How fast its raw bodies arrive; new with each connection.
    pub(crate) meter: Arc<LinkMeter>,
    /// Answer bytes on the link, both ways (counted by the codec).
    pub(crate) traffic: Arc<Traffic>,
    /// Whether it answers batches (wire version 2); assumed until a batch
    /// answer says otherwise, and again after it reconnects.
    pub(crate) batches: bool,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            counters: PeerCounters::default(),
            meter: Arc::default(),
            traffic: Arc::default(),
            batches: true,
        }
    }
}

impl Link {
    /// A new connection: it may have been upgraded, and be on another link.
    pub(crate) fn reconnected(&mut self) {
        self.batches = true;
        self.meter = Arc::default();
    }

    /// Its counters, with the link's bytes as of now.
    pub(crate) fn counters(&self) -> PeerCounters {
        PeerCounters {
            wire_in: self.traffic.received.load(Ordering::Relaxed),
            wire_out: self.traffic.sent.load(Ordering::Relaxed),
            ..self.counters
        }
    }
}
