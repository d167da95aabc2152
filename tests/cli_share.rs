//! `warren init`, `id` and `peers` as a user runs them (no daemon needed).

mod support;

use std::os::unix::fs::PermissionsExt;

use support::Sandbox;

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

fn peer_id(text: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix("peer ID: "))
        .expect("a peer ID line")
        .to_owned()
}

#[test]
fn init_creates_a_private_key_once_and_id_repeats_it() {
    let sandbox = Sandbox::new();
    let first = stdout(&sandbox, &["init"]);
    let key = sandbox.root().join("home/.config/warren/identity.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let config =
        std::fs::read_to_string(sandbox.root().join("home/.config/warren/config.toml")).unwrap();
    assert!(config.contains("enabled = true"), "{config}");
    let id = peer_id(&first);
    assert!(
        first.contains(&format!("warren peers add {id} --name ")),
        "{first}"
    );

    let again = stdout(&sandbox, &["init"]);
    assert!(again.contains("already exists"), "{again}");
    assert_eq!(peer_id(&again), id, "init replaced the key");
    assert_eq!(peer_id(&stdout(&sandbox, &["id"])), id);
}

#[test]
fn id_without_init_says_what_to_do() {
    let sandbox = Sandbox::new();
    let output = sandbox.run(&["id"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warren: error:") && stderr.contains("warren init"),
        "{stderr}"
    );
}

#[test]
fn peers_add_list_remove() {
    let sandbox = Sandbox::new();
    let other = Sandbox::new();
    let coworker = peer_id(&stdout(&other, &["init"]));

    assert!(stdout(&sandbox, &["peers"]).contains("no peers"));
    stdout(&sandbox, &["peers", "add", &coworker, "--name", "bob"]);
    let listing = stdout(&sandbox, &["peers", "list"]);
    assert!(listing.contains("daemon: not running"), "{listing}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("bob") && l.contains(&coworker) && l.contains("offline")),
        "{listing}"
    );
    assert!(stdout(&sandbox, &["peers", "add", &coworker]).contains("already trusted"));

    let bad = sandbox.run(&["peers", "add", "not-a-peer-id"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a peer ID"));

    stdout(&sandbox, &["peers", "remove", "bob"]);
    assert!(stdout(&sandbox, &["peers"]).contains("no peers"));
    let missing = sandbox.run(&["peers", "remove", "bob"]);
    assert!(!missing.status.success());
}

#[test]
fn config_shows_every_setting_with_share_ones_after_init() {
    let sandbox = Sandbox::new();
    let before = stdout(&sandbox, &["config"]);
    for line in [
        "enabled:         off",
        "lookup-deadline: 150ms",
        "max-body-size:   4.0 GiB",
        "read-ahead:      64",
        "compression:     auto",
        "listen:          /ip4/0.0.0.0/tcp/7311 /ip6/::/tcp/7311",
    ] {
        assert!(before.lines().any(|l| l == line), "{line:?} in\n{before}");
    }
    assert!(before.ends_with('\n'));
    stdout(&sandbox, &["init"]);
    let after = stdout(&sandbox, &["config"]);
    assert!(after.lines().any(|l| l == "enabled:         on"), "{after}");
    assert!(after.lines().any(|l| l == "autostart:       on"), "{after}");
}
