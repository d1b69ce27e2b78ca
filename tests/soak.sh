#!/usr/bin/env bash
# The clean-guest soak (tests/soak.rs), long and resumable: N clean checks
# (default 1000) of a 2-vCPU guest over boots of 250 checks, under file,
# process and network workloads, half of them with the default 3 s call-flow
# window. Progress and every finding are kept in the state file (default
# ~/.cache/xftrace/soak-state.json); run it again to go on where it stopped,
# or remove the file to start over.
#
#   tests/soak.sh [N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tests/guest/install-deps.sh
XFTRACE_KERNEL_DIR=$(guest-kernel/build.sh | tail -n 1)
export XFTRACE_KERNEL_DIR
export XFTRACE_SOAK_CHECKS=${1:-1000}
export XFTRACE_SOAK_STATE=${XFTRACE_SOAK_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/xftrace/soak-state.json}
mkdir -p "$(dirname "$XFTRACE_SOAK_STATE")"
echo "tests/soak.sh: $XFTRACE_SOAK_CHECKS checks, state in $XFTRACE_SOAK_STATE" >&2
cargo build --locked --all-targets
cargo test --locked --test soak -- --nocapture
