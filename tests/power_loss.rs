//! Power cuts under a real filesystem, with real `go build std` runs.
//!
//! The store sits on ext4 on a lazy disk (`lazy_disk`): a loop device over a
//! FUSE file whose writes stay in a volatile cache until ext4 flushes the
//! device. A cut drops what the cache holds, all of it or any subset
//! (`Cut`), the stack is torn down with nothing more reaching the image,
//! and it comes back up on a fresh loop device, ext4 replaying its journal,
//! as after a reboot. The test plays SECURITY.md's "A process kill, and a
//! power loss" against what it promises: no entry hands `go` a body that
//! does not match it, and nothing acknowledged before the last completed
//! sync is lost.
//!
//! Root only, with `/dev/fuse` and loop devices (skipped with a message
//! elsewhere, required under `CI=true`). `WARREN_POWER_LOSS_SEED` replays a
//! run's choices (kill times, cut models), though not the kernel's timing;
//! `WARREN_POWER_LOSS_ROUNDS` sets the number of crashes.
#![expect(
    clippy::disallowed_methods,
    reason = "the harness's own test writes plain files on the lazy disk, not store files"
)]

mod go_env;
mod lazy_disk;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use go_env::{Cache, GoEnv};
use lazy_disk::Cut;
use lazy_disk::ext4::Ext4;
use sha2::{Digest, Sha256};

/// The crash loop's image: sparse, so it takes on the real disk only what
/// was written (a first build, a few crashed ones, the journal).
const IMAGE_SIZE: u64 = 2 << 30;

/// ext4's default: a file's data is on disk before the metadata that
/// makes it visible. A crash mostly leaves unsynced files short or empty.
const ORDERED: &str = "data=ordered";

/// Metadata is committed every 5 s, data whenever the kernel writes it
/// back (about 30 s later): a crash leaves unsynced files of the right size
/// with other bytes in them (zeros, or what a deleted file left), as file
/// systems that promise no ordering do. Without `nodelalloc`, ext4 would
/// allocate blocks, and grow the size on disk, only as it writes the data
/// back, and a crash would mostly find short files, as in `data=ordered`.
const WRITEBACK: &str = "data=writeback,nodelalloc";

/// The first build, whose entries every later round must find whole: all
/// of std, unoptimized (about half the time of an optimized build), so no
/// entry of it is an entry of the crashed builds. Identical outputs are
/// still shared between the two as objects.
const FIRST_BUILD: &[&str] = &["build", "-gcflags=all=-N -l", "std"];

/// The build that is crashed, then run again to check what the crash left.
const BUILD: &[&str] = &["build", "std"];

/// The export data of every package of std, for comparing outputs.
const LIST_EXPORTS: &[&str] = &[
    "list",
    "-export",
    "-f",
    "{{.ImportPath}} {{.Export}}",
    "std",
];

/// Whether this machine can run a lazy disk: root, `/dev/fuse`, loop
/// devices and e2fsprogs. Panics under CI without them, where the test
/// must run; elsewhere says why it is skipped.
fn lazy_disk_available() -> bool {
    let missing = if !go_env::is_root() {
        Some("not root")
    } else if !Path::new("/dev/fuse").exists() {
        Some("no /dev/fuse")
    } else if !Path::new("/dev/loop-control").exists() {
        Some("no loop devices")
    } else if ["mkfs.ext4", "e2fsck"].into_iter().any(|tool| {
        !Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }) {
        Some("no e2fsprogs")
    } else {
        None
    };
    let Some(missing) = missing else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the power-loss tests must run under CI, but: {missing}"
    );
    say(&format!(
        "power-loss test skipped: {missing} (it needs root, FUSE and loop devices; it always runs in CI)"
    ));
    false
}

#[expect(clippy::print_stderr, reason = "the test's log: its seed, each round")]
fn say(message: &str) {
    eprintln!("{message}");
}

