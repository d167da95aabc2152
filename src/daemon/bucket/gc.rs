//! `warren bucket gc --older-than D`: removes manifests signed more than D
//! ago, then the bodies no remaining manifest names.
//!
//! A body uploaded within [`GRACE`] is kept even if nothing names it yet:
//! a writer uploads its bodies first and its manifest last. A manifest's
//! age is the time in its name (writers name them by when they signed);
//! one that does not verify names nothing, and goes when it is old.
//!
//! With a bucket's own lifecycle rules: expiring `manifests/` after N days
//! is safe (it is this command's first half), and this command then removes
//! the bodies they named. Never expire `objects/` alone by age: a body
//! still named by a recent manifest (an old action rebuilt by nobody
//! since) would go, and readers would miss it until someone builds it
//! again.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::client::{Bucket, Error, read_at_most};
use super::keys;
use super::manifest::{MAX_BYTES, Manifest};
use crate::ids::OutputId;

/// A body this young is kept even if no manifest names it.
pub(crate) const GRACE: Duration = Duration::from_secs(3600);
const LIST_PAGE: usize = 1000;

/// What a gc removed (or, dry, would remove) and kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub manifests_removed: u64,
    pub manifests_kept: u64,
    pub bodies_removed: u64,
    pub bytes_removed: u64,
    pub bodies_kept: u64,
}

/// Every name under `dir`.
async fn list_all(bucket: &dyn Bucket, dir: &str) -> Result<Vec<super::client::Listed>, Error> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = bucket.list(dir, after.as_deref(), LIST_PAGE).await?;
        let done = page.len() < LIST_PAGE;
        after = page.last().map(|listed| listed.name.clone());
        all.extend(page);
        if done || after.is_none() {
            return Ok(all);
        }
    }
}

