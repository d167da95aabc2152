#!/usr/bin/env python3
"""warren's benchmark: the go command with its builtin cache versus with warren.

Usage:
    python3 scripts/bench.py [--runs N] [--warren PATH] [--go PATH]
                             [--skip-cold] [--json FILE]

What it measures, and why:

* ``go build std`` with an empty cache ("cold"). Every compiled package goes
  through the cache as a ``get`` miss followed by a ``put``, so this shows the
  price of the GOCACHEPROG round trips and of storing ~180 MB of outputs when
  nothing can be reused. The builds are CPU-bound, so warren should cost
  almost nothing here.
* ``go build std`` on a populated cache ("warm"). Nothing is compiled; the
  go command hashes its inputs and does one ``get`` per action. This is where
  a helper's per-request latency shows most, because there is no compile time
  to hide it behind.
* Peak RSS of the helper while it receives one 256 MiB ``put`` (the go
  command streams bodies as base64 on the helper's stdin). A helper that
  buffers whole bodies would need hundreds of MiB here; a streaming one stays
  flat. A 1-byte put gives the baseline, and the time of the big put gives the
  helper's ingest throughput.

Method:

* builtin and warren runs are interleaved, alternating which goes first, so
  drifting machine load affects both sides alike; medians are reported, with
  every raw time alongside. Run i of both sides ran back to back, so the
  median of the per-run ratios is reported too: on a machine whose speed
  drifts over minutes (this VM's does, by 10-20%), it is steadier than the
  ratio of the medians, which can pair a fast run of one side with a slow
  run of the other.
* Each go invocation gets its own HOME, GOPATH, GOMODCACHE and XDG_* dirs in a
  scratch directory, GOPROXY=off, GOTOOLCHAIN=local, GOTELEMETRY=off,
  GOENV=off, and no inherited GO* or WARREN_* variables, so neither the
  user's go nor warren configuration leaks in. The builtin side has no
  GOCACHEPROG; the warren side has GOCACHEPROG=<warren> and its own empty
  WARREN_DIR and GOCACHE.
* Wall time is time.perf_counter() from spawning go until go exits. go's
  output goes to files, not pipes, so a detached grandchild holding them open
  cannot stretch a measurement. CPU time (user+sys of go and every process it
  waited for: compilers, linker, helper) comes from os.wait4().
* warren must be silent on success: any stderr from a warren-side build (the
  helper shares go's stderr) is reported as a failure.
* Peak RSS is the helper's VmHWM from /proc/<pid>/status, read after the put
  is answered (and again after close, if the process is still there). It is
  NOT ru_maxrss from os.wait4(): Linux folds the parent's peak RSS into a
  child's ru_maxrss at exec, so that figure is never below this Python
  process's own RSS (~15 MiB, and 256+ MiB once the test body is in memory).
  The wait4 value is still recorded in the JSON output, marked as such.
* The put throughput counts body bytes (MB = 10^6 bytes) from the request
  being written to its answer being read. The script's own cost of
  base64-encoding the body is measured separately and shown as the sender's
  ceiling; a throughput close to it means the benchmark, not warren, was the
  limit.

Linux only (/proc). Python 3.11+, standard library only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchlib import (
    BenchError,
    Watchdog,
    big_body_args,
    common_args,
    fmt_s,
    gocacheprog_value,
    logger,
    mib,
    parse_counts,
    resolve_go,
    resolve_warren,
    rmtree,
    tree_size,
    wait_with_timeout,
)
from benchlib import machine_info as common_machine_info

log = logger("bench")

# Raw bytes per base64 chunk: a multiple of 3, so chunks encode independently
# (no '=' padding except in the last one) and concatenate to valid base64.
B64_CHUNK = 3 << 20
BUILD_TIMEOUT = 3600.0  # seconds, per go invocation
HELPER_TIMEOUT = 300.0  # seconds, per direct helper session


# --------------------------------------------------------------------------
# Scratch space and environment


class Scratch:
    """A temporary directory tree, removed at the end unless kept."""

    def __init__(self, keep: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="warren-bench-"))
        self.keep = keep

    def new(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path

    def remove(self, path: Path) -> None:
        if not self.keep:
            rmtree(path)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            print(f"scratch files kept in {self.root}", file=sys.stderr)
        else:
            rmtree(self.root)


def base_env(home: Path) -> dict[str, str]:
    """The environment shared by every go and warren process of one run.

    Everything a user's shell could configure for go or warren is dropped;
    all per-user locations point into ``home`` (a fresh scratch directory).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GO", "WARREN_", "XDG_"))}
    dirs = {
        "HOME": home / "home",
        "GOPATH": home / "gopath",
        "GOMODCACHE": home / "gopath" / "pkg" / "mod",
        "XDG_CACHE_HOME": home / "xdg-cache",
        "XDG_CONFIG_HOME": home / "xdg-config",
        "XDG_DATA_HOME": home / "xdg-data",
        "XDG_STATE_HOME": home / "xdg-state",
        "XDG_RUNTIME_DIR": home / "xdg-runtime",
    }
    for name, path in dirs.items():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        env[name] = str(path)
    env.update(
        GOTOOLCHAIN="local",
        GOTELEMETRY="off",
        GOPROXY="off",
        GOENV="off",
    )
    return env


