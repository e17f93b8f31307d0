#!/usr/bin/env bash
# etcd-compare.sh: corelog's cluster beside a 3-member etcd on this machine, measured the
# same way, in alternating rounds, with the verdicts of issues 4 and 5:
#   peak       corelog's saturation (default `corelog bench`, 1 KiB) >= 30x etcd's best
#              closed-loop puts/s (1 KiB values, 64/256/512/1000 connections; aim 40x)
#   80% load   corelog's p99 at 80% of its peak < etcd's p50 at 80% of its own peak
#   one client corelog's p50 with one append in flight <= 0.5x etcd's with one put in
#              flight, both closed loops; etcd through gRPC (as its own clients talk to
#              it) at its leader (a put sent to a follower pays one more hop)
# Each round starts a fresh etcd (tools/etcd-cluster.sh) and a fresh corelog cluster
# (`corelog bench` starts one); the two never run at once, and odd rounds run etcd first,
# even rounds corelog first, because the machine drifts: compare within a round.
#
# Usage: tools/etcd-compare.sh [--rounds N] [--corelog BIN] [--etcd-load BIN]
#                              [--out DIR] [--one-client-only]
#   --rounds N          rounds (default 2)
#   --corelog BIN       default target/release/corelog (built if missing)
#   --etcd-load BIN     default: built from tools/etcd-load into target/etcd-load
#   --out DIR           keep every run's output here (default: a new directory in /var/tmp)
#   --one-client-only   only the one-client comparison (about 30 s a round instead of 3 min)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=2
CORELOG=""
ETCD_LOAD=""
OUT=""
ONE_ONLY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --corelog) CORELOG="$2"; shift 2 ;;
        --etcd-load) ETCD_LOAD="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --one-client-only) ONE_ONLY=1; shift ;;
        -h|--help) usage ;;
        *) echo "etcd-compare.sh: unknown argument $1" >&2; usage ;;
    esac
done

die() { echo "etcd-compare.sh: $*" >&2; exit 1; }

if [[ -z "$CORELOG" ]]; then
    CORELOG="$ROOT/target/release/corelog"
    [[ -x "$CORELOG" ]] || (cd "$ROOT" && cargo build --release -q)
fi
[[ -x "$CORELOG" ]] || die "no corelog binary at $CORELOG"
if [[ -z "$ETCD_LOAD" ]]; then
    ETCD_LOAD="$ROOT/target/etcd-load/release/etcd-load"
    (cd "$ROOT/tools/etcd-load" && CARGO_TARGET_DIR="$ROOT/target/etcd-load" cargo build --release -q)
fi
[[ -x "$ETCD_LOAD" ]] || die "no etcd-load binary at $ETCD_LOAD"
OUT=${OUT:-$(mktemp -d /var/tmp/etcd-compare.XXXXXX)}
mkdir -p "$OUT"
ETCD_DIR="$OUT/etcd-data"
trap '"$ROOT/tools/etcd-cluster.sh" clean "$ETCD_DIR" >/dev/null 2>&1 || true' EXIT

# The value of key=VALUE in a SUMMARY line.
field() { grep -o "\b$2=[0-9.]*" <<<"$1" | head -1 | cut -d= -f2; }

run_etcd() {
    local r=$1 log
    "$ROOT/tools/etcd-cluster.sh" clean "$ETCD_DIR" >/dev/null 2>&1 || true
    "$ROOT/tools/etcd-cluster.sh" start "$ETCD_DIR" 2>/dev/null
    local leader
    leader=$("$ROOT/tools/etcd-cluster.sh" leader "$ETCD_DIR")
    if [[ $ONE_ONLY == 0 ]]; then
        log="$OUT/r$r-etcd-peak.txt"
        "$ETCD_LOAD" --grpc --find-peak --value-size 1024 --duration 5s >"$log" 2>&1 ||
            die "etcd-load --find-peak failed; see $log"
        E_PEAK=$(grep '^SUMMARY' "$log" | tail -1)
    fi
    log="$OUT/r$r-etcd-one.txt"
    "$ETCD_LOAD" --grpc --endpoints "$leader" --connections 1 --value-size 1024 \
        --duration 5s >"$log" 2>&1 || die "etcd-load (one client) failed; see $log"
    E_ONE=$(grep '^SUMMARY' "$log" | tail -1)
    "$ROOT/tools/etcd-cluster.sh" clean "$ETCD_DIR" >/dev/null 2>&1
}

run_corelog() {
    local r=$1 log
    if [[ $ONE_ONLY == 0 ]]; then
        log="$OUT/r$r-corelog-bench.txt"
        "$CORELOG" bench --out "$OUT/r$r-corelog-bench" >"$log" 2>&1 ||
            die "corelog bench failed; see $log"
        C_PEAK=$(grep '^saturation' -A3 "$log" | grep -o 'achieved [0-9]*' | grep -o '[0-9]*')
        C_80=$(grep '^SUMMARY' "$log" | tail -1)
    fi
    # One append in flight, closed loop: the saturation phase of a one-connection bench
    # (its open loop, a fifth of that rate, is not used here).
    log="$OUT/r$r-corelog-one.txt"
    "$CORELOG" bench --connections 1 --concurrency 1 --duration 5s --load-fraction 0.2 \
        --out "$OUT/r$r-corelog-one" >"$log" 2>&1 || die "corelog bench (one client) failed; see $log"
    C_ONE=$(grep '^saturation' -A3 "$log" | grep '^  latency' | grep -o 'p50 [0-9.]* [µm]s')
}

# "388 µs" or "1.20 ms" -> microseconds.
to_us() { awk '{ v = $2; if ($3 == "ms") v *= 1000; printf "%.0f", v }' <<<"$1"; }

verdict() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN {
    ok = (op == ">=") ? (a >= b) : (op == "<") ? (a < b) : (a <= b); print ok ? "PASS" : "FAIL" }'; }

echo "etcd-compare: $ROUNDS round(s), output in $OUT" >&2
ROWS=()
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r: $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >&2
    if (( r % 2 == 1 )); then run_etcd "$r"; run_corelog "$r"; else run_corelog "$r"; run_etcd "$r"; fi
    e_one=$(field "$E_ONE" p50_us)
    c_one=$(to_us "$C_ONE")
    ratio=$(awk -v c="$c_one" -v e="$e_one" 'BEGIN { printf "%.2f", c / e }')
    row="round $r  one client p50: corelog $c_one µs, etcd $e_one µs = $ratio ($(verdict "$ratio" "<=" 0.5))"
    if [[ $ONE_ONLY == 0 ]]; then
        e_peak=$(field "$E_PEAK" peak_puts_per_sec)
        e_p50=$(field "$E_PEAK" p50_us)
        c_p99=$(field "$C_80" p99_us)
        x=$(awk -v c="$C_PEAK" -v e="$e_peak" 'BEGIN { printf "%.1f", c / e }')
        row+=$'\n'"round $r  peak: corelog $C_PEAK/s, etcd $e_peak/s = ${x}x ($(verdict "$x" ">=" 30))"
        row+=$'\n'"round $r  80% load: corelog p99 $c_p99 µs, etcd p50 $e_p50 µs ($(verdict "$c_p99" "<" "$e_p50"))"
    fi
    ROWS+=("$row")
    echo "$row" >&2
done
echo
echo "corelog beside etcd (3 members, loopback, 1 KiB; etcd through gRPC), $ROUNDS round(s):"
printf '%s\n' "${ROWS[@]}"
echo "runs kept in $OUT"
