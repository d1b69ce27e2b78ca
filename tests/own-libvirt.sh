#!/usr/bin/env bash
# Run a test binary with a libvirt of its own, beside the machine's:
#
#   tests/own-libvirt.sh ROOT COMMAND [ARG...]
#
# In a private mount namespace, ROOT/etc (a copy of /etc/libvirt that the
# caller took before anything changed it) is mounted on /etc/libvirt, and
# empty directories of ROOT on /run (pid files and sockets: the harness
# finds its daemons at /run/libvirtd.pid and /run/virtlogd.pid),
# /var/lib/libvirt/qemu, /var/log/libvirt and /var/cache/libvirt. The
# libvirtd and virtlogd the command starts there see only its domains and
# its hook, so tests/run.sh can run two binaries that each own a libvirtd
# at once. Domain names and image directories carry the test process's
# PID, so they do not meet either. ROOT is the caller's to remove.
set -euo pipefail

root=${1:?usage: own-libvirt.sh ROOT COMMAND [ARG...]}
shift
(($#)) || {
	echo "own-libvirt.sh: no command" >&2
	exit 2
}
[[ -d $root/etc ]] || {
	echo "own-libvirt.sh: $root/etc is not a copy of /etc/libvirt" >&2
	exit 2
}
for d in run qemu log cache; do
	mkdir -p "$root/$d"
done
chmod 0755 "$root/run" "$root/log"
chmod 0711 "$root/cache"
chown libvirt-qemu:libvirt-qemu "$root/qemu"
chmod 0750 "$root/qemu"
mkdir -p -m 1777 "$root/run/lock"

# shellcheck disable=SC2016 # expanded by the inner shell
exec unshare -m --propagation private bash -c '
set -e
root=$1
shift
mount --bind "$root/etc" /etc/libvirt
mount --bind "$root/run" /run
mount --bind "$root/qemu" /var/lib/libvirt/qemu
mount --bind "$root/log" /var/log/libvirt
mount --bind "$root/cache" /var/cache/libvirt
exec "$@"' own-libvirt "$root" "$@"