# --------------------------------------------------------------------------
# go builds


@dataclass
class Build:
    """One timed `go build std`."""

    side: str  # "builtin" or "warren"
    wall_s: float
    cpu_s: float
    stderr: str


@dataclass
class Sides:
    """Timed builds of one workload, in run order."""

    builtin: list[Build] = field(default_factory=list)
    warren: list[Build] = field(default_factory=list)

    def add(self, b: Build) -> None:
        getattr(self, b.side).append(b)

    def median(self, side: str) -> float:
        return statistics.median(b.wall_s for b in getattr(self, side))

    def cpu_median(self, side: str) -> float:
        return statistics.median(b.cpu_s for b in getattr(self, side))

    def ratio(self) -> float:
        return self.median("warren") / self.median("builtin")

    def paired_ratio(self) -> float:
        """Median of warren/builtin over runs taken back to back."""
        return statistics.median(
            w.wall_s / b.wall_s for b, w in zip(self.builtin, self.warren, strict=True)
        )


class Builder:
    """Runs `go build std` for either side in a given set of directories."""

    def __init__(self, go: Path, warren: Path) -> None:
        self.go = go
        self.warren = warren

    def env(self, side: str, home: Path) -> dict[str, str]:
        """Environment for one side; caches live in ``home`` and persist."""
        env = base_env(home)
        env["GOCACHE"] = str(mkdir(home / "gocache"))
        if side == "warren":
            env["GOCACHEPROG"] = gocacheprog_value(self.warren)
            env["WARREN_DIR"] = str(mkdir(home / "warren"))
        return env

    def build(self, side: str, home: Path) -> Build:
        """Runs one build in ``home``; raises BenchError if it fails."""
        env = self.env(side, home)
        work = mkdir(home / "work")
        out_path, err_path = home / "go.stdout", home / "go.stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [str(self.go), "build", "std"],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # so a timeout can kill the whole tree
            )
            status, usage = wait_with_timeout(proc, BUILD_TIMEOUT)
            wall = time.perf_counter() - t0
        stderr = err_path.read_text(errors="replace")
        if status != 0:
            raise BenchError(
                f"go build std ({side}) failed with exit status {status} "
                f"(--keep-tmp keeps {home} for inspection)\n"
                f"--- stderr ---\n{stderr}\n--- stdout ---\n"
                f"{out_path.read_text(errors='replace')}"
            )
        return Build(side, wall, usage.ru_utime + usage.ru_stime, stderr)


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Builds:
    """Results of the go build workloads."""

    prep: Sides  # the untimed builds that populate the warm caches
    cold: Sides | None
    warm: Sides
    cache_bytes: dict[str, int]

    def all(self) -> list[Build]:
        return [b for s in (self.prep, self.cold, self.warm) if s for b in s.builtin + s.warren]


