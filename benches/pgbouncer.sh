#!/usr/bin/env bash
# PgBouncer collector benchmark (issue #6), side by side with Debian's
# prometheus-pgbouncer-exporter, against a PostgreSQL cluster and a PgBouncer
# this script starts: idle RSS, CPU per scrape (the exporter's and
# PgBouncer's), /metrics p50/p99 with 32 scrapers, the admin-console commands
# each exporter sends per minute, and scrape time while PgBouncer is hung
# (SIGSTOP), stopped, and after it is back.
#
#     bash benches/pgbouncer.sh                      # builds target/release/loopwatch
#     LOOPWATCH_BIN=/path/to/loopwatch bash benches/pgbouncer.sh
#
# prometheus-pgbouncer-exporter 1.7 reads SHOW STATS' `total_requests`, a
# column PgBouncer renamed to `total_query_count` in 1.8, so against a current
# PgBouncer it exits at start with KeyError. The script shows that, then runs
# it through a shim that only adds the old column name to each SHOW STATS row
# (everything else, its connection handling included, is the packaged code).
#
# Everything runs on 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${LOOPWATCH_BIN:-}" ]; then
  cargo build --release --bin loopwatch -q
  LOOPWATCH_BIN=$PWD/target/release/loopwatch
fi

lw_version=$("$LOOPWATCH_BIN" --version 2>&1)
lw_version=${lw_version%%$'\n'*}

