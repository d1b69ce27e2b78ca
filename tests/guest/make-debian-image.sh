#!/usr/bin/env bash
# Build the Debian bookworm VM of the tests and the demo: a partitioned raw
# disk that boots on its own, GRUB in its MBR, Debian's stock cloud kernel,
# systemd, openssh-server, nginx, python3 (for Ansible), dkms and the stock
# kernel's headers (so that `apt install xftrace-dkms` builds the tracer module
# in the guest with no network), libvirt's daemon (not started at boot: the
# host package is tested in this guest, a Debian host that runs systemd),
# a serial console and DHCP networking. Root
# logs in over SSH with a key kept beside the image.
#
#   tests/guest/make-debian-image.sh        build (or reuse) and print the output dir
#
# Debian's own tools build it (mmdebstrap from Debian's packages); nothing is
# mounted: the file system is made from a directory (mkfs.ext4 -d) at its
# partition's offset, and GRUB's boot sector and core image are written into
# the disk's first megabyte. The output directory holds debian.img (raw,
# sparse), id_ed25519 (0600) and its .pub, the default stock kernel's release
# (stock-kernel) and the other kernels' in GRUB's menu order (other-kernels);
# it is keyed by this script, so an unchanged script reuses the cache. The
# last line on stdout is its absolute path; progress goes to stderr.
#
# Environment:
#   XFTRACE_IMAGE_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/xftrace/debian-image)
#   XFTRACE_MIRROR       Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
say() { echo "debian-image: $*" >&2; }
die() { echo "debian-image: error: $*" >&2; exit 1; }

deps=(mmdebstrap e2fsprogs fdisk grub-pc-bin openssh-client debian-archive-keyring qemu-utils)
missing=()
for p in "${deps[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	[ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}; install them as root"
	say "installing ${missing[*]}"
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

key=$(sha256sum "$here/make-debian-image.sh" | cut -c1-16)
cache_root=${XFTRACE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xftrace/debian-image}
out="$cache_root/bookworm-$key"
if [ -f "$out/.complete" ]; then
	say "reusing cached image"
	echo "$out"
	exit 0
fi
mkdir -p "$cache_root"
chmod 0700 "$cache_root"
exec 9>"$cache_root/.lock-$key"
flock 9
if [ -f "$out/.complete" ]; then
	echo "$out"
	exit 0
fi

