//! One fetch per body: who fetches a body now, and how others wait for it.
//!
//! A lookup and read-ahead may want the same body at once, and `go` asks
//! for entries right behind read-ahead. Each fetch holds a [`Claim`] on its
//! action; a second fetcher gets the [`Landing`] instead and waits: for the
//! first bytes at most as long as its own fetch would, then, once they come,
//! for the fetch to end, whose own stall bounds hold. A lookup that waits
//! marks the fetch urgent, so that with `max-rate` its chunks go before
//! read-ahead's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::ids::ActionId;

/// The fetches under way, by action.
#[derive(Default)]
pub(super) struct Fetching(Mutex<HashMap<ActionId, Landing>>);

/// What a second fetcher of a body waits on.
#[derive(Clone)]
pub(super) struct Landing {
    started: watch::Receiver<bool>,
    urgent: Arc<AtomicBool>,
}

/// A fetch under way; dropping it ends the fetch for those waiting on it.
pub(super) struct Claim {
    fetching: Arc<Fetching>,
    action: ActionId,
    started: watch::Sender<bool>,
    urgent: Arc<AtomicBool>,
}

/// How a wait on another's fetch ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Waited {
    /// The fetch ended (whether its body landed is the store's to say).
    Ended,
    /// Its first bytes did not come within the wait's deadline.
    NotStarted,
}

impl Fetching {
    /// Claims the fetch of `action`, or the landing of the one under way.
    pub(super) fn claim(self: &Arc<Self>, action: ActionId) -> Result<Claim, Landing> {
        let mut fetching = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(landing) = fetching.get(&action) {
            return Err(landing.clone());
        }
        let (started, receiver) = watch::channel(false);
        let urgent = Arc::new(AtomicBool::new(false));
        fetching.insert(
            action,
            Landing {
                started: receiver,
                urgent: urgent.clone(),
            },
        );
        Ok(Claim {
            fetching: self.clone(),
            action,
            started,
            urgent,
        })
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Claim {
    /// The body's first bytes came.
    pub(super) fn started(&self) {
        self.started.send_replace(true);
    }

    /// Whether a lookup waits on this fetch.
    pub(super) fn urgent(&self) -> bool {
        self.urgent.load(Ordering::Relaxed)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.fetching
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.action);
    }
}

impl Landing {
    /// Waits for the fetch: at most `first_bytes` for it to start, then
    /// until it ends. Marks it urgent meanwhile.
    pub(super) async fn wait(mut self, first_bytes: Duration) -> Waited {
        self.urgent.store(true, Ordering::Relaxed);
        match tokio::time::timeout(first_bytes, self.started.wait_for(|started| *started)).await {
            Err(_) => return Waited::NotStarted,
            Ok(Err(_)) => return Waited::Ended,
            Ok(Ok(_)) => {}
        }
        while self.started.changed().await.is_ok() {}
        Waited::Ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second claim waits; the claim's end frees the action, and a fetch
    /// that never starts costs a waiter only its deadline.
    #[tokio::test(start_paused = true)]
    async fn a_second_fetcher_waits_for_the_first() {
        let fetching = Arc::new(Fetching::default());
        let action = ActionId::from_bytes([1; 32]);
        let claim = fetching.claim(action).ok().unwrap();
        let Err(landing) = fetching.claim(action) else {
            panic!("claimed twice");
        };
        assert!(!claim.urgent());
        assert_eq!(
            landing.clone().wait(Duration::from_secs(2)).await,
            Waited::NotStarted
        );
        assert!(claim.urgent(), "a waiting lookup makes the fetch urgent");
        claim.started();
        let waiting = tokio::spawn(landing.wait(Duration::from_secs(2)));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiting.is_finished(), "a started fetch is waited for");
        drop(claim);
        assert_eq!(waiting.await.unwrap(), Waited::Ended);
        assert_eq!(fetching.len(), 0);
        assert!(fetching.claim(action).is_ok());
    }
}
