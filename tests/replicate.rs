//! Replication between two real daemons on loopback (mDNS off, each the
//! other's static peer): what `[share]` settings make of it.
#![expect(
    clippy::disallowed_methods,
    reason = "the test writes a user's config file, not store files"
)]

mod sandbox;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sandbox::{Sandbox, action, close, put, random_bytes};

/// A running daemon, killed by PID when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(sandbox: &Sandbox) -> Self {
        let child = sandbox
            .command()
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Self(child);
        let socket = sandbox.store().join("daemon.sock");
        wait(
            || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
            "the daemon's socket",
        );
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait(mut done: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

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

/// A new machine: its sandbox and peer ID.
fn machine() -> (Sandbox, String) {
    let sandbox = Sandbox::new();
    let id = stdout(&sandbox, &["init"])
        .lines()
        .find_map(|line| line.strip_prefix("peer ID: "))
        .expect("a peer ID line")
        .to_owned();
    (sandbox, id)
}

fn write_config(sandbox: &Sandbox, text: &str) {
    std::fs::write(sandbox.root().join("home/.config/warren/config.toml"), text).unwrap();
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `sandbox`'s daemon's view of the peer `id`, from `warren stats --json`.
fn peer(sandbox: &Sandbox, id: &str) -> serde_json::Value {
    let stats: serde_json::Value =
        serde_json::from_str(&stdout(sandbox, &["stats", "--json"])).unwrap();
    (stats["peers"].as_array().unwrap().iter())
        .find(|peer| peer["id"] == id)
        .cloned()
        .unwrap_or_default()
}

/// With agreement on, a body one peer sends is never stored, and a
/// replicated body always comes from one peer: replication would move
/// every body of the peer's catalog only to throw it away. It is off, and
/// `warren config` and `warren doctor` say so; not a byte of a body comes.
#[test]
fn replication_moves_no_bodies_with_agreement_on() {
    let (alice, alice_id) = machine();
    let (bob, bob_id) = machine();
    let (alice_port, bob_port) = (free_port(), free_port());
    let base = "[share]\nenabled = true\nautostart = false\nmdns = false\n";
    write_config(
        &alice,
        &format!("{base}listen = [\"/ip4/127.0.0.1/tcp/{alice_port}\"]\n"),
    );
    write_config(
        &bob,
        &format!(
            "{base}listen = [\"/ip4/127.0.0.1/tcp/{bob_port}\"]\n\
             static-peers = [\"/ip4/127.0.0.1/tcp/{alice_port}/p2p/{alice_id}\"]\n\
             agreement = true\nreplicate = \"all\"\n"
        ),
    );
    stdout(&alice, &["peers", "add", &bob_id, "--name", "bob"]);
    stdout(&bob, &["peers", "add", &alice_id, "--name", "alice"]);

    // Alice built some entries: her catalog lists them.
    let mut helper = alice.spawn();
    helper.handshake();
    let entries: u32 = 8;
    for n in 0..entries {
        helper.call(&put(
            i64::from(n) + 1,
            &action(u64::from(n) + 1),
            &random_bytes(200_000, u64::from(n)),
        ));
    }
    helper.call(&close(100));
    helper.wait_exit(Duration::from_secs(10));

    let _alice_daemon = Daemon::start(&alice);
    let _bob_daemon = Daemon::start(&bob);
    wait(
        || peer(&bob, &alice_id)["holds"] == entries,
        "bob to hold alice's summary of her entries",
    );
    // Replication starts at once; give it time to fetch.
    std::thread::sleep(Duration::from_secs(3));
    let alice_seen = peer(&bob, &alice_id);
    assert_eq!(
        alice_seen["wire_bytes_received"], 0,
        "bodies came from alice, to be thrown away: {alice_seen}"
    );
    assert!(alice_seen.get("replication").is_none(), "{alice_seen}");

    let config = stdout(&bob, &["config"]);
    assert!(
        config
            .lines()
            .any(|l| l == "replicate:       all (off: agreement is on)  (config file)"),
        "{config}"
    );
    let output = bob.run(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let replication: Vec<&serde_json::Value> = (report["checks"].as_array().unwrap().iter())
        .filter(|check| check["section"] == "Replication")
        .collect();
    assert!(
        replication.iter().any(|check| check["status"] == "warning"
            && check["what"] == "`replicate = all` is off: agreement is on"),
        "{replication:?}"
    );
}
