#!/usr/bin/env python3
"""warren's sharing benchmark: builds served by a coworker's machine.

Usage:
    python3 scripts/bench_share.py [--runs N] [--warren PATH] [--go PATH]
                                   [--target PKG] [--json FILE]

Two hosts, A (the coworker) and B (you), each a Linux network namespace with
its own address on a private LAN (a bridge in a third namespace: see
scripts/netns.py), its own HOME, XDG dirs, GOCACHE,
GOPATH and warren store, and its own ``warren daemon`` with mDNS. The two
trust each other (``warren peers add``) and the benchmark waits until both
show the other as connected.

What it measures, side by side in one run:

1. A coworker's warm store. A builds the target (``go build std``) once.
   Then, per run, B with an empty store and an empty GOCACHE:

   * "B cold, local-only": sharing off (``WARREN_SHARE=0``, which overrides
     the config's ``[share] enabled``), so every action is compiled;
   * "B from warm peer": sharing on, an empty store and a fresh GOCACHE, so
     every lookup misses locally and goes through B's daemon to A;
   * "B warm locally": right after that, the same build again on the store
     the peer run filled (fresh GOCACHE): every lookup is a local hit.

   Speedup = cold / peer (target >= 15x); peer / local-warm (target <= 3x).
   B's ``warren stats --json`` counters are read before and after each
   build. In the peer runs at least 95% of B's gets must be answered with
   A's entries: B's store starts empty, so every hit is an entry B's daemon
   fetched from A, either when the helper asked (a peer hit) or ahead of
   the build on A's read-ahead hints (the helper then finds it locally);
   the log shows both numbers.

   Then "B fetching A's whole store, no go": B's store emptied again, one
   get through B's helper for the first entry A stored, and B's daemon
   follows A's read-ahead hints through the rest, as in a from-peer build
   but with no go competing for the cores; timed until every entry of A's
   is in B's store. It is the floor of a from-peer build on this machine:
   what moving, verifying and storing the bodies takes on its own.

   Then the same from-peer build with B asking for compressed bodies the
   way the default does (``compression = "auto"``: it measures raw and
   compressed bodies by turns and keeps the faster) and never
   (``"never"``), interleaved, with the choice "auto" made in each run
   (from B's daemon log). ``--link-rate 1gbit`` shapes each host's link
   (tbf) as an office LAN's would be; unshaped, the veth LAN is as fast as
   the two cores the hosts share.

   Then a latency probe, without go: through one B helper, with an empty
   store and B's daemon restarted with read-ahead off (else every get after
   the first would be local), one ``get`` at a time for every action in A's
   store (peer hits, bucketed by body size), the same again (now local
   hits), and random ActionIDs with sharing on (a round trip to A, which
   has nothing) and off.

2. Peers that hold nothing. A switches to an empty store (its daemon is
   restarted on it and stays up), and B builds cold with sharing on and with
   sharing off, interleaved. Every miss with sharing on costs a round trip to
   A that answers "not found": the ratio on/off should stay <= 1.03x.

3. One big body between hosts. On A, a 256 MiB random body is put through
   A's helper (the GOCACHEPROG protocol, as go speaks it). On B, one ``get``
   for that ActionID through B's helper: B's daemon fetches it from A,
   verifies and stores it, and the helper answers with its DiskPath. The
   get's wall time gives MB/s. Next to each get, the script writes the
   same body as a plain file in B's store directory: the floor for any
   program that stores it there (on this project's VMs, writing new data
   into the page cache runs anywhere from 200 MB/s to 4.5 GB/s, depending
   on the state of the machine's memory, so the floor is the mean of one
   write just before the get and one just after). The target is the get
   at >= 0.85 of that floor, pair by pair (the median of the per-pair
   ratios). Each pair also times SHA-256 of the body on one core
   (hashlib): no receiver that verifies what it stores can beat that
   either, so where the hash alone takes longer than the target allows the
   get (the write's time / 0.85), the target is out of reach by
   construction. The table counts such pairs, gives their ratio to the
   slower of write and hash, and judges the target on the median of the
   other pairs (the median of all pairs is shown too). B's daemon's peak
   RSS (VmHWM) is read before and after, to show that it does not grow
   with the body. The helper gives up on the daemon after its lookup
   deadline plus a transfer allowance (src/helper/daemon_tier.rs; about 1.15 s
   by default), which a 256 MiB body may not make, so these gets run with
   a helper config whose ``lookup-deadline`` is 60 s (the daemons keep the
   default). One extra get
   with the default config shows what go would see: a hit, or a miss when
   the helper gave up, and when the body landed in B's store (the daemon
   finishes the transfer either way).

Method and hygiene:

* The hosts' files (stores, GOCACHEs, go's TMPDIR) live on a fresh ext4
  with a journal, on a loop device the script makes and removes
  (``--fs root`` keeps them on the machine's own filesystem; see
  netns.make_filesystem() for why), and the LAN's bridge does not pass frames
  through iptables.
* "An empty store" is a new store directory, with B's daemon restarted on
  it and both sides connected again before the build; old stores and
  GOCACHEs are deleted only at the end. (Deleting a store of ~2,700 files
  just before a build that creates as many makes ext4 without a journal,
  as on this project's machines, skip each recently deleted inode on every
  create: a filesystem artefact, not warren's cost. ``--reset clean``
  measures that way instead, with ``warren clean``.)
* Every timed build and get starts after os.sync(), so no dirty data of
  an earlier step is written back during it.
* Builds are timed from spawning go to its exit (time.perf_counter), CPU
  time (go and everything it waited for) from os.wait4, and the daemons'
  own CPU time from /proc/<pid>/stat before and after each build.
* warren must be silent: any stderr from a go command fails the benchmark,
  as does any failed build.
* The daemons log at WARREN_LOG=info (--daemon-log to change) to files in
  the scratch directory; this script timestamps each line as it arrives and
  writes markers for each build, so the logs show where time goes.
* mDNS and the daemons run only inside the namespaces created here, never
  on the machine's own interfaces; nothing is dialed outside them. Names
  carry this process's PID; stale namespaces of earlier runs (whose PID is
  gone) are removed first. Processes and namespaces are removed at the end,
  also on failure, Ctrl-C or SIGTERM (try/finally, atexit and a handler).

Linux only, as root (network namespaces). Python 3.11+, standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import netns
from benchlib import (
    BenchError,
    big_body_args,
    common_args,
    fmt_s,
    logger,
    machine_info,
    mib,
    parse_counts,
    resolve_go,
    resolve_warren,
    tree_size,
)
from netns import (
    CLEANUP,
    SHARING_CONFIG,
    Build,
    Helper,
    Host,
    b64,
    ensure_connected,
    go_build,
    make_lan,
    wait_note,
)

log = logger("bench_share")

MIRROR_TIMEOUT = 60.0  # B fetching A's whole store with no go running

# Compared in part 1: the default, and no compression at all.
COMPRESSION_MODES = ("auto", "never")
# What B's daemon logs (at info) when "auto" has measured both.
CHOICE = re.compile(
    r"bodies came at (\d+) MB/s raw and (\d+) MB/s compressed: asking for (\w+) bodies"
)

TARGETS = {
    "peer_speedup": 15.0,  # cold / from-peer, at least
    "peer_vs_local": 3.0,  # from-peer / warm-locally, at most
    "peer_hit_share": 0.95,  # of B's gets in a from-peer build, at least
    "empty_peer_ratio": 1.03,  # cold with empty peers / cold local-only, at most
    "transfer_ratio": 0.85,  # at least: the big get against writing the body alone
}


def sha256_file(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.digest()


@dataclass
class Transfer:
    size: int
    put_s: float  # A's helper ingesting the body
    get_s: float  # B's get, fetched from A through B's daemon
    b_daemon_hwm_before_kib: int
    b_daemon_hwm_after_kib: int
    a_daemon_hwm_before_kib: int
    a_daemon_hwm_after_kib: int
    b_daemon_cpu_s: float
    a_daemon_cpu_s: float
    floor_s: float  # writing the same body as a new file in B's store directory (mean of two)
    hash_s: float  # SHA-256 of the body on one core, next to the write

    @property
    def mb_s(self) -> float:
        return self.size / 1e6 / self.get_s

    @property
    def floor_mb_s(self) -> float:
        return self.size / 1e6 / self.floor_s

    @property
    def ratio(self) -> float:
        """The get's rate as a fraction of writing the body alone."""
        return self.floor_s / self.get_s

    @property
    def out_of_reach(self) -> bool:
        """Whether SHA-256 alone takes longer than the target allows the
        get, so that no receiver that verifies the body can meet it."""
        return self.hash_s > self.floor_s / TARGETS["transfer_ratio"]

    @property
    def verify_floor_s(self) -> float:
        """The least a receiver that hashes what it writes can take, with
        the write and the hash on two cores at once."""
        return max(self.floor_s, self.hash_s)


