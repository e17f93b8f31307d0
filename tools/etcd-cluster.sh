#!/usr/bin/env bash
# A 3-member etcd cluster on loopback, the peer baseline for `corelog bench` (issue 5).
#
#   etcd-cluster.sh start DIR    start members e1..e3 (client ports 23791-23793, peer ports
#                                23801-23803), data and logs under DIR; waits until
#                                `etcdctl endpoint health` passes on all three
#   etcd-cluster.sh stop DIR     stop the members started with DIR (SIGTERM, then SIGKILL
#                                after 10 s); nothing to do is not an error
#   etcd-cluster.sh clean DIR    stop, then remove DIR
#   etcd-cluster.sh status DIR   `etcdctl endpoint status` of the three members
#   etcd-cluster.sh leader DIR   the leader's client endpoint (host:port), for a single
#                                client that should not pay a follower's forwarding hop
#
# etcd comes from Debian's etcd-server (etcdctl from etcd-client), installed with apt-get when
# missing (needs root). Settings are etcd's defaults except a backend quota of 8 GiB
# (ETCD_QUOTA_BYTES), so repeated benchmark runs do not hit the 2 GiB NOSPACE alarm; extra
# flags for every member can be given in ETCD_EXTRA_FLAGS. The members are started with
# setsid, so they outlive this script; their PIDs are in DIR/eN.pid, logs in DIR/eN.log.
set -euo pipefail

QUOTA="${ETCD_QUOTA_BYTES:-8589934592}"
CLIENT_URLS=(http://127.0.0.1:23791 http://127.0.0.1:23792 http://127.0.0.1:23793)
PEER_URLS=(http://127.0.0.1:23801 http://127.0.0.1:23802 http://127.0.0.1:23803)
INITIAL="e1=${PEER_URLS[0]},e2=${PEER_URLS[1]},e3=${PEER_URLS[2]}"
ENDPOINTS="${CLIENT_URLS[0]},${CLIENT_URLS[1]},${CLIENT_URLS[2]}"
export ETCDCTL_API=3

die() { echo "etcd-cluster.sh: $*" >&2; exit 1; }

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ensure_etcd() {
  if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
    return
  fi
  [ "$(id -u)" = 0 ] || die "etcd or etcdctl is missing; install Debian's etcd-server and etcd-client (needs root)"
  echo "etcd-cluster.sh: installing etcd-server and etcd-client with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
}

# The PID in DIR/eN.pid if that process is still an etcd, else nothing.
member_pid() {
  local f="$1/e$2.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = etcd ]; then
    echo "$pid"
  fi
}

healthy() {
  etcdctl --endpoints="$ENDPOINTS" --command-timeout=2s endpoint health >/dev/null 2>&1
}

start() {
  local dir="$1" i running=0 pid
  ensure_etcd
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  for i in 1 2 3; do
    if [ -n "$(member_pid "$dir" "$i")" ]; then
      running=$((running + 1))
    fi
  done
  if [ "$running" = 3 ]; then
    echo "etcd-cluster.sh: already running in $dir" >&2
  elif [ "$running" != 0 ]; then
    die "only $running of 3 members of $dir are running; run 'stop $dir' first"
  else
    local port
    for port in 23791 23792 23793 23801 23802 23803; do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is already in use (another etcd? see 'ss -ltnp'); not starting"
      fi
    done
    # Many benchmark connections: make sure each member may hold them.
    ulimit -n 65536 2>/dev/null || true
    local extra=()
    read -r -a extra <<<"${ETCD_EXTRA_FLAGS:-}"
    for i in 1 2 3; do
      setsid etcd --name "e$i" --data-dir "$dir/e$i" \
        --listen-client-urls "${CLIENT_URLS[i - 1]}" --advertise-client-urls "${CLIENT_URLS[i - 1]}" \
        --listen-peer-urls "${PEER_URLS[i - 1]}" --initial-advertise-peer-urls "${PEER_URLS[i - 1]}" \
        --initial-cluster "$INITIAL" --initial-cluster-token corelog-etcd-baseline \
        --initial-cluster-state new --quota-backend-bytes "$QUOTA" \
        ${extra[@]+"${extra[@]}"} \
        </dev/null >"$dir/e$i.log" 2>&1 &
      echo $! >"$dir/e$i.pid"
    done
  fi
  for _ in $(seq 1 60); do
    if healthy; then
      for i in 1 2 3; do
        [ -n "$(member_pid "$dir" "$i")" ] || die "member e$i is not running; its log is $dir/e$i.log"
      done
      echo "etcd-cluster.sh: 3 members healthy at $ENDPOINTS (data in $dir)" >&2
      return 0
    fi
    for i in 1 2 3; do
      if [ -z "$(member_pid "$dir" "$i")" ]; then
        tail -n 20 "$dir/e$i.log" >&2 || true
        die "member e$i exited; its log is $dir/e$i.log"
      fi
    done
    sleep 0.5
  done
  die "not healthy after 30 s; logs in $dir/e*.log"
}

stop() {
  local dir="$1" i pid pids=()
  [ -d "$dir" ] || return 0
  for i in 1 2 3; do
    pid=$(member_pid "$dir" "$i")
    if [ -n "$pid" ]; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for _ in $(seq 1 100); do
    local alive=()
    for pid in ${pids[@]+"${pids[@]}"}; do
      if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = etcd ]; then
        alive+=("$pid")
      fi
    done
    pids=(${alive[@]+"${alive[@]}"})
    [ "${#pids[@]}" = 0 ] && break
    sleep 0.1
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    echo "etcd-cluster.sh: member $pid ignored SIGTERM for 10 s, killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$dir"/e[123].pid
}

[ $# = 2 ] || usage
case "$1" in
  start) start "$2" ;;
  stop) stop "$2" ;;
  clean)
    if [ -d "$2" ] && [ ! -e "$2/e1.log" ] && [ ! -d "$2/e1" ]; then
      die "$2 does not look like a directory of this script (no e1.log, no e1/); not removing it"
    fi
    stop "$2"
    rm -rf "$2"
    ;;
  status)
    etcdctl --endpoints="$ENDPOINTS" --write-out=table endpoint status
    ;;
  leader)
    # `endpoint status` as simple lines: endpoint, ID, version, DB size, is leader, ...
    etcdctl --endpoints="$ENDPOINTS" --write-out=simple endpoint status |
      awk -F', ' '$5 == "true" { sub("^http://", "", $1); print $1; found = 1 }
                  END { if (!found) exit 1 }' ||
      die "no member reports itself leader (is the cluster of $2 running?)"
    ;;
  *) usage ;;
esac
