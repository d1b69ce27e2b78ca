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

# cargo-deb for the host package's test (packaging/build-deb.sh), built once
# into ~/.cargo/bin.
if ! command -v cargo-deb >/dev/null; then
	say "installing cargo-deb (cargo install)"
	cargo install --locked cargo-deb@3.8.0
fi

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
	# A lane still running (an error or Ctrl-C in the other) ends too.
	if [[ -n ${pid_a:-} ]]; then kill "$pid_a" 2>/dev/null || true; fi

	if [[ -s $timings ]]; then
		echo
		echo "tests/run.sh: time per test (s), slowest first:"
		sort -t $'\t' -k3,3 -g -r "$timings" |
			awk -F '\t' '{ printf "  %8.1f  %-6s  %-13s %s\n", $3, $4, $1, $2; if ($4 != "phase") t += $3 }
				END { printf "  %8.1f  sum of the rows above but phases (the lanes overlap: more than the wall time)\n", t }'
	fi
	rm -rf "$timings" "$accel_file" "${logs:-}" "${own:-}"
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
logs=$(mktemp -d "${TMPDIR:-/tmp}/xftrace-lanes.XXXXXX")

# The test binaries run in two lanes at once, one guest each at a time
# (TCG guests are single-threaded; two cores run two). Lane A holds the
# Debian VM's test, which owns the machine's libvirtd; lane B the unit
# tests first, then everything else, e2e_libvirt and e2e_ansible each with
# a libvirt of its own (tests/own-libvirt.sh: a private mount namespace,
# its own copy of /etc/libvirt, taken now; the Ansible role's tests
# install the hook and settings into that copy, the host package into the
# machine, which no other test uses). About 2 300 s each, warm.
lane_a=(e2e_debian)
own_libvirt=(e2e_libvirt e2e_ansible)
own=$(mktemp -d /var/lib/xftrace-own-libvirt.XXXXXX)
for name in "${own_libvirt[@]}"; do
	mkdir "$own/$name"
	cp -a /etc/libvirt "$own/$name/etc"
	# Without xftrace's hook: those tests install their own, and refuse to
	# start over one they did not put there (an installed xftrace, or the
	# hook of a test run that was killed before it could put things back).
	rm -f "$own/$name/etc/hooks/qemu.d/xftrace"
done
if [[ -e /etc/libvirt/hooks/qemu.d/xftrace ]]; then
	say "note: /etc/libvirt/hooks/qemu.d/xftrace exists on this machine (an installed xftrace, or left by an interrupted test run); e2e_debian puts its own in place and restores this one when it ends"
fi
mapfile -t built < <(cargo test --locked "${features[@]}" --bins --tests --no-run \
	--message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and "lib" not in m["target"]["kind"]:
        print(m["target"]["name"] + "\t" + m["executable"])
')
((${#built[@]})) || { say "no test binaries were built"; exit 1; }
a=() b=()
for nb in "${built[@]}"; do
	name=${nb%%$'\t'*}
	if [[ " ${lane_a[*]} " == *" $name "* ]]; then a+=("$nb"); else b+=("$nb"); fi
done
lane() { # lane NAME BINARY...: each binary in turn, into $logs/NAME.log
	local name=$1 rc=0 nb
	shift
	for nb in "$@"; do
		echo "     Running ${nb%%$'\t'*} (${nb#*$'\t'})"
		local wrap=()
		if [[ " ${own_libvirt[*]} " == *" ${nb%%$'\t'*} "* ]]; then
			wrap=(tests/own-libvirt.sh "$own/${nb%%$'\t'*}")
		fi
		"${wrap[@]}" "${nb#*$'\t'}" "${args[@]}" || rc=1
	done >"$logs/$name.log" 2>&1
	return "$rc"
}
args=("$@")
say "lane A: ${a[*]%%$'\t'*}; lane B: ${b[*]%%$'\t'*}"
t=$(date +%s)
lane A "${a[@]}" &
pid_a=$!
rc_b=0
cargo test --locked "${features[@]}" --lib -- "$@" >"$logs/lib.log" 2>&1 || rc_b=1
step "unit tests (cargo test --lib, all of them; in lane B)" $(($(date +%s) - t))
cat "$logs/lib.log"
lane B "${b[@]}" || rc_b=$?
step "lane B, wall time (at once with lane A)" $(($(date +%s) - t))
cat "$logs/B.log"
rc_a=0
wait "$pid_a" || rc_a=$?
step "lane A, wall time" $(($(date +%s) - t))
cat "$logs/A.log"
# Where each failed test panicked, printed again last: a CI log cut in
# the middle keeps its end.
panics=$(grep -h -A6 'panicked at' "$logs"/*.log | cut -c1-400 | head -n 80 || true)
read -r passed failed < <(cat "$logs"/*.log | awk '/^test result: /{ for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i - 1); if ($(i) ~ /^failed;?$/) f += $(i - 1) } } END { print p + 0, f + 0 }')
say "done in $(($(date +%s) - start)) s"
trap - EXIT
table
rc=$((rc_a | rc_b))
((rc == 0)) || failed=$((failed > 0 ? failed : 1))
if [[ -n $panics ]]; then
	echo
	echo "tests/run.sh: where the failed tests panicked (at most 80 lines):"
	echo "$panics"
fi
echo "tests: $passed passed, $failed failed"
exit "$rc"
