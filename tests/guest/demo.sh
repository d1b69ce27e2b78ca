#!/usr/bin/env bash
# The xftrace demo, from a fresh Debian bookworm machine (run as root): build
# the patched guest kernel, the Debian VM image and xftrace, start libvirtd
# with xftrace's hook, define a Debian VM (q35, virtio disk and network,
# systemd, nginx) that boots the xftrace kernel, enroll it, `virsh start`
# it, trace sys_openat and sys_read by domain name while HTTP requests reach
# its nginx, and show the start of trace_graph.txt. Everything it set up
# (domain, disk copy, daemons it started, hook) is removed again at the end.
#
#   tests/guest/demo.sh            (XFTRACE_ACCEL=kvm|tcg to skip the KVM probe)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
say() { echo "demo: $*" >&2; }

tests/guest/install-deps.sh
kernel=$(guest-kernel/build.sh | tail -n 1)
say "guest kernel: $kernel"
image=$(tests/guest/make-debian-image.sh | tail -n 1)
say "Debian image: $image"
cargo build --release --locked --quiet
xftrace="$repo/target/release/xftrace"

work=$(mktemp -d /tmp/xftrace-demo-XXXXXX)
chmod 0700 "$work"
state="$work/state"
name=xftrace-demo
images=/var/lib/libvirt/images/xftrace-demo
hook=/etc/libvirt/hooks/qemu.d/xftrace
started=()
hook_backup=
cleanup() {
	virsh -q -c qemu:///system destroy "$name" >/dev/null 2>&1 || true
	virsh -q -c qemu:///system undefine "$name" >/dev/null 2>&1 || true
	for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
	if [ -n "$hook_backup" ]; then mv "$hook_backup" "$hook"; else rm -f "$hook"; fi
	rm -rf "$images"
}
trap cleanup EXIT

mkdir -p "$images"
cp "$kernel/bzImage" "$images/bzImage"
cp --sparse=always "$image/debian.img" "$images/debian.img"

# KVM if a probe guest boots under it, else TCG.
accel=${XFTRACE_ACCEL:-}
if [ -z "$accel" ]; then
	accel=tcg
	if [ -e /dev/kvm ]; then
		tests/guest/make-initramfs.sh "$work/probe.cpio.gz"
		timeout 20 qemu-system-x86_64 -accel kvm -m 256M -kernel "$images/bzImage" -initrd "$work/probe.cpio.gz" \
			-append "console=ttyS0 panic=-1 quiet" -display none -nodefaults -no-reboot \
			-serial file:"$work/probe.log" </dev/null >/dev/null 2>&1 || true
		grep -q XFTRACE-GUEST-READY "$work/probe.log" 2>/dev/null && accel=kvm
	fi
fi
say "guests run under $accel"

# The hook, then the daemons: libvirtd looks for hooks when it starts.
if [ -e "$hook" ]; then hook_backup="$work/hook.orig"; cp -p "$hook" "$hook_backup"; fi
libvirt-hooks/install.sh --bin "$xftrace" --state-dir "$state" >/dev/null
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! alive /run/virtlogd.pid; then virtlogd -d; sleep 0.5; started+=("$(cat /run/virtlogd.pid)"); fi
if alive /run/libvirtd.pid; then
	say "libvirtd was already running: the hook takes effect at its next restart"
else
	if [ "$accel" = tcg ] && [ -e /dev/kvm ]; then
		# This /dev/kvm hangs guests; keep libvirt's capability probe off it.
		unshare -m --propagation private sh -c 'mount --bind /dev/null /dev/kvm && exec libvirtd -d'
	else
		libvirtd -d
	fi
	for _ in $(seq 50); do alive /run/libvirtd.pid && break; sleep 0.2; done
	started+=("$(cat /run/libvirtd.pid)")
	for _ in $(seq 50); do virsh -q -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
fi

# Under TCG one vCPU: QEMU 7.2's multi-threaded TCG sometimes hangs an SMP
# guest while ftrace patches kernel text.
type=qemu vcpus=1
[ "$accel" = kvm ] && type=kvm vcpus=2
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The VM boots the xftrace kernel directly (the tests install it as a
# package through its own GRUB, with the Ansible role); its network is
# QEMU's user mode, with the guest's port 80 forwarded to 127.0.0.1.
cat >"$work/$name.xml" <<XML
<domain type='$type' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$name</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>$vcpus</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$images/bzImage</kernel>
    <cmdline>root=/dev/vda1 ro console=ttyS0</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='unsafe'/>
      <source file='$images/debian.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$work/console.log'/></serial>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=net0,hostfwd=tcp:127.0.0.1:$http-:80'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=net0,bus=pcie.0,addr=0x18'/>
  </qemu:commandline>
</domain>
XML
virsh -q -c qemu:///system define "$work/$name.xml" >/dev/null
x=("$xftrace" --state-dir "$state")
"${x[@]}" enroll "$name" --system-map "$kernel/System.map"
virsh -q -c qemu:///system start "$name"
say "waiting for $name to boot to nginx (under TCG, a minute or two)"
get() { (exec 3<>"/dev/tcp/127.0.0.1/$http" && printf 'GET %s HTTP/1.0\r\n\r\n' "$1" >&3 && head -c 12 <&3) 2>/dev/null; }
up=
for _ in $(seq 300); do
	case "$(get /)" in *" 200") up=1; break ;; esac
	sleep 1
done
[ -n "$up" ] || { tail -n 20 "$work/console.log" >&2; say "error: nginx in $name did not answer"; exit 1; }
"${x[@]}" --domain "$name" on sys_openat sys_read
for i in $(seq 40); do get "/?demo=$i" >/dev/null || true; get /missing >/dev/null || true; sleep 0.1; done
"${x[@]}" --domain "$name" status
"${x[@]}" list
"${x[@]}" --domain "$name" off --output "$work/trace_graph.txt"
echo
head -n 60 "$work/trace_graph.txt"
echo "..."
say "full trace: $work/trace_graph.txt ($(wc -l <"$work/trace_graph.txt") lines, $(grep -c '=>.*nginx-' "$work/trace_graph.txt" || true) switches to nginx); key log: $work/trace_graph.klog"
