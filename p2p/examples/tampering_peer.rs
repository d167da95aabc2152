//! A hostile peer for warren's end-to-end tests: it serves a real warren
//! store, announcing each entry's true OutputID and size, but flips one byte
//! of every body it sends. A correct requester must reject every body (the
//! SHA-256 does not match), put this peer in a cooldown, and build locally.
//!
//! The peer is `warren_p2p::hostile`'s tamperer (a real node refuses to
//! serve a body that does not match its OutputID); this reads the store for
//! it. It accepts every connection (it has no allowlist of its own).
//!
//! ```text
//! tampering_peer <store dir> <listen multiaddr> <key file>
//! ```
//!
//! The key file holds a libp2p protobuf-encoded keypair (as `warren init`
//! writes). Prints `listening <multiaddr>/p2p/<peer id>` once ready, then
//! `served <n>` after each tampered body.

#![expect(clippy::print_stdout, reason = "a test tool reporting to its test")]

use std::path::{Path, PathBuf};

use warren_p2p::hostile::{Entries, Mode, hostile_at};
use warren_p2p::identity::Keypair;
use warren_p2p::{ActionId, Multiaddr, OutputId};

/// The body of an entry of a warren v1 store, whose entry file reads
/// `v1 <output hex> <size> <time ns>\n`.
fn lookup(store: &Path, action: &ActionId) -> Option<Vec<u8>> {
    let hex = action.to_hex();
    let text = std::fs::read_to_string(store.join("v1/actions").join(&hex[..2]).join(&hex)).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    let output_hex = fields.get(1)?;
    let output = OutputId::from_hex(output_hex).ok()?;
    let size: u64 = fields.get(2)?.parse().ok()?;
    let body = std::fs::read(
        store
            .join("v1/objects")
            .join(&output_hex[..2])
            .join(output_hex),
    )
    .ok()?;
    (body.len() as u64 == size && OutputId::of(&body) == output).then_some(body)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, listen, key] = &args[..] else {
        return Err("usage: tampering_peer <store dir> <listen multiaddr> <key file>".into());
    };
    let keypair = Keypair::from_protobuf_encoding(&std::fs::read(key)?)?;
    let store = PathBuf::from(store);
    let (served, mut told) = tokio::sync::mpsc::channel(1024);
    let mode = Mode::Tamper {
        entries: Entries::new(move |action| lookup(&store, action)),
        served,
    };
    let peer = hostile_at(&keypair, mode, listen.parse::<Multiaddr>()?).await?;
    println!("listening {}", peer.address);
    while let Some(action) = told.recv().await {
        println!("served {}", action.to_hex());
    }
    Ok(())
}
