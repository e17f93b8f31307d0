#!/usr/bin/env bash
# Runs every tuning script (a dry run unless --apply is given). Busy polling and the
# write-cache override are left out: they are choices for a dedicated host and a PLP drive.
# Usage: tuning/all.sh [--apply] [--dir DATA_DIR] [--avoid CPULIST]
set -uo pipefail
here=$(dirname "$0")
apply=()
dir=.
avoid=""
while [ $# -gt 0 ]; do
  case "$1" in
    --apply) apply=(--apply) ;;
    --dir) dir=$2; shift ;;
    --avoid) avoid=$2; shift ;;
    -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
rc=0
run() { echo "== $*"; bash "$here/$1" "${@:2}" || rc=1; echo; }
run io-scheduler.sh "${apply[@]+"${apply[@]}"}" --dir "$dir"
run write-cache.sh "${apply[@]+"${apply[@]}"}" --dir "$dir"
run cpu-governor.sh "${apply[@]+"${apply[@]}"}"
run thp.sh "${apply[@]+"${apply[@]}"}"
run swappiness.sh "${apply[@]+"${apply[@]}"}"
run clocksource.sh "${apply[@]+"${apply[@]}"}"
run net-sysctls.sh "${apply[@]+"${apply[@]}"}"
if [ -n "$avoid" ]; then
  run irq-affinity.sh "${apply[@]+"${apply[@]}"}" --avoid "$avoid" --dir "$dir"
else
  echo "== irq-affinity.sh: skipped (give --avoid CPULIST, the cores corelog pins)"
fi
exit $rc
