#!/usr/bin/env bash
# CPU frequency governor `performance` on every CPU (or the CPUs listed, e.g. 0-3,8).
# Usage: tuning/cpu-governor.sh [--apply] [CPULIST]   (dry run by default)
. "$(dirname "$0")/lib.sh"
usage() { sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
cpus=()
if [ ${#ARGS[@]} -gt 0 ]; then
  [[ "${ARGS[0]}" =~ ^[0-9,-]+$ ]] || { echo "not a CPU list: ${ARGS[0]}" >&2; exit 2; }
  IFS=, read -ra parts <<< "${ARGS[0]}"
  for p in "${parts[@]}"; do
    if [[ "$p" == *-* ]]; then for ((c=${p%-*}; c<=${p#*-}; c++)); do cpus+=("$c"); done; else cpus+=("$p"); fi
  done
else
  for d in "$ROOT"/sys/devices/system/cpu/cpu[0-9]*; do [ -d "$d" ] && cpus+=("${d##*cpu}"); done
fi
found=0
for c in "${cpus[@]}"; do
  f=$ROOT/sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor
  [ -e "$f" ] || continue
  found=1
  set_value "$f" performance "frequency ramps add tens of µs to the short bursts of a reactor thread"
done
[ "$found" = 1 ] || echo "skip  no cpufreq on this host (a VM or a fixed-frequency CPU): nothing to set"
finish
