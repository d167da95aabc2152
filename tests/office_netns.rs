//! An office in small: eight hosts on a LAN of network namespaces, all
//! allowlisting each other, with real daemons and real mDNS, and stores
//! filled by driving the real helper with synthetic puts. Every daemon
//! must come to hold every peer's summary whole, with a connection to each,
//! in bounded memory. (The timed version, for 2 to 32 hosts, is a
//! benchmark, not this test.)
//!
//! Needs root (see `netns/mod.rs`); under `CI=true` it must run.

mod go_env;
mod netns;

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use go_env::{go, num, warren_bin};
use netns::{Host, Lan};
use sha2::{Digest, Sha256};

const HOSTS: usize = 8;
/// Entries per host.
const ENTRIES: u64 = 400;
/// Most a daemon's peak RSS may reach, with seven peers of this size.
const MAX_RSS_KIB: u64 = 64 * 1024;

const SHARING: &str = "[share]\nenabled = true\nautostart = false\n";

/// A body size drawn like a `go build std`'s: mostly a few bytes (build
/// IDs, action records), some tens of KiB, a few hundred KiB.
fn body_size(n: u64) -> usize {
    match n % 20 {
        0 => 200_000 + (n as usize % 7) * 10_000,
        1..=4 => 20_000 + (n as usize % 13) * 1_000,
        _ => 9 + (n as usize % 50),
    }
}

/// Fills `host`'s store through the real helper: `ENTRIES` puts of
/// distinct bodies, then `close`.
fn fill(host: &Host, seed: u64) {
    let mut input = Vec::new();
    for n in 0..ENTRIES {
        let action: [u8; 32] = Sha256::digest(format!("office {seed} action {n}")).into();
        let mut body = format!("office {seed} body {n} ").into_bytes();
        body.resize(body_size(n).max(body.len()), b'x');
        let output: [u8; 32] = Sha256::digest(&body).into();
        writeln!(
            input,
            r#"{{"ID":{},"Command":"put","ActionID":"{}","OutputID":"{}","BodySize":{}}}"#,
            n + 1,
            BASE64.encode(action),
            BASE64.encode(output),
            body.len()
        )
        .unwrap();
        writeln!(input, "\n\"{}\"", BASE64.encode(&body)).unwrap();
    }
    writeln!(input, r#"{{"ID":{},"Command":"close"}}"#, ENTRIES + 1).unwrap();
    let mut helper = host
        .command(Path::new(warren_bin()), &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    helper.stdin.take().unwrap().write_all(&input).unwrap();
    let output = helper.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{}: the helper: {}",
        host.name,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(num(&host.lifetime(), "puts"), ENTRIES);
}

/// Peak RSS of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_office_of_eight_converges_in_bounded_memory() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new(HOSTS, go(None));
    let ids: Vec<String> = (1..=HOSTS).map(|n| lan.host(n).init(SHARING)).collect();
    for n in 1..=HOSTS {
        for (m, id) in ids.iter().enumerate() {
            if m + 1 != n {
                lan.host(n).trust(id);
            }
        }
        fill(lan.host(n), n as u64);
    }
    for n in 1..=HOSTS {
        lan.host(n).start_daemon();
    }
    // Each daemon connects to every peer and holds its whole summary.
    for n in 1..=HOSTS {
        let host = lan.host(n);
        netns::wait_for(
            Duration::from_secs(90),
            &format!("{}: every peer's summary", host.name),
            || {
                let report: serde_json::Value =
                    serde_json::from_str(&host.warren(&["peers", "--json"])).unwrap();
                let peers = report["peers"].as_array().cloned().unwrap_or_default();
                peers.len() == HOSTS - 1
                    && peers.iter().all(|peer| {
                        peer["daemon"]["connected"] == true
                            && peer["daemon"]["holds"].as_u64() == Some(ENTRIES)
                    })
            },
            || host.warren(&["peers"]),
        );
    }
    for n in 1..=HOSTS {
        let host = lan.host(n);
        let rss = peak_rss_kib(host.daemon_pid().unwrap());
        assert!(
            rss <= MAX_RSS_KIB,
            "{}: daemon peak RSS {rss} KiB with {} peers",
            host.name,
            HOSTS - 1
        );
    }
}
