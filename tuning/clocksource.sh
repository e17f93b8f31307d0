#!/usr/bin/env bash
# Clock source tsc where the kernel offers it: clock_gettime stays in the vDSO.
# Usage: tuning/clocksource.sh [--apply]   (dry run by default)
. "$(dirname "$0")/lib.sh"
usage() { sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
cs=$ROOT/sys/devices/system/clocksource/clocksource0
if grep -qw tsc "$cs/available_clocksource" 2>/dev/null; then
  set_value "$cs/current_clocksource" tsc "corelog times every stage of an append; hpet or acpi_pm make each reading a system call"
else
  echo "skip  tsc is not offered here ($(cat "$cs/available_clocksource" 2>/dev/null || echo 'no clocksource'))"
fi
finish
