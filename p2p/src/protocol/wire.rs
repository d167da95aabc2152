//! The fetch protocol as bytes on a stream: what peers of any version agree on.
//!
//! One request-response exchange per libp2p stream, under the protocol name
//! [`PROTOCOL_NAME`](crate::PROTOCOL_NAME):
//!
//! ```text
//! requester ──> server   frame(RequestHeader)                    then closes its write side
//! server ──> requester   frame(ResponseHeader)
//!                        [size raw body bytes, only if found.body_included]
//!                        ... once per action asked for (version 2, see below)
//! frame(T) = u32 big-endian length (at most MAX_HEADER_LEN) ++ JSON of T
//! ```
//!
//! Headers are small JSON objects so that a later version can add fields
//! without breaking old peers: unknown fields are ignored and every field
//! added after version 1 must carry `#[serde(default)]`. IDs are lowercase
//! hex, as on disk. Read-ahead hints (`hints` asked, `next` answered) were
//! added that way. (Summaries of what a peer holds are a protocol of their
//! own: [`crate::summary`].)
//!
//! Version 2 adds batches: a request may name more actions in `also`, and a
//! version-2 server answers each of them on the same stream, in order, with
//! a header (and body) apiece. A version-1 server ignores `also` and answers
//! `action` alone; the `version` in the first header tells the requester
//! which it is talking to. Read-ahead fetches runs of entries this way: one
//! stream per run instead of one per entry, whose setup cost more than
//! moving a typical (small) body.
//!
//! Version 3 adds compressed bodies: a requester that lists `"zstd"` in
//! `accept` may get a body as `encoding: "zstd"`: each piece of
//! [`CHUNK_SIZE`] bytes as a u32 big-endian header (bit 31: stored as is;
//! bits 0-30: the payload's length) and a payload, one zstd frame unless
//! stored. A server that is not asked, or is older, sends
//! it raw, and a requester refuses an encoding it did not ask for.
//!
//! Version 4 adds [`FoundHeader::built_here`], which a requester with
//! agreement on needs (see `crate::fetch::agreement`); an older server's
//! answers lack it and count as relayed.
//!
//! Hints name linked executables ([`ResponseHeader::next_executables`]) in
//! a field of their own, which needs no new version: an older requester
//! ignores it and reads everything ahead as before, and an older server
//! never sends it, so none of its hints counts as an executable.
//!
//! A raw body follows its header unframed, so neither side ever holds
//! more than a chunk of it in memory (the cbor/json codecs of
//! `libp2p-request-response` would buffer whole messages and cap them at
//! 10 MiB, and Go outputs are often bigger). A requester names the largest
//! body it wants inline (`max_inline`); a server with a bigger body answers
//! "found, body not included" and the requester asks again, of one peer only.
//!
//! These types are public so that tools and tests can speak the protocol
//! (the tests include a hostile peer that does).

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::Hint;
use crate::ids::{ActionId, OutputId};

/// The version this crate writes in headers.
pub const WIRE_VERSION: u32 = 4;
/// The first version that answers [`RequestHeader::also`].
pub const BATCH_VERSION: u32 = 2;
/// Most actions one request is answered for (`action` and `also` together);
/// a server answers the first this many and ends the stream.
pub const MAX_BATCH: usize = 32;
/// The largest header frame either side accepts. Headers are a few hundred
/// bytes; anything bigger is a broken or hostile peer.
pub const MAX_HEADER_LEN: u32 = 64 * 1024;
/// Bodies are read, hashed and written in pieces of at most this size: big
/// enough that handing a piece between threads costs little next to
/// moving it, small enough that a few queued pieces are little memory.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Most read-ahead hints a server sends with one answer.
pub const MAX_HINTS: u32 = 64;

