//! A bucket for the tier's unit tests: OpenDAL's memory service, with the
//! faults a test turns on (gets that hang or come late, writes refused or
//! slow), counting gets and the writes under way at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;

use super::client::{Body, Bucket, Error, Listed, OpendalBucket, Put};

pub(crate) struct Faulty {
    pub inner: OpendalBucket,
    /// Gets asked for.
    pub gets: AtomicUsize,
    /// Gets never answer.
    pub hang: AtomicBool,
    /// Each get answers this many milliseconds late.
    pub late_ms: AtomicU64,
    /// Writes are refused (403).
    pub deny_writes: AtomicBool,
    /// Each write takes this many milliseconds.
    pub write_ms: AtomicU64,
    /// Writes under way now, and the most ever at once.
    pub writing: AtomicUsize,
    pub most_writing: AtomicUsize,
}

impl Faulty {
    /// An empty bucket with every fault off.
    pub(crate) fn new() -> Self {
        Self {
            inner: OpendalBucket::memory(),
            gets: AtomicUsize::new(0),
            hang: AtomicBool::new(false),
            late_ms: AtomicU64::new(0),
            deny_writes: AtomicBool::new(false),
            write_ms: AtomicU64::new(0),
            writing: AtomicUsize::new(0),
            most_writing: AtomicUsize::new(0),
        }
    }
}

/// Waits `ms` milliseconds, if any.
async fn after(ms: &AtomicU64) {
    let ms = ms.load(Ordering::Relaxed);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

impl Bucket for Faulty {
    fn list<'a>(
        &'a self,
        dir: &'a str,
        after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Listed>, Error>> {
        self.inner.list(dir, after, max)
    }
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Body>, Error>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        if self.hang.load(Ordering::Relaxed) {
            return Box::pin(futures::future::pending());
        }
        Box::pin(async move {
            after(&self.late_ms).await;
            self.inner.get(name).await
        })
    }
    fn put_if_absent<'a>(
        &'a self,
        name: &'a str,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<Put, Error>> {
        Box::pin(async move {
            if self.deny_writes.load(Ordering::Relaxed) {
                return Err(Error::Denied {
                    op: "writing",
                    name: name.to_owned(),
                    source: "403 AccessDenied".into(),
                });
            }
            let now = self.writing.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_writing.fetch_max(now, Ordering::SeqCst);
            after(&self.write_ms).await;
            self.writing.fetch_sub(1, Ordering::SeqCst);
            self.inner.put_if_absent(name, body).await
        })
    }
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.inner.delete(name)
    }
    fn head<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Listed>, Error>> {
        self.inner.head(name)
    }
}
