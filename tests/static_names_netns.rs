//! Static peers given by host name, with real daemons on a private LAN of
//! network namespaces: a name from the host's `/etc/hosts` reaches the
//! peer, and a name that does not resolve is named by `warren peers` and
//! `warren doctor`, with the fix.
//!
//! A lookup of an unknown name goes to the name server in
//! `/etc/resolv.conf`: here `ip netns exec` puts `/etc/netns/<ns>/`'s
//! files over `/etc`'s, so the daemon's resolver asks 127.0.0.1 inside
//! the namespace, where nothing listens: the lookup fails at once and no
//! query leaves the namespace. The names are under `.invalid` (RFC 6761).
//!
//! Needs root (see `netns/mod.rs`); under `CI=true` it must run.
#![expect(
    clippy::disallowed_methods,
    reason = "the test writes users' config files and /etc/netns, not store files"
)]

mod go_env;
mod netns;

use std::path::{Path, PathBuf};
use std::time::Duration;

use go_env::{go, warren_bin};
use netns::{Host, Lan, wait_for};
use serde_json::Value;

const STATIC_ONLY: &str = "[share]\nenabled = true\nautostart = false\nmdns = false\n";

/// `/etc/netns/<ns>/`, removed when dropped (after the daemons stop).
struct EtcNetns(PathBuf);

impl EtcNetns {
    /// `resolv.conf` naming only 127.0.0.1, and `hosts` as given.
    fn new(host: &Host, hosts: &str) -> Self {
        let dir = Path::new("/etc/netns").join(&host.netns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        Self(dir)
    }
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn static_peers_by_name_connect_or_say_the_name_does_not_resolve() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(2, go(None));
    let b = lan.host(2).init(STATIC_ONLY);
    let c = warren_p2p::PeerId::random().to_string();
    let c = c.as_str();
    let b_address = lan.host(2).address.clone();
    let a_config = format!(
        "{STATIC_ONLY}static-peers = [\
         \"/dns4/bob.office.test/tcp/7311/p2p/{b}\", \
         \"/dns4/carol.invalid/tcp/7311/p2p/{c}\", \
         \"/dns4/laptop.invalid/tcp/7311\"]\n"
    );
    let a = lan.host(1).init(&a_config);
    lan.host(1).warren(&["peers", "add", &b, "--name", "bob"]);
    lan.host(1).warren(&["peers", "add", c, "--name", "carol"]);
    lan.host(2).warren(&["peers", "add", &a, "--name", "alice"]);
    let etc = EtcNetns::new(
        lan.host(1),
        &format!("127.0.0.1 localhost\n{b_address} bob.office.test\n"),
    );

    lan.host(2).start_daemon();
    lan.host(1).start_daemon();
    // By the name in A's /etc/hosts.
    lan.host(1).wait_connected(&b, Duration::from_secs(30));

    let unresolved = [
        "carol: static address /dns4/carol.invalid/tcp/7311: name carol.invalid does not resolve",
        "static address /dns4/laptop.invalid/tcp/7311: name laptop.invalid does not resolve",
    ];
    let host = lan.host(1);
    wait_for(
        Duration::from_secs(20),
        "warren peers to name the names that do not resolve",
        || {
            let peers = host.warren(&["peers"]);
            unresolved.iter().all(|line| peers.contains(line))
        },
        || format!("{}\n{}", host.warren(&["peers"]), host.daemon_log()),
    );
    let peers = host.warren(&["peers"]);
    let carol = (peers.lines())
        .find(|line| line.starts_with("carol "))
        .unwrap_or_else(|| panic!("{peers}"));
    assert!(carol.contains("unresolved"), "{peers}");

    let output = host
        .command(Path::new(warren_bin()), &["doctor", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let statics: Vec<&Value> = (report["checks"].as_array().unwrap().iter())
        .filter(|check| check["section"] == "Static peers")
        .collect();
    let line = |text: &str| {
        let found: Vec<&&Value> = (statics.iter())
            .filter(|check| check["what"].as_str().unwrap().contains(text))
            .collect();
        assert_eq!(found.len(), 1, "{text:?}:\n{report:#}");
        found[0]
    };
    assert_eq!(line("bob.office.test")["status"], "ok", "{report:#}");
    for name in ["carol.invalid", "laptop.invalid"] {
        let check = line(&format!("the name {name} does not resolve"));
        assert_eq!(check["status"], "problem", "{report:#}");
        assert!(
            check["fix"]
                .as_str()
                .unwrap()
                .contains(&format!("getent hosts {name}")),
            "{report:#}"
        );
    }
    // The daemons first, then their namespace's files.
    drop(lan);
    drop(etc);
}
