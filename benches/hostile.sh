#!/usr/bin/env bash
# benches/hostile.sh: /metrics latency while loopwatch is under each attack of
# issue 15's table that can be made from 127.0.0.1 (issue 15, "HTTP limits":
# "the server must keep answering /metrics under every row of the table
# above — show p99 under each").
#
#   bash benches/hostile.sh
#
# For each row it starts a fresh loopwatch (HTTP 127.0.0.1:19201, UDP ingest
# 127.0.0.1:19202; open-file limit 1024, soft and hard, as the issue's
# "usual 1,024 open-file limit"; otherwise the embedded defaults, except
# ingest.silence_timeout 5s so row (b) can show a slot given back), starts
# the attacker (benches/tools/hostile.py), waits until the attack is in its
# steady state, and runs `wrk -t1 -c4 -dWRK_SECSs --latency --timeout 10s`
# on /metrics during it. Rows:
#   none       no attack (the baseline)
#   (a) series 10 apps x 16 loops, each loop 100 task names x 50 exception
#              types (HTTP ingest, resent with growing counts all along)
#   (b) junk   JUNK (49) junk app names, one `pool` datagram each, then a real app
#              heartbeating (is it tracked at once? after silence_timeout?)
#   (c) idle   1,000 idle TCP connections, reopened when closed
#   (d) slow   500 slowloris connections (request line, then 1 byte/s)
#   (e) posts  POSTS (200) concurrent 1 MiB NDJSON posts, back to back
#   (f) stacks 49 apps x 16 loops x 2 processes, 11 stalls of ~7.5 KB
#              stacks each, then 4 readers walking /api/v1/loops
#   (g) garbage 300,000 garbage datagrams paced over the wrk run
#
# Prints a Markdown table on stdout; raw output (wrk, attacker lines, each
# loopwatch's log and last /metrics) goes to target/bench-hostile/. Builds
# in release mode first (at most 480 s), then a watchdog ends the measuring
# part after RUN_DEADLINE seconds (600). It stops only the processes it
# started, by PID. A run takes about 3.5 minutes with a warm build.
#
# Knobs (environment): WRK_SECS (15), POSTS (200), JUNK (49), ROWS (all: "none a b c d
# e f g"), RUN_DEADLINE (600). Needs wrk, curl, ss, python3.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

WRK_SECS=${WRK_SECS:-15}
POSTS=${POSTS:-200}
JUNK=${JUNK:-49}
export JUNK
ROWS=${ROWS:-none a b c d e f g}
RUN_DEADLINE=${RUN_DEADLINE:-600}
NOFILE=1024

PORT_HTTP=19201
PORT_UDP=19202

