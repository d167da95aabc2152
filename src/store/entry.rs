//! The entry file of an action: one line,
//! `"v1 <output hex> <size> <put time, unix ns> <source> <check>\n"`.
//!
//! The source field is the entry's provenance: `local` for an entry built
//! here (what `go` put), the sending peer's ID for one fetched from a
//! peer. It decides what the daemon serves on (only what was built here,
//! unless that peer is marked to be re-shared) and what `warren peers
//! remove` purges. Lines written by a warren before provenance have no
//! such field: their source is unknown (they may have been fetched), so
//! they are used locally but never served, and expire with their age.
//!
//! The last field binds the line to its action: the first 8 bytes of the
//! SHA-256 of [`CHECK_DOMAIN`], the ActionID and the rest of the line, in
//! hex. Entries are written without a sync (see the store's module docs),
//! and on a filesystem that orders nothing (ext4's `data=writeback`), a
//! power loss can leave a file renamed into place holding stale blocks of
//! another file: another entry's line, which parses. Such a line carries
//! the other action's check, so a lookup tells it apart at the cost of one
//! small hash. Lines written before the check carry none: they are taken
//! as they are, except by the recovery after a power loss, which removes
//! such a line if it is newer than the crash's marker (see `recovery`).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p_identity::PeerId;
use sha2::{Digest, Sha256};

use super::layout::LAYOUT_VERSION;
use crate::ids::{ActionId, OutputId};

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
    /// The check that binds the line to its action; `None` in lines
    /// written before it.
    pub check: Option<Check>,
}

/// The first bytes of the SHA-256 that binds a line to its action.
pub(crate) type Check = [u8; CHECK_LEN];

const CHECK_LEN: usize = 8;

/// What the check of the hash binding a line to its action starts with: no
/// other hash warren makes starts so.
const CHECK_DOMAIN: &[u8] = b"warren entry check v1\0";

/// Whether a line belongs to the action whose file holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding {
    /// Its check is that action's.
    Bound,
    /// Written before lines carried a check.
    Unchecked,
    /// Its check is another's, or damaged: the line is not this action's.
    Wrong,
}

impl Line {
    /// Whether this line is `action`'s, by its check.
    pub(crate) fn binding(&self, action: &ActionId) -> Binding {
        match &self.check {
            None => Binding::Unchecked,
            Some(check) if *check == check_of(action, &self.fields()) => Binding::Bound,
            Some(_) => Binding::Wrong,
        }
    }

    /// The line's fields before the check, as [`entry_line`] writes them.
    fn fields(&self) -> String {
        let nanos = self
            .time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let source = match &self.source {
            Source::Local => LOCAL.to_owned(),
            Source::Peer(peer) => peer.to_string(),
            Source::Unknown => UNKNOWN.to_owned(),
        };
        format!(
            "{LAYOUT_VERSION} {} {} {nanos} {source}",
            self.output.to_hex(),
            self.size
        )
    }
}

/// The provenance field of an entry built here.
const LOCAL: &str = "local";
/// The provenance field of an entry of unknown source, in a line with a
/// check (older lines without one leave the field out).
const UNKNOWN: &str = "unknown";

/// Entries are one short line; anything longer is corrupt.
pub(super) const MAX_ENTRY_LEN: u64 = 256;

/// The check of `fields` (a line without its check) in the file of
/// `action`.
fn check_of(action: &ActionId, fields: &str) -> Check {
    let digest = Sha256::new()
        .chain_update(CHECK_DOMAIN)
        .chain_update(action.as_bytes())
        .chain_update(fields.as_bytes())
        .finalize();
    let mut check = [0; CHECK_LEN];
    check.copy_from_slice(&digest[..CHECK_LEN]);
    check
}

/// The line that records, in the file of `action`, `output` of `size`
/// bytes, put at `time`, with its check.
pub(crate) fn entry_line(
    action: &ActionId,
    output: &OutputId,
    size: u64,
    time: SystemTime,
    source: &Source,
) -> String {
    let mut line = Line {
        output: *output,
        size,
        time,
        source: *source,
        check: None,
    }
    .fields();
    let check = hex::encode(check_of(action, &line));
    line.push(' ');
    line.push_str(&check);
    line.push('\n');
    line
}

