//! Verified writes: a body is hashed as it is written to a temp file in its
//! shard, and only a body whose size and SHA-256 match its OutputID can be
//! committed ([`ObjectWriter::finish`] gives the [`VerifiedObject`] that
//! [`DiskStore::commit`] takes). Identical outputs are stored once: a body
//! whose object is there already, whole, is dropped at the commit, and one
//! whose object is damaged takes its place (see the store's module docs).
//! The writer keeps the body's first bytes as they pass, so that a linked
//! executable is stored marked as one (`executable`) without reading it
//! again.
//!
//! A big write (a piece of a fetched body, [`PARALLEL_HASH`] bytes or more)
//! is hashed on a second thread while this one writes it: writing into new
//! page-cache pages is most of a big fetch, and hashing after each piece
//! would put the hash on that path as well (docs/benchmarks.md, "Hashing
//! big writes beside the write").

use std::io::{self, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::executable::{self, HEAD_LEN};
use super::layout::parent;
use super::{DiskStore, Error};
use crate::fsutil::temp_file_in;
use crate::ids::OutputId;

/// Writes of at least this many bytes are hashed on a second thread while
/// they are written: a thread costs tens of microseconds, a 256 KiB write
/// into new pages about a millisecond.
pub(crate) const PARALLEL_HASH: usize = 128 * 1024;

impl DiskStore {
    /// Starts receiving a body that must hash to `output` and be `size` bytes.
    /// Write the body into the returned writer, then [`ObjectWriter::finish`]
    /// verifies it and [`DiskStore::commit`] stores it under an action.
    pub(crate) fn begin_object(&self, output: OutputId, size: u64) -> Result<ObjectWriter, Error> {
        let final_path = self.object_path(&output);
        // Always written, even when an object of that size is there: it
        // may be damaged (reads check only sizes), and the commit, which
        // hashes the one there, then puts this body, verified as it
        // arrives, in its place.
        let temp = temp_file_in(parent(&final_path))?;
        Ok(ObjectWriter {
            output,
            size,
            final_path,
            temp,
            hasher: Sha256::new(),
            head: Vec::with_capacity(HEAD_LEN.min(size as usize)),
            written: 0,
            broken: false,
        })
    }
}

/// Receives a body, hashing as it goes; see [`DiskStore::begin_object`].
pub(crate) struct ObjectWriter {
    output: OutputId,
    size: u64,
    final_path: PathBuf,
    temp: NamedTempFile,
    hasher: Sha256,
    /// The body's first bytes, to tell a linked executable (`executable`).
    head: Vec<u8>,
    written: u64,
    /// A big write, or its hash on the second thread, failed: the hash and
    /// the file may disagree, so nothing more may be written or committed.
    broken: bool,
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::Error::other("an earlier write of this body failed"));
        }
        if buf.len() < PARALLEL_HASH {
            let n = self.temp.write(buf)?;
            self.hasher.update(&buf[..n]);
            self.keep_head(&buf[..n]);
            self.written += n as u64;
            return Ok(n);
        }
        // The hash of the whole `buf` runs beside the write of the whole
        // of it; a write that fails part-way leaves the hash ahead of the
        // file, so the writer is broken for good (`finish` then fails).
        // With no thread to spare (a process limit), it hashes here.
        let (hasher, temp) = (&mut self.hasher, &mut self.temp);
        let (wrote, hashed) = std::thread::scope(|scope| {
            let hashing = std::thread::Builder::new()
                .name("warren-hash".into())
                .spawn_scoped(scope, || hasher.update(buf));
            let wrote = temp.write_all(buf);
            (wrote, hashing.ok().map(|hashing| hashing.join().is_ok()))
        });
        match (wrote, hashed) {
            (Ok(()), Some(true)) => {}
            (Ok(()), None) => self.hasher.update(buf),
            (Ok(()), Some(false)) => {
                self.broken = true;
                return Err(io::Error::other("hashing the body failed"));
            }
            (Err(error), _) => {
                self.broken = true;
                return Err(error);
            }
        }
        self.keep_head(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter {
    /// Keeps what of `written`, just written, falls in the body's first
    /// [`HEAD_LEN`] bytes: a copy of at most that many bytes per body.
    fn keep_head(&mut self, written: &[u8]) {
        let room = HEAD_LEN.saturating_sub(self.head.len());
        self.head
            .extend_from_slice(&written[..written.len().min(room)]);
    }

    /// Checks size and SHA-256. On a mismatch the temp file is deleted and
    /// nothing reaches the store.
    pub(crate) fn finish(self) -> Result<VerifiedObject, Error> {
        let actual = OutputId::from_bytes(self.hasher.finalize().into());
        if self.broken || actual != self.output || self.written != self.size {
            return Err(Error::Mismatch {
                expected: self.output,
                expected_size: self.size,
                actual,
                actual_size: self.written,
            });
        }
        Ok(VerifiedObject {
            output: self.output,
            size: self.size,
            executable: executable::is_executable(&self.head),
            final_path: self.final_path,
            temp: self.temp,
        })
    }
}

/// A body whose size and hash matched; dropping it uncommitted deletes it.
pub(crate) struct VerifiedObject {
    pub(super) output: OutputId,
    pub(super) size: u64,
    /// A linked executable, by its first bytes: its object is stored
    /// marked so (see `executable`).
    pub(super) executable: bool,
    pub(super) final_path: PathBuf,
    pub(super) temp: NamedTempFile,
}
