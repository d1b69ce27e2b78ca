#!/usr/bin/env bash
# Build xftrace's host package (Debian 12) with cargo-deb:
#
#   packaging/build-deb.sh [--binary PATH] [--revision N] [--fast] OUTDIR
#
# Builds the release binary (or packages PATH, a binary already built: the
# tests package the one they test), generates what the package carries
# beside it (completions, man pages, the hook pointed at /usr/bin/xftrace),
# and prints the .deb's path. --fast: lighter compression (the tests). The package's layout is in Cargo.toml
# ([package.metadata.deb]); its maintainer scripts in packaging/debian/.
#
# cargo-deb packages what sits under a target directory's release/: the
# generated files go there too, in a staging target directory of their own
# when --binary is given (cargo-deb refuses the dev profile).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
binary= revision= fast=
while (($#)); do
	case "$1" in
	--binary) binary=$2; shift 2 ;;
	--revision) revision=$2; shift 2 ;;
	--fast) fast=1; shift ;;
	-h | --help) sed -n '2,15p' "$0"; exit 0 ;;
	-*) echo "build-deb.sh: unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
done
(($# == 1)) || { echo "usage: build-deb.sh [--binary PATH] [--revision N] [--fast] OUTDIR" >&2; exit 2; }
out=$1
command -v cargo-deb >/dev/null || { echo "build-deb.sh: cargo-deb not found (cargo install cargo-deb --locked)" >&2; exit 1; }
cd "$repo"
if [[ -n $binary ]]; then
	target=$(mktemp -d "${TMPDIR:-/tmp}/xftrace-deb.XXXXXX")
	trap 'rm -rf "$target"' EXIT
	mkdir -p "$target/release"
	cp "$binary" "$target/release/xftrace"
	# cargo-deb strips what it builds; this one is stripped here.
	strip --strip-unneeded --remove-section=.comment --remove-section=.note "$target/release/xftrace"
else
	target=${CARGO_TARGET_DIR:-$repo/target}
	cargo build --release --locked >&2
fi
stage=$target/release/package
rm -rf "$stage"
mkdir -p "$stage/completions" "$stage/man"
bin=$target/release/xftrace
"$bin" completions bash >"$stage/completions/xftrace"
"$bin" completions zsh >"$stage/completions/_xftrace"
"$bin" completions fish >"$stage/completions/xftrace.fish"
"$bin" manpages "$stage/man" >/dev/null
gzip -9n "$stage"/man/*.1
# The hook, with the package's paths; its state directory may be changed in
# /etc/default/xftrace (read, never sourced: a broken file must not stop
# libvirt from starting guests).
sed -e 's|^XFTRACE=.*|XFTRACE=/usr/bin/xftrace|' \
	-e 's|^XFTRACE_STATE_DIR=.*|XFTRACE_STATE_DIR=/var/lib/xftrace\
dir=$(sed -n "s/^XFTRACE_STATE_DIR=//p" /etc/default/xftrace 2>/dev/null \| tail -n 1)\
dir=${dir#\\"}; dir=${dir%\\"}\
[ -n "$dir" ] \&\& XFTRACE_STATE_DIR=$dir|' \
	libvirt-hooks/qemu.d/xftrace >"$stage/qemu-hook"
mkdir -p "$out"
args=(--no-build --output "$out")
[[ -n $revision ]] && args+=(--deb-revision "$revision")
[[ -n $fast ]] && args+=(--fast)
CARGO_TARGET_DIR=$target cargo deb "${args[@]}" | tail -n 1
