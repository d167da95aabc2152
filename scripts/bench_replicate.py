#!/usr/bin/env python3
"""warren's replication benchmark: a coworker's fresh build is already here.

Usage (root; network namespaces):
    sudo python3 scripts/bench_replicate.py [--runs N] [--targets std,cmd]
                                            [--warren PATH] [--go PATH] [--json FILE]

Two hosts on a private LAN of namespaces (scripts/netns.py, whose hosts,
LAN, filesystem and cleanup bench_share.py uses too): A, the coworker, and B, who
replicates A (``[share] replicate = ["a"]``, every other replication
setting at its default: 2 GiB, 40 MiB/s, 24 h). Each run starts both with
empty stores and restarted daemons.

Per target (``std``, then ``cmd``: the Go toolchain's own commands, a
vendored project of several hundred packages whose source every Go
installation carries), and per run, on empty stores:

0. B runs ``go list <target>``: its own module indexes, which any machine
   that has ever built holds, and which are never shared (they describe the
   machine's directories). Then B's daemon stops: B is away.
1. **Replication.** A runs ``go build <target>``; then B's daemon starts
   (B is back), and B's ``warren stats --json`` is polled every 100 ms: the
   entries B holds from A, and B's replication state of A. Reported: the
   time from B's daemon start until B holds 95% of A's shareable entries
   (A's entries built here, less module indexes), and until replication is
   idle. No go runs on B meanwhile. (A B that stays connected while A
   builds holds A's entries as A stores them.)
2. **B builds after replication**, with a fresh GOCACHE, then **B's own warm
   rebuild** (fresh GOCACHE again, same store). Target: after / warm <=
   1.15x.
3. **Live lookups first.** The same until B's daemon starts; then B builds
   at once, while replication starts too. Next to it, interleaved, the
   same with B's daemon not replicating (on demand only). Target: during /
   on demand <= 1.05x.

With ``--never-built``, step 2 runs twice per run, interleaved: once as
above and once on a B that never built (no ``go list`` first, so B's
first build makes its module indexes too). Target: that first build /
B's warm rebuild <= 1.5x; the difference from the primed first build is
go making its module indexes, the floor.

Then, once (std only): **the budget.** B's daemon restarted with
``replicate-max-size`` at a quarter of A's store; when replication is
idle, the bytes B holds from peers must be within it and the rest counted
as skipped.

Medians and ratios are printed side by side at the end; ``--json`` writes
every sample.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import netns
from benchlib import (
    BenchError,
    common_args,
    gocacheprog_value,
    logger,
    machine_info,
    med,
    resolve_go,
    resolve_warren,
    rotate,
    tree_size,
)
from netns import CLEANUP, Host, go_build

log = logger("bench_replicate")

REPLICATE_CONFIG = netns.SHARING_CONFIG + 'replicate = ["a"]\n'
# How long replication may take before the run counts as failed.
REPLICATION_TIMEOUT = 600.0
# Replication counts as idle once B's state says so for this long.
IDLE_FOR = 1.0

TARGETS = {
    "after_over_warm": 1.15,
    "never_built_over_warm": 1.5,
    "during_over_on_demand": 1.05,
    "share": 0.95,
}


@dataclass
class Replication:
    target: str
    run: int
    shareable: int
    samples: list[tuple[float, int]]  # (s after B's daemon started, entries B holds from A)
    t95_s: float | None
    idle_s: float | None
    held: int
    held_bytes: int
    b_daemon_cpu_s: float
    a_daemon_cpu_s: float


@dataclass
class TargetResults:
    replication: list[Replication] = field(default_factory=list)
    after: list[netns.Build] = field(default_factory=list)
    warm: list[netns.Build] = field(default_factory=list)
    # B never built: no module indexes before its first build.
    never_after: list[netns.Build] = field(default_factory=list)
    never_warm: list[netns.Build] = field(default_factory=list)
    during: list[netns.Build] = field(default_factory=list)
    on_demand: list[netns.Build] = field(default_factory=list)


@dataclass
class Budget:
    budget_bytes: int
    a_store_bytes: int
    held_bytes: int
    skipped: int
    skipped_bytes: int


def stats(host: Host) -> dict:
    return json.loads(host.warren_cmd("stats", "--json"))


def held_from(st: dict, peer: str) -> tuple[int, int]:
    for p in st["sources"]["peers"]:
        if p["peer"] == peer:
            return p["entries"], p["bytes"]
    return 0, 0


def replication_state(st: dict, peer: str) -> dict | None:
    for p in st.get("peers") or []:
        if p["id"] == peer:
            return p.get("replication")
    return None


def module_indexes(host: Host) -> int:
    for line in host.warren_cmd("verify").splitlines():
        if "module indexes" in line:
            numbers = [int(n) for n in "".join(c if c.isdigit() else " " for c in line).split()]
            return numbers[3]
    raise BenchError(f"{host.name}: `warren verify` printed no module-index census")


def shareable(host: Host) -> int:
    return stats(host)["sources"]["local"]["entries"] - module_indexes(host)


def fresh(a: Host, b: Host, a_id: str, b_id: str, level: str) -> None:
    """Both hosts on empty stores, daemons up and connected."""
    a.new_store()
    b.new_store()
    if b.daemon is None:
        b.start_daemon(level)
    netns.ensure_connected(a, b, a_id, b_id)


def away(b: Host) -> None:
    """B's daemon stops: B is not on the LAN."""
    b.daemon.mark("away until A's build is done")
    b.daemon.stop()
    b.daemon = None


