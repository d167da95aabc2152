//! Verified writes: a body is hashed as it is written to a temp file in its
//! shard, and only a body whose size and SHA-256 match its OutputID can be
//! committed ([`ObjectWriter::finish`] gives the [`VerifiedObject`] that
//! [`DiskStore::commit`] takes). Identical outputs are stored once: each put
//! of one renames its (verified) bytes over the object.

use std::io::{self, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::layout::parent;
use super::{DiskStore, Error};
use crate::fsutil::temp_file_in;
use crate::ids::OutputId;

impl DiskStore {
    /// Starts receiving a body that must hash to `output` and be `size` bytes.
    /// Write the body into the returned writer, then [`ObjectWriter::finish`]
    /// verifies it and [`DiskStore::commit`] stores it under an action.
    pub(crate) fn begin_object(&self, output: OutputId, size: u64) -> Result<ObjectWriter, Error> {
        let final_path = self.object_path(&output);
        // Always written, even when an object of that size is there: it
        // may be damaged (reads check only sizes), and this body, verified
        // as it arrives, is known good. The rename replaces it with the
        // same bytes, so it is still stored once.
        let temp = temp_file_in(parent(&final_path))?;
        Ok(ObjectWriter {
            output,
            size,
            final_path,
            temp,
            hasher: Sha256::new(),
            written: 0,
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
    written: u64,
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.temp.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter {
    /// Checks size and SHA-256. On a mismatch the temp file is deleted and
    /// nothing reaches the store.
    pub(crate) fn finish(self) -> Result<VerifiedObject, Error> {
        let actual = OutputId::from_bytes(self.hasher.finalize().into());
        if actual != self.output || self.written != self.size {
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
            final_path: self.final_path,
            temp: self.temp,
        })
    }
}

/// A body whose size and hash matched; dropping it uncommitted deletes it.
pub(crate) struct VerifiedObject {
    pub(super) output: OutputId,
    pub(super) size: u64,
    pub(super) final_path: PathBuf,
    pub(super) temp: NamedTempFile,
}
