#!/usr/bin/env python3
"""warren's sharing benchmark: builds served by a coworker's machine.

Usage:
    python3 scripts/bench_share.py [--runs N] [--warren PATH] [--go PATH]
                                   [--target PKG] [--json FILE]

Two hosts, A (the coworker) and B (you), each a Linux network namespace with
its own address on a private LAN (a bridge in a third namespace, as in
tests/netns/mod.rs), its own HOME, XDG dirs, GOCACHE,
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
   deadline plus a transfer allowance (src/share/remote.rs; about 1.15 s
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
  make_filesystem() for why), and the LAN's bridge does not pass frames
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
import atexit
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchlib import (
    BenchError,
    big_body_args,
    common_args,
    fmt_s,
    gocacheprog_value,
    logger,
    machine_info,
    mib,
    parse_counts,
    resolve_go,
    resolve_warren,
    rmtree,
    tree_size,
    wait_with_timeout,
)

log = logger("bench_share")

NS_PREFIX = "wbsh"  # namespaces are wbsh<pid>sw, wbsh<pid>a, wbsh<pid>b
B64_CHUNK = 3 << 20  # a multiple of 3: chunks encode independently
BUILD_TIMEOUT = 1800.0
HELPER_TIMEOUT = 300.0
CONNECT_TIMEOUT = 30.0
SOCKET_TIMEOUT = 20.0
LONG_WAIT_DEADLINE = "60s"  # the helper config used for the big get
MIRROR_TIMEOUT = 60.0  # B fetching A's whole store with no go running

SHARING_CONFIG = "[share]\nenabled = true\nautostart = false\n"
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


# --------------------------------------------------------------------------
# Cleanup: every process started and every namespace created is registered
# here and removed by cleanup(), which runs from finally, atexit and signals.


class Cleanup:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        self.scratch: Path | None = None
        self.keep_scratch = False
        # (mount point, loop device, image file) of the scratch filesystem
        self.filesystem: tuple[Path, str, Path] | None = None
        self.done = False
        self.lock = threading.Lock()

    def run(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
        # Processes first (daemons get SIGTERM and a moment to stop), then
        # anything still inside our namespaces, then the namespaces.
        for proc in reversed(self.procs):
            stop_process(proc, grace=5.0)
        for ns in reversed(self.namespaces):
            kill_namespace_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        if self.scratch is not None:
            if self.keep_scratch:
                print(f"bench_share: scratch files kept in {self.scratch}", file=sys.stderr)
            elif self.filesystem is None:
                rmtree(self.scratch)
        if self.filesystem is not None and not self.keep_scratch:
            mount, device, image = self.filesystem
            # A process that was just stopped may still hold it for a moment
            # (seen once, after a failed run); in the end, detach it lazily.
            for _ in range(50):
                r = subprocess.run(["umount", str(mount)], capture_output=True, check=False)
                if r.returncode == 0:
                    break
                time.sleep(0.1)
            else:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                image.unlink()
            with contextlib.suppress(OSError):
                mount.rmdir()


CLEANUP = Cleanup()


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the process's group, SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def namespace_pids(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


def kill_namespace_pids(ns: str) -> None:
    """Ends every process left inside ``ns`` (all of them were started here)."""
    pids = namespace_pids(ns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def on_signal(signum: int, _frame: object) -> None:
    # Turn the signal into an exception so finally blocks run; a second one
    # during cleanup is ignored.
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def remove_stale_namespaces() -> None:
    """Deletes namespaces of earlier runs of this script whose PID is gone."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NS_PREFIX}(\d+)(sw|a|b)", name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and Path(f"/proc/{pid}").exists():
            try:
                alive = "bench_share" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            except OSError:
                alive = False
            if alive:
                continue  # another run of this script, still going
        log(f"removing stale namespace {name}")
        kill_namespace_pids(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


# --------------------------------------------------------------------------
# The LAN and its hosts


def sh(argv: list[str], what: str | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BenchError(
            f"{what or ' '.join(argv)} failed (exit {r.returncode}): {r.stderr.strip()}"
        )
    return r.stdout


def ns_exec(ns: str, argv: list[str]) -> str:
    return sh(["ip", "netns", "exec", ns, *argv])


def make_lan(names: list[str], rate: str | None = None) -> dict[str, tuple[str, str]]:
    """Creates a switch and one namespace per host: {name: (netns, address)};
    with ``rate`` (tc syntax, such as 1gbit), each host sends at most that."""
    pid = os.getpid()
    subnet = 1 + pid % 250
    switch = f"{NS_PREFIX}{pid}sw"
    sh(["ip", "netns", "add", switch])
    CLEANUP.namespaces.append(switch)
    ns_exec(switch, ["ip", "link", "add", "br0", "type", "bridge"])
    ns_exec(switch, ["ip", "link", "set", "br0", "up"])
    # A LAN switch forwards frames; it does not run them through iptables.
    # With br_netfilter loaded on the machine, a Linux bridge would (in
    # every namespace), which cost ~20% of the sending daemon's network
    # time in a profile. Best effort: the keys exist only with the module.
    for table in ("iptables", "ip6tables", "arptables"):
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                switch,
                "sysctl",
                "-q",
                "-w",
                f"net.bridge.bridge-nf-call-{table}=0",
            ],
            capture_output=True,
            check=False,
        )
    hosts = {}
    for n, name in enumerate(names, start=1):
        netns = f"{NS_PREFIX}{pid}{name}"
        address = f"10.77.{subnet}.{n}"
        sh(["ip", "netns", "add", netns])
        CLEANUP.namespaces.append(netns)
        # Both veth ends are created directly in their namespaces: nothing
        # ever appears among the machine's own interfaces.
        port = f"p{name}"
        sh(
            [
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                netns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                switch,
            ]
        )
        ns_exec(switch, ["ip", "link", "set", port, "master", "br0"])
        ns_exec(switch, ["ip", "link", "set", port, "up"])
        ns_exec(netns, ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
        ns_exec(netns, ["ip", "link", "set", "eth0", "up"])
        ns_exec(netns, ["ip", "link", "set", "lo", "up"])
        if rate:
            # A token bucket as deep as a switch port's buffer, roughly.
            ns_exec(
                netns,
                ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate]
                + ["burst", "256kb", "latency", "10ms"],
            )
        hosts[name] = (netns, address)
    return hosts


