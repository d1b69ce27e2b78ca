#!/usr/bin/env bash
# Build the xftrace guest kernel from Debian's linux-source-6.1.
#
#   guest-kernel/build.sh            build (or reuse) and print the output dir
#
# The output directory holds bzImage, System.map, vmlinux, config and the
# prepared build tree (build/) that test modules are compiled against. It is
# keyed by a hash of the source version, the patches, the config fragment and
# this script, so an unchanged input reuses the cache. The last line printed
# on stdout is the absolute path of that directory; progress goes to stderr.
#
# Environment:
#   XFTRACE_KERNEL_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/xftrace/guest-kernel)
#   XFTRACE_JOBS          make -j (default: number of CPUs)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tarball=/usr/src/linux-source-6.1.tar.xz
deps=(linux-source-6.1 build-essential flex bison libelf-dev libssl-dev bc xz-utils kmod cpio)

say() { echo "guest-kernel: $*" >&2; }
die() { echo "guest-kernel: error: $*" >&2; exit 1; }

missing=()
for p in "${deps[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	[ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}; install them as root: apt-get install ${missing[*]}"
	say "installing ${missing[*]}"
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
[ -r "$tarball" ] || die "$tarball not found; install linux-source-6.1"

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( {
	echo "linux-source-6.1 $src_version"
	cat "$here"/patches/*.patch "$here/xftrace.config" "$here/build.sh"
} | sha256sum | cut -c1-16)

cache_root=${XFTRACE_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xftrace/guest-kernel}
out="$cache_root/$src_version-$key"
if [ -f "$out/bzImage" ] && [ -f "$out/System.map" ] && [ -f "$out/.complete" ]; then
	say "reusing cached build"
	echo "$out"
	exit 0
fi

mkdir -p "$cache_root"
chmod 0700 "$cache_root"
tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log="$tmp/build.log"

say "extracting linux-source-6.1 $src_version"
tar -C "$tmp" -xf "$tarball"
tree="$tmp/build"
mv "$tmp/linux-source-6.1" "$tree"

version=$(make -s -C "$tree" kernelversion)
case "$version" in
6.1.*) ;;
*) die "linux-source-6.1 unpacked as version $version; the patches target 6.1.y" ;;
esac

for p in "$here"/patches/*.patch; do
	if ! patch -d "$tree" -p1 --dry-run -s -f <"$p" >"$tmp/patch.out" 2>&1; then
		cat "$tmp/patch.out" >&2
		die "$(basename "$p") does not apply to linux-source-6.1 $src_version ($version); refresh guest-kernel/patches/"
	fi
	patch -d "$tree" -p1 -s -f <"$p"
done
say "applied $(ls "$here"/patches/*.patch | wc -l) patches to $version"

jobs=${XFTRACE_JOBS:-$(nproc)}
{
	make -C "$tree" tinyconfig
	"$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" "$here/xftrace.config"
	make -C "$tree" olddefconfig
} >"$log" 2>&1 || { tail -40 "$log" >&2; die "configuring failed; full log in the build directory was removed"; }

# merge_config only warns; an option that did not stick would quietly build
# a different kernel.
while IFS= read -r line; do
	case "$line" in CONFIG_*=*) ;; *) continue ;; esac
	grep -qx "$line" "$tree/.config" || die "config option '$line' did not stick (dependency missing?)"
done <"$here/xftrace.config"

say "building bzImage and modules with -j$jobs (a few minutes)"
start=$(date +%s)
if ! make -C "$tree" -j"$jobs" bzImage modules >>"$log" 2>&1; then
	grep -E 'error|Error' "$log" | head -20 >&2
	tail -20 "$log" >&2
	die "kernel build failed"
fi
say "built $version in $(($(date +%s) - start)) s"

cp "$tree/arch/x86/boot/bzImage" "$tree/System.map" "$tree/vmlinux" "$tmp/"
cp "$tree/.config" "$tmp/config"
echo "$version" >"$tmp/kernelversion"
touch "$tmp/.complete"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
