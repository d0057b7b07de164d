#!/usr/bin/env bash
# benches/reload.sh: /metrics latency under 32 concurrent scrapers, quiet and
# during a storm of SIGHUPs, with UDP heartbeats flowing (issue 11: "a SIGHUP
# during 32-wide scraping does not raise scrape p99"; "a SIGHUP with an
# unchanged ingest section loses no heartbeat").
#
#   bash benches/reload.sh
#
# Starts one loopwatch (HTTP 127.0.0.1:19101, UDP ingest 127.0.0.1:19102,
# three process groups), then two phases of `wrk -t2 -c32 -dWRK_SECSs
# --latency` on /metrics while 5 apps send 20 heartbeats/s each:
#   quiet  no reload;
#   storm  a loop rewrites the config (3 process groups, then 2, then 3, …;
#          the ingest section never changes) and sends SIGHUP every
#          RELOAD_EVERY seconds.
# Each phase has its own heartbeat sender (the same apps and pid), so the
# heartbeats sent and counted are exact per phase. A side scrape every 0.5 s
# records the largest loopwatch_loop_stall_seconds (healthy loops: 0).
#
# Prints a Markdown table on stdout; raw output goes to target/bench-reload/.
# Builds in release mode first (`cargo build --release --bin loopwatch`,
# at most 480 s), then a watchdog ends the measuring part after
# RUN_DEADLINE seconds (170). It stops only the processes it started, by
# PID. A run takes about 55 s with a warm build.
#
# Knobs (environment): WRK_SECS (20), RELOAD_EVERY (0.2), APPS (5),
# HEARTBEAT_HZ (20 per app), RUN_DEADLINE (170).
# Needs wrk, curl, ss, python3 (Debian: apt-get install wrk).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

WRK_SECS=${WRK_SECS:-20}
RELOAD_EVERY=${RELOAD_EVERY:-0.2}
APPS=${APPS:-5}
HEARTBEAT_HZ=${HEARTBEAT_HZ:-20}
RUN_DEADLINE=${RUN_DEADLINE:-170}

PORT_HTTP=19101
PORT_UDP=19102

