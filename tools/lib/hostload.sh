# hostload.sh: how busy the rest of the machine was during a measurement.
# Sourced by fio-compare.sh and compare-wal.sh (bash).
#
# On a small shared VM a latency benchmark is only as good as the CPU it gets: with the
# cores busy, a thread woken by an I/O completion can wait for the next scheduler tick
# (4 ms at HZ=250) before it runs, and a durable 4 KiB write that costs ~120 µs on a quiet
# machine shows up as 4 ms. So every run records the CPU used by everything except the
# benchmark itself ("other CPU", % of all cores), and runs can wait for a quiet machine.
#
#   load_begin; run the benchmark as a child of this shell; load_end  -> LOAD_OTHER_PCT
#   wait_quiet MAX_SECS PCT   waits until other CPU over 2 s is below PCT (or MAX_SECS pass)

HOSTLOAD_NCPU=$(nproc 2>/dev/null || echo 1)
HOSTLOAD_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
HOSTLOAD_TIMES=$(mktemp /var/tmp/hostload.XXXXXX)

# Busy ticks of all CPUs: user nice system irq softirq steal (idle and iowait left out).
_hostload_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }

# CPU seconds used so far by this shell's finished children: the `times` builtin must run
# in this shell (a subshell, as in $(...), has no children), so it writes to a file first.
_hostload_children_parse() {
    awk 'NR==2 {
        n = split($0, f, " "); s = 0
        for (i = 1; i <= n; i++) { split(f[i], p, "m"); sub("s", "", p[2]); s += p[1] * 60 + p[2] }
        print s }' "$HOSTLOAD_TIMES"
}

load_begin() {
    _HL_T0=$(date +%s.%N)
    _HL_B0=$(_hostload_busy)
    times > "$HOSTLOAD_TIMES"
    _HL_C0=$(_hostload_children_parse)
}

# Sets LOAD_OTHER_PCT: CPU used by others during the run, in % of all cores.
load_end() {
    local t1 b1 c1
    t1=$(date +%s.%N)
    b1=$(_hostload_busy)
    times > "$HOSTLOAD_TIMES"
    c1=$(_hostload_children_parse)
    LOAD_OTHER_PCT=$(awk -v t0="$_HL_T0" -v t1="$t1" -v b0="$_HL_B0" -v b1="$b1" \
        -v c0="$_HL_C0" -v c1="$c1" -v tck="$HOSTLOAD_TCK" -v n="$HOSTLOAD_NCPU" 'BEGIN {
        wall = t1 - t0; if (wall <= 0) { print 0; exit }
        other = (b1 - b0) / tck - (c1 - c0); if (other < 0) other = 0
        printf "%.0f", 100 * other / (wall * n) }')
}

# wait_quiet MAX_SECS PCT: returns 0 once the machine's CPU use over 2 s is below PCT %,
# 1 (with a warning) if MAX_SECS pass first. MAX_SECS 0 checks once and does not wait.
wait_quiet() {
    local max=$1 pct=$2 start now b0 b1 used
    start=$(date +%s)
    while :; do
        b0=$(_hostload_busy); sleep 2; b1=$(_hostload_busy)
        used=$(awk -v d=$((b1 - b0)) -v tck="$HOSTLOAD_TCK" -v n="$HOSTLOAD_NCPU" \
            'BEGIN { printf "%.0f", 100 * d / tck / (2 * n) }')
        if ((used < pct)); then return 0; fi
        now=$(date +%s)
        if ((now - start >= max)); then
            echo "warning: the machine is busy (${used}% CPU used by others); measuring anyway" >&2
            return 1
        fi
    done
}