free_port() { # first port from $1 on that nothing listens on
  local p=$1
  while ss -Htln "sport = :$p" | grep -q .; do p=$((p + 1)); done
  echo "$p"
}
PG_PORT=$(free_port 19442)
PGB=$(free_port $((PG_PORT + 1)))
LW=$(free_port 19191)
PE=$(free_port $((LW + 6)))
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
TICK=$(getconf CLK_TCK)
N_LW=1000 N_PE=200 CLIENTS=20
work=$(mktemp -d /tmp/lw-pgbbench.XXXXXX)
chmod 755 "$work"
pids=() clients=()
pg() { runuser -u postgres -- "$@"; }
pgb_pid() { cat "$work/pgbouncer.pid" 2>/dev/null || true; }
cleanup() {
  for p in "${clients[@]}" "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  local b; b=$(pgb_pid)
  if [ -n "$b" ]; then kill -CONT "$b" 2>/dev/null || true; kill -TERM "$b" 2>/dev/null || true; fi
  if [ -f "$work/data/postmaster.pid" ]; then
    pg "$BIN/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL behind PgBouncer.
chown postgres "$work"
pg "$BIN/initdb" -D "$work/data" -U postgres --auth=trust >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 100
shared_buffers = 32MB
fsync = off
CONF
pg "$BIN/pg_ctl" -D "$work/data" -l "$work/pg.log" -w start >/dev/null
psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atq -c "create database app"

# PgBouncer: lw = loopwatch, pe = the peer exporter, bench = this script.
cat > "$work/userlist.txt" <<USERS
"postgres" ""
"lw" ""
"pe" ""
"bench" ""
USERS
cat > "$work/pgbouncer.ini" <<INI
[databases]
app = host=127.0.0.1 port=$PG_PORT dbname=app user=postgres
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB
unix_socket_dir = $work
auth_type = trust
auth_file = $work/userlist.txt
admin_users = bench
stats_users = lw, pe
pool_mode = transaction
max_client_conn = 500
default_pool_size = 10
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
verbose = 0
INI
chown postgres "$work/userlist.txt" "$work/pgbouncer.ini"
admin() { psql -h 127.0.0.1 -p "$PGB" -U bench -d pgbouncer -Atq "$@"; }
start_pgbouncer() {
  pg /usr/sbin/pgbouncer -d "$work/pgbouncer.ini"
  for _ in $(seq 50); do admin -c "show version" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "pgbouncer did not start" >&2; exit 1
}
start_pgbouncer
for _ in $(seq "$CLIENTS"); do # idle clients, so the pools have something to show
  sleep 900 | psql -h 127.0.0.1 -p "$PGB" -U postgres -d app -q >/dev/null 2>&1 & clients+=($!)
done
psql -h 127.0.0.1 -p "$PGB" -U postgres -d postgres -Atq -c "select 1" >/dev/null

cat > "$work/loopwatch.yml" <<YAML
ingest:
  udp_listen_address: ""
pgbouncer:
  - name: bench
    dsn: host=127.0.0.1 port=$PGB user=lw dbname=pgbouncer
YAML
cat > "$work/pe.conf" <<CONF
host = 127.0.0.1
port = $PE
pgbouncer-host = 127.0.0.1
pgbouncer-port = $PGB
pgbouncer-user = pe
CONF
cat > "$work/pe_shim.py" <<'PY'
# prometheus-pgbouncer-exporter 1.7 as packaged, plus SHOW STATS' pre-1.8
# column name `total_requests` (= total_query_count) on each row.
import sys
from prometheus_pgbouncer_exporter import cli, collectors, utils

def by_named_column(connection, key):
    rows = utils.get_data_by_named_column(connection, key)
    for row in rows:
        if "total_requests" not in row and "total_query_count" in row:
            row["total_requests"] = row["total_query_count"]
    return rows

collectors.get_data_by_named_column = by_named_column
sys.argv[0] = "prometheus-pgbouncer-exporter"
cli.main()
PY
PE_ARGS=(--config "$work/pe.conf" --licence-location /usr/share/doc/prometheus-pgbouncer-exporter/copyright)

# The packaged exporter, unmodified, against this PgBouncer.
/usr/bin/prometheus-pgbouncer-exporter "${PE_ARGS[@]}" >"$work/pe-unmodified.log" 2>&1 & p=$!
sleep 3
if kill -0 "$p" 2>/dev/null; then
  kill "$p"; unmodified="runs"
else
  unmodified="exits at start: $(grep -E '^[A-Za-z]+Error' "$work/pe-unmodified.log" | tail -1)"
fi

"$LOOPWATCH_BIN" --config.file "$work/loopwatch.yml" --web.listen-address "127.0.0.1:$LW" \
  --web.max-requests 64 --log.level error & pids+=($!); lw=$!
/usr/bin/python3 "$work/pe_shim.py" "${PE_ARGS[@]}" >"$work/pe.log" 2>&1 & pids+=($!); pe=$!
sleep 10

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
now() { date +%s.%N; }
rss() { awk '$1 == "VmRSS:" { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
series() { # port prefix: samples in one scrape whose name starts with prefix
  curl -s --max-time 10 "127.0.0.1:$1/metrics" | grep -c "^$2" || true
}
# Idle RSS before any scrape, and idle CPU (ticks per second) over 10 s.
rss_lw=$(rss "$lw") rss_pe=$(rss "$pe")
b=$(pgb_pid)
i0_lw=$(ticks "$lw") i0_pe=$(ticks "$pe") i0_b=$(ticks "$b") t0=$(now)
sleep 10
i1_lw=$(ticks "$lw") i1_pe=$(ticks "$pe") i1_b=$(ticks "$b") t1=$(now)
rate() { awk -v a="$1" -v b="$2" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.4f", (b - a) / (t1 - t0) }'; }
idle_lw=$(rate "$i0_lw" "$i1_lw") idle_pe=$(rate "$i0_pe" "$i1_pe") idle_b=$(rate "$i0_b" "$i1_b")

per_scrape() { # pid idle_rate port n -> "exporter_ms pgbouncer_ms non200"
  local a b pa pb s e bad
  a=$(ticks "$1") pa=$(ticks "$(pgb_pid)") s=$(now)
  bad=$(for _ in $(seq "$4"); do curl -s -o /dev/null --max-time 10 -w '%{http_code}\n' "127.0.0.1:$3/metrics" || true; done | grep -vc '^200$' || true)
  b=$(ticks "$1") pb=$(ticks "$(pgb_pid)") e=$(now)
  awk -v a="$a" -v b="$b" -v pa="$pa" -v pb="$pb" -v s="$s" -v e="$e" -v n="$4" -v t="$TICK" \
    -v ir="$2" -v ib="$idle_b" -v bad="$bad" \
    'BEGIN { printf "%.3f %.3f %d", (b - a - ir * (e - s)) / t / n * 1000, (pb - pa - ib * (e - s)) / t / n * 1000, bad }'
}
busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
overflows() { # the kernel's count of connections dropped because a listen queue was full
  awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "ListenOverflows") c = i; h = 1 } else print $c }' /proc/net/netstat
}
latency() { # pid port -> "p50 / p99|req/s|errors|exporter cores|machine busy cores|listen overflows"
  local a b ba bb oa ob s e p50 p99 rps err non2xx
  a=$(ticks "$1") ba=$(busy) oa=$(overflows) s=$(now)
  wrk -t2 -c32 -d15s --timeout 30s --latency "http://127.0.0.1:$2/metrics" > "$work/wrk.txt" 2>&1 || true
  b=$(ticks "$1") bb=$(busy) ob=$(overflows) e=$(now)
  p50=$(awk '$1 == "50%" { print $2 }' "$work/wrk.txt") p99=$(awk '$1 == "99%" { print $2 }' "$work/wrk.txt")
  rps=$(awk '$1 == "Requests/sec:" { printf "%.0f", $2 }' "$work/wrk.txt")
  err=$(awk '/Socket errors/ { sub(/.*Socket errors: /, ""); print }' "$work/wrk.txt")
  non2xx=$(awk '/Non-2xx/ { print $NF }' "$work/wrk.txt")
  echo "${p50:-none} / ${p99:-none}|${rps:-0}|${err:-none}${non2xx:+; non-2xx $non2xx}|$(awk -v a="$a" -v b="$b" -v ba="$ba" -v bb="$bb" -v s="$s" -v e="$e" -v t="$TICK" \
    'BEGIN { printf "%.2f|%.2f", (b - a) / t / (e - s), (bb - ba) / t / (e - s) }')|$((ob - oa))"
}
scrape_time() { # port: one scrape, seconds and outcome, capped at 30 s
  local out rc=0
  out=$(curl -s -o /dev/null --max-time 30 -w '%{time_total} %{http_code}' "127.0.0.1:$1/metrics") || rc=$?
  case $rc in
    0) echo "${out% *} (HTTP ${out#* })" ;;
    28) echo ">30 (no answer within 30 s)" ;;
    52) echo "${out% *} (empty reply, connection closed)" ;;
    *) echo "${out% *} (curl exit $rc)" ;;
  esac
}
lw_up() {
  local m; m=$(curl -s --max-time 10 "127.0.0.1:$LW/metrics") || { echo "no answer"; return; }
  awk '$1 == "loopwatch_pgbouncer_up{target=\"bench\"}" { print $2 }' <<<"$m"
}

