//! What the daemon's listeners (the helpers' socket, the metrics port) do
//! when `accept` fails.
//!
//! Most accept errors last: with the process out of file descriptors
//! (EMFILE) or the system out of them (ENFILE), every retry fails until
//! something else closes. Retried every few milliseconds and logged each
//! time, one such fault spun a core and wrote a hundred lines a second. So
//! a failed accept waits, twice as long each time in a row, from
//! [`FIRST`] up to [`LONGEST`], and is told through the daemon's
//! [`Quiet`] table: once per [`crate::daemon::quiet::WINDOW`], with a count.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::daemon::quiet::Quiet;

/// The wait after a first failed accept.
pub(crate) const FIRST: Duration = Duration::from_millis(10);
/// The longest wait between tries: what a helper waits, at worst, once the
/// fault is gone.
pub(crate) const LONGEST: Duration = Duration::from_secs(1);

/// One listener's failed accepts in a row. See the module docs.
#[derive(Debug)]
pub(crate) struct Backoff {
    /// What the listener serves, for the warning ("helper", "metrics").
    what: &'static str,
    quiet: Arc<Quiet>,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(what: &'static str, quiet: Arc<Quiet>) -> Self {
        Self {
            what,
            quiet,
            next: FIRST,
        }
    }

    /// A connection was accepted: the next failure waits [`FIRST`] again.
    pub(crate) fn accepted(&mut self) {
        self.next = FIRST;
    }

    /// Tells of `error` (once in a while) and waits before the next try.
    pub(crate) async fn failed(&mut self, error: &io::Error) {
        let kind = format!("accept {}", self.what);
        match self.quiet.occurred(&kind, tokio::time::Instant::now()) {
            Some(n) => tracing::warn!(
                "cannot accept {} connections ({n} failed since the last warning): {error}; \
                 retrying at most every {:?}",
                self.what,
                LONGEST
            ),
            None => tracing::debug!("accepting a {} connection: {error}", self.what),
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(LONGEST);
    }

    /// The next connection `accept` gives, waiting after each failure as
    /// above; `None` once `shutdown` is cancelled, whether accepting or
    /// waiting.
    pub(crate) async fn next<S, A>(
        &mut self,
        shutdown: &CancellationToken,
        mut accept: impl FnMut() -> A,
    ) -> Option<S>
    where
        A: Future<Output = io::Result<S>>,
    {
        loop {
            let accepted = tokio::select! {
                accepted = accept() => accepted,
                () = shutdown.cancelled() => return None,
            };
            match accepted {
                Ok(stream) => {
                    self.accepted();
                    return Some(stream);
                }
                Err(e) => tokio::select! {
                    () = self.failed(&e) => {}
                    () = shutdown.cancelled() => return None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_wait_longer_up_to_a_bound_and_a_success_resets() {
        let quiet = Arc::new(Quiet::default());
        let mut backoff = Backoff::new("test", quiet.clone());
        let error = io::Error::from_raw_os_error(24); // EMFILE
        let mut waits = Vec::new();
        for _ in 0..10 {
            let start = tokio::time::Instant::now();
            backoff.failed(&error).await;
            waits.push(start.elapsed());
        }
        assert_eq!(waits[0], FIRST);
        assert_eq!(waits[1], FIRST * 2);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), LONGEST);
        // Ten failures were one warning: the next one within the window
        // is not told.
        assert_eq!(
            quiet.occurred("accept test", tokio::time::Instant::now()),
            None
        );
        backoff.accepted();
        let start = tokio::time::Instant::now();
        backoff.failed(&error).await;
        assert_eq!(start.elapsed(), FIRST);
    }
}
