//! The daemon's Prometheus endpoint (`metrics-listen`): off by default;
//! when on, a scrape over loopback shows what `warren stats --json` shows.
//!
//! The daemon runs with mDNS off and listens on loopback only.
#![expect(
    clippy::disallowed_methods,
    reason = "the test writes a user's config file, not store files"
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::{Sandbox, action, close, get, put};

const CONFIG: &str = "[share]\nenabled = true\nautostart = false\nmdns = false\n\
                      listen = [\"/ip4/127.0.0.1/tcp/0\"]\n";

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
        // Accepting, not just there: the first daemon's socket file stays.
        wait(
            || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
            "the daemon's socket",
        );
        daemon
    }

    /// The TCP ports the daemon listens on.
    fn listening(&self) -> Vec<u16> {
        listening_ports(self.0.id())
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

/// Ports of the TCP sockets that process `pid` has listening, from /proc.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is hex ip:port; state 0A is LISTEN; field 9 the inode.
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports
}

fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    body.to_owned()
}

fn value(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
        .parse()
        .unwrap()
}

fn write_config(sandbox: &Sandbox, text: &str) {
    std::fs::write(sandbox.root().join("home/.config/warren/config.toml"), text).unwrap();
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn metrics_are_off_by_default_and_match_stats_when_on() {
    let sandbox = Sandbox::new();
    assert!(sandbox.run(&["init"]).status.success());
    write_config(&sandbox, CONFIG);
    let config = String::from_utf8(sandbox.run(&["config"]).stdout).unwrap();
    assert!(
        config
            .lines()
            .any(|l| l == "metrics-listen:  off  (default)"),
        "{config}"
    );
    {
        // Off: the daemon listens for peers only.
        let daemon = Daemon::start(&sandbox);
        wait(|| !daemon.listening().is_empty(), "the peer listener");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(daemon.listening().len(), 1, "{:?}", daemon.listening());
    }

    let port = free_port();
    write_config(
        &sandbox,
        &format!("{CONFIG}metrics-listen = \"127.0.0.1:{port}\"\n"),
    );
    let daemon = Daemon::start(&sandbox);
    wait(
        || daemon.listening().contains(&port),
        "the metrics listener",
    );
    // Some figures to show: two puts, a hit, and a miss asked of the daemon.
    let mut helper = sandbox.spawn();
    helper.handshake();
    helper.call(&put(1, &action(1), b"one"));
    helper.call(&put(2, &action(2), b"two!"));
    helper.call(&get(3, &action(1)));
    helper.call(&get(4, &action(9)));
    helper.call(&close(5));
    helper.wait_exit(Duration::from_secs(10));

    let metrics = scrape(port);
    let stats: serde_json::Value =
        serde_json::from_slice(&sandbox.run(&["stats", "--json"]).stdout).unwrap();
    let lifetime = &stats["lifetime"];
    for (metric, field) in [
        ("warren_gets_total", "gets"),
        ("warren_hits_total", "hits"),
        ("warren_misses_total", "misses"),
        ("warren_puts_total", "puts"),
        ("warren_put_bytes_total", "put_bytes"),
        ("warren_remote_lookups_total", "remote_lookups"),
        ("warren_remote_wait_microseconds_total", "remote_wait_us"),
    ] {
        assert_eq!(
            value(&metrics, metric),
            lifetime[field].as_u64().unwrap(),
            "{metric} against stats' {field}:\n{metrics}\n{stats}"
        );
    }
    assert_eq!(value(&metrics, "warren_gets_total"), 2);
    assert_eq!(value(&metrics, "warren_remote_lookups_total"), 1);
    // The two entries put here, in our summary for peers (inotify, or the
    // next rescan, tells the index).
    wait(
        || {
            scrape(port)
                .lines()
                .any(|l| l == "warren_summary_entries 2")
        },
        "the summary to name both entries",
    );
    // Anything else is not found.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}