/// What a requester asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    #[serde(default = "version_one")]
    pub version: u32,
    /// The Go ActionID being looked up.
    pub action: ActionId,
    /// The largest body the server should send with its answer. Bigger
    /// bodies are announced ("found, not included") but not sent.
    #[serde(default)]
    pub max_inline: u64,
    /// How many read-ahead hints ([`ResponseHeader::next`]) the requester
    /// would like with a "found" answer (at most [`MAX_HINTS`] are sent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hints: u32,
    /// Version 2: more actions to answer on this stream after `action`, in
    /// this order, each with the same `max_inline`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<ActionId>,
    /// Version 3: body encodings the requester takes besides raw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept: Vec<Encoding>,
}

impl RequestHeader {
    /// Every action asked for, `action` first.
    pub fn actions(&self) -> impl Iterator<Item = &ActionId> {
        std::iter::once(&self.action).chain(&self.also)
    }
}

/// A server's answer; the body (if included) follows it on the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHeader {
    #[serde(default = "version_one")]
    pub version: u32,
    /// `None`: the server has no (servable) entry for the action.
    #[serde(default)]
    pub found: Option<FoundHeader>,
    /// Read-ahead hints: actions the server stored right after the last
    /// action of this exchange that it holds, in that order. A build that
    /// needed those entries is likely to ask for these next, so the
    /// requester may fetch them ahead of time. Only in the exchange's last
    /// header, only if the server holds one of the actions asked for, and
    /// at most the `hints` asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<ActionId>,
    /// Which of `next` are linked executables, with their sizes, so that
    /// the requester can leave big ones out of its read-ahead; absent from
    /// older servers (see the module docs). Entries that point past `next`
    /// are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_executables: Vec<HintedExecutable>,
}

/// A linked executable among a header's hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintedExecutable {
    /// Its place in [`ResponseHeader::next`].
    pub at: u32,
    /// Its body's size in bytes.
    pub size: u64,
}

/// `hints` as a header's two fields: the actions, and which of them are
/// executables.
pub fn split_hints(hints: &[Hint]) -> (Vec<ActionId>, Vec<HintedExecutable>) {
    let next = hints.iter().map(|hint| hint.action).collect();
    let executables = (hints.iter().zip(0u32..))
        .filter_map(|(hint, at)| {
            Some(HintedExecutable {
                at,
                size: hint.executable?,
            })
        })
        .collect();
    (next, executables)
}

/// A header's hints, each with its size if the server says it is an
/// executable (the inverse of [`split_hints`]).
pub fn joined_hints(next: Vec<ActionId>, executables: &[HintedExecutable]) -> Vec<Hint> {
    let mut hints: Vec<Hint> = next.into_iter().map(Hint::new).collect();
    for executable in executables {
        if let Some(hint) = hints.get_mut(executable.at as usize) {
            hint.executable = Some(executable.size);
        }
    }
    hints
}

/// The entry a server holds for an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundHeader {
    /// SHA-256 of the body (Go's OutputID).
    pub output: OutputId,
    pub size: u64,
    /// When the entry was put on the server, in nanoseconds since the Unix epoch.
    #[serde(default)]
    pub time_unix_nanos: u64,
    /// Whether the body (of `size` bytes once decoded) follows this header.
    #[serde(default)]
    pub body_included: bool,
    /// Version 3: how the included body is encoded; raw if absent.
    #[serde(default, skip_serializing_if = "Encoding::is_raw")]
    pub encoding: Encoding,
    /// Version 4: the server built this entry itself (it did not fetch it
    /// from a peer). A requester with agreement on counts only such
    /// answers as sources; older servers never say so.
    #[serde(default, skip_serializing_if = "is_false")]
    pub built_here: bool,
}

/// How a body travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `size` bytes as they are.
    #[default]
    Raw,
    /// zstd, one frame per piece (see the module docs).
    Zstd,
    /// One this version does not know (from a newer peer); never sent.
    #[serde(other)]
    Unknown,
}

impl Encoding {
    fn is_raw(&self) -> bool {
        *self == Self::Raw
    }
}

fn is_false(value: &bool) -> bool {
    !value
}

