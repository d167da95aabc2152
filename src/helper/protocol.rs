//! The GOCACHEPROG wire protocol, as the Go toolchain speaks it.
//!
//! The spec is Go's own source: `cmd/go/internal/cacheprog/cacheprog.go`
//! (the message types) and `cmd/go/internal/cache/prog.go` (how `go` frames
//! them). What matters here:
//!
//! - `go` writes each [`Request`] as one JSON object line followed by an empty
//!   line. A `put` with `BodySize > 0` is followed by the body as a JSON string
//!   of standard base64 on a line of its own.
//! - Requests from one `go` process arrive one at a time, so a large body holds
//!   up every request behind it. [`RequestReader::read_body`] therefore streams:
//!   it decodes base64 in fixed-size chunks into any [`Write`] sink (the store
//!   hashes and writes to a temp file), so memory does not grow with the body.
//! - Byte slices (`ActionID`, `OutputID`) are base64 strings in JSON, as Go's
//!   `encoding/json` writes `[]byte`. Go before 1.24 spelled `OutputID` as
//!   `ObjectID`; both are accepted.
//! - Every [`Response`] carries the request's `ID` and may be sent in any order.
//!   The first line the helper writes is the ID-0 capabilities response.
//!
//! Malformed input never panics: a bad header becomes a [`DecodeError`] that
//! still carries the request ID when one could be read, so the caller can
//! answer it with `Err` and go on with the next request.

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize, Serializer};

use crate::ids::{ActionId, OutputId};

/// The commands warren declares in its capabilities response.
pub(crate) const KNOWN_COMMANDS: [&str; 3] = ["get", "put", "close"];

/// Longest request header line accepted. Real headers are under 300 bytes;
/// the cap keeps a stray body line or garbage from being buffered whole.
const MAX_HEADER_LINE: usize = 64 * 1024;

/// Base64 characters decoded per step while streaming a body (a multiple
/// of 4, so every chunk but the last decodes without padding).
const BODY_CHUNK: usize = 64 * 1024;

/// A request from the `go` command, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Look up an action. Answer with a hit (OutputID, Size, Time, DiskPath)
    /// or `Miss`.
    Get { id: i64, action: ActionId },
    /// Store a body under an action. `body_size` bytes of body follow the
    /// header unless it is zero; read them with [`RequestReader::read_body`].
    Put {
        id: i64,
        action: ActionId,
        output: OutputId,
        body_size: u64,
    },
    /// Finish pending work, answer, and exit.
    Close { id: i64 },
}

/// A request header that could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The header was read but is not a valid request. `id` is set when the
    /// request ID could be recovered, so the request can still be answered.
    #[error("malformed request{}: {reason}", id.map(|id| format!(" {id}")).unwrap_or_default())]
    Malformed { id: Option<i64>, reason: String },
    /// A header line longer than any real request; it was skipped.
    #[error("request line longer than {MAX_HEADER_LINE} bytes (skipped)")]
    LineTooLong,
    #[error("reading requests from stdin")]
    Io(#[source] io::Error),
}

