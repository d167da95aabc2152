//! Faults of the store while serving one `go` command, told once.
//!
//! A full disk fails every put. A warning for each flooded the terminal
//! (787 lines for a `go build std`), where `go`'s own cache prints nothing
//! and `go` builds anyway. So a failed put is logged at debug level and
//! counted here, and the helper prints one warning when `go` is done
//! ([`Faults::summary`]): how many puts failed, the first reason, and what
//! to do. (A put the store refuses outright, read-only say, is still given
//! a scratch file by the session, so `go` has its file.)
//!
//! A full disk is also met before it costs a put: the session asks
//! [`Faults::before_put`] about each body, and when the store's
//! filesystem has less room than the body (measured with `statvfs`, again
//! only once the bytes put since the last look could have used up what was
//! free), the store is trimmed at once to make room ([`Faults::new`]'s
//! `make_room`: least recently used entries, never one used within the
//! trim grace), once per `go` command. The first put that fails for a full
//! disk does the same, if nothing did yet.

use std::error::Error;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Room kept free beyond a body's size before a put is written.
const MARGIN: u64 = 1 << 20;

/// See the module docs.
pub(crate) struct Faults {
    inner: Mutex<Inner>,
    /// Trims the store to make room; the bytes it freed. Called at most
    /// once.
    make_room: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Bytes free on the store's filesystem, if that can be told.
    free_space: Box<dyn Fn() -> Option<u64> + Send + Sync>,
    /// Whether `make_room` ran (or runs) already.
    room_made: AtomicBool,
}

#[derive(Default)]
struct Inner {
    failed_puts: u64,
    first: Option<String>,
    full: bool,
    read_only: bool,
    /// Bytes that may still be put before free space is looked at again.
    unchecked_room: u64,
    /// What making room freed.
    freed: Option<u64>,
}

impl Faults {
    pub(crate) fn new(
        make_room: impl Fn() -> u64 + Send + Sync + 'static,
        free_space: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Mutex::default(),
            make_room: Box::new(make_room),
            free_space: Box::new(free_space),
            room_made: AtomicBool::new(false),
        }
    }

    /// Before a put of `size` bytes is written: makes room if the disk
    /// cannot take it. Costs a `statvfs` only now and then.
    pub(crate) fn before_put(&self, size: u64) {
        if self.room_made.load(Ordering::Relaxed) {
            return;
        }
        let needed = size.saturating_add(MARGIN);
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if inner.unchecked_room >= needed {
                inner.unchecked_room -= needed;
                return;
            }
            match (self.free_space)() {
                Some(free) if free >= needed => {
                    inner.unchecked_room = free - needed;
                    return;
                }
                Some(_) => {}
                // Unknown: let the put tell.
                None => return,
            }
        }
        self.make_room();
    }

    /// Trims once per `go` command.
    fn make_room(&self) {
        if self.room_made.swap(true, Ordering::Relaxed) {
            return;
        }
        let freed = (self.make_room)();
        tracing::debug!("the store's disk is full: trimmed {freed} bytes to make room");
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).freed = Some(freed);
    }

    /// A put that could not be stored, and why.
    pub(crate) fn put_failed(&self, why: &(dyn Error + 'static)) {
        let message = crate::logging::chain(why);
        tracing::debug!("put failed: {message}");
        let full = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.failed_puts += 1;
            inner.first.get_or_insert(message);
            let full = has_kind(why, FULL);
            inner.full |= full;
            inner.read_only |= has_kind(why, READ_ONLY);
            full
        };
        if full {
            self.make_room();
        }
    }

    /// The one warning for the whole `go` command, if any: puts that
    /// failed, or a disk so full that the store was trimmed.
    pub(crate) fn summary(&self) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let freed = inner.freed.filter(|bytes| *bytes > 0).map(|bytes| {
            format!(
                "; trimmed {} of entries unused for 2 hours to make room",
                bytesize::ByteSize(bytes).display().iec()
            )
        });
        let Some(first) = inner.first.as_deref() else {
            return freed.map(|freed| {
                format!(
                    "the store's disk was full{freed}; free space on that disk, or lower max-size"
                )
            });
        };
        let puts = match inner.failed_puts {
            1 => "1 put".to_owned(),
            n => format!("{n} puts"),
        };
        let fix = if inner.full {
            "; free space on the store's disk, or lower max-size"
        } else if inner.read_only {
            "; make the store writable again, or point WARREN_DIR at another directory"
        } else {
            ""
        };
        Some(format!(
            "{puts} could not be stored, so go will build those again next time (first: {first}){}{fix}",
            freed.unwrap_or_default()
        ))
    }
}

