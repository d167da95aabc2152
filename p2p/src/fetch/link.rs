//! Whether to ask a peer for compressed bodies: try both, keep the faster.
//!
//! Compression ([`crate::protocol::compress`]) pays when the link is slower than the
//! machines: on 1 Gb/s Ethernet or Wi-Fi a from-peer build then moves a
//! quarter of the bytes. Where the link is as fast as the machines (10 Gb/s,
//! or hosts sharing one machine's cores), compressing only adds work
//! (docs/benchmarks.md, "Compressed bodies"). The requester cannot tell which case it is in from one rate: a body
//! that comes slowly may be held up by the link, by the sender's CPU or by
//! its own (a build runs beside it). So under [`Compression::Auto`] it
//! measures both, in turns, under the same load:
//!
//! 1. it asks for raw and compressed bodies by turns, [`SLICE`] bytes at a
//!    time, [`SLICES`] turns in all (turns, not one trial each: the start
//!    of a build, with the connection's window still opening and the build
//!    busiest, would weigh on whichever came first);
//! 2. it keeps compressing if that delivered bytes at least [`BETTER`]
//!    times as fast, and asks for raw bodies otherwise;
//! 3. after [`RETRY`] more bytes it tries both again (the load, or the
//!    link, may have changed).
//!
//! A rate is the bytes of bodies (as stored, decoded) that arrived with one
//! encoding, over their share of the time that bodies were being received
//! (each from after its header to its commit). Bodies share one connection
//! at once, so one body's own rate would say little; time spent waiting for
//! the next header is not the link's. A new connection starts over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Compression;

/// Bytes measured per turn.
pub(crate) const SLICE: u64 = 2 << 20;
/// Turns before choosing, raw and compressed alternately.
pub(crate) const SLICES: u32 = 8;
/// How much faster compressed bodies must come to be kept.
pub(crate) const BETTER: f64 = 1.2;
/// Bytes after which both are tried again.
pub(crate) const RETRY: u64 = 1 << 30;

/// What a requester measures of one peer's link, over one connection.
#[derive(Debug, Default)]
pub(crate) struct LinkMeter {
    state: Mutex<State>,
}

/// Per encoding, indexed raw (0) and compressed (1): bodies on their way,
/// bytes that arrived, and their share of the time. Bodies on their way
/// side by side share the connection, so each interval of time is shared
/// among them: a raw body takes `1 / n` of it, with `n` on their way. Time
/// with none on their way (waiting for the next header) is nobody's.
#[derive(Debug, Default)]
struct State {
    phase: Phase,
    active: [u32; 2],
    bytes: [u64; 2],
    time: [Duration; 2],
    last_event: Option<Instant>,
    /// Bytes since the choice was made.
    since_choice: u64,
    /// A choice not yet reported by [`LinkMeter::take_choice`].
    news: Option<Choice>,
}

/// What the trials measured, and what was chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Choice {
    pub(crate) compress: bool,
    /// Bytes per second, raw and compressed.
    pub(crate) raw: f64,
    pub(crate) zstd: f64,
}
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Measuring: even turns raw, odd ones compressed.
    Trying { turn: u32 },
    /// Chosen: compress or not.
    Chosen { compress: bool },
}

impl Default for Phase {
    fn default() -> Self {
        Self::Trying { turn: 0 }
    }
}

/// One body being received; see [`LinkMeter::receiving`].
#[derive(Debug)]
pub(crate) struct Receiving<'a> {
    meter: &'a LinkMeter,
    compressed: bool,
    bytes: u64,
}

impl Receiving<'_> {
    /// The body arrived whole, `bytes` long (decoded): they count.
    pub(crate) fn arrived(mut self, bytes: u64) {
        self.bytes = bytes;
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.meter.end(self.compressed, self.bytes, Instant::now());
    }
}

