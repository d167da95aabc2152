//! Entry points for the fuzz targets in `fuzz/` (feature `fuzz`): each
//! feeds arbitrary bytes to one parser of untrusted input. None may panic,
//! allocate without bound or hang.
//!
//! Not part of warren's API: the feature exists only so that the fuzz
//! crate can reach these internals.

use std::io::Cursor;

use crate::gocacheprog::protocol::{Request, RequestReader};

/// The GOCACHEPROG request stream, as `go` (or anything on stdin) sends
/// it: headers and the bodies of puts, read as the helper reads them.
pub fn gocacheprog_requests(data: &[u8]) {
    let mut reader = RequestReader::new(Cursor::new(data));
    // Every request consumes input, so this ends; the bound is a backstop.
    for _ in 0..data.len() + 1 {
        match reader.next_request() {
            Ok(None) => return,
            Ok(Some(Request::Put { body_size, .. })) if body_size > 0 => {
                let mut sink = std::io::sink();
                if let Ok(read) = reader.read_body(body_size, &mut sink) {
                    assert_eq!(read, body_size);
                }
            }
            Ok(Some(_)) | Err(_) => {}
        }
    }
}

/// An entry file's line, as found on disk.
pub fn store_entry(data: &[u8]) {
    if let Some(line) = crate::store::parse_entry(data) {
        // What parses, prints back to itself.
        let printed = crate::store::entry_line(&line.output, line.size, line.time, &line.source);
        assert_eq!(crate::store::parse_entry(printed.as_bytes()), Some(line));
    }
}

/// A line on the daemon's socket, both ways: a request as the daemon reads
/// it and an answer as a helper reads it.
pub fn ipc_line(data: &[u8]) {
    let _ = serde_json::from_slice::<crate::share::ipc::Request>(data);
    let _ = serde_json::from_slice::<crate::share::ipc::Response>(data);
}

/// Seed inputs for each target above: `(target, input)`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let action = "a".repeat(64);
    let output = crate::ids::OutputId::of(b"hello");
    let put = format!(
        "{{\"ID\":2,\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\",\"BodySize\":5}}\n\"aGVsbG8=\"\n",
        base64_of(&[0xaa; 32]),
        base64_of(output.as_bytes()),
    );
    let get = format!(
        "{{\"ID\":1,\"Command\":\"get\",\"ActionID\":\"{}\"}}\n",
        base64_of(&[0xaa; 32])
    );
    let close = "{\"ID\":3,\"Command\":\"close\"}\n";
    let peer = libp2p_identity::Keypair::ed25519_from_bytes([7; 32])
        .expect("a fixed key")
        .public()
        .to_peer_id();
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_000_000_000);
    let entry = |source| crate::store::entry_line(&output, 5, time, &source).into_bytes();
    vec![
        (
            "gocacheprog_requests",
            format!("{get}{put}{close}").into_bytes(),
        ),
        ("gocacheprog_requests", format!("{put}{put}").into_bytes()),
        ("store_entry", entry(crate::store::Source::Local)),
        ("store_entry", entry(crate::store::Source::Peer(peer))),
        ("store_entry", entry(crate::store::Source::Unknown)),
        (
            "ipc_line",
            format!("{{\"op\":\"get\",\"action\":\"{action}\"}}\n").into_bytes(),
        ),
        ("ipc_line", b"{\"op\":\"status\"}\n".to_vec()),
        (
            "ipc_line",
            b"{\"hit\":{\"peer\":\"12D3KooW\",\"size\":5}}\n".to_vec(),
        ),
        (
            "ipc_line",
            b"{\"reloaded\":{\"purged_entries\":1,\"purged_bytes\":5}}\n".to_vec(),
        ),
    ]
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
