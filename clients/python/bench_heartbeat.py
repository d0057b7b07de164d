"""Micro-benchmark: the loop time one heartbeat costs (not a test: nothing
is asserted, figures depend on the machine).

    python3 clients/python/bench_heartbeat.py [--tasks 0 100 1000] [--target URL]

For the asyncio loop and (if installed) uvloop, with N idle tasks on the loop:

* ``hot``: the heartbeat's work on the loop (counters, the message, the
  non-blocking UDP send) called back to back, in us per heartbeat;
* ``in situ``: the real heartbeat task ticking every 10 ms for 2 s on an
  otherwise idle loop, loop-thread CPU time per heartbeat (cold caches), and
  the part of it spent in the kernel's UDP send.

By default the datagrams go to a UDP sink in a separate process on 127.0.0.1
(like a local exporter); ``--target`` points them elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any, Callable, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

import loopwatch  # noqa: E402
from loopwatch import _reporter, _transport  # noqa: E402

_SINK = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('127.0.0.1', 0))\n"
    "print(s.getsockname()[1], flush=True)\n"
    "while True:\n"
    "    s.recv(65536)\n"
)


async def _with_tasks(n: int) -> List["asyncio.Task[None]"]:
    return [asyncio.ensure_future(asyncio.sleep(3600)) for _ in range(n)]


async def _cleanup(tasks: List["asyncio.Task[None]"]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _hot(target: str, tasks: int, calls: int = 20000) -> float:
    idle = await _with_tasks(tasks)
    r = loopwatch.start("bench", target=target, interval=60)
    # one failure and one cancellation, so the arrays are not empty
    await asyncio.gather(asyncio.ensure_future(_fail()), return_exceptions=True)
    tick = r._tick
    for _ in range(1000):
        tick(0.001)
    t0 = time.perf_counter()
    for _ in range(calls):
        tick(0.001)
    elapsed = time.perf_counter() - t0
    r.stop()
    await _cleanup(idle)
    return elapsed / calls * 1e6


async def _fail() -> None:
    raise ValueError("bench")


async def _in_situ(target: str, tasks: int, seconds: float = 2.0) -> Tuple[float, float]:
    cpu = [0.0, 0.0, 0]
    tick = _reporter.Reporter._tick
    send = _transport.UdpTransport.send

    def timed_tick(self: Any, lag: float) -> None:
        c0 = time.thread_time()
        tick(self, lag)
        cpu[0] += time.thread_time() - c0
        cpu[2] += 1

    def timed_send(self: Any, data: bytes) -> bool:
        c0 = time.thread_time()
        sent = send(self, data)
        cpu[1] += time.thread_time() - c0
        return sent

    idle = await _with_tasks(tasks)
    _reporter.Reporter._tick = timed_tick  # type: ignore[method-assign]
    _transport.UdpTransport.send = timed_send  # type: ignore[method-assign]
    try:
        r = loopwatch.start("bench", target=target, interval=0.01)
        await asyncio.sleep(seconds)
        r.stop()
    finally:
        _reporter.Reporter._tick = tick  # type: ignore[method-assign]
        _transport.UdpTransport.send = send  # type: ignore[method-assign]
    await _cleanup(idle)
    n = max(1, int(cpu[2]))
    return cpu[0] / n * 1e6, cpu[1] / n * 1e6


def _run(make: Callable[[], asyncio.AbstractEventLoop], name: str, target: str, tasks: int) -> None:
    loop = make()
    try:
        hot = loop.run_until_complete(_hot(target, tasks))
        total, in_send = loop.run_until_complete(_in_situ(target, tasks))
    finally:
        loop.close()
    print(
        f"{name:8} tasks={tasks:<5} hot {hot:6.2f} us/heartbeat   "
        f"in situ {total:6.2f} us/heartbeat CPU ({in_send:6.2f} in the UDP send, "
        f"{total - in_send:6.2f} Python)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description="loop time per loopwatch heartbeat")
    ap.add_argument("--tasks", type=int, nargs="*", default=[0, 100, 1000])
    ap.add_argument("--target", default=None, help="udp://host:port (default: a local UDP sink)")
    args = ap.parse_args()
    sink = None
    target = args.target
    if target is None:
        sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None
        target = f"udp://127.0.0.1:{int(sink.stdout.readline())}"
    try:
        loops: List[Tuple[Callable[[], asyncio.AbstractEventLoop], str]] = [
            (asyncio.new_event_loop, "asyncio")
        ]
        try:
            import uvloop

            loops.append((uvloop.new_event_loop, "uvloop"))
        except ImportError:
            print("uvloop not installed: asyncio only")
        print(f"python {sys.version.split()[0]}, loopwatch {loopwatch.__version__}, target {target}")
        for make, name in loops:
            for n in args.tasks:
                _run(make, name, target, n)
    finally:
        if sink is not None:
            sink.kill()
            sink.wait()


if __name__ == "__main__":
    main()
