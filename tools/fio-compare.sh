#!/usr/bin/env bash
# fio-compare.sh: corelog's local log against the disk's own limits, measured by fio in
# the same run on the same file system.
#
#   (a) sequential O_DIRECT writes of the flush size, fdatasync after every write, QD1
#       (what one group-commit flush per write can do; bs = corelog's bytes_per_flush
#       rounded up to 4 KiB, or --bs)
#   (b) sequential O_DIRECT writes, no sync, large blocks at a queue depth (the ceiling:
#       the best of a few block size / queue depth pairs, since on a virtual disk no single
#       pair is reliably the fastest)
#   (c) 4 KiB O_DIRECT write + fdatasync at QD1 (the latency of one durable write;
#       per-op latency = write latency + fdatasync latency, each from its submission, the
#       time in io_uring_enter included, as corelog's durable latency is measured from the
#       append call)
#
# All fio jobs use the io_uring engine on one preallocated and fully written file, so
# writes are overwrites (like corelog's zero-filled segments).
#
# Then `corelog bench wal` runs at --concurrency 64 or N (bandwidth) and --concurrency 1
# (latency, unpinned like fio), 4 KiB entries, and a table compares them. Targets:
#   corelog MiB/s >= 0.90 x (a),  corelog MiB/s >= 0.75 x (b),  corelog p50 <= 1.2 x (c).
#
# Usage: tools/fio-compare.sh [--dir DIR] [--corelog BIN] [--duration SECS]
#                             [--bs SIZE[,SIZE...]] [--file-size SIZE]
#                             [--ceiling BS:QD[,BS:QD...]]
#                             [--groups N] [--concurrency N] [--corelog-args ARGS]
#                             [--out DIR] [--fio-only]
#                             [--quiet-wait SECS] [--quiet-pct PCT] [--rounds N]
#
# Each measurement records the CPU that the rest of the machine used meanwhile ("other
# CPU"); before each one the script waits (up to --quiet-wait seconds) for the machine to
# be quiet, and flags the disturbed ones (see lib/hostload.sh).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --dir DIR            directory on the file system to test (default: a new temporary
                       directory under /var/tmp, removed afterwards)
  --corelog BIN        corelog binary (default: target/release/corelog)
  --duration SECS      length of every measurement (default: 10)
  --bs LIST            block size(s) for (a), comma separated (default: corelog's
                       bytes_per_flush rounded up to 4 KiB; with --fio-only: 4k,64k,256k,1m)
  --file-size SIZE     fio test file size (default: 1g)
  --ceiling LIST       block size:queue depth pairs for (b); the ceiling is the best
                       of them (default: 1m:1,1m:4,256k:16)
  --groups N           --groups passed to corelog bench wal (default: 1)
  --concurrency N      --concurrency of the bandwidth run (default: 64; the latency
                       run is always 1)
  --corelog-args ARGS  more arguments for both corelog runs, split on spaces (e.g.
                       "--no-pin" or "--sync dsync"). With --rt, pass --no-pin: a pinned
                       glommio executor at SCHED_FIFO busy-polls its core and starves its
                       own io_uring worker (same core, same priority), and the run hangs.
  --out DIR            keep the fio and corelog JSON here (default: a new directory
                       under /var/tmp, printed at the end)
  --fio-only           measure the disk alone (no corelog)
  --rounds N           measure corelog's bandwidth and the ceiling (b) N times, in turn,
                       and judge (b) by the median of the N ratios (default 1). The
                       disk's speed drifts (on the project's VM by 30% within an
                       hour, and by 10-15% between runs a minute apart), so one
                       ceiling measured a minute away from corelog's run can decide
                       the verdict by itself.
  --quiet-wait SECS    before each measurement, wait up to SECS for the machine to be
                       quiet (default: 60; 0: do not wait)
  --quiet-pct PCT      quiet means other processes use less than PCT % of the CPUs;
                       measurements above it are flagged (default: 10)
  --rt                 run every measured program at real-time priority (chrt -f 1).
                       This kernel defers a woken thread's preemption of a busy CPU to
                       the next tick (4 ms) for normal threads, so on a shared machine
                       every latency becomes ~4 ms; real-time threads run at once.
EOF
}

