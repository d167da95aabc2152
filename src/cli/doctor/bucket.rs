//! The doctor's Bucket section: whether the team bucket answers these
//! credentials (list, read, and, with `write = true`, write: a probe
//! object put and deleted under the prefix), and whose manifests it holds,
//! trusted or not, by name.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Report;
use crate::config::Config;
use crate::config::trust::Allowlist;
use crate::daemon::bucket::client::{Bucket, Error, OpendalBucket, S3Location, read_at_most};
use crate::daemon::bucket::keys;

/// How long each request of the doctor's may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Manifests listed to count their signers.
const LISTED: usize = 10_000;

pub(super) fn check_bucket(config: &Config, report: &mut Report) {
    let Some(location) = S3Location::from_config(&config.bucket) else {
        return;
    };
    report.section("Bucket");
    let url = config
        .bucket
        .url
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let endpoint = location
        .endpoint
        .clone()
        .unwrap_or_else(|| "AWS".to_owned());
    report.ok(format!("{url} at {endpoint} (region {})", location.region));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return report.problem("cannot start the async runtime", Some(e.to_string()), None);
        }
    };
    let bucket = match OpendalBucket::s3(&location) {
        Ok(bucket) => bucket,
        Err(e) => {
            return report.problem(
                "the bucket's settings are not usable",
                Some(crate::logging::chain(&e)),
                Some("check url, endpoint and region under [bucket]".into()),
            );
        }
    };
    runtime.block_on(checks(config, &bucket, report));
}

async fn timed<T>(request: impl Future<Output = Result<T, Error>>) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(crate::logging::chain(&e)),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

fn credentials_fix() -> Option<String> {
    Some(
        "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (warren reads the \
         standard AWS environment and files), and check the endpoint"
            .into(),
    )
}

async fn checks(config: &Config, bucket: &OpendalBucket, report: &mut Report) {
    let listed = match timed(bucket.list(keys::MANIFESTS, None, LISTED)).await {
        Ok(listed) => listed,
        Err(cause) => {
            return report.problem(
                "cannot list the bucket's manifests",
                Some(cause),
                credentials_fix(),
            );
        }
    };
    report.ok(format!(
        "reachable, and these credentials can list it ({} manifest{})",
        listed.len(),
        if listed.len() == 1 { "" } else { "s" }
    ));
    if let Some(newest) = listed.last() {
        let read = async {
            match bucket.get(&newest.name).await? {
                Some(body) => Ok(
                    read_at_most(body, crate::daemon::bucket::manifest::MAX_BYTES)
                        .await
                        .is_ok(),
                ),
                None => Ok(false),
            }
        };
        match timed(read).await {
            Ok(_) => report.ok("these credentials can read it"),
            Err(cause) => report.problem("cannot read the bucket", Some(cause), credentials_fix()),
        }
    }
    signers(config, &listed, report);
    // The daemon, which reads the bucket, runs with an identity (and
    // signs with it what it uploads).
    if let Err(e) = config.identity() {
        report.problem(
            "the daemon has no identity to run (and sign uploads) with",
            Some(crate::logging::chain(&e)),
            Some("`warren init`, or WARREN_IDENTITY from `warren keygen`".into()),
        );
    }
    if config.bucket.write {
        let probe = keys::probe(std::process::id());
        let wrote = async {
            bucket
                .put_if_absent(&probe, b"warren doctor".to_vec())
                .await?;
            bucket.delete(&probe).await
        };
        match timed(wrote).await {
            Ok(()) => report.ok("these credentials can write it (write = true)"),
            Err(cause) => report.problem(
                "write = true, but these credentials cannot write to the bucket",
                Some(cause),
                Some("give them write access to the prefix, or set write = false".into()),
            ),
        }
    }
}

/// The signers of the manifests listed, trusted (pulled from) or not.
fn signers(config: &Config, listed: &[crate::daemon::bucket::client::Listed], report: &mut Report) {
    let allowlist = Allowlist::load(&config.allowlist_path()).unwrap_or_default();
    let pulled = allowlist.sharing().pull;
    let mut trusted = BTreeMap::<String, usize>::new();
    let mut untrusted = BTreeMap::<String, usize>::new();
    for (_, signer) in listed.iter().filter_map(|l| keys::parse_manifest(&l.name)) {
        let name = allowlist
            .name_of(&signer)
            .map_or_else(|| signer.to_string(), str::to_owned);
        let side = if pulled.contains(&signer) {
            &mut trusted
        } else {
            &mut untrusted
        };
        *side.entry(name).or_default() += 1;
    }
    let named = |signers: &BTreeMap<String, usize>| {
        (signers.iter())
            .map(|(name, n)| format!("{name} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if trusted.is_empty() && !listed.is_empty() {
        report.warning(
            "no manifest in the bucket is signed by a peer you pull from",
            None,
            Some("warren peers add <the writer's peer ID> --name NAME".into()),
        );
    } else if !trusted.is_empty() {
        report.ok(format!(
            "manifests by signers you trust: {}",
            named(&trusted)
        ));
    }
    if !untrusted.is_empty() {
        report.ok(format!(
            "manifests by signers you do not trust (ignored): {}",
            named(&untrusted)
        ));
    }
}
