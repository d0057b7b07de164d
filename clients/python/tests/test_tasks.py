"""Task failures, cancellations and callback errors; chaining and restoring
the loop's task factory and exception handler."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any, Dict, List, Optional

import pytest

import loopwatch
from loopwatch._reporter import task_name
from conftest import UdpReceiver

NEVER_RETRIEVED = "Task exception was never retrieved"


async def poll_feed() -> None:
    raise ValueError("feed is down")


class Worker:
    def __init__(self) -> None:
        self.task: Optional["asyncio.Task[None]"] = None

    async def run(self) -> None:
        await asyncio.sleep(0)
        raise KeyError("missing")


def broken_callback() -> None:
    """What a ``call_soon(None)``-style bug does when the callback runs (uvloop
    refuses ``call_soon(None)`` itself with a RuntimeError)."""
    callback: Any = None
    callback()  # TypeError: 'NoneType' object is not callable


async def sleeper() -> None:
    await asyncio.sleep(60)


def _last_heartbeat(udp: UdpReceiver) -> Dict[str, Any]:
    beats = udp.of_type("heartbeat")
    assert beats
    return beats[-1]


async def _settle(udp: UdpReceiver, pred: Any) -> None:
    """Wait for a heartbeat matching pred, then for two more (to see that
    nothing else is counted afterwards)."""
    await udp.wait(lambda m: m["type"] == "heartbeat" and pred(m))
    n = len(udp.of_type("heartbeat"))
    await udp.wait(lambda m: len(udp.of_type("heartbeat")) >= n + 2)


def test_unretrieved_failure_counted_once_and_still_logged(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        asyncio.ensure_future(poll_feed())  # reference dropped: nobody retrieves it
        await asyncio.sleep(0.05)
        gc.collect()  # the task is freed: asyncio logs "never retrieved"
        await _settle(udp, lambda m: m["failures"])
        r.stop()

    loop.run_until_complete(body())
    assert NEVER_RETRIEVED in caplog.text, "loopwatch must not mark the exception retrieved"
    assert "feed is down" in caplog.text
    assert _last_heartbeat(udp)["failures"] == [
        {"task": "poll_feed", "exception": "ValueError", "count": 1}
    ]


@pytest.mark.parametrize("impl", ["C", "Python"])
def test_failure_read_without_retrieving_on_both_task_implementations(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, caplog: pytest.LogCaptureFixture, impl: str
) -> None:
    """The done callback reads the private ``_exception`` of CPython's C Task
    (also what uvloop uses) and of the pure-Python Task."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    task_class: Any = asyncio.Task
    if impl == "C":
        assert asyncio.Task.__module__ == "_asyncio", "the C accelerated Task is in use"
    else:
        task_class = getattr(asyncio.tasks, "_PyTask")

        def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> Any:
            return task_class(coro, loop=lp, **{k: v for k, v in kw.items() if v is not None})

        loop.set_task_factory(factory)

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        t = asyncio.ensure_future(poll_feed())
        assert type(t) is task_class
        await asyncio.sleep(0.02)
        assert t.done() and getattr(t, "_log_traceback") is True, "still unretrieved"
        del t
        gc.collect()
        await _settle(udp, lambda m: m["failures"])
        r.stop()

    loop.run_until_complete(body())
    assert NEVER_RETRIEVED in caplog.text
    assert _last_heartbeat(udp)["failures"] == [
        {"task": "poll_feed", "exception": "ValueError", "count": 1}
    ]


