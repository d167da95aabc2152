//! The GOCACHEPROG messages as `go` writes and reads them, bodies and
//! malformed input included.

use std::io::Cursor;

use proptest::prelude::*;

use super::*;

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

fn header(id: i64, command: &str, action: &[u8], output: Option<&[u8]>, size: u64) -> String {
    let mut line = format!(
        r#"{{"ID":{id},"Command":"{command}","ActionID":"{}""#,
        b64(action)
    );
    if let Some(output) = output {
        line += &format!(r#","OutputID":"{}""#, b64(output));
    }
    if size > 0 {
        line += &format!(r#","BodySize":{size}"#);
    }
    line + "}\n\n"
}

/// Frames a put exactly as Go's `ProgCache.writeToChild` does.
fn put(id: i64, action: [u8; 32], body: &[u8]) -> String {
    let output = OutputId::of(body);
    let mut text = header(
        id,
        "put",
        &action,
        Some(output.as_bytes()),
        body.len() as u64,
    );
    if !body.is_empty() {
        text += &format!("\"{}\"\n", b64(body));
    }
    text
}

fn reader(text: &str) -> RequestReader<Cursor<Vec<u8>>> {
    RequestReader::new(Cursor::new(text.as_bytes().to_vec()))
}

#[test]
fn decodes_get_put_close_in_go_framing() {
    let body = b"hello, world";
    let text = header(1, "get", &[7; 32], None, 0)
        + &put(2, [8; 32], body)
        + "{\"ID\":3,\"Command\":\"close\"}\n\n";
    let mut r = reader(&text);
    assert_eq!(
        r.next_request().unwrap(),
        Some(Request::Get {
            id: 1,
            action: ActionId::from_bytes([7; 32])
        })
    );
    let Some(Request::Put {
        id: 2, body_size, ..
    }) = r.next_request().unwrap()
    else {
        panic!("expected put");
    };
    let mut sink = Vec::new();
    assert_eq!(r.read_body(body_size, &mut sink).unwrap(), 12);
    assert_eq!(sink, body);
    assert_eq!(r.next_request().unwrap(), Some(Request::Close { id: 3 }));
    assert_eq!(r.next_request().unwrap(), None);
}

#[test]
fn accepts_pre_go_1_24_object_id_spelling() {
    let line = format!(
        r#"{{"ID":5,"Command":"put","ActionID":"{}","ObjectID":"{}"}}"#,
        b64(&[1; 32]),
        b64(&[2; 32])
    );
    let request = parse_header(line.as_bytes()).unwrap();
    assert!(matches!(
        request,
        Request::Put {
            id: 5,
            body_size: 0,
            ..
        }
    ));
}

#[test]
fn malformed_headers_keep_their_id_when_possible() {
    let cases: &[(&str, Option<i64>)] = &[
        (r#"{"ID":4,"Command":"get","ActionID":"!!"}"#, Some(4)),
        (r#"{"ID":4,"Command":"get","ActionID":"AAAA"}"#, Some(4)),
        (r#"{"ID":9,"Command":"frobnicate"}"#, Some(9)),
        (r#"{"ID":9,"Command":7}"#, Some(9)),
        (
            r#"{"ID":9,"Command":"put","ActionID":"AAAA","BodySize":-1}"#,
            Some(9),
        ),
        (r#"{"Command":"get"}"#, None),
        (r#"not json at all"#, None),
        (r#"{"ID":"x"}"#, None),
    ];
    for (line, want) in cases {
        match parse_header(line.as_bytes()) {
            Err(DecodeError::Malformed { id, .. }) => assert_eq!(id, *want, "{line}"),
            other => panic!("{line}: expected malformed, got {other:?}"),
        }
    }
}

#[test]
fn overlong_lines_are_skipped_not_buffered() {
    let text = format!(
        "{}\n{}",
        "x".repeat(MAX_HEADER_LINE * 3),
        header(1, "close", &[0; 32], None, 0)
    );
    let mut r = reader(&text);
    assert!(matches!(r.next_request(), Err(DecodeError::LineTooLong)));
    assert!(r.line.capacity() <= MAX_HEADER_LINE * 2);
    assert_eq!(r.next_request().unwrap(), Some(Request::Close { id: 1 }));
}

#[test]
fn bad_bodies_are_errors_and_the_stream_stays_in_sync() {
    let next = header(9, "close", &[0; 32], None, 0);
    for (body_line, size) in [
        ("\"!!!!\"\n", 3),
        ("\"aGVsbG8=\"\n", 4),      // 5 bytes, 4 announced
        ("\"aGVsbG8=\"\n", 6),      // 5 bytes, 6 announced
        ("\"aGVs\\nbG8=\"\n", 5),   // an escape base64 cannot hold
        ("\"aGVsbG8=\" junk\n", 5), // text after the string
        ("aGVsbG8=\n", 5),          // no quotes
    ] {
        let mut r = reader(&format!("{body_line}{next}"));
        let mut sink = Vec::new();
        assert!(
            r.read_body(size, &mut sink).is_err(),
            "{body_line:?} size {size}"
        );
        if body_line.starts_with('"') {
            assert_eq!(
                r.next_request().unwrap(),
                Some(Request::Close { id: 9 }),
                "{body_line:?}"
            );
        }
    }
}

#[test]
fn escaped_slash_is_accepted() {
    let body = [0xff_u8, 0xff, 0xff];
    let encoded = b64(&body).replace('/', "\\/");
    let mut r = reader(&format!("\"{encoded}\"\n"));
    let mut sink = Vec::new();
    r.read_body(3, &mut sink).unwrap();
    assert_eq!(sink, body);
}

#[test]
fn truncated_input_is_an_error() {
    let mut r = reader("\"aGVsbG");
    assert!(matches!(
        r.read_body(5, &mut Vec::new()),
        Err(BodyError::Malformed(_))
    ));
}

#[test]
fn sink_failure_consumes_the_body() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let body = vec![1_u8; 200_000];
    let text = put(1, [1; 32], &body) + &header(2, "close", &[0; 32], None, 0);
    let mut r = reader(&text);
    let request = r.next_request().unwrap().unwrap();
    let Request::Put { body_size, .. } = request else {
        panic!()
    };
    assert!(matches!(
        r.read_body(body_size, &mut Full),
        Err(BodyError::Sink(_))
    ));
    assert_eq!(r.next_request().unwrap(), Some(Request::Close { id: 2 }));
}

#[test]
fn responses_match_go_field_names_and_omission() {
    let mut out = Vec::new();
    Response::capabilities().write_line(&mut out).unwrap();
    Response::miss(3).write_line(&mut out).unwrap();
    let time = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5);
    Response::hit(
        4,
        OutputId::from_bytes([1; 32]),
        12,
        time,
        Path::new("/c/o"),
    )
    .write_line(&mut out)
    .unwrap();
    Response::error(5, "boom").write_line(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        r#"{"ID":0,"KnownCommands":["get","put","close"]}"#
    );
    assert_eq!(lines[1], r#"{"ID":3,"Miss":true}"#);
    assert_eq!(
        lines[2],
        format!(
            r#"{{"ID":4,"OutputID":"{}","Size":12,"Time":"2023-11-14T22:13:20.000000005Z","DiskPath":"/c/o"}}"#,
            b64(&[1; 32])
        )
    );
    assert_eq!(lines[3], r#"{"ID":5,"Err":"boom"}"#);
}

/// A body whose base64 fills whole chunks exactly and ends in padding:
/// the padding is the body's end, not inside it.
#[test]
fn a_body_whose_padding_ends_a_full_chunk_round_trips() {
    for len in [
        BODY_CHUNK / 4 * 3 - 1,
        BODY_CHUNK / 4 * 3 - 2,
        2 * BODY_CHUNK / 4 * 3 - 1,
    ] {
        let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut r = reader(&(put(7, [3; 32], &body) + "\n"));
        let Some(Request::Put { body_size, .. }) = r.next_request().unwrap() else {
            panic!("expected put");
        };
        let mut sink = Vec::new();
        r.read_body(body_size, &mut sink)
            .unwrap_or_else(|e| panic!("a {len}-byte body: {e:?}"));
        assert_eq!(sink, body, "a {len}-byte body");
        assert_eq!(r.next_request().unwrap(), None);
    }
}

proptest! {
    #[test]
    fn any_body_round_trips(body in proptest::collection::vec(any::<u8>(), 0..300_000), id in 1_i64..i64::MAX) {
        let mut r = reader(&(put(id, [3; 32], &body) + "\n"));
        let Some(Request::Put { id: got, output, body_size, .. }) = r.next_request().unwrap() else {
            panic!("expected put");
        };
        prop_assert_eq!(got, id);
        prop_assert_eq!(output, OutputId::of(&body));
        let mut sink = Vec::new();
        if body_size > 0 {
            r.read_body(body_size, &mut sink).unwrap();
        }
        prop_assert_eq!(sink, body);
        prop_assert_eq!(r.next_request().unwrap(), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut r = RequestReader::new(Cursor::new(input));
        for _ in 0..64 {
            match r.next_request() {
                Ok(None) => break,
                Ok(Some(Request::Put { body_size, .. })) if body_size > 0 => {
                    let _ = r.read_body(body_size.min(1 << 20), &mut io::sink());
                }
                _ => {}
            }
        }
    }
}
