"""The watchdog thread: notices a blocked loop and reports where it is stuck."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from typing import Callable, List, Optional

from ._stack import Frame, capture, find_site, format_frame

__all__ = ["Watchdog", "next_stall_id"]

log = logging.getLogger("loopwatch")

#: How often the watchdog looks at the loop.
CHECK_EVERY = 0.05
#: How often a stall that goes on is reported again.
REPEAT_EVERY = 1.0

_stall_ids = itertools.count(1)
_stall_ids_lock = threading.Lock()


def next_stall_id() -> int:
    """Stall ids number the stalls of this process: 1, 2, …"""
    with _stall_ids_lock:
        return next(_stall_ids)


StallCallback = Callable[[int, float, str, List[str]], None]


#: Longest sleep between checks (``maintain`` runs at least this often).
_MAX_WAIT = 1.0
#: How long after the stall deadline the check runs.
_MARGIN = 0.005


class Watchdog:
    """A daemon thread that checks, every ~50 ms, whether the loop's last
    heartbeat tick is older than ``interval + stall_threshold``. If so it
    captures the loop thread's stack and calls ``on_stall(stall_id,
    blocked_s, site, stack)``, again about once a second while the stall
    lasts (same ``stall_id``).

    A pure-Python thread needs the GIL: while C code holds it, the watchdog
    cannot run, and only the exporter's missing-heartbeat watchdog sees the
    stall (site ``unknown``).
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        thread_id: int,
        interval: float,
        stall_threshold: float,
        last_tick: Callable[[], float],
        on_stall: StallCallback,
        on_loop_closed: Callable[[], None],
        maintain: Callable[[], None],
        check_every: float = CHECK_EVERY,
        repeat_every: float = REPEAT_EVERY,
    ) -> None:
        self._loop = loop
        self._thread_id = thread_id
        self._interval = interval
        self._threshold = stall_threshold
        self._last_tick = last_tick
        self._on_stall = on_stall
        self._on_loop_closed = on_loop_closed
        self._maintain = maintain
        self._check_every = check_every
        self._repeat_every = repeat_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopwatch-watchdog", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop and wait (briefly) for the thread, so no stall message can
        follow a ``bye``."""
        self._stop.set()
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        stall_id: Optional[int] = None
        stall_tick = 0.0
        last_report = 0.0
        paused_at = 0.0
        loop = self._loop
        wait = self._check_every
        while not self._stop.wait(wait):
            wait = self._check_every
            try:
                self._maintain()
                if loop.is_closed():
                    self._on_loop_closed()
                    return
                now = time.monotonic()
                if not loop.is_running():
                    # Between run_until_complete() calls nothing is blocked;
                    # the heartbeat catches up when the loop runs again.
                    paused_at = now
                    stall_id = None
                    continue
                tick = max(self._last_tick(), paused_at)
                overdue = now - tick - self._interval
                if overdue <= self._threshold:
                    stall_id = None
                    # Sleep until a stall could first be declared: waking a
                    # busy loop's thread for the GIL every 50 ms cost it
                    # several percent of its throughput.
                    wait = min(_MAX_WAIT, max(self._check_every, self._threshold - overdue + _MARGIN))
                    continue
                if stall_id is None or tick != stall_tick:
                    stall_id = next_stall_id()
                    stall_tick = tick
                elif now - last_report < self._repeat_every:
                    continue
                frames = capture(self._thread_id)
                if self._stop.is_set():
                    return
                self._report(stall_id, overdue, frames)
                last_report = time.monotonic()
            except Exception:  # never let the watchdog die loudly
                log.debug("loopwatch: watchdog check failed", exc_info=True)

    def _report(self, stall_id: int, blocked_s: float, frames: Optional[List[Frame]]) -> None:
        if frames is None:
            site, stack = "unknown", []
        else:
            site = find_site(frames)
            stack = [format_frame(f) for f in frames]
        self._on_stall(stall_id, blocked_s, site, stack)
