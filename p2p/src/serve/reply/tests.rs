//! The serving side: gathering writes, streaming and cutting off bodies
//! from files, and whole replies read back by the requesting side.

use std::collections::HashMap;
use std::io::Write;

use futures::io::Cursor;
use libp2p::request_response::Codec;

use super::*;
use crate::fetch::exchange::Outcome;
use crate::fetch::in_flight::InFlight;
use crate::fetch::receive::tests::{
    Files, MapStore, codec_over, exchange_batch, exchange_with_hints, protocol,
};
use crate::ids::Hint;
use crate::node::codec::Response;
use crate::protocol::compress;
use crate::protocol::testing::Writes;

fn piece(bytes: &[u8]) -> Piece {
    let mut piece = Piece::new(bytes.len());
    piece.copy_from_slice(bytes);
    piece
}

#[tokio::test]
async fn small_answers_are_gathered_into_one_write() {
    let mut io = Writes::default();
    let mut outbox = Outbox::default();
    let mut expected = Vec::new();
    for n in 0..10u8 {
        let header = serde_json::json!({ "entry": n });
        outbox.header(&header).unwrap();
        crate::protocol::wire::encode_frame(&mut expected, &header).unwrap();
        outbox.body(&mut io, piece(&[n; 9]), false).await.unwrap();
        expected.extend_from_slice(&[n; 9]);
    }
    assert!(io.0.is_empty(), "nothing is written before it is asked for");
    outbox.flush(&mut io).await.unwrap();
    assert_eq!(io.0, [expected]);
    assert_eq!(outbox.len(), 0);
    // Nothing gathered, nothing written.
    outbox.flush(&mut io).await.unwrap();
    assert_eq!(io.0.len(), 1);
}

#[tokio::test]
async fn a_body_that_does_not_fit_goes_out_after_what_came_before() {
    let mut io = Writes::default();
    let mut outbox = Outbox::default();
    outbox.header(&"first").unwrap();
    outbox.body(&mut io, piece(b"small"), false).await.unwrap();
    outbox.header(&"second").unwrap();
    let big = vec![3; Outbox::LIMIT];
    outbox.body(&mut io, piece(&big), false).await.unwrap();
    // The gathered bytes (both headers, the small body), then the big
    // body as it was: in order, never copied into the buffer.
    assert_eq!(io.0.len(), 2);
    assert!(io.0[0].ends_with(b"\"second\""), "{:?}", io.0[0]);
    assert_eq!(io.0[1], big);
    assert_eq!(outbox.len(), 0);
    // Compressed bodies are gathered as their chunks.
    outbox.header(&"third").unwrap();
    outbox.body(&mut io, piece(&[0; 4096]), true).await.unwrap();
    outbox.flush(&mut io).await.unwrap();
    let mut wire = Cursor::new(io.0[2][4 + "\"third\"".len()..].to_vec());
    let inflated = compress::read_chunk(&mut wire, 4096).await.unwrap();
    assert!(inflated.iter().all(|&b| b == 0));
    assert!(io.0[2].len() < 4096 / 4);
}

/// A file of three pieces and a bit, in a directory kept alive by
/// the returned guard.
fn body_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    let body = vec![7u8; CHUNK_SIZE * 3 + 10];
    File::create(&path).unwrap().write_all(&body).unwrap();
    (dir, path, body)
}

/// Sends the file at `path` as a body hashing to `output`: what
/// `send_file` returned, and what went out. Asserts that the file was
/// handed back as damaged exactly when it was cut off for not hashing
/// to `output`.
async fn send_path(
    path: &std::path::Path,
    output: OutputId,
    size: usize,
    compress: bool,
) -> (io::Result<()>, Vec<u8>) {
    use std::os::unix::fs::MetadataExt as _;
    let mut sent = Cursor::new(Vec::new());
    let file = File::open(path).unwrap();
    let handed = Arc::new(Mutex::new(Vec::new()));
    let damaged = {
        let handed = handed.clone();
        move |file: &File| handed.lock().unwrap().push(file.metadata().unwrap().ino())
    };
    let result = super::send_file(&mut sent, file, output, size as u64, compress, damaged).await;
    let handed = handed.lock().unwrap().clone();
    match &result {
        Err(error) if is_damaged(error) => {
            assert_eq!(handed, [std::fs::metadata(path).unwrap().ino()]);
        }
        _ => assert!(handed.is_empty(), "{result:?}"),
    }
    (result, sent.into_inner())
}

#[tokio::test]
async fn damaged_files_are_cut_off_before_their_last_piece() {
    let (_dir, path, body) = body_file();
    let (result, sent) = send_path(&path, OutputId::from_bytes([0; 32]), body.len(), false).await;
    let error = result.unwrap_err();
    assert!(is_damaged(&error), "{error}");
    // Everything but the last piece went out; the body never arrives whole.
    assert_eq!(sent.len(), CHUNK_SIZE * 3);

    let (result, sent) = send_path(&path, OutputId::of(&body), body.len(), false).await;
    result.unwrap();
    assert_eq!(sent, body);
}