impl LinkMeter {
    /// Starts timing a body sent raw or `compressed`. If it is dropped
    /// without [`Receiving::arrived`], its time counts but no bytes.
    pub(crate) fn receiving(&self, compressed: bool) -> Receiving<'_> {
        self.begin(compressed, Instant::now());
        Receiving {
            meter: self,
            compressed,
            bytes: 0,
        }
    }

    fn begin(&self, compressed: bool, now: Instant) {
        let mut state = self.state.lock().expect("lock not poisoned");
        state.share_time(now);
        state.active[usize::from(compressed)] += 1;
    }

    fn end(&self, compressed: bool, bytes: u64, now: Instant) {
        let mut state = self.state.lock().expect("lock not poisoned");
        state.share_time(now);
        let index = usize::from(compressed);
        state.active[index] = state.active[index].saturating_sub(1);
        state.bytes[index] += bytes;
        state.advance(bytes);
    }

    /// Bytes measured so far in the current trials: raw, compressed.
    #[cfg(test)]
    pub(crate) fn measured(&self) -> (u64, u64) {
        let state = self.state.lock().expect("lock not poisoned");
        (state.bytes[0], state.bytes[1])
    }

    /// The choice made since the last call, if one was.
    pub(crate) fn take_choice(&self) -> Option<Choice> {
        self.state.lock().expect("lock not poisoned").news.take()
    }

    /// What is asked for under `mode` once it is settled: `None` while
    /// `Auto` is still trying both.
    pub(crate) fn settled(&self, mode: Compression) -> Option<bool> {
        match mode {
            Compression::Auto => match self.state.lock().expect("lock not poisoned").phase {
                Phase::Trying { .. } => None,
                Phase::Chosen { compress } => Some(compress),
            },
            _ => Some(self.compress(mode)),
        }
    }

    /// Whether to ask for compressed bodies under `mode`.
    pub(crate) fn compress(&self, mode: Compression) -> bool {
        match mode {
            Compression::Always => true,
            Compression::Never => false,
            Compression::Auto => match self.state.lock().expect("lock not poisoned").phase {
                Phase::Trying { turn } => turn % 2 == 1,
                Phase::Chosen { compress } => compress,
            },
        }
    }
}

impl State {
    /// Shares the time since the last body began or ended among the
    /// bodies on their way then.
    fn share_time(&mut self, now: Instant) {
        let [raw, zstd] = self.active;
        if let Some(last) = self.last_event
            && raw + zstd > 0
        {
            let elapsed = now.saturating_duration_since(last);
            self.time[0] += elapsed * raw / (raw + zstd);
            self.time[1] += elapsed * zstd / (raw + zstd);
        }
        self.last_event = Some(now);
    }

    fn rate(&self, index: usize) -> f64 {
        self.bytes[index] as f64 / self.time[index].as_secs_f64().max(1e-6)
    }