/// A disk (or quota) that is full.
const FULL: &[io::ErrorKind] = &[io::ErrorKind::StorageFull, io::ErrorKind::QuotaExceeded];
/// A store that cannot be written at all.
const READ_ONLY: &[io::ErrorKind] = &[
    io::ErrorKind::ReadOnlyFilesystem,
    io::ErrorKind::PermissionDenied,
];

/// Whether `error`, or one of its sources, is an I/O error of one of `kinds`.
fn has_kind(error: &(dyn Error + 'static), kinds: &[io::ErrorKind]) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<io::Error>()
            && kinds.contains(&io.kind())
        {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("storing object")]
    struct Wrapped(#[source] io::Error);

    #[test]
    fn many_failed_puts_make_one_summary_and_one_trim() {
        let trims = Arc::new(AtomicU32::new(0));
        let faults = {
            let trims = trims.clone();
            Faults::new(
                move || {
                    trims.fetch_add(1, Ordering::Relaxed);
                    0
                },
                || None,
            )
        };
        assert_eq!(faults.summary(), None);
        for _ in 0..787 {
            faults.put_failed(&Wrapped(io::Error::from(io::ErrorKind::StorageFull)));
        }
        assert_eq!(trims.load(Ordering::Relaxed), 1);
        let summary = faults.summary().unwrap();
        assert!(
            summary.starts_with("787 puts could not be stored"),
            "{summary}"
        );
        assert!(summary.contains("storing object: "), "{summary}");
        assert!(summary.contains("free space"), "{summary}");
        assert_eq!(summary.lines().count(), 1);
    }

    #[test]
    fn a_put_that_would_not_fit_makes_room_first_once() {
        let free = Arc::new(AtomicU64::new(10 * MARGIN));
        let looks = Arc::new(AtomicU32::new(0));
        let trims = Arc::new(AtomicU32::new(0));
        let faults = {
            let (free, looks, trims) = (free.clone(), looks.clone(), trims.clone());
            let freed = free.clone();
            Faults::new(
                move || {
                    trims.fetch_add(1, Ordering::Relaxed);
                    freed.fetch_add(100 * MARGIN, Ordering::Relaxed);
                    100 * MARGIN
                },
                move || {
                    looks.fetch_add(1, Ordering::Relaxed);
                    Some(free.load(Ordering::Relaxed))
                },
            )
        };
        // Small puts that fit: free space is looked at once, not per put.
        for _ in 0..4 {
            faults.before_put(1000);
        }
        assert_eq!(looks.load(Ordering::Relaxed), 1);
        assert_eq!(trims.load(Ordering::Relaxed), 0);
        assert_eq!(faults.summary(), None);
        // The disk filled up meanwhile; a body that would not fit.
        free.store(MARGIN, Ordering::Relaxed);
        faults.before_put(9 * MARGIN);
        assert_eq!(trims.load(Ordering::Relaxed), 1);
        // Once per go command, whatever comes next.
        faults.before_put(1000 * MARGIN);
        faults.put_failed(&io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(trims.load(Ordering::Relaxed), 1);
        let summary = faults.summary().unwrap();
        assert!(summary.contains("trimmed 100.0 MiB"), "{summary}");
    }

    #[test]
    fn room_made_without_a_failed_put_is_still_told() {
        let faults = Faults::new(|| 5 * MARGIN, || Some(0));
        faults.before_put(1);
        let summary = faults.summary().unwrap();
        assert!(
            summary.starts_with("the store's disk was full; trimmed 5.0 MiB"),
            "{summary}"
        );
    }

    #[test]
    fn other_failures_are_summarized_without_a_trim() {
        let faults = Faults::new(|| panic!("not full"), || None);
        faults.put_failed(&io::Error::from(io::ErrorKind::ReadOnlyFilesystem));
        let summary = faults.summary().unwrap();
        assert!(summary.starts_with("1 put could not"), "{summary}");
        assert!(!summary.contains("free space"), "{summary}");
        assert!(summary.contains("make the store writable"), "{summary}");
    }
}
