#!/usr/bin/env bash
# Run every fuzz target (src/testkit/fuzz.rs) for a set time and print, per
# target, the executions, executions per second and crashes: the figures
# README.md's fuzzing section states. The targets are built once, then run
# one after another (one core each) from a scratch copy of their corpus and
# seeds, so the measurement leaves fuzz/corpus as it was. libFuzzer stops a
# target at its first crash: such a target shows 1 and its input is copied
# to fuzz/regressions/TARGET/, which `cargo test --features fuzzing`
# replays (fuzz/run.sh grows and minimizes the corpus).
#
#   fuzz/run-all.sh [SECONDS] [TARGET...]   SECONDS per target, default 60
#
# Needs the nightly toolchain and cargo-fuzz (installed if missing).
# CARGO_TARGET_DIR, if set, is where the targets are built.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-60}
shift || true
[[ $secs =~ ^[1-9][0-9]*$ ]] || {
	echo "usage: fuzz/run-all.sh [SECONDS] [TARGET...]" >&2
	exit 2
}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo run --quiet --features fuzzing --example fuzz_seeds -- "$work/seeds"
(cd fuzz && cargo +nightly fuzz build) >"$work/build.log" 2>&1 || {
	cat "$work/build.log" >&2
	exit 1
}
printf '%-14s %12s %10s %8s\n' target executions exec/s crashes
total=0
status=0
for t in "${targets[@]}"; do
	mkdir -p "$work/corpus/$t" "$work/seeds/$t" "fuzz/artifacts/$t"
	cp -r "fuzz/corpus/$t/." "$work/corpus/$t/" 2>/dev/null || true
	touch "$work/stamp"
	log="$work/$t.log"
	# The limits of fuzz/run.sh: an input that makes xftrace allocate more
	# than 1 GiB or take 10 s is a finding.
	(cd fuzz && cargo +nightly fuzz run "$t" "$work/corpus/$t" "$work/seeds/$t" -- \
		-max_total_time="$secs" -rss_limit_mb=1024 -max_len=16384 -timeout=10 \
		-print_final_stats=1) >"$log" 2>&1 || true
	execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
	ran=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o "[0-9]*" | tail -1 || true)
	ran=${ran:-$secs}
	((ran > 0)) || ran=1
	mapfile -t found < <(find "fuzz/artifacts/$t" -type f -newer "$work/stamp")
	if ((${#found[@]})); then
		status=1
		mkdir -p "fuzz/regressions/$t"
		cp "${found[@]}" "fuzz/regressions/$t/"
	elif [[ -z $execs ]]; then
		echo "fuzz: $t did not run:" >&2
		tail -20 "$log" >&2
		status=1
	fi
	total=$((total + ${execs:-0}))
	printf '%-14s %12s %10s %8s\n' "$t" "${execs:-?}" "$((${execs:-0} / ran))" "${#found[@]}"
done
printf '%-14s %12s\n' total "$total"
exit $status
