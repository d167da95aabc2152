//! Shared helpers for tests that speak the GOCACHEPROG protocol to the real
//! `warren` binary over pipes.
//!
//! - [`Sandbox`]: a temp dir with its own store, HOME and XDG dirs, so no user
//!   config, store or `WARREN_*` variable leaks into a test.
//! - [`Helper`]: a running `warren` helper. Requests are framed exactly as
//!   Go's `ProgCache.writeToChild` frames them ([`get`], [`put`], [`close`]);
//!   stdout is decoded on a thread with serde_json's streaming deserializer,
//!   and every wait has a deadline. A watchdog SIGKILLs the helper once its
//!   time budget is spent, so a stuck helper fails the test instead of
//!   hanging it.
//! - [`Response`] and the `expect_*` checks: the typed view of one answer.
//! - [`Daemon`]: a running `warren daemon` of a sandbox (mDNS off, loopback
//!   only, as [`DAEMON_CONFIG`] says), killed by PID when dropped.
//!
//! Tests that need the real `go` command use `go_env` instead; tests with
//! several machines and real mDNS use `netns`.

#![allow(dead_code, unreachable_pub)] // not every test uses every helper

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The binary under test (the debug build Cargo made for this test run).
pub const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// How long one response may take to arrive.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a helper may live before the watchdog kills it.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);

/// A per-test directory: `store/` is the warren store, the rest is HOME.
pub struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("warren-protocol-")
            .tempdir()
            .expect("a temp dir");
        Self { tmp }
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// The store directory (`WARREN_DIR`); created by the helper.
    pub fn store(&self) -> PathBuf {
        self.root().join("store")
    }

    /// `<store>/v1/actions/xx/<hex>`: where the entry for `action` lives.
    pub fn entry_path(&self, action: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(action);
        self.store().join("v1/actions").join(&hex[..2]).join(&hex)
    }

    /// Every regular file under `<store>/v1/<kind>` (temp files included).
    pub fn files_under(&self, kind: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, found);
                } else {
                    found.push(path);
                }
            }
        }
        let mut found = Vec::new();
        walk(&self.store().join("v1").join(kind), &mut found);
        found.sort();
        found
    }

    /// `warren` with an isolated environment: no `WARREN_*`, `XDG_*` or log
    /// variables from the caller, HOME and XDG dirs inside the sandbox.
    pub fn command(&self) -> Command {
        let mut command = Command::new(WARREN);
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("WARREN_")
                || name_text.starts_with("XDG_")
                || name_text == "RUST_LOG"
            {
                command.env_remove(&name);
            }
        }
        let home = self.root().join("home");
        command
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("WARREN_DIR", self.store())
            .current_dir(self.root());
        command
    }

    /// Starts the helper (`warren` with no subcommand).
    pub fn spawn(&self) -> Helper {
        self.spawn_with_budget(DEFAULT_BUDGET)
    }

    pub fn spawn_with_budget(&self, budget: Duration) -> Helper {
        Helper::spawn(self.command(), budget)
    }

    /// Runs `warren <args>` to completion (stdin closed) within `timeout`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args);
        run_with_timeout(command, Duration::from_secs(30))
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs a command with stdin closed, killing it if it outlives `timeout`.
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren to start");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {timeout:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader not to panic"),
        stderr: stderr.join().expect("stderr reader not to panic"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// What the stdout reader thread saw.
enum Event {
    /// One JSON value, with the exact bytes it was read from (including the
    /// whitespace before it).
    Value { raw: String, value: Value },
    /// Stdout ended; `trailing` is what followed the last value.
    Eof { trailing: String },
    /// Stdout held something that is not a JSON value.
    Invalid(String),
}

/// One response from the helper, decoded with Go's field names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "Err")]
    pub err: Option<String>,
    #[serde(rename = "KnownCommands")]
    pub known_commands: Option<Vec<String>>,
    #[serde(rename = "Miss")]
    pub miss: Option<bool>,
    #[serde(rename = "OutputID")]
    pub output_id: Option<String>,
    #[serde(rename = "Size")]
    pub size: Option<u64>,
    #[serde(rename = "Time")]
    pub time: Option<String>,
    #[serde(rename = "DiskPath")]
    pub disk_path: Option<String>,
    /// The response's line as written, without its newline.
    #[serde(skip)]
    pub raw: String,
}

