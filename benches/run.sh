#!/usr/bin/env bash
# benches/run.sh: loopwatch side by side with prometheus-node-exporter,
# prometheus-process-exporter and a minimal axum + prometheus server (the
# floor, examples/floor_server.rs), in one run, on 127.0.0.1 only.
#
#   bash benches/run.sh
#
# Prints one Markdown table per section on stdout; raw logs (wrk output,
# exporter logs) go to target/bench-run/. It builds in release mode, starts
# only its own processes (ports 19001-19005), stops them by PID on exit, and
# ends by itself: a watchdog stops it after RUN_DEADLINE seconds (600).
#
# Knobs (environment): N_FAST (2000 sequential scrapes for loopwatch and the
# floor), N_SLOW (200 for the peers), N_PE_SLEEPERS (50: process-exporter
# scrapes with 1,000 extra processes), WRK_SECS (15), SLEEPERS (1000),
# IDLE_SECS (20), GROUP_IDLE_SECS (30), PROC_SCAN_SECS / PROC_SCAN_ROUNDS.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

N_FAST=${N_FAST:-2000}
N_SLOW=${N_SLOW:-200}
N_PE_SLEEPERS=${N_PE_SLEEPERS:-50}
WRK_SECS=${WRK_SECS:-15}
SLEEPERS=${SLEEPERS:-1000}
IDLE_SECS=${IDLE_SECS:-20}
GROUP_IDLE_SECS=${GROUP_IDLE_SECS:-30}
RUN_DEADLINE=${RUN_DEADLINE:-600}

PORT_LW=19001
PORT_NODE=19002
PORT_PE=19003
PORT_FLOOR=19004
PORT_LWG=19005

NODE_EXPORTER=${NODE_EXPORTER:-/usr/bin/prometheus-node-exporter}
PROCESS_EXPORTER=${PROCESS_EXPORTER:-/usr/bin/prometheus-process-exporter}

LOG=$ROOT/target/bench-run
WORK=$(mktemp -d /tmp/loopwatch-bench.XXXXXX)
mkdir -p "$LOG"

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
for p in $PORT_LW $PORT_NODE $PORT_PE $PORT_FLOOR $PORT_LWG; do
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

# wrk with 32 connections; prints "p50_ms p99_ms rps non2xx socket_errors".
wrk_run() { # name port [extra wrk args]
    local name=$1 port=$2; shift 2
    local out=$LOG/wrk-$name.txt
    wrk -t2 -c32 -d"${WRK_SECS}s" --latency "$@" "http://127.0.0.1:$port/metrics" >"$out" 2>&1 || true
    awk '
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
        END { printf "%s %s %s %s %s\n", (p50 == "" ? "?" : p50), (p99 == "" ? "?" : p99), (rps == "" ? "?" : rps), bad + 0, err + 0 }
    ' "$out"
}

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
start node_exporter $PORT_NODE "$NODE_EXPORTER" "--web.listen-address=127.0.0.1:$PORT_NODE"
start process_exporter $PORT_PE "$PROCESS_EXPORTER" -web.listen-address "127.0.0.1:$PORT_PE" -config.path "$PE_CONFIG"
start floor $PORT_FLOOR "$FLOOR" "127.0.0.1:$PORT_FLOOR"
NAMES=(loopwatch node_exporter process_exporter floor)
declare -A PORT=([loopwatch]=$PORT_LW [node_exporter]=$PORT_NODE [process_exporter]=$PORT_PE [floor]=$PORT_FLOOR)
declare -A LABEL=([loopwatch]="loopwatch (default config)" [node_exporter]="prometheus-node-exporter (defaults)" [process_exporter]="prometheus-process-exporter (every process)" [floor]="floor (axum + prometheus, 1 counter)")

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
echo "| exporter | VmRSS MB | idle CPU (% of one core, next ${IDLE_SECS} s) | bar |"
echo "| --- | ---: | ---: | --- |"
for n in "${NAMES[@]}"; do
    mb=$(calc "${RSS0[$n]} / 1024")
    bar="-"; [[ $n == loopwatch ]] && bar="< 8 MB: $(verdict "$mb" 8)"
    echo "| ${LABEL[$n]} | $(fmt "$mb" %.1f) | $(fmt "$(calc "${IDLE_RATE[$n]} * 100")" %.2f) | $bar |"
done
echo

