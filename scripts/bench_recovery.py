#!/usr/bin/env python3
"""What a crash costs the next build: a kill against a power loss.

Usage (root: the power loss needs a mount namespace):
    sudo python3 scripts/bench_recovery.py [--runs N] [--warren PATH] [--go PATH] [--json FILE]

warren writes the store unsynced and syncs the filesystem once per `go`
command (`src/store/group_commit.rs`). A writer killed on this boot left
every file complete in the page cache, so the next process only syncs. A
power loss may have torn what was not synced, so the next process
verifies what changed since the crashed writer's marker before handing
it out, while one process sweeps the store (`src/store/recovery.rs`).

Per run, interleaved, alternating which goes first, on a new store each:

1. A cold `go build std` through warren is killed (SIGKILL to go and
   everything it started) once the store holds ``--at`` of the entries a
   whole build puts: a crash late in a build, so almost all of a
   `go build std` is unsynced.
   - *killed*: the build ran as usual;
   - *power loss*: the build ran in a mount namespace of its own in which
     `/proc/sys/kernel/random/boot_id` reads another boot, so its marker
     says so, as one written before a power loss would. Its files are all
     in fact on the disk: this measures what the check costs, not what it
     finds.
2. **First answer**: a helper is started on the store and asked for one
   entry the build stored: the time from its start to that answer.
3. **The next build**: `go build std` on the same store (its hits, and the
   rest compiled), timed.
4. **Clean**: the time from the first helper's start (2) until the store's
   markers are gone (`v1/dirty` empty).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import HELPER_TIMEOUT, Builder, Scratch, read_response
from benchlib import BenchError, common_args, logger, machine_info, med, resolve_go, resolve_warren

log = logger("bench_recovery")

KINDS = ("killed", "power loss")
# How long a build may take before the run fails.
BUILD_TIMEOUT = 3600.0


@dataclass
class Run:
    kind: str
    entries_at_kill: int
    first_answer_s: float
    build_s: float
    clean_s: float | None  # from the first helper's start; None: not within the build + 60 s


@dataclass
class Results:
    whole_build_entries: int
    runs: list[Run] = field(default_factory=list)

    def of(self, kind: str) -> list[Run]:
        return [r for r in self.runs if r.kind == kind]


def entry_paths(store: Path) -> list[Path]:
    actions = store / "v1" / "actions"
    if not actions.is_dir():
        return []
    return [e for shard in actions.iterdir() if shard.is_dir() for e in shard.iterdir()]


def markers(store: Path) -> list[str]:
    dirty = store / "v1" / "dirty"
    return [p.name for p in dirty.iterdir()] if dirty.is_dir() else []


def crash_build(builder: Builder, home: Path, kind: str, at_entries: int) -> int:
    """A cold `go build std`, killed once the store holds ``at_entries``
    entries. Returns how many it held."""
    env = builder.env("warren", home)
    store = Path(env["WARREN_DIR"])
    argv = [str(builder.go), "build", "std"]
    if kind == "power loss":
        fake = home / "boot_id"
        fake.write_text(f"{uuid.uuid4()}\n")
        script = 'mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(fake), *argv]
    work = home / "work"
    work.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        argv,
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + BUILD_TIMEOUT
    held = 0
    try:
        while proc.poll() is None:
            held = len(entry_paths(store))
            if held >= at_entries:
                break
            if time.monotonic() > deadline:
                raise BenchError("the build to crash took too long")
            time.sleep(0.05)
        else:
            raise BenchError(
                f"the build finished before the store held {at_entries} entries "
                f"({held}); lower --at"
            )
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if not markers(store):
        raise BenchError(f"{kind}: the crashed build left no marker in {store}/v1/dirty")
    return held


def first_answer(builder: Builder, home: Path) -> float:
    """Seconds from starting a helper on the store to its answer to a get
    of an entry the crashed build stored."""
    env = builder.env("warren", home)
    store = Path(env["WARREN_DIR"])
    entries = sorted(entry_paths(store))
    if not entries:
        raise BenchError("the crashed build stored nothing")
    action = base64.b64encode(bytes.fromhex(entries[len(entries) // 2].name)).decode()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(builder.warren)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        read_response(proc, 0)
        proc.stdin.write((json.dumps({"ID": 1, "Command": "get", "ActionID": action}) + "\n").encode())
        proc.stdin.flush()
        resp = read_response(proc, 1)
        elapsed = time.perf_counter() - t0
        if resp.get("Miss") or not resp.get("DiskPath"):
            raise BenchError(f"the helper missed an entry the build stored: {resp}")
        proc.stdin.write(b'{"ID":2,"Command":"close"}\n')
        proc.stdin.flush()
        read_response(proc, 2)
        proc.stdin.close()
        proc.wait(timeout=HELPER_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode(errors="replace")
    if stderr:
        raise BenchError(f"the helper printed on stderr: {stderr}")
    return elapsed


def after_crash(builder: Builder, home: Path) -> tuple[float, float, float | None]:
    """The first answer, the next build's wall time, and the seconds from
    the first helper's start until the store had no marker left."""
    store = Path(builder.env("warren", home)["WARREN_DIR"])
    clean: list[float] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def watch() -> None:
        while not stop.is_set():
            if not markers(store):
                clean.append(time.perf_counter() - t0)
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answer = first_answer(builder, home)
        build = builder.build("warren", home)
        end = time.monotonic() + 60.0
        while not clean and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        stop.set()
        watcher.join()
    if build.stderr:
        raise BenchError(f"the build after the crash printed on stderr:\n{build.stderr}")
    return answer, build.wall_s, (clean[0] if clean else None)


