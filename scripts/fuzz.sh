#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each
# (default 5), starting from its committed seed corpus; new inputs go to a
# scratch corpus under fuzz/target/, never into the committed seeds.
# cargo-fuzz needs a nightly toolchain: without one this says so and exits 0,
# so the rest of the suite still runs; CI machines have one.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_RUNS=1500000 scripts/fuzz.sh 0 summary   # a fixed number of runs
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-5}
shift || true
if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "fuzz: no nightly toolchain (rustup toolchain install nightly); fuzz targets not run" >&2
	exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz: installing cargo-fuzz" >&2
	cargo install --quiet --locked cargo-fuzz
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build >/dev/null 2>&1 || cargo +nightly fuzz build
for target in "${targets[@]}"; do
	scratch="target/corpus/$target"
	mkdir -p "$scratch"
	if [ -n "${FUZZ_RUNS:-}" ]; then
		limit=(-runs="$FUZZ_RUNS")
	else
		limit=(-max_total_time="$seconds")
	fi
	# libFuzzer prints its stats on stderr; the last line says how many runs.
	log="target/fuzz-$target.log"
	if ! cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
		"${limit[@]}" -rss_limit_mb=2048 >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		echo "fuzz: $target FAILED (log: fuzz/$log; crash inputs in fuzz/artifacts/$target/)" >&2
		exit 1
	fi
	echo "fuzz: $target ok, $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1)s" >&2
done
