"""The watchdog thread: stall messages with the blocking site and stack."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import sysconfig
import threading
import time
from typing import Any, List

import pytest

import loopwatch
from loopwatch import _reporter, _stack, _transport, _wire
from conftest import UdpReceiver


def _line() -> int:
    """The caller's line number."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def test_blocking_sleep_reports_site_and_stack(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    where: List[int] = []

    async def blocker() -> None:
        r = loopwatch.start("api", target=udp.target)  # interval 0.25, threshold 0.5
        await asyncio.sleep(0.3)
        where.append(_line() + 1)
        time.sleep(1.2)
        await udp.wait(lambda m: m["type"] == "heartbeat" and m["lag_s"] > 0.5)
        r.stop()

    loop.run_until_complete(blocker())
    stalls = udp.of_type("stall")
    assert stalls, udp.messages
    expected = f"{blocker.__code__.co_filename}:{where[0]} blocker"
    assert os.path.basename(__file__) in expected
    for m in stalls:
        assert m["site"] == expected
        assert m["stack"][-1] == expected, "innermost frame last"
        assert len(m["stack"]) > 3  # the event loop and pytest frames above it
        assert m["blocked_s"] >= 0.5  # interval + threshold without a tick
        assert m["app"] == "api" and m["loop"] == "main" and m["pid"] == os.getpid()
    assert len({m["stall_id"] for m in stalls}) == 1
    # the lateness shows in the next heartbeat too
    late = [m for m in udp.of_type("heartbeat") if m["lag_s"] > 0.5]
    assert len(late) == 1 and late[0]["slow_callbacks"] >= 1


def test_long_stall_repeats_with_same_id_and_next_stall_gets_new_id(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver
) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.05, stall_threshold=0.2)
        await asyncio.sleep(0.1)
        time.sleep(1.6)  # first report at ~0.25 s, repeated ~1 s later
        await asyncio.sleep(0.3)
        time.sleep(0.6)
        await asyncio.sleep(0.2)
        r.stop()

    loop.run_until_complete(body())
    stalls = udp.of_type("stall")
    ids = [m["stall_id"] for m in stalls]
    first, second = ids[0], ids[-1]
    assert second == first + 1 or second > first
    firsts = [m for m in stalls if m["stall_id"] == first]
    assert len(firsts) >= 2, "reported again about once a second while it lasts"
    assert firsts[1]["blocked_s"] > firsts[0]["blocked_s"] + 0.8
    assert all(m["stall_id"] in (first, second) for m in stalls)


def test_site_skips_the_standard_library(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    """Blocked inside threading.Event.wait (stdlib Python code): the site is
    the app's line that called it; the stack still ends in threading.py."""
    where: List[int] = []

    async def waiter() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.05, stall_threshold=0.2)
        await asyncio.sleep(0.1)
        where.append(_line() + 1)
        threading.Event().wait(0.8)
        await asyncio.sleep(0.1)
        r.stop()

    loop.run_until_complete(waiter())
    stalls = udp.of_type("stall")
    assert stalls
    expected = f"{waiter.__code__.co_filename}:{where[0]} waiter"
    assert stalls[0]["site"] == expected
    assert stalls[0]["stack"][-1].startswith(threading.__file__.rsplit(".", 1)[0])
    assert expected in stalls[0]["stack"]


def test_healthy_loop_reports_no_stall(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.05, stall_threshold=0.2)
        for _ in range(20):
            await asyncio.sleep(0.03)
        r.stop()

    loop.run_until_complete(body())
    # the loop not running between run_until_complete() calls is no stall either
    time.sleep(0.5)
    assert udp.of_type("heartbeat")
    assert not udp.of_type("stall")


def _deep(n: int) -> None:
    if n > 0:
        _deep(n - 1)
        return
    time.sleep(1.0)  # DEEP-BOTTOM


def test_deep_stack_fits_a_loopback_datagram(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.05, stall_threshold=0.2)
        await asyncio.sleep(0.1)
        _deep(500)
        await asyncio.sleep(0.1)
        r.stop()

    loop.run_until_complete(body())
    raw = [d for d in udp.raw if b'"type":"stall"' in d]
    assert raw
    bottom = _bottom_line()
    for d in raw:
        assert len(d) <= _transport.LOOPBACK_MAX
    m = udp.of_type("stall")[0]
    assert len(raw[0]) > _transport.LOOPBACK_MAX - 200, "filled, not needlessly short"
    assert 10 < len(m["stack"]) < 500, "outermost frames dropped"
    assert m["stack"][-1] == f"{__file__}:{bottom} _deep" == m["site"]
    assert all(s.endswith(" _deep") for s in m["stack"])


def _bottom_line() -> int:
    for i, text in enumerate(open(__file__, encoding="utf-8"), 1):
        if "# DEEP-" + "BOTTOM" in text:
            return i
    raise AssertionError("marker not found")


