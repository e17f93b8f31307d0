#!/usr/bin/env bash
# Network sysctls for many client connections and large replication streams. Limits are only
# raised, never lowered.
# Usage: tuning/net-sysctls.sh [--apply]   (dry run by default)
. "$(dirname "$0")/lib.sh"
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
set_at_least "$(sysctl_path net.core.somaxconn)" 4096 "accept backlog for bursts of client connections (1024 per core by default)"
set_at_least "$(sysctl_path net.ipv4.tcp_max_syn_backlog)" 8192 "half-open connections during a reconnect storm after a leader change"
set_at_least "$(sysctl_path net.core.rmem_max)" 16777216 "lets TCP autotuning grow a replication stream's receive window past 4 MiB frames"
set_at_least "$(sysctl_path net.core.wmem_max)" 16777216 "the same for send buffers of a leader streaming to followers"
set_at_least "$(sysctl_path net.ipv4.tcp_rmem)" "4096 131072 16777216" "autotuning ceiling for receive buffers (a bandwidth-delay product across racks)"
set_at_least "$(sysctl_path net.ipv4.tcp_wmem)" "4096 65536 16777216" "autotuning ceiling for send buffers"
set_value "$(sysctl_path net.ipv4.tcp_slow_start_after_idle)" 0 "an idle replication link keeps its window, so the next burst is not slowed"
finish
