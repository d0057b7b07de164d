"""Pool pressure with real drivers against a real PostgreSQL: asyncpg's and
psycopg_pool's pools, too small for 5 concurrent callers, with a short
acquire timeout so that some acquires time out.

The server: ``$LOOPWATCH_TEST_PG_DSN``, else
``postgresql://postgres@127.0.0.1:5432/test`` (trust auth). asyncpg is
required (``pip install asyncpg``); the psycopg_pool test is skipped only
when ``psycopg_pool`` / ``psycopg`` cannot be imported."""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncContextManager, Awaitable, Callable, List, Tuple, Type

import asyncpg
import pytest

import loopwatch
from conftest import Message, UdpReceiver

DSN = os.environ.get("LOOPWATCH_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
CALLERS = 5
POOL_SIZE = 2
TIMEOUT = 0.3  # acquire timeout
HOLD = 0.8  # how long each caller keeps its connection (> TIMEOUT)


async def _round(
    reporter: loopwatch.Reporter,
    acquire: Callable[[], AsyncContextManager[Any]],
    query: Callable[[Any], Awaitable[Any]],
    timeout_exc: Type[BaseException],
    size: Callable[[], int],
    max_size: int,
) -> Tuple[List[str], int]:
    """5 callers at once; returns their outcomes and the most waiters seen."""
    tracker = reporter.track_pool("db", max=max_size, size=size)
    seen = 0
    done = False

    async def sample() -> None:
        nonlocal seen
        while not done:
            seen = max(seen, tracker.stats().waiting)
            await asyncio.sleep(0.01)

    async def caller() -> str:
        try:
            async with reporter.pool_acquire("db", acquire()) as conn:
                assert await query(conn) == 1
                await asyncio.sleep(HOLD)
            return "ok"
        except timeout_exc:
            return "timeout"

    sampler = asyncio.ensure_future(sample())
    outcomes = await asyncio.gather(*(caller() for _ in range(CALLERS)))
    done = True
    await sampler
    return sorted(outcomes), seen


def _check(messages: List[Message], rounds: List[Tuple[List[str], int]]) -> None:
    assert messages, "no pool messages"
    for key in ("acquires", "acquire_timeouts", "wait_seconds"):
        values = [m[key] for m in messages]
        assert values == sorted(values), (key, values)
    for m in messages:
        assert m["waiting_max"] >= m["waiting"]
        assert m["max"] == POOL_SIZE
        assert 0 <= m["in_use"] <= POOL_SIZE
    ok = sum(r.count("ok") for r, _ in rounds)
    timeouts = sum(r.count("timeout") for r, _ in rounds)
    assert ok == POOL_SIZE * len(rounds) and timeouts == (CALLERS - POOL_SIZE) * len(rounds)
    last = messages[-1]
    assert (last["acquires"], last["acquire_timeouts"], last["in_use"], last["waiting"]) == (ok, timeouts, 0, 0)
    # every timed-out caller waited at least the acquire timeout
    assert last["wait_seconds"] >= timeouts * TIMEOUT * 0.95
    # the counters grew round by round: the report after round 1 shows its half
    first = [m for m in messages if m["acquire_timeouts"] == CALLERS - POOL_SIZE]
    assert first and first[0]["acquires"] == POOL_SIZE
    # the peak of waiting callers is not lost between reports: at least the
    # callers that timed out together, and at least what the app saw
    peak = max(m["waiting_max"] for m in messages)
    assert peak >= CALLERS - POOL_SIZE
    assert peak >= max(seen for _, seen in rounds)
    assert any(m["size"] == POOL_SIZE for m in messages)


def _run(loop: asyncio.AbstractEventLoop, udp: UdpReceiver, body: Callable[[loopwatch.Reporter], Awaitable[None]]) -> None:
    async def main() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.05)
        try:
            await body(r)
        finally:
            await r.astop()

    loop.run_until_complete(main())
    udp.wait_sync(lambda m: m["type"] == "bye")


def test_asyncpg_pool_pressure(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    rounds: List[Tuple[List[str], int]] = []

    async def body(r: loopwatch.Reporter) -> None:
        try:
            pool = await asyncpg.create_pool(DSN, min_size=POOL_SIZE, max_size=POOL_SIZE)
        except (OSError, asyncpg.PostgresError) as e:
            pytest.fail(f"PostgreSQL at {DSN} is needed (set LOOPWATCH_TEST_PG_DSN): {e!r}")
        try:
            for _ in range(2):
                rounds.append(
                    await _round(
                        r,
                        lambda: pool.acquire(timeout=TIMEOUT),
                        lambda conn: conn.fetchval("SELECT 1"),
                        asyncio.TimeoutError,
                        size=pool.get_size,
                        max_size=pool.get_max_size(),
                    )
                )
                await udp.wait(lambda m: m["type"] == "pool" and m["in_use"] == 0 and m["acquires"] == POOL_SIZE * len(rounds))
        finally:
            await pool.close()

    _run(loop, udp, body)
    _check(udp.of_type("pool"), rounds)


def test_psycopg_pool_pressure(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    psycopg_pool = pytest.importorskip("psycopg_pool")
    rounds: List[Tuple[List[str], int]] = []

    async def query(conn: Any) -> Any:
        cur = await conn.execute("SELECT 1")
        row = await cur.fetchone()
        return row[0]

    async def body(r: loopwatch.Reporter) -> None:
        pool = psycopg_pool.AsyncConnectionPool(DSN, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False)
        try:
            await pool.open(wait=True, timeout=10)
        except psycopg_pool.PoolTimeout as e:
            pytest.fail(f"PostgreSQL at {DSN} is needed (set LOOPWATCH_TEST_PG_DSN): {e!r}")
        try:
            for _ in range(2):
                rounds.append(
                    await _round(
                        r,
                        lambda: pool.connection(timeout=TIMEOUT),
                        query,
                        # not a TimeoutError: any failed acquire counts
                        psycopg_pool.PoolTimeout,
                        size=lambda: pool.get_stats()["pool_size"],
                        max_size=pool.max_size,
                    )
                )
                await udp.wait(lambda m: m["type"] == "pool" and m["in_use"] == 0 and m["acquires"] == POOL_SIZE * len(rounds))
        finally:
            await pool.close()

    _run(loop, udp, body)
    _check(udp.of_type("pool"), rounds)
