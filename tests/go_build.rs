//! warren under the real `go` command: the standard library is the workload.
//!
//! These tests check what a user would: a warm build is all hits, outputs
//! are byte-identical to builds with Go's own cache, `go test` results are
//! cached, concurrent builds can share a store, and a damaged store costs
//! only rebuilds, never a wrong output. Every warren build must also leave
//! stderr empty.
#![expect(
    clippy::disallowed_methods,
    reason = "the damage test writes into store files in place, as a crash would"
)]

mod go_env;

use std::fs;
use std::path::Path;

use go_env::{Cache, GoEnv, num};

/// Cold then warm `go build std`: the warm build gets every lookup from
/// warren (no misses) and prints nothing.
#[test]
fn warm_std_build_is_all_hits() {
    let env = GoEnv::new();
    env.run_quiet("gocache", &["build", "std"]);
    let cold = env.lifetime();
    assert!(num(&cold, "misses") > 500, "cold build should miss: {cold}");
    assert!(num(&cold, "puts") > 500, "cold build should store: {cold}");
    assert_eq!(num(&cold, "errors"), 0);

    env.run_quiet("gocache", &["build", "std"]);
    let warm = env.lifetime();
    let gets = num(&warm, "gets") - num(&cold, "gets");
    let hits = num(&warm, "hits") - num(&cold, "hits");
    assert!(gets > 500, "warm build made only {gets} lookups");
    assert_eq!(hits, gets, "warm build missed: {warm}");
    assert_eq!(
        num(&warm, "puts"),
        num(&cold, "puts"),
        "warm build stored again"
    );
}

/// Binaries and export data built through warren (cold and warm) are
/// identical to those built with Go's own cache.
#[test]
fn outputs_match_go_builtin_cache() {
    let env = GoEnv::new();
    let build = |cache, gocache: &str, out: &str| {
        let args = ["build", "-o", out, "cmd/gofmt"];
        match cache {
            Cache::Warren => {
                env.run_quiet(gocache, &args);
            }
            Cache::Builtin => {
                env.run(cache, gocache, &args);
            }
        }
        fs::read(env.path("work").join(out)).unwrap()
    };
    let builtin = build(Cache::Builtin, "builtin", "gofmt-builtin");
    let cold = build(Cache::Warren, "gocache-cold", "gofmt-cold");
    let warm = build(Cache::Warren, "gocache-warm", "gofmt-warm");
    assert!(
        builtin == cold,
        "gofmt built through a cold warren differs from Go's own"
    );
    assert!(
        builtin == warm,
        "gofmt built from warren's cache differs from Go's own"
    );

    // `go list -export` hands out DiskPaths; their contents must match too.
    let list = [
        "list",
        "-export",
        "-f",
        "{{.ImportPath}} {{.Export}}",
        "fmt",
        "go/ast",
        "unicode",
    ];
    let exports = |cache| {
        let (stdout, _) = env.run(
            cache,
            if cache == Cache::Warren {
                "gocache-warm"
            } else {
                "builtin"
            },
            &list,
        );
        stdout
            .lines()
            .map(|line| {
                let (package, path) = line.split_once(' ').unwrap();
                assert!(Path::new(path).is_absolute(), "{line}");
                (package.to_owned(), fs::read(path).unwrap())
            })
            .collect::<Vec<_>>()
    };
    let from_warren = exports(Cache::Warren);
    assert_eq!(from_warren.len(), 3);
    for path in env.run(Cache::Warren, "gocache-warm", &list).0.lines() {
        let path = path.split_once(' ').unwrap().1;
        assert!(
            path.starts_with(env.store().to_str().unwrap()),
            "export data not from warren: {path}"
        );
    }
    assert!(
        from_warren == exports(Cache::Builtin),
        "export data differs from Go's own cache"
    );
}

/// A second `go test` run reports `(cached)`: hits carry OutputID, which
/// test result caching depends on.
#[test]
fn go_test_results_are_cached() {
    let env = GoEnv::new();
    let packages = ["test", "unicode/utf8", "strconv"];
    let first = env.run_quiet("gocache", &packages);
    assert!(!first.contains("(cached)"), "{first}");
    let second = env.run_quiet("gocache-2", &packages);
    let cached = second
        .lines()
        .filter(|line| line.contains("(cached)"))
        .count();
    assert_eq!(cached, 2, "second go test run was not cached:\n{second}");
}