# ---------------------------------------------------------------- 2. CPU per scrape
say "run.sh: sequential scrapes"
echo "## 2. CPU per scrape: N sequential scrapes on one keep-alive connection (curl), exporter's utime+stime minus its idle CPU over the same time"
echo
echo "| exporter | N | seconds | non-200 | response bytes | CPU ms total | idle ms subtracted | CPU ms per scrape | bar |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for n in "${NAMES[@]}"; do
    N=$N_SLOW; [[ $n == loopwatch || $n == floor ]] && N=$N_FAST
    bytes=$(curl -s "http://127.0.0.1:${PORT[$n]}/metrics" | wc -c)
    c0=$(ticks "${PID[$n]}")
    read -r secs bad < <(scrape_n "${PORT[$n]}" "$N")
    c1=$(ticks "${PID[$n]}")
    cpu_ms=$(calc "($c1 - $c0) * 1000 / $CLK_TCK")
    idle_ms=$(calc "${IDLE_RATE[$n]} * $secs * 1000")
    per=$(calc "($cpu_ms - $idle_ms) / $N")
    bar="-"; [[ $n == loopwatch ]] && bar="< 0.5 ms: $(verdict "$per" 0.5)"
    echo "| ${LABEL[$n]} | $N | $(fmt "$secs" %.1f) | $bad | $bytes | $(fmt "$cpu_ms" %.0f) | $(fmt "$idle_ms" %.0f) | $(fmt "$per" %.3f) | $bar |"
done
echo

# ---------------------------------------------------------------- 3. latency
say "run.sh: wrk -c32, ${WRK_SECS} s each"
echo "## 3. /metrics under 32 concurrent scrapers: wrk -t2 -c32 -d${WRK_SECS}s --latency (wrk runs on the same 2 cores)"
echo
echo "| exporter | p50 ms | p99 ms | requests/s | non-2xx | socket errors | bar |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
for n in "${NAMES[@]}"; do
    read -r p50 p99 rps bad err < <(wrk_run "$n" "${PORT[$n]}")
    bar="-"; [[ $n == loopwatch ]] && bar="p99 < 10 ms: $(verdict "$p99" 10)"
    echo "| ${LABEL[$n]} | $p50 | $p99 | $rps | $bad | $err | $bar |"
done
echo
echo "VmRSS after sections 2 and 3 (MB): $(for n in "${NAMES[@]}"; do printf '%s %s; ' "$n" "$(fmt "$(calc "$(rss_kb "${PID[$n]}") / 1024")" %.1f)"; done)"
echo

