//! The daemon's limit on open files, raised to what the system allows.
//!
//! A daemon holds a connection per peer, the bodies it serves and fetches
//! at once, the store's watch and the helpers' sockets. The soft limit
//! many systems still start a process with (1,024) is a leftover of
//! `select(2)`, which warren does not use; the hard limit is what the
//! administrator allows. Go's own runtime raises its soft limit the same
//! way. A limit that cannot be read or raised is left as it is: running
//! out of files later fails one request, with its error, not the daemon.

#[cfg(unix)]
use rustix::process::{Resource, getrlimit, setrlimit};

/// Raises the soft limit on open files to the hard limit; the soft limit
/// in force afterwards (`None`: unlimited, or not known).
#[cfg(unix)]
pub(crate) fn raise() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!("cannot raise the limit on open files from {soft}: {error}");
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(not(unix))]
pub(crate) fn raise() -> Option<u64> {
    None
}
