#!/usr/bin/env bash
# Build the xftrace guest kernel from Debian's linux-source-6.1, as Debian
# packages (linux-image, linux-headers) plus the System.map and vmlinux the
# host needs.
#
#   guest-kernel/build.sh [--profile small|cloud] [--unpatched]
#
# Profiles:
#   small  (default) tinyconfig plus small.config: boots the tests' busybox
#          guests and a Debian VM from its disk (virtio, ext4, systemd), with
#          Debian's code-patching options (retpolines, return thunks, jump
#          labels, static calls, paravirt, alternatives). Minutes to build.
#   cloud  Debian's own configuration for VMs (config.amd64_none_cloud-amd64
#          from linux-config-6.1) plus cloud.config: the release kernel, with
#          BTF and debug info; an hour or two on two cores.
#
# --unpatched builds the same profile without the xftrace patches (and
# without CONFIG_XFTRACE*): the baseline of `cargo bench --bench guest`.
#
# The output directory holds bzImage, System.map, vmlinux (without its
# DWARF), config, kernelversion, modules (the names of the modules it
# ships), units (how many compile units it took: the next build's
# progress total) and debs/ (linux-image-*.deb, linux-headers-*.deb). It is
# keyed by the profile, the source version, the patches, the configuration
# and this script, so an unchanged input reuses the cache. The build itself
# runs in a work directory keyed by what the compiled tree depends on; it
# survives a failure or an interruption (the next run continues where it
# stopped instead of starting over), and for the cloud profile a success
# too, so that a change to this script's packaging costs minutes. The last
# line printed on stdout is the absolute path of the output directory;
# progress goes to stderr: the steps, and while make runs, every minute,
# units compiled of the last build's total and time left (progress.sh).
#
# Environment:
#   XFTRACE_KERNEL_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/xftrace/guest-kernel)
#   XFTRACE_JOBS          make -j (default: number of CPUs)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tarball=/usr/src/linux-source-6.1.tar.xz
profile=small
unpatched=
while (($#)); do
	case "$1" in
	--unpatched) unpatched=1; shift ;;
	--profile) profile=${2:-}; shift 2 ;;
	--profile=*) profile=${1#--profile=}; shift ;;
	-h | --help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
	*) echo "guest-kernel: unknown argument '$1' (see --help)" >&2; exit 2 ;;
	esac
done

say() { echo "guest-kernel: $*" >&2; }
die() { echo "guest-kernel: error: $*" >&2; exit 1; }
plain= progress=
cleanup() {
	[ -z "$progress" ] || kill "$progress" 2>/dev/null || true
	[ -z "$plain" ] || rm -f "$plain"
}
trap cleanup EXIT

deps=(linux-source-6.1 build-essential flex bison libelf-dev libssl-dev bc xz-utils kmod cpio
	dpkg-dev rsync dwarves)
