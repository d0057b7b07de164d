"""Shared fixtures: an event loop of each kind, a real UDP receiver and a
real HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

# The package under test, from this checkout (also configured as
# `pythonpath` in pyproject.toml; this works from any directory).
_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

Message = Dict[str, Any]
Predicate = Callable[[Message], bool]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOOPWATCH_DISABLED", "LOOPWATCH_TARGET", "LOOPWATCH_APP", "LOOPWATCH_WORKER", "LOOPWATCH_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop: the default asyncio one, then uvloop's."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        lp: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        if not lp.is_closed():
            _close(lp)


def _close(lp: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(lp) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            lp.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        lp.run_until_complete(lp.shutdown_asyncgens())
    finally:
        lp.close()


class _Collector:
    """Messages received so far, in order, with waiting helpers."""

    def __init__(self) -> None:
        self.messages: List[Message] = []
        self.raw: List[bytes] = []
        self._cond = threading.Condition()

    def _add(self, data: bytes) -> None:
        try:
            msg = json.loads(data.decode("utf-8"))
        except ValueError:
            msg = {"type": "<not json>", "data": data}
        with self._cond:
            self.raw.append(data)
            self.messages.append(msg)
            self._cond.notify_all()

    def of_type(self, kind: str) -> List[Message]:
        with self._cond:
            return [m for m in self.messages if m.get("type") == kind]

    def find(self, pred: Predicate) -> Optional[Message]:
        with self._cond:
            for m in self.messages:
                if pred(m):
                    return m
        return None

    def wait_sync(self, pred: Predicate, timeout: float = 5.0) -> Message:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching message within {timeout}s; got {self.messages!r}")
                self._cond.wait(left)

    async def wait(self, pred: Predicate, timeout: float = 5.0) -> Message:
        """Wait on the event loop (polling, so the loop keeps running)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.find(pred)
            if m is not None:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching message within {timeout}s; got {self.messages!r}")
            await asyncio.sleep(0.01)


class UdpReceiver(_Collector):
    """A real UDP socket on 127.0.0.1:0, read by a thread."""

    def __init__(self) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.target = f"udp://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self._add(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def udp() -> Iterator[UdpReceiver]:
    rx = UdpReceiver()
    try:
        yield rx
    finally:
        rx.close()


class HttpReceiver(_Collector):
    """A real ``http.server`` on 127.0.0.1:0 accepting ``POST /api/v1/events``."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: List[Dict[str, str]] = []
        self.gate = threading.Event()  # clear it to hold requests
        self.gate.set()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                collector.gate.wait(10)
                with collector._cond:
                    collector.requests.append(
                        {
                            "path": self.path,
                            "content_type": self.headers.get("Content-Type", ""),
                            "authorization": self.headers.get("Authorization", ""),
                        }
                    )
                lines = [ln for ln in body.split(b"\n") if ln]
                for ln in lines:
                    collector._add(ln)
                reply = json.dumps({"accepted": len(lines), "rejected": 0}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (timeout tests): not worth a traceback

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.target = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(2)


@pytest.fixture
def http_rx() -> Iterator[HttpReceiver]:
    rx = HttpReceiver()
    try:
        yield rx
    finally:
        rx.close()


def _free_port(kind: int) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on."""
    return _free_port(socket.SOCK_DGRAM)


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return _free_port(socket.SOCK_STREAM)