def bench_builds(builder: Builder, scratch: Scratch, runs: int, cold: bool) -> Builds:
    """Runs the cold (unless not ``cold``) and warm workloads."""
    sides = ("builtin", "warren")

    # Populate the caches for the warm workload first: these two builds also
    # bring GOROOT and the binaries into the page cache, so the first cold
    # run is not penalised for being first.
    warm_homes = {s: scratch.new(f"warm-{s}") for s in sides}
    log("preparing warm caches")
    prep = Sides()
    for s in sides:
        prep.add(builder.build(s, warm_homes[s]))
    sizes = {
        "builtin GOCACHE": tree_size(warm_homes["builtin"] / "gocache"),
        "warren WARREN_DIR": tree_size(warm_homes["warren"] / "warren"),
        "warren GOCACHE": tree_size(warm_homes["warren"] / "gocache"),
    }

    cold_sides = None
    if cold:
        cold_sides = Sides()
        for i in range(runs):
            for s in sides if i % 2 == 0 else sides[::-1]:
                home = scratch.new(f"cold-{i}-{s}")
                b = builder.build(s, home)
                log(f"cold run {i + 1}/{runs} {s}: {b.wall_s:.2f} s")
                cold_sides.add(b)
                scratch.remove(home)

    warm = Sides()
    for i in range(runs):
        for s in sides if i % 2 == 0 else sides[::-1]:
            b = builder.build(s, warm_homes[s])
            log(f"warm run {i + 1}/{runs} {s}: {b.wall_s:.3f} s")
            warm.add(b)

    return Builds(prep, cold_sides, warm, sizes)


# --------------------------------------------------------------------------
# The helper on its own: one big put


@dataclass
class Put:
    """One helper session: capabilities, one put, close."""

    body_bytes: int
    peak_rss_kib: int  # VmHWM from /proc
    wait4_maxrss_kib: int  # inflated by this process's RSS; see docstring
    seconds: float  # writing the request until its answer was read
    stderr: str

    @property
    def mb_per_s(self) -> float:
        return self.body_bytes / 1e6 / self.seconds