/// Runs a gc at `now`: manifests older than `older_than` go, then bodies
/// no remaining manifest names and older than [`GRACE`]. With `dry_run`
/// nothing is removed.
pub(crate) async fn gc(
    bucket: &dyn Bucket,
    older_than: Duration,
    now: SystemTime,
    dry_run: bool,
) -> Result<Report, Error> {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let cutoff = now_ms.saturating_sub(older_than.as_millis() as u64);
    let mut report = Report::default();
    let mut named = HashSet::<OutputId>::new();
    for listed in list_all(bucket, keys::MANIFESTS).await? {
        let time = keys::parse_manifest(&listed.name).map_or(0, |(time, _)| time);
        if time < cutoff {
            if !dry_run {
                bucket.delete(&listed.name).await?;
            }
            report.manifests_removed += 1;
            continue;
        }
        report.manifests_kept += 1;
        let Some(body) = bucket.get(&listed.name).await? else {
            continue;
        };
        let Ok(bytes) = read_at_most(body, MAX_BYTES).await else {
            continue;
        };
        if let Ok(manifest) = Manifest::verify(&bytes) {
            named.extend(manifest.entries.iter().map(|entry| entry.output));
        }
    }
    let grace_start = now.checked_sub(GRACE).unwrap_or(UNIX_EPOCH);
    for listed in list_all(bucket, keys::OBJECTS).await? {
        let keep = keys::parse_object(&listed.name)
            .is_some_and(|(output, _)| named.contains(&output))
            || listed
                .modified
                .is_none_or(|modified| modified > grace_start);
        if keep {
            report.bodies_kept += 1;
            continue;
        }
        if !dry_run {
            bucket.delete(&listed.name).await?;
        }
        report.bodies_removed += 1;
        report.bytes_removed += listed.size;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use libp2p_identity::Keypair;

    use futures::future::BoxFuture;

    use super::*;
    use crate::daemon::bucket::client::{Body, Listed, OpendalBucket, Put};
    use crate::daemon::bucket::manifest::Entry;
    use crate::daemon::bucket::read::stored_body;
    use crate::ids::ActionId;

    /// The memory service dates nothing: this one dates each object by a
    /// clock the test sets.
    struct Dated {
        inner: OpendalBucket,
        clock: std::sync::Mutex<u64>,
        times: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    }

    impl Dated {
        fn new() -> Self {
            Self {
                inner: OpendalBucket::memory(),
                clock: Default::default(),
                times: Default::default(),
            }
        }

        fn dated(&self, mut listed: Listed) -> Listed {
            listed.modified = self
                .times
                .lock()
                .unwrap()
                .get(&listed.name)
                .map(|&ms| at(ms));
            listed
        }
    }

    impl Bucket for Dated {
        fn list<'a>(
            &'a self,
            dir: &'a str,
            after: Option<&'a str>,
            max: usize,
        ) -> BoxFuture<'a, Result<Vec<Listed>, Error>> {
            Box::pin(async move {
                let listed = self.inner.list(dir, after, max).await?;
                Ok(listed.into_iter().map(|l| self.dated(l)).collect())
            })
        }
        fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Body>, Error>> {
            self.inner.get(name)
        }
        fn put_if_absent<'a>(
            &'a self,
            name: &'a str,
            body: Vec<u8>,
        ) -> BoxFuture<'a, Result<Put, Error>> {
            let now = *self.clock.lock().unwrap();
            self.times
                .lock()
                .unwrap()
                .entry(name.to_owned())
                .or_insert(now);
            self.inner.put_if_absent(name, body)
        }
        fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
            self.inner.delete(name)
        }
        fn head<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Listed>, Error>> {
            Box::pin(async move { Ok(self.inner.head(name).await?.map(|l| self.dated(l))) })
        }
    }

    async fn publish(bucket: &Dated, time_ms: u64, bodies: &[&[u8]]) {
        *bucket.clock.lock().unwrap() = time_ms;
        let key = Keypair::ed25519_from_bytes([1; 32]).unwrap();
        let mut entries = Vec::new();
        for (n, body) in bodies.iter().enumerate() {
            let output = OutputId::of(body);
            let (name, bytes) = stored_body(&output, body);
            bucket.put_if_absent(&name, bytes).await.unwrap();
            entries.push(Entry {
                action: ActionId::from_bytes([n as u8; 32]),
                output,
                size: body.len() as u64,
                time_ms,
            });
        }
        let manifest = Manifest {
            signer: key.public().to_peer_id(),
            time_ms,
            entries,
        };
        let name = keys::manifest(time_ms, &manifest.signer, time_ms);
        bucket
            .put_if_absent(&name, manifest.sign(&key).unwrap())
            .await
            .unwrap();
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// gc keeps what recent manifests name (a body an old and a recent
    /// manifest share included), and a body within the grace that nothing
    /// names yet; it removes old manifests and the bodies only they named.
    #[tokio::test]
    async fn gc_keeps_what_recent_manifests_name_and_what_is_within_the_grace() {
        let bucket = Dated::new();
        let day = 24 * 3600 * 1000;
        let now = 100 * day;
        let week = Duration::from_millis(7 * day);
        publish(&bucket, now - 10 * day, &[b"old only", b"shared"]).await;
        publish(&bucket, now - day, &[b"recent", b"shared"]).await;
        let dry = gc(&bucket, week, at(now), true).await.unwrap();
        assert_eq!((dry.manifests_removed, dry.bodies_removed), (1, 1));
        assert_eq!(
            list_all(&bucket, keys::MANIFESTS).await.unwrap().len(),
            2,
            "dry run removed"
        );

        let report = gc(&bucket, week, at(now), false).await.unwrap();
        assert_eq!(report, dry);
        let names: Vec<_> = (list_all(&bucket, keys::OBJECTS).await.unwrap().into_iter())
            .map(|listed| listed.name)
            .collect();
        assert_eq!(names.len(), 2);
        for kept in [&b"recent"[..], b"shared"] {
            assert!(
                names.contains(&keys::object(&OutputId::of(kept), false)),
                "{names:?}"
            );
        }

        // Within the grace, a body nothing names is kept; after it, not.
        *bucket.clock.lock().unwrap() = now;
        let (name, bytes) = stored_body(&OutputId::of(b"uploading"), b"uploading");
        bucket.put_if_absent(&name, bytes).await.unwrap();
        let soon = at(now) + GRACE - Duration::from_secs(1);
        assert_eq!(
            gc(&bucket, week, soon, false).await.unwrap().bodies_removed,
            0
        );
        assert!(bucket.head(&name).await.unwrap().is_some());
        let later = at(now) + GRACE + Duration::from_secs(1);
        assert_eq!(
            gc(&bucket, week, later, false)
                .await
                .unwrap()
                .bodies_removed,
            1
        );
    }
}