/// A `put` body that could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("put body is not a base64 JSON string: {0}")]
    Malformed(String),
    #[error("put body has {actual} bytes but BodySize said {expected}")]
    Size { expected: u64, actual: u64 },
    #[error("reading put body from stdin")]
    Io(#[source] io::Error),
    /// The sink failed (for example, the disk is full). The rest of the body
    /// was still consumed, so the stream stays in sync.
    #[error("storing put body")]
    Sink(#[source] io::Error),
}

/// The header fields, leniently typed so a bad field does not hide the ID.
#[derive(Deserialize)]
struct RawRequest {
    #[serde(rename = "ID")]
    id: Option<i64>,
    #[serde(rename = "Command")]
    command: Option<String>,
    #[serde(rename = "ActionID")]
    action_id: Option<String>,
    #[serde(rename = "OutputID", alias = "ObjectID")]
    output_id: Option<String>,
    #[serde(rename = "BodySize")]
    body_size: Option<i64>,
}

/// Decodes one header line into a [`Request`].
pub(crate) fn parse_header(line: &[u8]) -> Result<Request, DecodeError> {
    let raw: RawRequest = serde_json::from_slice(line).map_err(|error| DecodeError::Malformed {
        id: recover_id(line),
        reason: error.to_string(),
    })?;
    let malformed = |reason: String| DecodeError::Malformed { id: raw.id, reason };
    let id = raw.id.ok_or_else(|| malformed("missing ID".into()))?;
    let command = raw.command.as_deref().unwrap_or_default();
    let action = || -> Result<ActionId, DecodeError> {
        let bytes = decode_field("ActionID", raw.action_id.as_deref()).map_err(malformed)?;
        ActionId::from_slice(&bytes).map_err(|e| malformed(format!("ActionID: {e}")))
    };
    match command {
        "get" => Ok(Request::Get {
            id,
            action: action()?,
        }),
        "put" => {
            let action = action()?;
            let bytes = decode_field("OutputID", raw.output_id.as_deref()).map_err(malformed)?;
            let output =
                OutputId::from_slice(&bytes).map_err(|e| malformed(format!("OutputID: {e}")))?;
            let body_size = u64::try_from(raw.body_size.unwrap_or(0))
                .map_err(|_| malformed("negative BodySize".into()))?;
            Ok(Request::Put {
                id,
                action,
                output,
                body_size,
            })
        }
        "close" => Ok(Request::Close { id }),
        "" => Err(malformed("missing Command".into())),
        other => Err(malformed(format!("unknown command {other:?}"))),
    }
}

fn decode_field(name: &str, value: Option<&str>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("missing {name}"))?;
    BASE64
        .decode(value)
        .map_err(|e| format!("{name} is not base64: {e}"))
}

/// Finds `"ID": <integer>` in a line that failed typed decoding.
fn recover_id(line: &[u8]) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    value.get("ID")?.as_i64()
}

/// Reads requests (and streams `put` bodies) from the `go` command.
pub(crate) struct RequestReader<R> {
    input: R,
    line: Vec<u8>,
}

impl<R: BufRead> RequestReader<R> {
    pub(crate) fn new(input: R) -> Self {
        Self {
            input,
            line: Vec::with_capacity(512),
        }
    }

    /// The next request, or `None` at end of input.
    ///
    /// Blank lines between requests are skipped. After a `put` with a
    /// non-zero `body_size`, the caller must call [`Self::read_body`] before
    /// asking for the next request.
    pub(crate) fn next_request(&mut self) -> Result<Option<Request>, DecodeError> {
        loop {
            match self.read_line()? {
                Line::End => return Ok(None),
                Line::OrphanBody => {
                    // A body whose header could not be used; the error was
                    // reported with the header.
                    tracing::debug!("skipped a body line with no usable header");
                }
                Line::Text => {
                    let line = self.line.trim_ascii();
                    if !line.is_empty() {
                        return parse_header(line).map(Some);
                    }
                }
            }
        }
    }

