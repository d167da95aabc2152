//! Which interface the OS picks for mDNS's group (224.0.0.251), and
//! whether that interface is a VPN's tunnel.
//!
//! A VPN that takes the multicast route makes announcements leave with the
//! tunnel's source address, and receivers on the LAN drop them (the
//! failure jmdns#203 describes); naming the LAN interface in `[share]
//! interfaces` or listing static peers avoids it. The route is read the
//! way the OS would choose it: `ip -j route get` on Linux, `route -n get`
//! on macOS. Reading a route sends nothing. A tunnel is recognised by its
//! kind where the kernel says it (Linux: the link type in
//! `/sys/class/net/<if>/type`, `tun_flags`, WireGuard's `DEVTYPE`), else
//! by its name.

use std::path::Path;

/// mDNS's IPv4 group.
pub(super) const MDNS_GROUP: &str = "224.0.0.251";

/// The interface the route to [`MDNS_GROUP`] leaves by, if there is one.
pub(super) fn mdns_interface() -> Option<String> {
    #[cfg(target_os = "macos")]
    let (program, args, parse) = (
        "route",
        ["-n", "get", MDNS_GROUP],
        parse_route_get as fn(&str) -> Option<String>,
    );
    #[cfg(not(target_os = "macos"))]
    let (program, args, parse) = (
        "ip",
        ["-j", "route", "get", MDNS_GROUP],
        parse_ip_route_get as fn(&str) -> Option<String>,
    );
    let output = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    parse(&String::from_utf8_lossy(&output.stdout))
}

/// `ip -j route get`'s answer: `[{"dst":"224.0.0.251","dev":"wg0",…}]`.
fn parse_ip_route_get(json: &str) -> Option<String> {
    let routes: serde_json::Value = serde_json::from_str(json).ok()?;
    let dev = routes.get(0)?.get("dev")?.as_str()?;
    (!dev.is_empty()).then(|| dev.to_owned())
}

/// macOS `route -n get`'s answer, a line `  interface: utun3`.
#[cfg_attr(
    all(not(target_os = "macos"), not(test)),
    expect(dead_code, reason = "macOS only")
)]
fn parse_route_get(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let name = line.trim().strip_prefix("interface:")?.trim();
        (!name.is_empty()).then(|| name.to_owned())
    })
}

/// What kind of tunnel `interface` is, or `None` for a LAN interface.
pub(super) fn tunnel_kind(interface: &str) -> Option<&'static str> {
    tunnel_kind_in(Path::new("/sys/class/net"), interface)
}

/// [`tunnel_kind`], with the kernel's interface directory given.
fn tunnel_kind_in(sys_class_net: &Path, interface: &str) -> Option<&'static str> {
    let dir = sys_class_net.join(interface);
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
    if read("uevent").is_some_and(|uevent| uevent.lines().any(|l| l == "DEVTYPE=wireguard")) {
        return Some("WireGuard");
    }
    // IFF_TUN in a tun/tap device's flags (a tap carries Ethernet).
    let tun_flag = read("tun_flags")
        .and_then(|flags| u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & 0x0001 != 0);
    if tun_flag {
        return Some("tun");
    }
    // ARPHRD_* link types (linux/if_arp.h).
    match read("type").and_then(|t| t.trim().parse::<u32>().ok()) {
        Some(512) => return Some("PPP"),
        Some(768) => return Some("IP-in-IP"),
        Some(769) => return Some("IPv6-in-IPv6"),
        Some(776) => return Some("SIT"),
        Some(778) => return Some("GRE"),
        Some(823) => return Some("IPv6 GRE"),
        Some(65534) => return Some("tunnel"),
        Some(_) => return None,
        None => {}
    }
    // No sysfs (macOS): go by the name.
    const TUNNEL_NAMES: [(&str, &str); 7] = [
        ("utun", "tunnel"),
        ("tun", "tun"),
        ("wg", "WireGuard"),
        ("tailscale", "Tailscale"),
        ("ipsec", "IPsec"),
        ("ppp", "PPP"),
        ("gpd", "GlobalProtect"),
    ];
    TUNNEL_NAMES
        .iter()
        .find(|(prefix, _)| interface.starts_with(prefix))
        .map(|(_, kind)| *kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read() {
        let linux = r#"[{"type":"multicast","dst":"224.0.0.251","dev":"wg0","prefsrc":"10.8.0.2","flags":[],"uid":0,"cache":["mc"]}]"#;
        assert_eq!(parse_ip_route_get(linux).as_deref(), Some("wg0"));
        assert_eq!(parse_ip_route_get("[]"), None);
        assert_eq!(parse_ip_route_get("not json"), None);
        let macos = "   route to: 224.0.0.251\ndestination: 224.0.0.0\n       mask: 240.0.0.0\n  interface: utun3\n      flags: <UP,DONE,STATIC,PRCLONING>\n";
        assert_eq!(parse_route_get(macos).as_deref(), Some("utun3"));
        assert_eq!(
            parse_route_get("route: writing to routing socket: not in table"),
            None
        );
    }

    #[test]
    #[expect(clippy::disallowed_methods, reason = "a fake sysfs, not store files")]
    fn tunnels_are_told_from_lans() {
        let sys = tempfile::tempdir().unwrap();
        let device = |name: &str, files: &[(&str, &str)]| {
            std::fs::create_dir_all(sys.path().join(name)).unwrap();
            for (file, text) in files {
                std::fs::write(sys.path().join(name).join(file), text).unwrap();
            }
        };
        device("eth0", &[("type", "1\n"), ("uevent", "INTERFACE=eth0\n")]);
        device("tun0", &[("type", "65534\n"), ("tun_flags", "0x1001\n")]);
        device("tap0", &[("type", "1\n"), ("tun_flags", "0x1002\n")]);
        device(
            "wg0",
            &[
                ("type", "65534\n"),
                ("uevent", "DEVTYPE=wireguard\nINTERFACE=wg0\n"),
            ],
        );
        device("gre1", &[("type", "778\n")]);
        device("wgish", &[("type", "1\n")]);
        let kind = |name| tunnel_kind_in(sys.path(), name);
        assert_eq!(kind("eth0"), None);
        assert_eq!(kind("tun0"), Some("tun"));
        assert_eq!(kind("tap0"), None);
        assert_eq!(kind("wg0"), Some("WireGuard"));
        assert_eq!(kind("gre1"), Some("GRE"));
        // The kernel's word beats the name.
        assert_eq!(kind("wgish"), None);
        // No sysfs entry: the name decides.
        assert_eq!(kind("utun3"), Some("tunnel"));
        assert_eq!(kind("en0"), None);
    }
}
