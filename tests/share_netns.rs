//! Sharing between coworkers, end to end: real `warren daemon`s with real
//! mDNS on a private LAN of network namespaces, and real `go` builds.
//!
//! Each test builds its own LAN (see `netns/mod.rs`) and removes it after.
//! They need root; under `CI=true` they must run.

mod go_env;
mod netns;

use std::time::Duration;

use go_env::{go, num};
use netns::Lan;

/// Sharing on, mDNS discovery, daemon started by the test.
const SHARING: &str = "[share]\nenabled = true\nautostart = false\n";

/// Two coworkers who trust each other, daemons up and connected.
fn pair() -> Option<(Lan, String, String)> {
    pair_with(SHARING)
}

/// The same, with B's config `b_config`.
fn pair_with(b_config: &str) -> Option<(Lan, String, String)> {
    if !netns::available() {
        return None;
    }
    let mut lan = Lan::new(2, go(None));
    let a = lan.host(1).init(SHARING);
    let b = lan.host(2).init(b_config);
    lan.host(1).trust(&b);
    lan.host(2).trust(&a);
    lan.host(1).start_daemon();
    lan.host(2).start_daemon();
    lan.host(2).wait_connected(&a, Duration::from_secs(30));
    lan.host(1).wait_connected(&b, Duration::from_secs(30));
    Some((lan, a, b))
}

