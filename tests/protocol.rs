//! The GOCACHEPROG protocol, end to end: the real `warren` binary in a
//! sandbox, spoken to over pipes exactly as `go` speaks to it.
//!
//! Unit tests in `src/` cover the decoder and the store in isolation; these
//! cover what `go` actually relies on from the process: the capabilities line
//! comes first and unprompted, answers carry the right IDs and fields (and
//! may come in any order), bodies are verified before they land, bad input is
//! answered or reported without losing the stream, the process exits 0 on
//! `close` or end of input, nothing is lost on SIGKILL, damaged store files
//! are never handed out, and the maintenance subcommands see what the helper
//! did. Every wait has a deadline and every helper a watchdog, so a stuck
//! helper fails its test rather than hanging the suite.

mod sandbox;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use sandbox::{
    CAPABILITIES, Request, Sandbox, action, close, expect_err, expect_hit, expect_hit_of,
    expect_miss, expect_stored, get, put, put_claiming, random_bytes, sha256, sha256_file,
};

/// Asserts `stderr` is exactly `count` lines, each a `warren: error:` line.
fn assert_error_lines(stderr: &str, count: usize) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        count,
        "expected {count} error lines on stderr, got:\n{stderr}"
    );
    for line in lines {
        assert!(
            line.starts_with("warren: error:"),
            "stderr line {line:?} does not start with \"warren: error:\"; stderr:\n{stderr}"
        );
    }
}

#[test]
fn capabilities_line_comes_first_and_unprompted() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn();
    // Nothing has been sent yet: the line must come on its own.
    let started = Instant::now();
    let first = helper.recv_within(Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(first.raw, CAPABILITIES);
    assert_eq!(first.id, 0);
    assert_eq!(
        first.known_commands.as_deref(),
        Some(&["get".to_owned(), "put".to_owned(), "close".to_owned()][..])
    );
    let stderr = helper.close(1);
    assert_eq!(stderr, "");
}

#[test]
fn put_then_get_round_trips_a_body() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn();
    helper.handshake();
    let body = b"package main\n\nfunc main() {}\n";

    let stored = expect_stored(&helper.call(&put(1, &action(1), body)));
    let store = fs::canonicalize(sandbox.store()).expect("the helper created the store");
    assert!(
        stored.starts_with(&store),
        "DiskPath {stored:?} is outside the store {store:?}"
    );
    assert_eq!(fs::read(&stored).expect("reading DiskPath"), body);

    let hit = helper.call(&get(2, &action(1)));
    let path = expect_hit(&hit, body);
    assert_eq!(path, stored, "get and put disagree on DiskPath");

    expect_miss(&helper.call(&get(3, &action(2))));
    helper.close(4);
}

#[test]
fn zero_size_body_is_stored_without_a_body_line() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn();
    helper.handshake();
    let request = put(1, &action(1), b"");
    assert!(
        !request.header.contains("BodySize") && request.bytes.ends_with(b"}\n\n"),
        "Go frames an empty put as a header and a blank line only"
    );
    let stored = expect_stored(&helper.call(&request));
    assert_eq!(fs::read(&stored).expect("reading DiskPath"), b"");

    let hit = helper.call(&get(2, &action(1)));
    assert_eq!(hit.size, None, "Go omits a zero Size: {}", hit.raw);
    expect_hit(&hit, b"");
    helper.close(3);
}

/// What a pipelined request must get back.
enum Expect {
    Stored,
    Hit(Vec<u8>),
    Miss,
    /// A get racing a put of the same action in the same batch.
    HitOrMiss(Vec<u8>),
}

