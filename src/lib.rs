//! warren: share Go build caches with trusted coworkers.
//!
//! The `go` command starts `warren` as its `GOCACHEPROG` and talks JSON lines
//! with it. With no configuration warren is a fast, safe local cache; peer
//! sharing plugs in behind [`helper::tiered::RemoteTier`]. The folders show
//! the processes: what runs in the helper that `go` starts, what runs in
//! the long-lived daemon, what the two say to each other, and what every
//! warren process shares (`docs/architecture.md` follows a `get` and a
//! `put` through them).
//!
//! Layout:
//! - [`helper`]: the process `go` starts, one per `go` command: its
//!   startup, the GOCACHEPROG protocol and session, where an entry comes
//!   from (the local store, then the daemon), and its notes for `warren
//!   trace`.
//! - [`daemon`]: the long-lived process, one per user and store: the
//!   peer-to-peer node's store, the helper socket's server, replication,
//!   metrics, and the store's index of put order.
//! - [`ipc`]: the contract between the two: requests and answers on the
//!   helper socket, the daemon's status, a trace's lookups.
//! - [`cli`]: the command line (the binary is a thin wrapper around
//!   [`cli::run`]): the subcommands, and which process to be.
//! - [`config`]: defaults, config file, `WARREN_*` variables and flags;
//!   this machine's identity and the allowlist.
//! - [`store`]: the local disk store (layout, entries, verified writes,
//!   trim) and its lifetime counters, used by every process.
//! - [`fsutil`]: atomic file writes and cross-process locks.
//! - [`logging`]: quiet-by-default diagnostics on stderr.
//! - [`ids`]: `ActionId` and `OutputId` (from `warren_p2p`, shared by both
//!   crates).

// The library exists for the binary (and its tests): only what `main.rs`
// uses is public, so the compiler reports what nothing uses. Its docs are
// read with `--document-private-items`, where these links resolve.
#![allow(
    rustdoc::private_intra_doc_links,
    reason = "the crate's docs are built with --document-private-items"
)]

pub mod cli;
mod config;
mod daemon;
mod fsutil;
#[cfg(feature = "fuzz")]
#[doc(hidden)]
pub mod fuzz;
mod helper;
mod ipc;
pub mod logging;
mod store;

use warren_p2p::ids;
