#!/usr/bin/env bash
# ratelimits collector benchmark (issue #7): CPU and memory per poll with 50
# GitHub tokens against a local stand-in for GET /rate_limit
# (benches/fake_github.py, 10 resources per answer), /metrics cost with their
# 500 budgets, and the requests per token while 32 scrapers hammer /metrics.
#
#     bash benches/ratelimits.sh
#
# Everything runs on 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
LOOPWATCH_BIN=${LOOPWATCH_BIN:-}
if [ -z "$LOOPWATCH_BIN" ]; then
  cargo build --release --bin loopwatch -q
  LOOPWATCH_BIN=target/release/loopwatch
fi
API=19281 LW=19282 TOKENS=50 SECONDS_RUN=60
TICK=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/lw-rlbench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cpu() { awk -v t="$TICK" '{ printf "%.4f", ($14 + $15) / t }' "/proc/$1/stat"; }
rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
polls() { curl -s "127.0.0.1:$API/_counts" | python3 -c 'import json,sys; c=json.load(sys.stdin); print(sum(c.values()), max(c.values() or [0]))'; }
start_lw() { # config
  "$LOOPWATCH_BIN" --config.file "$1" --web.listen-address "127.0.0.1:$LW" --log.level error & pids+=($!)
  lw=$!
  sleep 10
}
stop_lw() { kill "$lw"; wait "$lw" 2>/dev/null || true; }

python3 benches/fake_github.py "$API" & pids+=($!)
sleep 1

printf 'ingest:\n  udp_listen_address: ""\n' > "$work/base.yml"
start_lw "$work/base.yml"
base_rss=$(rss_kb "$lw")
stop_lw

{
  printf 'ingest:\n  udp_listen_address: ""\nratelimits:\n  - name: github\n    kind: github\n    url: http://127.0.0.1:%s\n    interval: 1s\n    timeout: 900ms\n    tokens:\n' "$API"
  for i in $(seq "$TOKENS"); do printf '      - {name: t%02d, token: ghp_bench%02d}\n' "$i" "$i"; done
} > "$work/tokens.yml"
start_lw "$work/tokens.yml"
read -r p0 _ <<<"$(polls)"; c0=$(cpu "$lw")
sleep "$SECONDS_RUN"
read -r p1 _ <<<"$(polls)"; c1=$(cpu "$lw")
rss=$(rss_kb "$lw")
n=$((p1 - p0))
per_poll_us=$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.0f", (b - a) / n * 1e6 }')
core_pct=$(awk -v a="$c0" -v b="$c1" -v s="$SECONDS_RUN" 'BEGIN { printf "%.2f", (b - a) / s * 100 }')
size=$(curl -s "127.0.0.1:$LW/metrics" | wc -c)
series=$(curl -s "127.0.0.1:$LW/metrics" | grep -c '^loopwatch_ratelimit_' || true)
a=$(cpu "$lw"); for _ in $(seq 200); do curl -s -o /dev/null "127.0.0.1:$LW/metrics"; done; b=$(cpu "$lw")
scrape_ms=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", (b - a) / 200 * 1000 }')
# Scrape 32-wide for 30 s: the API must still see one request per token per interval.
read -r q0 _ <<<"$(polls)"
wrk -t2 -c32 -d30s --latency "http://127.0.0.1:$LW/metrics" > "$work/wrk.txt" || true
read -r q1 _ <<<"$(polls)"
p99=$(awk '$1 == "99%" { print $2 }' "$work/wrk.txt")
scrapes=$(awk '/requests in/ { print $1 }' "$work/wrk.txt")
per_token_min=$(awk -v a="$q0" -v b="$q1" -v t="$TOKENS" 'BEGIN { printf "%.1f", (b - a) / t * 2 }')
stop_lw

echo "## Rate limits: $TOKENS GitHub tokens polled every 1 s ($(nproc) cores)"
echo
echo "| | figure |"
echo "| --- | --- |"
echo "| polls in ${SECONDS_RUN} s | $n |"
echo "| CPU per poll (one token, 10 resources) | ${per_poll_us} µs |"
echo "| CPU for $TOKENS tokens at 1 s | ${core_pct} % of a core |"
echo "| RSS idle without ratelimits / with $TOKENS tokens | $((base_rss / 1024)).$(( (base_rss % 1024) * 10 / 1024 )) MB / $((rss / 1024)).$(( (rss % 1024) * 10 / 1024 )) MB |"
echo "| RSS per token | $(( (rss - base_rss) / TOKENS )) kB |"
echo "| /metrics size, ratelimit series | $size bytes, $series |"
echo "| CPU per scrape | $scrape_ms ms |"
echo "| p99 with 32 scrapers (30 s, $scrapes scrapes) | $p99 |"
echo "| API requests per token per minute while scraped 32-wide (interval 1 s) | $per_token_min |"
