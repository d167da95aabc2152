#!/usr/bin/env python3
"""Plays the CI workflow of docs/ci.md on this machine, against a local S3
server, so that the workflow's steps are tried before a runner sees them.

Usage:
    python3 scripts/ci_job.py [--target cmd/gofmt] [--warren PATH] [--go PATH]

The server is SeaweedFS's `weed mini` on loopback (scripts/s3server.py,
with its guard: no request leaves the machine, no AWS_* of yours is used).
Each "machine" below is a fresh directory: its own HOME, config, store and
GOCACHE, as an ephemeral runner has.

1. **Once, by hand**: `warren keygen`; its secret becomes the repository's
   secret ``WARREN_IDENTITY``.
2. **CI run 1** on a fresh runner, exactly the workflow's steps: the config
   it writes, ``WARREN_IDENTITY`` and the bucket's write credentials in the
   environment, `warren peers add` of the job's own peer ID (so that later
   runs use what earlier ones uploaded), `warren doctor`, the build
   (``go build -o`` of ``--target``), `warren bucket sync`.
3. **CI run 2**, another fresh runner, the same steps: its build comes from
   run 1's uploads.
4. **A coworker's laptop**, its own identity, read-only credentials,
   trusting the job's peer ID (`warren peers add … --name ci`), builds the
   target from the bucket; its binary must equal one built with go's own
   cache.

Prints each step's time and the bucket's figures; exits non-zero if a step
fails, if run 2 or the laptop took nothing from the bucket, or if the
binaries differ. The daemon, which on a runner the first build starts
(``autostart``), is started here before the build so that it ends by its
PID; everything started is stopped at the end, also on failure.

Linux only. Python 3.11+, standard library only (and curl, for the
server's readiness check).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import netns
import s3server
from benchlib import REPO, BenchError, gocacheprog_value, logger, resolve_go, resolve_warren
from netns import CLEANUP

log = logger("ci_job")

# The config docs/ci.md's workflow writes, but for the endpoint, which
# names the local server.
WORKFLOW_CONFIG = """\
[share]
enabled = false
autostart = true

{bucket}"""


class Machine:
    """A fresh runner or laptop: HOME, config, store and GOCACHE of its own."""

    def __init__(self, root: Path, name: str, warren: Path, go: Path, credentials: tuple[str, str]):
        self.root = root / name
        self.name = name
        self.warren = warren
        self.go = go
        self.credentials = credentials
        self.identity: str | None = None
        self.daemon: subprocess.Popen | None = None
        for sub in ("home", "config/warren", "store", "gocache", "tmp"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)

    def write_config(self, text: str) -> None:
        path = self.root / "config/warren/config.toml"
        path.write_text(text)
        path.chmod(0o600)

    def env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.go.parent}:/usr/bin:/bin",
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "WARREN_DIR": str(self.root / "store"),
            "GOCACHE": str(self.root / "gocache"),
            "GOCACHEPROG": gocacheprog_value(self.warren),
            "GOFLAGS": "-mod=mod",
            "GOTOOLCHAIN": "local",
            "GOPROXY": "off",
            "GOTELEMETRY": "off",
            "TMPDIR": str(self.root / "tmp"),
        }
        if self.identity:
            env["WARREN_IDENTITY"] = self.identity
        return s3server.guarded_env(env, self.credentials, self.root / "home")

    def warren_cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [str(self.warren), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise BenchError(f"{self.name}: warren {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
        return r

    def start_daemon(self) -> None:
        logfile = open(self.root / "daemon.log", "ab")  # noqa: SIM115 (the daemon's own)
        self.daemon = subprocess.Popen(
            [str(self.warren), "daemon"],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=logfile,
            start_new_session=True,
        )
        CLEANUP.procs.append(self.daemon)
        socket = self.root / "store" / "daemon.sock"
        deadline = time.monotonic() + 60
        while not socket.exists():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{self.name}: the daemon did not start:\n{self.daemon_log()}")
            time.sleep(0.05)

    def daemon_log(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")[-4000:]

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            netns.stop_process(self.daemon, grace=5.0)
            CLEANUP.procs.remove(self.daemon)
            self.daemon = None

    def build(self, target: str, out: str, builtin: bool = False) -> float:
        env = self.env()
        if builtin:
            env.pop("GOCACHEPROG")
            env["GOCACHE"] = str(self.root / "gocache-builtin")
        started = time.monotonic()
        r = subprocess.run(
            [str(self.go), "build", "-o", str(self.root / out), target],
            env=env,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        took = time.monotonic() - started
        if r.returncode != 0:
            raise BenchError(f"{self.name}: go build {target} failed:\n{r.stderr[-4000:]}")
        if r.stderr.strip():
            log(f"{self.name}: warren or go said on the terminal:\n{r.stderr.strip()}")
        return took

    def bucket(self) -> dict:
        return json.loads(self.warren_cmd("bucket", "status", "--json").stdout).get("daemon") or {}


def keygen(warren: Path) -> tuple[str, str]:
    """``warren keygen``: the peer ID and the secret."""
    out = subprocess.run(
        [str(warren), "keygen"], capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}
    ).stdout
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return fields["peer ID"], fields["secret"]


def ci_run(
    machine: Machine, server: s3server.S3Server, secret: str, peer_id: str, target: str, manifests: int
) -> dict:
    """The workflow's steps on a fresh runner; what they took and did."""
    machine.identity = secret
    machine.write_config(WORKFLOW_CONFIG.format(bucket=server.bucket_table("warren", write=True)))
    machine.warren_cmd("peers", "add", peer_id, "--name", "ci")
    doctor = machine.warren_cmd("doctor", "--json", check=False)
    checks = json.loads(doctor.stdout)["checks"] if doctor.stdout.strip() else []
    bucket_lines = [
        f"{c['status']}: {c['what']}" + (f" ({c['cause']})" if c.get("cause") else "")
        for c in checks
        if c["section"] == "Bucket"
    ]
    if not bucket_lines or any(line.startswith("problem") for line in bucket_lines):
        raise BenchError(f"{machine.name}: warren doctor's Bucket section:\n{doctor.stdout}{doctor.stderr}")
    machine.start_daemon()
    wait_index(machine, manifests)
    took = machine.build(target, "out")
    started = time.monotonic()
    sync = machine.warren_cmd("bucket", "sync", "--timeout", "5min", check=False)
    synced = time.monotonic() - started
    if sync.returncode != 0:
        raise BenchError(f"{machine.name}: warren bucket sync failed:\n{sync.stdout}{sync.stderr}")
    status = machine.bucket()
    machine.stop_daemon()
    return {"build_s": took, "sync_s": synced, "doctor": bucket_lines, "bucket": status}