    /// Reads one line into `self.line`, up to [`MAX_HEADER_LINE`] bytes. A
    /// line that starts with `"` is a body: it is skipped whatever its
    /// length, without being buffered.
    fn read_line(&mut self) -> Result<Line, DecodeError> {
        self.line.clear();
        let mut too_long = false;
        let mut orphan_body = false;
        loop {
            let buf = self.input.fill_buf().map_err(DecodeError::Io)?;
            if buf.is_empty() {
                break;
            }
            if self.line.is_empty() && !too_long && !orphan_body && buf[0] == b'"' {
                orphan_body = true;
            }
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(at) => (at + 1, true),
                None => (buf.len(), false),
            };
            if !too_long && !orphan_body {
                if self.line.len() + take > MAX_HEADER_LINE {
                    too_long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(&buf[..take]);
                }
            }
            self.input.consume(take);
            if done {
                break;
            }
        }
        if orphan_body {
            Ok(Line::OrphanBody)
        } else if too_long {
            Err(DecodeError::LineTooLong)
        } else if self.line.is_empty() {
            Ok(Line::End)
        } else {
            Ok(Line::Text)
        }
    }

    /// Streams a `put` body of `expected` bytes into `sink`.
    ///
    /// The whole body line is always consumed, even when it is malformed or
    /// the sink fails, so the next request is read from the right place.
    pub(crate) fn read_body(
        &mut self,
        expected: u64,
        sink: &mut impl Write,
    ) -> Result<u64, BodyError> {
        self.skip_whitespace()?;
        match self.input.fill_buf().map_err(BodyError::Io)?.first() {
            Some(b'"') => self.input.consume(1),
            Some(_) => return Err(BodyError::Malformed("expected '\"'".into())),
            None => return Err(BodyError::Malformed("input ended before the body".into())),
        }
        let mut decoder = ChunkDecoder::new(expected);
        let mut failure: Option<BodyError> = None;
        loop {
            let buf = self.input.fill_buf().map_err(BodyError::Io)?;
            if buf.is_empty() {
                return Err(BodyError::Malformed("input ended inside the body".into()));
            }
            let end = memchr::memchr3(b'"', b'\\', b'\n', buf);
            let take = end.unwrap_or(buf.len());
            if failure.is_none()
                && let Err(error) = decoder.push(&buf[..take], sink)
            {
                failure = Some(error);
            }
            let stop = end.map(|at| buf[at]);
            self.input.consume(take);
            match stop {
                None => {}
                Some(b'"') => {
                    self.input.consume(1);
                    break;
                }
                Some(b'\\') => {
                    // JSON allows "\/" for '/'; nothing else can occur in base64.
                    self.input.consume(1);
                    let next = self
                        .input
                        .fill_buf()
                        .map_err(BodyError::Io)?
                        .first()
                        .copied();
                    if next == Some(b'/') {
                        self.input.consume(1);
                        if failure.is_none()
                            && let Err(error) = decoder.push(b"/", sink)
                        {
                            failure = Some(error);
                        }
                    } else {
                        failure.get_or_insert(BodyError::Malformed("unexpected escape".into()));
                    }
                }
                Some(_) => {
                    return Err(BodyError::Malformed("line ended inside the body".into()));
                }
            }
        }
        self.skip_rest_of_line()?;
        if let Some(error) = failure {
            return Err(error);
        }
        decoder.finish(sink)
    }

    fn skip_whitespace(&mut self) -> Result<(), BodyError> {
        loop {
            let buf = self.input.fill_buf().map_err(BodyError::Io)?;
            let n = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            if n == 0 {
                return Ok(());
            }
            self.input.consume(n);
        }
    }

    fn skip_rest_of_line(&mut self) -> Result<(), BodyError> {
        loop {
            let buf = self.input.fill_buf().map_err(BodyError::Io)?;
            if buf.is_empty() {
                return Ok(());
            }
            match memchr::memchr(b'\n', buf) {
                Some(at) => {
                    let junk = buf[..at].trim_ascii();
                    let junk_found = !junk.is_empty();
                    self.input.consume(at + 1);
                    return if junk_found {
                        Err(BodyError::Malformed("text after the body".into()))
                    } else {
                        Ok(())
                    };
                }
                None => {
                    let n = buf.len();
                    self.input.consume(n);
                }
            }
        }
    }
}

/// What [`RequestReader::read_line`] found.
enum Line {
    End,
    /// A line of text, in `RequestReader::line`.
    Text,
    /// A `"…"` body line where a header was expected (already consumed).
    OrphanBody,
}

/// Incremental base64 decoding in [`BODY_CHUNK`]-sized steps.
struct ChunkDecoder {
    encoded: Vec<u8>,
    decoded: Vec<u8>,
    expected: u64,
    written: u64,
}

impl ChunkDecoder {
    fn new(expected: u64) -> Self {
        Self {
            encoded: Vec::with_capacity(BODY_CHUNK),
            decoded: vec![0; BODY_CHUNK / 4 * 3],
            expected,
            written: 0,
        }
    }

