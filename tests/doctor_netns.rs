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

use go_env::{go, warren_bin};
use netns::{Host, Lan};
use serde_json::Value;

const SHARING: &str = "[share]\nenabled = true\nautostart = false\n";

/// `warren doctor --json` on `host`, with go on PATH and GOCACHEPROG set
/// as a user of warren would have them: whether it passed, and the report.
fn doctor(host: &Host) -> (bool, Value) {
    let go_bin = host.go.parent().unwrap();
    let path = format!(
        "{}:{}",
        go_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = host
        .command(Path::new(warren_bin()), &["doctor", "--json"])
        .env("PATH", path)
        .env("GOCACHEPROG", warren_bin())
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
