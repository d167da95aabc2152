//! Every setting of warren, declared once: its key, type, default, doc and,
//! for those a flag gives, the flag and its variable (see
//! [`settings!`](super::declare::settings)). The store's and the command
//! line's defaults are defined here; the node's in
//! [`warren_p2p::config::defaults`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use warren_p2p::Compression;
use warren_p2p::config::defaults;

use super::declare::settings;
use super::error::Error;
use super::value::{Rate, Replicate, list_or};
use crate::config::env;
use crate::store::TrimPolicy;

/// Default store size limit: room for dozens of `go build std`-sized
/// workloads (each ~180 MB) without filling a laptop disk.
pub(crate) const DEFAULT_MAX_SIZE: ByteSize = ByteSize::gib(10);
/// Default unused-time limit. Go's own cache uses 5 days; a week keeps what
/// was built before a weekend or a short holiday.
pub(crate) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Default of `replicate-max-size`.
pub(crate) const DEFAULT_REPLICATE_MAX_SIZE: ByteSize = ByteSize::gib(2);
/// Default of `replicate-rate`: a third of gigabit Ethernet, so that
/// replication leaves the link to builds and everyone else.
pub(crate) const DEFAULT_REPLICATE_RATE: Rate = Rate(ByteSize::mib(40));
/// Default of `replicate-window`.
pub(crate) const DEFAULT_REPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Default libp2p listen addresses: a fixed port, so coworkers behind
/// networks without multicast can list this machine as a static peer.
pub(crate) const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/7311", "/ip6/::/tcp/7311"];

settings! {
    /// The top of the config file: the store, and how far it is trimmed.
    "" Store, file FileConfig, table share: FileShare {
        /// Store directory [default: warren/ in the platform cache dir]
        "dir" dir: PathBuf = default_dir()?,
            flag("dir", "DIR", env::WARREN_DIR);
        /// Trim the store to this size, e.g. 10GiB [default: 10 GiB]
        "max-size" max_size: ByteSize = DEFAULT_MAX_SIZE,
            flag("max-size", "SIZE", env::WARREN_MAX_SIZE);
        /// Trim files unused for this long, e.g. 7days [default: 7 days]
        "max-age" max_age: Duration = DEFAULT_MAX_AGE,
            flag("max-age", "AGE", env::WARREN_MAX_AGE);
    }
}

impl Store {
    /// What a trim removes.
    pub(crate) fn trim_policy(&self) -> TrimPolicy {
        TrimPolicy {
            max_size: self.max_size.as_u64(),
            max_unused: self.max_age,
        }
    }
}

/// `<platform cache dir>/warren`.
fn default_dir() -> Result<PathBuf, Error> {
    Ok(dirs::cache_dir().ok_or(Error::NoCacheDir)?.join("warren"))
}

settings! {
    /// The `[share]` table: sharing with coworkers (off unless enabled).
    "share" Share, file FileShare {
        /// Share with coworkers: ask the daemon on a local miss (overrides `[share] enabled`)
        "enabled" enabled: bool = false,
            flag("share", "BOOL", env::WARREN_SHARE, hidden);
        /// Helpers start the daemon when it is not running. Default: false.
        "autostart" autostart: bool = false;
        /// libp2p listen multiaddrs. Default: [`DEFAULT_LISTEN`].
        "listen" listen: Vec<String> = DEFAULT_LISTEN.map(String::from).to_vec();
        /// Advertise and browse with mDNS. Default: true.
        "mdns" mdns: bool = true;
        /// Let connections from non-LAN addresses reach the handshake (a VPN
        /// with global addresses). Default: false.
        "inbound-from-anywhere" inbound_from_anywhere: bool = false;
        /// Interfaces mDNS may use (names); empty means all. Default: all.
        "interfaces" interfaces: Vec<String> = Vec::new(),
            show(|names: &Vec<String>| list_or(names, "all"));
        /// Peers to dial without mDNS (multiaddrs ending in `/p2p/<peer id>`).
        "static-peers" static_peers: Vec<String> = Vec::new();
        /// Default: [`defaults::LOOKUP_DEADLINE`].
        "lookup-deadline" lookup_deadline: Duration = defaults::LOOKUP_DEADLINE;
        /// Default: [`defaults::MAX_BODY_SIZE`].
        "max-body-size" max_body_size: ByteSize = ByteSize(defaults::MAX_BODY_SIZE);
        /// Entries read ahead at once; 0 turns read-ahead off. Default:
        /// [`defaults::READ_AHEAD`].
        "read-ahead" read_ahead: usize = defaults::READ_AHEAD;
        /// Whether to ask peers for compressed bodies. Default: only over
        /// links measured slow ([`Compression::Auto`]).
        "compression" compression: Compression = Compression::default();
        /// Store a peer's entry only when a second source agrees on it (two
        /// peers that built it, or a peer and an earlier build here); turns
        /// read-ahead and replication off. Default: false.
        "agreement" agreement: bool = false,
            show(|on: &bool| on.to_string());
        /// Where the daemon serves its counters in the Prometheus text format
        /// (`metrics-listen`: an address and port, or a port on loopback).
        /// Default: off.
        "metrics-listen" metrics_listen: Option<SocketAddr> = None,
            show(|listen: &Option<SocketAddr>| match listen {
                Some(address) => format!("http://{address}/metrics"),
                None => "off".to_owned(),
            });
        /// Whose entries to replicate; off while `agreement` is on (see
        /// `daemon::replicate::off_because`). Default: none.
        "replicate" replicate: Replicate = Replicate::None;
        /// Most bytes of peers' entries in the store that replication fills up
        /// to (and it leaves the last tenth of `max-size` free). Default:
        /// [`DEFAULT_REPLICATE_MAX_SIZE`].
        "replicate-max-size" replicate_max_size: ByteSize = DEFAULT_REPLICATE_MAX_SIZE;
        /// Most bytes a second replication fetches, as they cross the link.
        /// Default: [`DEFAULT_REPLICATE_RATE`].
        "replicate-rate" replicate_rate: Rate = DEFAULT_REPLICATE_RATE;
        /// Only entries a peer stored this recently are replicated. Default:
        /// [`DEFAULT_REPLICATE_WINDOW`].
        "replicate-window" replicate_window: Duration = DEFAULT_REPLICATE_WINDOW;
    }
}
