#!/usr/bin/env bash
# Build the test/demo guest's initramfs (busybox + tests/guest/init), with
# any extra FILEs (test kernel modules, say) in /lib/xftrace-test/.
#   tests/guest/make-initramfs.sh OUTPUT.cpio.gz [FILE...]
set -euo pipefail
out=$1
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
busybox=/bin/busybox
if ! [ -x "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
	dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || {
		[ "$(id -u)" = 0 ] || { echo "make-initramfs: install busybox-static" >&2; exit 1; }
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends busybox-static cpio >&2
	}
fi
root=$(mktemp -d)
chmod 0755 "$root" # a root file system anyone may traverse, as on any system
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 "$here/init" "$root/init"
if (($#)); then
	mkdir -p "$root/lib/xftrace-test"
	cp "$@" "$root/lib/xftrace-test/"
fi
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) >"$out.tmp"
mv "$out.tmp" "$out"
