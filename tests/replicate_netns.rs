//! Replication, end to end: real daemons with real mDNS on a private LAN
//! of network namespaces, and real `go` builds on the peers replicated
//! from. Needs root; under `CI=true` it must run.

mod go_env;
mod netns;

use std::time::Duration;

use go_env::{go, num, warren_bin};
use netns::{Lan, wait_for};

const SHARING: &str = "[share]\nenabled = true\nautostart = false\n";

/// Entries of `from` that `host` holds, and their bytes.
fn held_from(host: &netns::Host, from: &str) -> (u64, u64) {
    let stats: serde_json::Value =
        serde_json::from_str(&host.warren(&["stats", "--json"])).unwrap();
    (stats["sources"]["peers"].as_array().unwrap().iter())
        .find(|peer| peer["peer"] == from)
        .map_or((0, 0), |peer| (num(peer, "entries"), num(peer, "bytes")))
}

/// What `host` serves: its entries built here, less module indexes
/// (never shared).
fn served(host: &netns::Host) -> u64 {
    let stats: serde_json::Value =
        serde_json::from_str(&host.warren(&["stats", "--json"])).unwrap();
    num(&stats["sources"]["local"], "entries") - host.module_indexes()
}

/// `host`'s replication state of `peer`, from `warren stats --json`.
/// The checks `warren doctor --json` on `host` lists under Replication,
/// as (status, line).
fn doctor_replication(host: &netns::Host) -> Vec<(String, String)> {
    let output = host
        .command(std::path::Path::new(warren_bin()), &["doctor", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{}: doctor printed no JSON: {e}", host.name));
    (report["checks"].as_array().unwrap().iter())
        .filter(|check| check["section"] == "Replication")
        .map(|check| {
            let text = |key: &str| check[key].as_str().unwrap_or_default().to_owned();
            (text("status"), text("what"))
        })
        .collect()
}

fn replication(host: &netns::Host, peer: &str) -> serde_json::Value {
    let stats: serde_json::Value =
        serde_json::from_str(&host.warren(&["stats", "--json"])).unwrap();
    (stats["peers"].as_array().unwrap().iter())
        .find(|status| status["id"] == peer)
        .map_or(serde_json::Value::Null, |status| {
            status["replication"].clone()
        })
}

/// Five hosts. alice (A) and carol (C) build; B replicates alice only,
/// D replicates everyone within a 1 MiB budget, E everyone within a
/// window of seconds. Nobody but A and C runs `go` until the end.
#[test]
fn entries_flow_to_replicating_peers_within_their_budgets() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(5, go(None));
    let a = lan.host(1).init(SHARING);
    let b = lan
        .host(2)
        .init(&format!("{SHARING}replicate = [\"alice\"]\n"));
    let c = lan.host(3).init(SHARING);
    let d = lan.host(4).init(&format!(
        "{SHARING}replicate = \"all\"\nreplicate-max-size = \"1 MiB\"\n"
    ));
    let e = lan.host(5).init(&format!(
        "{SHARING}replicate = \"all\"\nreplicate-window = \"6s\"\n"
    ));
    for (n, reader) in [(2, &b), (4, &d), (5, &e)] {
        let host = lan.host(n);
        host.warren(&["peers", "add", &a, "--name", "alice"]);
        host.warren(&["peers", "add", &c, "--name", "carol"]);
        lan.host(1).trust(reader);
        lan.host(3).trust(reader);
    }
    for n in 1..=4 {
        lan.host(n).start_daemon();
    }
    for n in [2, 4] {
        lan.host(n).wait_connected(&a, Duration::from_secs(30));
        lan.host(n).wait_connected(&c, Duration::from_secs(30));
    }

    lan.host(1).go("gocache", &["build", "fmt"]);
    lan.host(3)
        .go("gocache", &["build", "-gcflags=all=-N", "strconv"]);
    let a_served = served(lan.host(1));
    assert!(a_served > 20, "A built too little to test with: {a_served}");

    // B holds A's entries without building, and none of C's.
    let b_host = lan.host(2);
    wait_for(
        Duration::from_secs(60),
        "B to replicate 95% of A's entries",
        || held_from(b_host, &a).0 * 100 >= a_served * 95,
        || {
            format!(
                "B holds {:?} of A's {a_served}: {}\n{}",
                held_from(b_host, &a),
                replication(b_host, &a),
                b_host.daemon_log()
            )
        },
    );
    assert_eq!(num(&b_host.lifetime(), "gets"), 0, "B never built");
    let state = replication(b_host, &a);
    assert_eq!(
        num(&state, "entries"),
        held_from(b_host, &a).0,
        "every entry B holds of A's came by replication: {state}"
    );
    assert_eq!(held_from(b_host, &c).0, 0, "C is not replicated by B");
    assert!(replication(b_host, &c).is_null());
    let peers = b_host.warren(&["peers"]);
    assert!(peers.contains("replicating alice: "), "{peers}");
    let doctor = doctor_replication(b_host);
    assert!(
        doctor
            .iter()
            .any(|(status, what)| status == "ok" && what.starts_with("alice: ")),
        "{doctor:?}"
    );

    // D's budget: what peers sent never passes 1 MiB, and the rest is
    // counted as skipped.
    let d_host = lan.host(4);
    wait_for(
        Duration::from_secs(60),
        "D to reach its replication budget",
        || num(&replication(d_host, &a), "skipped_for_budget") > 0,
        || format!("{}\n{}", replication(d_host, &a), d_host.daemon_log()),
    );
    let (_, from_a) = held_from(d_host, &a);
    let (_, from_c) = held_from(d_host, &c);
    assert!(
        from_a + from_c <= 1 << 20,
        "D holds {from_a} + {from_c} bytes from peers, over its 1 MiB budget"
    );
    assert!(from_a + from_c > 0, "D replicated nothing");
    let doctor = doctor_replication(d_host);
    assert!(
        doctor.iter().any(|(status, what)| status == "warning"
            && what.contains("skipped: replicate-max-size reached")),
        "{doctor:?}"
    );

    // E starts once A's build is older than its window: nothing of it
    // comes, but A's next build does.
    std::thread::sleep(Duration::from_secs(7));
    lan.host(5).start_daemon();
    lan.host(5).wait_connected(&a, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        held_from(lan.host(5), &a).0,
        0,
        "entries older than the window came"
    );
    lan.host(1)
        .go("gocache", &["build", "-gcflags=all=-l", "unicode/utf8"]);
    let e_host = lan.host(5);
    wait_for(
        Duration::from_secs(30),
        "E to replicate A's new build",
        || held_from(e_host, &a).0 > 0,
        || format!("{}\n{}", replication(e_host, &a), e_host.daemon_log()),
    );
    assert!(
        held_from(e_host, &a).0 < a_served / 2,
        "E replicated A's old build too: {:?}",
        held_from(e_host, &a)
    );

    // B builds what A built: every lookup but module indexes (never
    // shared, built here) is a local hit.
    let b_host = lan.host(2);
    b_host.go("gocache", &["build", "fmt"]);
    let lifetime = b_host.lifetime();
    let shareable = num(&lifetime, "gets") - b_host.module_indexes();
    assert_eq!(num(&lifetime, "errors"), 0, "{lifetime}");
    assert!(
        num(&lifetime, "hits") * 100 >= shareable * 95,
        "B's build of what A built found too little ({shareable} shareable lookups): {lifetime}"
    );
}
