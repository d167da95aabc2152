//! The entry file of an action: one line,
//! `"v1 <output hex> <size> <put time, unix ns>\n"`.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::layout::LAYOUT_VERSION;
use crate::ids::OutputId;

/// Entries are one short line; anything longer is corrupt.
pub(super) const MAX_ENTRY_LEN: u64 = 256;

/// The line that records `output` of `size` bytes, put at `time`.
pub(super) fn entry_line(output: &OutputId, size: u64, time: SystemTime) -> String {
    let nanos = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{LAYOUT_VERSION} {} {size} {nanos}\n", output.to_hex())
}

pub(super) fn parse_entry(text: &[u8]) -> Option<(OutputId, u64, SystemTime)> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('\n')?;
    let mut fields = text.split(' ');
    let (version, output, size, nanos) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if version != LAYOUT_VERSION || fields.next().is_some() {
        return None;
    }
    let output = OutputId::from_hex(output).ok()?;
    let size = size.parse().ok()?;
    let nanos: u64 = nanos.parse().ok()?;
    Some((output, size, UNIX_EPOCH + Duration::from_nanos(nanos)))
}

/// When the entry in `path` was put, read without touching or repairing
/// anything; `None` if it is gone or malformed.
pub(crate) fn entry_put_time(path: &Path) -> Option<SystemTime> {
    let mut text = Vec::with_capacity(MAX_ENTRY_LEN as usize);
    File::open(path)
        .ok()?
        .take(MAX_ENTRY_LEN)
        .read_to_end(&mut text)
        .ok()?;
    parse_entry(&text).map(|(_, _, time)| time)
}
