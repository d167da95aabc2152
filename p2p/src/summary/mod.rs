//! Summaries: which actions a peer holds, so that a lookup it cannot answer
//! costs no round trip.
//!
//! Without them every local miss asks every peer, and a cold build with
//! peers that hold nothing waits on the LAN some 770 times (one per
//! action it compiles) for a "not found" each. With them, the node keeps
//! each connected peer's summary and asks only peers whose summary names
//! the action; a miss nobody can answer is answered at once.
//!
//! # What a summary is
//!
//! The first 8 bytes of each action ID a store holds (a false "maybe"
//! among 100,000 entries has odds of about 1 in 10^14, and costs only a
//! round trip), in an append-only log: `generation` is the log's length and
//! `epoch` names the log (a node starts a new one when it starts). A
//! requester asks for the log from its `generation` on; entries removed by
//! trimming stay in the log, which only costs a round trip.
//!
//! # Staying fresh
//!
//! The requester keeps one request open per peer (a long poll): a server
//! with nothing newer than `since` holds the request until it has, or
//! [`MAX_WAIT`] passes; after an answer with news the requester waits a
//! quarter of a second before asking again, so that a store filling up
//! costs a few exchanges a second. A summary thus lags its store by the
//! store's own indexing delay (milliseconds for warren's on Linux), that
//! quarter second and a round trip: an entry a peer stored in that window
//! is not asked for, and is built instead. Until a peer's first summary arrives, and for peers that keep
//! none (older versions, or a store still indexing), every lookup asks it.
//!
//! # Wire
//!
//! Protocol [`PROTOCOL_NAME`], one exchange per stream:
//!
//! ```text
//! requester ──> server   frame(SummaryRequest)
//! server ──> requester   frame(SummaryHeader) ++ count × 8 bytes (prefixes, big-endian)
//! ```
//!
//! with frames as in [`crate::protocol::wire`]. An `epoch` of 0 in the answer means
//! "no summary now; ask me about everything".

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

mod log;

pub use self::log::Log;
use crate::ids::ActionId;
use crate::protocol::wire;

/// The libp2p protocol name of summaries.
pub const PROTOCOL_NAME: &str = "/warren/summary/1";
/// Most prefixes in one answer a requester reads (8 MiB).
pub const MAX_CHUNK: usize = 1 << 20;
/// Most prefixes in one answer a server sends (512 KiB): a requester asks
/// again at once for more, and a request with a foreign epoch costs the
/// server no more than this.
pub const SERVE_CHUNK: usize = 1 << 16;
/// Most entries kept of one peer (4 bytes each, so 16 MiB); a peer with
/// more is asked about every lookup instead.
pub const MAX_PREFIXES: usize = 4 << 20;
/// Most times a peer's log may start over (a new epoch) in one connection
/// before its summaries are no longer asked for: each start over costs us
/// the whole summary again. An honest daemon starts a new log when it
/// starts and when it compacts its log, which needs half of it gone.
pub const MAX_EPOCHS: u32 = 16;
/// Longest a server holds a request that has nothing new.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// What a requester asks: the log of `epoch` from entry `since` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryRequest {
    pub epoch: u64,
    pub since: u64,
    /// How long the server may hold the request while it has nothing
    /// newer (at most [`MAX_WAIT`]).
    pub wait_ms: u64,
}

/// The header of an answer; `count` prefixes follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryHeader {
    /// 0: the server keeps no summary now.
    pub epoch: u64,
    /// The log index of the first prefix that follows.
    pub from: u64,
    pub count: u64,
    /// The log's length on the server when it answered.
    pub generation: u64,
}

/// A piece of a store's summary log, as [`Summaries::summary`](crate::Summaries::summary) gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SummaryChunk {
    /// Names the log; never 0.
    pub epoch: u64,
    /// Log index of `prefixes[0]`.
    pub from: u64,
    /// The first 8 bytes of each action, as a big-endian number.
    pub prefixes: Vec<u64>,
    /// The log's length.
    pub generation: u64,
}