pub(crate) fn parse_entry(text: &[u8]) -> Option<Line> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('\n')?;
    let fields: Vec<&str> = text.split(' ').take(7).collect();
    let (source, check) = match fields[..] {
        [_, _, _, _] => (None, None),
        [_, _, _, _, source] => (Some(source), None),
        [_, _, _, _, source, check] => (Some(source), Some(parse_check(check)?)),
        _ => return None,
    };
    let [version, output, size, nanos, ..] = fields[..] else {
        return None;
    };
    if version != LAYOUT_VERSION {
        return None;
    }
    let source = match (source, check) {
        (None, _) => Source::Unknown,
        (Some(LOCAL), _) => Source::Local,
        // Only lines with a check spell an unknown source out.
        (Some(UNKNOWN), Some(_)) => Source::Unknown,
        (Some(peer), _) => Source::Peer(peer.parse().ok()?),
    };
    let output = OutputId::from_hex(output).ok()?;
    let size = size.parse().ok()?;
    let nanos: u64 = nanos.parse().ok()?;
    Some(Line {
        output,
        size,
        time: UNIX_EPOCH + Duration::from_nanos(nanos),
        source,
        check,
    })
}

/// A check as written: exactly 16 lowercase hex digits.
fn parse_check(text: &str) -> Option<Check> {
    if text.len() != 2 * CHECK_LEN || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut check = [0; CHECK_LEN];
    hex::decode_to_slice(text, &mut check).ok()?;
    Some(check)
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

    fn peer() -> PeerId {
        libp2p_identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn lines_round_trip_with_their_source_and_check() {
        let action = ActionId::from_bytes([3; 32]);
        let output = OutputId::of(b"body");
        let time = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        for source in [Source::Local, Source::Peer(peer()), Source::Unknown] {
            let line = entry_line(&action, &output, 4, time, &source);
            assert!(line.len() as u64 <= MAX_ENTRY_LEN, "{line}");
            let parsed = parse_entry(line.as_bytes()).unwrap();
            assert_eq!(
                (parsed.output, parsed.size, parsed.time, parsed.source),
                (output, 4, time, source)
            );
            assert_eq!(parsed.binding(&action), Binding::Bound, "{line}");
        }
        // Lines written before provenance, and before the check.
        let old = format!("v1 {} 4 1\n", output.to_hex());
        let parsed = parse_entry(old.as_bytes()).unwrap();
        assert_eq!(parsed.source, Source::Unknown);
        assert_eq!(parsed.binding(&action), Binding::Unchecked);
        let old = format!("v1 {} 4 1 local\n", output.to_hex());
        let parsed = parse_entry(old.as_bytes()).unwrap();
        assert_eq!(parsed.source, Source::Local);
        assert_eq!(parsed.binding(&action), Binding::Unchecked);
        let check = "0123456789abcdef";
        for bad in [
            format!("v1 {} 4 1 not-a-peer\n", output.to_hex()),
            format!("v1 {} 4 1 {} extra\n", output.to_hex(), peer()),
            format!("v1 {} 4 1 \n", output.to_hex()),
            // Only a line with a check spells an unknown source out.
            format!("v1 {} 4 1 unknown\n", output.to_hex()),
            // A check is 16 lowercase hex digits, and the last field.
            format!("v1 {} 4 1 local 0123456789ABCDEF\n", output.to_hex()),
            format!("v1 {} 4 1 local 0123456789abcde\n", output.to_hex()),
            format!("v1 {} 4 1 local {check} {check}\n", output.to_hex()),
        ] {
            assert_eq!(parse_entry(bad.as_bytes()), None, "{bad}");
        }
    }

    /// A power loss on a filesystem that orders nothing can leave an
    /// entry file holding another entry's line, whole and well formed:
    /// its check is the other action's. A line whose fields were changed
    /// after it was written fails its check too.
    #[test]
    fn a_line_is_bound_to_its_action_by_its_check() {
        let (mine, theirs) = (ActionId::from_bytes([1; 32]), ActionId::from_bytes([2; 32]));
        let output = OutputId::of(b"their body");
        let time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let line = entry_line(&theirs, &output, 10, time, &Source::Local);
        let parsed = parse_entry(line.as_bytes()).unwrap();
        assert_eq!(parsed.binding(&theirs), Binding::Bound);
        assert_eq!(parsed.binding(&mine), Binding::Wrong);
        let changed = line.replacen(" 10 ", " 11 ", 1);
        assert_eq!(
            parse_entry(changed.as_bytes()).unwrap().binding(&theirs),
            Binding::Wrong
        );
    }
}
