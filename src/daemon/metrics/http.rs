//! The metrics endpoint over HTTP/1: hyper's server, within bounds.
//!
//! A scrape is one `GET /metrics` now and then; anything that reaches the
//! port can open connections too, so each costs little and none lasts:
//!
//! - at most [`MAX_CONNECTIONS`] at once; one more is closed as soon as it
//!   is accepted, not queued (a queued connection still holds a file
//!   descriptor, and running the process out of those stops the helpers'
//!   socket);
//! - a request's head must arrive within [`HEADER_TIMEOUT`], in at most
//!   [`MAX_HEAD`] bytes (hyper answers 431 past that), and a connection
//!   ends after [`CONNECTION_TIMEOUT`] whatever it does; one request per
//!   connection;
//! - a request that names another host gets 421 ([`super::host`]);
//! - a failed accept backs off ([`crate::daemon::accept`]), and refusals are
//!   told through the daemon's [`Quiet`] table.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::host::Hosts;
use crate::daemon::accept::Backoff;
use crate::daemon::quiet::Quiet;
use futures::future::BoxFuture;

/// What a scrape answers with: the metrics in the Prometheus text format.
pub(super) trait Scrape: Send + Sync + 'static {
    fn scrape(&self) -> BoxFuture<'_, String>;
}

/// Connections served at once: a few scrapers, with room to spare.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// A request's line and headers must arrive within this long of the
/// connection's start.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed this long after it was accepted, answered or not.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a request's head (hyper's smallest buffer; a scrape's
/// is a few hundred).
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Of a refused host, this much is told in the log.
const HOST_SHOWN: usize = 64;

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves connections from `listener` until `shutdown`.
pub(super) async fn serve(
    listener: TcpListener,
    source: Arc<dyn Scrape>,
    quiet: Arc<Quiet>,
    shutdown: CancellationToken,
) {
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(e) => {
            tracing::warn!("cannot serve metrics: {e}");
            return;
        }
    };
    tracing::info!("serving metrics on http://{address}/metrics");
    let hosts = Hosts::new(address);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Backoff::new("metrics", quiet.clone());
    loop {
        let Some((stream, _)) = backoff.next(&shutdown, || listener.accept()).await else {
            return;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            drop(stream);
            tell(
                &quiet,
                "metrics busy",
                "closed metrics connections at once",
                format_args!(
                    "{MAX_CONNECTIONS} were open already (a scraper that keeps them open, \
                     or a flood)"
                ),
            );
            continue;
        };
        let (source, quiet) = (source.clone(), quiet.clone());
        tokio::spawn(async move {
            connection(stream, hosts, source, quiet).await;
            drop(permit);
        });
    }
}

