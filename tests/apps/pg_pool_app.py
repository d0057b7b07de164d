"""An asyncio app whose asyncpg pool is too small for its load, for
tests/workers.rs (issue 12 in small).

A pool of max_size 2 against the real PostgreSQL ($PG_DSN); 5 concurrent
callers each hold a connection for SELECT pg_sleep(0.3) and give up
waiting for one after 0.2 s. Every acquire goes through the loopwatch
client's pool wrapper (reporter.pool_acquire), which counts the acquires,
the timeouts, the seconds waited and the longest queue. Prints RUNNING once
the pool is open, a STATS line every second, and STOPPED after SIGTERM.
"""

import asyncio
import os
import signal

import asyncpg

import loopwatch

APP = os.environ.get("PG_POOL_APP_NAME", "pgpool")
DSN = os.environ["PG_DSN"]
CALLERS = 5
HOLD_S = 0.3
ACQUIRE_TIMEOUT_S = 0.2


async def caller(reporter, pool, stop: asyncio.Event, stats: dict) -> None:
    while not stop.is_set():
        try:
            acquire = pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
            async with reporter.pool_acquire(
                "db", acquire, max=pool.get_max_size, size=pool.get_size
            ) as conn:
                await conn.execute(f"SELECT pg_sleep({HOLD_S})")
            stats["ok"] += 1
        except asyncio.TimeoutError:
            stats["timeouts"] += 1


async def main() -> None:
    reporter = loopwatch.start(APP, loop_name="main")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pool = await asyncpg.create_pool(
        DSN,
        min_size=0,
        max_size=2,
        server_settings={"application_name": "loopwatch-test-pgpool"},
    )
    print("RUNNING", flush=True)
    stats = {"ok": 0, "timeouts": 0}
    callers = [asyncio.create_task(caller(reporter, pool, stop, stats)) for _ in range(CALLERS)]
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
        print(f"STATS ok={stats['ok']} timeouts={stats['timeouts']}", flush=True)
    await asyncio.gather(*callers)
    await pool.close()
    await reporter.astop()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
