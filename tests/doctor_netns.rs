//! `warren doctor` on a private LAN of network namespaces, with real
//! daemons and real mDNS: each ordinary way sharing fails is named, with
//! the fix, and a healthy host passes.
//!
//! Needs root (see `netns/mod.rs`); under `CI=true` it must run.
#![expect(
    clippy::disallowed_methods,
    reason = "the test writes users' config files, not store files"
)]

mod go_env;
mod netns;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use go_env::{go, other_version, warren_bin, warren_of_version};
use netns::{Host, Lan};
use serde_json::Value;

const SHARING: &str = "[share]\nenabled = true\nautostart = false\n";

/// `warren doctor --json` on `host`, with go on PATH and GOCACHEPROG set
/// as a user of warren would have them: whether it passed, and the report.
fn doctor(host: &Host) -> (bool, Value) {
    doctor_with(host, Path::new(warren_bin()))
}

/// [`doctor`] with `gocacheprog` as GOCACHEPROG.
fn doctor_with(host: &Host, gocacheprog: &Path) -> (bool, Value) {
    let go_bin = host.go.parent().unwrap();
    let path = format!(
        "{}:{}",
        go_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = host
        .command(Path::new(warren_bin()), &["doctor", "--json"])
        .env("PATH", path)
        .env("GOCACHEPROG", gocacheprog)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: doctor printed no JSON ({e}):\n{}\n{}",
            host.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    // Exit status and the count of problems agree.
    assert_eq!(
        output.status.success(),
        report["problems"] == 0,
        "{report:#}"
    );
    (output.status.success(), report)
}

/// The one check of `section` whose line contains `text`.
fn check<'a>(report: &'a Value, section: &str, text: &str) -> &'a Value {
    let found: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["section"] == section && c["what"].as_str().unwrap().contains(text))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "no single {section} check saying {text:?}:\n{report:#}"
    );
    found[0]
}

fn assert_problem(report: &Value, section: &str, text: &str, fix: &str) {
    let check = check(report, section, text);
    assert_eq!(check["status"], "problem", "{report:#}");
    assert!(
        check["fix"].as_str().unwrap_or_default().contains(fix),
        "the fix for {text:?} should contain {fix:?}:\n{report:#}"
    );
}

fn ip(host: &Host, args: &[&str]) {
    let status = Command::new("ip")
        .args(["netns", "exec", &host.netns, "ip"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "ip {}", args.join(" "));
}

#[test]
fn the_doctor_names_each_failure_and_its_fix() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(4, go(None));

    // No identity: sharing on in the config, no `warren init`.
    std::fs::write(lan.host(4).path("config/warren/config.toml"), SHARING).unwrap();
    let (passed, report) = doctor(lan.host(4));
    assert!(!passed);
    assert_problem(&report, "Identity", "no identity key", "warren init");
    let d = lan.host(4).init(SHARING);

    // A and B trust each other; B also trusts C, which does not trust B.
    let a = lan.host(1).init(SHARING);
    let b = lan.host(2).init(SHARING);
    let c = lan.host(3).init(SHARING);
    lan.host(1).warren(&["peers", "add", &b, "--name", "bob"]);
    lan.host(2).warren(&["peers", "add", &a, "--name", "alice"]);
    lan.host(2).warren(&["peers", "add", &c, "--name", "carol"]);

    // The daemon not running.
    let (passed, report) = doctor(lan.host(2));
    assert!(!passed);
    assert_problem(&report, "Daemon", "not running", "warren daemon");

    lan.host(1).start_daemon();
    lan.host(2).start_daemon();
    lan.host(3).start_daemon();
    lan.host(2).wait_connected(&a, Duration::from_secs(30));
    lan.host(1).wait_connected(&b, Duration::from_secs(30));

    // All well on A: it trusts only B, and B is connected.
    let (passed, report) = doctor(lan.host(1));
    assert!(passed, "{report:#}");
    assert_eq!(check(&report, "Peers", "bob")["status"], "ok");
    assert_eq!(check(&report, "Daemon", "running")["status"], "ok");
    assert_eq!(check(&report, "Go", "GOCACHEPROG")["status"], "ok");
    let listening = check(&report, "Listening", "reachable");
    assert!(
        listening["what"]
            .as_str()
            .unwrap()
            .contains(&lan.host(1).address),
        "{report:#}"
    );

    // C has not allowlisted B.
    let (passed, report) = doctor(lan.host(2));
    assert!(!passed);
    assert_eq!(check(&report, "Peers", "alice")["status"], "ok");
    assert_problem(
        &report,
        "Peers",
        "carol: closed the connection right after the handshake",
        &format!("warren peers add {b}"),
    );

    // A's daemon is down: its machine refuses the connection.
    lan.host(1).stop_daemon();
    let (_, report) = doctor(lan.host(2));
    assert_problem(
        &report,
        "Peers",
        "alice: connection refused",
        "ask alice to start it: `warren daemon`",
    );

    // A's daemon runs again, but A's link went down first: nothing answers.
    let veth = lan.host(1).veth.clone();
    ip(lan.host(1), &["link", "set", &veth, "down"]);
    lan.host(1).start_daemon();
    let (_, report) = doctor(lan.host(2));
    assert_problem(
        &report,
        "Peers",
        "alice: no answer from",
        "allow TCP port 7311",
    );
    ip(lan.host(1), &["link", "set", &veth, "up"]);
    let address = lan.host(1).address.clone();

    // A static address that another peer answers: B expects D at A's
    // address.
    lan.host(2).warren(&["peers", "add", &d, "--name", "dave"]);
    let config = format!("{SHARING}static-peers = [\"/ip4/{address}/tcp/7311/p2p/{d}\"]\n");
    std::fs::write(lan.host(2).path("config/warren/config.toml"), config).unwrap();
    lan.host(2).stop_daemon();
    lan.host(2).start_daemon();
    let (passed, report) = doctor(lan.host(2));
    assert!(!passed);
    assert_problem(&report, "Peers", "dave: /ip4/", "static-peers");
    assert_eq!(
        check(
            &report,
            "Static peers",
            "not connected (see dave under Peers)"
        )["status"],
        "ok"
    );
    let wrong = check(&report, "Peers", "dave: /ip4/");
    assert!(
        wrong["what"]
            .as_str()
            .unwrap()
            .contains("answered as another peer"),
        "{report:#}"
    );
}

