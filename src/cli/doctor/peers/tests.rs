//! The peer checks of `warren doctor`: each cause and its fix.

use warren_p2p::{PeerId, Role};

use super::*;
use crate::config::tests::with_config;
use crate::config::trust::Peer as Listed;
use crate::ipc::status::{PeerReplication, PeerStatus};

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
    let names = Allowlist {
        peers: ["alice", "bob", "carol"]
            .iter()
            .zip(&ids)
            .map(|(name, id)| Listed {
                id: id.to_string(),
                name: Some((*name).into()),
                role: Role::PullAndServe,
                reshare: false,
            })
            .collect(),
    };
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
    let names = Allowlist {
        peers: ["alice", "bob", "carol"]
            .iter()
            .zip(&ids)
            .map(|(name, id)| Listed {
                id: id.to_string(),
                name: Some((*name).into()),
                role: Role::PullAndServe,
                reshare: false,
            })
            .collect(),
    };
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
