//! The store as the daemon and helpers keep it: entries of peers no
//! longer trusted, and a store swapped under a running daemon.
//!
//! Daemons run with mDNS off and listen on loopback only
//! ([`sandbox::DAEMON_CONFIG`]).

mod sandbox;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandbox::{DAEMON_CONFIG, Daemon, Sandbox, action, expect_hit, expect_miss, get, sha256};

/// A new peer ID, as `warren id` prints it.
fn new_peer() -> String {
    libp2p_identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string()
}

/// Body of test entry `n`.
fn body(n: u64) -> Vec<u8> {
    format!("the body of entry {n}").into_bytes()
}

/// Places entry `n` in the store as a daemon would have stored it, from
/// `source` (`local`, or a peer ID); returns the entry's path.
fn plant(sandbox: &Sandbox, n: u64, source: &str) -> PathBuf {
    let body = body(n);
    let output = hex::encode(sha256(&body));
    let object = sandbox
        .store()
        .join("v1/objects")
        .join(&output[..2])
        .join(&output);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let entry = sandbox.entry_path(&action(n));
    #[expect(
        clippy::disallowed_methods,
        reason = "planting store files, as a daemon would"
    )]
    {
        fs::write(&object, &body).unwrap();
        fs::write(
            &entry,
            format!("v1 {output} {} {nanos} {source}\n", body.len()),
        )
        .unwrap();
    }
    entry
}

/// The allowlist as a user leaves it after editing it by hand.
fn edit_allowlist(sandbox: &Sandbox, text: &str) {
    let path = sandbox.root().join("home/.config/warren/peers.toml");
    assert!(path.exists(), "warren peers add wrote it first");
    #[expect(clippy::disallowed_methods, reason = "a hand edit of the user's file")]
    fs::write(path, text).unwrap();
}

/// Entries 1 to 4: from a peer removed from `peers.toml` by hand, from one
/// made serve-only by hand, from one still pulled from, and built here.
/// Returns their entry paths.
fn entries_of_peers_trusted_then_not(sandbox: &Sandbox) -> [PathBuf; 4] {
    let (removed, demoted, kept) = (new_peer(), new_peer(), new_peer());
    for peer in [&removed, &demoted, &kept] {
        let added = sandbox.run(&["peers", "add", peer]);
        assert!(added.status.success(), "{added:?}");
    }
    let entries = [
        plant(sandbox, 1, &removed),
        plant(sandbox, 2, &demoted),
        plant(sandbox, 3, &kept),
        plant(sandbox, 4, "local"),
    ];
    edit_allowlist(
        sandbox,
        &format!(
            "[[peer]]\nid = \"{demoted}\"\nrole = \"serve-only\"\n\n[[peer]]\nid = \"{kept}\"\n"
        ),
    );
    entries
}

/// A peer removed from `peers.toml` by hand (or made serve-only) while no
/// daemon ran: the daemon purges its entries when it starts, before it
/// answers anything (SECURITY.md, "Identities and the allowlist").
#[test]
fn a_daemon_purges_peers_removed_while_it_was_stopped_before_answering() {
    let sandbox = Sandbox::new();
    sandbox.init_with_config(DAEMON_CONFIG);
    let [removed, demoted, kept, local] = entries_of_peers_trusted_then_not(&sandbox);
    let _daemon = Daemon::start(&sandbox);
    // Its socket accepts: it may answer a lookup now.
    assert!(!removed.exists(), "the removed peer's entry is still there");
    assert!(
        !demoted.exists(),
        "the serve-only peer's entry is still there"
    );
    assert!(
        kept.exists() && local.exists(),
        "a trusted entry was purged"
    );
}

/// With no daemon to purge them, a helper never hands `go` an entry from a
/// peer that is no longer pulled from: it reads the allowlist itself.
#[test]
fn a_helper_without_a_daemon_never_serves_entries_of_untrusted_peers() {
    let sandbox = Sandbox::new();
    sandbox.init_with_config(DAEMON_CONFIG);
    entries_of_peers_trusted_then_not(&sandbox);
    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_miss(&helper.call(&get(1, &action(1))));
    expect_miss(&helper.call(&get(2, &action(2))));
    expect_hit(&helper.call(&get(3, &action(3))), &body(3));
    expect_hit(&helper.call(&get(4, &action(4))), &body(4));
    helper.close(5);
}

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
    sandbox::private_dir(&store);
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
