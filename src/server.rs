//! The GOCACHEPROG request loop: one `go` command, one [`serve`] call.
//!
//! Three roles, so a large `put` body never holds up answers:
//!
//! - **Reader** (a blocking thread): decodes requests in order. A `put` body
//!   is streamed straight from stdin into the store's hashing writer on this
//!   thread, because `go` sends nothing else until the body is through; the
//!   faster it is drained, the sooner `go`'s other requests get out.
//! - **Tasks**: each `put` (once its body is verified) and each `get` that
//!   must look beyond the local store runs in its own task, so answers go out
//!   as soon as they are ready, in any order. A [`TaskTracker`] lets `close`
//!   wait for every one of them. Local lookups are answered on the reader
//!   thread: they are a few small file reads, cheaper than any thread hop.
//! - **Writer** (a blocking thread): owns stdout. It receives responses on a
//!   bounded channel and flushes whenever the channel runs dry, so a burst of
//!   answers costs one `write` call. The capabilities line is its first
//!   message, sent before any request is read.
//!
//! On `close` the reader stops, pending tasks finish, the answer to `close` is
//! written last, and [`serve`] returns. End of input without `close` is a
//! clean exit too. Problems with one request are answered on that request:
//! a `get` that fails is a miss (most of `go` treats a `get` error like a miss
//! anyway, but a miss keeps the build quiet), a `put` that fails gets `Err`.

use std::io::{self, BufRead, BufWriter, Write};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::ids::{ActionId, OutputId};
use crate::protocol::{DecodeError, Request, RequestReader, Response};
use crate::stats::Counters;
use crate::store::Lookup;
use crate::tiered::MultiLevelStorage;

/// Responses buffered for the writer before tasks wait for it.
const RESPONSE_QUEUE: usize = 1024;
const STDOUT_BUFFER: usize = 64 * 1024;

/// How the conversation with `go` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `go` sent `close` and got its answer.
    Closed,
    /// Input ended without `close`.
    EndOfInput,
}

/// Serves one `go` command: requests from `input`, responses to `output`.
pub async fn serve<R, W>(
    storage: Arc<MultiLevelStorage>,
    counters: Arc<Counters>,
    input: R,
    output: W,
) -> io::Result<End>
where
    R: BufRead + Send + 'static,
    W: Write + Send + 'static,
{
    let (responses, queue) = mpsc::channel(RESPONSE_QUEUE);
    responses
        .send(Response::capabilities())
        .await
        .expect("the writer to be running");
    let writer = std::thread::Builder::new()
        .name("warren-stdout".into())
        .spawn(move || write_responses(output, queue))?;

    let tracker = TaskTracker::new();
    let reader = {
        let context = Context {
            storage,
            counters,
            responses: responses.clone(),
            tracker: tracker.clone(),
            runtime: Handle::current(),
        };
        tokio::task::spawn_blocking(move || context.read_requests(RequestReader::new(input)))
    };
    let close = reader.await.expect("the request reader not to panic");
    tracker.close();
    tracker.wait().await;
    if let Some(id) = close {
        // Answer `close` only once everything before it is answered.
        let _ = responses.send(Response::ack(id)).await;
    }
    drop(responses);
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await
        .expect("joining the writer not to panic")
        .expect("the writer not to panic");
    if let Err(e) = written {
        // `go` went away; nobody is left to answer.
        tracing::debug!("writing responses: {e}");
    }
    Ok(if close.is_some() {
        End::Closed
    } else {
        End::EndOfInput
    })
}

/// What the reader thread needs to start request tasks.
struct Context {
    storage: Arc<MultiLevelStorage>,
    counters: Arc<Counters>,
    responses: mpsc::Sender<Response>,
    tracker: TaskTracker,
    runtime: Handle,
}