/// The checks of `section` whose line contains `text`.
fn checks<'a>(report: &'a Value, section: &str, text: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["section"] == section && c["what"].as_str().unwrap().contains(text))
        .collect()
}

/// A VPN that owns the route to mDNS's group (a tun device here, as
/// OpenVPN and most VPN clients make) sends announcements with the
/// tunnel's address, which coworkers drop. The doctor names the route and
/// the LAN interface to pin; pinned, or with the route on the LAN, it is
/// quiet.
#[test]
fn mdns_routed_into_a_tunnel_is_named_with_its_fix() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(1, go(None));
    let veth = lan.host(1).veth.clone();
    lan.host(1).init(SHARING);
    ip(
        lan.host(1),
        &["tuntap", "add", "mode", "tun", "name", "tun7"],
    );
    ip(
        lan.host(1),
        &["addr", "add", "10.200.0.2/24", "dev", "tun7"],
    );
    ip(lan.host(1), &["link", "set", "tun7", "up"]);
    ip(lan.host(1), &["route", "add", "224.0.0.0/4", "dev", "tun7"]);
    lan.host(1).start_daemon();
    let (_, report) = doctor(lan.host(1));
    let route = check(&report, "mDNS", "the route to mDNS's group");
    assert_eq!(route["status"], "warning", "{report:#}");
    assert!(
        route["what"].as_str().unwrap().contains("tun7"),
        "{report:#}"
    );
    assert!(
        route["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("interfaces = [\"{veth}\"]")),
        "{report:#}"
    );

    // `interfaces` names the LAN interface: mDNS goes out there.
    let pinned = format!("{SHARING}interfaces = [\"{veth}\"]\n");
    std::fs::write(lan.host(1).path("config/warren/config.toml"), pinned).unwrap();
    lan.host(1).stop_daemon();
    lan.host(1).start_daemon();
    let (_, report) = doctor(lan.host(1));
    assert!(checks(&report, "mDNS", "route").is_empty(), "{report:#}");
    assert_eq!(check(&report, "mDNS", &veth)["status"], "ok", "{report:#}");

    // Not pinned, and the route goes by the LAN.
    std::fs::write(lan.host(1).path("config/warren/config.toml"), SHARING).unwrap();
    lan.host(1).stop_daemon();
    lan.host(1).start_daemon();
    ip(
        lan.host(1),
        &["route", "replace", "224.0.0.0/4", "dev", &veth],
    );
    let (_, report) = doctor(lan.host(1));
    assert!(checks(&report, "mDNS", "route").is_empty(), "{report:#}");
}

/// `go` runs one warren as GOCACHEPROG and the daemon is another release:
/// the doctor names both versions.
#[test]
fn a_gocacheprog_of_another_version_than_the_daemon_is_named() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(1, go(None));
    lan.host(1)
        .init(&format!("{SHARING}mdns = false\nstatic-peers = []\n"));
    lan.host(1).start_daemon();
    let other_version = other_version();
    let other = warren_of_version(lan.host(1).dir.path(), &other_version);
    let (_, report) = doctor_with(lan.host(1), &other);
    let line = check(&report, "Daemon", "GOCACHEPROG runs warren");
    assert_eq!(line["status"], "warning", "{report:#}");
    assert!(
        line["what"].as_str().unwrap().contains(&format!(
            "warren {other_version}, the daemon warren {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{report:#}"
    );
    // This warren as GOCACHEPROG: no such line.
    let (_, report) = doctor(lan.host(1));
    assert!(
        checks(&report, "Daemon", "GOCACHEPROG").is_empty(),
        "{report:#}"
    );
}
