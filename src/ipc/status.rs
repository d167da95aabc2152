//! The daemon's answer to `status`: who it is, where it listens, and each
//! peer's state, counters and replication.
//!
//! One pair of types for both ends of the socket: the daemon builds it from
//! the node's [`PeerInfo`], `warren peers` and `warren stats` read it (and
//! `warren stats --json` prints its peers as they are). Every field has a
//! default, so a CLI can read the answer of an older or newer daemon.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};
use warren_p2p::{ConnectFailure, PeerInfo, StaticAddress};

/// The running daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct DaemonStatus {
    /// This machine's peer ID.
    pub peer_id: String,
    /// Multiaddrs the node listens on.
    pub listen: Vec<String>,
    pub peers: Vec<PeerStatus>,
    /// The daemon's warren version (empty from a daemon before it said).
    pub version: String,
    pub pid: u32,
    pub started_unix_ms: u64,
    /// Whether mDNS runs, and on which interfaces (empty: all).
    pub mdns: bool,
    pub interfaces: Vec<String>,
    /// For an answer to a probe: when the probe's dials started.
    pub probed_unix_ms: Option<u64>,
    /// Static peers without a peer ID that no connection has reached yet,
    /// with why (those with one are under `peers`).
    pub static_addresses: Vec<StaticStatus>,
}

/// A static address without a peer ID, not reached yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct StaticStatus {
    pub address: String,
    /// Why its last dial failed, and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<ConnectFailure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_unix_ms: Option<u64>,
}

impl From<&StaticAddress> for StaticStatus {
    fn from(address: &StaticAddress) -> Self {
        Self {
            address: address.address.to_string(),
            last_failure: (address.last_failure.as_ref()).map(|(_, failure)| failure.clone()),
            last_failure_unix_ms: address.last_failure.as_ref().map(|(at, _)| unix_ms(*at)),
        }
    }
}

/// One peer, as `warren peers` and `warren stats` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct PeerStatus {
    /// Its peer ID.
    pub id: String,
    pub allowlisted: bool,
    pub discovered: bool,
    pub connected: bool,
    /// Left out of lookups after sending a body that did not verify.
    pub in_cooldown: bool,
    pub last_seen_unix_ms: Option<u64>,
    pub addresses: Vec<String>,
    /// Bodies sent to it, and their bytes as stored and on the link.
    pub hits_served: u64,
    pub bytes_served: u64,
    pub wire_bytes_served: u64,
    /// Bodies fetched from it (verified), and their bytes.
    pub hits_received: u64,
    pub bytes_received: u64,
    pub wire_bytes_received: u64,
    /// Its bodies that failed verification.
    pub rejected: u64,
    /// Of `hits_received`, bodies fetched ahead of any lookup.
    pub read_ahead: u64,
    /// Entries its summary names; `None` while there is none.
    pub holds: Option<u64>,
    /// Whether it is asked for compressed bodies: `Some(None)` while that is
    /// being measured, `None` from a daemon too old to say.
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub compressed: Option<Option<bool>>,
    /// Why the last connection attempt failed, and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<ConnectFailure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_unix_ms: Option<u64>,
    /// Replication from it, if it is replicated (`[share] replicate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<PeerReplication>,
}

/// One peer's replication, as `warren peers` and `warren stats` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct PeerReplication {
    /// Entries listed by its catalog and not fetched or skipped yet.
    pub behind: u64,
    /// Whether its catalog has more than `behind` says.
    pub more: bool,
    /// Entries fetched by replication, and their bytes.
    pub entries: u64,
    pub bytes: u64,
    /// Entries left out because `replicate-max-size` was reached.
    pub skipped_for_budget: u64,
    pub skipped_bytes: u64,
    /// Entries left out because the store is near `max-size` (see
    /// `daemon::replicate::budget::HEADROOM_PERCENT`).
    pub skipped_for_room: u64,
    pub skipped_room_bytes: u64,
    /// Why it is not being replicated from now, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PeerReplication {
    /// One line: how far behind, what came, what the budgets left out.
    pub(crate) fn describe(&self) -> String {
        let bytes = |count: u64| bytesize::ByteSize(count).display().iec().to_string();
        let behind = match (self.behind, self.more) {
            (0, false) => "up to date".to_owned(),
            (n, more) => format!("behind by {n}{} entries", if more { "+" } else { "" }),
        };
        let mut line = format!(
            "{behind}; replicated {} entries ({})",
            self.entries,
            bytes(self.bytes)
        );
        if self.skipped_for_budget > 0 {
            line += &format!(
                "; {} entries ({}) skipped: replicate-max-size reached",
                self.skipped_for_budget,
                bytes(self.skipped_bytes)
            );
        }
        if self.skipped_for_room > 0 {
            line += &format!(
                "; {} entries ({}) skipped: the store is near max-size",
                self.skipped_for_room,
                bytes(self.skipped_room_bytes)
            );
        }
        if let Some(note) = &self.note {
            line += &format!("; {note}");
        }
        line
    }
}

