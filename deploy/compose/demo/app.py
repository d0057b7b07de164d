"""A small asyncio service that misbehaves on purpose, for the compose demo.

It reports its event loop to loopwatch with the Python client
(clients/python) and, on a schedule:

- serves "requests" through a small connection pool (loopwatch_pool_*);
- every STALL_EVERY seconds calls a synchronous function on the loop that
  blocks it for STALL_FOR seconds: loopwatch_loop_stall_seconds grows while
  it lasts, loopwatch_loop_stalls_total counts it, /api/v1/loops names
  `render_report` in this file as the blocking site, and after four such
  stalls in ten minutes LoopwatchLoopStallsRepeated fires;
- every LONG_STALL_EVERY seconds blocks it for LONG_STALL_FOR seconds, long
  enough for LoopwatchLoopStalled (`for: 30s`) to fire;
- every FAIL_EVERY seconds starts a background task that dies with an
  exception nobody retrieves (loopwatch_task_failures_total).

Environment: LOOPWATCH_TARGET (default udp://127.0.0.1:10071), LOOPWATCH_APP
(default "demo"), and the four schedules above in seconds (0 turns one off).
SIGTERM / SIGINT stop it cleanly: the client sends `bye`, so a stopped demo
is not reported as a dead loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from typing import AsyncIterator

import loopwatch


def env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


STALL_EVERY = env_seconds("STALL_EVERY", 45)
STALL_FOR = env_seconds("STALL_FOR", 3)
LONG_STALL_EVERY = env_seconds("LONG_STALL_EVERY", 600)
LONG_STALL_FOR = env_seconds("LONG_STALL_FOR", 75)
FAIL_EVERY = env_seconds("FAIL_EVERY", 120)


class Pool:
    """A stand-in for an asyncpg / psycopg pool: at most `size` connections."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float = 2.0) -> AsyncIterator[None]:
        await asyncio.wait_for(self._free.acquire(), timeout)
        try:
            yield None
        finally:
            self._free.release()


def render_report(seconds: float) -> None:
    """The bug: a synchronous call (a PDF renderer, requests.get, a file
    read) made on the event loop. Nothing else runs while it sleeps."""
    time.sleep(seconds)


async def handle_request(reporter: loopwatch.Reporter, pool: Pool) -> None:
    async with reporter.pool_acquire("db", pool.connection(), max=pool.size, size=pool.size):
        await asyncio.sleep(random.uniform(0.01, 0.2))  # the "query"


async def refresh_cache() -> None:
    await asyncio.sleep(0.1)
    raise ConnectionError("cache backend went away")


async def serve(reporter: loopwatch.Reporter, stop: asyncio.Event) -> None:
    pool = Pool(size=5)
    started = time.monotonic()
    next_stall = started + STALL_EVERY if STALL_EVERY else float("inf")
    next_long = started + LONG_STALL_EVERY if LONG_STALL_EVERY else float("inf")
    next_fail = started + FAIL_EVERY if FAIL_EVERY else float("inf")
    requests: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        # About 20 requests a second, each holding a pool connection briefly.
        for _ in range(random.randint(0, 2)):
            task = asyncio.create_task(handle_request(reporter, pool))
            requests.add(task)
            task.add_done_callback(requests.discard)
        now = time.monotonic()
        if now >= next_long:
            print(f"blocking the loop for {LONG_STALL_FOR:g}s", flush=True)
            render_report(LONG_STALL_FOR)
            next_long = time.monotonic() + LONG_STALL_EVERY
        elif now >= next_stall:
            print(f"blocking the loop for {STALL_FOR:g}s", flush=True)
            render_report(STALL_FOR)
            next_stall = time.monotonic() + STALL_EVERY
        if now >= next_fail:
            # Fire and forget: the exception is never retrieved.
            asyncio.ensure_future(refresh_cache())
            next_fail = now + FAIL_EVERY
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    if requests:
        await asyncio.gather(*requests, return_exceptions=True)


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = os.environ.get("LOOPWATCH_APP") or "demo"
    print(f"demo app {app!r} reporting to {os.environ.get('LOOPWATCH_TARGET', 'udp://127.0.0.1:10071')}", flush=True)
    async with loopwatch.watch(app) as reporter:
        await serve(reporter, stop)
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
