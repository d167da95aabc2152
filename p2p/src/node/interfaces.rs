//! This machine's network interfaces, and whether an address is in one of
//! their subnets.
//!
//! Admission (is a caller on the LAN?) and discovery (was an address
//! announced on the link it came in on?) both ask. Reading the interfaces
//! is a netlink dump, far dearer than the question, and both questions can
//! be asked by strangers as often as they like (a connection, an mDNS
//! announcement), on the node's one thread. So a reading is kept for
//! [`REFRESH`], and read again sooner only when an announcement names an
//! interface it does not know (one that just came up), at most once per
//! [`REREAD_AT_MOST`].
//!
//! An interface without a netmask (some VPNs report 0.0.0.0 or `::`, a
//! /0) has no subnet here: a /0 would make every address on the internet
//! "local".

use std::net::IpAddr;
use std::time::Duration;

use if_addrs::{IfAddr, Interface};
use tokio::time::Instant;

/// How long a reading of the interfaces is used.
pub(crate) const REFRESH: Duration = Duration::from_secs(10);
/// The soonest an unknown interface name makes us read again.
pub(crate) const REREAD_AT_MOST: Duration = Duration::from_secs(1);

type Reader = Box<dyn FnMut() -> Vec<Interface> + Send>;

/// A reading of the interfaces, refreshed as the module docs say.
pub(crate) struct Interfaces {
    read: Reader,
    list: Vec<Interface>,
    read_at: Option<Instant>,
}

impl Interfaces {
    /// This machine's interfaces, read when first asked for.
    pub(crate) fn of_this_machine() -> Self {
        Self::read_by(Box::new(|| if_addrs::get_if_addrs().unwrap_or_default()))
    }

    /// Interfaces as `read` says (tests give their own).
    pub(crate) fn read_by(read: Reader) -> Self {
        Self {
            read,
            list: Vec::new(),
            read_at: None,
        }
    }

    /// The interfaces as of at most [`REFRESH`] ago.
    pub(crate) fn get(&mut self, now: Instant) -> &[Interface] {
        let stale = self
            .read_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REFRESH);
        if stale {
            self.reread(now);
        }
        &self.list
    }

    /// The interfaces, read again first if one of `names` is not among
    /// them and the last reading is at least [`REREAD_AT_MOST`] old.
    pub(crate) fn knowing(&mut self, names: &[&str], now: Instant) -> &[Interface] {
        self.get(now);
        let unknown = (names.iter()).any(|name| !self.list.iter().any(|i| i.name == *name));
        let due = self
            .read_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REREAD_AT_MOST);
        if unknown && due {
            self.reread(now);
        }
        &self.list
    }

    fn reread(&mut self, now: Instant) {
        self.list = (self.read)();
        self.read_at = Some(now);
    }
}

/// Whether `ip` is in the subnet of `interface`. An interface with a /0
/// netmask has no subnet (see the module docs).
pub(crate) fn in_subnet(ip: IpAddr, interface: &IfAddr) -> bool {
    match (ip, interface) {
        (IpAddr::V4(ip), IfAddr::V4(net)) => {
            let mask = u32::from(net.netmask);
            mask != 0 && u32::from(ip) & mask == u32::from(net.ip) & mask
        }
        (IpAddr::V6(ip), IfAddr::V6(net)) => {
            let mask = u128::from(net.netmask);
            mask != 0 && u128::from(ip) & mask == u128::from(net.ip) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An IPv4 interface called `name` at `ip` with `netmask`.
    pub(crate) fn v4(name: &str, ip: [u8; 4], netmask: [u8; 4]) -> Interface {
        Interface {
            name: name.to_owned(),
            addr: IfAddr::V4(if_addrs::Ifv4Addr {
                ip: Ipv4Addr::from(ip),
                netmask: Ipv4Addr::from(netmask),
                prefixlen: u32::from_be_bytes(netmask).count_ones() as u8,
                broadcast: None,
            }),
            index: Some(2),
            oper_status: if_addrs::IfOperStatus::Up,
            is_p2p: false,
        }
    }

    /// An IPv6 interface called `name` at `ip` with `netmask`.
    pub(crate) fn v6(name: &str, ip: Ipv6Addr, netmask: Ipv6Addr) -> Interface {
        Interface {
            name: name.to_owned(),
            addr: IfAddr::V6(if_addrs::Ifv6Addr {
                ip,
                netmask,
                prefixlen: u128::from(netmask).count_ones() as u8,
                broadcast: None,
            }),
            index: Some(3),
            oper_status: if_addrs::IfOperStatus::Up,
            is_p2p: false,
        }
    }

    /// Interfaces that count their readings.
    pub(crate) fn counted(list: Vec<Interface>) -> (Interfaces, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&reads);
        let interfaces = Interfaces::read_by(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            list.clone()
        }));
        (interfaces, reads)
    }

    #[test]
    fn an_address_is_local_only_within_a_real_subnet() {
        let lan = v4("eth0", [10, 0, 0, 5], [255, 255, 255, 0]).addr;
        assert!(in_subnet(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), &lan));
        assert!(!in_subnet(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 9)), &lan));
        assert!(!in_subnet(IpAddr::V6(Ipv6Addr::LOCALHOST), &lan));
    }

    /// A VPN interface that reports no netmask (0.0.0.0, or `::`) must
    /// not make every address on the internet local.
    #[test]
    fn an_interface_without_a_netmask_has_no_subnet() {
        let vpn = v4("tun0", [203, 0, 113, 7], [0, 0, 0, 0]).addr;
        for anyone in ["8.8.8.8", "203.0.113.8", "203.0.113.7"] {
            assert!(!in_subnet(anyone.parse().unwrap(), &vpn), "{anyone}");
        }
        let vpn6 = v6(
            "tun1",
            "2001:db8::7".parse().unwrap(),
            Ipv6Addr::UNSPECIFIED,
        )
        .addr;
        for anyone in ["2001:4860:4860::8888", "2001:db8::8"] {
            assert!(!in_subnet(anyone.parse().unwrap(), &vpn6), "{anyone}");
        }
    }

    #[test]
    fn interfaces_are_read_once_per_refresh_and_again_for_a_new_name() {
        let now = Instant::now();
        let (mut interfaces, reads) = counted(vec![v4("eth0", [10, 0, 0, 5], [255, 0, 0, 0])]);
        for n in 0..1000 {
            interfaces.get(now + Duration::from_millis(n));
            interfaces.knowing(&["eth0"], now + Duration::from_millis(n));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // A name it does not know: read again, but at most once a second.
        for n in 0..2000 {
            interfaces.knowing(&["wlan0"], now + Duration::from_millis(n));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        interfaces.get(now + REFRESH + Duration::from_secs(1));
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }
}