def test_failure_in_reference_cycle_counted_once(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """worker.task -> task -> exception -> traceback -> Worker.run's frame ->
    worker: the cyclic GC frees it, clearing weak references before asyncio's
    finalizer reports it. Still counted exactly once, named Worker.run."""
    caplog.set_level(logging.ERROR, logger="asyncio")

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        w = Worker()
        w.task = asyncio.ensure_future(w.run())
        del w
        await asyncio.sleep(0.05)
        gc.collect()
        await _settle(udp, lambda m: m["failures"])
        r.stop()

    gc.disable()
    try:
        loop.run_until_complete(body())
    finally:
        gc.enable()
    assert NEVER_RETRIEVED in caplog.text
    assert _last_heartbeat(udp)["failures"] == [
        {"task": "Worker.run", "exception": "KeyError", "count": 1}
    ]


def test_retrieved_failures_counted_and_cumulative(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        for i in range(3):
            with pytest.raises(ValueError):
                await asyncio.ensure_future(poll_feed())
            want = [{"task": "poll_feed", "exception": "ValueError", "count": i + 1}]

            def counted(m: Dict[str, Any], want: List[Dict[str, Any]] = want) -> bool:
                return bool(m["type"] == "heartbeat" and m["failures"] == want)

            await udp.wait(counted)
        named = asyncio.ensure_future(poll_feed())
        named.set_name("feed-poller")
        await asyncio.gather(named, return_exceptions=True)
        await _settle(udp, lambda m: len(m["failures"]) == 2)
        r.stop()

    loop.run_until_complete(body())
    gc.collect()
    assert NEVER_RETRIEVED not in caplog.text
    assert sorted(_last_heartbeat(udp)["failures"], key=lambda f: f["task"]) == [
        {"task": "feed-poller", "exception": "ValueError", "count": 1},
        {"task": "poll_feed", "exception": "ValueError", "count": 3},
    ]


def test_callback_error_counted_under_callback(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        asyncio.get_running_loop().call_soon(broken_callback)
        await _settle(udp, lambda m: m["failures"])
        r.stop()

    loop.run_until_complete(body())
    assert "'NoneType' object is not callable" in caplog.text, "the default handler still logs"
    assert _last_heartbeat(udp)["failures"] == [
        {"task": "callback", "exception": "TypeError", "count": 1}
    ]


def test_cancellations_counted_by_task_name(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        tasks = [asyncio.ensure_future(sleeper()) for _ in range(3)]
        named = asyncio.get_running_loop().create_task(sleeper(), name="janitor")
        await asyncio.sleep(0.01)
        for t in [*tasks, named]:
            t.cancel()
        await asyncio.gather(*tasks, named, return_exceptions=True)
        await _settle(udp, lambda m: len(m["cancellations"]) == 2)
        r.stop()

    loop.run_until_complete(body())
    last = _last_heartbeat(udp)
    assert sorted(last["cancellations"], key=lambda c: c["task"]) == [
        {"task": "janitor", "count": 1},
        {"task": "sleeper", "count": 3},
    ]
    assert last["failures"] == []


def test_tasks_running_before_start_are_watched(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def fails_later() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("late")

    async def body() -> None:
        early = asyncio.ensure_future(fails_later())
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        await asyncio.gather(early, return_exceptions=True)
        await _settle(udp, lambda m: m["failures"])
        r.stop()

    loop.run_until_complete(body())
    assert _last_heartbeat(udp)["failures"] == [
        {"task": "test_tasks_running_before_start_are_watched.<locals>.fails_later", "exception": "RuntimeError", "count": 1}
    ]


def test_task_names_are_bounded(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        auto = asyncio.ensure_future(sleeper())
        assert auto.get_name().startswith("Task-")
        assert task_name(auto) == "sleeper"
        named = asyncio.get_running_loop().create_task(sleeper(), name="feed-poller")
        assert task_name(named) == "feed-poller"
        w = Worker()
        method = asyncio.ensure_future(w.run())
        assert task_name(method) == "Worker.run"
        fut: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        assert task_name(fut) == "unknown"
        for t in (auto, named, method):
            t.cancel()
        await asyncio.gather(auto, named, method, return_exceptions=True)

    loop.run_until_complete(body())


def test_chains_and_restores_existing_factory_and_handler(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver
) -> None:
    created: List[Any] = []
    handled: List[Dict[str, Any]] = []

    def app_factory(lp: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> "asyncio.Task[Any]":
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        task = asyncio.Task(coro, loop=lp, **kwargs)
        created.append(task)
        return task

    def app_handler(lp: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
        handled.append(context)

    loop.set_task_factory(app_factory)
    loop.set_exception_handler(app_handler)

    async def body() -> None:
        lp = asyncio.get_running_loop()
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        assert lp.get_task_factory() is not app_factory
        assert lp.get_exception_handler() is not app_handler
        n = len(created)
        t = asyncio.ensure_future(poll_feed())
        assert len(created) == n + 1, "the app's factory still makes the tasks"
        await asyncio.gather(t, return_exceptions=True)
        lp.call_soon(broken_callback)
        await _settle(udp, lambda m: len(m["failures"]) == 2 and m["tasks_created"] == 1)
        assert any("'NoneType' object is not callable" in str(c.get("exception")) for c in handled)
        r.stop()
        assert lp.get_task_factory() is app_factory
        assert lp.get_exception_handler() is app_handler

    loop.run_until_complete(body())
    assert sorted(_last_heartbeat(udp)["failures"], key=lambda f: f["task"]) == [
        {"task": "callback", "exception": "TypeError", "count": 1},
        {"task": "poll_feed", "exception": "ValueError", "count": 1},
    ]


def test_restores_none_and_stops_counting(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        lp = asyncio.get_running_loop()
        assert lp.get_task_factory() is None and lp.get_exception_handler() is None
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        assert lp.get_task_factory() is not None and lp.get_exception_handler() is not None
        r.stop()
        assert lp.get_task_factory() is None
        assert lp.get_exception_handler() is None

    loop.run_until_complete(body())


def test_factory_installed_on_top_keeps_working_after_stop(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver
) -> None:
    """Someone chains their factory on top of loopwatch's; stop() cannot
    unwrap it, so loopwatch's layer only passes calls through."""

    async def body() -> None:
        lp = asyncio.get_running_loop()
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        ours = lp.get_task_factory()
        assert ours is not None

        def outer(l2: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> Any:
            assert ours is not None
            return ours(l2, coro, **kw)

        lp.set_task_factory(outer)
        r.stop()
        assert lp.get_task_factory() is outer
        t = asyncio.ensure_future(poll_feed())
        await asyncio.gather(t, return_exceptions=True)
        lp.set_task_factory(None)

    loop.run_until_complete(body())


@pytest.mark.parametrize("limit", [8192, 1432])
def test_heartbeat_stays_within_a_datagram_however_many_names(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """New task / exception names beyond what fits one datagram are folded
    into "other" (stable: a name once folded stays folded)."""
    from loopwatch import _reporter, _transport

    def limited(target: str) -> _transport.Transport:
        t = _transport.make_transport(target)
        t.max_size = limit
        return t

    monkeypatch.setattr(_reporter, "make_transport", limited)

    async def body() -> None:
        lp = asyncio.get_running_loop()
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        for i in range(300):
            t = lp.create_task(poll_feed(), name=f"feed-{i:03d}-" + "x" * 60)
            await asyncio.gather(t, return_exceptions=True)
            c = lp.create_task(sleeper(), name=f"sleep-{i:03d}")
            await asyncio.sleep(0)
            c.cancel()
            await asyncio.gather(c, return_exceptions=True)
        await _settle(
            udp,
            lambda m: sum(f["count"] for f in m["failures"]) == 300
            and sum(c["count"] for c in m["cancellations"]) == 300,
        )
        r.stop()

    loop.run_until_complete(body())
    assert all(len(d) <= limit for d in udp.raw)
    last = _last_heartbeat(udp)
    other = [f for f in last["failures"] if f["task"] == "other"]
    assert other and other[0]["exception"] == "other"
    assert 1 < len(last["failures"]) < 300
    assert any(c["task"] == "other" for c in last["cancellations"])
    assert len(udp.raw[-2]) > limit * 0.7, "the datagram is used, not wasted"
