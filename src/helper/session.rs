//! The GOCACHEPROG request loop: one `go` command, one [`serve`] call.
//!
//! Two roles, so a large `put` body never holds up answers:
//!
//! - **Reader** (a blocking thread): decodes requests in order. A `put` body
//!   is streamed straight from stdin into the store's hashing writer on this
//!   thread, because `go` sends nothing else until the body is through; the
//!   faster it is drained, the sooner `go`'s other requests get out. Local
//!   lookups are answered right here too: they are a few small file reads.
//! - **Tasks**: committing a verified `put`, and any `get` that must look
//!   beyond the local store, run apart from the reader, so answers go out as
//!   soon as they are ready, in any order. A [`TaskTracker`] lets `close`
//!   wait for every one of them.
//!
//! stdout is a `Responder`: one buffered writer behind a mutex, each
//! response written and flushed whole under the lock, rather than a writer
//! thread fed by a channel: `go` waits on each lookup, so a thread wake-up
//! per answer is paid on the build's critical path, once per `get`
//! (docs/benchmarks.md, "Local lookups answered on the reader thread"). The
//! capabilities line is written before any request is read.
//!
//! On `close` the reader stops, pending tasks finish, the answer to `close` is
//! written last, and [`serve`] returns. End of input without `close` is a
//! clean exit too. Problems with one request are answered on that request:
//! a `get` that fails is a miss (most of `go` treats a `get` error like a miss
//! anyway, but a miss keeps the build quiet). A `put` whose body is wrong
//! gets `Err` and an error line. A `put` the store cannot take is a fault
//! of the machine, counted in [`Faults`] and told once by the caller: it
//! gets `Err` if it failed part-way, and if the store refused it outright
//! (read-only, say) a scratch file that lasts the `go` command, because
//! `go` fails a build when a module index it puts is refused.

use std::io::{self, BufRead, BufWriter, Write};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::helper::faults::Faults;
use crate::helper::protocol::{BodyError, DecodeError, Request, RequestReader, Response};
use crate::helper::tiered::{MultiLevelStorage, Step};
use crate::helper::trace::Recorder;
use crate::ids::{ActionId, OutputId};
use crate::ipc::trace::{Hit, Miss};
use crate::logging::chain;
use crate::store::Lookup;
use crate::store::stats::Counters;

const STDOUT_BUFFER: usize = 64 * 1024;

/// How the conversation with `go` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// `go` sent `close` and got its answer.
    Closed,
    /// Input ended without `close`.
    EndOfInput,
}

