//! The address spoofer's packets: anyone on a LAN can announce an
//! allowlisted peer's ID (it is in that peer's own mDNS advert) with
//! addresses of their choosing, hoping to make a node dial loopback, other
//! networks, or a flood of addresses. `mdns-sd` only ever announces
//! addresses of its own interfaces, so the spoofer writes the mDNS answers
//! itself: PTR, SRV, TXT (`peer=<id>`) and one A record per address.
//! Sending them (to 224.0.0.251:5353) is left to the caller, which must do
//! so only inside a network namespace of a test's own.

use std::net::Ipv4Addr;

use crate::PROTOCOL_NAME;
use crate::protocol::wire::WIRE_VERSION;

/// How long each record is announced for, in seconds.
const TTL: u32 = 120;
/// A records per flood packet.
const PER_PACKET: u32 = 40;

/// An mDNS answer (RFC 6762, 6763) naming an instance of `service` for
/// `peer`, at `addresses`.
pub fn answer(service: &str, peer: &str, port: u16, addresses: &[Ipv4Addr]) -> Vec<u8> {
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

/// Answers announcing `records` hosts that do not exist (`flood<n>.local`,
/// one A record each, all at `address`), a few dozen to a packet: what an
/// mDNS cache without a cap keeps.
pub fn flood(records: u32, address: Ipv4Addr) -> Vec<Vec<u8>> {
    (0..records)
        .step_by(PER_PACKET as usize)
        .map(|first| {
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
            packet
        })
        .collect()
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
