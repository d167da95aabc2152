//! Handshakes in progress at once, by source: what strangers can hold.
//!
//! A stranger need not complete a handshake to hold a slot: an idle TCP
//! connection holds one until the handshake deadline. So the slots are
//! counted here, exactly, from admission until the handshake ends however
//! it ends, and bounded two ways:
//!
//! - per source, [`PER_SOURCE`]: an IPv4 address, or an IPv6 /64 (one
//!   machine can hold a whole /64, and pick a new address for each call);
//! - in all, [`MAX_HANDSHAKES`].
//!
//! A new handshake is never refused for want of a slot: it takes the slot
//! of the oldest handshake of its own source when that source is at its
//! share, else, when all are taken, the oldest of the source holding the
//! most. An idle holder thus keeps a slot only until someone else needs
//! it, while a coworker's handshake (a few round trips) completes long
//! before a flood cycles through every slot. Refusing newcomers instead
//! would let whoever came first hold the node for good.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::future::AbortHandle;

/// Handshakes in progress at once, in all.
pub(crate) const MAX_HANDSHAKES: usize = 32;
/// Handshakes in progress at once from one source.
pub(crate) const PER_SOURCE: usize = 4;

/// Where a connection comes from, as far as sharing slots goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    /// The first 64 bits of the address.
    V6Prefix(u64),
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => Self::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(v4) => write!(f, "{v4}"),
            Self::V6Prefix(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64)),
        }
    }
}

struct Slot {
    id: u64,
    abort: AbortHandle,
}

/// The slots in use; see the module docs.
pub(crate) struct InProgress {
    total: usize,
    per_source: usize,
    next_id: u64,
    /// Each source's handshakes, oldest first.
    by_source: HashMap<Source, VecDeque<Slot>>,
    held: usize,
}

impl InProgress {
    pub(crate) fn new(total: usize, per_source: usize) -> Self {
        Self {
            total: total.max(1),
            per_source: per_source.clamp(1, total.max(1)),
            next_id: 0,
            by_source: HashMap::new(),
            held: 0,
        }
    }

    /// Gives a new handshake from `source` a slot, first aborting the one
    /// it takes over, if any; the new slot's id, for [`end`](Self::end).
    pub(crate) fn start(&mut self, source: Source, abort: AbortHandle) -> u64 {
        let own = self.by_source.get(&source).map_or(0, VecDeque::len);
        let victim = if own >= self.per_source {
            Some(source)
        } else if self.held >= self.total {
            self.holding_most()
        } else {
            None
        };
        if let Some(victim) = victim {
            self.evict_oldest(victim);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_source
            .entry(source)
            .or_default()
            .push_back(Slot { id, abort });
        self.held += 1;
        id
    }

    /// Frees the slot `id` of `source`, if it still has it.
    pub(crate) fn end(&mut self, source: Source, id: u64) {
        let Some(slots) = self.by_source.get_mut(&source) else {
            return;
        };
        if let Some(at) = slots.iter().position(|slot| slot.id == id) {
            slots.remove(at);
            self.held -= 1;
        }
        if slots.is_empty() {
            self.by_source.remove(&source);
        }
    }

    /// The source with the most slots; of those, the one with the oldest.
    fn holding_most(&self) -> Option<Source> {
        (self.by_source.iter())
            .filter_map(|(source, slots)| Some((*source, slots.len(), slots.front()?.id)))
            .max_by_key(|(_, held, oldest)| (*held, std::cmp::Reverse(*oldest)))
            .map(|(source, _, _)| source)
    }

    fn evict_oldest(&mut self, source: Source) {
        let Some(slots) = self.by_source.get_mut(&source) else {
            return;
        };
        if let Some(oldest) = slots.pop_front() {
            tracing::debug!(%source, "a handshake gives way to a newer one");
            oldest.abort.abort();
            self.held -= 1;
        }
        if slots.is_empty() {
            self.by_source.remove(&source);
        }
    }

    /// Slots held, in all and by `source`.
    #[cfg(test)]
    pub(crate) fn held(&self, source: Source) -> (usize, usize) {
        let own = self.by_source.get(&source).map_or(0, VecDeque::len);
        (self.held, own)
    }
}

#[cfg(test)]
mod tests {
    use futures::future::AbortRegistration;

    use super::*;

