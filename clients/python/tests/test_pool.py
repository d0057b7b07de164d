"""Pool pressure: the acquire wrapper's counters, pool messages with
heartbeats and on changes, and reporter.pool()'s optional fields.

These use a small pool of plain asyncio objects (a semaphore behind an async
context manager, the shape of asyncpg's ``pool.acquire()``); test_pool_pg.py
runs the same against asyncpg and psycopg_pool with a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, List, Optional, Type

import pytest

import loopwatch
from loopwatch import _pool
from conftest import Message, UdpReceiver

COUNTERS = ("acquires", "acquire_timeouts", "wait_seconds")
POOL_FIELDS = {
    "v", "type", "app", "loop", "pid", "pool", "size", "max", "in_use", "waiting",
    "waiting_max", "acquires", "acquire_timeouts", "wait_seconds",
}


class SemPool:
    """Hands out ``n`` connections; ``acquire(timeout)`` waits for one."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sem = asyncio.Semaphore(n)

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: Optional[float] = None) -> AsyncIterator[str]:
        await asyncio.wait_for(self.sem.acquire(), timeout)
        try:
            yield "conn"
        finally:
            self.sem.release()


def is_bye(m: Message) -> bool:
    return m["type"] == "bye"


def pools(udp: UdpReceiver, name: str = "db") -> List[Message]:
    return [m for m in udp.of_type("pool") if m["pool"] == name]


def assert_monotonic(messages: List[Message]) -> None:
    for key in COUNTERS:
        values = [m[key] for m in messages]
        assert values == sorted(values), (key, values)
    for m in messages:
        assert m["waiting_max"] >= m["waiting"]


def test_wrapper_counts_acquires_timeouts_and_waits(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.05)
        pool = SemPool(2)

        async def caller() -> str:
            try:
                async with r.pool_acquire("db", pool.acquire(timeout=0.2), max=2, size=2) as conn:
                    assert conn == "conn"
                    await asyncio.sleep(0.4)
                return "ok"
            except asyncio.TimeoutError:
                return "timeout"

        results = await asyncio.gather(*(caller() for _ in range(5)))
        assert sorted(results) == ["ok", "ok", "timeout", "timeout", "timeout"]
        s = r.track_pool("db").stats()
        assert (s.in_use, s.waiting, s.acquires, s.acquire_timeouts) == (0, 0, 2, 3)
        assert s.wait_seconds >= 3 * 0.19
        await udp.wait(lambda m: m["type"] == "pool" and m["acquire_timeouts"] == 3 and m["in_use"] == 0)
        await r.astop()

    loop.run_until_complete(body())
    udp.wait_sync(is_bye)
    msgs = pools(udp)
    for m in msgs:
        assert set(m) == POOL_FIELDS
        assert (m["size"], m["max"]) == (2, 2)
        assert isinstance(m["wait_seconds"], float)
    assert_monotonic(msgs)
    last = msgs[-1]
    assert (last["acquires"], last["acquire_timeouts"], last["in_use"], last["waiting"]) == (2, 3, 0, 0)
    assert last["wait_seconds"] >= 3 * 0.19
    # The 3 callers that timed out waited at the same time (up to 5 did,
    # depending on whether a free slot is taken without suspending): the
    # peak is not lost between reports.
    assert max(m["waiting_max"] for m in msgs) >= 3
    assert max(m["in_use"] for m in msgs) == 2


def test_exceptions_propagate_unchanged(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    boom = ConnectionRefusedError("db down")

    class Failing:
        async def __aenter__(self) -> str:
            await asyncio.sleep(0.01)
            raise boom

        async def __aexit__(self, *exc: Any) -> None:
            raise AssertionError("never entered")

    class Suppressing:
        async def __aenter__(self) -> str:
            return "conn"

        async def __aexit__(self, et: Optional[Type[BaseException]], *rest: Any) -> bool:
            return et is KeyError

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.05)
        t = r.track_pool("db", max=1)
        with pytest.raises(ConnectionRefusedError) as info:
            async with t.acquire(Failing()):
                pass
        assert info.value is boom
        # An exception in the body reaches the app; the connection is given back.
        with pytest.raises(ValueError):
            async with t.acquire(Suppressing()):
                raise ValueError("in the body")
        # The wrapped context manager may suppress, as without the wrapper.
        async with t.acquire(Suppressing()):
            raise KeyError("suppressed")
        # Not a context manager: the TypeError `async with` would raise; nothing counted.
        with pytest.raises(TypeError):
            async with t.acquire(object()):  # type: ignore[arg-type]
                pass
        s = t.stats()
        assert (s.in_use, s.waiting, s.acquires, s.acquire_timeouts) == (0, 0, 2, 1)
        await r.astop()

    loop.run_until_complete(body())
    udp.wait_sync(is_bye)
    last = pools(udp)[-1]
    assert (last["acquires"], last["acquire_timeouts"], last["in_use"]) == (2, 1, 0)