/// A running helper, talking GOCACHEPROG over pipes.
pub struct Helper {
    child: Arc<Mutex<Child>>,
    stdin: Option<BufWriter<ChildStdin>>,
    events: Receiver<Event>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// Dropping it disarms the watchdog.
    watchdog: Option<SyncSender<()>>,
    killed_by_watchdog: Arc<AtomicBool>,
    budget: Duration,
    responses_seen: usize,
    stdout_ended: bool,
}

impl Helper {
    fn spawn(mut command: Command, budget: Duration) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("warren to start");
        let stdin = BufWriter::with_capacity(256 * 1024, child.stdin.take().expect("stdin"));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = drain(child.stderr.take().expect("stderr"));
        let (events_tx, events) = sync_channel(64 * 1024);
        std::thread::spawn(move || read_stdout(stdout, events_tx));

        let child = Arc::new(Mutex::new(child));
        let killed_by_watchdog = Arc::new(AtomicBool::new(false));
        let (disarm, armed) = sync_channel::<()>(1);
        {
            let child = child.clone();
            let killed = killed_by_watchdog.clone();
            std::thread::spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = armed.recv_timeout(budget) {
                    killed.store(true, Ordering::SeqCst);
                    if let Ok(mut child) = child.lock() {
                        let _ = child.kill();
                    }
                }
            });
        }
        Self {
            child,
            stdin: Some(stdin),
            events,
            stderr: Some(stderr),
            watchdog: Some(disarm),
            killed_by_watchdog,
            budget,
            responses_seen: 0,
            stdout_ended: false,
        }
    }

    fn watchdog_note(&self) -> String {
        if self.killed_by_watchdog.load(Ordering::SeqCst) {
            format!(" (the watchdog killed the helper after {:?})", self.budget)
        } else {
            String::new()
        }
    }

    /// Writes `bytes` to the helper's stdin and flushes.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin to be open");
        let written = stdin.write_all(bytes).and_then(|()| stdin.flush());
        if let Err(e) = written {
            panic!("writing to the helper's stdin: {e}{}", self.watchdog_note());
        }
    }

    /// Writes `bytes` without waiting for the helper to read them: useful when
    /// a later assertion must run while a huge body is still in flight.
    pub fn send_in_background(&mut self, bytes: Vec<u8>) -> JoinHandle<io::Result<()>> {
        let mut stdin = self.stdin.take().expect("stdin to be open");
        std::thread::spawn(move || {
            stdin.write_all(&bytes)?;
            stdin.flush()?;
            Ok(())
        })
    }

    /// Closes stdin (end of input, as when `go` dies without `close`).
    pub fn close_stdin(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
    }

    /// The next response, within `timeout`.
    pub fn recv_within(&mut self, timeout: Duration) -> Response {
        let event = match self.events.recv_timeout(timeout) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => panic!(
                "no response within {timeout:?} (after {} responses){}",
                self.responses_seen,
                self.watchdog_note()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the stdout reader stopped{}", self.watchdog_note())
            }
        };
        let (raw, value) = match event {
            Event::Value { raw, value } => (raw, value),
            Event::Eof { trailing } => {
                self.stdout_ended = true;
                panic!(
                    "the helper closed stdout after {} responses (trailing {trailing:?}){}",
                    self.responses_seen,
                    self.watchdog_note()
                )
            }
            Event::Invalid(message) => panic!("the helper wrote invalid JSON: {message}"),
        };
        // One response per line: the first has nothing before it, every
        // later one exactly the newline that ended the one before.
        let expected_prefix = if self.responses_seen == 0 { "" } else { "\n" };
        let line = raw.strip_prefix(expected_prefix).unwrap_or_else(|| {
            panic!("response {raw:?} is not on a line of its own (expected {expected_prefix:?} before it)")
        });
        assert!(
            !line.contains('\n') && !line.starts_with(char::is_whitespace),
            "response {raw:?} is not one line"
        );
        check_go_omitempty(&value);
        let mut response: Response = serde_json::from_value(value)
            .unwrap_or_else(|e| panic!("response {line} does not decode as Go's Response: {e}"));
        response.raw = line.to_owned();
        self.responses_seen += 1;
        response
    }

    pub fn recv(&mut self) -> Response {
        self.recv_within(RESPONSE_TIMEOUT)
    }

    /// Reads the capabilities line and checks it.
    pub fn handshake(&mut self) {
        let first = self.recv_within(Duration::from_secs(5));
        assert_eq!(first.raw, CAPABILITIES, "first line");
    }

    /// Sends one request and returns its answer, checking the ID.
    pub fn call(&mut self, request: &Request) -> Response {
        self.send(&request.bytes);
        let response = self.recv();
        assert_eq!(response.id, request.id, "answer to {}", request.header);
        response
    }

    /// Asserts that stdout ends (after the trailing newline) within `timeout`.
    pub fn expect_stdout_end(&mut self, timeout: Duration) {
        match self.events.recv_timeout(timeout) {
            Ok(Event::Eof { trailing }) => {
                self.stdout_ended = true;
                let expected = if self.responses_seen == 0 { "" } else { "\n" };
                assert_eq!(trailing, expected, "what followed the last response");
            }
            Ok(Event::Value { raw, .. }) => panic!("unexpected extra response {raw:?}"),
            Ok(Event::Invalid(message)) => panic!("the helper wrote invalid JSON: {message}"),
            Err(RecvTimeoutError::Timeout) => panic!(
                "stdout did not end within {timeout:?}{}",
                self.watchdog_note()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                assert!(self.stdout_ended, "the stdout reader stopped early");
            }
        }
    }

    /// Sends `close`, checks it is answered, and waits for a clean exit.
    /// Returns stderr.
    pub fn close(mut self, id: i64) -> String {
        let response = self.call(&close(id));
        assert_eq!(
            response.raw,
            format!(r#"{{"ID":{id}}}"#),
            "the answer to close"
        );
        self.expect_stdout_end(RESPONSE_TIMEOUT);
        let (status, stderr) = self.finish();
        assert_eq!(
            status.code(),
            Some(0),
            "exit after close; stderr:\n{stderr}"
        );
        stderr
    }

    /// Closes stdin, waits for the helper to exit, and returns its status and
    /// stderr.
    pub fn finish(&mut self) -> (ExitStatus, String) {
        self.close_stdin();
        let status = self.wait_exit(RESPONSE_TIMEOUT);
        (status, self.take_stderr())
    }

    /// Waits for the process to exit (stdin is left as it is).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.child.lock().expect("child lock").try_wait();
            match status {
                Ok(Some(status)) => {
                    // Exited: nothing left for the watchdog to do.
                    self.watchdog.take();
                    return status;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    let _ = self.child.lock().expect("child lock").kill();
                    panic!("the helper did not exit within {timeout:?}; killed it");
                }
                Err(e) => panic!("waiting for the helper: {e}"),
            }
        }
    }

    /// SIGKILLs the helper and reaps it.
    pub fn kill(mut self) {
        {
            let mut child = self.child.lock().expect("child lock");
            child.kill().expect("SIGKILL the helper");
            child.wait().expect("reap the helper");
        }
        self.watchdog.take();
    }

    /// Everything the helper wrote on stderr; call after it exited.
    pub fn take_stderr(&mut self) -> String {
        let handle = self.stderr.take().expect("stderr taken once");
        String::from_utf8_lossy(&handle.join().expect("stderr reader not to panic")).into_owned()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stdin.take();
        if let Ok(mut child) = self.child.lock()
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.watchdog.take();
    }
}

