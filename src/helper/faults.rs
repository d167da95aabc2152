//! Faults of the store while serving one `go` command, told once.
//!
//! A full disk fails every put. A warning for each flooded the terminal
//! (787 lines for a `go build std`), where `go`'s own cache prints nothing
//! and `go` builds anyway. So a failed put is logged at debug level and
//! counted here, and the helper prints one warning when `go` is done
//! ([`Faults::summary`]): how many puts failed, the first reason, and what
//! to do. (A put the store refuses outright, read-only say, is still given
//! a scratch file by the session, so `go` has its file.)
//!
//! A full disk is also met before it costs a put: the session asks
//! [`Faults::before_put`] about each body, and looks at the store's
//! filesystem with `statvfs` (again only once the bytes put since the last
//! look could have used up what was free). When a put would leave less
//! than [`HEADROOM`] free, the store is trimmed to make room
//! ([`Faults::new`]'s `make_room`: least recently used entries, never one
//! used within the trim grace), once per `go` command, on a thread of its
//! own: the reader goes on with the build. Only a body that does not fit
//! at all waits for that trim (at most [`ROOM_WAIT`]), because a put
//! answered with an error fails the builds that need its export data,
//! which costs more than the wait. The first put that fails for a full
//! disk starts the trim too, if nothing did yet.

use std::error::Error;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Room kept free beyond a body's size before a put is written.
const MARGIN: u64 = 1 << 20;
/// A put that would leave less than this free starts the trim that makes
/// room, in the background: several of the biggest bodies of a build
/// (`go build std`'s largest is 12.6 MB), so that it is done before the
/// disk is full.
pub(crate) const HEADROOM: u64 = 256 << 20;
/// How long a put that does not fit waits for the trim that makes room.
pub(crate) const ROOM_WAIT: Duration = Duration::from_secs(10);

/// See the module docs.
pub(crate) struct Faults {
    inner: Mutex<Inner>,
    /// Trims the store to make room; the bytes it freed. Called at most
    /// once, on a thread of its own.
    make_room: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Bytes free on the store's filesystem, if that can be told.
    free_space: Box<dyn Fn() -> Option<u64> + Send + Sync>,
    /// The trim that makes room, and what it freed once done.
    room: Arc<(Mutex<Room>, Condvar)>,
}

/// Where the trim that makes room stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    NotStarted,
    Running,
    /// Done, having freed this many bytes.
    Made(u64),
}

#[derive(Default)]
struct Inner {
    failed_puts: u64,
    first: Option<String>,
    full: bool,
    read_only: bool,
    /// Bytes that may still be put before free space is looked at again.
    unchecked_room: u64,
}

