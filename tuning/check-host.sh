#!/usr/bin/env bash
# Prints the host settings that matter to a WAL on NVMe, what corelog expects, and the command
# that would change each. Changes nothing: it is a dry run by design (apply by hand, or with the
# tuning scripts that follow it). Usage: tuning/check-host.sh [DATA_DIR]
set -uo pipefail
dir=${1:-/var/tmp}

row() { printf '%-28s %-22s %-26s %s\n' "$1" "$2" "$3" "$4"; }
row "condition" "expected" "found" "to change"
row "---------" "--------" "-----" "---------"

# The device under the data directory.
src=$(findmnt -n -o SOURCE -T "$dir" 2>/dev/null || echo "?")
fstype=$(findmnt -n -o FSTYPE -T "$dir" 2>/dev/null || echo "?")
dev=$(basename "$(readlink -f "$src" 2>/dev/null || echo "$src")")
sys=/sys/block/$dev
[ -d "$sys" ] || sys=/sys/block/$(lsblk -no PKNAME "$src" 2>/dev/null | head -1)
row "data dir file system" "ext4 or xfs" "$fstype ($src)" "-"

if [ -r "$sys/queue/scheduler" ]; then
  sched=$(sed -n 's/.*\[\(.*\)\].*/\1/p' "$sys/queue/scheduler")
  row "I/O scheduler" "none" "$sched" "echo none > $sys/queue/scheduler"
  row "request merging" "2 (off)" "$(cat "$sys/queue/nomerges")" "echo 2 > $sys/queue/nomerges"
  row "write cache" "write back + FUA/PLP" "$(cat "$sys/queue/write_cache" 2>/dev/null) fua=$(cat "$sys/queue/fua" 2>/dev/null)" "(hardware: prefer drives with power-loss protection)"
  row "rq_affinity" "2" "$(cat "$sys/queue/rq_affinity")" "echo 2 > $sys/queue/rq_affinity"
fi
gov=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo "n/a (no cpufreq)")
row "CPU governor" "performance" "$gov" "cpupower frequency-set -g performance"
thp=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)
row "transparent huge pages" "madvise or never" "${thp:-n/a}" "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"
row "vm.swappiness" "1" "$(cat /proc/sys/vm/swappiness)" "sysctl -w vm.swappiness=1"
row "locked memory (ulimit -l)" ">= 16 MiB or root" "$(ulimit -l) KiB, uid $(id -u)" "ulimit -l / LimitMEMLOCK= in the unit file"
row "io_uring allowed" "0" "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" "sysctl -w kernel.io_uring_disabled=0"
row "clock source" "tsc" "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)" "echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource"
row "net.core.somaxconn" ">= 4096" "$(cat /proc/sys/net/core/somaxconn)" "sysctl -w net.core.somaxconn=4096"
row "net.core.wmem_max" ">= 16 MiB" "$(cat /proc/sys/net/core/wmem_max)" "sysctl -w net.core.wmem_max=16777216"
row "net.core.rmem_max" ">= 16 MiB" "$(cat /proc/sys/net/core/rmem_max)" "sysctl -w net.core.rmem_max=16777216"
