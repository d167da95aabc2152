//! The daemon's memory of recent builds, for `warren trace`: each
//! helper's report of its lookups ([`crate::ipc::trace::Build`]), the last
//! [`CAPACITY`] lookups over all builds, in memory only.

use std::collections::VecDeque;

use crate::ipc::trace::{Build, CAPACITY};

/// The daemon's recent builds, at most [`CAPACITY`] lookups in all.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    builds: VecDeque<Build>,
    held: usize,
    next: u64,
}

impl Ring {
    pub(crate) fn add(&mut self, mut build: Build) {
        self.next += 1;
        build.number = self.next;
        if build.lookups.len() > CAPACITY {
            build.lookups.drain(..build.lookups.len() - CAPACITY);
        }
        self.held += build.lookups.len();
        self.builds.push_back(build);
        while self.held > CAPACITY {
            let Some(oldest) = self.builds.front_mut() else {
                break;
            };
            let drop = (self.held - CAPACITY).min(oldest.lookups.len());
            oldest.lookups.drain(..drop);
            self.held -= drop;
            if oldest.lookups.is_empty() {
                self.builds.pop_front();
            }
        }
    }

    /// The builds held, oldest first.
    pub(crate) fn builds(&self) -> Vec<Build> {
        self.builds.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::trace::tests::build;

    #[test]
    fn the_ring_keeps_the_newest_lookups_and_numbers_builds() {
        let mut ring = Ring::default();
        ring.add(build(6_000));
        ring.add(build(6_000));
        let builds = ring.builds();
        assert_eq!(builds.iter().map(|b| b.number).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(builds[0].lookups.len(), 4_000);
        // The oldest lookups went: the first build keeps its last ones.
        assert_eq!(
            builds[0].lookups[0].action.to_hex(),
            format!("{:064x}", 2_000)
        );
        assert_eq!(builds[1].lookups.len(), 6_000);
        ring.add(build(CAPACITY + 5));
        let builds = ring.builds();
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].number, 3);
        assert_eq!(builds[0].lookups.len(), CAPACITY);
    }
}
