#!/usr/bin/env bash
# Transparent huge pages only where asked for (madvise), and no synchronous compaction.
# Usage: tuning/thp.sh [--apply]   (dry run by default)
. "$(dirname "$0")/lib.sh"
usage() { sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
t=$ROOT/sys/kernel/mm/transparent_hugepage
set_value "$t/enabled" madvise "with always, khugepaged and page-fault compaction stall reactor threads"
set_value "$t/defrag" madvise "no direct compaction in the page-fault path of threads that did not ask"
finish
