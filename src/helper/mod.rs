//! The GOCACHEPROG helper: what runs in the process `go` starts, one per
//! `go` command, from its start ([`run`]) to `close`.
//!
//! - [`protocol`]: the messages, field by field, and their streaming
//!   decoder;
//! - [`session`]: one conversation with `go`, from the capabilities line to
//!   `close`;
//! - [`faults`]: a machine's faults (a full disk), counted and told once;
//! - [`tiered`]: where an entry comes from (the local store, then the
//!   remote tier) and where a put goes;
//! - [`daemon_tier`]: the remote tier, which asks the daemon;
//! - [`trusted`]: which entries' sources may reach `go`, by the allowlist;
//! - [`trace`]: the notes of each lookup, reported to the daemon at the end.

mod daemon_tier;
mod faults;
pub(crate) mod protocol;
mod session;
pub(crate) mod tiered;
pub(crate) mod trace;
mod trusted;

use std::fs::File;
use std::io::{self, BufReader};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt as _;
use std::process::{Command as Process, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::Context as _;

use self::daemon_tier::DaemonTier;
use self::faults::Faults;
use self::tiered::MultiLevelStorage;
use self::trace::Recorder;
use self::trusted::TrustedSources;
use crate::config::Config;
use crate::store::stats::{self, Counters};
use crate::store::{self, DiskStore};

/// Reading stdin in big steps keeps large put bodies flowing.
const STDIN_BUFFER: usize = 256 * 1024;

/// Serves the `go` command that started this process, on stdin and stdout.
pub(crate) fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let store = Arc::new(
        DiskStore::open(&config.store.dir)
            .with_context(|| format!("opening the store at {}", config.store.dir.display()))?,
    );
    if store.trim_due() {
        spawn_background_trim(config);
    }
    // A crash left files that lookups verify until a sweep has seen them
    // all (see `store::recovery`).
    if store.recovery_pending() {
        spawn_background_recovery(config);
    }
    // Own copies of fds 0 and 1: a large read buffer for bodies, and no
    // line buffering on the way out (the writer flushes in batches).
    let input = File::from(
        io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stdin")?,
    );
    let output = File::from(
        io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stdout")?,
    );
    let counters = Arc::new(Counters::default());
    // The team bucket is the daemon's too: with one, the daemon is asked
    // even when LAN sharing is off, and may take its deadline more.
    let daemon = (config.share.enabled || config.bucket.on()).then(|| {
        let mut deadline = config.share.lookup_deadline;
        if config.bucket.on() {
            deadline += config.bucket.deadline + crate::daemon::bucket::read::STALL;
        }
        let mut tier = DaemonTier::new(config.socket_path(), deadline);
        if config.share.autostart {
            tier = tier.with_autostart(daemon_args(config));
        }
        Arc::new(tier)
    });
    // Never an entry from a peer no longer pulled from, daemon or not.
    let trusted = Arc::new(TrustedSources::new(config.allowlist_path()));
    let storage = match &daemon {
        Some(tier) => MultiLevelStorage::new(store.clone(), Box::new(tier.clone())),
        None => MultiLevelStorage::local_only(store.clone()),
    };
    let storage = Arc::new(storage.with_trusted({
        let trusted = trusted.clone();
        Box::new(move |source| trusted.admits(source))
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // A full disk: trim at once to make room (see `faults`).
    let faults = Arc::new(Faults::new(
        {
            let (store, policy) = (store.clone(), config.store.trim_policy());
            move || make_room(&store, policy)
        },
        {
            let root = store.root().to_path_buf();
            move || crate::fsutil::free_space(&root)
        },
    ));
    // Lookups are noted for `warren trace` only if a daemon runs to keep them.
    let mut trace = Recorder::new(config.socket_path().exists());
    if config.bucket.on() && config.bucket.write {
        trace = trace.with_puts();
    }
    let trace = Arc::new(trace);
    let end = runtime.block_on(session::serve(
        storage,
        counters.clone(),
        trace.clone(),
        faults.clone(),
        BufReader::with_capacity(STDIN_BUFFER, input),
        output,
    ))?;
    tracing::debug!("session ended: {end:?}");
    // For `warren trace`, kept by the daemon if one runs.
    runtime.block_on(trace.report(&config.socket_path()));
    // For the team bucket's uploads, done by the daemon in the background.
    runtime.block_on(trace.report_puts(&config.socket_path()));
    // At most one warning per fault and go command (see `faults`).
    let daemon_summary = daemon.as_ref().and_then(|tier| tier.summary());
    let bucket_summary = daemon.as_ref().and_then(|tier| tier.bucket_summary());
    let summary = faults.summary();
    if let Err(e) = stats::record(store.root(), &counters.snapshot(store.repaired())) {
        let message = crate::logging::chain(&e);
        if summary.is_some() {
            tracing::debug!("could not record statistics: {message}");
        } else {
            tracing::warn!("could not record statistics: {message}");
        }
    }
    for summary in (summary.into_iter())
        .chain(daemon_summary)
        .chain(bucket_summary)
        .chain(trusted.fault())
    {
        tracing::warn!("{summary}");
    }
    // `go` is done with us: it waits only for stdout to close, and whoever
    // reads go's stderr through a pipe waits for every process that holds
    // it. Both are let go before the group commit, so no build waits on
    // the disk (see `store::group_commit`).
    release_stdio();
    if let Err(e) = store.sync() {
        // Nobody to tell now; the marker stays for the next process to
        // recover from.
        tracing::debug!("syncing the store: {}", crate::logging::chain(&e));
    }
    Ok(ExitCode::SUCCESS)
}

/// Points stdout and stderr at `/dev/null`, closing what `go` gave us.
fn release_stdio() {
    let released = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .and_then(|null| {
            rustix::stdio::dup2_stdout(&null)?;
            rustix::stdio::dup2_stderr(&null)?;
            Ok(())
        });
    if let Err(e) = released {
        tracing::debug!("letting go of stdout and stderr: {e}");
    }
}

/// Trims the store to half its size (least recently used first, never a
/// file used within the trim grace), for a disk that is full; the bytes
/// freed. One walk of the store, on a thread of its own (see
/// [`faults`]).
fn make_room(store: &DiskStore, policy: store::TrimPolicy) -> u64 {
    match store.make_room(policy) {
        Ok(report) => report.map_or(0, |report| report.removed_bytes),
        Err(e) => {
            tracing::debug!("trimming to make room: {}", crate::logging::chain(&e));
            0
        }
    }
}

/// The arguments that start a daemon with this helper's settings.
fn daemon_args(config: &Config) -> Vec<String> {
    let mut args = vec!["--dir".to_owned(), config.store.dir.display().to_string()];
    if let Some(file) = &config.file {
        args.extend(["--config".to_owned(), file.display().to_string()]);
    }
    args.push("daemon".to_owned());
    args
}

/// Starts `warren trim --auto` detached, so trimming never slows a build.
fn spawn_background_trim(config: &Config) {
    spawn_detached(
        config,
        &[
            "--max-size",
            &config.store.max_size.as_u64().to_string(),
            "--max-age",
            &format!("{}s", config.store.max_age.as_secs()),
            "trim",
            "--auto",
        ],
        "trim",
    );
}

/// Starts `warren recover` detached: the sweep after a crash, by one
/// process at a time (it skips if another runs), while the build goes on.
fn spawn_background_recovery(config: &Config) {
    spawn_detached(config, &["recover"], "recovery");
}

/// Starts this warren with `args` on this store, detached from `go`.
fn spawn_detached(config: &Config, args: &[&str], what: &str) {
    let spawned = std::env::current_exe().and_then(|exe| {
        Process::new(exe)
            .arg("--dir")
            .arg(&config.store.dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    });
    if let Err(e) = spawned {
        tracing::debug!("could not start a background {what}: {e}");
    }
}
