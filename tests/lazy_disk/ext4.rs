//! ext4 on a [`LazyDisk`]: the image served over FUSE in this process, a
//! loop device on the served file, ext4 mounted from the loop device. After
//! a power cut the whole stack is brought up afresh (a new FUSE session, a
//! loop device attached anew, nothing cached from before), so ext4 replays
//! its journal from what the disk kept, as after a reboot.
//!
//! Each bring-up also checks the filesystem: ext4 is mounted (replaying
//! the journal), unmounted cleanly, checked with `e2fsck -fn`, and mounted
//! again. A disk that lost a flushed write would show here first, before
//! any test looks at its files.
//!
//! Everything is taken down however the test ends ([`Drop`]): the processes
//! still using the mount are killed by PID, then ext4 is unmounted, the
//! loop device detached and the FUSE session unmounted, in that order (each
//! holds the next). Teardown after a crash happens after the cut: whatever
//! ext4 writes while it is unmounted is dropped by the disk.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, MountOption};
use rustix::process::{Pid, Signal};

use super::{Cut, CutReport, IMAGE, LazyDisk, Power};

/// A mounted ext4 on a lazy disk whose image lives in `dir`.
pub struct Ext4 {
    /// Holds `image` (the durable disk), `fuse/` (where it is served) and
    /// `mnt/` (where ext4 is mounted).
    dir: PathBuf,
    power: Power,
    session: Option<BackgroundSession>,
    loop_device: Option<PathBuf>,
    mounted: bool,
}

