#!/usr/bin/env bash
# benches/logs.sh: the `logs` collector's cost (issue 13, "Measured"): log
# lines per CPU-second through the built-in rules, against `grep -c` of the
# same rules and mtail on the same file, and loopwatch's memory tailing 100
# files against 1.
#
#   bash benches/logs.sh
#
# 1. Throughput. A log of LINES lines (benches/tools/gen_asyncio_log.py:
#    access/job lines, ~5 % repeated rate-limit warnings, ~1 % lines of the
#    six built-in asyncio rules, tracebacks below them; cached in
#    target/bench-logs/data/) is hard-linked into an empty directory that a
#    running loopwatch (HTTP 127.0.0.1:19301, UDP ingest off) globs with
#    `start_at: beginning`. loopwatch's utime+stime (/proc/PID/stat) from the
#    link until loopwatch_log_lines_total reaches the file's line count,
#    minus its idle rate measured over IDLE_SECS just before (with the same
#    scrape every 0.2 s), is its CPU for the file. References on the same
#    file, CPU from wait4 (benches/tools/rusage.py): `LC_ALL=C grep -c -E` of
#    the rules as one alternation (GREP_RUNS runs, the median), and
#    `mtail --one_shot` with benches/logs-mtail/asyncio.mtail. Counts are
#    checked against what the generator wrote.
# 2. Memory. benches/tools/append_logs.py appends RATE lines/s to each of 100
#    files, another one to 1 file; one loopwatch per set (19302, 19303)
#    globs them (start_at end, interval 1s), and mtail (127.0.0.1:19304)
#    tails the 100 files too. VmRSS and VmHWM after MEM_SECS seconds.
#
# Measures CPU time, not wall time: other work may share the cores. Prints
# Markdown on stdout; raw output goes to target/bench-logs/. Builds in
# release mode first (`cargo build --release --bin loopwatch`, at most
# 900 s), then a watchdog ends the measuring part after RUN_DEADLINE
# seconds. Stops only the processes it started, by PID.
#
# Knobs (environment): LINES (5000000), MAX_READ (4194304 bytes per poll),
# INTERVAL (200ms), IDLE_SECS (5), GREP_RUNS (3), RATE (3 lines/s per file),
# MEM_SECS (60), RUN_DEADLINE (900), BUILTIN_RULES (true; `false` measures
# reading, line splitting and the repetition detector without the rules),
# PARTS (`all`; `loopwatch` runs only loopwatch's throughput).
# Needs curl, ss, python3, grep, mtail (Debian: apt-get install mtail).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

LINES=${LINES:-5000000}
MAX_READ=${MAX_READ:-4194304}
INTERVAL=${INTERVAL:-200ms}
IDLE_SECS=${IDLE_SECS:-5}
GREP_RUNS=${GREP_RUNS:-3}
RATE=${RATE:-3}
MEM_SECS=${MEM_SECS:-60}
RUN_DEADLINE=${RUN_DEADLINE:-900}
BUILTIN_RULES=${BUILTIN_RULES:-true}
PARTS=${PARTS:-all}

PORT_TP=19301
PORT_M100=19302
PORT_M1=19303
PORT_MTAIL=19304

