#!/usr/bin/env bash
# The xftrace demo, from a fresh Debian bookworm machine (run as root): build
# the patched guest kernel and xftrace, boot a small demo guest under QEMU with
# its RAM in a shared file, trace sys_openat and sys_read for a few seconds
# while the guest runs, and show the start of trace_graph.txt.
#
#   tests/guest/demo.sh            (XFTRACE_ACCEL=kvm|tcg to skip the KVM probe)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
say() { echo "demo: $*" >&2; }

tests/guest/install-deps.sh
kernel=$(guest-kernel/build.sh | tail -n 1)
say "guest kernel: $kernel"
cargo build --release --locked --quiet
xftrace="$repo/target/release/xftrace"

work=$(mktemp -d /tmp/xftrace-demo-XXXXXX)
chmod 0700 "$work"
tests/guest/make-initramfs.sh "$work/initrd.gz"
qemu_pid=
cleanup() { [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null; rm -f "$work/pc.ram"; }
trap cleanup EXIT

boot() { # accel seconds
	rm -f "$work/console.log" "$work/pc.ram"
	qemu-system-x86_64 -machine pc -accel "$1" -cpu max -m 512M -smp 2 \
		-object memory-backend-file,id=pc.ram,size=512M,mem-path="$work/pc.ram",share=on,prealloc=on \
		-machine memory-backend=pc.ram \
		-kernel "$kernel/bzImage" -initrd "$work/initrd.gz" \
		-append "console=ttyS0 panic=-1 quiet xftrace_demo" \
		-display none -no-reboot -nodefaults \
		-serial file:"$work/console.log" -serial null </dev/null >"$work/qemu.log" 2>&1 &
	qemu_pid=$!
	for _ in $(seq $((5 * $2))); do
		grep -q XFTRACE-GUEST-READY "$work/console.log" 2>/dev/null && return 0
		kill -0 "$qemu_pid" 2>/dev/null || return 1
		sleep 0.2
	done
	kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null || true; qemu_pid=
	return 1
}

accel=${XFTRACE_ACCEL:-}
if [ -z "$accel" ]; then
	if [ -e /dev/kvm ] && boot kvm 20; then accel=kvm; else accel=tcg; fi
fi
if [ -z "$qemu_pid" ]; then
	boot "$accel" 180 || { cat "$work/qemu.log" "$work/console.log" >&2; say "the demo guest did not boot"; exit 1; }
fi
say "demo guest booted under $accel: $(grep -a XFTRACE-GUEST-READY "$work/console.log")"

x=("$xftrace" --mem-file "$work/pc.ram" --system-map "$kernel/System.map" --state-dir "$work/state")
"${x[@]}" on sys_openat sys_read
sleep 4
"${x[@]}" status
"${x[@]}" off --output "$work/trace_graph.txt"
echo
head -n 45 "$work/trace_graph.txt"
echo "..."
say "full trace: $work/trace_graph.txt ($(wc -l <"$work/trace_graph.txt") lines); Klog: $work/trace_graph.klog"
