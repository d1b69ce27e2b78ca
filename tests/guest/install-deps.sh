#!/usr/bin/env bash
# Debian packages the tests and the demo need (the guest kernel build installs
# its own): QEMU, busybox for the guest, libvirt (daemon, clients, and the
# headers the virt crate links against), python3-venv for Ansible, systemd's
# systemd-analyze and lintian for the unit's and the package's tests. Installs what is missing when run as root.
set -euo pipefail
pkgs=(qemu-system-x86 busybox-static cpio file build-essential pkg-config
	libvirt-dev libvirt-daemon-system libvirt-clients util-linux python3-venv systemd lintian binutils)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	[ "$(id -u)" = 0 ] || { echo "missing packages: ${missing[*]} (run as root, or apt-get install them)" >&2; exit 1; }
	echo "installing ${missing[*]}" >&2
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup, Rust >= 1.89)" >&2; exit 1; }
