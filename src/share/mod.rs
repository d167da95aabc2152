//! Sharing with coworkers: off until configured.
//!
//! The helper cannot serve peers (`go` stops it at `close`), so a
//! long-lived daemon per user and store owns the peer-to-peer node:
//!
//! - [`daemon`]: `warren daemon`, which wires the node, the helper socket
//!   and the allowlist together; [`node_store`]: the store as the node sees
//!   it (serving, verified fetched bodies, hints, summaries), with the
//!   [`consistency`] checks Go's own records allow, the [`ledger`] of
//!   what was built here that agreement consults, and the [`disk_floor`]
//!   of free space fetched bodies leave;
//! - [`ipc`]: the Unix socket between helpers and the daemon, and
//!   [`status`]: the daemon's typed answer to `status`;
//! - [`remote`]: the helper's remote tier, which asks the daemon;
//! - [`replicate`]: fetching coworkers' new entries in the background, if
//!   configured;
//! - [`metrics`]: the daemon's counters for Prometheus, if configured;
//!   [`quiet`]: its warnings, each fault once in a while with a count;
//!   [`accept`]: what its listeners do when accepting fails;
//! - [`identity`] and [`trust`]: this machine's key and the allowlist (and
//!   which entries' sources a helper trusts).

pub(crate) mod accept;
pub(crate) mod consistency;
pub(crate) mod daemon;
pub(crate) mod disk_floor;
pub(crate) mod identity;
pub(crate) mod ipc;
pub(crate) mod ledger;
pub(crate) mod metrics;
pub(crate) mod node_store;
pub(crate) mod quiet;
pub(crate) mod remote;
pub(crate) mod replicate;
pub(crate) mod status;
pub(crate) mod trust;
