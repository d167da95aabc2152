#!/usr/bin/env python3
"""A LAN of Linux network namespaces with warren hosts on it: what the
benchmarks that need peers stand on (bench_share.py, bench_replicate.py,
bench_office.py, bench_agreement.py, bench_bucket.py; demo_sharing.sh through the command
line below).

The LAN is the one tests/netns/mod.rs builds for the Rust tests. One
namespace holds a bridge (the switch); each host namespace gets one end of
a veth pair on it (``eth0``), with an address in 10.77.<subnet>.0/24. Both
ends are created inside their namespaces, so nothing ever appears among
the machine's own interfaces, and mDNS flows between the hosts and nowhere
else. The bridge does not pass frames through iptables, as a LAN switch
does not.

A ``Host`` is one machine on it: its namespace, and a home of its own (HOME,
XDG dirs, TMPDIR, GOPATH, GOCACHE and warren store under one directory). It
runs warren's commands, its daemon (``Daemon``, whose log is timestamped
line by line), GOCACHEPROG helper sessions (``Helper``) and timed ``go``
builds (``go_build``) in its namespace.

Everything started or created here is registered with ``CLEANUP``, which
stops the processes (SIGTERM, then SIGKILL), ends anything left inside the
namespaces, deletes them, and unmounts the hosts' filesystem
(``make_filesystem``): at exit, on failure, Ctrl-C or SIGTERM. Namespaces
are named ``wbsh<pid><host>``; those of earlier runs whose process is gone
are removed by ``remove_stale_namespaces``.

Command line, for shell scripts (root):

    python3 scripts/netns.py up PREFIX SUBNET HOST...
        creates namespaces PREFIXsw (the switch) and PREFIX<HOST> with
        address 10.77.SUBNET.<n> for the n-th HOST; prints one line per
        host: its name, namespace and address
    python3 scripts/netns.py down PREFIX HOST...
        ends every process inside those namespaces and deletes them

Linux only, as root. Python 3.11+, standard library only.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchlib import (
    BenchError,
    gocacheprog_value,
    logger,
    rmtree,
    wait_with_timeout,
)

NS_PREFIX = "wbsh"  # namespaces are wbsh<pid>sw, wbsh<pid><host>
B64_CHUNK = 3 << 20  # a multiple of 3: chunks encode independently
BUILD_TIMEOUT = 1800.0
HELPER_TIMEOUT = 300.0
CONNECT_TIMEOUT = 30.0
SOCKET_TIMEOUT = 20.0

# What every host's config starts with: sharing on, no daemon started by
# a helper (the benchmark starts and stops the daemons itself).
SHARING_CONFIG = "[share]\nenabled = true\nautostart = false\n"
# Configs every host gets next to its own (same directory: same identity
# and allowlist), for a helper or daemon started with WARREN_CONFIG: a
# helper that waits up to 60 s for its daemon (a big get), a daemon that
# fetches only what it is asked (latency probes), and each compression mode.
CONFIG_VARIANTS = {
    "long-wait": 'lookup-deadline = "60s"\n',
    "no-read-ahead": "read-ahead = 0\n",
    "compression-auto": 'compression = "auto"\n',
    "compression-never": 'compression = "never"\n',
}


# --------------------------------------------------------------------------
# Cleanup: every process started and every namespace created is registered
# here and removed by CLEANUP.run(), which runs from finally, atexit and
# signals.


class Cleanup:
    def __init__(self) -> None:
        self.name = "netns"  # the script's, for its messages (see enter())
        self.procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        self.scratch: Path | None = None
        self.keep_scratch = False
        # (mount point, loop device, image file) of the scratch filesystem
        self.filesystem: tuple[Path, str, Path] | None = None
        # What else to undo once the processes are stopped, before the
        # namespaces go (e.g. a server's sockets in /tmp); last in, first run.
        self.hooks: list[Callable[[], None]] = []
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
        for hook in reversed(self.hooks):
            try:
                hook()
            except Exception as e:  # noqa: BLE001 - cleanup goes on regardless
                print(f"{self.name}: cleanup step failed: {e}", file=sys.stderr)
        for ns in reversed(self.namespaces):
            kill_namespace_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        if self.scratch is not None:
            if self.keep_scratch:
                print(f"{self.name}: scratch files kept in {self.scratch}", file=sys.stderr)
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


# The scripts that build a LAN with make_lan(): a namespace whose PID runs
# one of them belongs to a run still going.
LAN_SCRIPTS = (
    "bench_share",
    "bench_replicate",
    "bench_office",
    "bench_agreement",
    "bench_bucket",
)


def remove_stale_namespaces() -> None:
    """Deletes namespaces of earlier runs whose PID is gone."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NS_PREFIX}(\d+)([a-z]\w*)", name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and Path(f"/proc/{pid}").exists():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            except OSError:
                cmdline = ""
            if any(script in cmdline for script in LAN_SCRIPTS):
                continue  # another run, still going
        logger(CLEANUP.name)(f"removing stale namespace {name}")
        kill_namespace_pids(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def can_make_namespaces(name: str) -> bool:
    """Whether this machine lets the script ``name`` build its LAN of
    namespaces (root, and the `ip` command); says why not."""
    if os.geteuid() != 0:
        print(f"{name}: needs root (network namespaces)", file=sys.stderr)
        return False
    if shutil.which("ip") is None:
        print(f"{name}: needs the `ip` command (iproute2)", file=sys.stderr)
        return False
    return True


def enter(name: str) -> bool:
    """What a script that builds a LAN does first: checks that it can
    (can_make_namespaces), then has CLEANUP run at exit and turns SIGINT,
    SIGTERM and SIGHUP into KeyboardInterrupt so that it runs then too.
    ``name`` prefixes the messages."""
    if not can_make_namespaces(name):
        return False
    CLEANUP.name = name
    atexit.register(CLEANUP.run)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    return True


def scratch_dir(args: argparse.Namespace) -> tuple[Path, str]:
    """Removes stale namespaces, then makes the scratch directory the
    hosts' files live in (kept at the end with ``--keep-tmp``) on the
    filesystem ``--fs`` asks for (make_filesystem). Returns the directory
    and a description of that filesystem for the report."""
    remove_stale_namespaces()
    prefix = "warren-" + CLEANUP.name.replace("_", "-") + "-"
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    CLEANUP.scratch = scratch
    CLEANUP.keep_scratch = args.keep_tmp
    return scratch, make_filesystem(scratch, args)



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


def make_lan(
    names: list[str], rate: str | None = None, prefix: str | None = None, subnet: int | None = None
) -> dict[str, tuple[str, str]]:
    """Creates a switch and one namespace per host: {name: (netns, address)};
    with ``rate`` (tc syntax, such as 1gbit), each host sends at most that.
    Namespaces are ``<prefix>sw`` and ``<prefix><name>`` (by default
    ``wbsh<pid>``), addresses 10.77.<subnet>.<n> (by default a subnet
    drawn from the PID)."""
    pid = os.getpid()
    prefix = f"{NS_PREFIX}{pid}" if prefix is None else prefix
    subnet = 1 + pid % 250 if subnet is None else subnet
    switch = f"{prefix}sw"
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
        netns = f"{prefix}{name}"
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
        """``warren init``, then ``config`` as the config file, and each of
        CONFIG_VARIANTS next to it as ``<name>.toml``. Returns the peer ID."""
        self.warren_cmd("init")
        (self.config_dir / "config.toml").write_text(config)
        for name, extra in CONFIG_VARIANTS.items():
            (self.config_dir / f"{name}.toml").write_text(config + extra)
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
                # The state column follows the ID, its role and its entry
                # count.
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


def ensure_connected(a: Host, b: Host, a_id: str, b_id: str) -> None:
    """Waits until ``a`` and ``b`` (peer IDs ``a_id`` and ``b_id``) each show
    the other connected."""
    if b.peers_state(a_id) != "connected" or a.peers_state(b_id) != "connected":
        b.wait_connected(a_id)
        a.wait_connected(b_id)


# --------------------------------------------------------------------------
# The hosts' filesystem


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


def wait_note(build: Build) -> str:
    """How long go waited on B's daemon in a build, after local misses."""
    lookups, waited = build.stats.get("remote_lookups", 0), build.stats.get("remote_wait_us", 0)
    return f"go waited {waited / 1e6:.3f} s on B's daemon over {lookups} lookups"


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


# --------------------------------------------------------------------------
# The command line, for shell scripts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="A LAN of network namespaces for warren's demos (root)."
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create the switch and one namespace per host")
    up.add_argument("prefix", help="namespaces are PREFIXsw and PREFIX<HOST>")
    up.add_argument("subnet", type=int, help="addresses are 10.77.SUBNET.<n>")
    up.add_argument("hosts", nargs="+", metavar="HOST")
    down = sub.add_parser("down", help="end the processes in them and delete them")
    down.add_argument("prefix")
    down.add_argument("hosts", nargs="+", metavar="HOST")
    args = p.parse_args(argv)
    if not can_make_namespaces("netns"):
        return 1
    if args.command == "down":
        for name in [*args.hosts, "sw"]:
            kill_namespace_pids(args.prefix + name)
            subprocess.run(
                ["ip", "netns", "del", args.prefix + name], capture_output=True, check=False
            )
        return 0
    if not 1 <= args.subnet <= 254:
        p.error("SUBNET must be 1 to 254")
    try:
        lan = make_lan(args.hosts, prefix=args.prefix, subnet=args.subnet)
    except BenchError as e:
        CLEANUP.run()  # what was made so far
        print(f"netns: error: {e}", file=sys.stderr)
        return 1
    for name, (netns, address) in lan.items():
        print(name, netns, address)
    return 0


if __name__ == "__main__":
    sys.exit(main())