case "$profile" in
small) fragment=$here/small.config; localversion=-xftrace-small ;;
cloud) fragment=$here/cloud.config; localversion=-xftrace; deps+=(linux-config-6.1) ;;
*) die "unknown profile '$profile': use small or cloud" ;;
esac
# The build's name in the cache; its patches and configuration fragment.
flavor=$profile
patches=("$here"/patches/*.patch)
if [ -n "$unpatched" ]; then
	flavor=unpatched_$profile
	localversion=$localversion-unpatched
	patches=()
	plain=$(mktemp)
	grep -v 'XFTRACE' "$fragment" | sed "s/^CONFIG_LOCALVERSION=\"\(.*\)\"$/CONFIG_LOCALVERSION=\"\1-unpatched\"/" >"$plain"
	fragment=$plain
fi
debian_config=/usr/src/linux-config-6.1/config.amd64_none_cloud-amd64.xz

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
# Bump when the way the tree is configured or compiled below changes.
recipe=1
# The compiled tree depends on these inputs (src_key, which names the
# resumable work directory); the output also on the rest of this script.
src_key=$( {
	echo "linux-source-6.1 $src_version $flavor recipe $recipe"
	cat ${patches[@]+"${patches[@]}"} "$fragment"
	[ "$profile" = cloud ] && xzcat "$debian_config"
	true
} | sha256sum | cut -c1-16)
key=$(cat <(echo "$src_key") "$here/build.sh" | sha256sum | cut -c1-16)

cache_root=${XFTRACE_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xftrace/guest-kernel}
out="$cache_root/$flavor-$src_version-$key"
if [ -f "$out/.complete" ]; then
	say "reusing cached $profile build"
	echo "$out"
	exit 0
fi

mkdir -p "$cache_root"
chmod 0700 "$cache_root"
# One build of these inputs at a time; a second caller waits, then reuses.
exec 9>"$cache_root/.lock-$src_key"
flock 9
if [ -f "$out/.complete" ]; then
	echo "$out"
	exit 0
fi

work="$cache_root/work-$flavor-$src_key"
tree="$work/src"
log="$work/build.log"
mkdir -p "$work"
if [ ! -f "$work/.configured" ]; then
	rm -rf "$tree"
	say "extracting linux-source-6.1 $src_version"
	tar -C "$work" -xf "$tarball"
	mv "$work/linux-source-6.1" "$tree"
	version=$(make -s -C "$tree" kernelversion)
	case "$version" in
	6.1.*) ;;
	*) die "linux-source-6.1 unpacked as version $version; the patches target 6.1.y" ;;
	esac
	for p in ${patches[@]+"${patches[@]}"}; do
		if ! patch -d "$tree" -p1 --dry-run -s -f <"$p" >"$work/patch.out" 2>&1; then
			cat "$work/patch.out" >&2
			die "$(basename "$p") does not apply to linux-source-6.1 $src_version ($version); refresh guest-kernel/patches/"
		fi
		patch -d "$tree" -p1 -s -f <"$p"
	done
	say "applied ${#patches[@]} patches to $version"
	{
		if [ "$profile" = cloud ]; then
			xzcat "$debian_config" >"$tree/.config"
		else
			make -C "$tree" tinyconfig
		fi
		"$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" "$fragment"
		make -C "$tree" olddefconfig
	} >"$log" 2>&1 || { tail -40 "$log" >&2; die "configuring failed (log: $log)"; }
	# merge_config only warns; an option that did not stick would quietly
	# build a different kernel.
	while IFS= read -r line; do
		case "$line" in CONFIG_*=* | "# CONFIG_"*" is not set") ;; *) continue ;; esac
		grep -qxF "$line" "$tree/.config" || die "config option '$line' did not stick (dependency missing?)"
	done <"$fragment"
	touch "$work/.configured"
else
	say "continuing the build in $work"
fi

jobs=${XFTRACE_JOBS:-$(nproc)}
version=$(make -s -C "$tree" kernelversion)
say "building $profile $version$localversion packages with -j$jobs (log: $log)"
start=$(date +%s)
# bindeb-pkg builds the kernel and modules, then packages them; the debs go
# to the parent of the tree. -nc inside keeps what is already built. A work
# tree that is continued (or, for cloud, kept) holds an earlier packaging's
# debs, one revision older: only this run's may be taken below.
rm -f "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes
# Units done of the total the last complete build of this profile
# compiled, and time left, every minute (progress.sh, outside this key).
units=0
for u in "$cache_root/$flavor"-*/units; do
	[ -f "$u" ] && units=$(head -c 16 "$u")
done
[[ $units =~ ^[0-9]+$ ]] || units=0
"$here/progress.sh" "$log" "$units" "$flavor" &
progress=$!
if ! make -C "$tree" -j"$jobs" LOCALVERSION= bindeb-pkg >>"$log" 2>&1; then
	grep -E 'error|Error' "$log" | tail -20 >&2
	tail -20 "$log" >&2
	die "kernel build failed; run again to continue from where it stopped (work: $work)"
fi
kill "$progress" 2>/dev/null || true
progress=
release=$(make -s -C "$tree" kernelrelease)
say "built $release in $(($(date +%s) - start)) s"

stage=$(mktemp -d "$cache_root/.out-XXXXXX")
mkdir -p "$stage/debs"
cp "$tree/arch/x86/boot/bzImage" "$tree/System.map" "$stage/"
# The host needs code, symbols, relocations and BTF, not the DWARF (which
# is in the linux-image-*-dbg package): a tenth of the size.
objcopy --strip-debug "$tree/vmlinux" "$stage/vmlinux"
cp "$tree/.config" "$stage/config"
# The modules this build ships, by name.
sed -e 's#.*/##' -e 's#\.ko$##' "$tree/modules.order" | sort >"$stage/modules"
echo "$release" >"$stage/kernelversion"
# The units this build compiled: the next build's total for its progress.
grep -cE '^  (CC|AS)( \[M\])? ' "$log" >"$stage/units" || true
for d in "$work"/linux-image-"$release"_*.deb "$work"/linux-headers-"$release"_*.deb; do
	[ -f "$d" ] || die "no $(basename "$d") after the build"
	cp "$d" "$stage/debs/"
done
touch "$stage/.complete"
rm -rf "$out"
mv "$stage" "$out"
# The cloud tree took an hour: keep it, so that a change to how it is
# packaged costs minutes. The small one is rebuilt in minutes.
[ "$profile" = cloud ] || rm -rf "$work"
# Builds of this profile from other inputs are stale: one per profile is
# kept (a work tree in use elsewhere holds its lock and is left alone).
for d in "$cache_root/$flavor"-* "$cache_root/work-$flavor"-*; do
	[ "$d" = "$out" ] || [ "$d" = "$work" ] || [ ! -d "$d" ] && continue
	other=${d##*-}
	[ -e "$cache_root/.lock-$other" ] && ! flock -n "$cache_root/.lock-$other" true && continue
	say "removing stale $(basename "$d")"
	rm -rf "$d"
	[ "$other" = "$src_key" ] || rm -f "$cache_root/.lock-$other"
done
echo "$out"
