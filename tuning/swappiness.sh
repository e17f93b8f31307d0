#!/usr/bin/env bash
# vm.swappiness at most 1: swap anonymous memory only under real pressure.
# Usage: tuning/swappiness.sh [--apply]   (dry run by default)
. "$(dirname "$0")/lib.sh"
usage() { sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
set_at_most "$(sysctl_path vm.swappiness)" 1 "a swapped-out write buffer turns a log write into a disk read first"
finish