/// The harness itself: a block written to the disk but never flushed is
/// lost in a cut, and one synced before it is kept. The overwrite goes
/// through `O_DIRECT`, so it reaches the disk's cache at once, with no
/// flush; ext4 commits every 10 minutes here, so no journal commit of its
/// own flushes it either. A file written after the last sync is gone too.
#[test]
fn a_power_cut_keeps_what_was_synced_and_drops_what_was_not() {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if !lazy_disk_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Ext4::create(dir.path(), 256 << 20, "data=ordered,commit=600");
    let path = disk.root().join("block");
    fs::write(&path, [b'a'; 4096]).unwrap();
    fs::File::open(&path).unwrap().sync_all().unwrap();
    fs::File::open(disk.root()).unwrap().sync_all().unwrap();
    assert!(disk.power().counts().flushes > 0, "fsync sent no flush");

    // O_DIRECT needs a buffer aligned to the block.
    let buffer = vec![b'b'; 2 * 4096];
    let aligned = buffer.as_ptr().align_offset(4096);
    let block = &buffer[aligned..aligned + 4096];
    let mut direct = fs::File::options()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&path)
        .unwrap();
    direct.write_all(block).unwrap();
    drop(direct);
    fs::write(disk.root().join("unsynced"), b"in the page cache").unwrap();
    let report = disk.crash(Cut::LoseAll);
    assert!(
        report.lost > 0,
        "the overwrite was not held back: {report:?}"
    );

    let disk = Ext4::up(dir.path(), "data=ordered");
    assert!(
        fs::read(&path).unwrap() == [b'a'; 4096],
        "a write never flushed survived the cut"
    );
    assert!(!disk.root().join("unsynced").exists());
}

/// The crash loop. A first build runs to completion; its helper has
/// exited, so its entries are acknowledged and synced. Then, round after
/// round, the disk comes back from a cut, and:
///
/// - every entry of the first build is there, naming a whole object (its
///   size and SHA-256), before any warren process has run;
/// - from the second round on, `go build std` through warren (the build
///   the last cut interrupted) succeeds with nothing on stderr, the export
///   data of every package equals a reference build's with Go's own cache,
///   and `warren verify` finds no damaged body;
/// - the store is reset to the first build's entries (and synced), and a
///   cold `go build std` is started, then killed at a random moment with
///   every process it started, and the power cut, at once or up to 6 s
///   later (past ext4's 5 s journal commit).
///
/// Rounds alternate [`ORDERED`] and [`WRITEBACK`]; the cuts lose the whole
/// cache or keep any subset of it, so that four rounds play each pair.
/// The first build and the crashed ones share some objects (identical
/// outputs): a crashed build's put rewrites an object that a synced entry
/// of the first build names.
#[test]
fn power_cuts_during_go_builds_lose_no_synced_entry_and_hand_go_no_damaged_body() {
    if !lazy_disk_available() {
        return;
    }
    let seed = std::env::var("WARREN_POWER_LOSS_SEED")
        .ok()
        .map(|seed| seed.parse().expect("WARREN_POWER_LOSS_SEED is a number"))
        .unwrap_or_else(|| fastrand::u64(..));
    let rounds: usize = std::env::var("WARREN_POWER_LOSS_ROUNDS")
        .ok()
        .map(|n| n.parse().expect("WARREN_POWER_LOSS_ROUNDS is a number"))
        .unwrap_or(4);
    say(&format!(
        "power-loss seed {seed}, {rounds} rounds (replay: WARREN_POWER_LOSS_SEED={seed})"
    ));
    let mut rng = fastrand::Rng::with_seed(seed);

    let env = GoEnv::new();
    let started = Instant::now();
    let reference = Reference::build(&env);
    say(&format!(
        "reference build: {:.1} s",
        reference.duration.as_secs_f64()
    ));

    let lazy = env.path("lazy");
    fs::create_dir(&lazy).unwrap();
    let disk = Ext4::create(&lazy, IMAGE_SIZE, ORDERED);
    let on_disk = OnDisk::new(&env, &disk);
    let build = Instant::now();
    on_disk.run_quiet(FIRST_BUILD);
    let first = Entries::of(&on_disk.store());
    say(&format!(
        "first build: {:.1} s, {} entries, {} flushes",
        build.elapsed().as_secs_f64(),
        first.0.len(),
        disk.power().counts().flushes
    ));
    assert!(first.0.len() > 500, "the first build stored too little");
    // The cut comes right after the first build's helper has synced: `go`
    // returns before it does (the group commit follows its last answer).
    wait_for_group_commit(&on_disk.store());
    disk.crash(Cut::LoseAll);

    let mut recoveries = 0;
    let mut unique_mounts = true;
    for round in 0..=rounds {
        let options = if round % 2 == 0 { ORDERED } else { WRITEBACK };
        let disk = Ext4::up(&lazy, options);
        first.assert_whole(&on_disk.store());
        if round > 0 {
            // A cut is a crash to the next process, never a killed writer
            // (whose files would be synced, not verified), where the kernel
            // tells mounts apart.
            let left = markers_left(&on_disk.store());
            match unique_mount_id(&on_disk.store()) {
                Some(now) => {
                    for (name, mount) in &left {
                        assert_ne!(
                            *mount, now,
                            "the cut's marker {name} names the mount of now: \
                             it passes for a killed writer, and nothing is verified"
                        );
                    }
                    recoveries += usize::from(!left.is_empty());
                }
                None => unique_mounts = false,
            }
            on_disk.run_quiet(BUILD);
            reference.assert_same_exports(&on_disk.run_quiet(LIST_EXPORTS), &on_disk.store());
            let verify = on_disk.warren(&["verify"]);
            assert!(verify.contains(", 0 files (0 B) corrupt"), "{verify}");
            let remaining = markers_left(&on_disk.store());
            for (name, _) in &left {
                assert!(
                    !remaining.iter().any(|(other, _)| other == name),
                    "the cut's marker {name} is still there: no recovery ran"
                );
            }
        }
        if round == rounds {
            break;
        }
        first.reset(&on_disk.store());
        disk.sync();

        let cut = if matches!(round % 4, 1 | 2) {
            Cut::KeepAnySubset { seed: rng.u64(..) }
        } else {
            Cut::LoseAll
        };
        let crash = crash_a_build(disk, &on_disk, &reference, &mut rng, cut);
        say(&format!("round {}: {options}, {crash}", round + 1));
    }
    if unique_mounts {
        assert!(
            rounds == 0 || recoveries > 0,
            "no cut left a marker: recovery was never played"
        );
        say(&format!(
            "{recoveries} of {rounds} cuts were recovered from"
        ));
    } else {
        say(
            "no unique mount IDs before Linux 6.8: a cut passes for a killed writer \
             (synced, not verified); recovery not asserted",
        );
    }
    let image = fs::metadata(lazy.join("image")).unwrap();
    say(&format!(
        "{rounds} power cuts in {:.0} s; the image holds {} MiB of its {} MiB",
        started.elapsed().as_secs_f64(),
        (std::os::unix::fs::MetadataExt::blocks(&image) * 512) >> 20,
        IMAGE_SIZE >> 20
    ));
}