def test_cancelled_acquire_is_a_failed_one(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    """asyncio.wait_for() around the block cancels the acquire: counted as a
    failure, with its wait."""

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.05)
        pool = SemPool(1)
        t = r.track_pool("db")

        async def use(hold: float) -> None:
            async with t.acquire(pool.acquire()):
                await asyncio.sleep(hold)

        holder = asyncio.ensure_future(use(0.5))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(use(0), 0.1)
        s = t.stats()
        assert (s.in_use, s.waiting, s.acquires, s.acquire_timeouts) == (1, 0, 1, 1)
        assert s.wait_seconds >= 0.09
        await holder
        assert t.stats().in_use == 0
        await r.astop()

    loop.run_until_complete(body())


def test_every_heartbeat_reports_every_tracked_pool(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        r.track_pool("db", max=10, size=lambda: 3)
        r.track_pool("cache", max=4)
        await udp.wait(lambda m: len(udp.of_type("heartbeat")) >= 8)
        r.stop()

    loop.run_until_complete(body())
    udp.wait_sync(is_bye)
    beats = len(udp.of_type("heartbeat"))
    db, cache = pools(udp, "db"), pools(udp, "cache")
    # Every heartbeat after track_pool() and a last report before the bye.
    assert beats - 1 <= len(db) <= beats + 1 and beats - 1 <= len(cache) <= beats + 1
    assert {(m["size"], m["max"], m["in_use"], m["waiting"]) for m in db} == {(3, 10, 0, 0)}
    assert {(m["size"], m["max"], m["acquires"]) for m in cache} == {(0, 4, 0)}
    kinds = [m["type"] for m in udp.messages]
    assert kinds[-1] == "bye" and kinds[-3:-1] == ["pool", "pool"]


def test_changes_are_reported_between_heartbeats_rate_limited(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver
) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=30)  # one heartbeat, at start
        await udp.wait(lambda m: m["type"] == "heartbeat")
        pool = SemPool(1)
        t = r.track_pool("db", max=1)
        await asyncio.sleep(0.15)

        async def use(hold: float) -> None:
            async with t.acquire(pool.acquire()):
                await asyncio.sleep(hold)

        # Pressure shows long before the next heartbeat.
        holder = asyncio.ensure_future(use(1.0))
        waiters = [asyncio.ensure_future(use(0)) for _ in range(3)]
        await udp.wait(lambda m: m["type"] == "pool" and m["in_use"] == 1, timeout=0.9)
        await udp.wait(lambda m: m["type"] == "pool" and m["waiting_max"] == 3, timeout=0.9)
        await asyncio.gather(holder, *waiters)
        # A burst of changes sends about one report per 0.1 s, not one per change.
        before = len(pools(udp))
        started = time.monotonic()
        for _ in range(200):
            async with t.acquire(pool.acquire()):
                await asyncio.sleep(0)
        elapsed = time.monotonic() - started
        sent = len(pools(udp)) - before
        assert sent <= elapsed / _pool.POOL_REPORT_GAP_S + 2, (sent, elapsed)
        await asyncio.sleep(0.15)
        r.stop()

    loop.run_until_complete(body())
    udp.wait_sync(is_bye)
    msgs = pools(udp)
    assert_monotonic(msgs)
    assert len(udp.of_type("heartbeat")) == 1
    assert msgs[-1]["acquires"] == 204 and msgs[-1]["in_use"] == 0