/// Serves one request on `stream`, within the bounds in the module docs.
async fn connection(stream: TcpStream, hosts: Hosts, source: Arc<dyn Scrape>, quiet: Arc<Quiet>) {
    let service = service_fn(move |request| {
        let (source, quiet) = (source.clone(), quiet.clone());
        async move { Ok::<_, Infallible>(respond(&request, hosts, &*source, &quiet).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
        Err(_) => tracing::debug!("metrics connection: closed after {CONNECTION_TIMEOUT:?}"),
    }
}

/// The answer to one request.
async fn respond(
    request: &Request<Incoming>,
    hosts: Hosts,
    source: &dyn Scrape,
    quiet: &Quiet,
) -> Response<String> {
    if let Some(host) = hosts.foreign(request) {
        let shown: String = host.chars().take(HOST_SHOWN).collect();
        tell(
            quiet,
            "metrics host",
            "refused metrics requests",
            format_args!(
                "they named the host {shown:?}, not this listener (a web page trying DNS \
                 rebinding, or a scraper that names this machine by a DNS name: scrape it \
                 by address)"
            ),
        );
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            "this endpoint answers only requests that name its address\n",
        );
    }
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "try /metrics\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(source.scrape().await);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
    response
}

fn plain(status: StatusCode, body: &str) -> Response<String> {
    let mut response = Response::new(body.to_owned());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    response
}

/// Tells, once per quiet window, that `what` happened and why.
fn tell(quiet: &Quiet, kind: &str, what: &str, why: std::fmt::Arguments<'_>) {
    match quiet.occurred(kind, tokio::time::Instant::now()) {
        Some(n) => tracing::warn!("{what} ({n} since the last warning): {why}"),
        None => tracing::debug!("{what}: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Fixed;

    impl Scrape for Fixed {
        fn scrape(&self) -> BoxFuture<'_, String> {
            Box::pin(async { "warren_gets_total 7\n".to_owned() })
        }
    }

    async fn server() -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            Arc::new(Fixed),
            Arc::default(),
            shutdown.clone(),
        ));
        (address, shutdown)
    }

    /// Sends `request` on a new connection; what came back before the
    /// server closed it.
    async fn exchange(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn only_a_get_of_metrics_naming_our_host_is_answered() {
        let (address, _shutdown) = server().await;
        let host = format!("Host: {address}\r\n");
        let ok = exchange(address, &format!("GET /metrics HTTP/1.1\r\n{host}\r\n")).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(PROMETHEUS_TEXT) && ok.ends_with("warren_gets_total 7\n"));
        let head = exchange(address, &format!("HEAD /metrics HTTP/1.1\r\n{host}\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 200") && !head.contains("warren_"));
        for (request, status) in [
            (format!("GET / HTTP/1.1\r\n{host}\r\n"), "404"),
            (format!("POST /metrics HTTP/1.1\r\n{host}\r\n"), "405"),
            (
                format!(
                    "GET /metrics HTTP/1.1\r\nHost: evil.example:{}\r\n\r\n",
                    address.port()
                ),
                "421",
            ),
            ("GET /metrics HTTP/1.0\r\n\r\n".to_owned(), "421"),
            (
                format!(
                    "GET /metrics HTTP/1.1\r\n{host}X: {}\r\n\r\n",
                    "a".repeat(MAX_HEAD)
                ),
                "431",
            ),
            ("NOT HTTP\r\n\r\n".to_owned(), "400"),
        ] {
            let answer = exchange(address, &request).await;
            assert_eq!(
                answer.split(' ').nth(1),
                Some(status),
                "{request:.60}: {answer}"
            );
            assert!(!answer.contains("warren_"), "{answer}");
        }
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once() {
        let (address, _shutdown) = server().await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(address).await.unwrap());
        }
        // Closed well before the header timeout would close it.
        let started = tokio::time::Instant::now();
        let mut extra = TcpStream::connect(address).await.unwrap();
        let mut answer = Vec::new();
        let _ = extra.read_to_end(&mut answer).await;
        assert!(answer.is_empty());
        assert!(
            started.elapsed() < HEADER_TIMEOUT / 2,
            "{:?}",
            started.elapsed()
        );
        // The held ones end, and scrapes are served again.
        drop(held);
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n");
        let deadline = tokio::time::Instant::now() + HEADER_TIMEOUT;
        while !exchange(address, &request)
            .await
            .starts_with("HTTP/1.1 200")
        {
            assert!(tokio::time::Instant::now() < deadline, "never served again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_slow_connections_end_at_the_header_timeout() {
        let (address, _shutdown) = server().await;
        let started = tokio::time::Instant::now();
        let mut idle = TcpStream::connect(address).await.unwrap();
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nX: ")
            .await
            .unwrap();
        let drip = tokio::spawn(async move {
            // A byte a second: never a whole head.
            while slow.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tokio::time::Instant::now()
        });
        let mut answer = Vec::new();
        let _ = idle.read_to_end(&mut answer).await;
        let idle_closed = started.elapsed();
        let slow_closed = drip.await.unwrap() - started;
        for closed in [idle_closed, slow_closed] {
            assert!(
                (HEADER_TIMEOUT..CONNECTION_TIMEOUT).contains(&closed),
                "closed after {closed:?}"
            );
        }
    }
}
