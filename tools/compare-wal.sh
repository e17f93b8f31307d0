#!/usr/bin/env bash
# compare-wal.sh: corelog's local log against two baselines with the same workload on the
# same file system:
#   corelog      `corelog bench wal`
#   raft-engine  tools/raft-engine-bench (TiKV's raft-engine 0.4.2, write-group commit)
#   buffered     tools/buffered-wal-bench (buffered pwrite + fdatasync, simple group commit,
#                preallocated file)
# All three run with the same --entry-size, --concurrency and --duration, interleaved
# (corelog, raft-engine, buffered, then again: 2 rounds by default) because the disk
# drifts by up to 30% within an hour; ratios are computed within each round.
# corelog runs pinned (bench wal's default), except at --concurrency 1, where it runs
# unpinned (`--no-pin`) as the baselines' threads do: on a disk with one completion queue a
# pinned executor away from the disk's interrupt CPU pays a cross-CPU wake-up per flush,
# which one appender feels whole (docs/measurements/2026-11-28-adaptive-sync.md; with 64 in
# flight pinning measured 2.9x raft-engine's appends/s, unpinned 2.2x).
#
# Usage: tools/compare-wal.sh [--dir DIR] [--corelog BIN] [--entry-size BYTES]
#                             [--concurrency N] [--duration 10s] [--rounds 2]
#                             [--groups N] [--corelog-args ARGS] [--out DIR]
#                             [--baselines-only]
#                             [--quiet-wait SECS] [--quiet-pct PCT]
#
# Each run records the CPU that the rest of the machine used meanwhile ("other CPU");
# before each run the script waits (up to --quiet-wait seconds) for the machine to be
# quiet, and the table flags runs that were disturbed (see lib/hostload.sh).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --dir DIR          directory on the file system to test (default: a new temporary
                     directory under /var/tmp, removed afterwards)
  --corelog BIN      corelog binary (default: target/release/corelog)
  --entry-size B     payload bytes per entry (default: 4096)
  --concurrency N    appends in flight / writer threads (default: 64)
  --duration D       measured time per run (default: 10s)
  --rounds N         interleaved rounds (default: 2)
  --groups N         --groups for corelog bench wal (default: 1)
  --corelog-args A   more arguments for corelog bench wal, split on spaces (e.g.
                     "--no-pin"). With --rt, pass --no-pin: a pinned glommio executor at
                     SCHED_FIFO busy-polls its core and starves its own io_uring worker
                     (same core, same priority), and the run hangs.
  --out DIR          keep every run's JSON here (default: a new directory under /var/tmp)
  --baselines-only   run raft-engine and buffered only (no corelog)
  --quiet-wait SECS  before each run, wait up to SECS for the machine to be quiet
                     (default: 60; 0: do not wait)
  --quiet-pct PCT    quiet means other processes use less than PCT % of the CPUs;
                     runs above it are flagged (default: 10)
  --rt                 run every measured program at real-time priority (chrt -f 1).
                       This kernel defers a woken thread's preemption of a busy CPU to
                       the next tick (4 ms) for normal threads, so on a shared machine
                       every latency becomes ~4 ms; real-time threads run at once.
EOF
}

TOOLS=$(cd "$(dirname "$0")" && pwd)
DIR=""
CORELOG="target/release/corelog"
ENTRY=4096
CONC=64
DURATION=10s
ROUNDS=2
GROUPS_N=1
CORELOG_ARGS=()
OUT=""
BASELINES_ONLY=0
QUIET_WAIT=60
QUIET_PCT=10
RUN_PREFIX=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) DIR="$2"; shift 2 ;;
        --corelog) CORELOG="$2"; shift 2 ;;
        --entry-size) ENTRY="$2"; shift 2 ;;
        --concurrency) CONC="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --groups) GROUPS_N="$2"; shift 2 ;;
        --corelog-args) read -r -a CORELOG_ARGS <<< "$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --baselines-only) BASELINES_ONLY=1; shift ;;
        --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
        --quiet-pct) QUIET_PCT="$2"; shift 2 ;;
        --rt) RUN_PREFIX=(chrt -f 1); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare-wal: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$DURATION" =~ ^[0-9.]+(s|ms|m)?$ ]] || { echo "compare-wal: bad --duration $DURATION" >&2; exit 2; }
[[ "$DURATION" =~ [a-z]$ ]] || DURATION="${DURATION}s"
DURATION_S=$(awk -v d="$DURATION" 'BEGIN { v = d + 0; if (d ~ /ms$/) v /= 1000; else if (d ~ /m$/) v *= 60; printf "%d", v + 1 }')