#[test]
fn pipelined_requests_are_each_answered_once_and_close_last() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn_with_budget(Duration::from_secs(120));
    helper.handshake();
    let known = |n: u64| random_bytes(1 + (n as usize * 7919) % 50_000, n);
    for n in 0..50 {
        expect_stored(&helper.call(&put(n as i64 + 1, &action(n), &known(n))));
    }

    // 200 requests written in one go, without waiting for any answer:
    // puts of new bodies (up to ~250 KiB, so some take longer than others)
    // interleaved with gets of stored, unknown and just-put actions.
    let mut batch = Vec::new();
    let mut expected: HashMap<i64, Expect> = HashMap::new();
    for i in 0..200_u64 {
        let id = 100 + i as i64;
        let request = match i % 4 {
            0 | 2 => {
                let body = random_bytes((i as usize * 2_654_435_761) % 250_000, 1000 + i);
                expected.insert(id, Expect::Stored);
                put(id, &action(1000 + i), &body)
            }
            1 => {
                let n = i % 50;
                expected.insert(id, Expect::Hit(known(n)));
                get(id, &action(n))
            }
            _ if i % 8 == 3 => {
                expected.insert(id, Expect::Miss);
                get(id, &action(5000 + i))
            }
            _ => {
                // The put two requests back may or may not have landed yet.
                let body = random_bytes(((i - 1) as usize * 2_654_435_761) % 250_000, 1000 + i - 1);
                expected.insert(id, Expect::HitOrMiss(body));
                get(id, &action(1000 + i - 1))
            }
        };
        batch.extend_from_slice(&request.bytes);
    }
    let close_id = 1000;
    batch.extend_from_slice(&close(close_id).bytes);
    helper.send(&batch);

    let mut answered: HashMap<i64, usize> = HashMap::new();
    for position in 0..expected.len() {
        let response = helper.recv();
        let Some(expect) = expected.get(&response.id) else {
            panic!(
                "answer {position} has an unexpected ID (close is {close_id}): {}",
                response.raw
            );
        };
        if let Some(earlier) = answered.insert(response.id, position) {
            panic!(
                "ID {} answered twice (answers {earlier} and {position})",
                response.id
            );
        }
        match expect {
            Expect::Stored => {
                expect_stored(&response);
            }
            Expect::Hit(body) => {
                expect_hit(&response, body);
            }
            Expect::Miss => expect_miss(&response),
            Expect::HitOrMiss(body) => {
                if response.miss.is_some() {
                    expect_miss(&response);
                } else {
                    expect_hit(&response, body);
                }
            }
        }
    }
    assert_eq!(answered.len(), 200);
    let last = helper.recv();
    assert_eq!(
        last.raw,
        format!(r#"{{"ID":{close_id}}}"#),
        "close must be answered last"
    );
    helper.expect_stdout_end(Duration::from_secs(10));
    let (status, stderr) = helper.finish();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after close; stderr:\n{stderr}"
    );
    assert_eq!(stderr, "");
}

#[test]
fn pre_go_1_24_object_id_spelling_is_accepted() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn();
    helper.handshake();
    let body = b"stored by go1.23";
    let request = put_claiming(
        1,
        &action(1),
        "ObjectID",
        &sha256(body),
        body.len() as u64,
        body,
    );
    assert!(request.header.contains("\"ObjectID\"") && !request.header.contains("OutputID"));
    expect_stored(&helper.call(&request));
    expect_hit(&helper.call(&get(2, &action(1))), body);
    helper.close(3);
}

