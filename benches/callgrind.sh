#!/usr/bin/env bash
# Instructions per record of the host's hot paths (`benches/decode.rs`,
# `benches/collect.rs`),
# counted by callgrind: unlike timings on a shared machine, they repeat
# exactly, so a change can be judged by them.
#
#   benches/callgrind.sh [SYSTEM.MAP] [RECORDS]
#
# Each phase runs on RECORDS records (default 200 000) and on none; the
# difference divided by RECORDS is what one record costs. Render is given
# after decoding (its input).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
map=${1:-${XFTRACE_KERNEL_DIR:+$XFTRACE_KERNEL_DIR/System.map}}
n=${2:-200000}
command -v valgrind >/dev/null || {
	[ "$(id -u)" = 0 ] || { echo "callgrind.sh: install valgrind" >&2; exit 1; }
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >&2
}
bin=$(cargo bench --bench decode --no-run --message-format=json |
	sed -n 's/.*"executable":"\([^"]*decode-[^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "callgrind.sh: no bench binary" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ir() { # PHASE RECORDS -> instructions
	valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$bin" ${map:+"$map"} \
		--phase "$1" --records "$2" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
	sed -n 's/^summary: //p' "$tmp/out"
}
for phase in none decode symbolize render; do
	eval "full_$phase=$(ir $phase "$n")"
	eval "base_$phase=$(ir $phase 0)"
done
per() { awk "BEGIN { printf \"%.1f\", ($1) / $n }"; }
echo "instructions per record ($n records, map ${map:-synthetic}):"
echo "  decode:           $(per "($full_decode - $base_decode) - ($full_none - $base_none)")"
echo "  decode+symbolize: $(per "($full_symbolize - $base_symbolize) - ($full_none - $base_none)")"
echo "  render:           $(per "($full_render - $base_render) - ($full_decode - $base_decode)")"
# The collector's read path: rings filled and drained, minus filled only.
cbin=$(cargo bench --features fuzzing --bench collect --no-run --message-format=json |
	sed -n 's/.*"executable":"\([^"]*collect-[^"]*\)".*/\1/p' | tail -n 1)
cir() {
	valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$cbin" --laps 10 "$@" \
		>/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
	sed -n 's/^summary: //p' "$tmp/out"
}
read_all=$(cir)
fill_only=$(cir --no-poll)
echo "  ring read+verify: $(awk "BEGIN { printf \"%.1f\", ($read_all - $fill_only) / (10 * 2 * 16384) }")"
