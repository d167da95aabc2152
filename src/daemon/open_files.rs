//! The daemon's limit on open files, raised to what the system allows.
//!
//! A daemon holds a connection per peer, the bodies it serves and fetches
//! at once, the store's watch and the helpers' sockets. The soft limit
//! many systems still start a process with (1,024 on Linux, 256 on macOS)
//! is a leftover of `select(2)`, which warren does not use; the hard limit
//! is what the administrator allows. Go's runtime raises its own soft
//! limit the same way. A limit that cannot be read or raised is left as it
//! is: running out of files later fails one request, with its error, not
//! the daemon. The daemon starts no programs, so none inherits the raised
//! limit.

#[cfg(unix)]
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Most files a macOS process may have open whatever its hard limit says
/// (`OPEN_MAX`; a hard limit of "unlimited" is common there, and asking
/// for more than the kernel's per-process maximum fails).
#[cfg(target_vendor = "apple")]
const CAP: Option<u64> = Some(10_240);
#[cfg(all(unix, not(target_vendor = "apple")))]
const CAP: Option<u64> = None;

/// Raises the soft limit on open files to the hard limit (on macOS at most
/// `OPEN_MAX`); the soft limit in force afterwards (`None`: unlimited).
#[cfg(unix)]
pub(crate) fn raise() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let target = match (limit.maximum, CAP) {
        (Some(hard), Some(cap)) => Some(hard.min(cap)),
        (hard, cap) => hard.or(cap),
    };
    if let (Some(soft), Some(target)) = (limit.current, target)
        && soft < target
    {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
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