/// An action's summary prefix.
pub fn prefix(action: &ActionId) -> u64 {
    u64::from_be_bytes(action.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The answer a requester reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SummaryAnswer {
    pub(crate) header: SummaryHeader,
    pub(crate) prefixes: Vec<u64>,
}

/// What the requester knows of one peer's store.
#[derive(Debug, Default)]
pub(crate) enum PeerSummary {
    /// No summary (yet): the peer is asked about every lookup.
    #[default]
    Unknown,
    /// The peer keeps none, or ours would be too big: asked about every
    /// lookup, and not asked for a summary again while connected.
    Unavailable,
    Known {
        epoch: u64,
        generation: u64,
        /// The top 4 bytes of each prefix, sorted: 4 bytes an entry, where
        /// a hash set of 8-byte prefixes took 18-27 (its load factor, and
        /// both tables while it grew). A false "maybe" costs a round trip
        /// and has odds of one in 40,000 with 100,000 entries.
        keys: Vec<u32>,
        /// Logs started so far (see [`MAX_EPOCHS`]).
        epochs: u32,
    },
}

/// What is kept of a prefix.
fn key(prefix: u64) -> u32 {
    (prefix >> 32) as u32
}

impl PeerSummary {
    /// Whether the peer may hold `action` (always, unless its summary is
    /// known and does not name it).
    pub(crate) fn may_hold(&self, action: &ActionId) -> bool {
        match self {
            // Starting over: as good as unknown until the first answer.
            Self::Known { epoch: 0, .. } => true,
            Self::Known { keys, .. } => keys.binary_search(&key(prefix(action))).is_ok(),
            Self::Unknown | Self::Unavailable => true,
        }
    }

    /// How many entries the summary names, if known.
    pub(crate) fn entries(&self) -> Option<u64> {
        match self {
            Self::Known { epoch: 0, .. } => None,
            Self::Known { keys, .. } => Some(keys.len() as u64),
            Self::Unknown | Self::Unavailable => None,
        }
    }

    /// The request that brings this summary up to date.
    pub(crate) fn next_request(&self) -> SummaryRequest {
        let (epoch, since) = match self {
            Self::Known {
                epoch, generation, ..
            } => (*epoch, *generation),
            Self::Unknown | Self::Unavailable => (0, 0),
        };
        SummaryRequest {
            epoch,
            since,
            wait_ms: MAX_WAIT.as_millis() as u64,
        }
    }

    /// Takes in an answer. `false` if the peer keeps no summary now: ask
    /// again later, not at once. (Check for [`Self::Unavailable`] too: a
    /// summary too big to keep is not asked for again.)
    pub(crate) fn apply(&mut self, answer: SummaryAnswer) -> bool {
        let SummaryAnswer { header, prefixes } = answer;
        if header.epoch == 0 {
            *self = Self::Unknown;
            return false;
        }
        let continues = matches!(self, Self::Known { epoch, generation, .. }
            if *epoch == header.epoch && *generation == header.from);
        if !continues {
            let epochs = match self {
                Self::Known { epochs, .. } => *epochs + 1,
                _ => 1,
            };
            if epochs > MAX_EPOCHS {
                *self = Self::Unavailable;
                return true;
            }
            if header.from != 0 {
                // Not the start of a log, nor where ours ended: start over.
                *self = Self::Known {
                    epoch: 0,
                    generation: 0,
                    keys: Vec::new(),
                    epochs,
                };
                return true;
            }
            *self = Self::Known {
                epoch: header.epoch,
                generation: 0,
                keys: Vec::new(),
                epochs,
            };
        }
        let Self::Known {
            generation, keys, ..
        } = self
        else {
            unreachable!("made Known above");
        };
        if keys.len() + prefixes.len() > MAX_PREFIXES {
            *self = Self::Unavailable;
            return true;
        }
        *generation = header.from + prefixes.len() as u64;
        merge(keys, prefixes.iter().map(|prefix| key(*prefix)));
        true
    }
}

/// Adds `new` to the sorted `keys`: the new ones sorted, then one merge
/// from the back, in place (no second copy of the whole summary).
fn merge(keys: &mut Vec<u32>, new: impl Iterator<Item = u32>) {
    let mut new: Vec<u32> = new.collect();
    new.sort_unstable();
    new.dedup();
    let old_len = keys.len();
    keys.reserve_exact(new.len());
    keys.resize(old_len + new.len(), 0);
    let (mut read, mut write, mut next) = (old_len, keys.len(), new.len());
    while next > 0 {
        if read > 0 && keys[read - 1] > new[next - 1] {
            keys[write - 1] = keys[read - 1];
            read -= 1;
        } else {
            keys[write - 1] = new[next - 1];
            next -= 1;
        }
        write -= 1;
    }
    keys.dedup();
}

/// The summary protocol's codec; prefixes are raw bytes after a frame.
#[derive(Debug, Clone, Default)]
pub(crate) struct SummaryCodec;

impl libp2p::request_response::Codec for SummaryCodec {
    type Protocol = StreamProtocol;
    type Request = SummaryRequest;
    type Response = SummaryAnswer;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        wire::read_frame(io).await
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let header: SummaryHeader = wire::read_frame(io).await?;
        let count = usize::try_from(header.count)
            .ok()
            .filter(|count| *count <= MAX_CHUNK)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a summary of {} entries at once", header.count),
                )
            })?;
        let mut bytes = vec![0; count * 8];
        io.read_exact(&mut bytes).await?;
        let prefixes = bytes
            .chunks_exact(8)
            .map(|chunk| u64::from_be_bytes(chunk.try_into().expect("8 bytes")))
            .collect();
        Ok(SummaryAnswer { header, prefixes })
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Self::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        wire::write_frame(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        answer: Self::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        // Header and prefixes in one write: one frame on the connection.
        let mut bytes = Vec::with_capacity(256 + answer.prefixes.len() * 8);
        wire::encode_frame(&mut bytes, &answer.header)?;
        bytes.extend(
            answer
                .prefixes
                .iter()
                .flat_map(|prefix| prefix.to_be_bytes()),
        );
        io.write_all(&bytes).await?;
        io.flush().await
    }
}

