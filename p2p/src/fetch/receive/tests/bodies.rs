//! Single exchanges: bodies streamed, verified and committed; lies,
//! oversized and truncated bodies refused; hints kept as asked.

use super::*;

#[tokio::test]
async fn verified_bodies_are_streamed_in_chunks_and_committed() {
    let store = Arc::new(MapStore::default());
    let body: Vec<u8> = (0..(CHUNK_SIZE * 4 + 7) as u32).map(|i| i as u8).collect();
    let outcome = exchange(&store, 1 << 30, answer(Some(found(&body, true)), &body))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Committed(meta) if meta.size == body.len() as u64));
    assert_eq!(
        store.committed.lock().unwrap()[&ActionId::from_bytes([1; 32])],
        body
    );
    let writes = store.writes.lock().unwrap();
    assert!(writes.len() >= 5, "{writes:?}");
    assert!(writes.iter().all(|len| *len <= CHUNK_SIZE));
}

#[tokio::test]
async fn tampered_bodies_are_rejected_and_not_committed() {
    let store = Arc::new(MapStore::default());
    let header = found(b"the real body", true);
    let outcome = exchange(&store, 1 << 20, answer(Some(header), b"a fake body!!"))
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        Outcome::Rejected {
            reason: RejectReason::HashMismatch { .. },
            bytes: 13
        }
    ));
    assert!(store.committed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unrequested_or_oversized_bodies_are_refused_unread() {
    let store = Arc::new(MapStore::default());
    let body = vec![3; 100];
    let outcome = exchange(&store, 10, answer(Some(found(&body, true)), &body))
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        Outcome::Rejected {
            reason: RejectReason::Unrequested { .. },
            ..
        }
    ));
    let mut huge = found(&body, true);
    huge.size = 2 << 30;
    let outcome = exchange(&store, u64::MAX, answer(Some(huge), &body))
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        Outcome::Rejected {
            reason: RejectReason::TooLarge { .. },
            ..
        }
    ));
    assert!(store.writes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn truncated_bodies_are_errors_and_not_committed() {
    let store = Arc::new(MapStore::default());
    for size in [1000, CHUNK_SIZE * 3] {
        let body = vec![4; size];
        let error = exchange(
            &store,
            1 << 30,
            answer(Some(found(&body, true)), &body[..size - 10]),
        )
        .await
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(store.committed.lock().unwrap().is_empty());
    }
}

#[tokio::test]
async fn misses_and_announcements_carry_no_body() {
    let store = Arc::new(MapStore::default());
    assert_eq!(
        exchange(&store, 0, answer(None, b"")).await.unwrap(),
        Outcome::NotFound
    );
    let body = vec![5; 10];
    let outcome = exchange(&store, 0, answer(Some(found(&body, false)), b""))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Announced(meta) if meta.size == 10));
    // Garbage instead of a header is an error, not a panic.
    let error = exchange(&store, 0, b"\0\0\0\x02{]".to_vec())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn hints_are_kept_only_as_many_as_asked_and_only_with_a_hit() {
    let store = Arc::new(MapStore::default());
    let body = b"body";
    let next: Vec<ActionId> = (0..10).map(|n| ActionId::from_bytes([n; 32])).collect();
    let bytes = answer_with_next(Some(found(body, true)), next.clone(), body);
    let answer = exchange_with_hints(&store, 1 << 20, 3, bytes)
        .await
        .unwrap();
    let hinted: Vec<ActionId> = answer.next.iter().map(|hint| hint.action).collect();
    assert_eq!(hinted, next[..3]);
    let bytes = answer_with_next(Some(found(body, true)), next.clone(), body);
    let answer = exchange_with_hints(&store, 1 << 20, 0, bytes)
        .await
        .unwrap();
    assert!(answer.next.is_empty());
    let bytes = answer_with_next(None, next, b"");
    let answer = exchange_with_hints(&store, 1 << 20, 3, bytes)
        .await
        .unwrap();
    assert_eq!(answer.outcome, Some(Outcome::NotFound));
    assert!(answer.next.is_empty());
}