impl Ext4 {
    /// A new sparse image of `size` bytes in `dir`, formatted with ext4
    /// (on the image file itself, as a disk comes from the factory), then
    /// brought up with the mount `options`.
    pub fn create(dir: &Path, size: u64, options: &str) -> Self {
        let image = dir.join("image");
        let file = fs::File::create(&image).expect("creating the disk image");
        file.set_len(size).expect("sizing the disk image");
        drop(file);
        fs::set_permissions(&image, fs::Permissions::from_mode(0o600)).unwrap();
        // Every inode table and the journal are written now (as holes: the
        // image stays sparse), so no lazy initialisation writes later.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .args(["-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"])
            .arg(&image))
        .unwrap_or_else(|e| panic!("{e}"));
        Self::up(dir, options)
    }

    /// Brings the image in `dir` up: served anew, on a loop device attached
    /// anew, ext4 mounted (its journal replayed), checked, and mounted with
    /// `options` (say `data=writeback`).
    pub fn up(dir: &Path, options: &str) -> Self {
        let (fuse, mnt) = (dir.join("fuse"), dir.join("mnt"));
        for sub in [&fuse, &mnt] {
            fs::create_dir_all(sub).unwrap();
            fs::set_permissions(sub, fs::Permissions::from_mode(0o700)).unwrap();
        }
        let (disk, power) = LazyDisk::open(&dir.join("image"));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("warren-lazy-disk".into()),
            MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(disk, &fuse, &config)
            .unwrap_or_else(|e| panic!("mounting the lazy disk at {}: {e}", fuse.display()));
        let mut stack = Self {
            dir: dir.to_path_buf(),
            power,
            session: Some(session),
            loop_device: None,
            mounted: false,
        };
        // Not direct I/O: a loop device reads and writes its file through
        // the file's own operations, which FOPEN_DIRECT_IO sends to us.
        let device = run(Command::new("losetup")
            .args(["--find", "--show", "--direct-io=off"])
            .arg(fuse.join(IMAGE)))
        .unwrap_or_else(|e| panic!("{e}"));
        let device = PathBuf::from(device.trim());
        stack.loop_device = Some(device.clone());
        let name = device.file_name().unwrap().to_str().unwrap().to_owned();
        let dio = fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap();
        assert_eq!(dio.trim(), "0", "{} uses direct I/O", device.display());

        stack.mount(options);
        stack.unmount().unwrap_or_else(|e| panic!("{e}"));
        run(Command::new("e2fsck").arg("-fn").arg(&device))
            .unwrap_or_else(|e| panic!("the filesystem is damaged after the cut: {e}"));
        stack.mount(options);
        stack
    }

    /// Where ext4 is mounted.
    pub fn root(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    pub fn power(&self) -> &Power {
        &self.power
    }

    /// `syncfs` of the mounted ext4: what a completed sync of warren's does.
    pub fn sync(&self) {
        let root = fs::File::open(self.root()).unwrap();
        rustix::fs::syncfs(&root).expect("syncfs of the lazy ext4");
    }

    /// Cuts the power as `how` says, kills every process still using the
    /// mount, and takes the stack down without a clean unmount: nothing
    /// more reaches the image.
    pub fn crash(mut self, how: Cut) -> CutReport {
        let report = self.power.cut(how);
        self.take_down().unwrap_or_else(|e| panic!("{e}"));
        report
    }

    fn mount(&mut self, options: &str) {
        let device = self.loop_device.as_ref().expect("a loop device");
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", options])
            .arg(device)
            .arg(self.root()))
        .unwrap_or_else(|e| panic!("{e}"));
        self.mounted = true;
    }

    fn unmount(&mut self) -> Result<(), String> {
        if self.mounted {
            let how = unmount(&self.root())?;
            self.mounted = false;
            if how == Unmounted::Lazily {
                return Err(format!(
                    "{} was busy: detached lazily",
                    self.root().display()
                ));
            }
        }
        Ok(())
    }

    /// Kills the mount's users, unmounts ext4, detaches the loop device and
    /// unmounts the FUSE session; each step is tried even if one before it
    /// failed, and the first failure is returned.
    fn take_down(&mut self) -> Result<(), String> {
        let mut first = kill_users(&self.root()).err();
        if let Err(e) = self.unmount() {
            first.get_or_insert(e);
        }
        if let Some(device) = self.loop_device.take()
            && let Err(e) = retry(|| run(Command::new("losetup").arg("-d").arg(&device)))
        {
            first.get_or_insert(e);
        }
        if let Some(session) = self.session.take() {
            match unmount(&self.dir.join("fuse")) {
                // The session's thread ends as the kernel lets go.
                Ok(Unmounted::Now) => drop(session.join()),
                // It ends once the loop device lets go; not waited for.
                Ok(Unmounted::Lazily) => drop(session),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Ext4 {
    #[expect(clippy::print_stderr, reason = "a failed cleanup is told, not a panic")]
    fn drop(&mut self) {
        // Nothing the teardown writes matters: skip writing it.
        self.power.cut(Cut::LoseAll);
        if let Err(e) = self.take_down() {
            eprintln!("taking the lazy ext4 down: {e}");
        }
    }
}

/// How a mount went away.
#[derive(Debug, PartialEq, Eq)]
enum Unmounted {
    Now,
    /// Detached lazily: it is gone once its last user lets go.
    Lazily,
}

/// Unmounts `path`, retrying while it is busy, then detaching it lazily.
fn unmount(path: &Path) -> Result<Unmounted, String> {
    match retry(|| run(Command::new("umount").arg(path))) {
        Ok(()) => Ok(Unmounted::Now),
        Err(e) => run(Command::new("umount").arg("-l").arg(path))
            .map(|_| Unmounted::Lazily)
            .map_err(|lazy| format!("{e}; {lazy}")),
    }
}

/// `attempt` until it succeeds, for up to 5 s (a device or mount a killed
/// process just let go of may be busy a moment longer).
fn retry(mut attempt: impl FnMut() -> Result<String, String>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match attempt() {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => sleep(Duration::from_millis(100)),
        }
    }
}

/// Runs `command`; its stdout, or an error naming it with its stderr.
fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Kills (SIGKILL, by PID) every process whose working directory, root,
/// executable, open files or mapped files lie under `dir`, until none is
/// left (20 s at most): `go`, its compilers, warren helpers and any
/// daemon, which may have left `go`'s process group.
pub fn kill_users(dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let users = users_of(dir);
        if users.is_empty() {
            return Ok(());
        }
        for &pid in &users {
            // Gone meanwhile is fine.
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "processes {users:?} still use {} after SIGKILL",
                dir.display()
            ));
        }
        sleep(Duration::from_millis(50));
    }
}

/// The processes (other than this one) that use anything under `dir`.
fn users_of(dir: &Path) -> Vec<Pid> {
    let me = std::process::id();
    let Ok(processes) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let under = |path: &Path| path.starts_with(dir);
    let mut users = Vec::new();
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
            .filter(|&pid| pid != me)
        else {
            continue;
        };
        let proc = process.path();
        let links = ["cwd", "root", "exe"]
            .into_iter()
            .map(|link| proc.join(link))
            .chain(
                fs::read_dir(proc.join("fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|fd| fd.path()),
            );
        let mut uses = links
            .filter_map(|link| fs::read_link(link).ok())
            .any(|target| under(&target));
        if !uses && let Ok(maps) = fs::read_to_string(proc.join("maps")) {
            uses = maps
                .lines()
                .filter_map(|line| line.split_whitespace().nth(5))
                .any(|path| under(Path::new(OsStr::new(path))));
        }
        if uses && let Some(pid) = Pid::from_raw(pid as i32) {
            users.push(pid);
        }
    }
    users
}
