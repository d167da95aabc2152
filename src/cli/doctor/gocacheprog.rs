//! What the program `GOCACHEPROG` names is: missing, not runnable, not
//! warren, or warren of which version.
//!
//! The file is read, never run. The doctor must not start whatever a
//! variable names (it could be anything, and a cache helper started
//! without `go` may wait on stdin, write a store or dial peers), and
//! reading is bounded and has no side effects. Every warren binary carries
//! its version, between `\0warren-version=` and a NUL byte (see
//! [`marker`]); finding it names the version, not finding it in a compiled
//! program means it is not warren. A script (`#!`) may well start warren,
//! so it is reported as unknown rather than as a stranger.

use std::io::Read;
use std::path::Path;

/// The length of what precedes the version in [`MARKER`]. (Only the
/// length: the prefix is taken from the marker, so that no other copy of
/// it lands in the binary, where it could be found first.)
const PREFIX_LEN: usize = "\0warren-version=".len();
/// Longest version read after the prefix (semver with pre-release and
/// build, generously).
const MAX_VERSION: usize = 64;
/// How much of a file is searched: warren's release binary is a few tens of
/// MiB, and a file larger than this is not warren.
const MAX_SEARCH: u64 = 512 << 20;

/// This binary's marker: `\0warren-version=<version>\0`.
static MARKER: &[u8] = concat!("\0warren-version=", env!("CARGO_PKG_VERSION"), "\0").as_bytes();

/// The marker, read at run time so that the literal stays whole in the
/// binary (a constant that is only compared could be folded away).
pub(super) fn marker() -> &'static [u8] {
    std::hint::black_box(MARKER)
}

/// What a `GOCACHEPROG` program turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Program {
    /// A warren binary of this version.
    Warren(String),
    /// A script: it may start warren, or not.
    Script,
    /// A compiled program with no warren marker.
    NotWarren,
}

/// Reads `path` (at most [`MAX_SEARCH`] bytes) for a warren marker.
pub(super) fn inspect(path: &Path) -> std::io::Result<Program> {
    let file = std::fs::File::open(path)?;
    let mut reader = file.take(MAX_SEARCH);
    let chunk_size = 1 << 20;
    let keep = PREFIX_LEN + MAX_VERSION + 1;
    let mut window: Vec<u8> = Vec::with_capacity(chunk_size + keep);
    let mut first = true;
    let finder = memchr::memmem::Finder::new(&marker()[..PREFIX_LEN]);
    loop {
        let start = window.len();
        window.resize(start + chunk_size, 0);
        let read = read_full(&mut reader, &mut window[start..])?;
        window.truncate(start + read);
        if first {
            if window.starts_with(b"#!") {
                return Ok(Program::Script);
            }
            first = false;
        }
        let mut from = 0;
        while let Some(at) = finder.find(&window[from..]) {
            let version_start = from + at + PREFIX_LEN;
            let rest = &window[version_start..];
            match rest.iter().take(MAX_VERSION + 1).position(|&b| b == 0) {
                Some(end) if is_version(&rest[..end]) => {
                    let version = String::from_utf8_lossy(&rest[..end]).into_owned();
                    return Ok(Program::Warren(version));
                }
                // Cut off by the chunk's end: the next round sees it whole.
                None if rest.len() <= MAX_VERSION && read > 0 => break,
                _ => from = version_start,
            }
        }
        if read == 0 {
            return Ok(Program::NotWarren);
        }
        let drop = window.len().saturating_sub(keep);
        window.drain(..drop);
    }
}

fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A version as Cargo writes one: digits, letters, `.`, `-`, `+`.
fn is_version(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_VERSION
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A marker made at run time: a literal one in this test binary could
    /// be found before the real one.
    fn marked(before: &[u8], version_and_after: &str) -> Vec<u8> {
        let prefix = format!("\0warren-{}=", "version");
        [before, prefix.as_bytes(), version_and_after.as_bytes()].concat()
    }

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        file
    }

    #[test]
    fn this_binary_carries_its_version() {
        let me = std::env::current_exe().unwrap();
        assert_eq!(
            inspect(&me).unwrap(),
            Program::Warren(env!("CARGO_PKG_VERSION").into())
        );
    }

    #[test]
    fn a_marker_across_chunks_is_found() {
        for offset in [0, (1 << 20) - 20, (1 << 20) - 3, 1 << 20, 3 << 20] {
            let bytes = marked(&vec![0x7f; offset], "1.2.3-rc.1+abc\0tail");
            assert_eq!(
                inspect(file_with(&bytes).path()).unwrap(),
                Program::Warren("1.2.3-rc.1+abc".into()),
                "at {offset}"
            );
        }
    }

    #[test]
    fn strangers_scripts_and_broken_markers() {
        assert_eq!(
            inspect(file_with(b"\x7fELF...").path()).unwrap(),
            Program::NotWarren
        );
        assert_eq!(
            inspect(file_with(b"#!/bin/sh\nexec warren \"$@\"\n").path()).unwrap(),
            Program::Script
        );
        assert_eq!(inspect(file_with(b"").path()).unwrap(), Program::NotWarren);
        // No end, a bad character, or too long: not a version.
        let too_long = format!("{}\0", "1".repeat(65));
        for bad in ["1.2.3", "1 2\0", "\0", &too_long] {
            let bytes = marked(b"", bad);
            assert_eq!(
                inspect(file_with(&bytes).path()).unwrap(),
                Program::NotWarren,
                "{bad:?}"
            );
        }
        // A bad marker, then a good one.
        let bytes = [marked(b"", "\x01\0"), marked(b"", "2.0.0\0")].concat();
        assert_eq!(
            inspect(file_with(&bytes).path()).unwrap(),
            Program::Warren("2.0.0".into())
        );
    }
}
