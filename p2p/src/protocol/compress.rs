//! Compressed bodies on the wire (version 3): zstd, one frame per piece.
//!
//! Go build outputs compress well even at zstd's fastest level, so on an
//! office link of 1 Gb/s a build fetched from a peer waits on a fraction of
//! the bytes (docs/benchmarks.md, "Compressed bodies"). On a link faster than the sender can
//! compress, the same work would slow it down: the requester asks for
//! compression only when it wants it ([`crate::fetch::link`] decides), and a
//! server that is not asked, or is older, sends bodies raw.
//!
//! A compressed body is cut into the same pieces as a raw one (of
//! [`CHUNK_SIZE`], the last one shorter), and each piece travels as one
//! chunk:
//!
//! ```text
//! chunk = u32 big-endian header ++ payload
//! header bit 31 set:   payload is the piece itself, stored (it did not shrink)
//! header bit 31 clear: payload is one zstd frame that inflates to the piece
//! header bits 0-30:    payload length; stored: the piece's length,
//!                      zstd: shorter than the piece
//! ```
//!
//! The receiver knows each piece's length from the body's size, so a chunk
//! that announces more, or inflates to anything but exactly its piece, is
//! refused: nothing a peer sends can make the receiver hold or inflate more
//! than one piece. Each piece is its own frame, decompressed in one call
//! into a piece-sized buffer: no window a peer could size, no state from
//! one piece to the next, and the pieces of one body can be compressed and
//! inflated as they stream. Verification is unchanged: the store's sink
//! hashes the inflated bytes.

use std::cell::RefCell;
use std::io;
use std::num::NonZero;
use std::sync::{Mutex, OnceLock, PoisonError};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::piece::Piece;
use crate::protocol::wire::CHUNK_SIZE;

/// zstd's fastest regular level: about 590 MB/s per core for Go outputs on
/// the benchmark machine, which keeps a sender ahead of a 1 Gb/s link.
const LEVEL: i32 = 1;
/// Header bit: the payload is stored, not compressed.
const STORED: u32 = 1 << 31;
/// Bytes of a chunk header.
const HEADER: usize = 4;

/// zstd contexts are worth keeping: making one costs more than compressing
/// a small body. A compressing context holds about 1 MiB, and a serving
/// daemon compresses on whichever of its blocking threads reads a body (a
/// busy one has dozens), so spare ones wait in a pool no larger than the
/// cores that could use them at once ([`keep`]), not one per thread.
static COMPRESSORS: Mutex<Vec<zstd::bulk::Compressor<'static>>> = Mutex::new(Vec::new());

thread_local! {
    // Decompressing contexts are small and inflate on the async workers,
    // whose number is fixed: one per thread.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// How many spare compressing contexts the pool keeps.
fn keep() -> usize {
    static KEEP: OnceLock<usize> = OnceLock::new();
    *KEEP.get_or_init(|| std::thread::available_parallelism().map_or(2, NonZero::get))
}

/// Runs `f` with a compressing context from the pool (or a new one), and
/// puts the context back if the pool has room; `None` if zstd could not
/// make one.
fn with_compressor<R>(f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> R) -> Option<R> {
    let spare = COMPRESSORS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    let mut compressor = match spare {
        Some(compressor) => compressor,
        None => zstd::bulk::Compressor::new(LEVEL).ok()?,
    };
    let result = f(&mut compressor);
    let mut pool = COMPRESSORS.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < keep() {
        pool.push(compressor);
    }
    Some(result)
}

/// One piece of a body, ready for the stream.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// A raw body's piece: written as it is.
    Raw(Piece),
    /// A compressed body's piece that did not shrink: a header, then it.
    Stored(Piece),
    /// A compressed body's piece: header and zstd frame, in one buffer.
    Compressed(Piece),
}

impl Chunk {
    /// `piece` as its body's encoding wants it on the wire.
    pub(crate) fn encode(piece: Piece, compress: bool) -> Self {
        if !compress {
            return Self::Raw(piece);
        }
        // Only worth sending if it saves bytes; room for the header stays
        // within a pool buffer.
        let room = piece.len().saturating_sub(1).min(CHUNK_SIZE - HEADER);
        let mut out = Piece::new(HEADER + room);
        let compressed = with_compressor(|compressor| {
            compressor.compress_to_buffer(&piece[..], &mut out[HEADER..])
        });
        match compressed.and_then(Result::ok) {
            Some(len) => {
                out[..HEADER].copy_from_slice(&(len as u32).to_be_bytes());
                out.truncate(HEADER + len);
                Self::Compressed(out)
            }
            // Too small a saving to fit, incompressible, or no context.
            None => Self::Stored(piece),
        }
    }

    /// Writes the chunk to `io`.
    pub(crate) async fn write<T>(&self, io: &mut T) -> io::Result<()>
    where
        T: AsyncWrite + Unpin,
    {
        match self {
            Self::Raw(piece) | Self::Compressed(piece) => io.write_all(piece).await,
            Self::Stored(piece) => {
                io.write_all(&(STORED | piece.len() as u32).to_be_bytes())
                    .await?;
                io.write_all(piece).await
            }
        }
    }

    /// Appends the chunk as it goes on the wire to `out`.
    pub(crate) fn append_to(&self, out: &mut Vec<u8>) {
        match self {
            Self::Raw(piece) | Self::Compressed(piece) => out.extend_from_slice(piece),
            Self::Stored(piece) => {
                out.extend_from_slice(&(STORED | piece.len() as u32).to_be_bytes());
                out.extend_from_slice(piece);
            }
        }
    }

