//! The entry file of an action: one line,
//! `"v1 <output hex> <size> <put time, unix ns>[ <source>]\n"`.
//!
//! The last field is the entry's provenance: `local` for an entry built
//! here (what `go` put), the sending peer's ID for one fetched from a
//! peer. It decides what the daemon serves on (only what was built here,
//! unless that peer is marked to be re-shared) and what `warren peers
//! remove` purges. Lines written by a warren before provenance have no
//! such field: their source is unknown (they may have been fetched), so
//! they are used locally but never served, and expire with their age.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p_identity::PeerId;

use super::layout::LAYOUT_VERSION;
use crate::ids::OutputId;

/// Where an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Source {
    /// Put by `go` on this machine.
    Local,
    /// Fetched, verified, from this peer.
    Peer(PeerId),
    /// Written by a warren that did not record provenance.
    Unknown,
}

impl Source {
    /// The peer an entry came from, if any.
    pub(crate) fn peer(&self) -> Option<&PeerId> {
        match self {
            Self::Peer(peer) => Some(peer),
            Self::Local | Self::Unknown => None,
        }
    }
}

/// An entry line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub output: OutputId,
    pub size: u64,
    pub time: SystemTime,
    pub source: Source,
}

/// The provenance field of an entry built here.
const LOCAL: &str = "local";

/// Entries are one short line; anything longer is corrupt.
pub(super) const MAX_ENTRY_LEN: u64 = 256;

/// The line that records `output` of `size` bytes, put at `time`.
pub(crate) fn entry_line(
    output: &OutputId,
    size: u64,
    time: SystemTime,
    source: &Source,
) -> String {
    let nanos = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let output = output.to_hex();
    match source {
        Source::Local => format!("{LAYOUT_VERSION} {output} {size} {nanos} {LOCAL}\n"),
        Source::Peer(peer) => format!("{LAYOUT_VERSION} {output} {size} {nanos} {peer}\n"),
        Source::Unknown => format!("{LAYOUT_VERSION} {output} {size} {nanos}\n"),
    }
}

pub(crate) fn parse_entry(text: &[u8]) -> Option<Line> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('\n')?;
    let mut fields = text.split(' ');
    let (version, output, size, nanos) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if version != LAYOUT_VERSION {
        return None;
    }
    let source = match fields.next() {
        None => Source::Unknown,
        Some(LOCAL) => Source::Local,
        Some(peer) => Source::Peer(peer.parse().ok()?),
    };
    if fields.next().is_some() {
        return None;
    }
    let output = OutputId::from_hex(output).ok()?;
    let size = size.parse().ok()?;
    let nanos: u64 = nanos.parse().ok()?;
    Some(Line {
        output,
        size,
        time: UNIX_EPOCH + Duration::from_nanos(nanos),
        source,
    })
}

/// The entry in `path`, read without touching or repairing anything (nor
/// following a link); `None` if it is gone or malformed.
pub(crate) fn read_entry(path: &Path) -> Option<Line> {
    let mut text = Vec::with_capacity(MAX_ENTRY_LEN as usize);
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .ok()?
        .take(MAX_ENTRY_LEN + 1)
        .read_to_end(&mut text)
        .ok()?;
    parse_entry(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_with_their_source() {
        let output = OutputId::of(b"body");
        let time = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let peer = libp2p_identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        for source in [Source::Local, Source::Peer(peer), Source::Unknown] {
            let line = entry_line(&output, 4, time, &source);
            assert!(line.len() as u64 <= MAX_ENTRY_LEN, "{line}");
            let parsed = parse_entry(line.as_bytes()).unwrap();
            assert_eq!(
                parsed,
                Line {
                    output,
                    size: 4,
                    time,
                    source
                }
            );
        }
        // A line written before provenance: of unknown source.
        let old = format!("v1 {} 4 1\n", output.to_hex());
        assert_eq!(parse_entry(old.as_bytes()).unwrap().source, Source::Unknown);
        for bad in [
            format!("v1 {} 4 1 not-a-peer\n", output.to_hex()),
            format!("v1 {} 4 1 {peer} extra\n", output.to_hex()),
            format!("v1 {} 4 1 \n", output.to_hex()),
        ] {
            assert_eq!(parse_entry(bad.as_bytes()), None, "{bad}");
        }
    }
}
