//! The store as a running daemon keeps it: a store swapped under it.
//!
//! Daemons run with mDNS off and listen on loopback only
//! ([`support::DAEMON_CONFIG`]).

mod support;

use std::fs;
use std::time::Duration;

use support::{DAEMON_CONFIG, Daemon, Sandbox};

/// Whoever can write a directory above the store (or the store, once it
/// was opened up) can move it away and put one of their own in its place;
/// warren works by path, so the daemon would serve and fill theirs. It
/// notices within seconds and stops, saying why.
#[test]
fn a_daemon_stops_when_its_store_is_swapped() {
    let sandbox = Sandbox::new();
    sandbox.init_with_config(DAEMON_CONFIG);
    let mut daemon = Daemon::start(&sandbox);
    let store = sandbox.store();
    fs::rename(&store, sandbox.root().join("moved")).unwrap();
    support::private_dir(&store);
    let status = daemon
        .exit_within(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the daemon kept serving a swapped store:\n{}", daemon.log()));
    assert!(!status.success(), "{status}");
    let log = daemon.log();
    assert!(
        log.contains("no longer the directory warren opened"),
        "{log}"
    );
}