mirror=${XFTRACE_MIRROR:-http://deb.debian.org/debian}
security=${mirror%/debian}/debian-security
tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"
disk="$tmp/debian.img"
disk_mib=3072
part_start_mib=1
uuid=$(cat /proc/sys/kernel/random/uuid)

ssh-keygen -q -t ed25519 -N '' -C xftrace-test -f "$tmp/id_ed25519"
chmod 0600 "$tmp/id_ed25519"

packages=systemd,systemd-sysv,udev,dbus,libpam-systemd,openssh-server,nginx-light,python3,python3-apt,
packages+=linux-image-cloud-amd64,initramfs-tools,grub-pc,kmod,iproute2,procps,netbase,curl,less,sudo,
packages+=dkms,linux-headers-cloud-amd64,
# libvirt's daemon, disabled at boot: the host package's test starts it (the
# guest as a libvirt host that runs systemd).
packages+=libvirt-daemon-system
# Every cloud kernel the archive offers (bookworm's point release and the
# security suite's, as the host's apt index lists them), with its headers:
# the newest boots by default, and the tests boot another as a kernel update
# would arrive.
mapfile -t extra < <(apt-cache show linux-image-cloud-amd64 2>/dev/null |
	sed -n 's/^Depends: \(linux-image-[0-9.]*-[0-9]*-cloud-amd64\) .*/\1/p' | sort -uV)
for k in "${extra[@]}"; do
	packages+=",$k,${k/linux-image-/linux-headers-}"
done
say "building a bookworm root file system with mmdebstrap (packages from $mirror)"
start=$(date +%s)
mmdebstrap --variant=apt --mode=root --include="$packages" \
	--essential-hook='mkdir -p "$1/etc/default"; printf "GRUB_DEFAULT=0\nGRUB_TIMEOUT=1\nGRUB_DISTRIBUTOR=Debian\nGRUB_CMDLINE_LINUX_DEFAULT=\"\"\nGRUB_CMDLINE_LINUX=\"console=ttyS0,115200\"\nGRUB_TERMINAL=serial\nGRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"\nGRUB_DISABLE_OS_PROBER=true\n" >"$1/etc/default/grub"' \
	--customize-hook="echo xftrace-guest >\"\$1/etc/hostname\"" \
	--customize-hook="echo LANG=C.UTF-8 >\"\$1/etc/default/locale\"" \
	--customize-hook="printf '127.0.0.1 localhost\n127.0.1.1 xftrace-guest\n' >\"\$1/etc/hosts\"" \
	--customize-hook="echo 'UUID=$uuid / ext4 errors=remount-ro 0 1' >\"\$1/etc/fstab\"" \
	--customize-hook='mkdir -p "$1/etc/systemd/network" && printf "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n" >"$1/etc/systemd/network/10-dhcp.network"' \
	--customize-hook='chroot "$1" systemctl enable systemd-networkd.service' \
	--customize-hook='chroot "$1" systemctl disable libvirtd.service libvirt-guests.service' \
	--customize-hook='mkdir -m 0700 -p "$1/root/.ssh"' \
	--customize-hook="cp '$tmp/id_ed25519.pub' \"\$1/root/.ssh/authorized_keys\"" \
	--customize-hook='chmod 0600 "$1/root/.ssh/authorized_keys"' \
	--customize-hook='echo "grub-pc grub-pc/install_devices multiselect /dev/vda" | chroot "$1" debconf-set-selections' \
	--customize-hook='rm -f "$1/etc/machine-id" && touch "$1/etc/machine-id"' \
	bookworm "$root" \
	"deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main" >&2
say "root file system in $(($(date +%s) - start)) s"

# The newest stock kernel GRUB boots first (the tests install xftrace's over
# SSH); one entry a kernel, newest first.
mapfile -t kvers < <(ls "$root/lib/modules" | grep -e '-cloud-amd64$' | sort -rV)
((${#kvers[@]})) || die "no cloud kernel in the image"
kver=${kvers[0]}
mkdir -p "$root/boot/grub"
cat >"$root/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=1
set default=0
EOF
for k in "${kvers[@]}"; do
	[ -f "$root/boot/vmlinuz-$k" ] && [ -f "$root/boot/initrd.img-$k" ] ||
		die "no kernel or initramfs of $k in the image"
	cat >>"$root/boot/grub/grub.cfg" <<EOF
menuentry 'Debian GNU/Linux, with Linux $k' {
	insmod part_msdos
	insmod ext2
	search --no-floppy --fs-uuid --set=root $uuid
	linux /boot/vmlinuz-$k root=UUID=$uuid ro console=ttyS0,115200
	initrd /boot/initrd.img-$k
}
EOF
done

# What grub-install would copy: the guest's own GRUB modules, so that the
# grub.cfg its update-grub writes later finds every module it loads.
mkdir -p "$root/boot/grub/i386-pc"
cp "$root"/usr/lib/grub/i386-pc/*.mod "$root"/usr/lib/grub/i386-pc/*.lst "$root/boot/grub/i386-pc/"

say "making a ${disk_mib} MiB disk: MBR, one ext4 partition, GRUB"
truncate -s "${disk_mib}M" "$disk"
printf 'label: dos\nstart=%s, type=83, bootable\n' $((part_start_mib * 2048)) | sfdisk -q "$disk"
part_mib=$((disk_mib - part_start_mib))
mkfs.ext4 -q -F -U "$uuid" -L root -E offset=$((part_start_mib << 20)) -d "$root" "$disk" "${part_mib}M"
# GRUB for BIOS: boot.img in the MBR (its partition table kept), core.img
# (with its prefix built in) from sector 1, as grub-install would place them.
grub=$root/usr/lib/grub/i386-pc
grub-mkimage -O i386-pc -d "$grub" -o "$tmp/core.img" -p '(hd0,msdos1)/boot/grub' \
	biosdisk part_msdos ext2 search search_fs_uuid normal linux configfile serial terminal echo test
(($(stat -c %s "$tmp/core.img") < (part_start_mib << 20) - 512)) || die "GRUB's core image does not fit before the partition"
dd if="$grub/boot.img" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$tmp/core.img" of="$disk" bs=512 seek=1 conv=notrunc status=none

echo "$kver" >"$tmp/stock-kernel"
printf '%s\n' "${kvers[@]:1}" >"$tmp/other-kernels"
mkdir -p "$tmp/out"
mv "$disk" "$tmp/id_ed25519" "$tmp/id_ed25519.pub" "$tmp/stock-kernel" "$tmp/other-kernels" "$tmp/out/"
touch "$tmp/out/.complete"
rm -rf "$out"
mv "$tmp/out" "$out"
# Images from earlier versions of this script are stale (one in use by a
# build elsewhere holds its lock and is left alone).
for d in "$cache_root"/bookworm-*; do
	other=${d##*-}
	[ "$d" = "$out" ] && continue
	flock -n "$cache_root/.lock-$other" true 2>/dev/null || [ ! -e "$cache_root/.lock-$other" ] || continue
	rm -rf "$d"
	rm -f "$cache_root/.lock-$other"
done
say "image ready: $(du -h --apparent-size "$out/debian.img" | cut -f1) ($(du -h "$out/debian.img" | cut -f1) used), stock kernel $kver"
echo "$out"
