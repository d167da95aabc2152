//! Batches: entries reported in order as they land, and where a batch
//! stops.

use super::*;
use crate::ids::Hint;

/// A replicated entry announced bigger than its catalog listed is
/// refused before a byte of its body is read (no sink is opened), and
/// the batch stops there, as at a body that does not verify.
#[tokio::test]
async fn a_body_bigger_than_listed_is_refused_unread() {
    let store = Arc::new(MapStore::default());
    let bodies: [&[u8]; 3] = [b"first", b"third body", b"more"];
    let mut bytes = Vec::new();
    for body in bodies {
        bytes.extend(header_bytes(
            WIRE_VERSION,
            Some(found(body, true)),
            Vec::new(),
        ));
        bytes.extend_from_slice(body);
    }
    let actions: Vec<ActionId> = (1..=3).map(|n| ActionId::from_bytes([n; 32])).collect();
    let (answer, reports) = exchange_listed(&store, &actions, Some(vec![5, 3, 100]), bytes).await;
    answer.unwrap();
    assert_eq!(reports.len(), 2, "stopped at the refused one: {reports:?}");
    assert!(matches!(reports[0].outcome, Outcome::Committed(_)));
    assert_eq!(
        reports[1].outcome,
        Outcome::Rejected {
            reason: RejectReason::LargerThanListed {
                size: 10,
                listed: 3
            },
            bytes: 0,
        }
    );
    assert_eq!(store.committed.lock().unwrap().len(), 1);
    assert_eq!(
        store.writes.lock().unwrap().iter().sum::<usize>(),
        5,
        "only the first body was written"
    );
    // An announcement says the same.
    let mut bytes = header_bytes(WIRE_VERSION, Some(found(bodies[1], false)), Vec::new());
    bytes.extend(header_bytes(WIRE_VERSION, None, Vec::new()));
    let (_, reports) = exchange_listed(&store, &actions[1..], Some(vec![3, 3]), bytes).await;
    assert!(matches!(
        reports[0].outcome,
        Outcome::Rejected {
            reason: RejectReason::LargerThanListed { .. },
            ..
        }
    ));
}

#[tokio::test]
async fn batches_report_each_entry_in_order() {
    let store = Arc::new(MapStore::default());
    let bodies: [&[u8]; 3] = [b"first", b"", b"third body"];
    let mut bytes = Vec::new();
    bytes.extend(header_bytes(2, Some(found(bodies[0], true)), Vec::new()));
    bytes.extend_from_slice(bodies[0]);
    bytes.extend(header_bytes(2, None, Vec::new()));
    bytes.extend(header_bytes(
        2,
        Some(found(bodies[2], true)),
        vec![ActionId::from_bytes([9; 32])],
    ));
    bytes.extend_from_slice(bodies[2]);
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
    let answer = answer.unwrap();
    assert_eq!(answer.outcome, None);
    assert_eq!(answer.next, [Hint::new(ActionId::from_bytes([9; 32]))]);
    assert_eq!(answer.version, 2);
    let tokens: Vec<u64> = reports.iter().map(|r| r.token).collect();
    assert_eq!(tokens, [0, 1, 2]);
    assert!(matches!(reports[0].outcome, Outcome::Committed(_)));
    assert_eq!(reports[1].outcome, Outcome::NotFound);
    assert!(matches!(reports[2].outcome, Outcome::Committed(_)));
    let committed = store.committed.lock().unwrap();
    assert_eq!(committed[&ActionId::from_bytes([1; 32])], bodies[0]);
    assert_eq!(committed[&ActionId::from_bytes([3; 32])], bodies[2]);
}

#[tokio::test]
async fn a_version_one_server_answers_the_first_entry_only() {
    let store = Arc::new(MapStore::default());
    let mut bytes = header_bytes(1, Some(found(b"only", true)), Vec::new());
    bytes.extend_from_slice(b"only");
    let (answer, reports) = exchange_batch(
        &store,
        &[ActionId::from_bytes([1; 32]), ActionId::from_bytes([2; 32])],
        bytes,
    )
    .await;
    assert_eq!(answer.unwrap().version, 1);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(matches!(reports[0].outcome, Outcome::Committed(_)));
}

#[tokio::test]
async fn a_batch_stops_at_a_body_that_does_not_verify() {
    let store = Arc::new(MapStore::default());
    let mut bytes = header_bytes(2, Some(found(b"real", true)), Vec::new());
    bytes.extend_from_slice(b"fake");
    bytes.extend(header_bytes(2, Some(found(b"next", true)), Vec::new()));
    bytes.extend_from_slice(b"next");
    let (answer, reports) = exchange_batch(
        &store,
        &[ActionId::from_bytes([1; 32]), ActionId::from_bytes([2; 32])],
        bytes,
    )
    .await;
    answer.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(matches!(
        reports[0].outcome,
        Outcome::Rejected {
            reason: RejectReason::HashMismatch { .. },
            ..
        }
    ));
    assert!(store.committed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_cut_short_reports_what_arrived_and_fails() {
    let store = Arc::new(MapStore::default());
    let mut bytes = header_bytes(2, Some(found(b"whole", true)), Vec::new());
    bytes.extend_from_slice(b"whole");
    bytes.extend(header_bytes(2, Some(found(b"partial", true)), Vec::new()));
    bytes.extend_from_slice(b"par");
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
    assert_eq!(answer.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(reports.len(), 1);
    assert_eq!(store.committed.lock().unwrap().len(), 1);
}
