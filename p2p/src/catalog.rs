//! Catalogs: the entries a peer built itself, in the order it stored them,
//! for replication.
//!
//! A summary ([`crate::summary`]) names 8 bytes of each action, enough to
//! decide whom to ask about a lookup, but not enough to fetch anything
//! unasked. A replicating node asks the peer for its catalog instead: the
//! full action, size and put time of each entry, in the order the server
//! learned of them, from a position on. With sizes in hand the requester
//! keeps its budgets (bytes on disk, bandwidth) before it fetches, and
//! takes no body bigger than the size its catalog listed; in put order a
//! build that starts during replication finds its first entries first.
//!
//! A server lists only entries built on its own machine, younger than the
//! age the requester asks for (by the server's own clock, so clock skew
//! between machines does not matter), and only to peers it serves. The
//! bodies then come through the fetch protocol like any other, verified
//! the same way.
//!
//! # Where a catalog continues
//!
//! A requester pages through a catalog with a [`Position`]: a number the
//! server gives each entry as it learns of it, under an epoch drawn when
//! its index starts. Put times would not do: a server whose clock jumped
//! forward and was set right again puts its next entries before the ones
//! it put in the meantime, and a requester that went on after the latest
//! put time would never see them. A position of another epoch (the server
//! restarted) starts over from the oldest entry in the window; the
//! requester passes over what it holds.
//!
//! # Wire
//!
//! Protocol [`PROTOCOL_NAME`], one exchange per stream:
//!
//! ```text
//! requester ──> server   frame(CatalogRequest)
//! server ──> requester   frame(CatalogHeader) ++ count × 48 bytes
//!                        (action 32, size 8, put time in ns 8; big-endian)
//! ```
//!
//! with frames as in [`crate::protocol::wire`]. A peer without the
//! protocol (an older warren) refuses the stream, and is not replicated
//! from. Positions came later, as optional fields of both frames
//! ([`CatalogRequest::since`], [`CatalogHeader::next`]): an older server
//! ignores `since` and pages by put time ([`CatalogRequest::after`]), which
//! the requester then keeps using; an older requester sends no `since`
//! and is answered by put time as before.
//!
//! Which entries are linked executables came later too, as the optional
//! [`CatalogHeader::executables`]: the places of those entries in the
//! answer. An older requester ignores it; an older server never sends it,
//! and none of its entries counts as an executable. The requester skips
//! executables bigger than its own limit (warren's `[share]
//! read-ahead-executables-max`) and leaves them to a lookup.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::ids::ActionId;
use crate::protocol::wire;

/// The libp2p protocol name of catalogs.
pub const PROTOCOL_NAME: &str = "/warren/catalog/1";
/// Most entries in one answer, both ways (48 bytes each: 96 KiB).
pub const MAX_ENTRIES: usize = 2048;
/// Bytes of one entry on the wire.
const ENTRY_LEN: usize = 48;

/// Where a catalog continues by put time (as older servers page): right
/// after the entry put at `time_unix_nanos` with action `action` in the
/// server's put order, or, if that entry is gone, after every entry put in
/// that nanosecond.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    pub time_unix_nanos: u64,
    pub action: Option<ActionId>,
}

/// Where a catalog continues: after the entry numbered `seq` in the order
/// the server learned of its entries, under `epoch` (see the module docs).
/// [`Position::START`] asks for the start of the catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

impl Position {
    /// The start of any server's catalog (no server draws epoch 0).
    pub const START: Self = Self { epoch: 0, seq: 0 };
}

/// What a requester asks: entries after `since` (or, from an older
/// requester, after `after`), put at most `max_age_secs` ago, at most
/// `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRequest {
    pub after: Cursor,
    pub max_age_secs: u64,
    pub limit: u32,
    /// Where to continue, by the server's own numbering; absent from older
    /// requesters, and ignored by older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
}

/// The header of an answer; `count` entries follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogHeader {
    pub count: u32,
    /// Whether the server has more after the last entry.
    pub more: bool,
    /// Where the next request continues, in answer to a `since`; absent
    /// from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Position>,
    /// The places, among the `count` entries that follow, of those whose
    /// bodies are linked executables; absent from older servers. Places
    /// past `count` are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executables: Vec<u32>,
}

/// One entry a peer built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    pub action: ActionId,
    pub size: u64,
    pub time_unix_nanos: u64,
    /// Its body is a linked executable (the server says so in
    /// [`CatalogHeader::executables`]).
    pub executable: bool,
}

impl CatalogEntry {
    /// The cursor that continues after this entry.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            time_unix_nanos: self.time_unix_nanos,
            action: Some(self.action),
        }
    }
}

/// A piece of a peer's catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub entries: Vec<CatalogEntry>,
    pub more: bool,
    /// See [`CatalogHeader::next`].
    pub next: Option<Position>,
}

/// The catalog protocol's codec; entries are raw bytes after a frame.
#[derive(Debug, Clone, Default)]
pub(crate) struct CatalogCodec;