/// Serves one `go` command: requests from `input`, responses to `output`.
pub(crate) async fn serve<R, W>(
    storage: Arc<MultiLevelStorage>,
    counters: Arc<Counters>,
    trace: Arc<Recorder>,
    faults: Arc<Faults>,
    input: R,
    output: W,
) -> io::Result<End>
where
    R: BufRead + Send + 'static,
    W: Write + Send + 'static,
{
    let responder = Responder::new(output);
    responder.send(&Response::capabilities());
    let tracker = TaskTracker::new();
    let scratch = Arc::new(Scratch::default());
    let reader = {
        let context = Context {
            storage,
            counters,
            trace,
            faults,
            scratch: scratch.clone(),
            responder: responder.clone(),
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
        responder.send(&Response::ack(id));
    }
    // go is done with the files of puts the store could not take.
    drop(scratch);
    Ok(if close.is_some() {
        End::Closed
    } else {
        End::EndOfInput
    })
}

/// stdout, shared by the reader thread and the tasks. Lines never
/// interleave: each is written and flushed under the lock.
#[derive(Clone)]
struct Responder(Arc<Mutex<BufWriter<Box<dyn Write + Send>>>>);

impl Responder {
    fn new(output: impl Write + Send + 'static) -> Self {
        let output: Box<dyn Write + Send> = Box::new(output);
        Self(Arc::new(Mutex::new(BufWriter::with_capacity(
            STDOUT_BUFFER,
            output,
        ))))
    }

    /// Writes one response. Blocks only while the pipe to `go` is full;
    /// `go` reads answers on a goroutine of their own, whatever it is
    /// doing, so that is brief, and async code may call this directly.
    fn send(&self, response: &Response) {
        let mut out = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = response.write_line(&mut *out).and_then(|()| out.flush()) {
            // `go` went away; nobody is left to answer.
            tracing::debug!("writing response {}: {e}", response.id);
        }
    }
}

/// Why a put body was not received.
enum PutError {
    /// The store could not take it (a full disk, say): counted in
    /// [`Faults`], told once.
    Store(Box<dyn std::error::Error + Send + Sync>),
    /// What `go` sent is wrong (a malformed body, or one that does not
    /// match its OutputID): told on the put.
    Request(Box<dyn std::error::Error + Send + Sync>),
}

impl PutError {
    fn of_body(error: BodyError) -> Self {
        match error {
            BodyError::Sink(_) => Self::Store(error.into()),
            _ => Self::Request(error.into()),
        }
    }
}

/// A put body as received.
enum Body {
    /// Verified, on its way into the store.
    Verified(crate::store::VerifiedObject),
    /// In a scratch file, because the store took nothing, for `why`.
    Scratch {
        path: std::path::PathBuf,
        why: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Files for puts the store cannot take, in a directory of the system's
/// temp dir that lasts one `go` command (owner-only, removed at the end).
///
/// Each put gets a file of its own, created new (`O_EXCL`), never one
/// opened by name: `go` may still read the file of an earlier put of the
/// same OutputID, and truncating it would hand `go` an empty body. Names
/// are the OutputID and a random tail, with no dot: `go` wants a DiskPath
/// without an extension, and Go's `filepath.Ext` counts from the last dot.
#[derive(Default)]
pub(crate) struct Scratch(Mutex<Option<tempfile::TempDir>>);

impl Scratch {
    fn file(&self, output: OutputId) -> io::Result<(std::fs::File, std::path::PathBuf)> {
        let mut dir = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if dir.is_none() {
            *dir = Some(tempfile::Builder::new().prefix("warren-").tempdir()?);
        }
        let dir = dir.as_ref().expect("made above").path();
        let prefix = format!("{}-", output.to_hex());
        let file = tempfile::Builder::new()
            .prefix(&prefix)
            .rand_bytes(8)
            .tempfile_in(dir)?;
        // Kept until the directory goes, at the end of the `go` command.
        file.keep().map_err(|e| e.error)
    }
}

/// What the reader thread needs to start request tasks.
struct Context {
    storage: Arc<MultiLevelStorage>,
    counters: Arc<Counters>,
    trace: Arc<Recorder>,
    faults: Arc<Faults>,
    scratch: Arc<Scratch>,
    responder: Responder,
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
                    match self.storage.get(&action) {
                        Step::AskRemote => {
                            let storage = self.storage.clone();
                            let counters = self.counters.clone();
                            let responder = self.responder.clone();
                            let trace = self.trace.clone();
                            self.tracker.spawn_on(
                                async move {
                                    let asked = std::time::Instant::now();
                                    let found = storage.get_remote(action).await;
                                    let waited = asked.elapsed();
                                    counters.remote_lookup(waited);
                                    let found = match found {
                                        Ok((entry, hit)) => {
                                            counters.peer_hit(entry.size);
                                            let hit = match hit {
                                                Hit::Bucket(signer) => Hit::Bucket(signer),
                                                _ => Hit::Peer(entry.source.peer().copied()),
                                            };
                                            trace.note(action, hit, Some(waited));
                                            Lookup::Hit(entry)
                                        }
                                        Err(miss) => {
                                            trace.note(action, miss, Some(waited));
                                            Lookup::Miss
                                        }
                                    };
                                    // Written from the runtime's thread: `go`
                                    // reads answers as they come, so this does
                                    // not block, and a hand-over to another
                                    // thread would cost a wake-up per lookup.
                                    responder.send(&answer_get(id, &action, found, &counters));
                                },
                                &self.runtime,
                            );
                        }
                        Step::Answered(found) => {
                            self.note_local(action, &found);
                            self.responder
                                .send(&answer_get(id, &action, found, &self.counters));
                        }
                    }
                }
                Ok(Some(Request::Put {
                    id,
                    action,
                    output,
                    body_size,
                })) => {
                    self.trace.note_put(action);
                    let verified = self.receive_body(&mut reader, output, body_size);
                    let verified = match verified {
                        Ok(Body::Verified(verified)) => verified,
                        Ok(Body::Scratch { path, why }) => {
                            // Not cached, but go gets its file and goes on.
                            self.faults.put_failed(&*why);
                            self.responder.send(&Response::stored(id, &path));
                            continue;
                        }
                        Err(PutError::Store(e)) => {
                            self.faults.put_failed(&*e);
                            self.answer(Response::error(id, chain(&*e)));
                            continue;
                        }
                        Err(PutError::Request(e)) => {
                            // What go sent is wrong: said on this put.
                            let message = chain(&*e);
                            tracing::error!("put {id} failed: {message}");
                            self.answer(Response::error(id, message));
                            continue;
                        }
                    };
                    let storage = self.storage.clone();
                    let counters = self.counters.clone();
                    let faults = self.faults.clone();
                    let responder = self.responder.clone();
                    self.tracker.spawn_blocking_on(
                        move || {
                            let response = match storage.commit_put(&action, verified) {
                                Ok(entry) => {
                                    tracing::trace!("put {id} {action}: stored {body_size} bytes");
                                    counters.put(body_size);
                                    Response::stored(id, &entry.path)
                                }
                                Err(e) => {
                                    faults.put_failed(&e);
                                    counters.error();
                                    Response::error(id, chain(&e))
                                }
                            };
                            responder.send(&response);
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
    ) -> Result<Body, PutError> {
        self.faults.before_put(body_size);
        let mut writer = match self.storage.begin_put(output, body_size) {
            Ok(writer) => writer,
            Err(e) => {
                // The store takes nothing (read-only, say): go still needs
                // a file for what it put (module indexes fail its build
                // without one), so it gets one that lasts this command.
                let scratch = self.scratch.file(output);
                let (mut file, path) = match scratch {
                    Ok(file) => file,
                    Err(scratch) => {
                        tracing::debug!("no scratch file either: {scratch}");
                        if body_size > 0 {
                            let _ = reader.read_body(body_size, &mut io::sink());
                        }
                        return Err(PutError::Store(e.into()));
                    }
                };
                if body_size > 0 {
                    reader
                        .read_body(body_size, &mut file)
                        .map_err(PutError::of_body)?;
                }
                return Ok(Body::Scratch {
                    path,
                    why: e.into(),
                });
            }
        };
        if body_size > 0 {
            reader
                .read_body(body_size, &mut writer)
                .map_err(PutError::of_body)?;
        }
        writer.finish().map(Body::Verified).map_err(|e| match e {
            crate::store::Error::Mismatch { .. } => PutError::Request(e.into()),
            e => PutError::Store(e.into()),
        })
    }

    fn answer(&self, response: Response) {
        self.counters.error();
        self.responder.send(&response);
    }

    /// Traces a lookup the local store answered: a peer's entry stored
    /// since this `go` command started was read ahead for it.
    fn note_local(&self, action: ActionId, found: &Lookup) {
        match found {
            Lookup::Hit(entry) => match entry.source.peer() {
                Some(peer) if entry.time >= self.trace.started() => {
                    self.trace.note(action, Hit::ReadAhead(*peer), None);
                }
                _ => self.trace.note(action, Hit::Local, None),
            },
            Lookup::Miss => self.trace.note(action, Miss::SharingOff, None),
        }
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

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// Two puts of one OutputID that the store cannot take: `go` may still
    /// be reading the first one's file when the second arrives, so the
    /// second must not truncate it. Neither name may have an extension in
    /// Go's sense (`filepath.Ext` counts from the last dot).
    #[test]
    fn scratch_files_are_unique_and_never_truncate_one_in_use() {
        let scratch = Scratch::default();
        let output = OutputId::of(b"the body");
        let (mut first, first_path) = scratch.file(output).unwrap();
        first.write_all(b"the body").unwrap();
        let mut reading = std::fs::File::open(&first_path).unwrap();
        let (_second, second_path) = scratch.file(output).unwrap();
        let mut read = Vec::new();
        reading.read_to_end(&mut read).unwrap();
        assert_eq!(read, b"the body", "the first file was truncated");
        assert_ne!(first_path, second_path);
        for path in [&first_path, &second_path] {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(!name.contains('.'), "{name} has an extension for Go");
        }
    }
}