/// The dirty markers in `store` (`store::dirty`), with the mount ID each
/// names.
fn markers_left(store: &Path) -> Vec<(String, u64)> {
    let Ok(dir) = fs::read_dir(store.join("v1").join("dirty")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let mount = name.split('_').nth(1)?.parse().ok()?;
            (!name.starts_with(".tmp")).then_some((name, mount))
        })
        .collect()
}

/// Waits (up to 2 min) until every writer of `store` has synced and
/// removed its marker.
fn wait_for_group_commit(store: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = markers_left(store);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the build's writers did not sync within 2 min: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The unique ID of the mount that holds `path` (`STATX_MNT_ID_UNIQUE`,
/// Linux 6.8 and later).
fn unique_mount_id(path: &Path) -> Option<u64> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    const MNT_ID_UNIQUE: u32 = 0x4000;
    let found = statx(
        CWD,
        path,
        AtFlags::empty(),
        StatxFlags::from_bits_retain(MNT_ID_UNIQUE),
    )
    .ok()?;
    (found.stx_mask & MNT_ID_UNIQUE != 0).then_some(found.stx_mnt_id)
}

/// Starts a cold `go build std`, kills it with every process it started at
/// a random moment (between 15% and 95% of the reference build's time:
/// ext4 commits its first transaction 5 s in), and cuts the power
/// as `cut` says: at once (before the kill, so nothing the dying processes
/// do reaches the disk), or up to 6 s after it (the kernel goes on writing
/// back, and ext4 commits its journal, meanwhile). What happened, for the
/// log.
fn crash_a_build(
    disk: Ext4,
    on_disk: &OnDisk<'_>,
    reference: &Reference,
    rng: &mut fastrand::Rng,
    cut: Cut,
) -> String {
    let mut build = Build(
        on_disk
            .go(BUILD)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let kill_at = reference.duration.mul_f64(0.15 + 0.8 * rng.f64());
    let started = Instant::now();
    let mut finished = false;
    while started.elapsed() < kill_at && !finished {
        finished = build.0.try_wait().unwrap().is_some();
        std::thread::sleep(Duration::from_millis(20));
    }
    let cut_after = if rng.bool() {
        Duration::ZERO
    } else {
        Duration::from_millis(rng.u64(0..6_000))
    };
    let report = if cut_after.is_zero() {
        let report = disk.power().cut(cut);
        drop(build);
        report
    } else {
        drop(build);
        std::thread::sleep(cut_after);
        disk.power().cut(cut)
    };
    let flushes = disk.power().counts().flushes;
    // Kills what left the build's process group, and takes the stack down.
    disk.crash(cut);
    format!(
        "{cut:?}, build {} at {:.1} s, power cut {:.1} s later: \
         {} block writes kept, {} lost; {flushes} flushes",
        if finished { "done" } else { "killed" },
        kill_at.as_secs_f64(),
        cut_after.as_secs_f64(),
        report.kept,
        report.lost,
    )
}

/// A `go` command in a process group of its own, killed with the whole
/// group (its compilers and warren helpers) when dropped.
struct Build(std::process::Child);

impl Drop for Build {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.0);
        // Gone already is fine: it finished, or was killed.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.0.wait();
    }
}

