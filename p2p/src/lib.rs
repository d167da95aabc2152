//! warren's networking crate: peers sharing Go build caches on one LAN.
//!
//! Status: a placeholder. Peer sharing is planned work (issue "part 2"):
//! the helper already consults a remote tier after every local miss
//! (`warren::tiered::RemoteTier`, a no-op today), and this crate is where the
//! pieces behind that tier will live:
//!
//! - discovery with mDNS (`mdns-sd`): advertise a warren service with the
//!   peer ID and protocol version, browse, and dial allowlisted peers only;
//! - transport with libp2p (TCP, Noise, Yamux), connections only from and to
//!   peer IDs on the allowlist;
//! - a versioned request-response protocol that streams bodies to a temp
//!   file while hashing, so nothing reaches a build unless its size and
//!   SHA-256 match the OutputID.
//!
//! Following rust-libp2p's file-sharing example, `p2p::new(..)` will return
//! `(Client, events, EventLoop)`: one event loop owns the swarm, cloneable
//! clients send it commands. Nothing here is compiled into the helper yet, so
//! the crate deliberately has no dependencies.

/// The libp2p protocol name peers will speak; versioned so a later protocol
/// (for example one that exchanges summaries of what each peer holds) can be
/// offered alongside without breaking old peers.
pub const PROTOCOL_NAME: &str = "/warren/fetch/1";

#[cfg(test)]
mod tests {
    #[test]
    fn protocol_name_is_versioned() {
        assert!(super::PROTOCOL_NAME.starts_with("/warren/"));
        assert!(super::PROTOCOL_NAME.ends_with("/1"));
    }
}
