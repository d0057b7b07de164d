#!/usr/bin/env bash
# benches/run.sh: loopwatch side by side with prometheus-node-exporter,
# prometheus-process-exporter and a minimal axum + prometheus server (the
# floor, benches/tools/floor_server.rs), in one run, on 127.0.0.1 only.
#
#   bash benches/run.sh
#
# Prints one Markdown table per section on stdout; raw logs (wrk output,
# exporter logs) go to target/bench-run/. It builds in release mode, starts
# only its own processes (ports 19001-19006, 1,000 `sleep 600`), stops them
# by PID on exit, and ends by itself: a watchdog stops it after
# RUN_DEADLINE seconds (600). A run takes about 7.5 minutes with a warm build.
#
# Knobs (environment): N_FAST (2000 sequential scrapes for loopwatch and the
# floor), N_SLOW (200 for the peers), N_PE_SLEEPERS (30: process-exporter
# scrapes with the extra processes), WRK_SECS (15), WRK_REPEAT (3 runs each
# for loopwatch and the floor), WRK_REPEAT_GROUPS (2), SLEEPERS (1000),
# IDLE_SECS (20), GROUP_IDLE_SECS (30), PROC_SCAN_SECS / PROC_SCAN_ROUNDS.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

N_FAST=${N_FAST:-2000}
N_SLOW=${N_SLOW:-200}
N_PE_SLEEPERS=${N_PE_SLEEPERS:-30}
WRK_SECS=${WRK_SECS:-15}
SLEEPERS=${SLEEPERS:-1000}
IDLE_SECS=${IDLE_SECS:-20}
GROUP_IDLE_SECS=${GROUP_IDLE_SECS:-30}
RUN_DEADLINE=${RUN_DEADLINE:-600}
WRK_REPEAT=${WRK_REPEAT:-3}
WRK_REPEAT_GROUPS=${WRK_REPEAT_GROUPS:-2}

PORT_LW=19001
PORT_NODE=19002
PORT_PE=19003
PORT_FLOOR=19004
PORT_LWG=19005
PORT_LWN=19006

NODE_EXPORTER=${NODE_EXPORTER:-/usr/bin/prometheus-node-exporter}
PROCESS_EXPORTER=${PROCESS_EXPORTER:-/usr/bin/prometheus-process-exporter}

LOG=$ROOT/target/bench-run
WORK=$(mktemp -d /tmp/loopwatch-bench.XXXXXX)
mkdir -p "$LOG"
rm -f "$LOG"/wrk-*.txt "$LOG"/proc_scan*.txt

declare -A PID=()        # exporter name -> pid
SLEEPER_PIDS=()
WATCHDOG=

