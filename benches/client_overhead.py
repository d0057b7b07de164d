"""Effect of the Python client on a busy asyncio app's throughput.

    python3 benches/client_overhead.py [UDP_PORT]

A busy app: 100 tasks each doing small awaits and a little work for a fixed
time; operations per second with and without loopwatch.start() (heartbeats
every 0.25 s to UDP_PORT, default a port where nothing listens: the cost is
the same). Alternating runs, asyncio and uvloop; median of 5 each.
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "clients", "python", "src"))
import loopwatch  # noqa: E402

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 9
SECONDS = 2.0


async def busy(with_client: bool) -> float:
    reporter = loopwatch.start("overhead-bench", target=f"udp://127.0.0.1:{PORT}") if with_client else None
    ops = 0
    deadline = time.monotonic() + SECONDS

    async def worker() -> None:
        nonlocal ops
        while time.monotonic() < deadline:
            json.dumps({"i": ops})  # a little work per operation
            await asyncio.sleep(0)
            ops += 1

    await asyncio.gather(*(worker() for _ in range(100)))
    if reporter is not None:
        reporter.stop()
    return ops / SECONDS


def run(factory: object, with_client: bool) -> float:
    loop = factory()  # type: ignore[operator]
    try:
        return loop.run_until_complete(busy(with_client))
    finally:
        loop.close()


def main() -> None:
    factories = [("asyncio", asyncio.new_event_loop)]
    try:
        import uvloop

        factories.append(("uvloop", uvloop.new_event_loop))
    except ImportError:
        pass
    print("| loop | ops/s without client | ops/s with client | change |")
    print("| --- | ---: | ---: | ---: |")
    for name, factory in factories:
        without, with_ = [], []
        for _ in range(5):
            without.append(run(factory, False))
            with_.append(run(factory, True))
        a, b = statistics.median(without), statistics.median(with_)
        print(f"| {name} | {a:,.0f} | {b:,.0f} | {(b - a) / a * 100:+.1f} % |")


if __name__ == "__main__":
    main()