fn version_one() -> u32 {
    1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Appends `value` as one frame to `out`.
pub fn encode_frame<T: Serialize>(out: &mut Vec<u8>, value: &T) -> io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *out, value).map_err(io::Error::other)?;
    let len = u32::try_from(out.len() - start - 4)
        .ok()
        .filter(|len| *len <= MAX_HEADER_LEN);
    let Some(len) = len else {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "header too long",
        ));
    };
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Writes `value` as one frame, in one write and flushed. (Each write on
/// a yamux stream is a frame of its own on the connection, and a Noise
/// message and a TCP send each: a frame's length and JSON written apart
/// would cost two of each.)
pub async fn write_frame<W, T>(io: &mut W, value: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut frame = Vec::new();
    encode_frame(&mut frame, value)?;
    io.write_all(&frame).await?;
    io.flush().await
}

/// Reads one frame. A frame over [`MAX_HEADER_LEN`] is refused before its
/// content is read; malformed JSON is `InvalidData`.
pub async fn read_frame<R, T>(io: &mut R) -> io::Result<T>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("header of {len} bytes is over the {MAX_HEADER_LEN} byte limit"),
        ));
    }
    let mut json = vec![0; len as usize];
    io.read_exact(&mut json).await?;
    serde_json::from_slice(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        futures::executor::block_on(future)
    }

    #[test]
    fn headers_round_trip() {
        let request = RequestHeader {
            version: WIRE_VERSION,
            action: ActionId::from_bytes([7; 32]),
            max_inline: 1 << 20,
            hints: 8,
            also: vec![ActionId::from_bytes([3; 32]), ActionId::from_bytes([4; 32])],
            accept: vec![Encoding::Zstd],
        };
        let response = ResponseHeader {
            version: WIRE_VERSION,
            found: Some(FoundHeader {
                output: OutputId::from_bytes([9; 32]),
                size: 12,
                time_unix_nanos: 34,
                body_included: true,
                encoding: Encoding::Zstd,
                built_here: true,
            }),
            next: vec![ActionId::from_bytes([1; 32]), ActionId::from_bytes([2; 32])],
            next_executables: Vec::new(),
        };
        let mut bytes = Vec::new();
        block_on(write_frame(&mut bytes, &request)).unwrap();
        block_on(write_frame(&mut bytes, &response)).unwrap();
        let mut cursor = Cursor::new(bytes);
        assert_eq!(
            block_on(read_frame::<_, RequestHeader>(&mut cursor)).unwrap(),
            request
        );
        assert_eq!(
            block_on(read_frame::<_, ResponseHeader>(&mut cursor)).unwrap(),
            response
        );
    }

    #[test]
    fn later_versions_may_add_fields_and_omit_defaults() {
        let json = format!(
            r#"{{"version":2,"action":"{}","peer_summary":{{"entries":3}}}}"#,
            "ab".repeat(32)
        );
        let header: RequestHeader = serde_json::from_str(&json).unwrap();
        assert_eq!(header.action, ActionId::from_bytes([0xab; 32]));
        assert_eq!(header.max_inline, 0);
        assert_eq!(header.hints, 0);
        assert!(header.also.is_empty());
        let header: ResponseHeader = serde_json::from_str("{}").unwrap();
        assert_eq!(header.found, None);
        // An encoding from a newer peer is known to be unknown, not an error
        // that would lose the rest of the header.
        let json = format!(
            r#"{{"found":{{"output":"{}","size":1,"encoding":"brotli"}},"accept":["brotli","zstd"]}}"#,
            "cd".repeat(32)
        );
        let newer: ResponseHeader = serde_json::from_str(&json).unwrap();
        assert_eq!(newer.found.unwrap().encoding, Encoding::Unknown);
        let json = format!(
            r#"{{"action":"{}","accept":["brotli","zstd"]}}"#,
            "ab".repeat(32)
        );
        let newer: RequestHeader = serde_json::from_str(&json).unwrap();
        assert_eq!(newer.accept, [Encoding::Unknown, Encoding::Zstd]);
        assert!(header.next.is_empty());
        // What a version-1 peer without read-ahead writes and reads.
        let request = RequestHeader {
            version: WIRE_VERSION,
            action: ActionId::from_bytes([1; 32]),
            max_inline: 0,
            hints: 0,
            also: Vec::new(),
            accept: Vec::new(),
        };
        let json = serde_json::to_string(&request).unwrap();
        assert!(
            !json.contains("hints") && !json.contains("also") && !json.contains("accept"),
            "{json}"
        );
        // What a version-1 server makes of a batch: `action` alone.
        let batch = RequestHeader {
            also: vec![ActionId::from_bytes([2; 32])],
            ..request
        };
        #[derive(Deserialize)]
        struct VersionOne {
            action: ActionId,
        }
        let old: VersionOne =
            serde_json::from_str(&serde_json::to_string(&batch).unwrap()).unwrap();
        assert_eq!(old.action, ActionId::from_bytes([1; 32]));
        assert_eq!(
            batch.actions().collect::<Vec<_>>(),
            [
                &ActionId::from_bytes([1; 32]),
                &ActionId::from_bytes([2; 32])
            ]
        );
    }

    #[test]
    fn a_frame_is_one_write_and_a_refused_one_leaves_nothing() {
        let mut writes = crate::protocol::testing::Writes::default();
        let not_found = ResponseHeader {
            version: WIRE_VERSION,
            found: None,
            next: Vec::new(),
            next_executables: Vec::new(),
        };
        block_on(write_frame(&mut writes, &not_found)).unwrap();
        assert_eq!(writes.0.len(), 1, "length and JSON apart: {:?}", writes.0);

        let mut out = b"kept".to_vec();
        let huge = "x".repeat(MAX_HEADER_LEN as usize);
        let error = encode_frame(&mut out, &huge).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(out, b"kept");
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut huge = (MAX_HEADER_LEN + 1).to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let error = block_on(read_frame::<_, ResponseHeader>(&mut Cursor::new(huge))).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);

        let mut bad_hex = Vec::new();
        let json = format!(r#"{{"action":"{}"}}"#, "zz".repeat(32));
        bad_hex.extend_from_slice(&(json.len() as u32).to_be_bytes());
        bad_hex.extend_from_slice(json.as_bytes());
        let error =
            block_on(read_frame::<_, RequestHeader>(&mut Cursor::new(bad_hex))).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);

        let truncated = vec![0, 0, 0, 10, b'{'];
        let error =
            block_on(read_frame::<_, RequestHeader>(&mut Cursor::new(truncated))).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Executables among the hints are a field of their own: an older
    /// requester reads the hints as before, an older server's hints count
    /// as other entries, and a place past the hints marks nothing.
    #[test]
    fn executables_among_hints_keep_older_peers_working() {
        let action = |n| ActionId::from_bytes([n; 32]);
        let hints = [
            Hint::new(action(1)),
            Hint {
                action: action(2),
                executable: Some(20 << 20),
            },
        ];
        let (next, next_executables) = split_hints(&hints);
        assert_eq!(
            next_executables,
            [HintedExecutable {
                at: 1,
                size: 20 << 20
            }]
        );
        let header = ResponseHeader {
            version: WIRE_VERSION,
            found: None,
            next,
            next_executables,
        };
        let json = serde_json::to_vec(&header).unwrap();
        #[derive(Deserialize)]
        struct OlderHeader {
            next: Vec<ActionId>,
        }
        let older: OlderHeader = serde_json::from_slice(&json).unwrap();
        assert_eq!(older.next, [action(1), action(2)]);
        let read: ResponseHeader = serde_json::from_slice(&json).unwrap();
        assert_eq!(joined_hints(read.next, &read.next_executables), hints);

        let older = br#"{"version":4,"next":["0101010101010101010101010101010101010101010101010101010101010101"]}"#;
        let read: ResponseHeader = serde_json::from_slice(older).unwrap();
        assert_eq!(
            joined_hints(read.next, &read.next_executables),
            [Hint::new(action(1))]
        );
        let past = [HintedExecutable { at: 5, size: 1 }];
        assert_eq!(joined_hints(vec![action(1)], &past), [Hint::new(action(1))]);
    }
}