def wait_index(machine: Machine, manifests: int, timeout: float = 60) -> None:
    """Until the daemon's index holds ``manifests`` (its first listing)."""
    deadline = time.monotonic() + timeout
    while machine.bucket().get("manifests_held", 0) < manifests:
        if time.monotonic() > deadline:
            raise BenchError(f"{machine.name}: the daemon listed no manifest:\n{machine.daemon_log()}")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="cmd/gofmt", help="the package the job builds (a main package)")
    p.add_argument(
        "--warren", type=Path, default=REPO / "target/release/warren", help="default: target/release/warren"
    )
    p.add_argument("--go", type=Path, default=None)
    args = p.parse_args(argv)
    warren = resolve_warren(args.warren)
    go = resolve_go(args.go)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, netns.on_signal)
    with tempfile.TemporaryDirectory(prefix="warren-ci-job-") as scratch:
        root = Path(scratch)
        try:
            server = s3server.S3Server(root / "s3")
            peer_id, secret = keygen(warren)
            log(f"the job's identity: {peer_id} (its secret is WARREN_IDENTITY)")
            runs = []
            for n in (1, 2):
                machine = Machine(root, f"ci-run-{n}", warren, go, server.writer)
                runs.append(ci_run(machine, server, secret, peer_id, args.target, manifests=n - 1))
            laptop = Machine(root, "laptop", warren, go, server.reader)
            _, laptop.identity = keygen(warren)
            laptop.write_config(WORKFLOW_CONFIG.format(bucket=server.bucket_table("warren", write=False)))
            laptop.warren_cmd("peers", "add", peer_id, "--name", "ci")
            laptop.start_daemon()
            wait_index(laptop, 1)
            laptop_s = laptop.build(args.target, "out")
            laptop_status = laptop.bucket()
            laptop.stop_daemon()
            laptop.build(args.target, "out-builtin", builtin=True)
            same = (laptop.root / "out").read_bytes() == (laptop.root / "out-builtin").read_bytes()
        finally:
            CLEANUP.run()
    print(f"{'step':<34} {'seconds':>8}  from the bucket")
    for n, run in enumerate(runs, 1):
        b = run["bucket"]
        print(f"{f'CI run {n}: go build {args.target}':<34} {run['build_s']:8.2f}  {b.get('hits', 0)} hits, {b.get('read_ahead', 0)} read ahead")
        print(f"{f'CI run {n}: warren bucket sync':<34} {run['sync_s']:8.2f}  {b.get('bodies_uploaded', 0)} bodies up, {b.get('bodies_present', 0)} there already")
    print(f"{'laptop: go build ' + args.target:<34} {laptop_s:8.2f}  {laptop_status.get('hits', 0)} hits, {laptop_status.get('read_ahead', 0)} read ahead")
    for line in runs[0]["doctor"]:
        print(f"doctor (CI run 1): {line}")
    failures = []
    if runs[0]["bucket"].get("bodies_uploaded", 0) == 0:
        failures.append("CI run 1 uploaded nothing")
    if runs[1]["bucket"].get("hits", 0) + runs[1]["bucket"].get("read_ahead", 0) == 0:
        failures.append("CI run 2 took nothing from the bucket")
    if laptop_status.get("hits", 0) + laptop_status.get("read_ahead", 0) == 0:
        failures.append("the laptop took nothing from the bucket")
    if not same:
        failures.append("the laptop's binary differs from go's own build")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"ci_job: {e}", file=sys.stderr)
        sys.exit(1)
