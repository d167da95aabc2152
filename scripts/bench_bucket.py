#!/usr/bin/env python3
"""warren's team-bucket benchmark: builds served by an S3 bucket far away.

Usage (root; network namespaces):
    sudo python3 scripts/bench_bucket.py [--runs N] [--rtt-ms 0,10,30]
                                         [--link-rate 200mbit] [--target std]
                                         [--warren PATH] [--go PATH] [--json FILE]

Three hosts on a private LAN of namespaces (scripts/netns.py): S, the S3
server (SeaweedFS's `weed mini`, scripts/s3server.py, in S's namespace,
with a writer and a read-only identity), W, the writer (a CI job: its
identity from ``warren keygen`` through ``WARREN_IDENTITY``), and R, the
reader. Both run ``[share] enabled = false`` (no LAN peers: the bucket
alone) and a daemon the script starts. In front of the server, in S's
namespace, one delay proxy per round trip measured
(scripts/delay_proxy.py: each chunk is held for half the round trip in
each direction, without capping throughput; every RTT, 0 too, goes
through a proxy, so that only the delay differs). R's link is shaped
with a token bucket (``tc qdisc ... tbf``) to ``--link-rate`` in both
directions: on R's ``eth0`` and on its port of the switch. W's link is
not shaped. Every S3 client's environment goes through the guard of
scripts/s3server.py: the endpoint must be loopback or an address of these
namespaces, no AWS_* of the machine, no instance-metadata lookups, a HOME
without ~/.aws.

Side by side in one run, interleaved (the order rotates from run to run),
each build with a fresh GOCACHE and, but for the warm build, an empty
store (a restarted daemon):

1. **The writer.** W builds the target with ``write = true`` and then runs
   ``warren bucket sync`` (timed: until every upload is in the bucket),
   against the same build with ``write = false``; both at the largest
   round trip given. Target: write / no write <= 1.05x.
2. **The reader.** R, empty store, trusting W (``warren peers add``), its
   daemon up until it holds W's manifests, builds the target from the
   bucket at each round trip (``--rtt-ms``), then again warm locally on
   the store that filled; against a cold build with no bucket (``[bucket]``
   unset). Reported: the share of R's gets answered with the bucket's
   entries (hits over gets, less go's module indexes, which no machine
   shares: ``warren stats --json`` and ``warren verify``), the bytes that
   crossed R's link during the build (``eth0`` counters) and the bytes
   the daemon fetched (``warren stats``' bucket figures). The transfer
   floor is the bytes on R's link divided by the link's rate, measured in
   the same run (a plain TCP stream from S to R, no proxy). Targets at the
   largest round trip (30 ms by default): >= 8x faster than cold, and
   <= 1.5x of (the warm build + the transfer floor).
3. **A bucket that holds nothing for this build** (an empty prefix), at
   the largest round trip: R's cold build with it against the cold build
   without a bucket. Target: <= 1.03x.

Medians and ratios are printed side by side, then every sample;
``--json`` writes them all. Everything started (server, proxies, daemons,
builds), the namespaces with their qdiscs, and the hosts' filesystem are
removed at the end, also on failure or a signal (netns.CLEANUP).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import netns
import s3server
from benchlib import (
    BenchError,
    common_args,
    fmt_s,
    logger,
    machine_info,
    med,
    resolve_go,
    resolve_warren,
    rotate,
)
from netns import CLEANUP, Host

log = logger("bench_bucket")

PROXY_SCRIPT = Path(__file__).resolve().parent / "delay_proxy.py"
PREFIX = "warren"
EMPTY_PREFIX = "empty"
SYNC_TIMEOUT = "10min"
MANIFEST_TIMEOUT = 120.0
LINK_PROBE_MIB = 48

TARGETS = {
    "write_over_no_write": 1.05,
    "cold_over_bucket": 8.0,
    "bucket_over_warm_plus_floor": 1.5,
    "empty_over_cold": 1.03,
}

NO_LAN = "[share]\nenabled = false\nautostart = false\n\n"


class BucketHost(Host):
    """A host whose every warren and go process runs with the config it
    is set to (``use``), its identity, and the guard's S3 environment."""

    def __init__(self, *args, credentials: tuple[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.credentials = credentials
        self.config_name = "config.toml"
        self.identity: str | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = super().env(**extra)
        env["WARREN_CONFIG"] = str(self.config_dir / self.config_name)
        if self.identity:
            env["WARREN_IDENTITY"] = self.identity
        return s3server.guarded_env(env, self.credentials, self.root / "home")

    def write_config(self, name: str, text: str) -> None:
        self.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.config_dir / name
        path.write_text(text)
        path.chmod(0o600)

    def use(self, name: str, daemon: bool, level: str) -> None:
        """Switches to config ``name`` and an empty store, with the daemon
        running on them or not."""
        if self.daemon is not None:
            self.daemon.mark(f"switching to {name} on store-{self.store_n + 1}")
            self.daemon.stop()
            CLEANUP.procs.remove(self.daemon.proc)
            self.daemon = None
        self.config_name = name
        self.store_n += 1
        self.store.mkdir(mode=0o700)
        if daemon:
            self.start_daemon(level)

    def stats(self) -> dict:
        return json.loads(self.warren_cmd("stats", "--json"))

    def bucket(self) -> dict:
        """The daemon's bucket figures (``warren bucket status --json``)."""
        return json.loads(self.warren_cmd("bucket", "status", "--json")).get("daemon") or {}

    def rx_bytes(self) -> int:
        return int(netns.ns_exec(self.netns, ["cat", "/sys/class/net/eth0/statistics/rx_bytes"]))


@dataclass
class Sample:
    kind: str
    run: int
    rtt_ms: float | None
    wall_s: float
    cpu_s: float
    gets: int = 0
    hits: int = 0
    module_indexes: int | None = None
    bucket_hits: int = 0
    bucket_read_ahead: int = 0
    bucket_bytes: int = 0
    link_bytes: int = 0
    sync_s: float | None = None
    uploaded_bytes: int = 0
    manifests_written: int = 0
    load1: float = 0.0

    @property
    def share(self) -> float | None:
        """Of the gets any machine could share (all but go's module
        indexes), those answered with the bucket's entries: the store
        starts empty, so every hit came from the bucket."""
        shareable = self.gets - (self.module_indexes or 0)
        return self.hits / shareable if shareable > 0 else None


@dataclass
class Results:
    write: list[Sample] = field(default_factory=list)
    no_write: list[Sample] = field(default_factory=list)
    cold: list[Sample] = field(default_factory=list)
    empty: list[Sample] = field(default_factory=list)
    bucket: dict[float, list[Sample]] = field(default_factory=dict)
    warm: dict[float, list[Sample]] = field(default_factory=dict)
    link_rate_bps: list[float] = field(default_factory=list)  # bits per second


def module_indexes(host: Host) -> int | None:
    """go's module indexes in the host's store (`warren verify`'s census)."""
    try:
        out = host.warren_cmd("verify")
    except BenchError:
        return None
    for line in out.splitlines():
        if "module indexes" in line:
            numbers = [int(n) for n in "".join(c if c.isdigit() else " " for c in line).split()]
            if len(numbers) > 3:
                return numbers[3]
    return None


def timed_build(host: BucketHost, hosts: list[Host], target: str, kind: str, run: int,
                rtt: float | None) -> Sample:
    """One go build through warren on ``host`` (netns.go_build: fails on any
    stderr), with its bucket figures and the bytes on its link."""
    before = host.bucket() if host.daemon else {}
    rx0 = host.rx_bytes()
    b = netns.go_build(host, hosts, target, kind, run, None)
    rx = host.rx_bytes() - rx0
    after = host.bucket() if host.daemon else {}
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in ("hits", "read_ahead", "bytes_fetched")}
    return Sample(
        kind,
        run,
        rtt,
        b.wall_s,
        b.cpu_s,
        gets=b.stats.get("gets", 0),
        hits=b.stats.get("hits", 0),
        bucket_hits=diff["hits"],
        bucket_read_ahead=diff["read_ahead"],
        bucket_bytes=diff["bytes_fetched"],
        link_bytes=rx,
        load1=b.load1,
    )


def start_proxy(server_host: Host, address: str, s3_port: int, rtt_ms: float, logs: Path) -> int:
    """A delay proxy in S's namespace in front of the server; its port."""
    err = open(logs / f"proxy-{rtt_ms:g}ms.log", "wb")  # noqa: SIM115 - lives with the proxy
    proc = subprocess.Popen(
        server_host.argv(sys.executable, str(PROXY_SCRIPT))
        + ["--listen", f"{address}:0", "--target", f"{address}:{s3_port}"]
        + ["--rtt-ms", f"{rtt_ms:g}"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        start_new_session=True,
    )
    CLEANUP.procs.append(proc)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        raise BenchError(f"the {rtt_ms:g} ms proxy said {line!r} (log {err.name})")
    return int(line.rsplit(":", 1)[1])


def shape(lan: dict[str, tuple[str, str]], name: str, rate: str) -> None:
    """A token bucket of ``rate`` on host ``name``'s link, both ways: its
    eth0 (what it sends) and its port in the switch (what it receives).
    The qdiscs go with the namespaces at the end."""
    switch = lan[name][0].removesuffix(name) + "sw"
    tbf = ["root", "tbf", "rate", rate, "burst", "256kb", "latency", "10ms"]
    netns.ns_exec(lan[name][0], ["tc", "qdisc", "add", "dev", "eth0", *tbf])
    netns.ns_exec(switch, ["tc", "qdisc", "add", "dev", f"p{name}", *tbf])


LINK_SENDER = """
import socket, sys
s = socket.create_server((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
block = bytes(1 << 20)
for _ in range(int(sys.argv[2])):
    c.sendall(block)
c.close()
"""

LINK_RECEIVER = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
n = 0
data = c.recv(1 << 20)  # the clock starts at the first byte
t0 = time.perf_counter()
while data := c.recv(1 << 20):
    n += len(data)
print(n, time.perf_counter() - t0)
"""


def measure_link(server: Host, reader: Host) -> float:
    """R's link rate now, in bits per second: a plain TCP stream from S."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    sender = subprocess.Popen(
        server.argv(sys.executable, "-c", LINK_SENDER, server.address, str(LINK_PROBE_MIB)),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    CLEANUP.procs.append(sender)
    try:
        port = sender.stdout.readline().strip()
        r = subprocess.run(
            reader.argv(sys.executable, "-c", LINK_RECEIVER, server.address, port),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if r.returncode != 0:
            raise BenchError(f"measuring R's link failed: {r.stderr.strip()}")
        n, seconds = r.stdout.split()
        return int(n) * 8 / float(seconds)
    finally:
        netns.stop_process(sender, grace=2.0)
        CLEANUP.procs.remove(sender)


def wait_manifests(reader: BucketHost, want: int) -> int:
    deadline = time.monotonic() + MANIFEST_TIMEOUT
    while True:
        held = reader.bucket().get("manifests_held", 0)
        if held >= want:
            return held
        if time.monotonic() > deadline:
            raise BenchError(
                f"R's daemon holds {held} of W's {want} manifests after {MANIFEST_TIMEOUT:.0f} s\n"
                f"{json.dumps(reader.bucket(), indent=1)}\n{reader.daemon.tail()}"
            )
        time.sleep(0.2)


def sync(writer: BucketHost) -> float:
    """``warren bucket sync``; its wall time."""
    t0 = time.perf_counter()
    r = subprocess.run(
        writer.argv(writer.warren, "bucket", "sync", "--timeout", SYNC_TIMEOUT),
        env=writer.env(),
        cwd=writer.root / "work",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError(f"W: warren bucket sync failed: {r.stderr.strip()}\n{writer.daemon.tail()}")
    return elapsed


def bench(args: argparse.Namespace, go: Path, warren: Path, scratch: Path, res: Results) -> None:
    t0 = time.perf_counter()
    lan = netns.make_lan(["s", "w", "r"])
    addresses = [address for _, address in lan.values()]
    shape(lan, "r", args.link_rate)
    server_ns, server_addr = lan["s"]
    server_host = Host("S", server_ns, server_addr, scratch / "s", go, warren, t0)
    server = s3server.S3Server(scratch / "s" / "weed", server_addr, server_ns, addresses)
    log(f"S3 server up at {server.endpoint} ({server.weed})")
    proxies = {
        rtt: start_proxy(server_host, server_addr, server.s3_port, rtt, server_host.root)
        for rtt in sorted(set(args.rtt_ms) | {max(args.rtt_ms)})
    }
    far = max(args.rtt_ms)

    def endpoint(rtt: float) -> str:
        return s3server.check_endpoint(f"http://{server_addr}:{proxies[rtt]}", addresses)

    w = BucketHost("W", *lan["w"], scratch / "w", go, warren, t0, credentials=server.writer)
    r = BucketHost("R", *lan["r"], scratch / "r", go, warren, t0, credentials=server.reader)
    hosts = [w, r]
    w.write_config("config.toml", NO_LAN)
    keygen = w.warren_cmd("keygen")
    fields = dict(line.split(": ", 1) for line in keygen.splitlines() if ": " in line)
    w.identity, w_id = fields["secret"].strip(), fields["peer ID"].strip()
    w.write_config("write.toml", NO_LAN + server.bucket_table(PREFIX, True, endpoint(far)))
    w.write_config("no-write.toml", NO_LAN + server.bucket_table(PREFIX, False, endpoint(far)))
    r.write_config("config.toml", NO_LAN)
    r.warren_cmd("init")  # R's own identity, next to its configs
    r.trust(w_id, "ci")
    for rtt in proxies:
        r.write_config(f"bucket-{rtt:g}.toml", NO_LAN + server.bucket_table(PREFIX, False, endpoint(rtt)))
    r.write_config("empty.toml", NO_LAN + server.bucket_table(EMPTY_PREFIX, False, endpoint(far)))
    level = args.daemon_log

    # 1. The writer.
    manifests = 0
    for run in range(args.runs):
        for kind in rotate(["write"] if args.skip_no_write else ["write", "no write"], run):
            w.use("write.toml" if kind == "write" else "no-write.toml", True, level)
            s = timed_build(w, hosts, args.target, f"W {kind}", run, far)
            if kind == "write":
                s.sync_s = sync(w)
                st = w.bucket()
                # The helper reports its build as it exits; should go have
                # left before that report arrived, sync once it has.
                deadline = time.monotonic() + 30
                while not st.get("manifests_written") and time.monotonic() < deadline:
                    time.sleep(0.5)
                    s.sync_s += sync(w)
                    st = w.bucket()
                if st.get("upload_failures"):
                    raise BenchError(f"W's uploads failed: {st.get('last_upload_error')}")
                s.uploaded_bytes = st.get("bytes_uploaded", 0)
                s.manifests_written = st.get("manifests_written", 0)
                manifests += s.manifests_written
                res.write.append(s)
            else:
                if s.bucket_hits:
                    log(f"note: W's build with write = false had {s.bucket_hits} bucket hits")
                res.no_write.append(s)
            log(
                f"run {run + 1}: W {kind}: {fmt_s(s.wall_s)}"
                + (
                    f"; bucket sync {fmt_s(s.sync_s)} ({s.uploaded_bytes / 1e6:.0f} MB, "
                    f"{s.manifests_written} manifests)"
                    if s.sync_s is not None
                    else ""
                )
            )
    w.use("config.toml", False, level)
    if manifests == 0:
        raise BenchError("W wrote no manifest: nothing for R to build from")

    # 2 and 3. The reader.
    for run in range(args.runs):
        res.link_rate_bps.append(measure_link(server_host, r))
        log(f"run {run + 1}: R's link {res.link_rate_bps[-1] / 1e6:.0f} Mbit/s")
        kinds: list = ["cold", *([] if args.skip_empty else ["empty"]), *args.rtt_ms]
        for kind in rotate(kinds, run):
            if kind == "cold":
                r.use("config.toml", False, level)
                s = timed_build(r, hosts, args.target, "R cold, no bucket", run, None)
                res.cold.append(s)
                log(f"run {run + 1}: R cold, no bucket: {fmt_s(s.wall_s)}")
            elif kind == "empty":
                r.use("empty.toml", True, level)
                s = timed_build(r, hosts, args.target, "R cold, empty bucket", run, far)
                res.empty.append(s)
                log(f"run {run + 1}: R cold, empty bucket at {far:g} ms: {fmt_s(s.wall_s)}")
            else:
                r.use(f"bucket-{kind:g}.toml", True, level)
                wait_manifests(r, manifests)
                s = timed_build(r, hosts, args.target, f"R from bucket {kind:g} ms", run, kind)
                s.module_indexes = module_indexes(r)
                warm = timed_build(r, hosts, args.target, f"R warm after {kind:g} ms", run, kind)
                res.bucket.setdefault(kind, []).append(s)
                res.warm.setdefault(kind, []).append(warm)
                share = "?" if s.share is None else f"{s.share:.1%}"
                log(
                    f"run {run + 1}: R from bucket at {kind:g} ms: {fmt_s(s.wall_s)} "
                    f"({s.hits}/{s.gets} gets hit, {share} of shareable; "
                    f"{s.bucket_hits} bucket hits + {s.bucket_read_ahead} read ahead, "
                    f"{s.bucket_bytes / 1e6:.0f} MB fetched, {s.link_bytes / 1e6:.0f} MB on R's "
                    f"link); warm {fmt_s(warm.wall_s)}"
                )
    r.use("config.toml", False, level)
    server.stop()


def verdict(value: float, target: float, at_most: bool) -> str:
    if value != value:  # nan
        return "no figure"
    ok = value <= target if at_most else value >= target
    return "met" if ok else "MISSED"


def report(info: dict, args: argparse.Namespace, res: Results) -> dict:
    summary: dict = {}
    far = max(args.rtt_ms)
    print("\nwarren team-bucket benchmark")
    for key in ("date", "cpu", "nproc", "kernel", "go_version", "warren_version", "warren_commit",
                "load_avg_at_start", "load_avg_at_end", "filesystem"):
        if key in info:
            print(f"  {key:18} {info[key]}")
    print(f"  target             go build {args.target}; runs {args.runs}; R's link {args.link_rate}")
    rate = med(res.link_rate_bps)
    summary["link_rate_mbps"] = rate / 1e6
    print(f"  R's link measured  {rate / 1e6:.0f} Mbit/s (median of {len(res.link_rate_bps)})")

    print("\nmedians (ratios: median of per-run ratios, pairs from the same run)")
    if res.write and res.no_write:
        wr, nw = med([s.wall_s for s in res.write]), med([s.wall_s for s in res.no_write])
        ratio = med([a.wall_s / b.wall_s for a, b in zip(res.write, res.no_write)])
        sync_s = med([s.sync_s for s in res.write])
        summary.update(write_s=wr, no_write_s=nw, write_over_no_write=ratio, sync_s=sync_s)
        print(f"  W build, write = true              {fmt_s(wr)}")
        print(f"  W build, write = false             {fmt_s(nw)}")
        print(
            f"  write / no write                   {ratio:.3f}x (target <= "
            f"{TARGETS['write_over_no_write']}x: {verdict(ratio, TARGETS['write_over_no_write'], True)})"
        )
        print(
            f"  warren bucket sync after it        {fmt_s(sync_s)} "
            f"({med([s.uploaded_bytes for s in res.write]) / 1e6:.0f} MB uploaded, at {far:g} ms)"
        )
    if res.write:
        # The first sync fills an empty bucket; later ones find the bodies
        # there and only ask for each (a HEAD) before the manifest.
        first = res.write[0]
        summary["first_sync_s"] = first.sync_s
        summary["first_sync_bytes"] = first.uploaded_bytes
        print(
            f"  the first sync, to an empty bucket {fmt_s(first.sync_s)} "
            f"({first.uploaded_bytes / 1e6:.0f} MB uploaded, at {far:g} ms)"
        )
    cold = med([s.wall_s for s in res.cold])
    if res.cold:
        summary["cold_s"] = cold
        print(f"  R cold, no bucket                  {fmt_s(cold)}")
    for rtt in args.rtt_ms:
        bs, ws = res.bucket.get(rtt, []), res.warm.get(rtt, [])
        if not bs:
            continue
        n = len(bs)
        floors = [s.link_bytes * 8 / rate_ for s, rate_ in zip(bs, res.link_rate_bps)]
        row = {
            "bucket_s": med([s.wall_s for s in bs]),
            "warm_s": med([s.wall_s for s in ws]),
            "floor_s": med(floors),
            "share": med([s.share for s in bs]),
            "link_mb": med([s.link_bytes / 1e6 for s in bs]),
            "fetched_mb": med([s.bucket_bytes / 1e6 for s in bs]),
            "cold_over_bucket": med([c.wall_s / b.wall_s for c, b in zip(res.cold, bs)]),
            "bucket_over_warm_plus_floor": med(
                [b.wall_s / (w.wall_s + f) for b, w, f in zip(bs, ws, floors)]
            ),
            "bucket_over_warm": med([b.wall_s / w.wall_s for b, w in zip(bs, ws)]),
        }
        summary[f"rtt_{rtt:g}ms"] = row
        print(f"\n  R from the bucket at {rtt:g} ms         {fmt_s(row['bucket_s'])} (n={n})")
        print(f"    R warm locally after it          {fmt_s(row['warm_s'])}")
        print(
            f"    shareable gets from the bucket   {row['share']:.1%} "
            f"(hits {med([s.hits for s in bs]):.0f} of {med([s.gets for s in bs]):.0f} gets, "
            f"{med([s.module_indexes or 0 for s in bs]):.0f} module indexes)"
        )
        print(
            f"    on R's link                      {row['link_mb']:.0f} MB "
            f"(daemon fetched {row['fetched_mb']:.0f} MB); floor {fmt_s(row['floor_s'])}"
        )
        at_far = rtt == far
        t1, t2 = TARGETS["cold_over_bucket"], TARGETS["bucket_over_warm_plus_floor"]
        print(
            f"    cold / from bucket               {row['cold_over_bucket']:.1f}x"
            + (f" (target >= {t1}x: {verdict(row['cold_over_bucket'], t1, False)})" if at_far else "")
        )
        print(
            f"    from bucket / (warm + floor)     {row['bucket_over_warm_plus_floor']:.2f}x"
            + (
                f" (target <= {t2}x: {verdict(row['bucket_over_warm_plus_floor'], t2, True)})"
                if at_far
                else ""
            )
            + f"; / warm {row['bucket_over_warm']:.2f}x"
        )
    if res.empty:
        empty = med([s.wall_s for s in res.empty])
        ratio = med([e.wall_s / c.wall_s for e, c in zip(res.empty, res.cold)])
        summary.update(empty_s=empty, empty_over_cold=ratio)
        t = TARGETS["empty_over_cold"]
        print(f"\n  R cold, bucket empty at {far:g} ms     {fmt_s(empty)}")
        print(f"  empty bucket / no bucket           {ratio:.3f}x (target <= {t}x: {verdict(ratio, t, True)})")

    print("\nraw samples (wall s)")
    groups = [("W write", res.write), ("W no write", res.no_write), ("R cold", res.cold),
              (f"R empty bucket {far:g} ms", res.empty)]
    for rtt in args.rtt_ms:
        groups += [(f"R bucket {rtt:g} ms", res.bucket.get(rtt, [])),
                   (f"R warm {rtt:g} ms", res.warm.get(rtt, []))]
    for name, samples in groups:
        if samples:
            print(f"  {name:22} " + " ".join(f"{s.wall_s:.3f}" for s in samples))
    if res.write:
        print(f"  {'W bucket sync':22} " + " ".join(f"{s.sync_s:.3f}" for s in res.write))
    if res.link_rate_bps:
        print(f"  {'R link Mbit/s':22} " + " ".join(f"{x / 1e6:.0f}" for x in res.link_rate_bps))
    return summary


def parse_rtts(text: str) -> list[float]:
    try:
        rtts = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected ms,ms,...: {e}") from None
    if not rtts or any(x < 0 for x in rtts):
        raise argparse.ArgumentTypeError("expected one or more round trips >= 0 ms")
    return list(dict.fromkeys(rtts))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark warren's team bucket (root).")
    common_args(p, 3, "runs per measurement")
    p.add_argument(
        "--rtt-ms",
        type=parse_rtts,
        default=[0.0, 10.0, 30.0],
        help="round trips to the server, comma-separated; the targets, the writer and the empty "
        "bucket use the largest (default 0,10,30)",
    )
    p.add_argument("--link-rate", default="200mbit", help="R's link rate, tc syntax (default 200mbit)")
    p.add_argument("--target", default="std", help="package pattern to build (default std)")
    p.add_argument("--daemon-log", default="info", help="WARREN_LOG for the daemons")
    p.add_argument(
        "--skip-no-write", action="store_true", help="W builds with write = true only (no writer ratio)"
    )
    p.add_argument("--skip-empty", action="store_true", help="no build against an empty bucket")
    p.add_argument(
        "--fs",
        choices=("ext4", "root"),
        default="ext4",
        help="where the hosts' files live (see netns.make_filesystem)",
    )
    p.add_argument("--fs-gib", type=int, default=24, help="size of the --fs ext4 image")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not netns.enter("bench_bucket"):
        return 1
    for tool in ("tc", "curl"):
        if shutil.which(tool) is None:
            print(f"bench_bucket: needs the `{tool}` command", file=sys.stderr)
            return 1
    res = Results()
    info: dict = {}
    status = 0
    try:
        go = resolve_go(args.go)
        warren = resolve_warren(args.warren)
        info = machine_info(go, warren)
        log(f"{info['go_version']}; warren {info['warren_version']}")
        log(f"load average {info['load_avg_at_start']}")
        scratch, info["filesystem"] = netns.scratch_dir(args)
        log(f"hosts' files on {info['filesystem']}")
        bench(args, go, warren, scratch, res)
    except BenchError as e:
        print(f"bench_bucket: error: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt as e:
        print(f"bench_bucket: interrupted ({e}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        CLEANUP.run()
    if not info:
        return status
    info["load_avg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if status:
        print("\n(partial: the run failed; what was measured before)")
    summary = report(info, args, res)
    if args.json:
        data = {
            "info": info,
            "targets": TARGETS,
            "summary": summary,
            "samples": {
                "write": [asdict(s) for s in res.write],
                "no_write": [asdict(s) for s in res.no_write],
                "cold": [asdict(s) for s in res.cold],
                "empty": [asdict(s) for s in res.empty],
                "bucket": {f"{k:g}": [asdict(s) for s in v] for k, v in res.bucket.items()},
                "warm": {f"{k:g}": [asdict(s) for s in v] for k, v in res.warm.items()},
                "link_rate_bps": res.link_rate_bps,
            },
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