/// B, with an empty store, builds what A built: at least 95% of B's
/// lookups are answered with A's entries (fetched when asked for, or read
/// ahead of the build), and B's outputs equal a plain build's. B asks for
/// compressed bodies throughout (on this fast LAN `auto` may not), so
/// what is checked against a plain build came compressed.
#[test]
fn a_coworkers_build_comes_from_the_peer() {
    let config = format!("{SHARING}compression = \"always\"\n");
    let Some((mut lan, a, _)) = pair_with(&config) else {
        return;
    };
    lan.host(1).go("gocache", &["build", "std"]);
    lan.host(1)
        .go("gocache", &["build", "-o", "gofmt", "cmd/gofmt"]);

    let b = lan.host(2);
    b.go("gocache", &["build", "std"]);
    let stats: serde_json::Value = serde_json::from_str(&b.warren(&["stats", "--json"])).unwrap();
    let lifetime = &stats["lifetime"];
    // B's store started empty and B compiled nothing it found: every hit
    // is one of A's entries. Module indexes are never shared (SECURITY.md,
    // "What verification proves, and what it cannot"): B made its own, and
    // they are left out of the count.
    let (gets, hits) = (num(lifetime, "gets"), num(lifetime, "hits"));
    let indexes = b.module_indexes();
    assert!(gets > 500 && indexes > 0, "{stats}");
    assert!(
        hits * 100 >= (gets - indexes) * 95,
        "only {hits} of {gets} lookups ({indexes} module indexes) were answered from the peer's entries: {stats}\n{}",
        b.daemon_log()
    );
    assert_eq!(num(lifetime, "errors"), 0);
    let peer = stats["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|peer| peer["id"] == a.as_str()))
        .unwrap_or_else(|| panic!("A is not among B's peers: {stats}"));
    assert!(
        num(peer, "hits_received") >= hits,
        "B has hits that A did not send: {stats}"
    );
    // Most came ahead of the build, not one round trip at a time.
    assert!(
        num(peer, "read_ahead") * 2 > hits,
        "little was read ahead: {stats}"
    );
    // B keeps a summary of A's store (so misses A cannot answer are not
    // asked of it), and it names at least every entry A sent.
    assert!(num(peer, "holds") >= hits, "B's summary of A: {stats}");
    // Asked for compressed bodies, as configured, and `warren peers` says so.
    assert_eq!(peer["compressed"], true, "{stats}");
    // Go outputs shrink over 3x at zstd level 1: far fewer bytes crossed
    // the link than were stored.
    assert!(
        num(peer, "wire_bytes_received") * 2 < num(peer, "bytes_received"),
        "{stats}"
    );
    let text = b.warren(&["stats"]);
    assert!(
        text.lines()
            .any(|line| line.trim_start().starts_with("received") && line.contains("on the wire")),
        "{text}"
    );
    let listing = b.warren(&["peers"]);
    assert!(
        listing
            .lines()
            .any(|line| line.contains(a.as_str()) && line.contains(" zstd ")),
        "{listing}"
    );

    // `warren trace`: the build's lookups add up to its gets, and its hits
    // came from A (asked for or read ahead) or were B's own module indexes.
    let trace = last_build_trace(b);
    assert_eq!(num(&trace, "gets"), gets, "{trace}");
    let totals = &trace["totals"];
    let total = |outcome: &str| totals[outcome].as_u64().unwrap_or(0);
    let sum: u64 = totals
        .as_object()
        .unwrap()
        .values()
        .filter_map(|n| n.as_u64())
        .sum();
    assert_eq!(sum, gets, "{totals}");
    assert_eq!(
        total("peer_hit") + total("read_ahead_hit") + total("local_hit"),
        hits,
        "{totals}"
    );
    assert!(
        total("peer_hit") + total("read_ahead_hit") >= hits - indexes,
        "{totals}"
    );
    let lookups = trace["lookups"].as_array().unwrap();
    assert!(
        lookups
            .iter()
            .filter(
                |lookup| lookup["outcome"].as_str().unwrap().ends_with("_hit")
                    && lookup["outcome"] != "local_hit"
            )
            .all(|lookup| lookup["peer"] == a.as_str()),
        "a peer hit from someone other than A: {trace}"
    );
    let text = b.warren(&["trace"]);
    assert!(
        text.lines()
            .any(|line| line.contains("peer hit") || line.contains("read-ahead hit")),
        "{text}"
    );

    // Outputs: gofmt through warren (from A's bodies) equals a plain build.
    b.go("gocache", &["build", "-o", "gofmt-shared", "cmd/gofmt"]);
    b.assert_same_as_plain_gofmt("gofmt-shared");

    // With sharing off for one command, its misses say so, and nothing is
    // asked of A.
    let before = num(&b.lifetime(), "gets");
    b.go_with("gocache", &["vet", "fmt"], &[("WARREN_SHARE", "0")]);
    let gets = num(&b.lifetime(), "gets") - before;
    let trace = last_build_trace(b);
    assert_eq!(num(&trace, "gets"), gets, "{trace}");
    let totals = trace["totals"].as_object().unwrap();
    assert!(num(&trace["totals"], "sharing_off") > 0, "{trace}");
    assert_eq!(
        totals.values().filter_map(|n| n.as_u64()).sum::<u64>(),
        gets,
        "{trace}"
    );
    assert!(
        totals
            .keys()
            .all(|outcome| outcome == "local_hit" || outcome == "sharing_off"),
        "{trace}"
    );
    assert!(b.warren(&["why"]).contains("miss: sharing off"));
}

/// `warren trace --json` of the last build.
fn last_build_trace(host: &netns::Host) -> serde_json::Value {
    serde_json::from_str(&host.warren(&["trace", "--json"])).unwrap()
}

/// A peer that is not on the allowlist gets nothing and is never asked.
#[test]
fn an_untrusted_peer_gets_nothing() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(2, go(None));
    let a = lan.host(1).init(SHARING);
    let b = lan.host(2).init(SHARING);
    // B trusts A, but A does not trust B.
    lan.host(2).trust(&a);
    lan.host(1).start_daemon();
    lan.host(2).start_daemon();
    lan.host(1).go("gocache", &["build", "fmt"]);
    // Give discovery time to find (and refuse) the other side.
    std::thread::sleep(Duration::from_secs(3));
    let b_host = lan.host(2);
    b_host.go("gocache", &["build", "fmt"]);
    let stats = b_host.lifetime();
    assert_eq!(
        num(&stats, "peer_hits"),
        0,
        "an untrusting peer served B: {stats}"
    );
    assert!(num(&stats, "misses") > 0);
    let listing = lan.host(1).warren(&["peers"]);
    assert!(
        !listing
            .lines()
            .any(|line| line.contains(&b) && line.contains("connected")),
        "A kept a connection from an untrusted peer:\n{listing}"
    );

    // Trusting B takes effect without restarting A's daemon.
    lan.host(1).trust(&b);
    lan.host(1).wait_connected(&b, Duration::from_secs(30));
    lan.host(2).wait_connected(&a, Duration::from_secs(30));
}