def write_floor(host: Host, body: bytes, run: int) -> float:
    """Seconds to write ``body`` as a new file next to ``host``'s store, in
    256 KiB writes (as warren writes bodies), without fsync: the least any
    program storing the body there can take, measured next to the get. The
    file stays until the end, like the bodies."""
    path = host.store.parent / f"write-floor-{host.store_n}-{run}"
    view = memoryview(body)
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for off in range(0, len(body), 256 << 10):
            f.write(view[off : off + (256 << 10)])
    return time.perf_counter() - t0


def hash_floor(body: bytes) -> float:
    """Seconds for SHA-256 of ``body`` on one core (OpenSSL, through
    hashlib): what every receiver that verifies the body pays."""
    t0 = time.perf_counter()
    hashlib.sha256(body).digest()
    return time.perf_counter() - t0


def put_on(host: Host, action: bytes, body: bytes) -> float:
    helper = Helper(host)
    try:
        resp, seconds = helper.request(
            {
                "Command": "put",
                "ActionID": b64(action),
                "OutputID": b64(hashlib.sha256(body).digest()),
                "BodySize": len(body),
            },
            body,
        )
    finally:
        stderr = helper.close()
    if resp.get("Err") or not resp.get("DiskPath"):
        raise BenchError(f"{host.name}: put failed: {resp!r}")
    if stderr:
        raise BenchError(f"{host.name}: helper wrote to stderr during a put:\n{stderr}")
    return seconds


def transfer(a: Host, b: Host, size: int, run: int) -> Transfer:
    body = os.urandom(size)
    output = hashlib.sha256(body).digest()
    action = os.urandom(32)
    put_s = put_on(a, action, body)
    os.sync()
    # The floor and the get each write the body into new page cache, whose
    # cost on this project's VMs drifts by 2x within a minute: the floor is
    # the mean of one write just before the get and one just after.
    floor_before_s = write_floor(b, body, 2 * run)
    hash_s = hash_floor(body)
    os.sync()
    for h in (a, b):
        h.daemon.mark(f"start big get run {run} ({size} bytes, action {action.hex()})")
    b_hwm0, a_hwm0 = b.daemon.hwm_kib(), a.daemon.hwm_kib()
    b_cpu0, a_cpu0 = b.daemon.cpu_s(), a.daemon.cpu_s()
    helper = Helper(b, WARREN_CONFIG=str(b.config_dir / "long-wait.toml"))
    try:
        resp, get_s = helper.request({"Command": "get", "ActionID": b64(action)})
    finally:
        stderr = helper.close()
    b_cpu1, a_cpu1 = b.daemon.cpu_s(), a.daemon.cpu_s()
    b_hwm1, a_hwm1 = b.daemon.hwm_kib(), a.daemon.hwm_kib()
    for h in (a, b):
        h.daemon.mark(f"end big get run {run}: {get_s:.3f} s")
    os.sync()
    floor_s = (floor_before_s + write_floor(b, body, 2 * run + 1)) / 2
    if resp.get("Miss") or not resp.get("DiskPath"):
        raise BenchError(
            f"B's get of the {size}-byte body was not a hit: {resp!r}\n--- B daemon ---\n"
            f"{b.daemon.tail()}\n--- A daemon ---\n{a.daemon.tail()}"
        )
    if stderr:
        raise BenchError(f"B's helper wrote to stderr:\n{stderr}")
    path = Path(resp["DiskPath"])
    if path.stat().st_size != size or sha256_file(path) != output:
        raise BenchError(f"B's stored copy {path} does not match the body put on A")
    return Transfer(
        size,
        put_s,
        get_s,
        b_hwm0,
        b_hwm1,
        a_hwm0,
        a_hwm1,
        b_cpu1 - b_cpu0,
        a_cpu1 - a_cpu0,
        floor_s,
        hash_s,
    )