# The default-config loopwatch and the floor are done; fewer bystanders for section 4.
for n in loopwatch node_exporter floor; do
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
durations() { # the collectors' last poll durations, ms
    curl -s "http://127.0.0.1:$PORT_LWG/metrics" | awk '
        /^loopwatch_collector_duration_seconds\{/ && /collector="processes"/ {
            match($0, /target="[^"]*"/); t = substr($0, RSTART + 8, RLENGTH - 9)
            printf "%s %.1f ms; ", t, $NF * 1000
        }
        /^loopwatch_processes\{/ { match($0, /group="[^"]*"/); g = substr($0, RSTART + 7, RLENGTH - 8); printf "%s: %d members; ", g, $NF }'
}

say "run.sh: group polls without extra processes (${GROUP_IDLE_SECS} s)"
read -r g0_ms g0_p0 g0_p1 < <(group_window "$GROUP_IDLE_SECS")
g0_durations=$(durations)
read -r lwg0_p50 lwg0_p99 lwg0_rps lwg0_bad lwg0_err < <(wrk_run loopwatch_groups_base $PORT_LWG)
read -r pe0_p50 pe0_p99 pe0_rps pe0_bad pe0_err < <(wrk_run process_exporter_base $PORT_PE --timeout 30s)

say "run.sh: starting $SLEEPERS sleep processes"
for _ in $(seq "$SLEEPERS"); do
    sleep 600 &
    SLEEPER_PIDS+=($!)
done
sleep 3
read -r g1_ms g1_p0 g1_p1 < <(group_window "$GROUP_IDLE_SECS")
g1_durations=$(durations)
say "run.sh: proc_scan with the extra processes"
PROC_SCAN_SECS=${PROC_SCAN_SECS:-0.3} PROC_SCAN_ROUNDS=${PROC_SCAN_ROUNDS:-3} \
    timeout 120 cargo bench --bench proc_scan 2>>"$LOG/proc_scan.err" >"$LOG/proc_scan-sleepers.txt" || say "run.sh: proc_scan (sleepers) failed"
read -r lwg1_p50 lwg1_p99 lwg1_rps lwg1_bad lwg1_err < <(wrk_run loopwatch_groups_sleepers $PORT_LWG)

say "run.sh: process-exporter with the extra processes"
curl -s -o /dev/null --max-time 60 "http://127.0.0.1:$PORT_PE/metrics" || true  # let it see the new processes once
pe_c0=$(ticks "${PID[process_exporter]}")
read -r pe_secs pe_bad < <(scrape_n $PORT_PE "$N_PE_SLEEPERS")
pe_c1=$(ticks "${PID[process_exporter]}")
pe_cpu_ms=$(calc "($pe_c1 - $pe_c0) * 1000 / $CLK_TCK - ${IDLE_RATE[process_exporter]} * $pe_secs * 1000")
read -r pe1_p50 pe1_p99 pe1_rps pe1_bad pe1_err < <(wrk_run process_exporter_sleepers $PORT_PE --timeout 30s)

POLLS=$(calc "$GROUP_IDLE_SECS / 1")  # both groups poll every 1 s
LW_IDLE=${IDLE_RATE[loopwatch]}
per_poll() { # cpu_ms -> net ms per poll tick
    calc "($1 - $LW_IDLE * $GROUP_IDLE_SECS * 1000) / $POLLS"
}
per_proc_us() { # cpu_ms p0 p1 -> µs per process per poll tick
    calc "($1 - $LW_IDLE * $GROUP_IDLE_SECS * 1000) / $POLLS / (($2 + $3) / 2) * 1000"
}

echo "## 4. Process groups: loopwatch with groups 'sleepers' {comm: [sleep]} and 'shells' {cmdline: [bash]}, both every 1 s"
echo
echo "### 4a. loopwatch's CPU for polling, ${GROUP_IDLE_SECS} s without scrapes (idle CPU of the default-config loopwatch, $(fmt "$(calc "$LW_IDLE * 1000")" %.1f) ms/s, subtracted; one poll tick = both groups, which share one /proc scan when polled within 500 ms)"
echo
echo "| situation | /proc processes | CPU ms in ${GROUP_IDLE_SECS} s | net ms per poll tick | net µs per process per poll tick | last poll durations and members |"
echo "| --- | ---: | ---: | ---: | ---: | --- |"
echo "| no extra processes | $(calc "int(($g0_p0 + $g0_p1) / 2)") | $(fmt "$g0_ms" %.0f) | $(fmt "$(per_poll "$g0_ms")" %.2f) | $(fmt "$(per_proc_us "$g0_ms" "$g0_p0" "$g0_p1")" %.2f) | $g0_durations |"
echo "| +$SLEEPERS sleep processes | $(calc "int(($g1_p0 + $g1_p1) / 2)") | $(fmt "$g1_ms" %.0f) | $(fmt "$(per_poll "$g1_ms")" %.2f) | $(fmt "$(per_proc_us "$g1_ms" "$g1_p0" "$g1_p1")" %.2f) | $g1_durations |"
echo
echo "Bare scan (proc_scan (a), section 0): ${BARE_US:-?} µs CPU per process. With the $SLEEPERS extra processes (cargo bench --bench proc_scan, PROC_SCAN_SECS=0.3 PROC_SCAN_ROUNDS=3):"
echo
grep -v '^PROC_SCAN_' "$LOG/proc_scan-sleepers.txt" | sed -n '/^| variant/,/^$/p' || echo "(proc_scan failed; see $LOG/proc_scan.err)"
echo
echo "### 4b. Scrapes with and without the extra processes: wrk -t2 -c32 -d${WRK_SECS}s --latency"
echo
echo "| exporter | extra processes | p50 ms | p99 ms | requests/s | non-2xx | socket errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
echo "| loopwatch (groups) | 0 | $lwg0_p50 | $lwg0_p99 | $lwg0_rps | $lwg0_bad | $lwg0_err |"
echo "| loopwatch (groups) | $SLEEPERS | $lwg1_p50 | $lwg1_p99 | $lwg1_rps | $lwg1_bad | $lwg1_err |"
echo "| prometheus-process-exporter (every process, --timeout 30s) | 0 | $pe0_p50 | $pe0_p99 | $pe0_rps | $pe0_bad | $pe0_err |"
echo "| prometheus-process-exporter (every process, --timeout 30s) | $SLEEPERS | $pe1_p50 | $pe1_p99 | $pe1_rps | $pe1_bad | $pe1_err |"
echo
echo "prometheus-process-exporter with +$SLEEPERS processes: $N_PE_SLEEPERS sequential scrapes in $(fmt "$pe_secs" %.1f) s, $pe_bad non-200, $(fmt "$(calc "$pe_cpu_ms / $N_PE_SLEEPERS")" %.2f) ms CPU per scrape (idle subtracted), $(fmt "$(calc "$pe_cpu_ms / $N_PE_SLEEPERS / $(nprocs) * 1000")" %.2f) µs per process per scrape."
echo
echo "VmRSS at the end (MB): loopwatch (groups) $(fmt "$(calc "$(rss_kb "${PID[loopwatch_groups]}") / 1024")" %.1f); process-exporter $(fmt "$(calc "$(rss_kb "${PID[process_exporter]}") / 1024")" %.1f)"
echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); run took $(fmt "$(calc "$(now) - $T_START")" %.0f) s; raw output in target/bench-run/."