/// With `autostart`, builds start the daemon themselves; two builds racing
/// to do so leave exactly one daemon.
#[test]
fn builds_start_one_daemon() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(1, go(None));
    lan.host(1)
        .init("[share]\nenabled = true\nautostart = true\n");
    let host = lan.host(1);
    let builds: Vec<_> = ["gocache-1", "gocache-2"]
        .iter()
        .map(|gocache| {
            host.command(&host.go.clone(), &["build", "fmt"])
                .env("GOCACHEPROG", go_env::warren_bin())
                .env("GOCACHE", host.path(gocache))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for build in builds {
        let build = build.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&build.stderr);
        assert!(build.status.success() && stderr.is_empty(), "{stderr}");
    }
    let store = host.store();
    netns::wait_for(
        Duration::from_secs(20),
        "the daemon's socket",
        || store.join("daemon.sock").exists(),
        String::new,
    );
    let daemons = netns::processes_with(&["daemon", store.to_str().unwrap()]);
    assert!(host.warren(&["peers"]).starts_with("daemon: running"));
    for pid in &daemons {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
    assert_eq!(daemons.len(), 1, "expected one daemon, found {daemons:?}");
}

/// With sharing on but no daemon running, builds are local, succeed and
/// stay silent. (What an absent daemon costs per miss is measured in
/// `helper/daemon_tier.rs`'s tests and in the benchmark.)
#[test]
fn no_daemon_means_local_only() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(1, go(None));
    lan.host(1).init(SHARING);
    let host = lan.host(1);
    // Said once: sharing is on, yet the build went without peers.
    let stderr = host.go_stderr("gocache", &["build", "fmt"]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("warren: warning: sharing is on, but no daemon answered")
            && lines[0].contains("warren daemon"),
        "{stderr}"
    );
    let stats = host.lifetime();
    assert!(num(&stats, "misses") > 10);
    assert_eq!(num(&stats, "peer_hits"), 0);
    // Every miss went to the remote tier, and an absent daemon cost the
    // build next to nothing: a refused connect, then a second of not asking.
    assert_eq!(
        num(&stats, "remote_lookups"),
        num(&stats, "misses"),
        "{stats}"
    );
    assert!(
        num(&stats, "remote_wait_us") < 1_000 * num(&stats, "remote_lookups"),
        "an absent daemon delayed the build: {stats}"
    );
}

/// A peer that keeps dropping (here: its daemon restarted again and
/// again) is one warning in B's daemon log, with the count, not a line per
/// disconnect.
#[test]
fn a_flapping_peer_is_one_warning() {
    let Some((mut lan, a, b)) = pair() else {
        return;
    };
    for _ in 0..6 {
        lan.host(1).stop_daemon();
        lan.host(1).start_daemon();
        lan.host(2).wait_connected(&a, Duration::from_secs(30));
        lan.host(1).wait_connected(&b, Duration::from_secs(30));
    }
    let log = lan.host(2).daemon_log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with("warren: warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", warnings.join("\n"));
    assert!(
        warnings[0].contains(&format!("peer {a} lost its connection 5 times")),
        "{}",
        warnings[0]
    );
}

/// A peer that dies in the middle of B's build: B's build still succeeds,
/// with correct outputs, and nothing half-fetched is left in B's store.
#[test]
fn a_peer_killed_mid_build_costs_only_rebuilds() {
    let Some((mut lan, _, _)) = pair() else {
        return;
    };
    lan.host(1).go("gocache", &["build", "std"]);

    let b = lan.host(2);
    let build = b
        .command(&b.go.clone(), &["build", "-o", "gofmt-shared", "cmd/gofmt"])
        .env("GOCACHEPROG", go_env::warren_bin())
        .env("GOCACHE", b.path("gocache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let some lookups reach the peer, then take it down hard.
    netns::wait_for(
        Duration::from_secs(30),
        "B's first peer hits",
        || {
            let stats: serde_json::Value =
                serde_json::from_str(&b.warren(&["stats", "--json"])).unwrap();
            stats["peers"].as_array().is_some_and(|peers| {
                peers
                    .iter()
                    .any(|peer| peer["hits_received"].as_u64() > Some(0))
            })
        },
        || b.daemon_log(),
    );
    lan.host(1).stop_daemon();

    let b = lan.host(2);
    let output = build.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "B's build failed after the peer died:\n{stderr}"
    );
    assert!(stderr.is_empty(), "B's build printed:\n{stderr}");
    let stats = b.lifetime();
    assert!(num(&stats, "peer_hits") > 0, "{stats}");

    b.assert_same_as_plain_gofmt("gofmt-shared");
    let verify = b.warren(&["verify"]);
    assert!(verify.contains(", 0 files (0 B) corrupt"), "{verify}");
}

/// An example of the p2p crate (a hostile peer), built if needed.
fn p2p_example(name: &str) -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", "warren-p2p", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building the {name} example failed");
    let bin_dir = std::path::Path::new(go_env::warren_bin())
        .parent()
        .unwrap()
        .to_path_buf();
    bin_dir.join("examples").join(name)
}

