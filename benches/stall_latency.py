"""Stall detection latency: from the start of a block on an asyncio loop to
the first scrape of loopwatch's /metrics that shows the stall.

    python3 benches/stall_latency.py HTTP_PORT UDP_PORT [BLOCKS]

The loop reports with the Python client (interval 0.25 s, threshold 0.5 s)
and blocks with time.sleep(2) at a random phase of its heartbeat; a scraper
thread polls /metrics every 10 ms. Target: interval + threshold + 100 ms.
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "clients", "python", "src"))
import loopwatch  # noqa: E402

HTTP_PORT, UDP_PORT = int(sys.argv[1]), int(sys.argv[2])
BLOCKS = int(sys.argv[3]) if len(sys.argv) > 3 else 10
SERIES = re.compile(r'^loopwatch_loop_stall_seconds\{app_name="stall-bench",loop="main"\} (\S+)$', re.M)

blocked_at: list[float] = []
seen_at: list[float] = []
stop = threading.Event()


def scraper() -> None:
    waiting_for = 0
    while not stop.is_set():
        body = urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/metrics", timeout=5).read().decode()
        m = SERIES.search(body)
        now = time.monotonic()
        if m and float(m.group(1)) > 0 and len(blocked_at) > waiting_for:
            seen_at.append(now)
            waiting_for += 1
        time.sleep(0.01)


async def main() -> None:
    reporter = loopwatch.start("stall-bench", target=f"udp://127.0.0.1:{UDP_PORT}")
    await asyncio.sleep(1.0)
    for _ in range(BLOCKS):
        await asyncio.sleep(random.uniform(0.0, 0.25))
        blocked_at.append(time.monotonic())
        time.sleep(2.0)
        await asyncio.sleep(1.5)
    reporter.stop()


thread = threading.Thread(target=scraper, daemon=True)
thread.start()
asyncio.run(main())
stop.set()
latencies = [s - b for b, s in zip(blocked_at, seen_at)]
if len(latencies) < BLOCKS:
    print(f"only {len(latencies)} of {BLOCKS} blocks were seen", file=sys.stderr)
    sys.exit(1)
print(
    f"stall detection latency over {BLOCKS} blocks: median {statistics.median(latencies) * 1000:.0f} ms, "
    f"max {max(latencies) * 1000:.0f} ms (target: 250 + 500 + 100 = 850 ms)"
)
