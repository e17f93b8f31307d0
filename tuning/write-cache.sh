#!/usr/bin/env bash
# The kernel's view of each disk's write cache. With `write back` every fdatasync sends a
# cache flush; a drive with power-loss protection (PLP) does not need it, and `--plp` tells the
# kernel so (`write through`), saving the flush. Never use --plp on a drive without PLP: the
# kernel would stop flushing a volatile cache and acknowledged writes could be lost.
# Usage: tuning/write-cache.sh [--apply] [--plp] [--dir DATA_DIR | DISK...]   (dry run by default)
. "$(dirname "$0")/lib.sh"
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
plp=0
dir=.
disks=()
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --plp) plp=1 ;;
    --dir) dir=$2; shift ;;
    *) disks+=("$1") ;;
  esac
  shift
done
[ ${#disks[@]} -gt 0 ] || mapfile -t disks < <(disks_of_dir "$dir")
[ ${#disks[@]} -gt 0 ] || { echo "no block device found under $dir"; finish; }
for d in "${disks[@]}"; do
  q=$ROOT/sys/block/$d/queue
  if [ "$plp" = 1 ]; then
    set_value "$q/write_cache" "write through" "the drive has PLP (you said --plp): its cache survives power loss, so skip the flushes"
  else
    printf 'info  %s: write_cache %s, fua %s (nothing to change without --plp; see tuning/README.md)\n' \
      "$d" "$(current "$q/write_cache" || echo '?')" "$(current "$q/fua" || echo '?')"
  fi
done
finish