/// Records exactly the bytes serde_json consumes, so each value's raw text
/// can be checked (framing: one response per line).
struct Tape<R> {
    inner: R,
    seen: Rc<RefCell<Vec<u8>>>,
}

impl<R: Read> Read for Tape<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.borrow_mut().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

fn read_stdout(stdout: ChildStdout, events: SyncSender<Event>) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let tape = Tape {
        inner: BufReader::new(stdout),
        seen: seen.clone(),
    };
    let mut stream = serde_json::Deserializer::from_reader(tape).into_iter::<Value>();
    // `seen` holds the bytes from stream offset `base` on.
    let mut base = 0;
    loop {
        let event = match stream.next() {
            None => Event::Eof {
                trailing: String::from_utf8_lossy(&seen.borrow()).into_owned(),
            },
            Some(Ok(value)) => {
                let end = stream.byte_offset();
                let raw: Vec<u8> = seen.borrow_mut().drain(..end - base).collect();
                base = end;
                Event::Value {
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                    value,
                }
            }
            Some(Err(e)) => Event::Invalid(format!(
                "{e}; text so far: {:?}",
                String::from_utf8_lossy(&seen.borrow())
            )),
        };
        let last = !matches!(event, Event::Value { .. });
        if events.send(event).is_err() || last {
            return;
        }
    }
}