def test_deep_stack_fits_a_remote_datagram(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-loopback target keeps datagrams within 1,432 bytes (one Ethernet
    frame). The test sends to the loopback receiver with the remote limit."""

    def remote_limited(target: str) -> _transport.Transport:
        t = _transport.make_transport(target)
        t.max_size = _transport.REMOTE_MAX
        return t

    monkeypatch.setattr(_reporter, "make_transport", remote_limited)

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.05, stall_threshold=0.2)
        await asyncio.sleep(0.1)
        _deep(500)
        await asyncio.sleep(0.1)
        r.stop()

    loop.run_until_complete(body())
    raw = [d for d in udp.raw if b'"type":"stall"' in d]
    assert raw
    assert all(len(d) <= _transport.REMOTE_MAX for d in udp.raw)
    m = udp.of_type("stall")[0]
    assert 1 <= len(m["stack"]) < 30
    assert m["stack"][-1] == m["site"] and m["site"].endswith(" _deep")


def test_remote_target_uses_the_smaller_limit() -> None:
    remote = _transport.make_transport("udp://192.0.2.1:10071")  # TEST-NET-1; nothing is sent
    local = _transport.make_transport("udp://127.0.0.1:10071")
    v6 = _transport.make_transport("udp://[::1]:10071")
    try:
        assert remote.max_size == 1432
        assert local.max_size == 8192
        assert v6.max_size == 8192
    finally:
        remote.close()
        local.close()
        v6.close()


class TestEncoder:
    env = _wire.Envelope("api", "main", 4242)

    def _stack(self, depth: int, path: str = "/srv/api/handlers.py") -> List[str]:
        return [f"{path}:{i} frame_{i}" for i in range(depth)]

    @pytest.mark.parametrize("limit", [8192, 1432])
    def test_deep_stack_truncated_outermost_first(self, limit: int) -> None:
        import json

        stack = self._stack(500)
        data = self.env.stall(3, 1.5, stack[-1], stack, limit)
        assert len(data) <= limit
        assert len(data) > limit - 80, "as much of the stack as fits"
        m = json.loads(data)
        kept = m["stack"]
        assert kept == stack[-len(kept):], "a suffix: innermost kept, outermost dropped"
        assert m["site"] == stack[-1]
        assert m["stall_id"] == 3 and m["blocked_s"] == 1.5

    def test_small_stack_untouched(self) -> None:
        import json

        stack = self._stack(5)
        m = json.loads(self.env.stall(1, 0.75, stack[-1], stack, 1432))
        assert m["stack"] == stack

    def test_long_site_keeps_its_end(self) -> None:
        import json

        site = "/very" * 300 + "/handlers.py:88 fetch_user"
        m = json.loads(self.env.stall(1, 1.0, site, [site], 8192))
        assert len(m["site"]) == 200
        assert m["site"].endswith("/handlers.py:88 fetch_user")
        assert m["stack"][-1].endswith("/handlers.py:88 fetch_user")

    def test_site_shortened_when_nothing_else_fits(self) -> None:
        import json

        site = "/x/" + "é" * 190 + ".py:1 f"  # 2 bytes per é
        data = self.env.stall(1, 1.0, site, self._stack(50), 300)
        assert len(data) <= 300
        m = json.loads(data)
        assert m["stack"] == []
        assert m["site"].endswith(".py:1 f") and len(m["site"]) < len(site)

    def test_non_utf8_path_stays_valid_json(self) -> None:
        import json

        bad = "/srv/\udcff.py:1 f"
        m = json.loads(self.env.stall(1, 1.0, bad, [bad], 8192).decode("utf-8"))
        assert m["site"] == "/srv/?.py:1 f"


class TestSiteRule:
    def test_stdlib_is_library(self) -> None:
        assert _stack.is_library(asyncio.__file__)
        assert _stack.is_library(threading.__file__)
        assert _stack.is_library("<frozen runpy>")

    def test_site_packages_is_application_code(self) -> None:
        purelib = sysconfig.get_paths()["purelib"]
        assert not _stack.is_library(os.path.join(purelib, "aiohttp", "client.py"))
        assert not _stack.is_library("/usr/lib/python3/dist-packages/requests/api.py")
        assert not _stack.is_library(pytest.__file__)

    def test_loopwatch_itself_is_skipped(self) -> None:
        assert _stack.is_library(_reporter.__file__)
        assert _stack.is_library(loopwatch.__file__)

    def test_app_code(self) -> None:
        assert not _stack.is_library(__file__)
        assert not _stack.is_library("/srv/api/handlers.py")
        assert not _stack.is_library("<string>")

    def test_find_site(self) -> None:
        std = os.path.join(sysconfig.get_paths()["stdlib"], "socket.py")
        frames = [
            (std, 10, "outer"),
            ("/srv/api/handlers.py", 88, "fetch_user"),
            (std, 20, "recv_into"),
            (_reporter.__file__, 5, "_tick"),
        ]
        assert _stack.find_site(frames) == "/srv/api/handlers.py:88 fetch_user"
        assert _stack.find_site([(std, 1, "a")]) == "unknown"
        assert _stack.find_site([]) == "unknown"

    def test_capture_other_thread(self) -> None:
        started = threading.Event()
        release = threading.Event()

        def target() -> None:
            started.set()
            release.wait(5)

        t = threading.Thread(target=target)
        t.start()
        try:
            started.wait(5)
            assert t.ident is not None
            frames: Any = _stack.capture(t.ident)
            assert frames is not None
            names = [f[2] for f in frames]
            assert "target" in names and names[-1] == "wait"
            assert _stack.find_site(frames).endswith(" target")
        finally:
            release.set()
            t.join()
        assert _stack.capture(-1) is None
        assert sys.getrecursionlimit() >= 600  # the 500-deep tests above need it
