//! Linux: learning of new entries from inotify as they land, instead of
//! finding them at the next scan.
//!
//! One watch on the actions directory (for new shard directories) and one
//! per shard directory (for entries renamed in or removed). An entry lands
//! by a rename, which is one `IN_MOVED_TO` naming it, so indexing it costs
//! one small read, and a peer's summary can name it within milliseconds.
//! Anything inotify cannot tell us precisely (its queue overflowed, a watch
//! could not be added) asks for a scan instead; the periodic scan remains
//! as a safety net.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

/// What happened in the actions directory since the last look.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// (shard, file name) of entries that landed.
    pub(crate) landed: Vec<(String, String)>,
    /// (shard, file name) of entries that went.
    pub(crate) removed: Vec<(String, String)>,
    /// Shards to scan whole (new ones, whose first entries may predate
    /// their watch).
    pub(crate) shards: Vec<String>,
    /// Scan everything: inotify lost track.
    pub(crate) rescan: bool,
}

pub(crate) struct Watch {
    fd: OwnedFd,
    actions_dir: PathBuf,
    root: i32,
    shards: HashMap<i32, String>,
    buffer: Vec<MaybeUninit<u8>>,
}

const SHARD_EVENTS: WatchFlags = WatchFlags::MOVED_TO
    .union(WatchFlags::CREATE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::ONLYDIR);

impl Watch {
    /// Watches `actions_dir` (created if missing) and its shards; `None`
    /// if inotify is not available (then the index only scans).
    pub(crate) fn new(actions_dir: &Path) -> Option<Self> {
        crate::fsutil::private::create_dir_all(actions_dir).ok()?;
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?;
        let root = inotify::add_watch(
            &fd,
            actions_dir,
            WatchFlags::CREATE | WatchFlags::MOVED_TO | WatchFlags::ONLYDIR,
        )
        .ok()?;
        let mut watch = Self {
            fd,
            actions_dir: actions_dir.to_path_buf(),
            root,
            shards: HashMap::new(),
            buffer: vec![MaybeUninit::uninit(); 64 * 1024],
        };
        for shard in std::fs::read_dir(actions_dir).ok()?.flatten() {
            let name = shard.file_name().to_string_lossy().into_owned();
            watch.add_shard(&name).ok()?;
        }
        Some(watch)
    }

    fn add_shard(&mut self, name: &str) -> rustix::io::Result<()> {
        let wd = inotify::add_watch(&self.fd, self.actions_dir.join(name), SHARD_EVENTS)?;
        self.shards.insert(wd, name.to_owned());
        Ok(())
    }

    /// Waits up to `timeout` for changes; empty changes if none came.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Changes {
        let mut changes = Changes::default();
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return changes,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return changes,
            Err(_) => {
                changes.rescan = true;
                return changes;
            }
        }
        let mut new_shards = Vec::new();
        let mut reader = inotify::Reader::new(&self.fd, &mut self.buffer);
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => break,
                Err(_) => {
                    changes.rescan = true;
                    break;
                }
            };
            let flags = event.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                changes.rescan = true;
                continue;
            }
            let Some(name) = event.file_name().and_then(|name| name.to_str().ok()) else {
                continue;
            };
            if event.wd() == self.root {
                if flags.contains(ReadFlags::ISDIR) {
                    new_shards.push(name.to_owned());
                }
                continue;
            }
            let Some(shard) = self.shards.get(&event.wd()) else {
                continue;
            };
            let change = (shard.clone(), name.to_owned());
            if flags.intersects(ReadFlags::MOVED_TO | ReadFlags::CREATE) {
                changes.landed.push(change);
            } else if flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::DELETE) {
                changes.removed.push(change);
            }
        }
        for name in new_shards {
            if self.add_shard(&name).is_err() {
                changes.rescan = true;
            }
            changes.shards.push(name);
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_into_shards_and_new_shards_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let actions = dir.path().join("actions");
        std::fs::create_dir_all(actions.join("ab")).unwrap();
        let mut watch = Watch::new(&actions).unwrap();
        assert_eq!(watch.wait(Duration::from_millis(10)), Changes::default());

        let temp = actions.join("ab").join(".tmp1");
        std::fs::File::create(&temp).unwrap();
        std::fs::rename(&temp, actions.join("ab").join("abcd")).unwrap();
        std::fs::create_dir(actions.join("cd")).unwrap();
        let changes = watch.wait(Duration::from_secs(5));
        assert!(
            changes
                .landed
                .contains(&("ab".to_owned(), "abcd".to_owned())),
            "{changes:?}"
        );
        assert_eq!(changes.shards, ["cd"]);

        std::fs::remove_file(actions.join("ab").join("abcd")).unwrap();
        let changes = watch.wait(Duration::from_secs(5));
        assert_eq!(changes.removed, [("ab".to_owned(), "abcd".to_owned())]);
    }
}
