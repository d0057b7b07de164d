"""Connection pool pressure: a tracker around a pool's acquire.

A :class:`PoolTracker` counts what happens in the ``async with`` blocks it
wraps: callers waiting in acquire, connections held, acquires that succeeded
or failed, and the time spent waiting. The reporter sends its state as
``pool`` messages (docs/protocol.md) with every heartbeat and when it
changes: at once, or :data:`POOL_REPORT_GAP_S` after the previous report if
that was more recent (so a burst of changes costs one report per gap).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, AsyncContextManager, Callable, Dict, Generic, Optional, Type, TypeVar, Union

__all__ = ["PoolStats", "PoolTracker", "SizeSpec", "POOL_REPORT_GAP_S"]

log = logging.getLogger("loopwatch")

T = TypeVar("T")

#: ``size`` / ``max`` of a tracked pool: a number, or a function called (on
#: the reporting thread, guarded) each time the pool is reported, such as
#: asyncpg's ``pool.get_size``. It must be cheap and must not block.
SizeSpec = Union[int, Callable[[], int], None]

#: A change of a tracked pool is reported at once, or this long after the
#: pool's previous report if that was more recent.
POOL_REPORT_GAP_S = 0.1


@dataclass(frozen=True)
class PoolStats:
    """What a :class:`PoolTracker` has seen (:meth:`PoolTracker.stats`).

    ``size`` and ``max`` are the values reported for the pool (see
    :meth:`Reporter.track_pool`); ``waiting_max`` is the most callers seen
    waiting since the pool's previous report; ``acquires``,
    ``acquire_timeouts`` and ``wait_seconds`` are cumulative.
    """

    pool: str
    size: int
    max: int
    in_use: int
    waiting: int
    waiting_max: int
    acquires: int
    acquire_timeouts: int
    wait_seconds: float


class PoolTracker:
    """Tracks one connection pool through the acquires it wraps. Made by
    :meth:`Reporter.track_pool`.

    ::

        tracker = reporter.track_pool("db", max=pool.get_max_size, size=pool.get_size)
        async with tracker.acquire(pool.acquire()) as conn:
            ...

    Only acquires made through :meth:`acquire` are seen. The tracker's own
    bookkeeping never raises and never blocks; what the wrapped acquire
    raises propagates unchanged. A tracker belongs to one event loop, like
    the pool it watches (asyncpg's and psycopg's pools are bound to the loop
    that made them): its counters are updated on that loop's thread only.
    """

    def __init__(self, name: str, *, size: SizeSpec = None, max: SizeSpec = None) -> None:
        self._name = name
        self._size: SizeSpec = size
        self._max: SizeSpec = max
        self._in_use = 0
        self._waiting = 0
        self._waiting_max = 0  # since the previous report
        self._seen_most = 0  # the most connections seen in use or open
        self._acquires = 0
        self._timeouts = 0
        self._wait_seconds = 0.0
        self._last_report = float("-inf")
        self._warned = False
        self._flush_pending = False
        # Set by the reporter: send this pool's state now; ask for a send
        # after a delay (False when it cannot be scheduled). None: not reported.
        self._emit: Optional[Callable[["PoolTracker"], None]] = None
        self._emit_later: Optional[Callable[["PoolTracker", float], bool]] = None

    @property
    def name(self) -> str:
        """The pool's name as reported (the ``pool`` label)."""
        return self._name

    def __repr__(self) -> str:
        return f"<loopwatch.PoolTracker pool={self._name!r} in_use={self._in_use} waiting={self._waiting}>"

    def acquire(self, acquire: AsyncContextManager[T]) -> AsyncContextManager[T]:
        """Wrap one acquire: ``async with tracker.acquire(pool.acquire()) as conn``.

        Entering it enters ``acquire`` (asyncpg's ``pool.acquire()``,
        psycopg_pool's ``pool.connection()``, any async context manager
        that hands out a connection) and counts the wait; leaving it leaves
        ``acquire`` (which returns the connection to the pool). Use it once,
        like the context manager it wraps."""
        return _TrackedAcquire(self, acquire)

    def set_limits(self, *, size: SizeSpec = None, max: SizeSpec = None) -> None:
        """Change what is reported as ``size`` / ``max`` (None keeps the
        current setting)."""
        if size is not None:
            self._size = size
        if max is not None:
            self._max = max

    def stats(self) -> PoolStats:
        """The tracked state now (calls the ``size`` / ``max`` functions;
        does not count as a report)."""
        return self._snapshot(reset=False)

    # -- bookkeeping (never raises) -----------------------------------------

    # On the loop's thread, between two awaits: no lock needed (a report
    # from another thread, stop(), reads a consistent enough state).

    def _wait_begin(self) -> float:
        now = time.monotonic()
        waiting = self._waiting + 1
        self._waiting = waiting
        if waiting > self._waiting_max:
            self._waiting_max = waiting
        if self._changed(now):
            return time.monotonic()  # the report's own time is not the pool's wait
        return now

    def _wait_end(self, started: float, ok: bool) -> None:
        now = time.monotonic()
        self._waiting -= 1
        if now > started:
            self._wait_seconds += now - started
        if ok:
            self._acquires += 1
            in_use = self._in_use + 1
            self._in_use = in_use
            if in_use > self._seen_most:
                self._seen_most = in_use
        else:
            self._timeouts += 1
        self._changed(now)

    def _release(self) -> None:
        if self._in_use > 0:
            self._in_use -= 1
        self._changed(time.monotonic())

    def _changed(self, now: float) -> bool:
        """Report the change now or ask for a report later; True when sent now."""
        emit = self._emit
        if emit is None or self._flush_pending:
            return False
        try:
            wait = self._last_report + POOL_REPORT_GAP_S - now
            if wait <= 0.0:
                emit(self)
                return True
            later = self._emit_later
            # Without a timer (another thread), the next heartbeat reports it.
            self._flush_pending = later is not None and later(self, wait)
        except Exception:
            log.debug("loopwatch: pool report failed", exc_info=True)
        return False

    # -- reporting -------------------------------------------------------------

    def _resolve(self, spec: SizeSpec, what: str) -> Optional[int]:
        if spec is None:
            return None
        try:
            value: Any = spec() if callable(spec) else spec
            return max(0, int(value))
        except Exception:
            if not self._warned:
                self._warned = True
                log.warning(
                    "loopwatch: pool %r: its %s could not be read (reported as a lower bound instead)",
                    self._name,
                    what,
                    exc_info=True,
                )
            return None

    def _snapshot(self, reset: bool) -> PoolStats:
        size = self._resolve(self._size, "size")
        most = self._resolve(self._max, "max")
        in_use = self._in_use
        waiting = self._waiting
        waiting_max = self._waiting_max if self._waiting_max > waiting else waiting
        if reset:
            self._waiting_max = waiting
            self._last_report = time.monotonic()
        if size is None:
            size = in_use  # at least these are open
        if size > self._seen_most:
            self._seen_most = size
        if most is None:
            most = self._seen_most  # a lower bound: the most seen open or in use
        return PoolStats(
            pool=self._name,
            size=size,
            max=most,
            in_use=in_use,
            waiting=waiting,
            waiting_max=waiting_max,
            acquires=self._acquires,
            acquire_timeouts=self._timeouts,
            wait_seconds=self._wait_seconds,
        )

    def _report_fields(self) -> Dict[str, Any]:
        """The ``pool`` message's fields; starts a new ``waiting_max`` period."""
        s = self._snapshot(reset=True)
        return {
            "pool": s.pool,
            "size": s.size,
            "max": s.max,
            "in_use": s.in_use,
            "waiting": s.waiting,
            "waiting_max": s.waiting_max,
            "acquires": s.acquires,
            "acquire_timeouts": s.acquire_timeouts,
            "wait_seconds": round(s.wait_seconds, 6),
        }