/// Go marshals `Response` with `omitempty` on every optional field, so a
/// field is either absent or non-zero. warren claims to match that.
fn check_go_omitempty(value: &Value) {
    let Value::Object(fields) = value else {
        panic!("response {value} is not a JSON object");
    };
    for (name, field) in fields {
        let empty = match field {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(_) => false,
        };
        assert!(
            name == "ID" || !empty,
            "response {value} has a zero-valued {name}; Go omits those"
        );
    }
}

/// The capabilities line, byte for byte.
pub const CAPABILITIES: &str = r#"{"ID":0,"KnownCommands":["get","put","close"]}"#;

/// One framed request: the bytes Go would write for it.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: i64,
    /// The JSON header line, for messages.
    pub header: String,
    pub bytes: Vec<u8>,
}

impl Request {
    /// A request from raw text (for malformed input); `id` is what the
    /// answer should carry, if any.
    pub fn raw(id: i64, text: &str) -> Self {
        Self {
            id,
            header: text.lines().next().unwrap_or_default().to_owned(),
            bytes: text.as_bytes().to_vec(),
        }
    }
}

/// A deterministic ActionID for test number `n`.
pub fn action(n: u64) -> [u8; 32] {
    Sha256::digest(format!("warren test action {n}")).into()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// A header line plus the blank line Go's encoder and `writeToChild` emit.
fn header_request(id: i64, header: String, body: Option<&[u8]>) -> Request {
    let mut bytes = Vec::with_capacity(header.len() + 2 + body.map_or(0, |b| b.len() * 4 / 3 + 8));
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(b"\n\n");
    if let Some(body) = body {
        bytes.push(b'"');
        bytes.extend_from_slice(BASE64.encode(body).as_bytes());
        bytes.extend_from_slice(b"\"\n");
    }
    Request { id, header, bytes }
}

/// `get`, as Go frames it.
pub fn get(id: i64, action: &[u8; 32]) -> Request {
    header_request(
        id,
        format!(
            r#"{{"ID":{id},"Command":"get","ActionID":"{}"}}"#,
            b64(action)
        ),
        None,
    )
}

/// `put` of `body`, as Go (>= 1.24) frames it: OutputID is the body's
/// SHA-256, BodySize is omitted when zero, and the body line is omitted then
/// too.
pub fn put(id: i64, action: &[u8; 32], body: &[u8]) -> Request {
    put_claiming(
        id,
        action,
        "OutputID",
        &sha256(body),
        body.len() as u64,
        body,
    )
}

/// A `put` whose header claims `output` and `body_size` under the field name
/// `output_field` (`OutputID`, or `ObjectID` as Go before 1.24 spelled it),
/// followed by `body` (no body line when `body_size` is zero).
pub fn put_claiming(
    id: i64,
    action: &[u8; 32],
    output_field: &str,
    output: &[u8; 32],
    body_size: u64,
    body: &[u8],
) -> Request {
    let mut header = format!(
        r#"{{"ID":{id},"Command":"put","ActionID":"{}","{output_field}":"{}""#,
        b64(action),
        b64(output)
    );
    if body_size > 0 {
        header += &format!(r#","BodySize":{body_size}"#);
    }
    header.push('}');
    header_request(id, header, (body_size > 0).then_some(body))
}

/// `close`, as Go frames it (no ActionID: Go omits empty byte slices).
pub fn close(id: i64) -> Request {
    header_request(id, format!(r#"{{"ID":{id},"Command":"close"}}"#), None)
}

/// `len` pseudo-random bytes from `seed` (splitmix64; no extra crates).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Checks a `put` answer: stored, with an absolute DiskPath without extension.
pub fn expect_stored(response: &Response) -> PathBuf {
    assert_eq!(response.err, None, "put failed: {}", response.raw);
    assert_eq!(response.miss, None, "{}", response.raw);
    let path = PathBuf::from(
        response
            .disk_path
            .as_deref()
            .unwrap_or_else(|| panic!("put answer without DiskPath: {}", response.raw)),
    );
    assert!(path.is_absolute(), "DiskPath {path:?} is not absolute");
    assert_eq!(path.extension(), None, "DiskPath {path:?} has an extension");
    path
}

/// Checks a `get` answer is a plain miss.
pub fn expect_miss(response: &Response) {
    assert_eq!(
        response.raw,
        format!(r#"{{"ID":{},"Miss":true}}"#, response.id),
        "expected a miss"
    );
}

/// Checks an answer carries `Err` and nothing else.
pub fn expect_err(response: &Response) -> String {
    let err = response
        .err
        .clone()
        .unwrap_or_else(|| panic!("expected Err, got {}", response.raw));
    assert!(
        response.miss.is_none() && response.disk_path.is_none() && response.output_id.is_none(),
        "an Err answer with other fields: {}",
        response.raw
    );
    err
}

/// Checks a `get` hit for a body of `size` bytes hashing to `output`: every
/// field Go needs (OutputID, Size, Time, DiskPath) is there and right, and
/// the file at DiskPath has that size. Returns DiskPath.
pub fn expect_hit_of(response: &Response, output: &[u8; 32], size: u64) -> PathBuf {
    assert_eq!(response.err, None, "get failed: {}", response.raw);
    assert_eq!(response.miss, None, "expected a hit: {}", response.raw);
    assert_eq!(
        response.output_id.as_deref(),
        Some(b64(output).as_str()),
        "OutputID (standard base64 of the body's SHA-256) in {}",
        response.raw
    );
    // Go omits a zero Size.
    let expected_size = (size > 0).then_some(size);
    assert_eq!(response.size, expected_size, "Size in {}", response.raw);
    let time = response
        .time
        .as_deref()
        .unwrap_or_else(|| panic!("hit without Time: {}", response.raw));
    assert!(
        time.contains('T') && time.ends_with('Z'),
        "Time {time:?} is not RFC 3339 UTC"
    );
    let parsed = humantime::parse_rfc3339(time)
        .unwrap_or_else(|e| panic!("Time {time:?} is not RFC 3339: {e}"));
    let age = SystemTime::now()
        .duration_since(parsed)
        .unwrap_or_else(|e| panic!("Time {time:?} is in the future by {:?}", e.duration()));
    assert!(
        age < Duration::from_secs(3600),
        "Time {time:?} is not when the test put it"
    );
    let path = PathBuf::from(
        response
            .disk_path
            .as_deref()
            .unwrap_or_else(|| panic!("hit without DiskPath: {}", response.raw)),
    );
    assert!(path.is_absolute(), "DiskPath {path:?} is not absolute");
    assert_eq!(path.extension(), None, "DiskPath {path:?} has an extension");
    let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("DiskPath {path:?}: {e}"));
    assert!(meta.is_file(), "DiskPath {path:?} is not a file");
    assert_eq!(meta.len(), size, "size of the file at DiskPath {path:?}");
    path
}

/// Checks a `get` hit for `body`, including the file's contents.
pub fn expect_hit(response: &Response, body: &[u8]) -> PathBuf {
    let path = expect_hit_of(response, &sha256(body), body.len() as u64);
    let contents = fs::read(&path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
    assert!(
        contents == body,
        "the file at DiskPath {path:?} is not the body"
    );
    path
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> [u8; 32] {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("opening {path:?}: {e}"));
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
    hasher.finalize().into()
}

/// A config for daemons in tests: sharing on, nothing started by helpers,
/// no mDNS, and peers only on loopback (a port of the system's choosing).
pub const DAEMON_CONFIG: &str = "[share]\nenabled = true\nautostart = false\nmdns = false\n\
                                 listen = [\"/ip4/127.0.0.1/tcp/0\"]\n";

impl Sandbox {
    /// `warren init` (an identity key), then `config` as the config file.
    pub fn init_with_config(&self, config: &str) {
        let init = self.run(&["init"]);
        assert!(
            init.status.success(),
            "warren init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        self.write_config(config);
    }

    /// Replaces the config file.
    pub fn write_config(&self, text: &str) {
        #[expect(
            clippy::disallowed_methods,
            reason = "a user's config file, not the store's"
        )]
        fs::write(self.root().join("home/.config/warren/config.toml"), text).unwrap();
    }

    /// This sandbox's peer ID (`warren id`).
    pub fn peer_id(&self) -> String {
        let output = self.run(&["id"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("peer ID: "))
            .unwrap_or_else(|| panic!("no peer ID: {}", String::from_utf8_lossy(&output.stderr)))
            .to_owned()
    }
}

/// A running `warren daemon`, killed by PID when dropped; its stderr goes
/// to `daemon.log` in the sandbox.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts the sandbox's daemon and waits until its socket accepts.
    pub fn start(sandbox: &Sandbox) -> Self {
        Self::start_with(sandbox, &[])
    }

    /// Like [`Daemon::start`], with `WARREN_LOG` and the like in `env`.
    pub fn start_with(sandbox: &Sandbox, env: &[(&str, &str)]) -> Self {
        let log = sandbox.root().join("daemon.log");
        let child = sandbox
            .command()
            .arg("daemon")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Self { child, log };
        let socket = sandbox.store().join("daemon.sock");
        // Accepting, not just there: an earlier daemon's socket file stays.
        wait_until(Duration::from_secs(20), "the daemon's socket", || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("the daemon exited ({status}):\n{}", daemon.log());
            }
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its `warren: warning:` lines so far.
    pub fn warnings(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.starts_with("warren: warning:"))
            .map(str::to_owned)
            .collect()
    }

    /// The TCP ports it listens on.
    pub fn listening(&self) -> Vec<u16> {
        listening_ports(self.pid())
    }

    /// Its exit status, if it exits within `timeout`.
    pub fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on the daemon's socket of `sandbox` (a JSON line, as
/// `ipc` frames it): the answer line after any `"accepted"`, or
/// `None` if none came within `timeout`.
pub fn ask_daemon(sandbox: &Sandbox, request: &str, timeout: Duration) -> Option<String> {
    use std::io::BufRead as _;
    let deadline = Instant::now() + timeout;
    let mut stream =
        std::os::unix::net::UnixStream::connect(sandbox.store().join("daemon.sock")).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    stream.write_all(b"\n").ok()?;
    let mut lines = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).ok()? == 0 || Instant::now() > deadline {
            return None;
        }
        if line.trim() != "\"accepted\"" {
            return Some(line.trim().to_owned());
        }
    }
}

/// Polls `done` until it holds, failing the test after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ports of the TCP sockets that process `pid` has listening, from /proc.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
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

/// Creates `path` as an owner-only directory (as warren makes its own).
pub fn private_dir(path: &Path) {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new().mode(0o700).create(path).unwrap();
}