    fn handle() -> (AbortHandle, AbortRegistration) {
        AbortHandle::new_pair()
    }

    fn v4(n: u32) -> Source {
        Source::of(IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 0, 0, 0)) + n,
        )))
    }

    /// One source opens idle connections as fast as it may: it holds at
    /// most its share, its newest ones, and others still get in.
    #[test]
    fn one_source_holds_at_most_its_share() {
        let mut slots = InProgress::new(MAX_HANDSHAKES, PER_SOURCE);
        let flooder = v4(1);
        let handles: Vec<AbortHandle> = (0..20)
            .map(|_| {
                let (abort, _) = handle();
                slots.start(flooder, abort.clone());
                abort
            })
            .collect();
        assert_eq!(slots.held(flooder), (PER_SOURCE, PER_SOURCE));
        assert!(
            handles[..20 - PER_SOURCE]
                .iter()
                .all(AbortHandle::is_aborted)
        );
        assert!(
            !handles[20 - PER_SOURCE..]
                .iter()
                .any(AbortHandle::is_aborted)
        );
        let (coworker, _) = handle();
        slots.start(v4(2), coworker.clone());
        assert!(!coworker.is_aborted());
        assert_eq!(slots.held(v4(2)), (PER_SOURCE + 1, 1));
    }

    /// A machine with a /64 picks a new address for every call: it is one
    /// source all the same.
    #[test]
    fn an_ipv6_64_is_one_source() {
        let mut slots = InProgress::new(MAX_HANDSHAKES, PER_SOURCE);
        let prefix: u128 = 0x2001_0db8_0001_0002 << 64;
        for host in 1..=100u128 {
            let source = Source::of(IpAddr::V6(Ipv6Addr::from(prefix | host)));
            slots.start(source, handle().0);
        }
        let one = Source::of("2001:db8:1:2::ffff".parse().unwrap());
        assert_eq!(slots.held(one), (PER_SOURCE, PER_SOURCE));
        assert_eq!(one.to_string(), "2001:db8:1:2::/64");
        // An IPv4 address seen through a dual-stack socket is that address.
        assert_eq!(
            Source::of("::ffff:10.0.0.1".parse().unwrap()),
            Source::of("10.0.0.1".parse().unwrap())
        );
    }

    /// Strangers on more addresses than there are slots: each newcomer
    /// takes the oldest slot, so the slots never all belong to whoever
    /// came first.
    #[test]
    fn when_all_are_taken_the_oldest_gives_way() {
        let mut slots = InProgress::new(MAX_HANDSHAKES, PER_SOURCE);
        let handles: Vec<AbortHandle> = (0..4097)
            .map(|n| {
                let (abort, _) = handle();
                slots.start(v4(n), abort.clone());
                abort
            })
            .collect();
        assert_eq!(slots.held(v4(0)).0, MAX_HANDSHAKES);
        assert!(
            !handles[4097 - MAX_HANDSHAKES..]
                .iter()
                .any(AbortHandle::is_aborted)
        );
        let (coworker, _) = handle();
        let id = slots.start(v4(10_000), coworker.clone());
        assert!(!coworker.is_aborted());
        assert!(
            handles[4097 - MAX_HANDSHAKES].is_aborted(),
            "the oldest gave way"
        );
        slots.end(v4(10_000), id);
        assert_eq!(slots.held(v4(10_000)), (MAX_HANDSHAKES - 1, 0));
        // Ending one that already gave way changes nothing.
        slots.end(v4(0), 0);
        assert_eq!(slots.held(v4(0)).0, MAX_HANDSHAKES - 1);
    }

    /// The source holding the most gives way first, whoever is oldest.
    #[test]
    fn the_source_holding_most_gives_way_first() {
        let mut slots = InProgress::new(8, 4);
        let (lone, _) = handle();
        slots.start(v4(1), lone.clone());
        let greedy: Vec<AbortHandle> = (0..4)
            .map(|_| {
                let (abort, _) = handle();
                slots.start(v4(2), abort.clone());
                abort
            })
            .collect();
        for n in 3..6 {
            slots.start(v4(n), handle().0);
        }
        assert_eq!(slots.held(v4(1)).0, 8);
        slots.start(v4(9), handle().0);
        assert!(!lone.is_aborted());
        assert!(greedy[0].is_aborted());
        assert_eq!(slots.held(v4(2)), (8, 3));
    }
}
