#!/usr/bin/env bash
# The clean-guest soak, long and resumable. Every check must find nothing.
#
#   tests/soak.sh [N]                    raw QEMU: N clean checks (default
#                                        1000) of a 2-vCPU guest (tests/soak.rs)
#   tests/soak.sh --debian N [--cloud]   the Debian VM under libvirt: the
#                                        real-guest test (tests/e2e_debian.rs)
#                                        with N more clean checks, rebooting
#                                        every 250; small kernel profile, or
#                                        the cloud one
#
# They take boots of 200 (raw QEMU) or 250 (Debian) checks (XFTRACE_SOAK_PER_BOOT), under file, process
# and network workloads (and HTTP on Debian), half of them with the default
# 3 s call-flow window (XFTRACE_SOAK_INTEGRITY_ONLY=1: none of them, the integrity
# checks alone). Progress and every finding are kept in a state file
# (default ~/.cache/xftrace/soak-state.json, soak-debian-state.json): run it
# again to add to it, or remove the file to start over.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cache=${XDG_CACHE_HOME:-$HOME/.cache}/xftrace
mkdir -p "$cache"
tests/guest/install-deps.sh
if [ "${1:-}" = --debian ]; then
	n=${2:?tests/soak.sh --debian N [--cloud]}
	profile=()
	[ "${3:-}" = --cloud ] && profile=(--profile cloud)
	venv=${XFTRACE_ANSIBLE_VENV:-$cache/ansible-venv}
	if ! "$venv/bin/ansible-playbook" --version >/dev/null 2>&1; then
		python3 -m venv "$venv"
		"$venv/bin/pip" install -q 'ansible-core>=2.16,<2.20' 'ansible-lint>=25,<27'
	fi
	export XFTRACE_ANSIBLE_BIN="$venv/bin"
	XFTRACE_KERNEL_DIR=$(guest-kernel/build.sh "${profile[@]}" | tail -n 1)
	XFTRACE_DEBIAN_IMAGE=$(tests/guest/make-debian-image.sh | tail -n 1)
	export XFTRACE_KERNEL_DIR XFTRACE_DEBIAN_IMAGE
	export XFTRACE_SOAK_DEBIAN_CHECKS=$n
	export XFTRACE_SOAK_DEBIAN_STATE=${XFTRACE_SOAK_DEBIAN_STATE:-$cache/soak-debian-state.json}
	echo "tests/soak.sh: $n checks of the Debian VM, state in $XFTRACE_SOAK_DEBIAN_STATE" >&2
	cargo build --locked --all-targets --features fuzzing,vm-tests
	exec cargo test --locked --features vm-tests --test e2e_debian -- --nocapture
fi
XFTRACE_KERNEL_DIR=$(guest-kernel/build.sh | tail -n 1)
export XFTRACE_KERNEL_DIR
export XFTRACE_SOAK_CHECKS=${1:-1000}
export XFTRACE_SOAK_STATE=${XFTRACE_SOAK_STATE:-$cache/soak-state.json}
echo "tests/soak.sh: $XFTRACE_SOAK_CHECKS checks, state in $XFTRACE_SOAK_STATE" >&2
cargo build --locked --all-targets --features fuzzing,vm-tests
cargo test --locked --features vm-tests --test soak -- --nocapture