impl Faults {
    pub(crate) fn new(
        make_room: impl Fn() -> u64 + Send + Sync + 'static,
        free_space: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Mutex::default(),
            make_room: Arc::new(make_room),
            free_space: Box::new(free_space),
            room: Arc::new((Mutex::new(Room::NotStarted), Condvar::new())),
        }
    }

    fn room(&self) -> Room {
        *self.room.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a put of `size` bytes is written: starts making room when
    /// the disk is getting full, and waits for it only if the body does
    /// not fit. Costs a `statvfs` only now and then.
    pub(crate) fn before_put(&self, size: u64) {
        if matches!(self.room(), Room::Made(_)) {
            return;
        }
        let needed = size.saturating_add(MARGIN);
        let free = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if inner.unchecked_room >= needed {
                inner.unchecked_room -= needed;
                return;
            }
            // Unknown: let the put tell.
            let Some(free) = (self.free_space)() else {
                return;
            };
            inner.unchecked_room = free.saturating_sub(needed.saturating_add(HEADROOM));
            free
        };
        if free >= needed.saturating_add(HEADROOM) {
            return;
        }
        self.start_making_room();
        if free < needed {
            self.wait_for_room(ROOM_WAIT);
        }
    }

    /// Starts the trim that makes room, once per `go` command.
    fn start_making_room(&self) {
        {
            let mut room = self.room.0.lock().unwrap_or_else(|p| p.into_inner());
            if *room != Room::NotStarted {
                return;
            }
            *room = Room::Running;
        }
        let (make_room, done) = (self.make_room.clone(), self.room.clone());
        let finish = move |freed| {
            tracing::debug!("the store's disk is full: trimmed {freed} bytes to make room");
            *done.0.lock().unwrap_or_else(|p| p.into_inner()) = Room::Made(freed);
            done.1.notify_all();
        };
        let spawned = std::thread::Builder::new()
            .name("warren-make-room".into())
            .spawn({
                let finish = finish.clone();
                move || finish(make_room())
            });
        if spawned.is_err() {
            // No thread to spare: here, then.
            finish((self.make_room)());
        }
    }

    /// Waits up to `timeout` for the trim that makes room, if it runs.
    fn wait_for_room(&self, timeout: Duration) {
        let (room, done) = &*self.room;
        let room = room.lock().unwrap_or_else(|p| p.into_inner());
        let _ = done.wait_timeout_while(room, timeout, |room| *room == Room::Running);
    }

    /// A put that could not be stored, and why.
    pub(crate) fn put_failed(&self, why: &(dyn Error + 'static)) {
        let message = crate::logging::chain(why);
        tracing::debug!("put failed: {message}");
        let full = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.failed_puts += 1;
            inner.first.get_or_insert(message);
            let full = has_kind(why, FULL);
            inner.full |= full;
            inner.read_only |= has_kind(why, READ_ONLY);
            full
        };
        if full {
            self.start_making_room();
        }
    }

    /// The one warning for the whole `go` command, if any: puts that
    /// failed, or a disk so full that the store was trimmed.
    pub(crate) fn summary(&self) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let freed = match self.room() {
            Room::Made(bytes) if bytes > 0 => Some(format!(
                "; trimmed {} of entries unused for 2 hours to make room",
                bytesize::ByteSize(bytes).display().iec()
            )),
            Room::Running => {
                Some("; started trimming entries unused for 2 hours to make room".to_owned())
            }
            _ => None,
        };
        let Some(first) = inner.first.as_deref() else {
            return freed.map(|freed| {
                format!(
                    "the store's disk was full{freed}; free space on that disk, or lower max-size"
                )
            });
        };
        let puts = match inner.failed_puts {
            1 => "1 put".to_owned(),
            n => format!("{n} puts"),
        };
        let fix = if inner.full {
            "; free space on the store's disk, or lower max-size"
        } else if inner.read_only {
            "; make the store writable again, or point WARREN_DIR at another directory"
        } else {
            ""
        };
        Some(format!(
            "{puts} could not be stored, so go will build those again next time (first: {first}){}{fix}",
            freed.unwrap_or_default()
        ))
    }
}

/// A disk (or quota) that is full.
const FULL: &[io::ErrorKind] = &[io::ErrorKind::StorageFull, io::ErrorKind::QuotaExceeded];
/// A store that cannot be written at all.
const READ_ONLY: &[io::ErrorKind] = &[
    io::ErrorKind::ReadOnlyFilesystem,
    io::ErrorKind::PermissionDenied,
];

