//! The command line: `warren` alone is the GOCACHEPROG helper; subcommands
//! inspect and maintain the store.
//!
//! Output of subcommands goes to stdout through an explicit writer (the
//! helper's stdout belongs to the protocol, so nothing here uses `print!`).

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt as _;
use std::process::{Command as Process, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::Context as _;
use bytesize::ByteSize;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::gocacheprog::faults::Faults;
use crate::gocacheprog::session;
use crate::share::ipc;
use crate::share::remote::DaemonTier;
use crate::share::status::{DaemonStatus, PeerStatus};
use crate::share::trust::TrustedSources;
use crate::stats::{self, Counters};
use crate::store::{self, DiskStore, TrimReport};
use crate::tiered::MultiLevelStorage;
use crate::trace::Recorder;

mod config;
mod doctor;
mod share;
mod trace;

/// Reading stdin in big steps keeps large put bodies flowing.
const STDIN_BUFFER: usize = 256 * 1024;
/// The heading of the options every subcommand takes: listed after a
/// subcommand's own.
const GLOBAL: &str = "Global options";
/// How long `warren peers` and `warren stats` wait for the daemon.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A Go build cache helper (GOCACHEPROG) that shares caches with trusted coworkers.
///
/// Run with no subcommand by the go command: GOCACHEPROG=warren go build ./...
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// The global options of settings (`--dir`, `--config`, `--max-size`,
    /// …): one for each setting declared with a flag.
    #[command(flatten)]
    settings: config::Flags,

    /// More diagnostics on stderr (-v info, -vv debug, -vvv trace); see also WARREN_LOG
    #[arg(short, long, global = true, help_heading = GLOBAL, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show lifetime hit/miss figures and the store's size
    Stats {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Remove files unused for --max-age, then least recently used ones down to --max-size
    Trim {
        /// Only if an automatic trim is due, without waiting for a lock (used by the helper)
        #[arg(long, hide = true)]
        auto: bool,
    },
    /// Remove every cached entry (`go clean -cache` cannot reach warren's store)
    Clean,
    /// Re-hash every stored body and remove any that do not match their OutputID
    Verify,
    /// Show the effective settings and where they came from
    Config,
    /// Create this machine's identity key and a config that turns sharing on
    Init,
    /// Print this machine's peer ID and the line a coworker runs to trust it
    Id,
    /// List, add or remove allowlisted coworkers
    Peers {
        /// Print the list as JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<PeersCommand>,
    },
    /// Run the per-user daemon that shares the store with allowlisted peers
    Daemon,
    /// Check everything sharing depends on; say what is wrong and how to fix it
    Doctor {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Why lookups hit or missed: the last build's, one build's, or one ActionID's
    #[command(visible_alias = "why")]
    Trace {
        /// An ActionID (hex): every recent lookup of it
        action: Option<String>,
        /// A build's number instead of the last build (see --builds)
        #[arg(long, value_name = "N", conflicts_with = "action")]
        build: Option<u64>,
        /// List the builds traced
        #[arg(long, conflicts_with_all = ["action", "build"])]
        builds: bool,
        /// List every lookup, not just the totals
        #[arg(long)]
        lookups: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Allowlisted, discovered and connected peers, with what they served
    List {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Trust a coworker's machine (its `warren id`), or change how
    Add {
        /// The coworker's peer ID (12D3KooW…)
        peer_id: String,
        /// A name to show instead of the ID
        #[arg(long)]
        name: Option<String>,
        /// Which way entries flow [default for a new peer: pull-and-serve]
        #[arg(long)]
        role: Option<RoleArg>,
        /// Serve on what this peer sent us, as if built here (say, for the
        /// team's CI machine); by default only entries built here are served
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        reshare: Option<bool>,
    },
    /// Stop trusting a peer, by ID or name, and purge the entries it sent
    Remove { peer: String },
}

/// `--role` of `warren peers add`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    /// Ask it on a miss, and serve it
    PullAndServe,
    /// Serve it, never ask it (its builds are not wanted here)
    ServeOnly,
    /// Ask it, never serve it
    PullOnly,
}

impl From<RoleArg> for warren_p2p::Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::PullAndServe => Self::PullAndServe,
            RoleArg::ServeOnly => Self::ServeOnly,
            RoleArg::PullOnly => Self::PullOnly,
        }
    }
}

