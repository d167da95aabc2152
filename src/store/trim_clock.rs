//! Trim's "now": the wall clock, held back for a while after it jumps
//! forward.
//!
//! Use is recorded in mtimes, which are wall-clock times, so trim must
//! compare them with the wall clock. But a clock set forward (by hand, or
//! by NTP on a machine that booted with a wrong clock) makes every file
//! look older by the jump, and a jump past the grace would let a trim
//! remove files that a running `go` holds. So each trim leaves an
//! [`Anchor`] in the store's `last-trim` file: the boot it ran in, the boot
//! clock (`CLOCK_BOOTTIME`: it counts suspend and cannot be set), and the
//! wall time it took as "now". The next trim in the same boot knows how
//! much time really passed, and when the wall clock ran ahead by more than
//! [`SLACK`], it takes the anchor's time plus the boot clock's as "now",
//! for [`USE_GRACE`] of boot time from when it noticed. Files last used
//! before the jump then have their true age; files used after it look
//! younger than they are (kept longer, never removed early). Once the hold
//! is over, every file used before the jump was used at least
//! [`USE_GRACE`] ago, so the wall clock is safe again, and trim takes it.
//!
//! A clock set back needs no anchor: a file whose mtime lies in the future
//! counts as just used, so it is kept (until the clock passes its mtime
//! and it ages as any other).
//!
//! What it cannot see: a jump before the first trim of a boot (the anchor
//! is from another boot, so the wall clock is all there is), and any jump
//! on systems without a boot clock and a boot ID (other than Linux), where
//! trim takes the wall clock as it is.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::USE_GRACE;

/// How far the wall clock may run ahead of the boot clock between two
/// trims before it counts as a jump: NTP slews a clock by at most 500 ppm
/// (43 s a day), and a jump taken for drift only keeps files a little
/// longer.
pub(crate) const SLACK: Duration = Duration::from_secs(60);

/// Where a process stands on the boot clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Boot {
    /// Which boot (Linux: `/proc/sys/kernel/random/boot_id`).
    pub id: String,
    /// Time since the boot, suspend included.
    pub elapsed: Duration,
}

/// Source of [`Boot`], injectable so tests can move the wall clock alone.
pub(crate) type BootClock = Arc<dyn Fn() -> Option<Boot> + Send + Sync>;

