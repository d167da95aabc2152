//! The daemon's Prometheus endpoint (`metrics-listen`): off by default;
//! when on, a scrape over loopback shows what `warren stats --json` shows.
//!
//! The daemon runs with mDNS off and listens on loopback only.
mod sandbox;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sandbox::{DAEMON_CONFIG as CONFIG, Daemon, Sandbox, action, close, get, put, wait_until};

fn wait(done: impl FnMut() -> bool, what: &str) {
    wait_until(Duration::from_secs(20), what, done);
}

/// One HTTP/1.1 request for `path` on `port` with `Host: host`: the status
/// line and the body.
fn request(port: u16, host: &str, path: &str) -> (String, String) {
    try_request(port, host, path).unwrap_or_else(|e| panic!("GET {path} with Host {host:?}: {e}"))
}

fn try_request(port: u16, host: &str, path: &str) -> Result<(String, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

/// `GET /metrics` as Prometheus sends it; its body, which must come with 200.
fn scrape(port: u16) -> String {
    let (status, body) = request(port, &format!("127.0.0.1:{port}"), "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}\n{body}");
    body
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
        let ports = daemon.listening();
        assert_eq!(ports.len(), 1, "{ports:?}");
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
    let (status, _) = request(port, &format!("localhost:{port}"), "/");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
}

/// Starts a daemon serving metrics on `127.0.0.1:<port>`.
fn metrics_daemon(sandbox: &Sandbox, port: u16) -> Daemon {
    assert!(sandbox.run(&["init"]).status.success());
    sandbox.write_config(&format!("{CONFIG}metrics-listen = \"127.0.0.1:{port}\"\n"));
    let daemon = Daemon::start(sandbox);
    wait(
        || daemon.listening().contains(&port),
        "the metrics listener",
    );
    daemon
}

/// DNS rebinding: a web page on `evil.example` makes its name resolve to
/// 127.0.0.1, and the browser then sends the page's requests to the
/// daemon with `Host: evil.example:<port>` and lets the page read the
/// answer (peer IDs, counters). Only a Host that names the listening
/// address, or a loopback name on loopback, is answered
/// (SECURITY.md, "The metrics endpoint").
#[test]
fn a_foreign_host_is_refused_and_a_loopback_scrape_works() {
    let sandbox = Sandbox::new();
    let port = free_port();
    let _daemon = metrics_daemon(&sandbox, port);
    for host in [
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        // The right name at another port is another server's.
        format!("localhost:{}", port.wrapping_add(1)),
        "localhost".to_owned(),
        String::new(),
    ] {
        let (status, body) = request(port, &host, "/metrics");
        let code: u16 = status
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {status:?}"));
        assert!(
            (400..500).contains(&code),
            "Host {host:?} got {status}:\n{body}"
        );
        assert!(!body.contains("warren_"), "Host {host:?} read the metrics");
    }
    // An absolute request target names the host too, and wins over Host.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET http://evil.example:{port}/metrics HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert!(!answer.contains("warren_"), "{answer}");

    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = request(port, &host, "/metrics");
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "Host {host:?}: {status}"
        );
        assert!(body.contains("warren_gets_total 0"), "{body}");
    }
}