die() { echo "compare-wal: error: $*" >&2; exit 1; }
log() { echo "compare-wal: $*" >&2; }

command -v python3 >/dev/null || die "python3 is needed to read JSON"
# shellcheck source=lib/hostload.sh
source "$TOOLS/lib/hostload.sh"
trap 'rm -f "$HOSTLOAD_TIMES"' EXIT
if [[ ${#RUN_PREFIX[@]} -gt 0 ]] && ! "${RUN_PREFIX[@]}" true 2>/dev/null; then
    die "--rt needs chrt and the right to use real-time priority (root or CAP_SYS_NICE)"
fi
command -v cargo >/dev/null || die "cargo is needed to build the baselines"

if [[ $BASELINES_ONLY -eq 0 ]]; then
    [[ -x "$CORELOG" ]] || die "corelog binary not found or not executable at '$CORELOG'. Build it (cargo build --release) or pass --corelog BIN; --baselines-only runs the baselines alone."
    if ! HELP=$("$CORELOG" bench wal --help 2>&1) || ! grep -q -- '--entry-size' <<< "$HELP"; then
        die "'$CORELOG bench wal' is not available (no 'bench wal' subcommand with --entry-size yet). Use --baselines-only to run the baselines alone."
    fi
fi

# --- build the baselines (a no-op when up to date) -------------------------------------
build() { # project dir -> prints the release binary path
    local proj=$1 name=$2
    log "building $name (release)"
    cargo build --release --quiet --manifest-path "$TOOLS/$proj/Cargo.toml" >&2 \
        || die "building $TOOLS/$proj failed"
    local tdir
    tdir=$(cargo metadata --format-version 1 --no-deps --manifest-path "$TOOLS/$proj/Cargo.toml" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    [[ -x "$tdir/release/$name" ]] || die "built $name but found no $tdir/release/$name"
    echo "$tdir/release/$name"
}
RE_BIN=$(build raft-engine-bench raft-engine-bench)
BUF_BIN=$(build buffered-wal-bench buffered-wal-bench)

# --- directories ---------------------------------------------------------------------
CLEAN_DIR=0
if [[ -z "$DIR" ]]; then
    DIR=$(mktemp -d /var/tmp/compare-wal.XXXXXX)
    CLEAN_DIR=1
fi
mkdir -p "$DIR"
[[ -z "$OUT" ]] && OUT=$(mktemp -d /var/tmp/compare-wal-out.XXXXXX)
mkdir -p "$OUT"
RUNDIR="$DIR/compare-wal.$$"
cleanup() {
    rm -rf "$RUNDIR"
    rm -f "$HOSTLOAD_TIMES"
    if [[ $CLEAN_DIR -eq 1 ]]; then rmdir "$DIR" 2>/dev/null || true; fi
}
trap cleanup EXIT

FS_LINE=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$DIR" || true)
log "directory $DIR on: $FS_LINE"
log "entry size $ENTRY, concurrency $CONC, duration $DURATION, $ROUNDS round(s); JSON in $OUT"
{
    echo "date=$(date -u +%FT%TZ)"
    echo "dir=$DIR"
    echo "fs=$FS_LINE"
    echo "kernel=$(uname -r)"
    echo "entry_size=$ENTRY concurrency=$CONC duration=$DURATION rounds=$ROUNDS groups=$GROUPS_N"
    echo "run_prefix=${RUN_PREFIX[*]:-}"
} > "$OUT/env.txt"

if [[ "$CONC" == 1 && " ${CORELOG_ARGS[*]:-} " != *" --no-pin "* ]]; then
    CORELOG_ARGS+=(--no-pin)
fi
COMMON=(--duration "$DURATION" --entry-size "$ENTRY" --concurrency "$CONC")
run_one() { # tool round
    local tool=$1 round=$2 json="$OUT/${1}_r${2}.json" logf="$OUT/${1}_r${2}.log"
    rm -rf "$RUNDIR"; mkdir -p "$RUNDIR"
    log "round $round: $tool"
    local cmd
    case "$tool" in
        corelog) cmd=("${RUN_PREFIX[@]}" "$CORELOG" bench wal --dir "$RUNDIR" "${COMMON[@]}" --groups "$GROUPS_N" "${CORELOG_ARGS[@]}" --json "$json") ;;
        raft-engine) cmd=("${RUN_PREFIX[@]}" "$RE_BIN" --dir "$RUNDIR" "${COMMON[@]}" --json "$json") ;;
        buffered) cmd=("${RUN_PREFIX[@]}" "$BUF_BIN" --dir "$RUNDIR" "${COMMON[@]}" --json "$json") ;;
    esac
    echo "${cmd[*]}" > "$logf"
    wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true
    load_begin
    # A hung run (see --corelog-args) is killed after the run's length plus 90 s.
    if ! timeout -s KILL "$(( ${DURATION_S%.*} + 90 ))" "${cmd[@]}" >> "$logf" 2>&1; then
        tail -n 20 "$logf" >&2
        die "$tool failed or hung in round $round; output in $logf"
    fi
    load_end
    echo "$LOAD_OTHER_PCT" > "$OUT/${tool}_r${round}.load"
    log "round $round: $tool done (other CPU ${LOAD_OTHER_PCT}%)"
    [[ -s "$json" ]] || die "$tool wrote no JSON in round $round"
    rm -rf "$RUNDIR"
}

TOOL_LIST=(corelog raft-engine buffered)
[[ $BASELINES_ONLY -eq 1 ]] && TOOL_LIST=(raft-engine buffered)
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TOOL_LIST[@]}"; do
        run_one "$t" "$r"
    done
