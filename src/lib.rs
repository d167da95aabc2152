//! warren: share Go build caches with trusted coworkers.
//!
//! The `go` command starts `warren` as its `GOCACHEPROG` and talks JSON lines
//! with it. With no configuration warren is a fast, safe local cache; peer
//! sharing plugs in behind [`tiered::RemoteTier`]. The folders follow the
//! processes: what runs in the helper that `go` starts, what runs in the
//! long-lived daemon, and the store both of them use
//! (`docs/architecture.md` follows a `get` and a `put` through them).
//!
//! Layout:
//! - [`gocacheprog`]: the helper, one per `go` command: the protocol's
//!   messages and the session that answers them.
//! - [`tiered`]: where an entry comes from: the local store first, then the
//!   remote tier; where a put goes.
//! - [`store`]: the local disk store (layout, entries, verified writes,
//!   trim) and, for the daemon, its index of put order.
//! - [`share`]: sharing with coworkers: the daemon, the socket to it, the
//!   helper's remote tier, identity and the allowlist.
//! - [`cli`]: the command line (the binary is a thin wrapper around
//!   [`cli::run`]).
//! - [`config`]: defaults, config file, `WARREN_*` variables and flags;
//!   [`mod@env`]: the names of those variables.
//! - [`stats`]: lifetime counters; [`trace`]: what each lookup of a build
//!   did, for `warren trace`.
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
mod env;
mod fsutil;
#[cfg(feature = "fuzz")]
#[doc(hidden)]
pub mod fuzz;
mod gocacheprog;
pub mod logging;
mod share;
mod stats;
mod store;
mod tiered;
mod trace;

use warren_p2p::ids;