/// `go` through warren with everything of the build on the lazy disk: the
/// store and GOCACHE (which holds next to nothing with GOCACHEPROG). Temp
/// files of killed `go` commands go to the test's own temp dir.
struct OnDisk<'a> {
    env: &'a GoEnv,
    root: PathBuf,
}

impl<'a> OnDisk<'a> {
    fn new(env: &'a GoEnv, disk: &Ext4) -> Self {
        fs::create_dir(env.path("tmp")).unwrap();
        Self {
            env,
            root: disk.root(),
        }
    }

    fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    fn go(&self, args: &[&str]) -> Command {
        let mut command = self.env.go_command(Cache::Warren, "unused", args);
        command
            .env("GOCACHE", self.root.join("gocache"))
            .env("WARREN_DIR", self.store())
            .env("TMPDIR", self.env.path("tmp"))
            .env("GOTMPDIR", self.env.path("tmp"));
        command
    }

    /// Runs `go`; asserts that it succeeded and printed nothing on stderr.
    fn run_quiet(&self, args: &[&str]) -> String {
        let output = self.go(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.is_empty(),
            "go {} ({}) printed:\n{stderr}",
            args.join(" "),
            output.status
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `warren <args>` on the lazy store.
    fn warren(&self, args: &[&str]) -> String {
        let output = Command::new(go_env::warren_bin())
            .args(args)
            .env_clear()
            .env("HOME", self.env.path("home"))
            .env("XDG_CONFIG_HOME", self.env.path("config"))
            .env("WARREN_DIR", self.store())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "warren {} failed: {stdout}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }
}

/// `go build std` with Go's own cache on the real disk: what every package's
/// export data must be, and how long a cold build takes.
struct Reference {
    /// Import path → the file `go list -export` named.
    exports: BTreeMap<String, PathBuf>,
    duration: Duration,
}

impl Reference {
    fn build(env: &GoEnv) -> Self {
        let started = Instant::now();
        env.run(Cache::Builtin, "reference", BUILD);
        let duration = started.elapsed();
        let (listed, _) = env.run(Cache::Builtin, "reference", LIST_EXPORTS);
        Self {
            exports: exports(&listed),
            duration,
        }
    }

    /// `listed`, from warren's store, names the same packages with the same
    /// export data, byte for byte.
    fn assert_same_exports(&self, listed: &str, store: &Path) {
        let exports = exports(listed);
        assert_eq!(
            exports.keys().collect::<Vec<_>>(),
            self.exports.keys().collect::<Vec<_>>(),
            "go list -export names other packages through warren"
        );
        for (package, path) in &exports {
            assert!(path.starts_with(store), "{package}: {}", path.display());
            assert!(
                fs::read(path).unwrap() == fs::read(&self.exports[package]).unwrap(),
                "{package}: export data from warren ({}) differs from Go's own cache",
                path.display()
            );
        }
    }
}

/// The lines of `go list -export`, with an export file.
fn exports(listed: &str) -> BTreeMap<String, PathBuf> {
    listed
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, path)| !path.is_empty())
        .map(|(package, path)| (package.to_owned(), PathBuf::from(path)))
        .collect()
}

/// A store's entries: `<shard>/<action hex>` → (OutputID hex, size).
struct Entries(BTreeMap<String, (String, u64)>);

impl Entries {
    fn of(store: &Path) -> Self {
        let mut entries = BTreeMap::new();
        for (name, path) in store_files(store, "actions") {
            let text = fs::read_to_string(&path).unwrap();
            let fields: Vec<&str> = text.split_whitespace().collect();
            let [_, output, size, ..] = fields[..] else {
                panic!("{}: not an entry: {text:?}", path.display());
            };
            entries.insert(name, (output.to_owned(), size.parse().unwrap()));
        }
        Self(entries)
    }

