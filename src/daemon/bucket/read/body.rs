//! A bucket body into the store: zstd-decoded when it is stored
//! compressed, never past its signed size, then committed through the
//! same sink as a peer's body, whose checks say whether it is good.

use std::io::{self, Write};

use warren_p2p::{BodySink, CommitError};

use super::compressed;

/// Why a body could not be written into the store.
pub(super) enum WriteError {
    /// The body is wrong: not the size or hash its OutputID says, not a
    /// valid zstd frame, or refused by the consistency checks.
    Bad(String),
    Store(String),
}

/// Writes the chunks of a body (zstd-decoded if it is stored compressed)
/// into `sink`, at most `size` bytes, then commits it.
pub(super) fn write_body(
    sink: Box<dyn BodySink>,
    mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    size: u64,
) -> Result<(), WriteError> {
    let bad = |e: io::Error| WriteError::Bad(e.to_string());
    let mut limited = Limited { sink, left: size };
    if compressed(size) {
        let mut decoder = zstd::stream::write::Decoder::new(&mut limited).map_err(bad)?;
        while let Some(chunk) = chunks.blocking_recv() {
            decoder.write_all(&chunk).map_err(bad)?;
        }
        decoder.flush().map_err(bad)?;
    } else {
        while let Some(chunk) = chunks.blocking_recv() {
            limited.write_all(&chunk).map_err(bad)?;
        }
    }
    match limited.sink.commit() {
        Ok(()) => Ok(()),
        Err(e @ (CommitError::Mismatch { .. } | CommitError::Refused(_))) => {
            Err(WriteError::Bad(e.to_string()))
        }
        Err(e) => Err(WriteError::Store(e.to_string())),
    }
}

/// A sink that takes no more than its body's size: a small compressed
/// object cannot decode to an unbounded one.
struct Limited {
    sink: Box<dyn BodySink>,
    left: u64,
}

impl Write for Limited {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the body is longer than its manifest says",
            ));
        }
        let n = self.sink.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}
