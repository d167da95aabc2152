//! The names of objects in the bucket, under the url's prefix:
//!
//! ```text
//! <prefix>/
//! └── v1/
//!     ├── objects/<output id hex>        a body, raw or zstd (OBJECT_ZSTD_SUFFIX)
//!     ├── manifests/<time>-<signer>-<random>.manifest
//!     │                                  one signed batch of mappings; <time> is
//!     │                                  unix ms, 16 digits, so names sort by time
//!     └── probe/<n>                      `warren doctor`'s write check, deleted at once
//! ```
//!
//! The names are untrusted hints: a reader takes the signer from a
//! manifest's signed bytes (a name that disagrees with them is refused)
//! and every body is checked against its OutputID.

use libp2p_identity::PeerId;

use crate::ids::OutputId;

/// Every manifest, listed in time order.
pub(crate) const MANIFESTS: &str = "v1/manifests/";
/// Every body.
pub(crate) const OBJECTS: &str = "v1/objects/";
/// Where `warren doctor` writes its probe.
pub(crate) const PROBES: &str = "v1/probe/";
/// A body stored zstd-compressed has this suffix after its OutputID.
pub(crate) const OBJECT_ZSTD_SUFFIX: &str = ".zst";
const MANIFEST_SUFFIX: &str = ".manifest";
/// Digits of a manifest name's time: unix milliseconds fit in 16 until
/// the year 318857.
const TIME_DIGITS: usize = 16;

/// The name of a body, raw or compressed.
pub(crate) fn object(output: &OutputId, compressed: bool) -> String {
    let suffix = if compressed { OBJECT_ZSTD_SUFFIX } else { "" };
    format!("{OBJECTS}{}{suffix}", output.to_hex())
}

/// The OutputID and compression a body's name says, if it is one.
pub(crate) fn parse_object(name: &str) -> Option<(OutputId, bool)> {
    let rest = name.strip_prefix(OBJECTS)?;
    let (hex, compressed) = match rest.strip_suffix(OBJECT_ZSTD_SUFFIX) {
        Some(hex) => (hex, true),
        None => (rest, false),
    };
    Some((OutputId::from_hex(hex).ok()?, compressed))
}

/// The name of `warren doctor`'s probe object.
pub(crate) fn probe(n: u32) -> String {
    format!("{PROBES}{n}")
}

/// The name of a manifest signed at `time_ms` by `signer`; `random` keeps
/// two manifests of one millisecond apart.
pub(crate) fn manifest(time_ms: u64, signer: &PeerId, random: u64) -> String {
    format!("{MANIFESTS}{time_ms:0TIME_DIGITS$}-{signer}-{random:016x}{MANIFEST_SUFFIX}")
}

/// The first name a listing of manifests signed at `time_ms` or later
/// returns when it starts after it.
pub(crate) fn manifests_from(time_ms: u64) -> String {
    // '-' sorts before every digit: this is before `<time_ms>-…`.
    format!("{MANIFESTS}{:0TIME_DIGITS$}", time_ms)
}

/// The time and signer a manifest's name claims, if it is one.
pub(crate) fn parse_manifest(name: &str) -> Option<(u64, PeerId)> {
    let rest = name
        .strip_prefix(MANIFESTS)?
        .strip_suffix(MANIFEST_SUFFIX)?;
    let (time, rest) = rest.split_at_checked(TIME_DIGITS)?;
    if !time.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (signer, random) = rest.strip_prefix('-')?.rsplit_once('-')?;
    if random.len() != 16 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((time.parse().ok()?, signer.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_sort_by_time() {
        let signer = PeerId::random();
        let early = manifest(1_700_000_000_000, &signer, 7);
        let late = manifest(1_700_000_000_001, &signer, 1);
        assert!(early < late);
        assert!(manifests_from(1_700_000_000_000) < early);
        assert!(manifests_from(1_700_000_000_001) > early);
        assert_eq!(parse_manifest(&early), Some((1_700_000_000_000, signer)));
        for bad in [
            "v1/manifests/x.manifest",
            "v1/objects/00",
            &early.replace(".manifest", ".txt"),
            &early.replace("-0000000000000007", "-7"),
        ] {
            assert_eq!(parse_manifest(bad), None, "{bad}");
        }
        let output = OutputId::from_bytes([0xab; 32]);
        assert_eq!(parse_object(&object(&output, true)), Some((output, true)));
        assert_eq!(parse_object(&object(&output, false)), Some((output, false)));
        assert_eq!(parse_object("v1/objects/zz"), None);
    }
}
