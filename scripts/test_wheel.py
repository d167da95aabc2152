"""The PyPI package: installing its wheel puts the real `warren` on PATH, and Go builds through it.

Most Go developers have no Rust toolchain, so warren ships as a wheel
(pyproject.toml, maturin's `bin` bindings). This builds that wheel from the
checkout, installs it into a fresh virtual environment from the file alone
(no index), runs `warren --version`, and builds a small Go program through
the installed binary, cold and then warm, comparing the program with one
built with Go's own cache (as tests/go_build.rs does with the cargo-built
binary). It also checks that the sdist carries the whole workspace.

maturin comes from PyPI into .venv-wheel/ (git-ignored), at the version
pyproject.toml's build-system asks for. The wheel is built into
CARGO_TARGET_DIR (or target/) with the dev profile, whose artifacts
`cargo test` has just built, so in the suite it costs a link, not another
build of the workspace (the packaging is the same; the release workflow
builds with --release). WARREN_WHEEL_RELEASE=1 builds it with --release, as
the workflow does. `go` comes from
scripts/go-toolchain.sh. Run alone with
`python3 -m unittest scripts/test_wheel.py`; scripts/test.sh runs it with the
other scripts/test_*.py.
"""

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
import zipfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

REPO = Path(__file__).resolve().parent.parent
MATURIN_VENV = REPO / ".venv-wheel"
DISTRIBUTION = "warren_gocache"  # the project name as wheel and sdist files spell it

# A build of the whole workspace on a cold target dir takes minutes on a
# loaded 2-core machine; these only stop a hung build.
BUILD_TIMEOUT = 3600
GO_TIMEOUT = 600

# A module with a main package and a package of its own: quick to build,
# and the build still goes through warren for the standard library's
# packages it imports.
MODULE = {
    "go.mod": "module example.com/hello\n\ngo 1.24\n",
    "main.go": (
        "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/hello/greet\"\n)\n\n"
        "func main() { fmt.Println(greet.Hello(\"warren\")) }\n"
    ),
    "greet/greet.go": (
        "package greet\n\nimport \"strings\"\n\n// Hello greets name.\n"
        "func Hello(name string) string {\n"
        "\treturn \"hello, \" + strings.ToUpper(name[:1]) + name[1:]\n}\n"
    ),
}