impl SummaryAnswer {
    /// The answer for `chunk`; `None` (no summary) is epoch 0.
    pub(crate) fn of(chunk: Option<SummaryChunk>) -> Self {
        let chunk = chunk.unwrap_or_default();
        Self {
            header: SummaryHeader {
                epoch: chunk.epoch,
                from: chunk.from,
                count: chunk.prefixes.len() as u64,
                generation: chunk.generation,
            },
            prefixes: chunk.prefixes,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    use super::*;

    /// Small numbers stand for prefixes that differ in their top bytes, as
    /// real ones (hashes) do.
    fn answer(epoch: u64, from: u64, prefixes: &[u64]) -> SummaryAnswer {
        let prefixes: Vec<u64> = prefixes.iter().map(|n| n << 40).collect();
        raw_answer(epoch, from, &prefixes)
    }

    fn raw_answer(epoch: u64, from: u64, prefixes: &[u64]) -> SummaryAnswer {
        SummaryAnswer::of(Some(SummaryChunk {
            epoch,
            from,
            prefixes: prefixes.to_vec(),
            generation: from + prefixes.len() as u64,
        }))
    }

    fn action(first: u8) -> ActionId {
        let mut action = [0xee; 32];
        action[..8].copy_from_slice(&(u64::from(first) << 40).to_be_bytes());
        ActionId::from_bytes(action)
    }

    #[test]
    fn summaries_grow_and_start_over_with_a_new_log() {
        let mut summary = PeerSummary::default();
        assert!(summary.may_hold(&action(1)), "unknown: may hold anything");
        assert!(summary.apply(answer(7, 0, &[1, 2])));
        assert!(summary.may_hold(&action(1)) && !summary.may_hold(&action(3)));
        assert_eq!(
            summary.next_request(),
            SummaryRequest {
                epoch: 7,
                since: 2,
                wait_ms: 30_000
            }
        );
        assert!(summary.apply(answer(7, 2, &[3])));
        assert!(summary.may_hold(&action(3)));
        // The peer restarted: a new log replaces the old one.
        assert!(summary.apply(answer(8, 0, &[9])));
        assert!(!summary.may_hold(&action(1)) && summary.may_hold(&action(9)));
        // A chunk that fits nowhere: start over rather than guess.
        assert!(summary.apply(answer(8, 5, &[4])));
        assert!(summary.may_hold(&action(4)) && summary.may_hold(&action(200)));
        assert_eq!(summary.next_request().since, 0);
        // No summary kept: ask it everything.
        assert!(!summary.apply(SummaryAnswer::of(None)));
        assert!(summary.may_hold(&action(1)));
    }

    /// SECURITY.md, "Bounds on what an allowlisted peer can make your daemon do":
    /// what is kept of a peer is 4 bytes an entry, and a peer whose log
    /// keeps starting over is no longer asked for it.
    #[test]
    fn summaries_stay_compact_and_a_peer_that_keeps_starting_over_loses_them() {
        let mut summary = PeerSummary::default();
        let prefixes: Vec<u64> = (0..10_000u64)
            .map(|n| n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for chunk in prefixes.chunks(1000) {
            let from = summary.next_request().since;
            summary.apply(raw_answer(5, from, chunk));
        }
        let PeerSummary::Known { keys, .. } = &summary else {
            panic!("a summary");
        };
        assert_eq!(keys.len(), 10_000);
        assert!(keys.capacity() <= 10_000 + 1000, "{}", keys.capacity());
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
        for prefix in &prefixes {
            let mut action = [0; 32];
            action[..8].copy_from_slice(&prefix.to_be_bytes());
            assert!(summary.may_hold(&ActionId::from_bytes(action)));
        }
        // Each new epoch costs a whole summary again: after MAX_EPOCHS,
        // the peer is asked about every lookup instead.
        for epoch in 6..(5 + MAX_EPOCHS as u64) {
            summary.apply(answer(epoch, 0, &[epoch]));
            assert!(
                matches!(summary, PeerSummary::Known { .. }),
                "epoch {epoch}"
            );
        }
        summary.apply(answer(1000, 0, &[1]));
        assert!(matches!(summary, PeerSummary::Unavailable));
    }

    #[test]
    fn answers_round_trip_and_oversized_ones_are_refused() {
        futures::executor::block_on(async {
            let sent = answer(3, 10, &[u64::MAX, 0, 42]);
            let mut bytes = Vec::new();
            SummaryCodec
                .write_response(
                    &StreamProtocol::new(PROTOCOL_NAME),
                    &mut bytes,
                    sent.clone(),
                )
                .await
                .unwrap();
            let read = SummaryCodec
                .read_response(&StreamProtocol::new(PROTOCOL_NAME), &mut Cursor::new(bytes))
                .await
                .unwrap();
            assert_eq!(read, sent);

            let mut huge = Vec::new();
            let header = SummaryHeader {
                epoch: 1,
                from: 0,
                count: MAX_CHUNK as u64 + 1,
                generation: 0,
            };
            wire::write_frame(&mut huge, &header).await.unwrap();
            let error = SummaryCodec
                .read_response(&StreamProtocol::new(PROTOCOL_NAME), &mut Cursor::new(huge))
                .await
                .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        });
    }
}
