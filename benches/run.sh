#!/usr/bin/env bash
# Every benchmark of README.md's Benchmarks table, one after another, with
# the figures of each on standard output (logs on standard error).
#
#   benches/run.sh [--unpatched]
#
# XFTRACE_KERNEL_DIR picks the guest kernel build, as for the tests (its
# System.map is the decode bench's real map); --unpatched also measures
# the guest with the kernel built without the xftrace patches (built and
# cached by guest-kernel/build.sh on first use). The guest bench also runs
# with --dkms: the xftrace-dkms module on Debian's stock kernel.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
unpatched=()
case "${1:-}" in
--unpatched) unpatched=(--unpatched) ;;
"") ;;
*) echo "usage: benches/run.sh [--unpatched]" >&2; exit 2 ;;
esac
map=${XFTRACE_KERNEL_DIR:+$XFTRACE_KERNEL_DIR/System.map}
run() { echo "== $*"; "$@"; }
run cargo bench --bench guest -- --rounds 3 "${unpatched[@]}"
run cargo bench --bench guest -- --rounds 3 --dkms
run cargo bench --bench workloads -- --rounds 3
run cargo bench --bench decode -- ${map:+"$map"}
run cargo bench --features fuzzing --bench collect
run cargo bench --features fuzzing --bench sustain
run cargo bench --features fuzzing --bench sustain -- --spool-dir "${TMPDIR:-/var/tmp}"
run cargo bench --features fuzzing --bench locate
run cargo bench --bench check
run benches/callgrind.sh ${map:+"$map"}