#[test]
fn put_whose_body_does_not_match_is_an_error_and_stores_nothing() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn();
    helper.handshake();
    let body = b"the body go hashed";
    let same_size_forgery = b"a forged body!!!!!";
    assert_eq!(body.len(), same_size_forgery.len());
    let len = body.len() as u64;
    let cases: [(&str, Request); 4] = [
        (
            "wrong content, right size",
            put_claiming(
                1,
                &action(1),
                "OutputID",
                &sha256(body),
                len,
                same_size_forgery,
            ),
        ),
        (
            "BodySize larger than the body",
            put_claiming(3, &action(1), "OutputID", &sha256(body), len + 3, body),
        ),
        (
            "BodySize smaller than the body",
            put_claiming(5, &action(1), "OutputID", &sha256(body), len - 3, body),
        ),
        (
            "no body, but OutputID of a non-empty one",
            put_claiming(7, &action(1), "OutputID", &sha256(body), 0, b""),
        ),
    ];
    for (case, request) in &cases {
        let response = helper.call(request);
        let err = expect_err(&response);
        assert!(!err.is_empty(), "{case}");
        // The stream is still in sync: the next request is read and answered.
        let miss = helper.call(&get(request.id + 1, &action(1)));
        assert_eq!(
            miss.raw,
            format!(r#"{{"ID":{},"Miss":true}}"#, request.id + 1),
            "{case}"
        );
        assert_eq!(
            sandbox.files_under("objects"),
            Vec::<std::path::PathBuf>::new(),
            "{case}"
        );
        assert_eq!(
            sandbox.files_under("actions"),
            Vec::<std::path::PathBuf>::new(),
            "{case}"
        );
    }
    // The real body still goes in afterwards.
    expect_stored(&helper.call(&put(20, &action(1), body)));
    expect_hit(&helper.call(&get(21, &action(1))), body);
    let stderr = helper.close(22);
    assert_error_lines(&stderr, cases.len());
    let stats = stats(&sandbox);
    assert_eq!(
        field(&stats, "lifetime", "errors"),
        cases.len() as u64,
        "{stats:#}"
    );
    assert_eq!(field(&stats, "lifetime", "puts"), 1, "{stats:#}");
}

/// A put the store cannot take is not an `Err` (go's module-index code
/// fails a build on one), but a file that lasts the go command
/// (SECURITY.md, "Files and permissions"); the entry is not cached, and
/// one warning at the end says why.
#[test]
fn store_write_failure_costs_caching_not_the_put_and_the_stream_stays_in_sync() {
    let sandbox = Sandbox::new();
    store_one(&sandbox, b"creates the store");
    // A regular file where the body's shard directory belongs: the store
    // cannot write the body, so the helper must still drain it from stdin.
    let body = random_bytes(300_000, 11);
    let shard = &hex::encode(sha256(&body))[..2];
    let blocked = sandbox.store().join("v1/objects").join(shard);
    // Shard directories come with the store: swap this (empty) one for a
    // file. (Removing a directory that holds the first body fails.)
    let _ = std::fs::remove_dir(&blocked);
    if !blocked.exists() {
        File::create(&blocked).expect("blocking the shard directory");
    }
    assert!(
        blocked.is_file(),
        "shard {shard} already used by the first body"
    );

    let mut helper = sandbox.spawn();
    helper.handshake();
    let scratch = expect_stored(&helper.call(&put(1, &action(2), &body)));
    assert!(!scratch.starts_with(sandbox.store()), "{scratch:?}");
    assert_eq!(std::fs::read(&scratch).unwrap(), body, "go gets its body");
    expect_miss(&helper.call(&get(2, &action(2))));
    expect_stored(&helper.call(&put(3, &action(3), b"still works")));
    expect_hit(&helper.call(&get(4, &action(3))), b"still works");
    let stderr = helper.close(5);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("warren: warning: 1 put could not be stored")
            && lines[0].contains(shard),
        "the warning names the path: {stderr}"
    );
    assert!(
        !scratch.exists(),
        "the scratch file outlived the go command"
    );
}

