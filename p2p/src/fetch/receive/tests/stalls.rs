//! Peers that stop sending, and bodies given up for want of room: whose
//! fault each is, as the books are told.

use super::*;

/// Server bytes that end without closing the stream: what a peer that
/// stops sending looks like.
struct ThenSilent(Cursor<Vec<u8>>);

impl futures::AsyncRead for ThenSilent {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(0)) if !buf.is_empty() => std::task::Poll::Pending,
            other => other,
        }
    }
}

/// One single-action exchange at 50 MB/s against `server`, with the
/// bytes in flight of `in_flight`; what the request's peer had promised
/// when it ended, as the books were told.
async fn exchange_on(
    store: &Arc<MapStore>,
    in_flight: Arc<InFlight>,
    server: impl futures::AsyncRead + Unpin + Send,
) -> (io::Result<Answer>, Promise) {
    let (mut codec, mut reports) =
        codec_over(Arc::new(Shared(store.clone())), 50_000_000, in_flight);
    let action = ActionId::from_bytes([1; 32]);
    let request = outgoing(request(&[action], 1 << 30, 0), &[], &Arc::default());
    codec
        .write_request(&protocol(), &mut Vec::new(), request)
        .await
        .unwrap();
    let mut server = server;
    let answer =
        codec
            .read_response(&protocol(), &mut server)
            .await
            .map(|response| match response {
                Response::Answer(answer) => answer,
                Response::Reply(_) => unreachable!("the requesting side reads outcomes"),
            });
    (answer, promise_of(&mut reports))
}

/// A peer that says "found" and stops sending fails the exchange as
/// late with the body, which the books hold against it: here the
/// body's transfer timeout (1 s + 2 ms for 100 KB at 50 MB/s) passes
/// before a piece's stall would. One that sends no header at all is
/// only late with an answer.
#[tokio::test(start_paused = true)]
async fn a_small_body_the_peer_stops_sending_is_its_stall() {
    let store = Arc::new(MapStore::default());
    let body = vec![6; 100_000];
    let sent = answer(Some(found(&body, true)), &body[..10_000]);
    let started = Instant::now();
    let (got, promise) = exchange_on(
        &store,
        InFlight::new(1 << 30),
        ThenSilent(Cursor::new(sent)),
    )
    .await;
    let error = got.unwrap_err();
    assert_eq!(failure_of(&error), Failure::Stalled, "{error}");
    assert!(promise.broken(false), "it owes the body");
    assert_eq!(started.elapsed(), Duration::from_millis(1002));
    assert!(store.committed.lock().unwrap().is_empty());

    let (got, promise) = exchange_on(
        &store,
        InFlight::new(1 << 30),
        ThenSilent(Cursor::new(Vec::new())),
    )
    .await;
    assert_eq!(failure_of(&got.unwrap_err()), Failure::TimedOut);
    assert!(!promise.broken(false), "a silent lookup is only slow");
}

/// A big body the peer stops sending is cut off after a piece's stall
/// (2 s), not after its transfer timeout, and held against the peer.
#[tokio::test]
async fn a_big_body_the_peer_stops_sending_is_its_stall() {
    let store = Arc::new(MapStore::default());
    let body = vec![6; CHUNK_SIZE * 400];
    let sent = answer(Some(found(&body, true)), &body[..CHUNK_SIZE + 10]);
    let started = Instant::now();
    let (got, promise) = exchange_on(
        &store,
        InFlight::new(1 << 30),
        ThenSilent(Cursor::new(sent)),
    )
    .await;
    let took = started.elapsed();
    let error = got.unwrap_err();
    assert_eq!(failure_of(&error), Failure::Stalled, "{error}");
    assert!(promise.broken(false));
    let stall = crate::fetch::pace::STALL;
    assert!(took >= stall && took < stall * 2, "{took:?}");
    assert!(store.committed.lock().unwrap().is_empty());
}

/// With no room in flight, a small body (read whole) is not stored and
/// a big one is given up part-way, ending the stream; neither is held
/// against the peer, and the body's share is given back.
#[tokio::test]
async fn a_body_with_no_room_in_flight_is_given_up_and_nobody_blamed() {
    let in_flight = InFlight::new(1000);
    let others = [in_flight.open(), in_flight.open()];
    assert!(others.iter().all(|other| other.take(1000)));
    let store = Arc::new(MapStore::default());

    let small = vec![7; 5000];
    let (got, promise) = exchange_on(
        &store,
        in_flight.clone(),
        Cursor::new(answer(Some(found(&small, true)), &small)),
    )
    .await;
    assert!(matches!(got.unwrap().outcome, Some(Outcome::NotStored(_))));
    assert!(!promise.broken(false));

    let big = vec![8; CHUNK_SIZE * 3];
    let (got, promise) = exchange_on(
        &store,
        in_flight.clone(),
        Cursor::new(answer(Some(found(&big, true)), &big)),
    )
    .await;
    let error = got.unwrap_err();
    assert_eq!(failure_of(&error), Failure::Ended, "{error}");
    assert!(!promise.broken(false), "we stopped reading, not the peer");
    assert!(store.committed.lock().unwrap().is_empty());
    drop(others);
    let fresh = in_flight.open();
    assert!(fresh.take(1000), "the given-up body's share came back");
}
