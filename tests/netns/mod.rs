//! Hosts on a private LAN made of Linux network namespaces, for peer tests
//! with real daemons and real mDNS.
//!
//! One namespace holds a bridge (the switch); each host namespace gets one
//! end of a veth pair on it, with an address in 10.77.<n>.0/24. Multicast
//! flows between the hosts and nowhere else: nothing here touches the
//! machine's own interfaces. Names carry the test's PID and a counter, and
//! [`Lan`]'s `Drop` kills every process it started and deletes every
//! namespace, also when the test fails.
//!
//! Namespaces need root. Without it the tests skip with a message, except
//! under `CI=true`, where a skip would hide a broken setup, so they fail.
//!
//! Each host's home is isolated as `go_env` isolates one. The benchmarks
//! build the same LAN in Python (`scripts/netns.py`).

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset
#![allow(clippy::disallowed_methods)] // tests write plain files, not store files

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::go_env::warren_bin;

static NEXT_LAN: AtomicU32 = AtomicU32::new(0);

/// Whether this process may create namespaces. Panics under CI without it.
pub fn available() -> bool {
    let root = crate::go_env::is_root();
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if root && ip {
        return true;
    }
    let why = if ip {
        "not root"
    } else {
        "no `ip` command (iproute2)"
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "network-namespace tests cannot run under CI: {why}"
    );
    skip(&format!(
        "network-namespace tests skipped: {why} (they run as root, and always in CI)"
    ));
    false
}

#[expect(clippy::print_stderr, reason = "a skipped test says why")]
fn skip(message: &str) {
    eprintln!("{message}");
}

