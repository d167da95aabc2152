//! What a crash leaves in a store, through the real binary: a dirty
//! marker as the writer of a lost boot left it, or as a killed helper left
//! it, and files damaged the ways a power loss damages them (SECURITY.md,
//! "A process kill, and a power loss").
#![expect(
    clippy::disallowed_methods,
    reason = "tests leave markers and damage store files in place, as a crash would"
)]

mod sandbox;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sandbox::{
    Sandbox, action, expect_hit, expect_miss, expect_stored, get, put, sha256, sha256_file,
};

/// A boot that is not this one.
const OTHER_BOOT: &str = "00000000-0000-4000-8000-000000000000";
/// How far before its marker's time a recovery distrusts files (for a
/// wall clock stepped back): `store::recovery::SLACK`.
const SLACK: Duration = Duration::from_secs(10 * 60);

fn body(n: u64) -> Vec<u8> {
    format!("the output of action {n}, some bytes long").into_bytes()
}

/// `go`'s puts of `actions` through one helper, to its close.
fn put_all(sandbox: &Sandbox, actions: &[u64]) -> Vec<PathBuf> {
    let mut helper = sandbox.spawn();
    helper.handshake();
    let paths = (actions.iter())
        .map(|&n| expect_stored(&helper.call(&put(n as i64, &action(n), &body(n)))))
        .collect();
    let stderr = helper.close(1000);
    assert_eq!(stderr, "", "a helper printed on stderr");
    paths
}

/// The line of action `n`'s body as a warren before the entry check
/// wrote it.
fn unchecked_line(n: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!(
        "v1 {} {} {} local\n",
        hex::encode(sha256(&body(n))),
        body(n).len(),
        now.as_nanos()
    )
}

fn dirty(sandbox: &Sandbox) -> PathBuf {
    sandbox.store().join("v1/dirty")
}

fn markers(sandbox: &Sandbox) -> Vec<String> {
    fs::read_dir(dirty(sandbox)).map_or(Vec::new(), |listing| {
        listing
            .flatten()
            .map(|file| file.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with(".tmp"))
            .collect()
    })
}

/// Waits (at most 20 s) until no dirty marker is left: a helper's group
/// commit, or the recovery's sweep, runs after `go` has its answers.
fn wait_for_no_markers(sandbox: &Sandbox) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !markers(sandbox).is_empty() {
        assert!(
            Instant::now() < deadline,
            "markers left: {:?}",
            markers(sandbox)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A moment between what came before and what comes after, by the
/// coarse clock the kernel stamps files with.
fn a_moment_between() -> SystemTime {
    std::thread::sleep(Duration::from_millis(50));
    let now = SystemTime::now();
    std::thread::sleep(Duration::from_millis(50));
    now
}

fn damage_in_place(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    for byte in &mut bytes {
        *byte ^= 0x20;
    }
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
}

/// The power went while a helper was at work: its marker, from another
/// boot, says what it may not have synced, and on ext4's `data=writeback`
/// what it wrote can come back with other bytes in it, or holding another
/// file's blocks. The next helper hands `go` no damaged body and no
/// entry that is not its action's; entries from before the crash are
/// kept; and the sweep it starts leaves the store clean, the damage no
/// lookup met included.
#[test]
fn after_a_power_loss_the_next_helper_hands_go_nothing_damaged_and_the_store_is_cleaned() {
    let sandbox = Sandbox::new();
    put_all(&sandbox, &[1, 2, 3]);
    wait_for_no_markers(&sandbox);
    // An entry as a warren before the entry check wrote it, older than the
    // crash.
    fs::write(sandbox.entry_path(&action(3)), unchecked_line(3)).unwrap();

    let crash = a_moment_between();
    let paths = put_all(&sandbox, &[11, 12, 13, 14, 15, 16, 17]);
    wait_for_no_markers(&sandbox);
    // What the power loss did to what was not on disk yet.
    damage_in_place(&paths[0]); // 11's object: other bytes
    fs::copy(
        sandbox.entry_path(&action(13)),
        sandbox.entry_path(&action(12)),
    )
    .unwrap(); // 12 holds 13's line
    fs::write(sandbox.entry_path(&action(14)), unchecked_line(14)).unwrap(); // 14: no check
    // 16's object damaged, and no lookup asks for 16: the sweep finds it.
    damage_in_place(&paths[5]);
    fs::create_dir_all(dirty(&sandbox)).unwrap();
    let made = (crash + SLACK).duration_since(UNIX_EPOCH).unwrap();
    fs::write(
        dirty(&sandbox).join(format!("{OTHER_BOOT}_0_4242_0")),
        format!("{}\n", made.as_nanos()),
    )
    .unwrap();

    let mut helper = sandbox.spawn();
    helper.handshake();
    for n in [11, 12, 14] {
        expect_miss(&helper.call(&get(n as i64, &action(n))));
    }
    for n in [1, 2, 3, 13, 15, 17] {
        let path = expect_hit(&helper.call(&get(n as i64, &action(n))), &body(n));
        assert_eq!(sha256_file(&path), sha256(&body(n)));
    }
    assert_eq!(helper.close(1000), "", "a helper printed on stderr");

    wait_for_no_markers(&sandbox);
    assert!(!paths[5].exists(), "the sweep left a damaged object");
    assert!(!sandbox.entry_path(&action(16)).exists());
    let verify = sandbox.run(&["verify"]);
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{stdout}");
    assert!(
        stdout.contains(", 0 files (0 B) corrupt"),
        "not clean after the recovery: {stdout}"
    );
}

/// A helper killed while it wrote (the machine up) left its marker: the
/// kernel holds all it wrote, so the next helper verifies nothing, syncs
/// once after its `go` command, and clears it.
#[test]
fn a_killed_helpers_marker_is_cleared_by_the_next_helpers_sync() {
    let sandbox = Sandbox::new();
    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_stored(&helper.call(&put(1, &action(1), &body(1))));
    helper.kill();
    assert_eq!(markers(&sandbox).len(), 1, "the killed helper's marker");

    let mut helper = sandbox.spawn();
    helper.handshake();
    expect_hit(&helper.call(&get(1, &action(1))), &body(1));
    assert_eq!(helper.close(1000), "");
    wait_for_no_markers(&sandbox);
}
