//! Compressed bodies: read back whole, timed only when raw, and refused
//! when their chunks do not decode or verify.

use super::*;

/// What a server writes for action `ActionId::from_bytes([1; 32])` holding `body` (from a
/// file), compressed or not.
async fn served_bytes(body: &[u8], compress: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(body)
        .unwrap();
    let entries = HashMap::from([(
        ActionId::from_bytes([1; 32]),
        (path, OutputId::of(body), body.len()),
    )]);
    let (mut server, _) = codec_over(
        Arc::new(Files(Arc::new(Mutex::new(entries)))),
        1,
        InFlight::new(1 << 30),
    );
    let reply = Reply {
        actions: vec![ActionId::from_bytes([1; 32])],
        max_inline: 1 << 30,
        hints: 0,
        compress,
        refuse: false,
        sent: Arc::default(),
        traffic: Arc::default(),
    };
    let mut bytes = Vec::new();
    server
        .write_response(&protocol(), &mut bytes, Response::Reply(reply))
        .await
        .unwrap();
    bytes
}

/// Go-output-like bytes: compressible, but not trivially.
fn compressible(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            if i % 64 < 48 {
                b"go.buildid"[i as usize % 10]
            } else {
                (i / 64) as u8
            }
        })
        .collect()
}

#[tokio::test]
async fn compressed_bodies_round_trip_and_only_raw_ones_are_timed() {
    let zstd = || vec![Encoding::Zstd];
    // One piece (decoded on the async side) and several (streamed).
    for size in [2000, CHUNK_SIZE * 2 + 1000] {
        let body = compressible(size);
        let bytes = served_bytes(&body, true).await;
        assert!(bytes.len() < size / 3, "{} bytes for {size}", bytes.len());
        let store = Arc::new(MapStore::default());
        let link = Arc::new(LinkMeter::default());
        let answer = exchange_accepting(&store, 1 << 30, 0, zstd(), &link, bytes.clone())
            .await
            .unwrap();
        assert!(matches!(answer.outcome, Some(Outcome::Committed(_))));
        assert_eq!(
            store.committed.lock().unwrap()[&ActionId::from_bytes([1; 32])],
            body
        );
        assert_eq!(link.measured(), (0, size as u64));

        // A requester that did not ask cannot read it: refused, not stored.
        let store = Arc::new(MapStore::default());
        let error = exchange_with_hints(&store, 1 << 30, 0, bytes)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(store.writes.lock().unwrap().is_empty());

        // A server that does not compress (older, or not asked) is fine.
        // Each body is measured as what it was sent as.
        let store = Arc::new(MapStore::default());
        let raw = served_bytes(&body, false).await;
        let answer = exchange_accepting(&store, 1 << 30, 0, zstd(), &link, raw)
            .await
            .unwrap();
        assert!(matches!(answer.outcome, Some(Outcome::Committed(_))));
        assert_eq!(
            store.committed.lock().unwrap()[&ActionId::from_bytes([1; 32])],
            body
        );
        assert_eq!(link.measured(), (size as u64, size as u64));
    }
}

#[tokio::test]
async fn compressed_bodies_that_do_not_decode_or_verify_are_rejected() {
    let body = compressible(CHUNK_SIZE + 500);
    let header = FoundHeader {
        encoding: Encoding::Zstd,
        ..found(&body, true)
    };
    let accept = || vec![Encoding::Zstd];
    let link = Arc::new(LinkMeter::default());
    let store = Arc::new(MapStore::default());

    // Chunks that decode, to the wrong bytes: a hash mismatch.
    let mut other = body.clone();
    other[CHUNK_SIZE + 7] ^= 1;
    let mut wrong = Vec::new();
    for piece in other.chunks(CHUNK_SIZE) {
        let mut buffer = Piece::new(piece.len());
        buffer.copy_from_slice(piece);
        compress::Chunk::encode(buffer, true)
            .write(&mut wrong)
            .await
            .unwrap();
    }
    let got = exchange_accepting(
        &store,
        1 << 30,
        0,
        accept(),
        &link,
        answer(Some(header.clone()), &wrong),
    )
    .await
    .unwrap();
    assert!(matches!(
        got.outcome,
        Some(Outcome::Rejected {
            reason: RejectReason::HashMismatch { .. },
            ..
        })
    ));

    // A chunk that is not zstd at all.
    let mut garbage = 100u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0x55; 100]);
    let got = exchange_accepting(
        &store,
        1 << 30,
        0,
        accept(),
        &link,
        answer(Some(header.clone()), &garbage),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            &got.outcome,
            Some(Outcome::Rejected {
                reason: RejectReason::Undecodable(_),
                ..
            })
        ),
        "{got:?}"
    );

    // An encoding nobody asked for, from a newer peer: unreadable.
    let unknown = FoundHeader {
        encoding: Encoding::Unknown,
        ..header
    };
    let error = exchange_accepting(
        &store,
        1 << 30,
        0,
        accept(),
        &link,
        answer(Some(unknown), &body),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(store.committed.lock().unwrap().is_empty());
}
