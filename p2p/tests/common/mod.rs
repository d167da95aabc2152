//! Test support: a directory-backed store that records how it was used,
//! nodes on loopback TCP, and event waits that fail instead of hanging.
//!
//! Everything here listens and dials on 127.0.0.1 only, and no node enables
//! mDNS.

#![allow(dead_code, unreachable_pub)] // Each test binary uses a different part.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use warren_p2p::identity::Keypair;
use warren_p2p::summary;
use warren_p2p::{
    ActionId, Bodies, BodySink, Client, CommitError, Event, Hint, Hints, Multiaddr, NodeConfig,
    OutputId, PeerId, Served, Store, Summaries, SummaryChunk,
};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Counters of how the node used a [`DirStore`].
#[derive(Debug, Default)]
pub struct Usage {
    pub opens: AtomicU64,
    pub sinks: AtomicU64,
    pub writes: AtomicU64,
    pub largest_write: AtomicU64,
    pub bytes_written: AtomicU64,
    pub commits: AtomicU64,
    /// Sinks dropped without a commit (failed, cancelled, rejected).
    pub discarded: AtomicU64,
}

impl Usage {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    output: OutputId,
    size: u64,
    time_unix_nanos: u64,
    path: PathBuf,
    /// Put here (not fetched from a peer).
    built_here: bool,
}

struct Inner {
    dir: tempfile::TempDir,
    entries: Mutex<HashMap<ActionId, Entry>>,
    /// Actions in the order they were stored, if the store gives
    /// read-ahead hints (see [`DirStore::with_hints`]).
    order: Option<Mutex<Vec<ActionId>>>,
    /// The summary log and its epoch, if the store keeps one (see
    /// [`DirStore::with_summary`]).
    summary: Option<Mutex<summary::Log>>,
    usage: Usage,
    /// OutputIDs of earlier builds here, for agreement (see
    /// [`DirStore::remember_built`]).
    built: Mutex<HashMap<ActionId, OutputId>>,
}

/// A store of one file per entry in a temp directory. Sinks write to a temp
/// file and verify size and SHA-256 on commit, as warren's store does.
#[derive(Clone)]
pub struct DirStore(Arc<Inner>);

impl DirStore {
    pub fn new() -> Self {
        Self::build(false, false)
    }

    /// A store that hints, to peers it serves, the entries stored after
    /// the one they fetched (in the order of `put`s), as warren's does.
    pub fn with_hints() -> Self {
        Self::build(true, false)
    }

    /// A store that keeps a summary log for peers, as warren's does (but
    /// with no indexing delay: an entry is in it once `put` returns).
    pub fn with_summary() -> Self {
        Self::build(false, true)
    }

    fn build(hints: bool, summary: bool) -> Self {
        Self(Arc::new(Inner {
            dir: tempfile::tempdir().unwrap(),
            entries: Mutex::default(),
            order: hints.then(Mutex::default),
            summary: summary.then(|| Mutex::new(summary::Log::new())),
            usage: Usage::default(),
            built: Mutex::default(),
        }))
    }

    pub fn usage(&self) -> &Usage {
        &self.0.usage
    }

    /// Names `actions` in the summary log only (no bodies): a big store's
    /// summary, cheaply.
    pub fn log_only(&self, actions: impl Iterator<Item = ActionId>) {
        let mut log = self
            .0
            .summary
            .as_ref()
            .expect("a summary store")
            .lock()
            .unwrap();
        for action in actions {
            log.push(&action);
        }
    }

    /// Stores `body` under `action`; returns its OutputID.
    pub fn put(&self, action: ActionId, body: &[u8]) -> OutputId {
        let output = OutputId::of(body);
        self.put_claiming(action, body, output);
        output
    }

    /// Stores `body` under `action` with a made-up OutputID (a damaged store).
    pub fn put_claiming(&self, action: ActionId, body: &[u8], output: OutputId) {
        let path = self.0.dir.path().join(action.to_hex());
        File::create(&path).unwrap().write_all(body).unwrap();
        self.insert(action, output, body.len() as u64, path, true);
    }

    /// Records that an earlier build here made `output` for `action`
    /// (its body gone): what [`Bodies::built_here`] answers.
    pub fn remember_built(&self, action: ActionId, output: OutputId) {
        self.0.built.lock().unwrap().insert(action, output);
    }

