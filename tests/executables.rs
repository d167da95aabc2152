//! Linked executables between two real daemons on loopback (mDNS off, B
//! dials A as a static peer): a coworker's test binary stays out of
//! read-ahead and replication above `[share] read-ahead-executables-max`,
//! and a build that asks for it still gets it.

mod sandbox;

use std::time::Duration;

use sandbox::{DAEMON_CONFIG, Daemon, Sandbox, action, close, expect_stored, put, random_bytes};

/// Generous for a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

/// B's limit on executables fetched ahead, and the size of A's test binary
/// above it.
const LIMIT: &str = "1MiB";
const BINARY: usize = 2 << 20;

/// A body that starts as a linked ELF executable (`ET_EXEC`), `len` bytes.
fn test_binary(len: usize) -> Vec<u8> {
    let mut body = vec![0x7f, b'E', b'L', b'F', 2, 1, 1];
    body.resize(16, 0);
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&random_bytes(len - body.len(), 77));
    body
}

/// A and B, each on the other's allowlist, B dialing A with `b_extra` in
/// its `[share]` table; A's helper puts `bodies` under `action(1..)`, in
/// that order and in one burst, before either daemon starts.
fn pair(b_extra: &str, bodies: &[&[u8]]) -> (Sandbox, Sandbox, String) {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    a.init_with_config(DAEMON_CONFIG);
    b.init_with_config(DAEMON_CONFIG);
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    for (sandbox, other) in [(&a, &b_id), (&b, &a_id)] {
        let added = sandbox.run(&["peers", "add", other]);
        assert!(added.status.success(), "{added:?}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let common = "[share]\nenabled = true\nautostart = false\nmdns = false\n";
    a.write_config(&format!(
        "{common}listen = [\"/ip4/127.0.0.1/tcp/{port}\"]\n"
    ));
    b.write_config(&format!(
        "{common}listen = [\"/ip4/127.0.0.1/tcp/0\"]\n\
         static-peers = [\"/ip4/127.0.0.1/tcp/{port}/p2p/{a_id}\"]\n{b_extra}"
    ));
    let mut helper = a.spawn();
    helper.handshake();
    for (n, body) in bodies.iter().enumerate() {
        let id = n as i64 + 1;
        expect_stored(&helper.call(&put(id, &action(id as u64), body)));
    }
    helper.call(&close(99));
    helper.wait_exit(Duration::from_secs(10));
    (a, b, a_id)
}

/// `sandbox`'s `warren stats --json`.
fn stats(sandbox: &Sandbox) -> serde_json::Value {
    serde_json::from_slice(&sandbox.run(&["stats", "--json"]).stdout).unwrap_or_default()
}

/// Waits until B is connected to A and holds A's summary of `entries`.
fn wait_for_summary(b: &Sandbox, b_daemon: &Daemon, a_id: &str, entries: u64) {
    let start = std::time::Instant::now();
    loop {
        let stats = stats(b);
        let ready = stats["peers"].as_array().is_some_and(|peers| {
            peers.iter().any(|peer| {
                peer["id"] == a_id
                    && peer["connected"] == true
                    && peer["holds"].as_u64().is_some_and(|n| n >= entries)
            })
        });
        if ready {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "B never held A's summary:\n{}",
            b_daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// B's daemon looks up `n` (as a helper's local miss would): whether it
/// answered with a hit.
fn lookup_hits(b: &Sandbox, n: u64) -> bool {
    let lookup = format!(r#"{{"op":"get","action":"{}"}}"#, hex::encode(action(n)));
    sandbox::ask_daemon(b, &lookup, Duration::from_secs(10))
        .is_some_and(|answer| answer.contains("\"hit\""))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool, log: impl Fn() -> String) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "waiting for {what}:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A coworker's build put a package, its test binary (over B's limit),
/// then another body as big that is no executable. B's lookup of the
/// first brings hints at the other two: the second body is read ahead,
/// the test binary is not; asked for, it is fetched. A's `warren stats`
/// counts the binary as an executable.
#[test]
fn a_big_test_binary_is_not_read_ahead_but_still_fetched() {
    let binary = test_binary(BINARY);
    let other = random_bytes(BINARY, 5);
    let (a, b, a_id) = pair(
        &format!("read-ahead-executables-max = \"{LIMIT}\"\n"),
        &[b"package", &binary, &other],
    );
    let a_store = stats(&a)["store"].clone();
    assert_eq!(a_store["executables"], 1, "{a_store}");
    assert_eq!(a_store["executable_bytes"], BINARY as u64, "{a_store}");

    let _a_daemon = Daemon::start(&a);
    let b_daemon = Daemon::start(&b);
    wait_for_summary(&b, &b_daemon, &a_id, 3);
    assert!(lookup_hits(&b, 1), "{}", b_daemon.log());
    wait_for(
        "B to read the body after the binary ahead",
        || b.entry_path(&action(3)).exists(),
        || b_daemon.log(),
    );
    // Hints are fetched in order, in one batch: had the binary been read
    // ahead, it would have landed first. Give a slow commit time anyway.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !b.entry_path(&action(2)).exists(),
        "the test binary was read ahead"
    );
    assert!(lookup_hits(&b, 2), "{}", b_daemon.log());
    assert!(b.entry_path(&action(2)).exists());
}

/// B replicates all of A's entries: the test binary over its limit is
/// passed over, the rest arrives, and a lookup still brings the binary.
#[test]
fn a_big_test_binary_is_not_replicated_but_still_fetched() {
    let binary = test_binary(BINARY);
    let other = random_bytes(BINARY, 6);
    let (a, b, a_id) = pair(
        &format!("replicate = \"all\"\nread-ahead-executables-max = \"{LIMIT}\"\n"),
        &[&binary, b"package", &other],
    );
    let _a_daemon = Daemon::start(&a);
    let b_daemon = Daemon::start(&b);
    wait_for_summary(&b, &b_daemon, &a_id, 3);
    wait_for(
        "B to replicate the entries after the binary",
        || b.entry_path(&action(2)).exists() && b.entry_path(&action(3)).exists(),
        || b_daemon.log(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !b.entry_path(&action(1)).exists(),
        "the test binary was replicated"
    );
    assert!(lookup_hits(&b, 1), "{}", b_daemon.log());
    assert!(b.entry_path(&action(1)).exists());
}
