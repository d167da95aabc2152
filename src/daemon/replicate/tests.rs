//! The replicator's bookkeeping without a network: skips and rewinds, which
//! peers `replicate` names, when helpers were last active.

use super::*;
use crate::config::trust::{Allowlist, Peer as Listed};
use crate::ids::ActionId;

/// Entries skipped for a budget are looked at again, from the first
/// one skipped, once the catalog read so far is done and the budget
/// has room for the smallest of them; not before.
#[test]
fn skipped_entries_come_back_when_the_budget_has_room() {
    let page = |seq| Position { epoch: 7, seq };
    let queued = |n: u8, time: u64, size: u64, from: u64| Queued {
        entry: CatalogEntry {
            action: ActionId::from_bytes([n; 32]),
            size,
            time_unix_nanos: time,
            executable: false,
        },
        from: Resume {
            position: page(from),
            cursor: Cursor {
                time_unix_nanos: time,
                action: None,
            },
        },
    };
    let mut peer = Peer {
        position: page(90),
        ..Peer::default()
    };
    let mut budget = Budget::new(100, u64::MAX / 2);
    budget.recounted(95, 95);
    assert!(!peer.rewind_if_room(&budget), "nothing skipped");
    peer.skip(&queued(2, 200, 40, 10), Full::Peers);
    peer.skip(&queued(3, 300, 10, 10), Full::Peers);
    peer.skip(&queued(5, 500, 70, 40), Full::Store);
    assert_eq!(
        (peer.shown.skipped_for_budget, peer.shown.skipped_bytes),
        (2, 50)
    );
    assert_eq!(
        (peer.shown.skipped_for_room, peer.shown.skipped_room_bytes),
        (1, 70)
    );
    assert!(!peer.rewind_if_room(&budget), "no room for 10 bytes");
    budget.recounted(85, 85);
    peer.queue.push_back(queued(10, 1000, 1, 90));
    assert!(!peer.rewind_if_room(&budget), "entries still queued");
    peer.queue.clear();
    peer.more = true;
    assert!(!peer.rewind_if_room(&budget), "the catalog has more");
    peer.more = false;
    peer.next_read = Some(Instant::now() + REVISIT);
    assert!(peer.rewind_if_room(&budget));
    assert_eq!(peer.position, page(10), "the first one's page");
    assert_eq!(
        peer.cursor,
        Cursor {
            time_unix_nanos: 200,
            action: None
        }
    );
    assert_eq!(peer.next_read, None, "read again at once");
    assert_eq!(peer.shown.skipped_for_budget, 0);
    assert_eq!(peer.shown.skipped_for_room, 0);
    assert!(!peer.rewind_if_room(&budget), "once");
}

/// With agreement on, `replicate` is off, whatever it names.
#[test]
fn agreement_turns_replication_off() {
    let mut share = crate::config::tests::default_share();
    assert_eq!(off_because(&share), None, "replicate is none");
    share.replicate = Replicate::All;
    assert_eq!(off_because(&share), None);
    share.agreement = true;
    assert_eq!(off_because(&share), Some("agreement is on"));
    share.replicate = Replicate::None;
    assert_eq!(off_because(&share), None, "nothing to turn off");
}

#[test]
fn activity_is_recent_only_after_a_lookup() {
    let activity = Activity::default();
    assert!(!activity.recent(Duration::from_secs(3600)));
    activity.lookup();
    assert!(activity.recent(Duration::from_secs(3600)));
    assert!(!activity.recent(Duration::ZERO));
}

#[test]
fn replicate_names_peers_pulled_from_by_name_or_id() {
    let ids: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
    let listed = |id: &PeerId, name: &str, role: warren_p2p::Role| Listed {
        id: id.to_string(),
        name: Some(name.into()),
        role,
        reshare: false,
    };
    let allowlist = Allowlist {
        peers: vec![
            listed(&ids[0], "alice", warren_p2p::Role::PullAndServe),
            listed(&ids[1], "bob", warren_p2p::Role::PullAndServe),
            // Served, never pulled from: never replicated.
            listed(&ids[2], "carol", warren_p2p::Role::ServeOnly),
        ],
    };
    assert!(chosen(&Replicate::None, &allowlist).is_empty());
    assert_eq!(
        chosen(&Replicate::All, &allowlist),
        HashSet::from([ids[0], ids[1]])
    );
    let named = Replicate::Peers(vec!["bob".into(), "carol".into()]);
    assert_eq!(chosen(&named, &allowlist), HashSet::from([ids[1]]));
    let by_id = Replicate::Peers(vec![ids[0].to_string(), "nobody".into()]);
    assert_eq!(chosen(&by_id, &allowlist), HashSet::from([ids[0]]));
    assert_eq!(unknown(&by_id, &allowlist), ["nobody"]);
    assert_eq!(unknown(&named, &allowlist), ["carol"], "not pulled from");
}
