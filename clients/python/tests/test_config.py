"""start()'s defaults and environment variables; a missing exporter."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import pytest

import loopwatch
from loopwatch import _reporter, _transport
from conftest import HttpReceiver, UdpReceiver


def test_disabled_returns_a_noop_reporter(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPWATCH_DISABLED", "1")
    monkeypatch.setenv("LOOPWATCH_TARGET", udp.target)
    threads_before = threading.active_count()

    async def body() -> None:
        lp = asyncio.get_running_loop()
        r = loopwatch.start("api", interval=0.02)
        assert not r.enabled
        assert lp.get_task_factory() is None and lp.get_exception_handler() is None
        assert threading.active_count() == threads_before
        assert all(t.get_name() != "loopwatch-heartbeat" for t in asyncio.all_tasks())
        r.pool("db", size=1, max=2, in_use=0, waiting=0)
        r.ratelimit("github", "core", limit=1, remaining=1, reset=0.0)
        assert r.report_headers("github", {"X-RateLimit-Limit": "1", "X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "1795440000"})
        await asyncio.sleep(0.1)
        r.stop()
        await r.astop()
        async with loopwatch.watch("api") as w:
            assert not w.enabled

    loop.run_until_complete(body())
    time.sleep(0.1)
    assert udp.messages == []


def test_target_from_environment(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPWATCH_TARGET", udp.target)

    async def body() -> None:
        r = loopwatch.start("api", interval=0.02)
        assert r.target == udp.target
        await udp.wait(lambda m: m["type"] == "heartbeat")
        r.stop()

    loop.run_until_complete(body())


def test_explicit_target_beats_environment(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch, free_udp_port: int
) -> None:
    monkeypatch.setenv("LOOPWATCH_TARGET", f"udp://127.0.0.1:{free_udp_port}")

    async def body() -> None:
        r = loopwatch.start("api", target=udp.target, interval=0.02)
        await udp.wait(lambda m: m["type"] == "heartbeat")
        r.stop()

    loop.run_until_complete(body())


def test_default_target() -> None:
    assert _transport.DEFAULT_TARGET == "udp://127.0.0.1:10071"


def test_app_from_environment_then_script_name(
    loop: asyncio.AbstractEventLoop, udp: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        monkeypatch.setenv("LOOPWATCH_APP", "billing-worker")
        r = loopwatch.start(target=udp.target)
        assert r.app == "billing-worker"
        r.stop()
        r = loopwatch.start("explicit", target=udp.target)
        assert r.app == "explicit"
        r.stop()
        monkeypatch.delenv("LOOPWATCH_APP")
        monkeypatch.setattr(sys, "argv", ["/srv/api/server.py", "--port", "8080"])
        r = loopwatch.start(target=udp.target)
        assert r.app == "server"
        r.stop()
        monkeypatch.setattr(sys, "argv", ["/srv/venv/lib/mypkg/__main__.py"])
        r = loopwatch.start(target=udp.target)
        assert r.app == "mypkg"
        r.stop()
        r = loopwatch.start("my app/v2 ü", target=udp.target)
        assert r.app == "my_app_v2__"  # only A-Z a-z 0-9 _ . : - are allowed
        r.stop()

    loop.run_until_complete(body())
    udp.wait_sync(lambda m: len(udp.of_type("bye")) == 5)
    assert [m["app"] for m in udp.of_type("bye")] == ["billing-worker", "explicit", "server", "mypkg", "my_app_v2__"]


def test_no_exporter_listening_costs_nothing(
    loop: asyncio.AbstractEventLoop, free_udp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing on the port: ICMP port-unreachable, ECONNREFUSED on some
    systems. Every send is swallowed and the loop keeps its pace."""

    async def body() -> None:
        r = loopwatch.start("api", target=f"udp://127.0.0.1:{free_udp_port}", interval=0.01)
        for _ in range(30):
            r.pool("db", size=1, max=2, in_use=1, waiting=0)
            r.ratelimit("github", "core", limit=5000, remaining=1, reset=time.time())
            await asyncio.sleep(0.01)
        assert r._beats >= 10
        r.stop()

    loop.run_until_complete(body())
    assert "Traceback" not in caplog.text


def test_no_http_exporter_listening(loop: asyncio.AbstractEventLoop, free_tcp_port: int) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=f"http://127.0.0.1:{free_tcp_port}", interval=0.01)
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await r.astop()
        assert time.monotonic() - t0 < 2.5

    loop.run_until_complete(body())


