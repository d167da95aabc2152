//! The address spoofer of warren's end-to-end tests: anyone on a LAN can
//! announce an allowlisted peer's ID (it is in that peer's own mDNS
//! advert) with addresses of their choosing, hoping to make a daemon dial
//! loopback, other networks, or a flood of addresses. `mdns-sd` only ever
//! announces addresses of its own interfaces, so this writes the mDNS
//! answer itself: PTR, SRV, TXT (`peer=<id>`) and one A record per
//! address, multicast to 224.0.0.251:5353 twice a second.
//!
//! ```text
//! address_spoofer announce <service type> <peer id> <port> <ipv4>...
//! address_spoofer listen <ipv4:port>
//! address_spoofer flood <records> <ipv4>
//! ```
//!
//! `listen` accepts TCP connections, closes each at once, and prints
//! `dialed <local address>` for each: what a dial to a spoofed address
//! reached. `flood` announces `<records>` hosts that do not exist (one A
//! record each, at `<ipv4>`), once, then prints `flooded <records>`: what
//! an mDNS cache without a cap keeps. Run it only inside a network
//! namespace of a test's own.

#![expect(clippy::print_stdout, reason = "a test tool reporting to its test")]

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use warren_p2p::PROTOCOL_NAME;
use warren_p2p::wire::WIRE_VERSION;

/// How long each record is announced for, in seconds.
const TTL: u32 = 120;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("announce") if args.len() >= 5 => {
            let port: u16 = args[3].parse()?;
            let addresses = args[4..]
                .iter()
                .map(|text| text.parse::<Ipv4Addr>())
                .collect::<Result<Vec<_>, _>>()?;
            announce(&args[1], &args[2], port, &addresses)
        }
        Some("listen") if args.len() == 2 => listen(args[1].parse()?),
        Some("flood") if args.len() == 3 => flood(args[1].parse()?, args[2].parse()?),
        _ => Err(
            "usage: address_spoofer announce <service type> <peer id> <port> <ipv4>... \
                  | listen <ipv4:port> | flood <records> <ipv4>"
                .into(),
        ),
    }
}

fn announce(
    service: &str,
    peer: &str,
    port: u16,
    addresses: &[Ipv4Addr],
) -> Result<(), Box<dyn std::error::Error>> {
    let packet = answer(service, peer, port, addresses);
    // Answers come from port 5353 (RFC 6762, 11): receivers drop others.
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353))?;
    socket.set_multicast_ttl_v4(255)?;
    println!("announcing {peer} at {} addresses", addresses.len());
    std::io::stdout().flush()?;
    loop {
        socket.send_to(&packet, (Ipv4Addr::new(224, 0, 0, 251), 5353))?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn flood(records: u32, address: Ipv4Addr) -> Result<(), Box<dyn std::error::Error>> {
    const PER_PACKET: u32 = 40;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353))?;
    socket.set_multicast_ttl_v4(255)?;
    for first in (0..records).step_by(PER_PACKET as usize) {
        let count = PER_PACKET.min(records - first);
        let mut packet = Vec::new();
        for field in [0u16, 0x8400, 0, count as u16, 0, 0] {
            packet.extend_from_slice(&field.to_be_bytes());
        }
        for n in first..first + count {
            record(
                &mut packet,
                &format!("flood{n}.local"),
                1,
                0x8001,
                &address.octets(),
            );
        }
        socket.send_to(&packet, (Ipv4Addr::new(224, 0, 0, 251), 5353))?;
        // Paced, so that the receiver's socket buffer takes it all.
        std::thread::sleep(Duration::from_millis(2));
    }
    println!("flooded {records}");
    std::io::stdout().flush()?;
    Ok(())
}

fn listen(address: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(address)?;
    println!("listening {address}");
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let stream = stream?;
        println!("dialed {}", stream.local_addr()?.ip());
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// An mDNS answer (RFC 6762, 6763) naming an instance of `service` for
/// `peer`, at `addresses`.
fn answer(service: &str, peer: &str, port: u16, addresses: &[Ipv4Addr]) -> Vec<u8> {
    let service = service.trim_end_matches('.');
    let instance = format!("spoofed.{service}");
    let host = "spoofer.local";
    let records = 3 + addresses.len() as u16;
    let mut packet = Vec::new();
    // ID 0; flags: a response, authoritative; no questions; the answers.
    for field in [0u16, 0x8400, 0, records, 0, 0] {
        packet.extend_from_slice(&field.to_be_bytes());
    }
    // Shared records (PTR) have no cache-flush bit; unique ones do.
    record(&mut packet, service, 12, 1, &name(&instance));
    let mut srv = Vec::new();
    srv.extend_from_slice(&[0, 0, 0, 0]); // priority, weight
    srv.extend_from_slice(&port.to_be_bytes());
    srv.extend_from_slice(&name(host));
    record(&mut packet, &instance, 33, 0x8001, &srv);
    let mut txt = Vec::new();
    for entry in [
        format!("peer={peer}"),
        format!("v={WIRE_VERSION}"),
        format!("proto={PROTOCOL_NAME}"),
    ] {
        txt.push(entry.len() as u8);
        txt.extend_from_slice(entry.as_bytes());
    }
    record(&mut packet, &instance, 16, 0x8001, &txt);
    for address in addresses {
        record(&mut packet, host, 1, 0x8001, &address.octets());
    }
    packet
}

fn record(packet: &mut Vec<u8>, owner: &str, kind: u16, class: u16, data: &[u8]) {
    packet.extend_from_slice(&name(owner));
    packet.extend_from_slice(&kind.to_be_bytes());
    packet.extend_from_slice(&class.to_be_bytes());
    packet.extend_from_slice(&TTL.to_be_bytes());
    packet.extend_from_slice(&(data.len() as u16).to_be_bytes());
    packet.extend_from_slice(data);
}

/// A domain name in DNS wire form, uncompressed.
fn name(dotted: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in dotted.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}
