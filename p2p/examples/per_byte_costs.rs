//! What moving one body between two warren daemons costs per byte at the
//! least, on this machine: the floor under the sharing benchmark's figures.
//!
//! A body served by a peer is hashed and encrypted by the sender, and
//! decrypted, hashed and written to a new file by the receiver. This times
//! each of those steps on one core, with the implementations warren uses
//! (SHA-256 from `sha2`; ChaCha20-Poly1305 from `ring`, the cipher of
//! libp2p's Noise; AES-128-GCM beside it for comparison), and the write
//! into a new file in `--dir` (default: the system's temp dir), then adds
//! them up for a body of `--mib` MiB (default 256) sent between two
//! processes that share the machine's cores, as the benchmark's hosts do.
//!
//! ```sh
//! cargo run --release -p warren-p2p --example per_byte_costs -- --dir /path/on/the/store/disk
//! ```
//!
//! It is a lower bound: no copies between buffers, no system calls for the
//! network, no thread hand-overs are counted.

#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a measuring tool reporting to whoever runs it"
)]

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use ring::aead::{AES_128_GCM, Aad, Algorithm, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

/// Noise's largest message, as libp2p-noise frames a stream.
const MESSAGE: usize = 65_519;
/// How bodies are written: warren's piece size.
const PIECE: usize = 256 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir = std::env::temp_dir();
    let mut mib = 256usize;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--dir", Some(value)) => dir = PathBuf::from(value),
            ("--mib", Some(value)) => mib = value.parse().expect("--mib takes a number"),
            _ => {
                eprintln!("usage: per_byte_costs [--dir DIR] [--mib N]");
                std::process::exit(2);
            }
        }
    }
    let size = mib << 20;
    let body: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();

    let sha256 = best_of(3, size, || {
        std::hint::black_box(Sha256::digest(&body));
    });
    let chacha = best_of(3, size, || seal(&CHACHA20_POLY1305, &body));
    let aes = best_of(3, size, || seal(&AES_128_GCM, &body));
    // A new file each time: its pages are new to the page cache, as a
    // fetched body's are.
    let mut n = 0;
    let write = median_of(3, size, || {
        n += 1;
        let path = dir.join(format!("warren-per-byte-costs-{}-{n}", std::process::id()));
        let mut file = std::fs::File::create(&path).expect("creating a file in --dir");
        for piece in body.chunks(PIECE) {
            file.write_all(piece).expect("writing the file");
        }
        drop(file);
        // Removed only after the timing: its freed pages are not reused
        // by the next write, whose pages are as new as a fetched body's.
        path
    });

    let mb_s = |seconds_per_byte: f64| 1e-6 / seconds_per_byte;
    println!("one core, {mib} MiB in memory:");
    println!(
        "  SHA-256 (sha2)                   {:6.0} MB/s",
        mb_s(sha256)
    );
    println!(
        "  ChaCha20-Poly1305 (ring, Noise)  {:6.0} MB/s",
        mb_s(chacha)
    );
    println!("  AES-128-GCM (ring)               {:6.0} MB/s", mb_s(aes));
    println!(
        "  write to new files in {}  {:6.0} MB/s (median of 3)",
        dir.display(),
        mb_s(write.0)
    );
    for path in write.1 {
        let _ = std::fs::remove_file(path);
    }
    let sender = sha256 + chacha;
    let receiver = chacha + sha256 + write.0;
    let both = sender + receiver;
    println!(
        "per byte: sender {:.2} ns (hash, encrypt), receiver {:.2} ns (decrypt, hash, write)",
        sender * 1e9,
        receiver * 1e9
    );
    println!(
        "a {mib} MiB body between two hosts sharing 2 cores takes at least {:.3} s of CPU, so \
         at best {:.0} MB/s with both cores busy all the time, and {:.0} MB/s if the \
         receiver's steps run one after another",
        both * size as f64,
        mb_s(both / 2.0),
        mb_s(receiver.max(sender))
    );
}

/// Seconds per byte of `f`'s best of `runs`.
fn best_of(runs: usize, size: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64() / size as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Seconds per byte of `f`'s median of `runs`, and what each run returned.
fn median_of<T>(runs: usize, size: usize, mut f: impl FnMut() -> T) -> (f64, Vec<T>) {
    let mut kept = Vec::new();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            kept.push(f());
            started.elapsed().as_secs_f64() / size as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[runs / 2], kept)
}

/// Encrypts `body` in Noise-sized messages, as a sender's transport does.
fn seal(algorithm: &'static Algorithm, body: &[u8]) {
    let key = LessSafeKey::new(
        UnboundKey::new(algorithm, &[7; 32][..algorithm.key_len()]).expect("a key of its length"),
    );
    let mut message = vec![0; MESSAGE];
    for (counter, chunk) in body.chunks(MESSAGE).enumerate() {
        message[..chunk.len()].copy_from_slice(chunk);
        let mut nonce = [0; 12];
        nonce[4..].copy_from_slice(&(counter as u64).to_le_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut message[..chunk.len()],
            )
            .expect("sealing in memory");
        let _ = std::hint::black_box(tag);
    }
}