@dataclass
class Mirror:
    """B fetching all of A's store on read-ahead hints, with no go running."""

    entries: int
    bytes: int
    seconds: float | None  # None: not all of it arrived within MIRROR_TIMEOUT
    arrived: int  # entries of A's in B's store at the end
    a_daemon_cpu_s: float
    b_daemon_cpu_s: float


def put_order(host: Host) -> list[tuple[bytes, int]]:
    """(ActionID, body size) of every entry in a host's store, in the
    order they were put (the put time on each entry's line)."""
    entries = sorted(entries_of(host), key=lambda entry: entry[2])
    return [(action, size) for action, size, _ in entries]


def mirror(a: Host, b: Host, order: list[tuple[bytes, int]], run: int) -> Mirror:
    """B's store is empty and connected to A: one get for A's first entry,
    then read-ahead alone, until every entry of A's has landed on B."""
    if not order:
        raise BenchError("A's store has no entries to fetch")
    paths = [b.store / "v1" / "actions" / a.hex()[:2] / a.hex() for a, _ in order]
    for h in (a, b):
        h.daemon.mark(f"start transfer alone run {run}: {len(order)} entries")
    os.sync()
    a_cpu0, b_cpu0 = a.daemon.cpu_s(), b.daemon.cpu_s()
    helper = Helper(b)
    try:
        t0 = time.perf_counter()
        resp, _ = helper.request({"Command": "get", "ActionID": b64(order[0][0])})
        if resp.get("Miss"):
            raise BenchError(f"B's get of A's first entry missed: {resp!r}")
        # Entries land in about A's put order: checking them in that order,
        # one stat at a time, costs the cores next to nothing.
        arrived = 0
        while arrived < len(paths) and time.perf_counter() - t0 < MIRROR_TIMEOUT:
            while arrived < len(paths) and paths[arrived].exists():
                arrived += 1
            if arrived < len(paths):
                time.sleep(0.002)
        seconds = time.perf_counter() - t0 if arrived == len(paths) else None
    finally:
        stderr = helper.close()
    if stderr:
        raise BenchError(f"B's helper wrote to stderr:\n{stderr}")
    if seconds is None:
        arrived = sum(1 for p in paths if p.exists())
    a_cpu1, b_cpu1 = a.daemon.cpu_s(), b.daemon.cpu_s()
    for h in (a, b):
        h.daemon.mark(f"end transfer alone run {run}: {seconds} s")
    return Mirror(
        len(order),
        sum(size for _, size in order),
        seconds,
        arrived,
        a_cpu1 - a_cpu0,
        b_cpu1 - b_cpu0,
    )


@dataclass
class DefaultDeadline:
    """A big get with the default helper config: what go would see."""

    size: int
    get_s: float
    answer: str  # "miss" or "hit"
    landed_s: float | None  # from the get until the body was in B's store


def transfer_default(a: Host, b: Host, size: int) -> DefaultDeadline:
    body = os.urandom(size)
    action = os.urandom(32)
    put_on(a, action, body)
    del body
    for h in (a, b):
        h.daemon.mark("start big get with the default helper config")
    helper = Helper(b)
    try:
        t0 = time.perf_counter()
        resp, get_s = helper.request({"Command": "get", "ActionID": b64(action)})
    finally:
        stderr = helper.close()
    if stderr:
        raise BenchError(f"B's helper wrote to stderr:\n{stderr}")
    answer = "miss" if resp.get("Miss") else "hit"
    landed = get_s if answer == "hit" else None
    if answer == "miss":
        # Poll B's store with sharing off (local lookups only) until the
        # daemon's transfer has landed.
        probe = Helper(b, WARREN_SHARE="0")
        try:
            while time.perf_counter() - t0 < 60:
                r, _ = probe.request({"Command": "get", "ActionID": b64(action)})
                if not r.get("Miss"):
                    landed = time.perf_counter() - t0
                    break
                time.sleep(0.02)
        finally:
            probe.close()
    for h in (a, b):
        h.daemon.mark(f"end big get with the default helper config: {answer} after {get_s:.3f} s")
    return DefaultDeadline(size, get_s, answer, landed)


@dataclass
class Probe:
    """Per-get latency through B's helper, one get at a time (no go)."""

    peer_hit_s: list[float]  # every action A holds, fetched from A
    peer_hit_sizes: list[int]
    local_hit_s: list[float]  # the same actions again: now local hits
    miss_on_s: list[float]  # random actions, sharing on: a round trip to A
    miss_off_s: list[float]  # random actions, sharing off


def entries_of(host: Host) -> list[tuple[bytes, int, int]]:
    """(ActionID, body size, put time in ns) of every entry in a host's
    store that a peer can get, in the order of their paths: module indexes
    are never shared (SECURITY.md), so they are left out."""
    out = []
    objects = host.store / "v1" / "objects"
    for path in sorted((host.store / "v1" / "actions").glob("*/*")):
        if path.name.startswith("."):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = path.read_text().split()
            with open(objects / fields[1][:2] / fields[1], "rb") as body:
                if body.read(10) == b"go index v":
                    continue
            out.append((bytes.fromhex(path.name), int(fields[2]), int(fields[3])))
    return out


def actions_of(host: Host) -> list[tuple[bytes, int]]:
    """(ActionID, body size) of every entry in a host's store."""
    return [(action, size) for action, size, _ in entries_of(host)]


