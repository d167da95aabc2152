//! Newtypes for the two 32-byte keys of the Go build cache, shared by both
//! crates and the wire.
//!
//! Go names them `ActionID` (what was built, the cache key) and `OutputID`
//! (the SHA-256 of what came out, which addresses the body). Keeping them as
//! distinct types stops an action key from ever being used as an object name
//! and vice versa. Both render as lowercase hex, which is how they are named
//! on disk and how they travel in the fetch protocol's JSON headers.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Length of both IDs in bytes (Go's `cache.HashSize`).
pub const ID_LEN: usize = 32;

/// An ID had the wrong length or was not valid hex.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("expected a {ID_LEN}-byte ID, got {0} bytes")]
    Length(usize),
    #[error("ID is not {} hex digits", ID_LEN * 2)]
    Hex,
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; ID_LEN]);

        impl $name {
            pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
                Self(bytes)
            }

            pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
                <[u8; ID_LEN]>::try_from(bytes)
                    .map(Self)
                    .map_err(|_| IdError::Length(bytes.len()))
            }

            pub fn from_hex(text: &str) -> Result<Self, IdError> {
                let mut bytes = [0; ID_LEN];
                hex::decode_to_slice(text, &mut bytes).map_err(|_| IdError::Hex)?;
                Ok(Self(bytes))
            }

            pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::from_hex(text)
            }
        }

        /// As 64 lowercase hex digits.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut text = [0; ID_LEN * 2];
                hex::encode_to_slice(self.0, &mut text).expect("a buffer of twice the length");
                serializer.serialize_str(std::str::from_utf8(&text).expect("hex is ASCII"))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::from_hex(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The cache key Go computes for an action (compile, link, test run, …).
    ActionId
);
id_type!(
    /// The SHA-256 of a cached body; objects are stored under this name.
    OutputId
);

impl OutputId {
    /// The OutputID of `body`, as Go computes it in `ProgCache.Put`.
    pub fn of(body: &[u8]) -> Self {
        Self(Sha256::digest(body).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ActionId::from_bytes([0xab; ID_LEN]);
        assert_eq!(ActionId::from_hex(&id.to_hex()), Ok(id));
        assert_eq!(id.to_string().len(), 64);
    }

    #[test]
    fn rejects_bad_lengths_and_digits() {
        assert_eq!(ActionId::from_slice(&[0; 31]), Err(IdError::Length(31)));
        assert_eq!(OutputId::from_hex("zz"), Err(IdError::Hex));
        assert_eq!(OutputId::from_hex(&"g".repeat(64)), Err(IdError::Hex));
    }

    #[test]
    fn serde_is_lowercase_hex() {
        let id = OutputId::from_bytes([0xab; ID_LEN]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(ID_LEN)));
        assert_eq!(serde_json::from_str::<OutputId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<OutputId>("\"abc\"").is_err());
    }

    #[test]
    fn output_id_of_empty_body_is_sha256_of_nothing() {
        assert_eq!(
            OutputId::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

/// A read-ahead hint: an action stored right after the one asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    pub action: ActionId,
    /// The size of its body, if that is a linked executable (a test binary,
    /// a `go run` binary): a requester reads such a body ahead only within
    /// its own limit ([`crate::NodeConfig::with_read_ahead_executables_max`]).
    pub executable: Option<u64>,
}

impl Hint {
    /// A hint at an entry that is not known to be an executable.
    pub fn new(action: ActionId) -> Self {
        Self {
            action,
            executable: None,
        }
    }
}