    /// Stores a generated body of `size` bytes, written and hashed a chunk
    /// at a time so the test itself never holds it in memory.
    pub fn put_generated(&self, action: ActionId, size: u64) -> OutputId {
        let path = self.0.dir.path().join(action.to_hex());
        let mut file = io::BufWriter::new(File::create(&path).unwrap());
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        while written < size {
            let len = (size - written).min(chunk.len() as u64) as usize;
            for (i, byte) in chunk[..len].iter_mut().enumerate() {
                *byte = ((written + i as u64) * 31 % 251) as u8;
            }
            hasher.update(&chunk[..len]);
            file.write_all(&chunk[..len]).unwrap();
            written += len as u64;
        }
        file.flush().unwrap();
        let output = OutputId::from_bytes(hasher.finalize().into());
        self.insert(action, output, size, path, true);
        output
    }

    fn insert(&self, action: ActionId, output: OutputId, size: u64, path: PathBuf, built: bool) {
        let entry = Entry {
            output,
            size,
            time_unix_nanos: 1_700_000_000_000_000_000,
            path,
            built_here: built,
        };
        self.0.entries.lock().unwrap().insert(action, entry);
        if let Some(order) = &self.0.order {
            order.lock().unwrap().push(action);
        }
        if let Some(log) = &self.0.summary {
            log.lock().unwrap().push(&action);
        }
    }

    pub fn has(&self, action: &ActionId) -> bool {
        self.0.entries.lock().unwrap().contains_key(action)
    }

    pub fn entry_count(&self) -> usize {
        self.0.entries.lock().unwrap().len()
    }

    /// The stored body (small bodies only).
    pub fn body(&self, action: &ActionId) -> Option<Vec<u8>> {
        let path = self.0.entries.lock().unwrap().get(action)?.path.clone();
        Some(std::fs::read(path).unwrap())
    }

    /// SHA-256 of the stored body, read a chunk at a time.
    pub fn hash_of(&self, action: &ActionId) -> Option<OutputId> {
        let path = self.0.entries.lock().unwrap().get(action)?.path.clone();
        let mut file = File::open(path).unwrap();
        let mut hasher = Sha256::new();
        let mut chunk = vec![0; 64 * 1024];
        loop {
            let read = file.read(&mut chunk).unwrap();
            if read == 0 {
                return Some(OutputId::from_bytes(hasher.finalize().into()));
            }
            hasher.update(&chunk[..read]);
        }
    }

    pub fn as_store(&self) -> Arc<dyn Store> {
        Arc::new(self.clone())
    }
}

impl Bodies for DirStore {
    fn contains(&self, action: &ActionId) -> bool {
        self.has(action)
    }

    fn open(&self, action: &ActionId) -> io::Result<Option<Served>> {
        self.0.usage.opens.fetch_add(1, Ordering::SeqCst);
        let Some(entry) = self.0.entries.lock().unwrap().get(action).cloned() else {
            return Ok(None);
        };
        Ok(Some(Served {
            output: entry.output,
            size: entry.size,
            time_unix_nanos: entry.time_unix_nanos,
            built_here: entry.built_here,
            body: File::open(&entry.path)?,
        }))
    }

    fn built_here(&self, action: &ActionId) -> Option<OutputId> {
        self.0.built.lock().unwrap().get(action).copied()
    }

    fn begin(
        &self,
        action: &ActionId,
        output: &OutputId,
        size: u64,
        _: &warren_p2p::PeerId,
    ) -> io::Result<Box<dyn BodySink>> {
        self.0.usage.sinks.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(DirSink {
            store: self.clone(),
            action: *action,
            output: *output,
            size,
            temp: Some(tempfile::NamedTempFile::new_in(self.0.dir.path())?),
            hasher: Sha256::new(),
            written: 0,
        }))
    }
}

impl Hints for DirStore {
    fn following(&self, action: &ActionId, limit: usize) -> Vec<Hint> {
        let Some(order) = &self.0.order else {
            return Vec::new();
        };
        let order = order.lock().unwrap();
        match order.iter().position(|stored| stored == action) {
            Some(at) => (order[at + 1..].iter().take(limit))
                .map(|&action| Hint::new(action))
                .collect(),
            None => Vec::new(),
        }
    }
}

impl Summaries for DirStore {
    fn summary(&self, epoch: u64, since: u64, limit: usize) -> Option<SummaryChunk> {
        let log = self.0.summary.as_ref()?.lock().unwrap();
        Some(log.chunk(epoch, since, limit))
    }
}

struct DirSink {
    store: DirStore,
    action: ActionId,
    output: OutputId,
    size: u64,
    temp: Option<tempfile::NamedTempFile>,
    hasher: Sha256,
    written: u64,
}