done

# --- report --------------------------------------------------------------------------
python3 - "$OUT" "$ROUNDS" "$QUIET_PCT" "${TOOL_LIST[@]}" <<'EOF'
import json, os, sys
out, rounds, quiet_pct, tools = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
res = {t: [json.load(open(os.path.join(out, f"{t}_r{r}.json"))) for r in range(1, rounds + 1)] for t in tools}
load = {t: [float(open(os.path.join(out, f"{t}_r{r}.load")).read()) for r in range(1, rounds + 1)] for t in tools}
for t in tools:
    for d, l in zip(res[t], load[t]):
        d["other_cpu_pct"] = l

def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")

print()
print(f"{'tool':12} {'round':>5} {'appends/s':>11} {'MiB/s':>9} {'flushes/s':>10} {'entries/fl':>10} {'p50 µs':>9} {'p99 µs':>9} {'p999 µs':>9} {'other CPU':>9}")
noisy = []
for t in tools:
    for r, d in enumerate(res[t], 1):
        flag = " !" if d["other_cpu_pct"] >= quiet_pct else ""
        if flag:
            noisy.append(f"{t} round {r}")
        print(f"{t:12} {r:5} {d['appends_per_sec']:11.0f} {d['mib_per_sec']:9.1f} {d.get('flushes_per_sec', float('nan')):10.0f} "
              f"{d.get('entries_per_flush', float('nan')):10.1f} {d['p50_us']:9.0f} {d['p99_us']:9.0f} {d['p999_us']:9.0f} {d['other_cpu_pct']:8.0f}%{flag}")
    ds = res[t]
    print(f"{t:12} {'mean':>5} {mean([d['appends_per_sec'] for d in ds]):11.0f} {mean([d['mib_per_sec'] for d in ds]):9.1f} "
          f"{mean([d.get('flushes_per_sec', float('nan')) for d in ds]):10.0f} {mean([d.get('entries_per_flush', float('nan')) for d in ds]):10.1f} "
          f"{mean([d['p50_us'] for d in ds]):9.0f} {mean([d['p99_us'] for d in ds]):9.0f} {mean([d['p999_us'] for d in ds]):9.0f}")

summary = {"runs": res}
if "corelog" in tools:
    print()
    print("ratios within each round (throughput: higher is better for corelog; latency: lower is better)")
    print(f"{'ratio':28} " + " ".join(f"{'r' + str(r):>7}" for r in range(1, rounds + 1)) + f" {'mean':>7}")
    summary["ratios"] = {}
    for base in ("raft-engine", "buffered"):
        for key, label in (("appends_per_sec", "appends/s"), ("p50_us", "p50"), ("p99_us", "p99")):
            rs = [c[key] / b[key] if b[key] else float("nan") for c, b in zip(res["corelog"], res[base])]
            name = f"corelog/{base} {label}"
            summary["ratios"][name] = rs
            print(f"{name:28} " + " ".join(f"{x:7.2f}" for x in rs) + f" {mean(rs):7.2f}")
if noisy:
    print()
    print(f"warning: other processes used >= {quiet_pct:.0f}% of the CPUs during: {', '.join(noisy)}.")
    print("Their latencies include waiting for a CPU; rerun on a quiet machine before trusting them.")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
EOF
log "JSON and logs kept in $OUT"