def probe_latency(a: Host, b: Host, misses: int) -> Probe:
    """B has an empty store and is connected to A, whose store is warm."""
    actions = actions_of(a)
    if not actions:
        raise BenchError("A's store has no entries to probe")
    for h in (a, b):
        h.daemon.mark(f"start latency probe: {len(actions)} peer gets")

    def gets(helper: Helper, ids: list[bytes], want_hit: bool) -> list[float]:
        times = []
        for action in ids:
            resp, dt = helper.request({"Command": "get", "ActionID": b64(action)})
            if bool(resp.get("Miss")) == want_hit:
                raise BenchError(
                    f"probe: expected {'a hit' if want_hit else 'a miss'}, got {resp!r}"
                )
            times.append(dt)
        return times

    ids = [action for action, _ in actions]
    random_ids = [os.urandom(32) for _ in range(misses)]
    helper = Helper(b)
    try:
        peer = gets(helper, ids, True)
        local = gets(helper, ids, True)
        miss_on = gets(helper, random_ids, False)
    finally:
        stderr = helper.close()
    helper = Helper(b, WARREN_SHARE="0")
    try:
        miss_off = gets(helper, random_ids, False)
    finally:
        stderr += helper.close()
    if stderr:
        raise BenchError(f"B's helper wrote to stderr during the probe:\n{stderr}")
    for h in (a, b):
        h.daemon.mark("end latency probe")
    return Probe(peer, [size for _, size in actions], local, miss_on, miss_off)


def quantiles(times: list[float]) -> str:
    """Median and 90th percentile in ms, and the sum."""
    q = statistics.quantiles(times, n=10)
    return (
        f"median {statistics.median(times) * 1e3:.2f} ms, p90 {q[8] * 1e3:.2f} ms, "
        f"sum {sum(times):.2f} s (n={len(times)})"
    )


# --------------------------------------------------------------------------
# The benchmark


@dataclass
class Results:
    prep: Build | None = None
    cold_local: list[Build] = field(default_factory=list)
    from_peer: list[Build] = field(default_factory=list)
    warm_local: list[Build] = field(default_factory=list)
    # Per mode: from-peer builds, and what "auto" chose in each.
    compression: dict[str, list[Build]] = field(default_factory=dict)
    auto_choices: list[str] = field(default_factory=list)
    mirrors: list[Mirror] = field(default_factory=list)
    empty_off: list[Build] = field(default_factory=list)
    empty_on: list[Build] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    default_deadline: DefaultDeadline | None = None
    probe: Probe | None = None
    connect_s: float = 0.0
    a_store_bytes: int = 0


def med(builds: list[Build], attr: str = "wall_s") -> float:
    return statistics.median(getattr(b, attr) for b in builds)


def wire_note(build: Build) -> str:
    """Body bytes B received in a build, and what crossed the link."""
    stored, wire = build.stats.get("peer_bytes", 0), build.stats.get("peer_wire", 0)
    return f"{stored / 1e6:.0f} MB of bodies, {wire / 1e6:.0f} MB on the link"