    fn push(&mut self, mut input: &[u8], sink: &mut impl Write) -> Result<(), BodyError> {
        while !input.is_empty() {
            // A full chunk is decoded only once more input follows it: the
            // body's last chunk may end in padding, which `finish` decodes.
            if self.encoded.len() == BODY_CHUNK {
                if memchr::memchr(b'=', &self.encoded).is_some() {
                    return Err(BodyError::Malformed("padding inside the body".into()));
                }
                self.flush(sink)?;
            }
            let room = BODY_CHUNK - self.encoded.len();
            let (now, later) = input.split_at(room.min(input.len()));
            self.encoded.extend_from_slice(now);
            input = later;
        }
        Ok(())
    }

    fn flush(&mut self, sink: &mut impl Write) -> Result<(), BodyError> {
        let n = BASE64
            .decode_slice_unchecked(&self.encoded, &mut self.decoded)
            .map_err(|e| BodyError::Malformed(e.to_string()))?;
        self.encoded.clear();
        self.written += n as u64;
        if self.written > self.expected {
            return Err(BodyError::Size {
                expected: self.expected,
                actual: self.written,
            });
        }
        sink.write_all(&self.decoded[..n]).map_err(BodyError::Sink)
    }

    fn finish(mut self, sink: &mut impl Write) -> Result<u64, BodyError> {
        if !self.encoded.is_empty() {
            self.flush(sink)?;
        }
        if self.written != self.expected {
            return Err(BodyError::Size {
                expected: self.expected,
                actual: self.written,
            });
        }
        Ok(self.written)
    }
}

/// A response line to the `go` command. Field names and omission rules match
/// Go's `cacheprog.Response`, so `go` decodes exactly what it expects.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Response {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "Err", skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
    #[serde(rename = "KnownCommands", skip_serializing_if = "<[_]>::is_empty")]
    pub known_commands: &'static [&'static str],
    #[serde(rename = "Miss", skip_serializing_if = "std::ops::Not::not")]
    pub miss: bool,
    /// Required on a hit: without it `go test` result caching silently stops
    /// working (golang/go#35301).
    #[serde(
        rename = "OutputID",
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_output_id"
    )]
    pub output_id: Option<OutputId>,
    #[serde(rename = "Size", skip_serializing_if = "is_zero")]
    pub size: u64,
    /// When the entry was stored; Go uses it for cache expiry decisions.
    #[serde(
        rename = "Time",
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_time"
    )]
    pub time: Option<SystemTime>,
    /// Absolute path of the body, without extension, valid until `close`.
    #[serde(rename = "DiskPath", skip_serializing_if = "Option::is_none")]
    pub disk_path: Option<String>,
}

impl Response {
    /// The ID-0 line that must be the helper's first output.
    pub(crate) fn capabilities() -> Self {
        Self {
            known_commands: &KNOWN_COMMANDS,
            ..Self::default()
        }
    }

    pub(crate) fn miss(id: i64) -> Self {
        Self {
            id,
            miss: true,
            ..Self::default()
        }
    }

    pub(crate) fn hit(id: i64, output: OutputId, size: u64, time: SystemTime, path: &Path) -> Self {
        Self {
            id,
            output_id: Some(output),
            size,
            time: Some(time),
            disk_path: Some(path.to_string_lossy().into_owned()),
            ..Self::default()
        }
    }

    pub(crate) fn stored(id: i64, path: &Path) -> Self {
        Self {
            id,
            disk_path: Some(path.to_string_lossy().into_owned()),
            ..Self::default()
        }
    }

    pub(crate) fn error(id: i64, message: impl Into<String>) -> Self {
        Self {
            id,
            err: Some(message.into()),
            ..Self::default()
        }
    }

    pub(crate) fn ack(id: i64) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    /// Appends the response as one JSON line.
    pub(crate) fn write_line(&self, out: &mut impl Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        out.write_all(b"\n")
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn serialize_output_id<S: Serializer>(id: &Option<OutputId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&BASE64.encode(id.as_bytes())),
        None => s.serialize_none(),
    }
}

fn serialize_time<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match time {
        // RFC 3339 with nanoseconds, as Go's time.Time marshals.
        Some(time) => s.collect_str(&humantime::format_rfc3339_nanos(*time)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests;