impl DaemonStatus {
    /// How long the daemon has been running (zero if its clock is ahead).
    pub(crate) fn up_for(&self) -> std::time::Duration {
        let started = UNIX_EPOCH + std::time::Duration::from_millis(self.started_unix_ms);
        SystemTime::now()
            .duration_since(started)
            .unwrap_or_default()
    }
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A field that is there, even as `null`, is `Some`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl From<&PeerInfo> for PeerStatus {
    fn from(info: &PeerInfo) -> Self {
        let counters = &info.counters;
        Self {
            id: info.peer.to_string(),
            allowlisted: info.allowlisted,
            discovered: info.discovered,
            connected: info.connected,
            in_cooldown: info.in_cooldown,
            last_seen_unix_ms: info.last_seen.map(unix_ms),
            addresses: info.addresses.iter().map(ToString::to_string).collect(),
            hits_served: counters.hits_served,
            bytes_served: counters.bytes_out,
            wire_bytes_served: counters.wire_out,
            hits_received: counters.hits_received,
            bytes_received: counters.bytes_in,
            wire_bytes_received: counters.wire_in,
            rejected: counters.rejected_bodies,
            read_ahead: counters.read_ahead,
            holds: info.summary_entries,
            compressed: Some(info.compressed),
            last_failure: info
                .last_failure
                .as_ref()
                .map(|(_, failure)| failure.clone()),
            last_failure_unix_ms: info.last_failure.as_ref().map(|(at, _)| unix_ms(*at)),
            replication: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_older_answers() {
        let peer = PeerStatus {
            id: "12D3KooW".into(),
            connected: true,
            hits_served: 3,
            compressed: Some(None),
            ..PeerStatus::default()
        };
        let status = DaemonStatus {
            peer_id: "me".into(),
            listen: vec!["/ip4/127.0.0.1/tcp/1".into()],
            peers: vec![peer],
            ..DaemonStatus::default()
        };
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains(r#""compressed":null"#), "{json}");
        assert_eq!(serde_json::from_str::<DaemonStatus>(&json).unwrap(), status);
        // An older daemon: no `compressed`, and fields this one lacks.
        let old: PeerStatus = serde_json::from_str(r#"{"id":"x","holds":2,"new":1}"#).unwrap();
        assert_eq!((old.compressed, old.holds), (None, Some(2)));
    }

    #[test]
    fn the_state_reads_in_one_line() {
        let mut state = PeerReplication {
            entries: 3,
            bytes: 2048,
            ..PeerReplication::default()
        };
        assert_eq!(
            state.describe(),
            "up to date; replicated 3 entries (2.0 KiB)"
        );
        state.behind = 5;
        state.more = true;
        state.skipped_for_budget = 2;
        state.skipped_bytes = 1 << 20;
        assert_eq!(
            state.describe(),
            "behind by 5+ entries; replicated 3 entries (2.0 KiB); \
             2 entries (1.0 MiB) skipped: replicate-max-size reached"
        );
        state.skipped_for_room = 1;
        state.skipped_room_bytes = 4096;
        assert!(
            state
                .describe()
                .ends_with("; 1 entries (4.0 KiB) skipped: the store is near max-size"),
            "{}",
            state.describe()
        );
    }
}

/// The team bucket as the daemon sees it (`warren bucket status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BucketStatus {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// Whether this daemon uploads what is built here.
    pub write: bool,
    /// Manifests read and accepted since the daemon started.
    pub manifests_read: u64,
    /// Manifests refused (bad signature, malformed, too big).
    pub manifests_refused: u64,
    /// Manifests and mappings in the index now.
    pub manifests_held: u64,
    pub mappings_held: u64,
    /// Trusted signers with their manifests held (peer IDs as text).
    pub trusted: Vec<(String, u64)>,
    /// Signers seen in the bucket that are not pulled from.
    pub untrusted: Vec<String>,
    pub hits: u64,
    pub read_ahead: u64,
    pub bytes_fetched: u64,
    /// Lookups or refreshes the bucket failed.
    pub failures: u64,
    /// Reports of builds waiting to be uploaded.
    pub uploads_pending: u64,
    pub bodies_uploaded: u64,
    pub bodies_present: u64,
    pub bytes_uploaded: u64,
    pub manifests_written: u64,
    /// Uploads that failed, and the last reason.
    pub upload_failures: u64,
    pub last_upload_error: Option<String>,
}