/// A trusted peer that corrupts every body it sends: B rejects each one,
/// stops asking it for a while, builds locally, and its outputs are right.
#[test]
fn a_tampering_peer_is_rejected_and_the_build_stays_correct() {
    if !netns::available() {
        return;
    }
    let hostile = p2p_example("tampering_peer");
    let mut lan = Lan::new(2, go(None));
    let a = lan.host(1).init("[share]\nenabled = false\n");
    lan.host(1).go("gocache", &["build", "std"]);
    let a_host = lan.host(1);
    let address = format!("/ip4/{}/tcp/7311", a_host.address);
    let mut peer = a_host
        .command(
            &hostile,
            &[
                a_host.store().to_str().unwrap(),
                &address,
                a_host.path("config/warren/identity.key").to_str().unwrap(),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(peer.stdout.take().unwrap()));
    let listening = lines.next().unwrap().unwrap();
    assert!(listening.starts_with("listening "), "{listening}");
    let served = std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .filter(|l| l.starts_with("served"))
            .count()
    });

    let config = format!("{SHARING}mdns = false\nstatic-peers = [\"{address}/p2p/{a}\"]\n");
    lan.host(2).init(&config);
    lan.host(2).trust(&a);
    lan.host(2).start_daemon();
    lan.host(2).wait_connected(&a, Duration::from_secs(30));

    let b = lan.host(2);
    b.go("gocache", &["build", "-o", "gofmt-shared", "cmd/gofmt"]);
    let stats: serde_json::Value = serde_json::from_str(&b.warren(&["stats", "--json"])).unwrap();
    assert_eq!(
        num(&stats["lifetime"], "peer_hits"),
        0,
        "a tampered body was used: {stats}"
    );
    let misses = num(&stats["lifetime"], "misses");
    let rejected: u64 = stats["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|peer| peer["rejected"].as_u64().unwrap_or(0))
        .sum();
    assert!(rejected > 0, "no body was rejected: {stats}");
    b.assert_same_as_plain_gofmt("gofmt-shared");
    assert!(b.warren(&["verify"]).contains(", 0 files (0 B) corrupt"));

    let _ = peer.kill();
    let _ = peer.wait();
    let served = served.join().unwrap() as u64;
    // The cooldown stops B from asking the liar again and again.
    assert!(
        served < misses / 4,
        "B asked the tampering peer {served} times for {misses} misses"
    );
}

/// What B holds per source, from `warren stats --json`: (built here,
/// entries from the peer `from`).
fn held(host: &netns::Host, from: &str) -> (u64, u64) {
    let stats: serde_json::Value =
        serde_json::from_str(&host.warren(&["stats", "--json"])).unwrap();
    let sources = &stats["sources"];
    let from_peer = (sources["peers"].as_array().unwrap().iter())
        .find(|peer| peer["peer"] == from)
        .map_or(0, |peer| num(peer, "entries"));
    (num(&sources["local"], "entries"), from_peer)
}