def prime(b: Host, target: str) -> int:
    """``go list <target>`` on B: B's own module indexes, which every
    machine that ever built has, and which are never shared. Returns the
    entries it put."""
    env = {"GOCACHE": str(b.fresh_gocache()), "GOCACHEPROG": gocacheprog_value(b.warren)}
    before = b.lifetime().get("puts", 0)
    r = subprocess.run(
        b.argv(b.go, "list", target),
        cwd=b.root / "work",
        env=b.env(WARREN_SHARE="0", **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=netns.BUILD_TIMEOUT,
        check=False,
    )
    if r.returncode != 0 or r.stderr:
        raise BenchError(f"B: go list {target} failed: {r.stderr.decode(errors='replace')}")
    return b.lifetime().get("puts", 0) - before


def start_b(a: Host, b: Host, a_id: str, b_id: str, level: str) -> float:
    """Starts B's daemon; returns the perf_counter time it was started."""
    started = time.perf_counter()
    b.start_daemon(level)
    netns.ensure_connected(a, b, a_id, b_id)
    return started


def watch_replication(
    a: Host, b: Host, a_id: str, target: str, run: int, t0: float
) -> Replication:
    """Polls B from ``t0`` until replication is idle."""
    cpu_a, cpu_b = a.daemon.cpu_s(), b.daemon.cpu_s()
    samples: list[tuple[float, int]] = []
    idle_since = None
    while True:
        now = time.perf_counter() - t0
        st = stats(b)
        held, _ = held_from(st, a_id)
        samples.append((now, held))
        state = replication_state(st, a_id) or {}
        idle = held > 0 and state.get("behind", 1) == 0 and not state.get("more", True)
        if idle:
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since >= IDLE_FOR:
                break
        else:
            idle_since = None
        if now > REPLICATION_TIMEOUT:
            raise BenchError(
                f"replication not idle after {REPLICATION_TIMEOUT:.0f} s: {state}\n{b.daemon.tail()}"
            )
        time.sleep(0.1)
    cpu_a, cpu_b = a.daemon.cpu_s() - cpu_a, b.daemon.cpu_s() - cpu_b
    total = shareable(a)
    t95 = next((t for t, n in samples if n * 100 >= total * 95), None)
    held, held_bytes = held_from(stats(b), a_id)
    return Replication(target, run, total, samples, t95, idle_since, held, held_bytes, cpu_b, cpu_a)


def bench(args: argparse.Namespace, go: Path, warren: Path, scratch: Path) -> dict:
    t0 = time.perf_counter()
    lan = netns.make_lan(["a", "b"])
    a = Host("A", *lan["a"], scratch / "a", go, warren, t0)
    b = Host("B", *lan["b"], scratch / "b", go, warren, t0)
    hosts = [a, b]
    a_id = a.init(netns.SHARING_CONFIG)
    b_id = b.init(REPLICATE_CONFIG)
    (b.config_dir / "on-demand.toml").write_text(netns.SHARING_CONFIG)
    a.trust(b_id, "b")
    b.trust(a_id, "a")
    a.start_daemon(args.daemon_log)
    b.start_daemon(args.daemon_log)
    netns.ensure_connected(a, b, a_id, b_id)
    results: dict[str, TargetResults] = {}
    budget = None
    for target in args.targets:
        res = results[target] = TargetResults()
        kinds = ("primed", "never built") if args.never_built else ("primed",)
        for run, kind in ((r, k) for r in range(args.runs) for k in rotate(kinds, r)):
            # B primes its module indexes (or never built), goes home; A
            # builds; B comes back.
            fresh(a, b, a_id, b_id, args.daemon_log)
            primed = prime(b, target) if kind == "primed" else 0
            away(b)
            build = go_build(a, hosts, target, "A builds", run, False)
            started = start_b(a, b, a_id, b_id, args.daemon_log)
            rep = watch_replication(a, b, a_id, target, run, started)
            res.replication.append(rep)
            t95 = "never" if rep.t95_s is None else f"{rep.t95_s:.2f} s"
            log(
                f"{target} run {run + 1}: A built in {build.wall_s:.1f} s; B ({primed} module "
                f"indexes of its own) held 95% of A's {rep.shareable} shareable entries {t95} "
                f"after its daemon started, all {rep.held} ({rep.held_bytes / 1e6:.0f} MB) after "
                f"{rep.idle_s:.2f} s; daemon CPU A {rep.a_daemon_cpu_s:.2f} s, "
                f"B {rep.b_daemon_cpu_s:.2f} s"
            )
            after = go_build(b, hosts, target, f"B after replication ({kind})", run, True)
            warm = go_build(b, hosts, target, f"B warm local ({kind})", run, True)
            (res.after if kind == "primed" else res.never_after).append(after)
            (res.warm if kind == "primed" else res.never_warm).append(warm)
            log(
                f"{target} run {run + 1} ({kind}): B after replication {after.wall_s:.2f} s "
                f"({after.stats.get('hits', 0)}/{after.stats.get('gets', 0)} hits, "
                f"{after.stats.get('peer_hits', 0)} waited on A); warm {warm.wall_s:.2f} s"
            )
        for run in range(0 if args.skip_during else args.runs):
            # B comes back and builds at once: replication starts with the
            # build. Against it, B's daemon on demand only.
            order = ("during", "on demand") if run % 2 == 0 else ("on demand", "during")
            for kind in order:
                b.daemon_env = (
                    {"WARREN_CONFIG": str(b.config_dir / "on-demand.toml")}
                    if kind == "on demand"
                    else {}
                )
                fresh(a, b, a_id, b_id, args.daemon_log)
                prime(b, target)
                away(b)
                go_build(a, hosts, target, "A builds", run, False)
                start_b(a, b, a_id, b_id, args.daemon_log)
                bd = go_build(b, hosts, target, f"B {kind}", run, True)
                (res.during if kind == "during" else res.on_demand).append(bd)
                log(
                    f"{target} run {run + 1}: B builds {kind}: {bd.wall_s:.2f} s "
                    f"({bd.stats.get('hits', 0)}/{bd.stats.get('gets', 0)} hits, "
                    f"{bd.stats.get('peer_hits', 0)} waited on A)"
                )
            b.daemon_env = {}
        if target == "std" and not args.skip_budget:
            budget = measure_budget(a, b, a_id, b_id, hosts)
    return {"results": results, "budget": budget}


def measure_budget(a: Host, b: Host, a_id: str, b_id: str, hosts: list[Host]) -> Budget:
    fresh(a, b, a_id, b_id, "info")
    go_build(a, hosts, "std", "A builds (budget)", 0, False)
    a_bytes = tree_size(a.store)
    limit = a_bytes // 4
    (b.config_dir / "budget.toml").write_text(REPLICATE_CONFIG + f"replicate-max-size = \"{limit}\"\n")
    b.daemon_env = {"WARREN_CONFIG": str(b.config_dir / "budget.toml")}
    b.new_store()
    netns.ensure_connected(a, b, a_id, b_id)
    deadline = time.monotonic() + REPLICATION_TIMEOUT
    while True:
        st = stats(b)
        state = replication_state(st, a_id) or {}
        if state.get("skipped_for_budget", 0) > 0 and state.get("behind", 1) == 0:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"budget run: replication not done: {state}")
        time.sleep(0.2)
    time.sleep(IDLE_FOR)
    st = stats(b)
    _, held_bytes = held_from(st, a_id)
    state = replication_state(st, a_id) or {}
    b.daemon_env = {}
    result = Budget(
        limit, a_bytes, held_bytes, state.get("skipped_for_budget", 0), state.get("skipped_bytes", 0)
    )
    log(
        f"budget: replicate-max-size {limit / 1e6:.0f} MB (a quarter of A's store, "
        f"{a_bytes / 1e6:.0f} MB): B holds {held_bytes / 1e6:.1f} MB from A, "
        f"{result.skipped} entries ({result.skipped_bytes / 1e6:.0f} MB) skipped"
    )
    return result


