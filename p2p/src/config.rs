//! How a node is set up: identity, addresses, who it trusts, and its time and
//! size limits.
//!
//! Every limit has a documented default chosen for a build cache on an office
//! LAN: lookups must be fast enough that asking peers never slows a build
//! (the local store answers in well under a millisecond, a LAN round trip in
//! about one), while a body, once found, may take as long as its size
//! needs. Setters follow the `with_*` style of libp2p's own configs.

use std::time::Duration;

use crate::allowlist::Allowlist;
pub use crate::fetch::budget::ReadAheadLimits;
use crate::fetch::pace;
use libp2p::connection_limits::ConnectionLimits;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};

/// Every default of [`NodeConfig`], named once: the node uses them, and an
/// application that layers settings of its own over them (warren does) can
/// show them.
pub mod defaults {
    use std::time::Duration;

    /// See [`NodeConfig::with_max_body_size`](super::NodeConfig::with_max_body_size).
    pub const MAX_BODY_SIZE: u64 = 4 << 30;
    /// See [`NodeConfig::with_inline_limit`](super::NodeConfig::with_inline_limit).
    pub const INLINE_LIMIT: u64 = 1 << 20;
    /// See [`NodeConfig::with_lookup_deadline`](super::NodeConfig::with_lookup_deadline).
    pub const LOOKUP_DEADLINE: Duration = Duration::from_millis(150);
    /// See [`NodeConfig::with_transfer_rate`](super::NodeConfig::with_transfer_rate).
    pub const TRANSFER_RATE: u64 = 50_000_000;
    /// See [`NodeConfig::with_cooldown`](super::NodeConfig::with_cooldown).
    pub const COOLDOWN: Duration = Duration::from_secs(60);
    /// See [`NodeConfig::with_read_ahead`](super::NodeConfig::with_read_ahead).
    pub const READ_AHEAD: usize = 64;
    /// See [`NodeConfig::with_read_ahead`](super::NodeConfig::with_read_ahead).
    pub const READ_AHEAD_MAX_BODY: u64 = 64 << 20;
    /// See [`NodeConfig::with_read_ahead_executables_max`](super::NodeConfig::with_read_ahead_executables_max).
    /// A small Go program or tool links to 2-4 MB and costs a LAN a few
    /// milliseconds; a test binary, even of a small package, is 7 MB and
    /// more (Go 1.27 on linux/amd64: `strings` 6.8 MiB, `compress/gzip`
    /// 12.8 MiB, `encoding/json` 13.3 MiB), and is seldom what the next
    /// build asks for. 4 MiB takes the first ahead and leaves the second
    /// to a lookup.
    pub const READ_AHEAD_EXECUTABLES_MAX: u64 = 4 << 20;
    /// Read-ahead runs only this long after a lookup got a body from a
    /// peer (see `fetch::budget`).
    pub const READ_AHEAD_LIVE_FOR: Duration = Duration::from_secs(30);
    /// The read-ahead budgets are per window of this length.
    pub const READ_AHEAD_WINDOW: Duration = Duration::from_secs(10 * 60);
    /// Bytes read ahead from one peer per window: five times a `go build
    /// std` (183 MB).
    pub const READ_AHEAD_PER_PEER: u64 = 1 << 30;
    /// Bytes read ahead in all per window.
    pub const READ_AHEAD_TOTAL: u64 = 2 << 30;
    /// See [`NodeConfig::with_max_concurrent_serves`](super::NodeConfig::with_max_concurrent_serves).
    pub const MAX_CONCURRENT_SERVES: usize = 16;
    /// See [`NodeConfig::with_max_in_flight`](super::NodeConfig::with_max_in_flight).
    pub const MAX_IN_FLIGHT: u64 = 1 << 30;
}

/// The mDNS service type warren advertises and browses for.
pub const DEFAULT_SERVICE_TYPE: &str = "_warren._tcp.local.";

/// How the requester chooses whether to ask for compressed bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Measure both and keep the faster (see `fetch::link`).
    #[default]
    Auto,
    /// Always ask.
    Always,
    /// Never ask. Peers are still served compressed bodies if they ask.
    Never,
}