/// SECURITY.md, "Provenance, and why trust is not transitive", on three
/// hosts. A and B trust each other, B and C trust each other, C never
/// allowlisted A. C gets none of A's entries through B (trust is not
/// transitive); then B revokes A, which purges what A sent at once; and a
/// store another user could write is refused.
#[test]
fn trust_is_not_transitive_and_revoking_a_peer_purges_its_entries() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(3, go(None));
    let a = lan.host(1).init(SHARING);
    let b = lan.host(2).init(SHARING);
    let c = lan.host(3).init(SHARING);
    lan.host(1).trust(&b);
    lan.host(2).trust(&a);
    lan.host(2).trust(&c);
    lan.host(3).trust(&b);
    for n in 1..=3 {
        lan.host(n).start_daemon();
    }
    lan.host(2).wait_connected(&a, Duration::from_secs(30));
    lan.host(2).wait_connected(&c, Duration::from_secs(30));
    lan.host(3).wait_connected(&b, Duration::from_secs(30));

    lan.host(1).go("gocache", &["build", "fmt"]);
    lan.host(2).go("gocache", &["build", "fmt"]);
    let (b_local, b_from_a) = held(lan.host(2), &a);
    // (Most came by read-ahead, so they were local hits for B's build.)
    assert!(
        b_from_a > 20,
        "B got too little from A to test with: {b_from_a} entries"
    );

    // C asks B for everything and gets at most what B built itself.
    let c_host = lan.host(3);
    c_host.go("gocache", &["build", "fmt"]);
    let c_stats = c_host.lifetime();
    let (_, c_from_b) = held(c_host, &b);
    assert!(
        num(&c_stats, "peer_hits") <= b_local && c_from_b <= b_local,
        "C got entries that A built, through B (B built {b_local} itself): {c_stats}\n{}",
        lan.host(2).daemon_log()
    );
    let (_, c_from_a) = held(lan.host(3), &a);
    assert_eq!(c_from_a, 0);

    // B revokes A: A's entries are purged, and counted.
    let b_host = lan.host(2);
    let removed = b_host.warren(&["peers", "remove", &a]);
    assert!(
        removed.contains(&format!("purged {b_from_a} entries")),
        "{removed}"
    );
    assert_eq!(held(b_host, &a).1, 0);
    let hits_from_a = |host: &netns::Host| {
        let stats: serde_json::Value =
            serde_json::from_str(&host.warren(&["stats", "--json"])).unwrap();
        (stats["peers"].as_array().unwrap().iter())
            .find(|peer| peer["id"] == a.as_str())
            .map_or(0, |peer| num(peer, "hits_received"))
    };
    let before = hits_from_a(b_host);
    // What B misses now it may get from C, which built it; never from A.
    b_host.go("gocache-2", &["build", "fmt"]);
    assert!(hits_from_a(b_host) <= before, "B still fetched from A");
    assert_eq!(held(b_host, &a).1, 0, "B holds A's entries again");

    // A store another user could write is not used, and the error says
    // what to fix.
    let store = lan.host(3).store();
    let status = std::process::Command::new("chmod")
        .args(["g+w", store.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let refused = lan
        .host(3)
        .command(std::path::Path::new(go_env::warren_bin()), &["stats"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("chmod go-w"),
        "{stderr}"
    );
}

/// A test tool's process, ended by its PID however the test ends.
struct Tool(std::process::Child);

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a test tool's stdout, collected as they come.
fn collect_lines(tool: &mut Tool) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = tool.0.stdout.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// SECURITY.md, "What others on the network can see, and do", played on
/// a LAN: a third host announces A's peer ID (taken from A's own advert)
/// at loopback, at an address of another network, and at 24 addresses of
/// the LAN that it owns, twice a second.
/// B keeps its connection to the real A; its view of A holds none of the
/// forbidden addresses and at most 8 spoofed ones; and when A goes away,
/// B's redials reach at most those 8, with backoff, never loopback.
#[test]
fn an_address_spoofer_is_held_to_the_lan_and_the_bounds() {
    if !netns::available() {
        return;
    }
    let spoofer = p2p_example("address_spoofer");
    let mut lan = Lan::new(3, go(None));
    let a = lan.host(1).init(SHARING);
    let b = lan.host(2).init(SHARING);
    lan.host(1).trust(&b);
    lan.host(2).trust(&a);
    lan.host(1).start_daemon();
    lan.host(2).start_daemon();
    lan.host(2).wait_connected(&a, Duration::from_secs(30));

    // The spoofer owns 24 more addresses of the LAN, and sends multicast.
    let (netns_c, veth_c) = (lan.host(3).netns.clone(), lan.host(3).veth.clone());
    let subnet = lan.host(3).address.rsplit_once('.').unwrap().0.to_owned();
    let ip = |args: &[&str]| {
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", &netns_c, "ip"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    let owned: Vec<String> = (100..124).map(|n| format!("{subnet}.{n}")).collect();
    for address in &owned {
        ip(&["addr", "add", &format!("{address}/24"), "dev", &veth_c]);
    }
    ip(&["route", "add", "224.0.0.0/4", "dev", &veth_c]);
    const PORT: &str = "7399";
    let spawn = |host: &netns::Host, args: &[&str]| {
        Tool(
            host.command(&spoofer, args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // What B dials: on the spoofer's addresses, and on B's own loopback.
    let mut reached = spawn(lan.host(3), &["listen", &format!("0.0.0.0:{PORT}")]);
    let mut canary = spawn(lan.host(2), &["listen", &format!("127.0.0.1:{PORT}")]);
    let reached_lines = collect_lines(&mut reached);
    let canary_lines = collect_lines(&mut canary);
    let mut announce_args = vec![
        "announce",
        "_warren._tcp.local.",
        a.as_str(),
        PORT,
        "127.0.0.1",
        "192.0.2.7",
    ];
    announce_args.extend(owned.iter().map(String::as_str));
    let announcer = spawn(lan.host(3), &announce_args);

    // B resolves the spoofed instance and keeps the bounded part of it.
    let spoofed_of_a = |host: &netns::Host| -> Vec<String> {
        let stats: serde_json::Value =
            serde_json::from_str(&host.warren(&["stats", "--json"])).unwrap();
        (stats["peers"].as_array().unwrap().iter())
            .find(|peer| peer["id"] == a.as_str())
            .map(|peer| {
                (peer["addresses"].as_array().unwrap().iter())
                    .map(|address| address.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    netns::wait_for(
        Duration::from_secs(20),
        "B learns the spoofed addresses",
        || {
            spoofed_of_a(&lan.hosts[1])
                .iter()
                .any(|address| address.contains(&format!("/tcp/{PORT}")))
        },
        || lan.hosts[1].daemon_log(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let addresses = spoofed_of_a(lan.host(2));
    let spoofed = addresses
        .iter()
        .filter(|address| address.contains(&format!("/tcp/{PORT}")));
    assert!(
        spoofed.count() <= 8,
        "more than 8 announced addresses kept: {addresses:?}"
    );
    assert!(
        addresses
            .iter()
            .all(|address| !address.contains("/127.") && !address.contains("192.0.2.")),
        "a loopback or off-link address was kept: {addresses:?}"
    );
    lan.host(2).wait_connected(&a, Duration::from_secs(5));

    // A goes away: B redials A at what it knows, the spoofed ones too.
    lan.host(1).stop_daemon();
    std::thread::sleep(Duration::from_secs(15));
    let dialed: Vec<String> = (reached_lines.lock().unwrap().iter())
        .filter(|line| line.starts_with("dialed "))
        .cloned()
        .collect();
    let distinct: std::collections::HashSet<&String> = dialed.iter().collect();
    assert!(
        distinct.len() <= 8,
        "B dialed {} spoofed addresses: {distinct:?}",
        distinct.len()
    );
    // Backoff from 1 s, doubling: within 15 s, a handful of rounds.
    assert!(
        dialed.len() <= 8 * 6,
        "B dialed the spoofed addresses {} times in 15 s",
        dialed.len()
    );
    let loopback = canary_lines.lock().unwrap().clone();
    assert!(
        loopback.iter().all(|line| !line.starts_with("dialed ")),
        "B dialed its own loopback: {loopback:?}"
    );

    // A comes back; B reaches the real A again.
    lan.host(1).start_daemon();
    lan.host(2).wait_connected(&a, Duration::from_secs(30));
    drop((announcer, reached, canary));
}

/// A stranger on the LAN floods mDNS with 20,000 hosts that do not exist
/// (`mdns-sd` caches each one, without a cap of its own, for as long as
/// the sender says). B's daemon starts its mDNS afresh once the cache
/// passes its bound, and then still finds, and is found by, a coworker
/// that comes up afterwards.
#[test]
fn an_mdns_flood_is_dropped_and_coworkers_are_still_found() {
    if !netns::available() {
        return;
    }
    let spoofer = p2p_example("address_spoofer");
    let mut lan = Lan::new(3, go(None));
    let a = lan.host(1).init(SHARING);
    let b = lan.host(2).init(SHARING);
    lan.host(1).trust(&b);
    lan.host(2).trust(&a);
    lan.host(2).start_daemon();

    let (netns_c, veth_c) = (lan.host(3).netns.clone(), lan.host(3).veth.clone());
    let route = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns_c,
            "ip",
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
        ])
        .arg(&veth_c)
        .status()
        .unwrap();
    assert!(route.success());
    let at = lan.host(3).address.clone();
    let flood = lan
        .host(3)
        .command(&spoofer, &["flood", "20000", &at])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&flood.stdout).contains("flooded 20000"),
        "{}",
        String::from_utf8_lossy(&flood.stderr)
    );
    netns::wait_for(
        Duration::from_secs(20),
        "B starts mDNS afresh",
        || lan.hosts[1].daemon_log().contains("starting it afresh"),
        || lan.hosts[1].daemon_log(),
    );

    // A comes up after: each finds the other on mDNS.
    lan.host(1).start_daemon();
    lan.host(2).wait_connected(&a, Duration::from_secs(20));
    let discovered = |host: &netns::Host, other: &str| -> bool {
        let stats: serde_json::Value =
            serde_json::from_str(&host.warren(&["stats", "--json"])).unwrap();
        (stats["peers"].as_array().unwrap().iter())
            .any(|peer| peer["id"] == other && peer["discovered"] == true)
    };
    netns::wait_for(
        Duration::from_secs(10),
        "A and B discover each other",
        || discovered(&lan.hosts[1], &a) && discovered(&lan.hosts[0], &b),
        || lan.hosts[1].daemon_log(),
    );
}

/// Agreement (SECURITY.md, "What verification proves, and what it
/// cannot"), with real daemons: A and C each build `fmt`; B, with
/// `agreement = true`, takes their entries because both built them and
/// name the same outputs (wire version 4's `built_here`). Packages only A
/// built are not taken from A alone: B builds them itself.
#[test]
fn with_agreement_two_builders_are_needed() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(3, go(None));
    let a = lan.host(1).init(SHARING);
    let c = lan.host(2).init(SHARING);
    let b = lan.host(3).init(&format!("{SHARING}agreement = true\n"));
    lan.host(1).trust(&b);
    lan.host(2).trust(&b);
    lan.host(3).trust(&a);
    lan.host(3).trust(&c);
    for n in 1..=3 {
        lan.host(n).start_daemon();
    }
    lan.host(3).wait_connected(&a, Duration::from_secs(30));
    lan.host(3).wait_connected(&c, Duration::from_secs(30));
    // `warren peers --json` says as much, with the daemon's view.
    let report: serde_json::Value =
        serde_json::from_str(&lan.host(3).warren(&["peers", "--json"])).unwrap();
    assert_eq!(report["daemon"]["running"], true, "{report}");
    assert_eq!(report["daemon"]["peer_id"], b.as_str(), "{report}");
    for id in [&a, &c] {
        let peer = (report["peers"].as_array().unwrap().iter())
            .find(|peer| peer["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} in {report}"));
        assert_eq!(peer["state"], "connected", "{report}");
        assert_eq!(peer["daemon"]["connected"], true, "{report}");
    }
    let only_a = ["container/list", "container/ring", "hash/adler32"];
    lan.host(1).go("gocache", &["build", "fmt"]);
    lan.host(1)
        .go("gocache", &["build", only_a[0], only_a[1], only_a[2]]);
    lan.host(2).go("gocache", &["build", "fmt"]);

    let b_host = lan.host(3);
    b_host.go("gocache", &["build", "fmt"]);
    let after_fmt = b_host.lifetime();
    let (gets, hits) = (num(&after_fmt, "gets"), num(&after_fmt, "hits"));
    let indexes = b_host.module_indexes();
    assert!(
        hits * 100 >= (gets - indexes) * 90,
        "only {hits} of {gets} lookups ({indexes} module indexes) were answered by two builders: {after_fmt}\n{}",
        b_host.daemon_log()
    );
    let (_, from_a) = held(b_host, &a);
    let (_, from_c) = held(b_host, &c);
    assert!(
        from_a + from_c > 0 && from_a + from_c <= hits,
        "{from_a} + {from_c} entries from A and C for {hits} hits"
    );
    // Read-ahead takes one peer's word: it is off.
    let stats: serde_json::Value =
        serde_json::from_str(&b_host.warren(&["stats", "--json"])).unwrap();
    let read_ahead: u64 = (stats["peers"].as_array().unwrap().iter())
        .map(|peer| num(peer, "read_ahead"))
        .sum();
    assert_eq!(read_ahead, 0, "{stats}");

    b_host.go("gocache", &["build", only_a[0], only_a[1], only_a[2]]);
    // Its dependencies are local hits now; what only A built is missed.
    let after = b_host.lifetime();
    assert_eq!(
        num(&after, "peer_hits"),
        num(&after_fmt, "peer_hits"),
        "B took entries only A built: {after}"
    );
    assert!(num(&after, "misses") > num(&after_fmt, "misses"), "{after}");
}
