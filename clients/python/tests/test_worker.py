"""The optional ``worker`` field: from start()/watch(), from
LOOPWATCH_WORKER, and invalid values dropped (logged once, never raised)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Set, Union

import pytest

import loopwatch
from loopwatch import _reporter
from conftest import UdpReceiver


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each invalid value is logged once per process: forget earlier tests'."""
    empty: Set[str] = set()
    monkeypatch.setattr(_reporter, "_worker_warned", empty)


def _run_all_kinds(loop: asyncio.AbstractEventLoop, udp: UdpReceiver, worker: Union[str, int, None]) -> None:
    """One message of each kind (a stall included) from a reporter."""

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02, stall_threshold=0.05, worker=worker)
        await udp.wait(lambda m: m["type"] == "heartbeat")
        r.pool("db", size=1, max=2, in_use=1, waiting=0)
        r.ratelimit("github", "core", limit=10, remaining=5, reset=1795440000)
        async with r.pool_acquire("cache", _Conn()):
            pass
        time.sleep(0.3)  # block the loop: a stall
        await udp.wait(lambda m: m["type"] == "stall")
        r.stop()

    loop.run_until_complete(body())
    udp.wait_sync(lambda m: m["type"] == "bye")
    assert {m["type"] for m in udp.messages} == {"heartbeat", "pool", "ratelimit", "stall", "bye"}


class _Conn:
    async def __aenter__(self) -> str:
        return "conn"

    async def __aexit__(self, *exc: object) -> None:
        return None


def test_worker_argument_is_in_every_message(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    _run_all_kinds(loop, udp, "web-1")
    assert {m.get("worker") for m in udp.messages} == {"web-1"}


def test_worker_from_the_environment(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPWATCH_WORKER", " 3 ")
    _run_all_kinds(loop, udp, None)
    assert {m.get("worker") for m in udp.messages} == {"3"}


def test_argument_beats_environment_and_ints_are_accepted(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPWATCH_WORKER", "3")

    async def body() -> None:
        async with loopwatch.watch("api", target=udp.target, interval=0.02, worker=0) as r:
            assert r.worker == "0"
            await udp.wait(lambda m: m["type"] == "heartbeat")

    loop.run_until_complete(body())
    udp.wait_sync(lambda m: m["type"] == "bye")
    assert {m.get("worker") for m in udp.messages} == {"0"}


def test_no_worker_no_field(loop: asyncio.AbstractEventLoop, udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPWATCH_WORKER", "")  # set but empty: as if unset

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        assert r.worker is None
        await udp.wait(lambda m: m["type"] == "heartbeat")
        r.stop()

    loop.run_until_complete(body())
    udp.wait_sync(lambda m: m["type"] == "bye")
    assert all("worker" not in m for m in udp.messages)


@pytest.mark.parametrize("bad", ["web 1", "x" * 65, "wörker", "a/b"])
def test_invalid_worker_from_the_environment_is_dropped(
    udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, bad: str
) -> None:
    monkeypatch.setenv("LOOPWATCH_WORKER", bad)
    loop = asyncio.new_event_loop()

    async def body() -> None:
        for _ in range(3):
            r = loopwatch.start("api", target=udp.target, interval=0.02)
            assert r.worker is None
            await udp.wait(lambda m: m["type"] == "heartbeat")
            await r.astop()

    try:
        with caplog.at_level(logging.DEBUG, logger="loopwatch"):
            loop.run_until_complete(body())
    finally:
        loop.close()
    udp.wait_sync(lambda m: len(udp.of_type("bye")) == 3)
    assert all("worker" not in m for m in udp.messages)
    # logged once for three start()s, as a warning naming the variable
    warnings = [r for r in caplog.records if "LOOPWATCH_WORKER" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_invalid_worker_argument_is_dropped_not_raised(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        for bad in ("no spaces", -1, True, 1.5, ""):
            r = loopwatch.start("api", target=udp.target, interval=0.02, worker=bad)  # type: ignore[arg-type]
            assert r.worker is None
            await r.astop()

    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        loop.run_until_complete(body())
    udp.wait_sync(lambda m: len(udp.of_type("bye")) == 5)
    assert all("worker" not in m for m in udp.messages)
    assert caplog.text.count("ignoring worker=") == 5