impl Write for DirSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let usage = &self.store.0.usage;
        usage.writes.fetch_add(1, Ordering::SeqCst);
        usage
            .largest_write
            .fetch_max(bytes.len() as u64, Ordering::SeqCst);
        usage
            .bytes_written
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        let temp = self.temp.as_mut().expect("an open sink");
        temp.write_all(bytes)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BodySink for DirSink {
    fn commit(mut self: Box<Self>) -> Result<(), CommitError> {
        let actual = OutputId::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
        if self.written != self.size || actual != self.output {
            return Err(CommitError::Mismatch {
                actual,
                actual_size: self.written,
            });
        }
        let path = self.store.0.dir.path().join(self.action.to_hex());
        self.temp
            .take()
            .expect("an open sink")
            .persist(&path)
            .map_err(|e| e.error)?;
        self.store
            .insert(self.action, self.output, self.size, path, false);
        self.store.0.usage.commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for DirSink {
    fn drop(&mut self) {
        if self.temp.is_some() {
            self.store.0.usage.discarded.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A node running on loopback, with its event stream.
pub struct TestNode {
    pub client: Client,
    pub events: mpsc::Receiver<Event>,
    pub peer: PeerId,
    /// Its listen address, ending in `/p2p/<peer id>`.
    pub address: Multiaddr,
    pub store: DirStore,
    task: JoinHandle<()>,
}

impl TestNode {
    /// Ends the node as a crash would: its connections drop.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Waits (at most [`WAIT`]) for an event matching `wanted`; panics
    /// otherwise, listing what came instead.
    pub async fn wait_for(&mut self, wanted: impl Fn(&Event) -> bool) -> Event {
        wait_for(&mut self.events, wanted).await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Test defaults: loopback only, no mDNS, a lookup deadline that a loaded
/// machine running debug builds still meets, quick redials.
pub fn test_config(keypair: Keypair, allowlist: &[PeerId]) -> NodeConfig {
    NodeConfig::new(keypair)
        .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
        .with_allowlist(
            allowlist
                .iter()
                .copied()
                .collect::<std::collections::HashSet<_>>(),
        )
        .with_mdns(None)
        .with_lookup_deadline(Duration::from_secs(1))
        .with_redial_backoff(Duration::from_millis(100), Duration::from_secs(1))
}

pub async fn start(config: NodeConfig, store: DirStore) -> TestNode {
    let peer = config.peer_id();
    let (client, mut events, event_loop) = warren_p2p::new(config, store.as_store()).unwrap();
    let task = tokio::spawn(event_loop.run());
    let Event::Listening(address) =
        wait_for(&mut events, |e| matches!(e, Event::Listening(_))).await
    else {
        unreachable!()
    };
    let address = address.with_p2p(peer).unwrap();
    TestNode {
        client,
        events,
        peer,
        address,
        store,
        task,
    }
}

/// A node with `keypair`, allowing `allowlist`, and an empty store.
pub async fn node(keypair: &Keypair, allowlist: &[PeerId]) -> TestNode {
    start(test_config(keypair.clone(), allowlist), DirStore::new()).await
}

pub fn keypairs<const N: usize>() -> [Keypair; N] {
    std::array::from_fn(|_| Keypair::generate_ed25519())
}

pub fn id(keypair: &Keypair) -> PeerId {
    keypair.public().to_peer_id()
}

/// `a` dials `b`; waits until both see the connection.
pub async fn connect(a: &mut TestNode, b: &mut TestNode) {
    a.client.dial(b.address.clone()).await.unwrap();
    let b_peer = b.peer;
    a.wait_for(|e| *e == Event::PeerConnected(b_peer)).await;
    let a_peer = a.peer;
    b.wait_for(|e| *e == Event::PeerConnected(a_peer)).await;
}

pub async fn wait_for(
    events: &mut mpsc::Receiver<Event>,
    wanted: impl Fn(&Event) -> bool,
) -> Event {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.recv().await {
            if wanted(&event) {
                return Some(event);
            }
            seen.push(event);
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream ended; saw {seen:?}"),
        Err(_) => panic!("timed out waiting for an event; saw {seen:?}"),
    }
}

/// Runs `future`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("took longer than {limit:?}"))
}

/// Waits until `condition` holds, polling; fails after [`WAIT`].
pub async fn until(what: &str, condition: impl Fn() -> bool) {
    let start = tokio::time::Instant::now();
    while !condition() {
        assert!(start.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn action(n: u8) -> ActionId {
    ActionId::from_bytes([n; 32])
}

/// Waits until `node` has a summary of `peer` naming `entries` entries.
pub async fn until_summary(node: &TestNode, peer: PeerId, entries: u64) {
    let start = tokio::time::Instant::now();
    loop {
        let known = node
            .client
            .peers()
            .await
            .iter()
            .find(|info| info.peer == peer)
            .and_then(|info| info.summary_entries);
        if known == Some(entries) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for a summary of {entries} entries; have {known:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