#[test]
fn malformed_input_is_answered_or_reported_and_the_helper_keeps_serving() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn();
    helper.handshake();
    let overlong = format!("{}\n", "x".repeat(200 * 1024));
    let inputs = [
        Request::raw(-1, "this is not json\n\n"),
        Request::raw(-1, "{\"Command\":\"get\",\"ActionID\":\"AAAA\"}\n\n"),
        Request::raw(3, "{\"ID\":3,\"Command\":\"frobnicate\"}\n\n"),
        Request::raw(
            4,
            "{\"ID\":4,\"Command\":\"get\",\"ActionID\":\"!!not base64!!\"}\n\n",
        ),
        Request::raw(-1, &overlong),
    ];
    for input in &inputs {
        helper.send(&input.bytes);
    }
    helper.send(&get(6, &action(6)).bytes);

    let mut answers: HashMap<i64, sandbox::Response> = HashMap::new();
    for _ in 0..3 {
        let response = helper.recv();
        let id = response.id;
        assert!(
            answers.insert(id, response).is_none(),
            "ID {id} answered twice"
        );
    }
    for id in [3, 4] {
        let response = answers
            .get(&id)
            .unwrap_or_else(|| panic!("no answer for ID {id}"));
        expect_err(response);
    }
    expect_miss(
        answers
            .get(&6)
            .expect("the get after the bad input is answered"),
    );

    // Still serving: a put and a get round-trip after all that.
    expect_stored(&helper.call(&put(7, &action(7), b"after the noise")));
    expect_hit(&helper.call(&get(8, &action(7))), b"after the noise");
    let stderr = helper.close(9);
    assert_error_lines(&stderr, inputs.len());
}

#[test]
fn end_of_input_without_close_exits_cleanly_and_keeps_the_store() {
    let sandbox = Sandbox::new();
    let body = b"put just before go went away";

    // EOF straight after the capabilities line.
    let mut helper = sandbox.spawn();
    helper.handshake();
    let (status, stderr) = helper.finish();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert_eq!(stderr, "");

    // EOF right behind a put, before its answer was read.
    let mut helper = sandbox.spawn();
    helper.handshake();
    helper.send(&put(1, &action(1), body).bytes);
    helper.close_stdin();
    expect_stored(&helper.recv());
    helper.expect_stdout_end(Duration::from_secs(10));
    let (status, stderr) = helper.finish();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert_eq!(stderr, "");

    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_hit(&helper.call(&get(1, &action(1))), body);
    helper.close(2);
}

#[test]
fn large_body_round_trips() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn_with_budget(Duration::from_secs(300));
    helper.handshake();
    let body = random_bytes(64 << 20, 64);
    let output = sha256(&body);
    let size = body.len() as u64;
    let request = put(1, &action(1), &body);
    drop(body);
    helper.send(&request.bytes);
    drop(request);
    let stored = expect_stored(&helper.recv_within(Duration::from_secs(240)));
    assert_eq!(sha256_file(&stored), output, "SHA-256 of the stored file");

    let hit = helper.call(&get(2, &action(1)));
    let path = expect_hit_of(&hit, &output, size);
    assert_eq!(
        sha256_file(&path),
        output,
        "SHA-256 of the file at DiskPath"
    );
    helper.close(3);
}

#[test]
fn sigkill_right_after_a_put_answer_loses_nothing() {
    let sandbox = Sandbox::new();
    let body = random_bytes(300_000, 10);
    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_stored(&helper.call(&put(1, &action(1), &body)));
    helper.kill();

    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_hit(&helper.call(&get(1, &action(1))), &body);
    helper.close(2);
}

#[test]
fn a_normal_session_prints_nothing_on_stderr() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_stored(&helper.call(&put(1, &action(1), b"quiet")));
    expect_hit(&helper.call(&get(2, &action(1))), b"quiet");
    expect_miss(&helper.call(&get(3, &action(2))));
    let stderr = helper.close(4);
    assert_eq!(stderr, "", "a normal session must be silent");
}

/// Stores `body` under `action(1)` in a helper session of its own.
fn store_one(sandbox: &Sandbox, body: &[u8]) -> std::path::PathBuf {
    let mut helper = sandbox.spawn();
    helper.handshake();
    let stored = expect_stored(&helper.call(&put(1, &action(1), body)));
    helper.close(2);
    stored
}

