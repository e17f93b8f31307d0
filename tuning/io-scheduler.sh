#!/usr/bin/env bash
# Block-queue settings of the disks under the data directory (or the disks named):
# scheduler none, no request merging, completions on the submitting core.
# Usage: tuning/io-scheduler.sh [--apply] [--dir DATA_DIR | DISK...]   (dry run by default)
. "$(dirname "$0")/lib.sh"
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
disks=()
dir=.
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift ;;
    *) disks+=("$1") ;;
  esac
  shift
done
[ ${#disks[@]} -gt 0 ] || mapfile -t disks < <(disks_of_dir "$dir")
[ ${#disks[@]} -gt 0 ] || { echo "no block device found under $dir"; finish; }
for d in "${disks[@]}"; do
  q=$ROOT/sys/block/$d/queue
  set_value "$q/scheduler" none "NVMe queues are deep and fast; a scheduler adds latency and holds flushes back"
  set_value "$q/nomerges" 2 "sequential log writes are already large; merge attempts only cost CPU"
  set_value "$q/rq_affinity" 2 "complete each I/O on the core that submitted it, the core of its group"
done
finish
