#!/usr/bin/env python3
"""What agreement (`[share] agreement = true`) costs a build from peers.

Three hosts in network namespaces of their own (the LAN of
scripts/netns.py, whose hosts, builds and cleanup bench_share.py uses too): A
and C each build `go build <target>` themselves, so both hold every entry
as built here; B trusts both. B then builds from them with agreement off
and on, interleaved, from an empty store each time, and warm locally after
each, with every median and ratio from the same run.

Needs root (network namespaces); nothing leaves the namespaces, and mDNS
runs only inside them.

    python3 scripts/bench_agreement.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import netns
from benchlib import (
    BenchError,
    common_args,
    logger,
    machine_info,
    parse_counts,
    resolve_go,
    resolve_warren,
)

log = logger("bench_agreement")

MODES = ("off", "on")


def bench(args: argparse.Namespace, go: Path, warren: Path, scratch: Path) -> dict:
    t0 = time.perf_counter()
    lan = netns.make_lan(["a", "c", "b"])
    a = netns.Host("A", *lan["a"], scratch / "a", go, warren, t0)
    c = netns.Host("C", *lan["c"], scratch / "c", go, warren, t0)
    b = netns.Host("B", *lan["b"], scratch / "b", go, warren, t0)
    hosts = [a, c, b]
    a_id, c_id, b_id = (h.init(netns.SHARING_CONFIG) for h in hosts)
    for mode in MODES:
        (b.config_dir / f"agreement-{mode}.toml").write_text(
            netns.SHARING_CONFIG + f"agreement = {'true' if mode == 'on' else 'false'}\n"
        )
    a.trust(b_id, "b")
    c.trust(b_id, "c")
    b.trust(a_id, "a")
    b.trust(c_id, "c")
    for h in hosts:
        h.start_daemon(args.daemon_log)

    def connected() -> None:
        netns.ensure_connected(a, b, a_id, b_id)
        netns.ensure_connected(c, b, c_id, b_id)

    connected()
    log(f"A, C and B connected (daemons: {', '.join(f'{h.name} pid {h.daemon.pid}' for h in hosts)})")
    for h in (a, c):
        prep = netns.go_build(h, hosts, args.target, f"prep {h.name}", 0, False)
        log(f"{h.name}: go build {args.target} (warms its store): {prep.wall_s:.1f} s")

    builds: dict[str, list[netns.Build]] = {m: [] for m in MODES}
    warm: dict[str, list[netns.Build]] = {m: [] for m in MODES}
    for i in range(args.runs):
        for mode in MODES if i % 2 == 0 else MODES[::-1]:
            b.daemon_env = {"WARREN_CONFIG": str(b.config_dir / f"agreement-{mode}.toml")}
            b.new_store()  # restarts B's daemon with that config
            connected()
            bd = netns.go_build(b, hosts, args.target, f"from peers, agreement {mode}", i, True)
            builds[mode].append(bd)
            log(
                f"run {i + 1}/{args.runs} B from A and C, agreement {mode}: {bd.wall_s:.3f} s, "
                f"{bd.stats.get('hits', 0)}/{bd.stats.get('gets', 0)} gets answered from peers "
                f"({bd.stats.get('peer_hits', 0)} waited on a peer, "
                f"{bd.stats.get('peer_read_ahead', 0)} read ahead; {netns.wait_note(bd)})"
            )
            wl = netns.go_build(b, hosts, args.target, "warm local", i, True)
            warm[mode].append(wl)
            log(f"run {i + 1}/{args.runs} B warm locally: {wl.wall_s:.3f} s")
    for h in hosts:
        h.daemon.stop()

    def med(xs: list[netns.Build], attr: str = "wall_s") -> float:
        return statistics.median(getattr(x, attr) for x in xs)

    def share(xs: list[netns.Build]) -> float:
        return statistics.median(x.peer_share for x in xs)

    warm_all = warm["off"] + warm["on"]
    summary = {
        "from_peers_off_s": med(builds["off"]),
        "from_peers_on_s": med(builds["on"]),
        "on_over_off": med(builds["on"]) / med(builds["off"]),
        "on_over_off_per_run": statistics.median(
            on.wall_s / off.wall_s for on, off in zip(builds["on"], builds["off"], strict=True)
        ),
        "warm_local_s": med(warm_all),
        "off_over_warm": med(builds["off"]) / med(warm_all),
        "on_over_warm": med(builds["on"]) / med(warm_all),
        "peer_share_off": share(builds["off"]),
        "peer_share_on": share(builds["on"]),
        "go_cpu_off_s": med(builds["off"], "cpu_s"),
        "go_cpu_on_s": med(builds["on"], "cpu_s"),
    }
    return {
        "summary": summary,
        "builds": {m: [asdict(x) for x in builds[m]] for m in MODES},
        "warm": {m: [asdict(x) for x in warm[m]] for m in MODES},
    }


def report(info: dict, args: argparse.Namespace, out: dict) -> None:
    s = out["summary"]
    print(f"date      {info['date']}")
    print(f"go        {info['go_version']}")
    print(f"warren    {info['warren_version']}, {info['warren_commit']}  ({info['warren']})")
    print(
        f"machine   {info['nproc']} CPUs, Linux {info['kernel']}; load average at start "
        f"{info['load_avg_at_start']}, at end {info['load_avg_at_end']}"
    )
    print(f"workload  go build {args.target}; B from two warm peers; {args.runs} runs per side")
    print()
    rows = [
        ("B from A and C, agreement off", f"{s['from_peers_off_s']:.3f} s"),
        ("B from A and C, agreement on", f"{s['from_peers_on_s']:.3f} s"),
        ("on / off (per run)", f"{s['on_over_off']:.2f}x ({s['on_over_off_per_run']:.2f}x)"),
        ("B warm locally", f"{s['warm_local_s']:.3f} s"),
        ("off / warm local", f"{s['off_over_warm']:.2f}x"),
        ("on / warm local", f"{s['on_over_warm']:.2f}x"),
        ("gets answered from peers, off / on", f"{s['peer_share_off']:.1%} / {s['peer_share_on']:.1%}"),
        ("go's CPU per build, off / on", f"{s['go_cpu_off_s']:.1f} / {s['go_cpu_on_s']:.1f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}   {value}")
    print()
    print("raw wall times in run order, s:")
    for mode in MODES:
        times = " ".join(f"{x['wall_s']:.3f}" for x in out["builds"][mode])
        print(f"  agreement {mode.ljust(3)}  {times}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="What agreement costs a build from peers.")
    common_args(p, 3, "timed runs per side")
    p.add_argument("--target", default="std", help="package pattern (default std)")
    p.add_argument("--daemon-log", default="info", help="WARREN_LOG for the daemons")
    p.add_argument(
        "--fs", choices=("ext4", "root"), default="ext4", help="see netns.make_filesystem"
    )
    p.add_argument("--fs-gib", type=int, default=24, help="size of the --fs ext4 image")
    args = parse_counts(p, argv, ("runs",))
    if not netns.enter("bench_agreement"):
        return 1
    try:
        go = resolve_go(args.go)
        warren = resolve_warren(args.warren)
        info = machine_info(go, warren)
        log(f"{info['go_version']}; warren {info['warren_version']}")
        scratch, filesystem = netns.scratch_dir(args)
        log(f"hosts' files on {filesystem}")
        out = bench(args, go, warren, scratch)
    except BenchError as e:
        print(f"bench_agreement: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_agreement: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        netns.CLEANUP.run()
    info["load_avg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report(info, args, out)
    if args.json:
        args.json.write_text(json.dumps({"info": info, **out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
