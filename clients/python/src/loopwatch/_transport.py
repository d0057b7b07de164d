"""Sending encoded messages to loopwatch: UDP datagrams or NDJSON over HTTP.

Every ``send`` is safe to call from any thread, never blocks and never raises.
"""

from __future__ import annotations

import atexit
import collections
import http.client
import ipaddress
import logging
import os
import socket
import threading
import time
import weakref
from typing import Deque, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_TARGET",
    "LOOPBACK_MAX",
    "REMOTE_MAX",
    "Transport",
    "NullTransport",
    "UdpTransport",
    "HttpTransport",
    "make_transport",
]

log = logging.getLogger("loopwatch")

DEFAULT_TARGET = "udp://127.0.0.1:10071"
DEFAULT_PORT = 10071
#: Largest datagram (and NDJSON line) loopwatch accepts; the limit on loopback.
LOOPBACK_MAX = 8192
#: Largest datagram to a remote target: one Ethernet frame, no IP fragmentation.
REMOTE_MAX = 1432

EVENTS_PATH = "/api/v1/events"
HTTP_TIMEOUT = 2.0
HTTP_QUEUE_MAX = 1000
HTTP_BODY_MAX = 1024 * 1024
RESOLVE_EVERY = 30.0


class Transport:
    """Where messages go. The base class drops everything."""

    #: Largest message (bytes) this transport should be given.
    max_size: int = LOOPBACK_MAX

    def send(self, data: bytes) -> bool:
        """Queue or send one encoded message. Never blocks, never raises.
        False when it certainly went nowhere (no address yet, a send error)."""
        return False

    def maintain(self) -> None:
        """Periodic upkeep (DNS), called from the watchdog thread; never blocks."""

    def close(self) -> None:
        """Stop after sending what is queued (without waiting for it)."""

    def wait_closed(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until queued messages are sent."""
        return True

    def closed_soon(self) -> bool:
        """True when nothing is left to send (``wait_closed`` would return)."""
        return True


class NullTransport(Transport):
    """Drops everything (disabled reporter, or an unusable target)."""


def _ip(host: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


class UdpTransport(Transport):
    """One JSON object per datagram on a non-blocking UDP socket.

    A numeric host is used at once; a host name is resolved in a background
    thread (never on the loop), and again every 30 s.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.max_size = REMOTE_MAX
        self._sockets: Dict[int, socket.socket] = {}
        # (socket, address) swapped as one reference, so senders on any thread
        # see a consistent pair.
        self._dest: Optional[Tuple[socket.socket, Tuple[object, ...]]] = None
        self._next_resolve = 0.0
        self._closed = False
        self._lock = threading.Lock()
        ip = _ip(host)
        if ip is not None:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            addr: Tuple[object, ...] = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
            try:
                self._use(family, addr, ip.is_loopback)
            except OSError as e:  # pragma: no cover - socket creation failing
                log.warning("loopwatch: cannot create a UDP socket: %s", e)
            self._next_resolve = float("inf")
        else:
            self.maintain()  # resolve now, in the background

    def _use(self, family: int, addr: Tuple[object, ...], loopback: bool) -> None:
        with self._lock:
            if self._closed:
                return
            sock = self._sockets.get(family)
            if sock is None:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sockets[family] = sock
            self.max_size = LOOPBACK_MAX if loopback else REMOTE_MAX
            self._dest = (sock, addr)

    def maintain(self) -> None:
        """Start a re-resolution when one is due, in its own short-lived
        thread: a slow DNS server must not hold up the watchdog either."""
        now = time.monotonic()
        if now < self._next_resolve or self._closed:
            return
        self._next_resolve = now + RESOLVE_EVERY
        threading.Thread(target=self._resolve, name="loopwatch-resolve", daemon=True).start()

    def _resolve(self) -> None:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except OSError as e:
            log.debug("loopwatch: cannot resolve %s: %s", self.host, e)
            return
        # IPv4 first: "localhost" often lists ::1 first, while loopwatch
        # listens on 127.0.0.1 by default (and UDP cannot tell us it failed).
        infos.sort(key=lambda info: 0 if info[0] == socket.AF_INET else 1)
        for family, _type, _proto, _name, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = _ip(str(sockaddr[0]))
            try:
                self._use(family, tuple(sockaddr), ip is not None and ip.is_loopback)
            except OSError:
                continue
            return

    def send(self, data: bytes) -> bool:
        dest = self._dest
        if dest is None:
            return False
        try:
            dest[0].sendto(data, dest[1])
            return True
        except OSError:
            # No exporter (ECONNREFUSED), a full buffer (EAGAIN), a closed
            # socket, an oversize datagram: the app must not notice.
            return False
        except Exception:  # pragma: no cover - defensive
            return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._dest = None
            socks = list(self._sockets.values())
            self._sockets.clear()
        for s in socks:
            try:
                s.close()
            except OSError:  # pragma: no cover
                pass


_live_http: "weakref.WeakSet[HttpTransport]" = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Give queued HTTP messages (a ``bye``) a moment to leave at exit."""
    deadline = time.monotonic() + 1.0
    for t in list(_live_http):
        t.close_at(deadline)
    for t in list(_live_http):
        t.wait_closed(max(0.0, deadline - time.monotonic()))


class HttpTransport(Transport):
    """NDJSON batches, ``POST /api/v1/events``, from a background thread.

    The queue is bounded (the oldest messages are dropped when it is full),
    the connection is kept alive, and every request has a short timeout.
    """

    max_size = LOOPBACK_MAX

    def __init__(
        self,
        host: str,
        port: int,
        path: str = EVENTS_PATH,
        *,
        https: bool = False,
        timeout: float = HTTP_TIMEOUT,
        queue_max: int = HTTP_QUEUE_MAX,
        token: Optional[str] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self._headers = {"Content-Type": "application/x-ndjson", "User-Agent": "loopwatch-python"}
        if token:
            # loopwatch's ingest token (ingest.token): required from other
            # hosts, and from every host once it is set.
            self._headers["Authorization"] = f"Bearer {token}"
        self.https = https
        self.timeout = timeout
        self.dropped = 0
        self.posted = 0
        self._queue: Deque[bytes] = collections.deque(maxlen=queue_max)
        self._wake = threading.Event()
        self._closing = False
        self._deadline = float("inf")
        self._conn: Optional[http.client.HTTPConnection] = None
        self._thread = threading.Thread(target=self._run, name="loopwatch-http", daemon=True)
        self._thread.start()
        _live_http.add(self)

    def send(self, data: bytes) -> bool:
        if self._closing:
            return False
        q = self._queue
        if len(q) == q.maxlen:
            self.dropped += 1
        q.append(data)  # deque(maxlen) drops the oldest when full
        self._wake.set()
        return True

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def close_at(self, deadline: float) -> None:
        """Close; give up sending what is left at ``deadline`` (monotonic)."""
        self._deadline = min(self._deadline, deadline)
        self.close()

    def wait_closed(self, timeout: float) -> bool:
        if threading.current_thread() is self._thread:
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def closed_soon(self) -> bool:
        return not self._thread.is_alive()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.https:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover
                pass

    def _post(self, body: bytes) -> None:
        for attempt in (0, 1):
            reused = self._conn is not None
            try:
                conn = self._connection()
                conn.request(
                    "POST",
                    self.path,
                    body=body,
                    headers=self._headers,
                )
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    log.debug("loopwatch: POST %s answered %s", self.path, resp.status)
                if resp.will_close:
                    self._drop_connection()
                self.posted += 1
                return
            except (OSError, http.client.HTTPException, ValueError) as e:
                self._drop_connection()
                # A kept-alive connection the server closed meanwhile: retry
                # once on a fresh one. Otherwise drop the batch (heartbeats
                # carry cumulative counters, so the next one makes up for it).
                if attempt == 0 and reused:
                    continue
                log.debug("loopwatch: POST %s failed: %s", self.path, e)
                return

    def _batch(self) -> Optional[bytes]:
        q = self._queue
        parts: List[bytes] = []
        size = 0
        while q:
            try:
                item = q.popleft()
            except IndexError:
                break
            if parts and size + len(item) + 1 > HTTP_BODY_MAX:
                q.appendleft(item)
                break
            parts.append(item)
            size += len(item) + 1
        if not parts:
            return None
        parts.append(b"")
        return b"\n".join(parts)

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(1.0)
                self._wake.clear()
                while True:
                    if time.monotonic() >= self._deadline:
                        self._queue.clear()
                        break
                    body = self._batch()
                    if body is None:
                        break
                    self._post(body)
                if self._closing and not self._queue:
                    break
        except Exception:  # pragma: no cover - defensive: never crash loudly
            log.debug("loopwatch: HTTP sender failed", exc_info=True)
        finally:
            self._drop_connection()
            _live_http.discard(self)


def make_transport(target: str) -> Transport:
    """A transport for ``udp://host:port``, ``http://host:port`` or
    ``https://host:port`` (``host:port`` alone means UDP). HTTP(S) sends
    ``LOOPWATCH_TOKEN``, when set, as the bearer token loopwatch's ingest door
    asks for. An unusable target is logged and gives a transport that drops
    everything: never an error."""
    try:
        raw = target.strip()
        if "://" not in raw:
            raw = "udp://" + raw
        parts = urlsplit(raw)
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
        if not host:
            raise ValueError("no host")
        if scheme == "udp":
            return UdpTransport(host, port or DEFAULT_PORT)
        if scheme in ("http", "https"):
            path = parts.path.rstrip("/")
            if not path.endswith(EVENTS_PATH):
                path = path + EVENTS_PATH
            default_port = 443 if scheme == "https" else DEFAULT_PORT
            token = os.environ.get("LOOPWATCH_TOKEN", "").strip() or None
            return HttpTransport(host, port or default_port, path, https=scheme == "https", token=token)
        raise ValueError(f"unknown scheme {scheme!r} (udp, http or https)")
    except Exception as e:
        log.warning("loopwatch: unusable target %r (%s); reporting is off", target, e)
        return NullTransport()
