"""Heartbeats: fields, cumulative counters, info, slow callbacks, bye."""

from __future__ import annotations

import asyncio
import os
import platform
import threading
import time

import loopwatch
from conftest import UdpReceiver


def _runtime(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def test_heartbeat_fields(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", loop_name="main", target=udp.target, interval=0.05, stall_threshold=0.5)
        sleepers = [asyncio.ensure_future(asyncio.sleep(10)) for _ in range(3)]
        await udp.wait(lambda m: len(udp.of_type("heartbeat")) >= 3)
        for s in sleepers:
            s.cancel()
        r.stop()

    loop.run_until_complete(body())
    beats = udp.of_type("heartbeat")
    assert len(beats) >= 2
    first = beats[0]
    for m in beats:
        assert m["v"] == 1
        assert m["app"] == "api"
        assert m["loop"] == "main"
        assert m["pid"] == os.getpid()
        assert m["interval_s"] == 0.05
        assert m["stall_threshold_s"] == 0.5
        assert isinstance(m["lag_s"], float) and m["lag_s"] >= 0
        assert isinstance(m["tasks_pending"], int)
        assert isinstance(m["tasks_created"], int)
        assert isinstance(m["slow_callbacks"], int)
        assert isinstance(m["failures"], list)
        assert isinstance(m["cancellations"], list)
    assert first["info"] == {
        "client_version": loopwatch.__version__,
        "runtime": _runtime(loop),
        "language_version": platform.python_version(),
    }
    assert "info" not in beats[1]
    # body(), the heartbeat task and three sleepers are alive: len(all_tasks).
    assert max(m["tasks_pending"] for m in beats) == 5
    # the three sleepers were created after start(); the heartbeat task is not counted
    assert beats[-1]["tasks_created"] == 3


def test_info_first_and_every_40th(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.01)
        await udp.wait(lambda m: len(udp.of_type("heartbeat")) >= 82, timeout=10)
        r.stop()

    loop.run_until_complete(body())
    beats = udp.of_type("heartbeat")
    with_info = [i for i, m in enumerate(beats) if "info" in m]
    assert with_info[:3] == [0, 40, 80]


def test_counters_are_cumulative(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def quick() -> int:
        return 1

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        for _ in range(5):
            await asyncio.gather(*(asyncio.ensure_future(quick()) for _ in range(4)))
            await asyncio.sleep(0.03)
        await udp.wait(lambda m: m["type"] == "heartbeat" and m["tasks_created"] == 20)
        await asyncio.sleep(0.1)
        r.stop()

    loop.run_until_complete(body())
    beats = udp.of_type("heartbeat")
    created = [m["tasks_created"] for m in beats]
    assert created == sorted(created), "tasks_created never goes down"
    assert created[0] < 20 and created[-1] == 20
    assert beats[-1]["tasks_pending"] == 2  # body() and the heartbeat task


def test_tasks_pending_matches_all_tasks(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    """tasks_pending is kept in O(1) by the task factory and done callbacks;
    it equals len(asyncio.all_tasks(loop)) for tasks made by create_task /
    ensure_future / gather and for tasks alive at start()."""

    async def work(n: int) -> None:
        await asyncio.sleep(0.01 * (n % 5))
        if n % 7 == 0:
            raise ValueError(n)

    async def body() -> None:
        before = [asyncio.ensure_future(asyncio.sleep(30)) for _ in range(4)]
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        many = [asyncio.ensure_future(work(n)) for n in range(50)]
        keep = [asyncio.ensure_future(asyncio.sleep(30)) for _ in range(6)]
        await asyncio.gather(*many, return_exceptions=True)
        before[0].cancel()
        await asyncio.sleep(0.01)
        expected = len(asyncio.all_tasks())
        assert expected == 1 + 1 + 3 + 6  # body, heartbeat, before[1:], keep
        n = len(udp.of_type("heartbeat"))
        await udp.wait(lambda m: len(udp.of_type("heartbeat")) >= n + 2)
        assert _last(udp)["tasks_pending"] == expected
        assert _last(udp)["tasks_created"] == 56
        for t in before + keep:
            t.cancel()
        r.stop()

    loop.run_until_complete(body())


def _last(udp: UdpReceiver) -> dict:  # type: ignore[type-arg]
    return udp.of_type("heartbeat")[-1]


def test_lag_and_slow_callbacks(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.05, stall_threshold=1.0)
        await asyncio.sleep(0.12)
        time.sleep(0.3)  # one slow callback: the heartbeat runs ~0.25 s late
        await asyncio.sleep(0.2)
        time.sleep(0.3)  # and another
        await udp.wait(lambda m: m["type"] == "heartbeat" and m["slow_callbacks"] >= 2)
        await asyncio.sleep(0.2)
        r.stop()

    loop.run_until_complete(body())
    beats = udp.of_type("heartbeat")
    late = [m for m in beats if m["lag_s"] > 0.1]
    # the two blocks (a loaded machine could add a late tick of its own)
    assert len([m for m in late if 0.15 < m["lag_s"] < 1.0]) >= 2
    # every heartbeat later than 0.1 s counted one slow callback, cumulative
    assert beats[-1]["slow_callbacks"] == len(late)
    for i, m in enumerate(beats):
        assert m["slow_callbacks"] == len([b for b in beats[: i + 1] if b["lag_s"] > 0.1])
    assert not udp.of_type("stall"), "0.3 s is below interval + stall_threshold"


def test_stop_sends_bye_once_and_stops_everything(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        before = {t.name for t in threading.enumerate()}
        assert "loopwatch-watchdog" not in before
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        assert "loopwatch-watchdog" in {t.name for t in threading.enumerate()}
        await udp.wait(lambda m: m["type"] == "heartbeat")
        r.stop()
        r.stop()  # idempotent
        assert r.stopped
        assert "loopwatch-watchdog" not in {t.name for t in threading.enumerate()}
        await asyncio.sleep(0.2)
        assert [t for t in asyncio.all_tasks() if t.get_name() == "loopwatch-heartbeat"] == []
        r.pool("db", size=1, max=2, in_use=1, waiting=0)  # after stop: nothing

    loop.run_until_complete(body())
    udp.wait_sync(lambda m: m["type"] == "bye")
    time.sleep(0.2)
    types = [m["type"] for m in udp.messages]
    assert types.count("bye") == 1
    assert types[-1] == "bye", "nothing after bye"
    bye = udp.of_type("bye")[0]
    assert bye == {"v": 1, "type": "bye", "app": "api", "loop": "main", "pid": os.getpid()}


def test_watch_context_manager(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        async with loopwatch.watch("ctx", target=udp.target, interval=0.02) as r:
            assert isinstance(r, loopwatch.Reporter)
            await udp.wait(lambda m: m["type"] == "heartbeat")
        assert r.stopped

    loop.run_until_complete(body())
    udp.wait_sync(lambda m: m["type"] == "bye")
    assert [m["type"] for m in udp.messages][-1] == "bye"
    assert udp.messages[0]["app"] == "ctx"


def test_loop_teardown_without_stop_says_bye(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    """asyncio.run() cancels every task at exit: the heartbeat task's
    cancellation stops the reporter and says bye."""

    async def body() -> loopwatch.Reporter:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        await udp.wait(lambda m: m["type"] == "heartbeat")
        return r

    r = loop.run_until_complete(body())
    pending = asyncio.all_tasks(loop)
    for t in pending:
        t.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    assert r.stopped
    udp.wait_sync(lambda m: m["type"] == "bye")
    assert loop.get_task_factory() is None
    assert loop.get_exception_handler() is None


def test_start_twice_returns_the_running_reporter(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        a = loopwatch.start("api", target=udp.target)
        b = loopwatch.start("api", target=udp.target)
        assert a is b
        a.stop()
        c = loopwatch.start("api", target=udp.target)
        assert c is not a
        c.stop()

    loop.run_until_complete(body())


def test_loop_closed_without_stop_says_bye(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    """The watchdog notices a closed loop, says bye and ends."""

    async def body() -> loopwatch.Reporter:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        await udp.wait(lambda m: m["type"] == "heartbeat")
        return r

    r = loop.run_until_complete(body())
    assert r._heartbeat is not None
    r._heartbeat._log_destroy_pending = False  # type: ignore[attr-defined]  # it is, by design here
    loop.close()
    udp.wait_sync(lambda m: m["type"] == "bye")
    assert r.stopped
    deadline = time.monotonic() + 2
    while "loopwatch-watchdog" in {t.name for t in threading.enumerate()} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "loopwatch-watchdog" not in {t.name for t in threading.enumerate()}


def test_stop_outside_the_loop_and_from_another_thread(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> loopwatch.Reporter:
        return loopwatch.start("api", target=udp.target, interval=0.02)

    r = loop.run_until_complete(body())
    r.stop()  # no loop running: fine too
    udp.wait_sync(lambda m: m["type"] == "bye")
    loop.run_until_complete(asyncio.sleep(0.05))
    assert [t for t in asyncio.all_tasks(loop) if not t.done()] == []

    async def body2() -> None:
        r2 = loopwatch.start("api2", target=udp.target, interval=0.02)
        stopper = threading.Thread(target=r2.stop)
        stopper.start()
        while stopper.is_alive():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert all(t.get_name() != "loopwatch-heartbeat" for t in asyncio.all_tasks())

    loop.run_until_complete(body2())
    udp.wait_sync(lambda m: m["type"] == "bye" and m["app"] == "api2")
