//! Verified writes: a body is hashed as it is written to a temp file in its
//! shard, and only a body whose size and SHA-256 match its OutputID can be
//! committed ([`ObjectWriter::finish`] gives the [`VerifiedObject`] that
//! [`DiskStore::commit`] takes). Identical outputs are stored once.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::layout::parent;
use super::{DiskStore, Error, TOUCH_INTERVAL};
use crate::fsutil::temp_file_in;
use crate::ids::OutputId;

impl DiskStore {
    /// Starts receiving a body that must hash to `output` and be `size` bytes.
    /// Write the body into the returned writer, then [`ObjectWriter::finish`]
    /// verifies it and [`DiskStore::commit`] stores it under an action.
    pub(crate) fn begin_object(&self, output: OutputId, size: u64) -> Result<ObjectWriter, Error> {
        let final_path = self.object_path(&output);
        let temp = if self.object_is_fresh(&final_path, size) {
            None
        } else {
            Some(temp_file_in(parent(&final_path))?)
        };
        Ok(ObjectWriter {
            output,
            size,
            final_path,
            temp,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// True if the object exists with the right size and was used recently
    /// enough that no trim can remove it before the put that reuses it lands.
    pub(super) fn object_is_fresh(&self, path: &Path, size: u64) -> bool {
        fs::metadata(path).is_ok_and(|meta| {
            meta.is_file()
                && meta.len() == size
                && meta.modified().is_ok_and(|used| {
                    self.now().duration_since(used).unwrap_or_default() < TOUCH_INTERVAL
                })
        })
    }
}

/// Receives a body, hashing as it goes; see [`DiskStore::begin_object`].
pub(crate) struct ObjectWriter {
    output: OutputId,
    size: u64,
    final_path: PathBuf,
    /// `None` when an identical object is already stored: hash only.
    temp: Option<NamedTempFile>,
    hasher: Sha256,
    written: u64,
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.temp {
            Some(temp) => temp.write(buf)?,
            None => buf.len(),
        };
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
    pub(super) temp: Option<NamedTempFile>,
}