class Daemon:
    """A running `warren daemon`, its stderr timestamped into a log file."""

    def __init__(self, proc: subprocess.Popen, log_path: Path, t0: float) -> None:
        self.proc = proc
        self.log_path = log_path
        self.t0 = t0
        self.lock = threading.Lock()
        self.file = open(log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            with self.lock:
                self.file.write(f"{time.perf_counter() - self.t0:11.6f} {line}\n")
                self.file.flush()

    def mark(self, text: str) -> None:
        with self.lock:
            self.file.write(f"{time.perf_counter() - self.t0:11.6f} ===== bench: {text}\n")
            self.file.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def hwm_kib(self) -> int:
        kib = proc_status_kib(self.pid, "VmHWM")
        if kib is None:
            raise BenchError(f"daemon {self.pid} is gone (log: {self.log_path})")
        return kib

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def stop(self) -> None:
        stop_process(self.proc, grace=5.0)
        self.thread.join(timeout=5)
        with self.lock:
            self.file.close()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def proc_cpu_s(pid: int) -> float:
    """utime+stime of a live process (its own threads, not its children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Host:
    """One machine on the LAN: a namespace and a home of its own."""

    def __init__(
        self, name: str, netns: str, address: str, root: Path, go: Path, warren: Path, t0: float
    ) -> None:
        self.name = name
        self.netns = netns
        self.address = address
        self.root = root
        self.go = go
        self.warren = warren
        self.t0 = t0
        self.daemon: Daemon | None = None
        self.daemon_level = "info"
        self.daemon_env: dict[str, str] = {}  # extra environment for the daemon
        self.gocache_n = 0
        self.store_n = 0
        for sub in ("home", "config", "cache", "data", "state", "runtime", "gopath", "work", "tmp"):
            (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store.mkdir(mode=0o700)

    @property
    def store(self) -> Path:
        """The current store (WARREN_DIR); see new_store()."""
        return self.root / f"store-{self.store_n}"

    @property
    def config_dir(self) -> Path:
        return self.root / "config" / "warren"

    def env(self, **extra: str) -> dict[str, str]:
        r = self.root
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(r / "home"),
            "XDG_CONFIG_HOME": str(r / "config"),
            "XDG_CACHE_HOME": str(r / "cache"),
            "XDG_DATA_HOME": str(r / "data"),
            "XDG_STATE_HOME": str(r / "state"),
            "XDG_RUNTIME_DIR": str(r / "runtime"),
            "WARREN_DIR": str(self.store),
            "GOCACHE": str(r / "gocache"),
            # go's work directories too live on the benchmark's filesystem.
            "TMPDIR": str(r / "tmp"),
            "GOPATH": str(r / "gopath"),
            "GOMODCACHE": str(r / "gopath" / "pkg" / "mod"),
            "GOTOOLCHAIN": "local",
            "GOTELEMETRY": "off",
            "GOPROXY": "off",
            "GOFLAGS": "",
            "GOENV": "off",
        }
        for k in ("LANG", "LC_ALL", "TZ"):
            if k in os.environ:
                env[k] = os.environ[k]
        env.update(extra)
        return env

    def argv(self, program: Path | str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, str(program), *args]

    def warren_cmd(self, *args: str, **env: str) -> str:
        r = subprocess.run(
            self.argv(self.warren, *args),
            env=self.env(**env),
            cwd=self.root / "work",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if r.returncode != 0:
            raise BenchError(f"{self.name}: warren {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout

    def init(self, config: str) -> str:
        self.warren_cmd("init")
        (self.config_dir / "config.toml").write_text(config)
        # A second config for the big get: same dir (identity, allowlist),
        # but the helper waits up to 60 s for the daemon.
        (self.config_dir / "long-wait.toml").write_text(
            config + f'lookup-deadline = "{LONG_WAIT_DEADLINE}"\n'
        )
        # For the latency probe: a daemon that fetches only what it is asked.
        (self.config_dir / "no-read-ahead.toml").write_text(config + "read-ahead = 0\n")
        for mode in COMPRESSION_MODES:
            (self.config_dir / f"compression-{mode}.toml").write_text(
                config + f'compression = "{mode}"\n'
            )
        return self.peer_id()

    def peer_id(self) -> str:
        for line in self.warren_cmd("id").splitlines():
            if line.startswith("peer ID: "):
                return line.removeprefix("peer ID: ").strip()
        raise BenchError(f"{self.name}: `warren id` printed no peer ID")

    def trust(self, peer: str, name: str) -> None:
        self.warren_cmd("peers", "add", peer, "--name", name)

    def lifetime(self) -> dict[str, int]:
        """Lifetime counters, plus the daemon's peer counters summed over
        peers as peer_bodies (hits received), peer_read_ahead, peer_bytes
        (body bytes received) and peer_wire (answer bytes on the link)."""
        stats = json.loads(self.warren_cmd("stats", "--json"))
        counters = dict(stats["lifetime"])
        peers = stats.get("peers") or []
        counters["peer_bodies"] = sum(p.get("hits_received", 0) for p in peers)
        counters["peer_read_ahead"] = sum(p.get("read_ahead", 0) for p in peers)
        counters["peer_bytes"] = sum(p.get("bytes_received", 0) for p in peers)
        counters["peer_wire"] = sum(p.get("wire_bytes_received", 0) for p in peers)
        return counters

    def clean(self) -> None:
        self.warren_cmd("clean")

    def new_store(self) -> None:
        """Switches to a new, empty store, restarting the daemon on it.

        Old stores stay on disk until the end: deleting thousands of files
        right before a build that creates thousands makes ext4 without a
        journal (as on this project's machines) skip every recently deleted
        inode on each create, which would be measured as warren's time.
        """
        running = self.daemon is not None
        if running:
            self.daemon.mark(f"restarting on store-{self.store_n + 1}")
            self.daemon.stop()
        self.store_n += 1
        self.store.mkdir(mode=0o700)
        if running:
            self.start_daemon(self.daemon_level)

    def start_daemon(self, level: str) -> Daemon:
        self.daemon_level = level
        log_path = self.root / "daemon.log"
        proc = subprocess.Popen(
            self.argv(self.warren, "daemon"),
            env=self.env(WARREN_LOG=level, **self.daemon_env),
            cwd=self.root / "work",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        CLEANUP.procs.append(proc)
        self.daemon = Daemon(proc, log_path, self.t0)
        socket = self.store / "daemon.sock"
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{self.name}: daemon did not open {socket}\n{self.daemon.tail()}")
            time.sleep(0.05)
        # `ip netns exec` execs (no fork), so the child's PID is the daemon's.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        if not (cmdline and cmdline[0].decode() == str(self.warren) and b"daemon" in cmdline):
            raise BenchError(f"{self.name}: pid {proc.pid} is not the daemon: {cmdline!r}")
        return self.daemon

    def peers_state(self, peer: str) -> str:
        for line in self.warren_cmd("peers").splitlines():
            cols = line.split()
            if peer in cols:
                # The state column follows the ID (and, since part 4, its
                # role and entry count).
                after = cols[cols.index(peer) + 1 :]
                states = [c for c in after if c in ("connected", "discovered", "offline")]
                return states[0] if states else "?"
        return "absent"

    def wait_connected(self, peer: str, timeout: float = CONNECT_TIMEOUT) -> float:
        t0 = time.monotonic()
        while True:
            if self.peers_state(peer) == "connected":
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise BenchError(
                    f"{self.name}: {peer} not connected after {timeout:.0f} s\n"
                    f"{self.warren_cmd('peers')}\n--- daemon log ---\n"
                    f"{self.daemon.tail() if self.daemon else ''}"
                )
            time.sleep(0.1)

    def fresh_gocache(self) -> Path:
        """A new, empty GOCACHE directory (old ones stay until the end)."""
        self.gocache_n += 1
        path = self.root / f"gocache-{self.gocache_n}"
        path.mkdir()
        return path


# --------------------------------------------------------------------------
# go builds


@dataclass
class Build:
    kind: str
    run: int
    wall_s: float
    cpu_s: float  # go and everything it waited for
    daemon_cpu_s: dict[str, float]  # per host, during the build
    stats: dict[str, int]  # B's lifetime counters, delta over the build
    load1: float  # 1-minute load average when the build started

    @property
    def peer_share(self) -> float:
        """Of B's gets, those answered with the peer's entries: B's store
        starts empty in these builds, so every hit is an entry B's daemon
        fetched from A, when asked (a peer hit) or ahead of the build (read
        ahead; the helper then finds it locally)."""
        gets = self.stats.get("gets", 0)
        return self.stats.get("hits", 0) / gets if gets else 0.0


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int)}


def go_build(
    host: Host, hosts: list[Host], target: str, kind: str, run: int, share: bool | None
) -> Build:
    """`go build <target>` on ``host`` through warren, with a fresh GOCACHE."""
    gocache = host.fresh_gocache()
    extra = {"GOCACHE": str(gocache), "GOCACHEPROG": gocacheprog_value(host.warren)}
    if share is not None:
        extra["WARREN_SHARE"] = "1" if share else "0"
    env = host.env(**extra)
    out_path, err_path = host.root / "go.stdout", host.root / "go.stderr"
    before = host.lifetime()
    for h in hosts:
        if h.daemon:
            h.daemon.mark(f"start {kind} run {run} on {host.name}")
    cpu0 = {h.name: h.daemon.cpu_s() for h in hosts if h.daemon}
    os.sync()  # no dirty data of an earlier step is written back during this one
    load1 = os.getloadavg()[0]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            host.argv(host.go, "build", target),
            cwd=host.root / "work",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        CLEANUP.procs.append(proc)
        status, usage = wait_with_timeout(proc, BUILD_TIMEOUT)
        wall = time.perf_counter() - t0
    CLEANUP.procs.remove(proc)
    cpu1 = {h.name: h.daemon.cpu_s() for h in hosts if h.daemon}
    for h in hosts:
        if h.daemon:
            h.daemon.mark(f"end {kind} run {run} on {host.name}: {wall:.3f} s")
    stderr = err_path.read_text(errors="replace")
    if status != 0:
        raise BenchError(
            f"{host.name}: go build {target} ({kind}, run {run}) failed with exit status "
            f"{status}\n--- stderr ---\n{stderr}\n--- stdout ---\n"
            f"{out_path.read_text(errors='replace')}"
        )
    if stderr:
        raise BenchError(
            f"{host.name}: go build {target} ({kind}, run {run}) wrote to stderr; warren must "
            f"be silent:\n{stderr}"
        )
    stats = delta(host.lifetime(), before)
    return Build(
        kind,
        run,
        wall,
        usage.ru_utime + usage.ru_stime,
        {k: cpu1[k] - cpu0[k] for k in cpu0},
        stats,
        load1,
    )


# --------------------------------------------------------------------------
# The helper protocol, spoken directly (see scripts/bench.py)


class Helper:
    """One GOCACHEPROG helper session on a host."""

    def __init__(self, host: Host, **env: str) -> None:
        self.host = host
        self.err_path = host.root / f"helper-{time.monotonic_ns()}.stderr"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                host.argv(host.warren),
                cwd=host.root / "work",
                env=host.env(**env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        CLEANUP.procs.append(self.proc)
        self.next_id = 1
        self.timer = threading.Timer(HELPER_TIMEOUT, self._kill)
        self.timer.start()
        caps = self.read(0)
        if not {"get", "put"} <= set(caps.get("KnownCommands") or []):
            raise BenchError(f"helper does not offer get and put: {caps!r}")

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def read(self, want: int) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(
                f"{self.host.name}: helper closed stdout (waiting for response {want})\n"
                f"{self.err_path.read_text(errors='replace')}"
            )
        resp = json.loads(line)
        if resp.get("ID") != want:
            raise BenchError(f"expected response ID {want}, got {resp!r}")
        return resp

    def request(self, req: dict, body: bytes | None = None) -> tuple[dict, float]:
        """Sends one request; returns (response, seconds until it was read)."""
        req = {"ID": self.next_id, **req}
        self.next_id += 1
        t0 = time.perf_counter()
        self.proc.stdin.write(json.dumps(req, separators=(",", ":")).encode() + b"\n")
        if body is not None:
            self.proc.stdin.write(b'\n"')
            view = memoryview(body)
            for off in range(0, len(body), B64_CHUNK):
                self.proc.stdin.write(base64.b64encode(view[off : off + B64_CHUNK]))
            self.proc.stdin.write(b'"\n')
        self.proc.stdin.flush()
        resp = self.read(req["ID"])
        return resp, time.perf_counter() - t0

    def hwm_kib(self) -> int:
        return proc_status_kib(self.proc.pid, "VmHWM") or 0

    def close(self) -> str:
        """Closes the session; returns the helper's stderr (must be empty)."""
        try:
            self.request({"Command": "close"})
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        finally:
            self.timer.cancel()
            stop_process(self.proc, grace=1.0)
            CLEANUP.procs.remove(self.proc)
        if self.proc.returncode != 0:
            raise BenchError(f"{self.host.name}: helper exited with {self.proc.returncode}")
        return self.err_path.read_text(errors="replace")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


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


def wait_note(build: Build) -> str:
    """How long go waited on B's daemon in a build, after local misses."""
    lookups, waited = build.stats.get("remote_lookups", 0), build.stats.get("remote_wait_us", 0)
    return f"go waited {waited / 1e6:.3f} s on B's daemon over {lookups} lookups"


def auto_choice(log_path: Path, offset: int) -> str:
    """What "auto" chose, from the daemon's log past ``offset``."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        found = CHOICE.findall(f.read())
    if not found:
        return "(still measuring)"
    return "; ".join(f"{kind} (raw {raw}, compressed {zstd} MB/s)" for raw, zstd, kind in found)


def ensure_connected(a: Host, b: Host, a_id: str, b_id: str) -> None:
    if b.peers_state(a_id) != "connected" or a.peers_state(b_id) != "connected":
        b.wait_connected(a_id)
        a.wait_connected(b_id)


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


def make_filesystem(scratch: Path, args: argparse.Namespace) -> str:
    """Puts the hosts' files on a filesystem of their own (``--fs ext4``,
    the default): a fresh ext4 with a journal, as on a developer's disk, on
    a loop device over a sparse file next to the scratch directory, mounted
    on it. Returns a description for the report.

    Why: this project's VMs have a root filesystem without a journal, and
    there ext4 skips every inode freed in the last 60 s (360 s while its
    inode table block is dirty) when it creates a file
    (``recently_deleted()``); after any build or cleanup that deleted a few
    thousand files (go deletes its work directories), creating 3,000 files
    took 1.05-1.57 s instead of 0.065 s. That is a property of the machine,
    not of warren, and it changes from one build to the next. ``--fs root``
    keeps the files on the machine's own filesystem.
    """
    if args.fs == "root":
        return "the machine's own filesystem (--fs root)"
    for tool in ("mkfs.ext4", "losetup", "mount"):
        if shutil.which(tool) is None:
            raise BenchError(f"--fs ext4 needs {tool}; or pass --fs root")
    image = scratch.parent / f"{scratch.name}.img"
    with open(image, "wb") as f:
        f.truncate(args.fs_gib << 30)
    device = ""
    try:
        sh(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)])
        device = sh(["losetup", "--direct-io=on", "-f", "--show", str(image)]).strip()
        sh(["mount", device, str(scratch)])
    except BenchError:
        if device:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        image.unlink()
        raise
    CLEANUP.filesystem = (scratch, device, image)
    return f"a new {args.fs_gib} GiB ext4 with a journal on {device} ({image}, sparse)"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


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

        def cpu(b: Build) -> float:
            return b.cpu_s + sum(b.daemon_cpu_s.values())

        cpu_ratio = statistics.median(cpu(b) for b in res.empty_on) / statistics.median(
            cpu(b) for b in res.empty_off
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
        "or the machine's own filesystem; see make_filesystem()",
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


def can_make_namespaces(name: str) -> bool:
    """Whether this machine lets the benchmark ``name`` build its LAN of
    namespaces (root, and the `ip` command); says why not."""
    if os.geteuid() != 0:
        print(f"{name}: needs root (network namespaces)", file=sys.stderr)
        return False
    if shutil.which("ip") is None:
        print(f"{name}: needs the `ip` command (iproute2)", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not can_make_namespaces("bench_share"):
        return 1
    if args.link_rate and shutil.which("tc") is None:
        print("bench_share: --link-rate needs the `tc` command (iproute2)", file=sys.stderr)
        return 1
    atexit.register(CLEANUP.run)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    res = Results()
    try:
        go = resolve_go(args.go)
        warren = resolve_warren(args.warren)
        info = machine_info(go, warren)
        log(f"{info['go_version']}; warren {info['warren_version']}")
        log(f"load average {info['load_avg_at_start']}")
        remove_stale_namespaces()
        scratch = Path(tempfile.mkdtemp(prefix="warren-bench-share-"))
        CLEANUP.scratch = scratch
        CLEANUP.keep_scratch = args.keep_tmp
        info["filesystem"] = make_filesystem(scratch, args)
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