/// This machine's boot clock; `None` where there is none to trust.
pub(crate) fn system_boot_clock() -> Option<Boot> {
    #[cfg(target_os = "linux")]
    {
        let id = boot_id()?;
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Some(Boot {
            id: id.to_owned(),
            elapsed: Duration::new(
                u64::try_from(now.tv_sec).ok()?,
                u32::try_from(now.tv_nsec).ok()?,
            ),
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Which boot this is (Linux: `/proc/sys/kernel/random/boot_id`); `None`
/// where there is no such ID. Trim's clock and the store's dirty markers
/// (`dirty`) tell boots apart by it.
pub(crate) fn boot_id() -> Option<&'static str> {
    #[cfg(target_os = "linux")]
    {
        static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        BOOT_ID
            .get_or_init(|| {
                let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
                let id = id.trim();
                (!id.is_empty() && !id.contains(char::is_whitespace)).then(|| id.to_owned())
            })
            .as_deref()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// What a trim leaves for the next one, as one line of `last-trim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Anchor {
    boot: String,
    /// The boot clock when `wall` was taken as "now".
    at: Duration,
    wall: SystemTime,
    /// While the wall clock is held back (it ran ahead): until when, on
    /// the boot clock.
    hold_until: Option<Duration>,
}

/// The first word of an anchor line; any other line is no anchor.
const VERSION: &str = "anchor-v1";

impl Anchor {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut fields = text.strip_suffix('\n')?.split(' ');
        if fields.next()? != VERSION {
            return None;
        }
        let boot = fields.next()?.to_owned();
        let at = Duration::from_nanos(fields.next()?.parse().ok()?);
        let wall = UNIX_EPOCH + Duration::from_nanos(fields.next()?.parse().ok()?);
        let hold_until = match fields.next()? {
            "-" => None,
            nanos => Some(Duration::from_nanos(nanos.parse().ok()?)),
        };
        if fields.next().is_some() || boot.is_empty() {
            return None;
        }
        Some(Self {
            boot,
            at,
            wall,
            hold_until,
        })
    }

    pub(crate) fn line(&self) -> String {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let wall = nanos(self.wall.duration_since(UNIX_EPOCH).unwrap_or_default());
        let hold = self
            .hold_until
            .map_or_else(|| "-".to_owned(), |until| nanos(until).to_string());
        format!("{VERSION} {} {} {wall} {hold}\n", self.boot, nanos(self.at))
    }
}

/// Trim's "now" from the wall clock `wall`, the boot clock `boot` and the
/// last trim's anchor; and the anchor this trim leaves (none without a
/// boot clock).
pub(crate) fn trim_now(
    last: Option<&Anchor>,
    wall: SystemTime,
    boot: Option<&Boot>,
) -> (SystemTime, Option<Anchor>) {
    let Some(boot) = boot else {
        return (wall, None);
    };
    let fresh = Anchor {
        boot: boot.id.clone(),
        at: boot.elapsed,
        wall,
        hold_until: None,
    };
    let Some(last) = last.filter(|last| last.boot == boot.id && last.at <= boot.elapsed) else {
        return (wall, Some(fresh));
    };
    let trusted = last.wall + (boot.elapsed - last.at);
    let ran_ahead = wall
        .duration_since(trusted)
        .is_ok_and(|ahead| ahead > SLACK);
    if !ran_ahead {
        // In step, or set back (files used before then look younger).
        return (wall, Some(fresh));
    }
    let hold_until = last.hold_until.unwrap_or(boot.elapsed + USE_GRACE);
    if boot.elapsed >= hold_until {
        // Everything used before the jump was used a grace ago.
        return (wall, Some(fresh));
    }
    if last.hold_until.is_none() {
        tracing::debug!(
            "the clock jumped {} ahead since the last trim; trimming by the boot clock for {}",
            humantime::format_duration(wall.duration_since(trusted).unwrap_or_default()),
            humantime::format_duration(USE_GRACE)
        );
    }
    (
        trusted,
        Some(Anchor {
            hold_until: Some(hold_until),
            ..last.clone()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn boot(id: &str, elapsed: Duration) -> Boot {
        Boot {
            id: id.to_owned(),
            elapsed,
        }
    }

    #[test]
    fn anchors_round_trip_and_bad_lines_are_none() {
        let (_, anchor) = trim_now(None, UNIX_EPOCH + HOUR * 500_000, Some(&boot("b1", HOUR)));
        let anchor = anchor.unwrap();
        assert_eq!(Anchor::parse(&anchor.line()), Some(anchor.clone()));
        let held = Anchor {
            hold_until: Some(HOUR * 3),
            ..anchor
        };
        assert_eq!(Anchor::parse(&held.line()), Some(held));
        for bad in [
            "",
            "\n",
            "anchor-v1 b1 1 2\n",
            "anchor-v2 b1 1 2 -\n",
            "anchor-v1 b1 x 2 -\n",
        ] {
            assert_eq!(Anchor::parse(bad), None, "{bad:?}");
        }
    }

    /// The clock jumps a day ahead between two trims an hour apart: trim
    /// keeps the boot clock's time for the grace, then takes the wall
    /// clock again.
    #[test]
    fn a_forward_jump_is_held_back_for_the_grace() {
        let start = UNIX_EPOCH + HOUR * 500_000;
        let (now, anchor) = trim_now(None, start, Some(&boot("b1", HOUR)));
        assert_eq!(now, start);
        let jumped = start + HOUR + HOUR * 24;
        let (now, anchor) = trim_now(anchor.as_ref(), jumped, Some(&boot("b1", HOUR * 2)));
        assert_eq!(now, start + HOUR, "the boot clock's time");
        // Still held an hour later (the grace is 2 h from noticing).
        let (now, anchor) = trim_now(anchor.as_ref(), jumped + HOUR, Some(&boot("b1", HOUR * 3)));
        assert_eq!(now, start + HOUR * 2);
        // Over: the wall clock again, and a fresh anchor.
        let later = jumped + HOUR * 2;
        let (now, anchor) = trim_now(anchor.as_ref(), later, Some(&boot("b1", HOUR * 4)));
        assert_eq!(now, later);
        let (now, _) = trim_now(anchor.as_ref(), later + HOUR, Some(&boot("b1", HOUR * 5)));
        assert_eq!(now, later + HOUR, "no jump since");
    }

    #[test]
    fn drift_within_slack_another_boot_or_no_boot_clock_take_the_wall_clock() {
        let start = UNIX_EPOCH + HOUR * 500_000;
        let (_, anchor) = trim_now(None, start, Some(&boot("b1", HOUR)));
        let drifted = start + HOUR + SLACK / 2;
        let (now, _) = trim_now(anchor.as_ref(), drifted, Some(&boot("b1", HOUR * 2)));
        assert_eq!(now, drifted);
        let (now, _) = trim_now(anchor.as_ref(), start + HOUR * 48, Some(&boot("b2", HOUR)));
        assert_eq!(now, start + HOUR * 48, "a new boot: nothing to compare");
        let (now, none) = trim_now(anchor.as_ref(), start + HOUR * 48, None);
        assert_eq!((now, none), (start + HOUR * 48, None));
        // Set back: the wall clock too.
        let (now, _) = trim_now(anchor.as_ref(), start - HOUR, Some(&boot("b1", HOUR * 2)));
        assert_eq!(now, start - HOUR);
    }
}
