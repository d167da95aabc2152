//! Which requests may read the metrics, by the host they name.
//!
//! A web page can make a browser send requests to the metrics port, and by
//! DNS rebinding (its own name made to resolve to 127.0.0.1) read the
//! answers as if they came from its own site: the daemon's peer IDs and
//! counters. Such a request names the page's host, not ours, in its
//! `Host` header (and in an absolute request target). So a request is
//! answered only when every host it names is one of ours, with the port
//! we listen on:
//!
//! - the listening address itself (`192.0.2.7:9311`);
//! - bound on loopback: any loopback address, or `localhost`;
//! - bound on every interface (`0.0.0.0`, `::`): any address, or
//!   `localhost`.
//!
//! Addresses are safe to accept where names are not: a page cannot make
//! its browser send another site's address as the host of its own origin.
//! A scraper that names this machine by a DNS name is refused (421) and
//! must name it by address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hyper::Request;
use hyper::header::HOST;

/// The hosts a request may name. See the module docs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hosts {
    listening: SocketAddr,
}

impl Hosts {
    pub(crate) fn new(listening: SocketAddr) -> Self {
        Self { listening }
    }

    /// The host that `request` names, if it is not one of ours: `Some("")`
    /// when it names none (HTTP/1.1 requires one).
    pub(crate) fn foreign<'r, B>(&self, request: &'r Request<B>) -> Option<&'r str> {
        let mut hosts = request.headers().get_all(HOST).iter();
        let named = match (hosts.next(), hosts.next()) {
            (Some(host), None) => host.to_str().unwrap_or("?"),
            // None, or several: not a request a scraper sends.
            _ => return Some(""),
        };
        if !self.ours(named) {
            return Some(named);
        }
        match request.uri().authority() {
            Some(target) if !self.ours(target.as_str()) => Some(target.as_str()),
            _ => None,
        }
    }

    /// Whether `host` (a `Host` header's value: name or address, and port)
    /// names this listener. Strict: an address is a whole IPv4 address or
    /// a whole bracketed IPv6 one, the port is digits only.
    fn ours(&self, host: &str) -> bool {
        let Some((name, port)) = host.rsplit_once(':') else {
            return false;
        };
        if port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().ok() != Some(self.listening.port())
        {
            return false;
        }
        let address = match name.strip_prefix('[') {
            Some(bracketed) => match bracketed.strip_suffix(']') {
                Some(v6) => v6.parse::<Ipv6Addr>().map(IpAddr::V6).ok(),
                None => return false,
            },
            None => name.parse::<Ipv4Addr>().map(IpAddr::V4).ok(),
        };
        let bound = self.listening.ip();
        match address {
            Some(address) => {
                address == bound
                    || bound.is_unspecified()
                    || (bound.is_loopback() && address.is_loopback())
            }
            None => {
                name.eq_ignore_ascii_case("localhost")
                    && (bound.is_loopback() || bound.is_unspecified())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: Option<&str>, target: &str) -> Request<()> {
        let mut request = Request::get(target);
        if let Some(host) = host {
            request = request.header(HOST, host);
        }
        request.body(()).unwrap()
    }

    fn allows(listening: &str, host: &str) -> bool {
        let hosts = Hosts::new(listening.parse().unwrap());
        hosts.foreign(&request(Some(host), "/metrics")).is_none()
    }

    #[test]
    fn on_loopback_loopback_names_and_addresses_with_our_port_pass() {
        for host in [
            "127.0.0.1:9311",
            "127.0.0.2:9311",
            "localhost:9311",
            "LOCALHOST:9311",
            "[::1]:9311",
        ] {
            assert!(allows("127.0.0.1:9311", host), "{host}");
        }
        for host in [
            "evil.example:9311",
            "localhost.evil.example:9311",
            "127.0.0.1.nip.io:9311",
            "localhost",
            "localhost:80",
            "127.0.0.1:9312",
            "192.0.2.7:9311",
            "user@localhost:9311",
            "",
            "localhost:9311:9311",
            // Found by fuzzing: text after an address's brackets.
            "[::1]S:9311",
            "[::1:9311",
            "::1:9311",
            "localhost:+9311",
            "127.0.0.1:",
        ] {
            assert!(!allows("127.0.0.1:9311", host), "{host}");
        }
        assert!(allows("[::1]:9311", "127.0.0.1:9311"));
        assert!(allows("[::1]:9311", "localhost:9311"));
    }

    #[test]
    fn on_one_address_only_that_address_passes() {
        assert!(allows("192.0.2.7:9311", "192.0.2.7:9311"));
        for host in [
            "192.0.2.8:9311",
            "127.0.0.1:9311",
            "localhost:9311",
            "buildbox.example:9311",
        ] {
            assert!(!allows("192.0.2.7:9311", host), "{host}");
        }
    }

    #[test]
    fn on_every_interface_any_address_passes_but_no_other_name() {
        for host in ["192.0.2.7:9311", "[2001:db8::1]:9311", "localhost:9311"] {
            assert!(allows("0.0.0.0:9311", host), "{host}");
            assert!(allows("[::]:9311", host), "{host}");
        }
        assert!(!allows("0.0.0.0:9311", "buildbox.example:9311"));
        assert!(!allows("0.0.0.0:9311", "192.0.2.7:9312"));
    }

    #[test]
    fn every_named_host_must_be_ours() {
        let hosts = Hosts::new("127.0.0.1:9311".parse().unwrap());
        // No Host at all.
        assert_eq!(hosts.foreign(&request(None, "/metrics")), Some(""));
        // An absolute target names the host too.
        let absolute = request(Some("localhost:9311"), "http://evil.example:9311/metrics");
        assert_eq!(hosts.foreign(&absolute), Some("evil.example:9311"));
        let absolute = request(Some("localhost:9311"), "http://127.0.0.1:9311/metrics");
        assert_eq!(hosts.foreign(&absolute), None);
        // Two Host headers: refused, whatever they say.
        let mut two = request(Some("localhost:9311"), "/metrics");
        two.headers_mut()
            .append(HOST, "evil.example:9311".parse().unwrap());
        assert!(hosts.foreign(&two).is_some());
    }
}