LOG=$ROOT/target/bench-hostile
WORK=$(mktemp -d /tmp/loopwatch-hostile.XXXXXX)
mkdir -p "$LOG"
rm -f "$LOG"/*.txt "$LOG"/*.log

LW_PID=
ATK_PID=
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
    stop_pid "$ATK_PID" "$LW_PID" "$WATCHDOG"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "hostile.sh: stopped (signal or deadline)"; exit 124' INT TERM

for tool in wrk curl ss awk python3 cargo; do
    command -v "$tool" >/dev/null || { say "hostile.sh: $tool not found (wrk: apt-get install wrk)"; exit 1; }
done
if [[ -n $(ss -Hltn "sport = :$PORT_HTTP") || -n $(ss -Hlun "sport = :$PORT_UDP") ]]; then
    say "hostile.sh: TCP $PORT_HTTP or UDP $PORT_UDP is in use; stop whatever listens there first"
    exit 1
fi

say "hostile.sh: building (release)"
timeout 480 cargo build --release --bin loopwatch >"$LOG/build.log" 2>&1 || {
    say "hostile.sh: build failed; see $LOG/build.log"; tail -20 "$LOG/build.log" >&2; exit 1
}
LW=$ROOT/target/release/loopwatch
ATTACK=$ROOT/benches/tools/hostile.py

(
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "$RUN_DEADLINE" & sp=$!
    wait "$sp" && kill -TERM $$ 2>/dev/null
) &
WATCHDOG=$!

# The attackers hold up to ~1,200 sockets; loopwatch gets 1024.
ulimit -n 4096 2>/dev/null || true

cat >"$WORK/loopwatch.yml" <<EOF
ingest:
  udp_listen_address: 127.0.0.1:$PORT_UDP
  silence_timeout: 5s
EOF
"$LW" check-config "$WORK/loopwatch.yml" >"$LOG/check-config.txt" 2>&1 || {
    say "hostile.sh: config rejected:"; cat "$LOG/check-config.txt" >&2; exit 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

start_lw() { # label
    ( ulimit -n "$NOFILE"; exec "$LW" --config.file "$WORK/loopwatch.yml" \
        --web.listen-address "127.0.0.1:$PORT_HTTP" --log.level warn ) >"$LOG/loopwatch-$1.log" 2>&1 &
    LW_PID=$!
    for _ in $(seq 100); do
        if curl -sf -o /dev/null "http://127.0.0.1:$PORT_HTTP/-/ready" && [[ -n $(ss -Hlun "sport = :$PORT_UDP") ]]; then
            return 0
        fi
        kill -0 "$LW_PID" 2>/dev/null || { say "hostile.sh: loopwatch exited; see $LOG/loopwatch-$1.log"; exit 1; }
        sleep 0.1
    done
    say "hostile.sh: loopwatch not ready after 10 s"; exit 1
}

# What loopwatch counted: every non-zero series of the ingest and HTTP
# rejection families, the series budget in use, connections open.
counted() { # metrics file
    awk '
        /^loopwatch_ingest_rejected_total\{/ || /^loopwatch_ingest_folded_total\{/ ||
        /^loopwatch_http_requests_rejected_total\{/ {
            if ($2 + 0 > 0) { n = $1; sub(/^loopwatch_/, "", n); sub(/_total\{[a-z]+="/, "{", n); sub(/"\}$/, "}", n); out = out sep n "=" $2; sep = ", " }
        }
        /^loopwatch_ingest_series / { s = $2 }
        /^loopwatch_ingest_messages_total\{/ { m += $2 }
        /^loopwatch_http_max_connections / { mc = $2 }
        END { printf "%s%singest_series=%d, messages=%d, max_connections=%d", out, sep, s, m, mc }' "$1"
}

row() { # id label attack-args...
    local id=$1 label=$2 attack=$3 n=${4:-}
    local out=$LOG/wrk-$id.txt rss0 rss1 secs=$((WRK_SECS + 5)) mfile=$LOG/metrics-$id.txt
    say "hostile.sh: row $id ($label)"
    start_lw "$id"
    sleep 1
    rss0=$(rss_kb "$LW_PID")
    rm -f "$WORK/ready"
    if [[ $attack != none ]]; then
        READY=$WORK/ready N=$n timeout $((secs + 120)) python3 "$ATTACK" "$attack" "$PORT_HTTP" "$PORT_UDP" "$secs" \
            >"$LOG/attack-$id.txt" 2>&1 &
        ATK_PID=$!
        for _ in $(seq 1200); do
            [[ -e $WORK/ready ]] && break
            kill -0 "$ATK_PID" 2>/dev/null || break
            sleep 0.1
        done
    fi
    wrk -t1 -c4 -d"${WRK_SECS}s" --latency --timeout 10s "http://127.0.0.1:$PORT_HTTP/metrics" >"$out" 2>&1 || true
    if [[ -n $ATK_PID ]]; then wait "$ATK_PID" 2>/dev/null || true; ATK_PID=; fi
    rss1=$(rss_kb "$LW_PID")
    curl -s --max-time 30 "http://127.0.0.1:$PORT_HTTP/metrics" >"$mfile" || true
    local bytes series fds
    bytes=$(wc -c <"$mfile")
    series=$(grep -vc '^#' "$mfile" || true)
    fds=$(ls "/proc/$LW_PID/fd" 2>/dev/null | wc -l)
    awk -v label="$label" -v rss="$(mb "$rss0") → $(mb "$rss1")" -v bytes="$bytes" -v series="$series" \
        -v fds="$fds" -v counted="$(counted "$mfile")" -v atk="$(tail -1 "$LOG/attack-$id.txt" 2>/dev/null | tr '|' '/')" '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /m$/) return substr(v, 1, length(v) - 1) * 60000
            if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
            return "?"
        }
        /^ +Latency / && max == "" { max = ms($4) }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        / requests in / { reqs = $1 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
        END {
            printf "| %s | %s | %s | %s | %d | %d | %s | %d | %d | %s | %s | %s |\n",
                label, p50, p99, max, reqs, non2xx + err, rss, bytes, series, fds, counted, atk
        }' "$out" >>"$WORK/rows"
    stop_pid "$LW_PID"; LW_PID=
    sleep 0.5
}

: >"$WORK/rows"
for r in $ROWS; do
    case $r in
        none) row none "none (baseline)" none ;;
        a) row a "(a) 10 apps × 16 loops × 100 tasks × 50 exceptions" series ;;
        b) row b "(b) $JUNK junk app names, then a real app" junkapps ;;
        c) row c "(c) 1,000 idle TCP connections" idle 1000 ;;
        d) row d "(d) 500 slowloris connections" slowloris 500 ;;
        e) row e "(e) $POSTS concurrent 1 MiB POSTs" posts "$POSTS" ;;
        f) row f "(f) /api/v1/loops, 784 loops full of stacks, 4 readers" stacks ;;
        g) row g "(g) 300,000 garbage datagrams" garbage 300000 ;;
        *) say "hostile.sh: unknown row $r"; exit 2 ;;
    esac
done

cat <<EOF
# loopwatch under hostile input (issue 15)

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
- $("$LW" --version 2>&1 | head -1), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (uncommitted changes in src/)')
- each row: a fresh loopwatch (open-file limit $NOFILE), the attack, and during it \`wrk -t1 -c4 -d${WRK_SECS}s --latency --timeout 10s http://127.0.0.1:$PORT_HTTP/metrics\`; wrk and the attacker share the 2 cores with loopwatch

| attack | /metrics p50 ms | p99 ms | max ms | requests answered | errors (socket + non-2xx) | loopwatch RSS before → after (MB) | /metrics bytes after | series after | loopwatch fds after | what loopwatch counted | what the attacker saw |
| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |
EOF
cat "$WORK/rows"
echo
echo "Raw output in target/bench-hostile/ (wrk-ROW.txt, attack-ROW.txt, metrics-ROW.txt, loopwatch-ROW.log)."