read -r cpu_lw pgb_lw bad_lw <<<"$(per_scrape "$lw" "$idle_lw" "$LW" "$N_LW")"
read -r cpu_pe pgb_pe bad_pe <<<"$(per_scrape "$pe" "$idle_pe" "$PE" "$N_PE")"
# loopwatch twice (before and after the peer), as p99 on 2 shared cores varies.
IFS='|' read -r lat_lw rps_lw err_lw core_lw mach_lw ovf_lw <<<"$(latency "$lw" "$LW")"
IFS='|' read -r lat_pe rps_pe err_pe core_pe mach_pe ovf_pe <<<"$(latency "$pe" "$PE")"
IFS='|' read -r lat_lw2 rps_lw2 err_lw2 core_lw2 mach_lw2 ovf_lw2 <<<"$(latency "$lw" "$LW")"
ser_lw=$(series "$LW" loopwatch_pgbouncer_) ser_pe=$(series "$PE" pgbouncer_)

# Admin-console commands over one minute with a Prometheus-like scrape every
# 15 s: PgBouncer's verbose=2 log names the user of every query packet. Wait
# first: without the wait one run counted a fifth peer scrape in the minute,
# probably a connection of the peer's wrk run that its full listen queue had
# held back (the kernel retries those for ~30 s).
sleep 35
admin -c "set verbose = 2" >/dev/null
mark=$(wc -l < "$work/pgbouncer.log")
failed_lw=0 failed_pe=0
for _ in 1 2 3 4; do
  curl -s -o /dev/null --max-time 10 "127.0.0.1:$LW/metrics" || failed_lw=$((failed_lw + 1))
  curl -s -o /dev/null --max-time 10 "127.0.0.1:$PE/metrics" || failed_pe=$((failed_pe + 1))
  sleep 15