/// A flood of connections to the metrics port, half of them idle and half
/// sending their headers a byte at a time (slowloris), from a machine
/// whose daemon has the usual limit of 1,024 open files. Without a cap
/// each connection held a task and a file descriptor, the descriptors ran
/// out, and the helpers' socket could no longer accept (logging each try,
/// every 10 ms). With the cap the daemon holds a few of them, closes the
/// rest at once, answers helpers, and says so once (SECURITY.md, "The
/// metrics endpoint").
#[test]
fn a_connection_flood_on_the_metrics_port_leaves_the_daemon_answering() {
    const FLOOD: usize = 1_100;
    use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit, setrlimit};
    // This process holds the flood's end of every connection.
    let ours = getrlimit(Resource::Nofile);
    if ours.current.is_some_and(|n| n < 4096) {
        let raised = Rlimit {
            current: Some(ours.maximum.map_or(4096, |max| max.min(4096))),
            maximum: ours.maximum,
        };
        setrlimit(Resource::Nofile, raised).unwrap();
    }
    let sandbox = Sandbox::new();
    let port = free_port();
    let daemon = metrics_daemon(&sandbox, port);
    let pid = Pid::from_raw(daemon.pid() as i32).unwrap();
    let usual = Rlimit {
        current: Some(1024),
        maximum: Some(1024),
    };
    prlimit(Some(pid), Resource::Nofile, usual).unwrap();
    let open_files = || {
        std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    };

    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || flood(address, FLOOD, &stop))
    };
    // A helper's lookup, as `warren` asks it of the daemon, once the
    // flood has been held a while.
    std::thread::sleep(Duration::from_secs(2));
    let lookup = format!(r#"{{"op":"get","action":"{}"}}"#, hex::encode(action(1)));
    let asked = Instant::now();
    let answer = sandbox::ask_daemon(&sandbox, &lookup, Duration::from_secs(3));
    let took = asked.elapsed();
    let files = open_files();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let held = flood.join().unwrap();
    assert!(
        held > FLOOD / 2,
        "the flood reached only {held} connections"
    );
    assert!(
        answer.as_deref().is_some_and(|a| a.contains("missed")),
        "the daemon did not answer a lookup within 3 s of a connection flood \
         (answer {answer:?} after {took:?}, {files} files open):\n{}",
        daemon.log()
    );
    assert!(
        files < 256,
        "the daemon held {files} files open during the flood"
    );

    // Metrics come back once the flood ends.
    wait(
        || {
            try_request(port, &format!("127.0.0.1:{port}"), "/metrics")
                .is_ok_and(|(status, _)| status.starts_with("HTTP/1.1 200"))
        },
        "a scrape after the flood",
    );
    let warnings = daemon.warnings();
    assert!(
        warnings.len() <= 2,
        "{} warning lines for one flood:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
}

/// Holds `count` connections to `address` open until `stop`: half idle,
/// half sending a request's headers a byte at a time. Each that the
/// server closes is opened again, at most 200 every 200 ms. Returns how
/// many were open at most at once.
fn flood(
    address: std::net::SocketAddr,
    count: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> usize {
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX-Slow: ",
        address.port()
    );
    let open = |slow: bool| {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
        if slow {
            stream.write_all(head.as_bytes()).ok()?;
        }
        stream.set_nonblocking(true).ok()?;
        Some(stream)
    };
    let mut streams: Vec<Option<TcpStream>> = (0..count).map(|n| open(n % 2 == 0)).collect();
    let mut most = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut reopened = 0;
        for (n, slot) in streams.iter_mut().enumerate() {
            let slow = n % 2 == 0;
            let alive = slot.as_mut().is_some_and(|stream| {
                let mut byte = [0; 1];
                let unread = matches!(
                    stream.peek(&mut byte),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                );
                unread && (!slow || stream.write_all(b"x").is_ok())
            });
            if !alive && reopened < 200 {
                reopened += 1;
                *slot = open(slow);
            }
        }
        most = most.max(streams.iter().flatten().count());
        std::thread::sleep(Duration::from_millis(200));
    }
    most
}

/// Another program holds the metrics port: the daemon says so once and
/// serves helpers and peers all the same.
#[test]
fn a_metrics_port_in_use_is_told_and_the_daemon_runs_on() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let sandbox = Sandbox::new();
    assert!(sandbox.run(&["init"]).status.success());
    sandbox.write_config(&format!("{CONFIG}metrics-listen = \"127.0.0.1:{port}\"\n"));
    let daemon = Daemon::start(&sandbox);
    let status = sandbox::ask_daemon(&sandbox, r#"{"op":"status"}"#, Duration::from_secs(10));
    assert!(
        status.is_some_and(|answer| answer.contains("status")),
        "{}",
        daemon.log()
    );
    let warnings = daemon.warnings();
    assert_eq!(warnings.len(), 1, "{}", daemon.log());
    assert!(
        warnings[0].contains("cannot serve metrics") && warnings[0].contains(&port.to_string()),
        "{}",
        warnings[0]
    );
}
