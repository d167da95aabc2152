//! The daemon's Prometheus endpoint (`metrics-listen`): off by default;
//! when on, a scrape over loopback shows what `warren stats --json` shows.
//!
//! The daemon runs with mDNS off and listens on loopback only.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{DAEMON_CONFIG as CONFIG, Daemon, Sandbox, action, close, get, put, wait_until};

fn wait(done: impl FnMut() -> bool, what: &str) {
    wait_until(Duration::from_secs(20), what, done);
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

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn metrics_are_off_by_default_and_match_stats_when_on() {
    let sandbox = Sandbox::new();
    sandbox.init_with_config(CONFIG);
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
    sandbox.write_config(&format!("{CONFIG}metrics-listen = \"127.0.0.1:{port}\"\n"));
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
