//! The peer checks of `warren doctor`: each cause and its fix.

use warren_p2p::{PeerId, Role};

use super::*;
use crate::config::tests::with_config;
use crate::config::trust::Peer as Listed;
use crate::ipc::status::{PeerReplication, PeerStatus, StaticStatus};

/// Peers trusted both ways, named `names` in the order of `ids`.
fn allowlist(names: &[&str], ids: &[PeerId]) -> Allowlist {
    Allowlist {
        peers: names
            .iter()
            .zip(ids)
            .map(|(name, id)| Listed {
                id: id.to_string(),
                name: Some((*name).into()),
                role: Role::PullAndServe,
                reshare: false,
            })
            .collect(),
    }
}

/// Each replicated peer gets a line that says how far along it is, a
/// warning with the fix when its catalog cannot be read or the budget
/// is full, and a name in `replicate` that matches no peer one too.
#[test]
fn replication_is_checked_per_peer_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    crate::fsutil::write_atomic(
        &file,
        b"[share]\nreplicate = [\"alice\", \"bob\", \"carol\", \"nobody\"]\n\
          replicate-max-size = \"1 MiB\"\n",
    )
    .unwrap();
    let config = Config::load(&with_config(file)).unwrap();
    let ids: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
    let names = allowlist(&["alice", "bob", "carol"], &ids);
    let peer = |id: &PeerId, replication: PeerReplication| PeerStatus {
        id: id.to_string(),
        replication: Some(replication),
        ..PeerStatus::default()
    };
    let status = DaemonStatus {
        peers: vec![
            peer(
                &ids[0],
                PeerReplication {
                    entries: 10,
                    ..PeerReplication::default()
                },
            ),
            peer(
                &ids[1],
                PeerReplication {
                    skipped_for_budget: 4,
                    skipped_bytes: 4096,
                    ..PeerReplication::default()
                },
            ),
            peer(
                &ids[2],
                PeerReplication {
                    note: Some("no catalog: the peer refused".into()),
                    ..PeerReplication::default()
                },
            ),
        ],
        ..DaemonStatus::default()
    };
    let me = Me {
        id: "12D3KooWme".into(),
        name: "dave".into(),
    };
    let mut report = Report::default();
    check_replication(&config, &status, &names, &me, &mut report);
    let mut out = Vec::new();
    report.print(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for line in [
        "  warning  `replicate` names nobody, which no peer you pull from is called",
        "  ok       alice: up to date; replicated 10 entries (0 B)",
        "  warning  bob: up to date; replicated 0 entries (0 B); 4 entries (4.0 KiB) \
         skipped: replicate-max-size reached",
        "           cause: entries from peers take all of `replicate-max-size` (1.0 MiB)",
        "  warning  carol: up to date; replicated 0 entries (0 B); no catalog: the peer refused",
        "           fix: ask carol to run the same warren release, and to serve you: \
         `warren peers add 12D3KooWme --name dave`",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    assert!(text.ends_with("0 problems, 3 warnings.\n"), "{text}");

    // A store near max-size: its own cause and fix.
    let near = DaemonStatus {
        peers: vec![peer(
            &ids[0],
            PeerReplication {
                skipped_for_room: 2,
                skipped_room_bytes: 2048,
                ..PeerReplication::default()
            },
        )],
        ..DaemonStatus::default()
    };
    let mut report = Report::default();
    check_replication(&config, &near, &names, &me, &mut report);
    let mut out = Vec::new();
    report.print(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.lines().any(|l| l
            == "           cause: the store is within 10% of `max-size` (10.0 GiB): \
                replication leaves that room to builds"),
        "{text}"
    );

    // With agreement on, replication is off, and says why.
    let mut agreeing = config.clone();
    agreeing.share.agreement = true;
    let mut report = Report::default();
    check_replication(&agreeing, &status, &names, &me, &mut report);
    let mut out = Vec::new();
    report.print(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.lines()
            .any(|l| l
                == "  warning  `replicate = alice bob carol nobody` is off: agreement is on"),
        "{text}"
    );
    assert!(!text.contains("alice:"), "no peer is replicated: {text}");

    // Off: no section at all.
    let mut report = Report::default();
    let mut quiet = config.clone();
    quiet.share.replicate = Replicate::None;
    check_replication(&quiet, &status, &names, &me, &mut report);
    assert_eq!(report.count(super::super::Status::Warning), 0);
    assert!(report.checks.is_empty());
}

/// A stranger that announces an offline peer's ID at its own host
/// (anyone on the LAN can) made the doctor advise correcting
/// `static-peers`, which named no such address. Only an address that
/// is there is blamed on the configuration.
#[test]
fn another_peer_at_an_address_is_the_configurations_fault_only_if_configured() {
    let ids: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
    let stranger = ids[3].to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    crate::fsutil::write_atomic(
        &file,
        format!(
            "[share]\nstatic-peers = [\"/ip4/10.0.0.2/tcp/7311/p2p/{}\"]\n",
            ids[0]
        )
        .as_bytes(),
    )
    .unwrap();
    let config = Config::load(&with_config(file.clone())).unwrap();
    let names = allowlist(&["alice", "bob", "carol"], &ids);
    let failed = |id: &PeerId, address: &str, announced: bool| PeerStatus {
        id: id.to_string(),
        allowlisted: true,
        addresses: vec![address.into()],
        last_failure: Some(ConnectFailure::WrongPeerId {
            address: address.into(),
            obtained: stranger.clone(),
            announced,
        }),
        last_failure_unix_ms: Some(2),
        ..PeerStatus::default()
    };
    let status = DaemonStatus {
        probed_unix_ms: Some(1),
        peers: vec![
            failed(&ids[0], "/ip4/10.0.0.2/tcp/7311", false),
            failed(&ids[1], "/ip4/10.0.0.66/tcp/7311", true),
            failed(&ids[2], "/ip4/10.0.0.3/tcp/7311", false),
        ],
        ..DaemonStatus::default()
    };
    let me = Me {
        id: "12D3KooWme".into(),
        name: "dave".into(),
    };
    let mut report = Report::default();
    check_peers(&config, &status, &names, &me, &mut report);
    let mut out = Vec::new();
    report.print(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let fixes: Vec<&str> = (text.lines())
        .filter_map(|line| line.trim_start().strip_prefix("fix: "))
        .collect();
    assert_eq!(fixes.len(), 3, "{text}");
    let correct = format!(
        "correct alice's address in `static-peers` under [share] in {}",
        file.display()
    );
    assert_eq!(fixes[0], correct, "{text}");
    for (fix, name) in fixes[1..].iter().zip(["bob", "carol"]) {
        assert!(!fix.starts_with("correct"), "{name}: {text}");
        assert!(
            fix.starts_with(&format!("ask {name} to run `warren doctor`")),
            "{name}: {text}"
        );
    }
    assert!(
        text.contains(&format!(
            "bob: an mDNS announcement put it at /ip4/10.0.0.66/tcp/7311, where another \
             peer, {stranger}, answered"
        )),
        "{text}"
    );
    assert!(
        text.contains("nothing in your configuration is wrong"),
        "{text}"
    );
}

/// A static peer given by a host name that does not resolve (a typo, a
/// VPN that is down) gets one line naming the name, the cause and the
/// fix, with a peer ID or without; an IP address is checked as before,
/// and a name that connected is fine.
#[test]
fn a_static_name_that_does_not_resolve_is_named_with_its_fix() {
    let ids: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let listed = [
        format!("/dns4/build.office.invalid/tcp/7311/p2p/{}", ids[0]),
        "/dns4/laptop.invalid/tcp/7400".to_owned(),
        format!("/dns4/up.office.invalid/tcp/7311/p2p/{}", ids[1]),
        format!("/ip4/10.0.0.2/tcp/7311/p2p/{}", ids[2]),
        "/dnsaddr/office.invalid".to_owned(),
    ];
    let quoted: Vec<String> = listed.iter().map(|a| format!("\"{a}\"")).collect();
    crate::fsutil::write_atomic(
        &file,
        format!("[share]\nstatic-peers = [{}]\n", quoted.join(", ")).as_bytes(),
    )
    .unwrap();
    let config = Config::load(&with_config(file.clone())).unwrap();
    let names = allowlist(&["builder", "up", "carol"], &ids);
    let unresolved = |address: &str, name: &str| ConnectFailure::Unresolved {
        address: address.into(),
        name: name.into(),
        message: "no records found".into(),
    };
    let status = DaemonStatus {
        pid: 4242,
        probed_unix_ms: Some(1),
        peers: vec![
            PeerStatus {
                id: ids[0].to_string(),
                allowlisted: true,
                addresses: vec!["/dns4/build.office.invalid/tcp/7311".into()],
                last_failure: Some(unresolved(
                    "/dns4/build.office.invalid/tcp/7311",
                    "build.office.invalid",
                )),
                last_failure_unix_ms: Some(2),
                ..PeerStatus::default()
            },
            PeerStatus {
                id: ids[1].to_string(),
                allowlisted: true,
                connected: true,
                addresses: vec!["/dns4/up.office.invalid/tcp/7311".into()],
                ..PeerStatus::default()
            },
        ],
        static_addresses: vec![StaticStatus {
            address: "/dns4/laptop.invalid/tcp/7400".into(),
            last_failure: Some(unresolved(
                "/dns4/laptop.invalid/tcp/7400",
                "laptop.invalid",
            )),
            last_failure_unix_ms: Some(2),
        }],
        ..DaemonStatus::default()
    };
    let mut report = Report::default();
    check_static_peers(&config, &status, &names, &mut report);
    let mut out = Vec::new();
    report.print(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let at = file.display();
    for expected in [
        format!(
            "  problem  {}: the name build.office.invalid does not resolve",
            listed[0]
        ),
        "neither /etc/hosts nor the DNS servers in /etc/resolv.conf know \
         build.office.invalid (no records found)"
            .to_owned(),
        format!(
            "check the name with `getent hosts build.office.invalid` and connect the VPN (the \
             daemon reads /etc/resolv.conf when it starts: if it changed since, restart it: \
             kill 4242 && warren daemon); or give the address as /ip4/<IP>/tcp/7311/p2p/{} in \
             `static-peers` under [share] in {at}",
            ids[0]
        ),
        format!(
            "  problem  {}: the name laptop.invalid does not resolve",
            listed[1]
        ),
        "or give the address as /ip4/<IP>/tcp/7400 in".to_owned(),
        format!("  ok       {}: connected to up", listed[2]),
        format!(
            "  ok       {}: not connected (see carol under Peers)",
            listed[3]
        ),
        format!(
            "  problem  {}: not an IP address or host name and a TCP port",
            listed[4]
        ),
    ] {
        assert!(text.contains(&expected), "{expected}\nnot in:\n{text}");
    }
    // The peer's own check says the same of it.
    let me = Me {
        id: "12D3KooWme".into(),
        name: "dave".into(),
    };
    let mut report = Report::default();
    check_peers(&config, &status, &names, &me, &mut report);
    let mut out = Vec::new();
    report.print(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("  problem  builder: the name build.office.invalid does not resolve"),
        "{text}"
    );
}
