//! The team bucket: a third tier after the local store and the LAN peers,
//! an S3-compatible bucket in which every ActionID→OutputID mapping is
//! signed by the builder that made it and read only through this
//! machine's allowlist.
//!
//! - [`manifest`]: the signed batch of one `go` command's mappings, its
//!   format and bounds;
//! - [`keys`]: the names of bodies and manifests under the url's prefix.
//! - [`client`]: what the tier needs of an object store, OpenDAL behind it.
#![allow(
    dead_code,
    reason = "the daemon's bucket tier uses these; until it is wired only tests and the fuzz target do"
)]

pub(crate) mod client;
pub(crate) mod keys;
pub(crate) mod manifest;