LOG=$ROOT/target/bench-reload
WORK=$(mktemp -d /tmp/loopwatch-reload.XXXXXX)
mkdir -p "$LOG"
rm -f "$LOG"/*.txt "$LOG"/*.log

LW_PID=
SENDER_PID=
HUP_PID=
WATCH_PID=
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
    stop_pid "$HUP_PID" "$WATCH_PID" "$SENDER_PID" "$LW_PID" "$WATCHDOG"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "reload.sh: stopped (signal or deadline)"; exit 124' INT TERM

for tool in wrk curl ss awk python3 cargo getconf; do
    command -v "$tool" >/dev/null || { say "reload.sh: $tool not found (wrk: apt-get install wrk)"; exit 1; }
done
if [[ -n $(ss -Hltn "sport = :$PORT_HTTP") || -n $(ss -Hlun "sport = :$PORT_UDP") ]]; then
    say "reload.sh: TCP $PORT_HTTP or UDP $PORT_UDP is in use; stop whatever listens there first"
    exit 1
fi

say "reload.sh: building (release)"
timeout 480 cargo build --release --bin loopwatch >"$LOG/build.log" 2>&1 || {
    say "reload.sh: build failed; see $LOG/build.log"; tail -20 "$LOG/build.log" >&2; exit 1
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
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
metric() { # series (name and labels as printed) -> value, 0 if absent
    curl -s --max-time 5 "http://127.0.0.1:$PORT_HTTP/metrics" |
        awk -v s="$1" '$1 == s {v = $2} END {print (v == "" ? 0 : v)}'
}
udp_counted() { metric 'loopwatch_ingest_messages_total{transport="udp"}'; }
reloads() { metric "loopwatch_config_reloads_total{result=\"$1\"}"; }

# ---------------------------------------------------------------- configs
# Two configs that differ only in the processes section; the ingest section
# is the same in both.
config() { # groups
    cat <<EOF
ingest:
  udp_listen_address: 127.0.0.1:$PORT_UDP
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
    if (($1 == 3)); then
        cat <<'EOF'
  - name: loopwatch
    interval: 1s
    timeout: 1s
    match: {comm: [loopwatch]}
EOF
    fi
}
config 3 >"$WORK/three.yml"
config 2 >"$WORK/two.yml"
for c in three two; do
    "$LW" check-config "$WORK/$c.yml" >"$LOG/check-config-$c.txt" 2>&1 || {
        say "reload.sh: config $c rejected:"; cat "$LOG/check-config-$c.txt" >&2; exit 1
    }
done
cp "$WORK/three.yml" "$WORK/loopwatch.yml"

# ---------------------------------------------------------------- helpers
cat >"$WORK/sender.py" <<'EOF'
# Heartbeats of APPS healthy apps (lag 0) at HZ each, over UDP, until SIGTERM;
# then prints how many datagrams the kernel accepted.
import json, signal, socket, sys, time
port, apps, hz, pid = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
msgs = [json.dumps({"v": 1, "type": "heartbeat", "app": f"bench-{i}", "loop": "main", "pid": pid,
                    "interval_s": 1 / hz, "stall_threshold_s": 0.5, "lag_s": 0.0,
                    "tasks_pending": 1, "tasks_created": 1, "slow_callbacks": 0,
                    "failures": [], "cancellations": []}).encode() for i in range(apps)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = failed = 0
nxt = time.monotonic()
while not stop:
    for m in msgs:
        try:
            s.sendto(m, ("127.0.0.1", port)); sent += 1
        except OSError:
            failed += 1
    nxt += 1 / hz
    time.sleep(max(0.0, nxt - time.monotonic()))
print(sent, failed, flush=True)
EOF

# SIGHUP every RELOAD_EVERY s, alternating the configs; one line per signal.
hup_storm() {
    local i=0
    trap 'exit 0' TERM
    while :; do
        i=$((i + 1))
        if ((i % 2)); then cp "$WORK/two.yml" "$WORK/next.yml"; else cp "$WORK/three.yml" "$WORK/next.yml"; fi
        mv "$WORK/next.yml" "$WORK/loopwatch.yml"
        kill -HUP "$LW_PID" 2>/dev/null || exit 0
        echo "$i" >>"$WORK/hups"
        sleep "$RELOAD_EVERY"
    done
}

# The largest live stall of any app's loop, every 0.5 s, into a file.
stall_watch() { # out
    local out=$1 max=0 v
    trap 'exit 0' TERM
    echo 0 >"$out"
    while :; do
        v=$(curl -s --max-time 2 "http://127.0.0.1:$PORT_HTTP/metrics" |
            awk '/^loopwatch_loop_stall_seconds\{app_name="bench-/ {if ($2 > m) m = $2} END {print m + 0}')
        max=$(awk -v a="$max" -v b="${v:-0}" 'BEGIN {print (b > a ? b : a)}')
        echo "$max" >"$out"
        sleep 0.5
    done
}

# ---------------------------------------------------------------- start
say "reload.sh: starting loopwatch"
"$LW" --config.file "$WORK/loopwatch.yml" --web.listen-address "127.0.0.1:$PORT_HTTP" \
    --web.max-requests 64 >"$LOG/loopwatch.log" 2>&1 &
LW_PID=$!
for _ in $(seq 100); do
    if curl -sf -o /dev/null "http://127.0.0.1:$PORT_HTTP/-/ready" && [[ -n $(ss -Hlun "sport = :$PORT_UDP") ]]; then break; fi
    kill -0 "$LW_PID" 2>/dev/null || { say "reload.sh: loopwatch exited; see $LOG/loopwatch.log"; exit 1; }
    sleep 0.1
done
[[ -n $(ss -Hlun "sport = :$PORT_UDP") ]] || { say "reload.sh: loopwatch is not ready after 10 s"; exit 1; }
sleep 2

cat <<EOF
# loopwatch reload benchmark

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)
- $("$LW" --version 2>&1 | head -1), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (uncommitted changes in src/)')
- $APPS apps × $HEARTBEAT_HZ heartbeats/s over UDP in each phase; storm: config rewritten (3 ↔ 2 process groups, ingest unchanged) and SIGHUP every ${RELOAD_EVERY} s

EOF

# One phase: sender and stall watcher on, optionally the SIGHUP storm, one
# wrk run. Prints the table row.
phase() { # label storm(0|1)
    local label=$1 storm=$2 out=$LOG/wrk-$1.txt
    local c0 r0 f0 e0 m0 t0 e1 m1 t1 c1 r1 f1 sent failed hups counted
    c0=$(udp_counted); r0=$(reloads success); f0=$(reloads failure)
    : >"$WORK/hups"
    python3 "$WORK/sender.py" "$PORT_UDP" "$APPS" "$HEARTBEAT_HZ" $$ >"$WORK/sent-$label" &
    SENDER_PID=$!
    # Watch for stalls once the first heartbeats are in: the loops' gap
    # between two phases is not a stall of this phase.
    sleep 0.5
    stall_watch "$WORK/stall-$label" &
    WATCH_PID=$!
    if ((storm)); then hup_storm & HUP_PID=$!; fi
    e0=$(ticks "$LW_PID"); m0=$(machine_busy); t0=$(now)
    wrk -t2 -c32 -d"${WRK_SECS}s" --latency "http://127.0.0.1:$PORT_HTTP/metrics" >"$out" 2>&1 || true
    t1=$(now); m1=$(machine_busy); e1=$(ticks "$LW_PID")
    stop_pid "$HUP_PID"; HUP_PID=
    sleep 0.5
    stop_pid "$SENDER_PID" "$WATCH_PID"; SENDER_PID= WATCH_PID=
    read -r sent failed <"$WORK/sent-$label"
    # Let the receiver drain what is in flight (it batches every 25 ms), and
    # a last reload finish.
    for _ in $(seq 30); do
        c1=$(udp_counted)
        (($(calc "int($c1 - $c0)") >= sent)) && break
        sleep 0.1
    done
    sleep 0.3
    c1=$(udp_counted); r1=$(reloads success); f1=$(reloads failure)
    hups=$(wc -l <"$WORK/hups")
    counted=$(calc "int($c1 - $c0)")
    awk -v label="$label" -v secs="$(calc "$t1 - $t0")" -v ex="$((e1 - e0))" -v busy="$((m1 - m0))" -v tck="$CLK_TCK" \
        -v hups="$hups" -v ok="$(calc "int($r1 - $r0)")" -v bad="$(calc "int($f1 - $f0)")" \
        -v sent="$sent" -v failed="$failed" -v counted="$counted" -v stall="$(cat "$WORK/stall-$label")" '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /m$/) return substr(v, 1, length(v) - 1) * 60000
            if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
            return "?"
        }
        /^ +Latency / && !max { max = ms($4) }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
        END {
            printf "| %s | %s | %s | %s | %d | %d | %d | %d sent, %d applied, %d rejected | %d / %d%s | %.2f | %.2f | %.2f |\n",
                label, p50, p99, max, rps + 0.5, non2xx, err, hups, ok, bad, counted, sent,
                (failed ? " (" failed " sends failed)" : ""), stall, ex / tck / secs, busy / tck / secs
        }' "$out"
}

say "reload.sh: quiet phase, wrk ${WRK_SECS} s"
# Not in $(…): the phase's background PIDs must stay in this shell for cleanup.
phase quiet 0 >"$WORK/row-quiet"
say "reload.sh: storm phase (SIGHUP every ${RELOAD_EVERY} s), wrk ${WRK_SECS} s"
phase storm 1 >"$WORK/row-storm"

echo "## /metrics under 32 concurrent scrapers (wrk -t2 -c32 -d${WRK_SECS}s --latency), quiet and during a SIGHUP storm"
echo
echo "| phase | p50 ms | p99 ms | max ms | requests/s | non-2xx | socket errors | SIGHUPs | UDP heartbeats counted / sent | largest live stall seen (s) | loopwatch CPU (cores) | machine busy (cores) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |"
cat "$WORK/row-quiet" "$WORK/row-storm"
echo
echo "/metrics is $(curl -s "http://127.0.0.1:$PORT_HTTP/metrics" | wc -c) bytes; 'cannot bind UDP' in loopwatch's log: $(grep -c 'cannot bind UDP' "$LOG/loopwatch.log" || true) line(s); loopwatch_loop_stalls_total above 0: $(curl -s "http://127.0.0.1:$PORT_HTTP/metrics" | awk '/^loopwatch_loop_stalls_total\{app_name="bench-/ && $2 > 0' | wc -l) loop(s). Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). Raw output in target/bench-reload/."
