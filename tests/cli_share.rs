//! `warren init`, `id` and `peers` as a user runs them (no daemon needed).

mod sandbox;

use std::os::unix::fs::PermissionsExt;

use sandbox::Sandbox;

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

/// A CI machine has no config directory of its own: `warren keygen`
/// prints a key and its secret without creating anything, and a process
/// given the secret in `WARREN_IDENTITY` (or a key file in
/// `WARREN_IDENTITY_FILE`) is that peer.
#[test]
fn keygen_prints_an_identity_that_warren_identity_brings_along() {
    let sandbox = Sandbox::new();
    let printed = stdout(&sandbox, &["keygen"]);
    assert!(
        !sandbox.root().join("home/.config/warren").exists(),
        "keygen touched this machine's config"
    );
    let id = peer_id(&printed);
    let secret = printed
        .lines()
        .find_map(|line| line.strip_prefix("secret: "))
        .expect("a secret line");
    assert_ne!(peer_id(&stdout(&sandbox, &["keygen"])), id, "keys repeat");

    let output = sandbox
        .command()
        .args(["id"])
        .env("WARREN_IDENTITY", secret)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(peer_id(&String::from_utf8(output.stdout).unwrap()), id);

    // The secret beats the file variable and the config directory's key.
    stdout(&sandbox, &["init"]);
    let other = Sandbox::new();
    stdout(&other, &["init"]);
    let other_key = other.root().join("home/.config/warren/identity.key");
    let output = sandbox
        .command()
        .args(["id"])
        .env("WARREN_IDENTITY_FILE", &other_key)
        .output()
        .unwrap();
    assert_eq!(
        peer_id(&String::from_utf8(output.stdout).unwrap()),
        peer_id(&stdout(&other, &["id"])),
        "WARREN_IDENTITY_FILE is not used"
    );
    let output = sandbox
        .command()
        .args(["id"])
        .env("WARREN_IDENTITY_FILE", &other_key)
        .env("WARREN_IDENTITY", secret)
        .output()
        .unwrap();
    assert_eq!(peer_id(&String::from_utf8(output.stdout).unwrap()), id);

    let output = sandbox
        .command()
        .args(["id"])
        .env("WARREN_IDENTITY", "bm90IGEga2V5")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("WARREN_IDENTITY"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("bm90IGEga2V5"),
        "the secret echoed: {stderr}"
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
    // The same, machine-readable.
    for args in [&["peers", "--json"][..], &["peers", "list", "--json"]] {
        let report: serde_json::Value = serde_json::from_str(&stdout(&sandbox, args)).unwrap();
        assert_eq!(report["daemon"]["running"], false, "{report}");
        assert!(report["daemon"]["error"].is_string(), "{report}");
        assert_eq!(report["built_here"], 0, "{report}");
        let peers = report["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "{report}");
        let bob = &peers[0];
        assert_eq!(bob["id"], coworker.as_str());
        assert_eq!(bob["name"], "bob");
        assert_eq!(bob["allowlisted"], true);
        assert_eq!(bob["role"], "both");
        assert_eq!(bob["state"], "offline");
        assert_eq!(bob["entries"], 0);
        assert!(bob["daemon"].is_null(), "{report}");
    }

    let bad = sandbox.run(&["peers", "add", "not-a-peer-id"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a peer ID"));

    stdout(&sandbox, &["peers", "remove", "bob"]);
    assert!(stdout(&sandbox, &["peers"]).contains("no peers"));
    let missing = sandbox.run(&["peers", "remove", "bob"]);
    assert!(!missing.status.success());
}

/// Roles and re-sharing are set by `peers add`, kept in `peers.toml`, and
/// shown by `warren peers`; removing a peer says how much it purged.
#[test]
fn peers_add_sets_roles_and_resharing() {
    let sandbox = Sandbox::new();
    let (laptop, ci) = (Sandbox::new(), Sandbox::new());
    let laptop = peer_id(&stdout(&laptop, &["init"]));
    let ci = peer_id(&stdout(&ci, &["init"]));
    let role = |name: &str| {
        let listing = stdout(&sandbox, &["peers"]);
        let line = (listing.lines())
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in\n{listing}"))
            .to_owned();
        line.split_whitespace().nth(2).unwrap().to_owned()
    };
    stdout(
        &sandbox,
        &[
            "peers",
            "add",
            &laptop,
            "--name",
            "laptop",
            "--role",
            "serve-only",
        ],
    );
    stdout(
        &sandbox,
        &[
            "peers",
            "add",
            &ci,
            "--name",
            "ci",
            "--role",
            "pull-only",
            "--reshare",
        ],
    );
    assert_eq!(role("laptop"), "serve");
    assert_eq!(role("ci"), "pull");
    let file =
        std::fs::read_to_string(sandbox.root().join("home/.config/warren/peers.toml")).unwrap();
    assert!(
        file.contains("role = \"serve-only\"") && file.contains("reshare = true"),
        "{file}"
    );
    // Changing one field keeps the others.
    stdout(&sandbox, &["peers", "add", &ci, "--role", "pull-and-serve"]);
    assert_eq!(role("ci"), "both");
    let file =
        std::fs::read_to_string(sandbox.root().join("home/.config/warren/peers.toml")).unwrap();
    assert!(
        file.contains("reshare = true") && file.contains("name = \"ci\""),
        "{file}"
    );
    let bad = sandbox.run(&["peers", "add", &ci, "--role", "sometimes"]);
    assert!(!bad.status.success());

    let removed = stdout(&sandbox, &["peers", "remove", "ci"]);
    assert!(removed.contains(&format!("removed {ci}")), "{removed}");
    assert!(removed.contains("purged 0 entries"), "{removed}");
}

#[test]
fn config_shows_every_setting_with_share_ones_after_init() {
    let sandbox = Sandbox::new();
    let before = stdout(&sandbox, &["config"]);
    // Each with where it came from.
    let dir = format!(
        "dir:         {}  (env WARREN_DIR)",
        sandbox.store().display()
    );
    for line in [
        "enabled:         off  (default)",
        "lookup-deadline: 150ms  (default)",
        "max-body-size:   4.0 GiB  (default)",
        "read-ahead:      64  (default)",
        "compression:     auto  (default)",
        "agreement:       false  (default)",
        "listen:          /ip4/0.0.0.0/tcp/7311 /ip6/::/tcp/7311  (default)",
        "max-size:    10.0 GiB  (default)",
        &dir,
    ] {
        assert!(before.lines().any(|l| l == line), "{line:?} in\n{before}");
    }
    assert!(before.ends_with('\n'));
    let flagged = stdout(&sandbox, &["config", "--max-size", "5GiB", "--share", "on"]);
    for line in [
        "max-size:    5.0 GiB  (flag --max-size)",
        "enabled:         on  (flag --share)",
    ] {
        assert!(flagged.lines().any(|l| l == line), "{line:?} in\n{flagged}");
    }
    stdout(&sandbox, &["init"]);
    let after = stdout(&sandbox, &["config"]);
    for line in [
        "enabled:         on  (config file)",
        "autostart:       on  (config file)",
        "compression:     auto  (default)",
    ] {
        assert!(after.lines().any(|l| l == line), "{line:?} in\n{after}");
    }

    // Agreement turns read-ahead off, and says so.
    let file = sandbox.root().join("home/.config/warren/config.toml");
    let config = std::fs::read_to_string(&file).unwrap();
    let config = config.replacen("[share]\n", "[share]\nagreement = true\n", 1);
    #[expect(
        clippy::disallowed_methods,
        reason = "a test writes a plain config file"
    )]
    std::fs::write(&file, config).unwrap();
    let agreeing = stdout(&sandbox, &["config"]);
    for line in [
        "agreement:       true  (config file)",
        "read-ahead:      0 (off: agreement is on)  (default)",
    ] {
        assert!(
            agreeing.lines().any(|l| l == line),
            "{line:?} in\n{agreeing}"
        );
    }
}

/// A bad value stops warren with one message that names the setting and
/// where the value came from: a flag, a variable, or the config file (with
/// its line). `warren doctor` reports the same message instead of stopping.
#[test]
fn a_bad_setting_is_named_with_where_it_came_from() {
    let sandbox = Sandbox::new();
    let stderr = |output: std::process::Output| {
        assert!(!output.status.success(), "a bad value was taken");
        String::from_utf8(output.stderr).unwrap()
    };

    let flagged = stderr(sandbox.run(&["config", "--max-size", "ten gigs"]));
    assert!(
        flagged.contains(r#"invalid max-size "ten gigs" (flag --max-size): "#),
        "{flagged}"
    );

    let mut command = sandbox.command();
    command.args(["config"]).env("WARREN_MAX_AGE", "soon");
    let from_env = stderr(sandbox::run_with_timeout(
        command,
        std::time::Duration::from_secs(30),
    ));
    assert!(
        from_env.contains(r#"invalid max-age "soon" (env WARREN_MAX_AGE): "#),
        "{from_env}"
    );
    let mut command = sandbox.command();
    command.args(["doctor"]).env("WARREN_MAX_AGE", "soon");
    let doctor = sandbox::run_with_timeout(command, std::time::Duration::from_secs(30));
    let doctor = String::from_utf8(doctor.stdout).unwrap();
    assert!(
        doctor.contains(r#"invalid max-age "soon" (env WARREN_MAX_AGE): "#),
        "{doctor}"
    );

    let dir = sandbox.root().join("home/.config/warren");
    std::fs::create_dir_all(&dir).unwrap();
    #[expect(
        clippy::disallowed_methods,
        reason = "a test writes a plain config file"
    )]
    std::fs::write(
        dir.join("config.toml"),
        "[share]\nreplicate-rate = \"512 B/s\"\n",
    )
    .unwrap();
    let in_file = stderr(sandbox.run(&["config"]));
    for part in [
        &format!("parsing config file {}", dir.join("config.toml").display()),
        "replicate-rate = \"512 B/s\"",
        "invalid replicate-rate \"512 B/s\": at least 1 KiB/s",
    ] {
        assert!(in_file.contains(part), "{part:?} in\n{in_file}");
    }
}
