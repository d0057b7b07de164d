"""One worker process of a multi-process app, for tests/workers.rs.

Reports its loop (worker index from LOOPWATCH_WORKER, read by the client)
and a pool `db` holding its one connection (max 1, in_use 1) every 0.2 s,
and keeps creating short tasks so its task counters grow. On SIGTERM it
stops the reporter (bye) and exits 0. Prints READY <pid> and STOPPED <pid>.
"""

import asyncio
import os
import signal

import loopwatch

APP = os.environ.get("POOL_APP_NAME", "pools")


async def main() -> None:
    reporter = loopwatch.start(APP, loop_name="main", interval=0.1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"READY {os.getpid()}", flush=True)
    while not stop.is_set():
        reporter.pool("db", size=1, max=1, in_use=1, waiting=0)
        await asyncio.create_task(asyncio.sleep(0), name="tick")
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    await reporter.astop()
    print(f"STOPPED {os.getpid()}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
