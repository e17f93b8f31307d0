#!/usr/bin/env bash
# Socket busy polling (net.core.busy_poll / busy_read, µs). It spins a core while a socket
# waits: only for hosts whose cores are dedicated to corelog. `--off` sets both back to 0.
# Usage: tuning/busy-poll.sh [--apply] [--off] [USEC]   (dry run by default; USEC default 50)
. "$(dirname "$0")/lib.sh"
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
us=50
for a in "${ARGS[@]+"${ARGS[@]}"}"; do
  case "$a" in
    --off) us=0 ;;
    *[!0-9]*) echo "not a number of µs: $a" >&2; exit 2 ;;
    *) us=$a ;;
  esac
done
set_value "$(sysctl_path net.core.busy_read)" "$us" "poll the NIC queue on a blocking read instead of sleeping for the interrupt (spins the CPU)"
set_value "$(sysctl_path net.core.busy_poll)" "$us" "the same for poll/epoll waits (spins the CPU)"
finish
