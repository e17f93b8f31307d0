#!/usr/bin/env bash
# Builds N "hosts" on one machine from network namespaces and cuts links between them.
#
# Each node gets a namespace ${NETNS_PREFIX}N with a veth pair to a bridge ${NETNS_PREFIX}br in
# the root namespace, and its own address SUBNET.(10+N)/24; the bridge has SUBNET.1, so the
# root namespace (a test, a client, `corelog bench --addresses`) reaches every node. No
# forwarding, no NAT, no default route: traffic stays between these namespaces and the root
# namespace's bridge address.
#
#   netns-cluster.sh check                     can this run here? (root, ip netns, nft)
#   netns-cluster.sh up N [--subnet 10.77.0]   create namespaces, veths, bridge (idempotent)
#   netns-cluster.sh start [--bin corelog] [--dir DIR] [--cores C]
#                                              write node configs, start a corelog node in each
#   netns-cluster.sh stop                      stop the nodes that `start` started (SIGTERM)
#   netns-cluster.sh cut A B [--one-way]       nft drop rule: A->B only, or both ways
#   netns-cluster.sh cut A all [--one-way]     the same between A and every other node
#   netns-cluster.sh link-down A | link-up A   take node A's link down / up (isolates A)
#   netns-cluster.sh heal                      remove every cut, every link up
#   netns-cluster.sh status                    namespaces, addresses, cuts
#   netns-cluster.sh down                      stop nodes, delete everything (idempotent)
#
# NETNS_PREFIX (default "cl-") names everything, so several clusters can coexist; keep it
# short (interface names have at most 15 characters). State lives in /run/corelog-netns/.
# Needs root (CAP_NET_ADMIN) and iproute2; cuts need nftables, installed from Debian's
# packages by `up` when missing.
set -euo pipefail

PREFIX="${NETNS_PREFIX:-cl-}"
STATE_DIR=/run/corelog-netns
STATE="$STATE_DIR/${PREFIX}env"
BR="${PREFIX}br"
TABLE=corelog_cut

die() { echo "netns-cluster.sh: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "needs root (it creates network namespaces, a bridge and nft rules); run it with sudo"
}

load_state() {
  [ -f "$STATE" ] || die "no cluster with prefix '$PREFIX' (run: netns-cluster.sh up N)"
  # shellcheck disable=SC1090
  . "$STATE"
}

ns() { echo "${PREFIX}$1"; }
ip_of() { echo "$SUBNET.$((10 + $1))"; }

ensure_nft() {
  command -v nft >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1; then
    echo "netns-cluster.sh: installing nftables (Debian package)" >&2
    (apt-get install -y -qq nftables >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nftables >/dev/null 2>&1; }) ||
      die "could not install nftables"
  fi
  command -v nft >/dev/null 2>&1 || die "nft (nftables) is missing"
}

cmd_check() {
  need_root
  command -v ip >/dev/null 2>&1 || die "ip (iproute2) is missing"
  local probe="${PREFIX}probe$$"
  ip netns add "$probe" 2>/dev/null || die "cannot create a network namespace here"
  ip netns del "$probe"
  local br="${PREFIX}pb$$"
  ip link add "${br:0:15}" type bridge 2>/dev/null || die "cannot create a bridge here"
  ip link del "${br:0:15}"
  echo "ok: root, network namespaces and bridges work; nft: $(command -v nft || echo 'missing (up installs it)')"
}

