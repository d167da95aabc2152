//! Faults of the store while serving one `go` command, told once.
//!
//! A full disk fails every put. A warning for each flooded the terminal
//! (787 lines for a `go build std`), where `go`'s own cache prints nothing
//! and `go` builds anyway. So a failed put is logged at debug level and
//! counted here, and the helper prints one warning when `go` is done
//! ([`Faults::summary`]): how many puts failed, the first reason, and what
//! to do. (A put the store refuses outright, read-only say, is still given
//! a scratch file by the session, so `go` has its file.) The first put
//! that finds the disk full also starts a trim
//! ([`Faults::new`]'s `on_full`), which frees what was not used within
//! the trim grace, so later puts may fit.

use std::error::Error;
use std::io;
use std::sync::Mutex;

/// See the module docs.
pub(crate) struct Faults {
    inner: Mutex<Inner>,
    /// Called once, on the first put that found the disk full.
    on_full: Box<dyn Fn() + Send + Sync>,
}

#[derive(Default)]
struct Inner {
    failed_puts: u64,
    first: Option<String>,
    full: bool,
    read_only: bool,
}

impl Faults {
    pub(crate) fn new(on_full: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            inner: Mutex::default(),
            on_full: Box::new(on_full),
        }
    }

    /// A put that could not be stored, and why.
    pub(crate) fn put_failed(&self, why: &(dyn Error + 'static)) {
        let message = crate::logging::chain(why);
        tracing::debug!("put failed: {message}");
        let first_full = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.failed_puts += 1;
            inner.first.get_or_insert(message);
            let first_full = has_kind(why, FULL) && !inner.full;
            inner.full |= first_full;
            inner.read_only |= has_kind(why, READ_ONLY);
            first_full
        };
        if first_full {
            (self.on_full)();
        }
    }

    /// The one warning for the whole `go` command, if any put failed.
    pub(crate) fn summary(&self) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let first = inner.first.as_deref()?;
        let puts = match inner.failed_puts {
            1 => "1 put".to_owned(),
            n => format!("{n} puts"),
        };
        let fix = if inner.full {
            "; free space on the store's disk, or lower max-size (a trim was started)"
        } else if inner.read_only {
            "; make the store writable again, or point WARREN_DIR at another directory"
        } else {
            ""
        };
        Some(format!(
            "{puts} could not be stored, so go will build those again next time (first: {first}){fix}"
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
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("storing object")]
    struct Wrapped(#[source] io::Error);

    #[test]
    fn many_failed_puts_make_one_summary_and_one_trim() {
        let trims = Arc::new(AtomicU32::new(0));
        let faults = {
            let trims = trims.clone();
            Faults::new(move || {
                trims.fetch_add(1, Ordering::Relaxed);
            })
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
    fn other_failures_are_summarized_without_a_trim() {
        let faults = Faults::new(|| panic!("not full"));
        faults.put_failed(&io::Error::from(io::ErrorKind::ReadOnlyFilesystem));
        let summary = faults.summary().unwrap();
        assert!(summary.starts_with("1 put could not"), "{summary}");
        assert!(!summary.contains("free space"), "{summary}");
        assert!(summary.contains("make the store writable"), "{summary}");
    }
}
