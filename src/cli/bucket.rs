//! `warren bucket`: the team bucket's status (from the daemon), `sync`
//! (wait for the daemon's uploads), and `gc` (run here, against the
//! bucket, with this machine's credentials).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytesize::ByteSize;

use super::ask_daemon;
use crate::config::Config;
use crate::config::trust::Allowlist;
use crate::daemon::bucket::client::{OpendalBucket, S3Location};
use crate::ipc;
use crate::ipc::status::BucketStatus;

/// `warren bucket status`.
pub(super) fn status(
    config: &Config,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let Some(url) = &config.bucket.url else {
        writeln!(
            out,
            "no team bucket is configured (set `url` under [bucket])"
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    let status = match ask_daemon(config, &ipc::Request::BucketStatus, super::STATUS_TIMEOUT) {
        Ok(ipc::Response::Bucket(Some(status))) => Some(*status),
        Ok(ipc::Response::Bucket(None)) => anyhow::bail!(
            "the running daemon has no bucket: it started before [bucket] was set; restart it"
        ),
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) if is_absent(&e) => None,
        Err(e) => return Err(e),
    };
    if json {
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({
                "url": url.to_string(),
                "daemon": status,
            }),
        )?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "bucket: {url}")?;
    let Some(status) = status else {
        writeln!(
            out,
            "daemon: not running (a build starts it with autostart)"
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    show(config, &status, out)?;
    Ok(ExitCode::SUCCESS)
}

/// The bucket as `warren peers` shows it, below the LAN's peers: the
/// daemon's status of it, if a bucket is configured and the daemon runs.
pub(super) fn for_peers(config: &Config) -> Option<BucketStatus> {
    config.bucket.url.as_ref()?;
    match ask_daemon(config, &ipc::Request::BucketStatus, super::STATUS_TIMEOUT) {
        Ok(ipc::Response::Bucket(Some(status))) => Some(*status),
        _ => None,
    }
}

/// One line of `warren peers` for the bucket.
pub(super) fn peers_line(status: &BucketStatus) -> String {
    format!(
        "bucket {}: {} manifests from {} trusted signer{} ({} not trusted), {} hits (+{} read ahead), {} fetched; see `warren bucket`",
        status.url,
        status.manifests_held,
        status.trusted.len(),
        if status.trusted.len() == 1 { "" } else { "s" },
        status.untrusted.len(),
        status.hits,
        status.read_ahead,
        ByteSize(status.bytes_fetched).display().iec(),
    )
}

fn show(config: &Config, status: &BucketStatus, out: &mut impl Write) -> std::io::Result<()> {
    let allowlist = Allowlist::load(&config.allowlist_path()).unwrap_or_default();
    let name = |id: &str| {
        id.parse()
            .ok()
            .and_then(|peer| allowlist.name_of(&peer).map(str::to_owned))
            .unwrap_or_else(|| id.to_owned())
    };
    writeln!(
        out,
        "manifests: {} read, {} refused, {} held ({} mappings)",
        status.manifests_read,
        status.manifests_refused,
        status.manifests_held,
        status.mappings_held
    )?;
    let trusted: Vec<_> = (status.trusted.iter())
        .map(|(id, n)| format!("{} ({n})", name(id)))
        .collect();
    writeln!(out, "signers trusted: {}", list(&trusted))?;
    let untrusted: Vec<_> = status.untrusted.iter().map(|id| name(id)).collect();
    writeln!(out, "signers not trusted (ignored): {}", list(&untrusted))?;
    writeln!(
        out,
        "hits: {} (+{} read ahead), {} fetched, {} failure{}",
        status.hits,
        status.read_ahead,
        ByteSize(status.bytes_fetched).display().iec(),
        status.failures,
        if status.failures == 1 { "" } else { "s" }
    )?;
    if status.write {
        writeln!(
            out,
            "uploads: {} pending, {} bodies ({}) uploaded, {} already there, {} manifests, {} failed",
            status.uploads_pending,
            status.bodies_uploaded,
            ByteSize(status.bytes_uploaded).display().iec(),
            status.bodies_present,
            status.manifests_written,
            status.upload_failures
        )?;
        if let Some(error) = &status.last_upload_error {
            writeln!(out, "last upload error: {error}")?;
        }
    } else {
        writeln!(out, "uploads: off (write = false)")?;
    }
    Ok(())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn is_absent(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ipc::Error>()
        .is_some_and(ipc::Error::is_absent)
}

/// `warren bucket sync`: exit 0 once every pending upload is in the
/// bucket; non-zero if some are still pending at `timeout`, or failed.
pub(super) fn sync(
    config: &Config,
    timeout: Duration,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    if !config.bucket.on() || !config.bucket.write {
        writeln!(
            out,
            "nothing to sync: this machine does not write to a bucket (write = false)"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let request = ipc::Request::BucketSync {
        timeout_ms: timeout.as_millis() as u64,
    };
    let status = match ask_daemon(config, &request, timeout + super::STATUS_TIMEOUT) {
        Ok(ipc::Response::Bucket(Some(status))) => *status,
        Ok(ipc::Response::Bucket(None)) => anyhow::bail!(
            "the running daemon has no bucket: it started before [bucket] was set; restart it"
        ),
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) if is_absent(&e) => {
            writeln!(out, "no daemon is running: no uploads are pending")?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    if status.uploads_pending > 0 {
        anyhow::bail!(
            "{} build{} still uploading after {}",
            status.uploads_pending,
            if status.uploads_pending == 1 { "" } else { "s" },
            humantime::format_duration(timeout)
        );
    }
    if status.upload_failures > 0 {
        anyhow::bail!(
            "{} upload{} to the bucket failed (last: {})",
            status.upload_failures,
            if status.upload_failures == 1 { "" } else { "s" },
            status.last_upload_error.as_deref().unwrap_or("unknown")
        );
    }
    writeln!(
        out,
        "in the bucket: {} bodies uploaded ({}), {} already there, {} manifests",
        status.bodies_uploaded,
        ByteSize(status.bytes_uploaded).display().iec(),
        status.bodies_present,
        status.manifests_written
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `warren bucket gc`.
pub(super) fn gc(
    config: &Config,
    older_than: Duration,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let Some(location) = S3Location::from_config(&config.bucket) else {
        anyhow::bail!("no team bucket is configured (set `url` under [bucket])");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(async {
        let bucket = OpendalBucket::s3(&location)?;
        crate::daemon::bucket::gc::gc(&bucket, older_than, SystemTime::now(), dry_run).await
    });
    let report = report.context("collecting garbage in the bucket")?;
    let verb = if dry_run { "would remove" } else { "removed" };
    writeln!(
        out,
        "{verb} {} manifest{} older than {} and {} bod{} ({}) no remaining manifest names; \
         kept {} manifests and {} bodies",
        report.manifests_removed,
        if report.manifests_removed == 1 {
            ""
        } else {
            "s"
        },
        humantime::format_duration(older_than),
        report.bodies_removed,
        if report.bodies_removed == 1 {
            "y"
        } else {
            "ies"
        },
        ByteSize(report.bytes_removed).display().iec(),
        report.manifests_kept,
        report.bodies_kept
    )?;
    Ok(ExitCode::SUCCESS)
}
