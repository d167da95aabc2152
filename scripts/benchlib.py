"""What warren's benchmarks share: locating go and warren, running and timing
processes, removing trees, formatting figures, and describing the machine.

Used by bench.py (go's builtin cache against warren) and bench_share.py
(builds served by a peer). Linux only (/proc). Python 3.11+, standard
library only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLCHAIN_SCRIPT = REPO / "scripts" / "go-toolchain.sh"

# The one big body both benchmarks move: a put to the helper, a get from a peer.
BIG_BODY = 256 << 20  # bytes


class BenchError(Exception):
    pass


def logger(name: str) -> Callable[[str], None]:
    """A function that prints ``name: msg`` to stderr at once."""

    def log(msg: str) -> None:
        print(f"{name}: {msg}", file=sys.stderr, flush=True)

    return log


def rmtree(path: Path) -> None:
    """Removes a tree, including the read-only files of a Go module cache."""

    def retry(func, p, _exc):  # shutil's onerror/onexc signature
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except FileNotFoundError:
            pass  # e.g. removed meanwhile by warren's background trim

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def tree_size(path: Path) -> int:
    """Bytes in regular files under ``path``."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def gocacheprog_value(warren: Path) -> str:
    """GOCACHEPROG is split into words by go (cmd/internal/quoted): quote."""
    s = str(warren)
    if not any(c.isspace() for c in s):
        return s
    for q in ("'", '"'):
        if q not in s:
            return f"{q}{s}{q}"
    raise BenchError(f"cannot quote {s!r} for GOCACHEPROG")


class Watchdog:
    """Kills a process's session (see start_new_session) if it outlives a timeout."""

    def __init__(self, proc: subprocess.Popen, timeout: float) -> None:
        self.proc = proc
        self.timeout = timeout
        self.fired = False
        self._timer = threading.Timer(timeout, self._kill)

    def _kill(self) -> None:
        self.fired = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def wait_with_timeout(proc: subprocess.Popen, timeout: float) -> tuple[int, os.struct_rusage]:
    """os.wait4 on ``proc``: (exit code, rusage). Kills its session on timeout."""
    with Watchdog(proc, timeout) as watchdog:
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if watchdog.fired:
        raise BenchError(f"{' '.join(map(str, proc.args))} timed out after {timeout:.0f} s")
    return proc.returncode, usage


def med(values: list) -> float:
    """The median of the values measured (None: not measured), NaN if none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def rotate(kinds, run: int):
    """``kinds`` (a list or tuple) in an order that rotates from run to run,
    so that no kind always runs first."""
    n = run % len(kinds)
    return kinds[n:] + kinds[:n]


def fmt_s(seconds: float) -> str:
    """Three significant digits: 23.8 s, 2.38 s, 0.254 s."""
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds:.3f} s"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


# What version queries run with: no user configuration, no telemetry, no
# toolchain download.
QUIET_ENV = {
    "PATH": os.environ.get("PATH", ""),
    "HOME": "/nonexistent",
    "GOTOOLCHAIN": "local",
    "GOTELEMETRY": "off",
}


def command_output(argv: list[str], env: dict[str, str] | None = None) -> str:
    """The first line a command prints (stdout, else stderr), for reports."""
    try:
        r = subprocess.run(
            argv,
            env=QUIET_ENV if env is None else env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return (r.stdout.strip() or r.stderr.strip() or f"exit status {r.returncode}").splitlines()[0]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def resolve_go(arg: Path | None) -> Path:
    """``arg``, or the toolchain scripts/go-toolchain.sh finds or installs."""
    if arg is not None:
        go = Path(os.path.abspath(arg))
    else:
        r = subprocess.run([str(TOOLCHAIN_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
        if r.returncode != 0 or not r.stdout.strip():
            raise BenchError(f"{TOOLCHAIN_SCRIPT} failed (exit status {r.returncode})")
        go = Path(r.stdout.strip())
    if not os.access(go, os.X_OK):
        raise BenchError(f"go binary {go} is not executable")
    return go


def resolve_warren(arg: Path) -> Path:
    warren = Path(os.path.abspath(arg))
    if not os.access(warren, os.X_OK):
        raise BenchError(
            f"warren binary {warren} not found or not executable; "
            "build it with `cargo build --release` or pass --warren"
        )
    return warren


def checkout_of(warren: Path) -> Path:
    """The git checkout a warren binary was built in (its target/ is inside
    it), or this script's checkout."""
    return next((p for p in warren.parents if (p / ".git").exists()), REPO)


def git_commit(warren: Path) -> str:
    """The commit of the binary's checkout, and whether the binary may not
    match it."""
    repo = checkout_of(warren)
    head = command_output(["git", "-C", str(repo), "log", "-1", "--format=%h %s"])
    watched = ["src", "p2p", "Cargo.toml", "Cargo.lock"]
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--", *watched],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    notes = ["uncommitted changes in src/p2p"] if dirty else []
    with contextlib.suppress(OSError):
        built = warren.stat().st_mtime
        sources = [f for d in ("src", "p2p") for f in (repo / d).rglob("*.rs")]
        sources += [repo / "Cargo.toml", repo / "Cargo.lock"]
        if any(f.stat().st_mtime > built for f in sources if f.exists()):
            notes.append("the binary is OLDER than the sources")
    return head + (f" ({'; '.join(notes)})" if notes else "")


def machine_info(go: Path, warren: Path, env: dict[str, str] | None = None) -> dict:
    """What a report says about the machine and the binaries it ran."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "go": str(go),
        "go_version": command_output([str(go), "version"], env),
        "warren": str(warren),
        "warren_version": command_output([str(warren), "--version"], env),
        "warren_commit": git_commit(warren),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "load_avg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def common_args(p: argparse.ArgumentParser, runs: int, runs_help: str) -> None:
    """The options every benchmark takes: how many runs, which binaries,
    where the JSON goes, whether to keep the scratch directory."""
    p.add_argument("--runs", type=int, default=runs, help=f"{runs_help} (default {runs})")
    p.add_argument(
        "--warren",
        type=Path,
        default=REPO / "target" / "release" / "warren",
        help="warren binary (default target/release/warren)",
    )
    p.add_argument("--go", type=Path, help="go binary (default: scripts/go-toolchain.sh)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--keep-tmp", action="store_true", help="keep the scratch directory")


def parse_counts(
    p: argparse.ArgumentParser, argv: list[str] | None, counts: tuple[str, ...]
) -> argparse.Namespace:
    """Parses ``argv``; the options named in ``counts`` must be at least 1."""
    args = p.parse_args(argv)
    if any(getattr(args, name) < 1 for name in counts):
        flags = ["--" + name.replace("_", "-") for name in counts]
        p.error(f"{', '.join(flags[:-1])} and {flags[-1]} must be at least 1")
    return args


def big_body_args(p: argparse.ArgumentParser, size: str, runs: str, what: str) -> None:
    """Options for the big body: its size in MiB (``--<size>``) and how many
    times it is timed (``--<runs>``); ``what`` names one ("put", "get")."""
    p.add_argument(
        f"--{size}",
        type=int,
        default=BIG_BODY >> 20,
        help=f"size of the big {what}'s body in MiB (default {BIG_BODY >> 20})",
    )
    p.add_argument(f"--{runs}", type=int, default=3, help=f"big {what}s to time (default 3)")