LOG=$ROOT/target/bench-logs
DATA=$LOG/data
mkdir -p "$LOG" "$DATA"
WORK=$(mktemp -d "$LOG/work.XXXXXX") # beside DATA: the log is hard-linked
rm -f "$LOG"/*.txt "$LOG"/*.prom "$LOG"/loopwatch-*.log

LW_PID=
M100_PID=
M1_PID=
MTAIL_PID=
W100_PID=
W1_PID=
WATCHDOG=

say() { echo "$*" >&2; }

stop_pid() { # pid...: TERM, then wait, each one this script started
    local p
    for p in "$@"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
    for p in "$@"; do [[ -n $p ]] && wait "$p" 2>/dev/null || true; done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$W100_PID" "$W1_PID" "$LW_PID" "$M100_PID" "$M1_PID" "$MTAIL_PID" "$WATCHDOG"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "logs.sh: stopped (signal or deadline)"; exit 124' INT TERM

for tool in curl ss awk python3 cargo getconf grep mtail; do
    command -v "$tool" >/dev/null || { say "logs.sh: $tool not found (mtail: apt-get install mtail)"; exit 1; }
done
for p in $PORT_TP $PORT_M100 $PORT_M1 $PORT_MTAIL; do
    if [[ -n $(ss -Hltn "sport = :$p") ]]; then
        say "logs.sh: TCP $p is in use; stop whatever listens there first"; exit 1
    fi
done

say "logs.sh: building (release)"
timeout 900 cargo build --release --bin loopwatch >"$LOG/build.log" 2>&1 || {
    say "logs.sh: build failed; see $LOG/build.log"; tail -20 "$LOG/build.log" >&2; exit 1
}
LW=$ROOT/target/release/loopwatch

# The watchdog: the measuring part ends within RUN_DEADLINE seconds.
(
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "$RUN_DEADLINE" & sp=$!
    wait "$sp" && kill -TERM $$ 2>/dev/null
) &
WATCHDOG=$!

CLK_TCK=$(getconf CLK_TCK)
now() { date +%s.%N; }
calc() { awk "BEGIN {print $*}"; }
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
utime_stime() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
scrape() { curl -s --max-time 5 "http://127.0.0.1:$1/metrics"; }
metric() { # port series -> value, 0 if absent
    scrape "$1" | awk -v s="$2" '$1 == s {v = $2} END {print (v == "" ? 0 : v)}'
}
vm() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
wait_ready() { # port pid
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$1/-/ready" && return 0
        kill -0 "$2" 2>/dev/null || { say "logs.sh: loopwatch on $1 exited; see $LOG"; exit 1; }
        sleep 0.1
    done
    say "logs.sh: loopwatch on $1 not ready after 10 s"; exit 1
}

# ---------------------------------------------------------------- the file
FILE=$DATA/asyncio-$LINES.log
EXPECTED=$DATA/asyncio-$LINES.json
if [[ ! -s $FILE || ! -s $EXPECTED ]]; then
    say "logs.sh: generating $LINES lines into $FILE"
    python3 benches/tools/gen_asyncio_log.py "$LINES" "$FILE.tmp" "$EXPECTED.tmp" 13
    mv "$EXPECTED.tmp" "$EXPECTED"
    mv "$FILE.tmp" "$FILE"
fi
exp() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2:]: v=v.get(k, 0) if isinstance(v, dict) else 0
print(v)' "$EXPECTED" "$@"; }
N=$(exp lines)
BYTES=$(stat -c %s "$FILE")
cat "$FILE" >/dev/null # into the page cache, the same for every reader
RULES=(asyncio_task_exception_never_retrieved asyncio_slow_callback asyncio_run_in_running_loop
    asyncio_task_destroyed_pending asyncio_coroutine_never_awaited nonetype_not_callable)
# The rules as one alternation, as benches/logs-mtail/asyncio.mtail has them.
ALT="Task exception was never retrieved|Executing <.* took [0-9]+(\\.[0-9]+)? seconds|asyncio\\.run\\(\\) cannot be called from a running event loop|Task was destroyed but it is pending!|coroutine .*was never awaited|TypeError: 'NoneType' object is not callable"

cat <<EOF
# loopwatch logs benchmark

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r); load average at start: $(loadavg)
- $("$LW" --version 2>&1 | head -1), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (uncommitted changes in src/)'); $(grep --version | head -1); $(mtail --version 2>&1 | head -1)
- file: $N lines, $BYTES bytes ($(calc "$BYTES / $N") bytes/line), $(exp rule_lines) lines matching a built-in rule; in the page cache for every reader

EOF

# ---------------------------------------------------------------- 1. loopwatch
mkdir -p "$WORK/in"
cat >"$WORK/tp.yml" <<EOF
ingest:
  udp_listen_address: ''
logs:
  - name: bench
    paths: ['$WORK/in/*.log']
    start_at: beginning
    builtin_rules: $BUILTIN_RULES
    max_read_bytes: $MAX_READ
    interval: $INTERVAL
    timeout: $INTERVAL
EOF
"$LW" check-config "$WORK/tp.yml" >"$LOG/check-config.txt" 2>&1 || {
    say "logs.sh: config rejected:"; cat "$LOG/check-config.txt" >&2; exit 1
}
say "logs.sh: loopwatch throughput ($N lines)"
"$LW" --config.file "$WORK/tp.yml" --web.listen-address "127.0.0.1:$PORT_TP" >"$LOG/loopwatch-tp.log" 2>&1 &
LW_PID=$!
wait_ready "$PORT_TP" "$LW_PID"
sleep 2
LINES_SERIES='loopwatch_log_lines_total{log="bench"}'
# Idle: the same scrape every 0.2 s, no file yet.
i0=$(ticks "$LW_PID"); it0=$(now)
end=$(calc "$it0 + $IDLE_SECS")
while (($(calc "$(now) < $end"))); do metric "$PORT_TP" "$LINES_SERIES" >/dev/null; sleep 0.2; done
i1=$(ticks "$LW_PID"); it1=$(now)
IDLE_RATE=$(calc "($i1 - $i0) / $CLK_TCK / ($it1 - $it0)") # CPU-s per s
LOAD_TP0=$(loadavg)
read -r u0 s0 <<<"$(utime_stime "$LW_PID")"; t0=$(now)
ln "$FILE" "$WORK/in/bench.log"
seen=0
while :; do
    seen=$(metric "$PORT_TP" "$LINES_SERIES")
    (($(calc "int($seen)") >= N)) && break
    kill -0 "$LW_PID" 2>/dev/null || { say "logs.sh: loopwatch exited; see $LOG/loopwatch-tp.log"; exit 1; }
    sleep 0.2
done
read -r u1 s1 <<<"$(utime_stime "$LW_PID")"; t1=$(now)
LOAD_TP1=$(loadavg)
LW_HWM=$(vm "$LW_PID" VmHWM)
scrape "$PORT_TP" >"$LOG/loopwatch-tp.prom"
stop_pid "$LW_PID"; LW_PID=
LW_WALL=$(calc "$t1 - $t0")
LW_CPU_RAW=$(calc "($u1 - $u0 + $s1 - $s0) / $CLK_TCK")
LW_CPU=$(calc "$LW_CPU_RAW - $IDLE_RATE * $LW_WALL")
LW_RATE=$(calc "int($N / $LW_CPU)")
lwm() { awk -v s="$1" '$1 == s {v = $2} END {print (v == "" ? 0 : v)}' "$LOG/loopwatch-tp.prom"; }
if [[ $PARTS == loopwatch ]]; then
    printf '| loopwatch, builtin_rules: %s (interval %s, max_read_bytes %s) | lines %d | CPU %.2f s (utime %.2f, stime %.2f; idle %.3f subtracted) | wall %.1f s | **%d lines per CPU-second** | VmHWM %s kB | load %s → %s |\n' \
        "$BUILTIN_RULES" "$INTERVAL" "$MAX_READ" "$(calc "int($(lwm "$LINES_SERIES"))")" "$LW_CPU" "$(calc "($u1 - $u0) / $CLK_TCK")" \
        "$(calc "($s1 - $s0) / $CLK_TCK")" "$(calc "$IDLE_RATE * $LW_WALL")" "$LW_WALL" "$LW_RATE" "$LW_HWM" "$LOAD_TP0" "$LOAD_TP1"
    exit 0
fi

# ---------------------------------------------------------------- grep
say "logs.sh: grep -c, $GREP_RUNS runs"
: >"$LOG/grep-runs.txt"
for _ in $(seq "$GREP_RUNS"); do
    r=$(LC_ALL=C python3 benches/tools/rusage.py "$LOG/grep-count.txt" -- grep -c -E "$ALT" "$FILE")
    echo "$r $(cat "$LOG/grep-count.txt") $(loadavg)" >>"$LOG/grep-runs.txt"
done
# Median by CPU (utime+stime).
read -r g_u g_s g_rss g_wall _ g_count g_load <<<"$(awk '{print $1 + $2, $0}' "$LOG/grep-runs.txt" | sort -n | awk -v m=$(((GREP_RUNS + 1) / 2)) 'NR == m {$1 = ""; print}')"
GREP_CPU=$(calc "$g_u + $g_s")
GREP_RATE=$(calc "int($N / $GREP_CPU)")

# ---------------------------------------------------------------- mtail
say "logs.sh: mtail --one_shot"
LOAD_MT0=$(loadavg)
read -r m_u m_s m_rss m_wall m_rc <<<"$(python3 benches/tools/rusage.py "$LOG/mtail-oneshot.prom" -- \
    mtail --progs benches/logs-mtail --logs "$FILE" --one_shot --one_shot_format prometheus --logtostderr 2>"$LOG/mtail-oneshot.log")"
LOAD_MT1=$(loadavg)
MTAIL_CPU=$(calc "$m_u + $m_s")
MTAIL_RATE=$(calc "int($N / $MTAIL_CPU)")
mtm() { awk -v s="$1" '$1 == s {v = $2} END {print (v == "" ? 0 : v)}' "$LOG/mtail-oneshot.prom"; }

echo "## 1. Lines per CPU-second through the built-in rules (one file of $N lines)"
echo
echo "| reader | lines counted | rule lines counted | CPU s (utime+stime) | of which idle, subtracted | wall s | lines per CPU-second | peak RSS | load average during |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
lw_rules=0
for r in "${RULES[@]}"; do lw_rules=$(calc "$lw_rules + $(lwm "loopwatch_log_matches_total{log=\"bench\",rule=\"$r\"}")"); done
mt_rules=0
for r in "${RULES[@]}"; do mt_rules=$(calc "$mt_rules + $(mtm "log_matches_total{prog=\"asyncio.mtail\",rule=\"$r\"}")"); done
printf '| loopwatch (built-in rules, tracebacks, repetition detector; interval %s, max_read_bytes %s) | %d | %d | %.2f | %.3f (%.4f CPU-s/s × %.1f s) | %.1f | **%d** | %s kB (VmHWM) | %s → %s |\n' \
    "$INTERVAL" "$MAX_READ" "$(calc "int($(lwm "$LINES_SERIES"))")" "$lw_rules" "$LW_CPU" "$(calc "$IDLE_RATE * $LW_WALL")" "$IDLE_RATE" "$LW_WALL" "$LW_WALL" "$LW_RATE" "$LW_HWM" "$LOAD_TP0" "$LOAD_TP1"
printf '| `LC_ALL=C grep -c -E` (the six rules as one alternation; median of %d) | %s | %d | %.2f | — | %.1f | **%d** | %s kB | %s |\n' \
    "$GREP_RUNS" "—" "$g_count" "$GREP_CPU" "$g_wall" "$GREP_RATE" "$g_rss" "$g_load"
printf '| mtail --one_shot (the six rules, no tracebacks, no repetition) | %d | %d | %.2f | — | %.1f | **%d** | %s kB | %s → %s |\n' \
    "$(calc "int($(mtm 'log_lines_total{prog="asyncio.mtail"}'))")" "$mt_rules" "$MTAIL_CPU" "$m_wall" "$MTAIL_RATE" "$m_rss" "$LOAD_MT0" "$LOAD_MT1"
echo
echo "loopwatch CPU split: utime $(calc "($u1 - $u0) / $CLK_TCK") s, stime $(calc "($s1 - $s0) / $CLK_TCK") s. Per rule (generator's count / loopwatch / mtail):"
echo
echo "| rule | written | loopwatch | mtail |"
echo "| --- | ---: | ---: | ---: |"
for r in "${RULES[@]}"; do
    echo "| $r | $(exp rules "$r") | $(lwm "loopwatch_log_matches_total{log=\"bench\",rule=\"$r\"}") | $(mtm "log_matches_total{prog=\"asyncio.mtail\",rule=\"$r\"}") |"
done
echo "| (sum; grep -c: $g_count) | $(exp rule_lines) | $lw_rules | $mt_rules |"
echo
echo "Slow callbacks into the histogram: loopwatch $(lwm 'loopwatch_log_slow_callback_seconds_count{log="bench"}'), mtail $(mtm 'log_slow_callback_seconds_count{prog="asyncio.mtail"}'). Exceptions by type (written / loopwatch):"
python3 - "$EXPECTED" "$LOG/loopwatch-tp.prom" <<'EOF'
import json, re, sys
exp = json.load(open(sys.argv[1]))["exceptions"]
got = {}
for line in open(sys.argv[2]):
    m = re.match(r'loopwatch_log_exceptions_total\{exception="([^"]*)",log="bench"\} (\S+)', line) or \
        re.match(r'loopwatch_log_exceptions_total\{log="bench",exception="([^"]*)"\} (\S+)', line)
    if m:
        got[m.group(1)] = int(float(m.group(2)))
print("; ".join("%s %d / %d" % (k, exp.get(k, 0), got.get(k, 0)) for k in sorted(set(exp) | set(got))))
EOF
echo
echo "loopwatch_log_repeated_total: $(lwm 'loopwatch_log_repeated_total{log="bench"}'); loopwatch_log_read_bytes_total: $(lwm 'loopwatch_log_read_bytes_total{log="bench"}') (file: $BYTES); polls that outlived their timeout (loopwatch_collector_errors_total{collector=\"logs\",reason=\"timeout\"}): $(lwm 'loopwatch_collector_errors_total{collector="logs",reason="timeout",target="bench"}')."
echo

# ---------------------------------------------------------------- 2. memory
say "logs.sh: memory, 100 files and 1 file, $MEM_SECS s"
mkdir -p "$WORK/m100" "$WORK/m1"
for set in 100 1; do
    cat >"$WORK/m$set.yml" <<EOF
ingest:
  udp_listen_address: ''
logs:
  - name: m$set
    paths: ['$WORK/m$set/*.log']
EOF
done
python3 benches/tools/append_logs.py "$WORK/m100" 100 "$RATE" >"$WORK/written-100" &
W100_PID=$!
python3 benches/tools/append_logs.py "$WORK/m1" 1 "$RATE" >"$WORK/written-1" &
W1_PID=$!
sleep 1
LOAD_M0=$(loadavg)
"$LW" --config.file "$WORK/m100.yml" --web.listen-address "127.0.0.1:$PORT_M100" >"$LOG/loopwatch-m100.log" 2>&1 &
M100_PID=$!
"$LW" --config.file "$WORK/m1.yml" --web.listen-address "127.0.0.1:$PORT_M1" >"$LOG/loopwatch-m1.log" 2>&1 &
M1_PID=$!
mtail --progs benches/logs-mtail --logs "$WORK/m100/*.log" --address 127.0.0.1 --port "$PORT_MTAIL" --logtostderr \
    >"$LOG/mtail-m100.log" 2>&1 &
MTAIL_PID=$!
wait_ready "$PORT_M100" "$M100_PID"
wait_ready "$PORT_M1" "$M1_PID"
c100_0=$(ticks "$M100_PID"); c1_0=$(ticks "$M1_PID"); cm_0=$(ticks "$MTAIL_PID"); mt0=$(now)
sleep "$MEM_SECS"
c100_1=$(ticks "$M100_PID"); c1_1=$(ticks "$M1_PID"); cm_1=$(ticks "$MTAIL_PID"); mt1=$(now)
LOAD_M1=$(loadavg)
row() { # label pid port series files
    printf '| %s | %s | %s kB | %s kB | %s | %.2f |\n' "$1" "$5" "$(vm "$2" VmRSS)" "$(vm "$2" VmHWM)" \
        "$(calc "int($(metric "$3" "$4"))")" "$(calc "$6 / $CLK_TCK / ($mt1 - $mt0) * 100")"
}
echo "## 2. Memory tailing 1 and 100 files ($RATE lines/s appended to each, after $MEM_SECS s)"
echo
echo "| reader | files | VmRSS | VmHWM | lines counted | CPU % of a core over the $MEM_SECS s |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
row "loopwatch (one logs target, glob, interval 1s)" "$M1_PID" "$PORT_M1" 'loopwatch_log_lines_total{log="m1"}' 1 "$((c1_1 - c1_0))"
row "loopwatch (one logs target, glob, interval 1s)" "$M100_PID" "$PORT_M100" 'loopwatch_log_lines_total{log="m100"}' 100 "$((c100_1 - c100_0))"
row "mtail (asyncio.mtail, --logs glob)" "$MTAIL_PID" "$PORT_MTAIL" 'log_lines_total{prog="asyncio.mtail"}' 100 "$((cm_1 - cm_0))"
echo
echo "loopwatch_log_files: $(metric "$PORT_M1" 'loopwatch_log_files{log="m1"}') and $(metric "$PORT_M100" 'loopwatch_log_files{log="m100"}'). Load average: $LOAD_M0 → $LOAD_M1."
stop_pid "$W100_PID" "$W1_PID"; W100_PID= W1_PID=
echo "Lines written during the whole phase (the writers started 1 s before the readers, which start at the end of the files): $(cat "$WORK/written-1") to 1 file, $(cat "$WORK/written-100") to 100 files."
echo
echo "Load average at the end: $(loadavg). Raw output in target/bench-logs/."