def report(out: dict) -> dict:
    summary: dict = {}
    print("\nwarren replication benchmark (medians)")
    for target, res in out["results"].items():
        t95 = [r.t95_s for r in res.replication if r.t95_s is not None]
        idle = [r.idle_s for r in res.replication if r.idle_s is not None]
        after = med([b.wall_s for b in res.after])
        warm = med([b.wall_s for b in res.warm])
        during = med([b.wall_s for b in res.during])
        on_demand = med([b.wall_s for b in res.on_demand])
        shares = [min(1.0, r.held / r.shareable) for r in res.replication if r.shareable]
        row = {
            "t95_s": med(t95),
            "idle_s": med(idle),
            "replicated_share": med(shares),
            "replicated_mb": med([r.held_bytes / 1e6 for r in res.replication]),
            "b_daemon_cpu_s": med([r.b_daemon_cpu_s for r in res.replication]),
            "after_s": after,
            "warm_s": warm,
            "after_over_warm": after / warm,
            "during_s": during,
            "on_demand_s": on_demand,
            "during_over_on_demand": during / on_demand,
        }
        summary[target] = row
        print(f"\n{target}:")
        print(
            f"  B holds 95% of A's entries, no build   {row['t95_s']:.2f} s "
            f"(idle after {row['idle_s']:.2f} s; {row['replicated_share']:.1%} of "
            f"{res.replication[0].shareable} entries, {row['replicated_mb']:.0f} MB; "
            f"B daemon CPU {row['b_daemon_cpu_s']:.2f} s)"
        )
        print(f"  B builds after replication             {after:.3f} s")
        print(f"  B warm local                           {warm:.3f} s")
        ok = row["after_over_warm"] <= TARGETS["after_over_warm"]
        print(
            f"  after / warm                           {row['after_over_warm']:.2f}x "
            f"(target <= {TARGETS['after_over_warm']}x: {'met' if ok else 'MISSED'})"
        )
        if res.never_after:
            never = med([b.wall_s for b in res.never_after])
            never_warm = med([b.wall_s for b in res.never_warm])
            # Per run: the never-built first build less the primed one of
            # the same run, go making its module indexes.
            floor = med([n.wall_s - p.wall_s for n, p in zip(res.never_after, res.after)])
            row["never_built_s"] = never
            row["never_built_warm_s"] = never_warm
            row["never_built_over_warm"] = never / never_warm
            row["module_index_floor_s"] = floor
            ok = row["never_built_over_warm"] <= TARGETS["never_built_over_warm"]
            print(f"  B never built, after replication       {never:.3f} s")
            print(f"  its warm rebuild                       {never_warm:.3f} s")
            print(
                f"  never built: after / warm              {row['never_built_over_warm']:.2f}x "
                f"(target <= {TARGETS['never_built_over_warm']}x: {'met' if ok else 'MISSED'})"
            )
            print(
                f"  floor: go making its module indexes    {floor:.3f} s (never built less primed; "
                f"{(warm + floor) / warm:.2f}x warm)"
            )
        if not res.during:
            continue
        print(f"  B builds during replication            {during:.3f} s")
        print(f"  B builds on demand (no replication)    {on_demand:.3f} s")
        ok = row["during_over_on_demand"] <= TARGETS["during_over_on_demand"]
        print(
            f"  during / on demand                     {row['during_over_on_demand']:.2f}x "
            f"(target <= {TARGETS['during_over_on_demand']}x: {'met' if ok else 'MISSED'})"
        )
    budget = out["budget"]
    if budget:
        ok = budget.held_bytes <= budget.budget_bytes
        print(
            f"\nbudget: {budget.held_bytes / 1e6:.1f} MB held of a {budget.budget_bytes / 1e6:.1f} MB "
            f"replicate-max-size ({'kept' if ok else 'EXCEEDED'}); {budget.skipped} entries "
            f"({budget.skipped_bytes / 1e6:.0f} MB) skipped"
        )
        summary["budget"] = asdict(budget)
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark warren's background replication.")
    common_args(p, 3, "runs per measurement")
    p.add_argument(
        "--targets",
        type=lambda text: text.split(","),
        default=["std", "cmd"],
        help="package patterns to build, comma-separated (default std,cmd)",
    )
    p.add_argument("--daemon-log", default="info", help="WARREN_LOG for the daemons")
    p.add_argument("--skip-budget", action="store_true", help="skip the budget run")
    p.add_argument(
        "--skip-during", action="store_true", help="skip the builds while replication starts"
    )
    p.add_argument(
        "--never-built",
        action="store_true",
        help="also time B's first build after replication on a B that never built",
    )
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
    if not netns.enter("bench_replicate"):
        return 1
    try:
        go = resolve_go(args.go)
        warren = resolve_warren(args.warren)
        info = machine_info(go, warren)
        log(f"{info['go_version']}; warren {info['warren_version']}")
        scratch, info["filesystem"] = netns.scratch_dir(args)
        log(f"hosts' files on {info['filesystem']}")
        out = bench(args, go, warren, scratch)
    except BenchError as e:
        print(f"bench_replicate: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_replicate: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        CLEANUP.run()
    summary = report(out)
    if args.json:
        data = {
            "info": info,
            "targets": TARGETS,
            "summary": summary,
            "results": {
                target: {
                    key: [asdict(item) for item in getattr(res, key)]
                    for key in (
                        "replication",
                        "after",
                        "warm",
                        "never_after",
                        "never_warm",
                        "during",
                        "on_demand",
                    )
                }
                for target, res in out["results"].items()
            },
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
