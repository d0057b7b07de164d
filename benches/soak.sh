#!/usr/bin/env bash
# benches/soak.sh: loopwatch's RSS, open fds, CPU and /metrics p99 over time
# under a steady mixed load (issue 15: "a soak (1,000 loops heartbeating,
# garbage datagrams, PostgreSQL restarts, 32 scrapers, SIGHUPs) with RSS,
# fds and CPU over time in docs/performance.md, flat").
#
#   bash benches/soak.sh              # 10 minutes
#   DURATION=480 bash benches/soak.sh # 8 minutes
#
# Starts a throwaway PostgreSQL cluster (initdb as the `postgres` OS user,
# 127.0.0.1:19433, trust auth, socket in its own directory) and one loopwatch
# (HTTP 127.0.0.1:19211, UDP ingest 127.0.0.1:19212, open-file limit 1024,
# `max_apps: 120`, a `postgres` target polled every 5 s), then for DURATION
# seconds:
#   - benches/tools/soak_sender.py: 100 apps × 10 loops = 1,000 loops, 4
#     heartbeats/s each (4,000 datagrams/s), plus GARBAGE_HZ (20) garbage
#     datagrams/s, over UDP;
#   - `pg_ctl restart -m fast` of the cluster every PG_RESTART_EVERY (120) s;
#   - a SIGHUP every HUP_EVERY (30) s, the config alternating the postgres
#     target's interval between 5s and 4s (so each reload rebuilds it; the
#     ingest section never changes);
#   - every SAMPLE_EVERY (30) s a 5 s burst of 32 scrapers
#     (`wrk -t2 -c32 -d5s --latency --timeout 10s` on /metrics), then one
#     sample: VmRSS (/proc/PID/status), open fds (/proc/PID/fd), CPU
#     (utime+stime of /proc/PID/stat over the interval), the burst's
#     p50/p99, and what loopwatch exports (loops up, pg_up, reloads,
#     rejected datagrams, series budget in use).
# Samples go to target/bench-soak/samples.csv; a Markdown table of them and
# the drift (first vs last sample) is printed on stdout. Builds in release
# mode first (at most 480 s); a watchdog ends the run after DURATION + 300 s.
# It stops only the processes it started, by PID, and the cluster it created.
#
# Knobs (environment): DURATION (600), SAMPLE_EVERY (30), HUP_EVERY (30),
# PG_RESTART_EVERY (120), APPS (100), LOOPS (10), HZ (4), GARBAGE_HZ (20).
# Needs wrk, curl, ss, python3, runuser, PostgreSQL's server programs.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-600}
SAMPLE_EVERY=${SAMPLE_EVERY:-30}
HUP_EVERY=${HUP_EVERY:-30}
PG_RESTART_EVERY=${PG_RESTART_EVERY:-120}
APPS=${APPS:-100}
LOOPS=${LOOPS:-10}
HZ=${HZ:-4}
GARBAGE_HZ=${GARBAGE_HZ:-20}
NOFILE=1024

PORT_HTTP=19211
PORT_UDP=19212
PG_PORT=19433

