//! A signed manifest: one `go` command's ActionID→OutputID mappings, as
//! the builder that made them put them in the team bucket.
//!
//! A body in the bucket proves itself (its SHA-256 is its OutputID); a
//! mapping cannot, so it carries the signature of the builder that made it,
//! and a reader uses it only if that builder is in its allowlist with a
//! role it pulls from. Anyone with the bucket's write credentials can add,
//! replace or delete objects, but cannot make a manifest that verifies
//! under a key they do not hold.
//!
//! # Format (version 1; all integers big-endian)
//!
//! ```text
//! magic        8 bytes   "wrnmfst1" (the version is its last byte)
//! signer len   1 byte    ≤ MAX_SIGNER_LEN
//! signer       n bytes   the signer's peer ID (its multihash bytes): an
//!                        ed25519 peer ID carries its public key
//! time         8 bytes   unix milliseconds when it was signed
//! count        4 bytes   entries that follow, 1..=MAX_ENTRIES
//! entries      count × 80 bytes, in put order:
//!                ActionID 32, OutputID 32, size 8, put time (unix ms) 8
//! signature    64 bytes  ed25519 over DOMAIN ‖ every byte above
//! ```
//!
//! The signature covers the exact bytes, prefixed with [`DOMAIN`], a
//! string no other message warren (or libp2p's noise handshake, whose
//! prefix is `noise-libp2p-static-key:`) signs with the same key begins
//! with. Nothing is decoded before the length is checked against
//! [`MAX_BYTES`] and against the count it declares; the signature is
//! checked before any entry is read.

use libp2p_identity::{Keypair, PeerId, PublicKey};

use crate::ids::{ActionId, ID_LEN, OutputId};

/// What the signature covers first: binds it to this format and version.
pub(crate) const DOMAIN: &[u8] = b"warren/bucket-manifest/v1\n";
const MAGIC: &[u8; 8] = b"wrnmfst1";
/// The most entries one manifest holds: a `go` command that puts more is
/// written as several manifests. (`go build std` puts about 1,200.)
pub(crate) const MAX_ENTRIES: usize = 16_384;
/// The longest signer field: an ed25519 peer ID is 38 bytes.
pub(crate) const MAX_SIGNER_LEN: usize = 64;
const ENTRY_LEN: usize = 2 * ID_LEN + 8 + 8;
const SIGNATURE_LEN: usize = 64;
const FIXED_LEN: usize = MAGIC.len() + 1 + 8 + 4 + SIGNATURE_LEN;
/// The largest manifest a reader reads (about 1.3 MB), checked before
/// anything in it is decoded.
pub(crate) const MAX_BYTES: usize = FIXED_LEN + MAX_SIGNER_LEN + MAX_ENTRIES * ENTRY_LEN;

/// One mapping, as its builder put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub action: ActionId,
    pub output: OutputId,
    pub size: u64,
    /// When it was put, unix milliseconds.
    pub time_ms: u64,
}

/// A verified manifest (or one about to be signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub signer: PeerId,
    /// When it was signed, unix milliseconds.
    pub time_ms: u64,
    pub entries: Vec<Entry>,
}

/// Why bytes are not a manifest a reader may use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Error {
    #[error("{0} bytes, more than a manifest's {MAX_BYTES}")]
    TooBig(usize),
    #[error("truncated or malformed ({0} bytes)")]
    Malformed(usize),
    #[error("not a version 1 manifest")]
    Magic,
    #[error("{0} entries (a manifest holds 1 to {MAX_ENTRIES})")]
    Count(u64),
    #[error("the signer is not an ed25519 peer ID")]
    Signer,
    #[error("the signature does not verify under the signer's key")]
    Signature,
    #[error("only ed25519 keys sign manifests")]
    KeyType,
}

