//! Two daemons sharing over loopback: mDNS off, B dials A as a static peer.
//! For what needs two real daemons but no LAN of namespaces.
#![expect(
    clippy::disallowed_methods,
    reason = "the test writes users' config files, and damages a store as bit rot would"
)]

mod sandbox;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandbox::{Daemon, Sandbox, action, close, expect_miss, expect_stored, get, put, random_bytes};

fn stdout(sandbox: &Sandbox, args: &[&str]) -> String {
    let output = sandbox.run(args);
    assert!(
        output.status.success(),
        "warren {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn peer_id(sandbox: &Sandbox) -> String {
    stdout(sandbox, &["id"])
        .lines()
        .find_map(|line| line.strip_prefix("peer ID: "))
        .expect("a peer ID line")
        .trim()
        .to_owned()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn write_config(sandbox: &Sandbox, text: &str) {
    std::fs::write(sandbox.root().join("home/.config/warren/config.toml"), text).unwrap();
}

fn wait(what: &str, mut done: impl FnMut() -> bool, log: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waiting for {what}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A (listening on a loopback port) and B (dialing it), each on the
/// other's allowlist; A's store is filled by `fill` before either daemon
/// starts. Returns the sandboxes and A's peer ID.
fn pair(fill: impl FnOnce(&Sandbox)) -> (Sandbox, Sandbox, String) {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    for sandbox in [&a, &b] {
        stdout(sandbox, &["init"]);
    }
    let (a_id, b_id) = (peer_id(&a), peer_id(&b));
    stdout(&a, &["peers", "add", &b_id]);
    stdout(&b, &["peers", "add", &a_id]);
    let port = free_port();
    let common = "[share]\nenabled = true\nautostart = false\nmdns = false\n";
    write_config(
        &a,
        &format!("{common}listen = [\"/ip4/127.0.0.1/tcp/{port}\"]\n"),
    );
    write_config(
        &b,
        &format!(
            "{common}listen = [\"/ip4/127.0.0.1/tcp/0\"]\n\
             static-peers = [\"/ip4/127.0.0.1/tcp/{port}/p2p/{a_id}\"]\n"
        ),
    );
    fill(&a);
    (a, b, a_id)
}

/// Waits until B is connected to A and A's summary names `entries`.
fn wait_for_summary(b: &Sandbox, b_daemon: &Daemon, a_id: &str, entries: u64) {
    wait(
        "B to hold A's summary",
        || {
            let stats: serde_json::Value =
                serde_json::from_slice(&b.run(&["stats", "--json"]).stdout).unwrap_or_default();
            stats["peers"].as_array().is_some_and(|peers| {
                peers.iter().any(|peer| {
                    peer["id"] == a_id
                        && peer["connected"] == true
                        && peer["holds"].as_u64().is_some_and(|n| n >= entries)
                })
            })
        },
        || b_daemon.log(),
    );
}

/// The object file of `body` in `sandbox`'s store.
fn object_path(sandbox: &Sandbox, body: &[u8]) -> PathBuf {
    let hex = hex::encode(sandbox::sha256(body));
    sandbox
        .store()
        .join("v1/objects")
        .join(&hex[..2])
        .join(&hex)
}

/// Changes one byte of the file at `path`, keeping its size: bit rot, or
/// another program writing into the store.
fn damage(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// A body damaged on disk, of the same size, passes the store's read
/// check (size only). Serving hashes it and refuses it; the daemon must
/// then also drop the entry, or the local `go` keeps getting the damaged
/// body and every peer's request warns again (SECURITY.md, "What the local
/// store trusts, and why"). Small bodies are hashed before they are
/// answered, big ones as they stream.
#[test]
fn a_body_damaged_on_disk_is_dropped_from_the_store_when_served_and_told_once() {
    let small: Vec<Vec<u8>> = (0..4).map(|n| random_bytes(100, n)).collect();
    let big = random_bytes(300 << 10, 9);
    let actions: Vec<[u8; 32]> = (0..5).map(action).collect();
    let (a, b, a_id) = pair(|a| {
        let mut helper = a.spawn();
        helper.handshake();
        for (n, body) in small.iter().chain([&big]).enumerate() {
            expect_stored(&helper.call(&put(n as i64 + 1, &actions[n], body)));
        }
        helper.call(&close(9));
        helper.wait_exit(Duration::from_secs(10));
        for body in small.iter().chain([&big]) {
            damage(&object_path(a, body));
        }
    });
    let a_daemon = Daemon::start(&a);
    let b_daemon = Daemon::start(&b);
    wait_for_summary(&b, &b_daemon, &a_id, actions.len() as u64);

    // B asks A for each small one, three times over: a miss every time.
    for round in 0..3 {
        for action in &actions[..4] {
            let lookup = format!(r#"{{"op":"get","action":"{}"}}"#, hex::encode(action));
            let answer = sandbox::ask_daemon(&b, &lookup, Duration::from_secs(10));
            assert!(
                answer.as_deref().is_some_and(|a| a.contains("missed")),
                "round {round}: {answer:?}"
            );
        }
    }
    // The big one is cut off before its last piece (B then leaves A out
    // for a while, so it comes last).
    let lookup = format!(r#"{{"op":"get","action":"{}"}}"#, hex::encode(actions[4]));
    let answer = sandbox::ask_daemon(&b, &lookup, Duration::from_secs(10));
    assert!(
        answer.as_deref().is_some_and(|a| a.contains("missed")),
        "{answer:?}"
    );

    // A's store no longer holds them: its own `go` misses and builds.
    for action in &actions {
        wait(
            "A to drop the damaged entry",
            || !a.entry_path(action).exists(),
            || a_daemon.log(),
        );
    }
    for body in small.iter().chain([&big]) {
        assert!(!object_path(&a, body).exists(), "a damaged object stayed");
    }
    let mut helper = a.spawn();
    helper.handshake();
    for (n, action) in actions.iter().enumerate() {
        expect_miss(&helper.call(&get(n as i64 + 1, action)));
    }
    helper.call(&close(9));
    helper.wait_exit(Duration::from_secs(10));

    // Thirteen requests for damaged bodies, one warning.
    let warnings = a_daemon.warnings();
    assert_eq!(
        warnings.len(),
        1,
        "A's warnings:\n{}\nB's log:\n{}",
        warnings.join("\n"),
        b_daemon.log()
    );
    assert!(warnings[0].contains("damaged"), "{}", warnings[0]);
}
