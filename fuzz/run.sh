#!/usr/bin/env bash
# Fuzz every target of xftrace's hostile-input parsers (src/fuzzing.rs) with
# libFuzzer, a bounded number of runs each, then minimize the corpus. Crash
# inputs are copied to fuzz/regressions/TARGET/, which `cargo test` replays
# on stable (tests/fuzz_corpus.rs), like the corpus.
#
#   fuzz/run.sh [RUNS] [TARGET...]     RUNS per target, default 1000000
#
# Needs the nightly toolchain and cargo-fuzz (installed if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-1000000}
shift || true
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
mkdir -p fuzz/logs
cargo run --quiet --features fuzzing --example fuzz_seeds -- fuzz/seeds
total=0
status=0
for t in "${targets[@]}"; do
	mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
	log="fuzz/logs/$t.log"
	start=$(date +%s)
	# -rss_limit_mb: an input that makes xftrace allocate more is a finding.
	if (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" "../fuzz/seeds/$t" -- \
		-runs="$runs" -rss_limit_mb=1024 -max_len=16384 -timeout=10 -print_final_stats=1) >"$log" 2>&1; then
		result=ok
	else
		result=FAILED
		status=1
		mkdir -p "fuzz/regressions/$t"
		cp fuzz/artifacts/"$t"/* "fuzz/regressions/$t/" 2>/dev/null || true
	fi
	execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
	total=$((total + ${execs:-0}))
	echo "fuzz: $t: ${execs:-?} executions in $(($(date +%s) - start)) s, $result (log: $log)"
	(cd fuzz && cargo +nightly fuzz cmin "$t" "corpus/$t" -- -rss_limit_mb=1024) >>"$log" 2>&1 || true
done
echo "fuzz: $total executions in total"
exit $status
