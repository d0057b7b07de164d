#!/usr/bin/env bash
# PostgreSQL collector benchmark (issue #6), side by side with Debian's
# prometheus-postgres-exporter, against a cluster this script starts:
# CPU per scrape, /metrics p50/p99 with 32 scrapers, the queries and
# execution time each exporter costs PostgreSQL per minute (at 5 and 200
# client connections), and scrape time while PostgreSQL is stopped and hung.
#
#     bash benches/postgres.sh
#
# Everything runs on 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin loopwatch -q

PG_PORT=19432 LW=19181 PE=19187
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
TICK=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/lw-pgbench.XXXXXX)
chmod 755 "$work"
pids=() clients=()
pg() { runuser -u postgres -- "$@"; }
cleanup() {
  for p in "${clients[@]}" "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$work/data/postmaster.pid" ]; then
    pm=$(head -1 "$work/data/postmaster.pid")
    kill -CONT "$pm" $(pgrep -P "$pm") 2>/dev/null || true
    pg "$BIN/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

chown postgres "$work"
pg "$BIN/initdb" -D "$work/data" -U postgres --auth=trust >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 300
shared_buffers = 32MB
fsync = off
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
CONF
pg "$BIN/pg_ctl" -D "$work/data" -l "$work/pg.log" -w start >/dev/null
psql_() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atq "$@"; }
psql_ -c "create extension pg_stat_statements; create role lw login; create role pe login; grant pg_monitor to lw, pe;"

cat > "$work/loopwatch.yml" <<YAML
ingest:
  udp_listen_address: ""
postgres:
  - name: bench
    dsn: host=127.0.0.1 port=$PG_PORT user=lw dbname=postgres
YAML
target/release/loopwatch --config.file "$work/loopwatch.yml" --web.listen-address "127.0.0.1:$LW" \
  --web.max-requests 64 --log.level error & pids+=($!); lw=$!
DATA_SOURCE_NAME="host=127.0.0.1 port=$PG_PORT user=pe dbname=postgres sslmode=disable" \
  prometheus-postgres-exporter --web.listen-address "127.0.0.1:$PE" --log.level=error & pids+=($!); pe=$!
sleep 3

cpu() { awk -v t="$TICK" '{ printf "%.4f", ($14 + $15) / t }' "/proc/$1/stat"; }
per_scrape_ms() { # pid port n
  local a b; a=$(cpu "$1")
  for _ in $(seq "$3"); do curl -s -o /dev/null "127.0.0.1:$2/metrics"; done
  b=$(cpu "$1"); awk -v a="$a" -v b="$b" -v n="$3" 'BEGIN { printf "%.3f", (b - a) / n * 1000 }'
}
latency() { # port
  wrk -t2 -c32 -d10s --timeout 30s --latency "http://127.0.0.1:$1/metrics" > "$work/wrk.txt" || true
  echo "$(awk '$1 == "50%" { print $2 }' "$work/wrk.txt") / $(awk '$1 == "99%" { print $2 }' "$work/wrk.txt")"
}
db_cost() { # role: calls and exec ms in pg_stat_statements
  psql_ -c "select coalesce(sum(calls),0)::bigint || ' ' || round(coalesce(sum(total_exec_time),0)::numeric, 1) from pg_stat_statements s join pg_roles r on r.oid = s.userid where r.rolname = '$1'"
}
hold_clients() { # n
  for _ in $(seq "$1"); do
    sleep 900 | psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -q >/dev/null 2>&1 & clients+=($!)
  done
  sleep 2
}
release_clients() { for p in "${clients[@]}"; do kill "$p" 2>/dev/null || true; done; clients=(); sleep 1; }
scrape_time() { # port: seconds for one scrape, capped at 20 s
  local t
  if t=$(curl -s -o /dev/null --max-time 20 -w '%{time_total}' "127.0.0.1:$1/metrics"); then echo "$t"; else echo ">20 (no answer)"; fi
}

echo "## PostgreSQL collector vs postgres_exporter $(prometheus-postgres-exporter --version 2>&1 | head -1 | awk '{print $3}') ($(nproc) cores, PostgreSQL $($BIN/postgres --version | awk '{print $3}'))"
echo
for n in 5 200; do
  hold_clients "$n"
  echo "### $n client connections"
  echo
  echo "| | loopwatch | postgres_exporter |"
  echo "| --- | --- | --- |"
  echo "| CPU per scrape | $(per_scrape_ms "$lw" "$LW" 200) ms | $(per_scrape_ms "$pe" "$PE" 50) ms |"
  echo "| /metrics p50 / p99, 32 scrapers | $(latency "$LW") | $(latency "$PE") |"
  # Cost to PostgreSQL over one minute with a Prometheus-like scrape every 15 s.
  psql_ -c "select pg_stat_statements_reset()" >/dev/null
  for _ in 1 2 3 4; do curl -s -o /dev/null "127.0.0.1:$LW/metrics"; curl -s -o /dev/null "127.0.0.1:$PE/metrics"; sleep 15; done
  read -r lw_calls lw_ms <<<"$(db_cost lw)"; read -r pe_calls pe_ms <<<"$(db_cost pe)"
  echo "| statements / execution time in PostgreSQL per minute (15 s scrapes) | $lw_calls / $lw_ms ms | $pe_calls / $pe_ms ms |"
  echo
  release_clients
done

echo "### PostgreSQL unavailable"
echo
echo "| one scrape, seconds | loopwatch | postgres_exporter |"
echo "| --- | --- | --- |"
pg "$BIN/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null
sleep 16
echo "| PostgreSQL stopped | $(scrape_time "$LW") | $(scrape_time "$PE") |"
pg "$BIN/pg_ctl" -D "$work/data" -l "$work/pg.log" -w start >/dev/null
sleep 16
pm=$(head -1 "$work/data/postmaster.pid")
kill -STOP "$pm" $(pgrep -P "$pm")
sleep 16
echo "| PostgreSQL hung (SIGSTOP) | $(scrape_time "$LW") | $(scrape_time "$PE") |"
echo "| loopwatch_pg_up while hung | $(curl -s "127.0.0.1:$LW/metrics" | awk '$1 == "loopwatch_pg_up{target=\"bench\"}" { print $2 }') | |"
kill -CONT "$pm" $(pgrep -P "$pm")