/// Two `go build` commands at once on one store, each with a cold built-in
/// cache, then a third build that hits everything; nothing in the store is
/// damaged.
#[test]
fn concurrent_builds_share_one_store() {
    let env = GoEnv::new();
    let children: Vec<_> = ["gocache-a", "gocache-b"]
        .into_iter()
        .map(|gocache| {
            env.go_command(Cache::Warren, gocache, &["build", "net/http"])
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let before = env.lifetime();
    env.run_quiet("gocache-c", &["build", "net/http"]);
    let after = env.lifetime();
    assert_eq!(
        num(&after, "misses"),
        num(&before, "misses"),
        "third build missed"
    );
    assert_eq!(num(&after, "errors"), 0);
    let verify = env.warren(&["verify"]);
    assert!(verify.contains(", 0 files (0 B) corrupt"), "{verify}");
    // Go's archives carry their own action ID where warren's consistency
    // check reads it (SECURITY.md, "What verification proves, and what it
    // cannot"); this holds it to the real `go`.
    let census = verify
        .lines()
        .find(|line| line.contains("archives whose build ID names their action"))
        .unwrap_or_else(|| panic!("{verify}"));
    let numbers: Vec<u64> = census
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [_entries, archives, foreign, _indexes] = numbers[..] else {
        panic!("{census}");
    };
    assert!(archives > 30, "{census}");
    assert_eq!(foreign, 0, "{census}");
}

/// Truncated objects and garbage entries are misses: `go` rebuilds, and the
/// result is identical to a build from a healthy cache.
#[test]
fn damaged_store_files_cost_rebuilds_not_correctness() {
    let env = GoEnv::new();
    env.write_module();
    env.run_quiet("gocache-1", &["build", "-o", "hello-1", "."]);
    let expected = fs::read(env.path("work/hello-1")).unwrap();

    let mut damaged = 0;
    for kind in ["objects", "actions"] {
        for shard in fs::read_dir(env.store().join("v1").join(kind)).unwrap() {
            for file in fs::read_dir(shard.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                let len = fs::metadata(&path).unwrap().len();
                damaged += 1;
                match (kind, damaged % 3) {
                    ("objects", 0) if len > 0 => {
                        fs::write(&path, &fs::read(&path).unwrap()[..len as usize / 2]).unwrap()
                    }
                    ("objects", _) => {}
                    (_, 0) => fs::write(&path, b"v1 not-an-entry\n").unwrap(),
                    _ => {}
                }
            }
        }
    }
    env.run_quiet("gocache-2", &["build", "-o", "hello-2", "."]);
    assert!(
        expected == fs::read(env.path("work/hello-2")).unwrap(),
        "rebuilt binary differs"
    );
    let lifetime = env.lifetime();
    assert!(
        num(&lifetime, "repaired") > 0,
        "no damage was noticed: {lifetime}"
    );
    let (stdout, _) = env.run(Cache::Warren, "gocache-3", &["run", "."]);
    assert_eq!(stdout.trim(), "hello, Warren");
}

/// The export data of every package of std, as `go list -export` names it.
const LIST_STD_EXPORTS: &[&str] = &[
    "list",
    "-export",
    "-f",
    "{{.ImportPath}} {{.Export}}",
    "std",
];

/// How far before its marker's time a recovery distrusts files:
/// `store::recovery::SLACK`.
const RECOVERY_SLACK: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// The power went during a build through warren, and on ext4's
/// `data=writeback` what it had not synced came back with other bytes, or
/// holding another entry's line (SECURITY.md, "A process kill, and a
/// power loss"). The next `go build std` through warren, and the export
/// data of every package of std, are byte for byte what Go's own cache
/// gives, with nothing on stderr; and the store is clean once the
/// recovery is done.
#[test]
fn a_std_build_after_a_power_loss_matches_gos_own_cache() {
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    let env = GoEnv::new();
    std::thread::sleep(Duration::from_millis(50));
    let crash = SystemTime::now();
    std::thread::sleep(Duration::from_millis(50));
    env.run_quiet("gocache", &["build", "std"]);
    let dirty = env.store().join("v1/dirty");
    let markers = || fs::read_dir(&dirty).map_or(0, |listing| listing.count());
    let deadline = Instant::now() + Duration::from_secs(20);
    while markers() > 0 {
        assert!(Instant::now() < deadline, "the helper's marker stayed");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Every third object with other bytes; every fifth entry holding
    // the line of the entry next to it.
    let files = |kind: &str| {
        let mut files: Vec<_> = fs::read_dir(env.store().join("v1").join(kind))
            .unwrap()
            .flat_map(|shard| fs::read_dir(shard.unwrap().path()).unwrap())
            .map(|file| file.unwrap().path())
            .collect();
        files.sort();
        files
    };
    for path in files("objects").iter().step_by(3) {
        let mut bytes = fs::read(path).unwrap();
        bytes.iter_mut().for_each(|byte| *byte = !*byte);
        fs::write(path, bytes).unwrap();
    }
    let entries = files("actions");
    for pair in entries.chunks(5).filter_map(|chunk| chunk.get(..2)) {
        fs::copy(&pair[1], &pair[0]).unwrap();
    }
    fs::create_dir_all(&dirty).unwrap();
    let made = (crash + RECOVERY_SLACK).duration_since(UNIX_EPOCH).unwrap();
    fs::write(
        dirty.join("00000000-0000-4000-8000-000000000000_0_4242_0"),
        format!("{}\n", made.as_nanos()),
    )
    .unwrap();

    env.run_quiet("gocache-2", &["build", "std"]);
    let exports = |cache, gocache| {
        let (listed, _) = env.run(cache, gocache, LIST_STD_EXPORTS);
        listed
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(_, path)| !path.is_empty())
            .map(|(package, path)| (package.to_owned(), fs::read(path).unwrap()))
            .collect::<Vec<_>>()
    };
    let builtin = exports(Cache::Builtin, "builtin");
    assert!(builtin.len() > 200, "{} packages", builtin.len());
    let through_warren = exports(Cache::Warren, "gocache-2");
    assert_eq!(through_warren.len(), builtin.len());
    for ((package, ours), (_, theirs)) in through_warren.iter().zip(&builtin) {
        assert!(
            ours == theirs,
            "{package}: export data differs from Go's own cache"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while markers() > 0 {
        assert!(Instant::now() < deadline, "the recovery did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let verify = env.warren(&["verify"]);
    assert!(verify.contains(", 0 files (0 B) corrupt"), "{verify}");
}

/// Whether this process may mount a filesystem (root). Panics under CI
/// without it: there the test must run.
fn may_mount() -> bool {
    let root = go_env::is_root();
    assert!(
        root || std::env::var("CI").as_deref() != Ok("true"),
        "the full-disk test mounts a tmpfs and must run as root under CI"
    );
    if !root {
        skip("full-disk test skipped: not root (it mounts a tmpfs; it always runs in CI)");
    }
    root
}

#[expect(clippy::print_stderr, reason = "a skipped test says why")]
fn skip(message: &str) {
    eprintln!("{message}");
}

/// A tmpfs mounted for one test, unmounted however the test ends.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// A tmpfs of `size` at `at`, and where a store on it goes.
    fn with_store(at: std::path::PathBuf, size: &str) -> (Self, std::path::PathBuf) {
        let disk = Self::mount(at, size);
        let store = disk.0.join("store");
        (disk, store)
    }

    fn mount(at: std::path::PathBuf, size: &str) -> Self {
        fs::create_dir_all(&at).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", at.display());
        Self(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A trim the helper started may still hold it: detach it lazily then.
        let unmounted = std::process::Command::new("umount").arg(&self.0).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// With the store on a disk that fills up, `go build std` still succeeds,
/// and warren says so once for the whole command, not once per failed put,
/// with what failed and what to do.
#[test]
fn a_full_disk_costs_caching_and_one_warning() {
    if !may_mount() {
        return;
    }
    let env = GoEnv::new();
    // std's outputs are ~180 MB: the disk fills up early in the build.
    let disk = Tmpfs::mount(env.path("small"), "16m");
    let output = build_at(&env, &disk.0.join("store"), &["build", "std"]);
    assert_built_with_one_warning(&output, "free space");
}

/// A full disk is trimmed to make room before puts fail (SECURITY.md,
/// "Files and permissions"). Entries unused for two hours go, least
/// recently used first, and the build that met the full disk is cached
/// whole; warren says once what it did.
#[test]
fn a_full_disk_is_trimmed_to_make_room() {
    if !may_mount() {
        return;
    }
    let env = GoEnv::new();
    let (disk, store) = Tmpfs::with_store(env.path("full"), "320m");
    let build = |args: &[&str]| build_at(&env, &store, args);
    // Old entries: a whole std build, last used four hours ago (past the
    // grace of 2 hours, plus the hour by which a use may go unrecorded).
    let old = build(&["build", "std"]);
    assert!(old.status.success() && old.stderr.is_empty(), "{old:?}");
    let four_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(4 * 3600);
    age(&store.join("v1"), four_hours_ago);
    // The disk fills up, with room left for a few MiB.
    fill(&disk.0.join("filler"), 4 << 20);

    let unoptimized = ["build", "-gcflags=all=-N", "fmt"];
    let full = build(&unoptimized);
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(full.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line:\n{stderr}");
    assert!(
        lines[0].starts_with("warren: warning: the store's disk was full; trimmed "),
        "{stderr}"
    );
    // Everything it put was stored: the same build again is all hits.
    let lifetime = || {
        let output = std::process::Command::new(go_env::warren_bin())
            .args(["stats", "--json"])
            .env_remove("WARREN_CONFIG")
            .env("XDG_CONFIG_HOME", env.path("config"))
            .env("WARREN_DIR", &store)
            .output()
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        stats["lifetime"].clone()
    };
    let before = lifetime();
    let again = build(&unoptimized);
    assert!(
        again.status.success() && again.stderr.is_empty(),
        "{again:?}"
    );
    let after = lifetime();
    let gets = num(&after, "gets") - num(&before, "gets");
    assert!(gets > 0);
    assert_eq!(num(&after, "hits") - num(&before, "hits"), gets, "{after}");
    assert_eq!(num(&after, "errors"), 0, "{after}");
}

/// `go <args>` through warren, with the store at `store`.
fn build_at(env: &GoEnv, store: &Path, args: &[&str]) -> std::process::Output {
    env.go_command(Cache::Warren, "gocache", args)
        .env("WARREN_DIR", store)
        .output()
        .unwrap()
}

/// Sets the modification time of every file under `dir` to `when`.
fn age(dir: &Path, when: std::time::SystemTime) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            age(&path, when);
        } else {
            fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|file| file.set_modified(when))
                .unwrap();
        }
    }
}

/// Fills the filesystem of `path` with a file there, then leaves `room`
/// bytes free.
fn fill(path: &Path, room: u64) {
    use std::io::Write as _;
    let mut file = fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    let mut written = 0u64;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    file.set_len(written.saturating_sub(room)).unwrap();
}

/// `go` succeeded, and its stderr is one warning from warren that names
/// failed puts and `fix`.
fn assert_built_with_one_warning(output: &std::process::Output, fix: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "go build failed:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line:\n{stderr}");
    assert!(
        lines[0].starts_with("warren: warning: ")
            && lines[0].contains("could not be stored")
            && lines[0].contains(fix),
        "{stderr}"
    );
}

/// A store that has become read-only (say, a remount after disk
/// errors) costs caching and one warning, like a full one.
#[test]
fn a_read_only_store_costs_caching_and_one_warning() {
    if !may_mount() {
        return;
    }
    let env = GoEnv::new();
    let (disk, store) = Tmpfs::with_store(env.path("ro"), "256m");
    let build = |args: &[&str]| build_at(&env, &store, args);
    let warm = build(&["build", "fmt"]);
    assert!(warm.status.success() && warm.stderr.is_empty(), "{warm:?}");
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&disk.0)
        .status()
        .unwrap();
    assert!(status.success());

    assert_built_with_one_warning(&build(&["build", "std"]), "make the store writable");
}