#[tokio::test]
async fn damaged_files_are_cut_off_when_compressed_too() {
    let (_dir, path, body) = body_file();
    let (result, sent) = send_path(&path, OutputId::from_bytes([0; 32]), body.len(), true).await;
    let error = result.unwrap_err();
    assert!(is_damaged(&error), "{error}");
    // The first three pieces decode; the last never came.
    let mut sent = Cursor::new(sent);
    for _ in 0..3 {
        let piece = compress::read_chunk(&mut sent, CHUNK_SIZE).await.unwrap();
        assert!(piece.iter().all(|&b| b == 7));
    }
    let error = compress::read_chunk(&mut sent, 10).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn short_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    File::create(&path).unwrap().write_all(b"short").unwrap();
    let (result, sent) = send_path(&path, OutputId::of(b"short"), 50, false).await;
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    assert!(sent.is_empty());
}

#[tokio::test]
async fn served_bodies_round_trip_through_the_codec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    // Over SMALL_BODY: streamed from the open file, hashed as it goes.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&body)
        .unwrap();
    let entries = HashMap::from([(
        ActionId::from_bytes([1; 32]),
        (path, OutputId::of(&body), body.len()),
    )]);
    let (mut server, _) = codec_over(
        Arc::new(Files(Arc::new(Mutex::new(entries)))),
        1,
        InFlight::new(1 << 30),
    );
    let mut bytes = Vec::new();
    let reply = Reply {
        actions: vec![ActionId::from_bytes([1; 32])],
        max_inline: 1 << 20,
        hints: 8,
        compress: false,
        refuse: false,
        sent: Arc::default(),
        traffic: Arc::default(),
    };
    server
        .write_response(&protocol(), &mut bytes, Response::Reply(reply))
        .await
        .unwrap();
    let store = Arc::new(MapStore::default());
    let answer = exchange_with_hints(&store, 1 << 20, 8, bytes)
        .await
        .unwrap();
    assert!(matches!(answer.outcome, Some(Outcome::Committed(_))));
    assert_eq!(answer.next, [Hint::new(ActionId::from_bytes([2; 32]))]);
    assert_eq!(
        store.committed.lock().unwrap()[&ActionId::from_bytes([1; 32])],
        body
    );
}

#[tokio::test]
async fn refused_replies_say_not_found_without_looking() {
    let entries = Arc::new(Mutex::new(HashMap::new()));
    let (mut server, _) = codec_over(Arc::new(Files(entries)), 1, InFlight::new(1 << 30));
    let mut bytes = Vec::new();
    let reply = Reply {
        actions: vec![ActionId::from_bytes([1; 32]), ActionId::from_bytes([2; 32])],
        max_inline: 1 << 20,
        hints: 8,
        compress: false,
        refuse: true,
        sent: Arc::default(),
        traffic: Arc::default(),
    };
    server
        .write_response(&protocol(), &mut bytes, Response::Reply(reply))
        .await
        .unwrap();
    let store = Arc::new(MapStore::default());
    let (answer, reports) = exchange_batch(
        &store,
        &[ActionId::from_bytes([1; 32]), ActionId::from_bytes([2; 32])],
        bytes,
    )
    .await;
    assert!(answer.unwrap().next.is_empty());
    assert!(reports.iter().all(|r| r.outcome == Outcome::NotFound));
    assert_eq!(reports.len(), 2);
}

#[tokio::test]
async fn servers_answer_every_action_of_a_batch_and_hint_after_the_last_held() {
    let dir = tempfile::tempdir().unwrap();
    let entries = Arc::new(Mutex::new(HashMap::new()));
    for (n, body) in [(1u8, b"one".as_slice()), (3, b"three")] {
        let path = dir.path().join(n.to_string());
        std::fs::File::create(&path)
            .unwrap()
            .write_all(body)
            .unwrap();
        entries.lock().unwrap().insert(
            ActionId::from_bytes([n; 32]),
            (path, OutputId::of(body), body.len()),
        );
    }
    let server_store = Arc::new(Files(entries));
    let (mut server, _) = codec_over(server_store, 1, InFlight::new(1 << 30));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let reply = Reply {
        actions: vec![
            ActionId::from_bytes([1; 32]),
            ActionId::from_bytes([2; 32]),
            ActionId::from_bytes([3; 32]),
        ],
        max_inline: 1 << 20,
        hints: 4,
        compress: false,
        refuse: false,
        sent: sent.clone(),
        traffic: Arc::default(),
    };
    let mut writes = crate::protocol::testing::Writes::default();
    server
        .write_response(&protocol(), &mut writes, Response::Reply(reply))
        .await
        .unwrap();
    // Three small answers (two with a body, one "not found") are one
    // write: one frame on the connection, not one or two per entry.
    assert_eq!(writes.0.len(), 1, "{} writes", writes.0.len());
    let bytes = writes.bytes();
    assert_eq!(
        *sent.lock().unwrap(),
        [
            (ActionId::from_bytes([1; 32]), 3),
            (ActionId::from_bytes([3; 32]), 5)
        ]
    );

    let store = Arc::new(MapStore::default());
    let (answer, reports) = exchange_batch(
        &store,
        &[
            ActionId::from_bytes([1; 32]),
            ActionId::from_bytes([2; 32]),
            ActionId::from_bytes([3; 32]),
        ],
        bytes,
    )
    .await;
    // The hints follow the last action the server holds: ActionId::from_bytes([3; 32]).
    assert_eq!(
        answer.unwrap().next,
        [Hint::new(ActionId::from_bytes([4; 32]))]
    );
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[1].outcome, Outcome::NotFound);
    assert_eq!(
        store.committed.lock().unwrap()[&ActionId::from_bytes([3; 32])],
        b"three"
    );
}
