#!/usr/bin/env python3
"""warren's office-scale benchmark: how a LAN of N coworkers' daemons grows.

Usage (root; network namespaces):
    sudo python3 scripts/bench_office.py [--hosts 2,8,16,32] [--entries 20000]
                                         [--warren PATH] [--json FILE]

One LAN of network namespaces (scripts/netns.py, whose LAN, hosts,
filesystem and cleanup bench_share.py uses too) with as many hosts as the
largest N. Every host allowlists every other, runs a real ``warren daemon`` with
real mDNS, and has a store filled through the real helper (GOCACHEPROG
``put``s of distinct synthetic bodies; nothing writes the store's files
directly): ``--entries`` each, with body sizes drawn like a ``go build
std``'s (three in four of a few to 60 bytes, one in ten ~20 KiB, one in a
hundred ~200 KiB; the biggest bodies of a real build, up to ~13 MB, are left
out to keep 32 stores on one disk).

For each N, daemons run on hosts 1..N-1; once each has scanned its own
store (its ``warren_summary_entries`` gauge is there) and holds every
other's summary, the office is at rest, and host N joins (its daemon
starts).
Measured:

* **join**: the time from the joiner's daemon start until it holds every
  peer's whole summary (each peer connected and its summary's entries equal
  to its store's, read from the daemon's ``metrics-listen`` on its
  namespace's loopback; ``warren stats`` would walk the store each time),
  and the bytes its interface received and sent meanwhile (/proc/net/dev
  in its namespace: handshakes, mDNS and summaries both ways; the report
  gives the total and, of it, what the joiner sent);
* **at rest**, 10 s after the join: each daemon's RSS (VmRSS) and CPU time
  over 10 s, and its established TCP connections (``ss`` in its namespace);
* **lookups** through the joiner's helper, one ``get`` at a time (its
  daemon restarted with read-ahead off, so that every hit is a round trip,
  and the office at rest again before the first):
  hits, each for an entry of one random peer (N-1 peers hold distinct
  entries), and misses, random ActionIDs nobody holds; p50 and p99. Each
  miss is paired with one through a second helper on the same store with
  sharing off (``WARREN_SHARE=0``), which never asks the daemon: the floor
  under any miss on this machine (the Python client, the pipe, the store
  lookup), measured side by side, so the report gives the daemon's share
  of the tail. Python's garbage collector is off while lookups are timed.

Targets at N = 32: RSS <= 64 MiB at rest (with 200k-entry
peers; this run's entry count is in the report), miss p99 <= 1 ms, hit p50
<= 2 ms, join <= 10 s. Linux only, as root. Python 3.11+, standard library.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import netns
from benchlib import BenchError, common_args, logger, machine_info, resolve_go, resolve_warren
from netns import CLEANUP, Helper, Host

log = logger("bench_office")

# Each daemon serves its counters on its namespace's own loopback: the
# benchmark reads peers' summaries there, which costs the daemon a status
# call, where `warren stats` would also walk the store.
METRICS_PORT = 9311
CONFIG = netns.SHARING_CONFIG + f'metrics-listen = "{METRICS_PORT}"\n'
JOIN_TIMEOUT = 120.0
REST_S = 10.0
TARGETS = {"rss_mib": 64, "miss_p99_ms": 1.0, "hit_p50_ms": 2.0, "join_s": 10.0}


def body_size(n: int) -> int:
    """A body size drawn like a ``go build std``'s (see the module docs)."""
    if n % 100 == 0:
        return 200_000 + (n % 7) * 10_000
    if n % 10 == 1:
        return 20_000 + (n % 13) * 1_000
    return 9 + n % 50


def action_of(seed: int, n: int) -> bytes:
    return hashlib.sha256(f"office {seed} action {n}".encode()).digest()


def summary_keys(seed: int, entries: int) -> int:
    """How many entries a peer's summary of host ``seed`` names: distinct
    4-byte keys (p2p/src/summary), so among 20,000 actions two may share
    one (odds ~1 in 20 per host)."""
    return len({action_of(seed, n)[:4] for n in range(entries)})


def fill(host: Host, seed: int, entries: int) -> float:
    """``entries`` puts through ``host``'s helper; returns the seconds."""
    lines = []
    for n in range(entries):
        body = f"office {seed} body {n} ".encode()
        body = body.ljust(max(body_size(n), len(body)), b"x")
        req = {
            "ID": n + 1,
            "Command": "put",
            "ActionID": base64.b64encode(action_of(seed, n)).decode(),
            "OutputID": base64.b64encode(hashlib.sha256(body).digest()).decode(),
            "BodySize": len(body),
        }
        lines.append(json.dumps(req, separators=(",", ":")).encode())
        lines.append(b'\n"' + base64.b64encode(body) + b'"')
    lines.append(json.dumps({"ID": entries + 1, "Command": "close"}).encode())
    t0 = time.perf_counter()
    r = subprocess.run(
        host.argv(host.warren),
        input=b"\n".join(lines) + b"\n",
        env=host.env(WARREN_SHARE="0"),
        cwd=host.root / "work",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=3600,
        check=False,
    )
    took = time.perf_counter() - t0
    if r.returncode != 0 or r.stderr:
        raise BenchError(f"{host.name}: filling failed: {r.stderr.decode(errors='replace')}")
    return took


