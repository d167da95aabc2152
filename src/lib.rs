//! warren: share Go build caches with trusted coworkers.
//!
//! The `go` command starts `warren` as its `GOCACHEPROG` and talks JSON lines
//! with it. With no configuration warren is a fast, safe local cache; peer
//! sharing (daemon, mDNS, libp2p) plugs in behind [`tiered::RemoteTier`].
//!
//! Layout:
//! - [`cli`]: command-line interface and subcommands (the binary is a thin
//!   wrapper around [`cli::run`]).
//! - [`config`]: defaults, config file, `WARREN_*` variables and flags.
//! - [`mod@env`]: the names of those variables.
//! - [`ids`]: `ActionId` and `OutputId`.
//! - [`protocol`]: the GOCACHEPROG messages and their streaming decoder.
//! - [`server`]: the request loop for one `go` command.
//! - [`tiered`]: lookups as a chain of tiers (local store, then remote).
//! - [`store`]: the local disk store: layout, verified writes, trimming.
//! - [`lock`]: cross-process file locks with a bounded wait.
//! - [`stats`]: lifetime counters.
//! - [`identity`]: this machine's peer key.
//! - [`trust`]: the allowlist of coworkers.
//! - [`ipc`]: the socket between helpers and the daemon.
//! - [`remote`]: the helper's remote tier, which asks the daemon.
//! - [`daemon`]: `warren daemon`, which shares the store with peers.
//! - [`put_order`]: the order entries were put in, for read-ahead hints.
//! - [`logging`]: quiet-by-default diagnostics on stderr.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod env;
pub mod identity;
pub use warren_p2p::ids;
pub mod ipc;
pub mod lock;
pub mod logging;
pub mod protocol;
pub mod put_order;
pub mod remote;
pub mod server;
pub mod stats;
pub mod store;
pub mod tiered;
pub mod trust;