class _TrackedAcquire(Generic[T]):
    """``async with`` around a pool's acquire context manager, counting."""

    __slots__ = ("_tracker", "_cm", "_aexit", "_held")

    def __init__(self, tracker: PoolTracker, cm: AsyncContextManager[T]) -> None:
        self._tracker = tracker
        self._cm = cm
        self._aexit: Any = None
        self._held = False

    async def __aenter__(self) -> T:
        cm = self._cm
        kind = type(cm)
        try:
            aenter = kind.__aenter__
            self._aexit = kind.__aexit__
        except AttributeError:
            raise TypeError(
                f"loopwatch: pool acquire needs an async context manager (such as pool.acquire()), "
                f"not {kind.__name__!r}"
            ) from None
        tracker = self._tracker
        started = tracker._wait_begin()
        try:
            conn: T = await aenter(cm)
        except BaseException:
            # Timed out, failed or cancelled (asyncio.wait_for / timeout
            # around the acquire cancels it): a failed acquire.
            tracker._wait_end(started, ok=False)
            raise
        tracker._wait_end(started, ok=True)
        self._held = True
        return conn

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Optional[bool]:
        if self._held:
            # The caller is done with the connection (in_use counts holders).
            self._held = False
            self._tracker._release()
        result: Optional[bool] = await self._aexit(self._cm, exc_type, exc, tb)
        return result