def bench(args: argparse.Namespace, go: Path, warren: Path, scratch: Scratch) -> Results:
    builder = Builder(go, warren)
    home = scratch.new("whole")
    whole = builder.build("warren", home)
    total = len(entry_paths(Path(builder.env("warren", home)["WARREN_DIR"])))
    scratch.remove(home)
    log(f"a whole go build std stores {total} entries ({whole.wall_s:.1f} s)")
    results = Results(total)
    at = max(1, int(total * args.at))
    for run in range(args.runs):
        order = KINDS if run % 2 == 0 else KINDS[::-1]
        for kind in order:
            home = scratch.new(f"{kind.replace(' ', '-')}-{run}")
            held = crash_build(builder, home, kind, at)
            answer, build_s, clean_s = after_crash(builder, home)
            results.runs.append(Run(kind, held, answer, build_s, clean_s))
            clean = "never" if clean_s is None else f"{clean_s:.2f} s"
            log(
                f"run {run + 1}/{args.runs} {kind}: killed at {held} entries; first answer "
                f"{answer * 1e3:.1f} ms; next build {build_s:.2f} s; clean after {clean}"
            )
            scratch.remove(home)
    return results


def report(results: Results, info: dict) -> dict:
    print()
    print(f"date      {info['date']}")
    print(f"go        {info['go_version']}")
    print(f"warren    {info['warren_version']}, {info['warren_commit']}")
    print(
        f"machine   {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}; "
        f"load average at start {info['load_avg_at_start']}"
    )
    print(
        f"workload  a cold go build std killed at {med([r.entries_at_kill for r in results.runs]):.0f} "
        f"of its {results.whole_build_entries} entries, then the next go build std\n"
    )
    print(f"{'':<28}{'killed':>12}{'power loss':>14}{'ratio':>9}")
    summary: dict = {}
    rows = (
        ("first answer, ms", "first_answer_s", 1e3),
        ("next build, s", "build_s", 1.0),
        ("store clean after, s", "clean_s", 1.0),
    )
    for label, key, scale in rows:
        k = med([getattr(r, key) for r in results.of("killed") if getattr(r, key) is not None])
        p = med([getattr(r, key) for r in results.of("power loss") if getattr(r, key) is not None])
        summary[key] = {"killed": k, "power loss": p}
        ratio = f"{p / k:>8.2f}x" if k > 0 else f"{'-':>9}"
        print(f"{label:<28}{k * scale:>12.3f}{p * scale:>14.3f}{ratio}")
    never = [r for r in results.runs if r.clean_s is None]
    if never:
        print(f"\nthe store was not clean within 60 s of the build's end in {len(never)} runs")
    print("\nraw, in run order (kind: first answer ms / next build s / clean s):")
    for r in results.runs:
        clean = "never" if r.clean_s is None else f"{r.clean_s:.2f}"
        print(f"  {r.kind:<11} {r.first_answer_s * 1e3:.1f} / {r.build_s:.2f} / {clean}")
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark the next build after a crash.")
    common_args(p, 3, "runs per kind of crash")
    p.add_argument(
        "--at",
        type=float,
        default=0.95,
        help="kill the build once the store holds this share of a whole build's entries (default 0.95)",
    )
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if not 0 < args.at < 1:
        p.error("--at must be between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_recovery: needs root (a mount namespace plays the power loss)", file=sys.stderr)
        return 1
    try:
        go = resolve_go(args.go)
        warren = resolve_warren(args.warren)
        info = machine_info(go, warren)
        log(f"{info['go_version']}; warren {info['warren_version']}")
        with Scratch(args.keep_tmp) as scratch:
            results = bench(args, go, warren, scratch)
    except BenchError as e:
        print(f"bench_recovery: error: {e}", file=sys.stderr)
        return 1
    summary = report(results, info)
    if args.json:
        data = {"info": info, "summary": summary, "runs": [asdict(r) for r in results.runs]}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