fn run(args: &[&str]) -> Output {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        output.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A LAN of hosts; dropped, it removes everything it made.
pub struct Lan {
    switch: String,
    pub hosts: Vec<Host>,
}

/// One machine on the LAN: a namespace and a home of its own.
pub struct Host {
    pub name: String,
    pub netns: String,
    pub veth: String,
    pub address: String,
    pub dir: tempfile::TempDir,
    pub go: PathBuf,
    daemon: Option<Child>,
}

impl Lan {
    /// Creates `count` hosts named h1, h2, …
    pub fn new(count: usize, go: PathBuf) -> Self {
        let id = format!(
            "w{}x{}",
            std::process::id(),
            NEXT_LAN.fetch_add(1, Ordering::Relaxed)
        );
        let subnet = 1 + (std::process::id() + NEXT_LAN.load(Ordering::Relaxed)) % 250;
        let switch = format!("{id}sw");
        run(&["ip", "netns", "add", &switch]);
        let mut lan = Lan {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        ns(&switch, &["ip", "link", "add", "br0", "type", "bridge"]);
        ns(&switch, &["ip", "link", "set", "br0", "up"]);
        for n in 1..=count {
            let name = format!("h{n}");
            let netns = format!("{id}{name}");
            let veth = format!("v{name}");
            let peer = format!("{id}p{n}");
            let address = format!("10.77.{subnet}.{n}");
            run(&["ip", "netns", "add", &netns]);
            let host = Host {
                name,
                netns: netns.clone(),
                veth: veth.clone(),
                address: address.clone(),
                dir: tempfile::tempdir().unwrap(),
                go: go.clone(),
                daemon: None,
            };
            lan.hosts.push(host);
            run(&[
                "ip", "link", "add", &veth, "netns", &netns, "type", "veth", "peer", "name", &peer,
                "netns", &switch,
            ]);
            ns(&switch, &["ip", "link", "set", &peer, "master", "br0"]);
            ns(&switch, &["ip", "link", "set", &peer, "up"]);
            ns(
                &netns,
                &["ip", "addr", "add", &format!("{address}/24"), "dev", &veth],
            );
            ns(&netns, &["ip", "link", "set", &veth, "up"]);
            ns(&netns, &["ip", "link", "set", "lo", "up"]);
            for sub in ["home", "config/warren", "work", "gopath"] {
                std::fs::create_dir_all(lan.hosts[n - 1].path(sub)).unwrap();
            }
        }
        lan
    }

    pub fn host(&mut self, n: usize) -> &mut Host {
        &mut self.hosts[n - 1]
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.stop_daemon();
            let _ = Command::new("ip")
                .args(["netns", "del", &host.netns])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .status();
    }
}

fn ns(netns: &str, args: &[&str]) -> Output {
    let mut full = vec!["ip", "netns", "exec", netns];
    full.extend_from_slice(args);
    run(&full)
}

impl Host {
    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// A command run inside this host's namespace, with its own home.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(program)
            .args(args);
        crate::go_env::isolate(&mut cmd, self.dir.path(), "gocache");
        cmd.env("WARREN_DIR", self.store());
        cmd
    }

    /// `warren <args>` on this host; asserts success, returns stdout.
    pub fn warren(&self, args: &[&str]) -> String {
        let output = self
            .command(Path::new(warren_bin()), args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: warren {} failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Creates the identity and writes `config` as this host's config
    /// file; returns the peer ID.
    pub fn init(&self, config: &str) -> String {
        self.warren(&["init"]);
        std::fs::write(self.path("config/warren/config.toml"), config).unwrap();
        self.peer_id()
    }

    pub fn peer_id(&self) -> String {
        let out = self.warren(&["id"]);
        out.lines()
            .find_map(|line| line.strip_prefix("peer ID: "))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn trust(&self, other: &str) {
        self.warren(&["peers", "add", other]);
    }

    /// Starts `warren daemon` in this namespace, logging to `daemon.log`.
    pub fn start_daemon(&mut self) {
        let log = std::fs::File::create(self.path("daemon.log")).unwrap();
        let child = self
            .command(Path::new(warren_bin()), &["daemon"])
            .env("WARREN_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        // Accepting, not just there: a daemon killed before leaves its
        // socket file behind until the new one replaces it.
        let socket = self.store().join("daemon.sock");
        wait_for(
            Duration::from_secs(20),
            &format!("{}: daemon socket", self.name),
            || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
            || self.daemon_log(),
        );
    }

    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running daemon's PID.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Waits until `warren peers` shows `peer_id` connected.
    pub fn wait_connected(&self, peer_id: &str, timeout: Duration) {
        wait_for(
            timeout,
            &format!("{}: connection to {peer_id}", self.name),
            || {
                self.warren(&["peers"])
                    .lines()
                    .any(|line| line.contains(peer_id) && line.contains("connected"))
            },
            || format!("{}\n{}", self.warren(&["peers"]), self.daemon_log()),
        );
    }

    /// Runs `go <args>` with warren; asserts success and a silent warren.
    pub fn go(&self, gocache: &str, args: &[&str]) -> String {
        self.go_with(gocache, args, &[])
    }

    /// Runs `go <args>` with warren; asserts success, returns stderr.
    pub fn go_stderr(&self, gocache: &str, args: &[&str]) -> String {
        let output = self
            .command(&self.go, args)
            .env("GOCACHEPROG", warren_bin())
            .env("GOCACHE", self.path(gocache))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "{}: go failed:\n{stderr}",
            self.name
        );
        stderr
    }

    /// [`Host::go`] with more environment variables.
    pub fn go_with(&self, gocache: &str, args: &[&str], env: &[(&str, &str)]) -> String {
        let output = self
            .command(&self.go, args)
            .env("GOCACHEPROG", warren_bin())
            .env("GOCACHE", self.path(gocache))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{}: go {} failed:\n{stderr}",
            self.name,
            args.join(" ")
        );
        assert!(
            stderr.is_empty(),
            "{}: go {} printed:\n{stderr}",
            self.name,
            args.join(" ")
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Builds cmd/gofmt with Go's own cache and asserts that `shared`, a
    /// gofmt built through warren in the work dir, is byte-identical.
    pub fn assert_same_as_plain_gofmt(&self, shared: &str) {
        let plain = self
            .command(&self.go, &["build", "-o", "gofmt-plain", "cmd/gofmt"])
            .env("GOCACHE", self.path("builtin"))
            .output()
            .unwrap();
        assert!(
            plain.status.success(),
            "{}",
            String::from_utf8_lossy(&plain.stderr)
        );
        let read = |name: &str| std::fs::read(self.path("work").join(name)).unwrap();
        assert!(
            read(shared) == read("gofmt-plain"),
            "{}: {shared} differs from a build with Go's own cache",
            self.name
        );
    }

    /// How many module-index entries this host holds, from `warren verify`.
    pub fn module_indexes(&self) -> u64 {
        let verify = self.warren(&["verify"]);
        let census = (verify.lines())
            .find(|line| line.contains("module indexes"))
            .unwrap_or_else(|| panic!("{verify}"));
        let numbers: Vec<u64> = (census.split(|c: char| !c.is_ascii_digit()))
            .filter_map(|n| n.parse().ok())
            .collect();
        numbers[3]
    }

    /// Lifetime figures of this host's store.
    pub fn lifetime(&self) -> serde_json::Value {
        let stats: serde_json::Value =
            serde_json::from_str(&self.warren(&["stats", "--json"])).unwrap();
        stats["lifetime"].clone()
    }
}

/// Polls `done` every 100 ms until it holds or `timeout` passes.
pub fn wait_for(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}\n{}",
        context()
    );
}

/// PIDs of processes whose command line contains every one of `words`.
pub fn processes_with(words: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if words.iter().all(|word| cmdline.contains(word)) && pid != std::process::id() {
            found.push(pid);
        }
    }
    found
}