def test_unusable_target_is_not_an_error(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        for target in ("ftp://example.invalid", "udp://:0", "nonsense://"):
            r = loopwatch.start("api", target=target, interval=0.01)
            await asyncio.sleep(0.03)
            r.stop()

    loop.run_until_complete(body())
    assert "unusable target" in caplog.text


def test_unresolvable_host_is_not_an_error(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG, logger="loopwatch")

    async def body() -> None:
        t0 = time.monotonic()
        r = loopwatch.start("api", target="udp://loopwatch.invalid:10071", interval=0.01)
        # The name is resolved in the background, never on the loop.
        assert time.monotonic() - t0 < 0.5
        assert r.enabled and not r.stopped
        deadline = time.monotonic() + 10
        while "cannot resolve loopwatch.invalid" not in caplog.text:
            assert time.monotonic() < deadline, f"the resolution never failed: {caplog.text}"
            await asyncio.sleep(0.02)
        # After the failed resolution the reporter still runs (sending into
        # nothing), and its public calls neither raise nor stop it.
        beats = r._beats
        await asyncio.sleep(0.1)
        assert r._beats > beats
        r.pool("db", size=1, max=2, in_use=0, waiting=0)
        r.ratelimit("github", "core", limit=1, remaining=1, reset=0.0)
        assert r.enabled and not r.stopped
        t0 = time.monotonic()
        await r.astop()
        assert r.stopped
        assert time.monotonic() - t0 < 2.5

    loop.run_until_complete(body())
    # Not an error: nothing above debug was logged, and no traceback.
    loud = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert not loud, [rec.getMessage() for rec in loud]
    assert "Traceback" not in caplog.text


def test_hostname_resolved_off_the_loop(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=f"udp://localhost:{udp.port}", interval=0.02)
        await udp.wait(lambda m: m["type"] == "heartbeat")
        r.stop()

    loop.run_until_complete(body())
    assert "info" in udp.messages[0], "info goes with the first heartbeat that left"


def test_bad_arguments(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        with pytest.raises(ValueError):
            loopwatch.start("api", interval=0)
        with pytest.raises(ValueError):
            loopwatch.start("api", stall_threshold=1000)

    loop.run_until_complete(body())


def test_start_outside_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        loopwatch.start("api")


def test_public_api() -> None:
    assert loopwatch.__version__ == "0.1.0"
    assert set(loopwatch.__all__) == {
        "PoolStats",
        "PoolTracker",
        "RateLimit",
        "Reporter",
        "__version__",
        "ratelimit_from_headers",
        "start",
        "throttle_kind",
        "watch",
    }
    assert os.path.exists(os.path.join(os.path.dirname(loopwatch.__file__), "py.typed"))


def test_http_target_sends_ndjson(loop: asyncio.AbstractEventLoop, http_rx: HttpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=http_rx.target, interval=0.02)
        await http_rx.wait(lambda m: m["type"] == "heartbeat")
        r.pool("db", size=10, max=10, in_use=10, waiting=4)
        await http_rx.wait(lambda m: m["type"] == "pool")
        await r.astop()

    loop.run_until_complete(body())
    http_rx.wait_sync(lambda m: m["type"] == "bye")
    assert http_rx.messages[-1]["type"] == "bye"
    assert {req["path"] for req in http_rx.requests} == {"/api/v1/events"}
    assert {req["content_type"] for req in http_rx.requests} == {"application/x-ndjson"}
    beat = http_rx.of_type("heartbeat")[0]
    assert beat["app"] == "api" and "info" in beat
    assert http_rx.of_type("pool")[0]["waiting"] == 4


def test_http_target_sends_the_ingest_token_from_the_environment(
    loop: asyncio.AbstractEventLoop, http_rx: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPWATCH_TOKEN", "s3cret-ingest-token-123")

    async def body() -> None:
        r = loopwatch.start("api", target=http_rx.target, interval=0.02)
        await http_rx.wait(lambda m: m["type"] == "heartbeat")
        await r.astop()

    loop.run_until_complete(body())
    assert {req["authorization"] for req in http_rx.requests} == {"Bearer s3cret-ingest-token-123"}


def test_http_target_sends_no_token_unless_one_is_set(loop: asyncio.AbstractEventLoop, http_rx: HttpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=http_rx.target, interval=0.02)
        await http_rx.wait(lambda m: m["type"] == "heartbeat")
        await r.astop()

    loop.run_until_complete(body())
    assert {req["authorization"] for req in http_rx.requests} == {""}


def test_http_stall_and_stop_without_waiting(loop: asyncio.AbstractEventLoop, http_rx: HttpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=http_rx.target, interval=0.05, stall_threshold=0.2)
        await asyncio.sleep(0.1)
        time.sleep(0.6)
        await http_rx.wait(lambda m: m["type"] == "stall")
        r.stop()  # returns at once; the sender thread delivers the bye

    loop.run_until_complete(body())
    http_rx.wait_sync(lambda m: m["type"] == "bye")
    stall = http_rx.of_type("stall")[0]
    assert stall["site"].startswith(__file__.rsplit(".", 1)[0])


def test_http_queue_is_bounded_and_drops_oldest() -> None:
    rx = HttpReceiver()
    try:
        rx.gate.clear()  # the server holds requests
        t = _transport.HttpTransport("127.0.0.1", rx.port, queue_max=5)
        t.send(b'{"n":0}')
        deadline = time.monotonic() + 5
        while len(t._queue) and time.monotonic() < deadline:  # taken by the sender
            time.sleep(0.01)
        for n in range(1, 21):
            t.send(b'{"n":%d}' % n)
        assert t.dropped == 15
        assert list(t._queue) == [b'{"n":%d}' % n for n in range(16, 21)]
        rx.gate.set()
        t.close()
        assert t.wait_closed(5)
        assert [m["n"] for m in rx.messages] == [0, 16, 17, 18, 19, 20]
    finally:
        rx.close()


def test_http_send_never_blocks_when_server_hangs() -> None:
    rx = HttpReceiver()
    try:
        rx.gate.clear()
        t = _transport.HttpTransport("127.0.0.1", rx.port, timeout=0.3)
        t0 = time.monotonic()
        for n in range(2000):
            t.send(b'{"n":%d}' % n)
        assert time.monotonic() - t0 < 1.0  # only appends to a deque
        t.close()
        assert t.wait_closed(5)
    finally:
        rx.close()


def test_documented_constants() -> None:
    assert _reporter.SLOW_CALLBACK_S == 0.1
    assert _reporter.INFO_EVERY == 40