DIR=""
CORELOG="target/release/corelog"
DURATION=10
BS=""
FILE_SIZE="1g"
CEILING="1m:1,1m:4,256k:16"
GROUPS_N=1
CONC=64
CORELOG_ARGS=()
OUT=""
FIO_ONLY=0
QUIET_WAIT=60
ROUNDS=1
QUIET_PCT=10
RUN_PREFIX=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) DIR="$2"; shift 2 ;;
        --corelog) CORELOG="$2"; shift 2 ;;
        --duration) DURATION="${2%s}"; shift 2 ;;
        --bs) BS="$2"; shift 2 ;;
        --file-size) FILE_SIZE="$2"; shift 2 ;;
        --ceiling) CEILING="$2"; shift 2 ;;
        --groups) GROUPS_N="$2"; shift 2 ;;
        --concurrency) CONC="$2"; shift 2 ;;
        --corelog-args) read -r -a CORELOG_ARGS <<< "$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --fio-only) FIO_ONLY=1; shift ;;
        --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --quiet-pct) QUIET_PCT="$2"; shift 2 ;;
        --rt) RUN_PREFIX=(chrt -f 1); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "fio-compare: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "fio-compare: error: $*" >&2; exit 1; }
log() { echo "fio-compare: $*" >&2; }

command -v python3 >/dev/null || die "python3 is needed to read JSON"
TOOLS=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/hostload.sh
source "$TOOLS/lib/hostload.sh"
trap 'rm -f "$HOSTLOAD_TIMES"' EXIT
if [[ ${#RUN_PREFIX[@]} -gt 0 ]] && ! "${RUN_PREFIX[@]}" true 2>/dev/null; then
    die "--rt needs chrt and the right to use real-time priority (root or CAP_SYS_NICE)"
fi

# --- fio -----------------------------------------------------------------------------
if ! command -v fio >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        log "fio not found; installing it from Debian's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
    else
        die "fio is not installed and this is not root; install it with: sudo apt-get install -y fio"
    fi
fi
fio --enghelp=io_uring >/dev/null 2>&1 || die "this fio has no io_uring engine ($(fio --version))"

# --- corelog: check before spending time on fio ----------------------------------------
if [[ $FIO_ONLY -eq 0 ]]; then
    [[ -e "$CORELOG" ]] || die "corelog binary not found at '$CORELOG'. Build it (cargo build --release) or pass --corelog BIN; --fio-only measures the disk alone."
    [[ -x "$CORELOG" ]] || die "'$CORELOG' is not executable"
    if ! HELP=$("$CORELOG" bench wal --help 2>&1) || ! grep -q -- '--entry-size' <<< "$HELP"; then
        die "'$CORELOG bench wal' is not available (this corelog has no 'bench wal' subcommand with --entry-size yet). Use --fio-only to measure the disk alone."
    fi
fi

# --- directories ---------------------------------------------------------------------
CLEAN_DIR=0
if [[ -z "$DIR" ]]; then
    DIR=$(mktemp -d /var/tmp/corelog-fio.XXXXXX)
    CLEAN_DIR=1
fi
mkdir -p "$DIR"
[[ -z "$OUT" ]] && OUT=$(mktemp -d /var/tmp/fio-compare-out.XXXXXX)
mkdir -p "$OUT"
FILE="$DIR/fio-compare.$$.dat"
COREDIR="$DIR/corelog-bench.$$"
cleanup() {
    rm -f "$FILE"
    rm -rf "$COREDIR"
    rm -f "$HOSTLOAD_TIMES"
    if [[ $CLEAN_DIR -eq 1 ]]; then rmdir "$DIR" 2>/dev/null || true; fi
}
trap cleanup EXIT

# Where the numbers come from.
FS_LINE=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$DIR" || true)
DEV=$(findmnt -n -o SOURCE -T "$DIR" | sed -e 's|^/dev/||' -e 's|\[.*||' || true)
BASEDEV=$(lsblk -no PKNAME "/dev/$DEV" 2>/dev/null | head -n1 || true)
[[ -z "$BASEDEV" ]] && BASEDEV="$DEV"
QINFO=""
if [[ -d /sys/block/$BASEDEV/queue ]]; then
    Q=/sys/block/$BASEDEV/queue
    QINFO="write_cache=$(cat $Q/write_cache 2>/dev/null || echo ?) fua=$(cat $Q/fua 2>/dev/null || echo ?) scheduler=$(cat $Q/scheduler 2>/dev/null || echo ?) rotational=$(cat $Q/rotational 2>/dev/null || echo ?)"
fi
log "directory $DIR on: $FS_LINE ${QINFO:+($BASEDEV: $QINFO)}"
log "results in $OUT"
{
    echo "date=$(date -u +%FT%TZ)"
    echo "dir=$DIR"
    echo "fs=$FS_LINE"
    echo "device=$BASEDEV $QINFO"
    echo "fio=$(fio --version)"
    echo "kernel=$(uname -r)"
    echo "run_prefix=${RUN_PREFIX[*]:-}"
} > "$OUT/env.txt"

# JSON field from a file: jget FILE 'python expression on d'
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# Size like 4k/1m/1g/4096 -> bytes.
to_bytes() {
    python3 - "$1" <<'EOF'
import sys, re
m = re.fullmatch(r'(\d+)\s*([kmg]?)(i?b)?', sys.argv[1].strip().lower())
if not m: sys.exit("bad size: " + sys.argv[1])
print(int(m.group(1)) * {'': 1, 'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30}[m.group(2)])
EOF
}

# --- corelog runs --------------------------------------------------------------------
corelog_run() { # name concurrency [extra args...]
    local name=$1 conc=$2
    shift 2
    rm -rf "$COREDIR"; mkdir -p "$COREDIR"
    local cmd=("${RUN_PREFIX[@]}" "$CORELOG" bench wal --dir "$COREDIR" --duration "${DURATION}s" --entry-size 4096
               --concurrency "$conc" --groups "$GROUPS_N" "${CORELOG_ARGS[@]}" "$@" --json "$OUT/corelog_$name.json")
    log "${cmd[*]} ($name)"
    echo "${cmd[*]}" > "$OUT/corelog_$name.log"
    wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true
    load_begin
    # A hung run (see --corelog-args) is killed after the run's length plus 90 s.
    if ! timeout -s KILL "$((${DURATION%.*} + 90))" "${cmd[@]}" >> "$OUT/corelog_$name.log" 2>&1; then
        tail -n 20 "$OUT/corelog_$name.log" >&2
        die "corelog bench wal failed or hung ($name); its output is in $OUT/corelog_$name.log"
    fi
    load_end
    echo "$LOAD_OTHER_PCT" > "$OUT/corelog_$name.load"
    [[ -s "$OUT/corelog_$name.json" ]] || die "corelog bench wal wrote no JSON ($name)"
    rm -rf "$COREDIR"
}

if [[ $FIO_ONLY -eq 0 ]]; then
    corelog_run bandwidth "$CONC"
    # The latency run is unpinned, as fio is: a pinned executor's fdatasyncs run in io_uring
    # workers that inherit its pin, so each one waits for the executor to sleep and switch
    # (about 30 µs per flush on the project's VM; see src/rt/native/exec.rs, `block_on`).
    if [[ " ${CORELOG_ARGS[*]} " == *" --no-pin "* ]]; then
        corelog_run latency 1
    else
        corelog_run latency 1 --no-pin
    fi
fi

if [[ -z "$BS" ]]; then
    if [[ $FIO_ONLY -eq 1 ]]; then
        BS="4k,64k,256k,1m"
    else
        BPF=$(jget "$OUT/corelog_bandwidth.json" 'd["bytes_per_flush"]')
        BS=$(python3 -c 'import sys; b=float(sys.argv[1]); print(max(4096, -(-int(b+0.5)//4096)*4096))' "$BPF")
        log "corelog bytes_per_flush $BPF -> fio (a) bs $BS"
    fi
fi

# --- fio runs ------------------------------------------------------------------------
FIO_COMMON=(--filename="$FILE" --size="$FILE_SIZE" --ioengine=io_uring --direct=1
            --rw=write --output-format=json --percentile_list=50:90:99:99.9)

log "laying out $FILE ($FILE_SIZE, fully written, synced)"
fio --name=prep "${FIO_COMMON[@]}" --bs=1m --iodepth=8 --end_fsync=1 > "$OUT/fio_prep.json"

fio_job() { # name extra-args...
    local name=$1; shift
    log "fio $name: $*"
    wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true
    load_begin
    "${RUN_PREFIX[@]}" fio --name="$name" "${FIO_COMMON[@]}" --lat_percentiles=1 --runtime="$DURATION" --time_based "$@" > "$OUT/fio_$name.json"
    load_end
    echo "$LOAD_OTHER_PCT" > "$OUT/fio_$name.load"
}

IFS=',' read -r -a BS_LIST <<< "$BS"
for bs in "${BS_LIST[@]}"; do
    b=$(to_bytes "$bs")
    fio_job "a_bs${b}_fdatasync" --bs="$b" --iodepth=1 --fdatasync=1
done
IFS=',' read -r -a CEIL_LIST <<< "$CEILING"
CEIL_JOBS=()
for pair in "${CEIL_LIST[@]}"; do
    [[ "$pair" == *:* ]] || die "--ceiling takes BS:QD pairs, not '$pair'"
    b=$(to_bytes "${pair%%:*}"); qd=${pair#*:}
    CEIL_JOBS+=("b_bs${b}_qd${qd}_nosync")
done
ceiling_jobs() { # suffix of the job names: the ceiling (b), one job per BS:QD pair
    local pair b qd
    for pair in "${CEIL_LIST[@]}"; do
        b=$(to_bytes "${pair%%:*}"); qd=${pair#*:}
        fio_job "b_bs${b}_qd${qd}_nosync$1" --bs="$b" --iodepth="$qd"
    done
}
ceiling_jobs ""
fio_job "c_bs4096_qd1_fdatasync" --bs=4k --iodepth=1 --fdatasync=1
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds takes a positive number, not '$ROUNDS'"
for ((r = 2; r <= ROUNDS; r++)); do
    [[ $FIO_ONLY -eq 1 ]] || corelog_run "bandwidth_r$r" "$CONC"
    ceiling_jobs "_r$r"
done

# --- report --------------------------------------------------------------------------
python3 - "$OUT" "$FIO_ONLY" "$QUIET_PCT" "$(IFS=,; echo "${CEIL_JOBS[*]}")" "$CONC" "$ROUNDS" "${BS_LIST[@]}" <<'EOF'
import json, os, sys
out, fio_only, quiet_pct, ceil_jobs = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3]), sys.argv[4].split(",")
conc = sys.argv[5]
rounds = int(sys.argv[6])
bs_list = sys.argv[7:]
noisy = []

def load(name):
    with open(os.path.join(out, f"{name}.load")) as f:
        v = float(f.read())
    if v >= quiet_pct:
        noisy.append(name)
    return v
MiB = 1 << 20

def to_bytes(s):
    import re
    m = re.fullmatch(r'(\d+)\s*([kmg]?)(i?b)?', s.strip().lower())
    return int(m.group(1)) * {'': 1, 'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30}[m.group(2)]

def job(name):
    with open(os.path.join(out, f"fio_{name}.json")) as f:
        return json.load(f)["jobs"][0]

def pct(lat, p):
    # fio writes percentiles as "50.000000" etc. in ns.
    for k, v in (lat.get("percentile") or {}).items():
        if abs(float(k) - p) < 1e-6:
            return v / 1e3
    return float("nan")

def summary(name):
    j = job(name)
    w = j["write"]
    s = j.get("sync") or {}
    sl = s.get("lat_ns") or {}
    # A write's latency is submission + completion ("lat", with --lat_percentiles=1): with
    # io_uring the submission (slat) includes issuing the write to the device, 20-30 µs here,
    # which the completion latency alone ("clat") leaves out. Older JSON without lat
    # percentiles falls back to clat.
    wl = w["lat_ns"] if (w.get("lat_ns") or {}).get("percentile") else w["clat_ns"]
    r = {
        "iops": w["iops"],
        "mib_s": w["bw_bytes"] / MiB,
        "w_p50": pct(wl, 50), "w_p99": pct(wl, 99),
        "s_p50": pct(sl, 50) if sl else 0.0, "s_p99": pct(sl, 99) if sl else 0.0,
        "syncs": sl.get("N", 0),
        "other_cpu_pct": load(f"fio_{name}"),
    }
    r["op_p50"] = r["w_p50"] + r["s_p50"]
    r["op_p99"] = r["w_p99"] + r["s_p99"]
    return r

rows = []
print()
print("fio (io_uring, O_DIRECT, overwrite of a fully written file)")
print(f"{'job':34} {'IOPS':>9} {'MiB/s':>8} {'w p50':>8} {'w p99':>8} {'sync p50':>9} {'sync p99':>9} {'op p50':>8} {'op p99':>8} {'cycle':>8} {'other CPU':>9}")
fio = {}
a_jobs = [f"a_bs{to_bytes(b)}_fdatasync" for b in bs_list]
names = a_jobs + ceil_jobs + ["c_bs4096_qd1_fdatasync"]
for n in names:
    r = summary(n)
    fio[n] = r
    synced = r["syncs"] > 0 or r["s_p50"] > 0
    f = lambda v, w: format(v, f"{w}.1f") if synced else format("-", f">{w}")
    r["cycle_us"] = 1e6 / r["iops"] if r["iops"] else float("nan")
    print(f"{n:34} {r['iops']:9.0f} {r['mib_s']:8.1f} {r['w_p50']:8.1f} {r['w_p99']:8.1f} {f(r['s_p50'], 9)} {f(r['s_p99'], 9)} "
          f"{f(r['op_p50'], 8)} {f(r['op_p99'], 8)} {f(r['cycle_us'], 8)} {r['other_cpu_pct']:8.0f}%")
print("(latencies in µs: w = write, from submission to completion, sync = fdatasync, op = w + sync (per-percentile sum),")
print(" cycle = 1e6 / IOPS, the mean time per durable write at QD1; for (a)/(c) IOPS = durable writes/s)")
ceil_name = max(ceil_jobs, key=lambda n: fio[n]["mib_s"])
print(f"ceiling (b) = {ceil_name}: {fio[ceil_name]['mib_s']:.1f} MiB/s")

summary_json = {"fio": fio, "ceiling_job": ceil_name}
if not fio_only:
    bw = json.load(open(os.path.join(out, "corelog_bandwidth.json")))
    lat = json.load(open(os.path.join(out, "corelog_latency.json")))
    bw["other_cpu_pct"] = load("corelog_bandwidth")
    lat["other_cpu_pct"] = load("corelog_latency")
    summary_json["corelog"] = {"bandwidth": bw, "latency": lat}
    a = fio[a_jobs[0]]
    c = fio["c_bs4096_qd1_fdatasync"]
    # (b) round by round: corelog's bandwidth run, then the ceiling jobs, in turn; the verdict
    # takes the round of the median ratio (the lower middle one for an even count).
    b_rounds = [(bw["mib_per_sec"], fio[ceil_name]["mib_s"])]
    for r in range(2, rounds + 1):
        cbw = json.load(open(os.path.join(out, f"corelog_bandwidth_r{r}.json")))
        ceil_r = max(summary(f"{n}_r{r}")["mib_s"] for n in ceil_jobs)
        b_rounds.append((cbw["mib_per_sec"], ceil_r))
    summary_json["b_rounds"] = [{"corelog": cv, "ceiling": fv, "ratio": cv / fv} for cv, fv in b_rounds]
    b_mid = sorted(b_rounds, key=lambda x: x[0] / x[1])[(len(b_rounds) - 1) // 2]
    b_label = "(b) no-sync ceiling" + (f" (median of {rounds})" if rounds > 1 else "")
    checks = [
        (f"MiB/s, c={conc} vs (a) flush-size write+fdatasync", bw["mib_per_sec"], a["mib_s"], 0.90, ">="),
        (f"MiB/s, c={conc} vs {b_label}", b_mid[0], b_mid[1], 0.75, ">="),
        ("p50 µs, c=1 vs (c) 4 KiB write+fdatasync", lat["p50_us"], c["op_p50"], 1.20, "<="),
    ]
    print()
    print(f"corelog bench wal: c={conc} {bw['appends_per_sec']:.0f} appends/s, {bw['mib_per_sec']:.1f} MiB/s payload, "
          f"{bw.get('flushes_per_sec', 0):.0f} flushes/s, {bw.get('entries_per_flush', 0):.1f} entries and "
          f"{bw.get('bytes_per_flush', 0):.0f} B per flush, p50 {bw['p50_us']:.0f} p99 {bw['p99_us']:.0f} µs")
    print(f"                   c=1  {lat['appends_per_sec']:.0f} appends/s, p50 {lat['p50_us']:.0f} p90 {lat['p90_us']:.0f} "
          f"p99 {lat['p99_us']:.0f} p999 {lat['p999_us']:.0f} max {lat['max_us']:.0f} µs")
    if rounds > 1:
        print("(b) by round (corelog MiB/s / best ceiling MiB/s):  " + ", ".join(
            f"{cv:.0f}/{fv:.0f} = {cv / fv:.2f}" for cv, fv in b_rounds))
    print()
    print(f"{'check':52} {'corelog':>10} {'fio':>10} {'ratio':>7} {'target':>9} verdict")
    failed = 0
    for name, cv, fv, t, op in checks:
        ratio = cv / fv if fv else float("nan")
        ok = ratio >= t if op == ">=" else ratio <= t
        failed += not ok
        print(f"{name:52} {cv:10.1f} {fv:10.1f} {ratio:7.2f} {op + ' ' + format(t, '.2f'):>9} {'PASS' if ok else 'FAIL'}")
        summary_json.setdefault("checks", []).append(
            {"check": name, "corelog": cv, "fio": fv, "ratio": ratio, "target": f"{op} {t}", "pass": ok})
    print("(corelog MiB/s is payload; fio MiB/s is bytes written)")
if noisy:
    print()
    print(f"warning: other processes used >= {quiet_pct:.0f}% of the CPUs during: {', '.join(noisy)}.")
    print("Their latencies include waiting for a CPU; rerun on a quiet machine before trusting them.")
summary_json["disturbed"] = noisy
json.dump(summary_json, open(os.path.join(out, "summary.json"), "w"), indent=1)
EOF
log "JSON and logs kept in $OUT"
