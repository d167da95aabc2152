//! What the store's operations fail with.

use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{self, lock::LockError, private::NotPrivate};
use crate::ids::OutputId;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A file operation failed (it names the operation and the path).
    #[error(transparent)]
    File(#[from] fsutil::Error),
    #[error(
        "body does not match its OutputID: expected {expected_size} bytes with SHA-256 {expected}, got {actual_size} bytes with SHA-256 {actual}"
    )]
    Mismatch {
        expected: OutputId,
        expected_size: u64,
        actual: OutputId,
        actual_size: u64,
    },
    #[error("store path {} is not valid UTF-8", .0.display())]
    NotUtf8(PathBuf),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    NotPrivate(#[from] NotPrivate),
    #[error(
        "the store {} is no longer the directory warren opened: it was moved or replaced",
        .0.display()
    )]
    Replaced(PathBuf),
}

/// [`fsutil::io_error`], as a store error.
pub(super) fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::File(fsutil::io_error(op, path)(source))
}