    /// Every entry is there, names the same object, and that object is
    /// whole: its size, and its SHA-256 equal to its name.
    fn assert_whole(&self, store: &Path) {
        let mut damaged = Vec::new();
        for (name, (output, size)) in &self.0 {
            let path = store.join("v1/actions").join(name);
            let found = fs::read_to_string(&path).map(|text| {
                let fields: Vec<&str> = text.split_whitespace().collect();
                match fields[..] {
                    [_, output, size, ..] => Some((output.to_owned(), size.parse().ok()?)),
                    _ => None,
                }
            });
            match found {
                Ok(Some(found)) if found == (output.clone(), *size) => {}
                Ok(found) => {
                    damaged.push(format!("entry {name} reads {found:?}, not {output} {size}"));
                    continue;
                }
                Err(e) => {
                    damaged.push(format!("entry {name}: {e}"));
                    continue;
                }
            }
            let object = store.join("v1/objects").join(&output[..2]).join(output);
            match fs::read(&object) {
                Ok(body)
                    if body.len() as u64 == *size
                        && hex::encode(Sha256::digest(&body)) == *output => {}
                Ok(body) => damaged.push(format!(
                    "object {output} of entry {name}: {} bytes of {size}, SHA-256 {}",
                    body.len(),
                    hex::encode(Sha256::digest(&body))
                )),
                Err(e) => damaged.push(format!("object {output} of entry {name}: {e}")),
            }
        }
        assert!(
            damaged.is_empty(),
            "{} of the first build's {} entries lost or damaged:\n{}",
            damaged.len(),
            self.0.len(),
            damaged.join("\n")
        );
    }

    /// Removes every entry and object that is not one of these (temp files
    /// stay, as a killed process leaves them).
    fn reset(&self, store: &Path) {
        for (name, path) in store_files(store, "actions") {
            if !self.0.contains_key(&name) {
                fs::remove_file(path).unwrap();
            }
        }
        let keep: std::collections::HashSet<&str> =
            self.0.values().map(|(output, _)| output.as_str()).collect();
        for (name, path) in store_files(store, "objects") {
            if !keep.contains(&name[3..]) {
                fs::remove_file(path).unwrap();
            }
        }
    }
}

/// `<shard>/<name>` and path of each file in `<store>/v1/<kind>`, temp
/// files left out.
fn store_files(store: &Path, kind: &str) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    for shard in fs::read_dir(store.join("v1").join(kind)).unwrap() {
        let shard = shard.unwrap();
        let shard_name = shard.file_name().into_string().unwrap();
        for file in fs::read_dir(shard.path()).unwrap() {
            let file = file.unwrap();
            let name = file.file_name().into_string().unwrap();
            if !name.starts_with(".tmp") {
                files.push((format!("{shard_name}/{name}"), file.path()));
            }
        }
    }
    files
}
