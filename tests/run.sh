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

start=$(date +%s)
XFTRACE_KERNEL_DIR=$(guest-kernel/build.sh | tail -n 1)
export XFTRACE_KERNEL_DIR
say "guest kernel: $XFTRACE_KERNEL_DIR ($(($(date +%s) - start)) s)"
t=$(date +%s)
XFTRACE_DEBIAN_IMAGE=$(tests/guest/make-debian-image.sh | tail -n 1)
export XFTRACE_DEBIAN_IMAGE
say "Debian image: $XFTRACE_DEBIAN_IMAGE ($(($(date +%s) - t)) s)"

cargo build --locked --all-targets
cargo test --locked -- "$@"
say "done in $(($(date +%s) - start)) s"