def net_bytes(host: Host) -> tuple[int, int]:
    """Bytes received and bytes sent on the host's eth0."""
    out = subprocess.run(
        ["ip", "netns", "exec", host.netns, "cat", "/proc/net/dev"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.strip().startswith("eth0:"):
            fields = line.split(":", 1)[1].split()
            return int(fields[0]), int(fields[8])
    raise BenchError(f"{host.name}: no eth0 in /proc/net/dev")


def connections(host: Host) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", host.netns, "ss", "-tnH", "state", "established"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len([line for line in out.splitlines() if line.strip()])


def scrape(host: Host) -> dict[str, dict[str, float]]:
    """The daemon's per-peer gauges: {metric: {peer: value}}."""
    script = (
        "import urllib.request;"
        f"print(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics',"
        " timeout=10).read().decode())"
    )
    out = subprocess.run(
        host.argv(sys.executable, "-c", script), capture_output=True, text=True, check=False
    ).stdout
    gauges: dict[str, dict[str, float]] = {}
    for line in out.splitlines():
        if line.startswith("warren_summary_entries "):
            # Our own summary, there once the store's first scan is done.
            gauges.setdefault("warren_summary_entries", {})[""] = float(line.split()[1])
        if line.startswith("#") or '{peer="' not in line:
            continue
        name, rest = line.split("{", 1)
        peer = rest.split('"')[1]
        gauges.setdefault(name, {})[peer] = float(line.rsplit(" ", 1)[1])
    return gauges


def holds_all(host: Host, peers: dict[str, int], own: bool = False) -> bool:
    """Whether ``host`` holds each of ``peers``' summaries ({peer ID:
    distinct keys}), and (``own``) has its own summary to give."""
    gauges = scrape(host)
    if own and "warren_summary_entries" not in gauges:
        return False
    connected = gauges.get("warren_peer_connected", {})
    holds = gauges.get("warren_peer_summary_entries", {})
    return all(
        connected.get(peer) == 1 and holds.get(peer) == entries for peer, entries in peers.items()
    )


def wait_rest(hosts: list[Host], ids: list[str], keys: list[int], timeout: float) -> float:
    t0 = time.perf_counter()
    pending = list(range(len(hosts)))
    while pending:
        pending = [
            i
            for i in pending
            if not holds_all(
                hosts[i], {p: keys[j] for j, p in enumerate(ids) if j != i}, own=True
            )
        ]
        if time.perf_counter() - t0 > timeout:
            raise BenchError(
                f"{len(pending)} of {len(hosts)} daemons lack a summary after {timeout:.0f} s"
            )
        time.sleep(0.2)
    return time.perf_counter() - t0


def why_missed(host: Host, helper: Helper, action: bytes) -> str:
    """What ``warren trace`` says of ``action`` once ``helper`` has closed
    (a helper reports its lookups to the daemon when it closes)."""
    try:
        helper.close()
        return host.warren_cmd("trace", action.hex())
    except (BenchError, OSError, subprocess.SubprocessError) as error:
        return f"(no trace: {error})"


def quantile(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Office:
    n: int
    entries: int
    rest_s: float  # the N-1 reaching rest
    join_s: float
    join_bytes: int
    join_sent: int  # of join_bytes, what the joiner sent
    rss_mib: list[float]
    peak_rss_mib: list[float]
    cpu_ms_per_s: list[float]
    connections: list[int]
    hit_ms: list[float]
    miss_ms: list[float]
    local_miss_ms: list[float]  # the same misses with sharing off: the floor


def measure(
    n: int, hosts: list[Host], ids: list[str], args: argparse.Namespace, rng: random.Random
) -> Office:
    office, joiner = hosts[: n - 1], hosts[n - 1]
    for host in office:
        host.start_daemon(args.daemon_log)
    keys = [summary_keys(seed, args.entries) for seed in range(n)]
    rest_s = wait_rest(office, ids[: n - 1], keys, JOIN_TIMEOUT)
    before = net_bytes(joiner)
    t0 = time.perf_counter()
    joiner.start_daemon(args.daemon_log)
    peers = {peer: keys[j] for j, peer in enumerate(ids[: n - 1])}
    while not holds_all(joiner, peers):
        if time.perf_counter() - t0 > JOIN_TIMEOUT:
            raise BenchError(f"N={n}: the joiner lacks summaries after {JOIN_TIMEOUT:.0f} s")
        time.sleep(0.05)
    join_s = time.perf_counter() - t0
    received, sent = (after - was for after, was in zip(net_bytes(joiner), before, strict=True))
    join_bytes = received + sent
    log(
        f"N={n}: office at rest after {rest_s:.1f} s; join {join_s:.2f} s, {received} bytes "
        f"received, {sent} sent"
    )
    wait_rest(hosts[:n], ids[:n], keys, JOIN_TIMEOUT)
    time.sleep(REST_S)
    running = hosts[:n]
    cpu0 = [h.daemon.cpu_s() for h in running]
    time.sleep(REST_S)
    cpu = [(h.daemon.cpu_s() - c) * 1000 / REST_S for h, c in zip(running, cpu0, strict=True)]
    rss = [(netns.proc_status_kib(h.daemon.pid, "VmRSS") or 0) / 1024 for h in running]
    peak = [h.daemon.hwm_kib() / 1024 for h in running]
    conns = [connections(h) for h in running]
    # Lookups: the joiner's daemon with read-ahead off, so each hit is one.
    joiner.daemon_env = {"WARREN_CONFIG": str(joiner.config_dir / "no-read-ahead.toml")}
    joiner.daemon.stop()
    joiner.start_daemon(args.daemon_log)
    joiner.daemon_env = {}
    # Lookups are timed at rest: once the restarted joiner holds every
    # summary and every peer holds its new one.
    wait_rest(hosts[:n], ids[:n], keys, JOIN_TIMEOUT)
    helper = Helper(joiner)
    local = Helper(joiner, WARREN_SHARE="0")
    hit_ms, miss_ms, local_miss_ms = [], [], []
    gc.disable()
    try:
        for _ in range(args.hits):
            seed = rng.randrange(n - 1)
            action = action_of(seed, rng.randrange(args.entries))
            resp, took = helper.request({"Command": "get", "ActionID": netns.b64(action)})
            if resp.get("Miss"):
                raise BenchError(
                    f"N={n}: a get for host {seed + 1}'s entry missed: {resp}\n"
                    f"{why_missed(joiner, helper, action)}"
                )
            hit_ms.append(took * 1000)
        for _ in range(args.misses):
            for via, times in ((helper, miss_ms), (local, local_miss_ms)):
                req = {"Command": "get", "ActionID": netns.b64(os.urandom(32))}
                resp, took = via.request(req)
                if not resp.get("Miss"):
                    raise BenchError(f"N={n}: a random ActionID hit: {resp}")
                times.append(took * 1000)
    finally:
        gc.enable()
    for via in (helper, local):
        stderr = via.close()
        if stderr:
            raise BenchError(f"N={n}: the helper wrote to stderr: {stderr}")
    for host in running:
        host.daemon.stop()
        host.daemon = None
    return Office(
        n,
        args.entries,
        rest_s,
        join_s,
        join_bytes,
        sent,
        rss,
        peak,
        cpu,
        conns,
        hit_ms,
        miss_ms,
        local_miss_ms,
    )


def bench(args: argparse.Namespace, go: Path, warren: Path, scratch: Path) -> list[Office]:
    t0 = time.perf_counter()
    size = max(args.hosts)
    names = [f"h{i:02d}" for i in range(1, size + 1)]
    lan = netns.make_lan(names)
    hosts = [
        Host(name, *lan[name], scratch / name, go, warren, t0) for name in names
    ]
    ids = [host.init(CONFIG) for host in hosts]
    for i, host in enumerate(hosts):
        for j, peer in enumerate(ids):
            if i != j:
                host.trust(peer, names[j])
    for i, host in enumerate(hosts):
        took = fill(host, i, args.entries)
        log(f"{host.name}: {args.entries} puts in {took:.1f} s")
    rng = random.Random(14)
    results = []
    for n in sorted(args.hosts):
        results.append(measure(n, hosts, ids, args, rng))
        r = results[-1]
        log(
            f"N={n}: RSS median {statistics.median(r.rss_mib):.1f} MiB (max "
            f"{max(r.rss_mib):.1f}), CPU {statistics.median(r.cpu_ms_per_s):.1f} ms/s, "
            f"connections {statistics.median(r.connections)}; hit p50 "
            f"{quantile(r.hit_ms, 0.5):.2f} ms p99 {quantile(r.hit_ms, 0.99):.2f} ms; miss p50 "
            f"{quantile(r.miss_ms, 0.5):.3f} ms p99 {quantile(r.miss_ms, 0.99):.3f} ms "
            f"(sharing off: p50 {quantile(r.local_miss_ms, 0.5):.3f} ms p99 "
            f"{quantile(r.local_miss_ms, 0.99):.3f} ms)"
        )
    return results


def report(results: list[Office]) -> list[dict]:
    rows = []
    print(f"\nwarren office benchmark ({results[0].entries} entries per host; medians over daemons)")
    header = (
        f"{'N':>3} {'join s':>7} {'join KB':>8} {'of it out':>9} {'RSS MiB':>8} {'peak':>6} {'CPU ms/s':>9} "
        f"{'conns':>6} {'hit p50':>8} {'hit p99':>8} {'miss p50':>9} {'miss p99':>9} "
        f"{'floor p50':>10} {'floor p99':>10}"
    )
    print(header)
    for r in results:
        row = {
            "n": r.n,
            "join_s": r.join_s,
            "join_kb": r.join_bytes / 1000,
            "join_sent_kb": r.join_sent / 1000,
            "rss_mib": statistics.median(r.rss_mib),
            "rss_max_mib": max(r.rss_mib),
            "peak_rss_mib": max(r.peak_rss_mib),
            "cpu_ms_per_s": statistics.median(r.cpu_ms_per_s),
            "connections": statistics.median(r.connections),
            "hit_p50_ms": quantile(r.hit_ms, 0.5),
            "hit_p99_ms": quantile(r.hit_ms, 0.99),
            "miss_p50_ms": quantile(r.miss_ms, 0.5),
            "miss_p99_ms": quantile(r.miss_ms, 0.99),
            "local_miss_p50_ms": quantile(r.local_miss_ms, 0.5),
            "local_miss_p99_ms": quantile(r.local_miss_ms, 0.99),
        }
        rows.append(row)
        print(
            f"{r.n:>3} {row['join_s']:>7.2f} {row['join_kb']:>8.0f} {row['join_sent_kb']:>9.0f} "
            f"{row['rss_mib']:>8.1f} "
            f"{row['peak_rss_mib']:>6.1f} {row['cpu_ms_per_s']:>9.2f} {row['connections']:>6} "
            f"{row['hit_p50_ms']:>8.2f} {row['hit_p99_ms']:>8.2f} {row['miss_p50_ms']:>9.3f} "
            f"{row['miss_p99_ms']:>9.3f} {row['local_miss_p50_ms']:>10.3f} "
            f"{row['local_miss_p99_ms']:>10.3f}"
        )
    last = rows[-1]
    print(f"\ntargets at N={last['n']}:")
    for key, label, value in (
        ("rss_mib", "RSS at rest (max over daemons) MiB", last["rss_max_mib"]),
        ("miss_p99_ms", "miss p99 ms", last["miss_p99_ms"]),
        ("hit_p50_ms", "hit p50 ms", last["hit_p50_ms"]),
        ("join_s", "join s", last["join_s"]),
    ):
        verdict = "met" if value <= TARGETS[key] else "MISSED"
        print(f"  {label:<36} {value:8.3f}  (target <= {TARGETS[key]}: {verdict})")
    print(
        f"  miss p99 with sharing off (the floor) {last['local_miss_p99_ms']:.3f} ms: the "
        f"daemon's lookup adds {last['miss_p99_ms'] - last['local_miss_p99_ms']:+.3f} ms at p99, "
        f"{last['miss_p50_ms'] - last['local_miss_p50_ms']:+.3f} ms at p50"
    )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark warren daemons on an office LAN.")
    common_args(p, 1, "unused")
    p.add_argument(
        "--hosts",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[2, 8, 16, 32],
        help="office sizes, comma-separated (default 2,8,16,32)",
    )
    p.add_argument("--entries", type=int, default=20_000, help="entries per host (default 20000)")
    p.add_argument("--hits", type=int, default=300, help="hit lookups per N (default 300)")
    p.add_argument("--misses", type=int, default=1000, help="miss lookups per N (default 1000)")
    p.add_argument("--daemon-log", default="info", help="WARREN_LOG for the daemons")
    p.add_argument("--fs", choices=("ext4", "root"), default="ext4")
    p.add_argument("--fs-gib", type=int, default=48, help="size of the --fs ext4 image (sparse)")
    args = p.parse_args(argv)
    if min(args.hosts) < 2 or args.entries < 1:
        p.error("--hosts must be at least 2 and --entries at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not netns.enter("bench_office"):
        return 1
    try:
        go = resolve_go(args.go)
        warren = resolve_warren(args.warren)
        info = machine_info(go, warren)
        log(f"warren {info['warren_version']}; load average {info['load_avg_at_start']}")
        scratch, info["filesystem"] = netns.scratch_dir(args)
        results = bench(args, go, warren, scratch)
    except BenchError as e:
        print(f"bench_office: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_office: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        CLEANUP.run()
    rows = report(results)
    if args.json:
        data = {"info": info, "targets": TARGETS, "rows": rows, "runs": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
