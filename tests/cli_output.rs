//! The command line's output to a reader that goes away.

use std::process::{Command, Stdio};

/// `warren stats | head -0`: the reader closes the pipe before warren
/// writes, as text or as JSON. That is not an error to print on the
/// user's terminal.
#[test]
fn a_closed_stdout_ends_quietly() {
    for args in [&["stats"][..], &["stats", "--json"], &["config"]] {
        closed_stdout_ends_quietly(args);
    }
}

fn closed_stdout_ends_quietly(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env_clear()
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("WARREN_DIR", dir.path().join("store"))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "warren {args:?}: {stderr}");
    assert!(output.status.success(), "warren {args:?}: {output:?}");
}