impl libp2p::request_response::Codec for CatalogCodec {
    type Protocol = StreamProtocol;
    type Request = CatalogRequest;
    type Response = Catalog;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        wire::read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Catalog>
    where
        T: AsyncRead + Unpin + Send,
    {
        let header: CatalogHeader = wire::read_frame(io).await?;
        let count = header.count as usize;
        if count > MAX_ENTRIES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a catalog of {count} entries at once"),
            ));
        }
        let mut bytes = vec![0; count * ENTRY_LEN];
        io.read_exact(&mut bytes).await?;
        let mut entries: Vec<CatalogEntry> = bytes.chunks_exact(ENTRY_LEN).map(decode).collect();
        for &at in &header.executables {
            if let Some(entry) = entries.get_mut(at as usize) {
                entry.executable = true;
            }
        }
        Ok(Catalog {
            entries,
            more: header.more,
            next: header.next,
        })
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: CatalogRequest,
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
        catalog: Catalog,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let entries = &catalog.entries[..catalog.entries.len().min(MAX_ENTRIES)];
        // A server that lists more than the limit (it never does) would
        // leave `next` past what was sent: no position then, only times.
        let cut = entries.len() < catalog.entries.len();
        let header = CatalogHeader {
            count: entries.len() as u32,
            more: catalog.more || cut,
            next: if cut { None } else { catalog.next },
            executables: (entries.iter().zip(0u32..))
                .filter(|(entry, _)| entry.executable)
                .map(|(_, at)| at)
                .collect(),
        };
        // Header and entries in one write: one frame on the connection.
        let mut bytes = Vec::with_capacity(64 + entries.len() * ENTRY_LEN);
        wire::encode_frame(&mut bytes, &header)?;
        for entry in entries {
            bytes.extend_from_slice(entry.action.as_bytes());
            bytes.extend_from_slice(&entry.size.to_be_bytes());
            bytes.extend_from_slice(&entry.time_unix_nanos.to_be_bytes());
        }
        io.write_all(&bytes).await?;
        io.flush().await
    }
}

