#!/usr/bin/env bash
# Moves the interrupts of the data directory's disk and of the replication NIC off the cores
# corelog pins, onto the other online cores. This protects a busy core's throughput; for one
# appender's lowest latency on a disk with a single completion queue the opposite holds (on
# the project's VM an executor on the interrupt's CPU: 88-93 µs p50 per durable append, on
# the other: 121-128 µs; docs/measurements/2026-11-28-adaptive-sync.md).
# Usage: tuning/irq-affinity.sh [--apply] --avoid CPULIST [--dir DATA_DIR] [--nic IFACE]
#        (dry run by default; CPULIST as in 0-3,8: the cores corelog pins, 0..cores-1)
. "$(dirname "$0")/lib.sh"
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
avoid=""
dir=.
nic=""
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --avoid) avoid=$2; shift ;;
    --dir) dir=$2; shift ;;
    --nic) nic=$2; shift ;;
    *) echo "unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[ -n "$avoid" ] || { echo "--avoid CPULIST is required (the cores corelog pins)" >&2; exit 2; }

expand() {
  local p parts c
  IFS=, read -ra parts <<< "$1"
  for p in "${parts[@]}"; do
    if [[ "$p" == *-* ]]; then for ((c=${p%-*}; c<=${p#*-}; c++)); do echo "$c"; done
    elif [ -n "$p" ]; then echo "$p"; fi
  done
}
# A sorted list of numbers as the kernel prints it: 0-3,6.
compress() {
  local out="" start="" prev="" n
  for n in "$@"; do
    if [ -n "$prev" ] && [ "$n" -eq $((prev + 1)) ]; then prev=$n; continue; fi
    [ -n "$start" ] && out+="${out:+,}$start$([ "$prev" != "$start" ] && echo "-$prev")"
    start=$n; prev=$n
  done
  [ -n "$start" ] && out+="${out:+,}$start$([ "$prev" != "$start" ] && echo "-$prev")"
  echo "$out"
}

mapfile -t online < <(expand "$(cat "$ROOT/sys/devices/system/cpu/online" 2>/dev/null || echo 0)")
mapfile -t avoided < <(expand "$avoid")
allowed=()
for c in "${online[@]}"; do
  skip=0
  for a in "${avoided[@]}"; do [ "$c" = "$a" ] && skip=1; done
  [ "$skip" = 1 ] || allowed+=("$c")
done
if [ ${#allowed[@]} -eq 0 ]; then
  echo "skip  corelog pins every online core ($(compress "${online[@]}")): no core left for interrupts"
  finish
fi
target=$(compress "${allowed[@]}")

# IRQs of the sysfs device directory $1: msi_irqs/ of it or an ancestor, else its irq file.
irqs_of() {
  local d=$1
  while [ -n "$d" ] && [ "$d" != / ] && [ "$(basename "$d")" != devices ]; do
    if [ -d "$d/msi_irqs" ]; then ls "$d/msi_irqs"; return; fi
    if [ -r "$d/irq" ] && [ "$(cat "$d/irq")" != 0 ]; then cat "$d/irq"; return; fi
    d=$(dirname "$d")
  done
}

devices=()
while read -r disk; do
  [ -n "$disk" ] && devices+=("disk $disk:$(readlink -f "$ROOT/sys/block/$disk/device" 2>/dev/null)")
done < <(disks_of_dir "$dir")
[ -n "$nic" ] || nic=$(awk 'NR > 1 && $2 == "00000000" { print $1; exit }' "$ROOT/proc/net/route" 2>/dev/null)
[ -n "$nic" ] && devices+=("NIC $nic:$(readlink -f "$ROOT/sys/class/net/$nic/device" 2>/dev/null)")
for entry in "${devices[@]}"; do
  name=${entry%%:*}
  path=${entry#*:}
  mapfile -t irqs < <([ -n "$path" ] && irqs_of "$path")
  if [ ${#irqs[@]} -eq 0 ]; then
    echo "skip  $name: no IRQs found (a virtual device?)"
    continue
  fi
  for irq in "${irqs[@]}"; do
    set_value "$ROOT/proc/irq/$irq/smp_affinity_list" "$target" \
      "$name IRQ $irq off the pinned cores $avoid (interrupt work would steal reactor time)"
  done
done
if [ -z "$ROOT" ] && pgrep -x irqbalance >/dev/null 2>&1; then
  echo "note  irqbalance is running and will move IRQs back: set IRQBALANCE_BANNED_CPULIST=$avoid"
fi
finish