def run(args, what, timeout, **kwargs):
    """Runs args, returning the CompletedProcess; fails the test with the
    command's output if it does not exit 0 in time."""
    try:
        done = subprocess.run(
            [str(arg) for arg in args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
    except subprocess.TimeoutExpired as timeout_error:
        raise AssertionError(f"{what}: no answer after {timeout} s: {args}") from timeout_error
    except OSError as error:
        raise AssertionError(f"{what}: cannot run {args[0]}: {error}") from error
    if done.returncode != 0:
        raise AssertionError(
            f"{what} failed (exit {done.returncode}): {' '.join(map(str, args))}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    return done


def read_toml(path):
    if tomllib is None:
        raise AssertionError(f"reading {path} needs Python 3.11+ (tomllib); this is {sys.version}")
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError as error:
        raise AssertionError(f"{path} is missing: warren is not packaged for PyPI") from error


def cargo_version():
    """The version the wheel must carry: Cargo.toml's, as pyproject.toml's
    `dynamic = ["version"]` says."""
    cargo = read_toml(REPO / "Cargo.toml")
    version = cargo["package"]["version"]
    if isinstance(version, dict):  # version.workspace = true
        version = cargo["workspace"]["package"]["version"]
    return version


def maturin():
    """The maturin that pyproject.toml's build-system asks for, installed
    from PyPI into .venv-wheel/ once (under a lock, for parallel runs)."""
    requires = read_toml(REPO / "pyproject.toml")["build-system"]["requires"]
    venv = MATURIN_VENV / "venv"
    marker = venv / ".installed"
    binary = venv / "bin" / "maturin"
    MATURIN_VENV.mkdir(exist_ok=True)
    with open(MATURIN_VENV / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == json.dumps(requires) and binary.exists():
            return binary
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", venv], "creating .venv-wheel/venv", 300)
        run(
            [venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q",
             *requires],
            f"installing {requires} from PyPI into .venv-wheel/venv",
            900,
        )
        run([binary, "--version"], "the installed maturin", 60)
        marker.write_text(json.dumps(requires))
    return binary


def go_binary():
    done = run(["bash", REPO / "scripts" / "go-toolchain.sh"], "scripts/go-toolchain.sh", 900)
    go = done.stdout.strip()
    if not os.path.isabs(go) or not os.access(go, os.X_OK):
        raise AssertionError(
            f"scripts/go-toolchain.sh printed {go!r}, not an executable's absolute path")
    return go


class WheelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.version = cargo_version()
        cls.maturin = maturin()

    def setUp(self):
        scratch = tempfile.TemporaryDirectory(prefix="warren-wheel-")
        self.addCleanup(scratch.cleanup)
        self.tmp = Path(scratch.name)

    def test_sdist_carries_the_workspace(self):
        """The sdist builds what the repository builds: every workspace
        member's manifest and sources, the lock file, and nothing of the
        build's or the test suite's own."""
        run(
            [self.maturin, "sdist", "--out", self.tmp],
            "maturin sdist",
            300,
            cwd=REPO,
        )
        sdists = list(self.tmp.glob("*.tar.gz"))
        self.assertEqual(len(sdists), 1, f"maturin sdist made {sdists}")
        self.assertEqual(sdists[0].name, f"{DISTRIBUTION}-{self.version}.tar.gz")
        with tarfile.open(sdists[0]) as sdist:
            prefix = f"{DISTRIBUTION}-{self.version}/"
            names = {name.removeprefix(prefix) for name in sdist.getnames()}
            cargo_toml = tomllib.loads(sdist.extractfile(prefix + "Cargo.toml").read().decode())
            pkg_info = sdist.extractfile(prefix + "PKG-INFO").read().decode()
        for member in cargo_toml["workspace"]["members"]:
            manifest = "Cargo.toml" if member == "." else f"{member}/Cargo.toml"
            self.assertIn(manifest, names, f"workspace member {member} is not in the sdist")
        for path in ["Cargo.lock", "pyproject.toml", "README.md", "src/main.rs", "p2p/src/lib.rs"]:
            self.assertIn(path, names)
        for name in names:
            for part in ["target/", ".venv-", "fuzz/", "scripts/"]:
                self.assertFalse(name.startswith(part), f"the sdist carries {name}")
        self.assertIn("Name: warren-gocache\n", pkg_info)
        self.assertIn(f"Version: {self.version}\n", pkg_info)

    def test_installed_wheel_runs_go_builds(self):
        """`pip install` of the wheel alone gives a `warren` that is the Rust
        binary itself (no Python shim between `go` and the helper), and `go`
        builds through it, cold and warm, exactly what it builds with its own
        cache."""
        dist = self.tmp / "dist"
        release = ["--release"] if os.environ.get("WARREN_WHEEL_RELEASE") == "1" else []
        run(
            [self.maturin, "build", *release, "--locked", "--out", dist],
            "maturin build",
            BUILD_TIMEOUT,
            cwd=REPO,
        )
        wheels = list(dist.glob("*.whl"))
        self.assertEqual(len(wheels), 1, f"maturin build made {wheels}")
        wheel = wheels[0]
        self.assertTrue(
            wheel.name.startswith(f"{DISTRIBUTION}-{self.version}-py3-none-"), wheel.name)
        with zipfile.ZipFile(wheel) as archive:
            scripts = [name for name in archive.namelist() if "/scripts/" in name]
        self.assertEqual(scripts, [f"{DISTRIBUTION}-{self.version}.data/scripts/warren"])

        venv = self.tmp / "venv"
        run([sys.executable, "-m", "venv", venv], "creating a virtual environment", 300)
        run(
            [venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check",
             "--no-index", "--no-deps", "-q", wheel],
            f"pip install {wheel.name}",
            300,
        )
        warren = venv / "bin" / "warren"
        self.assertTrue(os.access(warren, os.X_OK), f"{warren} is not an executable")
        with open(warren, "rb") as file:
            magic = file.read(4)
        self.assertIn(magic, [b"\x7fELF", b"\xcf\xfa\xed\xfe"], f"{warren} is not a native binary")

        done = run([warren, "--version"], "warren --version", 60,
                   env={"PATH": os.environ.get("PATH", "")})
        self.assertEqual(done.stdout, f"warren {self.version}\n")
        self.assertEqual(done.stderr, "")

        self.go_builds_through(warren)

    def go_builds_through(self, warren):
        go = go_binary()
        for sub in ["home", "config", "gopath", "work"]:
            (self.tmp / sub).mkdir()
        for name, text in MODULE.items():
            path = self.tmp / "work" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        store = self.tmp / "store"
        # Nothing from the caller's environment but PATH: a home, config and
        # store of its own, sharing off (no daemon), no network for go.
        base = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.tmp / "home"),
            "XDG_CONFIG_HOME": str(self.tmp / "config"),
            "XDG_CACHE_HOME": str(self.tmp / "home" / ".cache"),
            "GOPATH": str(self.tmp / "gopath"),
            "GOMODCACHE": str(self.tmp / "gopath" / "pkg" / "mod"),
            "GOTOOLCHAIN": "local",
            "GOTELEMETRY": "off",
            "GOPROXY": "off",
            "GOFLAGS": "",
            "WARREN_DIR": str(store),
            "WARREN_SHARE": "0",
        }

        def build(out, gocache, through_warren, *flags):
            """Builds the program; returns it and go's stderr."""
            env = dict(base, GOCACHE=str(self.tmp / gocache))
            if through_warren:
                env["GOCACHEPROG"] = str(warren)
            done = run([go, "build", *flags, "-o", out, "."],
                       f"go build -o {out} (GOCACHE={gocache})",
                       GO_TIMEOUT, cwd=self.tmp / "work", env=env)
            return (self.tmp / "work" / out).read_bytes(), done.stderr

        def lifetime():
            done = run([warren, "stats", "--json"], "warren stats --json", 60, env=base)
            return json.loads(done.stdout)["lifetime"]

        plain, _ = build("hello-plain", "gocache-plain", False)
        cold, stderr = build("hello-cold", "gocache-cold", True)
        self.assertEqual(stderr, "", "go build through warren printed on stderr")
        after_cold = lifetime()
        self.assertGreater(after_cold["puts"], 0,
                           f"the cold build stored nothing in warren: {after_cold}")
        # Warm, with a cold GOCACHE of its own: every compile comes from
        # warren's store, and go only links (it keeps executables in its own
        # disk cache alone, never through GOCACHEPROG). -x lists each tool go
        # runs, on stderr (buildid stamps the linked program).
        warm, commands = build("hello-warm", "gocache-warm", True, "-x")
        tools = re.findall(r"/pkg/tool/[^/\s]+/(\w+) ", commands)
        self.assertIn("link", tools, f"go -x shows no link:\n{commands}")
        self.assertEqual([tool for tool in tools if tool not in ("link", "buildid")], [],
                         f"the warm build ran more than the linker:\n{commands}")
        stats = lifetime()
        self.assertGreater(stats["hits"] - after_cold["hits"], 0,
                           f"the warm build got nothing from warren: {stats}")
        self.assertEqual(stats["errors"], 0, f"warren answered with errors: {stats}")

        self.assertTrue(plain == cold,
                        "the program built through a cold warren differs from Go's own")
        self.assertTrue(plain == warm,
                        "the program built from warren's store differs from Go's own")
        run([self.tmp / "work" / "hello-warm"], "the program built from warren's store", 60)


if __name__ == "__main__":
    unittest.main()
