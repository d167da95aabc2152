//! The team bucket with real `go` builds against a local S3 server
//! (SeaweedFS on loopback, `s3_server`): a writer's builds reach a reader
//! with no LAN peers only through signed manifests of a signer it trusts.
//!
//! Every warren process and S3 client gets its environment from the
//! server's guard (loopback only, no `AWS_*` of the machine, metadata
//! lookups off). Each home has its own identity (`WARREN_IDENTITY`, as a
//! CI job has), config (`[share] enabled = false`: the bucket alone) and
//! daemon, started here and killed by PID when the home is dropped.
//! Without `weed` the tests skip, except under `CI=true`.

mod go_env;
mod s3_server;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use go_env::{Cache, GoEnv, isolate, warren_bin};
use s3_server::{ClientEnv, Role, S3Server};

/// One machine: a go environment, an identity, a config and a daemon.
struct Home {
    env: GoEnv,
    secret: String,
    peer_id: String,
    client: ClientEnv,
    daemon: Option<Child>,
}

impl Home {
    /// A home that speaks to `server` as `role`, with `[bucket]` under
    /// `prefix` (`write` as given) and `extra` lines in that table.
    fn new(server: &S3Server, role: Role, prefix: &str, write: bool, extra: &str) -> Self {
        let env = GoEnv::new();
        let keygen = Command::new(warren_bin()).arg("keygen").output().unwrap();
        assert!(keygen.status.success(), "{keygen:?}");
        let printed = String::from_utf8(keygen.stdout).unwrap();
        let field = |name: &str| {
            printed
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .unwrap()
                .to_owned()
        };
        let config_dir = env.path("config/warren");
        fs::create_dir_all(&config_dir).unwrap();
        fs::set_permissions(&config_dir, fs::Permissions::from_mode(0o700)).unwrap();
        let config = format!(
            "[share]\nenabled = false\n\n{}{extra}",
            server.bucket_table(prefix, write)
        );
        let path = config_dir.join("config.toml");
        #[expect(
            clippy::disallowed_methods,
            reason = "a test writes a config file, not a store file"
        )]
        fs::write(&path, config).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let client = server.env(role, &env.path("home"));
        Self {
            secret: field("secret: "),
            peer_id: field("peer ID: "),
            env,
            client,
            daemon: None,
        }
    }

    /// A writer (its daemon running) that built the test module and
    /// synced: its manifest and bodies are in the bucket under `warren`.
    fn published(server: &S3Server) -> Self {
        let mut writer = Self::new(server, Role::Writer, "warren", true, "");
        writer.env.write_module();
        writer.start_daemon();
        writer.build(&["build", "./..."]);
        assert!(writer.sync().status.success());
        writer
    }

    /// `warren <args>` as this home, guarded.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(warren_bin());
        command.args(args);
        isolate(&mut command, self.env.dir.path(), "gocache");
        command
            .env("WARREN_DIR", self.env.store())
            .env("WARREN_IDENTITY", &self.secret);
        self.client.apply(&mut command);
        command
    }

    fn warren(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn daemon_log(&self) -> PathBuf {
        self.env.path("daemon.log")
    }

    /// Starts this home's daemon and waits for its socket.
    fn start_daemon(&mut self) {
        let log = fs::File::create(self.daemon_log()).unwrap();
        let child = self
            .command(&["daemon"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let socket = self.env.store().join("daemon.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the daemon did not start: {}",
                fs::read_to_string(self.daemon_log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `go <args>` with warren as GOCACHEPROG.
    fn go(&self, args: &[&str]) -> Output {
        self.env
            .go_command(Cache::Warren, "gocache", args)
            .output()
            .unwrap()
    }

    /// `warren bucket status --json`'s view of the daemon.
    fn bucket_status(&self) -> serde_json::Value {
        let output = self.warren(&["bucket", "status", "--json"]);
        assert!(output.status.success(), "{output:?}");
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        status["daemon"].clone()
    }

    /// Waits until the daemon's index holds at least `manifests`.
    fn wait_for_manifests(&self, manifests: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let held = self.bucket_status()["manifests_held"].as_u64().unwrap();
            if held >= manifests {
                return;
            }
            assert!(Instant::now() < deadline, "{}", self.bucket_status());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Builds, asserting success; go's stderr.
    fn build(&self, args: &[&str]) -> String {
        let output = self.go(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "go {args:?}: {stderr}");
        stderr
    }

    fn sync(&self) -> Output {
        self.warren(&["bucket", "sync", "--timeout", "5min"])
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

fn count(status: &serde_json::Value, field: &str) -> u64 {
    status[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {status}"))
}

/// A writer (a CI job: identity from `WARREN_IDENTITY`, ephemeral home,
/// `write = true`) builds std and gofmt and syncs; a reader with no LAN
/// peers, trusting it, builds gofmt from the bucket, and the binary is the
/// one Go's own cache builds. Then `warren peers remove` purges what the
/// writer's manifests brought.
#[test]
fn a_reader_builds_from_a_trusted_writers_bucket_and_the_outputs_match() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let mut writer = Home::new(&server, Role::Writer, "warren", true, "");
    writer.start_daemon();
    writer.build(&["build", "std"]);
    writer.build(&["build", "-o", "gofmt", "cmd/gofmt"]);
    let synced = writer.sync();
    assert!(synced.status.success(), "{synced:?}");
    let written = writer.bucket_status();
    assert!(count(&written, "manifests_written") >= 2, "{written}");
    assert_eq!(count(&written, "uploads_pending"), 0);

    let mut reader = Home::new(&server, Role::Reader, "warren", false, "");
    let added = reader.warren(&["peers", "add", &writer.peer_id, "--name", "ci"]);
    assert!(added.status.success(), "{added:?}");
    reader.start_daemon();
    reader.wait_for_manifests(2);
    reader.build(&["build", "-o", "gofmt", "cmd/gofmt"]);
    let status = reader.bucket_status();
    let from_bucket = count(&status, "hits") + count(&status, "read_ahead");
    assert!(from_bucket > 100, "{status}");
    assert_eq!(status["trusted"][0][0], writer.peer_id.as_str(), "{status}");
    let trace = String::from_utf8(reader.warren(&["trace"]).stdout).unwrap();
    assert!(
        trace.contains("bucket hit") && trace.contains("ci"),
        "{trace}"
    );
    let stats = String::from_utf8(reader.warren(&["stats"]).stdout).unwrap();
    assert!(stats.contains("bucket       s3://"), "{stats}");
    let peers = String::from_utf8(reader.warren(&["peers"]).stdout).unwrap();
    assert!(
        peers.contains("bucket s3://") && peers.contains("from 1 trusted signer "),
        "{peers}"
    );

    reader.env.run(
        Cache::Builtin,
        "builtin",
        &["build", "-o", "gofmt-plain", "cmd/gofmt"],
    );
    let work = reader.env.path("work");
    assert!(
        fs::read(work.join("gofmt")).unwrap() == fs::read(work.join("gofmt-plain")).unwrap(),
        "gofmt built from the bucket differs from Go's own build"
    );

    let removed = reader.warren(&["peers", "remove", "ci"]);
    assert!(removed.status.success(), "{removed:?}");
    let stats: serde_json::Value =
        serde_json::from_slice(&reader.warren(&["stats", "--json"]).stdout).unwrap();
    assert_eq!(stats["sources"]["peers"], serde_json::json!([]), "{stats}");
    assert_eq!(count(&reader.bucket_status(), "mappings_held"), 0);
}

/// An attacker with the bucket's write credentials: a writer the reader
/// does not trust, a trusted signer's manifest tampered with, and the same
/// without its signature. The reader uses none of them, builds correctly
/// on its own, and names the untrusted signer in its status.
#[test]
fn untrusted_unsigned_and_tampered_manifests_are_never_used() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let stranger = Home::published(&server);

    let trusted = Home::new(&server, Role::Reader, "warren", false, "");
    let mut reader = Home::new(&server, Role::Reader, "warren", false, "");
    let added = reader.warren(&["peers", "add", &trusted.peer_id, "--name", "trusted"]);
    assert!(added.status.success(), "{added:?}");
    // The stranger's manifests, renamed as the trusted signer's: once
    // with a mapping changed, once without a signature.
    let manifests = server.list(Role::Reader, "warren/v1/manifests/");
    assert!(!manifests.is_empty());
    for manifest in &manifests {
        let mut bytes = server.get(Role::Reader, &manifest.key).unwrap();
        let renamed = manifest.key.replace(&stranger.peer_id, &trusted.peer_id);
        // Another valid name: the random part's last digit changed.
        let stem = renamed.strip_suffix(".manifest").unwrap();
        let (stem, last) = stem.split_at(stem.len() - 1);
        let other = if last == "0" { "1" } else { "0" };
        let unsigned = format!("{stem}{other}.manifest");
        let len = bytes.len();
        bytes[len - 64 - 20] ^= 1;
        server.put(Role::Writer, &renamed, &bytes).unwrap();
        server
            .put(Role::Writer, &unsigned, &bytes[..len - 64])
            .unwrap();
    }
    reader.env.write_module();
    reader.start_daemon();
    // Wait for a refresh that saw them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&reader.bucket_status(), "manifests_refused") < 2 * manifests.len() as u64 {
        assert!(Instant::now() < deadline, "{}", reader.bucket_status());
        std::thread::sleep(Duration::from_millis(200));
    }
    reader.build(&["build", "./..."]);
    let status = reader.bucket_status();
    assert_eq!(
        count(&status, "hits") + count(&status, "read_ahead"),
        0,
        "{status}"
    );
    assert_eq!(count(&status, "manifests_held"), 0, "{status}");
    assert!(
        status["untrusted"]
            .as_array()
            .unwrap()
            .contains(&stranger.peer_id.as_str().into()),
        "{status}"
    );
    let run = reader.go(&["run", "."]);
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello, Warren\n");
}

/// The server stops answering after the reader loaded its index: the
/// build completes, costing one deadline, with one warning.
#[test]
fn a_bucket_that_stops_answering_costs_one_warning() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let writer = Home::published(&server);

    let extra = "deadline = \"1s\"\ncooldown = \"10min\"\nread-ahead-size = \"0 B\"\n";
    let mut reader = Home::new(&server, Role::Reader, "warren", false, extra);
    let added = reader.warren(&["peers", "add", &writer.peer_id, "--name", "ci"]);
    assert!(added.status.success(), "{added:?}");
    reader.env.write_module();
    reader.start_daemon();
    reader.wait_for_manifests(1);
    server.pause();
    let started = Instant::now();
    let stderr = reader.build(&["build", "./..."]);
    let took = started.elapsed();
    server.resume();
    let warnings: Vec<_> = stderr.lines().filter(|l| l.contains("warren:")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("team bucket"), "{stderr}");
    assert!(took < Duration::from_secs(120), "{took:?}");
    assert!(count(&reader.bucket_status(), "failures") >= 1);
}

/// `write = true` with credentials that may only read: the build
/// succeeds, the daemon warns once, and `warren bucket sync` fails with
/// the reason.
#[test]
fn read_only_credentials_with_write_warn_once_and_the_build_succeeds() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let mut writer = Home::new(&server, Role::Reader, "warren", true, "");
    writer.env.write_module();
    writer.start_daemon();
    let stderr = writer.build(&["build", "./..."]);
    assert!(stderr.is_empty(), "{stderr}");
    writer.build(&["vet", "./..."]);
    let synced = writer.sync();
    assert!(!synced.status.success(), "{synced:?}");
    let message = String::from_utf8_lossy(&synced.stderr);
    assert!(message.contains("refused"), "{message}");
    let log = fs::read_to_string(writer.daemon_log()).unwrap();
    assert_eq!(log.matches("cannot write").count(), 1, "{log}");
    assert!(server.list(Role::Reader, "warren/v1/").is_empty());

    // The doctor says what is wrong, in its Bucket section.
    let doctor = writer.warren(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let bucket: Vec<_> = (report["checks"].as_array().unwrap().iter())
        .filter(|check| check["section"] == "Bucket")
        .collect();
    assert!(
        bucket
            .iter()
            .any(|c| c["status"] == "ok" && c["what"].as_str().unwrap().contains("can list")),
        "{bucket:?}"
    );
    assert!(
        bucket
            .iter()
            .any(|c| c["status"] == "problem"
                && c["what"].as_str().unwrap().contains("cannot write")),
        "{bucket:?}"
    );
}

/// gc removes a manifest older than the window, and keeps every body a
/// recent manifest names (and a stray body within the grace).
#[test]
fn gc_keeps_what_recent_manifests_name() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let writer = Home::published(&server);
    let bodies = server.list(Role::Reader, "warren/v1/objects/");
    let manifests = server.list(Role::Reader, "warren/v1/manifests/");
    // A copy of a recent manifest, named as signed years ago.
    let copy = &manifests[0];
    let bytes = server.get(Role::Reader, &copy.key).unwrap();
    let (_, rest) = copy.key.rsplit_once('/').unwrap();
    let old = format!("warren/v1/manifests/0001500000000000{}", &rest[16..]);
    server.put(Role::Writer, &old, &bytes).unwrap();
    let stray = format!("warren/v1/objects/{}", "ab".repeat(32));
    server.put(Role::Writer, &stray, b"not named yet").unwrap();

    let gc = writer.warren(&["bucket", "gc", "--older-than", "30days"]);
    assert!(gc.status.success(), "{gc:?}");
    let after = server.list(Role::Reader, "warren/v1/");
    let keys: Vec<_> = after.iter().map(|o| o.key.as_str()).collect();
    assert!(!keys.contains(&old.as_str()), "{keys:?}");
    for kept in manifests.iter().chain(&bodies) {
        assert!(
            keys.contains(&kept.key.as_str()),
            "{} went: {keys:?}",
            kept.key
        );
    }
    assert!(
        keys.contains(&stray.as_str()),
        "a body within the grace went"
    );
}