done
admin -c "set verbose = 0" >/dev/null
cmds() { tail -n +"$((mark + 1))" "$work/pgbouncer.log" | grep -c "pgbouncer/$1@[^ ]* read pkt='Q'" || true; }
cmd_lw=$(cmds lw) cmd_pe=$(cmds pe)
up_before=$(lw_up)

# PgBouncer hung, then stopped, then back.
b=$(pgb_pid)
kill -STOP "$b"
sleep 16
hung_lw=$(scrape_time "$LW") hung_pe=$(scrape_time "$PE") up_hung=$(lw_up)
kill -CONT "$b"
sleep 5
kill -TERM "$b"
for _ in $(seq 50); do kill -0 "$b" 2>/dev/null || break; sleep 0.1; done
sleep 16
stop_lw=$(scrape_time "$LW") stop_pe=$(scrape_time "$PE") up_stop=$(lw_up)
start_pgbouncer
sleep 16
back_lw=$(scrape_time "$LW") back_pe=$(scrape_time "$PE") up_back=$(lw_up)

echo "## PgBouncer collector vs prometheus-pgbouncer-exporter $(dpkg-query -W -f '${Version}' prometheus-pgbouncer-exporter) ($(nproc) cores, PgBouncer $(/usr/sbin/pgbouncer --version | awk 'NR == 1 { print $2 }'), PostgreSQL $("$BIN/postgres" --version | awk '{ print $3 }'))"
echo
echo "- $lw_version"
echo "- prometheus-pgbouncer-exporter unmodified: $unmodified; the figures below are of it with the total_requests shim"
echo "- $CLIENTS idle clients on database app; 2 databases; loopwatch polls every 15 s (default interval), the peer queries PgBouncer on every scrape"
echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| | loopwatch | prometheus-pgbouncer-exporter |"
echo "| --- | --- | --- |"
echo "| idle RSS (before any scrape) | $rss_lw MB | $rss_pe MB |"
echo "| idle CPU (% of one core, 10 s) | $(awk -v r="$idle_lw" -v t="$TICK" 'BEGIN { printf "%.2f", r / t * 100 }') | $(awk -v r="$idle_pe" -v t="$TICK" 'BEGIN { printf "%.2f", r / t * 100 }') |"
echo "| CPU per scrape ($N_LW / $N_PE sequential scrapes, idle subtracted) | $cpu_lw ms | $cpu_pe ms |"
echo "| PgBouncer's CPU per scrape (resolution $(awk -v t="$TICK" -v a="$N_LW" -v b="$N_PE" 'BEGIN { printf "%.3f / %.3f", 1000 / t / a, 1000 / t / b }') ms) | $pgb_lw ms | $pgb_pe ms |"
echo "| non-200 in those scrapes | $bad_lw | $bad_pe |"
echo "| PgBouncer samples in one scrape | $ser_lw | $ser_pe |"
echo "| /metrics p50 / p99, 32 scrapers (wrk -t2 -c32 -d15s) | $lat_lw; again after the peer's run: $lat_lw2 | $lat_pe |"
echo "| requests/s in those runs | $rps_lw; $rps_lw2 | $rps_pe |"
echo "| wrk socket errors (connect, read, write, timeout) | $err_lw; $err_lw2 | $err_pe |"
echo "| CPU during those runs: exporter / whole machine (cores of 2) | $core_lw / $mach_lw; $core_lw2 / $mach_lw2 | $core_pe / $mach_pe |"
echo "| connections dropped on a full listen queue (TcpExtListenOverflows, whole machine) | $ovf_lw; $ovf_lw2 | $ovf_pe |"
failed() { [ "$1" -eq 0 ] || echo " ($1 of the 4 scrapes failed)"; }
echo "| admin-console commands per minute (15 s scrapes) | $cmd_lw$(failed "$failed_lw") | $cmd_pe$(failed "$failed_pe") |"
echo "| one scrape, PgBouncer hung (SIGSTOP, 16 s) | $hung_lw | $hung_pe |"
echo "| one scrape, PgBouncer stopped (16 s) | $stop_lw | $stop_pe |"
echo "| one scrape, 16 s after PgBouncer is back | $back_lw | $back_pe |"
echo "| loopwatch_pgbouncer_up: before / hung / stopped / back | $up_before / $up_hung / $up_stop / $up_back | |"