impl Manifest {
    /// The signed bytes of this manifest, by `key` (whose peer ID must be
    /// `self.signer`; at most [`MAX_ENTRIES`] entries).
    pub(crate) fn sign(&self, key: &Keypair) -> Result<Vec<u8>, Error> {
        if key.public().to_peer_id() != self.signer {
            return Err(Error::Signature);
        }
        if key.clone().try_into_ed25519().is_err() {
            return Err(Error::KeyType);
        }
        if self.entries.is_empty() || self.entries.len() > MAX_ENTRIES {
            return Err(Error::Count(self.entries.len() as u64));
        }
        let signer = self.signer.to_bytes();
        if signer.len() > MAX_SIGNER_LEN {
            return Err(Error::Signer);
        }
        let mut bytes =
            Vec::with_capacity(FIXED_LEN + signer.len() + self.entries.len() * ENTRY_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.push(signer.len() as u8);
        bytes.extend_from_slice(&signer);
        bytes.extend_from_slice(&self.time_ms.to_be_bytes());
        bytes.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for entry in &self.entries {
            bytes.extend_from_slice(entry.action.as_bytes());
            bytes.extend_from_slice(entry.output.as_bytes());
            bytes.extend_from_slice(&entry.size.to_be_bytes());
            bytes.extend_from_slice(&entry.time_ms.to_be_bytes());
        }
        let signature = key
            .sign(&signed_message(&bytes))
            .map_err(|_| Error::KeyType)?;
        bytes.extend_from_slice(&signature);
        Ok(bytes)
    }

    /// The manifest `bytes` hold, if their signature verifies under the
    /// signer they name. Whether that signer is trusted is the caller's
    /// question.
    pub(crate) fn verify(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_BYTES {
            return Err(Error::TooBig(bytes.len()));
        }
        let malformed = || Error::Malformed(bytes.len());
        if bytes.len() < FIXED_LEN {
            return Err(malformed());
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::Magic);
        }
        let signer_len = usize::from(bytes[MAGIC.len()]);
        if signer_len > MAX_SIGNER_LEN {
            return Err(Error::Signer);
        }
        let signer_at = MAGIC.len() + 1;
        let time_at = signer_at + signer_len;
        let count_at = time_at + 8;
        let entries_at = count_at + 4;
        if bytes.len() < entries_at + SIGNATURE_LEN {
            return Err(malformed());
        }
        let count = u32::from_be_bytes(bytes[count_at..entries_at].try_into().expect("4 bytes"));
        if count == 0 || count as usize > MAX_ENTRIES {
            return Err(Error::Count(count.into()));
        }
        let signature_at = entries_at + count as usize * ENTRY_LEN;
        if bytes.len() != signature_at + SIGNATURE_LEN {
            return Err(malformed());
        }
        let signer = PeerId::from_bytes(&bytes[signer_at..time_at]).map_err(|_| Error::Signer)?;
        let key = public_key(&signer).ok_or(Error::Signer)?;
        if !key.verify(
            &signed_message(&bytes[..signature_at]),
            &bytes[signature_at..],
        ) {
            return Err(Error::Signature);
        }
        let time_ms = u64::from_be_bytes(bytes[time_at..count_at].try_into().expect("8 bytes"));
        let entries = bytes[entries_at..signature_at]
            .chunks_exact(ENTRY_LEN)
            .map(|entry| {
                let (action, rest) = entry.split_at(ID_LEN);
                let (output, rest) = rest.split_at(ID_LEN);
                let (size, time) = rest.split_at(8);
                Entry {
                    action: ActionId::from_slice(action).expect("32 bytes"),
                    output: OutputId::from_slice(output).expect("32 bytes"),
                    size: u64::from_be_bytes(size.try_into().expect("8 bytes")),
                    time_ms: u64::from_be_bytes(time.try_into().expect("8 bytes")),
                }
            })
            .collect();
        Ok(Self {
            signer,
            time_ms,
            entries,
        })
    }
}

fn signed_message(bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN.len() + bytes.len());
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(bytes);
    message
}

/// The ed25519 public key an ed25519 peer ID carries: its multihash is the
/// identity hash (code 0) of the key's protobuf encoding. Other peer IDs
/// (a SHA-256 of a bigger key) carry none.
pub(crate) fn public_key(peer: &PeerId) -> Option<PublicKey> {
    let bytes = peer.to_bytes();
    // code 0 (identity), then a one-byte length: protobuf keys that fit
    // in an identity multihash are shorter than 128 bytes.
    let (&[0, len], digest) = bytes.split_first_chunk::<2>()? else {
        return None;
    };
    if usize::from(len) != digest.len() {
        return None;
    }
    let key = PublicKey::try_decode_protobuf(digest).ok()?;
    key.clone().try_into_ed25519().ok()?;
    (key.to_peer_id() == *peer).then_some(key)
}

#[cfg(test)]
mod tests;