#[test]
fn truncated_object_file_is_a_miss_and_removed() {
    let sandbox = Sandbox::new();
    let body = random_bytes(10_000, 12);
    let object = store_one(&sandbox, &body);
    let entry = sandbox.entry_path(&action(1));
    assert!(entry.is_file(), "entry file {entry:?} after a put");
    OpenOptions::new()
        .write(true)
        .open(&object)
        .and_then(|file| file.set_len(body.len() as u64 / 2))
        .expect("truncating the object");

    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_miss(&helper.call(&get(1, &action(1))));
    assert!(
        !object.exists(),
        "the truncated object {object:?} is still there"
    );
    assert!(
        !entry.exists(),
        "the entry for a damaged object is still there"
    );
    // Go puts the body again after a miss; that repairs it.
    expect_stored(&helper.call(&put(2, &action(1), &body)));
    expect_hit(&helper.call(&get(3, &action(1))), &body);
    helper.close(4);
    let stats = stats(&sandbox);
    assert_eq!(
        field(&stats, "lifetime", "repaired"),
        2,
        "object and entry: {stats:#}"
    );
}

#[test]
fn garbage_entry_file_is_a_miss_and_removed() {
    let sandbox = Sandbox::new();
    let body = b"a perfectly good body";
    let garbage: [&[u8]; 3] = [
        b"\x00\xff garbage \x13\x37\n",
        b"v1 not-hex 21 0\n",
        &[b'v'; 4096],
    ];
    for bytes in garbage {
        store_one(&sandbox, body);
        let entry = sandbox.entry_path(&action(1));
        File::create(&entry)
            .and_then(|mut file| file.write_all(bytes))
            .expect("damaging the entry");

        let mut helper = sandbox.spawn();
        helper.handshake();
        expect_miss(&helper.call(&get(1, &action(1))));
        assert!(
            !entry.exists(),
            "the damaged entry {entry:?} ({bytes:?}) is still there"
        );
        helper.close(2);
    }
}