def auto_choice(log_path: Path, offset: int) -> str:
    """What "auto" chose, from the daemon's log past ``offset``."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        found = CHOICE.findall(f.read())
    if not found:
        return "(still measuring)"
    return "; ".join(f"{kind} (raw {raw}, compressed {zstd} MB/s)" for raw, zstd, kind in found)


def bench(args: argparse.Namespace, go: Path, warren: Path, scratch: Path, res: Results) -> None:
    t0 = time.perf_counter()
    lan = make_lan(["a", "b"], args.link_rate)
    a = Host("A", *lan["a"], scratch / "a", go, warren, t0)
    b = Host("B", *lan["b"], scratch / "b", go, warren, t0)
    hosts = [a, b]
    a_id = a.init(SHARING_CONFIG)
    b_id = b.init(SHARING_CONFIG)
    a.trust(b_id, "b")
    b.trust(a_id, "a")
    a.start_daemon(args.daemon_log)
    b.start_daemon(args.daemon_log)
    res.connect_s = b.wait_connected(a_id)
    a.wait_connected(b_id)
    log(
        f"A {a.address} and B {b.address} connected after {res.connect_s:.1f} s "
        f"(daemons: A pid {a.daemon.pid}, B pid {b.daemon.pid})"
    )
    target = args.target

    def empty(host: Host) -> None:
        """Gives ``host`` an empty store (see Host.new_store and --reset)."""
        if args.reset == "clean":
            host.clean()
        else:
            host.new_store()

    def connected() -> None:
        ensure_connected(a, b, a_id, b_id)

    if not args.skip_peer:
        log(f"A: go build {target} (warms A's store)")
        res.prep = go_build(a, hosts, target, "prep A", 0, False)
        res.a_store_bytes = tree_size(a.store)
        log(f"A: {res.prep.wall_s:.1f} s; A's store {res.a_store_bytes / 1e6:.0f} MB")
        for i in range(args.runs):
            order = ("cold", "peer") if i % 2 == 0 else ("peer", "cold")
            for kind in order:
                empty(b)
                connected()
                if kind == "cold":
                    bd = go_build(b, hosts, target, "cold local-only", i, False)
                    res.cold_local.append(bd)
                    log(f"run {i + 1}/{args.runs} B cold, local-only: {bd.wall_s:.2f} s")
                else:
                    bd = go_build(b, hosts, target, "from peer", i, True)
                    res.from_peer.append(bd)
                    log(
                        f"run {i + 1}/{args.runs} B from warm peer: {bd.wall_s:.3f} s, "
                        f"{bd.stats.get('hits', 0)}/{bd.stats.get('gets', 0)} gets "
                        f"answered with A's entries ({bd.peer_share:.1%}; "
                        f"{bd.stats.get('peer_hits', 0)} waited on A, "
                        f"{bd.stats.get('peer_read_ahead', 0)} bodies read ahead; "
                        f"{wire_note(bd)}; {wait_note(bd)})"
                    )
                    bd = go_build(b, hosts, target, "warm local", i, True)
                    res.warm_local.append(bd)
                    log(
                        f"run {i + 1}/{args.runs} B warm locally: {bd.wall_s:.3f} s "
                        f"({bd.stats.get('hits', 0)}/{bd.stats.get('gets', 0)} local hits)"
                    )

        if not args.skip_mirror:
            order = put_order(a)
            for i in range(args.runs):
                empty(b)
                connected()
                m = mirror(a, b, order, i)
                res.mirrors.append(m)
                took = "did not finish" if m.seconds is None else f"{m.seconds:.3f} s"
                log(
                    f"run {i + 1}/{args.runs} B fetching A's whole store, no go: {took} "
                    f"({m.arrived}/{m.entries} entries, {m.bytes / 1e6:.0f} MB; daemon CPU "
                    f"A {m.a_daemon_cpu_s:.2f} s, B {m.b_daemon_cpu_s:.2f} s)"
                )

        if not args.skip_compression:
            for i in range(args.runs):
                modes = COMPRESSION_MODES if i % 2 == 0 else COMPRESSION_MODES[::-1]
                for mode in modes:
                    config = b.config_dir / f"compression-{mode}.toml"
                    b.daemon_env = {"WARREN_CONFIG": str(config)}
                    empty(b)  # restarts the daemon with that config
                    connected()
                    logged = b.daemon.log_path.stat().st_size
                    bd = go_build(b, hosts, target, f"from peer, compression {mode}", i, True)
                    res.compression.setdefault(mode, []).append(bd)
                    note = ""
                    if mode == "auto":
                        note = auto_choice(b.daemon.log_path, logged)
                        res.auto_choices.append(note)
                    log(
                        f"run {i + 1}/{args.runs} B from peer, compression {mode}: "
                        f"{bd.wall_s:.3f} s ({wire_note(bd)}) {note}"
                    )
            b.daemon_env = {}
            empty(b)

        if args.probe_misses:
            # Per-lookup latency: with read-ahead, all but the first lookup
            # would be local hits.
            b.daemon_env = {"WARREN_CONFIG": str(b.config_dir / "no-read-ahead.toml")}
            b.new_store()  # restarts the daemon with that config
            connected()
            res.probe = probe_latency(a, b, args.probe_misses)
            b.daemon_env = {}
            b.new_store()
            log(
                f"probe: peer hits {quantiles(res.probe.peer_hit_s)}; local hits "
                f"{quantiles(res.probe.local_hit_s)}"
            )

    if not args.skip_empty_peer:
        empty(a)
        log("A's store emptied: cold builds with a peer that holds nothing")
        for i in range(args.runs):
            for share in (False, True) if i % 2 == 0 else (True, False):
                empty(b)
                connected()
                bd = go_build(
                    b,
                    hosts,
                    target,
                    "cold, empty peer" if share else "cold local-only (empty-peer pair)",
                    i,
                    share,
                )
                (res.empty_on if share else res.empty_off).append(bd)
                log(
                    f"run {i + 1}/{args.runs} B cold, sharing {'on ' if share else 'off'}: "
                    f"{bd.wall_s:.2f} s ({bd.stats.get('misses', 0)} misses; {wait_note(bd)})"
                )

    if not args.skip_transfer:
        # Fresh random bodies each time: no store needs emptying.
        connected()
        size = args.body_mib << 20
        for i in range(args.transfer_runs):
            t = transfer(a, b, size, i)
            res.transfers.append(t)
            log(
                f"big get {i + 1}/{args.transfer_runs}: {t.get_s:.3f} s = {t.mb_s:.0f} MB/s "
                f"(writing it on B alone: {t.floor_s:.3f} s = {t.floor_mb_s:.0f} MB/s, "
                f"ratio {t.ratio:.2f}; SHA-256 alone {t.hash_s:.3f} s); "
                f"B daemon VmHWM {mib(t.b_daemon_hwm_before_kib)} -> "
                f"{mib(t.b_daemon_hwm_after_kib)}"
            )
        res.default_deadline = transfer_default(a, b, size)
        d = res.default_deadline
        landed = "never" if d.landed_s is None else f"{d.landed_s:.3f} s"
        log(
            f"big get, default helper config: {d.answer} after {d.get_s:.3f} s; "
            f"body in B's store after {landed}"
        )

    # Anything alarming the daemons said.
    for h in hosts:
        h.daemon.stop()
    for h in hosts:
        noisy = [
            ln
            for ln in h.daemon.log_path.read_text(errors="replace").splitlines()
            if "warren: warning:" in ln or "warren: error:" in ln
        ]
        if noisy:
            log(f"{h.name}'s daemon logged {len(noisy)} warnings/errors; first: {noisy[0]}")
        # keep a copy of the logs next to the JSON, if any, for analysis
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(h.daemon.log_path, args.keep_logs / f"daemon-{h.name.lower()}.log")


# --------------------------------------------------------------------------
# Reporting


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def all_cpu_s(b: Build) -> float:
    """CPU time of go and its children, and of every daemon, during `b`."""
    return b.cpu_s + sum(b.daemon_cpu_s.values())


def cpu_floor_rows(
    res: Results, s: dict, peer: float, warm: float
) -> list[tuple[str, str, str, str]]:
    """The from-peer build's CPU floor: the CPU time its processes spent
    (go and its children, and the daemons), spread over all of this
    machine's cores, is the least wall time the build could take on it.
    Every host here shares this VM's cores; on an office's machines, A's
    daemon runs elsewhere, which the second floor (go and B's daemon) is."""
    cores = os.cpu_count() or 1
    every = statistics.median(all_cpu_s(b) / cores for b in res.from_peer)
    own = statistics.median(
        (b.cpu_s + b.daemon_cpu_s.get("B", 0.0)) / cores for b in res.from_peer
    )
    s.update(cpu_floor_s=every, cpu_floor_b_s=own)
    return [
        (
            f"  CPU floor: go, A and B's CPU over {cores} cores",
            f"{fmt_s(every)} = {every / warm:.2f}x warm; from peer / that {peer / every:.2f}x",
            "",
            "",
        ),
        (
            "  without A's daemon's CPU (hosts on machines of their own)",
            f"{fmt_s(own)} = {own / warm:.2f}x warm",
            "",
            "",
        ),
    ]


def summarize(res: Results) -> tuple[list[tuple[str, str, str, str]], dict]:
    """Table rows (what, median, target, verdict) and a JSON summary."""
    rows: list[tuple[str, str, str, str]] = []
    s: dict = {}
    if res.from_peer:
        cold, peer, warm = med(res.cold_local), med(res.from_peer), med(res.warm_local)
        share = statistics.median(b.peer_share for b in res.from_peer)
        min_share = min(b.peer_share for b in res.from_peer)
        # Each warm-local build ran right after its from-peer build: their
        # ratio pairs runs taken moments apart, where the ratio of medians
        # may pair a run in one state of the machine with one in another.
        paired = statistics.median(
            p.wall_s / w.wall_s for p, w in zip(res.from_peer, res.warm_local, strict=True)
        )
        s.update(
            cold_local_s=cold,
            from_peer_s=peer,
            warm_local_s=warm,
            peer_speedup=cold / peer,
            peer_vs_local=peer / warm,
            peer_vs_local_paired=paired,
            peer_hit_share_median=share,
            peer_hit_share_min=min_share,
        )
        rows += [
            ("B cold, local-only", fmt_s(cold), "", ""),
            ("B from warm peer", fmt_s(peer), "", ""),
            ("B warm locally", fmt_s(warm), "", ""),
            (
                "speedup: cold / from peer",
                f"{cold / peer:.1f}x",
                f">= {TARGETS['peer_speedup']:.0f}x",
                verdict(cold / peer >= TARGETS["peer_speedup"]),
            ),
            (
                "from peer / warm locally",
                f"{peer / warm:.2f}x (per run: median {paired:.2f}x)",
                f"<= {TARGETS['peer_vs_local']:.0f}x",
                verdict(peer / warm <= TARGETS["peer_vs_local"]),
            ),
            *cpu_floor_rows(res, s, peer, warm),
            (
                "B's gets answered with A's entries",
                f"{share:.1%} (min {min_share:.1%})",
                f">= {TARGETS['peer_hit_share']:.0%}",
                verdict(min_share >= TARGETS["peer_hit_share"]),
            ),
        ]
    if res.mirrors:
        done = [m.seconds for m in res.mirrors if m.seconds is not None]
        if done:
            alone = statistics.median(done)
            s.update(transfer_alone_s=alone, transfer_alone_finished=len(done))
            rows.append(
                (
                    "B fetching A's whole store, no go",
                    f"{fmt_s(alone)} ({res.mirrors[0].bytes / alone / 1e6:.0f} MB/s"
                    + (
                        f"; {len(done)} of {len(res.mirrors)} finished"
                        if len(done) < len(res.mirrors)
                        else ""
                    )
                    + ")",
                    "",
                    "",
                )
            )
            if res.from_peer:
                rows.append(("  from peer / that", f"{med(res.from_peer) / alone:.2f}x", "", ""))
        else:
            rows.append(("B fetching A's whole store, no go", "never finished", "", ""))
    if res.compression:
        by_mode = {mode: med(builds) for mode, builds in res.compression.items()}
        s.update(compression_from_peer_s=by_mode)
        rows += [
            (f"B from warm peer, compression {mode}", fmt_s(t), "", "")
            for mode, t in by_mode.items()
        ]
        if "auto" in by_mode and "never" in by_mode:
            rows.append(("  auto / never", f"{by_mode['auto'] / by_mode['never']:.2f}x", "", ""))
    if res.empty_on:
        off, on = med(res.empty_off), med(res.empty_on)
        cpu_ratio = statistics.median(all_cpu_s(b) for b in res.empty_on) / statistics.median(
            all_cpu_s(b) for b in res.empty_off
        )
        s.update(
            empty_peer_off_s=off,
            empty_peer_on_s=on,
            empty_peer_ratio=on / off,
            empty_peer_cpu_ratio=cpu_ratio,
        )
        rows += [
            ("B cold, sharing off", fmt_s(off), "", ""),
            ("B cold, sharing on, peer holds nothing", fmt_s(on), "", ""),
            (
                "ratio on / off",
                f"{on / off:.3f}x",
                f"<= {TARGETS['empty_peer_ratio']}x",
                verdict(on / off <= TARGETS["empty_peer_ratio"]),
            ),
            ("  CPU ratio (go + children + both daemons)", f"{cpu_ratio:.3f}x", "", ""),
        ]
    if res.transfers:
        mbs = statistics.median(t.mb_s for t in res.transfers)
        secs = statistics.median(t.get_s for t in res.transfers)
        hwm_before = min(t.b_daemon_hwm_before_kib for t in res.transfers)
        hwm_after = max(t.b_daemon_hwm_after_kib for t in res.transfers)
        a_before = min(t.a_daemon_hwm_before_kib for t in res.transfers)
        a_after = max(t.a_daemon_hwm_after_kib for t in res.transfers)
        size = res.transfers[0].size
        floor = statistics.median(t.floor_mb_s for t in res.transfers)
        ratio = statistics.median(t.ratio for t in res.transfers)
        verify_ratio = statistics.median(t.verify_floor_s / t.get_s for t in res.transfers)
        hash_mb_s = statistics.median(t.size / 1e6 / t.hash_s for t in res.transfers)
        # The target is judged on the pairs where a verifying receiver
        # could meet it at all.
        reachable = [t for t in res.transfers if not t.out_of_reach]
        out_of_reach = len(res.transfers) - len(reachable)
        reachable_ratio = (
            statistics.median(t.ratio for t in reachable) if reachable else float("nan")
        )
        s.update(
            transfer_mb_s=mbs,
            transfer_s=secs,
            write_floor_mb_s=floor,
            transfer_ratio=ratio,
            transfer_ratio_within_reach=reachable_ratio,
            transfer_verify_ratio=verify_ratio,
            hash_floor_mb_s=hash_mb_s,
            transfer_pairs_out_of_reach=out_of_reach,
            b_daemon_hwm_before_kib=hwm_before,
            b_daemon_hwm_after_kib=hwm_after,
            a_daemon_hwm_before_kib=a_before,
            a_daemon_hwm_after_kib=a_after,
        )
        rows += [
            (f"{size >> 20} MiB get from peer", f"{fmt_s(secs)} = {mbs:.0f} MB/s", "", ""),
            (f"  writing {size >> 20} MiB on B alone", f"{floor:.0f} MB/s", "", ""),
            ("  get / write alone, median of all pairs", f"{ratio:.2f}", "", ""),
            (f"  SHA-256 of {size >> 20} MiB alone", f"{hash_mb_s:.0f} MB/s", "", ""),
            (
                "  get / max(write, SHA-256), median",
                f"{verify_ratio:.2f}",
                f"({out_of_reach} of {len(res.transfers)} pairs out of reach)",
                "",
            ),
            (
                f"  get / write alone, {len(reachable)} pairs within reach",
                f"{reachable_ratio:.2f}",
                f">= {TARGETS['transfer_ratio']:.2f}",
                verdict(bool(reachable) and reachable_ratio >= TARGETS["transfer_ratio"]),
            ),
            (
                "B daemon peak RSS before -> after",
                f"{mib(hwm_before)} -> {mib(hwm_after)}",
                "flat",
                verdict(hwm_after - hwm_before < 16 * 1024),
            ),
            (
                "A daemon peak RSS before -> after",
                f"{mib(a_before)} -> {mib(a_after)}",
                "flat",
                verdict(a_after - a_before < 16 * 1024),
            ),
        ]
    return rows, s


def print_report(info: dict, args: argparse.Namespace, res: Results) -> dict:
    print(f"date      {info['date']}")
    print(f"go        {info['go_version']}  ({info['go']})")
    print(f"warren    {info['warren_version']}, {info['warren_commit']}  ({info['warren']})")
    print(
        f"machine   {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}; load average "
        f"at start {info['load_avg_at_start']}, at end {info['load_avg_at_end']}"
    )
    print(
        f"workload  go build {args.target}; {args.runs} runs per side, interleaved; "
        f"peers connected {res.connect_s:.1f} s after the daemons started; link "
        f"{args.link_rate or 'unshaped veth'}"
    )
    print()
    rows, s = summarize(res)
    rows.insert(0, ("measurement", "median", "target", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print()

    def cells(builds: list[Build]) -> str:
        return " ".join(f"{b.wall_s:.3f}[{b.cpu_s:.1f}]({b.load1:.1f})" for b in builds)

    print(
        "raw wall times in run order, s [CPU s of go and its children] "
        "(1-min load average at the start):"
    )
    for name, builds in (
        ("B cold local-only ", res.cold_local),
        ("B from warm peer  ", res.from_peer),
        ("B warm locally    ", res.warm_local),
        *((f"B peer, {mode:<7} ", builds) for mode, builds in res.compression.items()),
        ("B cold sharing off", res.empty_off),
        ("B cold empty peer ", res.empty_on),
    ):
        if builds:
            print(f"  {name} {cells(builds)}")
    if res.mirrors:
        print(
            "  B fetching A's store, no go: "
            + " ".join(
                ("unfinished" if m.seconds is None else f"{m.seconds:.3f}")
                + f"[A {m.a_daemon_cpu_s:.2f} B {m.b_daemon_cpu_s:.2f}]"
                for m in res.mirrors
            )
            + " (s [daemon CPU s])"
        )
    if res.prep:
        print(
            f"  A prep build       {res.prep.wall_s:.3f}[{res.prep.cpu_s:.1f}]; "
            f"A's store {res.a_store_bytes / 1e6:.0f} MB"
        )
    if res.from_peer:
        print(
            "daemon CPU during the from-peer builds (A serving / B fetching), s: "
            + " ".join(
                f"{b.daemon_cpu_s.get('A', 0):.2f}/{b.daemon_cpu_s.get('B', 0):.2f}"
                for b in res.from_peer
            )
        )
        print(
            "B's counters per from-peer build (gets, hits, of which waited on A, misses; "
            "bodies from A, of which read ahead): "
            + "; ".join(
                f"{b.stats.get('gets')}, {b.stats.get('hits')}, {b.stats.get('peer_hits')}, "
                f"{b.stats.get('misses')}; {b.stats.get('peer_bodies')}, "
                f"{b.stats.get('peer_read_ahead')}"
                for b in res.from_peer
            )
        )
    for name, builds in (
        ("from peer", res.from_peer),
        ("cold, empty peer", res.empty_on),
    ):
        if builds:
            print(
                f"go waiting on B's daemon per build, {name}, s over lookups: "
                + " ".join(
                    f"{b.stats.get('remote_wait_us', 0) / 1e6:.3f}/{b.stats.get('remote_lookups', 0)}"
                    for b in builds
                )
            )
    for name, builds in (
        ("from peer", res.from_peer),
        *((f"compression {mode}", builds) for mode, builds in res.compression.items()),
    ):
        if builds:
            print(
                f"bodies from A per build, {name}, MB stored / on the link: "
                + " ".join(
                    f"{b.stats.get('peer_bytes', 0) / 1e6:.0f}/{b.stats.get('peer_wire', 0) / 1e6:.0f}"
                    for b in builds
                )
            )
    if res.auto_choices:
        print('compression "auto" chose, per run: ' + " | ".join(res.auto_choices))
    if res.probe:
        pr = res.probe
        print("latency probe, one get at a time through one B helper (no go running):")
        print(f"  peer hit (fetched from A): {quantiles(pr.peer_hit_s)}")
        for lo, hi, name in (
            (0, 64 << 10, "< 64 KiB"),
            (64 << 10, 1 << 20, "64 KiB-1 MiB"),
            (1 << 20, 1 << 62, ">= 1 MiB"),
        ):
            sel = [t for t, n in zip(pr.peer_hit_s, pr.peer_hit_sizes, strict=True) if lo <= n < hi]
            if len(sel) >= 2:
                print(f"    bodies {name}: {quantiles(sel)}")
        print(f"  local hit (same actions again): {quantiles(pr.local_hit_s)}")
        print(f"  miss, sharing on (A asked, has nothing): {quantiles(pr.miss_on_s)}")
        print(f"  miss, sharing off: {quantiles(pr.miss_off_s)}")
    if res.empty_on:
        print(
            "daemon CPU during the empty-peer builds (A / B), s: "
            + " ".join(
                f"{b.daemon_cpu_s.get('A', 0):.2f}/{b.daemon_cpu_s.get('B', 0):.2f}"
                for b in res.empty_on
            )
        )
    if res.transfers:
        print("big gets: " + " ".join(f"{t.get_s:.3f}s/{t.mb_s:.0f}MB/s" for t in res.transfers))
        print(
            "  writing the body on B alone (mean of one write before and one after each get): "
            + " ".join(f"{t.floor_s:.3f}s/{t.floor_mb_s:.0f}MB/s" for t in res.transfers)
        )
        print(
            "  get / write alone, per pair: "
            + " ".join(f"{t.ratio:.2f}" for t in res.transfers)
            + "; SHA-256 alone, s: "
            + " ".join(f"{t.hash_s:.3f}" for t in res.transfers)
        )
        print(
            "  B daemon VmHWM before->after: "
            + " ".join(
                f"{mib(t.b_daemon_hwm_before_kib)}->{mib(t.b_daemon_hwm_after_kib)}"
                for t in res.transfers
            )
        )
        print(
            "  daemon CPU per get (A serving / B fetching), s: "
            + " ".join(f"{t.a_daemon_cpu_s:.2f}/{t.b_daemon_cpu_s:.2f}" for t in res.transfers)
        )
        print(
            "  A's helper put of the same body: "
            + " ".join(f"{t.put_s:.3f}s/{t.size / 1e6 / t.put_s:.0f}MB/s" for t in res.transfers)
        )
    if res.default_deadline:
        d = res.default_deadline
        landed = "never (60 s)" if d.landed_s is None else f"{d.landed_s:.3f} s"
        print(
            f"big get with the default helper config: {d.answer} after {d.get_s:.3f} s; "
            f"body in B's store after {landed}"
        )
    return s


# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark builds served by a peer's warren.")
    common_args(p, 3, "timed runs per side")
    p.add_argument(
        "--target",
        "--cold-target",
        dest="target",
        default="std",
        help="package pattern every build builds (default std)",
    )
    big_body_args(p, "body-mib", "transfer-runs", "get")
    p.add_argument("--daemon-log", default="info", help="WARREN_LOG for the daemons (default info)")
    p.add_argument(
        "--probe-misses",
        type=int,
        default=300,
        help="random lookups in the latency probe after part 1 (default 300; 0 skips the probe)",
    )
    p.add_argument(
        "--reset",
        choices=("fresh", "clean"),
        default="fresh",
        help="how a store is emptied between runs: a fresh directory and a daemon "
        "restart (default), or `warren clean` (deletes files; slower creates on "
        "ext4 without a journal)",
    )
    p.add_argument(
        "--fs",
        choices=("ext4", "root"),
        default="ext4",
        help="where the hosts' files live: a new journaled ext4 on a loop device (default), "
        "or the machine's own filesystem; see netns.make_filesystem()",
    )
    p.add_argument(
        "--fs-gib", type=int, default=24, help="size of the --fs ext4 image (sparse; default 24)"
    )
    p.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the daemon logs to DIR")
    p.add_argument(
        "--link-rate",
        metavar="RATE",
        help="shape each host's link to RATE (tc syntax, e.g. 1gbit: an office LAN); "
        "default: unshaped",
    )
    p.add_argument("--skip-peer", action="store_true", help="skip part 1 (warm peer)")
    p.add_argument(
        "--skip-mirror",
        action="store_true",
        help="skip part 1's transfer of A's whole store with no go running",
    )
    p.add_argument(
        "--skip-compression",
        action="store_true",
        help="skip part 1's from-peer builds with compression auto vs never",
    )
    p.add_argument("--skip-empty-peer", action="store_true", help="skip part 2 (empty peer)")
    p.add_argument("--skip-transfer", action="store_true", help="skip part 3 (big body)")
    return parse_counts(p, argv, ("runs", "transfer_runs", "body_mib"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not netns.enter("bench_share"):
        return 1
    if args.link_rate and shutil.which("tc") is None:
        print("bench_share: --link-rate needs the `tc` command (iproute2)", file=sys.stderr)
        return 1
    res = Results()
    try:
        go = resolve_go(args.go)
        warren = resolve_warren(args.warren)
        info = machine_info(go, warren)
        log(f"{info['go_version']}; warren {info['warren_version']}")
        log(f"load average {info['load_avg_at_start']}")
        scratch, info["filesystem"] = netns.scratch_dir(args)
        log(f"hosts' files on {info['filesystem']}")
        try:
            bench(args, go, warren, scratch, res)
        except BenchError:
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for h in ("a", "b"):
                    with contextlib.suppress(OSError):
                        shutil.copyfile(
                            scratch / h / "daemon.log", args.keep_logs / f"daemon-{h}.log"
                        )
            raise
    except BenchError as e:
        print(f"bench_share: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"bench_share: interrupted ({e}); cleaning up", file=sys.stderr)
        return 130
    finally:
        CLEANUP.run()

    info["load_avg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = print_report(info, args, res)
    if args.json:
        out = {
            "info": info,
            "args": {
                "runs": args.runs,
                "target": args.target,
                "body_mib": args.body_mib,
                "transfer_runs": args.transfer_runs,
            },
            "targets": TARGETS,
            "summary": summary,
            "builds": {
                k: [asdict(b) for b in getattr(res, k)]
                for k in ("cold_local", "from_peer", "warm_local", "empty_off", "empty_on")
            },
            "prep": asdict(res.prep) if res.prep else None,
            "a_store_bytes": res.a_store_bytes,
            "transfers": [{**asdict(t), "mb_s": t.mb_s} for t in res.transfers],
            "transfer_alone": [asdict(m) for m in res.mirrors],
            "default_deadline": asdict(res.default_deadline) if res.default_deadline else None,
            "probe": asdict(res.probe) if res.probe else None,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
