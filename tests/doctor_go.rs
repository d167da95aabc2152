//! `warren doctor`'s Go section against setups that break every build:
//! a `GOEXPERIMENT=cacheprog` left over from an old GOCACHEPROG guide
//! (refused by newer `go` commands), and a `GOCACHEPROG` that names a
//! missing file, a program that is not warren, or a warren of another
//! version. Each runs the real `go` and the built `warren` in an isolated
//! home, with sharing off, so no daemon is asked and nothing is sent.
#![expect(
    clippy::disallowed_methods,
    reason = "the test writes fake programs, not store files"
)]

mod go_env;

use std::path::{Path, PathBuf};
use std::process::Command;

use go_env::{go, isolate, other_version, warren_bin, warren_of_version};
use serde_json::Value;

/// `warren doctor --json` with `go` first on PATH and `env` set, in a home
/// of its own under `root`.
fn doctor(root: &Path, go: &Path, env: &[(&str, &str)]) -> Value {
    for sub in ["home", "config", "work", "gopath"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let mut cmd = Command::new(warren_bin());
    cmd.args(["doctor", "--json"]);
    isolate(&mut cmd, root, "gocache");
    let path = format!(
        "{}:{}",
        go.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path).env("WARREN_DIR", root.join("store"));
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = cmd.output().unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The Go section's checks whose line contains `text`.
fn go_checks<'a>(report: &'a Value, text: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["section"] == "Go" && c["what"].as_str().unwrap().contains(text))
        .collect()
}

/// The one Go check whose line contains `text`.
fn go_check<'a>(report: &'a Value, text: &str) -> &'a Value {
    let found = go_checks(report, text);
    assert_eq!(
        found.len(),
        1,
        "no single Go check saying {text:?}:\n{report:#}"
    );
    found[0]
}

fn fix(check: &Value) -> &str {
    check["fix"].as_str().unwrap_or_default()
}

fn executable(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Go 1.26 and later refuse `GOEXPERIMENT=cacheprog` ("go: unknown
/// GOEXPERIMENT cacheprog"), so every `go` command fails; 1.24 and 1.25
/// accept it. The doctor asks `go` itself and says to unset it only where
/// `go` refuses it.
#[test]
fn goexperiment_cacheprog_is_a_problem_where_go_refuses_it() {
    for version in ["1.26.6", "1.27.3"] {
        let root = tempfile::tempdir().unwrap();
        let report = doctor(
            root.path(),
            &go(Some(version)),
            &[("GOEXPERIMENT", "cacheprog")],
        );
        let check = go_check(&report, "GOEXPERIMENT");
        assert_eq!(check["status"], "problem", "go {version}: {report:#}");
        assert!(
            check["what"].as_str().unwrap().contains("cacheprog"),
            "go {version}: {report:#}"
        );
        assert!(fix(check).contains("unset GOEXPERIMENT"), "{report:#}");
    }
    for version in ["1.24.11", "1.25.5"] {
        let root = tempfile::tempdir().unwrap();
        let report = doctor(
            root.path(),
            &go(Some(version)),
            &[("GOEXPERIMENT", "cacheprog")],
        );
        assert!(
            go_checks(&report, "GOEXPERIMENT").is_empty(),
            "go {version} accepts it:\n{report:#}"
        );
        assert_eq!(
            go_check(&report, &format!("go{version}"))["status"],
            "ok",
            "{report:#}"
        );
    }
}

/// The same experiment written into go's own env file by an older `go`
/// (`go env -w GOEXPERIMENT=cacheprog`): the fix is `go env -u`.
#[test]
fn goexperiment_cacheprog_in_gos_env_file_is_named_with_its_fix() {
    let root = tempfile::tempdir().unwrap();
    for sub in ["home", "config", "work", "gopath"] {
        std::fs::create_dir_all(root.path().join(sub)).unwrap();
    }
    let mut write = Command::new(go(Some("1.24.11")));
    write.args(["env", "-w", "GOEXPERIMENT=cacheprog"]);
    isolate(&mut write, root.path(), "gocache");
    assert!(write.status().unwrap().success());
    let report = doctor(root.path(), &go(Some("1.27.3")), &[]);
    let check = go_check(&report, "GOEXPERIMENT");
    assert_eq!(check["status"], "problem", "{report:#}");
    assert!(fix(check).contains("go env -u GOEXPERIMENT"), "{report:#}");
}

/// `GOCACHEPROG` naming a file that is not there: `go` cannot start it.
#[test]
fn a_missing_gocacheprog_is_a_problem() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("bin/warren");
    let report = doctor(
        root.path(),
        &go(None),
        &[("GOCACHEPROG", missing.to_str().unwrap())],
    );
    let check = go_check(&report, "GOCACHEPROG");
    assert_eq!(check["status"], "problem", "{report:#}");
    assert!(
        check["what"].as_str().unwrap().contains("does not exist"),
        "{report:#}"
    );
    assert!(fix(check).contains("go env -w GOCACHEPROG="), "{report:#}");
}

/// `GOCACHEPROG` naming a program that is not warren (`true`, copied): it
/// never answers go's requests, so builds fail.
#[test]
fn a_gocacheprog_that_is_not_warren_is_a_problem() {
    let root = tempfile::tempdir().unwrap();
    let fake = executable(root.path(), "warren", &std::fs::read("/bin/true").unwrap());
    let report = doctor(
        root.path(),
        &go(None),
        &[("GOCACHEPROG", fake.to_str().unwrap())],
    );
    let check = go_check(&report, "GOCACHEPROG");
    assert_eq!(check["status"], "problem", "{report:#}");
    assert!(
        check["what"].as_str().unwrap().contains("is not warren"),
        "{report:#}"
    );
}

/// `GOCACHEPROG` naming another warren: of this version it is warren all
/// the same; of another version, the doctor names that version.
#[test]
fn a_gocacheprog_of_another_warren_version_is_named() {
    let mine = env!("CARGO_PKG_VERSION");
    let root = tempfile::tempdir().unwrap();
    let same = executable(root.path(), "same", &std::fs::read(warren_bin()).unwrap());
    let report = doctor(
        root.path(),
        &go(None),
        &[("GOCACHEPROG", same.to_str().unwrap())],
    );
    let check = go_check(&report, "GOCACHEPROG");
    assert!(
        check["what"]
            .as_str()
            .unwrap()
            .contains(&format!("warren {mine}")),
        "{report:#}"
    );
    assert_ne!(check["status"], "problem", "{report:#}");

    let other_version = other_version();
    let other = warren_of_version(root.path(), &other_version);
    let report = doctor(
        root.path(),
        &go(None),
        &[("GOCACHEPROG", other.to_str().unwrap())],
    );
    let check = go_check(&report, "GOCACHEPROG");
    assert_eq!(check["status"], "warning", "{report:#}");
    assert!(
        check["what"]
            .as_str()
            .unwrap()
            .contains(&format!("warren {other_version}")),
        "{report:#}"
    );
    assert!(fix(check).contains("go env -w GOCACHEPROG="), "{report:#}");
}