say() { echo "$*" >&2; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#SLEEPER_PIDS[@]})); then
        kill "${SLEEPER_PIDS[@]}" 2>/dev/null || true
    fi
    for name in "${!PID[@]}"; do
        kill "${PID[$name]}" 2>/dev/null || true
    done
    for name in "${!PID[@]}"; do
        wait "${PID[$name]}" 2>/dev/null || true
    done
    if ((${#SLEEPER_PIDS[@]})); then
        wait "${SLEEPER_PIDS[@]}" 2>/dev/null || true
    fi
    if [[ -n $WATCHDOG ]]; then
        kill "$WATCHDOG" 2>/dev/null || true
        wait "$WATCHDOG" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "run.sh: stopped (signal or deadline)"; exit 124' INT TERM

# The watchdog: the whole run ends within RUN_DEADLINE seconds.
# Its own sleep is stopped with it, so nothing is left behind.
(
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "$RUN_DEADLINE" & sp=$!
    wait "$sp" && kill -TERM $$ 2>/dev/null
) &
WATCHDOG=$!

for tool in wrk curl ss awk getconf cargo "$NODE_EXPORTER" "$PROCESS_EXPORTER"; do
    command -v "$tool" >/dev/null || { say "run.sh: $tool not found"; exit 1; }
done
for p in $PORT_LW $PORT_NODE $PORT_PE $PORT_FLOOR $PORT_LWG $PORT_LWN; do
    if [[ -n $(ss -Hltn "sport = :$p") ]]; then
        say "run.sh: port $p is in use; stop whatever listens there first"
        exit 1
    fi
done

CLK_TCK=$(getconf CLK_TCK)
now() { date +%s.%N; }
# user+sys clock ticks of a process (all its threads, live and exited).
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
fmt() { awk -v x="$1" -v f="${2:-%.2f}" 'BEGIN {printf f, x}'; }
calc() { awk "BEGIN {print $*}"; }

# Waits until something accepts connections on 127.0.0.1:PORT (no HTTP
# request, so "idle" stays idle).
wait_port() {
    local port=$1 name=$2
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            say "run.sh: $name exited; see $LOG/$name.log"; exit 1
        fi
        sleep 0.1
    done
    say "run.sh: $name does not listen on $port after 10 s"; exit 1
}

start() { # name port command...
    local name=$1 port=$2; shift 2
    "$@" >"$LOG/$name.log" 2>&1 &
    PID[$name]=$!
    wait_port "$port" "$name"
}

# N sequential scrapes on one keep-alive connection; prints "seconds non200".
scrape_n() { # port n
    local port=$1 n=$2 cfg=$WORK/curl-$1.cfg t0 t1 codes
    : >"$cfg"
    for _ in $(seq "$n"); do
        printf 'url = "http://127.0.0.1:%s/metrics"\noutput = "/dev/null"\n' "$port" >>"$cfg"
    done
    t0=$(now)
    codes=$(curl -s --max-time 300 -w '%{http_code}\n' -K "$cfg" || true)
    t1=$(now)
    echo "$(calc "$t1 - $t0") $(grep -cv '^200$' <<<"$codes" || true)"
}

# /proc/stat: "busy total" clock ticks of the whole machine.
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }

# One wrk run with 32 connections against an exporter. Prints
# "p50_ms p99_ms rps non2xx socket_errors exporter_cores wrk_cores others_cores":
# the CPU (in cores) the exporter, wrk and everything else used meanwhile,
# so interference from other work on the machine is visible.
wrk_run() { # label port pid [extra wrk args]
    local label=$1 port=$2 pid=$3; shift 3
    local out=$LOG/wrk-$label.txt m0 m1 e0 e1 t0 t1 wrk_cpu
    read -r -a m0 < <(machine_ticks); e0=$(ticks "$pid"); t0=$(now)
    wrk -t2 -c32 -d"${WRK_SECS}s" --latency "$@" "http://127.0.0.1:$port/metrics" >"$out" 2>&1 || true
    t1=$(now); e1=$(ticks "$pid"); read -r -a m1 < <(machine_ticks)
    # This runs in a subshell whose finished children are wrk and a few
    # sed/awk; `times` must not run in a pipeline (a fork starts at zero).
    times >"$WORK/times-$label"
    wrk_cpu=$(awk 'NR == 2 {
        split($1, u, /[ms]/); split($2, s, /[ms]/); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$WORK/times-$label")
    awk -v secs="$(calc "$t1 - $t0")" -v exp_t="$((e1 - e0))" -v busy="$((m1[0] - m0[0]))" \
        -v tck="$CLK_TCK" -v wrk_cpu="$wrk_cpu" '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /m$/) return substr(v, 1, length(v) - 1) * 60000
            if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
            return "?"
        }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { bad = $NF }
        /Socket errors:/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
        END {
            ex = exp_t / tck / secs; w = wrk_cpu / secs; other = busy / tck / secs - ex - w
            printf "%s %s %s %d %d %.2f %.2f %.2f\n", (p50 == "" ? "?" : p50), (p99 == "" ? "?" : p99),
                (rps == "" ? "?" : int(rps + 0.5)), bad, err, ex, w, (other < 0 ? 0 : other)
        }
    ' "$out"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

verdict() { # value bar (lower is better)
    awk -v v="$1" -v b="$2" 'BEGIN { if (v == "?" || v == "") print "?"; else if (v + 0 < b + 0) print "met"; else print "**MISSED**" }'
}

T_START=$(now)
say "run.sh: building (release)"
timeout 480 cargo build --release --bins --examples --benches >"$LOG/build.log" 2>&1 || {
    say "run.sh: build failed; see $LOG/build.log"; tail -20 "$LOG/build.log" >&2; exit 1
}
LW=$ROOT/target/release/loopwatch
FLOOR=$ROOT/target/release/examples/floor_server

cat <<EOF
# loopwatch benchmark run

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/^MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)
- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)
- loopwatch $("$LW" --version 2>&1 | head -1), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (uncommitted changes)')
- peers: $("$NODE_EXPORTER" --version 2>&1 | head -1); process-exporter $("$PROCESS_EXPORTER" -version 2>&1 | head -1 | sed 's/.*revision: //; s/).*//')
- CLK_TCK $CLK_TCK (CPU figures from /proc/PID/stat have 1/$CLK_TCK s resolution)

EOF

# ---------------------------------------------------------------- proc_scan
say "run.sh: proc_scan micro-bench"
echo "## 0. /proc scan cost per process (cargo bench --bench proc_scan)"
echo
timeout 180 cargo bench --bench proc_scan 2>"$LOG/proc_scan.err" | tee "$LOG/proc_scan.txt" | grep -v '^PROC_SCAN_' || say "run.sh: proc_scan failed; see $LOG/proc_scan.err"
BARE_US=$(grep -o 'PROC_SCAN_BARE_CPU_US_PER_PROCESS=[0-9.]*' "$LOG/proc_scan.txt" | cut -d= -f2 || true)
echo

# ---------------------------------------------------------------- start
PE_CONFIG=$WORK/process-exporter.yml
cat >"$PE_CONFIG" <<'EOF'
process_names:
  - name: "{{.Comm}}"
    cmdline:
      - '.+'
EOF

say "run.sh: starting the exporters"
start loopwatch $PORT_LW env -u LOOPWATCH_CONFIG "$LW" --web.listen-address "127.0.0.1:$PORT_LW" --web.max-requests 64
start loopwatch_noexp $PORT_LWN env -u LOOPWATCH_CONFIG "$LW" --web.listen-address "127.0.0.1:$PORT_LWN" --web.max-requests 64 --web.disable-exporter-metrics
start node_exporter $PORT_NODE "$NODE_EXPORTER" "--web.listen-address=127.0.0.1:$PORT_NODE"
start process_exporter $PORT_PE "$PROCESS_EXPORTER" -web.listen-address "127.0.0.1:$PORT_PE" -config.path "$PE_CONFIG"
start floor $PORT_FLOOR "$FLOOR" "127.0.0.1:$PORT_FLOOR"
NAMES=(loopwatch loopwatch_noexp node_exporter process_exporter floor)
declare -A PORT=([loopwatch]=$PORT_LW [loopwatch_noexp]=$PORT_LWN [node_exporter]=$PORT_NODE [process_exporter]=$PORT_PE [floor]=$PORT_FLOOR)
declare -A LABEL=(
    [loopwatch]="loopwatch (default config)"
    [loopwatch_noexp]="loopwatch --web.disable-exporter-metrics (diagnostic)"
    [node_exporter]="prometheus-node-exporter (defaults)"
    [process_exporter]="prometheus-process-exporter (every process)"
    [floor]="floor (axum + prometheus, 1 counter)"
)

# ---------------------------------------------------------------- 1. idle RSS
sleep 10
declare -A RSS0=() IDLE_RATE=() T0=()
for n in "${NAMES[@]}"; do RSS0[$n]=$(rss_kb "${PID[$n]}"); T0[$n]=$(ticks "${PID[$n]}"); done
I0=$(now)
say "run.sh: idle CPU over ${IDLE_SECS} s"
sleep "$IDLE_SECS"
I1=$(now)
for n in "${NAMES[@]}"; do
    IDLE_RATE[$n]=$(calc "($(ticks "${PID[$n]}") - ${T0[$n]}) / $CLK_TCK / ($I1 - $I0)")
done

echo "## 1. Idle memory: VmRSS 10 s after start, no scrape yet"
echo
echo "| exporter | VmRSS MB | idle CPU (% of one core, the next ${IDLE_SECS} s) | bar |"
echo "| --- | ---: | ---: | --- |"
for n in "${NAMES[@]}"; do
    mb=$(calc "${RSS0[$n]} / 1024")
    bar="-"; [[ $n == loopwatch ]] && bar="< 8 MB: $(verdict "$mb" 8)"
    echo "| ${LABEL[$n]} | $(fmt "$mb" %.1f) | $(fmt "$(calc "${IDLE_RATE[$n]} * 100")" %.2f) | $bar |"
done
echo

# ---------------------------------------------------------------- 2. CPU per scrape
say "run.sh: sequential scrapes"
echo "## 2. CPU per scrape: N sequential scrapes on one keep-alive connection (curl), the exporter's utime+stime minus its idle CPU over the same time, divided by N"
echo
echo "| exporter | N | seconds | non-200 | response bytes | CPU ms total | idle ms subtracted | CPU ms per scrape | bar |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for n in "${NAMES[@]}"; do
    N=$N_SLOW; [[ $n == loopwatch* || $n == floor ]] && N=$N_FAST
    bytes=$(curl -s "http://127.0.0.1:${PORT[$n]}/metrics" | wc -c)
    c0=$(ticks "${PID[$n]}")
    read -r secs bad < <(scrape_n "${PORT[$n]}" "$N")
    c1=$(ticks "${PID[$n]}")
    cpu_ms=$(calc "($c1 - $c0) * 1000 / $CLK_TCK")
    idle_ms=$(calc "${IDLE_RATE[$n]} * $secs * 1000")
    per=$(calc "($cpu_ms - $idle_ms) / $N")
    bar="-"; [[ $n == loopwatch ]] && bar="< 0.5 ms: $(verdict "$per" 0.5)"
    echo "| ${LABEL[$n]} | $N | $(fmt "$secs" %.2f) | $bad | $bytes | $(fmt "$cpu_ms" %.0f) | $(fmt "$idle_ms" %.0f) | $(fmt "$per" %.3f) | $bar |"
done
echo

# ---------------------------------------------------------------- 3. latency
say "run.sh: wrk -c32, ${WRK_SECS} s each"
# loopwatch and the floor run WRK_REPEAT times, interleaved, so that
# interference from the rest of the machine hits both alike.
ORDER=()
for _ in $(seq "$WRK_REPEAT"); do ORDER+=(loopwatch floor); done
ORDER+=(loopwatch_noexp node_exporter process_exporter)
declare -A WRK_ROWS=() WRK_P99S=()
i=0
for n in "${ORDER[@]}"; do
    i=$((i + 1))
    read -r p50 p99 rps bad err ex w other < <(wrk_run "$n-$i" "${PORT[$n]}" "${PID[$n]}")
    WRK_ROWS[$n]+="| ${LABEL[$n]} | $i | $p50 | $p99 | $rps | $bad | $err | $ex | $w | $other |"$'\n'
    WRK_P99S[$n]+="$p99 "
done
echo "## 3. /metrics under 32 concurrent scrapers: wrk -t2 -c32 -d${WRK_SECS}s --latency"
echo
echo "wrk runs on the same 2 cores. loopwatch and the floor ran $WRK_REPEAT times each, alternating; the CPU columns are cores used during the run by the exporter, by wrk, and by everything else on the machine (interference)."
echo
echo "| exporter | run | p50 ms | p99 ms | requests/s | non-2xx | socket errors | exporter CPU (cores) | wrk CPU (cores) | others' CPU (cores) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for n in loopwatch floor loopwatch_noexp node_exporter process_exporter; do printf '%s' "${WRK_ROWS[$n]}"; done
echo
LW_P99_MEDIAN=$(median <<<"${WRK_P99S[loopwatch]}")
echo "loopwatch p99 over $WRK_REPEAT runs: ${WRK_P99S[loopwatch]% }ms; median $LW_P99_MEDIAN ms. Bar p99 < 10 ms: median $(verdict "$LW_P99_MEDIAN" 10), worst run $(verdict "$(tr ' ' '\n' <<<"${WRK_P99S[loopwatch]}" | sort -g | tail -1)" 10). Floor p99: ${WRK_P99S[floor]% }ms."
echo
echo "VmRSS after sections 2 and 3 (MB): $(for n in "${NAMES[@]}"; do printf '%s %s; ' "$n" "$(fmt "$(calc "$(rss_kb "${PID[$n]}") / 1024")" %.1f)"; done)"
echo

# Done with these; fewer bystanders for section 4.
for n in loopwatch loopwatch_noexp node_exporter floor; do
    kill "${PID[$n]}" 2>/dev/null || true; wait "${PID[$n]}" 2>/dev/null || true; unset "PID[$n]"
done

# ---------------------------------------------------------------- 4. process groups
LW_CONFIG=$WORK/loopwatch-groups.yml
cat >"$LW_CONFIG" <<'EOF'
processes:
  - name: sleepers
    interval: 1s
    timeout: 1s
    match: {comm: [sleep]}
  - name: shells
    interval: 1s
    timeout: 1s
    match: {cmdline: ['bash']}
EOF
"$LW" check-config "$LW_CONFIG" >"$LOG/check-config.txt" 2>&1 || { say "run.sh: group config rejected:"; cat "$LOG/check-config.txt" >&2; exit 1; }

say "run.sh: loopwatch with process groups"
start loopwatch_groups $PORT_LWG "$LW" --config.file "$LW_CONFIG" --web.listen-address "127.0.0.1:$PORT_LWG" --web.max-requests 64
sleep 3

nprocs() { find /proc -maxdepth 1 -name '[0-9]*' | wc -l; }
group_window() { # seconds -> "cpu_ms procs_before procs_after"
    local p0 p1 c0 c1
    p0=$(nprocs); c0=$(ticks "${PID[loopwatch_groups]}")
    sleep "$1"
    c1=$(ticks "${PID[loopwatch_groups]}"); p1=$(nprocs)
    echo "$(calc "($c1 - $c0) * 1000 / $CLK_TCK") $p0 $p1"
}
durations() { # the groups' last poll durations and members
    curl -s "http://127.0.0.1:$PORT_LWG/metrics" | awk '
        /^loopwatch_collector_duration_seconds\{/ && /collector="processes"/ {
            match($0, /target="[^"]*"/); t = substr($0, RSTART + 8, RLENGTH - 9)
            printf "%s poll %.1f ms; ", t, $NF * 1000
        }
        /^loopwatch_processes\{/ { match($0, /group="[^"]*"/); g = substr($0, RSTART + 7, RLENGTH - 8); printf "%s %d members; ", g, $NF }'
}
wrk_row() { # label name extra -> table row (wrk_run's columns)
    local label=$1 name=$2 extra=$3; shift 3
    read -r p50 p99 rps bad err ex w other < <(wrk_run "$label" "${PORT[$name]}" "${PID[$name]}" "$@")
    echo "| ${LABEL[$name]} | $extra | $p50 | $p99 | $rps | $bad | $err | $ex | $w | $other |"
}
PORT[loopwatch_groups]=$PORT_LWG
LABEL[loopwatch_groups]="loopwatch (2 groups, every 1 s)"
LABEL[process_exporter]="prometheus-process-exporter (every process; wrk --timeout 30s)"

say "run.sh: group polls without extra processes (${GROUP_IDLE_SECS} s)"
read -r g0_ms g0_p0 g0_p1 < <(group_window "$GROUP_IDLE_SECS")
g0_durations=$(durations)
ROWS4B=""
for r in $(seq "$WRK_REPEAT_GROUPS"); do
    ROWS4B+="$(wrk_row "loopwatch_groups-base-$r" loopwatch_groups 0)"$'\n'
done
ROWS4B+="$(wrk_row process_exporter-base process_exporter 0 --timeout 30s)"$'\n'

say "run.sh: starting $SLEEPERS sleep processes"
for _ in $(seq "$SLEEPERS"); do
    sleep 600 &
    SLEEPER_PIDS+=($!)
done
sleep 3
say "run.sh: group polls with the extra processes (${GROUP_IDLE_SECS} s)"
read -r g1_ms g1_p0 g1_p1 < <(group_window "$GROUP_IDLE_SECS")
g1_durations=$(durations)
say "run.sh: proc_scan with the extra processes"
PROC_SCAN_SECS=${PROC_SCAN_SECS:-0.3} PROC_SCAN_ROUNDS=${PROC_SCAN_ROUNDS:-3} \
    timeout 120 cargo bench --bench proc_scan 2>>"$LOG/proc_scan.err" >"$LOG/proc_scan-sleepers.txt" || say "run.sh: proc_scan (sleepers) failed"
for r in $(seq "$WRK_REPEAT_GROUPS"); do
    ROWS4B+="$(wrk_row "loopwatch_groups-sleepers-$r" loopwatch_groups "$SLEEPERS")"$'\n'
done

say "run.sh: process-exporter with the extra processes"
curl -s -o /dev/null --max-time 60 "http://127.0.0.1:$PORT_PE/metrics" || true # it sees the new processes once
pe_c0=$(ticks "${PID[process_exporter]}")
read -r pe_secs pe_bad < <(scrape_n $PORT_PE "$N_PE_SLEEPERS")
pe_c1=$(ticks "${PID[process_exporter]}")
pe_cpu_ms=$(calc "($pe_c1 - $pe_c0) * 1000 / $CLK_TCK - ${IDLE_RATE[process_exporter]} * $pe_secs * 1000")
pe_procs=$(nprocs)
ROWS4B+="$(wrk_row process_exporter-sleepers process_exporter "$SLEEPERS" --timeout 30s)"$'\n'

POLLS=$GROUP_IDLE_SECS # both groups poll every 1 s
LW_IDLE=${IDLE_RATE[loopwatch]}
per_poll() { # cpu_ms -> net ms per poll tick
    calc "($1 - $LW_IDLE * $GROUP_IDLE_SECS * 1000) / $POLLS"
}
per_proc_us() { # cpu_ms p0 p1 -> µs per process per poll tick
    calc "($1 - $LW_IDLE * $GROUP_IDLE_SECS * 1000) / $POLLS / (($2 + $3) / 2) * 1000"
}

echo "## 4. Process groups: loopwatch with groups 'sleepers' {comm: [sleep]} and 'shells' {cmdline: [bash]}, both every 1 s"
echo
echo "### 4a. loopwatch's CPU for polling, ${GROUP_IDLE_SECS} s without scrapes"
echo
echo "The idle CPU of the default-config loopwatch ($(fmt "$(calc "$LW_IDLE * 1000")" %.2f) ms/s, section 1) is subtracted. One poll tick = both groups, which share one /proc scan (they are polled at the same instants; the scan is shared for 500 ms). The 'shells' group matches on cmdline, so every scan also reads every process's cmdline; each member of a group also has its fd/ directory counted and its limits read."
echo
echo "| situation | /proc processes | CPU ms in ${GROUP_IDLE_SECS} s | net ms per poll tick | net µs per process per poll tick | last polls (loopwatch_collector_duration_seconds) and members |"
echo "| --- | ---: | ---: | ---: | ---: | --- |"
echo "| no extra processes | $(calc "int(($g0_p0 + $g0_p1) / 2)") | $(fmt "$g0_ms" %.0f) | $(fmt "$(per_poll "$g0_ms")" %.2f) | $(fmt "$(per_proc_us "$g0_ms" "$g0_p0" "$g0_p1")" %.2f) | $g0_durations |"
echo "| +$SLEEPERS sleep processes | $(calc "int(($g1_p0 + $g1_p1) / 2)") | $(fmt "$g1_ms" %.0f) | $(fmt "$(per_poll "$g1_ms")" %.2f) | $(fmt "$(per_proc_us "$g1_ms" "$g1_p0" "$g1_p1")" %.2f) | $g1_durations |"
echo
echo "For comparison, proc_scan with the $SLEEPERS extra processes running (PROC_SCAN_SECS=0.3 PROC_SCAN_ROUNDS=3 cargo bench --bench proc_scan; hot loop, unlike the once-a-second polls above):"
echo
grep -v '^PROC_SCAN_' "$LOG/proc_scan-sleepers.txt" | sed -n '/^| variant/,/^$/p' || echo "(proc_scan failed; see $LOG/proc_scan.err)"
echo
echo "### 4b. Scrapes with and without the extra processes: wrk -t2 -c32 -d${WRK_SECS}s --latency"
echo
echo "| exporter | extra processes | p50 ms | p99 ms | requests/s | non-2xx | socket errors | exporter CPU (cores) | wrk CPU (cores) | others' CPU (cores) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s' "$ROWS4B"
echo
echo "prometheus-process-exporter with +$SLEEPERS processes ($pe_procs in /proc): $N_PE_SLEEPERS sequential scrapes in $(fmt "$pe_secs" %.1f) s, $pe_bad non-200, $(fmt "$(calc "$pe_cpu_ms / $N_PE_SLEEPERS")" %.1f) ms CPU per scrape (idle subtracted), $(fmt "$(calc "$pe_cpu_ms / $N_PE_SLEEPERS / $pe_procs * 1000")" %.1f) µs per process per scrape."
echo
echo "VmRSS at the end (MB): loopwatch (groups) $(fmt "$(calc "$(rss_kb "${PID[loopwatch_groups]}") / 1024")" %.1f); process-exporter $(fmt "$(calc "$(rss_kb "${PID[process_exporter]}") / 1024")" %.1f)"
echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); run took $(fmt "$(calc "$(now) - $T_START")" %.0f) s; raw output in target/bench-run/."