def test_size_and_max_functions_are_guarded(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> int:
        raise RuntimeError("pool closed")

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        pool = SemPool(3)
        t = r.track_pool("db", size=broken, max=lambda: 7)
        async with t.acquire(pool.acquire()), t.acquire(pool.acquire()):
            await udp.wait(lambda m: m["type"] == "pool" and m["in_use"] == 2)
            assert t.stats().size == 2  # a lower bound: the connections in use
        # No size and no max: both lower bounds (the most seen in use).
        u = r.track_pool("plain")
        async with u.acquire(pool.acquire()):
            pass
        await udp.wait(lambda m: m["type"] == "pool" and m["pool"] == "plain" and m["acquires"] == 1)
        r.stop()

    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        loop.run_until_complete(body())
    udp.wait_sync(is_bye)
    busy = [m for m in pools(udp) if m["in_use"] == 2]
    assert busy and all((m["size"], m["max"]) == (2, 7) for m in busy)
    plain = pools(udp, "plain")[-1]
    assert (plain["size"], plain["max"], plain["in_use"]) == (0, 1, 0)
    assert caplog.text.count("could not be read") == 1


def test_track_pool_is_get_or_create_and_capped(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=10)
        a = r.track_pool("db", max=5)
        assert r.track_pool("db") is a and a.stats().max == 5
        assert r.track_pool("db", max=8) is a and a.stats().max == 8
        assert r.track_pool("bad pool/name").name == "bad_pool_name"
        for i in range(40):
            r.track_pool(f"p{i}")
        assert r.track_pool("p39").name == "other"
        assert r.track_pool("p29").name == "p29"
        # 32 names, then one "other" for the rest
        assert len(r._pool_list) == _reporter_cap() + 1
        r.stop()

    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        loop.run_until_complete(body())
    assert caplog.text.count("reported as 'other'") == 1


def _reporter_cap() -> int:
    from loopwatch import _reporter

    return _reporter.MAX_TRACKED_POOLS


def test_pool_accepts_the_new_optional_fields(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=10)
        r.pool("db", size=10, max=10, in_use=10, waiting=4)
        r.pool(
            "db", size=10, max=10, in_use=10, waiting=4,
            waiting_max=2, acquires=120, acquire_timeouts=3, wait_seconds=1.25,
        )
        r.pool("db", size=1, max=1, in_use=1, waiting=0, wait_seconds=float("inf"))  # dropped, no raise
        r.pool("db", size=1, max=1, in_use=1, waiting=0, acquires="x")  # type: ignore[arg-type]  # dropped
        await udp.wait(lambda m: len(udp.of_type("pool")) == 2)
        await asyncio.sleep(0.05)
        r.stop()

    loop.run_until_complete(body())
    udp.wait_sync(is_bye)
    old, new = udp.of_type("pool")
    assert set(old) == {"v", "type", "app", "loop", "pid", "pool", "size", "max", "in_use", "waiting"}
    assert set(new) == POOL_FIELDS
    # waiting_max is never below waiting
    assert (new["waiting_max"], new["acquires"], new["acquire_timeouts"], new["wait_seconds"]) == (4, 120, 3, 1.25)


def test_disabled_reporter_tracks_without_sending(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPWATCH_DISABLED", "1")

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        pool = SemPool(1)
        async with r.pool_acquire("db", pool.acquire()) as conn:
            assert conn == "conn"
        assert r.track_pool("db").stats().acquires == 1
        await asyncio.sleep(0.1)
        r.stop()
        # after stop() the wrapper still works, silently
        async with r.pool_acquire("db", pool.acquire()):
            pass

    loop.run_until_complete(body())
    time.sleep(0.05)
    assert udp.messages == []


def test_after_stop_trackers_work_and_send_nothing(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        pool = SemPool(1)
        t = r.track_pool("db")
        await r.astop()
        await udp.wait(is_bye)
        count = len(udp.messages)
        await asyncio.sleep(0.15)
        async with t.acquire(pool.acquire()):
            pass
        await asyncio.sleep(0.05)
        assert len(udp.messages) == count and udp.messages[-1]["type"] == "bye"
        assert t.stats().acquires == 1

    loop.run_until_complete(body())
