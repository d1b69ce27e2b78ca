#!/usr/bin/env bash
# The release run (opt-in; an hour or two on two cores the first time): the
# production guest kernel (`guest-kernel/build.sh --profile cloud`, Debian's
# own configuration for VMs with BTF, debug info and signed modules) as
# Debian packages, then the real-guest end-to-end test with it: the Ansible
# role installs those packages in the Debian VM over SSH and reboots it,
# xftrace traces nginx and systemd in it, 20 clean checks find nothing, and
# every test rootkit, built against the cloud headers package, is found.
#
#   tests/release.sh [extra cargo test arguments]
#
# XFTRACE_JOBS sets the build's parallelism (default: every CPU). The build
# resumes where it stopped if interrupted, and its tree is kept afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { echo "tests/release.sh: $*" >&2; }

tests/guest/install-deps.sh
venv=${XFTRACE_ANSIBLE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/xftrace/ansible-venv}
if ! "$venv/bin/ansible-playbook" --version >/dev/null 2>&1; then
	say "installing ansible-core into $venv"
	python3 -m venv "$venv"
	"$venv/bin/pip" install -q 'ansible-core>=2.16,<2.20' 'ansible-lint>=25,<27'
fi
export XFTRACE_ANSIBLE_BIN="$venv/bin"

start=$(date +%s)
XFTRACE_KERNEL_DIR=$(guest-kernel/build.sh --profile cloud | tail -n 1)
export XFTRACE_KERNEL_DIR
say "cloud kernel: $XFTRACE_KERNEL_DIR ($(($(date +%s) - start)) s)"
XFTRACE_DEBIAN_IMAGE=$(tests/guest/make-debian-image.sh | tail -n 1)
export XFTRACE_DEBIAN_IMAGE

cargo build --locked --all-targets --features fuzzing,vm-tests
cargo test --locked --features vm-tests --test e2e_debian --test kernel_build -- --nocapture "$@"
say "done in $(($(date +%s) - start)) s"
