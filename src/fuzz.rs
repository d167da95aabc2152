//! Entry points for the fuzz targets in `fuzz/` (feature `fuzz`): each
//! feeds arbitrary bytes to one parser of untrusted input. None may panic,
//! allocate without bound or hang. (HTTP itself, on the metrics port, is
//! hyper's, which is fuzzed upstream; what warren reads of it is the Host.)
//!
//! Not part of warren's API: the feature exists only so that the fuzz
//! crate can reach these internals.

use std::io::Cursor;

use crate::helper::protocol::{Request, RequestReader};

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

/// An entry file's line, as found on disk (in the file of a fixed action).
pub fn store_entry(data: &[u8]) {
    use crate::store::{Binding, entry_line, parse_entry};
    let action = entry_action();
    if let Some(line) = parse_entry(data) {
        // What parses, prints back to itself, bound to the action it is
        // printed for; a check it carried binds it only if it is that one.
        let printed = entry_line(&action, &line.output, line.size, line.time, &line.source);
        let reparsed = parse_entry(printed.as_bytes()).expect("a printed line to parse");
        assert_eq!(reparsed.binding(&action), Binding::Bound);
        assert_eq!(
            (
                reparsed.output,
                reparsed.size,
                reparsed.time,
                reparsed.source
            ),
            (line.output, line.size, line.time, line.source)
        );
        match line.binding(&action) {
            Binding::Bound => assert_eq!(line.check, reparsed.check),
            Binding::Unchecked => assert_eq!(line.check, None),
            Binding::Wrong => assert_ne!(line.check, reparsed.check),
        }
    }
}

/// The action whose file [`store_entry`] reads its input from.
fn entry_action() -> crate::ids::ActionId {
    crate::ids::ActionId::from_bytes([0xaa; 32])
}

/// A manifest as a reader finds it in the team bucket (anyone with the
/// bucket's credentials writes these): what verifies must re-sign to the
/// same entries, which only its signer's key can do, so here it need only
/// not panic or allocate past the bound.
pub fn bucket_manifest(data: &[u8]) {
    use crate::daemon::bucket::manifest::{MAX_BYTES, Manifest};
    if let Ok(manifest) = Manifest::verify(data) {
        assert!(data.len() <= MAX_BYTES);
        assert!(!manifest.entries.is_empty());
    }
}

/// A line on the daemon's socket, both ways: a request as the daemon reads
/// it and an answer as a helper reads it.
pub fn ipc_line(data: &[u8]) {
    let _ = serde_json::from_slice::<crate::ipc::Request>(data);
    let _ = serde_json::from_slice::<crate::ipc::Response>(data);
}

/// The metrics endpoint's Host check (`daemon::metrics::host`): `data` is a
/// request's `Host` header; its first byte picks the listening address. A
/// Host that passes must name the listening port and an address or
/// `localhost`, never another name (DNS rebinding).
pub fn metrics_host(data: &[u8]) {
    use hyper::header::{HOST, HeaderValue};
    let Some((&choice, host)) = data.split_first() else {
        return;
    };
    let listening: std::net::SocketAddr = match choice % 4 {
        0 => ([127, 0, 0, 1], 9311).into(),
        1 => (std::net::Ipv6Addr::LOCALHOST, 9311).into(),
        2 => ([0, 0, 0, 0], 9311).into(),
        _ => ([192, 0, 2, 7], 9311).into(),
    };
    let Ok(value) = HeaderValue::from_bytes(host) else {
        return;
    };
    let request = hyper::Request::get("/metrics")
        .header(HOST, value)
        .body(())
        .expect("a request with a valid header value");
    let hosts = crate::daemon::metrics::host::Hosts::new(listening);
    if hosts.foreign(&request).is_none() {
        let text = std::str::from_utf8(host).expect("a Host that passes to be text");
        let (name, port) = text
            .rsplit_once(':')
            .expect("a Host that passes to name a port");
        assert_eq!(port.parse::<u16>().ok(), Some(9311), "{text:?}");
        let bare = name
            .strip_prefix('[')
            .and_then(|name| name.strip_suffix(']'))
            .unwrap_or(name);
        assert!(
            bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok(),
            "{text:?} passed"
        );
    }
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
    let entry =
        |source| crate::store::entry_line(&entry_action(), &output, 5, time, &source).into_bytes();
    vec![
        ("bucket_manifest", seed_manifest(1)),
        ("bucket_manifest", seed_manifest(3)),
        ("metrics_host", b"\x00localhost:9311".to_vec()),
        ("metrics_host", b"\x01[::1]:9311".to_vec()),
        ("metrics_host", b"\x02192.0.2.7:9311".to_vec()),
        ("metrics_host", b"\x03evil.example:9311".to_vec()),
        (
            "gocacheprog_requests",
            format!("{get}{put}{close}").into_bytes(),
        ),
        ("gocacheprog_requests", format!("{put}{put}").into_bytes()),
        ("store_entry", entry(crate::store::Source::Local)),
        ("store_entry", entry(crate::store::Source::Peer(peer))),
        ("store_entry", entry(crate::store::Source::Unknown)),
        // A line written before the check.
        (
            "store_entry",
            format!("v1 {} 5 1700000000000000000 local\n", output.to_hex()).into_bytes(),
        ),
        (
            "ipc_line",
            format!("{{\"op\":\"get\",\"action\":\"{action}\"}}\n").into_bytes(),
        ),
        ("ipc_line", b"{\"op\":\"status\"}\n".to_vec()),
        (
            "ipc_line",
            format!("{{\"hit\":{{\"peer\":\"{peer}\",\"size\":5}}}}\n").into_bytes(),
        ),
        (
            "ipc_line",
            format!("{{\"missed\":{{\"reason\":\"cooldown\",\"peer\":\"{peer}\"}}}}\n")
                .into_bytes(),
        ),
        (
            "ipc_line",
            b"{\"reloaded\":{\"purged_entries\":1,\"purged_bytes\":5}}\n".to_vec(),
        ),
    ]
}

/// A manifest of `entries` entries, signed by a fixed key.
fn seed_manifest(entries: u8) -> Vec<u8> {
    use crate::daemon::bucket::manifest::{Entry, Manifest};
    let key = libp2p_identity::Keypair::ed25519_from_bytes([9; 32]).expect("a fixed key");
    Manifest {
        signer: key.public().to_peer_id(),
        time_ms: 1_700_000_000_000,
        entries: (0..entries)
            .map(|n| Entry {
                action: crate::ids::ActionId::from_bytes([n; 32]),
                output: crate::ids::OutputId::of(&[n]),
                size: 1,
                time_ms: 1_700_000_000_000 + u64::from(n),
            })
            .collect(),
    }
    .sign(&key)
    .expect("a fixed manifest signs")
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