impl Cli {
    /// Parses the process's arguments (exiting on bad ones, as clap does),
    /// noting for `warren config` which settings came from a flag and
    /// which from the environment.
    pub fn from_command_line() -> Self {
        <Self as Parser>::parse()
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(&cli.settings.0).context("loading settings");
    let mut out = io::stdout().lock();
    // The doctor reports a config it cannot read; everything else needs one.
    if let Some(Command::Doctor { json }) = cli.command {
        return doctor::doctor(config, json, &mut out);
    }
    let config = config?;
    match cli.command {
        None => serve(&config),
        Some(Command::Stats { json }) => show_stats(&config, json, &mut out),
        Some(Command::Trim { auto }) => trim(&config, auto, &mut out),
        Some(Command::Clean) => {
            let report = open_store(&config)?.clean().context("cleaning the store")?;
            writeln!(
                out,
                "removed {}",
                files(report.removed_files, report.removed_bytes)
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Verify) => {
            let store = open_store(&config)?;
            let report = store.verify().context("verifying the store")?;
            writeln!(
                out,
                "{} verified, {} corrupt and removed",
                files(report.kept_files, report.kept_bytes),
                files(report.removed_files, report.removed_bytes)
            )?;
            let checks = crate::share::consistency::Census::of(&store)
                .context("checking the store's entries")?;
            writeln!(out, "{checks}")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Init) => share::init(&config, &mut out),
        Some(Command::Id) => share::id(&config, &mut out),
        Some(Command::Peers { json, action }) => share::peers(&config, action, json, &mut out),
        Some(Command::Daemon) => crate::share::daemon::run(&config),
        Some(Command::Config) => self::config::show_config(&config, &mut out),
        Some(Command::Doctor { .. }) => unreachable!("handled above"),
        Some(Command::Trace {
            action,
            build,
            builds,
            lookups,
            json,
        }) => trace::trace(
            &config,
            trace::Query {
                action,
                build,
                builds,
                lookups,
                json,
            },
            &mut out,
        ),
    }
}

fn open_store(config: &Config) -> anyhow::Result<DiskStore> {
    DiskStore::open(&config.store.dir)
        .with_context(|| format!("opening the store at {}", config.store.dir.display()))
}

/// The GOCACHEPROG helper.
fn serve(config: &Config) -> anyhow::Result<ExitCode> {
    let store = Arc::new(open_store(config)?);
    if store.trim_due() {
        spawn_background_trim(config);
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
    let daemon = config.share.enabled.then(|| {
        let mut tier = DaemonTier::new(config.socket_path(), config.share.lookup_deadline);
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
    // A full disk: trim at once to make room (see gocacheprog::faults).
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
    let trace = Arc::new(Recorder::new(config.socket_path().exists()));
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
    // At most one warning per fault and go command (see gocacheprog::faults).
    let daemon_summary = daemon.as_ref().and_then(|tier| tier.summary());
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
        .chain(trusted.fault())
    {
        tracing::warn!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Trims the store to half its size (least recently used first, never a
/// file used within the trim grace), for a disk that is full; the bytes
/// freed. One walk of the store, on a thread of its own (see
/// `gocacheprog::faults`).
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
    let spawned = std::env::current_exe().and_then(|exe| {
        Process::new(exe)
            .arg("--dir")
            .arg(&config.store.dir)
            .arg("--max-size")
            .arg(config.store.max_size.as_u64().to_string())
            .arg("--max-age")
            .arg(format!("{}s", config.store.max_age.as_secs()))
            .args(["trim", "--auto"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    });
    if let Err(e) = spawned {
        tracing::debug!("could not start a background trim: {e}");
    }
}

fn trim(config: &Config, auto: bool, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    if auto && !store.trim_due() {
        return Ok(ExitCode::SUCCESS);
    }
    let report = store
        .trim(config.store.trim_policy(), !auto)
        .context("trimming the store")?;
    match report {
        Some(report) if !auto => {
            let TrimReport {
                removed_files,
                removed_bytes,
                kept_files,
                kept_bytes,
            } = report;
            writeln!(
                out,
                "removed {}, kept {}",
                files(removed_files, removed_bytes),
                files(kept_files, kept_bytes)
            )?;
        }
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Entries held per source, for `warren stats`.
#[derive(Debug, serde::Serialize)]
struct Sources {
    local: store::SourceUsage,
    /// Written by a warren before provenance was recorded.
    unknown: store::SourceUsage,
    peers: Vec<PeerSource>,
}

#[derive(Debug, serde::Serialize)]
struct PeerSource {
    peer: String,
    name: Option<String>,
    #[serde(flatten)]
    usage: store::SourceUsage,
}

impl Sources {
    fn of(config: &Config, store: &DiskStore) -> anyhow::Result<Self> {
        // Names only; an unreadable allowlist leaves them out.
        let allowlist = crate::share::trust::Allowlist::load(&config.allowlist_path()).ok();
        let mut sources = Self {
            local: store::SourceUsage::default(),
            unknown: store::SourceUsage::default(),
            peers: Vec::new(),
        };
        for (source, usage) in store.sources().context("reading the store's entries")? {
            match source {
                store::Source::Local => sources.local = usage,
                store::Source::Unknown => sources.unknown = usage,
                store::Source::Peer(peer) => sources.peers.push(PeerSource {
                    name: (allowlist.as_ref())
                        .and_then(|list| list.name_of(&peer))
                        .map(str::to_owned),
                    peer: peer.to_string(),
                    usage,
                }),
            }
        }
        sources
            .peers
            .sort_by_key(|peer| std::cmp::Reverse(peer.usage.entries));
        Ok(sources)
    }

    /// "1200 built here, 300 from peers (alice 250, 12D3KooW… 50)".
    fn line(&self) -> String {
        let from_peers: u64 = self.peers.iter().map(|peer| peer.usage.entries).sum();
        let mut line = format!("{} built here, {from_peers} from peers", self.local.entries);
        if !self.peers.is_empty() {
            let each: Vec<String> = (self.peers.iter())
                .map(|peer| {
                    let who = peer.name.as_deref().unwrap_or(&peer.peer);
                    format!("{who} {}", peer.usage.entries)
                })
                .collect();
            line += &format!(" ({})", each.join(", "));
        }
        if self.unknown.entries > 0 {
            line += &format!(
                ", {} of unknown source (from an older warren; never served)",
                self.unknown.entries
            );
        }
        line
    }
}

fn show_stats(config: &Config, json: bool, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    let lifetime = stats::load(store.root()).context("reading statistics")?;
    let usage = store.usage().context("measuring the store")?;
    let sources = Sources::of(config, &store)?;
    let peers = daemon_peers(config);
    if json {
        let value = serde_json::json!({
            "dir": store.root(),
            "lifetime": lifetime,
            "store": usage,
            "sources": sources,
            "peers": peers,
            "limits": {
                "max_size": config.store.max_size.as_u64(),
                "max_age_seconds": config.store.max_age.as_secs(),
            },
        });
        serde_json::to_writer_pretty(&mut *out, &value)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let percent = |part: u64| {
        if lifetime.gets == 0 {
            0.0
        } else {
            part as f64 * 100.0 / lifetime.gets as f64
        }
    };
    writeln!(out, "store        {}", store.root().display())?;
    writeln!(
        out,
        "size         {} in {} entries and {} objects (limit {}, unused {})",
        ByteSize(usage.bytes).display().iec(),
        usage.entries,
        usage.objects,
        config.store.max_size.display().iec(),
        humantime::format_duration(config.store.max_age)
    )?;
    writeln!(out, "entries      {}", sources.line())?;
    writeln!(
        out,
        "gets         {} ({} hits = {:.1}%, {} misses = {:.1}%)",
        lifetime.gets,
        lifetime.hits,
        percent(lifetime.hits),
        lifetime.misses,
        percent(lifetime.misses)
    )?;
    writeln!(
        out,
        "hit bytes    {}",
        ByteSize(lifetime.hit_bytes).display().iec()
    )?;
    writeln!(
        out,
        "from peers   {} hits = {:.1}% of gets ({})",
        lifetime.peer_hits,
        percent(lifetime.peer_hits),
        ByteSize(lifetime.peer_hit_bytes).display().iec()
    )?;
    if lifetime.remote_lookups > 0 {
        let waited = std::time::Duration::from_micros(lifetime.remote_wait_us);
        writeln!(
            out,
            "waited       {:.3} s on the daemon, over {} local misses asked of peers ({:.2} ms each)",
            waited.as_secs_f64(),
            lifetime.remote_lookups,
            waited.as_secs_f64() * 1e3 / lifetime.remote_lookups as f64
        )?;
    }
    writeln!(
        out,
        "puts         {} ({})",
        lifetime.puts,
        ByteSize(lifetime.put_bytes).display().iec()
    )?;
    writeln!(out, "errors       {}", lifetime.errors)?;
    writeln!(
        out,
        "repaired     {} damaged files removed",
        lifetime.repaired
    )?;
    if let Some(peers) = &peers {
        writeln!(out, "peers (from the running daemon):")?;
        for peer in peers {
            let bytes = |count: u64| ByteSize(count).display().iec();
            writeln!(out, "  {}", peer.id)?;
            writeln!(
                out,
                "    served    {} hits ({}, {} on the wire)",
                peer.hits_served,
                bytes(peer.bytes_served),
                bytes(peer.wire_bytes_served),
            )?;
            writeln!(
                out,
                "    received  {} hits ({}, {} on the wire), {} read ahead, {} rejected bodies",
                peer.hits_received,
                bytes(peer.bytes_received),
                bytes(peer.wire_bytes_received),
                peer.read_ahead,
                peer.rejected,
            )?;
            if let Some(replication) = &peer.replication {
                writeln!(out, "    replicate {}", replication.describe())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Per-peer figures from the daemon, if one is running for this store.
fn daemon_peers(config: &Config) -> Option<Vec<PeerStatus>> {
    let socket = config.socket_path();
    if !socket.exists() {
        return None;
    }
    daemon_status(config).ok().map(|status| status.peers)
}

/// The running daemon's status, by the socket.
fn daemon_status(config: &Config) -> anyhow::Result<DaemonStatus> {
    match ask_daemon(config, &ipc::Request::Status, STATUS_TIMEOUT)? {
        ipc::Response::Status(status) => Ok(status),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// Sends `request` to the running daemon; an [`ipc::Error`] if there is
/// none (or it does not answer within `timeout`).
fn ask_daemon(
    config: &Config,
    request: &ipc::Request,
    timeout: std::time::Duration,
) -> anyhow::Result<ipc::Response> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(ipc::call(
        &config.socket_path(),
        request,
        STATUS_TIMEOUT,
        timeout,
    ))?)
}

fn files(count: u64, bytes: u64) -> String {
    format!(
        "{count} file{} ({})",
        if count == 1 { "" } else { "s" },
        ByteSize(bytes).display().iec()
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn help(path: &[&str]) -> String {
        let mut command = Cli::command();
        command.build(); // propagates the global options
        for name in path {
            command = command.find_subcommand(name).unwrap().clone();
        }
        command.render_long_help().to_string()
    }

    /// A subcommand's help shows its own options first, and the global
    /// ones once, under their own heading.
    #[test]
    fn subcommand_help_lists_its_own_options_before_the_global_ones() {
        Cli::command().debug_assert();
        let stats = help(&["stats"]);
        let (own, global) = stats.split_once("Global options:").expect(&stats);
        assert!(own.contains("--json"), "{stats}");
        for flag in ["--max-size", "--max-age", "--share", "--dir", "--config"] {
            assert!(
                !own.contains(flag),
                "{flag} among stats' own options:\n{stats}"
            );
            assert!(global.contains(flag), "{flag} missing:\n{stats}");
        }
        let peers = help(&["peers"]);
        let own = peers.split_once("Global options:").expect(&peers).0;
        assert!(!own.contains("--max-size"), "{peers}");
    }
}
