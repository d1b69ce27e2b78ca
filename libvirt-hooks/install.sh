#!/usr/bin/env bash
# Install xftrace's libvirt qemu hook: a shim at HOOKS_DIR/qemu.d/xftrace that
# runs `xftrace hook qemu "$@"` (all logic lives in the unit-tested binary).
#
#   libvirt-hooks/install.sh [--bin /usr/local/bin/xftrace] [--state-dir /var/lib/xftrace]
#                            [--hooks-dir /etc/libvirt/hooks]
#   libvirt-hooks/install.sh --uninstall [--hooks-dir DIR]
#
# libvirtd looks for hooks when it starts: restart it after the first install.
set -euo pipefail
bin=/usr/local/bin/xftrace
state=/var/lib/xftrace
hooks=/etc/libvirt/hooks
uninstall=
while (($#)); do
	case "$1" in
	--bin) bin=$2; shift 2 ;;
	--state-dir) state=$2; shift 2 ;;
	--hooks-dir) hooks=$2; shift 2 ;;
	--uninstall) uninstall=1; shift ;;
	*) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
target="$hooks/qemu.d/xftrace"
if [ -n "$uninstall" ]; then
	rm -f "$target"
	exit 0
fi
case "$bin$state" in *"'"*) echo "install.sh: paths must not contain quotes" >&2; exit 2 ;; esac
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$hooks/qemu.d"
tmp=$(mktemp "$hooks/qemu.d/.xftrace.XXXXXX")
sed -e "s|^XFTRACE=.*|XFTRACE='$bin'|" -e "s|^XFTRACE_STATE_DIR=.*|XFTRACE_STATE_DIR='$state'|" \
	"$here/qemu.d/xftrace" >"$tmp"
chmod 0755 "$tmp"
mv "$tmp" "$target"
echo "$target"
