//! Cross-process advisory file locks with a bounded wait.
//!
//! Several `go` commands mean several warren processes on one store. Objects
//! and entries never need a lock (they are written to a temp file and renamed
//! into place), but two jobs must not run twice at once: trimming/cleaning the
//! store, and merging lifetime statistics into `stats.json`.
//!
//! Usage: [`FileLock::acquire`] tries the lock first; if another process holds
//! it, it logs "waiting for lock on …" and polls until `timeout`, then gives
//! up with [`LockError::Timeout`] rather than hanging a build.
//! [`FileLock::try_acquire`] never waits (for opportunistic work such as an
//! automatic trim, which simply skips when someone else is already at it).
//! The lock is released when the guard drops or the process dies, since it is
//! an `flock` on an open file.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    #[error("opening lock file {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("locking {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {timeout:?} waiting for lock on {}", path.display())]
    Timeout { path: PathBuf, timeout: Duration },
}

/// An exclusive lock on a file, held until dropped.
#[derive(Debug)]
pub(crate) struct FileLock {
    // Held only for its lock; closing the file releases it.
    _file: File,
}

impl FileLock {
    /// Takes the lock if it is free; `Ok(None)` if another process holds it.
    pub(crate) fn try_acquire(path: &Path) -> Result<Option<Self>, LockError> {
        let file = open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(LockError::Lock {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Takes the lock, waiting at most `timeout` for another holder.
    pub(crate) fn acquire(path: &Path, timeout: Duration) -> Result<Self, LockError> {
        if let Some(lock) = Self::try_acquire(path)? {
            return Ok(lock);
        }
        tracing::info!("waiting for lock on {}", path.display());
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            std::thread::sleep(pause);
            if let Some(lock) = Self::try_acquire(path)? {
                return Ok(lock);
            }
            if Instant::now() >= deadline {
                return Err(LockError::Timeout {
                    path: path.to_path_buf(),
                    timeout,
                });
            }
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = FileLock::acquire(&path, Duration::from_secs(1)).unwrap();
        assert!(FileLock::try_acquire(&path).unwrap().is_none());
        let started = Instant::now();
        let err = FileLock::acquire(&path, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(held);
        assert!(FileLock::try_acquire(&path).unwrap().is_some());
    }

    #[test]
    fn waiter_gets_the_lock_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = FileLock::acquire(&path, Duration::from_secs(1)).unwrap();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                FileLock::acquire(&path, Duration::from_secs(10)).map(|_| ())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        waiter.join().unwrap().unwrap();
    }
}