/// Whether `error`, or one of its sources, is an I/O error of one of `kinds`.
fn has_kind(error: &(dyn Error + 'static), kinds: &[io::ErrorKind]) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<io::Error>()
            && kinds.contains(&io.kind())
        {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::sync::mpsc::sync_channel;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("storing object")]
    struct Wrapped(#[source] io::Error);

    /// Waits until the trim that makes room is done.
    fn settle(faults: &Faults) {
        faults.wait_for_room(Duration::from_secs(10));
        assert!(matches!(faults.room(), Room::Made(_) | Room::NotStarted));
    }

    #[test]
    fn many_failed_puts_make_one_summary_and_one_trim() {
        let trims = Arc::new(AtomicU32::new(0));
        let faults = {
            let trims = trims.clone();
            Faults::new(
                move || {
                    trims.fetch_add(1, Ordering::Relaxed);
                    0
                },
                || None,
            )
        };
        assert_eq!(faults.summary(), None);
        for _ in 0..787 {
            faults.put_failed(&Wrapped(io::Error::from(io::ErrorKind::StorageFull)));
        }
        settle(&faults);
        assert_eq!(trims.load(Ordering::Relaxed), 1);
        let summary = faults.summary().unwrap();
        assert!(
            summary.starts_with("787 puts could not be stored"),
            "{summary}"
        );
        assert!(summary.contains("storing object: "), "{summary}");
        assert!(summary.contains("free space"), "{summary}");
        assert_eq!(summary.lines().count(), 1);
    }

    /// Making room walks the store, which takes a while on a big one; the
    /// reader thread, which every request of the build waits behind, must
    /// not: the trim starts in the background while the body still fits.
    #[test]
    fn a_put_that_nearly_fills_the_disk_starts_the_trim_without_waiting_for_it() {
        let (started, trim_started) = sync_channel(1);
        let (release, released) = sync_channel::<()>(1);
        let released = Mutex::new(released);
        let faults = Arc::new(Faults::new(
            move || {
                let _ = started.send(());
                let _ = released
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
                5 * MARGIN
            },
            || Some(HEADROOM / 2),
        ));
        let (returned, put_went_on) = sync_channel(1);
        {
            let faults = faults.clone();
            std::thread::spawn(move || {
                faults.before_put(1000);
                let _ = returned.send(());
            });
        }
        trim_started
            .recv_timeout(Duration::from_secs(10))
            .expect("no trim started with the disk nearly full");
        put_went_on
            .recv_timeout(Duration::from_secs(5))
            .expect("the put waited for the trim, though its body fits");
        assert!(faults.summary().unwrap().contains("started trimming"));
        release.send(()).unwrap();
        settle(&faults);
        let summary = faults.summary().unwrap();
        assert!(
            summary.starts_with("the store's disk was full; trimmed 5.0 MiB"),
            "{summary}"
        );
    }

    #[test]
    fn a_put_that_does_not_fit_waits_for_the_trim_and_it_runs_once() {
        let free = Arc::new(AtomicU64::new(HEADROOM + 10 * MARGIN));
        let looks = Arc::new(AtomicU32::new(0));
        let trims = Arc::new(AtomicU32::new(0));
        let faults = {
            let (free, looks, trims) = (free.clone(), looks.clone(), trims.clone());
            let freed = free.clone();
            Faults::new(
                move || {
                    std::thread::sleep(Duration::from_millis(200));
                    trims.fetch_add(1, Ordering::Relaxed);
                    freed.fetch_add(100 * MARGIN, Ordering::Relaxed);
                    100 * MARGIN
                },
                move || {
                    looks.fetch_add(1, Ordering::Relaxed);
                    Some(free.load(Ordering::Relaxed))
                },
            )
        };
        // Small puts with room to spare: free space is looked at once.
        for _ in 0..4 {
            faults.before_put(1000);
        }
        assert_eq!(looks.load(Ordering::Relaxed), 1);
        assert_eq!(trims.load(Ordering::Relaxed), 0);
        assert_eq!(faults.summary(), None);
        // The disk filled up meanwhile; a body that does not fit waits.
        free.store(MARGIN, Ordering::Relaxed);
        faults.before_put(9 * MARGIN);
        assert_eq!(
            trims.load(Ordering::Relaxed),
            1,
            "did not wait for the trim"
        );
        // Once per go command, whatever comes next.
        faults.before_put(1000 * MARGIN);
        faults.put_failed(&io::Error::from(io::ErrorKind::StorageFull));
        settle(&faults);
        assert_eq!(trims.load(Ordering::Relaxed), 1);
        let summary = faults.summary().unwrap();
        assert!(summary.contains("trimmed 100.0 MiB"), "{summary}");
    }

    #[test]
    fn other_failures_are_summarized_without_a_trim() {
        let faults = Faults::new(|| panic!("not full"), || None);
        faults.put_failed(&io::Error::from(io::ErrorKind::ReadOnlyFilesystem));
        let summary = faults.summary().unwrap();
        assert!(summary.starts_with("1 put could not"), "{summary}");
        assert!(!summary.contains("free space"), "{summary}");
        assert!(summary.contains("make the store writable"), "{summary}");
    }
}