fn decode(bytes: &[u8]) -> CatalogEntry {
    let (action, rest) = bytes.split_at(32);
    let (size, time) = rest.split_at(8);
    CatalogEntry {
        action: ActionId::from_bytes(action.try_into().expect("32 bytes")),
        size: u64::from_be_bytes(size.try_into().expect("8 bytes")),
        time_unix_nanos: u64::from_be_bytes(time.try_into().expect("8 bytes")),
        executable: false,
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor as Bytes;
    use libp2p::request_response::Codec;

    use super::*;

    fn entry(n: u8) -> CatalogEntry {
        CatalogEntry {
            action: ActionId::from_bytes([n; 32]),
            size: u64::from(n) << 33,
            time_unix_nanos: 1_700_000_000_000_000_000 + u64::from(n),
            executable: n.is_multiple_of(2),
        }
    }

    fn protocol() -> StreamProtocol {
        StreamProtocol::new(PROTOCOL_NAME)
    }

    #[test]
    fn catalogs_round_trip() {
        futures::executor::block_on(async {
            let catalog = Catalog {
                entries: (1..=5).map(entry).collect(),
                more: true,
                next: Some(Position { epoch: 7, seq: 42 }),
            };
            let mut bytes = Vec::new();
            CatalogCodec
                .write_response(&protocol(), &mut bytes, catalog.clone())
                .await
                .unwrap();
            let read = CatalogCodec
                .read_response(&protocol(), &mut Bytes::new(bytes))
                .await
                .unwrap();
            assert_eq!(read, catalog);
            assert_eq!(read.entries[1].cursor().action, Some(entry(2).action));

            for since in [
                None,
                Some(Position::START),
                Some(Position { epoch: 7, seq: 9 }),
            ] {
                let request = CatalogRequest {
                    after: entry(3).cursor(),
                    max_age_secs: 86_400,
                    limit: 100,
                    since,
                };
                let mut bytes = Vec::new();
                CatalogCodec
                    .write_request(&protocol(), &mut bytes, request)
                    .await
                    .unwrap();
                let read = CatalogCodec
                    .read_request(&protocol(), &mut Bytes::new(bytes))
                    .await
                    .unwrap();
                assert_eq!(read, request);
            }
        });
    }

    /// Positions are optional fields: an older peer's frames (without
    /// them) are read as asking and answering by put time, and an older
    /// peer reads ours, ignoring them.
    #[test]
    fn positions_keep_older_peers_working() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct OlderRequest {
            after: Cursor,
            max_age_secs: u64,
            limit: u32,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct OlderHeader {
            count: u32,
            more: bool,
        }
        let older = OlderRequest {
            after: entry(3).cursor(),
            max_age_secs: 60,
            limit: 10,
        };
        let read: CatalogRequest =
            serde_json::from_slice(&serde_json::to_vec(&older).unwrap()).unwrap();
        assert_eq!(read.since, None);
        let ours = CatalogRequest {
            after: Cursor::default(),
            max_age_secs: 60,
            limit: 10,
            since: Some(Position { epoch: 3, seq: 4 }),
        };
        let read: OlderRequest =
            serde_json::from_slice(&serde_json::to_vec(&ours).unwrap()).unwrap();
        assert_eq!(read.limit, 10);

        let header = CatalogHeader {
            count: 2,
            more: true,
            next: Some(Position { epoch: 3, seq: 6 }),
            executables: vec![1],
        };
        let read: OlderHeader =
            serde_json::from_slice(&serde_json::to_vec(&header).unwrap()).unwrap();
        assert_eq!(
            read,
            OlderHeader {
                count: 2,
                more: true
            }
        );
        let older = OlderHeader {
            count: 0,
            more: false,
        };
        let read: CatalogHeader =
            serde_json::from_slice(&serde_json::to_vec(&older).unwrap()).unwrap();
        assert_eq!(read.next, None);
    }

    #[test]
    fn oversized_or_short_answers_are_refused() {
        futures::executor::block_on(async {
            let mut bytes = Vec::new();
            let header = CatalogHeader {
                count: MAX_ENTRIES as u32 + 1,
                more: false,
                next: None,
                executables: Vec::new(),
            };
            wire::encode_frame(&mut bytes, &header).unwrap();
            let error = CatalogCodec
                .read_response(&protocol(), &mut Bytes::new(bytes))
                .await
                .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);

            // Says two, sends one.
            let mut bytes = Vec::new();
            let header = CatalogHeader {
                count: 2,
                more: false,
                next: None,
                executables: Vec::new(),
            };
            wire::encode_frame(&mut bytes, &header).unwrap();
            bytes.extend_from_slice(&[7; ENTRY_LEN]);
            assert!(
                CatalogCodec
                    .read_response(&protocol(), &mut Bytes::new(bytes))
                    .await
                    .is_err()
            );
        });
    }

    #[test]
    fn a_server_never_sends_more_than_the_limit() {
        futures::executor::block_on(async {
            let catalog = Catalog {
                entries: vec![entry(1); MAX_ENTRIES + 3],
                more: false,
                next: Some(Position { epoch: 1, seq: 99 }),
            };
            let mut bytes = Vec::new();
            CatalogCodec
                .write_response(&protocol(), &mut bytes, catalog)
                .await
                .unwrap();
            let read = CatalogCodec
                .read_response(&protocol(), &mut Bytes::new(bytes))
                .await
                .unwrap();
            assert_eq!(read.entries.len(), MAX_ENTRIES);
            assert!(read.more, "the rest is still there");
            assert_eq!(read.next, None, "not past what was sent");
        });
    }

    /// Which entries are executables is an optional field of the header:
    /// an older server's answer (without it) lists none, an older
    /// requester reads ours as before, and a place past the entries sent
    /// marks nothing.
    #[test]
    fn executables_keep_older_peers_working() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct OlderHeader {
            count: u32,
            more: bool,
        }
        futures::executor::block_on(async {
            let mut bytes = Vec::new();
            wire::encode_frame(
                &mut bytes,
                &OlderHeader {
                    count: 2,
                    more: false,
                },
            )
            .unwrap();
            for n in [2, 4] {
                let entry = entry(n);
                bytes.extend_from_slice(entry.action.as_bytes());
                bytes.extend_from_slice(&entry.size.to_be_bytes());
                bytes.extend_from_slice(&entry.time_unix_nanos.to_be_bytes());
            }
            let read = CatalogCodec
                .read_response(&protocol(), &mut Bytes::new(bytes))
                .await
                .unwrap();
            assert_eq!(read.entries.len(), 2);
            assert!(read.entries.iter().all(|entry| !entry.executable));

            let catalog = Catalog {
                entries: (1..=3).map(entry).collect(),
                more: false,
                next: None,
            };
            let mut bytes = Vec::new();
            CatalogCodec
                .write_response(&protocol(), &mut bytes, catalog)
                .await
                .unwrap();
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            let header: CatalogHeader = serde_json::from_slice(&bytes[4..4 + len]).unwrap();
            assert_eq!(header.executables, [1], "entry 2 is the executable");
            let older: OlderHeader = serde_json::from_slice(&bytes[4..4 + len]).unwrap();
            assert_eq!(
                older,
                OlderHeader {
                    count: 3,
                    more: false
                }
            );

            let mut bytes = Vec::new();
            let header = CatalogHeader {
                count: 1,
                more: false,
                next: None,
                executables: vec![0, 1, u32::MAX],
            };
            wire::encode_frame(&mut bytes, &header).unwrap();
            bytes.extend_from_slice(&[7; ENTRY_LEN]);
            let read = CatalogCodec
                .read_response(&protocol(), &mut Bytes::new(bytes))
                .await
                .unwrap();
            assert_eq!(read.entries.len(), 1);
            assert!(read.entries[0].executable);
        });
    }
}
