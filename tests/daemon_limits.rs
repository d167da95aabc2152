//! One daemon on loopback (mDNS off) and its file descriptors: it starts
//! with as many as the system allows, and when it runs short anyway it
//! keeps quiet, and comes back when they return.

mod sandbox;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit, setrlimit};
use sandbox::{DAEMON_CONFIG, Daemon, Sandbox};

/// With its file descriptors used up (EMFILE), every accept on the
/// helpers' socket fails until one is closed. The daemon tried again every
/// 10 ms and logged each try: hundreds of lines a second on the user's
/// terminal or journal. It must back off, tell it once, and serve helpers
/// again within a second or so of descriptors coming back.
#[test]
fn out_of_file_descriptors_the_daemon_backs_off_and_says_so_once() {
    let sandbox = Sandbox::new();
    sandbox.init_with_config(DAEMON_CONFIG);
    let daemon = Daemon::start(&sandbox);
    let status = || sandbox::ask_daemon(&sandbox, r#"{"op":"status"}"#, Duration::from_secs(5));
    assert!(status().is_some(), "{}", daemon.log());
    std::thread::sleep(Duration::from_millis(500));
    let open = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count() as u64;
    let pid = Pid::from_raw(daemon.pid() as i32).unwrap();
    // The daemon's hard limit is ours: it inherited it.
    let tight = Rlimit {
        current: Some(open + 2),
        maximum: getrlimit(Resource::Nofile).maximum,
    };
    let before = prlimit(Some(pid), Resource::Nofile, tight).unwrap();

    // Helpers that connect and say nothing yet: two are accepted, the
    // rest wait in the socket's queue while accept fails.
    let waiting: Vec<UnixStream> = (0..20)
        .filter_map(|_| UnixStream::connect(sandbox.store().join("daemon.sock")).ok())
        .collect();
    assert!(waiting.len() > 2);
    std::thread::sleep(Duration::from_secs(3));
    let during = daemon.warnings();
    drop(waiting);
    prlimit(Some(pid), Resource::Nofile, before).unwrap();

    let answered = std::time::Instant::now();
    assert!(
        status().is_some_and(|answer| answer.contains("status")),
        "{}",
        daemon.log()
    );
    assert!(
        answered.elapsed() < Duration::from_secs(4),
        "answered after {:?}",
        answered.elapsed()
    );
    assert!(
        during.len() <= 1,
        "{} warning lines in 3 s:\n{}",
        during.len(),
        during.join("\n")
    );
    assert!(
        during
            .iter()
            .all(|line| line.contains("Too many open files")),
        "{during:?}"
    );
}

/// A daemon started with a login session's low soft limit on open files
/// (often 1,024, a `select(2)`-era default) raises it to the hard limit:
/// an office's connections and the bodies in flight need more.
#[test]
#[expect(clippy::print_stderr, reason = "a skipped test says why")]
fn the_daemon_raises_its_soft_limit_on_open_files_to_the_hard_one() {
    let ours = getrlimit(Resource::Nofile);
    let Some(hard) = ours.maximum.filter(|&hard| hard > 512) else {
        eprintln!("skipped: the hard limit on open files is {ours:?}, nothing to raise to");
        return;
    };
    let sandbox = Sandbox::new();
    sandbox.init_with_config(DAEMON_CONFIG);
    // The daemon inherits a soft limit of 512 from this process, which
    // has its own back however the start goes.
    struct Restore(Rlimit);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = setrlimit(Resource::Nofile, self.0);
        }
    }
    let low = Rlimit {
        current: Some(512),
        maximum: Some(hard),
    };
    let restore = Restore(ours);
    setrlimit(Resource::Nofile, low).unwrap();
    let daemon = Daemon::start(&sandbox);
    drop(restore);
    let status = sandbox::ask_daemon(&sandbox, r#"{"op":"status"}"#, Duration::from_secs(5));
    assert!(status.is_some(), "{}", daemon.log());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid())).unwrap();
    let soft = (limits.lines())
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .unwrap_or_else(|| panic!("no open-files line in:\n{limits}"));
    assert_eq!(soft, hard.to_string(), "{limits}");
}