    /// Moves on once the current turn has measured enough.
    fn advance(&mut self, bytes: u64) {
        match self.phase {
            Phase::Trying { mut turn } => {
                // Bytes of a later turn's encoding may have come early.
                while self.bytes[turn as usize % 2] >= u64::from(turn / 2 + 1) * SLICE {
                    turn += 1;
                }
                if turn < SLICES {
                    self.phase = Phase::Trying { turn };
                    return;
                }
                let (raw, zstd) = (self.rate(0), self.rate(1));
                let compress = zstd >= raw * BETTER;
                self.news = Some(Choice {
                    compress,
                    raw,
                    zstd,
                });
                self.phase = Phase::Chosen { compress };
                self.since_choice = 0;
            }
            Phase::Chosen { .. } => {
                self.since_choice += bytes;
                if self.since_choice >= RETRY {
                    self.phase = Phase::default();
                    self.bytes = [0; 2];
                    self.time = [Duration::ZERO; 2];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use super::*;

    const MB: u64 = 1_000_000;
    const MS: Duration = Duration::from_millis(1);

    /// A link on which `side_by_side` bodies of `size` bytes (decoded) are
    /// always on their way: each takes `raw` or `zstd`, as the meter asked
    /// when it started, and the next starts as one ends. Runs until
    /// `bytes` arrived or, if `until_chosen`, a choice is made.
    struct Link {
        side_by_side: u32,
        size: u64,
        raw: Duration,
        zstd: Duration,
    }

    impl Link {
        fn run(&self, meter: &LinkMeter, bytes: u64, until_chosen: bool) {
            let t = Instant::now();
            let mut on_the_way = BinaryHeap::new();
            for slot in 0..self.side_by_side {
                let start = t + self.raw / self.side_by_side * slot;
                self.start(meter, start, &mut on_the_way);
            }
            let mut arrived = 0;
            while arrived < bytes {
                let Reverse((end, compressed)) = on_the_way.pop().unwrap();
                meter.end(compressed, self.size, end);
                arrived += self.size;
                if until_chosen && matches!(phase(meter), Phase::Chosen { .. }) {
                    return;
                }
                self.start(meter, end, &mut on_the_way);
            }
        }

        fn start(
            &self,
            meter: &LinkMeter,
            at: Instant,
            on_the_way: &mut BinaryHeap<Reverse<(Instant, bool)>>,
        ) {
            let compressed = meter.compress(Compression::Auto);
            meter.begin(compressed, at);
            let takes = if compressed { self.zstd } else { self.raw };
            on_the_way.push(Reverse((at + takes, compressed)));
        }
    }

    fn phase(meter: &LinkMeter) -> Phase {
        meter.state.lock().unwrap().phase
    }

    fn chosen(link: &Link) -> bool {
        let meter = LinkMeter::default();
        link.run(&meter, 1 << 40, true);
        let Phase::Chosen { compress } = phase(&meter) else {
            unreachable!()
        };
        assert_eq!(meter.compress(Compression::Auto), compress);
        assert_eq!(meter.settled(Compression::Auto), Some(compress));
        let choice = meter.take_choice().expect("news of the choice");
        assert_eq!(choice.compress, compress);
        assert!(choice.raw > 0.0 && choice.zstd > 0.0, "{choice:?}");
        assert_eq!(meter.take_choice(), None, "told once");
        compress
    }

    #[test]
    fn a_slow_link_is_compressed() {
        // 1 Gb/s: four 1 MB bodies side by side, each taking 34 ms raw and
        // a quarter of that compressed.
        let gigabit = Link {
            side_by_side: 4,
            size: MB,
            raw: 34 * MS,
            zstd: 9 * MS,
        };
        assert!(chosen(&gigabit));
    }

    #[test]
    fn a_fast_link_is_not() {
        // 400 MB/s raw shared by 8 streams (each sees 50 MB/s); compressing
        // costs the machines more than the link saves.
        let fast = Link {
            side_by_side: 8,
            size: 2 * MB,
            raw: 40 * MS,
            zstd: 46 * MS,
        };
        assert!(!chosen(&fast));
        // Nor is a slight gain worth it.
        let slight = Link {
            side_by_side: 1,
            size: MB,
            raw: 10 * MS,
            zstd: 9 * MS,
        };
        assert!(!chosen(&slight));
    }

    #[test]
    fn turns_alternate_by_bytes_then_both_are_tried_again() {
        let meter = LinkMeter::default();
        let one = |compressed| {
            meter.begin(compressed, Instant::now());
            meter.end(compressed, SLICE, Instant::now() + MS);
        };
        // Compressed bytes that come early do not end a raw turn...
        one(true);
        assert_eq!(phase(&meter), Phase::Trying { turn: 0 });
        assert!(!meter.compress(Compression::Auto));
        // ...but count for the compressed turn after it.
        one(false);
        assert_eq!(phase(&meter), Phase::Trying { turn: 2 });
        for turn in 2..SLICES {
            let compressed = turn % 2 == 1;
            assert_eq!(meter.compress(Compression::Auto), compressed, "turn {turn}");
            one(compressed);
        }
        assert!(matches!(phase(&meter), Phase::Chosen { .. }));
        let link = Link {
            side_by_side: 1,
            size: 64 * MB,
            raw: 100 * MS,
            zstd: 100 * MS,
        };
        link.run(&meter, RETRY + 64 * MB, false);
        assert!(matches!(phase(&meter), Phase::Trying { .. }));
    }

    #[test]
    fn always_and_never_do_not_measure() {
        let meter = LinkMeter::default();
        assert_eq!(meter.settled(Compression::Auto), None, "still trying");
        assert_eq!(meter.settled(Compression::Never), Some(false));
        assert_eq!(meter.settled(Compression::Always), Some(true));
        let slow = Link {
            side_by_side: 1,
            size: MB,
            raw: 100 * MS,
            zstd: 10 * MS,
        };
        slow.run(&meter, 1 << 40, true);
        assert!(!meter.compress(Compression::Never));
        assert!(LinkMeter::default().compress(Compression::Always));
    }

    #[test]
    fn a_body_that_failed_counts_its_time_not_its_bytes() {
        let meter = LinkMeter::default();
        drop(meter.receiving(false));
        assert_eq!(meter.measured(), (0, 0));
        meter.receiving(false).arrived(5 * MB);
        assert_eq!(meter.measured(), (5 * MB, 0));
        assert_eq!(meter.state.lock().unwrap().active, [0, 0]);
    }
}