def read_hwm_kib(pid: int) -> int | None:
    """The process's peak RSS (VmHWM) in KiB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def b64_chunks(body: memoryview):
    for off in range(0, len(body), B64_CHUNK):
        yield base64.b64encode(body[off : off + B64_CHUNK])


def sender_ceiling_mb_s(body: memoryview) -> float:
    """How fast this script alone can produce the base64 stream."""
    t0 = time.perf_counter()
    for _ in b64_chunks(body):
        pass
    return len(body) / 1e6 / (time.perf_counter() - t0)


def read_response(proc: subprocess.Popen, want_id: int) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise BenchError(f"helper closed stdout while we waited for response {want_id}")
    try:
        resp = json.loads(line)
    except json.JSONDecodeError as e:
        raise BenchError(f"helper wrote a non-JSON line {line[:200]!r}: {e}") from None
    if resp.get("ID") != want_id:
        raise BenchError(f"expected response ID {want_id}, got {resp!r}")
    return resp


def put_session(warren: Path, home: Path, body: bytes) -> Put:
    """Starts the helper, sends one put of ``body``, closes, measures."""
    env = base_env(home)
    env["WARREN_DIR"] = str(mkdir(home / "warren"))
    err_path = home / "warren.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [str(warren)],
            cwd=home,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    with Watchdog(proc, HELPER_TIMEOUT) as watchdog:
        try:
            seconds, hwm = converse(proc, body)
            proc.stdin.close()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        except (BrokenPipeError, BenchError) as e:
            proc.kill()
            proc.wait()
            why = f"timed out after {HELPER_TIMEOUT:.0f} s ({e})" if watchdog.fired else e
            raise BenchError(
                f"helper session with a {len(body)}-byte put failed: {why}\n"
                f"--- helper stderr ---\n{err_path.read_text(errors='replace')}"
            ) from None
        finally:
            for pipe in (proc.stdin, proc.stdout):
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()
    stderr = err_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(
            f"helper exited with status {proc.returncode}\n--- helper stderr ---\n{stderr}"
        )
    return Put(len(body), hwm, usage.ru_maxrss, seconds, stderr)


def converse(proc: subprocess.Popen, body: bytes) -> tuple[float, int]:
    """Capabilities, put, close: returns (put seconds, peak RSS KiB)."""
    caps = read_response(proc, 0)
    if "put" not in (caps.get("KnownCommands") or []):
        raise BenchError(f"helper does not offer put: {caps!r}")

    request = {
        "ID": 1,
        "Command": "put",
        "ActionID": base64.b64encode(os.urandom(32)).decode(),
        "OutputID": base64.b64encode(hashlib.sha256(body).digest()).decode(),
        "BodySize": len(body),
    }
    # Framed like cmd/go/internal/cache/prog.go: JSON line, empty line, then
    # the body as a JSON string of standard base64 on its own line.
    t0 = time.perf_counter()
    proc.stdin.write(json.dumps(request, separators=(",", ":")).encode() + b"\n\n")
    proc.stdin.write(b'"')
    for chunk in b64_chunks(memoryview(body)):
        proc.stdin.write(chunk)
    proc.stdin.write(b'"\n')
    proc.stdin.flush()
    resp = read_response(proc, 1)
    seconds = time.perf_counter() - t0

    hwm = read_hwm_kib(proc.pid)
    if hwm is None:
        raise BenchError("could not read the helper's VmHWM from /proc")
    if resp.get("Err") or not resp.get("DiskPath"):
        raise BenchError(f"put failed: {resp!r}")
    check_stored(Path(resp["DiskPath"]), body)

    proc.stdin.write(b'{"ID":2,"Command":"close"}\n\n')
    proc.stdin.flush()
    read_response(proc, 2)
    later = read_hwm_kib(proc.pid)  # usually exited already; best effort
    return seconds, max(hwm, later or 0)


def check_stored(path: Path, body: bytes) -> None:
    """The file at DiskPath must hold exactly the body."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BenchError(f"DiskPath {path} is not readable: {e}") from None
    if size != len(body):
        raise BenchError(f"DiskPath {path} has {size} bytes, expected {len(body)}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.digest() != hashlib.sha256(body).digest():
        raise BenchError(f"DiskPath {path} does not hold the body that was put")


@dataclass
class Memory:
    small: Put
    big: list[Put]
    sender_mb_s: float

    @property
    def big_peak_kib(self) -> int:
        return max(p.peak_rss_kib for p in self.big)

    @property
    def big_mb_s(self) -> float:
        return statistics.median(p.mb_per_s for p in self.big)


def bench_memory(warren: Path, scratch: Scratch, size: int, repeats: int) -> Memory:
    # The 1-byte baseline runs before the big body exists in this process.
    home = scratch.new("put-small")
    small = put_session(warren, home, b"\x2a")
    scratch.remove(home)

    body = os.urandom(size)
    big = []
    for i in range(repeats):
        home = scratch.new(f"put-big-{i}")
        p = put_session(warren, home, body)
        log(f"put {size >> 20} MiB: peak RSS {mib(p.peak_rss_kib)}, {p.mb_per_s:.0f} MB/s")
        big.append(p)
        scratch.remove(home)
    return Memory(small, big, sender_ceiling_mb_s(memoryview(body)))


# --------------------------------------------------------------------------
# Reporting


def machine_info(go: Path, warren: Path, scratch: Scratch) -> dict[str, str | int]:
    info = common_machine_info(go, warren, base_env(scratch.new("info")))
    info["scratch"] = str(scratch.root)
    return info


def print_report(info: dict, runs: int, builds: Builds, memory: Memory, put_size: int) -> None:
    cold, warm = builds.cold, builds.warm
    print(f"date      {info['date']}")
    print(f"go        {info['go_version']}  ({info['go']})")
    print(f"warren    {info['warren_version']}  ({info['warren']})")
    print(
        f"machine   {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, "
        f"load average at start {info['load_avg_at_start']}"
    )
    print(f"runs      {runs} per side, interleaved; scratch in {info['scratch']}")
    print()

    rows = [
        (
            "workload",
            "builtin median",
            "warren median",
            "ratio (warren/builtin)",
            "median per-run ratio",
        )
    ]
    for name, sides in (("go build std (cold)", cold), ("go build std (warm)", warm)):
        if sides is None:
            continue
        rows.append(
            (
                name,
                fmt_s(sides.median("builtin")),
                fmt_s(sides.median("warren")),
                f"{sides.ratio():.2f}x",
                f"{sides.paired_ratio():.2f}x",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    print(
        f"helper peak RSS, {put_size >> 20} MiB put: {mib(memory.big_peak_kib)} "
        f"(1-byte put: {mib(memory.small.peak_rss_kib)}); "
        f"put throughput {memory.big_mb_s:.0f} MB/s "
        f"(sender ceiling {memory.sender_mb_s:.0f} MB/s)"
    )
    print()

    print("CPU time (user+sys of go and every process it waited for), medians:")
    for name, sides in (("cold", cold), ("warm", warm)):
        if sides is not None:
            b, w = sides.cpu_median("builtin"), sides.cpu_median("warren")
            print(f"  {name}: builtin {fmt_s(b)}, warren {fmt_s(w)} ({w / b:.2f}x)")
    print()

    print("raw wall times in run order (CPU time in brackets):")
    for name, sides in (("cold", cold), ("warm", warm)):
        if sides is None:
            continue
        for side in ("builtin", "warren"):
            cells = " ".join(f"{b.wall_s:.3f}[{b.cpu_s:.2f}]" for b in getattr(sides, side))
            print(f"  {name} {side:<8} {cells}")
    print(
        "  big puts: "
        + " ".join(
            f"{p.seconds:.3f}s/{p.mb_per_s:.0f}MB/s/{mib(p.peak_rss_kib)}" for p in memory.big
        )
    )
    print(
        "cache size after go build std: "
        + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in builds.cache_bytes.items())
    )


# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark go build std with the builtin cache and with warren.",
    )
    common_args(p, 5, "timed runs per side and workload")
    p.add_argument("--skip-cold", action="store_true", help="skip the cold-cache workload")
    big_body_args(p, "put-mib", "put-runs", "put")
    return parse_counts(p, argv, ("runs", "put_runs", "put_mib"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        go = resolve_go(args.go)
        warren = resolve_warren(args.warren)
        with Scratch(keep=args.keep_tmp) as scratch:
            info = machine_info(go, warren, scratch)
            log(f"{info['go_version']}; warren {info['warren_version']}; scratch {scratch.root}")
            builder = Builder(go, warren)
            builds = bench_builds(builder, scratch, args.runs, not args.skip_cold)
            memory = bench_memory(warren, scratch, args.put_mib << 20, args.put_runs)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1

    print_report(info, args.runs, builds, memory, args.put_mib << 20)

    # warren must be silent on success (every warren-side build and session).
    noisy = [b for b in builds.all() if b.side == "warren" and b.stderr]
    noisy_puts = [p for p in [memory.small, *memory.big] if p.stderr]
    builtin_noise = [b for b in builds.all() if b.side == "builtin" and b.stderr]
    if builtin_noise:
        print(
            f"\nnote: {len(builtin_noise)} builtin-cache build(s) wrote to stderr; first:\n"
            f"{builtin_noise[0].stderr.rstrip()}",
            file=sys.stderr,
        )

    if args.json:
        result = {
            "info": info,
            "runs": args.runs,
            "prep": summary(builds.prep),
            "cold": summary(builds.cold),
            "warm": summary(builds.warm),
            "cache_bytes": builds.cache_bytes,
            "put": {
                "body_bytes": args.put_mib << 20,
                "peak_rss_kib": memory.big_peak_kib,
                "baseline_peak_rss_kib": memory.small.peak_rss_kib,
                "throughput_mb_s": memory.big_mb_s,
                "sender_ceiling_mb_s": memory.sender_mb_s,
                "sessions": [asdict(p) for p in [memory.small, *memory.big]],
                "note": "peak_rss_kib is VmHWM; wait4_maxrss_kib includes the "
                "benchmark process's own RSS at spawn time (Linux exec semantics)",
            },
            "warren_stderr_failures": len(noisy) + len(noisy_puts),
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")

    if noisy or noisy_puts:
        first = (noisy[0].stderr if noisy else noisy_puts[0].stderr).rstrip()
        print(
            f"\nFAIL: warren wrote to stderr in {len(noisy)} build(s) and "
            f"{len(noisy_puts)} put session(s); it must be silent on success. "
            f"First output:\n{first}",
            file=sys.stderr,
        )
        return 1
    return 0


def summary(sides: Sides | None) -> dict | None:
    if sides is None:
        return None
    return {
        "builtin_median_s": sides.median("builtin"),
        "warren_median_s": sides.median("warren"),
        "builtin_cpu_median_s": sides.cpu_median("builtin"),
        "warren_cpu_median_s": sides.cpu_median("warren"),
        "ratio": sides.ratio(),
        "paired_ratio": sides.paired_ratio(),
        "builtin": [asdict(b) for b in sides.builtin],
        "warren": [asdict(b) for b in sides.warren],
    }


if __name__ == "__main__":
    sys.exit(main())
