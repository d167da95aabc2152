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
use super::value::{BucketUrl, Rate, Replicate, list_or};
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
    "" Store, file FileConfig, table share: FileShare, table bucket: FileBucket {
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
        /// Peers to dial without mDNS (multiaddrs ending in `/p2p/<peer id>`),
        /// at an IP or a host name (`/dns4/<name>/tcp/<port>`, also `/dns`,
        /// `/dns6`; not `/dnsaddr`).
        "static-peers" static_peers: Vec<String> = Vec::new();
        /// Default: [`defaults::LOOKUP_DEADLINE`].
        "lookup-deadline" lookup_deadline: Duration = defaults::LOOKUP_DEADLINE;
        /// Default: [`defaults::MAX_BODY_SIZE`].
        "max-body-size" max_body_size: ByteSize = ByteSize(defaults::MAX_BODY_SIZE);
        /// Entries read ahead at once; 0 turns read-ahead off. Default:
        /// [`defaults::READ_AHEAD`].
        "read-ahead" read_ahead: usize = defaults::READ_AHEAD;
        /// Linked executables (test binaries, `go run` binaries) bigger than
        /// this are neither read ahead nor replicated from peers; a build
        /// that asks for one still fetches it. A small Go tool links to 2-4
        /// MB; a test binary is 7 MB and more, and seldom what the next
        /// build asks for. Default: [`defaults::READ_AHEAD_EXECUTABLES_MAX`]
        /// (4 MiB).
        "read-ahead-executables-max" read_ahead_executables_max: ByteSize =
            ByteSize(defaults::READ_AHEAD_EXECUTABLES_MAX);
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

/// Default of the bucket's `refresh`: how often new manifests are listed.
pub(crate) const DEFAULT_BUCKET_REFRESH: Duration = Duration::from_secs(30);
/// Default of the bucket's `deadline`: how long a lookup waits for a body
/// to start arriving from the bucket before it is a miss.
pub(crate) const DEFAULT_BUCKET_DEADLINE: Duration = Duration::from_secs(2);
/// Default of the bucket's `cooldown`: how long the bucket is left out of
/// lookups after it failed one (down, slow, refusing, bad bodies).
pub(crate) const DEFAULT_BUCKET_COOLDOWN: Duration = Duration::from_secs(60);
/// Default of the bucket's `read-ahead-size`: bytes of a hit manifest's
/// other entries fetched ahead of the build, per manifest.
pub(crate) const DEFAULT_BUCKET_READ_AHEAD_SIZE: ByteSize = ByteSize::mib(512);

settings! {
    /// The `[bucket]` table: a team bucket (S3) of signed mappings, the
    /// tier after the LAN peers (off unless `url` is set). Its keys are
    /// named apart from `[share]`'s.
    "bucket" Bucket, file FileBucket {
        /// The bucket and prefix, `s3://BUCKET/PREFIX`. Default: off.
        "url" url: Option<BucketUrl> = None;
        /// An S3-compatible server's URL. Default: AWS's for the region.
        "endpoint" endpoint: Option<String> = None,
            show(|endpoint: &Option<String>| endpoint.clone().unwrap_or_else(|| "AWS".to_owned()));
        /// Default: the AWS environment's (`AWS_REGION`), else us-east-1.
        "region" region: Option<String> = None,
            show(|region: &Option<String>| region.clone().unwrap_or_else(|| "from the AWS environment".to_owned()));
        /// Upload what this machine builds, signed with its identity.
        /// Default: false.
        "write" write: bool = false;
        /// How often new manifests are listed. Default:
        /// [`DEFAULT_BUCKET_REFRESH`].
        "refresh" refresh: Duration = DEFAULT_BUCKET_REFRESH;
        /// How long a lookup waits for the bucket. Default:
        /// [`DEFAULT_BUCKET_DEADLINE`].
        "deadline" deadline: Duration = DEFAULT_BUCKET_DEADLINE;
        /// How long a failing bucket is left out of lookups. Default:
        /// [`DEFAULT_BUCKET_COOLDOWN`].
        "cooldown" cooldown: Duration = DEFAULT_BUCKET_COOLDOWN;
        /// Bytes of a hit manifest's other entries fetched ahead; 0 turns
        /// read-ahead off. Default: [`DEFAULT_BUCKET_READ_AHEAD_SIZE`].
        "read-ahead-size" read_ahead_size: ByteSize = DEFAULT_BUCKET_READ_AHEAD_SIZE;
        /// Most bytes a second that bodies downloaded from the bucket take,
        /// for lookups and read-ahead together (`20 MiB/s`), for a link
        /// shared with others; lookups go first. Default: no cap.
        "max-rate" max_rate: Option<Rate> = None;
    }
}

impl Bucket {
    /// Whether a bucket is configured at all.
    pub(crate) fn on(&self) -> bool {
        self.url.is_some()
    }
}