/// Settings of a node; see each setter for its default.
#[derive(Clone)]
pub struct NodeConfig {
    pub(crate) keypair: Keypair,
    pub(crate) listen: Vec<Multiaddr>,
    pub(crate) allowlist: Allowlist,
    pub(crate) static_peers: Vec<Multiaddr>,
    pub(crate) mdns: Option<MdnsConfig>,
    pub(crate) max_body_size: u64,
    pub(crate) max_in_flight: u64,
    pub(crate) inline_limit: u64,
    pub(crate) lookup_deadline: Duration,
    pub(crate) transfer_rate: u64,
    pub(crate) cooldown: Duration,
    pub(crate) idle_connection_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) redial_min: Duration,
    pub(crate) redial_max: Duration,
    pub(crate) connection_limits: ConnectionLimits,
    pub(crate) max_concurrent_serves: usize,
    pub(crate) event_capacity: usize,
    pub(crate) read_ahead: usize,
    pub(crate) read_ahead_max_body: u64,
    pub(crate) read_ahead_executables_max: u64,
    pub(crate) read_ahead_budget: ReadAheadLimits,
    pub(crate) compression: Compression,
    pub(crate) inbound_from_anywhere: bool,
    pub(crate) agreement: bool,
    /// How static peers' names resolve; the system's way but in tests.
    pub(crate) resolver: crate::node::names::Resolver,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("peer_id", &self.peer_id())
            .field("listen", &self.listen)
            .field("allowlist", &self.allowlist)
            .field("static_peers", &self.static_peers)
            .field("mdns", &self.mdns)
            .field("max_body_size", &self.max_body_size)
            .field("max_in_flight", &self.max_in_flight)
            .field("inline_limit", &self.inline_limit)
            .field("lookup_deadline", &self.lookup_deadline)
            .field("transfer_rate", &self.transfer_rate)
            .field("cooldown", &self.cooldown)
            .field("read_ahead", &self.read_ahead)
            .field("compression", &self.compression)
            .field("agreement", &self.agreement)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// A node with identity `keypair` and the defaults below: listening on
    /// `/ip4/0.0.0.0/tcp/0`, an empty allowlist (nobody may connect), no
    /// static peers and no mDNS.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("a valid multiaddr")],
            allowlist: Allowlist::default(),
            static_peers: Vec::new(),
            mdns: None,
            max_body_size: defaults::MAX_BODY_SIZE,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            inline_limit: defaults::INLINE_LIMIT,
            lookup_deadline: defaults::LOOKUP_DEADLINE,
            transfer_rate: defaults::TRANSFER_RATE,
            cooldown: defaults::COOLDOWN,
            idle_connection_timeout: Duration::from_secs(60 * 60),
            ping_interval: Duration::from_secs(15),
            redial_min: Duration::from_secs(1),
            redial_max: Duration::from_secs(60),
            // Pending incoming connections are bounded by admission,
            // which also lets a newcomer take over an idle one's slot.
            connection_limits: ConnectionLimits::default()
                .with_max_established_incoming(Some(128))
                .with_max_established_per_peer(Some(4)),
            max_concurrent_serves: defaults::MAX_CONCURRENT_SERVES,
            event_capacity: 256,
            read_ahead: defaults::READ_AHEAD,
            read_ahead_max_body: defaults::READ_AHEAD_MAX_BODY,
            read_ahead_executables_max: defaults::READ_AHEAD_EXECUTABLES_MAX,
            read_ahead_budget: ReadAheadLimits {
                live_for: defaults::READ_AHEAD_LIVE_FOR,
                window: defaults::READ_AHEAD_WINDOW,
                per_peer: defaults::READ_AHEAD_PER_PEER,
                total: defaults::READ_AHEAD_TOTAL,
            },
            compression: Compression::Auto,
            inbound_from_anywhere: false,
            agreement: false,
            resolver: crate::node::names::Resolver::default(),
        }
    }

    /// Whether to ask peers for compressed (zstd) bodies: by default
    /// ([`Compression::Auto`]) each peer is asked for raw and compressed
    /// bodies by turns at first (16 MiB in all), and then for whichever
    /// came faster. Peers that ask are served compressed bodies whatever
    /// this says.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Read-ahead: after a peer's body arrives, fetch the entries it says it
    /// stored next (its hints), up to `entries` at once, ahead of any
    /// lookup, so that a build asking for them finds them in the local
    /// store. A build from a peer then waits on the network once per burst
    /// instead of once per entry. They are asked for in batches of up to
    /// 16 per request. Hinted bodies bigger than `max_body` are left for a
    /// lookup to fetch. `0` turns read-ahead off. Default 64 entries,
    /// 64 MiB.
    pub fn with_read_ahead(mut self, entries: usize, max_body: u64) -> Self {
        self.read_ahead = entries;
        self.read_ahead_max_body = max_body;
        self
    }

    /// Hinted linked executables (test binaries, `go run` binaries: big,
    /// and seldom what the next build needs) bigger than `max` bytes are
    /// not read ahead; a lookup still fetches one on demand. The server
    /// says which of its hints are executables (`wire::HintedExecutable`);
    /// an older server does not, and its hints are read ahead as any
    /// other. Default [`defaults::READ_AHEAD_EXECUTABLES_MAX`].
    pub fn with_read_ahead_executables_max(mut self, max: u64) -> Self {
        self.read_ahead_executables_max = max;
        self
    }

    /// This node's peer ID (derived from its keypair).
    /// When read-ahead runs and how much it may bring (see
    /// [`ReadAheadLimits`]). Defaults: [`defaults::READ_AHEAD_LIVE_FOR`],
    /// [`defaults::READ_AHEAD_WINDOW`], [`defaults::READ_AHEAD_PER_PEER`],
    /// [`defaults::READ_AHEAD_TOTAL`].
    pub fn with_read_ahead_budget(mut self, limits: ReadAheadLimits) -> Self {
        self.read_ahead_budget = limits;
        self
    }

    /// Let incoming connections from any address reach the handshake, not
    /// only LAN ones (see `node::admission`). Default `false`.
    pub fn with_inbound_from_anywhere(mut self, anywhere: bool) -> Self {
        self.inbound_from_anywhere = anywhere;
        self
    }

    /// Agreement: store a fetched entry only when two sources agree on
    /// its OutputID: two peers that built it themselves, or one peer and
    /// an earlier build here ([`crate::Bodies::built_here`]). Read-ahead is
    /// off with it. Default `false`. See `crate::fetch::agreement`.
    pub fn with_agreement(mut self, agreement: bool) -> Self {
        self.agreement = agreement;
        self
    }

    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// Addresses to listen on. Default `/ip4/0.0.0.0/tcp/0` (all interfaces,
    /// a port chosen by the OS; mDNS advertises whichever it is).
    pub fn with_listen(mut self, addresses: Vec<Multiaddr>) -> Self {
        self.listen = addresses;
        self
    }

    /// Peers allowed to connect, each with its [`Role`](crate::Role) (a
    /// set of peer IDs gives each the default role: asked and served).
    /// Default: none. Can be replaced at runtime with
    /// [`Client::set_allowlist`](crate::Client::set_allowlist).
    pub fn with_allowlist(mut self, peers: impl Into<Allowlist>) -> Self {
        self.allowlist = peers.into();
        self
    }

    /// Addresses dialed at start and redialed when lost: an IP
    /// (`/ip4/…/tcp/…`) or a host name (`/dns4/…/tcp/…`, also `/dns` and
    /// `/dns6`), resolved at each dial the system's way (see
    /// `node::names`). An address ending in
    /// `/p2p/<peer id>` is dialed only while that peer is allowlisted; one
    /// without is dialed anyway, and the connection is closed after the
    /// handshake if the peer it reaches is not allowlisted. Default: none.
    pub fn with_static_peers(mut self, addresses: Vec<Multiaddr>) -> Self {
        self.static_peers = addresses;
        self
    }

    /// Discover peers on the LAN with mDNS. Default `None`: no mDNS traffic at
    /// all, which is what tests want.
    pub fn with_mdns(mut self, mdns: Option<MdnsConfig>) -> Self {
        self.mdns = mdns;
        self
    }

    /// The largest body this node fetches; a peer announcing a bigger one is
    /// refused before a byte of it is read. Default 4 GiB.
    pub fn with_max_body_size(mut self, bytes: u64) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// The bytes of bodies being received at once, counted as they arrive
    /// (not as claimed): all bodies on their way but the biggest must fit
    /// in it together, so one body may be as big as the body limit while
    /// others still arrive beside it. A body that does not fit is given up
    /// (the peer is not blamed). It bounds what the temp files of bodies
    /// on their way add to the store. Default 1 GiB.
    pub fn with_max_in_flight(mut self, bytes: u64) -> Self {
        self.max_in_flight = bytes;
        self
    }

    /// The largest body a peer may send with its answer to a lookup when
    /// several peers are asked; a bigger body is then fetched by a second
    /// request to one peer only, so a lookup never pulls a large body from
    /// everyone at once. Default 1 MiB.
    pub fn with_inline_limit(mut self, bytes: u64) -> Self {
        self.inline_limit = bytes;
        self
    }

    /// How long a lookup waits for a first positive answer. A peer that has
    /// not answered "found" by then is given up on, so a slow or dead peer
    /// delays a build by at most this much. Default 150 ms.
    pub fn with_lookup_deadline(mut self, deadline: Duration) -> Self {
        self.lookup_deadline = deadline;
        self
    }

    /// The slowest transfer rate tolerated, in bytes per second: a body of
    /// `size` bytes must arrive within `1 s + size / rate` of its header (see
    /// [`transfer_timeout`](Self::transfer_timeout)), counting only the time
    /// spent waiting for the peer, and the peer may never fall more than 2 s
    /// behind this rate on the way, nor take over 2 s for a piece (256
    /// KiB); a peer that does is cut off and cooled down. Default 50 MB/s,
    /// well under gigabit Ethernet. Zero is treated as one.
    pub fn with_transfer_rate(mut self, bytes_per_second: u64) -> Self {
        self.transfer_rate = bytes_per_second.max(1);
        self
    }

    /// How long a peer that sent a body which did not verify, or did not
    /// deliver a body it announced in time, is left out of lookups.
    /// Default 60 s.
    pub fn with_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// How long an unused connection stays open. Connections to allowlisted
    /// peers are kept so lookups never wait on a handshake, and are redialed
    /// if lost. Default 1 hour.
    pub fn with_idle_connection_timeout(mut self, timeout: Duration) -> Self {
        self.idle_connection_timeout = timeout;
        self
    }

    /// How often connections are pinged; a connection whose ping fails is
    /// closed (and redialed). Default 15 s.
    pub fn with_ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Redial delays for lost allowlisted peers and static addresses: the
    /// first retry after `min`, doubling up to `max`. Default 1 s to 60 s.
    pub fn with_redial_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.redial_min = min;
        self.redial_max = max.max(min);
        self
    }

    /// Connection limits. Default: 128 established incoming, 4 per peer.
    ///
    /// Handshakes in progress are bounded apart, whatever this says: at
    /// most 32 incoming at once, 4 per source (an IPv4 address, an IPv6
    /// /64), each within 3 s, a newcomer taking over the oldest one's slot
    /// (see `node::admission`). Setting a cap on pending incoming
    /// connections here undoes that: whoever fills it first keeps
    /// newcomers out.
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.connection_limits = limits;
        self
    }

    /// How many requests are served at once (each may hash and stream a
    /// body); more are answered "not found" at once. A peer that is being
    /// served gets another permit only while more than a quarter of them
    /// stay free, so one peer holds at most three quarters and each other
    /// peer still gets one (see `node::serving`). Default 16 (12 for one
    /// peer).
    pub fn with_max_concurrent_serves(mut self, serves: usize) -> Self {
        self.max_concurrent_serves = serves.max(1);
        self
    }

    /// Capacity of the [`Event`](crate::Event) channel; events that do not
    /// fit are dropped, never waited for. Default 256.
    pub fn with_event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Time allowed for a body of `size` bytes once its header arrived:
    /// `1 s + size / transfer_rate`.
    pub fn transfer_timeout(&self, size: u64) -> Duration {
        pace::transfer_timeout(size, self.transfer_rate)
    }

    /// An upper bound on any single fetch, used as libp2p's request timeout
    /// and as the client's backstop.
    pub(crate) fn longest_fetch(&self) -> Duration {
        // A lookup, then a body request whose header is due within the
        // stall after the lookup deadline, and whose body may take its
        // transfer timeout waiting for the peer and as long again on our
        // side (see `fetch::pace`).
        self.lookup_deadline * 2
            + self.transfer_timeout(self.inline_limit)
            + pace::Pace::longest(self.max_body_size, self.transfer_rate)
            + Duration::from_secs(5)
    }
}