/// `warren stats --json`, parsed.
fn stats(sandbox: &Sandbox) -> Value {
    let output = sandbox.run(&["stats", "--json"]);
    assert!(
        output.status.success(),
        "warren stats --json failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "warren stats --json printed invalid JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn field(stats: &Value, section: &str, name: &str) -> u64 {
    stats[section][name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats has no {section}.{name}: {stats:#}"))
}

#[test]
fn stats_clean_and_trim_see_what_the_helper_did() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_stored(&helper.call(&put(1, &action(1), b"hello")));
    expect_stored(&helper.call(&put(2, &action(2), b"world!!")));
    expect_hit(&helper.call(&get(3, &action(1))), b"hello");
    expect_miss(&helper.call(&get(4, &action(3))));
    expect_miss(&helper.call(&get(5, &action(4))));
    helper.close(6);

    let after_session = stats(&sandbox);
    for (name, want) in [
        ("gets", 3),
        ("hits", 1),
        ("misses", 2),
        ("puts", 2),
        ("put_bytes", 12),
        ("hit_bytes", 5),
        ("errors", 0),
        // Sharing is off: no miss was asked of a daemon.
        ("remote_lookups", 0),
        ("remote_wait_us", 0),
    ] {
        assert_eq!(
            field(&after_session, "lifetime", name),
            want,
            "lifetime.{name} in {after_session:#}"
        );
    }
    assert_eq!(field(&after_session, "store", "entries"), 2);
    assert_eq!(field(&after_session, "store", "objects"), 2);
    assert!(field(&after_session, "store", "bytes") >= 12);

    let cleaned = sandbox.run(&["clean"]);
    let stdout = String::from_utf8_lossy(&cleaned.stdout);
    assert!(
        cleaned.status.success(),
        "warren clean: {}",
        String::from_utf8_lossy(&cleaned.stderr)
    );
    assert!(
        stdout.starts_with("removed 4 files"),
        "warren clean printed {stdout:?}"
    );
    let after_clean = stats(&sandbox);
    assert_eq!(
        field(&after_clean, "store", "entries"),
        0,
        "{after_clean:#}"
    );
    assert_eq!(
        field(&after_clean, "store", "objects"),
        0,
        "{after_clean:#}"
    );
    assert_eq!(
        field(&after_clean, "lifetime", "gets"),
        3,
        "clean keeps statistics"
    );

    // The helper sees the empty store.
    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_miss(&helper.call(&get(1, &action(1))));
    helper.close(2);
    assert_eq!(field(&stats(&sandbox), "lifetime", "misses"), 3);

    let trimmed = sandbox.run(&["trim"]);
    let stdout = String::from_utf8_lossy(&trimmed.stdout);
    assert!(
        trimmed.status.success(),
        "warren trim: {}",
        String::from_utf8_lossy(&trimmed.stderr)
    );
    assert!(
        stdout.lines().count() == 1 && stdout.starts_with("removed"),
        "warren trim printed {stdout:?}"
    );
}

#[test]
fn version_and_unusable_store_dir() {
    let sandbox = Sandbox::new();
    let version = sandbox.run(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim_end(),
        format!("warren {}", env!("CARGO_PKG_VERSION"))
    );

    let not_a_dir = sandbox.root().join("not-a-dir");
    File::create(&not_a_dir).expect("creating a regular file");
    let dir_arg = not_a_dir.to_str().expect("a UTF-8 temp path");
    for args in [vec!["--dir", dir_arg], vec!["--dir", dir_arg, "stats"]] {
        let output = sandbox.run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "warren {args:?} succeeded");
        assert!(
            stderr.starts_with("warren: error:"),
            "warren {args:?} stderr:\n{stderr}"
        );
        assert!(
            stderr
                .lines()
                .any(|line| line.trim_start().starts_with("caused by:")),
            "warren {args:?} stderr has no cause:\n{stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "warren {args:?} wrote to stdout: {:?}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

#[test]
fn concurrent_helpers_on_one_store_agree() {
    let sandbox = Sandbox::new();
    let body = |n: u64| random_bytes(1 + (n as usize * 104_729) % 100_000, n);
    // Two `go` commands at once, putting the same outputs under the same
    // actions, pipelined: both must succeed, and the store end up whole.
    let mut helpers = [sandbox.spawn(), sandbox.spawn()];
    for helper in &mut helpers {
        helper.handshake();
    }
    let batch: Vec<u8> = (0..40)
        .flat_map(|n| put(n as i64 + 1, &action(n), &body(n)).bytes)
        .collect();
    for helper in &mut helpers {
        helper.send(&batch);
    }
    for helper in &mut helpers {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            let response = helper.recv();
            expect_stored(&response);
            assert!(
                seen.insert(response.id),
                "ID {} answered twice",
                response.id
            );
        }
    }
    for (i, helper) in helpers.into_iter().enumerate() {
        helper.close(100 + i as i64);
    }

    let mut helper = sandbox.spawn();
    helper.handshake();
    for n in 0..40 {
        expect_hit(&helper.call(&get(n as i64 + 1, &action(n))), &body(n));
    }
    helper.close(100);
    assert_eq!(
        sandbox.files_under("objects").len(),
        40,
        "one object per body"
    );
    assert_eq!(
        sandbox.files_under("actions").len(),
        40,
        "one entry per action"
    );
}

/// Regression: the body line of a `put` whose header could not be used was
/// skipped silently only when it fit in one header line (64 KiB); a longer
/// one was also reported as an over-long line, so one bad request printed
/// two errors.
#[test]
fn unusable_put_header_with_a_large_body_is_one_error() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn();
    helper.handshake();
    let body = random_bytes(100_000, 13);
    let mut request = put(1, &action(1), &body);
    let header = request.header.clone();
    let bad_header = header.replacen(&sandbox::b64(&action(1)), "!!not base64!!", 1);
    let mut bytes = bad_header.clone().into_bytes();
    bytes.extend_from_slice(&request.bytes[header.len()..]);
    request.bytes = bytes;
    request.header = bad_header;
    expect_err(&helper.call(&request));
    expect_miss(&helper.call(&get(2, &action(1))));
    let stderr = helper.close(3);
    assert_error_lines(&stderr, 1);
}

/// A helper whose store is due for a trim starts one in the background: a
/// file unused for longer than max-age disappears without any command, the
/// trim clock restarts, and recently used entries stay.
#[test]
fn a_due_trim_runs_in_the_background() {
    let sandbox = Sandbox::new();
    let old = store_one(&sandbox, b"unused for a month");
    let month_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    for path in [old.clone(), sandbox.entry_path(&action(1))] {
        File::open(&path).unwrap().set_modified(month_ago).unwrap();
    }
    let marker = sandbox.store().join("last-trim");
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    File::open(&marker)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();

    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_stored(&helper.call(&put(1, &action(2), b"fresh")));
    assert_eq!(helper.close(2), "", "the background trim must not speak");

    let deadline = Instant::now() + Duration::from_secs(20);
    while old.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!old.exists(), "the month-old object was not trimmed");
    assert!(!sandbox.entry_path(&action(1)).exists());
    assert!(
        sandbox.entry_path(&action(2)).exists(),
        "a fresh entry was trimmed"
    );
    // The clock restarts when the trim ends, just after its removals.
    let restarted = || {
        fs::metadata(&marker)
            .and_then(|meta| meta.modified())
            .is_ok_and(|at| at > two_hours_ago)
    };
    while !restarted() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(restarted(), "the trim clock did not restart");
}

/// The trim grace is a promise about use, not about mtimes: use is
/// recorded at most hourly, so an entry that `go` got 90 minutes ago, when
/// its mtime was 59 minutes old (so it was not touched), carries an mtime
/// of 149 minutes. `warren trim` down to nothing must still keep it.
#[test]
fn an_entry_used_90_minutes_ago_survives_warren_trim() {
    let sandbox = Sandbox::new();
    let object = store_one(&sandbox, b"in use by a go command");
    let entry = sandbox.entry_path(&action(1));
    let set = |ago: u64| {
        let at = SystemTime::now() - Duration::from_secs(ago * 60);
        for path in [&object, &entry] {
            File::open(path).unwrap().set_modified(at).unwrap();
        }
        at
    };
    let at = set(59);
    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_hit(&helper.call(&get(1, &action(1))), b"in use by a go command");
    helper.close(2);
    assert_eq!(
        fs::metadata(&object).unwrap().modified().unwrap(),
        at,
        "touched, though used within the hour"
    );
    // 90 minutes later, as the mtimes tell it.
    set(59 + 90);
    let trimmed = sandbox.run(&["--max-size", "0", "--max-age", "1s", "trim"]);
    assert!(
        trimmed.status.success(),
        "{}",
        String::from_utf8_lossy(&trimmed.stderr)
    );
    assert!(
        object.exists() && entry.exists(),
        "warren trim removed an entry used 90 minutes ago"
    );
}

/// SECURITY.md, "Files and permissions": a store directory other users
/// can write (here made before warren, as another user could in /var/tmp)
/// is refused, by the helper that `go` runs and by every subcommand, with
/// one line that says what to fix; nothing is written into it.
#[test]
fn a_store_others_can_write_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;

    let sandbox = Sandbox::new();
    let store = sandbox.store();
    fs::create_dir_all(&store).unwrap();
    fs::set_permissions(&store, fs::Permissions::from_mode(0o777)).unwrap();
    let fix = format!("`chmod go-w {}`", store.canonicalize().unwrap().display());
    for args in [&[][..], &["stats"][..], &["trim"][..]] {
        let output = sandbox.run(args);
        assert!(!output.status.success(), "warren {args:?} used the store");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&fix), "warren {args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "nothing for go to read");
    }
    assert_eq!(fs::read_dir(&store).unwrap().count(), 0, "nothing written");
    fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(sandbox.run(&["stats"]).status.success());
}
