#!/usr/bin/env bash
# The xftrace test suite, from a fresh Debian bookworm machine (run as root):
# installs the Debian packages it needs, builds the guest kernel (small
# profile) and the Debian VM image (both cached under ~/.cache/xftrace), then
# runs the unit tests and the end-to-end tests that boot patched guests
# under qemu-system-x86_64 and a real libvirtd.
#
#   tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "tests/run.sh: $*" >&2; }

tests/guest/install-deps.sh

# Ansible for the role's tests, from PyPI, in a venv outside the repository.
venv=${XFTRACE_ANSIBLE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/xftrace/ansible-venv}
if ! "$venv/bin/ansible-playbook" --version >/dev/null 2>&1 || ! "$venv/bin/ansible-lint" --version >/dev/null 2>&1; then
	say "installing ansible-core and ansible-lint into $venv"
	python3 -m venv "$venv"
	"$venv/bin/pip" install -q 'ansible-core>=2.16,<2.20' 'ansible-lint>=25,<27'
fi
export XFTRACE_ANSIBLE_BIN="$venv/bin"

# Per-test times (tests/common: every guest test and the slow static ones
# append a line) and the set-up steps, printed as a table at the end,
# whether the run passed or not.
timings=$(mktemp "${TMPDIR:-/tmp}/xftrace-timings.XXXXXX")
export XFTRACE_TEST_TIMINGS=$timings
# Whether guests run under KVM or TCG, probed once for every test binary
# (the probe waits 20 s where /dev/kvm hangs guests).
accel_file=$(mktemp "${TMPDIR:-/tmp}/xftrace-accel.XXXXXX")
export XFTRACE_ACCEL_FILE=$accel_file
step() { printf 'setup\t%s\t%s\tok\n' "$1" "$2" >>"$timings"; }
table() {
	local rc=$?
	if [[ -s $timings ]]; then
		echo
		echo "tests/run.sh: time per test (s), slowest first:"
		sort -t $'\t' -k3,3 -g -r "$timings" |
			awk -F '\t' '{ printf "  %8.1f  %-6s  %-13s %s\n", $3, $4, $1, $2; t += $3 }
				END { printf "  %8.1f  total of the rows above\n", t }'
	fi
	rm -f "$timings" "$accel_file"
	return "$rc"
}
trap table EXIT

start=$(date +%s)
XFTRACE_KERNEL_DIR=$(guest-kernel/build.sh | tail -n 1)
export XFTRACE_KERNEL_DIR
step "guest kernel (build or cache)" $(($(date +%s) - start))
say "guest kernel: $XFTRACE_KERNEL_DIR ($(($(date +%s) - start)) s)"
t=$(date +%s)
XFTRACE_DEBIAN_IMAGE=$(tests/guest/make-debian-image.sh | tail -n 1)
export XFTRACE_DEBIAN_IMAGE
step "Debian image (build or cache)" $(($(date +%s) - t))
say "Debian image: $XFTRACE_DEBIAN_IMAGE ($(($(date +%s) - t)) s)"

# `vm-tests` turns on the tests that boot guests, build kernels or start
# libvirtd; `fuzzing` the test kit the fuzz corpus replay and benches use.
features=(--features fuzzing,vm-tests)
t=$(date +%s)
cargo build --locked --all-targets "${features[@]}"
step "cargo build --all-targets" $(($(date +%s) - t))
t=$(date +%s)
cargo test --locked "${features[@]}" --lib -- "$@"
step "unit tests (cargo test --lib, all of them)" $(($(date +%s) - t))
cargo test --locked "${features[@]}" --bins --test '*' -- "$@"
say "done in $(($(date +%s) - start)) s"
