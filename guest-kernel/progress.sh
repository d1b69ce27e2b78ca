#!/usr/bin/env bash
# The progress of a kernel build, on stderr, every INTERVAL seconds until it
# is killed (guest-kernel/build.sh runs it beside make):
#
#   guest-kernel/progress.sh LOG TOTAL PROFILE [INTERVAL]
#
# LOG is the build's log; its "  CC", "  CC [M]" and "  AS" lines are the
# units compiled, those of earlier runs of a continued build included.
# TOTAL is how many units the last complete build of the same profile
# compiled (build.sh keeps it as `units` in its output), or 0 if there was
# none: then the count measured for PROFILE below, if any; else only the
# count and the rate are shown. Time left is the units
# left at this run's rate; linking and packaging come after the last unit
# (a minute or two).
#
# Not part of build.sh's cache key: changing how progress is shown does
# not rebuild a kernel.
set -u

log=${1:?usage: progress.sh LOG TOTAL PROFILE [INTERVAL]}
total=${2:-0}
profile=${3:-}
interval=${4:-60}
[[ $total =~ ^[0-9]+$ ]] || total=0
if ((total == 0)); then
	# Units of a complete build of linux-source-6.1 6.1.192-3, by profile.
	case "$profile" in
	small | unpatched_small) total=1571 ;;
	esac
fi

units() {
	local n
	n=$(grep -cE '^  (CC|AS)( \[M\])? ' "$log" 2>/dev/null) || true
	echo "${n:-0}"
}

span() { # seconds as "N s" or "N min"
	if (($1 < 120)); then echo "$1 s"; else echo "$(($1 / 60)) min"; fi
}

# Killed (build.sh's end), it ends at once, its sleep with it.
sleeper=
trap '[ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null; exit 0' TERM INT
start=$SECONDS
before=$(units)
while :; do
	sleep "$interval" &
	sleeper=$!
	wait "$sleeper"
	now=$(units)
	took=$((SECONDS - start))
	new=$((now - before))
	if ((total > 0 && now >= total)); then
		echo "guest-kernel: $now units compiled, $(span "$took") in: linking and packaging" >&2
	elif ((total > 0)); then
		left=""
		if ((new > 0)); then left=", about $(span $(((total - now) * took / new))) left"; fi
		echo "guest-kernel: $now/$total units compiled ($((now * 100 / total)) %), $(span "$took") in$left" >&2
	else
		echo "guest-kernel: $now units compiled, $(span "$took") in (no earlier build of this profile to estimate the total)" >&2
	fi
done