    /// Bytes this chunk takes on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        match self {
            Self::Raw(piece) | Self::Compressed(piece) => piece.len(),
            Self::Stored(piece) => HEADER + piece.len(),
        }
    }
}

/// Reads one chunk of a compressed body from `io` and returns its piece,
/// which must be exactly `len` bytes (at most [`CHUNK_SIZE`]). Anything
/// else the peer sends is an `InvalidData` error.
pub(crate) async fn read_chunk<T>(io: &mut T, len: usize) -> io::Result<Piece>
where
    T: AsyncRead + Unpin,
{
    let mut header = [0; HEADER];
    io.read_exact(&mut header).await?;
    let header = u32::from_be_bytes(header);
    let payload = (header & !STORED) as usize;
    if header & STORED != 0 {
        if payload != len {
            return Err(bad(format!(
                "stored chunk of {payload} bytes where {len} were due"
            )));
        }
        let mut piece = Piece::new(len);
        io.read_exact(&mut piece).await?;
        return Ok(piece);
    }
    if payload >= len {
        return Err(bad(format!(
            "compressed chunk of {payload} bytes for a piece of {len}"
        )));
    }
    let mut frame = Piece::new(payload);
    io.read_exact(&mut frame).await?;
    let mut piece = Piece::new(len);
    let inflated = DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        let decompressor = cell.as_mut().expect("just made");
        decompressor.decompress_to_buffer(&frame[..], &mut piece[..])
    });
    match inflated {
        Ok(n) if n == len => Ok(piece),
        Ok(n) => Err(bad(format!(
            "chunk inflates to {n} bytes where {len} were due"
        ))),
        // Corrupt, or more than the piece: zstd stops at the buffer's end.
        Err(error) => Err(bad(format!("chunk does not inflate: {error}"))),
    }
}

fn bad(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        futures::executor::block_on(future)
    }

    fn piece(bytes: &[u8]) -> Piece {
        let mut piece = Piece::new(bytes.len());
        piece.copy_from_slice(bytes);
        piece
    }

    fn wire(chunks: &[Chunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks {
            block_on(chunk.write(&mut out)).unwrap();
        }
        out
    }

    #[test]
    fn compressible_pieces_shrink_and_round_trip() {
        let text: Vec<u8> = b"package main; func main() {}\n"
            .iter()
            .copied()
            .cycle()
            .take(CHUNK_SIZE)
            .collect();
        let chunk = Chunk::encode(piece(&text), true);
        assert!(matches!(chunk, Chunk::Compressed(_)), "{chunk:?}");
        assert!(chunk.wire_len() < text.len() / 10, "{}", chunk.wire_len());
        let bytes = wire(&[chunk]);
        let got = block_on(read_chunk(&mut Cursor::new(bytes), text.len())).unwrap();
        assert_eq!(&got[..], &text[..]);
    }

    #[test]
    fn incompressible_and_tiny_pieces_are_stored() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..CHUNK_SIZE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for body in [&noise[..], b"x", b""] {
            let chunk = Chunk::encode(piece(body), true);
            assert!(matches!(chunk, Chunk::Stored(_)), "{chunk:?}");
            assert_eq!(chunk.wire_len(), HEADER + body.len());
            let bytes = wire(&[chunk]);
            let got = block_on(read_chunk(&mut Cursor::new(bytes), body.len())).unwrap();
            assert_eq!(&got[..], body);
        }
    }

    #[test]
    fn spare_compressors_are_kept_up_to_the_cores() {
        // More threads than cores each hold a context at the same time.
        let threads = 4 * keep();
        let all_hold = std::sync::Barrier::new(threads);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| with_compressor(|_| all_hold.wait()).expect("a context"));
            }
        });
        // Other tests may take some meanwhile: only the bound is certain.
        let spare = COMPRESSORS.lock().unwrap().len();
        assert!(spare <= keep(), "{spare} spare contexts, {} cores", keep());
    }

    #[test]
    fn raw_pieces_are_written_as_they_are() {
        let chunk = Chunk::encode(piece(b"abc"), false);
        assert_eq!(wire(&[chunk]), b"abc");
    }

    fn frame(bytes: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(bytes, LEVEL).unwrap()
    }

    fn chunk_bytes(header: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = header.to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn refused(bytes: Vec<u8>, len: usize) -> String {
        let error = block_on(read_chunk(&mut Cursor::new(bytes), len)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        error.to_string()
    }

    #[test]
    fn chunks_that_are_not_their_piece_are_refused() {
        let zeros = vec![0u8; 4096];
        let bomb = frame(&vec![0u8; CHUNK_SIZE * 4]);
        let short = frame(&zeros[..100]);
        // A frame that inflates past its piece (a "bomb") stops at the
        // piece's end.
        assert!(refused(chunk_bytes(bomb.len() as u32, &bomb), 4096).contains("inflate"));
        // One that inflates to less.
        assert!(refused(chunk_bytes(short.len() as u32, &short), 4096).contains("inflates to 100"));
        // Garbage.
        assert!(refused(chunk_bytes(10, b"not a zstd"), 4096).contains("inflate"));
        // A compressed chunk no smaller than its piece: no reason to read it.
        assert!(refused(chunk_bytes(4096, &zeros), 4096).contains("compressed chunk"));
        // A stored chunk of the wrong length, however long it claims to be.
        assert!(refused(chunk_bytes(STORED | 4095, &zeros), 4096).contains("stored"));
        assert!(refused(chunk_bytes(u32::MAX, &[]), 4096).contains("stored"));
        // Cut short: an ordinary stream error.
        let error = block_on(read_chunk(
            &mut Cursor::new(chunk_bytes(STORED | 8, b"abc")),
            8,
        ))
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