LOG=$ROOT/target/bench-soak
WORK=$(mktemp -d /tmp/loopwatch-soak.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$LOG"
rm -f "$LOG"/*.txt "$LOG"/*.log "$LOG"/*.csv

LW_PID=
SENDER_PID=
HUP_PID=
PGR_PID=
WATCHDOG=
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PG_DATA=$WORK/data

say() { echo "$*" >&2; }
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop_pid() {
    local p
    for p in "$@"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
    for p in "$@"; do [[ -n $p ]] && wait "$p" 2>/dev/null || true; done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$HUP_PID" "$PGR_PID" "$SENDER_PID" "$LW_PID" "$WATCHDOG"
    if [[ -f $PG_DATA/postmaster.pid ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "soak.sh: stopped (signal or deadline)"; exit 124' INT TERM

for tool in wrk curl ss awk python3 cargo getconf; do
    command -v "$tool" >/dev/null || { say "soak.sh: $tool not found (wrk: apt-get install wrk)"; exit 1; }
done
[[ -x $PG_BIN/initdb ]] || { say "soak.sh: PostgreSQL server programs not found (Debian: postgresql)"; exit 1; }
for p in $PORT_HTTP $PG_PORT; do
    [[ -z $(ss -Hltn "sport = :$p") ]] || { say "soak.sh: TCP $p is in use"; exit 1; }
done
[[ -z $(ss -Hlun "sport = :$PORT_UDP") ]] || { say "soak.sh: UDP $PORT_UDP is in use"; exit 1; }

say "soak.sh: building (release)"
timeout 480 cargo build --release --bin loopwatch >"$LOG/build.log" 2>&1 || {
    say "soak.sh: build failed; see $LOG/build.log"; tail -20 "$LOG/build.log" >&2; exit 1
}
LW=$ROOT/target/release/loopwatch

(
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep $((DURATION + 300)) & sp=$!
    wait "$sp" && kill -TERM $$ 2>/dev/null
) &
WATCHDOG=$!

# ---------------------------------------------------------------- PostgreSQL
say "soak.sh: starting PostgreSQL on 127.0.0.1:$PG_PORT"
[[ $(id -u) == 0 ]] && chown postgres "$WORK"
(cd "$WORK" && as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust >"$LOG/initdb.log" 2>&1)
cat >>"$PG_DATA/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
shared_buffers = 32MB
fsync = off
CONF
pg_ctl_() { (cd "$WORK" && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg.log" "$@"); }
pg_ctl_ -w start >/dev/null

# ---------------------------------------------------------------- loopwatch
config() { # pg interval
    cat <<EOF
ingest:
  udp_listen_address: 127.0.0.1:$PORT_UDP
  max_apps: 120
postgres:
  - name: soak
    dsn: host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres sslmode=disable
    interval: $1
    timeout: 3s
EOF
}
config 5s >"$WORK/a.yml"
config 4s >"$WORK/b.yml"
"$LW" check-config "$WORK/a.yml" >"$LOG/check-config.txt" 2>&1 || {
    say "soak.sh: config rejected:"; cat "$LOG/check-config.txt" >&2; exit 1
}
cp "$WORK/a.yml" "$WORK/loopwatch.yml"

say "soak.sh: starting loopwatch"
( ulimit -n "$NOFILE"; exec "$LW" --config.file "$WORK/loopwatch.yml" \
    --web.listen-address "127.0.0.1:$PORT_HTTP" --log.level warn ) >"$LOG/loopwatch.log" 2>&1 &
LW_PID=$!
for _ in $(seq 100); do
    if curl -sf -o /dev/null "http://127.0.0.1:$PORT_HTTP/-/ready" && [[ -n $(ss -Hlun "sport = :$PORT_UDP") ]]; then break; fi
    kill -0 "$LW_PID" 2>/dev/null || { say "soak.sh: loopwatch exited; see $LOG/loopwatch.log"; exit 1; }
    sleep 0.1
done

# ---------------------------------------------------------------- load
python3 "$ROOT/benches/tools/soak_sender.py" "$PORT_UDP" "$APPS" "$LOOPS" "$HZ" "$GARBAGE_HZ" \
    >"$LOG/sender.txt" 2>&1 &
SENDER_PID=$!

# The loops sleep in the background and wait, so a TERM ends them at once
# (bash runs a trap only after a foreground command ends) with their sleep.
nap() { sleep "$1" & SP=$!; wait "$SP"; SP=; }
hup_loop() {
    local i=0
    SP=
    trap '[[ -n $SP ]] && kill "$SP" 2>/dev/null; exit 0' TERM
    nap $((HUP_EVERY / 2))
    while :; do
        i=$((i + 1))
        if ((i % 2)); then cp "$WORK/b.yml" "$WORK/next.yml"; else cp "$WORK/a.yml" "$WORK/next.yml"; fi
        mv "$WORK/next.yml" "$WORK/loopwatch.yml"
        kill -HUP "$LW_PID" 2>/dev/null || exit 0
        echo "$(date +%s) hup $i" >>"$LOG/events.txt"
        nap "$HUP_EVERY"
    done
}
pg_restart_loop() {
    SP=
    trap '[[ -n $SP ]] && kill "$SP" 2>/dev/null; exit 0' TERM
    while :; do
        nap "$PG_RESTART_EVERY"
        if pg_ctl_ -m fast -w restart >/dev/null 2>&1; then r=ok; else r=failed; fi
        echo "$(date +%s) pg_restart $r" >>"$LOG/events.txt"
    done
}
: >"$LOG/events.txt"
hup_loop & HUP_PID=$!
pg_restart_loop & PGR_PID=$!

# ---------------------------------------------------------------- samples
TCK=$(getconf CLK_TCK)
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
CSV=$LOG/samples.csv
echo "t_s,rss_kb,fds,cpu_cores,p50_ms,p99_ms,scrapes,scrape_errors,loops_up,pg_up,reloads_ok,reloads_failed,rejected,ingest_series,metrics_bytes" >"$CSV"

sample() { # t
    local t=$1 out=$LOG/wrk-$1.txt m=$WORK/metrics.txt c1 t1
    wrk -t2 -c32 -d5s --latency --timeout 10s "http://127.0.0.1:$PORT_HTTP/metrics" >"$out" 2>&1 || true
    curl -s --max-time 10 "http://127.0.0.1:$PORT_HTTP/metrics" >"$m" || : >"$m"
    c1=$(ticks "$LW_PID"); t1=$(date +%s.%N)
    local rss fds
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$LW_PID/status")
    fds=$(ls "/proc/$LW_PID/fd" | wc -l)
    local wrkline metline
    wrkline=$(awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
            return -1
        }
        /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } / requests in / { r = $1 }
        /Non-2xx or 3xx responses:/ { e += $NF } /Socket errors:/ { gsub(",", ""); e += $4 + $6 + $8 + $10 }
        END { printf "%s,%s,%d,%d", p50, p99, r, e }' "$out")
    metline=$(awk -v bytes="$(wc -c <"$m")" '
        /^loopwatch_loop_up\{app_name="soak-/ { up += $2 }
        /^loopwatch_pg_up\{/ { pg = $2 }
        /^loopwatch_config_reloads_total\{result="success"\}/ { ok = $2 }
        /^loopwatch_config_reloads_total\{result="failure"\}/ { bad = $2 }
        /^loopwatch_ingest_rejected_total\{/ { rej += $2 }
        /^loopwatch_ingest_series / { s = $2 }
        END { printf "%d,%s,%d,%d,%d,%d,%d", up, (pg == "" ? "NA" : pg), ok, bad, rej, s, bytes }' "$m")
    local cores
    cores=$(awk -v a="$C0" -v b="$c1" -v ta="$T0" -v tb="$t1" -v k="$TCK" 'BEGIN {printf "%.3f", (b - a) / k / (tb - ta)}')
    C0=$c1; T0=$t1
    echo "$t,$rss,$fds,$cores,$wrkline,$metline" >>"$CSV"
    say "soak.sh: t=${t}s rss=${rss}kB fds=$fds cpu=$cores wrk=$wrkline metrics=$metline"
}

say "soak.sh: running for $DURATION s, a sample every $SAMPLE_EVERY s"
START=$(date +%s)
C0=$(ticks "$LW_PID"); T0=$(date +%s.%N)
next=$SAMPLE_EVERY
while ((next <= DURATION)); do
    sleep $((START + next - $(date +%s)))
    kill -0 "$LW_PID" 2>/dev/null || { say "soak.sh: loopwatch died at t=${next}s; see $LOG/loopwatch.log"; exit 1; }
    sample "$next"
    next=$((next + SAMPLE_EVERY))
done
stop_pid "$HUP_PID" "$PGR_PID"; HUP_PID= PGR_PID=
stop_pid "$SENDER_PID"; SENDER_PID=

hups=$(grep -c ' hup ' "$LOG/events.txt" || true)
restarts=$(grep -c ' pg_restart ok' "$LOG/events.txt" || true)
restarts_bad=$(grep -c ' pg_restart failed' "$LOG/events.txt" || true)

cat <<EOF
# loopwatch soak (issue 15)

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), duration ${DURATION} s, a sample every ${SAMPLE_EVERY} s
- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
- $("$LW" --version 2>&1 | head -1), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (uncommitted changes in src/)'); PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')
- load: $APPS apps × $LOOPS loops × $HZ heartbeats/s over UDP, $GARBAGE_HZ garbage datagrams/s ($(cat "$LOG/sender.txt")); $hups SIGHUPs; $restarts PostgreSQL restarts ($restarts_bad failed); 32 scrapers for 5 s before each sample

| t (s) | RSS (MB) | open fds | CPU (cores, over the interval) | /metrics p50 ms (32 scrapers) | p99 ms | scrapes in 5 s | scrape errors | loops up | pg_up | reloads ok / failed | datagrams rejected | ingest series | /metrics bytes |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |
EOF
awk -F, 'NR > 1 { printf "| %d | %.1f | %d | %.3f | %s | %s | %d | %d | %d | %s | %d / %d | %d | %d | %d |\n", $1, $2 / 1024, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 }' "$CSV"
echo
awk -F, 'NR == 2 { r0 = $2; f0 = $3; t0 = $1 } NR > 1 { r1 = $2; f1 = $3; t1 = $1; if ($2 > rmax) rmax = $2; if (rmin == "" || $2 < rmin) rmin = $2 }
    END { printf "Drift from the first sample (t=%d s) to the last (t=%d s): RSS %.1f → %.1f MB (%+.1f MB; range %.1f–%.1f), open fds %d → %d (%+d).\n", t0, t1, r0 / 1024, r1 / 1024, (r1 - r0) / 1024, rmin / 1024, rmax / 1024, f0, f1, f1 - f0 }' "$CSV"
echo
echo "Samples in target/bench-soak/samples.csv; wrk output, events and loopwatch's log beside it. Lines in loopwatch's log: $(wc -l <"$LOG/loopwatch.log")."