cmd_up() {
  need_root
  local n="${1:?usage: up N [--subnet A.B.C]}"; shift
  local subnet=10.77.0
  while [ $# -gt 0 ]; do
    case "$1" in
      --subnet) subnet="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "N must be 1..200"
  [[ "$subnet" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--subnet takes three octets, e.g. 10.77.0"
  command -v ip >/dev/null 2>&1 || die "ip (iproute2) is missing"
  ensure_nft
  mkdir -p "$STATE_DIR"
  if [ -f "$STATE" ]; then
    # shellcheck disable=SC1090
    . "$STATE"
    [ "$N" = "$n" ] && [ "$SUBNET" = "$subnet" ] || die "a cluster '$PREFIX' exists with N=$N subnet $SUBNET (run down first)"
  fi
  printf 'N=%s\nSUBNET=%s\n' "$n" "$subnet" >"$STATE"
  SUBNET=$subnet
  if ! ip link show "$BR" >/dev/null 2>&1; then
    ip link add "$BR" type bridge
  fi
  ip addr replace "$SUBNET.1/24" dev "$BR"
  ip link set "$BR" up
  for i in $(seq 1 "$n"); do
    local name veth
    name=$(ns "$i")
    veth="${PREFIX}v$i"
    [ ${#veth} -le 15 ] || die "interface name $veth is too long: use a shorter NETNS_PREFIX"
    ip netns list | grep -qx "$name\( .*\)\?" || ip netns add "$name"
    if ! ip link show "$veth" >/dev/null 2>&1; then
      ip link add "$veth" type veth peer name eth0 netns "$name"
    fi
    ip link set "$veth" master "$BR"
    ip link set "$veth" up
    ip -n "$name" link set lo up
    ip -n "$name" addr replace "$(ip_of "$i")/24" dev eth0
    ip -n "$name" link set eth0 up
  done
  echo "up: $n namespaces ${PREFIX}1..${PREFIX}$n on bridge $BR, addresses $(ip_of 1)..$(ip_of "$n"), host $SUBNET.1"
}

cmd_start() {
  need_root
  load_state
  local bin=corelog dir="/var/tmp/${PREFIX}cluster" cores=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --bin) bin="$2"; shift 2 ;;
      --dir) dir="$2"; shift 2 ;;
      --cores) cores="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  command -v "$bin" >/dev/null 2>&1 || [ -x "$bin" ] || die "no corelog binary at '$bin' (--bin PATH)"
  bin=$(readlink -f "$(command -v "$bin" || echo "$bin")")
  mkdir -p "$dir"
  local members="" clients=""
  for i in $(seq 1 "$N"); do
    members+="
[[members]]
id = $i
peer_addr = \"$(ip_of "$i"):7100\"
client_addr = \"$(ip_of "$i"):7200\"
"
    clients+="${clients:+,}$(ip_of "$i"):7200"
  done
  for i in $(seq 1 "$N"); do
    cat >"$dir/node$i.toml" <<EOF
node_id = $i
data_dir = "$dir/node$i"
cores = $cores
$members
EOF
    ip netns exec "$(ns "$i")" "$bin" serve --config "$dir/node$i.toml" \
      >"$dir/node$i.log" 2>&1 </dev/null &
    echo $! >"$STATE_DIR/${PREFIX}node$i.pid"
  done
  echo "started $N nodes (configs and logs in $dir); clients: $clients"
  echo "try: $bin status --nodes $clients"
}

cmd_stop() {
  need_root
  for f in "$STATE_DIR/${PREFIX}"node*.pid; do
    [ -f "$f" ] || continue
    local pid
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -CONT "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

# Makes sure node $1's namespace has the cut table and chains.
nft_table() {
  ip netns exec "$(ns "$1")" nft -f - <<EOF
table inet $TABLE {
  chain input { type filter hook input priority 0; policy accept; }
  chain output { type filter hook output priority 0; policy accept; }
}
EOF
}

cmd_cut() {
  need_root
  load_state
  ensure_nft
  local a="${1:?usage: cut A B|all [--one-way]}" b="${2:?usage: cut A B|all [--one-way]}"
  local oneway=0
  [ "${3:-}" = "--one-way" ] && oneway=1
  [ "$a" -ge 1 ] && [ "$a" -le "$N" ] || die "no node $a"
  local targets
  if [ "$b" = all ]; then
    targets=$(seq 1 "$N" | grep -vx "$a")
  else
    [ "$b" -ge 1 ] && [ "$b" -le "$N" ] && [ "$b" != "$a" ] || die "no other node $b"
    targets=$b
  fi
  nft_table "$a"
  for t in $targets; do
    ip netns exec "$(ns "$a")" nft add rule inet $TABLE output ip daddr "$(ip_of "$t")" drop
    if [ $oneway = 0 ]; then
      ip netns exec "$(ns "$a")" nft add rule inet $TABLE input ip saddr "$(ip_of "$t")" drop
    fi
  done
  echo "cut: node $a $([ $oneway = 1 ] && echo '->' || echo '<->') ${b}"
}

cmd_link() {
  need_root
  load_state
  local a="${1:?usage: link-down A}" state="$2"
  [ "$a" -ge 1 ] && [ "$a" -le "$N" ] || die "no node $a"
  ip link set "${PREFIX}v$a" "$state"
  echo "link of node $a: $state"
}

cmd_heal() {
  need_root
  load_state
  for i in $(seq 1 "$N"); do
    if command -v nft >/dev/null 2>&1; then
      ip netns exec "$(ns "$i")" nft delete table inet $TABLE 2>/dev/null || true
    fi
    ip link set "${PREFIX}v$i" up 2>/dev/null || true
  done
  echo "healed: no cuts, every link up"
}

cmd_status() {
  load_state
  echo "prefix $PREFIX: $N nodes, subnet $SUBNET.0/24, bridge $BR"
  for i in $(seq 1 "$N"); do
    local link rules
    link=$(ip -br link show "${PREFIX}v$i" 2>/dev/null | awk '{print $2}')
    rules=$(ip netns exec "$(ns "$i")" nft list table inet $TABLE 2>/dev/null | grep -c drop || true)
    echo "node $i: namespace $(ns "$i"), address $(ip_of "$i"), link ${link:-missing}, drop rules ${rules:-0}"
  done
}

cmd_down() {
  need_root
  cmd_stop
  local n=0
  if [ -f "$STATE" ]; then
    # shellcheck disable=SC1090
    . "$STATE"
    n=$N
  fi
  # Also whatever a crashed run left behind with this prefix.
  for name in $(ip netns list | awk '{print $1}' | grep "^${PREFIX}[0-9]\+$" || true); do
    ip netns del "$name" 2>/dev/null || true
  done
  for i in $(seq 1 "$n"); do
    ip link del "${PREFIX}v$i" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  rm -f "$STATE"
  echo "down: namespaces, veths and bridge of '$PREFIX' removed"
}

case "${1:-}" in
  check) shift; cmd_check "$@" ;;
  up) shift; cmd_up "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  cut) shift; cmd_cut "$@" ;;
  link-down) shift; cmd_link "${1:-}" down ;;
  link-up) shift; cmd_link "${1:-}" up ;;
  heal) shift; cmd_heal "$@" ;;
  status) shift; cmd_status "$@" ;;
  down) shift; cmd_down "$@" ;;
  *) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
