//! A 64 MiB body streams through in chunks with bounded memory, raw and
//! compressed.
//!
//! A test binary of its own, so the process's peak memory (VmHWM) measures
//! this transfer and nothing else running in parallel.

mod common;

use std::time::Duration;

use common::{DirStore, Usage, action, connect, id, keypairs, start, test_config, within};
use warren_p2p::Compression;

const SIZE: u64 = 64 << 20;
const CHUNK: u64 = warren_p2p::wire::CHUNK_SIZE as u64;

/// A value from /proc/self/status, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak-RSS counter, so VmHWM then measures from now on.
fn reset_peak() -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"5"))
        .is_ok()
}

#[tokio::test]
async fn a_64_mib_body_streams_in_chunks_with_bounded_memory() {
    // One after the other, so each pass's peak is its own.
    for compression in [Compression::Never, Compression::Always] {
        stream_one(compression).await;
    }
}

async fn stream_one(compression: Compression) {
    let [ka, kb] = keypairs();
    // Debug builds hash at well under 100 MB/s, and each side hashes every
    // chunk; allow 10 MB/s.
    let config = |keypair: &warren_p2p::identity::Keypair, peer| {
        test_config(keypair.clone(), &[peer])
            .with_transfer_rate(10_000_000)
            .with_compression(compression)
    };
    let mut a = start(config(&ka, id(&kb)), DirStore::new()).await;
    let b_store = DirStore::new();
    // A repeating pattern: compressed, it shrinks to almost nothing, so
    // what would grow is the decoder's output, not the wire's.
    let output = b_store.put_generated(action(9), SIZE);
    let mut b = start(config(&kb, id(&ka)), b_store).await;
    connect(&mut a, &mut b).await;

    let measured = reset_peak();
    let before = status_kib("VmHWM:").unwrap_or(0);
    let fetched = within(Duration::from_secs(60), a.client.fetch(action(9)))
        .await
        .expect("a hit");
    let after = status_kib("VmHWM:").unwrap_or(0);

    assert_eq!(fetched.size, SIZE, "{compression:?}");
    assert_eq!(fetched.output, output);
    assert_eq!(a.store.hash_of(&action(9)), Some(output));
    let usage = a.store.usage();
    assert_eq!(Usage::get(&usage.bytes_written), SIZE);
    assert_eq!(Usage::get(&usage.commits), 1);
    // The sink was fed chunk by chunk, never more than a chunk at once.
    assert!(Usage::get(&usage.largest_write) <= CHUNK);
    assert!(Usage::get(&usage.writes) >= SIZE / CHUNK);
    // Both nodes live in this process: sender and receiver together stay
    // far below the body's size (a buffered body would add 64 MiB or more).
    if measured && before > 0 {
        let grown_kib = after.saturating_sub(before);
        assert!(
            grown_kib < 24 * 1024,
            "{compression:?}: peak memory grew by {grown_kib} KiB during a {SIZE} byte transfer"
        );
    }
}
