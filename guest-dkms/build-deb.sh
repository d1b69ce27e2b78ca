#!/bin/bash
# Build the xftrace-dkms Debian package (Architecture: all) from this
# directory: the module's source under /usr/src/xftrace-VERSION for DKMS,
# which builds it against each installed kernel's headers, and
# /etc/modules-load.d/xftrace.conf, which loads it at boot.
#
#   guest-dkms/build-deb.sh OUTDIR    # prints the path of the .deb
#
# VERSION is the xftrace crate's (Cargo.toml). dpkg-deb builds it from a
# staged tree: the package has no compiled content, so debhelper's
# machinery would add nothing but build dependencies.
set -euo pipefail
die() { echo "build-deb.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: build-deb.sh OUTDIR"
here=$(cd "$(dirname "$0")" && pwd)
out=$1
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/../Cargo.toml" | head -n1)
[[ $version =~ ^[0-9][0-9a-z.+~]*$ ]] || die "no usable version in Cargo.toml: '$version'"
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
src=$root/usr/src/xftrace-$version
install -d -m 0755 "$src" "$root/DEBIAN" "$root/etc/modules-load.d" "$root/usr/share/doc/xftrace-dkms"
install -m 0644 "$here/Makefile" "$here/xftrace_main.c" "$here/xftrace_probe.c" "$src/"
sed "s/@VERSION@/$version/" "$here/dkms.conf" >"$src/dkms.conf"
chmod 0644 "$src/dkms.conf"
printf '# xftrace-dkms: the tracer a KVM host running xftrace reads (see xftrace docs/abi.md)\nxftrace\n' \
	>"$root/etc/modules-load.d/xftrace.conf"
cat >"$root/usr/share/doc/xftrace-dkms/copyright" <<'END'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: xftrace

Files: *
Copyright: xftrace developers
License: GPL-2.0-only
 On Debian systems, the full text of the GNU General Public License
 version 2 can be found in /usr/share/common-licenses/GPL-2.
END
cat >"$root/DEBIAN/control" <<END
Package: xftrace-dkms
Version: $version-1
Architecture: all
Section: kernel
Priority: optional
Maintainer: xftrace developers <xftrace@localhost>
Depends: dkms, kmod
Recommends: linux-headers-cloud-amd64 | linux-headers-amd64
Installed-Size: $(du -sk "$root/usr" "$root/etc" | awk '{s += $1} END {print s}')
Description: xftrace's guest side for stock kernels (DKMS module)
 Lets a KVM host that runs xftrace trace chosen kernel functions of this
 guest and read the records straight from the guest's RAM, without pausing
 it: a control block the host writes commands and keys into, and per-CPU
 rings of keyed records, through the kernel's own function graph tracer.
 The guest runs no agent and needs no network for it.
 .
 DKMS builds the module against each installed kernel's headers. It does
 not load on xftrace's own kernel, which has the tracer built in.
END
echo /etc/modules-load.d/xftrace.conf >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<END
#!/bin/sh
set -e
name=xftrace
version=$version
if [ "\$1" = configure ]; then
	dkms status -m "\$name" -v "\$version" | grep -q . || dkms add -m "\$name" -v "\$version"
	# Every installed kernel that has its headers gets the module.
	for d in /lib/modules/*; do
		k=\${d##*/}
		[ -e "\$d/build/include" ] || continue
		dkms status -m "\$name" -v "\$version" -k "\$k" | grep -q installed && continue
		dkms install -m "\$name" -v "\$version" -k "\$k" ||
			echo "xftrace-dkms: could not build the module for \$k (dkms's make.log says why)" >&2
	done
	# The running kernel's tracer, now (it refuses xftrace's own kernel).
	if [ -e "/lib/modules/\$(uname -r)/updates/dkms/\$name.ko" ] && [ ! -d "/sys/module/\$name" ]; then
		modprobe "\$name" || echo "xftrace-dkms: the module did not load: see dmesg" >&2
	fi
fi
exit 0
END
cat >"$root/DEBIAN/prerm" <<END
#!/bin/sh
set -e
name=xftrace
version=$version
case "\$1" in
remove|upgrade|deconfigure)
	# Unloading stops the tracer; the host reports it as such.
	if [ -d "/sys/module/\$name" ]; then
		modprobe -r "\$name" || echo "xftrace-dkms: the module is still loaded (in use)" >&2
	fi
	if dkms status -m "\$name" -v "\$version" | grep -q .; then
		dkms remove -m "\$name" -v "\$version" --all || true
	fi
	;;
esac
exit 0
END
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"
deb="$out/xftrace-dkms_${version}-1_all.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
