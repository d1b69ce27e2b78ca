#!/usr/bin/env bash
# The xftrace test suite, from a fresh Debian bookworm machine (run as root):
# installs the Debian packages it needs, builds the guest kernel (cached under
# ~/.cache/xftrace), then runs the unit tests and the end-to-end tests that
# boot the patched guest under qemu-system-x86_64.
#
#   tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "tests/run.sh: $*" >&2; }

tests/guest/install-deps.sh

start=$(date +%s)
XFTRACE_KERNEL_DIR=$(guest-kernel/build.sh | tail -n 1)
export XFTRACE_KERNEL_DIR
say "guest kernel: $XFTRACE_KERNEL_DIR ($(($(date +%s) - start)) s)"

cargo build --locked --all-targets
cargo test --locked -- "$@"
say "done in $(($(date +%s) - start)) s"