/// mDNS discovery settings. Discovery is only an address hint: Noise
/// authenticates the peer ID of whatever is dialed, and only allowlisted
/// peer IDs are dialed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnsConfig {
    pub(crate) service_type: String,
    pub(crate) interfaces: Vec<String>,
    pub(crate) ipv6: bool,
    pub(crate) loopback: bool,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self {
            service_type: DEFAULT_SERVICE_TYPE.to_owned(),
            interfaces: Vec::new(),
            ipv6: false,
            loopback: false,
        }
    }
}

impl MdnsConfig {
    /// The DNS-SD service type. Default [`DEFAULT_SERVICE_TYPE`]
    /// (`_warren._tcp.local.`).
    pub fn with_service_type(mut self, service_type: impl Into<String>) -> Self {
        self.service_type = service_type.into();
        self
    }

    /// Restrict mDNS to these interfaces, each given by name (`eth0`) or by
    /// one of its IP addresses. Default: empty, meaning every interface.
    pub fn with_interfaces(mut self, interfaces: Vec<String>) -> Self {
        self.interfaces = interfaces;
        self
    }

    /// Also use IPv6. Default `false`: IPv4 only, since link-local IPv6
    /// addresses need a scope that TCP multiaddrs cannot carry.
    pub fn with_ipv6(mut self, ipv6: bool) -> Self {
        self.ipv6 = ipv6;
        self
    }

    /// Accept loopback addresses in announcements. Default `false`: an
    /// announcement that names one is someone pointing us at ourselves
    /// (or at another local service), never a coworker.
    pub fn with_loopback(mut self, loopback: bool) -> Self {
        self.loopback = loopback;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let config = NodeConfig::new(Keypair::generate_ed25519());
        assert_eq!(config.max_body_size, 4 << 30);
        assert_eq!(config.lookup_deadline, Duration::from_millis(150));
        assert_eq!(config.cooldown, Duration::from_secs(60));
        assert!(config.mdns.is_none());
        assert!(config.allowlist.is_empty());
        assert!(config.longest_fetch() > config.transfer_timeout(4 << 30));
    }
}