impl Context {
    /// Reads until `close` (returning its ID) or end of input (`None`).
    fn read_requests<R: BufRead>(&self, mut reader: RequestReader<R>) -> Option<i64> {
        loop {
            match reader.next_request() {
                Ok(None) => return None,
                Ok(Some(Request::Close { id })) => return Some(id),
                Ok(Some(Request::Get { id, action })) => {
                    // The local tier is answered right here: a lookup is a
                    // few small file reads, cheaper than the thread hops of
                    // a task (measured: see docs/benchmarks.md). Only a
                    // remote lookup, which waits on the network, gets a task.
                    let found = self.storage.get_local(&action).unwrap_or_else(|e| {
                        tracing::warn!("cache lookup failed, treating it as a miss: {}", chain(&e));
                        Lookup::Miss
                    });
                    match found {
                        Lookup::Miss if self.storage.has_remote() => {
                            let storage = self.storage.clone();
                            let counters = self.counters.clone();
                            let responses = self.responses.clone();
                            self.tracker.spawn_on(
                                async move {
                                    let found = storage.get_remote(action).await;
                                    let _ = responses
                                        .send(answer_get(id, &action, found, &counters))
                                        .await;
                                },
                                &self.runtime,
                            );
                        }
                        found => {
                            let _ = self.responses.blocking_send(answer_get(
                                id,
                                &action,
                                found,
                                &self.counters,
                            ));
                        }
                    }
                }
                Ok(Some(Request::Put {
                    id,
                    action,
                    output,
                    body_size,
                })) => {
                    let verified = self.receive_body(&mut reader, output, body_size);
                    let verified = match verified {
                        Ok(verified) => verified,
                        Err(message) => {
                            tracing::error!("put {id} failed: {message}");
                            self.answer(Response::error(id, message));
                            continue;
                        }
                    };
                    let storage = self.storage.clone();
                    let counters = self.counters.clone();
                    let responses = self.responses.clone();
                    self.tracker.spawn_on(
                        async move {
                            let response = match storage.put(action, verified).await {
                                Ok(entry) => {
                                    tracing::trace!("put {id} {action}: stored {body_size} bytes");
                                    counters.put(body_size);
                                    Response::stored(id, &entry.path)
                                }
                                Err(e) => {
                                    let message = chain(&e);
                                    tracing::error!("put {id} failed: {message}");
                                    counters.error();
                                    Response::error(id, message)
                                }
                            };
                            let _ = responses.send(response).await;
                        },
                        &self.runtime,
                    );
                }
                Err(DecodeError::Io(e)) => {
                    tracing::error!("reading requests from go: {e}");
                    return None;
                }
                Err(e) => {
                    tracing::error!("{e}");
                    if let DecodeError::Malformed { id: Some(id), .. } = e {
                        self.answer(Response::error(id, e.to_string()));
                    }
                }
            }
        }
    }

    /// Streams a put body into the store and verifies it. The body is always
    /// consumed, even when storing fails, so the stream stays in sync.
    fn receive_body<R: BufRead>(
        &self,
        reader: &mut RequestReader<R>,
        output: OutputId,
        body_size: u64,
    ) -> Result<crate::store::VerifiedObject, String> {
        let mut writer = match self.storage.local().begin_object(output, body_size) {
            Ok(writer) => writer,
            Err(e) => {
                if body_size > 0 {
                    let _ = reader.read_body(body_size, &mut io::sink());
                }
                return Err(chain(&e));
            }
        };
        if body_size > 0 {
            reader
                .read_body(body_size, &mut writer)
                .map_err(|e| chain(&e))?;
        }
        writer.finish().map_err(|e| chain(&e))
    }

    fn answer(&self, response: Response) {
        self.counters.error();
        let _ = self.responses.blocking_send(response);
    }
}

fn answer_get(id: i64, action: &ActionId, found: Lookup, counters: &Counters) -> Response {
    match found {
        Lookup::Hit(entry) => {
            tracing::trace!("get {id} {action}: hit, {} bytes", entry.size);
            counters.hit(entry.size);
            Response::hit(id, entry.output, entry.size, entry.time, &entry.path)
        }
        Lookup::Miss => {
            tracing::trace!("get {id} {action}: miss");
            counters.miss();
            Response::miss(id)
        }
    }
}

/// The writer loop: one owner for stdout.
fn write_responses<W: Write>(output: W, mut queue: mpsc::Receiver<Response>) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(STDOUT_BUFFER, output);
    while let Some(response) = queue.blocking_recv() {
        response.write_line(&mut out)?;
        while let Ok(more) = queue.try_recv() {
            more.write_line(&mut out)?;
        }
        out.flush()?;
    }
    out.flush()
}

/// An error and its sources on one line, for `Err` responses and logs.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
