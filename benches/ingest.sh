#!/usr/bin/env bash
# Ingest benchmarks (issue #5): throughput per core over UDP and HTTP, CPU of
# 1,000 loops at 4 heartbeats a second, /metrics latency with those loops,
# stall detection latency, and the Python client's cost per heartbeat.
#
#     bash benches/ingest.sh
#
# Everything runs on 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin loopwatch --example ingest_load -q

HTTP=19171 UDP=19172
TICK=$(getconf CLK_TCK)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cpu_seconds() { awk -v t="$TICK" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
messages() { curl -s "127.0.0.1:$HTTP/metrics" | awk -v tr="$1" '$1 == "loopwatch_ingest_messages_total{transport=\""tr"\"}" { print $2 }'; }
rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

cat > "$work/loopwatch.yml" <<YAML
ingest:
  udp_listen_address: 127.0.0.1:$UDP
  max_apps: 100
  max_loops_per_app: 32
YAML
target/release/loopwatch --config.file "$work/loopwatch.yml" --web.listen-address "127.0.0.1:$HTTP" \
  --web.max-requests 64 --log.level warn &
lw=$!; pids+=("$lw")
for _ in $(seq 50); do curl -sf "127.0.0.1:$HTTP/-/ready" >/dev/null && break; sleep 0.1; done

echo "## Ingest ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo
echo "| measurement | result |"
echo "| --- | --- |"

# 1,000 loops at 4 heartbeats a second for 30 s.
before_cpu=$(cpu_seconds "$lw"); before_msgs=$(messages udp)
sent=$(target/release/examples/ingest_load paced "127.0.0.1:$UDP" 1000 4 30)
after_cpu=$(cpu_seconds "$lw"); after_msgs=$(messages udp)
received=$((after_msgs - before_msgs))
echo "| 1,000 loops × 4 heartbeats/s, 30 s: CPU of one core | $(awk -v a="$before_cpu" -v b="$after_cpu" 'BEGIN { printf "%.2f %%", (b - a) / 30 * 100 }') (received $received of $sent) |"
echo "| RSS with 1,000 loops tracked | $(rss_mb "$lw") MB |"

# /metrics with those 1,000 loops' series, 32 scrapers.
wrk -t2 -c32 -d10s --latency "http://127.0.0.1:$HTTP/metrics" > "$work/wrk.txt"
p50=$(awk '$1 == "50%" { print $2 }' "$work/wrk.txt"); p99=$(awk '$1 == "99%" { print $2 }' "$work/wrk.txt")
size=$(curl -s "127.0.0.1:$HTTP/metrics" | wc -c)
echo "| /metrics with 1,000 loops (${size} bytes), 32 scrapers: p50 / p99 | $p50 / $p99 |"

# Throughput: one sender as fast as it can, 10 s each.
for transport in udp http; do
  before_cpu=$(cpu_seconds "$lw"); before_msgs=$(messages "$transport")
  if [ "$transport" = udp ]; then dest="127.0.0.1:$UDP"; else dest="127.0.0.1:$HTTP"; fi
  sent=$(target/release/examples/ingest_load "$transport" "$dest" 10)
  sleep 0.5
  after_cpu=$(cpu_seconds "$lw"); after_msgs=$(messages "$transport")
  received=$((after_msgs - before_msgs))
  echo "| $transport throughput: messages per CPU-second of loopwatch | $(awk -v n="$received" -v a="$before_cpu" -v b="$after_cpu" 'BEGIN { printf "%.0f", n / (b - a) }') (received $received of $sent in 10 s) |"
done

echo
python3 benches/stall_latency.py "$HTTP" "$UDP" 10
if [ -f clients/python/bench_heartbeat.py ]; then
  echo
  python3 clients/python/bench_heartbeat.py
fi
echo
python3 benches/client_overhead.py "$UDP"
