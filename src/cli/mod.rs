//! The command line: `warren` alone is the GOCACHEPROG helper
//! ([`crate::helper`]), `warren daemon` the daemon ([`crate::daemon`]);
//! the other subcommands inspect and maintain the store, the allowlist and
//! the daemon.
//!
//! Output of subcommands goes to stdout through an explicit writer (the
//! helper's stdout belongs to the protocol, so nothing here uses `print!`).

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use bytesize::ByteSize;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::ipc;
use crate::ipc::status::DaemonStatus;
use crate::store::{DiskStore, TrimReport};

mod bucket;
mod config;
mod doctor;
mod share;
mod stats;
mod trace;

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
    /// Finish the recovery after a crash: verify what was written since, then clear its markers
    #[command(hide = true)]
    Recover,
    /// Show the effective settings and where they came from
    Config,
    /// Create this machine's identity key and a config that turns sharing on
    Init,
    /// Print this machine's peer ID and the line a coworker runs to trust it
    Id,
    /// Print a new identity (peer ID and secret) for a CI machine, without
    /// touching this machine's: keep the secret as the job's
    /// WARREN_IDENTITY, and allowlist the peer ID where its builds are wanted
    Keygen,
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
    /// The team bucket ([bucket]): its status, waiting for uploads, garbage collection
    Bucket {
        /// Print JSON instead of text (status)
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<BucketCommand>,
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

#[derive(Debug, Subcommand)]
pub enum BucketCommand {
    /// Manifests read, signers trusted and not, hits, bytes, uploads pending
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Wait until every pending upload is in the bucket (for CI jobs that
    /// end after the build); non-zero if some are not, or failed
    Sync {
        /// How long to wait, e.g. 5min
        #[arg(long, value_name = "DURATION", default_value = "10min", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Remove manifests older than a window, and the bodies no remaining
    /// manifest names (a body uploaded within the last hour is kept)
    Gc {
        /// e.g. 30days
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Say what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
    },
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
        None => crate::helper::run(&config),
        Some(Command::Stats { json }) => stats::show_stats(&config, json, &mut out),
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
            // What a crash left is checked first, and told apart from
            // damage the crash does not explain.
            let recovered = store
                .recover(true)
                .context("recovering from a crash")?
                .unwrap_or_default();
            if recovered.markers > 0 {
                writeln!(out, "{}", recovered_line(&recovered))?;
            }
            let report = store.verify().context("verifying the store")?;
            writeln!(
                out,
                "{} verified, {} corrupt and removed",
                files(report.kept_files, report.kept_bytes),
                files(report.removed_files, report.removed_bytes)
            )?;
            let checks = crate::daemon::consistency::Census::of(&store)
                .context("checking the store's entries")?;
            writeln!(out, "{checks}")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Recover) => {
            // Started by a helper in the background; skips if another runs.
            let store = open_store(&config)?;
            if let Some(recovered) = store.recover(false).context("recovering from a crash")?
                && recovered.markers > 0
            {
                writeln!(out, "{}", recovered_line(&recovered))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Init) => share::init(&config, &mut out),
        Some(Command::Id) => share::id(&config, &mut out),
        Some(Command::Keygen) => share::keygen(&mut out),
        Some(Command::Peers { json, action }) => share::peers(&config, action, json, &mut out),
        Some(Command::Daemon) => crate::daemon::run(&config),
        Some(Command::Config) => self::config::show_config(&config, &mut out),
        Some(Command::Doctor { .. }) => unreachable!("handled above"),
        Some(Command::Bucket { json, action }) => match action {
            None => bucket::status(&config, json, &mut out),
            Some(BucketCommand::Status { json: own }) => {
                bucket::status(&config, json || own, &mut out)
            }
            Some(BucketCommand::Sync { timeout }) => bucket::sync(&config, timeout, &mut out),
            Some(BucketCommand::Gc {
                older_than,
                dry_run,
            }) => bucket::gc(&config, older_than, dry_run, &mut out),
        },
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

/// What a recovery after a crash did, in a line.
fn recovered_line(recovered: &crate::store::Recovered) -> String {
    format!(
        "recovery after a crash: {} file{} changed since verified, {} damaged and removed",
        recovered.checked,
        if recovered.checked == 1 { "" } else { "s" },
        recovered.removed_objects + recovered.removed_entries
    )
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
