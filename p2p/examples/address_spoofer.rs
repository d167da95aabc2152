//! The address spoofer of warren's end-to-end tests: it sends the forged
//! mDNS answers of `warren_p2p::hostile::mdns`, announcing an allowlisted
//! peer's ID at addresses of its choosing, multicast to 224.0.0.251:5353
//! twice a second.
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

use warren_p2p::hostile::mdns;

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
    let packet = mdns::answer(service, peer, port, addresses);
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
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353))?;
    socket.set_multicast_ttl_v4(255)?;
    for packet in mdns::flood(records, address) {
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
