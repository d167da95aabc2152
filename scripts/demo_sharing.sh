#!/usr/bin/env bash
# The run behind the README's "When sharing does not work": three hosts in
# network namespaces on a private bridge (10.77.9.0/24, the LAN of
# scripts/netns.py; nothing touches the machine's own interfaces). alice
# and bob trust each other; bob also trusts carol, who has not added bob.
# alice builds std, then bob does, and bob runs `warren trace`, `warren
# why` and `warren doctor`.
#
# Needs root (namespaces). Usage: sudo scripts/demo_sharing.sh [WARREN]
# (default: target/release/warren; build it first).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
warren=$(realpath "${1:-$root/target/release/warren}")
go=$(bash "$root/scripts/go-toolchain.sh" | tail -1)
prefix=wdemo$$
work=$(mktemp -d)
pids=()

lan() { python3 "$root/scripts/netns.py" "$@"; }

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  lan down "$prefix" h1 h2 h3 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Namespaces ${prefix}h1, h2 and h3, at 10.77.9.1, .2 and .3.
lan up "$prefix" 9 h1 h2 h3 >/dev/null
for h in h1 h2 h3; do
  mkdir -p "$work/$h/home" "$work/$h/cfg/warren" "$work/$h/work"
done

# Run a command as host $1, with a home, store and Go cache of its own.
on() { (exec_on "$@"); }
# The same, in place of the calling (sub)shell, so a background one's PID
# is the command's.
exec_on() {
  local h=$1
  shift
  exec ip netns exec "$prefix$h" env -i PATH="$(dirname "$go"):/usr/bin:/bin" \
    HOME="$work/$h/home" XDG_CONFIG_HOME="$work/$h/cfg" WARREN_DIR="$work/$h/store" \
    GOCACHE="$work/$h/gocache" GOCACHEPROG="$warren" GOTOOLCHAIN=local \
    GOTELEMETRY=off GOFLAGS= "$@"
}
id_of() { on "$1" "$warren" id | sed -n 's/^peer ID: //p'; }

for h in h1 h2 h3; do
  on "$h" "$warren" init >/dev/null
  printf '[share]\nenabled = true\nautostart = false\n' >"$work/$h/cfg/warren/config.toml"
done
alice=$(id_of h1)
bob=$(id_of h2)
carol=$(id_of h3)
on h1 "$warren" peers add "$bob" --name bob >/dev/null
on h2 "$warren" peers add "$alice" --name alice >/dev/null
on h2 "$warren" peers add "$carol" --name carol >/dev/null
for h in h1 h2 h3; do
  exec_on "$h" "$warren" daemon </dev/null >/dev/null 2>"$work/$h/daemon.log" &
  pids+=($!)
done
sleep 4

(cd "$work/h1/work" && on h1 go build std)
echo '$ go build std && warren trace'
(cd "$work/h2/work" && on h2 go build std)
on h2 "$warren" trace
echo '$ WARREN_SHARE=0 go vet fmt && warren why'
(cd "$work/h2/work" && on h2 env WARREN_SHARE=0 go vet fmt)
on h2 "$warren" why
echo '$ warren doctor'
on h2 "$warren" doctor || echo "(exit $?)"
