"""The reporter: heartbeat task, task and exception hooks, watchdog."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import re
import sys
import threading
import time
import weakref
from types import TracebackType
from typing import Any, AsyncContextManager, Dict, List, Mapping, Optional, Set, Tuple, Type, TypeVar, Union

from ._headers import RateLimit, ratelimit_from_headers, resource_from_headers, throttle_kind
from ._pool import PoolTracker, SizeSpec
from ._transport import DEFAULT_TARGET, NullTransport, Transport, make_transport
from ._watchdog import Watchdog
from ._wire import Envelope, dumps, encode, label, sanitize_name, valid_name
from ._version import __version__

__all__ = ["Reporter", "start", "watch", "task_name", "SLOW_CALLBACK_S"]

log = logging.getLogger("loopwatch")

T = TypeVar("T")
_max = max  # Reporter.pool() and track_pool() take a "max" argument

#: A heartbeat this late counts one slow callback (see README: approximation).
SLOW_CALLBACK_S = 0.1
#: ``info`` goes with the first heartbeat and then every this many.
INFO_EVERY = 40

_GENERATED_TASK_NAME = re.compile(r"Task-\d+\Z")
_TRUE = ("1", "true", "yes", "on")
_COUNTED_ATTR = "_loopwatch_counted"
# Room kept for each failure / cancellation count in the heartbeat budget.
_COUNT_RESERVE = 10**11

#: Pools one reporter tracks by name; further names are folded into ``other``.
MAX_TRACKED_POOLS = 32
WORKER_ENV = "LOOPWATCH_WORKER"

# Reporters running now, by (id(loop), loop name): start() twice returns the same.
_active: Dict[Tuple[int, str], "Reporter"] = {}
_active_lock = threading.Lock()


def task_name(task: "asyncio.Future[Any]") -> str:
    """A bounded name for a task: the name the app gave it (not an
    auto-generated ``Task-123``), else its coroutine's ``__qualname__``
    (``poll_feed``, ``Worker.run``), else ``unknown``."""
    try:
        get_name = getattr(task, "get_name", None)
        name = get_name() if get_name is not None else None
        # "None": CPython 3.13.0-3.13.2 name every task made through a task
        # factory "None" when create_task() got no name (cpython#130033).
        if isinstance(name, str) and name and name != "None" and not _GENERATED_TASK_NAME.match(name):
            return label(name)
        get_coro = getattr(task, "get_coro", None)
        coro = get_coro() if get_coro is not None else None
        qualname = getattr(coro, "__qualname__", None)
        if isinstance(qualname, str) and qualname:
            return label(qualname)
    except Exception:
        pass
    return "unknown"


def _default_app() -> str:
    env = os.environ.get("LOOPWATCH_APP", "").strip()
    if env:
        return env
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    base = os.path.basename(argv0)
    if base == "__main__.py":  # python -m package
        base = os.path.basename(os.path.dirname(argv0))
    if base.endswith(".py"):
        base = base[:-3]
    if base in ("", "-c", "-m", "-"):
        return "python"
    return base


# Invalid worker values already warned about (each is logged once).
_worker_warned: Set[str] = set()


def _worker_id(worker: Union[str, int, None]) -> Optional[str]:
    """The ``worker`` field: the argument, else ``$LOOPWATCH_WORKER``; None
    when neither is set or the value is invalid (logged once, never raised)."""
    source = "worker"
    value: object = worker
    if worker is None:
        env = os.environ.get(WORKER_ENV, "").strip()
        if not env:
            return None
        source, value = WORKER_ENV, env
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if isinstance(value, str) and valid_name(value):
        return value
    shown = repr(value)[:80]
    if len(_worker_warned) < 64 and shown not in _worker_warned:
        _worker_warned.add(shown)
        log.warning(
            "loopwatch: ignoring %s=%s: a worker id is 1-64 characters of A-Z a-z 0-9 _ . : -",
            source,
            shown,
        )
    return None


def _count(value: Any) -> int:
    """A non-negative integer (the protocol's counts are unsigned)."""
    return max(0, int(value))


def _disabled_by_env() -> bool:
    return os.environ.get("LOOPWATCH_DISABLED", "").strip().lower() in _TRUE


def _check_range(name: str, value: float, low: float, high: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"loopwatch: {name} must be a number, got {value!r}") from None
    if not (low <= v <= high):
        raise ValueError(f"loopwatch: {name} must be within {low}-{high} seconds, got {v}")
    return v


class Reporter:
    """Reports one event loop to loopwatch. Made by :func:`start`.

    All methods are safe to call at any time and never raise into the app;
    on a disabled reporter (``LOOPWATCH_DISABLED=1``) they do nothing.
    """

    def __init__(
        self,
        *,
        app: str,
        loop_name: str,
        target: str,
        interval: float,
        stall_threshold: float,
        transport: Optional[Transport] = None,
        worker: Optional[str] = None,
    ) -> None:
        self.app = app
        self.loop_name = loop_name
        self.target = target
        self.interval = interval
        self.stall_threshold = stall_threshold
        #: The ``worker`` every message carries, or None.
        self.worker = worker
        self._transport: Transport = transport if transport is not None else NullTransport()
        self._enabled = transport is not None
        self._stopped = not self._enabled
        self._hooked = False
        self._env = Envelope(app, loop_name, os.getpid(), worker)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread_id = 0
        self._key: Optional[Tuple[int, str]] = None
        self._heartbeat: Optional["asyncio.Task[None]"] = None
        self._watchdog: Optional[Watchdog] = None
        self._prev_factory: Any = None
        self._prev_handler: Any = None
        self._factory: Any = None
        self._handler: Any = None
        # Counters. The loop thread updates them; the exception handler may
        # run on any thread (a task collected by the GC), hence the lock.
        self._lock = threading.Lock()
        self._last_tick = time.monotonic()
        self._beats = 0
        self._tasks_created = 0
        self._tasks_pending = 0
        self._slow_callbacks = 0
        self._failures: Dict[Tuple[str, str], int] = {}
        self._cancellations: Dict[str, int] = {}
        self._counted: "weakref.WeakSet[asyncio.Future[Any]]" = weakref.WeakSet()
        self._arrays: Optional[str] = None
        self._arrays_used = 0
        self._arrays_budget = 0
        self._hb_prefix = ""
        self._info = ""
        self._info_sent = False
        # Tracked pools: the dict by name for lookups, the tuple (replaced
        # whole on change) for the heartbeat to iterate from any thread.
        self._pools: Dict[str, PoolTracker] = {}
        self._pool_list: Tuple[PoolTracker, ...] = ()
        self._pools_lock = threading.Lock()
        self._pools_folded = False

    # -- public ------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False for the no-op reporter (``LOOPWATCH_DISABLED``)."""
        return self._enabled

    @property
    def stopped(self) -> bool:
        return self._stopped

    def __repr__(self) -> str:
        state = "disabled" if not self._enabled else ("stopped" if self._stopped else "running")
        return (
            f"<loopwatch.Reporter app={self.app!r} loop={self.loop_name!r} "
            + (f"worker={self.worker!r} " if self.worker is not None else "")
            + f"target={self.target!r} {state}>"
        )

    def stop(self) -> None:
        """Send ``bye``, stop the heartbeat task and the watchdog thread, and
        restore the loop's previous exception handler and task factory.
        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._unhook()
            if self._watchdog is not None:
                self._watchdog.stop()
            self._cancel_heartbeat()
            # The counters since the last heartbeat, before the bye.
            self._report_pools()
            self._send(self._env.message("bye", {}))
        except Exception:
            log.debug("loopwatch: stop failed", exc_info=True)
        finally:
            self._release()

    async def astop(self) -> None:
        """:meth:`stop`, then wait (without blocking the loop, at most 2 s)
        until queued messages, the ``bye`` included, have been sent."""
        self.stop()
        deadline = time.monotonic() + 2.0
        while not self._transport.closed_soon() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def pool(
        self,
        name: str,
        *,
        size: int,
        max: int,
        in_use: int,
        waiting: int,
        waiting_max: Optional[int] = None,
        acquires: Optional[int] = None,
        acquire_timeouts: Optional[int] = None,
        wait_seconds: Optional[float] = None,
    ) -> None:
        """Report a client-side connection pool's state (a ``pool`` message).

        The optional fields are cumulative since the process started
        (``acquires``, ``acquire_timeouts``, ``wait_seconds``) or the most
        callers seen waiting since this pool's previous report
        (``waiting_max``, at least ``waiting``). :meth:`track_pool` counts
        all of them for you; do not report a tracked pool's name here too."""
        if self._stopped:
            return
        try:
            fields: Dict[str, Any] = {
                "pool": sanitize_name(name, "default"),
                "size": _count(size),
                "max": _count(max),
                "in_use": _count(in_use),
                "waiting": _count(waiting),
            }
            if waiting_max is not None:
                fields["waiting_max"] = _max(_count(waiting_max), fields["waiting"])
            if acquires is not None:
                fields["acquires"] = _count(acquires)
            if acquire_timeouts is not None:
                fields["acquire_timeouts"] = _count(acquire_timeouts)
            if wait_seconds is not None:
                fields["wait_seconds"] = round(_max(0.0, float(wait_seconds)), 6)
            self._send(self._env.message("pool", fields))
        except Exception:
            log.debug("loopwatch: bad pool report", exc_info=True)

    def track_pool(self, name: str, *, max: SizeSpec = None, size: SizeSpec = None) -> PoolTracker:
        """The tracker of the pool ``name``, made on first use: wrap each
        acquire in ``tracker.acquire(...)`` and the pool's pressure (in use,
        waiting, the most waiting, acquires, failed acquires, time waited) is
        reported with every heartbeat and when it changes (within 0.1 s; a
        burst of changes costs one report per 0.1 s).

        ``max`` and ``size`` are numbers or functions called at each report
        (asyncpg: ``max=pool.get_max_size, size=pool.get_size``); given
        again for a tracked pool, they replace the previous ones. Without
        ``size`` the connections in use are reported as open; without
        ``max``, the most connections seen open or in use (a lower bound).

        A reporter tracks at most 32 pools; more names share the tracker
        ``other`` (logged once). Never raises."""
        key = sanitize_name(name, "default")
        with self._pools_lock:
            tracker = self._pools.get(key)
            if tracker is None:
                if len(self._pools) >= MAX_TRACKED_POOLS:
                    if not self._pools_folded:
                        self._pools_folded = True
                        log.warning(
                            "loopwatch: more than %d pools tracked; %r and further ones are reported as 'other'",
                            MAX_TRACKED_POOLS,
                            key,
                        )
                    key = "other"
                    tracker = self._pools.get(key)
                    max = size = None  # the folded pools' limits do not add up
                if tracker is None:
                    tracker = PoolTracker(key)
                    tracker._emit = self._pool_changed
                    tracker._emit_later = self._pool_later
                    self._pools[key] = tracker
                    self._pool_list = tuple(self._pools.values())
        tracker.set_limits(size=size, max=max)
        return tracker

    def pool_acquire(
        self,
        name: str,
        acquire: AsyncContextManager[T],
        *,
        max: SizeSpec = None,
        size: SizeSpec = None,
    ) -> AsyncContextManager[T]:
        """``async with reporter.pool_acquire("db", pool.acquire()) as conn:``
        -- the same as ``reporter.track_pool(name, max=max,
        size=size).acquire(acquire)``. The wait in ``acquire`` is counted; an
        exception it raises propagates unchanged (and counts as a failed
        acquire)."""
        return self.track_pool(name, max=max, size=size).acquire(acquire)

    def ratelimit(
        self,
        api: str,
        resource: str,
        *,
        limit: int,
        remaining: int,
        reset: float,
        token: Optional[str] = None,
        throttled: Optional[str] = None,
    ) -> None:
        """Report an API's rate-limit state (a ``ratelimit`` message).

        ``reset`` is the unix time when the window resets. ``token`` names
        the budget's token (never the token itself; loopwatch uses the app's
        name without it). ``throttled`` (``"primary"`` or ``"secondary"``)
        says the response that carried this state was a refusal."""
        if self._stopped:
            return
        try:
            fields: Dict[str, Any] = {
                "api": sanitize_name(api, "unknown"),
                "resource": sanitize_name(resource, "default"),
                "limit": _count(limit),
                "remaining": _count(remaining),
                "reset": max(0.0, float(reset)),
            }
            self._send_ratelimit(fields, token, throttled)
        except Exception:
            log.debug("loopwatch: bad ratelimit report", exc_info=True)

    def throttled(
        self, api: str, resource: str = "default", *, kind: str = "secondary", token: Optional[str] = None
    ) -> None:
        """Report a request the API refused for its rate limit when the
        response carried no budget: ``kind`` is ``"primary"`` (budget spent)
        or ``"secondary"``."""
        if self._stopped:
            return
        try:
            fields: Dict[str, Any] = {
                "api": sanitize_name(api, "unknown"),
                "resource": sanitize_name(resource, "default"),
            }
            self._send_ratelimit(fields, token, kind)
        except Exception:
            log.debug("loopwatch: bad throttled report", exc_info=True)

    def _pool_changed(self, tracker: PoolTracker) -> None:
        if not self._stopped:
            self._send_pool(tracker)

    def _pool_later(self, tracker: PoolTracker, delay: float) -> bool:
        """Report ``tracker`` after ``delay`` s (a change within the gap after
        its previous report); only from the loop's own thread."""
        loop = self._loop
        if self._stopped or loop is None or threading.get_ident() != self._loop_thread_id or loop.is_closed():
            return False
        loop.call_later(delay, self._pool_flush, tracker)
        return True

    def _pool_flush(self, tracker: PoolTracker) -> None:
        tracker._flush_pending = False
        self._pool_changed(tracker)

    def _send_pool(self, tracker: PoolTracker) -> None:
        try:
            self._send(self._env.message("pool", tracker._report_fields()))
        except Exception:
            log.debug("loopwatch: pool report failed", exc_info=True)

    def _report_pools(self) -> None:
        for tracker in self._pool_list:
            self._send_pool(tracker)

    def _send_ratelimit(self, fields: Dict[str, Any], token: Optional[str], throttled: Optional[str]) -> None:
        if token is not None:
            fields["token"] = sanitize_name(token, "default")
        if throttled is not None:
            if throttled not in ("primary", "secondary"):
                raise ValueError(f"throttled must be 'primary' or 'secondary', not {throttled!r}")
            fields["throttled"] = throttled
        self._send(self._env.message("ratelimit", fields))

    def report_headers(
        self,
        api: str,
        headers: Any,
        *,
        status: Optional[int] = None,
        body: Any = None,
        token: Optional[str] = None,
    ) -> Optional[RateLimit]:
        """Parse rate-limit response headers (see
        :func:`ratelimit_from_headers`) and report them. With the response's
        ``status`` (and, for GitHub's secondary limits, its ``body``), a
        403/429 refusal is also counted as throttled (see
        :func:`throttle_kind`). Returns the budget found, or None. Never raises."""
        rl = ratelimit_from_headers(api, headers)
        kind = throttle_kind(status, headers, body)
        if rl is not None:
            self.ratelimit(
                rl.api,
                rl.resource,
                limit=rl.limit,
                remaining=rl.remaining,
                reset=rl.reset,
                token=token,
                throttled=kind,
            )
        elif kind is not None:
            self.throttled(api, resource_from_headers(headers), kind=kind, token=token)
        return rl

    async def __aenter__(self) -> "Reporter":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.astop()

    # -- setup -------------------------------------------------------------

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        self._build_static()
        self._last_tick = time.monotonic()
        # The heartbeat task exists before the task factory is hooked: it is
        # not counted as created, and never as cancelled.
        self._heartbeat = loop.create_task(self._beat(), name="loopwatch-heartbeat")
        self._hook(loop)
        self._watchdog = Watchdog(
            loop=loop,
            thread_id=self._loop_thread_id,
            interval=self.interval,
            stall_threshold=self.stall_threshold,
            last_tick=self._get_last_tick,
            on_stall=self._send_stall,
            on_loop_closed=self._loop_closed,
            maintain=self._transport.maintain,
        )
        self._watchdog.start()

    def _build_static(self) -> None:
        env = self._env
        self._hb_prefix = '%s,"interval_s":%r,"stall_threshold_s":%r,' % (
            env.prefix("heartbeat"),
            float(self.interval),
            float(self.stall_threshold),
        )
        loop = self._loop
        module = type(loop).__module__ if loop is not None else ""
        info = {
            "client_version": __version__,
            "runtime": "uvloop" if module.startswith("uvloop") else "asyncio",
            "language_version": platform.python_version(),
        }
        self._info = ',"info":' + dumps(info)
        # The heartbeat must stay within one datagram whatever the counters
        # grow to: new failure / cancellation names beyond this budget are
        # folded into "other" (as loopwatch itself would fold them).
        worst = (
            self._hb_prefix
            + '"lag_s":%.6f,"tasks_pending":%d,"tasks_created":%d,"slow_callbacks":%d,'
            % (86400.0, 10**9, _COUNT_RESERVE, _COUNT_RESERVE)
            + '"failures":[],"cancellations":[]'
            + self._info
            + "}"
        )
        reserve = len(self._failure_entry("other", "other", _COUNT_RESERVE)) + len(
            self._cancel_entry("other", _COUNT_RESERVE)
        )
        self._arrays_budget = self._transport.max_size - len(encode(worst)) - reserve - 2

    # -- hooks: task factory and exception handler --------------------------

    def _hook(self, loop: asyncio.AbstractEventLoop) -> None:
        self._prev_factory = loop.get_task_factory()
        self._prev_handler = loop.get_exception_handler()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            prev = self._prev_factory
            if prev is None:
                if kwargs:
                    # name=None / context=None are the defaults; older Task
                    # classes do not accept every keyword.
                    kwargs = {k: v for k, v in kwargs.items() if v is not None}
                task = asyncio.Task(coro, loop=loop, **kwargs)
            else:
                task = prev(loop, coro, **kwargs)
            if self._hooked:
                try:
                    task.add_done_callback(self._on_task_done)
                except Exception:
                    pass
                else:
                    self._tasks_created += 1
                    self._tasks_pending += 1
            return task

        def handler(loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
            if self._hooked:
                try:
                    self._count_context(context)
                except Exception:
                    pass
            prev = self._prev_handler
            if prev is not None:
                prev(loop, context)
            else:
                loop.default_exception_handler(context)

        self._factory = factory
        self._handler = handler
        self._hooked = True
        loop.set_task_factory(factory)
        loop.set_exception_handler(handler)
        # Tasks already running when start() was called are watched too.
        # From here on tasks_pending is kept by the factory and the done
        # callbacks: asyncio.all_tasks() is O(all tasks) (~0.3 us per task on
        # CPython 3.11), far too slow to call at every heartbeat.
        existing = asyncio.all_tasks(loop)
        self._tasks_pending = len(existing)  # the heartbeat task included
        for task in existing:
            if task is not self._heartbeat:
                task.add_done_callback(self._on_task_done)

    def _unhook(self) -> None:
        """Put back the previous task factory and exception handler. If
        someone installed their own on top of ours meanwhile, ours stays in
        their chain but only passes calls through."""
        self._hooked = False
        loop = self._loop
        if loop is None:
            return
        try:
            if loop.get_task_factory() is self._factory:
                loop.set_task_factory(self._prev_factory)
        except Exception:
            log.debug("loopwatch: cannot restore the task factory", exc_info=True)
        try:
            if loop.get_exception_handler() is self._handler:
                loop.set_exception_handler(self._prev_handler)
        except Exception:
            log.debug("loopwatch: cannot restore the exception handler", exc_info=True)

    def _on_task_done(self, task: "asyncio.Future[Any]") -> None:
        self._tasks_pending -= 1
        if not self._hooked:
            return
        try:
            if task.cancelled():
                self._count_cancel(task_name(task))
                return
            # task.exception() would mark the exception retrieved and silence
            # asyncio's "Task exception was never retrieved": read the
            # attribute instead (the C Task, the Python Task and uvloop all
            # have it).
            exc = getattr(task, "_exception", None)
            if not isinstance(exc, BaseException):
                return
            self._count_failure(task_name(task), type(exc).__name__)
            # Remember the task as counted for the exception handler. An
            # attribute survives until the task is freed (weak references to
            # garbage in a reference cycle are cleared before finalizers run);
            # the WeakSet covers task types without a __dict__.
            try:
                setattr(task, _COUNTED_ATTR, True)
            except Exception:
                self._counted.add(task)
        except Exception:
            log.debug("loopwatch: task accounting failed", exc_info=True)

    def _count_context(self, context: Mapping[str, Any]) -> None:
        exc = context.get("exception")
        if not isinstance(exc, BaseException):
            return
        fut = context.get("task")
        if fut is None:
            fut = context.get("future")
        # Duck-typed: the pure-Python Task is no subclass of the C one.
        if fut is not None and asyncio.isfuture(fut) and hasattr(fut, "get_coro"):
            if getattr(fut, _COUNTED_ATTR, False) or fut in self._counted:
                return  # its done callback counted it already
            # A task the done callback never saw (built with asyncio.Task()
            # directly, or done before start()): count it under its name.
            self._count_failure(task_name(fut), type(exc).__name__)
            return
        # A callback (call_soon, a done callback, a protocol method), or a
        # plain Future nobody retrieved.
        self._count_failure("callback", type(exc).__name__)

    def _count_failure(self, task: str, exception: str) -> None:
        key = (label(task), label(exception))
        with self._lock:
            if key not in self._failures:
                size = len(self._failure_entry(key[0], key[1], _COUNT_RESERVE)) + 1
                if self._arrays_used + size > self._arrays_budget:
                    key = ("other", "other")
                else:
                    self._arrays_used += size
            self._failures[key] = self._failures.get(key, 0) + 1
            self._arrays = None

    def _count_cancel(self, task: str) -> None:
        name = label(task)
        with self._lock:
            if name not in self._cancellations:
                size = len(self._cancel_entry(name, _COUNT_RESERVE)) + 1
                if self._arrays_used + size > self._arrays_budget:
                    name = "other"
                else:
                    self._arrays_used += size
            self._cancellations[name] = self._cancellations.get(name, 0) + 1
            self._arrays = None

    @staticmethod
    def _failure_entry(task: str, exception: str, count: int) -> bytes:
        return encode('{"task":%s,"exception":%s,"count":%d}' % (dumps(task), dumps(exception), count))

    @staticmethod
    def _cancel_entry(task: str, count: int) -> bytes:
        return encode('{"task":%s,"count":%d}' % (dumps(task), count))

    def _arrays_json(self) -> str:
        with self._lock:
            arrays = self._arrays
            if arrays is None:
                failures = ",".join(
                    '{"task":%s,"exception":%s,"count":%d}' % (dumps(t), dumps(e), n)
                    for (t, e), n in self._failures.items()
                )
                cancels = ",".join(
                    '{"task":%s,"count":%d}' % (dumps(t), n) for t, n in self._cancellations.items()
                )
                arrays = '"failures":[%s],"cancellations":[%s]' % (failures, cancels)
                self._arrays = arrays
            return arrays

    # -- heartbeat -----------------------------------------------------------

    def _get_last_tick(self) -> float:
        return self._last_tick

    async def _beat(self) -> None:
        interval = self.interval
        mono = time.monotonic
        try:
            self._last_tick = mono()
            self._tick(0.0)
            while True:
                due = mono() + interval
                await asyncio.sleep(interval)
                now = mono()
                self._last_tick = now
                lag = now - due
                self._tick(min(lag, 86400.0) if lag > 0.0 else 0.0)
        except asyncio.CancelledError:
            # Cancelled by someone else (asyncio.run() cancels every task at
            # exit): the loop is going away, so say bye.
            if not self._stopped:
                self.stop()
            raise

    def _tick(self, lag: float) -> None:
        try:
            self._beats += 1
            if lag > SLOW_CALLBACK_S:
                self._slow_callbacks += 1
            pending = self._tasks_pending
            text = '%s"lag_s":%.6f,"tasks_pending":%d,"tasks_created":%d,"slow_callbacks":%d,%s%s}' % (
                self._hb_prefix,
                lag,
                pending if pending > 0 else 0,
                self._tasks_created,
                self._slow_callbacks,
                self._arrays if self._arrays is not None else self._arrays_json(),
                self._info if (self._beats % INFO_EVERY == 1 or not self._info_sent) else "",
            )
            if self._transport.send(text.encode("utf-8", "replace")):
                # info goes with the first heartbeat that left (a host name
                # may still be resolving at the first tick), then every 40th
                self._info_sent = True
            if self._pool_list:
                self._report_pools()
        except Exception:
            log.debug("loopwatch: heartbeat failed", exc_info=True)

    def _cancel_heartbeat(self) -> None:
        task = self._heartbeat
        loop = self._loop
        if task is None or loop is None or task.done() or loop.is_closed():
            return
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            if asyncio.current_task(loop) is not task:
                task.cancel()
        elif not loop.is_running():
            task.cancel()  # between run_until_complete() calls
        else:
            loop.call_soon_threadsafe(task.cancel)  # stop() from another thread

    # -- stalls, sending, shutdown -------------------------------------------

    def _send(self, data: bytes) -> None:
        self._transport.send(data)

    def _send_stall(self, stall_id: int, blocked_s: float, site: str, stack: List[str]) -> None:
        if self._stopped:
            return
        data = self._env.stall(stall_id, blocked_s, site, stack, self._transport.max_size)
        self._send(data)

    def _loop_closed(self) -> None:
        """The loop was closed without stop(): say bye from the watchdog."""
        if self._stopped:
            return
        self._stopped = True
        self._hooked = False
        try:
            self._send(self._env.message("bye", {}))
        finally:
            self._release()

    def _release(self) -> None:
        try:
            self._transport.close()
        except Exception:  # pragma: no cover
            pass
        with _active_lock:
            if self._key is not None and _active.get(self._key) is self:
                del _active[self._key]


def start(
    app: Optional[str] = None,
    *,
    loop_name: str = "main",
    target: Optional[str] = None,
    interval: float = 0.25,
    stall_threshold: float = 0.5,
    worker: Union[str, int, None] = None,
) -> Reporter:
    """Start reporting the running event loop (asyncio or uvloop) to loopwatch.

    Call it inside the running loop. ``app`` defaults to ``LOOPWATCH_APP``,
    then the script's name; ``target`` to ``LOOPWATCH_TARGET``, then
    ``udp://127.0.0.1:10071`` (``http://host:port`` posts NDJSON batches to
    ``/api/v1/events`` from a background thread instead). With
    ``LOOPWATCH_DISABLED=1`` it returns a reporter that does nothing.

    ``worker`` (a stable worker index such as ``0`` or ``"1"``, 1-64
    characters of ``A-Z a-z 0-9 _ . : -``) defaults to ``LOOPWATCH_WORKER``;
    every message then carries it and loopwatch exports per-worker series.
    An invalid value is logged once and ignored.

    Raises ``RuntimeError`` outside a running loop and ``ValueError`` for an
    ``interval`` outside 0.01-60 s or a ``stall_threshold`` outside 0.01-600 s;
    nothing else, and nothing later.
    """
    interval = _check_range("interval", interval, 0.01, 60.0)
    stall_threshold = _check_range("stall_threshold", stall_threshold, 0.01, 600.0)
    app_name = sanitize_name(app if app else _default_app(), "python")
    loop_label = sanitize_name(loop_name, "main")
    chosen = target or os.environ.get("LOOPWATCH_TARGET", "").strip() or DEFAULT_TARGET
    worker_id = _worker_id(worker)
    if _disabled_by_env():
        return Reporter(
            app=app_name,
            loop_name=loop_label,
            target=chosen,
            interval=interval,
            stall_threshold=stall_threshold,
            worker=worker_id,
        )
    loop = asyncio.get_running_loop()
    key = (id(loop), loop_label)
    with _active_lock:
        existing = _active.get(key)
        if existing is not None and existing._loop is loop and not existing._stopped:
            log.warning(
                "loopwatch: loop %r is already reported (app %r); start() returns that reporter",
                loop_label,
                existing.app,
            )
            return existing
    reporter = Reporter(
        app=app_name,
        loop_name=loop_label,
        target=chosen,
        interval=interval,
        stall_threshold=stall_threshold,
        transport=make_transport(chosen),
        worker=worker_id,
    )
    reporter._key = key
    with _active_lock:
        _active[key] = reporter
    try:
        reporter._begin(loop)
    except Exception:
        log.warning("loopwatch: cannot start; reporting is off", exc_info=True)
        reporter.stop()
    return reporter


class watch:
    """``async with loopwatch.watch(app, ...) as reporter:`` starts reporting
    on entry and stops (sending ``bye``) on exit. Takes :func:`start`'s
    arguments."""

    def __init__(
        self,
        app: Optional[str] = None,
        *,
        loop_name: str = "main",
        target: Optional[str] = None,
        interval: float = 0.25,
        stall_threshold: float = 0.5,
        worker: Union[str, int, None] = None,
    ) -> None:
        self._args: Dict[str, Any] = {
            "loop_name": loop_name,
            "target": target,
            "interval": interval,
            "stall_threshold": stall_threshold,
            "worker": worker,
        }
        self._app = app
        self._reporter: Optional[Reporter] = None

    async def __aenter__(self) -> Reporter:
        self._reporter = start(self._app, **self._args)
        return self._reporter

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        reporter, self._reporter = self._reporter, None
        if reporter is not None:
            await reporter.astop()
